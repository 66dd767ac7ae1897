//! Per-document loss and per-layer gradient captures: the interface the influence stage consumes.
//!
//! For a document with tokens `t_0 … t_{n−1}`, the loss is the mean next-token cross-entropy
//! `L = −(1/(n−1)) Σ_{i≥1} log p(t_i | t_<i)`, computed over windows of at most `context` inputs
//! (window w feeds `t[s..s+c]` and predicts `t[s+1..s+c+1]`, with `s = w·c`, so every token after
//! the first is predicted exactly once). For each selected linear layer `y = a Wᵀ` the capture holds
//! the per-token inputs `a_t` (T × d_in) and output gradients `g_t = ∂L/∂y_t` (T × d_out); the weight
//! gradient is `G = Σ_t g_t a_tᵀ = gᵀ a` (d_out × d_in).
//!
//! Several documents share one batched forward/backward pass: the batch loss is `Σ_d L_d`, and
//! since documents do not interact, `∂(Σ_d L_d)/∂y_t = ∂L_d/∂y_t` for a position t of document d.

use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

use super::layers::{LayerId, LayerSelection};
use super::llama::{LlamaModel, Tap};

/// Captures of one linear layer for one document.
#[derive(Debug, Clone)]
pub struct LayerCapture {
    pub id: LayerId,
    /// Per-token inputs `a_t`, (T × d_in).
    pub inputs: Tensor,
    /// Per-token output gradients `g_t = ∂L/∂y_t`, (T × d_out).
    pub output_grads: Tensor,
}

impl LayerCapture {
    /// The weight gradient `G = Σ_t g_t a_tᵀ = gᵀ a`, (d_out × d_in).
    pub fn weight_grad(&self) -> candle_core::Result<Tensor> {
        self.output_grads.t()?.matmul(&self.inputs)
    }
}

/// One document's loss and captures.
#[derive(Debug, Clone)]
pub struct DocCapture {
    /// Mean next-token cross-entropy (nats/token).
    pub loss: f64,
    /// Tokens predicted (document length − 1).
    pub predicted: usize,
    pub layers: Vec<LayerCapture>,
}

/// Keeps a document's first `max_tokens` predicted tokens, that is its first `max_tokens + 1`
/// ids (at least one predicted token); none keeps the whole document.
pub fn truncate_predicted(ids: &mut Vec<u32>, max_tokens: Option<usize>) {
    if let Some(m) = max_tokens {
        ids.truncate(m.max(1) + 1);
    }
}

/// Splits a token sequence into (inputs, targets) windows of at most `context` inputs.
pub fn windows(tokens: &[u32], context: usize) -> Vec<(&[u32], &[u32])> {
    let n = tokens.len();
    let mut out = Vec::new();
    let mut s = 0;
    while s + 1 < n {
        let e = (s + context).min(n - 1);
        out.push((&tokens[s..e], &tokens[s + 1..e + 1]));
        s = e;
    }
    out
}

/// A padded batch of windows with per-position loss weights.
pub struct LossBatch {
    /// (rows, T) token ids, right-padded with 0.
    pub ids: Tensor,
    /// (rows·T) targets (0 at padding).
    pub targets: Tensor,
    /// (rows·T) loss weights in the model dtype (0 at padding).
    pub weights: Tensor,
    /// Per document: the flat row indices (into rows·T) of its real positions.
    pub doc_rows: Vec<Vec<u32>>,
    pub width: usize,
}

impl LossBatch {
    /// Builds a batch where document d's positions weigh `scale_d / n_d` (`n_d` = its predicted
    /// tokens): with `scale_d = 1` the batch loss is `Σ_d L_d`.
    pub fn new(
        docs: &[&[u32]],
        context: usize,
        per_doc_mean: bool,
        model: &LlamaModel,
    ) -> candle_core::Result<Self> {
        let total: usize = docs.iter().map(|d| d.len().saturating_sub(1)).sum();
        let mut all = Vec::new();
        let mut first_row = Vec::with_capacity(docs.len() + 1);
        for d in docs {
            let n = d.len().saturating_sub(1).max(1) as f64;
            let w = if per_doc_mean { 1.0 / n } else { 1.0 / total.max(1) as f64 };
            first_row.push(all.len());
            all.extend(windows(d, context).into_iter().map(|(i, t)| (i, t, w)));
        }
        first_row.push(all.len());
        let mut batch = Self::from_windows(&all, model)?;
        // Document d owns windows first_row[d]..first_row[d + 1], each filled from its start.
        batch.doc_rows = first_row
            .windows(2)
            .map(|r| {
                (r[0]..r[1])
                    .flat_map(|row| {
                        let k0 = (row * batch.width) as u32;
                        (0..all[row].0.len() as u32).map(move |j| k0 + j)
                    })
                    .collect()
            })
            .collect();
        Ok(batch)
    }

    /// A batch of `(inputs, targets, weight)` windows, each position of a window weighing its
    /// `weight` (for sums over documents that need no per-document split; `doc_rows` is empty).
    pub fn from_windows(windows: &[(&[u32], &[u32], f64)], model: &LlamaModel) -> candle_core::Result<Self> {
        let width = windows.iter().map(|w| w.0.len()).max().unwrap_or(1).max(1);
        let rows = windows.len();
        let mut ids = vec![0u32; rows * width];
        let mut targets = vec![0u32; rows * width];
        let mut weights = vec![0f64; rows * width];
        for (r, (inp, tgt, w)) in windows.iter().enumerate() {
            for (j, (&a, &b)) in inp.iter().zip(tgt.iter()).enumerate() {
                ids[r * width + j] = a;
                targets[r * width + j] = b;
                weights[r * width + j] = *w;
            }
        }
        let dev = &model.device;
        Ok(Self {
            ids: Tensor::from_vec(ids, (rows, width), dev)?,
            targets: Tensor::from_vec(targets, rows * width, dev)?,
            weights: Tensor::from_vec(weights, rows * width, dev)?.to_dtype(model.dtype)?,
            doc_rows: Vec::new(),
            width,
        })
    }

    /// Per-position negative log-likelihood (rows·T) from logits (rows, T, V).
    pub fn nll(&self, logits: &Tensor) -> candle_core::Result<Tensor> {
        let v = logits.dim(D::Minus1)?;
        super::ops::cross_entropy(&logits.reshape(((), v))?, &self.targets)
    }

    /// `Σ weights · nll`: the scalar to differentiate.
    pub fn loss(&self, nll: &Tensor) -> candle_core::Result<Tensor> {
        (nll * &self.weights)?.sum_all()
    }
}

/// Which next-token labels a captured loss is taken against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Labels {
    /// The document's own next tokens: squared gradients give the empirical Fisher.
    Observed,
    /// Labels drawn from the model's own predictive distribution, seeded per document (by the
    /// seed and the document's tokens, so batching does not change them): squared gradients give
    /// a Monte-Carlo estimate of the true Fisher, which for softmax cross-entropy is the GGN.
    Sampled { seed: u64 },
}

/// Draws one label per real position from `softmax(logits)`; padding keeps target 0.
fn sample_targets(logits: &Tensor, batch: &LossBatch, docs: &[Vec<u32>], seed: u64) -> candle_core::Result<Tensor> {
    use rand::{Rng, SeedableRng};
    let v = logits.dim(D::Minus1)?;
    let probs = candle_nn::ops::softmax_last_dim(&logits.detach().reshape(((), v))?.to_dtype(DType::F32)?)?;
    let probs: Vec<f32> = probs.flatten_all()?.to_vec1()?;
    let mut targets: Vec<u32> = batch.targets.to_vec1()?;
    for (doc, rows) in docs.iter().zip(&batch.doc_rows) {
        // FNV-1a over the tokens: the same document always gets the same labels.
        let h = doc.iter().fold(crate::hash::Fnv1a::new(), |h, &t| h.word(t as u64)).finish();
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed ^ h);
        for &k in rows {
            let p = &probs[k as usize * v..(k as usize + 1) * v];
            let u: f32 = rng.gen::<f32>() * p.iter().sum::<f32>();
            let mut acc = 0.0;
            let mut pick = v - 1;
            for (i, &pi) in p.iter().enumerate() {
                acc += pi;
                if u < acc {
                    pick = i;
                    break;
                }
            }
            targets[k as usize] = pick as u32;
        }
    }
    let n = targets.len();
    Tensor::from_vec(targets, n, batch.targets.device())
}

impl LlamaModel {
    /// Mean next-token loss of each document (no gradients kept). Documents with fewer than two
    /// tokens have no loss (`None`).
    pub fn doc_losses(&self, docs: &[Vec<u32>], context: usize) -> candle_core::Result<Vec<Option<f64>>> {
        let refs: Vec<&[u32]> = docs.iter().map(Vec::as_slice).collect();
        let batch = LossBatch::new(&refs, context, true, self)?;
        let logits = self.forward(&batch.ids, None)?.detach();
        let nll: Vec<f64> = batch.nll(&logits)?.to_dtype(DType::F64)?.to_vec1()?;
        Ok(batch
            .doc_rows
            .iter()
            .map(|rows| {
                (!rows.is_empty())
                    .then(|| rows.iter().map(|&k| nll[k as usize]).sum::<f64>() / rows.len() as f64)
            })
            .collect())
    }

    /// Loss and per-layer captures for each document, from one batched forward/backward pass.
    /// Documents with fewer than two tokens give `None`.
    pub fn capture(
        &self,
        docs: &[Vec<u32>],
        context: usize,
        selection: &LayerSelection,
    ) -> candle_core::Result<Vec<Option<DocCapture>>> {
        self.capture_with(docs, context, selection, Labels::Observed)
    }

    /// [`LlamaModel::capture`] with the loss taken against `labels` (with `Labels::Sampled`, the
    /// reported loss is the sampled labels' loss too).
    pub fn capture_with(
        &self,
        docs: &[Vec<u32>],
        context: usize,
        selection: &LayerSelection,
        labels: Labels,
    ) -> candle_core::Result<Vec<Option<DocCapture>>> {
        self.capture_batch(docs, context, selection, labels)?.split()
    }

    /// One batched forward/backward pass, its captures left whole: for each selected layer the
    /// inputs and output gradients of every position of the padded batch (rows·T of them), with
    /// each document's positions and loss. What scoring needs without a copy per document.
    pub fn capture_batch(
        &self,
        docs: &[Vec<u32>],
        context: usize,
        selection: &LayerSelection,
        labels: Labels,
    ) -> candle_core::Result<BatchCapture> {
        let refs: Vec<&[u32]> = docs.iter().map(Vec::as_slice).collect();
        let mut batch = LossBatch::new(&refs, context, true, self)?;
        let mut tap = Tap {
            selection: selection.clone(),
            records: Vec::new(),
            detach_weights: true,
        };
        let logits = self.forward(&batch.ids, Some(&mut tap))?;
        if let Labels::Sampled { seed } = labels {
            batch.targets = sample_targets(&logits, &batch, docs, seed)?;
        }
        let nll = batch.nll(&logits)?;
        let grads = batch.loss(&nll)?.backward()?;
        let nll: Vec<f64> = nll.detach().to_dtype(DType::F64)?.to_vec1()?;
        let layers = tap
            .records
            .iter()
            .map(|(id, a, probe)| {
                let g = match grads.get(probe) {
                    Some(g) => g.clone(),
                    // A layer whose output does not reach the loss has zero gradient.
                    None => probe.zeros_like()?,
                };
                Ok(LayerCapture {
                    id: *id,
                    inputs: a.detach(),
                    output_grads: g,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let losses = batch
            .doc_rows
            .iter()
            .map(|rows| (!rows.is_empty()).then(|| rows.iter().map(|&k| nll[k as usize]).sum::<f64>() / rows.len() as f64))
            .collect();
        Ok(BatchCapture {
            layers,
            doc_rows: batch.doc_rows,
            losses,
        })
    }
}

/// The captures of one batched pass, not split by document (see [`LlamaModel::capture_batch`]).
pub struct BatchCapture {
    /// Per selected layer: inputs (rows·T × d_in) and output gradients (rows·T × d_out) of every
    /// position of the padded batch.
    pub layers: Vec<LayerCapture>,
    /// Per document: its positions (indices into rows·T).
    pub doc_rows: Vec<Vec<u32>>,
    /// Per document: its mean next-token loss; `None` with fewer than two tokens.
    pub losses: Vec<Option<f64>>,
}

impl BatchCapture {
    /// Each document's own captures (its positions of every layer), `None` for documents with
    /// fewer than two tokens.
    pub fn split(&self) -> candle_core::Result<Vec<Option<DocCapture>>> {
        self.doc_rows
            .iter()
            .zip(&self.losses)
            .map(|(rows, loss)| {
                let Some(loss) = loss else { return Ok(None) };
                let Some(first) = self.layers.first() else {
                    return Ok(Some(DocCapture { loss: *loss, predicted: rows.len(), layers: Vec::new() }));
                };
                let index = Tensor::from_slice(rows, rows.len(), first.inputs.device())?;
                let layers = self
                    .layers
                    .iter()
                    .map(|l| {
                        Ok(LayerCapture {
                            id: l.id,
                            inputs: l.inputs.index_select(&index, 0)?,
                            output_grads: l.output_grads.index_select(&index, 0)?,
                        })
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Ok(Some(DocCapture {
                    loss: *loss,
                    predicted: rows.len(),
                    layers,
                }))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layers::LayerKind;

    #[test]
    fn windows_predict_every_token_once() {
        let t: Vec<u32> = (0..10).collect();
        let w = windows(&t, 4);
        let targets: Vec<u32> = w.iter().flat_map(|(_, tg)| tg.iter().copied()).collect();
        assert_eq!(targets, (1..10).collect::<Vec<_>>());
        for (i, tg) in &w {
            assert!(i.len() <= 4);
            assert_eq!(i.len(), tg.len());
            assert_eq!(&i[1..], &tg[..tg.len() - 1]);
        }
        assert!(windows(&[5], 4).is_empty());
        assert_eq!(windows(&[5, 6], 4), vec![(&[5u32][..], &[6u32][..])]);
    }

    #[test]
    fn selection_parses_and_filters() {
        let s: LayerSelection = "attention".parse().unwrap();
        assert_eq!(s.layers(2).len(), 8);
        let s = LayerSelection::mlp().with_blocks(vec![1]);
        assert_eq!(
            s.layers(3),
            vec![
                LayerId { block: 1, kind: LayerKind::Gate },
                LayerId { block: 1, kind: LayerKind::Up },
                LayerId { block: 1, kind: LayerKind::Down }
            ]
        );
        assert!("nope".parse::<LayerSelection>().is_err());
        assert_eq!("both".parse::<LayerSelection>().unwrap(), LayerSelection::all());
        let s: LayerSelection = "down_proj, q_proj,attention".parse().unwrap();
        assert_eq!(s.kinds, vec![LayerKind::Q, LayerKind::K, LayerKind::V, LayerKind::O, LayerKind::Down]);
        assert!("q_proj,mlp.up".parse::<LayerSelection>().is_err());
    }
}
