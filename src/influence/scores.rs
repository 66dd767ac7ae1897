//! Scoring documents against a reference: `I(z) = Σ_layers Σ_t g_tᵀ V a_t` from a candidate's
//! captures, one batch per forward/backward pass ([`score_token_batch`]), batches of similar length
//! planned once ([`plan_batches`]) and run in parallel or by an executor ([`run_planned`]), and
//! [`DocumentScorer`], the loaded model, factors and reference iHVP that every scoring path uses.

use std::path::Path;

use super::factors::{arrays, FitOptions, ReferenceIhvp};
use super::stage::{reference_gradient, reference_ihvp, FactorArguments, ScoreArguments};
use super::{InfluenceError, Projection};
use crate::corpus::Document;
use crate::model::{DocCapture, LayerId, LoadedModel};

impl ReferenceIhvp {
    /// `I(z) = Σ_layers Σ_t g_tᵀ V a_t` from a candidate's captures.
    pub fn score(&self, cap: &DocCapture) -> Result<f64, InfluenceError> {
        let mut total = 0.0;
        for (l, (id, v)) in self.layers.iter().enumerate() {
            let layer = captured(&cap.layers, *id)?;
            total += match &self.projection {
                None => self.position_products(l, layer)?.sum_all()?.to_scalar::<f64>()?,
                Some((_, mats)) => {
                    let (a, g) = arrays(layer)?;
                    let lp = &mats[l];
                    (&g.dot(&lp.p_out.t()).dot(v) * &a.dot(&lp.p_in.t())).sum()
                }
            };
        }
        Ok(total)
    }

    /// [`ReferenceIhvp::score`] of every document of a batched capture, without splitting it:
    /// per layer one product over all positions, `s_t = (g_t V) · a_t`, then each document's sum
    /// over its positions, `I(z) = Σ_layers Σ_{t ∈ z} s_t` (the same sum as `score`, in another
    /// order). With a projection, the batch is split and scored document by document.
    pub fn score_batch(&self, cap: &crate::model::BatchCapture) -> Result<Vec<Option<f64>>, InfluenceError> {
        if self.projection.is_some() {
            return cap.split()?.iter().map(|d| d.as_ref().map(|d| self.score(d)).transpose()).collect();
        }
        let positions = cap.layers.first().map_or(0, |l| l.inputs.dim(0).unwrap_or(0));
        let mut per_position = vec![0f64; positions];
        for (l, (id, _)) in self.layers.iter().enumerate() {
            let s: Vec<f64> = self.position_products(l, captured(&cap.layers, *id)?)?.sum(1)?.to_vec1()?;
            per_position.iter_mut().zip(s).for_each(|(p, x)| *p += x);
        }
        Ok(cap
            .doc_rows
            .iter()
            .zip(&cap.losses)
            .map(|(rows, loss)| loss.map(|_| rows.iter().map(|&k| per_position[k as usize]).sum()))
            .collect())
    }

    /// `(g_t V) ⊙ a_t` for every position t of one layer's capture (T × d_in, f64), with `V` of
    /// layer `l` in the capture's dtype and device (unprojected).
    fn position_products(&self, l: usize, layer: &crate::model::LayerCapture) -> candle_core::Result<candle_core::Tensor> {
        use candle_core::DType;
        let v = match layer.inputs.dtype() {
            DType::F64 => self.dense[l][1].clone(),
            DType::F32 => self.dense[l][0].clone(),
            other => self.dense[l][0].to_dtype(other)?,
        };
        layer
            .output_grads
            .matmul(&v.to_device(layer.inputs.device())?)?
            .mul(&layer.inputs)?
            .to_dtype(DType::F64)
    }
}

/// The capture of layer `id` among `layers`.
fn captured(layers: &[crate::model::LayerCapture], id: LayerId) -> Result<&crate::model::LayerCapture, InfluenceError> {
    layers
        .iter()
        .find(|l| l.id == id)
        .ok_or_else(|| InfluenceError::Input(format!("capture lacks {id}")))
}

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
    run_planned(&ids, opts.batch, |batches| {
        batches
            .par_iter()
            .map(|batch| {
                let scores = score_token_batch(loaded, ihvp, batch, opts)?;
                batch.iter().for_each(|_| on_done());
                Ok(scores)
            })
            .collect()
    })
}

/// Scores token ids in the batches [`plan_batches`] makes of them: `run` gets the batches (token
/// ids, in plan order) and answers one result per document of each, wherever it runs them (here
/// in parallel, or on a distributed executor); the results come back in the order of `ids`.
pub fn run_planned<T: Clone, E: From<InfluenceError>>(
    ids: &[Vec<u32>],
    batch: usize,
    run: impl FnOnce(Vec<Vec<Vec<u32>>>) -> Result<Vec<Vec<Option<T>>>, E>,
) -> Result<Vec<Option<T>>, E> {
    let plan = plan_batches(ids, batch);
    let batches: Vec<Vec<Vec<u32>>> = plan.iter().map(|b| b.iter().map(|&i| ids[i].clone()).collect()).collect();
    let results = run(batches)?;
    if results.len() != plan.len() || results.iter().zip(&plan).any(|(r, b)| r.len() != b.len()) {
        return Err(InfluenceError::Input("the scoring executor answered out of shape".into()).into());
    }
    Ok(scatter(&plan, results, ids.len()))
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
    // Finite or refused, with the cause: every scoring path comes through here.
    for (s, l) in scores.iter().zip(&cap.losses) {
        if let Some(l) = l.filter(|l| !l.is_finite()) {
            return Err(InfluenceError::Input(format!(
                "the model's loss on a document is {l}: its weights or config (rms_norm_eps, rope_theta) do not give finite values"
            )));
        }
        if let Some(s) = s.filter(|s| !s.is_finite()) {
            return Err(InfluenceError::Input(format!(
                "an influence score is {s} although the model's loss is finite: the factors or the reference gradient hold non-finite values (refit them)"
            )));
        }
    }
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

/// A proxy, its fitted factors and one reference set's iHVP, loaded once: scores documents
/// against that reference. `quad select` scores through one, and so does every scoring worker of
/// a distributed run (built from the same files and arguments, it gives the same scores).
pub struct DocumentScorer {
    pub loaded: LoadedModel,
    ihvp: ReferenceIhvp,
    gradient: FitOptions,
    max_tokens: Option<usize>,
}

impl DocumentScorer {
    /// A scorer from parts already loaded; `args` are the factors' (their layers and windows).
    pub fn new(loaded: LoadedModel, ihvp: ReferenceIhvp, args: &FactorArguments, max_tokens: Option<usize>) -> Self {
        Self {
            loaded,
            ihvp,
            gradient: args.gradient_options(),
            max_tokens,
        }
    }

    /// Loads the model folder (or GGUF file) `model` and the factors fitted on it in `factors`,
    /// and takes the reference gradient of `reference` (each text's head,
    /// [`crate::corpus::text_head`]) and its iHVP. `batch` is the documents per scoring pass
    /// (`influence.batch`): scores can differ in the last bits with another batching.
    pub fn load(
        model: &Path,
        factors: &Path,
        reference: &[String],
        scoring: &ScoreArguments,
        batch: usize,
    ) -> Result<Self, InfluenceError> {
        let loaded = crate::model::load(model, candle_core::DType::F32, &candle_core::Device::Cpu)?;
        let (fitted, header) = super::store::load_for_model(factors, model, &loaded.model.config)?;
        let args = FactorArguments {
            batch: batch.max(1),
            ..FactorArguments::matching(&fitted, &header)
        };
        let tokens = reference
            .iter()
            .map(|t| loaded.encode(crate::corpus::text_head(t)).map_err(InfluenceError::from))
            .collect::<Result<Vec<_>, _>>()?;
        let grad = reference_gradient(&loaded, &tokens, &args, scoring.max_tokens, &mut |_, _| std::ops::ControlFlow::Continue(()))?;
        let ihvp = reference_ihvp(Some(&fitted), &grad, header.per_head, scoring)?;
        Ok(Self::new(loaded, ihvp, &args, scoring.max_tokens))
    }

    /// Scores through a seeded projection of both sides ([`ReferenceIhvp::project`]).
    pub fn project(mut self, projection: Projection) -> Self {
        self.ihvp = self.ihvp.project(projection);
        self
    }

    /// Influence score and loss of each document, in order (`None`: fewer than two tokens).
    pub fn score(&self, docs: &[Document]) -> Result<Vec<Option<(f64, f64)>>, InfluenceError> {
        self.score_with(docs, || {})
    }

    /// [`Self::score`], calling `on_done` once per document scored.
    pub fn score_with(&self, docs: &[Document], on_done: impl Fn() + Sync) -> Result<Vec<Option<(f64, f64)>>, InfluenceError> {
        score_documents(&self.loaded, &self.ihvp, docs, &self.gradient, self.max_tokens, on_done)
    }

    /// A text's token ids as this scorer takes them ([`super::encode_for_scoring`]).
    pub fn encode(&self, name: &str, text: &str) -> Result<Vec<u32>, InfluenceError> {
        encode_for_scoring(&self.loaded, name, text, self.max_tokens)
    }

    /// Raw scores and losses of one batch of token ids (one pass; [`super::score_token_batch`]).
    pub fn score_batch(&self, batch: &[Vec<u32>]) -> Result<Vec<Option<(f64, f64)>>, InfluenceError> {
        score_token_batch(&self.loaded, &self.ihvp, batch, &self.gradient)
    }

    /// [`Self::score`] on bare texts.
    pub fn score_texts(&self, texts: &[&str]) -> Result<Vec<Option<(f64, f64)>>, InfluenceError> {
        let named: Vec<(String, &str)> = texts.iter().enumerate().map(|(i, t)| (format!("text {i}"), *t)).collect();
        let pairs: Vec<(&str, &str)> = named.iter().map(|(n, t)| (n.as_str(), *t)).collect();
        score_texts(&self.loaded, &self.ihvp, &pairs, &self.gradient, self.max_tokens, || {})
    }

    pub fn ihvp(&self) -> &ReferenceIhvp {
        &self.ihvp
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
