//! Influence stage: `I(z) = ∇L(R)ᵀ (H + δI)⁻¹ ∇L(z)` with H approximated per linear layer by
//! Kronecker factors (K-FAC) or their eigenvalue-corrected form (EK-FAC).
//!
//! - [`kfac`]: one block's factors, eigenbases, EK-FAC eigenvalues and damped iHVP;
//! - [`factors`]: fitting all selected layers of a model (attention per head, MLP per layer), the
//!   reference iHVP and candidate scores;
//! - [`project`]: the optional seeded Rademacher projection applied to both sides;
//! - [`store`]: saving and loading fitted factors;
//! - [`validate`]: the comparison against the exact damped Fisher on a tiny model.

pub mod factors;
pub mod kfac;
pub mod project;
pub mod store;
pub mod validate;

pub use factors::{Damping, Factors, FitOptions, InfluenceError, ReferenceIhvp};
pub use project::Projection;
pub use kfac::{BlockRange, EkfacSums, FactorSums, KfacError, KroneckerFactors, Strategy};

use crate::corpus::Document;
use crate::model::LoadedModel;

/// Influence score and loss of every document (`None` for documents with fewer than two tokens),
/// in order, from its first `max_tokens` predicted tokens (all with `None`). Documents are scored in batches
/// of `opts.batch`, one batch after another: candle already spreads each pass over the cores, and
/// running batches in parallel on top of that was 20% slower on 2 cores (benches/influence.rs).
/// `on_done` is called once per document.
pub fn score_documents(
    loaded: &LoadedModel,
    ihvp: &ReferenceIhvp,
    docs: &[Document],
    opts: &FitOptions,
    max_tokens: Option<usize>,
    on_done: impl Fn() + Sync,
) -> Result<Vec<Option<(f64, f64)>>, InfluenceError> {
    let ids = docs
        .iter()
        .map(|d| {
            let mut ids = loaded.encode(&d.text).map_err(|e| InfluenceError::Input(format!("{}: {e}", d.id)))?;
            if let Some(m) = max_tokens {
                crate::model::capture::truncate_predicted(&mut ids, m.max(1));
            }
            Ok(ids)
        })
        .collect::<Result<Vec<_>, InfluenceError>>()?;
    // Batch documents of similar length together (longest first): a batch is padded to its
    // longest window, so mixing lengths wastes work. Scores go back in input order.
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
    let mut out: Vec<Option<(f64, f64)>> = vec![None; ids.len()];
    for chunk in order.chunks(opts.batch.max(1)) {
        let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
        let caps = loaded.model.capture(&batch, opts.context, &opts.selection)?;
        for (&i, c) in chunk.iter().zip(&caps) {
            out[i] = c.as_ref().map(|c| ihvp.score(c).map(|s| (s, c.loss))).transpose()?;
            on_done();
        }
    }
    Ok(out)
}
