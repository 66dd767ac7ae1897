//! What `quad select` can be told (`run.toml`, every key optional), and its checked form.
//!
//! [`SelectConfig`] is what the user writes: plain numbers, with `0` for "whole document" where
//! TOML has no null. [`SelectConfig::check`] parses it once into [`ValidSelectConfig`], whose
//! fields are the typed arguments the stages take (linfa's `Params::check` pattern), so the
//! pipeline never parses or validates again.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::SelectError;
use crate::bandit::{BanditParams, ValidBanditParams};
use crate::signals::{SignalsConfig, ValidSignalsConfig};
use crate::cluster::{KMeansParams, ValidKMeansParams};
use crate::corpus::CorpusConfig;
use crate::embed::HashingEmbedder;
use crate::influence::stage::{FactorArguments, Fisher, ScoreArguments};
use crate::influence::{Damping, Strategy};
use crate::model::train::ProxyParams;
use crate::model::LayerSelection;
use crate::path_io::at;

/// Embedding stage settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbedConfig {
    /// Sentence-embedding model folder; none: the hashing embedder.
    pub model: Option<PathBuf>,
    pub hashing_dim: usize,
    pub batch_size: usize,
}

impl Default for EmbedConfig {
    fn default() -> Self {
        Self {
            model: None,
            hashing_dim: HashingEmbedder::DEFAULT_DIM,
            batch_size: crate::embed::BertOptions::default().batch_size,
        }
    }
}

/// Proxy model: a given checkpoint, or the in-house proxy trained on the pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// A Hugging Face style folder or a .gguf file; none: train the default proxy.
    pub model: Option<PathBuf>,
    /// Training settings when no model is given.
    pub train: ProxyParams,
}

/// Which linear layers the factors cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerGroup {
    #[serde(alias = "attn")]
    Attention,
    Mlp,
    #[serde(alias = "all")]
    Both,
}

impl LayerGroup {
    pub fn selection(self) -> LayerSelection {
        match self {
            LayerGroup::Attention => LayerSelection::attention(),
            LayerGroup::Mlp => LayerSelection::mlp(),
            LayerGroup::Both => LayerSelection::all(),
        }
    }
}

/// Factor fitting settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FactorsConfig {
    /// Documents sampled from the pool to fit the factors.
    pub fit_docs: usize,
    /// Tokens of each fitting document used (its first ones; 0 = the whole document). One context
    /// window per document keeps the fit quick while the sample still spans the pool.
    pub max_tokens: usize,
    pub layers: LayerGroup,
    pub per_head: bool,
    pub fisher: Fisher,
    /// Tokens per window.
    pub context: usize,
    pub seed: u64,
}

impl Default for FactorsConfig {
    fn default() -> Self {
        Self {
            fit_docs: 256,
            max_tokens: ProxyParams::default().context,
            layers: LayerGroup::Both,
            per_head: true,
            fisher: Fisher::True,
            // One window of the proxy's context.
            context: ProxyParams::default().context,
            seed: 0,
        }
    }
}

/// Influence settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InfluenceConfig {
    pub strategy: Strategy,
    /// Damping: this × each block's mean eigenvalue.
    pub damping_rel: f64,
    /// Documents per forward/backward pass (batches of similar length run in parallel, one per
    /// core, when scoring). 2: the fastest on 2 cores (`experiments/score_paths.rs`: 18 docs/s
    /// against 15 at 4 and 10 at 8, where two passes' vocabulary-sized logits outgrow the caches).
    pub batch: usize,
    /// Take candidate gradients and the reference gradient on each document's first this many
    /// predicted tokens (0: whole documents). The default, the proxy's context, is one window per
    /// document: long documents cost no more than short ones, on both sides alike.
    pub max_tokens: usize,
}

impl FactorsConfig {
    /// The fitting options these settings stand for, with `batch` documents per pass.
    pub fn arguments(&self, batch: usize) -> FactorArguments {
        FactorArguments {
            layers: self.layers.selection(),
            per_head: self.per_head,
            context: self.context,
            batch,
            fisher: self.fisher,
            seed: self.seed,
            fit_docs: self.fit_docs,
            max_tokens: whole_if_zero(self.max_tokens),
        }
    }
}

impl InfluenceConfig {
    /// The scoring options these settings stand for.
    pub fn arguments(&self) -> ScoreArguments {
        ScoreArguments {
            strategy: self.strategy,
            damping: Damping::Relative(self.damping_rel),
            max_tokens: whole_if_zero(self.max_tokens),
        }
    }
}

impl Default for InfluenceConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::Ekfac,
            damping_rel: crate::influence::DEFAULT_DAMPING_REL,
            batch: crate::influence::DEFAULT_BATCH,
            max_tokens: ProxyParams::default().context,
        }
    }
}

/// Everything `quad select` can be told, as in `run.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SelectConfig {
    pub text_field: String,
    pub id_field: String,
    /// The reference's text field, when it differs from the pool's (`text_field`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_text_field: Option<String>,
    /// The reference's id field, when it differs from the pool's (`id_field`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_id_field: Option<String>,
    /// Stop at the first bad record instead of skipping and counting it (never changes a result,
    /// so it is left out of the serialised form, and of the cache keys, unless set).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub strict: bool,
    pub embed: EmbedConfig,
    pub cluster: KMeansParams,
    pub proxy: ProxyConfig,
    pub factors: FactorsConfig,
    pub influence: InfluenceConfig,
    pub bandit: BanditParams,
    /// The signal policies' features and classifier sample (`[signals]`; left out of the
    /// serialised form, and so of keys and checkpoints, at its defaults).
    #[serde(skip_serializing_if = "SignalsConfig::is_default")]
    pub signals: SignalsConfig,
}

impl Default for SelectConfig {
    fn default() -> Self {
        Self {
            text_field: CorpusConfig::default().text_field,
            id_field: CorpusConfig::default().id_field,
            reference_text_field: None,
            reference_id_field: None,
            strict: false,
            embed: EmbedConfig::default(),
            cluster: KMeansParams::default(),
            proxy: ProxyConfig::default(),
            factors: FactorsConfig::default(),
            influence: InfluenceConfig::default(),
            bandit: BanditParams::default(),
            signals: SignalsConfig::default(),
        }
    }
}

/// A [`SelectConfig`] that passed [`SelectConfig::check`], parsed into the stages' arguments.
#[derive(Debug, Clone)]
pub struct ValidSelectConfig {
    /// The settings as given: written to the manifest and hashed into cache keys.
    pub raw: SelectConfig,
    /// How the pool's records become documents.
    pub corpus: CorpusConfig,
    /// How the reference's records become documents (the pool's fields unless told otherwise).
    pub reference: CorpusConfig,
    pub kmeans: ValidKMeansParams,
    pub factors: FactorArguments,
    pub scoring: ScoreArguments,
    pub bandit: ValidBanditParams,
    pub signals: ValidSignalsConfig,
}

/// `0` in a config means "the whole document".
fn whole_if_zero(n: usize) -> Option<usize> {
    (n > 0).then_some(n)
}

impl SelectConfig {
    /// Reads a TOML file; missing keys keep their defaults, unknown keys are errors.
    pub fn from_toml_file(path: &Path) -> Result<Self, SelectError> {
        let text = std::fs::read_to_string(path).map_err(at(path))?;
        toml::from_str(&text).map_err(|e| SelectError::Config(format!("{}: {e}", path.display())))
    }

    /// Checks every setting once and parses the config into the stages' arguments.
    pub fn check(self) -> Result<ValidSelectConfig, SelectError> {
        let bandit = self.bandit.clone().check()?;
        let signals = self.signals.check().map_err(|e| SelectError::Config(e.to_string()))?;
        let kmeans = self.cluster.clone().check()?;
        self.proxy.train.validate()?;
        if self.factors.fit_docs == 0 || self.factors.context < 2 || self.influence.batch == 0 {
            return Err(SelectError::Config("fit_docs, batch must be positive and context ≥ 2".into()));
        }
        if !(self.influence.damping_rel > 0.0 && self.influence.damping_rel.is_finite()) {
            return Err(SelectError::Config(format!(
                "[influence] damping_rel must be a finite number above 0 (got {})",
                self.influence.damping_rel
            )));
        }
        HashingEmbedder::check_dim(self.embed.hashing_dim).map_err(|e| SelectError::Config(format!("[embed] hashing_dim: {e}")))?;
        if self.embed.batch_size == 0 {
            return Err(SelectError::Config("[embed] batch_size must be at least 1".into()));
        }
        let factors = self.factors.arguments(self.influence.batch);
        let scoring = self.influence.arguments();
        let corpus = CorpusConfig {
            text_field: self.text_field.clone(),
            id_field: self.id_field.clone(),
            strict: self.strict,
        };
        let reference = CorpusConfig {
            text_field: self.reference_text_field.clone().unwrap_or_else(|| self.text_field.clone()),
            id_field: self.reference_id_field.clone().unwrap_or_else(|| self.id_field.clone()),
            strict: self.strict,
        };
        Ok(ValidSelectConfig {
            raw: self,
            corpus,
            reference,
            kmeans,
            factors,
            scoring,
            bandit,
            signals,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_values_serialise_as_before() {
        // Cache keys hash the serialised config: these spellings must not change.
        let f = serde_json::to_value(FactorsConfig::default()).unwrap();
        assert_eq!(f["layers"], "both");
        assert_eq!(f["fisher"], "true");
        let parsed: FactorsConfig = toml::from_str("layers = \"attn\"\nfisher = \"empirical\"").unwrap();
        assert_eq!((parsed.layers, parsed.fisher), (LayerGroup::Attention, Fisher::Empirical));
        assert!(toml::from_str::<FactorsConfig>("fisher = \"exact\"").is_err());
    }

    #[test]
    fn check_parses_zero_as_whole_documents() {
        let mut c = SelectConfig::default();
        c.influence.max_tokens = 0;
        let v = c.check().unwrap();
        assert_eq!(v.scoring.max_tokens, None);
        assert_eq!(v.factors.max_tokens, Some(256));
        let mut bad = SelectConfig::default();
        bad.influence.damping_rel = 0.0;
        assert!(bad.check().is_err());
        for (what, edit) in [
            ("damping_rel", (|c: &mut SelectConfig| c.influence.damping_rel = f64::INFINITY) as fn(&mut SelectConfig)),
            ("damping_rel", |c| c.influence.damping_rel = f64::NAN),
            ("hashing_dim", |c| c.embed.hashing_dim = 0),
            ("batch_size", |c| c.embed.batch_size = 0),
        ] {
            let mut bad = SelectConfig::default();
            edit(&mut bad);
            let e = bad.check().unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        }
    }
}
