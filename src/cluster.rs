//! Cluster stage: k-means over unit-norm embeddings, and the cluster structure the bandit uses.
//!
//! Rows are unit vectors, so squared Euclidean distance is `2 − 2·cos`: cosine geometry. k-means++
//! seeding ([`kmeans_plus_plus`], O(n·k·d)) gives the start; Lloyd iterations follow, each a
//! blocked GEMM assignment (`‖x‖² − 2·X·Cᵀ + ‖c‖²`, [`assign`]) and the f64 mean of every cluster
//! ([`update_centroids`]). They stop on scikit-learn's criterion: the summed squared centroid shift
//! falls below `tol · mean_j Var(X[:, j])`. `n_init` runs with derived seeds; the lowest inertia
//! wins. [`KMeansParams::mini_batch`] switches to linfa's incremental (mini-batch) k-means.
//!
//! Scale: the centroids are fitted on at most [`KMeansParams::fit_rows`] rows (a seeded sample
//! past that, as faiss does), then every row is assigned in one pass.
//! [`Clustering::fit_stored`] does this over a matrix on disk, read a block at a time, so memory
//! holds the sample and one block whatever the pool's size. [`ClusterCount::Auto`] picks k from n.
//!
//! Outputs ([`Clustering`]): cluster of every document and its distance to the centroid,
//! centroids, sizes, inertia `Σ_n ‖x_n − c(n)‖²`, the k×k cosine distance matrix between centroids
//! `d(i,j) = 1 − cos(c_i, c_j)`, and each cluster's neighbours `{ j ≠ i : d(i,j) < τ }` — the graph
//! over which the bandit shares rewards.

use std::path::{Path, PathBuf};

use linfa::prelude::*;
use linfa::DatasetBase;
use linfa_clustering::KMeans;
use linfa_nn::distance::L2Dist;
use ndarray::{Array1, Array2, ArrayView2, Axis};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256Plus;
use rayon::prelude::*;
use serde::Serialize;

use crate::atomic::write_atomic;
use crate::embed::Embeddings;
use crate::npy::NpyRows;

/// Errors of the cluster stage.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("invalid k-means parameters: {0}")]
    Params(String),
    #[error("k = {k} is larger than the number of documents ({n})")]
    TooFewDocuments { k: usize, n: usize },
    #[error("embedding of document {id:?} (row {row}) contains NaN or infinity")]
    NonFinite { id: String, row: usize },
    #[error("embedding of document {id:?} (row {row}) is all zeros; it has no direction to cluster by")]
    ZeroRow { id: String, row: usize },
    #[error("k-means failed: {0}")]
    KMeans(String),
    #[error(transparent)]
    Io(#[from] crate::path_io::PathIoError),
}

/// How many clusters: a fixed number, or [`ClusterCount::Auto`], which grows with the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClusterCount {
    /// `2^round(log2 √(n / 16))`, clamped to `[2, 4096]` and to n: 32 for the 18k-document pool,
    /// 64 at 100k, 256 at 1M, 8,192 past 700M (Quad's own 600M-document run used 10k clusters).
    /// √n growth keeps the bandit's exploration (it tries every cluster) a shrinking share of a
    /// budget that grows like n; the power of two keeps k from changing with every few documents.
    #[default]
    Auto,
    Fixed(usize),
}

impl ClusterCount {
    /// Largest k [`ClusterCount::Auto`] picks.
    pub const AUTO_MAX: usize = 4096;

    /// The number of clusters for `n` documents.
    pub fn resolve(self, n: usize) -> usize {
        match self {
            Self::Fixed(k) => k,
            Self::Auto => {
                let root = (n as f64 / 16.0).sqrt().max(1.0);
                let k = 2f64.powi(root.log2().round() as i32) as usize;
                k.clamp(2, Self::AUTO_MAX).min(n.max(1))
            }
        }
    }
}

impl std::fmt::Display for ClusterCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Fixed(k) => write!(f, "{k}"),
        }
    }
}

impl std::str::FromStr for ClusterCount {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            _ => s.parse().map(Self::Fixed).map_err(|_| format!("{s:?}: k is a number of clusters or \"auto\"")),
        }
    }
}

impl From<usize> for ClusterCount {
    fn from(k: usize) -> Self {
        Self::Fixed(k)
    }
}

/// In TOML and JSON: a number, or the string `"auto"`.
impl Serialize for ClusterCount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Auto => s.serialize_str("auto"),
            Self::Fixed(k) => s.serialize_u64(*k as u64),
        }
    }
}

impl<'de> serde::Deserialize<'de> for ClusterCount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(k) => Ok(Self::Fixed(k as usize)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// k-means settings, validated by [`KMeansParams::check`] (linfa style).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KMeansParams {
    /// Number of clusters.
    pub k: ClusterCount,
    /// Independent k-means++ initialisations; the lowest inertia wins.
    pub n_init: usize,
    /// Maximum Lloyd iterations per run (epochs in mini-batch mode).
    pub max_iter: usize,
    /// Relative tolerance on the centroid shift (scikit-learn's meaning).
    pub tol: f64,
    pub seed: u64,
    /// Batch size for mini-batch k-means; `None` runs full-batch Lloyd.
    pub mini_batch: Option<usize>,
    /// The centroids are fitted on at most this many rows (a seeded sample when there are more),
    /// then every row is assigned to its nearest centroid in one blocked pass. 65,536 rows: 256
    /// per centroid at k = 256 (faiss's default sample), every row of a pool of up to 65,536
    /// documents, and 512 MB at 2,048 dimensions whatever the pool's size.
    pub fit_rows: usize,
}

impl Default for KMeansParams {
    fn default() -> Self {
        Self {
            k: ClusterCount::Auto,
            n_init: 3,
            max_iter: 300,
            tol: 1e-4,
            seed: 0,
            mini_batch: None,
            fit_rows: 65_536,
        }
    }
}

/// Parameters that passed [`KMeansParams::check`].
#[derive(Debug, Clone)]
pub struct ValidKMeansParams(KMeansParams);

impl KMeansParams {
    pub fn check(self) -> Result<ValidKMeansParams, ClusterError> {
        let bad = |m: &str| Err(ClusterError::Params(m.to_string()));
        if self.k == ClusterCount::Fixed(0) {
            return bad("k must be at least 1");
        }
        if self.fit_rows == 0 {
            return bad("fit_rows must be at least 1");
        }
        if self.n_init == 0 {
            return bad("n_init must be at least 1");
        }
        if self.max_iter == 0 {
            return bad("max_iter must be at least 1");
        }
        if !(self.tol >= 0.0 && self.tol.is_finite()) {
            return bad("tol must be a finite number ≥ 0");
        }
        if self.mini_batch == Some(0) {
            return bad("mini-batch size must be at least 1");
        }
        Ok(ValidKMeansParams(self))
    }
}

impl std::ops::Deref for ValidKMeansParams {
    type Target = KMeansParams;
    fn deref(&self) -> &KMeansParams {
        &self.0
    }
}

/// Checks every row for NaN/∞ and zeros (naming the document), and rescales rows that are not
/// unit-norm. Returns how many rows were rescaled.
pub fn prepare_rows(embeddings: &mut Embeddings) -> Result<usize, ClusterError> {
    let rescaled = embeddings
        .matrix
        .rows_mut()
        .into_iter()
        .map(crate::embed::rescale_to_unit)
        .filter(|&r| r)
        .count();
    check_rows(embeddings.matrix.view(), &embeddings.ids)?;
    Ok(rescaled)
}

/// Checks rows that cannot be changed (a matrix on disk): no NaN/∞, no zero row (naming the
/// document), every row unit-norm within 1e-4.
pub fn check_rows(matrix: ArrayView2<f32>, ids: &[String]) -> Result<(), ClusterError> {
    check_block(matrix, 0, ids)
}

/// [`check_rows`] for a block whose first row is row `first` of the matrix.
fn check_block(matrix: ArrayView2<f32>, first: usize, ids: &[String]) -> Result<(), ClusterError> {
    for (i, v) in matrix.rows().into_iter().enumerate() {
        check_row(v, first + i, ids)?;
    }
    Ok(())
}

fn check_row(v: ndarray::ArrayView1<f32>, row: usize, ids: &[String]) -> Result<(), ClusterError> {
    let id = || ids.get(row).cloned().unwrap_or_default();
    if v.iter().any(|x| !x.is_finite()) {
        return Err(ClusterError::NonFinite { id: id(), row });
    }
    let norm = v.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>().sqrt();
    if norm == 0.0 {
        return Err(ClusterError::ZeroRow { id: id(), row });
    }
    if (norm - 1.0).abs() > 1e-4 {
        return Err(ClusterError::Params(format!(
            "embedding of document {:?} (row {row}) has norm {norm:.6}, not 1; embed it again",
            id()
        )));
    }
    Ok(())
}

/// Progress events of a k-means fit.
#[derive(Debug, Clone, Copy)]
pub enum KMeansEvent {
    /// Run `run` (0-based) of `n_init` starts.
    RunStarted { run: usize, n_init: usize },
    /// One Lloyd iteration (or mini-batch epoch) done, with the centroid shift it made.
    Iteration { run: usize, iter: usize, shift: f64 },
}

/// A fitted clustering.
#[derive(Debug, Clone, Serialize)]
pub struct Clustering {
    /// Cluster of each document (row order of the embeddings).
    pub assignment: Vec<usize>,
    /// Euclidean distance of each document to its centroid.
    pub distance: Vec<f32>,
    /// k × d centroids (means of unit vectors, so not unit-norm themselves).
    #[serde(skip)]
    pub centroids: Array2<f32>,
    pub sizes: Vec<usize>,
    /// Sum of squared distances of documents to their centroids.
    pub inertia: f64,
    /// Iterations of the winning run.
    pub n_iter: usize,
    /// k × k cosine distances between centroids, `1 − cos(c_i, c_j)`.
    #[serde(skip)]
    pub centroid_distances: Array2<f32>,
}

impl Clustering {
    /// Fits k-means to the rows of `matrix` (unit-norm; see [`prepare_rows`]): centroids on at most
    /// `fit_rows` of them ([`fit_sample`]), then every row to its nearest centroid.
    pub fn fit(
        params: &ValidKMeansParams,
        matrix: ArrayView2<f32>,
        mut on_event: impl FnMut(KMeansEvent),
    ) -> Result<Self, ClusterError> {
        let n = matrix.nrows();
        let k = params.k.resolve(n);
        let (centroids, n_iter) = match fit_sample(params, n, k)? {
            None => fit_centroids(params, k, matrix, &mut on_event)?,
            Some(rows) => fit_centroids(params, k, matrix.select(Axis(0), &rows).view(), &mut on_event)?,
        };
        let (assignment, sq) = assign(matrix, centroids.view());
        Ok(Self::from_assignment(k, centroids, n_iter, assignment, sq))
    }

    /// [`Clustering::fit`] over a matrix on disk, read a block at a time: memory holds the fit
    /// sample (at most `fit_rows` rows), one block and the per-row results, whatever n is. Rows are
    /// checked as they are read ([`check_rows`]; `ids` name the rows in errors).
    pub fn fit_stored(
        params: &ValidKMeansParams,
        rows: &NpyRows,
        ids: &[String],
        on_event: impl FnMut(KMeansEvent),
    ) -> Result<Self, ClusterError> {
        let mut here = |blocks: Vec<Array2<f32>>, centroids: ArrayView2<f32>| Ok(blocks.iter().map(|b| assign(b.view(), centroids)).collect());
        Self::fit_stored_with(params, rows, ids, on_event, 1, &mut here)
    }

    /// [`Clustering::fit_stored`] with the assignment of every row to the fitted centroids handed
    /// to `assign_blocks`, `group` blocks of [`ASSIGN_BLOCK`] rows at a time (for an executor that
    /// assigns them in parallel elsewhere). Each block must come back as [`assign`] on it makes
    /// it, and then the clustering is the same.
    pub fn fit_stored_with(
        params: &ValidKMeansParams,
        rows: &NpyRows,
        ids: &[String],
        mut on_event: impl FnMut(KMeansEvent),
        group: usize,
        assign_blocks: AssignBlocks<'_>,
    ) -> Result<Self, ClusterError> {
        let n = rows.rows();
        let k = params.k.resolve(n);
        let mut assigner = BlockAssigner {
            assign_blocks,
            group: group.max(1),
            pending: Vec::new(),
            assignment: Vec::with_capacity(n),
            sq: Vec::with_capacity(n),
        };
        let Some(idx) = fit_sample(params, n, k)? else {
            // Every row is in the fit: read them once and cluster them in memory.
            let matrix = rows.read_rows(0..n)?;
            check_rows(matrix.view(), ids)?;
            let (centroids, n_iter) = fit_centroids(params, k, matrix.view(), &mut on_event)?;
            for block in matrix.axis_chunks_iter(Axis(0), ASSIGN_BLOCK) {
                assigner.push(block.to_owned(), centroids.view())?;
            }
            let (assignment, sq) = assigner.finish(centroids.view())?;
            return Ok(Self::from_assignment(k, centroids, n_iter, assignment, sq));
        };
        let (centroids, n_iter) = {
            let sample = rows.gather(&idx)?;
            for (v, &row) in sample.rows().into_iter().zip(&idx) {
                check_row(v, row, ids)?;
            }
            fit_centroids(params, k, sample.view(), &mut on_event)?
        };
        // Blocks of ASSIGN_BLOCK rows from row 0: the same GEMMs as `assign` over the whole matrix.
        for block in rows.blocks(ASSIGN_BLOCK) {
            let (first, block) = block?;
            check_block(block.view(), first, ids)?;
            assigner.push(block, centroids.view())?;
        }
        let (assignment, sq) = assigner.finish(centroids.view())?;
        Ok(Self::from_assignment(k, centroids, n_iter, assignment, sq))
    }

    fn from_assignment(k: usize, centroids: Array2<f32>, n_iter: usize, assignment: Vec<usize>, sq: Vec<f32>) -> Self {
        let inertia: f64 = sq.iter().map(|&d| d as f64).sum();
        let mut sizes = vec![0usize; k];
        for &c in &assignment {
            sizes[c] += 1;
        }
        let centroid_distances = cosine_distances(centroids.view());
        Self {
            assignment,
            distance: sq.iter().map(|d| d.max(0.0).sqrt()).collect(),
            centroids,
            sizes,
            inertia,
            n_iter,
            centroid_distances,
        }
    }

    pub fn k(&self) -> usize {
        self.sizes.len()
    }

    /// For each cluster, the other clusters within τ (the bandit's neighbour radius), nearest first.
    pub fn neighbours(&self, tau: f64) -> Vec<Vec<(usize, f32)>> {
        neighbours_within(&self.centroid_distances, tau)
    }

    /// Writes `assignments.jsonl` (id, cluster, distance), `clusters.json` (sizes, inertia,
    /// neighbours, centroid distance matrix, params) and `centroids.npy`, each atomically.
    pub fn save(
        &self,
        dir: &Path,
        ids: &[String],
        params: &KMeansParams,
        tau: f64,
        extra: serde_json::Value,
    ) -> Result<(), ClusterError> {
        use ndarray_npy::WriteNpyExt;
        let io = |path: PathBuf| move |e| ClusterError::Io(crate::path_io::PathIoError::new(path, e));
        std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
        let assignments = dir.join("assignments.jsonl");
        write_atomic(&assignments, |w| {
            for ((id, c), d) in ids.iter().zip(&self.assignment).zip(&self.distance) {
                serde_json::to_writer(
                    &mut *w,
                    &serde_json::json!({"id": id, "cluster": c, "distance": d}),
                )?;
                w.write_all(b"\n")?;
            }
            Ok(())
        })
        .map_err(io(assignments.clone()))?;

        let neighbours: Vec<Vec<serde_json::Value>> = self
            .neighbours(tau)
            .iter()
            .map(|ns| {
                ns.iter()
                    .map(|(j, d)| serde_json::json!({"cluster": j, "distance": d}))
                    .collect()
            })
            .collect();
        let distances: Vec<Vec<f32>> = self
            .centroid_distances
            .rows()
            .into_iter()
            .map(|r| r.to_vec())
            .collect();
        let summary = serde_json::json!({
            "k": self.k(),
            "documents": ids.len(),
            "params": params,
            "inertia": self.inertia,
            "n_iter": self.n_iter,
            "sizes": self.sizes,
            "tau": tau,
            "neighbours": neighbours,
            "centroid_cosine_distances": distances,
            "extra": extra,
        });
        let clusters = dir.join("clusters.json");
        write_atomic(&clusters, |w| {
            serde_json::to_writer_pretty(&mut *w, &summary)?;
            w.write_all(b"\n")
        })
        .map_err(io(clusters.clone()))?;

        let centroids = dir.join("centroids.npy");
        write_atomic(&centroids, |w| {
            self.centroids
                .write_npy(w)
                .map_err(|e| std::io::Error::other(e.to_string()))
        })
        .map_err(io(centroids.clone()))?;
        Ok(())
    }
}

/// The rows the centroids are fitted on: `None` for all of them (n ≤ `fit_rows`), else a seeded
/// sample of `max(fit_rows, k)` distinct rows in increasing order.
pub fn fit_sample(params: &ValidKMeansParams, n: usize, k: usize) -> Result<Option<Vec<usize>>, ClusterError> {
    if k > n {
        return Err(ClusterError::TooFewDocuments { k, n });
    }
    let m = params.fit_rows.max(k);
    if n <= m {
        return Ok(None);
    }
    let mut rng = Xoshiro256Plus::seed_from_u64(params.seed ^ 0xF17_5A3F1E);
    let mut rows = rand::seq::index::sample(&mut rng, n, m).into_vec();
    rows.sort_unstable();
    Ok(Some(rows))
}

/// `n_init` seeded runs of Lloyd (or mini-batch) k-means on `matrix`; the centroids and iteration
/// count of the run with the lowest inertia on `matrix`.
fn fit_centroids(
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

fn dataset(m: ArrayView2<f32>) -> DatasetBase<ArrayView2<f32>, ()> {
    DatasetBase::new(m, ())
}

/// Full-batch Lloyd: [`kmeans_plus_plus`] for the start, then iterations, each a blocked-GEMM
/// assignment ([`assign`]) and the mean of every cluster ([`update_centroids`]).
fn lloyd(
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
fn mini_batch(
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

/// k-means++ seeding (Arthur & Vassilvitskii 2007): the first centre a uniformly drawn row, each
/// next one a row drawn with probability `D(x)² / Σ D²`, where `D(x)` is the distance from x to
/// its nearest centre so far. `D²` is kept per row and lowered after each new centre with one
/// pass `‖x‖² − 2·x·c + ‖c‖²` over the rows (a matrix-vector product), so seeding costs O(n·k·d);
/// linfa's seeding re-scans every chosen centre for every row, O(n·k²·d), which took over 13
/// minutes at n = 65,536, d = 2,048, k = 256.
pub fn kmeans_plus_plus(matrix: ArrayView2<f32>, k: usize, seed: u64) -> Array2<f32> {
    use rand::Rng;
    let (n, d) = matrix.dim();
    let mut rng = Xoshiro256Plus::seed_from_u64(seed);
    let mut centroids = Array2::<f32>::zeros((k, d));
    let norms: Vec<f32> = matrix.rows().into_iter().map(|x| x.dot(&x)).collect();
    let mut d2 = vec![f64::INFINITY; n];
    let mut pick = rng.gen_range(0..n);
    for j in 0..k {
        centroids.row_mut(j).assign(&matrix.row(pick));
        let c = matrix.row(pick);
        let cc = norms[pick];
        let dots = matrix.dot(&c);
        d2.par_iter_mut().zip(dots.as_slice().expect("contiguous")).zip(&norms).for_each(|((m, &xc), &xx)| {
            let dist = (xx - 2.0 * xc + cc).max(0.0) as f64;
            if dist < *m {
                *m = dist;
            }
        });
        if j + 1 == k {
            break;
        }
        let total: f64 = d2.iter().sum();
        pick = if total > 0.0 {
            let mut u = rng.gen::<f64>() * total;
            let mut chosen = n - 1;
            for (i, &w) in d2.iter().enumerate() {
                if u < w {
                    chosen = i;
                    break;
                }
                u -= w;
            }
            chosen
        } else {
            // Every row sits on a centre already: any row will do.
            rng.gen_range(0..n)
        };
    }
    centroids
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
const MINI_BATCH_PATIENCE: usize = 3;

/// `Σ_i ‖a_i − b_i‖²` over centroid rows.
fn squared_shift(a: &Array2<f32>, b: &Array2<f32>) -> f64 {
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum()
}

/// Assigns blocks of rows to centroids: `(blocks, centroids) → (nearest centroid, squared
/// distance)` per block, in order ([`Clustering::fit_stored_with`]).
pub type AssignBlocks<'a> =
    &'a mut dyn FnMut(Vec<Array2<f32>>, ArrayView2<f32>) -> Result<Vec<(Vec<usize>, Vec<f32>)>, ClusterError>;

/// Collects blocks into groups for an [`AssignBlocks`] and the results in row order.
struct BlockAssigner<'a> {
    assign_blocks: AssignBlocks<'a>,
    group: usize,
    pending: Vec<Array2<f32>>,
    assignment: Vec<usize>,
    sq: Vec<f32>,
}

impl BlockAssigner<'_> {
    fn push(&mut self, block: Array2<f32>, centroids: ArrayView2<f32>) -> Result<(), ClusterError> {
        self.pending.push(block);
        if self.pending.len() == self.group {
            self.flush(centroids)?;
        }
        Ok(())
    }

    fn flush(&mut self, centroids: ArrayView2<f32>) -> Result<(), ClusterError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let sizes: Vec<usize> = self.pending.iter().map(|b| b.nrows()).collect();
        let done = (self.assign_blocks)(std::mem::take(&mut self.pending), centroids)?;
        if done.len() != sizes.len() || done.iter().zip(&sizes).any(|((a, d), &n)| a.len() != n || d.len() != n) {
            return Err(ClusterError::KMeans("the assignment executor answered out of shape".into()));
        }
        for (a, d) in done {
            if let Some(&bad) = a.iter().find(|&&c| c >= centroids.nrows()) {
                return Err(ClusterError::KMeans(format!("the assignment executor named cluster {bad} of {}", centroids.nrows())));
            }
            self.assignment.extend(a);
            self.sq.extend(d);
        }
        Ok(())
    }

    fn finish(mut self, centroids: ArrayView2<f32>) -> Result<(Vec<usize>, Vec<f32>), ClusterError> {
        self.flush(centroids)?;
        Ok((self.assignment, self.sq))
    }
}

/// Nearest centroid of every row and the squared distance to it, `‖x‖² − 2x·c + ‖c‖²`
/// (parallel over rows).
///
/// The cross terms `X·Cᵀ` of a block of rows are one GEMM (the BLAS ndarray links), so the step
/// costs what a matrix product costs; blocks of [`ASSIGN_BLOCK`] rows keep the b × k product small
/// whatever n is.
pub fn assign(matrix: ArrayView2<f32>, centroids: ArrayView2<f32>) -> (Vec<usize>, Vec<f32>) {
    let c_norms: Array1<f32> = centroids.rows().into_iter().map(|c| c.dot(&c)).collect();
    let ct = centroids.t();
    let mut assignment = Vec::with_capacity(matrix.nrows());
    let mut distance = Vec::with_capacity(matrix.nrows());
    for block in matrix.axis_chunks_iter(Axis(0), ASSIGN_BLOCK) {
        let dots = block.dot(&ct);
        let best: Vec<(usize, f32)> = block
            .axis_iter(Axis(0))
            .into_par_iter()
            .zip(dots.axis_iter(Axis(0)).into_par_iter())
            .map(|(x, row)| {
                let xx = x.dot(&x);
                let mut best = (0usize, f32::INFINITY);
                for (j, (&xc, &cc)) in row.iter().zip(&c_norms).enumerate() {
                    let d = (xx - 2.0 * xc + cc).max(0.0);
                    if d < best.1 {
                        best = (j, d);
                    }
                }
                best
            })
            .collect();
        for (j, d) in best {
            assignment.push(j);
            distance.push(d);
        }
    }
    (assignment, distance)
}

/// Names the k-means implementation in cache keys: cached clusterings made by another one are
/// not reused.
pub const ALGORITHM: &str = "kmeans++-gemm-lloyd-3";

/// k-means++ seeds on at most this many rows (a seeded sample of a larger fit): 64 per centre at
/// k = 1,024, plenty for its D² draws, while a seeding pass over a 262,144-row fit sample took a
/// fifth of a 1M-row clustering. At the default `fit_rows` (65,536) every fit row is seeded on.
pub const SEED_ROWS: usize = 65_536;

/// Rows per GEMM block of [`assign`]: 4,096 × k floats of cross terms at a time.
pub const ASSIGN_BLOCK: usize = 4096;

/// Cosine distance matrix `D_ij = 1 − c_i·c_j / (‖c_i‖‖c_j‖)`, with exact zeros on the diagonal.
pub fn cosine_distances(centroids: ArrayView2<f32>) -> Array2<f32> {
    let mut unit = centroids.to_owned();
    crate::embed::normalize_rows(&mut unit);
    let mut d = unit.dot(&unit.t()).mapv(|c| (1.0 - c).max(0.0));
    d.diag_mut().fill(0.0);
    d
}

/// For each cluster i, the clusters j ≠ i with `D_ij < τ`, nearest first.
pub fn neighbours_within(distances: &Array2<f32>, tau: f64) -> Vec<Vec<(usize, f32)>> {
    distances
        .rows()
        .into_iter()
        .enumerate()
        .map(|(i, row)| {
            let mut ns: Vec<(usize, f32)> = row
                .iter()
                .enumerate()
                .filter(|&(j, &d)| j != i && (d as f64) < tau)
                .map(|(j, &d)| (j, d))
                .collect();
            ns.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            ns
        })
        .collect()
}

/// External quality of a clustering against reference labels.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LabelAgreement {
    /// Normalised mutual information, arithmetic-mean normalisation (scikit-learn's default).
    pub nmi: f64,
    /// Adjusted Rand index.
    pub ari: f64,
    /// Share of documents whose cluster's majority label is their own.
    pub purity: f64,
}

/// Compares cluster ids with labels: NMI = `I(U;V) / ((H(U) + H(V)) / 2)`,
/// ARI = `(Σ C(n_ij,2) − E) / (½(Σ C(a_i,2) + Σ C(b_j,2)) − E)` with
/// `E = Σ C(a_i,2) Σ C(b_j,2) / C(n,2)`, purity = `Σ_i max_j n_ij / n`.
pub fn label_agreement(clusters: &[usize], labels: &[String]) -> LabelAgreement {
    assert_eq!(clusters.len(), labels.len());
    let n = clusters.len() as f64;
    let mut label_ids = std::collections::HashMap::new();
    let lab: Vec<usize> = labels
        .iter()
        .map(|l| {
            let next = label_ids.len();
            *label_ids.entry(l.as_str()).or_insert(next)
        })
        .collect();
    let kc = clusters.iter().max().map_or(0, |m| m + 1);
    let kl = label_ids.len();
    let mut table = vec![vec![0f64; kl]; kc];
    for (&c, &l) in clusters.iter().zip(&lab) {
        table[c][l] += 1.0;
    }
    let a: Vec<f64> = table.iter().map(|r| r.iter().sum()).collect();
    let b: Vec<f64> = (0..kl).map(|j| table.iter().map(|r| r[j]).sum()).collect();
    let entropy = |xs: &[f64]| -> f64 {
        xs.iter()
            .filter(|&&x| x > 0.0)
            .map(|&x| -(x / n) * (x / n).ln())
            .sum()
    };
    let mut mi = 0.0;
    for (i, row) in table.iter().enumerate() {
        for (j, &nij) in row.iter().enumerate() {
            if nij > 0.0 {
                mi += (nij / n) * ((n * nij) / (a[i] * b[j])).ln();
            }
        }
    }
    let (hu, hv) = (entropy(&a), entropy(&b));
    let nmi = if hu == 0.0 && hv == 0.0 {
        1.0
    } else {
        (mi / ((hu + hv) / 2.0)).clamp(0.0, 1.0)
    };
    let c2 = |x: f64| x * (x - 1.0) / 2.0;
    let sum_ij: f64 = table.iter().flatten().map(|&x| c2(x)).sum();
    let sum_a: f64 = a.iter().map(|&x| c2(x)).sum();
    let sum_b: f64 = b.iter().map(|&x| c2(x)).sum();
    let expected = sum_a * sum_b / c2(n);
    let max_index = (sum_a + sum_b) / 2.0;
    let ari = if max_index == expected {
        1.0
    } else {
        (sum_ij - expected) / (max_index - expected)
    };
    let purity = table
        .iter()
        .map(|r| r.iter().cloned().fold(0.0, f64::max))
        .sum::<f64>()
        / n;
    LabelAgreement { nmi, ari, purity }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    /// Values from scikit-learn's documentation and direct computation.
    #[test]
    fn agreement_metrics_match_known_values() {
        // Identical partitions up to renaming.
        let m = label_agreement(&[0, 0, 1, 1], &s(&["b", "b", "a", "a"]));
        assert!((m.nmi - 1.0).abs() < 1e-12 && (m.ari - 1.0).abs() < 1e-12);
        // sklearn: adjusted_rand_score([0,0,1,1],[0,0,1,2]) = 0.5714285714285715
        let m = label_agreement(&[0, 0, 1, 2], &s(&["x", "x", "y", "y"]));
        assert!((m.ari - 0.5714285714285715).abs() < 1e-12, "{}", m.ari);
        // sklearn: normalized_mutual_info_score([0,0,1,1],[0,0,1,2]) = 0.8
        assert!((m.nmi - 0.8).abs() < 1e-12, "{}", m.nmi);
        // sklearn: adjusted_rand_score([0,0,1,2],[0,0,1,1]) is symmetric; and
        // adjusted_rand_score([0,0,0,0],[0,1,2,3]) = 0.0
        let m = label_agreement(&[0, 0, 0, 0], &s(&["a", "b", "c", "d"]));
        assert!(m.ari.abs() < 1e-12 && m.nmi.abs() < 1e-12);
        assert!((m.purity - 0.25).abs() < 1e-12);
    }

    #[test]
    fn agreement_nmi_matches_direct_entropy_formula() {
        // Direct: H(U), H(V), I(U;V) from the joint distribution.
        let c = [0, 0, 0, 1, 1, 2, 2, 2, 2];
        let l = s(&["a", "a", "b", "b", "b", "c", "c", "a", "c"]);
        let m = label_agreement(&c, &l);
        let n = 9.0f64;
        let joint = [[2.0, 1.0, 0.0], [0.0, 2.0, 0.0], [1.0, 0.0, 3.0]];
        let pu = [3.0 / n, 2.0 / n, 4.0 / n];
        let pv = [3.0 / n, 3.0 / n, 3.0 / n];
        let h = |p: &[f64]| -p.iter().map(|x| x * x.ln()).sum::<f64>();
        let mut mi = 0.0;
        for i in 0..3 {
            for j in 0..3 {
                let p: f64 = joint[i][j] / n;
                if p > 0.0 {
                    mi += p * (p / (pu[i] * pv[j])).ln();
                }
            }
        }
        let expect = mi / ((h(&pu) + h(&pv)) / 2.0);
        assert!((m.nmi - expect).abs() < 1e-12);
        assert!((m.purity - 7.0 / 9.0).abs() < 1e-12);
    }

    #[test]
    fn assign_matches_brute_force() {
        let x = array![[1.0f32, 0.0], [0.0, 1.0], [0.7, 0.7], [-1.0, 0.0]];
        let c = array![[0.9f32, 0.1], [0.1, 0.9], [-0.8, 0.0]];
        let (a, d) = assign(x.view(), c.view());
        for (i, row) in x.rows().into_iter().enumerate() {
            let brute: Vec<f32> = c
                .rows()
                .into_iter()
                .map(|cr| (&row - &cr).mapv(|v| v * v).sum())
                .collect();
            let (j, best) = brute
                .iter()
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(b.1))
                .unwrap();
            assert_eq!(a[i], j);
            assert!((d[i] - best).abs() < 1e-5);
        }
    }

    #[test]
    fn lloyd_update_moves_centroids_to_the_means_of_their_rows() {
        let x = array![[0.0f32, 0.0], [2.0, 0.0], [10.0, 10.0], [12.0, 10.0], [11.0, 13.0]];
        let c = array![[1.0f32, 1.0], [10.0, 11.0], [-50.0, -50.0]];
        let next = update_centroids(x.view(), &c);
        assert_eq!(next.row(0).to_vec(), vec![1.0, 0.0]);
        assert_eq!(next.row(1).to_vec(), vec![11.0, 11.0]);
        // No rows: the centroid stays.
        assert_eq!(next.row(2).to_vec(), vec![-50.0, -50.0]);
    }

    #[test]
    fn blocked_assign_matches_brute_force_across_blocks() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_xoshiro::Xoshiro256Plus::seed_from_u64(3);
        let n = ASSIGN_BLOCK + 123;
        let x = Array2::from_shape_fn((n, 6), |_| rng.gen_range(-1.0f32..1.0));
        let c = Array2::from_shape_fn((5, 6), |_| rng.gen_range(-1.0f32..1.0));
        let (a, d) = assign(x.view(), c.view());
        assert_eq!(a.len(), n);
        for (i, row) in x.rows().into_iter().enumerate() {
            let brute: Vec<f32> = c.rows().into_iter().map(|cr| (&row - &cr).mapv(|v| v * v).sum()).collect();
            let best = brute.iter().cloned().fold(f32::INFINITY, f32::min);
            // The chosen centre is a nearest one (ties within rounding allowed).
            assert!(brute[a[i]] <= best + 1e-5, "row {i}");
            assert!((d[i] - best).abs() < 1e-4, "row {i}");
        }
    }

    #[test]
    fn neighbours_use_cosine_distance_below_tau() {
        let c = array![[1.0f32, 0.0], [0.98, 0.2], [0.0, 2.0]];
        let d = cosine_distances(c.view());
        let cos01 = 0.98 / (0.98f32 * 0.98 + 0.04).sqrt();
        assert!((d[[0, 1]] - (1.0 - cos01)).abs() < 1e-6);
        assert!((d[[0, 2]] - 1.0).abs() < 1e-6);
        let ns = neighbours_within(&d, 0.2);
        assert_eq!(ns[0], vec![(1, d[[0, 1]])]);
        assert!(ns[2].is_empty());
    }

    fn blobs() -> Array2<f32> {
        // Three well-separated directions with small jitter, normalised.
        let dirs = [[1.0f32, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        let mut m = Array2::zeros((60, 3));
        for i in 0..60 {
            let d = dirs[i % 3];
            for j in 0..3 {
                m[[i, j]] = d[j] + 0.05 * (((i * 7 + j * 13) % 11) as f32 / 11.0 - 0.5);
            }
        }
        crate::embed::normalize_rows(&mut m);
        m
    }

    #[test]
    fn kmeans_recovers_separated_blobs_both_modes() {
        let m = blobs();
        let truth: Vec<String> = (0..60).map(|i| (i % 3).to_string()).collect();
        for mb in [None, Some(16)] {
            let p = KMeansParams {
                k: 3.into(),
                mini_batch: mb,
                ..Default::default()
            }
            .check()
            .unwrap();
            let c = Clustering::fit(&p, m.view(), |_| {}).unwrap();
            let agree = label_agreement(&c.assignment, &truth);
            assert!((agree.ari - 1.0).abs() < 1e-9, "{mb:?}: {agree:?}");
            assert_eq!(c.sizes, vec![20, 20, 20]);
            let direct: f64 = m
                .rows()
                .into_iter()
                .zip(&c.assignment)
                .map(|(r, &a)| (&r - &c.centroids.row(a)).mapv(|v| (v as f64).powi(2)).sum())
                .sum();
            assert!((c.inertia - direct).abs() < 1e-4);
        }
    }

    #[test]
    fn bad_rows_and_params_are_clear_errors() {
        let mut e = Embeddings {
            ids: vec!["a".into(), "b".into()],
            matrix: array![[1.0f32, 0.0], [0.0, 0.0]],
            embedder: "test".into(),
        };
        let err = prepare_rows(&mut e).unwrap_err();
        assert!(err.to_string().contains("\"b\""), "{err}");
        e.matrix[[1, 0]] = f32::NAN;
        assert!(matches!(prepare_rows(&mut e), Err(ClusterError::NonFinite { row: 1, .. })));
        e.matrix = array![[3.0f32, 0.0], [0.0, 2.0]];
        assert_eq!(prepare_rows(&mut e).unwrap(), 2);
        let p = KMeansParams {
            k: 3.into(),
            ..Default::default()
        }
        .check()
        .unwrap();
        assert!(matches!(
            Clustering::fit(&p, e.matrix.view(), |_| {}),
            Err(ClusterError::TooFewDocuments { k: 3, n: 2 })
        ));
        assert!(KMeansParams { k: 0.into(), ..Default::default() }.check().is_err());
    }

    #[test]
    fn auto_k_grows_as_the_root_of_n_in_powers_of_two() {
        let k = |n| ClusterCount::Auto.resolve(n);
        assert_eq!(k(17_991), 32); // the shipped pool (its selection half)
        assert_eq!(k(18_211), 32);
        assert_eq!(k(1_173), 8);
        assert_eq!(k(109_266), 64);
        assert_eq!(k(327_798), 128);
        assert_eq!(k(1_001_605), 256);
        assert_eq!(k(600_000_000), 4096); // capped
        assert_eq!(k(3), 2);
        assert_eq!(k(1), 1);
        assert_eq!(ClusterCount::Fixed(7).resolve(3), 7);
        // Monotone in n.
        let ks: Vec<usize> = (1..200).map(|i| k(i * i * 97)).collect();
        assert!(ks.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn cluster_count_reads_numbers_and_auto() {
        #[derive(serde::Deserialize, Serialize)]
        struct T {
            k: ClusterCount,
        }
        let a: T = toml::from_str("k = \"auto\"").unwrap();
        let b: T = toml::from_str("k = 48").unwrap();
        assert_eq!((a.k, b.k), (ClusterCount::Auto, ClusterCount::Fixed(48)));
        assert!(toml::from_str::<T>("k = \"many\"").is_err());
        assert_eq!(toml::to_string(&b).unwrap().trim(), "k = 48");
        assert_eq!(toml::to_string(&a).unwrap().trim(), "k = \"auto\"");
        assert_eq!("auto".parse::<ClusterCount>().unwrap(), ClusterCount::Auto);
        assert_eq!("12".parse::<ClusterCount>().unwrap(), ClusterCount::Fixed(12));
    }

    fn write_npy(dir: &Path, m: &Array2<f32>) -> NpyRows {
        let path = dir.join("m.npy");
        let mut w = crate::npy::NpyRowWriter::create(&path, m.ncols()).unwrap();
        w.push(m.view()).unwrap();
        w.finish().unwrap();
        NpyRows::open(&path).unwrap()
    }

    fn unit_rows(n: usize, d: usize, seed: u64) -> Array2<f32> {
        use rand::Rng;
        let mut rng = Xoshiro256Plus::seed_from_u64(seed);
        // Rows near 12 random directions.
        let dirs = Array2::from_shape_fn((12, d), |_| rng.gen_range(-1.0f32..1.0));
        let mut m = Array2::from_shape_fn((n, d), |(i, j)| dirs[[i % 12, j]] + rng.gen_range(-0.4f32..0.4));
        crate::embed::normalize_rows(&mut m);
        m
    }

    #[test]
    fn stored_fit_matches_in_memory_fit_with_and_without_a_sample() {
        let m = unit_rows(9_000, 16, 3);
        let ids: Vec<String> = (0..m.nrows()).map(|i| format!("d{i}")).collect();
        let dir = tempfile::tempdir().unwrap();
        let rows = write_npy(dir.path(), &m);
        for fit_rows in [65_536, 1_000] {
            let p = KMeansParams { k: 12.into(), n_init: 2, fit_rows, ..Default::default() }.check().unwrap();
            let a = Clustering::fit(&p, m.view(), |_| {}).unwrap();
            let b = Clustering::fit_stored(&p, &rows, &ids, |_| {}).unwrap();
            assert_eq!(a.assignment, b.assignment, "fit_rows {fit_rows}");
            assert_eq!(a.inertia, b.inertia);
            assert_eq!(a.centroids, b.centroids);
        }
    }

    #[test]
    fn a_sampled_fit_costs_little_inertia_and_assigns_every_row() {
        let m = unit_rows(20_000, 16, 5);
        let full = KMeansParams { k: 12.into(), n_init: 3, ..Default::default() }.check().unwrap();
        let sampled = KMeansParams { fit_rows: 2_000, ..(*full).clone() }.check().unwrap();
        assert_eq!(fit_sample(&sampled, 20_000, 12).unwrap().unwrap().len(), 2_000);
        assert!(fit_sample(&full, 20_000, 12).unwrap().is_none());
        let a = Clustering::fit(&full, m.view(), |_| {}).unwrap();
        let b = Clustering::fit(&sampled, m.view(), |_| {}).unwrap();
        assert_eq!(b.assignment.len(), 20_000);
        assert_eq!(b.sizes.iter().sum::<usize>(), 20_000);
        assert!(b.inertia < a.inertia * 1.01, "sampled {} vs full {}", b.inertia, a.inertia);
    }

    #[test]
    fn a_bad_row_on_disk_is_named() {
        let mut m = unit_rows(5_000, 8, 1);
        m.row_mut(4_321).fill(0.0);
        let ids: Vec<String> = (0..m.nrows()).map(|i| format!("d{i}")).collect();
        let dir = tempfile::tempdir().unwrap();
        let rows = write_npy(dir.path(), &m);
        let p = KMeansParams { k: 4.into(), n_init: 1, ..Default::default() }.check().unwrap();
        let err = Clustering::fit_stored(&p, &rows, &ids, |_| {}).unwrap_err();
        assert!(matches!(err, ClusterError::ZeroRow { row: 4_321, ref id } if id == "d4321"), "{err}");
    }

    /// Past `SEED_ROWS` rows the seeds come from a sample, and Lloyd on every row still finds
    /// three far-apart groups (each centroid at its group's centre).
    #[test]
    fn a_fit_larger_than_the_seeding_sample_still_finds_the_groups() {
        let n = SEED_ROWS + 1_000;
        let centre = |g: usize| [(g as f32) * 10.0 + 1.0, 1.0 - (g as f32) * 10.0];
        let m = Array2::from_shape_fn((n, 2), |(i, j)| centre(i % 3)[j] + ((i * 7 + j) % 5) as f32 * 0.01);
        let p = KMeansParams { k: 3.into(), n_init: 1, ..Default::default() }.check().unwrap();
        let fitted = Clustering::fit(&p, m.view(), |_| {}).unwrap();
        let mut found: Vec<usize> = fitted
            .centroids
            .rows()
            .into_iter()
            .map(|c| (0..3).find(|&g| (c[0] - centre(g)[0]).abs() < 0.1 && (c[1] - centre(g)[1]).abs() < 0.1).expect("a group centre"))
            .collect();
        found.sort_unstable();
        assert_eq!(found, [0, 1, 2]);
    }

    /// Seeding picks rows of the matrix, one in each of three far-apart groups (a row in a group
    /// already covered has D² ≈ 0.0025 against ≈ 2 elsewhere), deterministically per seed.
    #[test]
    fn kmeans_plus_plus_spreads_its_seeds() {
        let m = blobs();
        for seed in 0..20 {
            let c = kmeans_plus_plus(m.view(), 3, seed);
            let groups: std::collections::BTreeSet<usize> = c
                .rows()
                .into_iter()
                .map(|r| {
                    let i = m.rows().into_iter().position(|x| x == r).expect("a seed is a row");
                    i % 3
                })
                .collect();
            assert_eq!(groups.len(), 3, "seed {seed}");
            assert_eq!(c, kmeans_plus_plus(m.view(), 3, seed));
        }
    }
}
