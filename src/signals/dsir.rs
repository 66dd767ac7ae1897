//! DSIR's importance weights (Xie et al., NeurIPS 2023, "Data Selection for Language Models via
//! Importance Resampling"): a bag-of-hashed-n-grams model of the target and one of the raw pool,
//! and each document's log importance weight under them.
//!
//! With `c_t(b)` and `c_r(b)` the bucket counts summed over the target and the raw documents and
//! `B` buckets, the two models are add-one smoothed categorical distributions
//! `p(b) = (c(b) + 1) / (Σ c + B)`, and a document x with bucket counts `x_b` has
//!
//! `log w(x) = Σ_b x_b · (log p_t(b) − log p_r(b))`,
//!
//! the log-likelihood ratio of the document under the two bags of n-grams. Resampling takes
//! documents without replacement with probability ∝ `w^β` (β = 1 in the paper): the Gumbel top-k
//! of `β · log w` (the bandit's signal policies).

use super::ngrams::Counts;

/// The fitted log ratio `log p_t(b) − log p_r(b)` of every bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct Dsir {
    log_ratio: Vec<f64>,
}

impl Dsir {
    /// The two add-one smoothed models from the dense bucket totals of the target and the raw
    /// documents (equal lengths: one slot per bucket).
    pub fn fit(target: &[u64], raw: &[u64]) -> Self {
        assert_eq!(target.len(), raw.len(), "one slot per bucket on both sides");
        let b = target.len() as f64;
        let (nt, nr) = (target.iter().sum::<u64>() as f64, raw.iter().sum::<u64>() as f64);
        let log_ratio = target
            .iter()
            .zip(raw)
            .map(|(&t, &r)| ((t as f64 + 1.0) / (nt + b)).ln() - ((r as f64 + 1.0) / (nr + b)).ln())
            .collect();
        Self { log_ratio }
    }

    /// `log w(x) = Σ_b x_b · log_ratio(b)`.
    pub fn log_weight(&self, x: &Counts) -> f64 {
        x.iter().map(|&(b, n)| n as f64 * self.log_ratio[b as usize]).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a direct computation: the log-likelihood of the document's n-grams under each
    /// smoothed model, one n-gram at a time.
    #[test]
    fn the_log_weight_is_the_likelihood_ratio_of_the_two_bags() {
        let target = [5u64, 0, 3, 2];
        let raw = [1u64, 4, 4, 1];
        let dsir = Dsir::fit(&target, &raw);
        let x: Counts = vec![(0, 2), (1, 1), (3, 3)];
        let p = |c: &[u64], b: usize| (c[b] as f64 + 1.0) / (c.iter().sum::<u64>() as f64 + 4.0);
        let mut direct = 0.0;
        for &(b, n) in &x {
            for _ in 0..n {
                direct += p(&target, b as usize).ln() - p(&raw, b as usize).ln();
            }
        }
        assert!((dsir.log_weight(&x) - direct).abs() < 1e-12);
        // Both models are distributions.
        let sum_t: f64 = (0..4).map(|b| p(&target, b)).sum();
        assert!((sum_t - 1.0).abs() < 1e-12);
        // A document made of target-heavy n-grams weighs more than one of raw-heavy n-grams.
        assert!(dsir.log_weight(&vec![(0, 1)]) > 0.0 && dsir.log_weight(&vec![(1, 1)]) < 0.0);
        // The same bag on both sides: every weight is 1.
        assert_eq!(Dsir::fit(&raw, &raw).log_weight(&x), 0.0);
    }
}
