//! The baselines that share the bandit's interface: `uniform` (round-robin over clusters, m
//! documents each, no scoring: pure diversity), `random` (documents in the pool's seeded random
//! order: no clusters, no scoring), `topk` (score everything, take the best: pure quality) and
//! `mix` (a fraction of the budget from `topk`, the rest at random, no document twice: the
//! quality/diversity frontier that can be had without clusters), and the signal policies (the
//! whole pool by a per-document signal, [`crate::signals`]).

use std::fmt;

use rand::Rng;

use super::state::ArmPick;
use super::{Bandit, BanditError};

/// The pick of a round over the whole pool (no arm).
fn whole_pool(scored: usize, accepted: usize) -> ArmPick {
    ArmPick { arm: None, index: 0.0, reward: None, scored, accepted }
}

impl Bandit {
    /// B clusters in round-robin order, m documents from each available one.
    pub(super) fn round_uniform(&mut self) -> Vec<ArmPick> {
        let k = self.problem.k();
        let mut picks = Vec::new();
        let mut looked = 0;
        while picks.len() < self.params.arms_per_round && looked < k && !self.budget_met() {
            let c = self.state.next_arm % k;
            self.state.next_arm = (self.state.next_arm + 1) % k;
            looked += 1;
            if !self.state.arms[c].available() {
                continue;
            }
            self.state.arms[c].times_chosen += 1;
            let accepted = self.take_chunk(c, None);
            if self.settle(&mut picks, ArmPick { arm: Some(c), index: 0.0, reward: None, scored: 0, accepted }).is_break() {
                break;
            }
        }
        picks
    }

    /// Takes up to `want` untaken documents in the pool's seeded random order.
    pub(super) fn round_random(&mut self, want: usize) -> Vec<ArmPick> {
        let next: Vec<usize> = self.pool_order.iter().copied().filter(|&d| !self.state.taken[d]).take(want).collect();
        let accepted = self.take_in_order(next, None, usize::MAX);
        vec![whole_pool(0, accepted)]
    }

    /// Scores every document, then takes the best until `limit` (in the budget's unit) is used.
    pub(super) fn round_topk<E: fmt::Display>(
        &mut self,
        scorer: &mut impl FnMut(&[usize]) -> Result<Vec<f64>, E>,
        limit: usize,
    ) -> Result<Vec<ArmPick>, BanditError> {
        let todo: Vec<usize> = (0..self.problem.tokens.len()).filter(|&d| self.state.scores[d].is_none()).collect();
        self.score(&todo, scorer)?;
        let mut ranked: Vec<(usize, f64)> =
            (0..self.problem.tokens.len()).filter_map(|d| self.state.scores[d].map(|s| (d, s))).collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut accepted = 0;
        for (d, _) in ranked {
            if self.used() >= limit || !self.take(d, None) {
                break;
            }
            accepted += 1;
        }
        Ok(vec![whole_pool(todo.len(), accepted)])
    }

    /// `fraction` of the budget from `topk`, the rest at random.
    pub(super) fn round_mix<E: fmt::Display>(
        &mut self,
        scorer: &mut impl FnMut(&[usize]) -> Result<Vec<f64>, E>,
        fraction: f64,
    ) -> Result<Vec<ArmPick>, BanditError> {
        let part = (fraction * self.problem.budget.limit() as f64).round() as usize;
        // Nothing from topk: `random`, without scoring the pool for a part that takes nothing.
        if part == 0 {
            return Ok(self.round_random(usize::MAX));
        }
        let mut picks = self.round_topk(scorer, part)?;
        picks.extend(self.round_random(usize::MAX));
        Ok(picks)
    }

    /// Every document by its signal s_d, best first: with β, the Gumbel top-k of `β · s_d`
    /// (`key_d = β · s_d − ln(−ln U_d)`, U_d seeded uniform), which draws documents without
    /// replacement with probability ∝ exp(β · s_d) (Kool et al., ICML 2019, "Stochastic beams and
    /// where to find them"); without β, the signal itself. Ties go to the lower index.
    pub(super) fn round_signal(&mut self, signal: crate::signals::Signal, beta: Option<f64>) -> Result<Vec<ArmPick>, BanditError> {
        let values = self
            .signal
            .as_ref()
            .ok_or_else(|| BanditError::Problem(format!("the {signal} policy needs every document's {signal} signal")))?;
        let keys: Vec<f64> = match beta {
            Some(beta) => {
                let mut rng = self.rng();
                values
                    .iter()
                    .map(|&s| {
                        // U in (0, 1), both ends out: −ln(−ln U) stays finite.
                        let u: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
                        beta * s - (-u.ln()).ln()
                    })
                    .collect()
            }
            None => values.clone(),
        };
        let mut order: Vec<usize> = (0..keys.len()).filter(|&d| !self.state.taken[d]).collect();
        order.sort_by(|&a, &b| keys[b].total_cmp(&keys[a]).then(a.cmp(&b)));
        let accepted = self.take_in_order(order, None, usize::MAX);
        Ok(vec![whole_pool(0, accepted)])
    }
}
