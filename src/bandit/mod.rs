//! The bandit selector: clusters are arms, influence evaluations are pulls.
//!
//! Each cluster i keeps an accumulated reward `R_i`, an update count `T_i` and the documents already
//! scored or taken; N is the total number of updates. Quad's **Cluster Score** (a UCB):
//!
//! `CS_i = R_i / max(T_i, 1) + α · sqrt(2 · ln(max(N, 1)) / (T_i + 1))`.
//!
//! One round: choose the B arms with the highest index ([`index`]: the Cluster Score, Thompson,
//! ε-greedy; arms never chosen go first, ties broken by the seeded RNG); from each, score b
//! not-yet-seen members; reward `r_i` = the mean standardised score of the sample (less a given γ);
//! share it with every **neighbour** j with centroid distance `d(i, j) < τ` (i itself, d = 0):
//! `R_j += r_i · (1 − d(i,j)/τ)`, `T_j += 1`, `N += 1`. An arm's **estimate** `e_i` is the mean
//! standardised score of every member it has had scored. What is taken, and when, is the
//! allocation's rule:
//!
//! - the **document-level tilt** (the default, [`tilted`]): score first (calibration, one pass over
//!   every arm, refinement rounds by Cluster Score until the allowance `calibration + 2 · k · b` is
//!   spent), then give every document the share `p_d = min(1, λ · exp(z_d / T))`, T = 0.5, z_d its
//!   own score or its estimate, and take by those shares;
//! - the **cluster-level tilt** ([`tilted`]): quotas `∝ n_c · exp(e_c / T)`, scored and taken in the
//!   same rounds;
//! - the **threshold rule** ([`threshold`]): chunks of m documents from arms whose estimate beats γ,
//!   γ given or fitted to the budget.
//!
//! Scores are standardised before they become rewards: a seeded calibration sample of the pool is
//! scored first, and every score s becomes `(s − median) / std` of that sample, so γ, α and T are in
//! units of the pool's score spread whatever the model's gradient scale. With `calibration = 0` raw
//! scores are used.
//!
//! The baselines share the interface ([`baselines`]): `uniform` (round-robin over clusters, no
//! scoring), `random` (documents at random), `topk` (score everything, take the best), `mix` (a
//! fraction of the budget from `topk`, the rest at random: the frontier that can be had without
//! clusters); and `predicted` ([`tilted`]: a uniform sample of the allowance scored, then the
//! document-level tilt with a learned estimate, [`estimate`]: Quad without the bandit's choice of
//! what to score); and the signal policies `dsir`, `classifier`, `perplexity` ([`baselines`]: the
//! whole pool by a signal given with [`Bandit::with_signal`], no scoring).
//!
//! Parameters are written flat ([`BanditParams`], the TOML's `[bandit]`) and checked once into a
//! [`ValidBanditParams`] whose [`Policy`] carries what each rule reads ([`params`]). The state is
//! plain data ([`BanditState`], [`state`]): checkpoint it after every round and resume with
//! [`Bandit::resume`]; every random draw derives from the seed and the round number, so a resumed
//! run makes the same choices as an uninterrupted one.

mod baselines;
pub mod estimate;
mod index;
pub mod params;
pub mod state;
mod threshold;
mod tilted;

use std::fmt;
use std::ops::ControlFlow;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

pub use estimate::{Estimator, FeatureRows};
pub use index::cluster_score;
pub use params::{Allocation, AllocationName, BanditParams, Index, Policy, PolicyName, ValidBanditParams};
pub use state::{ArmPick, ArmState, BanditState, Budget, Problem, RoundLog, Selected, StopReason};

/// Errors of the bandit stage.
#[derive(Debug, thiserror::Error)]
pub enum BanditError {
    #[error("invalid bandit parameters: {0}")]
    Params(String),
    #[error("invalid problem: {0}")]
    Problem(String),
    #[error("the checkpoint does not belong to this run: {0}")]
    Checkpoint(String),
    #[error("scoring failed: {0}")]
    Scorer(String),
}

/// What one round chose: the picks, or None when no arm is left to choose.
type Round = Result<Option<Vec<ArmPick>>, BanditError>;

/// The bandit: the problem, its derived member orders and the state.
pub struct Bandit {
    params: ValidBanditParams,
    problem: Problem,
    /// Members of each arm in seeded random order (sampling without replacement walks it).
    orders: Vec<Vec<usize>>,
    /// The pool in seeded random order (for `random` and calibration).
    pool_order: Vec<usize>,
    /// m in force (see [`BanditParams::chunk`]).
    chunk: usize,
    state: BanditState,
    /// The pool's embedding rows, one per document (estimators that read them).
    features: Option<Box<dyn FeatureRows>>,
    /// Every document's estimated z once scoring is over (estimators other than the cluster
    /// mean); derived from the state, so a resumed run computes the same.
    doc_estimates: Option<Vec<f64>>,
    /// Every document's signal (the signal policies: [`crate::signals`]).
    signal: Option<Vec<f64>>,
}

/// One cluster's even share of the budget, in documents: ⌈budget in documents / k⌉, at least 4
/// (a token budget counts documents of the pool's mean length).
pub fn even_share(problem: &Problem) -> usize {
    ((budget_documents(problem) / problem.k().max(1) as f64).ceil() as usize).max(4)
}

/// The budget in documents (a token budget counts documents of the pool's mean length).
fn budget_documents(problem: &Problem) -> f64 {
    match problem.budget {
        Budget::Documents(d) => d as f64,
        Budget::Tokens(t) => {
            t as f64 * problem.tokens.len().max(1) as f64 / problem.tokens.iter().sum::<usize>().max(1) as f64
        }
    }
}

/// `1 − d/τ` for `d < τ` (1 at d = 0), else 0: the weight of a neighbour's share of a reward.
pub fn neighbour_weight(d: f64, tau: f64) -> f64 {
    if d == 0.0 {
        1.0
    } else if d < tau {
        1.0 - d / tau
    } else {
        0.0
    }
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

impl Bandit {
    pub fn new(params: ValidBanditParams, problem: Problem) -> Result<Self, BanditError> {
        problem.check()?;
        let n = problem.tokens.len();
        let k = problem.k();
        let state = BanditState {
            params: params.params().clone(),
            problem: problem.fingerprint(),
            round: 0,
            updates: 0,
            arms: vec![ArmState::default(); k],
            scores: vec![None; n],
            taken: vec![false; n],
            calibration: None,
            selected: Vec::new(),
            docs_selected: 0,
            tokens_selected: 0,
            documents_scored: 0,
            next_arm: 0,
            rounds: Vec::new(),
            stop: None,
        };
        Ok(Self::with_state(params, problem, state))
    }

    /// Continues from a checkpoint; refuses one made with other parameters or another pool.
    pub fn resume(params: ValidBanditParams, problem: Problem, state: BanditState) -> Result<Self, BanditError> {
        problem.check()?;
        if state.params != *params.params() {
            return Err(BanditError::Checkpoint("it was made with other bandit parameters".into()));
        }
        if state.problem != problem.fingerprint() {
            return Err(BanditError::Checkpoint("it was made on another pool, clustering or budget".into()));
        }
        state.check(&problem)?;
        let mut state = state;
        if state.stop == Some(StopReason::Interrupted) {
            state.stop = None;
        }
        Ok(Self::with_state(params, problem, state))
    }

    fn with_state(params: ValidBanditParams, problem: Problem, mut state: BanditState) -> Self {
        let mut orders = vec![Vec::new(); problem.k()];
        for (d, &c) in problem.cluster.iter().enumerate() {
            orders[c].push(d);
        }
        for (c, o) in orders.iter_mut().enumerate() {
            o.shuffle(&mut Xoshiro256PlusPlus::seed_from_u64(params.seed ^ (c as u64 + 1).wrapping_mul(GOLDEN)));
        }
        let mut pool_order: Vec<usize> = (0..problem.tokens.len()).collect();
        pool_order.shuffle(&mut Xoshiro256PlusPlus::seed_from_u64(params.seed ^ 0x5eed));
        for (c, arm) in state.arms.iter_mut().enumerate() {
            if orders[c].is_empty() {
                arm.exhausted = true;
            }
        }
        let chunk = params.chunk.unwrap_or_else(|| even_share(&problem));
        Self {
            params,
            problem,
            orders,
            pool_order,
            chunk,
            state,
            features: None,
            doc_estimates: None,
            signal: None,
        }
    }

    /// Gives the bandit the pool's embedding rows (row d: document d), which estimators other
    /// than the cluster mean read.
    pub fn with_features(mut self, features: Box<dyn FeatureRows>) -> Result<Self, BanditError> {
        if features.rows() != self.problem.tokens.len() {
            return Err(BanditError::Problem(format!(
                "{} embedding rows for {} documents",
                features.rows(),
                self.problem.tokens.len()
            )));
        }
        self.features = Some(features);
        Ok(self)
    }

    /// Gives the bandit every document's signal (row d: document d), which the signal policies
    /// take documents by: one finite value per document.
    pub fn with_signal(mut self, values: Vec<f64>) -> Result<Self, BanditError> {
        if values.len() != self.problem.tokens.len() {
            return Err(BanditError::Problem(format!("{} signal values for {} documents", values.len(), self.problem.tokens.len())));
        }
        if let Some(d) = values.iter().position(|v| !v.is_finite()) {
            return Err(BanditError::Problem(format!("the signal of document {d} is {}", values[d])));
        }
        self.signal = Some(values);
        Ok(self)
    }

    /// m in force: the given chunk, or one cluster's even share of the budget.
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    pub fn state(&self) -> &BanditState {
        &self.state
    }

    pub fn into_state(self) -> BanditState {
        self.state
    }

    /// The parameters as written.
    pub fn params(&self) -> &BanditParams {
        self.params.params()
    }

    pub fn is_done(&self) -> bool {
        self.state.stop.is_some()
    }

    /// Marks the run as stopped from outside (the checkpoint still resumes it).
    pub fn interrupt(&mut self) {
        if self.state.stop.is_none() {
            self.state.stop = Some(StopReason::Interrupted);
        }
    }

    /// Documents to score in all: the given allowance, or `calibration + 2 · k · b` (k: non-empty arms).
    pub fn allowance(&self) -> usize {
        self.params.allowance.unwrap_or_else(|| {
            let non_empty = self.orders.iter().filter(|o| !o.is_empty()).count();
            self.params.calibration + 2 * non_empty * self.params.samples_per_arm
        })
    }

    /// Runs one round; returns its log, or None when the run is over (see `state().stop`).
    pub fn step<E: fmt::Display>(
        &mut self,
        scorer: &mut impl FnMut(&[usize]) -> Result<Vec<f64>, E>,
    ) -> Result<Option<RoundLog>, BanditError> {
        if self.state.stop.is_none() {
            self.state.stop = self.finished();
        }
        if self.state.stop.is_some() {
            return Ok(None);
        }
        let before = (self.state.documents_scored, self.state.docs_selected);
        if self.params.scores() && self.state.calibration.is_none() && self.params.calibration > 0 {
            self.calibrate(scorer)?;
        }
        let picks = match self.params.policy {
            Policy::Random => Some(self.round_random(self.chunk * self.params.arms_per_round)),
            Policy::Uniform => Some(self.round_uniform()),
            Policy::Topk => Some(self.round_topk(scorer, self.problem.budget.limit())?),
            Policy::Mix { fraction } => Some(self.round_mix(scorer, fraction)?),
            Policy::Predicted { temperature } => self.round_predicted(scorer, temperature)?,
            Policy::Signal { signal, beta } => Some(self.round_signal(signal, beta)?),
            Policy::Arms { explore_first, allocation, .. } => self.round_arms(scorer, explore_first, allocation)?,
        };
        let Some(picks) = picks else {
            // No arm left to choose: `predicted` has taken what its quotas allow, the arm rules
            // have nothing above γ (or with room) left.
            self.state.stop = Some(match self.params.policy {
                Policy::Predicted { .. } => StopReason::PoolExhausted,
                _ => StopReason::NoArmAboveGamma,
            });
            return Ok(None);
        };
        let log = RoundLog {
            round: self.state.round,
            picks,
            scored: self.state.documents_scored - before.0,
            accepted: self.state.docs_selected - before.1,
            docs_selected: self.state.docs_selected,
            tokens_selected: self.state.tokens_selected,
        };
        self.state.rounds.push(log.clone());
        self.state.round += 1;
        self.state.stop = self.finished();
        Ok(Some(log))
    }

    /// Why the run is over, if it is: the budget met, or nothing left to take.
    fn finished(&self) -> Option<StopReason> {
        if self.budget_met() {
            Some(StopReason::BudgetMet)
        } else if self.state.taken.iter().all(|&t| t) {
            Some(StopReason::PoolExhausted)
        } else {
            None
        }
    }

    /// Runs rounds until the end; `on_round` sees each round's log and may ask to stop (false).
    pub fn run<E: fmt::Display>(
        &mut self,
        scorer: &mut impl FnMut(&[usize]) -> Result<Vec<f64>, E>,
        mut on_round: impl FnMut(&Self, &RoundLog) -> bool,
    ) -> Result<(), BanditError> {
        while let Some(log) = self.step(scorer)? {
            if !on_round(self, &log) && !self.is_done() {
                self.interrupt();
            }
        }
        Ok(())
    }

    /// A round of a policy whose arms are clusters: the exploration pass while an arm is still
    /// unsampled (when `explore_first`), then the allocation's rule.
    fn round_arms<E: fmt::Display>(
        &mut self,
        scorer: &mut impl FnMut(&[usize]) -> Result<Vec<f64>, E>,
        explore_first: bool,
        allocation: Allocation,
    ) -> Round {
        let exploring = explore_first && self.state.arms.iter().any(|a| a.available() && a.times_chosen == 0);
        match allocation {
            _ if exploring => self.round_exploring(scorer, threshold::Gamma::of(allocation)),
            Allocation::Tilted { temperature } => self.round_tilted(scorer, temperature),
            Allocation::TiltedDocuments { temperature } => self.round_documents(scorer, temperature),
            Allocation::Threshold { gamma, coverage } => {
                self.round_threshold(scorer, threshold::Gamma { given: gamma, coverage }, explore_first)
            }
        }
    }

    fn calibrate<E: fmt::Display>(
        &mut self,
        scorer: &mut impl FnMut(&[usize]) -> Result<Vec<f64>, E>,
    ) -> Result<(), BanditError> {
        let sample: Vec<usize> = self.pool_order.iter().copied().take(self.params.calibration).collect();
        self.score(&sample, scorer)?;
        let mut v: Vec<f64> = sample.iter().filter_map(|&d| self.state.scores[d]).collect();
        v.sort_by(f64::total_cmp);
        let median = if v.is_empty() {
            0.0
        } else if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len().max(2) - 1) as f64;
        // Equal scores leave nothing to standardise by (an infinite damping zeroes every score):
        // an error, not a run that ranks by noise and reports success. Fewer than two scores
        // (a pool of one scorable document) have no spread to measure; unit spread stands in.
        if v.len() >= 2 && !(var > 0.0) {
            return Err(BanditError::Scorer(format!(
                "the {} scores of the calibration sample are all equal ({}): nothing to standardise by; check the reference set and the damping",
                v.len(),
                v[0]
            )));
        }
        let std = if var.sqrt() > 0.0 { var.sqrt() } else { 1.0 };
        self.state.calibration = Some((median, std));
        Ok(())
    }

    // ---- the bookkeeping every rule shares: score, take, learn, estimate ----

    /// What the selection uses so far, in the budget's unit.
    fn used(&self) -> usize {
        match self.problem.budget {
            Budget::Documents(_) => self.state.docs_selected,
            Budget::Tokens(_) => self.state.tokens_selected,
        }
    }

    fn budget_met(&self) -> bool {
        self.used() >= self.problem.budget.limit()
    }

    /// A raw score standardised by the calibration sample: `(s − median) / std`.
    fn z(&self, raw: f64) -> f64 {
        match self.state.calibration {
            Some((median, std)) => (raw - median) / std,
            None => raw,
        }
    }

    fn rng(&self) -> Xoshiro256PlusPlus {
        Xoshiro256PlusPlus::seed_from_u64(self.params.seed ^ (self.state.round as u64 + 1).wrapping_mul(GOLDEN))
    }

    /// Scores `docs` (not yet scored) and records them.
    fn score<E: fmt::Display>(
        &mut self,
        docs: &[usize],
        scorer: &mut impl FnMut(&[usize]) -> Result<Vec<f64>, E>,
    ) -> Result<(), BanditError> {
        if docs.is_empty() {
            return Ok(());
        }
        let s = scorer(docs).map_err(|e| BanditError::Scorer(e.to_string()))?;
        if s.len() != docs.len() {
            return Err(BanditError::Scorer(format!("{} scores for {} documents", s.len(), docs.len())));
        }
        for (&d, &v) in docs.iter().zip(&s) {
            if !v.is_finite() {
                return Err(BanditError::Scorer(format!("non-finite score for document {d}")));
            }
            if self.state.scores[d].is_none() {
                self.state.scores[d] = Some(v);
                self.state.documents_scored += 1;
                let arm = &mut self.state.arms[self.problem.cluster[d]];
                arm.scored += 1;
                arm.score_sum += v;
            }
        }
        Ok(())
    }

    /// Scores a sample of each chosen arm in one call: `size(c)` of arm c's unseen members.
    fn score_samples<E: fmt::Display>(
        &mut self,
        chosen: &[(usize, f64)],
        mut size: impl FnMut(&Self, usize) -> usize,
        scorer: &mut impl FnMut(&[usize]) -> Result<Vec<f64>, E>,
    ) -> Result<Vec<Vec<usize>>, BanditError> {
        let samples: Vec<Vec<usize>> = chosen
            .iter()
            .map(|&(c, _)| {
                let n = size(self, c);
                self.unseen(c).take(n).collect()
            })
            .collect();
        let all: Vec<usize> = samples.iter().flatten().copied().collect();
        self.score(&all, scorer)?;
        Ok(samples)
    }

    /// Learns from arm c's observed raw scores: its reward is their mean z less `offset` (a given
    /// γ, else 0), kept as its last reward and shared with its neighbours. None when nothing was
    /// observed.
    fn learn(&mut self, c: usize, observed: &[f64], offset: f64) -> Option<f64> {
        if observed.is_empty() {
            return None;
        }
        let mean = observed.iter().map(|&s| self.z(s)).sum::<f64>() / observed.len() as f64;
        let reward = mean - offset;
        self.state.arms[c].last_reward = Some(reward);
        self.share(c, reward);
        Some(reward)
    }

    /// The raw scores of a sample's documents.
    fn scores_of(&self, docs: &[usize]) -> Vec<f64> {
        docs.iter().filter_map(|&d| self.state.scores[d]).collect()
    }

    /// `R_j += r · (1 − d(i,j)/τ)`, `T_j += 1`, `N += 1` for every j with `d(i, j) < τ` (i included).
    fn share(&mut self, i: usize, reward: f64) {
        let tau = self.params.tau;
        for j in 0..self.problem.k() {
            let d = if j == i { 0.0 } else { self.problem.distances[i][j] };
            if j == i || d < tau {
                let w = neighbour_weight(d, tau);
                let arm = &mut self.state.arms[j];
                arm.reward_sum += reward * w;
                arm.updates += 1;
                self.state.updates += 1;
            }
        }
    }

    /// The tail of every round's part for one arm: its pick is logged; `Break` once the budget is
    /// met (the round ends there).
    fn settle(&mut self, picks: &mut Vec<ArmPick>, pick: ArmPick) -> ControlFlow<()> {
        picks.push(pick);
        if self.budget_met() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    /// Takes document d into the selection; returns false when the budget was already met.
    fn take(&mut self, d: usize, reward: Option<f64>) -> bool {
        if self.budget_met() || self.state.taken[d] {
            return false;
        }
        let c = self.problem.cluster[d];
        self.state.taken[d] = true;
        self.state.docs_selected += 1;
        self.state.tokens_selected += self.problem.tokens[d];
        let arm = &mut self.state.arms[c];
        arm.taken += 1;
        if arm.taken == self.orders[c].len() {
            arm.exhausted = true;
        }
        let score = self.state.scores[d].map(|s| self.z(s));
        self.state.selected.push(Selected {
            doc: d,
            cluster: c,
            round: self.state.round,
            reward,
            score,
        });
        true
    }

    /// Takes the documents of `order` until `limit` are taken or the budget is met.
    fn take_in_order(&mut self, order: impl IntoIterator<Item = usize>, reward: Option<f64>, limit: usize) -> usize {
        let mut n = 0;
        for d in order {
            if n == limit || !self.take(d, reward) {
                break;
            }
            n += 1;
        }
        n
    }

    /// Untaken, unscored members of arm c, in its seeded order.
    fn unseen(&self, c: usize) -> impl Iterator<Item = usize> + '_ {
        self.orders[c]
            .iter()
            .copied()
            .filter(|&d| !self.state.taken[d] && self.state.scores[d].is_none())
    }

    /// Untaken, scored members of arm c with their standardised scores, best first.
    fn scored_best_first(&self, c: usize) -> Vec<(usize, f64)> {
        let mut scored: Vec<(usize, f64)> = self.orders[c]
            .iter()
            .filter(|&&d| !self.state.taken[d])
            .filter_map(|&d| self.state.scores[d].map(|s| (d, s)))
            .collect();
        // Ranked by the raw score (z is monotone in it; ties in index order).
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored.into_iter().map(|(d, s)| (d, self.z(s))).collect()
    }

    /// Takes up to m documents from arm c: scored members best first, then unscored in order.
    fn take_chunk(&mut self, c: usize, reward: Option<f64>) -> usize {
        self.take_up_to(c, reward, self.chunk)
    }

    /// Takes up to `limit` documents from arm c, in [`Self::take_chunk`]'s order.
    fn take_up_to(&mut self, c: usize, reward: Option<f64>, limit: usize) -> usize {
        let order: Vec<usize> = self.scored_best_first(c).into_iter().map(|(d, _)| d).chain(self.unseen(c)).collect();
        self.take_in_order(order, reward, limit)
    }

    /// The estimated mean standardised score of arm c: the mean over every member it has had
    /// scored (None before the first).
    fn estimate(&self, c: usize) -> Option<f64> {
        let a = &self.state.arms[c];
        (a.scored > 0).then(|| self.z(a.score_sum / a.scored as f64))
    }
}
