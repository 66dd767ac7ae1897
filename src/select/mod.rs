//! Selection: corpus → embed → cluster → proxy model → factors → reference iHVP → bandit, with
//! every stage's artifact cached under a key that hashes its inputs and parameters
//! ([`cache`]), a checkpoint after every round, and a [`Selection`] as the result, which
//! [`Selection::write`] turns into the output folder ([`report`]).
//!
//! ```no_run
//! use quad_select::bandit::Budget;
//! use quad_select::select::{Quiet, SelectConfig, Selector};
//!
//! let config = SelectConfig::default().check()?;
//! let selection = Selector::new(config)
//!     .cache(".quad-cache")
//!     .select("pool.jsonl".as_ref(), "reference.jsonl".as_ref(), Budget::Tokens(400_000), &mut Quiet)?;
//! println!("{} documents, {:.1}% of the pool scored", selection.documents.len(), 100.0 * selection.scored_fraction());
//! # Ok::<(), quad_select::select::SelectError>(())
//! ```

pub mod cache;
pub mod config;
pub mod error;
pub mod executor;
pub mod keys;
pub mod observer;
pub mod report;
mod stages;

use std::path::{Path, PathBuf};

use crate::bandit::Budget;

pub use cache::StageTiming;
pub use config::{EmbedConfig, FactorsConfig, InfluenceConfig, LayerGroup, ProxyConfig, SelectConfig, ValidSelectConfig};
pub use error::SelectError;
pub use executor::{Executor, Local, ScoringSetup};
pub use observer::{Event, Observer, Quiet};
pub use report::{ClusterSummary, Manifest, ManifestSummary, SelectedDoc, Selection};

/// "n rounds (the last: round n − 1)" — rounds are numbered from 0 as they are printed.
pub fn rounds_done(n: usize) -> String {
    match n {
        0 => "0 rounds".to_string(),
        1 => "1 round (round 0)".to_string(),
        n => format!("{n} rounds (the last: round {})", n - 1),
    }
}

/// The cache folder a selector and `quad select` use unless told otherwise.
pub const DEFAULT_CACHE: &str = ".quad-cache";

/// Selects from a pool: the library entry point of `quad select`.
#[derive(Debug, Clone)]
pub struct Selector {
    config: ValidSelectConfig,
    cache: PathBuf,
    checkpoint: Option<PathBuf>,
    resume: bool,
}

impl Selector {
    /// A selector with the cache in `.quad-cache` and no checkpoint.
    pub fn new(config: ValidSelectConfig) -> Self {
        Self {
            config,
            cache: PathBuf::from(DEFAULT_CACHE),
            checkpoint: None,
            resume: false,
        }
    }

    /// The folder for embeddings, clusters, proxy, factors and scores (shared between runs).
    pub fn cache(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache = dir.into();
        self
    }

    /// Saves the bandit state to `path` after every round; with `resume`, a state found there
    /// (from a run with the same inputs and parameters) is continued.
    pub fn checkpoint(mut self, path: impl Into<PathBuf>, resume: bool) -> Self {
        self.checkpoint = Some(path.into());
        self.resume = resume;
        self
    }

    pub fn config(&self) -> &ValidSelectConfig {
        &self.config
    }

    /// Refuses a run whose outputs (the cache, the checkpoint, and `out` when given) are, contain,
    /// or lie inside one of its inputs (the pool, the reference, the given models): what a run
    /// writes or clears must never touch what it reads. [`Selector::select`] checks this first.
    pub fn check_paths(&self, pool: &Path, reference: &Path, out: Option<&Path>) -> Result<(), SelectError> {
        use crate::path_io::{refuse_output_over_input, Named};
        let mut inputs = vec![Named::new("pool", pool), Named::new("reference", reference)];
        if let Some(m) = &self.config.raw.proxy.model {
            inputs.push(Named::new("proxy model", m));
        }
        if let Some(m) = &self.config.raw.embed.model {
            inputs.push(Named::new("embedding model", m));
        }
        let mut outputs = vec![Named::new("the cache", &self.cache)];
        if let Some(c) = &self.checkpoint {
            outputs.push(Named::new("the checkpoint", c));
        }
        if let Some(o) = out {
            outputs.push(Named::new("the output folder", o));
        }
        refuse_output_over_input(&outputs, &inputs)?;
        crate::path_io::check_output_folder("the cache", &self.cache)?;
        if let Some(o) = out {
            crate::path_io::check_output_folder("the output folder", o)?;
        }
        Ok(())
    }

    /// What this run asks for, as its checkpoint records it: the inputs (paths resolved), the
    /// budget and every setting. Known before any stage runs.
    pub(crate) fn request(&self, pool: &Path, reference: &Path, budget: Budget) -> serde_json::Value {
        use crate::path_io::resolve;
        serde_json::json!({
            "pool": resolve(pool),
            "reference": resolve(reference),
            "budget": budget,
            "config": self.config.raw,
        })
    }

    /// With `resume` and a checkpoint present: refuses a checkpoint that is damaged, edited, or
    /// made for another request (naming the first setting that differs), before any work.
    pub fn check_resume(&self, pool: &Path, reference: &Path, budget: Budget) -> Result<(), SelectError> {
        match &self.checkpoint {
            Some(path) if self.resume && path.exists() => {
                cache::Checkpoint::read(path)?.check_request(&self.request(pool, reference, budget))
            }
            _ => Ok(()),
        }
    }

    /// Makes `out` ready for this run's [`Selection::write`]: checked against the inputs
    /// ([`Selector::check_paths`]), created, and cleared of an earlier run's outputs (only the
    /// files a selection writes, and the temporaries of killed runs; the checkpoint stays), so
    /// that a run that stops early cannot leave
    /// an older selection to be taken for its own.
    /// A resumed run is also checked against its checkpoint's request first
    /// ([`Selector::check_resume`]): a changed flag is refused before anything is removed.
    /// Returns the folder's lock ([`crate::atomic::FolderLock`]): hold it until the outputs are
    /// written; a second run into the same folder meanwhile is refused, naming this one's pid.
    pub fn prepare_out(&self, pool: &Path, reference: &Path, budget: Budget, out: &Path) -> Result<crate::atomic::FolderLock, SelectError> {
        self.check_paths(pool, reference, Some(out))?;
        self.check_resume(pool, reference, budget)?;
        std::fs::create_dir_all(out).map_err(crate::path_io::at(out))?;
        // One run a folder: a second run into it is refused before it clears anything; keep the
        // lock until the outputs are written.
        let lock = crate::atomic::FolderLock::acquire(out).map_err(crate::path_io::at(out))?;
        // A run killed while it wrote an output or its checkpoint left a temporary here.
        crate::atomic::remove_stale_temporaries(out, 0);
        Selection::clear_outputs(out)?;
        Ok(lock)
    }

    /// Runs every stage (reusing cached ones) and the bandit until the budget is met, the pool
    /// is exhausted, or the observer stops the run ([`SelectError::Interrupted`]).
    pub fn select(
        &self,
        pool: &Path,
        reference: &Path,
        budget: Budget,
        observer: &mut impl Observer,
    ) -> Result<Selection, SelectError> {
        stages::run(self, pool, reference, budget, observer, &mut Local)
    }

    /// [`Selector::select`] with the parallel units of the run (embedding chunks, assignment
    /// blocks, scoring batches) handed to `executor`: the same selection, whatever the executor.
    pub fn select_with(
        &self,
        pool: &Path,
        reference: &Path,
        budget: Budget,
        observer: &mut impl Observer,
        executor: &mut dyn Executor,
    ) -> Result<Selection, SelectError> {
        stages::run(self, pool, reference, budget, observer, executor)
    }
}
