//! The command line's flags (clap): parsed and checked here, then turned into library types.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::cluster::{ClusterCount, KMeansParams};
use crate::corpus::{CorpusConfig, CorpusReader};
use crate::embed::HashingEmbedder;
use crate::bandit::BanditParams;
use crate::eval;
use crate::influence::stage::{FactorArguments, Fisher, ScoreArguments};
use crate::influence::validate::ValidationOptions;
use crate::influence::{Damping, Projection, Strategy};
use crate::model::train::ProxyParams;
use crate::model::LayerSelection;
use crate::select::{EmbedConfig, FactorsConfig, InfluenceConfig, SelectConfig, DEFAULT_CACHE};

#[derive(Parser)]
#[command(name = "quad", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Select documents from a pool: embed, cluster, train (or load) the proxy, fit factors, and
    /// run the bandit until the budget is met. Writes selected.jsonl, manifest.json, rounds.csv and
    /// clusters.csv; caches every stage's artifacts; checkpoints after every round.
    Select(Box<SelectArgs>),
    /// Evaluate selections: split off held-out documents once, then train a fixed small LM on a
    /// selection and report reference and per-domain held-out losses.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Embed every document of a corpus; writes embeddings.npy, ids.jsonl and embeddings.json.
    Embed {
        #[command(flatten)]
        corpus: CorpusArgs,
        #[command(flatten)]
        embedder: EmbedderArgs,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Cluster a corpus with k-means; writes assignments.jsonl, clusters.json and centroids.npy.
    Cluster {
        #[command(flatten)]
        corpus: CorpusArgs,
        #[command(flatten)]
        embedder: EmbedderArgs,
        /// Reuse embeddings written by `quad embed` (its folder or its embeddings.npy) instead of
        /// embedding the corpus again.
        #[arg(long, conflicts_with = "model")]
        embeddings: Option<PathBuf>,
        #[command(flatten)]
        kmeans: KMeansArgs,
        /// Compare clusters with this field of the records: prints NMI, ARI and purity.
        #[arg(long)]
        label_field: Option<String>,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// The in-house proxy language model.
    #[command(subcommand)]
    Proxy(ProxyCommand),
    /// Fit K-FAC / EK-FAC factors of a model on a seeded sample of the pool (the training
    /// distribution); writes factors.safetensors and factors.json.
    Factors {
        #[command(flatten)]
        corpus: CorpusArgs,
        #[command(flatten)]
        factors: FactorsArgs,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Score every document of a corpus by its influence on a reference set; writes one
    /// {"id", "score", "loss"} line per document.
    Influence {
        #[command(flatten)]
        corpus: CorpusArgs,
        #[command(flatten)]
        influence: InfluenceArgs,
        /// Output JSONL file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Compare identity / K-FAC / EK-FAC with the exact damped Fisher on a tiny model.
    Validate {
        #[command(flatten)]
        corpus: CorpusArgs,
        #[command(flatten)]
        validate: ValidateArgs,
        /// Folder for the trained tiny model and the report.
        #[arg(long)]
        out: PathBuf,
    },
}

/// The flags of `quad factors` (defaults: the library's [`FactorsConfig`], as `quad select`).
#[derive(Args)]
pub struct FactorsArgs {
    /// Model: a Hugging Face style folder or a .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// Layers to factor: attention, mlp, both, or a comma-separated list of layer names (q_proj, …, down_proj).
    #[arg(long, default_value_t = FactorsConfig::default().layers.selection())]
    pub layers: LayerSelection,
    /// Factor each attention projection as one block instead of per head (ablation).
    #[arg(long)]
    pub no_per_head: bool,
    /// Documents sampled from the pool to fit the factors.
    #[arg(long, default_value_t = FactorsConfig::default().fit_docs, value_parser = at_least::<1>)]
    pub fit_docs: usize,
    /// Tokens of each fitting document used, its first ones (0: the whole document).
    #[arg(long, default_value_t = FactorsConfig::default().max_tokens)]
    pub max_tokens: usize,
    /// Tokens per window when chunking documents (at least 2, as `quad select` needs).
    #[arg(long, default_value_t = FactorsConfig::default().context, value_parser = at_least::<2>)]
    pub context: usize,
    /// Seed of the fitting sample (and of the sampled labels).
    #[arg(long, default_value_t = FactorsConfig::default().seed)]
    pub seed: u64,
    /// Curvature to approximate: the true Fisher (GGN) or the empirical Fisher.
    #[arg(long, value_enum, default_value_t = FactorsConfig::default().fisher.into())]
    pub fisher: FisherArg,
}

impl FactorsArgs {
    /// The fitting options, batched as `quad select` batches them.
    pub fn to_arguments(&self) -> FactorArguments {
        let fitting = FactorsConfig {
            fit_docs: self.fit_docs,
            max_tokens: self.max_tokens,
            per_head: !self.no_per_head,
            fisher: self.fisher.into(),
            context: self.context,
            seed: self.seed,
            ..Default::default()
        };
        // Any list of layers, not only the config's three groups.
        FactorArguments { layers: self.layers.clone(), ..fitting.arguments(InfluenceConfig::default().batch) }
    }
}

/// The flags of `quad influence` (defaults: the library's [`InfluenceConfig`]).
#[derive(Args)]
pub struct InfluenceArgs {
    /// The model the factors were fitted on.
    #[arg(long)]
    pub model: PathBuf,
    /// Folder written by `quad factors`.
    #[arg(long)]
    pub factors: PathBuf,
    /// Reference corpus (text the model should get better at).
    #[arg(long)]
    pub reference: PathBuf,
    /// identity (gradient dot product), kfac or ekfac.
    #[arg(long, default_value_t = InfluenceConfig::default().strategy)]
    pub strategy: Strategy,
    /// Damping relative to each block's mean eigenvalue.
    #[arg(long, default_value_t = InfluenceConfig::default().damping_rel, conflicts_with = "damping", value_parser = positive_finite)]
    pub damping_rel: f64,
    /// Absolute damping instead.
    #[arg(long, value_parser = positive_finite)]
    pub damping: Option<f64>,
    /// Print the mean score per value of this record field.
    #[arg(long)]
    pub label_field: Option<String>,
    /// Score through a seeded Rademacher projection of both sides to at most DIM×DIM per
    /// layer (TRAK-style, unbiased; for memory). Off by default.
    #[arg(long, value_name = "DIM", value_parser = at_least::<1>)]
    pub project: Option<usize>,
    /// Seed of the projection.
    #[arg(long, default_value_t = 0)]
    pub project_seed: u64,
    /// Take candidate and reference gradients on each document's first N predicted tokens
    /// (default: whole documents; `quad select` uses the proxy's context).
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<usize>,
}

impl InfluenceArgs {
    /// The scoring options.
    pub fn to_arguments(&self) -> ScoreArguments {
        ScoreArguments {
            strategy: self.strategy,
            damping: match self.damping {
                Some(d) => Damping::Absolute(d),
                None => Damping::Relative(self.damping_rel),
            },
            max_tokens: self.max_tokens,
        }
    }

    /// The projection, if asked for.
    pub fn projection(&self) -> Option<Projection> {
        self.project.map(|dim| Projection { dim, seed: self.project_seed })
    }
}

/// The flags of `quad validate`.
#[derive(Args)]
pub struct ValidateArgs {
    /// Reference corpus.
    #[arg(long)]
    pub reference: PathBuf,
    /// A tiny model (a few thousand weights in its linear layers); without it, one is trained.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Damping: this × tr(F_b)/n_b per block.
    #[arg(long, default_value_t = ValidationOptions::default().damping_rel, value_parser = positive_finite)]
    pub damping_rel: f64,
    /// Curvature the factors approximate (and the exact solve uses).
    #[arg(long, value_enum, default_value_t = ValidationOptions::default().fisher.into())]
    pub fisher: FisherArg,
    /// Layers to target: attention, mlp, both, or a comma-separated list of layer names (q_proj, …, down_proj).
    #[arg(long, default_value_t = ValidationOptions::default().layers)]
    pub layers: LayerSelection,
    /// Tokens per fitting example, candidate and reference document (at least 2: one
    /// predicted token needs one before it).
    #[arg(long, default_value_t = ValidationOptions::default().tokens, value_parser = at_least::<2>)]
    pub tokens: usize,
}

impl ValidateArgs {
    pub fn to_arguments(&self) -> ValidationOptions {
        ValidationOptions {
            tokens: self.tokens,
            damping_rel: self.damping_rel,
            fisher: self.fisher.into(),
            layers: self.layers.clone(),
        }
    }
}

/// Which curvature K-FAC / EK-FAC approximate.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum FisherArg {
    /// True Fisher (= GGN for cross-entropy): fitting losses against labels sampled from the model.
    True,
    /// Empirical Fisher: fitting losses against the documents' own next tokens.
    Empirical,
}

impl From<Fisher> for FisherArg {
    fn from(f: Fisher) -> FisherArg {
        match f {
            Fisher::True => FisherArg::True,
            Fisher::Empirical => FisherArg::Empirical,
        }
    }
}

impl From<FisherArg> for Fisher {
    fn from(f: FisherArg) -> Fisher {
        match f {
            FisherArg::True => Fisher::True,
            FisherArg::Empirical => Fisher::Empirical,
        }
    }
}

#[derive(Args)]
pub struct SelectArgs {
    /// Pool to select from (JSONL, .gz, .zst, Parquet, or a folder of them).
    #[arg(long)]
    pub input: PathBuf,
    /// Reference corpus (text the model should get better at).
    #[arg(long)]
    pub reference: PathBuf,
    /// Budget in proxy-tokenizer tokens (the last document taken is the one that reaches it).
    #[arg(long, conflicts_with = "budget_documents", required_unless_present = "budget_documents", value_parser = at_least::<1>)]
    pub budget_tokens: Option<usize>,
    /// Budget in documents (met exactly); `--budget-docs` is an older spelling.
    #[arg(long, alias = "budget-docs", value_parser = at_least::<1>)]
    pub budget_documents: Option<usize>,
    /// TOML file with any of the settings (see README); flags below override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Cache folder for embeddings, clusters, proxy, factors and scores (shared between runs).
    #[arg(long, default_value = DEFAULT_CACHE)]
    pub cache: PathBuf,
    /// Continue from OUT/checkpoint.json (after a crash, kill or Ctrl-C).
    #[arg(long)]
    pub resume: bool,
    /// Proxy model (folder or .gguf); without it the default proxy is trained on the pool.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Sentence-embedding model folder; without it the hashing embedder is used.
    #[arg(long)]
    pub embed_model: Option<PathBuf>,
    /// Field holding the text.
    #[arg(long)]
    pub text_field: Option<String>,
    /// Field holding the id.
    #[arg(long)]
    pub id_field: Option<String>,
    /// Field holding the reference's text, when it differs from the pool's (`--text-field`).
    #[arg(long)]
    pub reference_text_field: Option<String>,
    /// Field holding the reference's id, when it differs from the pool's (`--id-field`).
    #[arg(long)]
    pub reference_id_field: Option<String>,
    /// Stop at the first bad record instead of skipping and counting it (TOML: `strict = true`).
    #[arg(long)]
    pub strict: bool,
    /// Number of clusters, or "auto": 2^round(log2 √(n/16)), 32 for 18k documents, 256 for 1M.
    #[arg(long)]
    pub k: Option<ClusterCount>,
    /// ucb, thompson, epsilon-greedy, greedy, uniform, random, topk, mix, predicted, or a
    /// practitioner's baseline: dsir, classifier, perplexity.
    #[arg(long)]
    pub policy: Option<crate::bandit::PolicyName>,
    /// α: exploration weight of the Cluster Score.
    #[arg(long)]
    pub alpha: Option<f64>,
    /// γ: reward threshold (standardised score units); selects the threshold allocation (none:
    /// the document-level tilt, README "The bandit").
    #[arg(long)]
    pub gamma: Option<f64>,
    /// T: temperature of the tilt, the quality/diversity knob (standardised score units): a
    /// document one spread better than another gets exp(1/T) times its share. Lower leans towards
    /// the best-scored documents (quality), higher stays closer to the pool (diversity); README
    /// "The temperature".
    #[arg(long, conflicts_with = "gamma", allow_negative_numbers = true)]
    pub temperature: Option<f64>,
    /// β of dsir, classifier and perplexity: documents drawn ∝ exp(β · signal) without
    /// replacement (dsir: ∝ w^β). Unset: dsir β = 1, the others highest signal first.
    #[arg(long)]
    pub beta: Option<f64>,
    /// τ: neighbour radius (centroid cosine distance).
    #[arg(long)]
    pub tau: Option<f64>,
    /// B: clusters per round.
    #[arg(long)]
    pub arms_per_round: Option<usize>,
    /// b: documents scored per chosen cluster.
    #[arg(long)]
    pub samples_per_arm: Option<usize>,
    /// m: the most documents taken from one cluster in one round.
    #[arg(long)]
    pub chunk: Option<usize>,
    /// Seed of the bandit.
    #[arg(long)]
    pub seed: Option<u64>,
}

impl SelectArgs {
    /// The TOML file's settings with the flags applied on top.
    pub fn config(&self) -> Result<SelectConfig> {
        let mut c = match &self.config {
            Some(p) => SelectConfig::from_toml_file(p)?,
            None => SelectConfig::default(),
        };
        macro_rules! set {
            ($flag:expr, $field:expr) => {
                if let Some(v) = $flag.clone() {
                    $field = v;
                }
            };
        }
        set!(self.text_field, c.text_field);
        set!(self.id_field, c.id_field);
        if self.reference_text_field.is_some() {
            c.reference_text_field = self.reference_text_field.clone();
        }
        if self.reference_id_field.is_some() {
            c.reference_id_field = self.reference_id_field.clone();
        }
        if self.strict {
            c.strict = true;
        }
        set!(self.k, c.cluster.k);
        set!(self.policy, c.bandit.policy);
        set!(self.alpha, c.bandit.alpha);
        if self.gamma.is_some() {
            // A threshold is only meaningful for the threshold allocation.
            c.bandit.gamma = self.gamma;
            c.bandit.allocation = crate::bandit::AllocationName::Threshold;
        }
        if let Some(t) = self.temperature {
            c.bandit = c.bandit.with_temperature(t)?;
        }
        if self.beta.is_some() {
            c.bandit.beta = self.beta;
        }
        set!(self.tau, c.bandit.tau);
        set!(self.arms_per_round, c.bandit.arms_per_round);
        set!(self.samples_per_arm, c.bandit.samples_per_arm);
        if self.chunk.is_some() {
            c.bandit.chunk = self.chunk;
        }
        set!(self.seed, c.bandit.seed);
        if self.model.is_some() {
            c.proxy.model = self.model.clone();
        }
        if self.embed_model.is_some() {
            c.embed.model = self.embed_model.clone();
        }
        Ok(c)
    }
}


#[derive(Subcommand)]
pub enum EvalCommand {
    /// Split held-out documents off a pool (per label value, deterministic) and train the
    /// evaluation tokenizer; writes DIR/pool.jsonl (for selectors), DIR/heldout.jsonl and
    /// DIR/tokenizer.json.
    Split {
        #[command(flatten)]
        corpus: CorpusArgs,
        /// Field whose values are the domains.
        #[arg(long, default_value = eval::LABEL_FIELD)]
        label_field: String,
        /// Held-out documents per domain.
        #[arg(long, default_value_t = eval::HELDOUT_PER_DOMAIN, value_parser = at_least::<1>)]
        heldout_per_domain: usize,
        /// BPE vocabulary of the evaluation tokenizer (at least 300: 256 bytes and some merges).
        #[arg(long, default_value_t = eval::eval_params().vocab_size, value_parser = at_least::<300>)]
        vocab_size: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Train the evaluation model on a selection and measure its losses; writes a JSON result.
    Run {
        /// selected.jsonl (or any corpus) to train on.
        #[arg(long)]
        selection: PathBuf,
        /// Reference corpus; may be repeated (one `--out` each): the model is trained once and
        /// measured on each.
        #[arg(long, required = true)]
        reference: Vec<PathBuf>,
        /// Folder written by `quad eval split`.
        #[arg(long)]
        split: PathBuf,
        /// Field whose values are the domains.
        #[arg(long, default_value = eval::LABEL_FIELD)]
        label_field: String,
        /// Clusters of the selection's run (for the normalised entropy); default: from the
        /// manifest.json beside the selection.
        #[arg(long, value_parser = at_least::<1>)]
        k: Option<usize>,
        /// Seed of the evaluation model's weights and batches.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Training steps (default 300: 614,400 tokens).
        #[arg(long)]
        steps: Option<usize>,
        /// A tiny evaluation model (1 block, width 64, context 64, 20 steps), for CI-sized runs.
        #[arg(long)]
        quick: bool,
        /// Output JSON file, one per `--reference`.
        #[arg(long, required = true)]
        out: Vec<PathBuf>,
    },
}


#[derive(Subcommand)]
pub enum ProxyCommand {
    /// Train a small Llama-style proxy from scratch on a seeded sample of the pool; writes
    /// config.json, model.safetensors, tokenizer.json and train_log.csv.
    Train {
        #[command(flatten)]
        corpus: CorpusArgs,
        #[command(flatten)]
        proxy: ProxyArgs,
        /// Output folder (a Hugging Face style model folder).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args)]
pub struct ProxyArgs {
    /// Transformer blocks.
    #[arg(long, default_value_t = ProxyParams::default().layers)]
    pub layers: usize,
    /// Model width (hidden size).
    #[arg(long, default_value_t = ProxyParams::default().width)]
    pub width: usize,
    /// Attention heads.
    #[arg(long, default_value_t = ProxyParams::default().heads)]
    pub heads: usize,
    /// Context length in tokens.
    #[arg(long, default_value_t = ProxyParams::default().context)]
    pub context: usize,
    /// Vocabulary size of the byte-level BPE trained on the sample.
    #[arg(long, default_value_t = ProxyParams::default().vocab_size)]
    pub vocab_size: usize,
    /// Use this tokenizer.json instead of training a BPE.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Optimisation steps.
    #[arg(long, default_value_t = ProxyParams::default().steps)]
    pub steps: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = ProxyParams::default().batch_size)]
    pub batch_size: usize,
    /// Peak learning rate (AdamW).
    #[arg(long, default_value_t = ProxyParams::default().lr, value_parser = positive_finite)]
    pub lr: f64,
    /// Linear warm-up steps (then cosine decay to lr/10).
    #[arg(long, default_value_t = ProxyParams::default().warmup)]
    pub warmup: usize,
    /// AdamW weight decay.
    #[arg(long, default_value_t = ProxyParams::default().weight_decay, value_parser = non_negative_finite)]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this.
    #[arg(long, default_value_t = ProxyParams::default().clip, value_parser = positive_finite)]
    pub clip: f64,
    /// Seed for the sample, the initial weights and the batches.
    #[arg(long, default_value_t = ProxyParams::default().seed)]
    pub seed: u64,
    /// Documents sampled from the pool at most.
    #[arg(long, default_value_t = ProxyParams::default().max_docs)]
    pub max_docs: usize,
    /// Validate every this many steps.
    #[arg(long, default_value_t = ProxyParams::default().eval_every)]
    pub eval_every: usize,
    /// Stop after this many minutes even if steps remain.
    #[arg(long, value_parser = minutes)]
    pub max_minutes: Option<Duration>,
}

impl ProxyArgs {
    pub fn params(&self) -> ProxyParams {
        ProxyParams {
            layers: self.layers,
            width: self.width,
            heads: self.heads,
            context: self.context,
            vocab_size: self.vocab_size,
            tokenizer: self.tokenizer.clone(),
            steps: self.steps,
            batch_size: self.batch_size,
            lr: self.lr,
            warmup: self.warmup,
            weight_decay: self.weight_decay,
            clip: self.clip,
            seed: self.seed,
            max_docs: self.max_docs,
            eval_every: self.eval_every,
            time_limit: self.max_minutes,
            ..Default::default()
        }
    }
}

#[derive(Args)]
pub struct KMeansArgs {
    /// Number of clusters, or "auto": 2^round(log2 √(n/16)), 32 for 18k documents, 256 for 1M.
    #[arg(long, default_value_t = KMeansParams::default().k)]
    pub k: ClusterCount,
    /// Fit the centroids on at most this many rows (a seeded sample beyond), then assign every row.
    #[arg(long, default_value_t = KMeansParams::default().fit_rows)]
    pub fit_rows: usize,
    /// k-means++ initialisations; the lowest inertia wins.
    #[arg(long, default_value_t = KMeansParams::default().n_init)]
    pub n_init: usize,
    /// Maximum Lloyd iterations per initialisation (epochs with --mini-batch).
    #[arg(long, default_value_t = KMeansParams::default().max_iter)]
    pub max_iter: usize,
    /// Relative tolerance on the centroid shift (as scikit-learn's KMeans).
    #[arg(long, default_value_t = KMeansParams::default().tol, value_parser = non_negative_finite)]
    pub tol: f64,
    /// Random seed for initialisation.
    #[arg(long, default_value_t = KMeansParams::default().seed)]
    pub seed: u64,
    /// Use mini-batch k-means with this batch size (for large pools).
    #[arg(long)]
    pub mini_batch: Option<usize>,
    /// Neighbour radius τ: clusters whose centroids are closer than this cosine distance are
    /// neighbours (the bandit shares rewards between them).
    #[arg(long, default_value_t = BanditParams::default().tau, value_parser = non_negative_finite)]
    pub tau: f64,
}

impl KMeansArgs {
    pub fn params(&self) -> KMeansParams {
        KMeansParams {
            k: self.k,
            n_init: self.n_init,
            max_iter: self.max_iter,
            tol: self.tol,
            seed: self.seed,
            mini_batch: self.mini_batch,
            fit_rows: self.fit_rows,
        }
    }
}

#[derive(Args, Clone)]
pub struct CorpusArgs {
    /// Corpus: a .jsonl, .jsonl.gz, .jsonl.zst or .parquet file, or a folder of them.
    #[arg(long)]
    pub input: PathBuf,
    /// Field holding the document text.
    #[arg(long, default_value_t = CorpusConfig::default().text_field)]
    pub text_field: String,
    /// Field holding the document id (default when absent: file:line).
    #[arg(long, default_value_t = CorpusConfig::default().id_field)]
    pub id_field: String,
    /// Stop at the first bad record instead of skipping and counting it.
    #[arg(long)]
    pub strict: bool,
}

impl CorpusArgs {
    pub fn config(&self) -> CorpusConfig {
        CorpusConfig {
            text_field: self.text_field.clone(),
            id_field: self.id_field.clone(),
            strict: self.strict,
        }
    }

    pub fn open(&self) -> Result<CorpusReader> {
        CorpusReader::open(&self.input, self.config())
            .with_context(|| format!("opening corpus {}", self.input.display()))
    }

    /// The same settings for another corpus (a reference set).
    pub fn with_input(&self, input: &std::path::Path) -> CorpusArgs {
        CorpusArgs {
            input: input.to_path_buf(),
            ..self.clone()
        }
    }
}

#[derive(Args)]
pub struct EmbedderArgs {
    /// Sentence-embedding model folder (config.json, model.safetensors, tokenizer.json), e.g.
    /// all-MiniLM-L6-v2. Without it, the hashing embedder is used.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Texts per forward pass of the model.
    #[arg(long, default_value_t = EmbedConfig::default().batch_size, value_parser = at_least::<1>)]
    pub batch_size: usize,
    /// Override the model's maximum sequence length (tokens, [CLS] and [SEP] included).
    #[arg(long)]
    pub max_seq_length: Option<usize>,
    /// Dimension of the hashing embedder.
    #[arg(long, default_value_t = HashingEmbedder::DEFAULT_DIM, value_parser = hashing_dim)]
    pub hashing_dim: usize,
}


/// The command line, with the default of every `quad select` setting appended to its flag's help,
/// taken from `SelectConfig::default()` (the one place the defaults are defined; the flags are
/// options so that a TOML file's values stand unless a flag is given).
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    let d = SelectConfig::default();
    let b = &d.bandit;
    let defaults = [
        ("text_field", d.text_field.clone()),
        ("id_field", d.id_field.clone()),
        ("k", d.cluster.k.to_string()),
        ("policy", b.policy.to_string()),
        ("alpha", b.alpha.to_string()),
        ("gamma", "none".to_string()),
        ("temperature", b.temperature.to_string()),
        ("tau", b.tau.to_string()),
        ("arms_per_round", b.arms_per_round.to_string()),
        ("samples_per_arm", b.samples_per_arm.to_string()),
        ("chunk", "⌈budget in documents / k⌉".to_string()),
        ("seed", b.seed.to_string()),
    ];
    Cli::command().mut_subcommand("select", |mut c| {
        for (id, value) in defaults {
            c = c.mut_arg(id, |a| {
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                a.help(format!("{help} [default: {value}]"))
            });
        }
        c
    })
}

/// What a command does with a path it is given.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    Reads,
    /// Writes this file.
    Writes,
    /// Writes into this folder (created if missing; must be a folder).
    WritesInto,
}

impl Command {
    /// Every path the command is given, with its flag and what the command does with it.
    fn paths(&self) -> Vec<(Role, &'static str, PathBuf)> {
        use Role::{Reads, Writes, WritesInto};
        let mut v: Vec<(Role, &'static str, PathBuf)> = Vec::new();
        let mut add = |role, flag, path: &std::path::Path| v.push((role, flag, path.to_path_buf()));
        match self {
            Command::Select(a) => {
                add(Reads, "--input", &a.input);
                add(Reads, "--reference", &a.reference);
                a.config.iter().for_each(|p| add(Reads, "--config", p));
                a.model.iter().for_each(|p| add(Reads, "--model", p));
                a.embed_model.iter().for_each(|p| add(Reads, "--embed-model", p));
                add(WritesInto, "--out", &a.out);
                add(WritesInto, "--cache", &a.cache);
            }
            Command::Eval(EvalCommand::Split { corpus, out, .. }) => {
                add(Reads, "--input", &corpus.input);
                add(WritesInto, "--out", out);
            }
            Command::Eval(EvalCommand::Run { selection, reference, split, out, .. }) => {
                add(Reads, "--selection", selection);
                add(Reads, "--split", split);
                reference.iter().for_each(|r| add(Reads, "--reference", r));
                // It reads the manifest beside the selection (for k) when there is one.
                add(Reads, "manifest beside --selection", &selection.with_file_name("manifest.json"));
                out.iter().for_each(|o| add(Writes, "--out", o));
            }
            Command::Embed { corpus, embedder, out } => {
                add(Reads, "--input", &corpus.input);
                embedder.model.iter().for_each(|p| add(Reads, "--model", p));
                add(WritesInto, "--out", out);
            }
            Command::Cluster { corpus, embedder, embeddings, out, .. } => {
                add(Reads, "--input", &corpus.input);
                embedder.model.iter().for_each(|p| add(Reads, "--model", p));
                embeddings.iter().for_each(|p| add(Reads, "--embeddings", p));
                add(WritesInto, "--out", out);
            }
            Command::Proxy(ProxyCommand::Train { corpus, proxy, out }) => {
                add(Reads, "--input", &corpus.input);
                proxy.tokenizer.iter().for_each(|p| add(Reads, "--tokenizer", p));
                add(WritesInto, "--out", out);
            }
            Command::Factors { corpus, factors, out } => {
                add(Reads, "--input", &corpus.input);
                add(Reads, "--model", &factors.model);
                add(WritesInto, "--out", out);
            }
            Command::Influence { corpus, influence: i, out } => {
                add(Reads, "--input", &corpus.input);
                add(Reads, "--model", &i.model);
                add(Reads, "--factors", &i.factors);
                add(Reads, "--reference", &i.reference);
                add(Writes, "--out", out);
            }
            Command::Validate { corpus, validate, out } => {
                add(Reads, "--input", &corpus.input);
                add(Reads, "--reference", &validate.reference);
                validate.model.iter().for_each(|p| add(Reads, "--model", p));
                add(WritesInto, "--out", out);
            }
        }
        v
    }

    /// Checked before anything is written or removed: no output may be, contain or lie inside
    /// an input, and an output folder must be a folder.
    pub fn check_paths(&self) -> Result<()> {
        use crate::path_io::{check_output_folder, refuse_output_over_input, Named};
        let paths = self.paths();
        let named = |keep: &dyn Fn(Role) -> bool| -> Vec<Named<'_>> {
            paths.iter().filter(|(r, _, _)| keep(*r)).map(|(_, flag, p)| Named::new(flag, p)).collect()
        };
        refuse_output_over_input(&named(&|r| r != Role::Reads), &named(&|r| r == Role::Reads))?;
        for f in named(&|r| r == Role::WritesInto) {
            check_output_folder(f.flag, f.path)?;
        }
        Ok(())
    }
}

/// A finite number above zero (damping, a learning rate, minutes): NaN, infinities, zero and
/// negatives are refused where the flag is read.
fn positive_finite(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        Ok(_) => Err("must be a finite number above 0".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// A finite number ≥ 0.
fn non_negative_finite(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        Ok(_) => Err("must be a finite number ≥ 0".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// A count of at least `MIN`.
/// A number of minutes, positive and finite, as a duration (at most a year: beyond that no
/// duration is meant, and `Duration` would overflow).
fn minutes(s: &str) -> Result<Duration, String> {
    let m = positive_finite(s)?;
    if m > 525_600.0 {
        return Err(format!("{m} minutes: at most 525600 (a year)"));
    }
    Duration::try_from_secs_f64(m * 60.0).map_err(|e| format!("{m} minutes: {e}"))
}

fn hashing_dim(s: &str) -> Result<usize, String> {
    HashingEmbedder::check_dim(s.parse::<usize>().map_err(|e| e.to_string())?)
}

fn at_least<const MIN: usize>(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= MIN => Ok(n),
        Ok(_) => Err(format!("must be at least {MIN}")),
        Err(e) => Err(e.to_string()),
    }
}
