//! `quad`: the command line. It parses flags and wires the library's stages; no stage logic here.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use quad_select::cluster::{self, Clustering, KMeansEvent, KMeansParams};
use quad_select::corpus::{CorpusConfig, CorpusReader, ReadReport};
use quad_select::embed::{self, BertOptions, Embeddings, HashingEmbedder};
use quad_select::influence::{self, store, Damping, Factors, FitOptions, ReferenceIhvp, Strategy};
use quad_select::model::train::{self, ProxyParams, TrainEvent};
use quad_select::model::{self, LayerSelection};
use quad_select::select::{self, SelectConfig};
use candle_core::{DType, Device};

/// Quad: select pretraining data that is both influential on a reference set and diverse.
#[derive(Parser)]
#[command(name = "quad", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
        /// Model: a Hugging Face style folder or a .gguf file.
        #[arg(long)]
        model: PathBuf,
        /// Layers to factor: attention, mlp, both, or a comma-separated list of layer names (q_proj, …, down_proj).
        #[arg(long, default_value = "both")]
        layers: LayerSelection,
        /// Factor each attention projection as one block instead of per head (ablation).
        #[arg(long)]
        no_per_head: bool,
        /// Documents sampled from the pool to fit the factors.
        #[arg(long, default_value_t = 256)]
        fit_docs: usize,
        /// Tokens of each fitting document used, its first ones (0: the whole document).
        #[arg(long, default_value_t = 256)]
        max_tokens: usize,
        /// Tokens per window when chunking documents.
        #[arg(long, default_value_t = 256)]
        context: usize,
        /// Seed of the fitting sample (and of the sampled labels).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Curvature to approximate: the true Fisher (GGN) or the empirical Fisher.
        #[arg(long, value_enum, default_value_t = FisherArg::True)]
        fisher: FisherArg,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Score every document of a corpus by its influence on a reference set; writes one
    /// {"id", "score", "loss"} line per document.
    Influence {
        #[command(flatten)]
        corpus: CorpusArgs,
        /// The model the factors were fitted on.
        #[arg(long)]
        model: PathBuf,
        /// Folder written by `quad factors`.
        #[arg(long)]
        factors: PathBuf,
        /// Reference corpus (text the model should get better at).
        #[arg(long)]
        reference: PathBuf,
        /// identity (gradient dot product), kfac or ekfac.
        #[arg(long, default_value = "ekfac")]
        strategy: Strategy,
        /// Damping relative to each block's mean eigenvalue.
        #[arg(long, default_value_t = 0.1, conflicts_with = "damping")]
        damping_rel: f64,
        /// Absolute damping instead.
        #[arg(long)]
        damping: Option<f64>,
        /// Print the mean score per value of this record field.
        #[arg(long)]
        label_field: Option<String>,
        /// Score through a seeded Rademacher projection of both sides to at most DIM×DIM per
        /// layer (TRAK-style, unbiased; for memory). Off by default.
        #[arg(long, value_name = "DIM")]
        project: Option<usize>,
        /// Seed of the projection.
        #[arg(long, default_value_t = 0)]
        project_seed: u64,
        /// Take candidate and reference gradients on each document's first N predicted tokens
        /// (default: whole documents).
        #[arg(long, value_name = "N")]
        max_tokens: Option<usize>,
        /// Output JSONL file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Compare identity / K-FAC / EK-FAC with the exact damped Fisher on a tiny model.
    Validate {
        #[command(flatten)]
        corpus: CorpusArgs,
        /// Reference corpus.
        #[arg(long)]
        reference: PathBuf,
        /// A tiny model (a few thousand weights in its linear layers); without it, one is trained.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Damping: this × tr(F_b)/n_b per block.
        #[arg(long, default_value_t = 0.1)]
        damping_rel: f64,
        /// Curvature the factors approximate (and the exact solve uses).
        #[arg(long, value_enum, default_value_t = FisherArg::True)]
        fisher: FisherArg,
        /// Layers to target: attention, mlp, both, or a comma-separated list of layer names (q_proj, …, down_proj).
        #[arg(long, default_value = "both")]
        layers: LayerSelection,
        /// Tokens per fitting example, candidate and reference document.
        #[arg(long, default_value_t = influence::validate::VALIDATION_TOKENS)]
        tokens: usize,
        /// Folder for the trained tiny model and the report.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Which curvature K-FAC / EK-FAC approximate.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum FisherArg {
    /// True Fisher (= GGN for cross-entropy): fitting losses against labels sampled from the model.
    True,
    /// Empirical Fisher: fitting losses against the documents' own next tokens.
    Empirical,
}

impl FisherArg {
    fn labels(self) -> model::Labels {
        self.labels_seeded(0)
    }

    fn labels_seeded(self, seed: u64) -> model::Labels {
        match self {
            FisherArg::True => model::Labels::Sampled { seed },
            FisherArg::Empirical => model::Labels::Observed,
        }
    }
}

#[derive(Args)]
struct SelectArgs {
    /// Pool to select from (JSONL, .gz, .zst, Parquet, or a folder of them).
    #[arg(long)]
    input: PathBuf,
    /// Reference corpus (text the model should get better at).
    #[arg(long)]
    reference: PathBuf,
    /// Budget in proxy-tokenizer tokens (the last document taken is the one that reaches it).
    #[arg(long, conflicts_with = "budget_docs", required_unless_present = "budget_docs")]
    budget_tokens: Option<usize>,
    /// Budget in documents (met exactly).
    #[arg(long)]
    budget_docs: Option<usize>,
    /// TOML file with any of the settings (see README); flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Cache folder for embeddings, clusters, proxy, factors and scores (shared between runs).
    #[arg(long, default_value = ".quad-cache")]
    cache: PathBuf,
    /// Continue from OUT/checkpoint.json (after a crash, kill or Ctrl-C).
    #[arg(long)]
    resume: bool,
    /// Proxy model (folder or .gguf); without it the default proxy is trained on the pool.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Sentence-embedding model folder; without it the hashing embedder is used.
    #[arg(long)]
    embed_model: Option<PathBuf>,
    /// Field holding the text.
    #[arg(long)]
    text_field: Option<String>,
    /// Field holding the id.
    #[arg(long)]
    id_field: Option<String>,
    /// Number of clusters.
    #[arg(long)]
    k: Option<usize>,
    /// ucb, thompson, epsilon-greedy, greedy, uniform, random or topk.
    #[arg(long)]
    policy: Option<quad_select::bandit::Policy>,
    /// α: exploration weight of the Cluster Score.
    #[arg(long)]
    alpha: Option<f64>,
    /// γ: reward threshold (standardised score units); selects the threshold allocation
    /// (default: the tilted allocation, README "The bandit").
    #[arg(long)]
    gamma: Option<f64>,
    /// τ: neighbour radius (centroid cosine distance).
    #[arg(long)]
    tau: Option<f64>,
    /// B: clusters per round.
    #[arg(long)]
    arms_per_round: Option<usize>,
    /// b: documents scored per chosen cluster.
    #[arg(long)]
    samples_per_arm: Option<usize>,
    /// m: documents taken from a cluster whose estimate beats γ; default: ⌈budget in documents / k⌉.
    #[arg(long)]
    chunk: Option<usize>,
    /// Seed of the bandit.
    #[arg(long)]
    seed: Option<u64>,
}

impl SelectArgs {
    fn config(&self) -> Result<SelectConfig> {
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
        set!(self.k, c.cluster.k);
        set!(self.policy, c.bandit.policy);
        set!(self.alpha, c.bandit.alpha);
        if self.gamma.is_some() {
            // A threshold is only meaningful for the threshold allocation.
            c.bandit.gamma = self.gamma;
            c.bandit.allocation = quad_select::bandit::Allocation::Threshold;
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

/// Stage bars and per-round lines for `quad select`.
struct CliProgress {
    bar: std::sync::Mutex<Option<ProgressBar>>,
}

impl select::Progress for CliProgress {
    fn stage(&self, name: &str, cached: bool) {
        let mut slot = self.bar.lock().expect("progress lock");
        if let Some(b) = slot.take() {
            b.finish_and_clear();
        }
        if cached {
            eprintln!("{name}: cached");
            return;
        }
        if !console_is_tty() {
            eprintln!("{name} ...");
        }
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template("{prefix}: [{bar:30}] {pos}/{len} [{elapsed_precise}<{eta_precise}]")
                .expect("valid template")
                .progress_chars("=> "),
        );
        b.set_prefix(name.to_string());
        *slot = Some(b);
    }

    fn advance(&self, done: u64, total: u64) {
        if let Some(b) = self.bar.lock().expect("progress lock").as_ref() {
            b.set_length(total);
            b.set_position(done);
        }
    }

    fn round(&self, log: &quad_select::bandit::RoundLog, budget: quad_select::bandit::Budget, best_cs: f64) {
        let (used, limit, unit) = match budget {
            quad_select::bandit::Budget::Tokens(n) => (log.tokens_selected, n, "tokens"),
            quad_select::bandit::Budget::Documents(n) => (log.docs_selected, n, "docs"),
        };
        let line = format!(
            "round {:>4}: {used}/{limit} {unit}, scored {}, accepted {}, best CS {best_cs:.3}",
            log.round, log.scored, log.accepted
        );
        match self.bar.lock().expect("progress lock").as_ref() {
            Some(b) if !b.is_hidden() => {
                b.set_length(limit as u64);
                b.set_position(used.min(limit) as u64);
                b.println(line);
            }
            _ => eprintln!("{line}"),
        }
    }

    fn note(&self, line: &str) {
        match self.bar.lock().expect("progress lock").as_ref() {
            Some(b) if !b.is_hidden() => b.println(line),
            _ => eprintln!("{line}"),
        }
    }
}

fn console_is_tty() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    // A second Ctrl-C quits at once; the last checkpoint still resumes.
    if INTERRUPTED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        unsafe { libc::_exit(130) };
    }
}

fn select_cmd(args: &SelectArgs) -> Result<()> {
    let config = args.config()?;
    let budget = match (args.budget_tokens, args.budget_docs) {
        (Some(t), _) => quad_select::bandit::Budget::Tokens(t),
        (None, Some(d)) => quad_select::bandit::Budget::Documents(d),
        (None, None) => bail!("give --budget-tokens or --budget-docs"),
    };
    let run = select::SelectRun {
        input: args.input.clone(),
        reference: args.reference.clone(),
        budget,
        out: args.out.clone(),
        cache: args.cache.clone(),
        resume: args.resume,
        config,
    };
    // SAFETY: the handler only touches an atomic (and _exit on the second signal).
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    // Test hook: stop after this many rounds as Ctrl-C would.
    let stop_after = std::env::var("QUAD_STOP_AFTER_ROUND").ok().and_then(|v| v.parse().ok());
    let progress = CliProgress {
        bar: std::sync::Mutex::new(None),
    };
    let started = Instant::now();
    let summary = select::run(&run, &progress, &INTERRUPTED, stop_after)?;
    if let Some(b) = progress.bar.lock().expect("progress lock").take() {
        b.finish_and_clear();
    }
    if summary.interrupted {
        println!(
            "stopped after round {}: {} documents, {} tokens so far; continue with --resume",
            summary.rounds, summary.docs_selected, summary.tokens_selected
        );
        return Ok(());
    }
    let why = match &summary.stop {
        Some(quad_select::bandit::StopReason::BudgetMet) => "budget met".to_string(),
        Some(quad_select::bandit::StopReason::PoolExhausted) => "pool exhausted before the budget".to_string(),
        Some(quad_select::bandit::StopReason::NoArmAboveGamma) => {
            "stopped short of the budget: no cluster's mean score beats gamma (lower --gamma)".to_string()
        }
        other => format!("{other:?}"),
    };
    println!(
        "selected {} documents, {} tokens in {} rounds ({why}); scored {} documents; {:.1} s -> {}",
        summary.docs_selected,
        summary.tokens_selected,
        summary.rounds,
        summary.documents_scored,
        started.elapsed().as_secs_f64(),
        args.out.join("selected.jsonl").display()
    );
    Ok(())
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Split held-out documents off a pool (per label value, deterministic) and train the
    /// evaluation tokenizer; writes DIR/pool.jsonl (for selectors), DIR/heldout.jsonl and
    /// DIR/tokenizer.json.
    Split {
        #[command(flatten)]
        corpus: CorpusArgs,
        /// Field whose values are the domains.
        #[arg(long, default_value = "domain")]
        label_field: String,
        /// Held-out documents per domain.
        #[arg(long, default_value_t = 20)]
        heldout_per_domain: usize,
        /// BPE vocabulary of the evaluation tokenizer.
        #[arg(long, default_value_t = 4096)]
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
        #[arg(long, default_value = "domain")]
        label_field: String,
        /// Clusters of the selection's run (for the normalised entropy); default: from the
        /// manifest.json beside the selection.
        #[arg(long)]
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

fn eval_cmd(cmd: EvalCommand) -> Result<()> {
    use quad_select::eval;
    match cmd {
        EvalCommand::Split {
            corpus,
            label_field,
            heldout_per_domain,
            vocab_size,
            seed,
            out,
        } => {
            let mut reader = corpus.open()?;
            let docs: Vec<_> = reader.by_ref().collect::<Result<_, _>>()?;
            eprintln!("{}", reader.report());
            let (pool, held) = eval::write_split(&docs, &label_field, heldout_per_domain, seed, vocab_size, &out)?;
            println!(
                "held out {held} documents ({heldout_per_domain} per '{label_field}' value), {pool} left for selection -> {}",
                out.display()
            );
            Ok(())
        }
        EvalCommand::Run {
            selection,
            reference,
            split,
            label_field,
            k,
            seed,
            steps,
            quick,
            out,
        } => {
            let read = |p: &std::path::Path| -> Result<Vec<quad_select::corpus::Document>> {
                Ok(CorpusReader::read_all(p, CorpusConfig::default())
                    .with_context(|| format!("reading {}", p.display()))?
                    .0)
            };
            if reference.len() != out.len() {
                anyhow::bail!("{} --reference for {} --out: give one output per reference", reference.len(), out.len());
            }
            let sel = read(&selection)?;
            let refs: Vec<Vec<String>> = reference
                .iter()
                .map(|r| Ok(read(r)?.into_iter().map(|d| d.text).collect()))
                .collect::<Result<_>>()?;
            let heldout: Vec<(String, String)> = read(&split.join(eval::SPLIT_HELDOUT))?
                .into_iter()
                .map(|d| (d.field(&label_field).unwrap_or_else(|| "(none)".into()), d.text))
                .collect();
            let tok_path = split.join(eval::SPLIT_TOKENIZER);
            let tokenizer = tokenizers::Tokenizer::from_file(&tok_path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", tok_path.display()))?;
            let mut params = if quick { eval::eval_params_quick() } else { eval::eval_params() };
            if let Some(s) = steps {
                params.steps = s;
            }
            let texts: Vec<String> = sel.iter().map(|d| d.text.clone()).collect();
            let ref_slices: Vec<&[String]> = refs.iter().map(Vec::as_slice).collect();
            let results = eval::evaluate_many(&texts, &tokenizer, &ref_slices, &heldout, &params, seed)?;
            let k = match k {
                Some(k) => k,
                None => {
                    let m = selection.with_file_name("manifest.json");
                    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&m).with_context(|| {
                        format!("{}: give --k when the selection has no manifest", m.display())
                    })?)?;
                    v["parameters"]["cluster"]["k"].as_u64().context("manifest lacks parameters.cluster.k")? as usize
                }
            };
            let records: Vec<serde_json::Value> = sel
                .iter()
                .map(|d| serde_json::from_str(&d.record))
                .collect::<Result<_, _>>()?;
            let stats = eval::selection_stats(&records, k, &label_field);
            for ((result, out), reference) in results.iter().zip(&out).zip(&reference) {
                println!(
                    "{}: reference loss {:.4}, held-out mean {:.4} ({} domains), cluster entropy {:.3}, {} clusters, {:.0} s",
                    reference.display(),
                    result.reference_loss,
                    result.heldout_mean,
                    result.heldout_loss.len(),
                    stats.cluster_entropy,
                    stats.clusters_touched,
                    result.seconds
                );
                let json = serde_json::json!({"eval": result, "selection": stats, "seed": seed, "path": selection});
                quad_select::atomic::write_string_atomic(out, &serde_json::to_string_pretty(&json)?)?;
            }
            Ok(())
        }
    }
}

#[derive(Subcommand)]
enum ProxyCommand {
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
struct ProxyArgs {
    /// Transformer blocks.
    #[arg(long, default_value_t = 4)]
    layers: usize,
    /// Model width (hidden size).
    #[arg(long, default_value_t = 256)]
    width: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Context length in tokens.
    #[arg(long, default_value_t = 256)]
    context: usize,
    /// Vocabulary size of the byte-level BPE trained on the sample.
    #[arg(long, default_value_t = 4096)]
    vocab_size: usize,
    /// Use this tokenizer.json instead of training a BPE.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Optimisation steps.
    #[arg(long, default_value_t = 400)]
    steps: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Peak learning rate (AdamW).
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// Linear warm-up steps (then cosine decay to lr/10).
    #[arg(long, default_value_t = 30)]
    warmup: usize,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.1)]
    weight_decay: f64,
    /// Clip the global gradient norm to this.
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    /// Seed for the sample, the initial weights and the batches.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Documents sampled from the pool at most.
    #[arg(long, default_value_t = 20_000)]
    max_docs: usize,
    /// Validate every this many steps.
    #[arg(long, default_value_t = 25)]
    eval_every: usize,
    /// Stop after this many minutes even if steps remain.
    #[arg(long)]
    max_minutes: Option<f64>,
}

impl ProxyArgs {
    fn params(&self) -> ProxyParams {
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
            time_limit: self.max_minutes.map(|m| Duration::from_secs_f64(m * 60.0)),
            ..Default::default()
        }
    }
}

#[derive(Args)]
struct KMeansArgs {
    /// Number of clusters.
    #[arg(long)]
    k: usize,
    /// k-means++ initialisations; the lowest inertia wins.
    #[arg(long, default_value_t = 3)]
    n_init: usize,
    /// Maximum Lloyd iterations per initialisation (epochs with --mini-batch).
    #[arg(long, default_value_t = 300)]
    max_iter: usize,
    /// Relative tolerance on the centroid shift (as scikit-learn's KMeans).
    #[arg(long, default_value_t = 1e-4)]
    tol: f64,
    /// Random seed for initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use mini-batch k-means with this batch size (for large pools).
    #[arg(long)]
    mini_batch: Option<usize>,
    /// Neighbour radius τ: clusters whose centroids are closer than this cosine distance are
    /// neighbours (the bandit shares rewards between them).
    #[arg(long, default_value_t = 0.2)]
    tau: f32,
}

impl KMeansArgs {
    fn params(&self) -> KMeansParams {
        KMeansParams {
            k: self.k,
            n_init: self.n_init,
            max_iter: self.max_iter,
            tol: self.tol,
            seed: self.seed,
            mini_batch: self.mini_batch,
            tau: self.tau,
        }
    }
}

#[derive(Args, Clone)]
struct CorpusArgs {
    /// Corpus: a .jsonl, .jsonl.gz, .jsonl.zst or .parquet file, or a folder of them.
    #[arg(long)]
    input: PathBuf,
    /// Field holding the document text.
    #[arg(long, default_value = "text")]
    text_field: String,
    /// Field holding the document id (default when absent: file:line).
    #[arg(long, default_value = "id")]
    id_field: String,
    /// Stop at the first bad record instead of skipping and counting it.
    #[arg(long)]
    strict: bool,
}

impl CorpusArgs {
    fn config(&self) -> CorpusConfig {
        CorpusConfig {
            text_field: self.text_field.clone(),
            id_field: self.id_field.clone(),
            strict: self.strict,
        }
    }

    fn open(&self) -> Result<CorpusReader> {
        CorpusReader::open(&self.input, self.config())
            .with_context(|| format!("opening corpus {}", self.input.display()))
    }
}

#[derive(Args)]
struct EmbedderArgs {
    /// Sentence-embedding model folder (config.json, model.safetensors, tokenizer.json), e.g.
    /// all-MiniLM-L6-v2. Without it, the hashing embedder is used.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Texts per forward pass of the model.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Override the model's maximum sequence length (tokens, [CLS] and [SEP] included).
    #[arg(long)]
    max_seq_length: Option<usize>,
    /// Dimension of the hashing embedder.
    #[arg(long, default_value_t = HashingEmbedder::DEFAULT_DIM)]
    hashing_dim: usize,
}

fn main() {
    quad_select::tune_allocator();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Select(args) => select_cmd(&args),
        Command::Eval(cmd) => eval_cmd(cmd),
        Command::Embed {
            corpus,
            embedder,
            out,
        } => {
            let (emb, _, report, secs) = embed_corpus(&corpus, &embedder, None)?;
            eprintln!("{report}");
            emb.save(&out)?;
            println!(
                "embedded {} documents ({} dims, {}) in {:.1} s ({:.1} docs/s) -> {}",
                emb.ids.len(),
                emb.matrix.ncols(),
                emb.embedder,
                secs,
                emb.ids.len() as f64 / secs.max(1e-9),
                out.join(Embeddings::MATRIX_FILE).display()
            );
            Ok(())
        }
        Command::Cluster {
            corpus,
            embedder,
            embeddings,
            kmeans,
            label_field,
            out,
        } => {
            let params = kmeans.params();
            let tau = params.tau;
            let valid = params.clone().check()?;
            let (mut emb, labels) = match embeddings {
                Some(path) => {
                    let emb = Embeddings::load(&path)?;
                    let labels = match &label_field {
                        Some(field) => Some(labels_by_id(&corpus, field, &emb.ids)?),
                        None => None,
                    };
                    (emb, labels)
                }
                None => {
                    let (emb, labels, report, secs) = embed_corpus(&corpus, &embedder, label_field.as_deref())?;
                    eprintln!("{report}");
                    eprintln!(
                        "embedded {} documents with {} in {:.1} s",
                        emb.ids.len(),
                        emb.embedder,
                        secs
                    );
                    (emb, labels)
                }
            };
            let rescaled = cluster::prepare_rows(&mut emb)?;
            if rescaled > 0 {
                eprintln!("note: rescaled {rescaled} embedding rows to unit norm");
            }
            let bar = bar(params.max_iter as u64, "k-means");
            let started = Instant::now();
            let fitted = Clustering::fit(&valid, emb.matrix.view(), |ev| match ev {
                KMeansEvent::RunStarted { run, n_init } => {
                    bar.set_position(0);
                    bar.set_message(format!("init {}/{}", run + 1, n_init));
                }
                KMeansEvent::Iteration { iter, shift, .. } => {
                    bar.set_position(iter as u64);
                    if shift.is_finite() {
                        bar.set_message(format!("shift {shift:.2e}"));
                    }
                }
            })?;
            bar.finish_and_clear();
            let secs = started.elapsed().as_secs_f64();
            let mut extra = serde_json::json!({
                "embedder": emb.embedder,
                "fit_seconds": secs,
            });
            println!(
                "k-means: k={} n={} inertia={:.3} iterations={} ({:.2} s)",
                fitted.k(),
                emb.ids.len(),
                fitted.inertia,
                fitted.n_iter,
                secs
            );
            let mut sizes = fitted.sizes.clone();
            sizes.sort_unstable_by(|a, b| b.cmp(a));
            println!("cluster sizes (largest first): {sizes:?}");
            let with_neighbours = fitted.neighbours.iter().filter(|n| !n.is_empty()).count();
            let edges: usize = fitted.neighbours.iter().map(Vec::len).sum::<usize>() / 2;
            println!(
                "neighbours within tau={}: {} pairs; {} of {} clusters have at least one",
                tau,
                edges,
                with_neighbours,
                fitted.k()
            );
            if let (Some(field), Some(labels)) = (&label_field, &labels) {
                let agreement = cluster::label_agreement(&fitted.assignment, labels);
                println!(
                    "agreement with '{field}': NMI={:.4} ARI={:.4} purity={:.4}",
                    agreement.nmi, agreement.ari, agreement.purity
                );
                extra["label_field"] = serde_json::json!(field);
                extra["agreement"] = serde_json::to_value(agreement)?;
            }
            fitted.save(&out, &emb.ids, &params, extra)?;
            println!("wrote {}", out.display());
            Ok(())
        }
        Command::Proxy(ProxyCommand::Train { corpus, proxy, out }) => proxy_train(&corpus, &proxy, &out),
        Command::Factors {
            corpus,
            model,
            layers,
            no_per_head,
            fit_docs,
            max_tokens,
            context,
            seed,
            fisher,
            out,
        } => {
            let loaded = model::load(&model, DType::F32, &Device::Cpu)
                .with_context(|| format!("loading model {}", model.display()))?;
            let mut texts = read_texts(&corpus)?;
            use rand::seq::SliceRandom;
            use rand::SeedableRng;
            texts.shuffle(&mut rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed));
            texts.truncate(fit_docs);
            let mut docs = encode_all(&loaded, &texts)?;
            for d in &mut docs {
                model::capture::truncate_predicted(d, max_tokens);
            }
            let opts = FitOptions {
                selection: layers,
                per_head: !no_per_head,
                context,
                batch: 4,
                labels: fisher.labels_seeded(seed),
            };
            let started = Instant::now();
            let factors = Factors::fit(&loaded.model, &docs, &opts)?;
            let header = store::FactorsHeader {
                model_sha256: store::model_fingerprint(&model)?,
                model: model.display().to_string(),
                per_head: factors.per_head,
                examples: factors.examples,
                tokens: factors.tokens,
                context,
                default_damping: 0.1,
                fisher: format!("{fisher:?}").to_lowercase(),
                layers: factors.block_layout(),
            };
            store::save(&factors, &header, &out)?;
            let blocks: usize = factors.layers.iter().map(|l| l.blocks.len()).sum();
            println!(
                "fitted {} layers ({} blocks) on {} documents, {} tokens in {:.1} s -> {}",
                factors.layers.len(),
                blocks,
                factors.examples,
                factors.tokens,
                started.elapsed().as_secs_f64(),
                out.display()
            );
            Ok(())
        }
        Command::Influence {
            corpus,
            model,
            factors,
            reference,
            strategy,
            damping_rel,
            damping,
            label_field,
            project,
            project_seed,
            max_tokens,
            out,
        } => {
            let loaded = model::load(&model, DType::F32, &Device::Cpu)
                .with_context(|| format!("loading model {}", model.display()))?;
            let (fitted, header) = store::load(&factors)?;
            if header.model_sha256 != store::model_fingerprint(&model)? {
                bail!(
                    "the factors in {} were fitted on another model ({}); refit them with `quad factors`",
                    factors.display(),
                    header.model
                );
            }
            let opts = FitOptions {
                selection: fitted.selection(),
                per_head: header.per_head,
                context: header.context,
                batch: 4,
                labels: model::Labels::Observed,
            };
            let ref_corpus = CorpusArgs {
                input: reference.clone(),
                ..corpus.clone()
            };
            let mut ref_docs = encode_all(&loaded, &read_texts(&ref_corpus)?)?;
            if let Some(m) = max_tokens {
                for d in &mut ref_docs {
                    model::capture::truncate_predicted(d, m.max(1));
                }
            }
            let ref_grad = influence::factors::mean_gradient(&loaded.model, &ref_docs, &opts)?;
            let damping = match damping {
                Some(d) => Damping::Absolute(d),
                None => Damping::Relative(damping_rel),
            };
            let mut ihvp = ReferenceIhvp::new(&fitted, &ref_grad, strategy, damping)?;
            if let Some(dim) = project {
                if dim == 0 {
                    bail!("--project must be positive");
                }
                ihvp = ihvp.project(influence::Projection { dim, seed: project_seed });
            }
            let mut reader = corpus.open()?;
            let docs: Vec<_> = reader.by_ref().collect::<Result<_, _>>()?;
            eprintln!("{}", reader.report());
            let bar = ProgressBar::new(docs.len() as u64);
            bar.set_style(
                ProgressStyle::with_template("influence: [{bar:30}] {pos}/{len} docs, {per_sec} [{elapsed_precise}<{eta_precise}]")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            let started = Instant::now();
            let scored = influence::score_documents(&loaded, &ihvp, &docs, &opts, max_tokens, || bar.inc(1))?;
            bar.finish_and_clear();
            let secs = started.elapsed().as_secs_f64();
            quad_select::atomic::write_atomic(&out, |w| {
                for (doc, s) in docs.iter().zip(&scored) {
                    let line = match s {
                        Some((score, loss)) => serde_json::json!({"id": doc.id, "score": score, "loss": loss}),
                        None => serde_json::json!({"id": doc.id, "score": null, "loss": null, "skipped": "fewer than two tokens"}),
                    };
                    serde_json::to_writer(&mut *w, &line)?;
                    w.write_all(b"\n")?;
                }
                Ok(())
            })
            .with_context(|| format!("writing {}", out.display()))?;
            let n_scored = scored.iter().flatten().count();
            println!(
                "scored {} documents ({} skipped: fewer than two tokens) with {:?} in {:.1} s ({:.2} docs/s) -> {}",
                n_scored,
                docs.len() - n_scored,
                strategy,
                secs,
                docs.len() as f64 / secs.max(1e-9),
                out.display()
            );
            if let Some(field) = label_field {
                let mut by: std::collections::BTreeMap<String, (f64, usize)> = Default::default();
                for (doc, s) in docs.iter().zip(&scored) {
                    if let Some((score, _)) = s {
                        let e = by.entry(doc.field(&field).unwrap_or_default()).or_default();
                        e.0 += score;
                        e.1 += 1;
                    }
                }
                let mut rows: Vec<_> = by.into_iter().map(|(k, (s, n))| (k, s / n as f64, n)).collect();
                rows.sort_by(|a, b| b.1.total_cmp(&a.1));
                println!("mean influence by {field} (highest first):");
                for (k, mean, n) in rows {
                    println!("  {k:<16} {mean:>12.4e}  ({n} docs)");
                }
            }
            Ok(())
        }
        Command::Validate {
            corpus,
            reference,
            model,
            damping_rel,
            fisher,
            layers,
            tokens,
            out,
        } => {
            let pool = read_texts(&corpus)?;
            let ref_corpus = CorpusArgs {
                input: reference.clone(),
                ..corpus.clone()
            };
            let refs = read_texts(&ref_corpus)?;
            let model_dir = match model {
                Some(m) => m,
                None => {
                    let dir = out.join("tiny-model");
                    let params = influence::validate::tiny_proxy_params();
                    let report = train::train_proxy(pool.clone(), &params, &dir, |_| {})?;
                    eprintln!(
                        "trained a tiny model ({} parameters): validation loss {:.3} -> {:.3}",
                        report.parameters, report.initial_val_loss, report.final_val_loss
                    );
                    dir
                }
            };
            let loaded = model::load(&model_dir, DType::F64, &Device::Cpu)?;
            let (per_head, whole) = influence::validate::validate_texts(
                &loaded,
                &pool,
                &refs,
                tokens,
                damping_rel,
                fisher.labels(),
                &layers,
            )?;
            println!("per-head attention factors:\n{per_head}\nwhole-layer factors:\n{whole}");
            let path = out.join("validate.json");
            let json = serde_json::to_string_pretty(&serde_json::json!({"per_head": per_head, "whole_layer": whole}))?;
            quad_select::atomic::write_string_atomic(&path, &json)?;
            Ok(())
        }
    }
}

fn proxy_train(corpus: &CorpusArgs, args: &ProxyArgs, out: &std::path::Path) -> Result<()> {
    let params = args.params();
    let mut reader = corpus.open()?;
    let texts = reader.by_ref().map(|d| d.map(|d| d.text)).collect::<Result<Vec<_>, _>>()?;
    eprintln!("{}", reader.report());
    let bar = ProgressBar::new(params.steps as u64);
    bar.set_style(
        ProgressStyle::with_template("proxy: [{bar:30}] step {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut val = f64::NAN;
    let report = train::train_proxy(texts, &params, out, |ev| match ev {
        TrainEvent::TokenizerReady { vocab } => bar.println(format!("tokenizer: {vocab} tokens")),
        TrainEvent::Step { step, loss, .. } => {
            bar.set_position(step as u64);
            bar.set_message(format!("loss {loss:.3} val {val:.3}"));
        }
        TrainEvent::Validated { val_loss, .. } => val = val_loss,
    })?;
    bar.finish_and_clear();
    println!(
        "proxy: {} parameters, {} steps in {:.0} s on {} training docs ({} tokens); validation loss {:.4} -> {:.4} ({:.1}% of start)",
        report.parameters,
        report.steps,
        report.seconds,
        report.train_docs,
        report.train_tokens,
        report.initial_val_loss,
        report.final_val_loss,
        100.0 * report.final_val_loss / report.initial_val_loss
    );
    println!("wrote {}", out.display());
    Ok(())
}

fn read_texts(corpus: &CorpusArgs) -> Result<Vec<String>> {
    let mut reader = corpus.open()?;
    let texts = reader.by_ref().map(|d| d.map(|d| d.text)).collect::<Result<Vec<_>, _>>()?;
    eprintln!("{}: {}", corpus.input.display(), reader.report());
    Ok(texts)
}

fn encode_all(loaded: &model::LoadedModel, texts: &[String]) -> Result<Vec<Vec<u32>>> {
    texts.iter().map(|t| Ok(loaded.encode(t)?)).collect()
}

/// Streams the corpus through the chosen embedder with a progress bar; with `label_field`, also
/// collects each document's label (in embedding order).
fn embed_corpus(
    corpus: &CorpusArgs,
    args: &EmbedderArgs,
    label_field: Option<&str>,
) -> Result<(Embeddings, Option<Vec<String>>, ReadReport, f64)> {
    let embedder = quad_select::make_embedder(
        args.model.as_deref(),
        BertOptions {
            max_seq_length: args.max_seq_length,
            batch_size: args.batch_size,
        },
        args.hashing_dim,
    )
    .with_context(|| match &args.model {
        Some(m) => format!("loading embedding model {}", m.display()),
        None => "building the hashing embedder".into(),
    })?;
    let mut reader = corpus.open()?;
    let bar = spinner("embedding");
    let started = Instant::now();
    let mut labels = label_field.map(|_| Vec::new());
    let mut missing_label = 0usize;
    let emb = embed::embed_documents(
        reader.by_ref(),
        embedder.as_ref(),
        args.batch_size.max(1) * 8,
        |doc| {
            if let (Some(f), Some(v)) = (label_field, labels.as_mut()) {
                let label = doc.field(f).unwrap_or_else(|| {
                    missing_label += 1;
                    String::new()
                });
                v.push(label);
            }
        },
        |n| bar.inc(n as u64),
    )?;
    bar.finish_and_clear();
    if missing_label > 0 {
        eprintln!(
            "note: {missing_label} documents have no '{}' field; they count as label \"\"",
            label_field.unwrap_or_default()
        );
    }
    if emb.ids.is_empty() {
        bail!("{}: no documents to embed", corpus.input.display());
    }
    Ok((emb, labels, reader.into_report(), started.elapsed().as_secs_f64()))
}

/// Reads the label field for each id, in the order of `ids` (for embeddings computed earlier).
fn labels_by_id(corpus: &CorpusArgs, field: &str, ids: &[String]) -> Result<Vec<String>> {
    let mut by_id = std::collections::HashMap::new();
    for doc in corpus.open()? {
        let doc = doc?;
        let label = doc.field(field).unwrap_or_default();
        by_id.insert(doc.id, label);
    }
    ids.iter()
        .map(|id| {
            by_id.get(id).cloned().with_context(|| {
                format!("document {id:?} of the embeddings is not in {}", corpus.input.display())
            })
        })
        .collect()
}

fn spinner(what: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix}: {pos} docs, {per_sec} [{elapsed_precise}]")
            .expect("valid template"),
    );
    bar.set_prefix(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix}: [{bar:30}] iter {pos} {msg} [{elapsed_precise}]")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}
