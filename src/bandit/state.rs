//! What the bandit works on and what it keeps: the [`Problem`] (the pool as clusters, token counts
//! and centroid distances, with the [`Budget`]), the per-arm statistics, the round logs, and
//! [`BanditState`], the plain data a checkpoint holds.

use serde::{Deserialize, Serialize};

use super::params::BanditParams;
use super::BanditError;

/// What the selection must add up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    Documents(usize),
    Tokens(usize),
}

impl Budget {
    /// The budget from the two ways of giving one (`--budget-tokens` / `--budget-documents`,
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

    pub(super) fn limit(self) -> usize {
        match self {
            Budget::Documents(n) | Budget::Tokens(n) => n,
        }
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

    pub(super) fn check(&self) -> Result<(), BanditError> {
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
    pub(super) fn fingerprint(&self) -> String {
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

    pub(super) fn available(&self) -> bool {
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
        self.check_sizes(problem)?;
        let taken_per_arm = self.check_selected(problem)?;
        self.check_arms(problem, &taken_per_arm)?;
        self.check_rounds(problem)
    }

    /// Sizes, finite scores, the calibration, and the scored count.
    fn check_sizes(&self, problem: &Problem) -> Result<(), BanditError> {
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
        Ok(())
    }

    /// Every selected document in range, in its cluster, once, marked taken; the totals agree.
    /// Returns the documents selected from each arm.
    fn check_selected(&self, problem: &Problem) -> Result<Vec<usize>, BanditError> {
        let n = problem.tokens.len();
        let mut seen = vec![false; n];
        let mut taken_per_arm = vec![0usize; problem.k()];
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
        let marked = self.taken.iter().filter(|&&t| t).count();
        if marked != self.selected.len() {
            return bad("taken", format!("{marked} documents marked taken, {} selected", self.selected.len()));
        }
        if self.docs_selected != self.selected.len() {
            return bad("docs_selected", format!("{} but {} documents are selected", self.docs_selected, self.selected.len()));
        }
        if self.tokens_selected != tokens {
            return bad("tokens_selected", format!("{} but the selected documents hold {tokens} tokens", self.tokens_selected));
        }
        Ok(taken_per_arm)
    }

    /// Each arm's taken and scored counts agree with the documents; its sums are finite.
    fn check_arms(&self, problem: &Problem, taken_per_arm: &[usize]) -> Result<(), BanditError> {
        let mut scored_per_arm = vec![0usize; problem.k()];
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
        Ok(())
    }

    /// The round log numbered in order, its arms in range, its last totals the state's; the
    /// round-robin position in range; a budget said met is met.
    fn check_rounds(&self, problem: &Problem) -> Result<(), BanditError> {
        let k = problem.k();
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

/// A checkpoint's field that does not hold.
fn bad<T>(field: &str, why: String) -> Result<T, BanditError> {
    Err(BanditError::Checkpoint(format!("{field}: {why}")))
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
