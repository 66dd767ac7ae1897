//! quad-select: choose pretraining data that is both high-quality (influence on a reference set)
//! and diverse (spread over clusters of the pool), after Quad (ICLR 2025).
//!
//! Stages, one module each, data flowing one way:
//! `corpus → embed → cluster → model → influence → bandit → select → report`.

pub mod atomic;
pub mod cluster;
pub mod corpus;
pub mod embed;
pub mod weights;

use std::path::Path;

/// Builds the embedder the user asked for: a BERT-family model from `model_dir`, or the hashing
/// embedder when no folder is given.
pub fn make_embedder(
    model_dir: Option<&Path>,
    bert: embed::BertOptions,
    hashing_dim: usize,
) -> Result<Box<dyn embed::Embedder>, embed::EmbedError> {
    Ok(match model_dir {
        Some(dir) => Box::new(embed::BertEmbedder::load(dir, bert)?),
        None => Box::new(embed::HashingEmbedder::new(hashing_dim)),
    })
}
