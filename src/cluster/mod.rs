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

mod assign;
mod clustering;
mod lloyd;
mod metrics;
mod neighbours;
mod seeding;

pub use assign::{assign, AssignBlocks, ASSIGN_BLOCK};
pub use clustering::{Clustering, KMeansEvent};
pub use lloyd::update_centroids;
pub use metrics::{label_agreement, LabelAgreement};
pub use neighbours::{cosine_distances, neighbours_within};
pub use seeding::{fit_sample, kmeans_plus_plus, SEED_ROWS};

use ndarray::ArrayView2;
use serde::Serialize;

use crate::embed::Embeddings;

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
    /// A stored row (clustered as it is on disk, never rewritten) that is not unit-norm.
    #[error("embedding of document {id:?} (row {row}) has norm {norm:.6}, not 1: stored embeddings are clustered as they are; write unit-norm rows (`quad embed` does)")]
    NotUnit { id: String, row: usize, norm: f64 },
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
        // A visitor, not an untagged enum: a bad value is named ("k = -1: …"), not "did not
        // match any variant".
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ClusterCount;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a positive number of clusters or \"auto\"")
            }
            fn visit_u64<E: serde::de::Error>(self, k: u64) -> Result<ClusterCount, E> {
                usize::try_from(k).map(ClusterCount::Fixed).map_err(|_| E::custom(format!("k = {k}: too large")))
            }
            fn visit_i64<E: serde::de::Error>(self, k: i64) -> Result<ClusterCount, E> {
                match u64::try_from(k) {
                    Ok(k) => self.visit_u64(k),
                    Err(_) => Err(E::custom(format!("k = {k}: must be a positive number of clusters or \"auto\""))),
                }
            }
            fn visit_f64<E: serde::de::Error>(self, k: f64) -> Result<ClusterCount, E> {
                Err(E::custom(format!("k = {k}: must be a whole number of clusters or \"auto\"")))
            }
            fn visit_str<E: serde::de::Error>(self, t: &str) -> Result<ClusterCount, E> {
                t.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
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
        return Err(ClusterError::NotUnit { id: id(), row, norm });
    }
    Ok(())
}

/// Names the k-means implementation in cache keys: cached clusterings made by another one are
/// not reused.
pub const ALGORITHM: &str = "kmeans++-gemm-lloyd-3";

#[cfg(test)]
mod tests {
    use super::lloyd::*;
    use super::*;
    use crate::npy::NpyRows;
    use ndarray::Array2;
    use rand::SeedableRng;
    use rand_xoshiro::Xoshiro256Plus;
    use std::path::Path;
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
