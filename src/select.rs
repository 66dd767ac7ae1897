//! `quad select`: corpus → embed → cluster → proxy model → factors → bandit, with every stage's
//! artifacts cached under a key that hashes its inputs and parameters, a checkpoint after every
//! round, and the outputs of [`crate::report`].
//!
//! Cache layout (`cache/`): `embed-KEY/`, `cluster-KEY.json`, `proxy-KEY/`, `factors-KEY/`,
//! `refgrad-KEY.safetensors`, `scores-KEY.jsonl` (influence scores by document id, appended as
//! they are computed, so a rerun with another α or γ scores only documents it has not seen).
//! A key covers everything upstream: changing k re-clusters but reuses embeddings, proxy and factors.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Device};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use crate::hash::key_of;

use crate::bandit::{Bandit, BanditError, BanditParams, BanditState, Budget, Problem, RoundLog, StopReason};
use crate::cluster::{self, Clustering, KMeansParams};
use crate::corpus::{CorpusConfig, CorpusReader, Document};
use crate::embed::{BertOptions, Embeddings, HashingEmbedder};
use crate::influence::{self, store, Damping, Factors, FitOptions, ReferenceIhvp, Strategy};
use crate::model::train::{train_proxy, ProxyParams};
use crate::model::{self, Labels, LayerSelection, LoadedModel};

/// Errors of `quad select`.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error(transparent)]
    Corpus(#[from] crate::corpus::CorpusError),
    #[error(transparent)]
    Embed(#[from] crate::embed::EmbedError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Influence(#[from] crate::influence::InfluenceError),
    #[error(transparent)]
    Bandit(#[from] BanditError),
    #[error(transparent)]
    Io(#[from] crate::path_io::PathIoError),
    #[error("{0}")]
    Config(String),
    #[error("interrupted before the selection started; finished stages are cached, rerun to continue")]
    Interrupted,
}

fn stop_if_interrupted(interrupt: &AtomicBool) -> Result<(), SelectError> {
    if interrupt.load(Ordering::SeqCst) {
        Err(SelectError::Interrupted)
    } else {
        Ok(())
    }
}

/// Maps an I/O error on `path` to [`SelectError::Io`].
pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SelectError + '_ {
    move |source| SelectError::Io(crate::path_io::PathIoError::new(path, source))
}

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
            batch_size: 32,
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

/// Factor fitting settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FactorsConfig {
    /// Documents sampled from the pool to fit the factors.
    pub fit_docs: usize,
    /// Tokens of each fitting document used (its first ones; 0 = the whole document). One context
    /// window per document keeps the fit quick while the sample still spans the pool.
    pub max_tokens: usize,
    /// "attention", "mlp" or "both".
    pub layers: String,
    pub per_head: bool,
    /// "true" (sampled labels, = GGN) or "empirical".
    pub fisher: String,
    /// Tokens per window.
    pub context: usize,
    pub seed: u64,
}

impl Default for FactorsConfig {
    fn default() -> Self {
        Self {
            fit_docs: 256,
            max_tokens: 256,
            layers: "both".into(),
            per_head: true,
            fisher: "true".into(),
            context: 256,
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
    /// Documents per forward/backward pass when scoring.
    pub batch: usize,
    /// Take candidate gradients and the reference gradient on each document's first this many
    /// predicted tokens (0: whole documents). The default, the proxy's context, is one window per
    /// document: long documents cost no more than short ones, on both sides alike.
    pub max_tokens: usize,
}

impl Default for InfluenceConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::Ekfac,
            damping_rel: 0.1,
            batch: 4,
            max_tokens: 256,
        }
    }
}

/// Everything `quad select` can be told, as in `run.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SelectConfig {
    pub text_field: String,
    pub id_field: String,
    pub embed: EmbedConfig,
    pub cluster: KMeansParams,
    pub proxy: ProxyConfig,
    pub factors: FactorsConfig,
    pub influence: InfluenceConfig,
    pub bandit: BanditParams,
}

impl Default for SelectConfig {
    fn default() -> Self {
        Self {
            text_field: "text".into(),
            id_field: "id".into(),
            embed: EmbedConfig::default(),
            cluster: KMeansParams {
                k: 32,
                ..Default::default()
            },
            proxy: ProxyConfig::default(),
            factors: FactorsConfig::default(),
            influence: InfluenceConfig::default(),
            bandit: BanditParams::default(),
        }
    }
}

impl SelectConfig {
    /// Reads a TOML file; missing keys keep their defaults, unknown keys are errors.
    pub fn from_toml_file(path: &Path) -> Result<Self, SelectError> {
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        toml::from_str(&text).map_err(|e| SelectError::Config(format!("{}: {e}", path.display())))
    }

    pub fn check(&self) -> Result<(), SelectError> {
        self.bandit.check()?;
        self.cluster.clone().check()?;
        self.proxy.train.validate()?;
        self.layers()?;
        self.labels()?;
        if self.factors.fit_docs == 0 || self.factors.context < 2 || self.influence.batch == 0 {
            return Err(SelectError::Config("fit_docs, batch must be positive and context ≥ 2".into()));
        }
        if !(self.influence.damping_rel > 0.0) {
            return Err(SelectError::Config("damping_rel must be positive".into()));
        }
        Ok(())
    }

    fn layers(&self) -> Result<LayerSelection, SelectError> {
        self.factors.layers.parse().map_err(SelectError::Config)
    }

    fn labels(&self) -> Result<Labels, SelectError> {
        match self.factors.fisher.as_str() {
            "true" => Ok(Labels::Sampled { seed: self.factors.seed }),
            "empirical" => Ok(Labels::Observed),
            other => Err(SelectError::Config(format!("fisher must be \"true\" or \"empirical\", not {other:?}"))),
        }
    }
}

/// One `quad select` run.
#[derive(Debug, Clone)]
pub struct SelectRun {
    pub input: PathBuf,
    pub reference: PathBuf,
    pub budget: Budget,
    pub out: PathBuf,
    pub cache: PathBuf,
    pub resume: bool,
    pub config: SelectConfig,
}

/// Progress reporting; every method has a silent default.
pub trait Progress {
    /// A stage starts (`cached`: its artifacts are reused).
    fn stage(&self, _name: &str, _cached: bool) {}
    /// Work within the current stage.
    fn advance(&self, _done: u64, _total: u64) {}
    /// A bandit round ended.
    fn round(&self, _log: &RoundLog, _budget: Budget, _best_cs: f64) {}
    /// A free-form note (counts, skips).
    fn note(&self, _line: &str) {}
}

/// A silent [`Progress`].
pub struct Quiet;
impl Progress for Quiet {}

/// Time and cache use of one stage.
#[derive(Debug, Clone, Serialize)]
pub struct StageTiming {
    pub stage: String,
    pub seconds: f64,
    pub cached: bool,
    pub key: String,
}

/// What a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct SelectSummary {
    pub stop: Option<StopReason>,
    pub docs_selected: usize,
    pub tokens_selected: usize,
    pub documents_scored: usize,
    pub rounds: usize,
    pub interrupted: bool,
}

/// sha256 of a corpus path's files, in order (name and bytes).
pub fn corpus_sha256(path: &Path) -> Result<String, SelectError> {
    Ok(crate::hash::sha256_files(&crate::corpus::corpus_files(path)?)?)
}

/// The checkpoint file: the run's key and the bandit state.
#[derive(Serialize, Deserialize)]
struct Checkpoint {
    run_key: String,
    state: BanditState,
}

struct Timer {
    timings: Vec<StageTiming>,
}

impl Timer {
    fn record(&mut self, stage: &str, started: Instant, cached: bool, key: &str) {
        self.timings.push(StageTiming {
            stage: stage.into(),
            seconds: started.elapsed().as_secs_f64(),
            cached,
            key: key.into(),
        });
    }
}

/// Runs the pipeline; stops cleanly after the current round when `interrupt` is set (the
/// checkpoint resumes it), or after round `stop_after` (a test hook for the same path).
pub fn run(
    run: &SelectRun,
    progress: &dyn Progress,
    interrupt: &AtomicBool,
    stop_after: Option<usize>,
) -> Result<SelectSummary, SelectError> {
    let cfg = &run.config;
    cfg.check()?;
    std::fs::create_dir_all(&run.cache).map_err(io(&run.cache))?;
    std::fs::create_dir_all(&run.out).map_err(io(&run.out))?;
    let mut timer = Timer { timings: Vec::new() };
    let corpus_cfg = CorpusConfig {
        text_field: cfg.text_field.clone(),
        id_field: cfg.id_field.clone(),
        strict: false,
    };

    // Corpus.
    let started = Instant::now();
    progress.stage("read corpus", false);
    let (docs, pool_report) = CorpusReader::read_all(&run.input, corpus_cfg.clone())?;
    let (ref_docs, ref_report) = CorpusReader::read_all(&run.reference, corpus_cfg.clone())?;
    progress.note(&format!("{pool_report}"));
    progress.note(&format!("{ref_report}"));
    if docs.is_empty() {
        return Err(SelectError::Config(format!("{}: no usable documents", run.input.display())));
    }
    if ref_docs.is_empty() {
        return Err(SelectError::Config(format!("{}: no usable reference documents", run.reference.display())));
    }
    if let Some(d) = docs.iter().find(|d| d.field("quad").is_some()) {
        return Err(SelectError::Config(format!(
            "{} ({}) already has a \"quad\" field, which selected.jsonl would overwrite",
            d.id, d.location
        )));
    }
    let pool_sha = corpus_sha256(&run.input)?;
    let ref_sha = corpus_sha256(&run.reference)?;
    let corpus_key = key_of(&serde_json::json!([pool_sha, cfg.text_field, cfg.id_field]));
    timer.record("corpus", started, false, &corpus_key);
    stop_if_interrupted(interrupt)?;

    // Embeddings.
    let started = Instant::now();
    let embedder_id = match &cfg.embed.model {
        Some(m) => serde_json::json!(["bert", store::model_fingerprint(m)?]),
        None => serde_json::json!(["hashing", cfg.embed.hashing_dim]),
    };
    let embed_key = key_of(&serde_json::json!(["embed", corpus_key, embedder_id]));
    let embed_dir = run.cache.join(format!("embed-{embed_key}"));
    let cached = embed_dir.join(Embeddings::MATRIX_FILE).exists();
    progress.stage("embed", cached);
    let mut emb = if cached {
        Embeddings::load(&embed_dir)?
    } else {
        let embedder = crate::make_embedder(
            cfg.embed.model.as_deref(),
            BertOptions {
                batch_size: cfg.embed.batch_size,
                ..Default::default()
            },
            cfg.embed.hashing_dim,
        )?;
        let total = docs.len() as u64;
        let mut done = 0u64;
        let emb = crate::embed::embed_documents(
            docs.iter().cloned().map(Ok),
            embedder.as_ref(),
            256,
            |_| {},
            |n| {
                done += n as u64;
                progress.advance(done, total);
            },
        )?;
        emb.save(&embed_dir)?;
        emb
    };
    if emb.ids.len() != docs.len() || emb.ids.iter().zip(&docs).any(|(a, d)| *a != d.id) {
        return Err(SelectError::Config(format!(
            "cached embeddings in {} do not match the corpus; delete that folder",
            embed_dir.display()
        )));
    }
    timer.record("embed", started, cached, &embed_key);
    stop_if_interrupted(interrupt)?;

    // Clusters.
    let started = Instant::now();
    let mut kparams = cfg.cluster.clone();
    kparams.tau = cfg.bandit.tau as f32;
    let cluster_key = key_of(&serde_json::json!(["cluster", embed_key, kparams]));
    let cluster_path = run.cache.join(format!("cluster-{cluster_key}.json"));
    let cached = cluster_path.exists();
    progress.stage("cluster", cached);
    let (assignment, distances): (Vec<usize>, Vec<Vec<f64>>) = if cached {
        let text = std::fs::read_to_string(&cluster_path).map_err(io(&cluster_path))?;
        serde_json::from_str(&text).map_err(|e| SelectError::Config(format!("{}: {e}", cluster_path.display())))?
    } else {
        if kparams.k > docs.len() {
            return Err(SelectError::Config(format!(
                "k = {} clusters for {} documents: lower cluster.k",
                kparams.k,
                docs.len()
            )));
        }
        cluster::prepare_rows(&mut emb)?;
        let valid = kparams.clone().check()?;
        let fitted = Clustering::fit(&valid, emb.matrix.view(), |ev| {
            if let cluster::KMeansEvent::Iteration { iter, .. } = ev {
                progress.advance(iter as u64, valid.max_iter as u64);
            }
        })?;
        let d: Vec<Vec<f64>> = fitted
            .centroid_distances
            .rows()
            .into_iter()
            .map(|r| r.iter().map(|&x| x as f64).collect())
            .collect();
        let json = serde_json::to_string(&(&fitted.assignment, &d)).expect("plain data");
        crate::atomic::write_string_atomic(&cluster_path, &json).map_err(io(&cluster_path))?;
        (fitted.assignment, d)
    };
    drop(emb);
    timer.record("cluster", started, cached, &cluster_key);
    stop_if_interrupted(interrupt)?;

    // Proxy model.
    let started = Instant::now();
    let (model_path, cached) = match &cfg.proxy.model {
        Some(m) => (m.clone(), true),
        None => {
            let proxy_key = key_of(&serde_json::json!(["proxy", corpus_key, cfg.proxy.train]));
            let dir = run.cache.join(format!("proxy-{proxy_key}"));
            let cached = dir.join("model.safetensors").exists();
            progress.stage("train proxy", cached);
            if !cached {
                let tmp = run.cache.join(format!(".proxy-{proxy_key}.tmp"));
                let _ = std::fs::remove_dir_all(&tmp);
                let texts: Vec<String> = docs.iter().map(|d| d.text.clone()).collect();
                let steps = cfg.proxy.train.steps as u64;
                train_proxy(texts, &cfg.proxy.train, &tmp, |ev| {
                    if let model::train::TrainEvent::Step { step, .. } = ev {
                        progress.advance(step as u64, steps);
                    }
                })?;
                std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
            }
            (dir, cached)
        }
    };
    if cfg.proxy.model.is_some() {
        progress.stage("load model", true);
    }
    let loaded = model::load(&model_path, DType::F32, &Device::Cpu)?;
    let model_sha = store::model_fingerprint(&model_path)?;
    timer.record("proxy", started, cached, &model_sha[..16]);
    stop_if_interrupted(interrupt)?;

    // Token counts (the budget's unit) and documents too short to score.
    let started = Instant::now();
    progress.stage("tokenize", false);
    let token_ids = encode_all(&loaded, &docs)?;
    let eligible: Vec<usize> = (0..docs.len()).filter(|&i| token_ids[i].len() >= 2).collect();
    let too_short = docs.len() - eligible.len();
    if too_short > 0 {
        progress.note(&format!("skipped {too_short} documents with fewer than two tokens (nothing to score)"));
    }
    timer.record("tokenize", started, false, "");
    stop_if_interrupted(interrupt)?;

    // Factors.
    let started = Instant::now();
    let selection = cfg.layers()?;
    let fit_opts = FitOptions {
        selection: selection.clone(),
        per_head: cfg.factors.per_head,
        context: cfg.factors.context,
        batch: cfg.influence.batch,
        labels: cfg.labels()?,
    };
    let needs_scores = cfg.bandit.policy.scores();
    let factors_key = key_of(&serde_json::json!(["factors", model_sha, corpus_key, cfg.factors]));
    let factors_dir = run.cache.join(format!("factors-{factors_key}"));
    let mut factors: Option<Factors> = None;
    if needs_scores && cfg.influence.strategy != Strategy::Identity {
        let cached = factors_dir.join("factors.json").exists();
        progress.stage("fit factors", cached);
        factors = Some(if cached {
            store::load(&factors_dir)?.0
        } else {
            let mut order: Vec<usize> = eligible.clone();
            order.shuffle(&mut rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(cfg.factors.seed));
            order.truncate(cfg.factors.fit_docs);
            let fit_docs: Vec<Vec<u32>> =
                order.iter().map(|&i| truncated(&token_ids[i], cfg.factors.max_tokens)).collect();
            let f = Factors::fit(&loaded.model, &fit_docs, &fit_opts)?;
            let header = store::FactorsHeader {
                model_sha256: model_sha.clone(),
                model: model_path.display().to_string(),
                per_head: f.per_head,
                examples: f.examples,
                tokens: f.tokens,
                context: cfg.factors.context,
                default_damping: cfg.influence.damping_rel,
                fisher: cfg.factors.fisher.clone(),
                layers: f.block_layout(),
            };
            store::save(&f, &header, &factors_dir)?;
            f
        });
        timer.record("factors", started, cached, &factors_key);
        stop_if_interrupted(interrupt)?;
    }

    // Reference gradient and iHVP.
    let started = Instant::now();
    let ref_key = key_of(&serde_json::json!([
        "refgrad",
        model_sha,
        ref_sha,
        selection,
        cfg.factors.context,
        cfg.influence.max_tokens
    ]));
    let score_key = key_of(&serde_json::json!([
        "scores",
        ref_key,
        factors_key,
        cfg.influence.strategy,
        cfg.influence.damping_rel,
        cfg.influence.max_tokens
    ]));
    let mut ihvp: Option<ReferenceIhvp> = None;
    if needs_scores {
        let path = run.cache.join(format!("refgrad-{ref_key}.safetensors"));
        let cached = path.exists();
        progress.stage("reference gradient", cached);
        let ids = selection.layers(loaded.model.config.num_hidden_layers);
        let grad = if cached {
            store::load_layers(&path, &ids)?
        } else {
            let ref_tokens: Vec<Vec<u32>> = encode_all(&loaded, &ref_docs)?
                .iter()
                .map(|ids| truncated(ids, cfg.influence.max_tokens))
                .collect();
            let g = influence::factors::mean_gradient(&loaded.model, &ref_tokens, &fit_opts)?;
            store::save_layers(&g, &path)?;
            g
        };
        let empty = Factors {
            layers: Vec::new(),
            per_head: cfg.factors.per_head,
            examples: 0,
            tokens: 0,
        };
        ihvp = Some(ReferenceIhvp::new(
            factors.as_ref().unwrap_or(&empty),
            &grad,
            cfg.influence.strategy,
            Damping::Relative(cfg.influence.damping_rel),
        )?);
        timer.record("reference", started, cached, &ref_key);
        stop_if_interrupted(interrupt)?;
    }
    drop(factors);

    // Bandit.
    let started = Instant::now();
    let cluster_of: Vec<usize> = eligible.iter().map(|&i| assignment[i]).collect();
    let doc_tokens: Vec<usize> = eligible.iter().map(|&i| token_ids[i].len()).collect();
    let problem = Problem {
        cluster: cluster_of.clone(),
        tokens: doc_tokens.clone(),
        distances,
        budget: run.budget,
    };
    let run_key = key_of(&serde_json::json!([
        "run", cluster_key, model_sha, score_key, cfg.bandit, run.budget, too_short
    ]));
    let checkpoint_path = run.out.join("checkpoint.json");
    let mut bandit = if run.resume && checkpoint_path.exists() {
        let text = std::fs::read_to_string(&checkpoint_path).map_err(io(&checkpoint_path))?;
        let cp: Checkpoint = serde_json::from_str(&text)
            .map_err(|e| SelectError::Config(format!("{}: {e}", checkpoint_path.display())))?;
        if cp.run_key != run_key {
            return Err(SelectError::Config(format!(
                "{} belongs to a run with other inputs or parameters; rerun without --resume to start over",
                checkpoint_path.display()
            )));
        }
        progress.note(&format!("resuming after round {}", cp.state.round));
        Bandit::resume(cfg.bandit.clone(), problem, cp.state)?
    } else {
        if run.resume {
            progress.note("no checkpoint to resume; starting from the first round");
        }
        Bandit::new(cfg.bandit.clone(), problem)?
    };
    progress.stage(&format!("select ({})", cfg.bandit.policy), false);

    let mut cache = ScoreCache::open(&run.cache.join(format!("scores-{score_key}.jsonl")))?;
    let mut scorer = |idx: &[usize]| -> Result<Vec<f64>, SelectError> {
        let ihvp = ihvp.as_ref().expect("scoring policies have an iHVP");
        let mut out = vec![0.0; idx.len()];
        let mut todo = Vec::new();
        for (k, &i) in idx.iter().enumerate() {
            match cache.get(&docs[eligible[i]].id) {
                Some(s) => out[k] = s,
                None => todo.push(k),
            }
        }
        // In pieces, each saved to the score cache at once: a long `topk` pass that is killed
        // keeps what it scored.
        let total = todo.len() as u64;
        for (piece, ks) in todo.chunks(64).enumerate() {
            let batch: Vec<Document> = ks.iter().map(|&k| docs[eligible[idx[k]]].clone()).collect();
            let opts = fit_opts_scoring(&fit_opts);
            let scored = influence::score_documents(&loaded, ihvp, &batch, &opts, (cfg.influence.max_tokens > 0).then_some(cfg.influence.max_tokens), || {})?;
            for (&k, s) in ks.iter().zip(scored) {
                let (score, _) = s.ok_or_else(|| SelectError::Config("a scored document had no tokens".into()))?;
                out[k] = score;
                cache.put(&docs[eligible[idx[k]]].id, score);
            }
            cache.flush()?;
            if total > 64 {
                progress.advance(((piece + 1) * 64).min(todo.len()) as u64, total);
            }
        }
        Ok(out)
    };
    let save_checkpoint = |b: &Bandit| -> Result<(), SelectError> {
        let json = serde_json::to_string(&Checkpoint {
            run_key: run_key.clone(),
            state: b.state().clone(),
        })
        .expect("plain data");
        crate::atomic::write_string_atomic(&checkpoint_path, &json).map_err(io(&checkpoint_path))
    };
    let mut checkpoint_err = None;
    bandit.run(&mut scorer, |b, log| {
        let best = log.picks.iter().map(|p| p.index).fold(f64::NEG_INFINITY, f64::max);
        progress.round(log, run.budget, best);
        if let Err(e) = save_checkpoint(b) {
            checkpoint_err = Some(e);
            return false;
        }
        !(interrupt.load(Ordering::SeqCst) || stop_after.is_some_and(|k| log.round + 1 >= k))
    })?;
    if let Some(e) = checkpoint_err {
        return Err(e);
    }
    save_checkpoint(&bandit)?;
    timer.record("bandit", started, false, &run_key);

    let factors_file = factors_dir.join("factors.safetensors");
    let factors_sha = if factors_file.exists() { Some(store::model_fingerprint(&factors_file)?) } else { None };
    let state = bandit.state();
    let interrupted = state.stop == Some(StopReason::Interrupted);
    if !interrupted {
        let started = Instant::now();
        let inputs = crate::report::RunInputs {
            pool: &run.input,
            pool_sha256: &pool_sha,
            pool_report: &pool_report,
            reference: &run.reference,
            reference_sha256: &ref_sha,
            reference_report: &ref_report,
            model: &model_path,
            model_sha256: &model_sha,
            factors_key: &factors_key,
            factors_sha256: factors_sha.as_deref(),
            too_short,
            cluster_of: &cluster_of,
            tokens: &doc_tokens,
        };
        timer.record("report", started, false, "");
        crate::report::write_outputs(&run.out, cfg, run.budget, &docs, &eligible, state, &inputs, &timer.timings)?;
    }
    Ok(SelectSummary {
        stop: state.stop.clone(),
        docs_selected: state.docs_selected,
        tokens_selected: state.tokens_selected,
        documents_scored: state.documents_scored,
        rounds: state.round,
        interrupted,
    })
}

/// Scoring uses the fitting options' layers and context with observed labels.
/// A copy of a document's first `max_tokens` predicted tokens (0 keeps all).
fn truncated(ids: &[u32], max_tokens: usize) -> Vec<u32> {
    let mut ids = ids.to_vec();
    crate::model::capture::truncate_predicted(&mut ids, max_tokens);
    ids
}

fn fit_opts_scoring(opts: &FitOptions) -> FitOptions {
    FitOptions {
        labels: Labels::Observed,
        ..opts.clone()
    }
}

fn encode_all(loaded: &LoadedModel, docs: &[Document]) -> Result<Vec<Vec<u32>>, SelectError> {
    let texts: Vec<&str> = docs.iter().map(|d| d.text.as_str()).collect();
    let enc = loaded
        .tokenizer
        .encode_batch(texts, false)
        .map_err(|e| SelectError::Model(model::ModelError::Tokenizer(e.to_string())))?;
    Ok(enc.into_iter().map(|e| e.get_ids().to_vec()).collect())
}

/// Influence scores by document id, persisted as JSONL lines appended as they are computed.
struct ScoreCache {
    path: PathBuf,
    scores: HashMap<String, f64>,
    pending: Vec<(String, f64)>,
}

impl ScoreCache {
    fn open(path: &Path) -> Result<Self, SelectError> {
        let mut scores = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(path) {
            // A line cut by a crash is ignored: its document is scored again.
            for line in text.lines() {
                if let Ok((id, s)) = serde_json::from_str::<(String, f64)>(line) {
                    scores.insert(id, s);
                }
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            scores,
            pending: Vec::new(),
        })
    }

    fn get(&self, id: &str) -> Option<f64> {
        self.scores.get(id).copied()
    }

    fn put(&mut self, id: &str, s: f64) {
        self.scores.insert(id.to_string(), s);
        self.pending.push((id.to_string(), s));
    }

    fn flush(&mut self) -> Result<(), SelectError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io(&self.path))?;
        let mut buf = String::new();
        for (id, s) in self.pending.drain(..) {
            buf.push_str(&serde_json::to_string(&(id, s)).expect("plain data"));
            buf.push('\n');
        }
        f.write_all(buf.as_bytes()).map_err(io(&self.path))?;
        Ok(())
    }
}
