#![allow(dead_code)]
//! What the experiment drivers share: the held-out split and evaluation sets, one select + eval
//! run as a row (resumable: a finished row is read back instead of rerun), statistics.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use quad_select::bandit::Budget;
use quad_select::corpus::{CorpusConfig, CorpusReader};
use quad_select::eval::{self, EvalResult, SelectionStats};
use quad_select::model::train::ProxyParams;
use quad_select::select::{Event, ManifestSummary, Observer, SelectConfig, Selection, Selector};

/// One evaluated selection.
#[derive(serde::Serialize, serde::Deserialize, Clone)]
pub struct Row {
    pub selector: String,
    /// The swept parameter's value, when the row belongs to a sweep.
    #[serde(default)]
    pub value: Option<f64>,
    pub seed: u64,
    pub eval: EvalResult,
    pub selection: SelectionStats,
    pub scored_fraction: f64,
    pub select_seconds: f64,
}

/// Stage names, progress in tenths and round lines on stderr (for long unattended runs).
pub struct Log {
    last: Option<u64>,
}

impl Log {
    pub fn new() -> Self {
        Self { last: None }
    }
}

impl Observer for Log {
    fn event(&mut self, event: Event<'_>) -> ControlFlow<()> {
        match event {
            Event::Stage { name, cached } => {
                self.last = None;
                eprintln!("  {name}{}", if cached { ": cached" } else { " ..." });
            }
            Event::Progress { done, total } => {
                let tenth = if total > 0 { done * 10 / total } else { 0 };
                if self.last.replace(tenth) != Some(tenth) {
                    eprintln!("    {done}/{total}");
                }
            }
            Event::Round { log, best_index, .. } => eprintln!(
                "  round {}: {} tokens, scored {}, accepted {}, best CS {best_index:.3}",
                log.round, log.tokens_selected, log.scored, log.accepted
            ),
            Event::Note(line) => eprintln!("  {line}"),
            Event::StageDone { .. } => {}
        }
        ControlFlow::Continue(())
    }
}

/// Selects from `pool` for `reference` with `cfg` through the library API, resuming from
/// `out/checkpoint.json`, and writes the output folder `out`.
pub fn select_into(cfg: SelectConfig, pool: &Path, reference: &Path, budget: Budget, cache: &Path, out: &Path) -> Result<Selection> {
    std::fs::create_dir_all(out)?;
    let selector = Selector::new(cfg.check()?).cache(cache).checkpoint(out.join("checkpoint.json"), true);
    let selection = selector.select(pool, reference, budget, &mut Log::new())?;
    selection.write(out)?;
    Ok(selection)
}

/// The number of clusters a finished run used (the rows of its `clusters.csv`).
pub fn cluster_count(run_dir: &Path) -> Result<usize> {
    let text = std::fs::read_to_string(run_dir.join("clusters.csv"))?;
    Ok(text.lines().count().saturating_sub(1))
}

/// The scored fraction recorded in a finished run's `manifest.json`.
pub fn scored_fraction(run_dir: &Path) -> Result<f64> {
    Ok(ManifestSummary::read(&run_dir.join("manifest.json"))?.documents.scored_fraction)
}

/// Evaluation sets and settings, fixed for every selection compared.
pub struct Setup {
    pub split: PathBuf,
    pub tokenizer: tokenizers::Tokenizer,
    pub reference: PathBuf,
    pub reference_texts: Vec<String>,
    pub heldout: Vec<(String, String)>,
    pub params: ProxyParams,
    pub cache: PathBuf,
    pub budget: usize,
}

pub fn read_records(path: &Path) -> Result<(Vec<String>, Vec<serde_json::Value>)> {
    let (docs, _) = CorpusReader::read_all(path, CorpusConfig::default()).with_context(|| path.display().to_string())?;
    let recs = docs.iter().map(|d| serde_json::from_str(&d.record)).collect::<Result<_, _>>()?;
    Ok((docs.into_iter().map(|d| d.text).collect(), recs))
}

pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    let v = if xs.len() > 1 { xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (m, v.sqrt())
}

/// `../shared` (or QUAD_SHARED).
pub fn shared() -> PathBuf {
    std::env::var_os("QUAD_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"))
}

impl Setup {
    /// Splits `pool` once into `split_dir` (held-out documents per domain, evaluation tokenizer),
    /// and loads the evaluation sets. `quick` shrinks the held-out set and the evaluation model.
    pub fn new(pool: &Path, reference: &Path, split_dir: &Path, cache: &Path, budget: usize, quick: bool) -> Result<Self> {
        if !split_dir.join(eval::SPLIT_TOKENIZER).exists() {
            eprintln!("splitting held-out documents off {}", pool.display());
            let (docs, _) = CorpusReader::read_all(pool, CorpusConfig::default())?;
            eval::write_split(&docs, "domain", if quick { 5 } else { 20 }, 0, 4096, split_dir)?;
        }
        let tokenizer = tokenizers::Tokenizer::from_file(split_dir.join(eval::SPLIT_TOKENIZER))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let (reference_texts, _) = read_records(reference)?;
        let (texts, recs) = read_records(&split_dir.join(eval::SPLIT_HELDOUT))?;
        let heldout = recs
            .iter()
            .map(|r| r["domain"].as_str().unwrap_or("(none)").to_string())
            .zip(texts)
            .collect();
        let params = if quick { eval::eval_params_quick() } else { eval::eval_params() };
        Ok(Self {
            split: split_dir.to_path_buf(),
            tokenizer,
            reference: reference.to_path_buf(),
            reference_texts,
            heldout,
            params,
            cache: cache.to_path_buf(),
            budget,
        })
    }

    /// Runs `quad select` with `cfg` into `runs_dir/name` and evaluates the selection with `seed`;
    /// the row is saved as `rows_dir/name.json` and read back on a rerun.
    /// Selects and evaluates one point; `None` in select-only mode (see [`select_only`]) when its
    /// evaluation is not there yet.
    pub fn run_point(&self, cfg: SelectConfig, rows_dir: &Path, name: &str, value: Option<f64>, seed: u64) -> Result<Option<Row>> {
        let result = rows_dir.join(format!("{name}.json"));
        if let Ok(text) = std::fs::read_to_string(&result) {
            return Ok(Some(serde_json::from_str(&text)?));
        }
        let selector = cfg.bandit.policy.to_string();
        let out = rows_dir.join("runs").join(name);
        eprintln!("select {name}");
        let started = std::time::Instant::now();
        let selection =
            select_into(cfg, &self.split.join(eval::SPLIT_POOL), &self.reference, Budget::Tokens(self.budget), &self.cache, &out)?;
        let select_seconds = started.elapsed().as_secs_f64();
        let k = selection.clusters.len();
        let (texts, recs) = read_records(&out.join("selected.jsonl"))?;
        let Some(ev) = self.evaluation(rows_dir, name, &texts, seed)? else { return Ok(None) };
        let row = Row {
            selector,
            value,
            seed,
            selection: eval::selection_stats(&recs, k, "domain").map_err(anyhow::Error::msg)?,
            eval: ev,
            scored_fraction: selection.scored_fraction(),
            select_seconds,
        };
        std::fs::create_dir_all(rows_dir)?;
        quad_select::atomic::write_string_atomic(&result, &serde_json::to_string_pretty(&row)?)?;
        eprintln!("{name}: reference loss {:.4}", row.eval.reference_loss);
        Ok(Some(row))
    }

    /// The evaluation of a selection: one made elsewhere (`ROWS/evals/NAME.json`, as `quad eval
    /// run --out` writes it), else a fresh one, or `None` in select-only mode.
    fn evaluation(&self, rows_dir: &Path, name: &str, texts: &[String], seed: u64) -> Result<Option<eval::EvalResult>> {
        let made = rows_dir.join("evals").join(format!("{name}.json"));
        if let Ok(text) = std::fs::read_to_string(&made) {
            let v: serde_json::Value = serde_json::from_str(&text)?;
            eprintln!("eval {name}: from {}", made.display());
            return Ok(Some(serde_json::from_value(v["eval"].clone())?));
        }
        if select_only() {
            eprintln!("eval {name}: deferred (select-only)");
            return Ok(None);
        }
        eprintln!("eval {name}");
        Ok(Some(eval::evaluate(texts, &self.tokenizer, &self.reference_texts, &self.heldout, &self.params, seed)?))
    }

    /// Evaluates a fixed list of texts (e.g. a one-domain sanity selection) as a row.
    pub fn run_texts(&self, texts: &[String], recs: &[serde_json::Value], rows_dir: &Path, name: &str, selector: &str, k: usize, seed: u64) -> Result<Option<Row>> {
        let result = rows_dir.join(format!("{name}.json"));
        if let Ok(text) = std::fs::read_to_string(&result) {
            return Ok(Some(serde_json::from_str(&text)?));
        }
        // The selection as a file too, so it can be evaluated elsewhere like the others.
        let sel = rows_dir.join("runs").join(name).join("selected.jsonl");
        std::fs::create_dir_all(sel.parent().expect("has a parent"))?;
        quad_select::atomic::write_atomic(&sel, |w| {
            for r in recs {
                writeln!(w, "{r}")?;
            }
            Ok(())
        })?;
        let Some(ev) = self.evaluation(rows_dir, name, texts, seed)? else { return Ok(None) };
        let row = Row {
            selector: selector.into(),
            value: None,
            seed,
            selection: eval::selection_stats(recs, k, "domain").map_err(anyhow::Error::msg)?,
            eval: ev,
            scored_fraction: 0.0,
            select_seconds: 0.0,
        };
        std::fs::create_dir_all(rows_dir)?;
        quad_select::atomic::write_string_atomic(&result, &serde_json::to_string_pretty(&row)?)?;
        Ok(Some(row))
    }
}

/// Select-only mode (`QUAD_SELECT_ONLY` set): make every selection, defer the evaluations (for
/// running them elsewhere with `quad eval run`, results under `ROWS/evals/`), write no tables.
pub fn select_only() -> bool {
    std::env::var_os("QUAD_SELECT_ONLY").is_some()
}

/// Writes rows as CSV (held-out loss per domain as columns).
pub fn write_csv(path: &Path, rows: &[Row]) -> Result<()> {
    let domains: Vec<String> = rows.first().map(|r| r.eval.heldout_loss.keys().cloned().collect()).unwrap_or_default();
    quad_select::atomic::write_atomic(path, |w| {
        write!(w, "selector,value,seed,reference_loss,heldout_mean,cluster_entropy,clusters_touched,mean_score,scored_fraction,selection_tokens,select_seconds,eval_seconds")?;
        for d in &domains {
            write!(w, ",heldout_{d}")?;
        }
        writeln!(w)?;
        for r in rows {
            write!(
                w,
                "{},{},{},{:.5},{:.5},{:.4},{},{},{:.4},{},{:.1},{:.1}",
                r.selector,
                r.value.map_or(String::new(), |v| v.to_string()),
                r.seed,
                r.eval.reference_loss,
                r.eval.heldout_mean,
                r.selection.cluster_entropy,
                r.selection.clusters_touched,
                r.selection.mean_score.map_or(String::new(), |s| format!("{s:.4}")),
                r.scored_fraction,
                r.eval.selection_tokens,
                r.select_seconds,
                r.eval.seconds
            )?;
            for d in &domains {
                write!(w, ",{:.5}", r.eval.heldout_loss.get(d).copied().unwrap_or(f64::NAN))?;
            }
            writeln!(w)?;
        }
        Ok(())
    })?;
    Ok(())
}

/// Replaces the text between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in experiments/README.md.
pub fn update_readme(name: &str, body: &str) -> Result<()> {
    let readme = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("experiments/README.md");
    let text = std::fs::read_to_string(&readme)?;
    let (b, e) = (format!("<!-- {name}:begin -->"), format!("<!-- {name}:end -->"));
    if let (Some(i), Some(j)) = (text.find(&b), text.find(&e)) {
        let new = format!("{}{b}\n{body}{}", &text[..i], &text[j..]);
        quad_select::atomic::write_string_atomic(&readme, &new)?;
    }
    Ok(())
}

/// The flags the comparison and the sweeps share, and the defaults they resolve to.
#[derive(clap::Args)]
pub struct ComparisonArgs {
    /// CI-sized: pool-small, tiny models, 40k tokens.
    #[arg(long)]
    pub quick: bool,
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Budget in tokens (default 400000, or 40000 with --quick).
    #[arg(long)]
    pub budget_tokens: Option<usize>,
    #[arg(long)]
    pub cache: Option<PathBuf>,
}

impl ComparisonArgs {
    /// The comparison's name: its config (`experiments/NAME.toml`) and its results folder.
    pub fn name(&self) -> &'static str {
        if self.quick { "compare-quick" } else { "compare" }
    }

    pub fn budget(&self) -> usize {
        self.budget_tokens.unwrap_or(if self.quick { 40_000 } else { 400_000 })
    }

    pub fn pool(&self) -> PathBuf {
        shared().join(if self.quick { "data/pool-small.jsonl" } else { "data/pool.jsonl" })
    }

    pub fn cache(&self) -> PathBuf {
        self.cache.clone().unwrap_or_else(|| repo().join(".quad-cache"))
    }

    /// `experiments/NAME.toml`.
    pub fn config(&self) -> PathBuf {
        repo().join("experiments").join(format!("{}.toml", self.name()))
    }
}

/// The repository.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A run's proxy, factors and reference gradient, named by their entries in a `quad select`
/// cache (the flags of the scoring experiments).
#[derive(clap::Args)]
pub struct CachedScoring {
    /// The cache folder the names below are in.
    #[arg(long)]
    pub cache: PathBuf,
    /// The proxy's folder in the cache (proxy-KEY).
    #[arg(long)]
    pub proxy: String,
    /// The factors' folder in the cache (factors-KEY).
    #[arg(long)]
    pub factors: String,
    /// The reference gradient in the cache (refgrad-KEY.safetensors).
    #[arg(long)]
    pub refgrad: String,
}

impl CachedScoring {
    /// The proxy's folder.
    pub fn proxy_path(&self) -> PathBuf {
        self.cache.join(&self.proxy)
    }

    /// The proxy and the reference iHVP, as `quad select` forms them with `cfg`.
    pub fn load(
        &self,
        cfg: &quad_select::select::ValidSelectConfig,
    ) -> Result<(quad_select::model::LoadedModel, quad_select::influence::ReferenceIhvp)> {
        use quad_select::influence::{stage, store};
        let loaded = quad_select::model::load(&self.proxy_path(), candle_core::DType::F32, &candle_core::Device::Cpu)?;
        let (factors, _) = store::load(&self.cache.join(&self.factors), &loaded.model.config)?;
        let layer_ids = cfg.factors.layers.layers(loaded.model.config.num_hidden_layers);
        let grad = store::load_layers(&self.cache.join(&self.refgrad), &layer_ids, &loaded.model.config)?;
        let ihvp = stage::reference_ihvp(Some(&factors), &grad, cfg.factors.per_head, &cfg.scoring)?;
        Ok((loaded, ihvp))
    }
}
