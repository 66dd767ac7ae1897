//! The quality classifier: L2-regularised logistic regression on hashed n-gram features (the
//! linear model of the fastText / DCLM practice, on the features of [`super::ngrams`]).
//!
//! A document's row is its sublinear term frequencies `log(1 + x_b)`, scaled to unit L2 norm (so
//! long and short documents are on one scale, as fastText's averaged n-gram vectors are). With
//! labels `y_i ∈ {−1, +1}` (reference: +1, pool sample: −1) and class-balanced weights
//! `a_i = 1 / (2 n₊)` or `1 / (2 n₋)` (each class weighs one half, whatever the sample sizes),
//! the fit minimises
//!
//! `f(w, c) = Σ_i a_i · log(1 + exp(−y_i (wᵀx_i + c))) + (λ/2) ‖w‖²`
//!
//! by Nesterov's accelerated gradient with the step `1/L`, `L = ¼ · max_i (‖x_i‖² + 1) + λ` (a
//! bound on the Hessian's largest eigenvalue, as `Σ a_i = 1`), until `‖∇f‖ < 1e-8` or 20,000
//! steps. λ is chosen from a grid by stratified k-fold cross-validation of the weighted log loss.
//! A document's signal is its logit `wᵀx + c`.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

use super::ngrams::Counts;

/// A sparse row: `(bucket, value)`, buckets ascending.
pub type SparseRow = Vec<(u32, f64)>;

/// The classifier's row of a document: `log(1 + x_b)`, unit L2 norm (empty for no n-grams).
pub fn tf_row(counts: &Counts) -> SparseRow {
    let mut row: SparseRow = counts.iter().map(|&(b, n)| (b, (1.0 + n as f64).ln())).collect();
    let norm = row.iter().map(|(_, v)| v * v).sum::<f64>().sqrt();
    if norm > 0.0 {
        row.iter_mut().for_each(|(_, v)| *v /= norm);
    }
    row
}

/// The λ grid cross-validation chooses from.
pub const LAMBDAS: [f64; 5] = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1];
/// Folds of the cross-validation.
pub const FOLDS: usize = 5;

/// A fitted classifier.
#[derive(Debug, Clone, PartialEq)]
pub struct Logistic {
    pub weights: Vec<f64>,
    pub intercept: f64,
    pub lambda: f64,
    /// Steps the solver took.
    pub steps: usize,
}

fn dot(w: &[f64], x: &SparseRow) -> f64 {
    x.iter().map(|&(b, v)| w[b as usize] * v).sum()
}

/// `log(1 + exp(−m))`, without overflow.
fn softplus_neg(m: f64) -> f64 {
    if m > 0.0 {
        (-m).exp().ln_1p()
    } else {
        -m + m.exp().ln_1p()
    }
}

/// `σ(−m) = 1 / (1 + exp(m))`, without overflow.
fn sigmoid_neg(m: f64) -> f64 {
    if m > 0.0 {
        let e = (-m).exp();
        e / (1.0 + e)
    } else {
        1.0 / (1.0 + m.exp())
    }
}

/// Class-balanced weights: each class sums to one half (a class that is absent weighs nothing).
fn class_weights(labels: &[bool]) -> Vec<f64> {
    let pos = labels.iter().filter(|&&y| y).count();
    let neg = labels.len() - pos;
    labels.iter().map(|&y| if y { 0.5 / pos as f64 } else { 0.5 / neg as f64 }).collect()
}

impl Logistic {
    /// Minimises `f` (module docs) over `rows` of `dim` buckets with labels (true: positive).
    pub fn fit(rows: &[SparseRow], labels: &[bool], dim: usize, lambda: f64) -> Self {
        assert_eq!(rows.len(), labels.len());
        assert!(lambda > 0.0 && labels.iter().any(|&y| y) && labels.iter().any(|&y| !y), "both classes, λ > 0");
        let a = class_weights(labels);
        let l = 0.25 * rows.iter().map(|x| x.iter().map(|(_, v)| v * v).sum::<f64>() + 1.0).fold(0.0, f64::max) + lambda;
        let momentum = (l.sqrt() - lambda.sqrt()) / (l.sqrt() + lambda.sqrt());
        // Parameters θ = (w, c) as one vector, c last.
        let n = dim + 1;
        let grad = |theta: &[f64], g: &mut Vec<f64>| {
            g.clear();
            g.extend(theta[..dim].iter().map(|w| lambda * w));
            g.push(0.0);
            for ((x, &y), &ai) in rows.iter().zip(labels).zip(&a) {
                let s = if y { 1.0 } else { -1.0 };
                let m = s * (dot(&theta[..dim], x) + theta[dim]);
                let coef = -ai * s * sigmoid_neg(m);
                for &(b, v) in x {
                    g[b as usize] += coef * v;
                }
                g[dim] += coef;
            }
        };
        let (mut theta, mut prev, mut y) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        let mut g = Vec::with_capacity(n);
        let mut steps = 0;
        while steps < 20_000 {
            grad(&y, &mut g);
            if g.iter().map(|v| v * v).sum::<f64>().sqrt() < 1e-8 {
                theta.copy_from_slice(&y);
                break;
            }
            prev.copy_from_slice(&theta);
            for i in 0..n {
                theta[i] = y[i] - g[i] / l;
            }
            for i in 0..n {
                y[i] = theta[i] + momentum * (theta[i] - prev[i]);
            }
            steps += 1;
        }
        let intercept = theta.pop().expect("the intercept");
        Self { weights: theta, intercept, lambda, steps }
    }

    /// `wᵀx + c`.
    pub fn logit(&self, x: &SparseRow) -> f64 {
        dot(&self.weights, x) + self.intercept
    }

    /// The objective `f` at this fit (for tests and reports).
    pub fn objective(&self, rows: &[SparseRow], labels: &[bool]) -> f64 {
        let a = class_weights(labels);
        let data: f64 = rows
            .iter()
            .zip(labels)
            .zip(&a)
            .map(|((x, &y), &ai)| ai * softplus_neg(if y { 1.0 } else { -1.0 } * self.logit(x)))
            .sum();
        data + 0.5 * self.lambda * self.weights.iter().map(|w| w * w).sum::<f64>()
    }

    /// λ from `lambdas` by stratified `folds`-fold cross-validation of the class-weighted log
    /// loss (seeded), then the fit on every row at that λ. Returns the fit and each λ's
    /// cross-validated loss.
    pub fn fit_cv(rows: &[SparseRow], labels: &[bool], dim: usize, lambdas: &[f64], folds: usize, seed: u64) -> (Self, Vec<(f64, f64)>) {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut fold = vec![0usize; rows.len()];
        for class in [true, false] {
            let mut members: Vec<usize> = (0..rows.len()).filter(|&i| labels[i] == class).collect();
            members.shuffle(&mut rng);
            for (j, &i) in members.iter().enumerate() {
                fold[i] = j % folds;
            }
        }
        use rayon::prelude::*;
        let losses: Vec<(f64, f64)> = lambdas
            .par_iter()
            .map(|&lambda| {
                let loss = (0..folds)
                    .map(|f| {
                        let pick = |held: bool| -> (Vec<SparseRow>, Vec<bool>) {
                            (0..rows.len()).filter(|&i| (fold[i] == f) == held).map(|i| (rows[i].clone(), labels[i])).unzip()
                        };
                        let (train_x, train_y) = pick(false);
                        let (test_x, test_y) = pick(true);
                        if !(train_y.contains(&true) && train_y.contains(&false) && test_y.contains(&true) && test_y.contains(&false)) {
                            return 0.0;
                        }
                        let m = Self::fit(&train_x, &train_y, dim, lambda);
                        let unreg = Self { lambda: 0.0, ..m };
                        unreg.objective(&test_x, &test_y)
                    })
                    .sum::<f64>()
                    / folds as f64;
                (lambda, loss)
            })
            .collect();
        let best = losses.iter().min_by(|a, b| a.1.total_cmp(&b.1)).map(|l| l.0).expect("a λ");
        (Self::fit(rows, labels, dim, best), losses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a direct computation: Newton's method with the exact Hessian on a small dense
    /// problem reaches the same minimiser.
    #[test]
    fn the_fit_is_the_minimiser_newton_finds() {
        let dim = 3;
        let raw = [
            ([1.0, 0.0, 0.5], true),
            ([0.8, 0.2, 0.0], true),
            ([0.1, 0.9, 0.3], false),
            ([0.0, 1.0, 0.0], false),
            ([0.3, 0.4, 0.9], false),
            ([0.6, 0.1, 0.7], true),
            ([0.2, 0.7, 0.6], true),
        ];
        let rows: Vec<SparseRow> = raw
            .iter()
            .map(|(x, _)| {
                let n = x.iter().map(|v: &f64| v * v).sum::<f64>().sqrt();
                x.iter().enumerate().map(|(b, v)| (b as u32, v / n)).collect()
            })
            .collect();
        let labels: Vec<bool> = raw.iter().map(|r| r.1).collect();
        let lambda = 0.05;
        let fit = Logistic::fit(&rows, &labels, dim, lambda);

        // Newton on θ = (w, c) with dense rows [x, 1].
        let a = class_weights(&labels);
        let dense: Vec<Vec<f64>> =
            rows.iter().map(|x| x.iter().map(|&(_, v)| v).chain(std::iter::once(1.0)).collect()).collect();
        let mut theta = vec![0.0; dim + 1];
        for _ in 0..50 {
            let mut g = vec![0.0; dim + 1];
            let mut h = vec![vec![0.0; dim + 1]; dim + 1];
            for i in 0..dim {
                g[i] = lambda * theta[i];
                h[i][i] = lambda;
            }
            for ((x, &y), &ai) in dense.iter().zip(&labels).zip(&a) {
                let z: f64 = x.iter().zip(&theta).map(|(a, b)| a * b).sum();
                let p = 1.0 / (1.0 + (-z).exp());
                let t = if y { 1.0 } else { 0.0 };
                for i in 0..=dim {
                    g[i] += ai * (p - t) * x[i];
                    for j in 0..=dim {
                        h[i][j] += ai * p * (1.0 - p) * x[i] * x[j];
                    }
                }
            }
            // Solve h · step = g by Gaussian elimination.
            let mut m: Vec<Vec<f64>> = h.iter().zip(&g).map(|(r, &gi)| r.iter().copied().chain([gi]).collect()).collect();
            for c in 0..=dim {
                let p = (c..=dim).max_by(|&i, &j| m[i][c].abs().total_cmp(&m[j][c].abs())).unwrap();
                m.swap(c, p);
                for r in 0..=dim {
                    if r != c {
                        let f = m[r][c] / m[c][c];
                        for k in c..=dim + 1 {
                            m[r][k] -= f * m[c][k];
                        }
                    }
                }
            }
            for i in 0..=dim {
                theta[i] -= m[i][dim + 1] / m[i][i];
            }
        }
        for i in 0..dim {
            assert!((fit.weights[i] - theta[i]).abs() < 1e-6, "w{i}: {} vs {}", fit.weights[i], theta[i]);
        }
        assert!((fit.intercept - theta[dim]).abs() < 1e-6);
        // Positives score above negatives here.
        assert!(fit.logit(&rows[0]) > fit.logit(&rows[3]));
    }

    #[test]
    fn cross_validation_picks_a_grid_lambda_and_separates_the_classes() {
        // Positives use buckets 0..4, negatives 4..8, with one shared noisy bucket.
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        use rand::Rng;
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        for i in 0..60 {
            let y = i % 3 == 0;
            let base = if y { 0 } else { 4 };
            let counts: Counts = vec![(base + rng.gen_range(0..4), 1 + rng.gen_range(0..3)), (8, 1 + rng.gen_range(0..3))];
            let mut c = counts;
            c.sort();
            c.dedup_by_key(|x| x.0);
            rows.push(tf_row(&c));
            labels.push(y);
        }
        let (fit, losses) = Logistic::fit_cv(&rows, &labels, 9, &LAMBDAS, FOLDS, 0);
        assert_eq!(losses.len(), LAMBDAS.len());
        assert!(LAMBDAS.contains(&fit.lambda));
        let best = losses.iter().map(|l| l.1).fold(f64::INFINITY, f64::min);
        assert_eq!(losses.iter().find(|l| l.0 == fit.lambda).unwrap().1, best);
        for (x, &y) in rows.iter().zip(&labels) {
            assert_eq!(fit.logit(x) > 0.0, y);
        }
        // Seeded: the same folds, the same fit.
        assert_eq!(Logistic::fit_cv(&rows, &labels, 9, &LAMBDAS, FOLDS, 0).0, fit);
    }

    #[test]
    fn rows_are_sublinear_and_unit_norm() {
        let r = tf_row(&vec![(2, 1), (5, 3)]);
        let (a, b) = (2f64.ln(), 4f64.ln());
        let n = (a * a + b * b).sqrt();
        assert_eq!(r, vec![(2, a / n), (5, b / n)]);
        assert!(tf_row(&Vec::new()).is_empty());
    }
}
