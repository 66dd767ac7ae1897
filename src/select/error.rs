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
    Signal(#[from] crate::signals::SignalError),
    #[error(transparent)]
    Io(#[from] crate::path_io::PathIoError),
    #[error(transparent)]
    Overlap(#[from] crate::path_io::OverlapError),
    #[error("{0}")]
    Config(String),
    /// The observer stopped the run. Finished stages are cached; once the bandit has started,
    /// the checkpoint (if the run has one) resumes it.
    #[error("{}", match .rounds {
        None => "interrupted before the selection started; finished stages are cached, rerun to continue".to_string(),
        Some(r) => format!("interrupted after {}: {docs} documents, {tokens} tokens so far", crate::select::rounds_done(*r)),
    })]
    Interrupted {
        /// Rounds finished (the last one printed is `rounds − 1`); none when the bandit had not started.
        rounds: Option<usize>,
        docs: usize,
        tokens: usize,
    },
}

impl SelectError {
    /// The observer stopped the run before the bandit started (nothing selected yet).
    pub fn stopped() -> Self {
        Self::Interrupted {
            rounds: None,
            docs: 0,
            tokens: 0,
        }
    }
}
