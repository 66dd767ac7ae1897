//! Where the parallel work of a selection runs: here ([`Local`]), or on workers elsewhere (the
//! Python package's Ray executor).
//!
//! Three stages fan out, each in units that give the same bits wherever they run, so a selection
//! made through any executor, with any number of workers, is byte for byte the one made here:
//! embedding (chunks of 256 documents, [`crate::embed::embed_chunk`]), the assignment of rows to
//! the fitted centroids (blocks of rows, [`crate::cluster::assign`]) and scoring (batches of
//! documents of similar length, [`crate::influence::score_token_batch`]). Everything else — the
//! k-means fit on its sample, the proxy, the factors, the reference iHVP and the bandit — runs
//! on the caller, once.

use std::path::PathBuf;

use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use super::{SelectConfig, SelectError};
use crate::embed::{EmbedError, Embedder};
use crate::influence::DocumentScorer;
use crate::influence::{store, Factors, InfluenceError};

/// Runs the parallel units of a selection. Every method has the in-process answer as its
/// default; an executor overrides what it distributes.
pub trait Executor {
    /// How many chunks, blocks or batches to hand over at once (the workers' count, or a small
    /// multiple of it); 1 for [`Local`].
    fn parallelism(&self) -> usize {
        1
    }

    /// Embeds chunks of texts, each as [`crate::embed::embed_chunk`] on `embedder` (made from
    /// `config.embed`) would: rows and the number rescaled to unit norm, per chunk, in order.
    fn embed(
        &mut self,
        chunks: Vec<Vec<String>>,
        embedder: &dyn Embedder,
        config: &SelectConfig,
    ) -> Result<Vec<(Array2<f32>, usize)>, EmbedError> {
        let _ = config;
        chunks.iter().map(|c| crate::embed::embed_chunk(embedder, c)).collect()
    }

    /// Each block's rows to their nearest centroid ([`crate::cluster::assign`]), in order.
    fn assign(
        &mut self,
        blocks: Vec<Array2<f32>>,
        centroids: ArrayView2<f32>,
    ) -> Result<Vec<(Vec<usize>, Vec<f32>)>, crate::cluster::ClusterError> {
        Ok(blocks.iter().map(|b| crate::cluster::assign(b.view(), centroids)).collect())
    }

    /// Called once before the bandit scores anything: where the proxy, the factors and the
    /// reference gradient of this run are ([`ScoringSetup::scorer`] loads them).
    fn prepare_scoring(&mut self, setup: &ScoringSetup) -> Result<(), SelectError> {
        let _ = setup;
        Ok(())
    }

    /// Scores batches of token ids (each one pass, [`crate::influence::score_token_batch`]);
    /// `here` scores one batch in this process. Raw scores, `None` for a document with fewer than
    /// two tokens; per batch, in order.
    fn score(
        &mut self,
        batches: Vec<Vec<Vec<u32>>>,
        here: &(dyn Fn(&[Vec<u32>]) -> Result<Vec<Option<f64>>, InfluenceError> + Sync),
    ) -> Result<Vec<Vec<Option<f64>>>, SelectError> {
        use rayon::prelude::*;
        Ok(batches.par_iter().map(|b| here(b)).collect::<Result<Vec<_>, _>>()?)
    }
}

/// Everything in this process (`quad select`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Local;

impl Executor for Local {}

/// What a scoring worker loads to score as this run scores: the files the run's earlier stages
/// left in the cache and the run's settings (serialisable, so that it can be sent to workers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoringSetup {
    /// The proxy's folder (or GGUF file).
    pub proxy: PathBuf,
    /// The fitted factors' folder (none for the `identity` strategy).
    pub factors: Option<PathBuf>,
    /// The reference gradient (`refgrad-*.safetensors`).
    pub reference_gradient: PathBuf,
    /// The run's settings (the scoring and factor arguments are derived from them).
    pub config: SelectConfig,
}

impl ScoringSetup {
    /// Loads the proxy, the factors and the reference gradient, and forms the reference iHVP as
    /// the run does: a scorer that gives the run's bits.
    pub fn scorer(&self) -> Result<DocumentScorer, SelectError> {
        let cfg = self.config.clone().check()?;
        let loaded = crate::model::load(&self.proxy, candle_core::DType::F32, &candle_core::Device::Cpu)?;
        let factors: Option<Factors> = match &self.factors {
            Some(dir) => Some(store::load(dir, &loaded.model.config)?.0),
            None => None,
        };
        let layer_ids = cfg.factors.layers.layers(loaded.model.config.num_hidden_layers);
        let grad = store::load_layers(&self.reference_gradient, &layer_ids, &loaded.model.config)?;
        let ihvp = crate::influence::stage::reference_ihvp(factors.as_ref(), &grad, cfg.factors.per_head, &cfg.scoring)?;
        Ok(DocumentScorer::new(loaded, ihvp, &cfg.factors, cfg.scoring.max_tokens))
    }
}
