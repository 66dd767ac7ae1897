//! How the arm policies choose the B arms of a round: the Cluster Score (UCB; `greedy` is α = 0),
//! Thompson sampling, ε-greedy. Arms never chosen go first; ties are broken by the seeded RNG.

use rand::Rng;
use rand_distr::{Distribution, Normal};
use rand_xoshiro::Xoshiro256PlusPlus;

use super::params::{Index, Policy};
use super::state::ArmState;
use super::Bandit;

/// `CS = R / max(T, 1) + α · sqrt(2 ln(max(N, 1)) / (T + 1))`.
pub fn cluster_score(arm: &ArmState, total_updates: u64, alpha: f64) -> f64 {
    let n = total_updates.max(1) as f64;
    arm.mean_reward() + alpha * (2.0 * n.ln() / (arm.updates + 1) as f64).sqrt()
}

impl Bandit {
    /// The Cluster Score of arm i: `R_i / max(T_i, 1) + α · sqrt(2 ln(max(N, 1)) / (T_i + 1))`.
    pub fn cluster_score(&self, i: usize) -> f64 {
        cluster_score(&self.state.arms[i], self.state.updates, self.params.alpha())
    }

    /// The confidence margin on arm c's estimate: `α / √n` with n members scored (z-scores have
    /// unit spread over the pool), while the scoring allowance lasts; 0 after it, when decisions
    /// are made on the estimates as they stand.
    pub(super) fn margin(&self, c: usize) -> f64 {
        if self.state.documents_scored < self.allowance() {
            self.params.alpha() / (self.state.arms[c].scored.max(1) as f64).sqrt()
        } else {
            0.0
        }
    }

    /// The rule's ranking of the arms (the Cluster Score for the policies without arms).
    fn index(&self) -> Index {
        match self.params.policy {
            Policy::Arms { index, .. } => index,
            _ => Index::Ucb,
        }
    }

    /// Thompson's posterior spread: the spread of the rewards seen so far (1 until there are two).
    fn reward_spread(&self) -> f64 {
        let rewards: Vec<f64> = self.state.arms.iter().filter_map(|a| a.last_reward).collect();
        if rewards.len() < 2 {
            return 1.0;
        }
        let m = rewards.iter().sum::<f64>() / rewards.len() as f64;
        (rewards.iter().map(|r| (r - m).powi(2)).sum::<f64>() / (rewards.len() - 1) as f64).sqrt().max(1e-6)
    }

    /// Chooses up to B available arms among those `eligible`, by the policy's index: `(arm, index)`.
    pub(super) fn choose_among(
        &self,
        rng: &mut Xoshiro256PlusPlus,
        eligible: impl Fn(usize) -> bool,
    ) -> Vec<(usize, f64)> {
        let index = self.index();
        let spread = self.reward_spread();
        // (never chosen first, index, random tie-break, arm)
        let mut keyed: Vec<(bool, f64, f64, usize)> = (0..self.problem.k())
            .filter(|&i| self.state.arms[i].available() && eligible(i))
            .map(|i| {
                let arm = &self.state.arms[i];
                let value = match index {
                    Index::Thompson => {
                        let sd = spread / ((arm.updates + 1) as f64).sqrt();
                        Normal::new(arm.mean_reward(), sd).map(|n| n.sample(rng)).unwrap_or(arm.mean_reward())
                    }
                    Index::EpsilonGreedy { .. } => arm.mean_reward(),
                    Index::Ucb => self.cluster_score(i),
                };
                (arm.times_chosen == 0, value, rng.gen::<f64>(), i)
            })
            .collect();
        keyed.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.total_cmp(&a.1)).then(a.2.total_cmp(&b.2)));
        let b = self.params.arms_per_round.min(keyed.len());
        let Index::EpsilonGreedy { epsilon } = index else {
            return keyed.iter().take(b).map(|k| (k.3, k.1)).collect();
        };
        let mut chosen = Vec::with_capacity(b);
        for _ in 0..b {
            // Never-chosen arms still go first; otherwise explore with probability ε.
            let explore = !keyed[0].0 && rng.gen::<f64>() < epsilon;
            let k = keyed.remove(if explore { rng.gen_range(0..keyed.len()) } else { 0 });
            chosen.push((k.3, k.1));
        }
        chosen
    }
}
