//! Where the centroids start: the seeded fit sample and k-means++ (D² sampling).

use ndarray::{Array2, ArrayView2};
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256Plus;
use rayon::prelude::*;

use super::*;

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

/// k-means++ seeds on at most this many rows (a seeded sample of a larger fit): 64 per centre at
/// k = 1,024, plenty for its D² draws, while a seeding pass over a 262,144-row fit sample took a
/// fifth of a 1M-row clustering. At the default `fit_rows` (65,536) every fit row is seeded on.
pub const SEED_ROWS: usize = 65_536;
