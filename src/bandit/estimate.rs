//! Estimates of an unscored document's standardised score from the documents that were scored.
//!
//! The bandit scores a small sample of the pool (3.2% at its defaults); every other document is
//! known only through what it shares with the scored ones: its cluster and its embedding. Each
//! [`Estimator`] turns the scored sample `(d, z_d)` into a prediction `ẑ_d` for every document.
//! `experiments/estimators.rs` compares them on full-pool scores (experiments/README.md,
//! "The estimator study").
//!
//! - [`Estimator::ClusterMean`]: `ẑ_d = mean of z over the scored members of d's cluster` (the
//!   global mean for a cluster with none scored): the bandit's estimate.
//! - [`Estimator::Ridge`]: ridge regression on the embedding, `ẑ = ȳ + (x − μ)ᵀ w`,
//!   `w = X_cᵀ (X_c X_cᵀ + λ I)⁻¹ (y − ȳ)` (the dual form: n scored ≪ embedding dimension), λ chosen
//!   by exact leave-one-out error ([`RidgeFit`]).
//! - [`Estimator::ClusterRidge`]: the cluster mean plus a ridge fit of the residual `z − cluster mean`.
//! - [`Estimator::Signals`]: the same fit on the document's practitioners' signals instead of its
//!   embedding (DSIR log weight and classifier logit, z-scored over the pool;
//!   [`crate::signals`]): document-level and reference-aware, at no scoring cost.
//! - [`Estimator::Knn`]: the mean z of the k scored documents of highest cosine similarity.
//! - [`Estimator::Mlp`]: a one-hidden-layer network on the embedding (tanh, Adam, weight decay,
//!   the epoch chosen on a fifth held out).

use ndarray::{s, Array1, Array2, ArrayView1, ArrayView2, Axis};
use ndarray_linalg::{Eigh, UPLO};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};

use super::BanditError;

/// The pool's embedding rows as an estimator reads them: a block or a few rows at a time, so that
/// a pool of millions is never in memory whole (the `.npy` on disk, [`crate::npy::NpyRows`]).
pub trait FeatureRows: Send + Sync {
    fn rows(&self) -> usize;
    fn cols(&self) -> usize;
    /// Rows `range`, in order.
    fn read(&self, range: std::ops::Range<usize>) -> Result<Array2<f32>, BanditError>;
    /// The given rows, in the given order.
    fn gather(&self, rows: &[usize]) -> Result<Array2<f32>, BanditError>;
}

impl FeatureRows for Array2<f32> {
    fn rows(&self) -> usize {
        self.nrows()
    }
    fn cols(&self) -> usize {
        self.ncols()
    }
    fn read(&self, range: std::ops::Range<usize>) -> Result<Array2<f32>, BanditError> {
        Ok(self.slice(s![range, ..]).to_owned())
    }
    fn gather(&self, rows: &[usize]) -> Result<Array2<f32>, BanditError> {
        Ok(self.select(Axis(0), rows))
    }
}

impl FeatureRows for crate::npy::NpyRows {
    fn rows(&self) -> usize {
        crate::npy::NpyRows::rows(self)
    }
    fn cols(&self) -> usize {
        crate::npy::NpyRows::cols(self)
    }
    fn read(&self, range: std::ops::Range<usize>) -> Result<Array2<f32>, BanditError> {
        self.read_rows(range).map_err(|e| BanditError::Problem(e.to_string()))
    }
    fn gather(&self, rows: &[usize]) -> Result<Array2<f32>, BanditError> {
        crate::npy::NpyRows::gather(self, rows).map_err(|e| BanditError::Problem(e.to_string()))
    }
}

/// Rows of an underlying matrix picked by an index: row i is `inner`'s row `index[i]` (the
/// bandit's documents are the pool's documents long enough to score).
pub struct Reindexed<R> {
    pub inner: R,
    pub index: Vec<usize>,
}

impl<R: FeatureRows> FeatureRows for Reindexed<R> {
    fn rows(&self) -> usize {
        self.index.len()
    }
    fn cols(&self) -> usize {
        self.inner.cols()
    }
    fn read(&self, range: std::ops::Range<usize>) -> Result<Array2<f32>, BanditError> {
        let idx = &self.index[range];
        // Contiguous runs (the usual case: few documents are too short) are one read.
        match (idx.first(), idx.last()) {
            (Some(&a), Some(&b)) if b + 1 - a == idx.len() => self.inner.read(a..b + 1),
            _ => self.inner.gather(idx),
        }
    }
    fn gather(&self, rows: &[usize]) -> Result<Array2<f32>, BanditError> {
        let idx: Vec<usize> = rows.iter().map(|&r| self.index[r]).collect();
        self.inner.gather(&idx)
    }
}

/// Rows are read this many at a time.
const BLOCK: usize = 4096;

/// The learned estimators (ridge, its residual form, the MLP) fit targets clipped to ±3 pool
/// spreads: influence scores are heavy-tailed (on the wiki reference the largest z is 32, and 1%
/// of the pool lies above 3), and a squared loss would let those few set the whole fit.
pub const TARGET_CLIP: f64 = 3.0;

fn clipped(y: &Array1<f64>) -> Array1<f64> {
    y.mapv(|v| v.clamp(-TARGET_CLIP, TARGET_CLIP))
}

/// How an unscored document's score is estimated (see the module docs). In TOML:
/// `estimator = "cluster-mean"` (the default), `"ridge"`, `"cluster-ridge"`,
/// `"signals"`, `{ knn = { k = 20 } }` or `{ mlp = { hidden = 64, seed = 0 } }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Estimator {
    #[default]
    ClusterMean,
    Ridge,
    ClusterRidge,
    /// [`Estimator::ClusterRidge`] whose feature rows are the signals of
    /// [`Estimator::signals`], not the embedding (the pipeline passes those rows).
    Signals,
    Knn { k: usize },
    Mlp { hidden: usize, seed: u64 },
}

impl Estimator {
    pub fn is_cluster_mean(&self) -> bool {
        *self == Estimator::ClusterMean
    }

    /// The name used in tables.
    pub fn name(&self) -> String {
        match self {
            Estimator::ClusterMean => "cluster mean".into(),
            Estimator::Ridge => "ridge".into(),
            Estimator::ClusterRidge => "cluster mean + ridge residual".into(),
            Estimator::Signals => "cluster mean + ridge residual on signals".into(),
            Estimator::Knn { k } => format!("kNN-{k}"),
            Estimator::Mlp { hidden, .. } => format!("MLP-{hidden}"),
        }
    }

    /// Whether the estimate reads feature rows (the cluster mean does not).
    pub fn needs_features(&self) -> bool {
        !matches!(self, Estimator::ClusterMean)
    }

    /// The signals whose z-scored values are this estimator's feature rows, in column order
    /// (none: it reads the embedding, or nothing). The proxy loss is not among them: its forward
    /// passes over the whole pool cost about a sixth of scoring it in full, more than the 5%
    /// scoring allowance.
    pub fn signals(&self) -> &'static [crate::signals::Signal] {
        match self {
            Estimator::Signals => &[crate::signals::Signal::Dsir, crate::signals::Signal::Classifier],
            _ => &[],
        }
    }
}

/// What every estimator is fitted on: the pool's embedding rows (unit norm, one per document;
/// may be empty for [`Estimator::ClusterMean`]), each document's cluster, and the scored
/// documents with their standardised scores.
pub struct Sample<'a> {
    pub features: &'a dyn FeatureRows,
    pub cluster: &'a [usize],
    pub k: usize,
    pub scored: &'a [(usize, f64)],
}

impl Sample<'_> {
    fn check(&self, needs_features: bool) -> Result<(), BanditError> {
        let n = self.cluster.len();
        if needs_features && self.features.rows() != n {
            return Err(BanditError::Problem(format!(
                "{} embedding rows for {n} documents",
                self.features.rows()
            )));
        }
        if let Some(&c) = self.cluster.iter().find(|&&c| c >= self.k) {
            return Err(BanditError::Problem(format!("cluster {c} of {} clusters", self.k)));
        }
        if let Some(&(d, _)) = self.scored.iter().find(|&&(d, _)| d >= n) {
            return Err(BanditError::Problem(format!("scored document {d} of {n}")));
        }
        if self.scored.iter().any(|&(_, z)| !z.is_finite()) {
            return Err(BanditError::Problem("a scored document has a non-finite score".into()));
        }
        Ok(())
    }

    fn targets(&self) -> Array1<f64> {
        self.scored.iter().map(|&(_, z)| z).collect()
    }

    /// The scored documents' embedding rows.
    fn scored_rows(&self) -> Result<Array2<f32>, BanditError> {
        let idx: Vec<usize> = self.scored.iter().map(|&(d, _)| d).collect();
        self.features.gather(&idx)
    }

    /// `f` of every block of rows, concatenated.
    fn per_block(&self, mut f: impl FnMut(ArrayView2<'_, f32>) -> Vec<f64>) -> Result<Vec<f64>, BanditError> {
        let n = self.features.rows();
        let mut out = Vec::with_capacity(n);
        for start in (0..n).step_by(BLOCK) {
            let block = self.features.read(start..(start + BLOCK).min(n))?;
            out.extend(f(block.view()));
        }
        Ok(out)
    }
}

impl Estimator {
    /// The estimate of every document of the pool (scored ones included, as fitted).
    pub fn predict(&self, sample: &Sample<'_>) -> Result<Vec<f64>, BanditError> {
        sample.check(self.needs_features())?;
        if sample.scored.is_empty() {
            return Ok(vec![0.0; sample.cluster.len()]);
        }
        Ok(match *self {
            Estimator::ClusterMean => cluster_means(sample, &sample.targets()),
            Estimator::Ridge => {
                let fit = RidgeFit::fit(sample.scored_rows()?.mapv(f64::from).view(), clipped(&sample.targets()).view());
                sample.per_block(|b| fit.predict(b))?
            }
            Estimator::ClusterRidge | Estimator::Signals => {
                let base = cluster_means(sample, &sample.targets());
                let residual: Array1<f64> = sample.scored.iter().map(|&(d, z)| z - base[d]).collect();
                let fit = RidgeFit::fit(sample.scored_rows()?.mapv(f64::from).view(), clipped(&residual).view());
                sample.per_block(|b| fit.predict(b))?.into_iter().zip(base).map(|(r, b)| r + b).collect()
            }
            Estimator::Knn { k } => knn(sample, k.max(1))?,
            Estimator::Mlp { hidden, seed } => {
                let net = Mlp::fit(sample, hidden.max(1), seed)?;
                sample.per_block(|b| net.predict(b))?
            }
        })
    }
}

/// Each document's cluster mean of the scored z (the global mean where its cluster has none).
fn cluster_means(sample: &Sample<'_>, y: &Array1<f64>) -> Vec<f64> {
    let mut sum = vec![0.0; sample.k];
    let mut n = vec![0usize; sample.k];
    for (&(d, _), &z) in sample.scored.iter().zip(y) {
        sum[sample.cluster[d]] += z;
        n[sample.cluster[d]] += 1;
    }
    let global = y.mean().unwrap_or(0.0);
    sample
        .cluster
        .iter()
        .map(|&c| if n[c] > 0 { sum[c] / n[c] as f64 } else { global })
        .collect()
}

/// The λ grid leave-one-out chooses from (relative to the mean eigenvalue of the Gram matrix).
const RIDGE_GRID: [f64; 9] = [1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0];

/// A ridge regression `ẑ = ȳ + (x − μ)ᵀ w` fitted in its dual form.
///
/// With the centred rows X_c (n × d) and targets y_c, `w = X_cᵀ α`, `α = (K + λI)⁻¹ y_c`,
/// `K = X_c X_cᵀ`. From `K = U diag(s) Uᵀ` every λ costs O(n²): the hat matrix is
/// `H = U diag(s / (s + λ)) Uᵀ`, and the exact leave-one-out residual of document i is
/// `(y_i − ŷ_i) / (1 − H_ii)` (Allen's PRESS, where refitting without i gives the same), which is
/// what chooses λ from [`RIDGE_GRID`] × the mean eigenvalue.
pub struct RidgeFit {
    pub mean_x: Array1<f64>,
    pub mean_y: f64,
    pub w: Array1<f64>,
    pub lambda: f64,
    /// The mean squared leave-one-out residual at the chosen λ.
    pub loo_mse: f64,
}

impl RidgeFit {
    pub fn fit(x: ArrayView2<'_, f64>, y: ArrayView1<'_, f64>) -> Self {
        let n = y.len();
        let mean_x = x.mean_axis(Axis(0)).unwrap_or_else(|| Array1::zeros(x.ncols()));
        let mean_y = y.mean().unwrap_or(0.0);
        let xc = &x - &mean_x;
        let yc = &y - mean_y;
        let gram = xc.dot(&xc.t());
        let Ok((s, u)) = gram.eigh(UPLO::Lower) else {
            // A Gram matrix that will not diagonalise (non-finite rows): predict the mean.
            return Self { w: Array1::zeros(x.ncols()), mean_x, mean_y, lambda: f64::INFINITY, loo_mse: f64::NAN };
        };
        let s = s.mapv(|v| v.max(0.0));
        let scale = (s.sum() / n as f64).max(f64::MIN_POSITIVE);
        let uty = u.t().dot(&yc);
        let mut best: Option<(f64, f64, Array1<f64>)> = None;
        for rel in RIDGE_GRID {
            let lambda = rel * scale;
            let alpha = u.dot(&(&uty / &s.mapv(|v| v + lambda)));
            let fitted = gram.dot(&alpha);
            let shrink = s.mapv(|v| v / (v + lambda));
            let mut press = 0.0;
            for i in 0..n {
                let h = u.row(i).iter().zip(&shrink).map(|(a, b)| a * a * b).sum::<f64>();
                let r = (yc[i] - fitted[i]) / (1.0 - h).max(1e-12);
                press += r * r;
            }
            let mse = press / n as f64;
            if best.as_ref().is_none_or(|b| mse < b.1) {
                best = Some((lambda, mse, alpha));
            }
        }
        let (lambda, loo_mse, alpha) = best.expect("the grid is not empty");
        Self { w: xc.t().dot(&alpha), mean_x, mean_y, lambda, loo_mse }
    }

    /// The estimate of each row of `x` (f32 embedding rows), in blocks.
    pub fn predict(&self, x: ArrayView2<'_, f32>) -> Vec<f64> {
        let offset = self.mean_y - self.mean_x.dot(&self.w);
        let w32 = self.w.mapv(|v| v as f32);
        x.dot(&w32).iter().map(|&v| offset + f64::from(v)).collect()
    }
}

/// The mean z of the k scored documents most similar (cosine; rows are unit norm) to each
/// document, a scored document excluded from its own neighbours.
fn knn(sample: &Sample<'_>, k: usize) -> Result<Vec<f64>, BanditError> {
    let n = sample.cluster.len();
    let xs = sample.scored_rows()?;
    let z: Vec<f64> = sample.scored.iter().map(|&(_, z)| z).collect();
    let mut out = vec![0.0; n];
    for start in (0..n).step_by(BLOCK) {
        let end = (start + BLOCK).min(n);
        let sims = sample.features.read(start..end)?.dot(&xs.t());
        for (r, row) in sims.outer_iter().enumerate() {
            let doc = start + r;
            let mut order: Vec<(f32, usize)> = row
                .iter()
                .enumerate()
                .filter(|&(j, _)| sample.scored[j].0 != doc)
                .map(|(j, &v)| (v, j))
                .collect();
            let kk = k.min(order.len());
            if kk == 0 {
                continue;
            }
            order.select_nth_unstable_by(kk - 1, |a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            out[doc] = order[..kk].iter().map(|&(_, j)| z[j]).sum::<f64>() / kk as f64;
        }
    }
    Ok(out)
}

/// A one-hidden-layer regression network `ẑ = ȳ + σ_y · (v · tanh(W x + b) + c)` on centred,
/// scaled targets; full-batch Adam (lr 1e-3, weight decay 1e-3) for up to 400 epochs, keeping the
/// weights of the epoch with the lowest error on a seeded fifth of the sample held out.
struct Mlp {
    w: Array2<f64>,
    b: Array1<f64>,
    v: Array1<f64>,
    c: f64,
    mean_y: f64,
    scale_y: f64,
}

impl Mlp {
    fn fit(sample: &Sample<'_>, hidden: usize, seed: u64) -> Result<Self, BanditError> {
        let x_all = sample.scored_rows()?.mapv(f64::from);
        let y_all = clipped(&sample.targets());
        let mean_y = y_all.mean().unwrap_or(0.0);
        let scale_y = y_all.std(0.0).max(1e-12);
        let y_all = y_all.mapv(|v| (v - mean_y) / scale_y);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut order: Vec<usize> = (0..y_all.len()).collect();
        order.shuffle(&mut rng);
        let n_val = if order.len() >= 10 { order.len() / 5 } else { 0 };
        let (val, train) = order.split_at(n_val);
        let pick = |idx: &[usize]| (x_all.select(Axis(0), idx), y_all.select(Axis(0), idx));
        let (x, y) = pick(train);
        let (xv, yv) = pick(val);
        let d = x.ncols();
        let init = Normal::new(0.0, (1.0 / d as f64).sqrt()).expect("finite");
        let mut net = Mlp {
            w: Array2::from_shape_fn((hidden, d), |_| init.sample(&mut rng)),
            b: Array1::zeros(hidden),
            v: Array1::from_shape_fn(hidden, |_| init.sample(&mut rng) * (d as f64 / hidden as f64).sqrt()),
            c: 0.0,
            mean_y,
            scale_y,
        };
        let mut best = (f64::INFINITY, net.snapshot());
        let mut adam = Adam::new(&[hidden * d, hidden, hidden, 1]);
        let m = y.len().max(1) as f64;
        for epoch in 0..400 {
            let h = (x.dot(&net.w.t()) + &net.b).mapv(f64::tanh);
            let pred = h.dot(&net.v) + net.c;
            let err = (&pred - &y) / m; // d(½·mean sq. error)/d pred
            let gv = h.t().dot(&err) + 1e-3 * &net.v;
            let gc = err.sum();
            let gh = (&err.view().insert_axis(Axis(1)) * &net.v.view().insert_axis(Axis(0))) * h.mapv(|t| 1.0 - t * t);
            let gw = gh.t().dot(&x) + 1e-3 * &net.w;
            let gb = gh.sum_axis(Axis(0));
            adam.step(
                epoch + 1,
                &mut [
                    (net.w.as_slice_mut().expect("standard layout"), gw.as_slice().expect("standard layout")),
                    (net.b.as_slice_mut().expect("contiguous"), gb.as_slice().expect("contiguous")),
                    (net.v.as_slice_mut().expect("contiguous"), gv.as_slice().expect("contiguous")),
                    (std::slice::from_mut(&mut net.c), &[gc]),
                ],
            );
            let loss = if n_val > 0 {
                let pv = net.raw(xv.view());
                (&pv - &yv).mapv(|e| e * e).mean().unwrap_or(0.0)
            } else {
                0.0
            };
            if loss < best.0 || n_val == 0 {
                best = (loss, net.snapshot());
            }
        }
        let (w, b, v, c) = best.1;
        Ok(Mlp { w, b, v, c, mean_y, scale_y })
    }

    fn snapshot(&self) -> (Array2<f64>, Array1<f64>, Array1<f64>, f64) {
        (self.w.clone(), self.b.clone(), self.v.clone(), self.c)
    }

    /// The network's output on scaled targets.
    fn raw(&self, x: ArrayView2<'_, f64>) -> Array1<f64> {
        (x.dot(&self.w.t()) + &self.b).mapv(f64::tanh).dot(&self.v) + self.c
    }

    fn predict(&self, x: ArrayView2<'_, f32>) -> Vec<f64> {
        self.raw(x.mapv(f64::from).view()).iter().map(|r| self.mean_y + self.scale_y * r).collect()
    }
}

/// Adam (β = 0.9, 0.999; lr 1e-3) over a list of parameter slices.
struct Adam {
    m: Vec<Vec<f64>>,
    v: Vec<Vec<f64>>,
}

impl Adam {
    fn new(sizes: &[usize]) -> Self {
        Self {
            m: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            v: sizes.iter().map(|&n| vec![0.0; n]).collect(),
        }
    }

    fn step(&mut self, t: usize, params: &mut [(&mut [f64], &[f64])]) {
        let (b1, b2, lr, eps) = (0.9f64, 0.999f64, 1e-3, 1e-8);
        let c1 = 1.0 - b1.powi(t as i32);
        let c2 = 1.0 - b2.powi(t as i32);
        for ((p, g), (m, v)) in params.iter_mut().zip(self.m.iter_mut().zip(self.v.iter_mut())) {
            for i in 0..p.len() {
                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                p[i] -= lr * (m[i] / c1) / ((v[i] / c2).sqrt() + eps);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray_linalg::Solve;

    fn unit_rows(n: usize, d: usize, seed: u64) -> Array2<f32> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let g = Normal::new(0.0f32, 1.0).unwrap();
        let mut x = Array2::from_shape_fn((n, d), |_| g.sample(&mut rng));
        for mut r in x.outer_iter_mut() {
            let norm = r.dot(&r).sqrt();
            r /= norm;
        }
        x
    }

    /// The primal solution `w = (X_cᵀ X_c + λI)⁻¹ X_cᵀ y_c`, solved directly.
    fn primal(x: &Array2<f64>, y: &Array1<f64>, lambda: f64) -> Array1<f64> {
        let xc = x - &x.mean_axis(Axis(0)).unwrap();
        let yc = y - y.mean().unwrap();
        let a = xc.t().dot(&xc) + Array2::<f64>::eye(x.ncols()) * lambda;
        a.solve(&xc.t().dot(&yc)).unwrap()
    }

    #[test]
    fn ridge_matches_the_primal_solution_and_brute_force_leave_one_out() {
        let x32 = unit_rows(30, 8, 1);
        let x = x32.mapv(f64::from);
        let truth = Array1::from_vec(vec![1.0, -2.0, 0.5, 0.0, 3.0, 0.0, -1.0, 0.25]);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
        let noise = Normal::new(0.0, 0.3).unwrap();
        let y: Array1<f64> = x.dot(&truth).mapv(|v| v + noise.sample(&mut rng));
        let fit = RidgeFit::fit(x.view(), y.view());
        let w = primal(&x, &y, fit.lambda);
        for (a, b) in fit.w.iter().zip(&w) {
            assert!((a - b).abs() < 1e-8, "dual {a} vs primal {b}");
        }
        // Leave-one-out by refitting without each document, at the chosen λ.
        let mut press = 0.0;
        for i in 0..30 {
            let keep: Vec<usize> = (0..30).filter(|&j| j != i).collect();
            let (xi, yi) = (x.select(Axis(0), &keep), y.select(Axis(0), &keep));
            let wi = primal(&xi, &yi, fit.lambda);
            let pred = yi.mean().unwrap() + (&x.row(i) - &xi.mean_axis(Axis(0)).unwrap()).dot(&wi);
            press += (y[i] - pred).powi(2);
        }
        // The centring moves with the left-out row, so PRESS on centred data is close, not equal.
        let brute = press / 30.0;
        assert!((fit.loo_mse - brute).abs() < 0.1 * brute, "closed form {} vs refits {brute}", fit.loo_mse);
        // And the predictions are ȳ + (x − μ)ᵀ w.
        let p = fit.predict(x32.view());
        let direct = y.mean().unwrap() + (&x.row(3) - &x.mean_axis(Axis(0)).unwrap()).dot(&w);
        assert!((p[3] - direct).abs() < 1e-5);
    }

    #[test]
    fn cluster_mean_and_knn_are_what_they_say() {
        let x = unit_rows(6, 4, 3);
        let cluster = [0, 0, 1, 1, 2, 2];
        let scored = [(0, 1.0), (1, 3.0), (2, -1.0)];
        let sample = Sample { features: &x, cluster: &cluster, k: 3, scored: &scored };
        let cm = Estimator::ClusterMean.predict(&sample).unwrap();
        assert_eq!(cm, vec![2.0, 2.0, -1.0, -1.0, 1.0, 1.0]);
        let knn1 = Estimator::Knn { k: 1 }.predict(&sample).unwrap();
        for d in 0..6 {
            let nearest = scored
                .iter()
                .filter(|&&(s, _)| s != d)
                .max_by(|a, b| x.row(d).dot(&x.row(a.0)).total_cmp(&x.row(d).dot(&x.row(b.0))))
                .unwrap();
            assert_eq!(knn1[d], nearest.1, "document {d}");
        }
        let all = Estimator::Knn { k: 10 }.predict(&sample).unwrap();
        assert!((all[5] - 1.0).abs() < 1e-12, "all three scored: mean 1");
        assert!((all[0] - 1.0).abs() < 1e-12, "itself excluded: mean of 3 and −1");
    }

    #[test]
    fn estimators_recover_a_linear_signal_and_refuse_bad_samples() {
        let n = 400;
        let x = unit_rows(n, 16, 4);
        let dir = unit_rows(1, 16, 5).row(0).mapv(f64::from);
        let z: Vec<f64> = x.outer_iter().map(|r| 4.0 * r.mapv(f64::from).dot(&dir)).collect();
        let cluster: Vec<usize> = (0..n).map(|d| d % 4).collect();
        let scored: Vec<(usize, f64)> = (0..n).step_by(3).map(|d| (d, z[d])).collect();
        let sample = Sample { features: &x, cluster: &cluster, k: 4, scored: &scored };
        let corr = |p: &[f64]| {
            let held: Vec<usize> = (0..n).filter(|d| d % 3 != 0).collect();
            let (a, b): (Vec<f64>, Vec<f64>) = held.iter().map(|&d| (p[d], z[d])).unzip();
            let (ma, mb) = (a.iter().sum::<f64>() / a.len() as f64, b.iter().sum::<f64>() / b.len() as f64);
            let cov: f64 = a.iter().zip(&b).map(|(x, y)| (x - ma) * (y - mb)).sum();
            let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
            let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
            cov / (va * vb).sqrt()
        };
        for e in [Estimator::Ridge, Estimator::ClusterRidge, Estimator::Mlp { hidden: 8, seed: 0 }] {
            let p = e.predict(&sample).unwrap();
            assert!(corr(&p) > 0.9, "{}: correlation {}", e.name(), corr(&p));
        }
        assert!(corr(&Estimator::Knn { k: 5 }.predict(&sample).unwrap()) > 0.5);
        // The clusters carry no signal here.
        assert!(corr(&Estimator::ClusterMean.predict(&sample).unwrap()).abs() < 0.3);

        // On the same rows, the signal form is the residual form (the pipeline passes other rows).
        assert_eq!(Estimator::Signals.predict(&sample).unwrap(), Estimator::ClusterRidge.predict(&sample).unwrap());

        let out_of_range = [(n, 1.0)];
        let bad = Sample { scored: &out_of_range, ..sample };
        assert!(Estimator::Ridge.predict(&bad).is_err());
        let nan = [(0, f64::NAN)];
        let bad = Sample { features: &x, cluster: &cluster, k: 4, scored: &nan };
        assert!(Estimator::ClusterMean.predict(&bad).is_err());
    }
}
