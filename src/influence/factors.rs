//! Factors for a whole model, the reference iHVP and candidate scores.
//!
//! Block-diagonal approximation: the curvature is block-diagonal over linear layers, and within
//! attention over heads. For `q_proj`, `k_proj`, `v_proj` the output rows of head h (its `d_head`
//! rows of W) form a block with its own `S_h = E_n[Σ_t g_{t,h} g_{t,h}ᵀ]` and the layer's shared
//! `A`; for `o_proj` the input columns of head h form a block with its own
//! `A_h = E_t[a_{t,h} a_{t,h}ᵀ]` and the shared `S`. MLP layers are one block each. With
//! `per_head = false` every layer is a single block (for ablations).
//!
//! Influence of a candidate z on the reference set R:
//! `I(z) = ∇L(R)ᵀ (H + δI)⁻¹ ∇L(z) = Σ_blocks ⟨V_b, G_{z,b}⟩`, where `V = (H + δI)⁻¹ ∇L(R)` is the
//! reference iHVP (computed once) and `⟨V, G_z⟩ = Σ_t g_tᵀ V a_t` is evaluated from the captures
//! without forming `G_z`. Positive: a step on z is predicted to lower the reference loss.

use ndarray::{s, Array2};

use super::project::{LayerProjection, Projection};
use super::kfac::{BlockRange, EkfacSums, FactorSums, KfacError, KroneckerFactors, Strategy};
use crate::model::{DocCapture, Labels, LayerId, LayerKind, LayerSelection, LlamaConfig, LlamaModel};

/// Errors of the influence stage.
#[derive(Debug, thiserror::Error)]
pub enum InfluenceError {
    #[error(transparent)]
    Kfac(#[from] KfacError),
    #[error("tensor op: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Input(String),
}

/// How factors are fitted.
#[derive(Debug, Clone)]
pub struct FitOptions {
    pub selection: LayerSelection,
    /// Split attention projections per head.
    pub per_head: bool,
    /// Context length for chunking documents.
    pub context: usize,
    /// Documents per forward/backward pass.
    pub batch: usize,
    /// Labels of the fitting set's losses: `Sampled` fits the true Fisher (GGN), `Observed` the
    /// empirical Fisher. Reference and candidate gradients always use the observed tokens.
    pub labels: Labels,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            selection: LayerSelection::all(),
            per_head: true,
            context: 256,
            batch: 4,
            labels: Labels::Sampled { seed: 0 },
        }
    }
}

/// The blocks of one layer's weight (rows = outputs, columns = inputs).
pub fn block_ranges(config: &LlamaConfig, id: LayerId, per_head: bool) -> Vec<BlockRange> {
    let hd = config.head_dim();
    let (h, inter) = (config.hidden_size, config.intermediate_size);
    let (nq, nkv) = (config.num_attention_heads, config.num_kv_heads());
    let (d_out, d_in) = match id.kind {
        LayerKind::Q => (nq * hd, h),
        LayerKind::K | LayerKind::V => (nkv * hd, h),
        LayerKind::O => (h, nq * hd),
        LayerKind::Gate | LayerKind::Up => (inter, h),
        LayerKind::Down => (h, inter),
    };
    let whole = vec![BlockRange {
        rows: (0, d_out),
        cols: (0, d_in),
    }];
    if !per_head {
        return whole;
    }
    match id.kind {
        LayerKind::Q | LayerKind::K | LayerKind::V => (0..d_out / hd)
            .map(|i| BlockRange {
                rows: (i * hd, (i + 1) * hd),
                cols: (0, d_in),
            })
            .collect(),
        LayerKind::O => (0..nq)
            .map(|i| BlockRange {
                rows: (0, d_out),
                cols: (i * hd, (i + 1) * hd),
            })
            .collect(),
        _ => whole,
    }
}

/// Fitted factors of one layer.
#[derive(Debug, Clone)]
pub struct LayerFactors {
    pub id: LayerId,
    pub blocks: Vec<(BlockRange, KroneckerFactors)>,
}

/// Fitted factors of all selected layers.
#[derive(Debug, Clone)]
pub struct Factors {
    pub layers: Vec<LayerFactors>,
    pub per_head: bool,
    pub examples: usize,
    pub tokens: usize,
}

/// A capture's (a, g) as f64 arrays.
pub(crate) fn arrays(layer: &crate::model::LayerCapture) -> candle_core::Result<(Array2<f64>, Array2<f64>)> {
    let conv = |t: &candle_core::Tensor| -> candle_core::Result<Array2<f64>> {
        let (r, c) = t.dims2()?;
        let v: Vec<f64> = t.to_dtype(candle_core::DType::F64)?.flatten_all()?.to_vec1()?;
        Ok(Array2::from_shape_vec((r, c), v).expect("shape from dims"))
    };
    Ok((conv(&layer.inputs)?, conv(&layer.output_grads)?))
}

/// Runs `f` on the captures of every document, `batch` documents per pass.
fn for_each_capture(
    model: &LlamaModel,
    docs: &[Vec<u32>],
    opts: &FitOptions,
    labels: Labels,
    mut f: impl FnMut(&DocCapture) -> Result<(), InfluenceError>,
) -> Result<usize, InfluenceError> {
    let mut used = 0;
    for chunk in docs.chunks(opts.batch.max(1)) {
        for cap in model.capture_with(chunk, opts.context, &opts.selection, labels)?.into_iter().flatten() {
            f(&cap)?;
            used += 1;
        }
    }
    Ok(used)
}

impl Factors {
    /// The layer selection these factors cover (the blocks and kinds that were fitted).
    pub fn selection(&self) -> LayerSelection {
        let mut kinds: Vec<LayerKind> = self.layers.iter().map(|l| l.id.kind).collect();
        kinds.sort();
        kinds.dedup();
        let mut blocks: Vec<usize> = self.layers.iter().map(|l| l.id.block).collect();
        blocks.sort();
        blocks.dedup();
        LayerSelection {
            kinds,
            blocks: Some(blocks),
        }
    }

    /// Each layer with its block ranges.
    pub fn block_layout(&self) -> Vec<(LayerId, Vec<BlockRange>)> {
        self.layers
            .iter()
            .map(|l| (l.id, l.blocks.iter().map(|(r, _)| *r).collect()))
            .collect()
    }

    /// Fits `A`, `S` (first pass), eigendecomposes them, then fits the EK-FAC eigenvalues from the
    /// per-example gradients (second pass).
    pub fn fit(model: &LlamaModel, docs: &[Vec<u32>], opts: &FitOptions) -> Result<Self, InfluenceError> {
        let ids = opts.selection.layers(model.config.num_hidden_layers);
        let ranges: Vec<Vec<BlockRange>> =
            ids.iter().map(|&id| block_ranges(&model.config, id, opts.per_head)).collect();
        let mut sums: Vec<Vec<FactorSums>> = ranges
            .iter()
            .map(|rs| {
                rs.iter()
                    .map(|r| FactorSums::new(r.cols.1 - r.cols.0, r.rows.1 - r.rows.0))
                    .collect()
            })
            .collect();
        let mut tokens = 0;
        let examples = for_each_capture(model, docs, opts, opts.labels, |cap| {
            tokens += cap.predicted;
            for (l, layer) in cap.layers.iter().enumerate() {
                let (a, g) = arrays(layer)?;
                for (b, r) in ranges[l].iter().enumerate() {
                    sums[l][b].add(
                        a.slice(s![.., r.cols.0..r.cols.1]),
                        g.slice(s![.., r.rows.0..r.rows.1]),
                    );
                }
            }
            Ok(())
        })?;
        if examples == 0 {
            return Err(InfluenceError::Input("no fitting document has two or more tokens".into()));
        }
        let mut factors: Vec<Vec<KroneckerFactors>> = sums
            .iter()
            .map(|bs| bs.iter().map(|s| s.finish()).collect::<Result<Vec<_>, _>>())
            .collect::<Result<_, _>>()?;
        let mut ek: Vec<Vec<EkfacSums>> = factors
            .iter()
            .map(|bs| bs.iter().map(EkfacSums::new).collect())
            .collect();
        // True Fisher: per-token Λ (cross-token terms vanish in expectation); empirical Fisher:
        // per-example Λ (its cross-token terms are real).
        let per_token = matches!(opts.labels, Labels::Sampled { .. });
        for_each_capture(model, docs, opts, opts.labels, |cap| {
            for (l, layer) in cap.layers.iter().enumerate() {
                let (a, g) = arrays(layer)?;
                if per_token {
                    for (b, r) in ranges[l].iter().enumerate() {
                        ek[l][b].add_tokens(
                            &factors[l][b],
                            a.slice(s![.., r.cols.0..r.cols.1]),
                            g.slice(s![.., r.rows.0..r.rows.1]),
                        );
                    }
                } else {
                    let grad = g.t().dot(&a);
                    for (b, r) in ranges[l].iter().enumerate() {
                        ek[l][b].add(&factors[l][b], r.of(grad.view()));
                    }
                }
            }
            Ok(())
        })?;
        for (l, blocks) in ek.into_iter().enumerate() {
            for (b, e) in blocks.into_iter().enumerate() {
                e.finish(&mut factors[l][b])?;
            }
        }
        Ok(Self {
            layers: ids
                .into_iter()
                .zip(ranges)
                .zip(factors)
                .map(|((id, rs), fs)| LayerFactors {
                    id,
                    blocks: rs.into_iter().zip(fs).collect(),
                })
                .collect(),
            per_head: opts.per_head,
            examples,
            tokens,
        })
    }
}

/// Per-layer weight gradients of a set of documents' mean loss, `(1/|R|) Σ_r G_r`. Each `G_r = gᵀ a`
/// is one candle matmul in the model's dtype, summed in f64.
pub fn mean_gradient(
    model: &LlamaModel,
    docs: &[Vec<u32>],
    opts: &FitOptions,
) -> Result<Vec<(LayerId, Array2<f64>)>, InfluenceError> {
    let mut acc: Vec<(LayerId, candle_core::Tensor)> = Vec::new();
    let n = for_each_capture(model, docs, opts, Labels::Observed, |cap| {
        for (l, layer) in cap.layers.iter().enumerate() {
            let grad = layer.weight_grad()?.to_dtype(candle_core::DType::F64)?;
            match acc.get_mut(l) {
                Some((_, sum)) => *sum = (&*sum + &grad)?,
                None => acc.push((layer.id, grad)),
            }
        }
        Ok(())
    })?;
    if n == 0 {
        return Err(InfluenceError::Input("no reference document has two or more tokens".into()));
    }
    acc.into_iter()
        .map(|(id, sum)| {
            let (r, c) = sum.dims2()?;
            let v: Vec<f64> = sum.flatten_all()?.to_vec1()?;
            Ok((id, Array2::from_shape_vec((r, c), v).expect("dims") / n as f64))
        })
        .collect()
}

/// How the damping δ is chosen, per block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Damping {
    /// `x ×` the mean eigenvalue the strategy uses (K-FAC: mean of `λ_S λ_Aᵀ`; EK-FAC: mean of Λ).
    /// The default is `Relative(0.1)`.
    Relative(f64),
    /// `x ×` the mean EK-FAC eigenvalue, which is `tr(F_b) / n_b` for the block's empirical Fisher,
    /// whatever the strategy — one damping for K-FAC, EK-FAC and the exact solve alike.
    Fisher(f64),
    Absolute(f64),
}

impl Damping {
    pub fn for_block(&self, f: &KroneckerFactors, strategy: Strategy) -> Result<f64, KfacError> {
        Ok(match *self {
            Damping::Relative(x) => x * f.eigenvalues(strategy)?.mean().unwrap_or(0.0),
            Damping::Fisher(x) => x * f.eigenvalues(Strategy::Ekfac)?.mean().unwrap_or(0.0),
            Damping::Absolute(x) => x,
        })
    }
}

impl Default for Damping {
    fn default() -> Self {
        Damping::Relative(0.1)
    }
}

/// The reference iHVP `V = (H + δI)⁻¹ ∇L(R)`, per layer (in the layer's full weight shape).
#[derive(Debug, Clone)]
pub struct ReferenceIhvp {
    pub strategy: Strategy,
    /// Per layer: `V`, or `P_out V P_inᵀ` once projected.
    pub layers: Vec<(LayerId, Array2<f64>)>,
    /// The projection applied to both sides, if any.
    pub projection: Option<(Projection, Vec<LayerProjection>)>,
    /// `V` per layer as f32 and f64 tensors, to score captures in their own dtype with candle's
    /// matmul (no per-document conversion to f64 arrays).
    dense: Vec<[candle_core::Tensor; 2]>,
}

fn dense_tensors(layers: &[(LayerId, Array2<f64>)]) -> candle_core::Result<Vec<[candle_core::Tensor; 2]>> {
    layers
        .iter()
        .map(|(_, v)| {
            let t64 = candle_core::Tensor::from_vec(v.iter().copied().collect::<Vec<f64>>(), v.dim(), &candle_core::Device::Cpu)?;
            Ok([t64.to_dtype(candle_core::DType::F32)?, t64])
        })
        .collect()
}

impl ReferenceIhvp {
    /// Applies the chosen approximation block by block. `Identity` is the plain gradient.
    pub fn new(
        factors: &Factors,
        reference_grad: &[(LayerId, Array2<f64>)],
        strategy: Strategy,
        damping: Damping,
    ) -> Result<Self, InfluenceError> {
        let mut layers = Vec::with_capacity(reference_grad.len());
        for (id, grad) in reference_grad {
            if strategy == Strategy::Identity {
                layers.push((*id, grad.clone()));
                continue;
            }
            let lf = factors
                .layers
                .iter()
                .find(|l| l.id == *id)
                .ok_or_else(|| InfluenceError::Input(format!("no factors for {id}")))?;
            let mut v = Array2::<f64>::zeros(grad.raw_dim());
            for (r, f) in &lf.blocks {
                let delta = damping.for_block(f, strategy)?;
                let block = f.ihvp(r.of(grad.view()), strategy, delta)?;
                v.slice_mut(s![r.rows.0..r.rows.1, r.cols.0..r.cols.1]).assign(&block);
            }
            layers.push((*id, v));
        }
        Ok(Self {
            strategy,
            dense: dense_tensors(&layers)?,
            layers,
            projection: None,
        })
    }

    /// Projects `V` with `projection`; candidates are then scored in the projected space,
    /// `⟨P_out V P_inᵀ, P_out G_z P_inᵀ⟩` (an unbiased estimate of `⟨V, G_z⟩`).
    pub fn project(mut self, projection: Projection) -> Self {
        let mut mats = Vec::with_capacity(self.layers.len());
        for (id, v) in &mut self.layers {
            let lp = projection.layer(*id, v.nrows(), v.ncols());
            *v = lp.gradient(v);
            mats.push(lp);
        }
        self.projection = Some((projection, mats));
        self
    }

    /// `I(z) = Σ_layers Σ_t g_tᵀ V a_t` from a candidate's captures.
    pub fn score(&self, cap: &DocCapture) -> Result<f64, InfluenceError> {
        let mut total = 0.0;
        for (l, (id, v)) in self.layers.iter().enumerate() {
            let layer = cap
                .layers
                .iter()
                .find(|l| l.id == *id)
                .ok_or_else(|| InfluenceError::Input(format!("capture lacks {id}")))?;
            total += match &self.projection {
                None => {
                    use candle_core::DType;
                    let dt = layer.inputs.dtype();
                    let v = match dt {
                        DType::F64 => self.dense[l][1].clone(),
                        DType::F32 => self.dense[l][0].clone(),
                        other => self.dense[l][0].to_dtype(other)?,
                    };
                    layer
                        .output_grads
                        .matmul(&v.to_device(layer.inputs.device())?)?
                        .mul(&layer.inputs)?
                        .to_dtype(DType::F64)?
                        .sum_all()?
                        .to_scalar::<f64>()?
                }
                Some((_, mats)) => {
                    let (a, g) = arrays(layer)?;
                    let lp = &mats[l];
                    (&g.dot(&lp.p_out.t()).dot(v) * &a.dot(&lp.p_in.t())).sum()
                }
            };
        }
        Ok(total)
    }
}

/// `⟨X, Y⟩` summed over layers (for tests and validation).
pub fn inner(x: &[(LayerId, Array2<f64>)], y: &[(LayerId, Array2<f64>)]) -> f64 {
    x.iter().zip(y).map(|((_, a), (_, b))| (a * b).sum()).sum()
}

/// Weight gradients `G = gᵀ a` of one capture, per layer.
pub fn capture_gradients(cap: &DocCapture) -> Result<Vec<(LayerId, Array2<f64>)>, InfluenceError> {
    cap.layers
        .iter()
        .map(|l| {
            let (a, g) = arrays(l)?;
            Ok((l.id, g.t().dot(&a)))
        })
        .collect()
}
