//! Fused CPU ops with hand-written backward passes, for the two widest tensors of a training or
//! capture step: the attention probabilities (batch, heads, T, T) and the logits (rows, vocab).
//!
//! Written with primitive candle ops, each is a chain of 5–8 element-wise passes forward and as
//! many backward, each allocating its result. Here each direction is one pass per row, and the
//! gradient is exact, so the ops stay differentiable (unlike candle_nn's fused `softmax_last_dim`,
//! which records no gradient). Both are checked against the primitive-op versions in f64.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// f32 or f64 element.
trait Float: Copy + Send + Sync + 'static {
    fn to_f64(self) -> f64;
    fn from_f64(x: f64) -> Self;
    /// `exp(x)` in the element's own precision (f32's is several times cheaper); sums are
    /// accumulated in f64.
    fn exp_of(x: f64) -> f64;
}

impl Float for f32 {
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    fn exp_of(x: f64) -> f64 {
        (x as f32).exp() as f64
    }
}

impl Float for f64 {
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(x: f64) -> Self {
        x
    }
    fn exp_of(x: f64) -> f64 {
        x.exp()
    }
}

/// The contiguous slice a layout covers, or an error.
fn slice<'a, T>(data: &'a [T], layout: &Layout, op: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// Rows of at least this many elements per parallel task.
const GRAIN: usize = 1 << 14;

/// Rows per parallel chunk, so that a chunk holds about `GRAIN` elements.
fn rows_per_chunk(row_len: usize) -> usize {
    (GRAIN / row_len.max(1)).max(1)
}

// ---------------------------------------------------------------------------------------------
// Causal softmax

/// `P = softmax(scale · S + M)` over the last dimension, `M` the causal mask (row i of each T × T
/// matrix sees columns `0..=i`; the rest get probability 0).
///
/// Backward: `∂L/∂S = scale · P ⊙ (∂L/∂P − rowsum(∂L/∂P ⊙ P))`.
pub fn causal_softmax(scores: &Tensor, scale: f64) -> Result<Tensor> {
    let d = scores.dims();
    if d.len() < 2 || d[d.len() - 1] != d[d.len() - 2] {
        candle_core::bail!("causal_softmax: need (…, T, T) scores, got {d:?}");
    }
    scores.contiguous()?.apply_op1(CausalSoftmax { scale })
}

struct CausalSoftmax {
    scale: f64,
}

fn causal_softmax_fwd<T: Float>(s: &[T], t: usize, scale: f64) -> Vec<T> {
    let mut out = vec![T::from_f64(0.0); s.len()];
    let rows = rows_per_chunk(t);
    out.par_chunks_mut(t * rows)
        .zip(s.par_chunks(t * rows))
        .enumerate()
        .for_each(|(c, (o, s))| {
            let first_row = c * rows;
            for (r, (o, s)) in o.chunks_mut(t).zip(s.chunks(t)).enumerate() {
                let i = (first_row + r) % t;
                let seen = &s[..=i];
                let max = seen.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x.to_f64() * scale));
                let mut sum = 0.0;
                for (o, &x) in o.iter_mut().zip(seen) {
                    let e = T::exp_of(x.to_f64() * scale - max);
                    sum += e;
                    *o = T::from_f64(e);
                }
                let inv = 1.0 / sum;
                for o in &mut o[..=i] {
                    *o = T::from_f64(o.to_f64() * inv);
                }
            }
        });
    out
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let t = layout.dims()[layout.dims().len() - 1];
        let out = match storage {
            CpuStorage::F32(v) => CpuStorage::F32(causal_softmax_fwd(slice(v, layout, self.name())?, t, self.scale)),
            CpuStorage::F64(v) => CpuStorage::F64(causal_softmax_fwd(slice(v, layout, self.name())?, t, self.scale)),
            _ => candle_core::bail!("causal-softmax: f32 or f64 only"),
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let g = res.apply_op2_no_bwd(&grad_res.contiguous()?, &SoftmaxBackward { scale: self.scale })?;
        Ok(Some(g))
    }
}

/// `scale · P ⊙ (G − rowsum(G ⊙ P))`, row by row.
struct SoftmaxBackward {
    scale: f64,
}

fn softmax_bwd<T: Float>(p: &[T], g: &[T], t: usize, scale: f64) -> Vec<T> {
    let mut out = vec![T::from_f64(0.0); p.len()];
    let chunk = t * rows_per_chunk(t);
    out.par_chunks_mut(chunk)
        .zip(p.par_chunks(chunk).zip(g.par_chunks(chunk)))
        .for_each(|(o, (p, g))| {
            for (o, (p, g)) in o.chunks_mut(t).zip(p.chunks(t).zip(g.chunks(t))) {
                let dot: f64 = p.iter().zip(g).map(|(&p, &g)| p.to_f64() * g.to_f64()).sum();
                for (o, (&p, &g)) in o.iter_mut().zip(p.iter().zip(g)) {
                    *o = T::from_f64(scale * p.to_f64() * (g.to_f64() - dot));
                }
            }
        });
    out
}

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "causal-softmax-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let t = l1.dims()[l1.dims().len() - 1];
        let out = match (s1, s2) {
            (CpuStorage::F32(p), CpuStorage::F32(g)) => {
                CpuStorage::F32(softmax_bwd(slice(p, l1, self.name())?, slice(g, l2, self.name())?, t, self.scale))
            }
            (CpuStorage::F64(p), CpuStorage::F64(g)) => {
                CpuStorage::F64(softmax_bwd(slice(p, l1, self.name())?, slice(g, l2, self.name())?, t, self.scale))
            }
            _ => candle_core::bail!("causal-softmax-backward: f32 or f64 only, same dtype"),
        };
        Ok((out, l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy

/// Per-row negative log-likelihood `−log softmax(z_r)[y_r] = logsumexp(z_r) − z_r[y_r]` for
/// logits (rows, V) and u32 targets (rows).
///
/// Backward: `∂L/∂z_r = ∂L/∂nll_r · (softmax(z_r) − onehot(y_r))`.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (rows, _) = logits.dims2()?;
    if targets.dims() != [rows] || targets.dtype() != DType::U32 {
        candle_core::bail!("cross_entropy: targets must be u32 of shape ({rows})");
    }
    logits.contiguous()?.apply_op2(&targets.contiguous()?, CrossEntropy)
}

struct CrossEntropy;

fn nll_fwd<T: Float>(z: &[T], y: &[u32], v: usize) -> Result<Vec<T>> {
    if let Some(&bad) = y.iter().find(|&&y| y as usize >= v) {
        candle_core::bail!("cross_entropy: target {bad} out of range for {v} classes");
    }
    Ok(z.par_chunks(v)
        .zip(y.par_iter())
        .map(|(z, &y)| {
            let max = z.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x.to_f64()));
            let sum: f64 = z.iter().map(|&x| T::exp_of(x.to_f64() - max)).sum();
            T::from_f64(max + sum.ln() - z[y as usize].to_f64())
        })
        .collect())
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let v = l1.dims()[1];
        let y = match s2 {
            CpuStorage::U32(y) => slice(y, l2, self.name())?,
            _ => candle_core::bail!("cross-entropy: u32 targets"),
        };
        let out = match s1 {
            CpuStorage::F32(z) => CpuStorage::F32(nll_fwd(slice(z, l1, self.name())?, y, v)?),
            CpuStorage::F64(z) => CpuStorage::F64(nll_fwd(slice(z, l1, self.name())?, y, v)?),
            _ => candle_core::bail!("cross-entropy: f32 or f64 logits only"),
        };
        Ok((out, Shape::from(l1.dims()[0])))
    }

    fn bwd(&self, z: &Tensor, y: &Tensor, nll: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // (rows, 2): each row's upstream gradient and its nll, from which the backward pass
        // recovers logsumexp(z_r) = nll_r + z_r[y_r] without another max and sum over the row.
        let aux = Tensor::stack(&[grad, nll], 1)?;
        let dz = z.apply_op3_no_bwd(y, &aux, &CrossEntropyBackward)?;
        Ok((Some(dz), None))
    }
}

/// `grad_r · (softmax(z_r) − onehot(y_r))`, row by row, with `softmax(z_r) = exp(z_r − lse_r)`
/// and `lse_r = nll_r + z_r[y_r]` from the forward pass.
struct CrossEntropyBackward;

fn nll_bwd<T: Float>(z: &[T], y: &[u32], aux: &[T], v: usize) -> Vec<T> {
    let mut out = vec![T::from_f64(0.0); z.len()];
    out.par_chunks_mut(v)
        .zip(z.par_chunks(v))
        .zip(y.par_iter().zip(aux.par_chunks(2)))
        .for_each(|((o, z), (&y, aux))| {
            let (g, nll) = (aux[0].to_f64(), aux[1].to_f64());
            if g == 0.0 {
                return; // padding rows: weight 0
            }
            let lse = nll + z[y as usize].to_f64();
            for (o, &x) in o.iter_mut().zip(z) {
                *o = T::from_f64(g * T::exp_of(x.to_f64() - lse));
            }
            o[y as usize] = T::from_f64(o[y as usize].to_f64() - g);
        });
    out
}

impl CustomOp3 for CrossEntropyBackward {
    fn name(&self) -> &'static str {
        "cross-entropy-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let v = l1.dims()[1];
        let y = match s2 {
            CpuStorage::U32(y) => slice(y, l2, self.name())?,
            _ => candle_core::bail!("cross-entropy-backward: u32 targets"),
        };
        let out = match (s1, s3) {
            (CpuStorage::F32(z), CpuStorage::F32(g)) => {
                CpuStorage::F32(nll_bwd(slice(z, l1, self.name())?, y, slice(g, l3, self.name())?, v))
            }
            (CpuStorage::F64(z), CpuStorage::F64(g)) => {
                CpuStorage::F64(nll_bwd(slice(z, l1, self.name())?, y, slice(g, l3, self.name())?, v))
            }
            _ => candle_core::bail!("cross-entropy-backward: f32 or f64 only, same dtype"),
        };
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn random(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| rng.gen_range(-3.0..3.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
    }

    #[test]
    fn causal_softmax_matches_primitive_ops_and_their_gradient() {
        let t = 7;
        let s = Var::from_tensor(&random(&[2, 3, t, t], 1)).unwrap();
        let r = random(&[2, 3, t, t], 2); // weights of a scalar loss Σ P ⊙ R
        let scale = 0.37;
        let mask: Vec<f64> = (0..t).flat_map(|i| (0..t).map(move |j| if j > i { -1e9 } else { 0.0 })).collect();
        let mask = Tensor::from_vec(mask, (t, t), &Device::Cpu).unwrap();
        let slow = candle_nn::ops::softmax(&(s.as_tensor() * scale).unwrap().broadcast_add(&mask).unwrap(), D::Minus1)
            .unwrap();
        let fast = causal_softmax(s.as_tensor(), scale).unwrap();
        assert!(max_abs_diff(&slow, &fast) < 1e-14);
        let g_slow = (&slow * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g_fast = (&fast * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let (a, b) = (g_slow.get(s.as_tensor()).unwrap(), g_fast.get(s.as_tensor()).unwrap());
        assert!(max_abs_diff(a, b) < 1e-13, "{}", max_abs_diff(a, b));
        // Masked entries are exactly zero and get zero gradient.
        let p: Vec<f64> = fast.flatten_all().unwrap().to_vec1().unwrap();
        let gb: Vec<f64> = b.flatten_all().unwrap().to_vec1().unwrap();
        for (k, (&p, &g)) in p.iter().zip(&gb).enumerate() {
            if k % t > (k / t) % t {
                assert_eq!((p, g), (0.0, 0.0));
            }
        }
        // f32 agrees with f64.
        let f32 = causal_softmax(&s.as_tensor().to_dtype(DType::F32).unwrap(), scale).unwrap();
        assert!(max_abs_diff(&f32.to_dtype(DType::F64).unwrap(), &fast) < 1e-6);
    }

    #[test]
    fn cross_entropy_matches_log_softmax_and_its_gradient() {
        let (rows, v) = (9, 11);
        let z = Var::from_tensor(&random(&[rows, v], 3)).unwrap();
        let y = Tensor::from_vec((0..rows as u32).map(|r| (r * 5 + 1) % v as u32).collect::<Vec<_>>(), rows, &Device::Cpu)
            .unwrap();
        let w = random(&[rows], 4); // per-row loss weights, some negative: any upstream gradient
        let slow = candle_nn::ops::log_softmax(z.as_tensor(), D::Minus1)
            .unwrap()
            .gather(&y.unsqueeze(1).unwrap(), 1)
            .unwrap()
            .squeeze(1)
            .unwrap()
            .neg()
            .unwrap();
        let fast = cross_entropy(z.as_tensor(), &y).unwrap();
        assert!(max_abs_diff(&slow, &fast) < 1e-13);
        let g_slow = (&slow * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g_fast = (&fast * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let (a, b) = (g_slow.get(z.as_tensor()).unwrap(), g_fast.get(z.as_tensor()).unwrap());
        assert!(max_abs_diff(a, b) < 1e-13, "{}", max_abs_diff(a, b));
        let bad = Tensor::from_vec(vec![v as u32; rows], rows, &Device::Cpu).unwrap();
        assert!(cross_entropy(z.as_tensor(), &bad).is_err());
    }
}
