//! Fitting the centroids: Lloyd iterations (blocked GEMM assignment, f64 means) with
//! scikit-learn's stopping rule, or linfa's mini-batch k-means.

use linfa::prelude::*;
use linfa::DatasetBase;
use linfa_clustering::KMeans;
use linfa_nn::distance::L2Dist;
use ndarray::{Array2, ArrayView2, Axis};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256Plus;
use rayon::prelude::*;

use super::*;

/// `n_init` seeded runs of Lloyd (or mini-batch) k-means on `matrix`; the centroids and iteration
/// count of the run with the lowest inertia on `matrix`.
pub(super) fn fit_centroids(
    params: &ValidKMeansParams,
    k: usize,
    matrix: ArrayView2<f32>,
    on_event: &mut impl FnMut(KMeansEvent),
) -> Result<(Array2<f32>, usize), ClusterError> {
    // scikit-learn's tolerance: tol × mean per-feature variance.
    let var_mean = matrix.var_axis(Axis(0), 0.0).mean().unwrap_or(0.0) as f64;
    let abs_tol = params.tol * var_mean;
    let mut best: Option<(f64, Array2<f32>, usize)> = None;
    for run in 0..params.n_init {
        on_event(KMeansEvent::RunStarted {
            run,
            n_init: params.n_init,
        });
        let seed = params
            .seed
            .wrapping_add((run as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let (centroids, n_iter) = match params.mini_batch {
            None => lloyd(params, k, matrix, seed, abs_tol, run, on_event)?,
            Some(b) => mini_batch(params, k, matrix, b, seed, abs_tol, run, on_event)?,
        };
        let (_, sq) = assign(matrix, centroids.view());
        let inertia: f64 = sq.iter().map(|&d| d as f64).sum();
        if best.as_ref().is_none_or(|(b, _, _)| inertia < *b) {
            best = Some((inertia, centroids, n_iter));
        }
    }
    let (_, centroids, n_iter) = best.expect("n_init ≥ 1");
    Ok((centroids, n_iter))
}

pub(super) fn dataset(m: ArrayView2<f32>) -> DatasetBase<ArrayView2<f32>, ()> {
    DatasetBase::new(m, ())
}

/// Full-batch Lloyd: [`kmeans_plus_plus`] for the start, then iterations, each a blocked-GEMM
/// assignment ([`assign`]) and the mean of every cluster ([`update_centroids`]).
pub(super) fn lloyd(
    params: &ValidKMeansParams,
    k: usize,
    matrix: ArrayView2<f32>,
    seed: u64,
    abs_tol: f64,
    run: usize,
    on_event: &mut impl FnMut(KMeansEvent),
) -> Result<(Array2<f32>, usize), ClusterError> {
    let start = if matrix.nrows() > SEED_ROWS {
        // Seeding is one memory-bound matrix-vector pass over its rows per centre: on a seeded
        // sample of them (the fit itself still runs on every row of `matrix`).
        let mut rows: Vec<usize> = (0..matrix.nrows()).collect();
        rows.partial_shuffle(&mut Xoshiro256Plus::seed_from_u64(seed ^ 0x5eed_5eed), SEED_ROWS);
        rows.truncate(SEED_ROWS);
        rows.sort_unstable();
        kmeans_plus_plus(matrix.select(Axis(0), &rows).view(), k, seed)
    } else {
        kmeans_plus_plus(matrix, k, seed)
    };
    let mut centroids = update_centroids(matrix, &start);
    on_event(KMeansEvent::Iteration {
        run,
        iter: 1,
        shift: f64::NAN,
    });
    let mut iter = 1;
    while iter < params.max_iter {
        let next = update_centroids(matrix, &centroids);
        let shift = squared_shift(&centroids, &next);
        centroids = next;
        iter += 1;
        on_event(KMeansEvent::Iteration { run, iter, shift });
        if shift <= abs_tol {
            break;
        }
    }
    Ok((centroids, iter))
}

/// Mini-batch k-means with linfa's incremental fit: each epoch visits the rows in a fresh seeded
/// order, `batch` rows at a time; only one batch is copied at once.
///
/// Per-centre counts grow with every batch, so centroids settle; we stop when an epoch's centroid
/// shift is under the tolerance, or when the epoch's mean batch inertia has not improved by more
/// than `tol` (relative) for [`MINI_BATCH_PATIENCE`] epochs (scikit-learn's MiniBatchKMeans stops
/// on stalled inertia likewise).
#[allow(clippy::too_many_arguments)]
pub(super) fn mini_batch(
    params: &ValidKMeansParams,
    k: usize,
    matrix: ArrayView2<f32>,
    batch: usize,
    seed: u64,
    abs_tol: f64,
    run: usize,
    on_event: &mut impl FnMut(KMeansEvent),
) -> Result<(Array2<f32>, usize), ClusterError> {
    let n = matrix.nrows();
    let batch = batch.max(k).min(n);
    let fitter = KMeans::params_with(k, Xoshiro256Plus::seed_from_u64(seed), L2Dist)
        .n_runs(1)
        .tolerance(f32::MIN_POSITIVE) // we judge convergence per epoch ourselves
        .check()
        .map_err(|e| ClusterError::KMeans(e.to_string()))?;
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Xoshiro256Plus::seed_from_u64(seed ^ 0x5EED);
    let mut model = None;
    let mut iter = 0;
    let mut best_inertia = f64::INFINITY;
    let mut stalled = 0;
    let mut buf = Array2::<f32>::zeros((batch, matrix.ncols()));
    while iter < params.max_iter {
        order.shuffle(&mut rng);
        let before = model.as_ref().map(|m: &KMeans<f32, L2Dist>| m.centroids().clone());
        let mut epoch_inertia = 0.0;
        for chunk in order.chunks(batch) {
            let mut rows = buf.slice_mut(ndarray::s![..chunk.len(), ..]);
            for (r, &i) in chunk.iter().enumerate() {
                rows.row_mut(r).assign(&matrix.row(i));
            }
            let view = buf.slice(ndarray::s![..chunk.len(), ..]);
            let data = dataset(view);
            let m = match fitter.fit_with(model.take(), &data) {
                Ok(m) => m,
                Err(linfa_clustering::IncrKMeansError::NotConverged(m)) => m,
                Err(e) => return Err(ClusterError::KMeans(e.to_string())),
            };
            // linfa reports the batch's mean squared distance.
            epoch_inertia += m.inertia() as f64 * chunk.len() as f64;
            model = Some(m);
        }
        iter += 1;
        let now = model.as_ref().expect("at least one batch").centroids();
        let shift = before.map_or(f64::NAN, |b| squared_shift(&b, now));
        on_event(KMeansEvent::Iteration { run, iter, shift });
        if shift <= abs_tol {
            break;
        }
        if epoch_inertia < best_inertia * (1.0 - params.tol) {
            best_inertia = epoch_inertia;
            stalled = 0;
        } else {
            stalled += 1;
            if stalled >= MINI_BATCH_PATIENCE {
                break;
            }
        }
    }
    Ok((model.expect("at least one batch").centroids().clone(), iter))
}

/// One Lloyd update: every row to its nearest centroid, then each centroid to the mean of its rows
/// (`c_j = Σ_{i: a(i)=j} x_i / n_j`, summed in f64); a centroid that lost all its rows stays put.
pub fn update_centroids(matrix: ArrayView2<f32>, centroids: &Array2<f32>) -> Array2<f32> {
    let (k, d) = centroids.dim();
    let (assignment, _) = assign(matrix, centroids.view());
    let zero = || (Array2::<f64>::zeros((k, d)), vec![0usize; k]);
    let (sums, counts) = matrix
        .axis_chunks_iter(Axis(0), ASSIGN_BLOCK)
        .into_par_iter()
        .zip(assignment.par_chunks(ASSIGN_BLOCK))
        .fold(zero, |(mut sums, mut counts), (block, assigned)| {
            for (x, &j) in block.rows().into_iter().zip(assigned) {
                counts[j] += 1;
                sums.row_mut(j).zip_mut_with(&x, |s, &v| *s += v as f64);
            }
            (sums, counts)
        })
        .reduce(zero, |(mut s1, mut c1), (s2, c2)| {
            s1 += &s2;
            c1.iter_mut().zip(c2).for_each(|(a, b)| *a += b);
            (s1, c1)
        });
    let mut next = centroids.clone();
    for j in 0..k {
        if counts[j] > 0 {
            let n = counts[j] as f64;
            next.row_mut(j).assign(&sums.row(j).mapv(|s| (s / n) as f32));
        }
    }
    next
}

/// Epochs without inertia improvement before mini-batch k-means stops.
pub(super) const MINI_BATCH_PATIENCE: usize = 3;

/// `Σ_i ‖a_i − b_i‖²` over centroid rows.
pub(super) fn squared_shift(a: &Array2<f32>, b: &Array2<f32>) -> f64 {
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum()
}
