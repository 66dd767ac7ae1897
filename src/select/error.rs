//! Errors of a selection run.

use crate::bandit::BanditError;

/// Errors of `quad select` and [`super::Selector::select`].
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error(transparent)]
    Corpus(#[from] crate::corpus::CorpusError),
    #[error(transparent)]
    Embed(#[from] crate::embed::EmbedError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Influence(#[from] crate::influence::InfluenceError),
    #[error(transparent)]
    Bandit(#[from] BanditError),
    #[error(transparent)]
    Io(#[from] crate::path_io::PathIoError),
    #[error("{0}")]
    Config(String),
    /// The observer stopped the run. Finished stages are cached; once the bandit has started,
    /// the checkpoint (if the run has one) resumes it.
    #[error("{}", match .after_round {
        None => "interrupted before the selection started; finished stages are cached, rerun to continue".to_string(),
        Some(r) => format!("interrupted after round {r}: {docs} documents, {tokens} tokens so far"),
    })]
    Interrupted {
        /// The last finished round; none when the bandit had not started.
        after_round: Option<usize>,
        docs: usize,
        tokens: usize,
    },
}
