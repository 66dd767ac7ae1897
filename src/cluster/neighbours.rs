//! The centroid graph the bandit shares rewards over: cosine distances and neighbours within τ.

use ndarray::{Array2, ArrayView2};

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
