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

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ops::ControlFlow;

use candle_core::{DType, Tensor};
use ndarray::{s, Array1, Array2};

use super::project::{LayerProjection, Projection};
use super::kfac::{eigh, BlockRange, EkfacSums, KfacError, KroneckerFactors, Strategy};
#[cfg(doc)]
use super::kfac::FactorSums;
pub use super::error::InfluenceError;
use crate::model::{DocCapture, Labels, LayerId, LayerKind, LayerSelection, LlamaConfig, LlamaModel};

/// Work done of a stage's total, reported after every batch; `Break` stops the stage there
/// ([`InfluenceError::Interrupted`]).
pub type OnProgress<'a> = &'a mut dyn FnMut(usize, usize) -> ControlFlow<()>;

/// Counts work done against a total and asks an [`OnProgress`] whether to go on.
struct Steps<'a> {
    on: OnProgress<'a>,
    done: usize,
    total: usize,
}

impl Steps<'_> {
    fn advance(&mut self, n: usize) -> Result<(), InfluenceError> {
        self.done += n;
        match (self.on)(self.done, self.total) {
            ControlFlow::Continue(()) => Ok(()),
            ControlFlow::Break(()) => Err(InfluenceError::Interrupted),
        }
    }
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
    steps: &mut Steps<'_>,
    mut f: impl FnMut(&DocCapture) -> Result<(), InfluenceError>,
) -> Result<usize, InfluenceError> {
    // Longest first, so a batch's documents have similar lengths and little padding (the sums
    // taken over the captures do not depend on the order).
    let mut sorted: Vec<&Vec<u32>> = docs.iter().collect();
    sorted.sort_by_key(|d| std::cmp::Reverse(d.len()));
    let mut used = 0;
    for chunk in sorted.chunks(opts.batch.max(1)) {
        let chunk: Vec<Vec<u32>> = chunk.iter().map(|d| d.to_vec()).collect();
        for cap in model.capture_with(&chunk, opts.context, &opts.selection, labels)?.into_iter().flatten() {
            f(&cap)?;
            used += 1;
        }
        steps.advance(chunk.len())?;
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
    ///
    /// Each layer accumulates its full `Σ aᵀa` and `Σ gᵀg` once (candle matmuls in the capture
    /// dtype, summed in f64); a block's `A`, `S` are diagonal sub-blocks of them, so the `A` shared
    /// by the q/k/v heads and the `S` shared by the o_proj heads are computed once per layer, and
    /// so is each distinct eigendecomposition and rotation. Same factors as accumulating every
    /// block on its own ([`FactorSums`], [`EkfacSums`]; checked in the tests).
    pub fn fit(model: &LlamaModel, docs: &[Vec<u32>], opts: &FitOptions) -> Result<Self, InfluenceError> {
        Self::fit_with(model, docs, opts, &mut |_, _| ControlFlow::Continue(()))
    }

    /// [`Factors::fit`], reporting documents done of `2 · docs.len()` (two passes) after every
    /// batch; `on_progress` may stop it there.
    pub fn fit_with(
        model: &LlamaModel,
        docs: &[Vec<u32>],
        opts: &FitOptions,
        on_progress: OnProgress<'_>,
    ) -> Result<Self, InfluenceError> {
        let mut steps = Steps {
            on: on_progress,
            done: 0,
            total: 2 * docs.len(),
        };
        let ids = opts.selection.layers(model.config.num_hidden_layers);
        let ranges: Vec<Vec<BlockRange>> =
            ids.iter().map(|&id| block_ranges(&model.config, id, opts.per_head)).collect();
        let mut moments: Vec<Option<LayerMoments>> = vec![None; ids.len()];
        let mut tokens = 0;
        let examples = for_each_capture(model, docs, opts, opts.labels, &mut steps, |cap| {
            tokens += cap.predicted;
            add_moments(&mut moments, cap)
        })?;
        let Some(moments) = moments.into_iter().collect::<Option<Vec<_>>>().filter(|_| examples > 0) else {
            return Err(InfluenceError::Input("no fitting document has two or more tokens".into()));
        };
        let mut factors: Vec<Vec<KroneckerFactors>> = Vec::with_capacity(ids.len());
        for (m, rs) in moments.iter().zip(&ranges) {
            factors.push(m.block_factors(rs)?);
        }
        correct_eigenvalues(model, docs, opts, &mut steps, &ranges, &mut factors)?;
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

/// The first pass: one capture's `aᵀa` and `gᵀg` added to each layer's moments.
fn add_moments(moments: &mut [Option<LayerMoments>], cap: &DocCapture) -> Result<(), InfluenceError> {
    for (l, layer) in cap.layers.iter().enumerate() {
        let a = work_dtype(&layer.inputs)?;
        let g = work_dtype(&layer.output_grads)?;
        let (ata, gtg) = (to_array(&a.t()?.matmul(&a)?)?, to_array(&g.t()?.matmul(&g)?)?);
        match &mut moments[l] {
            Some(m) => {
                m.a += &ata;
                m.s += &gtg;
                m.tokens += a.dim(0)?;
                m.examples += 1;
            }
            slot => *slot = Some(LayerMoments { tokens: a.dim(0)?, a: ata, s: gtg, examples: 1 }),
        }
    }
    Ok(())
}

/// The second pass: EK-FAC's eigenvalues `Λ`, the second moments of the gradients in each
/// block's Kronecker eigenbasis, summed over the fitting set and written into `factors`. True
/// Fisher: per-token Λ (cross-token terms vanish in expectation); empirical Fisher: per-example Λ
/// (its cross-token terms are real).
fn correct_eigenvalues(
    model: &LlamaModel,
    docs: &[Vec<u32>],
    opts: &FitOptions,
    steps: &mut Steps<'_>,
    ranges: &[Vec<BlockRange>],
    factors: &mut [Vec<KroneckerFactors>],
) -> Result<(), InfluenceError> {
    let mut ek: Vec<Vec<EkfacSums>> = factors.iter().map(|bs| bs.iter().map(EkfacSums::new).collect()).collect();
    let per_token = matches!(opts.labels, Labels::Sampled { .. });
    let bases: Vec<LayerBases> = if per_token {
        factors.iter().zip(ranges).map(|(fs, rs)| LayerBases::new(fs, rs, model.dtype)).collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    for_each_capture(model, docs, opts, opts.labels, steps, |cap| {
        for (l, layer) in cap.layers.iter().enumerate() {
            if per_token {
                let squares = bases[l].rotated_squares(&layer.inputs, &layer.output_grads)?;
                for (b, r) in ranges[l].iter().enumerate() {
                    let (u, v) = (&squares.out[&r.rows], &squares.inp[&r.cols]);
                    ek[l][b].add_squares(to_array(&u.t()?.matmul(v)?)?);
                }
            } else {
                let (a, g) = arrays(layer)?;
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
    Ok(())
}

/// Captures in the dtype the fitting products run in: f64 stays f64 (exact tests), everything
/// else is multiplied in f32 (half precision would lose the sums over tokens).
fn work_dtype(t: &Tensor) -> candle_core::Result<Tensor> {
    match t.dtype() {
        DType::F64 | DType::F32 => t.contiguous(),
        _ => t.to_dtype(DType::F32),
    }
}

fn to_array(t: &Tensor) -> candle_core::Result<Array2<f64>> {
    let (r, c) = t.dims2()?;
    let v: Vec<f64> = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    Ok(Array2::from_shape_vec((r, c), v).expect("shape from dims"))
}

/// One layer's `Σ_n aᵀa` (d_in × d_in) and `Σ_n gᵀg` (d_out × d_out) over the fitting set.
#[derive(Clone)]
struct LayerMoments {
    a: Array2<f64>,
    s: Array2<f64>,
    tokens: usize,
    examples: usize,
}

impl LayerMoments {
    /// Each block's `A = Σ aᵀa / tokens` and `S = Σ gᵀg / examples` (the normalisation of
    /// [`FactorSums`]) as diagonal sub-blocks, each distinct one eigendecomposed once.
    fn block_factors(&self, ranges: &[BlockRange]) -> Result<Vec<KroneckerFactors>, KfacError> {
        let a = &self.a / self.tokens.max(1) as f64;
        let s = &self.s / self.examples.max(1) as f64;
        let mut eig_a: HashMap<(usize, usize), (Array1<f64>, Array2<f64>)> = HashMap::new();
        let mut eig_s: HashMap<(usize, usize), (Array1<f64>, Array2<f64>)> = HashMap::new();
        let mut out = Vec::with_capacity(ranges.len());
        for r in ranges {
            if let Entry::Vacant(e) = eig_a.entry(r.cols) {
                e.insert(eigh(&a.slice(s![r.cols.0..r.cols.1, r.cols.0..r.cols.1]).to_owned())?);
            }
            if let Entry::Vacant(e) = eig_s.entry(r.rows) {
                e.insert(eigh(&s.slice(s![r.rows.0..r.rows.1, r.rows.0..r.rows.1]).to_owned())?);
            }
            out.push(KroneckerFactors::from_eigen(eig_a[&r.cols].clone(), eig_s[&r.rows].clone()));
        }
        Ok(out)
    }
}

/// One layer's distinct eigenbases as tensors, keyed by column range (`Q_A`) and row range (`Q_S`).
struct LayerBases {
    q_a: HashMap<(usize, usize), Tensor>,
    q_s: HashMap<(usize, usize), Tensor>,
}

/// `(a Q_A)²` per column range and `(g Q_S)²` per row range, element-wise squares (T × d).
struct RotatedSquares {
    inp: HashMap<(usize, usize), Tensor>,
    out: HashMap<(usize, usize), Tensor>,
}

impl LayerBases {
    fn new(factors: &[KroneckerFactors], ranges: &[BlockRange], dtype: DType) -> candle_core::Result<Self> {
        let dt = if dtype == DType::F64 { DType::F64 } else { DType::F32 };
        let tensor = |q: &Array2<f64>| -> candle_core::Result<Tensor> {
            let v: Vec<f64> = q.iter().copied().collect();
            Tensor::from_vec(v, q.dim(), &candle_core::Device::Cpu)?.to_dtype(dt)
        };
        let (mut q_a, mut q_s) = (HashMap::new(), HashMap::new());
        for (f, r) in factors.iter().zip(ranges) {
            if let Entry::Vacant(e) = q_a.entry(r.cols) {
                e.insert(tensor(&f.q_a)?);
            }
            if let Entry::Vacant(e) = q_s.entry(r.rows) {
                e.insert(tensor(&f.q_s)?);
            }
        }
        Ok(Self { q_a, q_s })
    }

    /// `Λ_b += Σ_t (Q_Sᵀ g_t)² ((Q_Aᵀ a_t)²)ᵀ = U_bᵀ V_b` with `U = (g Q_S)²`, `V = (a Q_A)²` — the
    /// per-token update of [`EkfacSums::add_tokens`], each distinct rotation done once.
    fn rotated_squares(&self, a: &Tensor, g: &Tensor) -> candle_core::Result<RotatedSquares> {
        let rot = |x: &Tensor, range: (usize, usize), q: &Tensor| -> candle_core::Result<Tensor> {
            let x = work_dtype(x)?.to_device(q.device())?;
            x.narrow(1, range.0, range.1 - range.0)?.contiguous()?.matmul(q)?.sqr()
        };
        let mut inp = HashMap::new();
        for (r, q) in &self.q_a {
            inp.insert(*r, rot(a, *r, q)?);
        }
        let mut out = HashMap::new();
        for (r, q) in &self.q_s {
            out.insert(*r, rot(g, *r, q)?);
        }
        Ok(RotatedSquares { inp, out })
    }
}

/// Per-layer weight gradients of a set of documents' mean loss, `(1/|R|) Σ_r G_r`, taken straight
/// from the backward pass of `Σ_r L_r` (candle's weight gradients, summed in f64 over batches of
/// windows): no per-document captures are needed for a sum.
pub fn mean_gradient(
    model: &LlamaModel,
    docs: &[Vec<u32>],
    opts: &FitOptions,
) -> Result<Vec<(LayerId, Array2<f64>)>, InfluenceError> {
    mean_gradient_with(model, docs, opts, &mut |_, _| ControlFlow::Continue(()))
}

/// [`mean_gradient`], reporting windows done of their total after every batch; `on_progress`
/// may stop it there.
pub fn mean_gradient_with(
    model: &LlamaModel,
    docs: &[Vec<u32>],
    opts: &FitOptions,
    on_progress: OnProgress<'_>,
) -> Result<Vec<(LayerId, Array2<f64>)>, InfluenceError> {
    let ids = opts.selection.layers(model.config.num_hidden_layers);
    let mut acc: Vec<Option<Array2<f64>>> = vec![None; ids.len()];
    // The sum needs no per-document separation: batch the windows of all documents, each
    // position weighted 1/n_d, longest first (full windows together, tails together).
    let mut windows: Vec<(&[u32], &[u32], f64)> = Vec::new();
    let mut n = 0;
    for d in docs {
        let predicted = d.len().saturating_sub(1);
        if predicted == 0 {
            continue;
        }
        n += 1;
        for (inp, tgt) in crate::model::capture::windows(d, opts.context) {
            windows.push((inp, tgt, 1.0 / predicted as f64));
        }
    }
    windows.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
    // As many rows per pass as `batch` documents of the fitting context would give.
    let rows = opts.batch.max(1) * 2;
    let mut steps = Steps {
        on: on_progress,
        done: 0,
        total: windows.len(),
    };
    for chunk in windows.chunks(rows) {
        let batch = crate::model::capture::LossBatch::from_windows(chunk, model)?;
        let logits = model.forward(&batch.ids, None)?;
        let grads = batch.loss(&batch.nll(&logits)?)?.backward()?;
        for (slot, id) in acc.iter_mut().zip(&ids) {
            let w = model.blocks[id.block].linear(id.kind).weight.as_tensor();
            let g = match grads.get(w) {
                Some(g) => to_array(g)?,
                // A weight that does not reach the loss has zero gradient.
                None => Array2::zeros(w.dims2()?),
            };
            match slot {
                Some(sum) => *sum += &g,
                None => *slot = Some(g),
            }
        }
        steps.advance(chunk.len())?;
    }
    if n == 0 {
        return Err(InfluenceError::Input("no reference document has two or more tokens".into()));
    }
    Ok(ids
        .into_iter()
        .zip(acc)
        .map(|(id, sum)| (id, sum.expect("every layer summed") / n as f64))
        .collect())
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
        let (Damping::Relative(x) | Damping::Fisher(x) | Damping::Absolute(x)) = *self;
        if !(x > 0.0 && x.is_finite()) {
            return Err(KfacError::Damping(x));
        }
        Ok(match *self {
            Damping::Relative(x) => x * f.eigenvalues(strategy)?.mean().unwrap_or(0.0),
            Damping::Fisher(x) => x * f.eigenvalues(Strategy::Ekfac)?.mean().unwrap_or(0.0),
            Damping::Absolute(x) => x,
        })
    }
}

impl Default for Damping {
    fn default() -> Self {
        Damping::Relative(super::DEFAULT_DAMPING_REL)
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
    pub(super) dense: Vec<[candle_core::Tensor; 2]>,
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
                // A relative damping of a block with no curvature is 0: the solve would divide by
                // it. Refused with the cause (factors fitted on too few tokens).
                if !(delta > 0.0 && delta.is_finite()) {
                    return Err(InfluenceError::Input(format!(
                        "{id} block {r:?}: damping {delta} (the factors' eigenvalues there are all 0: they were fitted on {} tokens; fit them on more)",
                        factors.tokens
                    )));
                }
                let block = f.ihvp(r.of(grad.view()), strategy, delta)?;
                if block.iter().any(|x| !x.is_finite()) {
                    return Err(InfluenceError::Input(format!(
                        "{id} block {r:?}: the inverse-Hessian-vector product is not finite (damping {delta}; the reference gradient or the factors hold extreme values)"
                    )));
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::influence::kfac::FactorSums;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};

    fn rel(x: &Array2<f64>, y: &Array2<f64>) -> f64 {
        let scale = y.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-300);
        (x - y).iter().fold(0f64, |m, v| m.max(v.abs())) / scale
    }

    /// A tiny random model (vocabulary 40, width 16, 4 heads) and `n` random documents of
    /// `len` tokens (a range).
    fn tiny(blocks: usize, dtype: DType, seed: u64, n: usize, len: std::ops::Range<usize>) -> (LlamaModel, Vec<Vec<u32>>) {
        let mut config = LlamaConfig::small(40, 16, blocks, 4, 16);
        config.intermediate_size = 24;
        let model = LlamaModel::random(config, dtype, &Device::Cpu, seed).unwrap();
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed + 100);
        let docs = (0..n)
            .map(|_| (0..rng.gen_range(len.clone())).map(|_| rng.gen_range(0..40)).collect())
            .collect();
        (model, docs)
    }

    /// The mean gradient from the batch backward pass equals the mean of the documents' own
    /// `G_r = Σ_t g_t a_tᵀ` from their captures (f64, so exactly up to round-off).
    #[test]
    fn mean_gradient_is_the_mean_of_captured_gradients() {
        let (model, mut docs) = tiny(2, DType::F64, 6, 6, 5..30);
        docs.push(vec![7]); // too short: no loss, not counted
        let opts = FitOptions {
            context: 8,
            batch: 4,
            ..FitOptions::default()
        };
        let got = mean_gradient(&model, &docs, &opts).unwrap();
        let caps = model.capture(&docs, opts.context, &opts.selection).unwrap();
        let caps: Vec<DocCapture> = caps.into_iter().flatten().collect();
        assert_eq!(caps.len(), 6);
        assert_eq!(got.len(), caps[0].layers.len());
        for (l, (id, g)) in got.iter().enumerate() {
            let mut want = Array2::<f64>::zeros(g.dim());
            for c in &caps {
                assert_eq!(c.layers[l].id, *id);
                want += &to_array(&c.layers[l].weight_grad().unwrap()).unwrap();
            }
            want /= caps.len() as f64;
            assert!(rel(g, &want) < 1e-10, "{id}: off by {}", rel(g, &want));
        }
    }

    /// The per-layer, shared-basis fit gives every block the factors and Λ that accumulating the
    /// block on its own in f64 gives (the direct formulas of [`FactorSums`] and
    /// [`EkfacSums::add_tokens`]), up to the f32 products.
    #[test]
    fn layer_moments_fit_equals_per_block_accumulation() {
        let (model, docs) = tiny(1, DType::F32, 5, 7, 5..20);
        let opts = FitOptions {
            context: 8,
            batch: 3,
            ..FitOptions::default()
        };
        let fast = Factors::fit(&model, &docs, &opts).unwrap();
        assert_eq!(fast.examples, docs.len());
        for lf in &fast.layers {
            let mut sums: Vec<FactorSums> = lf.blocks.iter().map(|(r, _)| FactorSums::new(r.cols.1 - r.cols.0, r.rows.1 - r.rows.0)).collect();
            let mut ek: Vec<EkfacSums> = lf.blocks.iter().map(|(_, f)| EkfacSums::new(f)).collect();
            for chunk in docs.chunks(opts.batch) {
                let caps = model.capture_with(chunk, opts.context, &opts.selection, opts.labels).unwrap();
                for cap in caps.into_iter().flatten() {
                    let layer = cap.layers.iter().find(|c| c.id == lf.id).unwrap();
                    let (a, g) = arrays(layer).unwrap();
                    for (b, (r, f)) in lf.blocks.iter().enumerate() {
                        let (ab, gb) = (a.slice(s![.., r.cols.0..r.cols.1]), g.slice(s![.., r.rows.0..r.rows.1]));
                        sums[b].add(ab, gb);
                        ek[b].add_tokens(f, ab, gb);
                    }
                }
            }
            for (b, (_, f)) in lf.blocks.iter().enumerate() {
                let (a, s) = sums[b].factors();
                let a_fast = f.q_a.dot(&ndarray::Array2::from_diag(&f.lambda_a)).dot(&f.q_a.t());
                let s_fast = f.q_s.dot(&ndarray::Array2::from_diag(&f.lambda_s)).dot(&f.q_s.t());
                assert!(rel(&a_fast, &a) < 1e-4, "{} block {b}: A off by {}", lf.id, rel(&a_fast, &a));
                assert!(rel(&s_fast, &s) < 1e-4, "{} block {b}: S off by {}", lf.id, rel(&s_fast, &s));
                let e = ek[b].clone();
                let lambda = e.sum / e.examples as f64;
                let got = f.ekfac.as_ref().unwrap();
                assert!(rel(got, &lambda) < 1e-4, "{} block {b}: Λ off by {}", lf.id, rel(got, &lambda));
            }
        }
    }

    /// Scoring a whole batch at once gives each document the score of its own capture (the
    /// per-document sum `Σ_layers Σ_t (g_t V)·a_t`), for documents of mixed lengths (padding) and
    /// one too short to score.
    #[test]
    fn batch_scores_equal_per_document_scores() {
        for dtype in [DType::F64, DType::F32] {
            let (model, mut docs) = tiny(2, dtype, 9, 5, 3..30);
            docs.insert(2, vec![3]);
            let opts = FitOptions {
                context: 8,
                batch: 6,
                ..FitOptions::default()
            };
            let factors = Factors::fit(&model, &docs, &opts).unwrap();
            let grad = mean_gradient(&model, &docs[..3], &opts).unwrap();
            let ihvp = ReferenceIhvp::new(&factors, &grad, Strategy::Ekfac, Damping::default()).unwrap();
            let batch = model.capture_batch(&docs, opts.context, &opts.selection, Labels::Observed).unwrap();
            let got = ihvp.score_batch(&batch).unwrap();
            let caps = model.capture(&docs, opts.context, &opts.selection).unwrap();
            assert_eq!(got.len(), caps.len());
            assert_eq!(got[2], None);
            let tol = if dtype == DType::F64 { 1e-10 } else { 1e-4 };
            for (g, c) in got.iter().zip(&caps) {
                match (g, c) {
                    (Some(g), Some(c)) => {
                        let want = ihvp.score(c).unwrap();
                        assert!((g - want).abs() <= tol * want.abs().max(1e-12), "{dtype:?}: {g} vs {want}");
                    }
                    (None, None) => {}
                    other => panic!("{other:?}"),
                }
            }
            // Projected: split per document, the same scores as `score`.
            let projected = ihvp.project(crate::influence::Projection { dim: 4, seed: 1 });
            let got = projected.score_batch(&batch).unwrap();
            for (g, c) in got.iter().zip(&caps) {
                if let (Some(g), Some(c)) = (g, c) {
                    assert_eq!(*g, projected.score(c).unwrap());
                }
            }
        }
    }
}
