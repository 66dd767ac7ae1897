//! The fitted clustering ([`Clustering`]): fit in memory or over a matrix on disk, and its outputs.

use std::path::{Path, PathBuf};

use ndarray::{Array2, ArrayView2, Axis};
use serde::Serialize;

use crate::atomic::write_atomic;
use crate::npy::NpyRows;

use super::*;
use super::assign::BlockAssigner;
use super::lloyd::fit_centroids;

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
        let mut assigner = BlockAssigner::new(assign_blocks, group, n);
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
