//! The threshold rule (`allocation = "threshold"`; `--gamma` selects it), and the exploration pass
//! every arm rule begins with. The budget decides how selective to be when γ is left unset:
//!
//! 1. *Exploration pass.* Until every arm has been sampled once, nothing is taken (with a fixed γ
//!    and no pass, a small budget is spent on the first clusters tried).
//! 2. *Fitted γ.* Every round, arms are ranked by `e_i`; γ is the estimate of the first arm after
//!    those whose untaken members hold `coverage` (ρ) × the budget still to be selected, midway to
//!    the next estimate, so exactly those arms beat it ([`Bandit::fitted_gamma`]). It tightens as
//!    the selection fills.
//! 3. *Confidence margins.* With n members of arm i scored, `α / √n` is an α-wide margin on `e_i`
//!    (z-scores have unit spread over the pool). After the pass, an arm is sampled again only if
//!    `e_i + α/√n > γ` (it may beat γ), and one with `e_i − α/√n > γ` (it surely does) is taken
//!    from without new scores. Scoring goes where the decision is uncertain, and stops once
//!    `calibration + 2 · k · b` documents are scored (refinement costs at most what exploration
//!    cost); after that arms are taken from on their estimates as they stand.
//! 4. *Chunks* of one cluster's even share of the budget, m = ⌈budget in documents / k⌉
//!    ([`super::even_share`]), scored members best first, then unscored ones in seeded order.
//!
//! The reward the Cluster Score learns from is relative to a given γ, or to the pool's median when
//! γ is fitted (the fitted γ moves between rounds and may be −∞, and a constant shift leaves the
//! ranking of arms unchanged); chunks are taken against the γ in force. An arm is *spent* when
//! every untaken member has been scored and its estimate does not beat γ (nothing new to learn,
//! nothing worth taking); it is not chosen again. When only such arms remain the run stops and says
//! so; the fitted γ always admits an arm while any is left.

use std::fmt;

use super::params::Allocation;
use super::state::{ArmPick, Budget};
use super::{Bandit, Round};

/// The threshold rule's γ: given, or fitted with coverage ρ.
#[derive(Debug, Clone, Copy)]
pub(super) struct Gamma {
    pub given: Option<f64>,
    pub coverage: f64,
}

impl Gamma {
    /// The threshold rule's γ, when `allocation` is the threshold rule.
    pub(super) fn of(allocation: Allocation) -> Option<Self> {
        match allocation {
            Allocation::Threshold { gamma, coverage } => Some(Self { given: gamma, coverage }),
            _ => None,
        }
    }
}

/// How a round treats the arms it samples.
#[derive(Clone, Copy)]
struct Pass {
    /// The threshold rule in force (None: the exploration pass of a tilted allocation).
    gamma: Option<Gamma>,
    /// Only arms that may beat this γ are sampled (after the exploration pass).
    gate: Option<f64>,
    /// Nothing is taken (the exploration pass).
    exploring: bool,
}

impl Bandit {
    /// A round of the exploration pass: B arms not yet sampled, b members scored each, nothing
    /// taken. Under the threshold rule an arm with nothing left to sample that cannot beat γ is
    /// spent.
    pub(super) fn round_exploring<E: fmt::Display>(
        &mut self,
        scorer: &mut impl FnMut(&[usize]) -> Result<Vec<f64>, E>,
        gamma: Option<Gamma>,
    ) -> Round {
        self.round_sampled(scorer, Pass { gamma, gate: None, exploring: true })
    }

    /// A round of the threshold rule after the exploration pass (or without one).
    pub(super) fn round_threshold<E: fmt::Display>(
        &mut self,
        scorer: &mut impl FnMut(&[usize]) -> Result<Vec<f64>, E>,
        gamma: Gamma,
        explore_first: bool,
    ) -> Round {
        // After the exploration pass, scoring is spent only on arms that may beat γ.
        let gate = explore_first.then(|| self.gamma(gamma));
        self.round_sampled(scorer, Pass { gamma: Some(gamma), gate, exploring: false })
    }

    fn round_sampled<E: fmt::Display>(
        &mut self,
        scorer: &mut impl FnMut(&[usize]) -> Result<Vec<f64>, E>,
        pass: Pass,
    ) -> Round {
        let mut rng = self.rng();
        let may_beat = |i: usize| match (pass.gate, self.estimate(i)) {
            (Some(g), Some(e)) => e + self.margin(i) > g,
            _ => true,
        };
        let chosen = self.choose_among(&mut rng, may_beat);
        if chosen.is_empty() {
            return Ok(None);
        }
        // An arm whose estimate beats γ even less its margin is taken from without new scores:
        // more of them would not change the decision.
        let sure: Vec<usize> = chosen
            .iter()
            .map(|&(c, _)| c)
            .filter(|&c| pass.gate.is_some_and(|g| self.estimate(c).is_some_and(|e| e - self.margin(c) > g)))
            .collect();
        let b = self.params.samples_per_arm;
        let samples = self.score_samples(&chosen, |_, c| if sure.contains(&c) { 0 } else { b }, scorer)?;
        let mut picks = Vec::with_capacity(chosen.len());
        for ((c, index), sample) in chosen.into_iter().zip(samples) {
            self.state.arms[c].times_chosen += 1;
            let pick = if sure.contains(&c) {
                let accepted = self.take_chunk(c, None);
                ArmPick { arm: Some(c), index, reward: None, scored: 0, accepted }
            } else {
                let Some((reward, accepted)) = self.sampled_arm(c, &sample, pass) else {
                    self.state.arms[c].exhausted = true;
                    continue;
                };
                ArmPick { arm: Some(c), index, reward: Some(reward), scored: sample.len(), accepted }
            };
            if self.settle(&mut picks, pick).is_break() {
                break;
            }
        }
        Ok(Some(picks))
    }

    /// Arm c after its sample was scored: learns its reward and, out of the exploration pass,
    /// takes a chunk when its estimate beats γ. `(reward, accepted)`; None when nothing of the
    /// arm is left to observe.
    fn sampled_arm(&mut self, c: usize, sample: &[usize], pass: Pass) -> Option<(f64, usize)> {
        // No unseen member left: the arm's untaken scored members stand in (no new cost).
        let observed = if sample.is_empty() {
            let members: Vec<usize> = self.orders[c].iter().copied().filter(|&d| !self.state.taken[d]).collect();
            self.scores_of(&members)
        } else {
            self.scores_of(sample)
        };
        let given = pass.gamma.and_then(|g| g.given);
        let gamma = pass.gamma.map(|g| self.gamma(g));
        let reward = self.learn(c, &observed, given.unwrap_or(0.0))?;
        let Some(gamma) = gamma else {
            return Some((reward, 0));
        };
        // Taken on the arm's estimate from every member it has had scored (not this round's
        // sample alone): a chunk is mostly unscored members, whose expected score is the
        // cluster's mean.
        let margin = self.estimate(c).unwrap_or(reward) - gamma;
        let accepted = if !pass.exploring && margin > 0.0 { self.take_chunk(c, Some(reward)) } else { 0 };
        if sample.is_empty() && margin <= 0.0 {
            self.state.arms[c].spent = true;
        }
        Some((reward, accepted))
    }

    /// γ in force: the given one, or the budget-fitted one.
    fn gamma(&self, gamma: Gamma) -> f64 {
        gamma.given.unwrap_or_else(|| self.fitted_gamma(gamma.coverage))
    }

    /// The budget-fitted γ: arms (available, sampled) in order of their estimated mean; γ is the
    /// estimate of the first arm after those whose untaken members hold `coverage` × the budget
    /// still to be selected, so exactly those arms beat it (−∞ when all of them are needed).
    pub fn fitted_gamma(&self, coverage: f64) -> f64 {
        let k = self.problem.k();
        let mut mass = vec![0usize; k];
        for (d, &c) in self.problem.cluster.iter().enumerate() {
            if !self.state.taken[d] {
                mass[c] += match self.problem.budget {
                    Budget::Documents(_) => 1,
                    Budget::Tokens(_) => self.problem.tokens[d],
                };
            }
        }
        let mut arms: Vec<(f64, usize)> = (0..k)
            .filter(|&c| self.state.arms[c].available())
            .filter_map(|c| Some((self.estimate(c)?, mass[c])))
            .collect();
        arms.sort_by(|a, b| b.0.total_cmp(&a.0));
        let want = coverage * self.problem.budget.limit().saturating_sub(self.used()) as f64;
        let mut held = 0.0;
        for (i, &(_, m)) in arms.iter().enumerate() {
            held += m as f64;
            if held >= want {
                // Midway to the next lower estimate (arms tied with the last one needed are in).
                let last = arms[i].0;
                return arms[i + 1..].iter().find(|a| a.0 < last).map_or(f64::NEG_INFINITY, |a| (last + a.0) / 2.0);
            }
        }
        f64::NEG_INFINITY
    }
}
