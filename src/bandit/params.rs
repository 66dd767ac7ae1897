//! The bandit's parameters: [`BanditParams`] as they are written (the `[bandit]` table of a run's
//! TOML, the CLI flags, a checkpoint), and [`ValidBanditParams`], what [`BanditParams::check`]
//! makes of them once: a [`Policy`] whose variants carry exactly the values that mean something
//! for them (`gamma` only for the threshold rule, `temperature` only for the tilts, `epsilon` and
//! `mix` each for one policy). The written form stays flat because cache keys and checkpoints hash
//! its serialisation; the bandit reads only the checked form.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::estimate::Estimator;
use crate::signals::Signal;
use super::BanditError;

/// A policy's name as written (`policy = "ucb"`, `--policy ucb`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyName {
    /// Quad: the Cluster Score (UCB) with neighbour sharing.
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
    /// DSIR: importance resampling by hashed n-gram log weights, reference against pool
    /// ([`crate::signals::dsir`]); no clusters, no scoring.
    Dsir,
    /// A logistic-regression quality classifier on hashed n-grams, reference against a pool
    /// sample ([`crate::signals::logistic`]), documents by logit, highest first.
    Classifier,
    /// The proxy's mean token loss of each document, lowest first (a forward pass each).
    Perplexity,
}

impl PolicyName {
    pub const ALL: [PolicyName; 12] = [
        PolicyName::Ucb,
        PolicyName::Thompson,
        PolicyName::EpsilonGreedy,
        PolicyName::Greedy,
        PolicyName::Uniform,
        PolicyName::Random,
        PolicyName::Topk,
        PolicyName::Mix,
        PolicyName::Predicted,
        PolicyName::Dsir,
        PolicyName::Classifier,
        PolicyName::Perplexity,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PolicyName::Ucb => "ucb",
            PolicyName::Thompson => "thompson",
            PolicyName::EpsilonGreedy => "epsilon-greedy",
            PolicyName::Greedy => "greedy",
            PolicyName::Uniform => "uniform",
            PolicyName::Random => "random",
            PolicyName::Topk => "topk",
            PolicyName::Mix => "mix",
            PolicyName::Predicted => "predicted",
            PolicyName::Dsir => "dsir",
            PolicyName::Classifier => "classifier",
            PolicyName::Perplexity => "perplexity",
        }
    }

    /// Whether the policy needs influence scores.
    pub fn scores(self) -> bool {
        !matches!(self, PolicyName::Uniform | PolicyName::Random) && self.signal().is_none()
    }

    /// Whether the policy runs the proxy model (scoring, or perplexity's forward passes); the
    /// others only count tokens with its tokenizer.
    pub fn needs_model(self) -> bool {
        self.scores() || self.signal() == Some(Signal::Perplexity)
    }

    /// The signal a signal policy takes documents by.
    pub fn signal(self) -> Option<Signal> {
        match self {
            PolicyName::Dsir => Some(Signal::Dsir),
            PolicyName::Classifier => Some(Signal::Classifier),
            PolicyName::Perplexity => Some(Signal::Perplexity),
            _ => None,
        }
    }
}

impl fmt::Display for PolicyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PolicyName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        PolicyName::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            let names: Vec<_> = PolicyName::ALL.iter().map(|p| p.name()).collect();
            format!("unknown policy '{s}' (expected one of: {})", names.join(", "))
        })
    }
}

/// An allocation's name as written (`allocation = "tilted-documents"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AllocationName {
    /// Every document's share ∝ exp(z / T): its own score once scored, its cluster's estimate
    /// before; scoring first (the allowance), taking after (the default).
    TiltedDocuments,
    /// Each arm's quota ∝ its size × exp(estimate / T), sampled and taken in the same rounds.
    Tilted,
    /// Chunks from arms whose estimate beats γ (given, or fitted to the budget with `coverage`).
    Threshold,
}

/// The bandit's parameters as written (all in the run's TOML under `[bandit]`). Each field says
/// which policy or allocation reads it; [`Self::check`] refuses one set where it means nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BanditParams {
    pub policy: PolicyName,
    /// α: weight of the exploration bonus in the Cluster Score, and of the confidence margins.
    pub alpha: f64,
    /// γ (threshold allocation): reward threshold, in standardised score units; a chunk is taken
    /// from a cluster whose estimated mean beats it. None (the default): fitted to the budget
    /// every round, so that the clusters above it hold `coverage` × what is still to be selected.
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
    /// ρ of the fitted γ (threshold allocation): the clusters that qualify hold ρ × the budget
    /// still to be selected.
    pub coverage: f64,
    /// How chunks are allotted after the exploration pass (the bandit policies).
    pub allocation: AllocationName,
    /// T of the tilted allocations and of `predicted`, in standardised score units.
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
    /// ([`Estimator`]); the cluster mean needs no embeddings.
    #[serde(skip_serializing_if = "Estimator::is_cluster_mean")]
    pub estimator: Estimator,
    /// β of the signal policies: documents drawn without replacement with probability
    /// ∝ exp(β · signal) (for `dsir`, ∝ w^β), by Gumbel top-k. None: the policy's own rule —
    /// `dsir` β = 1 (the paper's importance resampling), `classifier` and `perplexity` the
    /// highest signal first (β → ∞).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta: Option<f64>,
    pub seed: u64,
}

impl Default for BanditParams {
    fn default() -> Self {
        Self {
            policy: PolicyName::Ucb,
            alpha: 1.0,
            gamma: None,
            tau: 0.2,
            arms_per_round: 4,
            samples_per_arm: 8,
            chunk: None,
            explore_first: true,
            coverage: 2.0,
            allocation: AllocationName::TiltedDocuments,
            temperature: 0.5,
            epsilon: 0.1,
            calibration: 64,
            allowance: None,
            mix: 0.5,
            estimator: Estimator::ClusterMean,
            beta: None,
            seed: 0,
        }
    }
}

/// How the bandit policies rank the arms they may choose.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Index {
    /// The Cluster Score (`greedy` is this with α = 0).
    Ucb,
    /// A draw from a Gaussian posterior on each arm's mean reward.
    Thompson,
    /// The best mean reward, each slot a random arm with probability ε.
    EpsilonGreedy { epsilon: f64 },
}

/// How a bandit policy allots the budget once every arm has been sampled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Allocation {
    /// Every document's share ∝ exp(z / T) ([`super::Bandit::document_quotas`]).
    TiltedDocuments { temperature: f64 },
    /// Each arm's quota ∝ its size × exp(estimate / T) ([`super::Bandit::quotas`]).
    Tilted { temperature: f64 },
    /// Chunks from arms whose estimate beats γ: the given one, or one fitted so that the arms
    /// above it hold `coverage` × the budget still to be selected.
    Threshold { gamma: Option<f64>, coverage: f64 },
}

/// A policy with the values it reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Policy {
    /// Clusters are arms (ucb, thompson, epsilon-greedy, greedy). α weighs the Cluster Score's
    /// bonus and the confidence margins (0 for `greedy`).
    Arms { index: Index, alpha: f64, explore_first: bool, allocation: Allocation },
    Uniform,
    Random,
    Topk,
    Mix { fraction: f64 },
    Predicted { temperature: f64 },
    /// Documents by a per-document signal ([`crate::signals`]): drawn ∝ exp(β · signal) without
    /// replacement (Gumbel top-k), or highest first when `beta` is None.
    Signal { signal: Signal, beta: Option<f64> },
}

/// Bandit parameters that passed [`BanditParams::check`]: what [`super::Bandit::new`] takes.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidBanditParams {
    written: BanditParams,
    pub policy: Policy,
    pub tau: f64,
    pub arms_per_round: usize,
    pub samples_per_arm: usize,
    pub chunk: Option<usize>,
    pub calibration: usize,
    pub allowance: Option<usize>,
    pub estimator: Estimator,
    pub seed: u64,
}

impl ValidBanditParams {
    /// The parameters as written (for manifests and checkpoints).
    pub fn params(&self) -> &BanditParams {
        &self.written
    }

    /// Whether the policy needs influence scores.
    pub fn scores(&self) -> bool {
        self.written.policy.scores()
    }

    /// α in force (0 for the policies without arms).
    pub fn alpha(&self) -> f64 {
        match self.policy {
            Policy::Arms { alpha, .. } => alpha,
            _ => 0.0,
        }
    }
}

impl BanditParams {
    /// These parameters at temperature `t` (`--temperature`, `temperature=`): refused where the
    /// allocation has no temperature (the threshold rule); the value itself is checked by
    /// [`Self::check`].
    pub fn with_temperature(mut self, t: f64) -> Result<Self, BanditError> {
        if self.allocation == AllocationName::Threshold {
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
        Ok(ValidBanditParams {
            policy: self.policy(),
            tau: self.tau,
            arms_per_round: self.arms_per_round,
            samples_per_arm: self.samples_per_arm,
            chunk: self.chunk,
            calibration: self.calibration,
            allowance: self.allowance,
            estimator: self.estimator.clone(),
            seed: self.seed,
            written: self,
        })
    }

    fn policy(&self) -> Policy {
        let temperature = self.temperature;
        let allocation = match self.allocation {
            AllocationName::TiltedDocuments => Allocation::TiltedDocuments { temperature },
            AllocationName::Tilted => Allocation::Tilted { temperature },
            AllocationName::Threshold => Allocation::Threshold { gamma: self.gamma, coverage: self.coverage },
        };
        let arms = |index, alpha| Policy::Arms { index, alpha, explore_first: self.explore_first, allocation };
        match self.policy {
            PolicyName::Ucb => arms(Index::Ucb, self.alpha),
            PolicyName::Greedy => arms(Index::Ucb, 0.0),
            PolicyName::Thompson => arms(Index::Thompson, self.alpha),
            PolicyName::EpsilonGreedy => arms(Index::EpsilonGreedy { epsilon: self.epsilon }, self.alpha),
            PolicyName::Uniform => Policy::Uniform,
            PolicyName::Random => Policy::Random,
            PolicyName::Topk => Policy::Topk,
            PolicyName::Mix => Policy::Mix { fraction: self.mix },
            PolicyName::Predicted => Policy::Predicted { temperature },
            PolicyName::Dsir => Policy::Signal { signal: Signal::Dsir, beta: Some(self.beta.unwrap_or(1.0)) },
            PolicyName::Classifier | PolicyName::Perplexity => Policy::Signal {
                signal: self.policy.signal().expect("a signal policy"),
                beta: self.beta,
            },
        }
    }

    fn problems(&self) -> Result<(), BanditError> {
        let bad = |m: &str| Err(BanditError::Params(m.into()));
        if !(self.alpha >= 0.0 && self.alpha.is_finite()) {
            return bad("alpha must be a finite number ≥ 0");
        }
        if self.gamma.is_some() && self.allocation != AllocationName::Threshold {
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
        // The calibration sample is scored first and counts against the allowance.
        if let Some(a) = self.allowance.filter(|&a| a < self.calibration) {
            return Err(BanditError::Params(format!(
                "allowance = {a} is below calibration = {}: the documents scored up front to standardise scores count against the allowance (lower calibration too)",
                self.calibration
            )));
        }
        if let Some(b) = self.beta {
            if self.policy.signal().is_none() {
                return bad("beta applies to the signal policies (dsir, classifier, perplexity)");
            }
            if !(b > 0.0 && b.is_finite()) {
                return bad("beta must be a finite number > 0");
            }
        }
        if let Estimator::Knn { k: 0 } | Estimator::Mlp { hidden: 0, .. } = self.estimator {
            return bad("estimator: knn's k and mlp's hidden must be positive");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cache keys and checkpoints hash the serialised parameters: the written form, its field
    /// names and its spellings must not move when the checked form changes.
    #[test]
    fn the_written_form_serialises_as_before() {
        let json = serde_json::to_string(&BanditParams::default()).unwrap();
        assert_eq!(
            json,
            r#"{"policy":"ucb","alpha":1.0,"gamma":null,"tau":0.2,"arms_per_round":4,"samples_per_arm":8,"chunk":null,"explore_first":true,"coverage":2.0,"allocation":"tilted-documents","temperature":0.5,"epsilon":0.1,"calibration":64,"mix":0.5,"seed":0}"#
        );
        let toml: BanditParams = toml::from_str(
            "policy = \"epsilon-greedy\"\nallocation = \"threshold\"\ngamma = 0.5\nepsilon = 0.2\n",
        )
        .unwrap();
        assert_eq!(toml.policy, PolicyName::EpsilonGreedy);
        assert_eq!(toml.allocation, AllocationName::Threshold);
    }

    #[test]
    fn each_policy_carries_only_its_values() {
        let p = |policy, allocation| {
            BanditParams { policy, allocation, ..Default::default() }.check().unwrap().policy
        };
        assert_eq!(
            p(PolicyName::Greedy, AllocationName::TiltedDocuments),
            Policy::Arms {
                index: Index::Ucb,
                alpha: 0.0,
                explore_first: true,
                allocation: Allocation::TiltedDocuments { temperature: 0.5 }
            }
        );
        assert_eq!(
            p(PolicyName::EpsilonGreedy, AllocationName::Threshold),
            Policy::Arms {
                index: Index::EpsilonGreedy { epsilon: 0.1 },
                alpha: 1.0,
                explore_first: true,
                allocation: Allocation::Threshold { gamma: None, coverage: 2.0 }
            }
        );
        assert_eq!(p(PolicyName::Mix, AllocationName::TiltedDocuments), Policy::Mix { fraction: 0.5 });
        assert_eq!(p(PolicyName::Predicted, AllocationName::Tilted), Policy::Predicted { temperature: 0.5 });
        assert_eq!(p(PolicyName::Dsir, AllocationName::Tilted), Policy::Signal { signal: Signal::Dsir, beta: Some(1.0) });
        assert_eq!(
            p(PolicyName::Perplexity, AllocationName::Tilted),
            Policy::Signal { signal: Signal::Perplexity, beta: None }
        );
        let beta = |policy, beta| BanditParams { policy, beta, ..Default::default() }.check().map(|v| v.policy);
        assert_eq!(
            beta(PolicyName::Classifier, Some(2.0)).unwrap(),
            Policy::Signal { signal: Signal::Classifier, beta: Some(2.0) }
        );
        assert!(beta(PolicyName::Ucb, Some(2.0)).is_err(), "beta where it means nothing");
        assert!(beta(PolicyName::Dsir, Some(0.0)).is_err() && beta(PolicyName::Dsir, Some(f64::INFINITY)).is_err());
        assert!(!PolicyName::Dsir.scores() && !PolicyName::Perplexity.scores() && PolicyName::Predicted.scores());
        for name in PolicyName::ALL {
            assert_eq!(name.to_string().parse::<PolicyName>(), Ok(name));
        }
    }
}
