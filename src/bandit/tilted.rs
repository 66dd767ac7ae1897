//! The tilts: shares of the budget `∝ exp(score / T)`. Among all allocations at a given divergence
//! from the pool, the exponential tilt has the highest expected score (the Gibbs variational
//! principle); T sets the trade between quality and diversity.
//!
//! - **The document-level tilt** (`allocation = "tilted-documents"`, the default). Scoring comes
//!   first: a calibration sample, the exploration pass (every arm sampled once, b members), then
//!   refinement rounds of B arms chosen by Cluster Score, b unseen members each, until the scoring
//!   allowance `calibration + 2 · k · b` is spent (refinement costs what exploration cost); nothing
//!   is taken meanwhile. Then every document d gets the share `p_d = min(1, λ · exp(z_d / T))`,
//!   z_d its own standardised score when it was scored and its cluster's estimate when not (or,
//!   with another `estimator`, its own estimate from the embeddings: [`super::estimate`]), λ fitted
//!   so the shares add up to the budget ([`Bandit::document_quotas`]); rounds of B arms by Cluster
//!   Score take up to m documents of each arm's quota `Σ_{d ∈ c} p_d`, in the order of expected
//!   score: scored members above the arm's estimate best first, then unscored ones, then the scored
//!   ones below. Taking the tilt per document where a document's own score is known keeps every
//!   region of the pool while the best documents found are all taken. It replaced the
//!   cluster-level tilt after the second sweep in experiments/README.md ("The rule").
//! - **The cluster-level tilt** (`allocation = "tilted"`): quotas `∝ n_c · exp(e_c / T)`
//!   ([`Bandit::quotas`]), scoring and taking in the same rounds.
//! - **`predicted`**, the learned-estimator peer: a uniform random sample of the pool, as large as
//!   the allowance, is scored instead of the bandit's choice; then the document-level tilt.

use std::fmt;

use super::state::ArmPick;
use super::{budget_documents, Bandit, BanditError, Round};
use rand_xoshiro::Xoshiro256PlusPlus;

impl Bandit {
    /// Each arm's share of the whole budget, in documents, under the cluster-level tilt:
    /// `q_c ∝ n_c · exp(e_c / T)` (n_c members, estimate e_c, 0 before the first score), capped at
    /// n_c with the excess shared out again (water-filling).
    pub fn quotas(&self, temperature: f64) -> Vec<f64> {
        let k = self.problem.k();
        let n: Vec<f64> = self.orders.iter().map(|o| o.len() as f64).collect();
        let w: Vec<f64> = (0..k).map(|c| n[c] * (self.estimate(c).unwrap_or(0.0) / temperature).exp()).collect();
        let mut q = vec![0.0; k];
        let mut capped = vec![false; k];
        let mut left = budget_documents(&self.problem);
        loop {
            let total: f64 = (0..k).filter(|&c| !capped[c]).map(|c| w[c]).sum();
            if total <= 0.0 {
                break;
            }
            let mut changed = false;
            for c in 0..k {
                if !capped[c] && left * w[c] / total >= n[c] {
                    capped[c] = true;
                    q[c] = n[c];
                    left -= n[c];
                    changed = true;
                }
            }
            if !changed {
                for c in (0..k).filter(|&c| !capped[c]) {
                    q[c] = left * w[c] / total;
                }
                break;
            }
        }
        q
    }

    /// Each arm's share of the whole budget, in documents, under the document-level tilt: every
    /// document d is given the inclusion weight `p_d = min(1, λ · exp(z_d / T))`, with z_d its own
    /// standardised score once scored and, before, its estimate (its cluster's mean, 0 before the
    /// first; or the `estimator`'s prediction for the document), and λ set so that `Σ p_d` is the
    /// budget in documents (water-filling from the largest weight down); arm c's quota is
    /// `Σ_{d ∈ c} p_d`. It is [`Self::quotas`]' exponential tilt taken at the finest resolution
    /// known: a scored document carries what was learnt about it, not its cluster's mean.
    pub fn document_quotas(&self, temperature: f64) -> Vec<f64> {
        let entries = self.tilt_entries();
        let top = entries.first().map_or(0.0, |e| e.0);
        // Weights relative to the largest (exp never overflows); suffix sums of count × weight.
        let w: Vec<f64> = entries.iter().map(|e| ((e.0 - top) / temperature).exp()).collect();
        let mut suffix = vec![0.0; entries.len() + 1];
        for i in (0..entries.len()).rev() {
            suffix[i] = suffix[i + 1] + entries[i].1 * w[i];
        }
        // The first j entries are capped at 1 (taken whole); λ spreads the rest over the others.
        let docs = budget_documents(&self.problem);
        let mut capped = 0.0;
        let mut lambda = f64::INFINITY;
        for i in 0..entries.len() {
            let l = (docs - capped) / suffix[i];
            if l * w[i] <= 1.0 {
                lambda = l;
                break;
            }
            capped += entries[i].1;
        }
        let mut q = vec![0.0; self.problem.k()];
        for (e, &wi) in entries.iter().zip(&w) {
            q[e.2] += e.1 * (lambda * wi).min(1.0);
        }
        q
    }

    /// `(z, how many documents, arm)`, best first: scored documents one by one, each arm's
    /// unscored ones together (one by one too when each has its own estimate).
    fn tilt_entries(&self) -> Vec<(f64, f64, usize)> {
        let mut unscored = vec![0usize; self.problem.k()];
        let mut entries: Vec<(f64, f64, usize)> = Vec::new();
        for (d, &c) in self.problem.cluster.iter().enumerate() {
            match (self.state.scores[d], &self.doc_estimates) {
                (Some(s), _) => entries.push((self.z(s), 1.0, c)),
                (None, Some(e)) => entries.push((e[d], 1.0, c)),
                (None, None) => unscored[c] += 1,
            }
        }
        for (c, &u) in unscored.iter().enumerate() {
            if u > 0 {
                entries.push((self.estimate(c).unwrap_or(0.0), u as f64, c));
            }
        }
        entries.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.2.cmp(&b.2)));
        entries
    }

    /// Documents arm c may still take under `quotas` (quotas rounded up).
    fn room_left(&self, quotas: &[f64], c: usize) -> usize {
        (quotas[c].ceil() as usize).saturating_sub(self.state.arms[c].taken)
    }

    /// B arms with room left in their quota, by Cluster Score; when every quota is met in
    /// documents but not the token budget, the available arm with the best estimate takes the
    /// rest. None when no arm is available.
    fn choose_with_room(&self, rng: &mut Xoshiro256PlusPlus, quotas: &[f64]) -> Option<Vec<(usize, f64)>> {
        let chosen = self.choose_among(rng, |c| self.room_left(quotas, c) > 0);
        if !chosen.is_empty() {
            return Some(chosen);
        }
        (0..self.problem.k())
            .filter(|&c| self.state.arms[c].available())
            .max_by(|&a, &b| self.estimate(a).unwrap_or(0.0).total_cmp(&self.estimate(b).unwrap_or(0.0)))
            .map(|c| vec![(c, self.cluster_score(c))])
    }

    /// Arm c takes what its quota has room for (at least 1, at most m) with `take`; an arm that
    /// gives nothing is exhausted. The documents taken.
    fn take_quota(&mut self, quotas: &[f64], c: usize, take: impl FnOnce(&mut Self, usize) -> usize) -> usize {
        let want = self.room_left(quotas, c).clamp(1, self.chunk);
        let accepted = take(self, want);
        if accepted == 0 {
            self.state.arms[c].exhausted = true;
        }
        accepted
    }

    /// A round of the cluster-level tilt: B arms with room left in their quota, by Cluster Score;
    /// each is sampled while the scoring allowance lasts, then given up to m documents of its quota.
    pub(super) fn round_tilted<E: fmt::Display>(
        &mut self,
        scorer: &mut impl FnMut(&[usize]) -> Result<Vec<f64>, E>,
        temperature: f64,
    ) -> Round {
        let mut rng = self.rng();
        let quotas = self.quotas(temperature);
        let Some(chosen) = self.choose_with_room(&mut rng, &quotas) else {
            return Ok(None);
        };
        let refine = chosen.iter().any(|&(c, _)| self.margin(c) > 0.0);
        let b = if refine { self.params.samples_per_arm } else { 0 };
        let samples = self.score_samples(&chosen, |_, _| b, scorer)?;
        let mut picks = Vec::with_capacity(chosen.len());
        for ((c, index), sample) in chosen.into_iter().zip(samples) {
            self.state.arms[c].times_chosen += 1;
            let reward = self.learn(c, &self.scores_of(&sample), 0.0);
            let accepted = self.take_quota(&quotas, c, |b, want| b.take_up_to(c, reward, want));
            let pick = ArmPick { arm: Some(c), index, reward, scored: sample.len(), accepted };
            if self.settle(&mut picks, pick).is_break() {
                break;
            }
        }
        Ok(Some(picks))
    }

    /// A round of the document-level tilt. While the scoring allowance lasts, B arms chosen by
    /// Cluster Score have b unseen members scored each and nothing is taken (the estimates and the
    /// scored documents then decide the quotas together); after it, [`Self::take_by_quotas`].
    pub(super) fn round_documents<E: fmt::Display>(
        &mut self,
        scorer: &mut impl FnMut(&[usize]) -> Result<Vec<f64>, E>,
        temperature: f64,
    ) -> Round {
        self.score_then_take(temperature, |bandit, rng, left| bandit.score_arms(rng, left, scorer))
    }

    /// A round of `predicted`: while the scoring allowance lasts, the next B · b unscored
    /// documents of the pool's seeded order are scored (a uniform random sample); after it, the
    /// document-level tilt takes ([`Self::take_by_quotas`]).
    pub(super) fn round_predicted<E: fmt::Display>(
        &mut self,
        scorer: &mut impl FnMut(&[usize]) -> Result<Vec<f64>, E>,
        temperature: f64,
    ) -> Round {
        self.score_then_take(temperature, |bandit, _, left| bandit.score_uniform(left, scorer))
    }

    /// While `left` of the scoring allowance remains, `score` scores (and says what, or None
    /// when it finds nothing to score); then the document-level tilt takes.
    fn score_then_take(
        &mut self,
        temperature: f64,
        score: impl FnOnce(&mut Self, &mut Xoshiro256PlusPlus, usize) -> Round,
    ) -> Round {
        let mut rng = self.rng();
        let left = self.allowance().saturating_sub(self.state.documents_scored);
        if left > 0 {
            if let Some(picks) = score(self, &mut rng, left)? {
                return Ok(Some(picks));
            }
        }
        self.take_by_quotas(&mut rng, temperature)
    }

    /// The scoring of the document-level tilt: B arms chosen by Cluster Score, b unseen members
    /// each (at most `left` in all), rewards learnt, nothing taken.
    fn score_arms<E: fmt::Display>(
        &mut self,
        rng: &mut Xoshiro256PlusPlus,
        mut left: usize,
        scorer: &mut impl FnMut(&[usize]) -> Result<Vec<f64>, E>,
    ) -> Round {
        let chosen = self.choose_among(rng, |c| self.unseen(c).next().is_some());
        if chosen.is_empty() {
            return Ok(None);
        }
        let b = self.params.samples_per_arm;
        let size = |bandit: &Self, c: usize| {
            let n = bandit.unseen(c).take(b.min(left)).count();
            left -= n;
            n
        };
        let samples = self.score_samples(&chosen, size, scorer)?;
        let mut picks = Vec::with_capacity(chosen.len());
        for ((c, index), sample) in chosen.into_iter().zip(samples) {
            if sample.is_empty() {
                continue;
            }
            self.state.arms[c].times_chosen += 1;
            let reward = self.learn(c, &self.scores_of(&sample), 0.0);
            // Nothing is taken while scoring, so the budget is never met here.
            let _ = self.settle(&mut picks, ArmPick { arm: Some(c), index, reward, scored: sample.len(), accepted: 0 });
        }
        Ok(Some(picks))
    }

    /// The scoring of `predicted`: the next B · b (at most `left`) unscored documents of the
    /// pool's seeded order.
    fn score_uniform<E: fmt::Display>(
        &mut self,
        left: usize,
        scorer: &mut impl FnMut(&[usize]) -> Result<Vec<f64>, E>,
    ) -> Round {
        let want = (self.params.arms_per_round * self.params.samples_per_arm).min(left);
        let sample: Vec<usize> = self.pool_order.iter().copied().filter(|&d| self.state.scores[d].is_none()).take(want).collect();
        if sample.is_empty() {
            return Ok(None);
        }
        self.score(&sample, scorer)?;
        Ok(Some(vec![ArmPick { arm: None, index: 0.0, reward: None, scored: sample.len(), accepted: 0 }]))
    }

    /// A taking round of the document-level tilt: B arms with room left in their
    /// [`Self::document_quotas`] give up to m documents each, in the order of their expected
    /// score ([`Self::take_ranked`]).
    fn take_by_quotas(&mut self, rng: &mut Xoshiro256PlusPlus, temperature: f64) -> Round {
        self.fit_estimates()?;
        let quotas = self.document_quotas(temperature);
        let Some(chosen) = self.choose_with_room(rng, &quotas) else {
            return Ok(None);
        };
        let mut picks = Vec::with_capacity(chosen.len());
        for (c, index) in chosen {
            self.state.arms[c].times_chosen += 1;
            let accepted = self.take_quota(&quotas, c, |b, want| b.take_ranked(c, want));
            let pick = ArmPick { arm: Some(c), index, reward: None, scored: 0, accepted };
            if self.settle(&mut picks, pick).is_break() {
                break;
            }
        }
        Ok(Some(picks))
    }

    /// Takes up to `limit` documents from arm c in the order of their expected score: scored
    /// members that beat the arm's estimate (best first), then unscored members (expected: the
    /// estimate) in the arm's seeded order, then the other scored members (best first).
    fn take_ranked(&mut self, c: usize, limit: usize) -> usize {
        let order: Vec<usize> = if self.doc_estimates.is_some() {
            // Best expected first; ties in the arm's seeded order (the sort is stable).
            let mut order: Vec<usize> = self.orders[c].iter().copied().filter(|&d| !self.state.taken[d]).collect();
            order.sort_by(|&a, &b| self.expected(b).total_cmp(&self.expected(a)));
            order
        } else {
            let estimate = self.estimate(c).unwrap_or(0.0);
            let scored = self.scored_best_first(c);
            let split = scored.partition_point(|&(_, z)| z >= estimate);
            scored[..split]
                .iter()
                .map(|&(d, _)| d)
                .chain(self.unseen(c))
                .chain(scored[split..].iter().map(|&(d, _)| d))
                .collect()
        };
        self.take_in_order(order, None, limit)
    }

    /// Fits the estimator on every scored document, once scoring is over (estimators other
    /// than the cluster mean, whose estimate is kept per arm).
    fn fit_estimates(&mut self) -> Result<(), BanditError> {
        if self.params.estimator.is_cluster_mean() || self.doc_estimates.is_some() {
            return Ok(());
        }
        let features = self.features.as_deref().ok_or_else(|| {
            BanditError::Problem(format!("the estimator '{}' needs the pool's embeddings", self.params.estimator.name()))
        })?;
        let scored: Vec<(usize, f64)> =
            self.state.scores.iter().enumerate().filter_map(|(d, s)| s.map(|s| (d, self.z(s)))).collect();
        let sample = super::estimate::Sample {
            features,
            cluster: &self.problem.cluster,
            k: self.problem.k(),
            scored: &scored,
        };
        self.doc_estimates = Some(self.params.estimator.predict(&sample)?);
        Ok(())
    }

    /// What document d is expected to score (standardised): its own z once scored, else its
    /// estimate (the estimator's prediction, or its cluster's mean; 0 before anything is known).
    fn expected(&self, d: usize) -> f64 {
        match (self.state.scores[d], &self.doc_estimates) {
            (Some(s), _) => self.z(s),
            (None, Some(e)) => e[d],
            (None, None) => self.estimate(self.problem.cluster[d]).unwrap_or(0.0),
        }
    }
}
