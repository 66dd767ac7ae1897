//! The bandit selector: clusters are arms, influence evaluations are pulls.
//!
//! Each cluster i keeps an accumulated reward `R_i`, an update count `T_i` and the documents already
//! scored or taken; N is the total number of updates. Quad's **Cluster Score** (a UCB):
//!
//! `CS_i = R_i / max(T_i, 1) + α · sqrt(2 · ln(max(N, 1)) / (T_i + 1))`.
//!
//! One round: choose the B arms with the highest CS (arms never chosen go first, in seeded random
//! order; ties are broken by the seeded RNG); from each, score b not-yet-seen members (sampled
//! without replacement); reward `r_i = mean(scores) − γ` (− 0 when γ is fitted, below); share it
//! with every **neighbour** j with centroid distance `d(i, j) < τ` (i itself, d = 0):
//! `R_j += r_i · (1 − d(i,j)/τ)`, `T_j += 1`, `N += 1`; and if the arm's **estimate** `e_i` — the
//! mean standardised score of every member it has had scored — beats γ, take a chunk of m
//! documents from it (its scored members, best first, then unscored ones in seeded random order).
//! Stop when the budget is met — the last chunk is cut at the document that reaches it — or when
//! no arm is left.
//!
//! **The default rule: the document-level tilt** (`allocation = "tilted-documents"`). Scoring
//! comes first: a calibration sample, the exploration pass (every arm sampled once, b members),
//! then refinement rounds of B arms chosen by Cluster Score, b unseen members each, until the
//! scoring allowance `calibration + 2 · k · b` is spent (refinement costs what exploration cost);
//! nothing is taken meanwhile. Then every document d gets the share
//! `p_d = min(1, λ · exp(z_d / T))` of the budget, z_d its own standardised score when it was
//! scored and its cluster's estimate when not (or, with another `estimator`, its own estimate from
//! the embeddings: [`estimate`]), T = 0.5, λ fitted so the shares add up to the budget
//! ([`Bandit::document_quotas`]); rounds of B arms by Cluster Score take up to m documents of each
//! arm's quota `Σ_{d ∈ c} p_d`, in the order of expected score: scored members above the arm's
//! estimate best first, then unscored ones, then the scored ones below. Among all allocations at a
//! given divergence from the pool, the exponential tilt has the highest expected score (the Gibbs
//! variational principle); taking it per document where a document's own score is known keeps
//! every region of the pool while the best documents found are all taken. It replaced the
//! cluster-level tilt (`allocation = "tilted"`: quotas `∝ n_c · exp(e_c / T)`, scoring and taking
//! in the same rounds) after the second sweep in experiments/README.md ("The rule").
//!
//! **The threshold allocation** (`allocation = "threshold"`; `--gamma` selects it), which makes the
//! budget decide how selective to be instead of a hand-set threshold when γ is left unset:
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
//! 4. *Chunks* of one cluster's even share of the budget, m = ⌈budget in documents / k⌉ ([`even_share`]).
//!
//! Scores are standardised before they become rewards: a seeded calibration sample of the pool is
//! scored first, and every score s becomes `(s − median) / std` of that sample, so γ and α are in
//! units of the pool's score spread (γ = 0: better than the typical document) whatever the
//! model's gradient scale. With `calibration = 0` raw scores are used.
//!
//! An arm is exhausted when it has no untaken document; it is *spent* when every untaken member has
//! been scored and its estimate does not beat γ (nothing new to learn, nothing worth taking).
//! Neither is chosen again. When only such arms (or, after the pass, arms that cannot beat γ)
//! remain, the run stops and says so; the fitted γ always admits an arm while any is left.
//!
//! Other policies share the interface: `thompson` (Gaussian posterior on each arm's mean reward),
//! `epsilon-greedy`, `greedy` (α = 0), `uniform` (round-robin over clusters, no scoring), `random`
//! (documents at random, no clusters, no scoring), `topk` (score everything, take the best) and
//! `mix` (a fraction `mix` of the budget from `topk`, the rest at random: the quality/diversity
//! frontier that can be had without clusters) and `predicted` (a uniform sample of the scoring
//! allowance, then the document-level tilt: the learned-estimator peer, Quad without the bandit's
//! choice of what to score).
//!
//! The state is plain data ([`BanditState`], serde): checkpoint it after every round and resume
//! with [`Bandit::resume`]; every random draw derives from the seed and the round number, so a
//! resumed run makes the same choices as an uninterrupted one.

pub mod estimate;

use std::fmt;

pub use estimate::{Estimator, FeatureRows};
use std::str::FromStr;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};

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

/// How arms (or documents) are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Quad: the Cluster Score (UCB) with neighbour sharing and the γ threshold.
    Ucb,
    /// Sample each arm's mean reward from a Gaussian posterior; take the B largest.
    Thompson,
    /// Best mean reward, but each slot is a random arm with probability ε.
    EpsilonGreedy,
    /// UCB with α = 0.
    Greedy,
    /// Round-robin over clusters, m documents each, no scoring (pure diversity).
    Uniform,
    /// Documents uniformly at random (no clusters, no scoring).
    Random,
    /// Score every document, take the best (pure quality).
    Topk,
    /// A fraction `mix` of the budget from `topk`, the rest uniformly at random (no document
    /// twice): the baseline frontier between `random` (mix = 0) and `topk` (mix = 1).
    Mix,
    /// The learned-estimator peer (MATES-style): score a uniform random sample of the pool as
    /// large as Quad's scoring allowance, estimate every other document with `estimator`, and
    /// take by the same document-level tilt at the same T. Quad without the bandit's choice of
    /// what to score.
    Predicted,
}

impl Policy {
    pub const ALL: [Policy; 9] = [
        Policy::Ucb,
        Policy::Thompson,
        Policy::EpsilonGreedy,
        Policy::Greedy,
        Policy::Uniform,
        Policy::Random,
        Policy::Topk,
        Policy::Mix,
        Policy::Predicted,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Policy::Ucb => "ucb",
            Policy::Thompson => "thompson",
            Policy::EpsilonGreedy => "epsilon-greedy",
            Policy::Greedy => "greedy",
            Policy::Uniform => "uniform",
            Policy::Random => "random",
            Policy::Topk => "topk",
            Policy::Mix => "mix",
            Policy::Predicted => "predicted",
        }
    }

    /// Whether the policy needs influence scores.
    pub fn scores(self) -> bool {
        !matches!(self, Policy::Uniform | Policy::Random)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Policy::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Policy::ALL.iter().map(|p| p.name()).collect();
                format!("unknown policy '{s}' (expected one of: {})", names.join(", "))
            })
    }
}

/// How the bandit allots the budget to arms once every arm has been sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Allocation {
    /// Every document's share ∝ exp(z / T): its own score once scored, its cluster's estimate
    /// before; scoring first (the allowance), taking after (the default).
    TiltedDocuments,
    /// Each arm's quota ∝ its size × exp(estimate / T), sampled and taken in the same rounds.
    Tilted,
    /// Chunks from arms whose estimate beats γ (given, or fitted to the budget with `coverage`).
    Threshold,
}

/// What the selection must add up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    Documents(usize),
    Tokens(usize),
}

impl Budget {
    /// The budget from the two ways of giving one (`--budget-tokens` / `--budget-docs`,
    /// `budget_tokens=` / `budget_documents=`): exactly one, and above zero (a budget of nothing
    /// would "succeed" with an empty selection).
    pub fn from_options(tokens: Option<usize>, documents: Option<usize>) -> Result<Self, BanditError> {
        let budget = match (tokens, documents) {
            (Some(t), None) => Budget::Tokens(t),
            (None, Some(d)) => Budget::Documents(d),
            _ => return Err(BanditError::Params("give exactly one budget: in tokens or in documents".into())),
        };
        if budget.limit() == 0 {
            return Err(BanditError::Params("the budget must be above 0".into()));
        }
        Ok(budget)
    }

    fn limit(self) -> usize {
        match self {
            Budget::Documents(n) | Budget::Tokens(n) => n,
        }
    }
}

/// The bandit's parameters (all in the run's TOML under `[bandit]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BanditParams {
    pub policy: Policy,
    /// α: weight of the exploration bonus in the Cluster Score.
    pub alpha: f64,
    /// γ: reward threshold, in standardised score units; a chunk is taken from a cluster whose
    /// estimated mean beats it. None (the default): fitted to the budget every round, so that the
    /// clusters above it hold `coverage` × what is still to be selected (see the module docs).
    pub gamma: Option<f64>,
    /// τ: neighbour radius in centroid cosine distance (reward shared with weight 1 − d/τ).
    pub tau: f64,
    /// B: arms chosen per round.
    pub arms_per_round: usize,
    /// b: members scored per chosen arm.
    pub samples_per_arm: usize,
    /// m: documents taken from an arm whose reward is positive. None (the default): one cluster's
    /// even share of the budget, ⌈budget in documents / k⌉ (at least 4).
    pub chunk: Option<usize>,
    /// Score one sample of every cluster before any chunk is taken (the exploration pass).
    pub explore_first: bool,
    /// ρ of the fitted γ: the clusters that qualify hold ρ × the budget still to be selected.
    pub coverage: f64,
    /// How chunks are allotted after the exploration pass (see the module docs).
    pub allocation: Allocation,
    /// T of the tilted allocation, in standardised score units.
    pub temperature: f64,
    /// ε of `epsilon-greedy`.
    pub epsilon: f64,
    /// Documents scored up front to standardise scores (0: use raw scores).
    pub calibration: usize,
    /// Documents scored in all (calibration, exploration and refinement). None (the default):
    /// `calibration + 2 · k · b`, refinement costing at most what exploration cost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowance: Option<usize>,
    /// Fraction of the budget `mix` takes from `topk` (the rest at random), in [0, 1].
    pub mix: f64,
    /// How the document-level tilt (and `predicted`) estimates an unscored document's score
    /// ([`estimate::Estimator`]); the cluster mean needs no embeddings.
    #[serde(skip_serializing_if = "Estimator::is_cluster_mean")]
    pub estimator: Estimator,
    pub seed: u64,
}

impl Default for BanditParams {
    fn default() -> Self {
        Self {
            policy: Policy::Ucb,
            alpha: 1.0,
            gamma: None,
            tau: 0.2,
            arms_per_round: 4,
            samples_per_arm: 8,
            chunk: None,
            explore_first: true,
            coverage: 2.0,
            allocation: Allocation::TiltedDocuments,
            temperature: 0.5,
            epsilon: 0.1,
            calibration: 64,
            allowance: None,
            mix: 0.5,
            estimator: Estimator::ClusterMean,
            seed: 0,
        }
    }
}

/// Bandit parameters that passed [`BanditParams::check`]: what [`Bandit::new`] takes.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidBanditParams(BanditParams);

impl std::ops::Deref for ValidBanditParams {
    type Target = BanditParams;
    fn deref(&self) -> &BanditParams {
        &self.0
    }
}

impl ValidBanditParams {
    /// The parameters as given (for manifests and checkpoints).
    pub fn params(&self) -> &BanditParams {
        &self.0
    }
}

impl BanditParams {
    /// These parameters at temperature `t` (`--temperature`, `temperature=`): refused where the
    /// allocation has no temperature (the threshold rule); the value itself is checked by
    /// [`Self::check`].
    pub fn with_temperature(mut self, t: f64) -> Result<Self, BanditError> {
        if self.allocation == Allocation::Threshold {
            return Err(BanditError::Params(
                "temperature applies to the tilted allocations; this configuration uses allocation = \"threshold\"".into(),
            ));
        }
        self.temperature = t;
        Ok(self)
    }

    /// Checks the parameters once; the bandit takes only the checked type.
    pub fn check(self) -> Result<ValidBanditParams, BanditError> {
        self.problems()?;
        Ok(ValidBanditParams(self))
    }

    fn problems(&self) -> Result<(), BanditError> {
        let bad = |m: &str| Err(BanditError::Params(m.into()));
        if !(self.alpha >= 0.0 && self.alpha.is_finite()) {
            return bad("alpha must be a finite number ≥ 0");
        }
        if self.gamma.is_some() && self.allocation != Allocation::Threshold {
            return bad("gamma applies to allocation = \"threshold\"; the tilted allocation has no threshold");
        }
        if self.gamma.is_some_and(|g| !g.is_finite()) {
            return bad("gamma must be finite");
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return bad("temperature must be a finite number > 0");
        }
        if !(self.coverage >= 1.0 && self.coverage.is_finite()) {
            return bad("coverage must be a finite number ≥ 1");
        }
        if !(self.tau >= 0.0 && self.tau.is_finite()) {
            return bad("tau must be a finite number ≥ 0");
        }
        if self.arms_per_round == 0 || self.samples_per_arm == 0 || self.chunk == Some(0) {
            return bad("arms_per_round (B), samples_per_arm (b) and chunk (m) must be positive");
        }
        if !(0.0..=1.0).contains(&self.epsilon) {
            return bad("epsilon must be in [0, 1]");
        }
        if !(0.0..=1.0).contains(&self.mix) {
            return bad("mix must be in [0, 1]");
        }
        if let Estimator::Knn { k: 0 } | Estimator::Mlp { hidden: 0, .. } = self.estimator {
            return bad("estimator: knn's k and mlp's hidden must be positive");
        }
        Ok(())
    }
}

/// The pool as the bandit sees it.
#[derive(Debug, Clone)]
pub struct Problem {
    /// Cluster of each document.
    pub cluster: Vec<usize>,
    /// Tokens of each document (for token budgets).
    pub tokens: Vec<usize>,
    /// k × k centroid distances (cosine distance, 0 on the diagonal).
    pub distances: Vec<Vec<f64>>,
    pub budget: Budget,
}

impl Problem {
    pub fn k(&self) -> usize {
        self.distances.len()
    }

    fn check(&self) -> Result<(), BanditError> {
        let k = self.k();
        let bad = |m: String| Err(BanditError::Problem(m));
        if self.cluster.len() != self.tokens.len() {
            return bad(format!("{} cluster labels for {} documents", self.cluster.len(), self.tokens.len()));
        }
        if let Some(&c) = self.cluster.iter().find(|&&c| c >= k) {
            return bad(format!("cluster {c} out of range for k = {k}"));
        }
        if self.distances.iter().any(|r| r.len() != k || r.iter().any(|d| !d.is_finite() || *d < 0.0)) {
            return bad("distances must be a k × k matrix of finite non-negative numbers".into());
        }
        Ok(())
    }

    /// A fingerprint for checkpoints: sizes, clusters, tokens, budget.
    fn fingerprint(&self) -> String {
        let mut fnv = crate::hash::Fnv1a::new();
        let mut eat = |x: u64| fnv = fnv.bytes(&x.to_le_bytes());
        for (&c, &t) in self.cluster.iter().zip(&self.tokens) {
            eat(c as u64);
            eat(t as u64);
        }
        for row in &self.distances {
            for d in row {
                eat(d.to_bits());
            }
        }
        format!("{}-{}-{:?}-{:016x}", self.cluster.len(), self.k(), self.budget, fnv.finish())
    }
}

/// Per-arm statistics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ArmState {
    /// R_i: accumulated (shared) reward.
    pub reward_sum: f64,
    /// T_i: updates received (own and shared).
    pub updates: u64,
    /// Rounds in which this arm was chosen.
    pub times_chosen: u64,
    /// Documents taken from this arm.
    pub taken: usize,
    /// Members scored.
    pub scored: usize,
    /// Sum of the scored members' raw scores.
    #[serde(default)]
    pub score_sum: f64,
    /// No untaken member left.
    pub exhausted: bool,
    /// Every untaken member scored and their mean reward ≤ 0.
    pub spent: bool,
    /// The arm's last own reward.
    pub last_reward: Option<f64>,
}

impl ArmState {
    /// Mean reward `R_i / max(T_i, 1)`.
    pub fn mean_reward(&self) -> f64 {
        self.reward_sum / self.updates.max(1) as f64
    }

    fn available(&self) -> bool {
        !self.exhausted && !self.spent
    }
}

/// One selected document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Selected {
    pub doc: usize,
    pub cluster: usize,
    pub round: usize,
    /// The cluster's reward that round (None for policies without rewards).
    pub reward: Option<f64>,
    /// The document's standardised score, when it was scored.
    pub score: Option<f64>,
}

/// One arm's part in a round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmPick {
    /// The cluster; none for a pick over the whole pool (`random`, `topk`, `mix`).
    pub arm: Option<usize>,
    /// Its Cluster Score (or the policy's index) when chosen.
    pub index: f64,
    pub reward: Option<f64>,
    pub scored: usize,
    pub accepted: usize,
}

/// What one round did (a line of rounds.csv).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundLog {
    pub round: usize,
    pub picks: Vec<ArmPick>,
    pub scored: usize,
    pub accepted: usize,
    pub docs_selected: usize,
    pub tokens_selected: usize,
}

/// Why a run stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    BudgetMet,
    PoolExhausted,
    /// Every arm left is spent: no cluster's mean beats γ.
    NoArmAboveGamma,
    /// Stopped from outside (Ctrl-C); the checkpoint resumes it.
    Interrupted,
}

/// Everything a checkpoint holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BanditState {
    pub params: BanditParams,
    pub problem: String,
    pub round: usize,
    /// N: total updates.
    pub updates: u64,
    pub arms: Vec<ArmState>,
    /// Raw score of each document, once scored (written as `[index, score]` pairs of the scored
    /// ones: a checkpoint grows with the documents scored, not with the pool).
    #[serde(with = "sparse_scores")]
    pub scores: Vec<Option<f64>>,
    /// Written as the indices of the documents taken.
    #[serde(with = "sparse_flags")]
    pub taken: Vec<bool>,
    /// `(median, std)` of the calibration sample: `z = (s − median) / std`.
    pub calibration: Option<(f64, f64)>,
    pub selected: Vec<Selected>,
    pub docs_selected: usize,
    pub tokens_selected: usize,
    pub documents_scored: usize,
    /// Round-robin position of `uniform`.
    pub next_arm: usize,
    pub rounds: Vec<RoundLog>,
    pub stop: Option<StopReason>,
}

impl BanditState {
    /// Checks a state read from a checkpoint against the problem it claims to continue: every
    /// size, every index in range, and the sums the state carries twice (documents and tokens
    /// selected, documents scored, per-arm counts) agreeing. A state the bandit wrote always
    /// passes; an edited one is refused with the field named, never continued into wrong output.
    pub fn check(&self, problem: &Problem) -> Result<(), BanditError> {
        let bad = |field: &str, why: String| Err(BanditError::Checkpoint(format!("{field}: {why}")));
        let (n, k) = (problem.tokens.len(), problem.k());
        if self.arms.len() != k {
            return bad("arms", format!("{} arms for {k} clusters", self.arms.len()));
        }
        if self.scores.len() != n {
            return bad("scores", format!("{} entries for {n} documents", self.scores.len()));
        }
        if self.taken.len() != n {
            return bad("taken", format!("{} entries for {n} documents", self.taken.len()));
        }
        if let Some((d, _)) = self.scores.iter().enumerate().find(|(_, s)| s.is_some_and(|x| !x.is_finite())) {
            return bad("scores", format!("document {d} has a non-finite score"));
        }
        if let Some((median, std)) = self.calibration {
            if !(median.is_finite() && std.is_finite() && std > 0.0) {
                return bad("calibration", format!("({median}, {std}) is no median and positive spread"));
            }
        }
        let scored = self.scores.iter().filter(|s| s.is_some()).count();
        if self.documents_scored != scored {
            return bad("documents_scored", format!("{} but {scored} documents carry scores", self.documents_scored));
        }
        let mut seen = vec![false; n];
        let (mut taken_per_arm, mut scored_per_arm) = (vec![0usize; k], vec![0usize; k]);
        let mut tokens = 0usize;
        for (i, s) in self.selected.iter().enumerate() {
            if s.doc >= n {
                return bad(&format!("selected[{i}].doc"), format!("{} is out of range (the pool has {n} documents)", s.doc));
            }
            if s.cluster != problem.cluster[s.doc] {
                return bad(&format!("selected[{i}].cluster"), format!("{} but document {} is in cluster {}", s.cluster, s.doc, problem.cluster[s.doc]));
            }
            if std::mem::replace(&mut seen[s.doc], true) {
                return bad(&format!("selected[{i}].doc"), format!("document {} is selected twice", s.doc));
            }
            if !self.taken[s.doc] {
                return bad("taken", format!("selected document {} is not marked taken", s.doc));
            }
            if s.round >= self.rounds.len().max(1) {
                return bad(&format!("selected[{i}].round"), format!("{} but the state has {} rounds", s.round, self.rounds.len()));
            }
            taken_per_arm[s.cluster] += 1;
            tokens = tokens.saturating_add(problem.tokens[s.doc]);
        }
        if self.taken.iter().filter(|&&t| t).count() != self.selected.len() {
            return bad("taken", format!("{} documents marked taken, {} selected", self.taken.iter().filter(|&&t| t).count(), self.selected.len()));
        }
        if self.docs_selected != self.selected.len() {
            return bad("docs_selected", format!("{} but {} documents are selected", self.docs_selected, self.selected.len()));
        }
        if self.tokens_selected != tokens {
            return bad("tokens_selected", format!("{} but the selected documents hold {tokens} tokens", self.tokens_selected));
        }
        for (d, s) in self.scores.iter().enumerate() {
            if s.is_some() {
                scored_per_arm[problem.cluster[d]] += 1;
            }
        }
        for (c, a) in self.arms.iter().enumerate() {
            if a.taken != taken_per_arm[c] {
                return bad(&format!("arms[{c}].taken"), format!("{} but {} of its documents are selected", a.taken, taken_per_arm[c]));
            }
            if a.scored != scored_per_arm[c] {
                return bad(&format!("arms[{c}].scored"), format!("{} but {} of its documents carry scores", a.scored, scored_per_arm[c]));
            }
            if !(a.reward_sum.is_finite() && a.score_sum.is_finite() && a.last_reward.is_none_or(f64::is_finite)) {
                return bad(&format!("arms[{c}]"), "a reward or score sum is not finite".into());
            }
        }
        if self.round != self.rounds.len() {
            return bad("round", format!("{} but the state logs {} rounds", self.round, self.rounds.len()));
        }
        for (i, r) in self.rounds.iter().enumerate() {
            if r.round != i {
                return bad(&format!("rounds[{i}].round"), format!("{}", r.round));
            }
            if let Some(c) = r.picks.iter().filter_map(|p| p.arm).find(|&c| c >= k) {
                return bad(&format!("rounds[{i}].picks"), format!("arm {c} is out of range ({k} clusters)"));
            }
        }
        if let Some(last) = self.rounds.last() {
            if (last.docs_selected, last.tokens_selected) != (self.docs_selected, self.tokens_selected) {
                return bad("rounds", "the last round's totals differ from the state's".into());
            }
        }
        if k > 0 && self.next_arm >= k {
            return bad("next_arm", format!("{} is out of range ({k} clusters)", self.next_arm));
        }
        let used = match problem.budget {
            Budget::Documents(_) => self.docs_selected,
            Budget::Tokens(_) => self.tokens_selected,
        };
        if self.stop == Some(StopReason::BudgetMet) && used < problem.budget.limit() {
            return bad("stop", format!("budget_met, but {used} of {} is used", problem.budget.limit()));
        }
        Ok(())
    }
}

/// `Vec<Option<f64>>` as `{"len": n, "set": [[i, x], …]}`.
mod sparse_scores {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Sparse {
        len: usize,
        set: Vec<(usize, f64)>,
    }

    pub fn serialize<S: Serializer>(v: &[Option<f64>], s: S) -> Result<S::Ok, S::Error> {
        let set = v.iter().enumerate().filter_map(|(i, x)| x.map(|x| (i, x))).collect();
        Sparse { len: v.len(), set }.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Option<f64>>, D::Error> {
        let sparse = Sparse::deserialize(d)?;
        let mut v = vec![None; sparse.len];
        for (i, x) in sparse.set {
            *v.get_mut(i).ok_or_else(|| serde::de::Error::custom(format!("scores: document {i} is out of range (len {})", sparse.len)))? = Some(x);
        }
        Ok(v)
    }
}

/// `Vec<bool>` as `{"len": n, "set": [i, …]}` (the indices that are true).
mod sparse_flags {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Sparse {
        len: usize,
        set: Vec<usize>,
    }

    pub fn serialize<S: Serializer>(v: &[bool], s: S) -> Result<S::Ok, S::Error> {
        let set = v.iter().enumerate().filter(|(_, &b)| b).map(|(i, _)| i).collect();
        Sparse { len: v.len(), set }.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<bool>, D::Error> {
        let sparse = Sparse::deserialize(d)?;
        let mut v = vec![false; sparse.len];
        for i in sparse.set {
            *v.get_mut(i).ok_or_else(|| serde::de::Error::custom(format!("taken: document {i} is out of range (len {})", sparse.len)))? = true;
        }
        Ok(v)
    }
}

/// The bandit: the problem, its derived member orders and the state.
pub struct Bandit {
    params: BanditParams,
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

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

impl Bandit {
    pub fn new(params: ValidBanditParams, problem: Problem) -> Result<Self, BanditError> {
        let params = params.0;
        problem.check()?;
        let n = problem.tokens.len();
        let k = problem.k();
        let state = BanditState {
            params: params.clone(),
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
        let params = params.0;
        problem.check()?;
        if state.params != params {
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

    fn with_state(params: BanditParams, problem: Problem, mut state: BanditState) -> Self {
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
        let sample = estimate::Sample {
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

    pub fn params(&self) -> &BanditParams {
        &self.params
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

    /// The Cluster Score of arm i: `R_i / max(T_i, 1) + α · sqrt(2 ln(max(N, 1)) / (T_i + 1))`.
    pub fn cluster_score(&self, i: usize) -> f64 {
        cluster_score(&self.state.arms[i], self.state.updates, self.alpha())
    }

    fn alpha(&self) -> f64 {
        if self.params.policy == Policy::Greedy {
            0.0
        } else {
            self.params.alpha
        }
    }

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

    fn z(&self, raw: f64) -> f64 {
        match self.state.calibration {
            Some((median, std)) => (raw - median) / std,
            None => raw,
        }
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

    /// Untaken, unscored members of arm c, in its seeded order.
    fn unseen(&self, c: usize) -> impl Iterator<Item = usize> + '_ {
        self.orders[c]
            .iter()
            .copied()
            .filter(|&d| !self.state.taken[d] && self.state.scores[d].is_none())
    }

    /// Takes up to m documents from arm c: scored members best first, then unscored in order.
    fn take_chunk(&mut self, c: usize, reward: Option<f64>) -> usize {
        self.take_up_to(c, reward, self.chunk)
    }

    /// Takes up to `limit` documents from arm c, in [`Self::take_chunk`]'s order.
    fn take_up_to(&mut self, c: usize, reward: Option<f64>, limit: usize) -> usize {
        let mut scored: Vec<(usize, f64)> = self.orders[c]
            .iter()
            .filter(|&&d| !self.state.taken[d])
            .filter_map(|&d| self.state.scores[d].map(|s| (d, s)))
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let rest: Vec<usize> = self.unseen(c).collect();
        let mut n = 0;
        for d in scored.into_iter().map(|(d, _)| d).chain(rest) {
            if n == limit || !self.take(d, reward) {
                break;
            }
            n += 1;
        }
        n
    }

    fn rng(&self) -> Xoshiro256PlusPlus {
        Xoshiro256PlusPlus::seed_from_u64(self.params.seed ^ (self.state.round as u64 + 1).wrapping_mul(GOLDEN))
    }

    /// Runs one round; returns its log, or None when the run is over (see `state().stop`).
    pub fn step<E: fmt::Display>(
        &mut self,
        scorer: &mut impl FnMut(&[usize]) -> Result<Vec<f64>, E>,
    ) -> Result<Option<RoundLog>, BanditError> {
        if self.state.stop.is_some() {
            return Ok(None);
        }
        if self.budget_met() {
            self.state.stop = Some(StopReason::BudgetMet);
            return Ok(None);
        }
        if self.state.taken.iter().all(|&t| t) {
            self.state.stop = Some(StopReason::PoolExhausted);
            return Ok(None);
        }
        let before = (self.state.documents_scored, self.state.docs_selected);
        if self.params.policy.scores() && self.state.calibration.is_none() && self.params.calibration > 0 {
            self.calibrate(scorer)?;
        }
        let picks = match self.params.policy {
            Policy::Random => self.round_random(self.chunk * self.params.arms_per_round),
            Policy::Uniform => self.round_uniform(),
            Policy::Topk => self.round_topk(scorer, self.problem.budget.limit())?,
            Policy::Predicted => {
                let mut rng = self.rng();
                match self.round_predicted(scorer, &mut rng)? {
                    Some(p) => p,
                    None => {
                        self.state.stop = Some(StopReason::PoolExhausted);
                        return Ok(None);
                    }
                }
            }
            Policy::Mix => {
                let part = (self.params.mix * self.problem.budget.limit() as f64).round() as usize;
                let mut picks = self.round_topk(scorer, part)?;
                picks.extend(self.round_random(usize::MAX));
                picks
            }
            _ => {
                match self.round_bandit(scorer)? {
                    Some(p) => p,
                    None => {
                        self.state.stop = Some(StopReason::NoArmAboveGamma);
                        return Ok(None);
                    }
                }
            }
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
        if self.budget_met() {
            self.state.stop = Some(StopReason::BudgetMet);
        } else if self.state.taken.iter().all(|&t| t) {
            self.state.stop = Some(StopReason::PoolExhausted);
        }
        Ok(Some(log))
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

    /// Chooses up to B available arms by the policy's index; never-chosen arms first.
    /// The confidence margin on arm c's estimate: `α / √n` with n members scored (z-scores have
    /// unit spread over the pool), while the scoring allowance lasts; 0 after it, when decisions
    /// are made on the estimates as they stand.
    fn margin(&self, c: usize) -> f64 {
        if self.state.documents_scored < self.allowance() {
            self.alpha() / (self.state.arms[c].scored.max(1) as f64).sqrt()
        } else {
            0.0
        }
    }

    /// Documents to score in all: the given allowance, or `calibration + 2 · k · b` (k: non-empty arms).
    pub fn allowance(&self) -> usize {
        self.params.allowance.unwrap_or_else(|| {
            let non_empty = self.orders.iter().filter(|o| !o.is_empty()).count();
            self.params.calibration + 2 * non_empty * self.params.samples_per_arm
        })
    }

    /// With `gate = Some(γ)` only arms that may beat γ are candidates: never sampled, or with
    /// `estimate + margin > γ` ([`Self::margin`]).
    fn choose(&self, rng: &mut Xoshiro256PlusPlus, gate: Option<f64>) -> Vec<(usize, f64)> {
        let may_beat = |i: usize| match (gate, self.estimate(i)) {
            (Some(g), Some(e)) => e + self.margin(i) > g,
            _ => true,
        };
        self.choose_among(rng, may_beat)
    }

    /// Chooses up to B available arms among those `eligible`, by the policy's index.
    fn choose_among(&self, rng: &mut Xoshiro256PlusPlus, eligible: impl Fn(usize) -> bool) -> Vec<(usize, f64)> {
        let avail: Vec<usize> =
            (0..self.problem.k()).filter(|&i| self.state.arms[i].available() && eligible(i)).collect();
        // Thompson's posterior spread: the spread of the rewards seen so far (1 until there are two).
        let rewards: Vec<f64> = self.state.arms.iter().filter_map(|a| a.last_reward).collect();
        let spread = if rewards.len() >= 2 {
            let m = rewards.iter().sum::<f64>() / rewards.len() as f64;
            (rewards.iter().map(|r| (r - m).powi(2)).sum::<f64>() / (rewards.len() - 1) as f64).sqrt().max(1e-6)
        } else {
            1.0
        };
        // (never chosen first, index, random tie-break)
        let mut keyed: Vec<(bool, f64, f64, usize)> = avail
            .iter()
            .map(|&i| {
                let arm = &self.state.arms[i];
                let index = match self.params.policy {
                    Policy::Thompson => {
                        let sd = spread / ((arm.updates + 1) as f64).sqrt();
                        Normal::new(arm.mean_reward(), sd).map(|n| n.sample(rng)).unwrap_or(arm.mean_reward())
                    }
                    Policy::EpsilonGreedy => arm.mean_reward(),
                    _ => self.cluster_score(i),
                };
                (arm.times_chosen == 0, index, rng.gen::<f64>(), i)
            })
            .collect();
        keyed.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.total_cmp(&a.1)).then(a.2.total_cmp(&b.2)));
        let b = self.params.arms_per_round.min(keyed.len());
        let mut chosen: Vec<(usize, f64)> = Vec::with_capacity(b);
        if self.params.policy == Policy::EpsilonGreedy {
            let mut rest = keyed;
            for _ in 0..b {
                // Never-chosen arms still go first; otherwise explore with probability ε.
                let explore = !rest[0].0 && rng.gen::<f64>() < self.params.epsilon;
                let k = rest.remove(if explore { rng.gen_range(0..rest.len()) } else { 0 });
                chosen.push((k.3, k.1));
            }
        } else {
            chosen.extend(keyed.iter().take(b).map(|k| (k.3, k.1)));
        }
        chosen
    }

    fn round_bandit<E: fmt::Display>(
        &mut self,
        scorer: &mut impl FnMut(&[usize]) -> Result<Vec<f64>, E>,
    ) -> Result<Option<Vec<ArmPick>>, BanditError> {
        let mut rng = self.rng();
        // The exploration pass: until every available arm has been sampled once, nothing is taken.
        let exploring =
            self.params.explore_first && self.state.arms.iter().any(|a| a.available() && a.times_chosen == 0);
        if !exploring && self.state.arms.iter().any(|a| a.times_chosen > 0) {
            match self.params.allocation {
                Allocation::Tilted => return self.round_tilted(scorer, &mut rng),
                Allocation::TiltedDocuments => return self.round_documents(scorer, &mut rng),
                Allocation::Threshold => {}
            }
        }
        // After the exploration pass, scoring is spent only on arms that may beat γ.
        let gate = (self.params.explore_first && !exploring).then(|| self.gamma());
        let chosen = self.choose(&mut rng, gate);
        if chosen.is_empty() {
            return Ok(None);
        }
        // An arm whose estimate beats γ even less its margin is taken from without new scores:
        // more of them would not change the decision.
        let confident = |b: &Self, c: usize| gate.is_some_and(|g| b.estimate(c).is_some_and(|e| e - b.margin(c) > g));
        let sure: Vec<bool> = chosen.iter().map(|&(c, _)| confident(self, c)).collect();
        // Score every other chosen arm's sample in one call.
        let samples: Vec<Vec<usize>> = chosen
            .iter()
            .zip(&sure)
            .map(|(&(c, _), &sure)| if sure { Vec::new() } else { self.unseen(c).take(self.params.samples_per_arm).collect() })
            .collect();
        let all: Vec<usize> = samples.iter().flatten().copied().collect();
        self.score(&all, scorer)?;
        let mut picks = Vec::with_capacity(chosen.len());
        for (((c, index), sample), sure) in chosen.into_iter().zip(samples).zip(sure) {
            self.state.arms[c].times_chosen += 1;
            if sure {
                let accepted = self.take_chunk(c, None);
                picks.push(ArmPick {
                    arm: Some(c),
                    index,
                    reward: None,
                    scored: 0,
                    accepted,
                });
                if self.budget_met() {
                    break;
                }
                continue;
            }
            // No unseen member left: the arm's untaken scored members stand in (no new cost).
            let observed: Vec<f64> = if sample.is_empty() {
                self.orders[c]
                    .iter()
                    .filter(|&&d| !self.state.taken[d])
                    .filter_map(|&d| self.state.scores[d])
                    .collect()
            } else {
                sample.iter().filter_map(|&d| self.state.scores[d]).collect()
            };
            if observed.is_empty() {
                self.state.arms[c].exhausted = true;
                continue;
            }
            // The reward the Cluster Score learns from is relative to a given γ, or to the pool's
            // median when γ is fitted (the fitted γ moves between rounds and may be −∞, and a
            // constant shift leaves the ranking of arms unchanged); chunks are taken against γ in force.
            let gamma = self.gamma();
            let mean = observed.iter().map(|&s| self.z(s)).sum::<f64>() / observed.len() as f64;
            let reward = mean - self.params.gamma.unwrap_or(0.0);
            self.state.arms[c].last_reward = Some(reward);
            self.share(c, reward);
            // Taken on the arm's estimate from every member it has had scored (not this round's
            // sample alone): a chunk is mostly unscored members, whose expected score is the
            // cluster's mean.
            let estimate = self.estimate(c).unwrap_or(mean) - gamma;
            let accepted = if !exploring && estimate > 0.0 { self.take_chunk(c, Some(reward)) } else { 0 };
            if sample.is_empty() && estimate <= 0.0 {
                self.state.arms[c].spent = true;
            }
            picks.push(ArmPick {
                arm: Some(c),
                index,
                reward: Some(reward),
                scored: sample.len(),
                accepted,
            });
            if self.budget_met() {
                break;
            }
        }
        Ok(Some(picks))
    }

    /// Each arm's share of the whole budget, in documents, under the tilted allocation:
    /// `q_c ∝ n_c · exp(e_c / T)` (n_c members, estimate e_c, 0 before the first score), capped at
    /// n_c with the excess shared out again (water-filling). The exponential tilt of the pool's own
    /// distribution is the allocation with the highest mean score at a given divergence from the
    /// pool (the Gibbs variational principle); T sets the trade.
    pub fn quotas(&self) -> Vec<f64> {
        let t = self.params.temperature;
        let k = self.problem.k();
        let n: Vec<f64> = self.orders.iter().map(|o| o.len() as f64).collect();
        let docs = budget_documents(&self.problem);
        let w: Vec<f64> = (0..k).map(|c| n[c] * (self.estimate(c).unwrap_or(0.0) / t).exp()).collect();
        let mut q = vec![0.0; k];
        let mut capped = vec![false; k];
        let mut left = docs;
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

    /// A round of the tilted allocation: B arms with room left in their quota, by Cluster Score;
    /// each is sampled while the scoring allowance lasts, then given up to m documents of its quota.
    fn round_tilted<E: fmt::Display>(
        &mut self,
        scorer: &mut impl FnMut(&[usize]) -> Result<Vec<f64>, E>,
        rng: &mut Xoshiro256PlusPlus,
    ) -> Result<Option<Vec<ArmPick>>, BanditError> {
        let quotas = self.quotas();
        let Some(chosen) = self.choose_with_room(rng, &quotas) else {
            return Ok(None);
        };
        let refine = chosen.iter().any(|&(c, _)| self.margin(c) > 0.0);
        let samples: Vec<Vec<usize>> = chosen
            .iter()
            .map(|&(c, _)| if refine { self.unseen(c).take(self.params.samples_per_arm).collect() } else { Vec::new() })
            .collect();
        let all: Vec<usize> = samples.iter().flatten().copied().collect();
        self.score(&all, scorer)?;
        let mut picks = Vec::with_capacity(chosen.len());
        for ((c, index), sample) in chosen.into_iter().zip(samples) {
            self.state.arms[c].times_chosen += 1;
            let reward = if sample.is_empty() {
                None
            } else {
                let mean = sample.iter().filter_map(|&d| self.state.scores[d]).map(|s| self.z(s)).sum::<f64>() / sample.len() as f64;
                self.state.arms[c].last_reward = Some(mean);
                self.share(c, mean);
                Some(mean)
            };
            let want = self.room_left(&quotas, c).clamp(1, self.chunk);
            let accepted = self.take_up_to(c, reward, want);
            if accepted == 0 {
                self.state.arms[c].exhausted = true;
            }
            picks.push(ArmPick {
                arm: Some(c),
                index,
                reward,
                scored: sample.len(),
                accepted,
            });
            if self.budget_met() {
                break;
            }
        }
        Ok(Some(picks))
    }

    /// Each arm's share of the whole budget, in documents, under the document-level tilt: every
    /// document d is given the inclusion weight `p_d = min(1, λ · exp(z_d / T))`, with z_d its own
    /// standardised score once scored and, before, its estimate (its cluster's mean, 0 before the
    /// first; or the `estimator`'s prediction for the document), and λ
    /// set so that `Σ p_d` is the budget in documents (water-filling from the largest weight down);
    /// arm c's quota is `Σ_{d ∈ c} p_d`. It is [`Self::quotas`]' exponential tilt taken at the finest
    /// resolution known: a scored document carries what was learnt about it, not its cluster's mean.
    pub fn document_quotas(&self) -> Vec<f64> {
        let t = self.params.temperature;
        let k = self.problem.k();
        let docs = budget_documents(&self.problem);
        // (z, how many documents, arm): scored documents one by one, each arm's unscored ones
        // together (one by one too when each has its own estimate).
        let mut unscored = vec![0usize; k];
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
        let top = entries.first().map_or(0.0, |e| e.0);
        // Weights relative to the largest (exp never overflows); suffix sums of count × weight.
        let w: Vec<f64> = entries.iter().map(|e| ((e.0 - top) / t).exp()).collect();
        let mut suffix = vec![0.0; entries.len() + 1];
        for i in (0..entries.len()).rev() {
            suffix[i] = suffix[i + 1] + entries[i].1 * w[i];
        }
        // The first j entries are capped at 1 (taken whole); λ spreads the rest over the others.
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
        let mut q = vec![0.0; k];
        for (e, &wi) in entries.iter().zip(&w) {
            q[e.2] += e.1 * (lambda * wi).min(1.0);
        }
        q
    }

    /// A round of the document-level tilt. While the scoring allowance lasts, B arms chosen by
    /// Cluster Score have b unseen members scored each and nothing is taken (the estimates and the
    /// scored documents then decide the quotas together); after it, B arms with room left in their
    /// [`Self::document_quotas`] give up to m documents each, in the order of their expected score
    /// ([`Self::take_ranked`]).
    fn round_documents<E: fmt::Display>(
        &mut self,
        scorer: &mut impl FnMut(&[usize]) -> Result<Vec<f64>, E>,
        rng: &mut Xoshiro256PlusPlus,
    ) -> Result<Option<Vec<ArmPick>>, BanditError> {
        let allowance = self.allowance();
        if self.state.documents_scored < allowance {
            let chosen = self.choose_among(rng, |c| self.unseen(c).next().is_some());
            if !chosen.is_empty() {
                let mut left = allowance - self.state.documents_scored;
                let samples: Vec<Vec<usize>> = chosen
                    .iter()
                    .map(|&(c, _)| {
                        let s: Vec<usize> = self.unseen(c).take(self.params.samples_per_arm.min(left)).collect();
                        left -= s.len();
                        s
                    })
                    .collect();
                let all: Vec<usize> = samples.iter().flatten().copied().collect();
                self.score(&all, scorer)?;
                let mut picks = Vec::with_capacity(chosen.len());
                for ((c, index), sample) in chosen.into_iter().zip(samples) {
                    if sample.is_empty() {
                        continue;
                    }
                    self.state.arms[c].times_chosen += 1;
                    let mean = sample.iter().filter_map(|&d| self.state.scores[d]).map(|s| self.z(s)).sum::<f64>()
                        / sample.len() as f64;
                    self.state.arms[c].last_reward = Some(mean);
                    self.share(c, mean);
                    picks.push(ArmPick {
                        arm: Some(c),
                        index,
                        reward: Some(mean),
                        scored: sample.len(),
                        accepted: 0,
                    });
                }
                return Ok(Some(picks));
            }
        }
        self.take_by_quotas(rng)
    }

    /// A round of `predicted`: while the scoring allowance lasts, the next B · b unscored
    /// documents of the pool's seeded order are scored (a uniform random sample); after it, the
    /// document-level tilt takes ([`Self::take_by_quotas`]).
    fn round_predicted<E: fmt::Display>(
        &mut self,
        scorer: &mut impl FnMut(&[usize]) -> Result<Vec<f64>, E>,
        rng: &mut Xoshiro256PlusPlus,
    ) -> Result<Option<Vec<ArmPick>>, BanditError> {
        let allowance = self.allowance();
        if self.state.documents_scored < allowance {
            let want = (self.params.arms_per_round * self.params.samples_per_arm).min(allowance - self.state.documents_scored);
            let sample: Vec<usize> =
                self.pool_order.iter().copied().filter(|&d| self.state.scores[d].is_none()).take(want).collect();
            if !sample.is_empty() {
                self.score(&sample, scorer)?;
                return Ok(Some(vec![ArmPick {
                    arm: None,
                    index: 0.0,
                    reward: None,
                    scored: sample.len(),
                    accepted: 0,
                }]));
            }
        }
        self.take_by_quotas(rng)
    }

    /// A taking round of the document-level tilt: B arms with room left in their
    /// [`Self::document_quotas`] give up to m documents each, in the order of their expected
    /// score ([`Self::take_ranked`]).
    fn take_by_quotas(&mut self, rng: &mut Xoshiro256PlusPlus) -> Result<Option<Vec<ArmPick>>, BanditError> {
        self.fit_estimates()?;
        let quotas = self.document_quotas();
        let Some(chosen) = self.choose_with_room(rng, &quotas) else {
            return Ok(None);
        };
        let mut picks = Vec::with_capacity(chosen.len());
        for (c, index) in chosen {
            self.state.arms[c].times_chosen += 1;
            let want = self.room_left(&quotas, c).clamp(1, self.chunk);
            let accepted = self.take_ranked(c, want);
            if accepted == 0 {
                self.state.arms[c].exhausted = true;
            }
            picks.push(ArmPick {
                arm: Some(c),
                index,
                reward: None,
                scored: 0,
                accepted,
            });
            if self.budget_met() {
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
            let mut scored: Vec<(usize, f64)> = self.orders[c]
                .iter()
                .filter(|&&d| !self.state.taken[d])
                .filter_map(|&d| self.state.scores[d].map(|s| (d, self.z(s))))
                .collect();
            scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let split = scored.partition_point(|&(_, z)| z >= estimate);
            scored[..split]
                .iter()
                .map(|&(d, _)| d)
                .chain(self.unseen(c))
                .chain(scored[split..].iter().map(|&(d, _)| d))
                .collect()
        };
        let mut n = 0;
        for d in order {
            if n == limit || !self.take(d, None) {
                break;
            }
            n += 1;
        }
        n
    }

    /// The estimated mean standardised score of arm c: the mean over every member it has had
    /// scored (None before the first).
    fn estimate(&self, c: usize) -> Option<f64> {
        let a = &self.state.arms[c];
        (a.scored > 0).then(|| self.z(a.score_sum / a.scored as f64))
    }

    /// γ in force: the given one, or the budget-fitted one (see the module docs).
    fn gamma(&self) -> f64 {
        match self.params.gamma {
            Some(g) => g,
            None => self.fitted_gamma(),
        }
    }

    /// The budget-fitted γ: arms (available, sampled) in order of their estimated mean; γ is the
    /// estimate of the first arm after those whose untaken members hold `coverage` × the budget
    /// still to be selected, so exactly those arms beat it (−∞ when all of them are needed).
    pub fn fitted_gamma(&self) -> f64 {
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
        let want = self.params.coverage * self.problem.budget.limit().saturating_sub(self.used()) as f64;
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

    fn round_uniform(&mut self) -> Vec<ArmPick> {
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
            picks.push(ArmPick {
                arm: Some(c),
                index: 0.0,
                reward: None,
                scored: 0,
                accepted,
            });
        }
        picks
    }

    /// Takes up to `want` untaken documents in the pool's seeded random order.
    fn round_random(&mut self, want: usize) -> Vec<ArmPick> {
        let next: Vec<usize> = self.pool_order.iter().copied().filter(|&d| !self.state.taken[d]).take(want).collect();
        let mut accepted = 0;
        for d in next {
            if !self.take(d, None) {
                break;
            }
            accepted += 1;
        }
        vec![ArmPick {
            arm: None,
            index: 0.0,
            reward: None,
            scored: 0,
            accepted,
        }]
    }

    /// Scores every document, then takes the best until `limit` (in the budget's unit) is used.
    fn round_topk<E: fmt::Display>(
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
        Ok(vec![ArmPick {
            arm: None,
            index: 0.0,
            reward: None,
            scored: todo.len(),
            accepted,
        }])
    }
}

/// `CS = R / max(T, 1) + α · sqrt(2 ln(max(N, 1)) / (T + 1))`.
pub fn cluster_score(arm: &ArmState, total_updates: u64, alpha: f64) -> f64 {
    let n = total_updates.max(1) as f64;
    arm.mean_reward() + alpha * (2.0 * n.ln() / (arm.updates + 1) as f64).sqrt()
}

/// Neighbour weight `1 − d/τ` for `d < τ` (1 at d = 0), else 0.
pub fn neighbour_weight(d: f64, tau: f64) -> f64 {
    if d == 0.0 {
        1.0
    } else if d < tau {
        1.0 - d / tau
    } else {
        0.0
    }
}
