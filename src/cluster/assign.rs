//! Assigning rows to their nearest centroid, a GEMM block at a time.

use ndarray::{Array1, Array2, ArrayView2, Axis};
use rayon::prelude::*;

use super::*;

/// Assigns blocks of rows to centroids: `(blocks, centroids) → (nearest centroid, squared
/// distance)` per block, in order ([`Clustering::fit_stored_with`]).
pub type AssignBlocks<'a> =
    &'a mut dyn FnMut(Vec<Array2<f32>>, ArrayView2<f32>) -> Result<Vec<(Vec<usize>, Vec<f32>)>, ClusterError>;

/// Collects blocks into groups for an [`AssignBlocks`] and the results in row order.
pub(super) struct BlockAssigner<'a> {
    assign_blocks: AssignBlocks<'a>,
    group: usize,
    pending: Vec<Array2<f32>>,
    assignment: Vec<usize>,
    sq: Vec<f32>,
}

impl<'a> BlockAssigner<'a> {
    /// Groups of `group` blocks (at least 1) for `n` rows.
    pub(super) fn new(assign_blocks: AssignBlocks<'a>, group: usize, n: usize) -> Self {
        Self {
            assign_blocks,
            group: group.max(1),
            pending: Vec::new(),
            assignment: Vec::with_capacity(n),
            sq: Vec::with_capacity(n),
        }
    }

    pub(super) fn push(&mut self, block: Array2<f32>, centroids: ArrayView2<f32>) -> Result<(), ClusterError> {
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

    pub(super) fn finish(mut self, centroids: ArrayView2<f32>) -> Result<(Vec<usize>, Vec<f32>), ClusterError> {
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

/// Rows per GEMM block of [`assign`]: 4,096 × k floats of cross terms at a time.
pub const ASSIGN_BLOCK: usize = 4096;
