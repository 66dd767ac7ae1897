//! Influence stage: `I(z) = ∇L(R)ᵀ (H + δI)⁻¹ ∇L(z)` with H approximated per linear layer by
//! Kronecker factors (K-FAC) or their eigenvalue-corrected form (EK-FAC).
//!
//! - [`kfac`]: one block's factors, eigenbases, EK-FAC eigenvalues and damped iHVP;
//! - [`factors`]: fitting all selected layers of a model (attention per head, MLP per layer), the
//!   reference iHVP and candidate scores;
//! - [`project`]: the optional seeded Rademacher projection applied to both sides;
//! - [`store`]: saving and loading fitted factors;
//! - [`stage`]: fitting factors and the reference iHVP as the commands run them (fitting and
//!   scoring options apart);
//! - [`validate`]: the comparison against the exact damped Fisher on a tiny model.

pub mod factors;
pub mod kfac;
pub mod project;
pub mod stage;
pub mod store;
pub mod validate;

pub use factors::{Damping, Factors, FitOptions, InfluenceError, ReferenceIhvp};
pub use project::Projection;
pub use kfac::{BlockRange, EkfacSums, FactorSums, KfacError, KroneckerFactors, Strategy};

use crate::corpus::Document;

/// The default damping, relative to each block's mean eigenvalue (`quad select`'s
/// `influence.damping_rel`, `quad influence --damping-rel`, and the factors header).
pub const DEFAULT_DAMPING_REL: f64 = 0.1;
use crate::model::LoadedModel;

/// Influence score and loss of every document (`None` for documents with fewer than two tokens),
/// in order, from its first `max_tokens` predicted tokens (all with `None`).
///
/// Documents of similar length share a batch of `opts.batch` (a batch is padded to its longest
/// window), each batch is one forward/backward pass scored whole ([`ReferenceIhvp::score_batch`]),
/// and the batches run in parallel on rayon's pool, one per core. On 2 cores, parallel batches of
/// 2 documents with candle's own per-op threading off (`CANDLE_NUM_THREADS=1`, which `quad` sets)
/// scored 18 documents/s of 256 tokens with the default proxy, against 10 for one batch of 4 at a
/// time with candle's threads (`experiments/score_paths.rs`): candle's per-op threads mostly wait
/// at barriers on operands this small. `on_done` is called once per document.
pub fn score_documents(
    loaded: &LoadedModel,
    ihvp: &ReferenceIhvp,
    docs: &[Document],
    opts: &FitOptions,
    max_tokens: Option<usize>,
    on_done: impl Fn() + Sync,
) -> Result<Vec<Option<(f64, f64)>>, InfluenceError> {
    let texts: Vec<(&str, &str)> = docs.iter().map(|d| (d.id.as_str(), d.text.as_str())).collect();
    score_texts(loaded, ihvp, &texts, opts, max_tokens, on_done)
}

/// [`score_documents`] on `(name, text)` pairs (the name only labels errors).
pub fn score_texts(
    loaded: &LoadedModel,
    ihvp: &ReferenceIhvp,
    texts: &[(&str, &str)],
    opts: &FitOptions,
    max_tokens: Option<usize>,
    on_done: impl Fn() + Sync,
) -> Result<Vec<Option<(f64, f64)>>, InfluenceError> {
    use rayon::prelude::*;
    let ids = texts
        .iter()
        .map(|(name, text)| encode_for_scoring(loaded, name, text, max_tokens))
        .collect::<Result<Vec<_>, InfluenceError>>()?;
    let plan = plan_batches(&ids, opts.batch);
    let scored = plan
        .par_iter()
        .map(|chunk| {
            let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
            let scores = score_token_batch(loaded, ihvp, &batch, opts)?;
            chunk.iter().for_each(|_| on_done());
            Ok(scores)
        })
        .collect::<Result<Vec<_>, InfluenceError>>()?;
    Ok(scatter(&plan, scored, ids.len()))
}

/// A text's token ids as scoring takes them: its head ([`crate::corpus::text_head`]), then its
/// first `max_tokens` predicted tokens.
pub fn encode_for_scoring(loaded: &LoadedModel, name: &str, text: &str, max_tokens: Option<usize>) -> Result<Vec<u32>, InfluenceError> {
    let mut ids = loaded
        .encode(crate::corpus::text_head(text))
        .map_err(|e| InfluenceError::Input(format!("{name}: {e}")))?;
    crate::model::capture::truncate_predicted(&mut ids, max_tokens);
    Ok(ids)
}

/// The batches scoring runs: indices into `ids`, longest first, `batch` at a time (so that each
/// batch holds documents of similar length). A batch is the unit of work: scored on its own
/// ([`score_token_batch`]), it gives the same bits wherever it runs.
pub fn plan_batches(ids: &[Vec<u32>], batch: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
    order.chunks(batch.max(1)).map(<[usize]>::to_vec).collect()
}

/// Influence score and loss of each document of one batch: one forward/backward pass scored whole
/// ([`ReferenceIhvp::score_batch`]).
pub fn score_token_batch(
    loaded: &LoadedModel,
    ihvp: &ReferenceIhvp,
    batch: &[Vec<u32>],
    opts: &FitOptions,
) -> Result<Vec<Option<(f64, f64)>>, InfluenceError> {
    let cap = loaded.model.capture_batch(batch, opts.context, &opts.selection, crate::model::Labels::Observed)?;
    let scores = ihvp.score_batch(&cap)?;
    Ok(scores.into_iter().zip(cap.losses).map(|(s, l)| s.zip(l)).collect())
}

/// Per-batch results back in input order.
pub fn scatter<T: Clone>(plan: &[Vec<usize>], results: Vec<Vec<Option<T>>>, n: usize) -> Vec<Option<T>> {
    let mut out = vec![None; n];
    for (chunk, scores) in plan.iter().zip(results) {
        for (&i, s) in chunk.iter().zip(scores) {
            out[i] = s;
        }
    }
    out
}

/// Turns off candle's per-op threads (`CANDLE_NUM_THREADS=1`) unless the user has set it, so that
/// work is spread across documents instead ([`score_documents`]). Call it first thing in `main`,
/// before any other thread exists: it sets a process environment variable.
pub fn prefer_document_parallelism() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY (edition 2021: safe): called before threads are spawned, as documented.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Writes one `{"id", "score", "loss"}` line per document (score and loss null, with a reason,
/// for documents too short to score), atomically.
pub fn write_scores(path: &std::path::Path, docs: &[Document], scored: &[Option<(f64, f64)>]) -> Result<(), crate::path_io::PathIoError> {
    crate::atomic::write_atomic(path, |w| {
        for (doc, s) in docs.iter().zip(scored) {
            let line = match s {
                Some((score, loss)) => serde_json::json!({"id": doc.id, "score": score, "loss": loss}),
                None => serde_json::json!({"id": doc.id, "score": null, "loss": null, "skipped": "fewer than two tokens"}),
            };
            serde_json::to_writer(&mut *w, &line)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
    .map_err(crate::path_io::at(path))
}

/// Mean score per value of a record field over the scored documents: (value, mean, documents),
/// highest mean first.
pub fn mean_by_label(docs: &[Document], scored: &[Option<(f64, f64)>], field: &str) -> Vec<(String, f64, usize)> {
    let mut by: std::collections::BTreeMap<String, (f64, usize)> = Default::default();
    for (doc, s) in docs.iter().zip(scored) {
        if let Some((score, _)) = s {
            let e = by.entry(doc.field(field).unwrap_or_default()).or_default();
            e.0 += score;
            e.1 += 1;
        }
    }
    let mut rows: Vec<_> = by.into_iter().map(|(k, (s, n))| (k, s / n as f64, n)).collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    rows
}
