//! Selection quality against the random/top-k frontier, on held-out reference halves, at several
//! budgets: the measurement of "Quad must win at its defaults".
//!
//! For every reference set, the set is split once into a *target* half (given to the selector)
//! and an *evaluation* half (used only to measure loss), whole articles to one side
//! (`quad_select::eval::split_reference`). The pool is split once into the selectable pool and
//! held-out documents per domain (as `compare` does). For every (reference, budget, selector,
//! seed) the selection is made with `quad select` and evaluated with `quad eval`'s fixed model,
//! trained for `eval::EVAL_PASSES` passes over the budget (the same compute for every selector at
//! a budget). Selectors: `random`, `uniform`, `topk`, `mix-P` (a fraction P of the budget from
//! `topk`, the rest at random), `ucb` (the tool's defaults) and `ucb:KEY=V+KEY=V...` (the
//! defaults with bandit keys changed, for sweeps; values in TOML syntax, e.g.
//! `ucb:gamma=0.0+chunk=32+explore_first=false`), and `predicted` / `predicted:KEY=V...` (the
//! learned-estimator peer at Quad's scoring allowance, `PolicyName::Predicted`).
//!
//! ```sh
//! # The grid of the issue (2 references × 3 budgets), 3 seeds, evaluations 2 at a time.
//! cargo run --release --example frontier -- --seeds 3 --jobs 2
//! # Only some of it (names as in the tables):
//! cargo run --release --example frontier -- --references wiki --budgets 400000 --selectors topk,ucb --seeds 1
//! # CI-sized (pool-small, tiny models): tests/compare_quick.rs runs this.
//! cargo run --release --example frontier -- --quick --seeds 1
//! ```
//!
//! Output under `--out` (default experiments/results/frontier): `split/` (pool split, git-ignored),
//! `ref-NAME/{target,eval}.jsonl` (the reference halves), and per setting `NAME-BUDGET/`:
//! `runs/RUN/` (the selection, git-ignored), `evals/RUN.json` (`quad eval run` output), `RUN.json`
//! (the finished row), `table.md`, `rows.csv` and `frontier.png`. Finished selections and
//! evaluations are reused on a rerun, so an interrupted experiment continues where it stopped.
//! With `--select-only` every selection is made and no evaluation is run (they can be run
//! elsewhere with the printed `quad eval run` lines, into `evals/`).

#[path = "harness.rs"]
mod harness;
#[path = "plot.rs"]
mod plot;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use harness::{cluster_count, mean_std, read_records, scored_fraction, select_into, update_readme, write_csv, Row};
use quad_select::bandit::{Budget, PolicyName};
use quad_select::corpus::{CorpusConfig, CorpusReader};
use quad_select::eval;
use quad_select::select::SelectConfig;

/// Selectors that take `NAME:KEY=V+KEY=V` (bandit keys changed from the defaults).
const SWEEPABLE: [&str; 5] = ["ucb", "predicted", "dsir", "classifier", "perplexity"];

/// Selectors at the middle budget and at the others (the issue's grid).
const FULL_SELECTORS: [&str; 7] = ["random", "uniform", "topk", "mix-0.25", "mix-0.5", "mix-0.75", "ucb"];
const SMALL_SELECTORS: [&str; 4] = ["random", "topk", "mix-0.5", "ucb"];
const GRID_BUDGETS: [usize; 3] = [200_000, 400_000, 1_600_000];
const FULL_GRID_BUDGET: usize = 400_000;

pub struct Opts {
    pub quick: bool,
    /// (name, path) of each reference set.
    pub references: Vec<(String, PathBuf)>,
    pub budgets: Vec<usize>,
    /// Selectors for every budget; none: the issue's grid.
    pub selectors: Option<Vec<String>>,
    pub seeds: u64,
    /// Evaluations run at a time.
    pub jobs: usize,
    pub select_only: bool,
    pub out: PathBuf,
    pub cache: PathBuf,
    pub pool: PathBuf,
    pub config: SelectConfig,
    /// Write the tables into experiments/README.md.
    pub readme: bool,
    /// The `quad` binary that runs the evaluations.
    pub quad: PathBuf,
    /// External rankings evaluated beside the selectors: (name, path template).
    pub external: Vec<(String, String)>,
}

/// Selection quality against the random/top-k frontier (see the module docs).
#[derive(clap::Parser)]
struct Args {
    /// CI-sized: pool-small, tiny models, one 40k budget.
    #[arg(long)]
    quick: bool,
    /// Reference sets: wiki, abstracts or NAME=PATH, comma-separated.
    #[arg(long, default_value = "wiki,abstracts")]
    references: String,
    /// Budgets in tokens, comma-separated (default: the grid, or 40000 with --quick).
    #[arg(long, value_delimiter = ',')]
    budgets: Option<Vec<usize>>,
    /// Selectors, comma-separated (default: the issue's grid).
    #[arg(long, value_delimiter = ',')]
    selectors: Option<Vec<String>>,
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// Evaluations run at a time.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    jobs: u64,
    /// Make every selection, run no evaluation.
    #[arg(long)]
    select_only: bool,
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    cache: Option<PathBuf>,
    /// A `quad select` TOML the selections start from (default: the tool's defaults).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Write the tables into experiments/README.md (default: for the full default run).
    #[arg(long)]
    readme: bool,
    /// An external selector, NAME=PATH: a JSONL ranking of the selectable pool (one `{"id": …}`
    /// a line, best first; ids not in the pool are refused), taken in order until the budget is
    /// met in the proxy's tokens, as `quad select` meets it. `{reference}`, `{budget}` and
    /// `{seed}` in PATH are replaced by the setting's (e.g. experiments/results/anchors/
    /// dsir-{reference}-s{seed}.jsonl). A file PATH.seconds, if there, holds its wall time.
    /// Repeat or comma-separate.
    #[arg(long, value_delimiter = ',')]
    external: Vec<String>,
}

fn parse() -> Result<Opts> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shared = harness::shared();
    let a = <Args as clap::Parser>::parse();
    let (quick, refs, budgets, selectors, seeds, jobs, select_only, out, cache, config) =
        (a.quick, a.references, a.budgets, a.selectors, a.seeds, a.jobs as usize, a.select_only, a.out, a.cache, a.config);
    let readme = a.readme.then_some(true);
    let external = a
        .external
        .iter()
        .map(|e| e.split_once('=').map(|(n, p)| (n.to_string(), p.to_string())).with_context(|| format!("--external {e}: expected NAME=PATH")))
        .collect::<Result<Vec<_>>>()?;

    let data = shared.join("data");
    let references = refs
        .split(',')
        .map(|r| match r.split_once('=') {
            Some((name, path)) => Ok((name.to_string(), PathBuf::from(path))),
            None if ["wiki", "abstracts"].contains(&r) => Ok((r.to_string(), data.join(format!("reference-{r}.jsonl")))),
            None => bail!("unknown reference {r:?}: give wiki, abstracts or NAME=PATH"),
        })
        .collect::<Result<Vec<_>>>()?;
    let budgets = budgets.unwrap_or_else(|| if quick { vec![40_000] } else { GRID_BUDGETS.to_vec() });
    // The tables go into experiments/README.md for the default full run, or when asked.
    let readme = readme.unwrap_or(!quick && out.is_none());
    let config = match (config, quick) {
        (Some(p), _) => SelectConfig::from_toml_file(&p)?,
        (None, true) => SelectConfig::from_toml_file(&repo.join("experiments/compare-quick.toml"))?,
        // The tool's defaults: what `quad select` does with no flags.
        (None, false) => SelectConfig::default(),
    };
    Ok(Opts {
        quick,
        references,
        budgets,
        selectors,
        seeds,
        jobs,
        select_only,
        out: out.unwrap_or_else(|| repo.join("experiments/results").join(if quick { "frontier-quick" } else { "frontier" })),
        cache: cache.unwrap_or_else(|| repo.join(".quad-cache")),
        pool: data.join(if quick { "pool-small.jsonl" } else { "pool.jsonl" }),
        config,
        readme,
        quad: quad_binary(),
        external,
    })
}

/// A selector named in the tables: its configuration and, for mixtures, its top-k fraction.
struct Selector {
    name: String,
    mix: Option<f64>,
    /// The path template of an external ranking (`--external`).
    external: Option<String>,
}

impl Selector {
    fn parse(spec: &str) -> Result<Self> {
        let mix = match spec {
            "random" => Some(0.0),
            "topk" => Some(1.0),
            s if s.starts_with("mix-") => Some(s[4..].parse::<f64>().with_context(|| format!("selector {s}"))?),
            "uniform" | "ucb" | "greedy" | "thompson" | "predicted" | "dsir" | "classifier" | "perplexity" => None,
            s if SWEEPABLE.iter().any(|p| s.starts_with(&format!("{p}:"))) => None,
            s => bail!("unknown selector {s:?}"),
        };
        Ok(Self { name: spec.to_string(), mix, external: None })
    }

    /// The run's configuration: `base` with this selector's policy and the seed.
    fn config(&self, base: &SelectConfig, seed: u64) -> Result<SelectConfig> {
        let mut c = base.clone();
        c.bandit.seed = seed;
        c.bandit.policy = match self.name.as_str() {
            "random" => PolicyName::Random,
            "topk" => PolicyName::Topk,
            "uniform" => PolicyName::Uniform,
            "greedy" => PolicyName::Greedy,
            "thompson" => PolicyName::Thompson,
            s if s == "predicted" || s.starts_with("predicted:") => PolicyName::Predicted,
            s if s == "dsir" || s.starts_with("dsir:") => PolicyName::Dsir,
            s if s == "classifier" || s.starts_with("classifier:") => PolicyName::Classifier,
            s if s == "perplexity" || s.starts_with("perplexity:") => PolicyName::Perplexity,
            s if s.starts_with("mix-") => {
                c.bandit.mix = self.mix.expect("parsed");
                PolicyName::Mix
            }
            _ => PolicyName::Ucb,
        };
        if let Some(keys) = SWEEPABLE.iter().find_map(|p| self.name.strip_prefix(&format!("{p}:"))) {
            // Keys as TOML: bandit keys by name (ucb:gamma=1.0+chunk=16), others by section
            // (ucb:cluster.k=64).
            let mut table = toml::Table::try_from(&c)?;
            for kv in keys.split('+') {
                let (k, v) = kv.split_once('=').with_context(|| format!("{kv}: expected KEY=VALUE"))?;
                let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {v}"))?["v"].clone();
                let (section, key) = k.split_once('.').unwrap_or(("bandit", k));
                table
                    .get_mut(section)
                    .and_then(toml::Value::as_table_mut)
                    .with_context(|| format!("{kv}: no section {section}"))?
                    .insert(key.to_string(), value);
            }
            c = table.try_into().with_context(|| format!("selector {}", self.name))?;
        }
        Ok(c)
    }

    /// The run's file name (no characters a shell or a file system would mind).
    fn run_name(&self, seed: u64) -> String {
        let clean: String = self.name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect();
        format!("{clean}-s{seed}")
    }
}

fn budget_label(b: usize) -> String {
    if b % 1_000_000 == 0 {
        format!("{}M", b / 1_000_000)
    } else if b % 100_000 == 0 && b > 1_000_000 {
        format!("{:.1}M", b as f64 / 1e6)
    } else if b % 1000 == 0 {
        format!("{}k", b / 1000)
    } else {
        b.to_string()
    }
}

/// One (reference, budget) setting.
struct Setting {
    reference: String,
    budget: usize,
    dir: PathBuf,
    target: PathBuf,
    eval: PathBuf,
    selectors: Vec<Selector>,
}

/// An evaluation still to run: one trained model, measured on each (reference, output) pair.
struct EvalJob {
    selection: PathBuf,
    targets: Vec<(PathBuf, PathBuf)>,
    seed: u64,
    steps: usize,
    k: usize,
    /// (selector, budget, seed) of a selection that does not depend on the reference.
    shared: Option<(String, usize, u64)>,
}

/// The ids of a selection, in order.
fn selection_ids(path: &Path) -> Result<Vec<String>> {
    let (docs, _) = CorpusReader::read_all(path, CorpusConfig::default()).with_context(|| path.display().to_string())?;
    Ok(docs.into_iter().map(|d| d.id).collect())
}

fn main() -> Result<()> {
    quad_select::influence::prefer_document_parallelism();
    quad_select::tune_allocator();
    print!("{}", run(&parse()?)?);
    Ok(())
}

/// Runs (or continues) the experiment; returns the tables as Markdown.
pub fn run(o: &Opts) -> Result<String> {
    std::fs::create_dir_all(&o.out)?;

    // Splits: the pool's held-out documents, and each reference's halves.
    let split = o.out.join("split");
    if !split.join(eval::SPLIT_TOKENIZER).exists() {
        eprintln!("splitting held-out documents off {}", o.pool.display());
        let (docs, _) = CorpusReader::read_all(&o.pool, CorpusConfig::default())?;
        eval::write_split(&docs, "domain", if o.quick { 5 } else { 20 }, 0, 4096, &split)?;
    }
    let mut settings = Vec::new();
    for (name, path) in &o.references {
        let dir = o.out.join(format!("ref-{name}"));
        if !dir.join(eval::REFERENCE_EVAL).exists() {
            let (docs, _) = CorpusReader::read_all(path, CorpusConfig::default()).with_context(|| path.display().to_string())?;
            let (t, e) = eval::write_reference_split(&docs, 0, &dir)?;
            eprintln!("{name}: {t} target and {e} evaluation documents -> {}", dir.display());
        }
        for &budget in &o.budgets {
            let specs: Vec<String> = match &o.selectors {
                Some(s) => s.clone(),
                None if o.quick || budget == FULL_GRID_BUDGET => FULL_SELECTORS.iter().map(|s| s.to_string()).collect(),
                None => SMALL_SELECTORS.iter().map(|s| s.to_string()).collect(),
            };
            settings.push(Setting {
                reference: name.clone(),
                budget,
                dir: o.out.join(format!("{name}-{}", budget_label(budget))),
                target: dir.join(eval::REFERENCE_TARGET),
                eval: dir.join(eval::REFERENCE_EVAL),
                selectors: specs
                    .iter()
                    .map(|s| Selector::parse(s))
                    .chain(o.external.iter().map(|(name, path)| {
                        Ok(Selector { name: name.clone(), mix: None, external: Some(path.clone()) })
                    }))
                    .collect::<Result<_>>()?,
            });
        }
    }

    // Selections, one after another (they share the cache; scoring uses every core).
    let mut jobs = Vec::new();
    for s in &settings {
        for sel in &s.selectors {
            for seed in 0..o.seeds {
                let name = sel.run_name(seed);
                if s.dir.join(format!("{name}.json")).exists() {
                    continue;
                }
                let run_dir = s.dir.join("runs").join(&name);
                if let Some(template) = &sel.external {
                    let path = template
                        .replace("{reference}", &s.reference)
                        .replace("{budget}", &s.budget.to_string())
                        .replace("{seed}", &seed.to_string());
                    if !run_dir.join("selected.jsonl").exists() {
                        let whole = whole_pool(o, &split, &s.target)?;
                        external_selection(Path::new(&path), &whole, s.budget, &run_dir)?;
                    }
                }
                let cfg = sel.config(&o.config, seed)?;
                if sel.external.is_none() && !run_dir.join("manifest.json").exists() {
                    eprintln!("select {}/{name}", s.dir.file_name().unwrap_or_default().to_string_lossy());
                    let started = std::time::Instant::now();
                    let pool = split.join(eval::SPLIT_POOL);
                    select_into(cfg.clone(), &pool, &s.target, Budget::Tokens(s.budget), &o.cache, &run_dir)?;
                    std::fs::write(run_dir.join("select-seconds"), format!("{}", started.elapsed().as_secs_f64()))?;
                }
                let out = s.dir.join("evals").join(format!("{name}.json"));
                if !out.exists() {
                    let steps = if o.quick { 20 } else { eval::eval_params_for_budget(s.budget).steps };
                    let selection = run_dir.join("selected.jsonl");
                    // `random`, `uniform` and `perplexity` never see the reference: the same selection for every
                    // reference, so one trained model is measured on each reference's half.
                    let shared = matches!(cfg.bandit.policy, PolicyName::Random | PolicyName::Uniform | PolicyName::Perplexity).then(|| (sel.name.clone(), s.budget, seed));
                    if let Some(j) = jobs.iter_mut().find(|j: &&mut EvalJob| shared.is_some() && j.shared == shared) {
                        if selection_ids(&j.selection)? == selection_ids(&selection)? {
                            j.targets.push((s.eval.clone(), out));
                            continue;
                        }
                    }
                    jobs.push(EvalJob {
                        selection,
                        targets: vec![(s.eval.clone(), out)],
                        seed,
                        steps,
                        k: cluster_count(&run_dir)?,
                        shared,
                    });
                }
            }
        }
    }

    // Evaluations.
    if o.select_only {
        let lines: Vec<String> = jobs.iter().map(|j| eval_command(&o.quad, &split, j, o.quick).join(" ")).collect();
        eprintln!("select-only: {} evaluation(s) to run", jobs.len());
        return Ok(lines.join("\n") + "\n");
    }
    run_evals(&o.quad, &split, &jobs, o.jobs, o.quick)?;

    // Rows, tables, plots.
    let mut summary = String::new();
    for s in &settings {
        let rows = collect_rows(s, o.seeds)?;
        let md = table(s, &rows, &o)?;
        quad_select::atomic::write_string_atomic(&s.dir.join("table.md"), &md)?;
        write_csv(&s.dir.join("rows.csv"), &rows)?;
        frontier_plot(s, &rows)?;
        if o.readme {
            // Markers `OUTNAME-REFERENCE-BUDGET`, e.g. frontier-wiki-400k.
            let out_name = o.out.file_name().unwrap_or_default().to_string_lossy();
            let name = format!("{out_name}-{}-{}", s.reference, budget_label(s.budget));
            let png = format!("results/{out_name}/{}/frontier.png", s.dir.file_name().unwrap_or_default().to_string_lossy());
            update_readme(&name, &format!("{md}\n![frontier]({png})\n"))?;
        }
        summary.push_str(&format!("## {} at {} tokens\n\n{md}\n", s.reference, s.budget));
    }
    Ok(summary)
}

/// The whole selectable pool as `quad select` annotates it (each record with its cluster) and
/// each document's tokens in the proxy's tokenizer: a `random` selection of every document,
/// made once into `split/whole-pool/` (the cached clustering and proxy: no scoring).
struct WholePool {
    records: std::collections::HashMap<String, (String, usize)>,
    clusters_csv: PathBuf,
}

fn whole_pool(o: &Opts, split: &Path, reference: &Path) -> Result<WholePool> {
    let dir = split.join("whole-pool");
    let tokens_file = dir.join("tokens.json");
    if !tokens_file.exists() {
        let pool = split.join(eval::SPLIT_POOL);
        let (docs, _) = CorpusReader::read_all(&pool, CorpusConfig::default())?;
        let mut cfg = o.config.clone();
        cfg.bandit.policy = PolicyName::Random;
        let selection = select_into(cfg, &pool, reference, Budget::Documents(docs.len()), &o.cache, &dir)?;
        let tokens: BTreeMap<String, usize> = selection.documents.iter().map(|d| (d.id.clone(), d.tokens)).collect();
        quad_select::atomic::write_string_atomic(&tokens_file, &serde_json::to_string(&tokens)?)?;
    }
    let tokens: BTreeMap<String, usize> = serde_json::from_str(&std::fs::read_to_string(&tokens_file)?)?;
    let (docs, _) = CorpusReader::read_all(&dir.join("selected.jsonl"), CorpusConfig::default())?;
    let records = docs
        .into_iter()
        .map(|d| {
            let t = *tokens.get(&d.id).with_context(|| format!("{}: no token count", d.id))?;
            Ok((d.id, (d.record, t)))
        })
        .collect::<Result<_>>()?;
    Ok(WholePool { records, clusters_csv: dir.join("clusters.csv") })
}

/// An external ranking cut at the budget: its documents in order until their tokens meet
/// `budget` (the last one taken meets it, as `quad select` does), written as `selected.jsonl`
/// with the pool's records and clusters, beside the clustering's `clusters.csv`.
fn external_selection(ranking: &Path, whole: &WholePool, budget: usize, run_dir: &Path) -> Result<()> {
    let text = std::fs::read_to_string(ranking).with_context(|| format!("external ranking {}", ranking.display()))?;
    let mut out = String::new();
    let (mut used, mut seen) = (0usize, std::collections::HashSet::new());
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        if used >= budget {
            break;
        }
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{}:{}", ranking.display(), i + 1))?;
        let id = v["id"].as_str().map(str::to_string).or_else(|| v["id"].as_u64().map(|n| n.to_string()));
        let id = id.with_context(|| format!("{}:{}: no \"id\"", ranking.display(), i + 1))?;
        let (record, tokens) = whole.records.get(&id).with_context(|| format!("{}:{}: {id} is not in the selectable pool", ranking.display(), i + 1))?;
        if !seen.insert(id.clone()) {
            bail!("{}:{}: {id} twice", ranking.display(), i + 1);
        }
        used += tokens;
        out.push_str(record.trim_end());
        out.push('\n');
    }
    if used < budget {
        bail!("{}: the ranking holds {used} tokens, short of the budget of {budget}", ranking.display());
    }
    std::fs::create_dir_all(run_dir)?;
    std::fs::copy(&whole.clusters_csv, run_dir.join("clusters.csv"))?;
    let seconds = std::fs::read_to_string(format!("{}.seconds", ranking.display())).unwrap_or_else(|_| "0".into());
    std::fs::write(run_dir.join("select-seconds"), seconds.trim())?;
    quad_select::atomic::write_string_atomic(&run_dir.join("selected.jsonl"), &out)?;
    Ok(())
}

/// `quad eval run` for one job (the binary built beside this example).
fn eval_command(quad: &Path, split: &Path, j: &EvalJob, quick: bool) -> Vec<String> {
    let mut c = vec![
        quad.display().to_string(),
        "eval".into(),
        "run".into(),
        "--selection".into(),
        j.selection.display().to_string(),
        "--split".into(),
        split.display().to_string(),
        "--seed".into(),
        j.seed.to_string(),
        "--steps".into(),
        j.steps.to_string(),
        "--k".into(),
        j.k.to_string(),
    ];
    for (reference, out) in &j.targets {
        c.extend(["--reference".into(), reference.display().to_string(), "--out".into(), out.display().to_string()]);
    }
    if quick {
        c.push("--quick".into());
    }
    c
}

/// target/release/quad (or QUAD_BIN), next to target/release/examples/frontier.
fn quad_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("QUAD_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent().and_then(Path::parent).map(|p| p.join("quad")).unwrap_or_else(|| PathBuf::from("quad"))
}

/// Runs the evaluations `parallel` at a time, each as a `quad eval run` process with
/// cores / parallel threads.
fn run_evals(quad: &Path, split: &Path, jobs: &[EvalJob], parallel: usize, quick: bool) -> Result<()> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let threads = (cores / parallel).max(1);
    let mut queue = jobs.iter();
    let mut running: Vec<(std::process::Child, &EvalJob, std::time::Instant)> = Vec::new();
    let total = jobs.len();
    let mut done = 0;
    loop {
        while running.len() < parallel {
            let Some(j) = queue.next() else { break };
            for (_, out) in &j.targets {
                std::fs::create_dir_all(out.parent().expect("evals/"))?;
            }
            let cmd = eval_command(quad, split, j, quick);
            let child = std::process::Command::new(&cmd[0])
                .args(&cmd[1..])
                .env("RAYON_NUM_THREADS", threads.to_string())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::inherit())
                .spawn()
                .with_context(|| format!("starting {}", cmd[0]))?;
            running.push((child, j, std::time::Instant::now()));
        }
        if running.is_empty() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        let mut i = 0;
        while i < running.len() {
            if let Some(status) = running[i].0.try_wait()? {
                let (_, j, started) = running.remove(i);
                if !status.success() {
                    bail!("evaluation of {} failed ({status})", j.selection.display());
                }
                done += 1;
                let outs: Vec<String> = j.targets.iter().map(|t| t.1.display().to_string()).collect();
                eprintln!("eval {done}/{total}: {} ({:.0} s)", outs.join(" + "), started.elapsed().as_secs_f64());
            } else {
                i += 1;
            }
        }
    }
}

/// The finished rows of a setting (each saved as `RUN.json` once its evaluation is there).
fn collect_rows(s: &Setting, seeds: u64) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for sel in &s.selectors {
        for seed in 0..seeds {
            let name = sel.run_name(seed);
            let path = s.dir.join(format!("{name}.json"));
            if let Ok(text) = std::fs::read_to_string(&path) {
                rows.push(serde_json::from_str(&text)?);
                continue;
            }
            let run_dir = s.dir.join("runs").join(&name);
            let ev: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(s.dir.join("evals").join(format!("{name}.json")))
                    .with_context(|| format!("evaluation of {name} in {}", s.dir.display()))?,
            )?;
            let (_, recs) = read_records(&run_dir.join("selected.jsonl"))?;
            let k = cluster_count(&run_dir)?;
            let row = Row {
                selector: sel.name.clone(),
                value: sel.mix,
                seed,
                eval: serde_json::from_value(ev["eval"].clone())?,
                selection: eval::selection_stats(&recs, k, "domain").map_err(anyhow::Error::msg)?,
                // An external ranking scored nothing with our proxy (it has no manifest).
                scored_fraction: if sel.external.is_some() { 0.0 } else { scored_fraction(&run_dir)? },
                select_seconds: std::fs::read_to_string(run_dir.join("select-seconds")).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0.0),
            };
            quad_select::atomic::write_string_atomic(&path, &serde_json::to_string_pretty(&row)?)?;
            rows.push(row);
        }
    }
    Ok(rows)
}

/// Mean ± SD of a selector's rows.
struct Stat {
    reference: (f64, f64),
    heldout: (f64, f64),
    entropy: f64,
    scored: f64,
    seeds: usize,
}

fn stats(rows: &[Row]) -> BTreeMap<String, Stat> {
    let mut by: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
    for r in rows {
        by.entry(r.selector.clone()).or_default().push(r);
    }
    by.into_iter()
        .map(|(name, rs)| {
            let f = |g: &dyn Fn(&Row) -> f64| mean_std(&rs.iter().map(|r| g(r)).collect::<Vec<_>>());
            let st = Stat {
                reference: f(&|r| r.eval.reference_loss),
                heldout: f(&|r| r.eval.heldout_mean),
                entropy: f(&|r| r.selection.cluster_entropy).0,
                scored: f(&|r| r.scored_fraction).0,
                seeds: rs.len(),
            };
            (name, st)
        })
        .collect()
}

/// The mixture frontier's reference loss at held-out loss `x`, linear between neighbouring
/// mixture points (in order of their top-k fraction), with the larger SD of the two neighbours.
/// Beyond the frontier's ends it is flat (the end point's loss): a selector more general than
/// `random` must beat `random`'s loss, one less general than `topk` must beat `topk`'s.
pub fn frontier_at(points: &[(f64, (f64, f64), (f64, f64))], x: f64) -> Option<(f64, f64)> {
    let mut p: Vec<_> = points.to_vec();
    p.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (first, last) = (p.first()?, p.last()?);
    let mut best: Option<(f64, f64)> = None;
    for w in p.windows(2) {
        let ((x0, y0s), (x1, y1s)) = ((w[0].1 .0, w[0].2), (w[1].1 .0, w[1].2));
        let (lo, hi) = (x0.min(x1), x0.max(x1));
        if x >= lo && x <= hi && hi > lo {
            let t = (x - x0) / (x1 - x0);
            let y = y0s.0 + t * (y1s.0 - y0s.0);
            let sd = y0s.1.max(y1s.1);
            if best.is_none_or(|b| y < b.0) {
                best = Some((y, sd));
            }
        }
    }
    if best.is_some() {
        return best;
    }
    // Outside every segment: the nearer end in held-out loss.
    let ends = [first, last];
    let near = ends.iter().min_by(|a, b| (a.1 .0 - x).abs().total_cmp(&(b.1 .0 - x).abs()))?;
    Some(near.2)
}

fn table(s: &Setting, rows: &[Row], o: &Opts) -> Result<String> {
    let st = stats(rows);
    let steps = if o.quick { 20 } else { eval::eval_params_for_budget(s.budget).steps };
    let mut md = format!(
        "Reference `{}` (selector sees the target half, losses on the evaluation half), budget {} tokens, pool `{}`, \
         {} seed(s); evaluation model trained {steps} steps × 8 × 256 tokens.\n\n\
         | selector | evaluation-reference loss | held-out loss (mean of domains) | cluster entropy | scored fraction | seeds |\n|---|---|---|---|---|---|\n",
        s.reference,
        s.budget,
        o.pool.file_name().unwrap_or_default().to_string_lossy(),
        o.seeds,
    );
    for sel in &s.selectors {
        let Some(x) = st.get(&sel.name) else { continue };
        md.push_str(&format!(
            "| {} | {:.4} ± {:.4} | {:.4} ± {:.4} | {:.3} | {:.3} | {} |\n",
            sel.name, x.reference.0, x.reference.1, x.heldout.0, x.heldout.1, x.entropy, x.scored, x.seeds
        ));
    }
    // Verdicts for every non-mixture selector that scores (the ucb and predicted rows).
    let mix: Vec<(f64, (f64, f64), (f64, f64))> =
        s.selectors.iter().filter_map(|sel| Some((sel.mix?, st.get(&sel.name)?.heldout, st.get(&sel.name)?.reference))).collect();
    md.push('\n');
    for sel in s.selectors.iter().filter(|sel| sel.name.starts_with("ucb") || sel.name.starts_with("predicted")) {
        let Some(q) = st.get(&sel.name) else { continue };
        if let Some(r) = st.get("random") {
            let sd = q.reference.1.max(r.reference.1);
            let gap = r.reference.0 - q.reference.0;
            md.push_str(&format!("- {} (a) quality: {gap:.4} below random ({}): **{}**\n", sel.name, in_sd(gap, sd), verdict(gap, sd, 3.0)));
        }
        if let Some((fy, fsd)) = frontier_at(&mix, q.heldout.0) {
            let sd = fsd.max(q.reference.1);
            let gap = fy - q.reference.0;
            md.push_str(&format!(
                "- {} (b) beyond the frontier: at held-out {:.4} the mixtures give {fy:.4}, {} {:.4}, {gap:.4} below ({}): **{}**\n",
                sel.name,
                q.heldout.0,
                sel.name,
                q.reference.0,
                in_sd(gap, sd),
                verdict(gap, sd, 1.0)
            ));
        }
        md.push_str(&format!(
            "- {} (c) cost: scored {:.1}% of the pool: **{}**\n",
            sel.name,
            100.0 * q.scored,
            if q.scored <= 0.05 { "PASS" } else { "FAIL" }
        ));
    }
    // (d) Quad against its learned-estimator peer at each temperature: at least 1 SD lower
    // reference loss at equal or better held-out loss.
    for q_sel in s.selectors.iter().filter(|sel| sel.name.starts_with("ucb")) {
        let (Some((qf, t)), Some(q)) = (curve_of(&q_sel.name), st.get(&q_sel.name)) else { continue };
        let peer = s.selectors.iter().find(|p| {
            curve_of(&p.name).is_some_and(|(pf, pt)| pt == t && pf.strip_prefix("predicted") == qf.strip_prefix("ucb"))
        });
        let Some(p) = peer.and_then(|p| Some((p, st.get(&p.name)?))) else { continue };
        let sd = q.reference.1.max(p.1.reference.1);
        let gap = p.1.reference.0 - q.reference.0;
        let held = q.heldout.0 <= p.1.heldout.0 + q.heldout.1.max(p.1.heldout.1);
        md.push_str(&format!(
            "- (d) T = {t}: {} reference {:.4} vs {} {:.4}, {gap:.4} below ({}); held-out {:.4} vs {:.4}: **{}**\n",
            q_sel.name,
            q.reference.0,
            p.0.name,
            p.1.reference.0,
            in_sd(gap, sd),
            q.heldout.0,
            p.1.heldout.0,
            if held { verdict(gap, sd, 1.0) } else { "FAIL (worse held-out loss)" }
        ));
    }
    baseline_verdicts(s, &st, &mut md);
    Ok(md)
}

/// Whether a selector is a practitioners' baseline (issue 33): a signal policy or an external
/// ranking.
fn is_baseline(sel: &Selector) -> bool {
    let base = sel.name.split_once(':').map_or(sel.name.as_str(), |(b, _)| b);
    sel.external.is_some() || matches!(base, "dsir" | "classifier" | "perplexity")
}

/// (d) for the practitioners' baselines: every baseline point at least 1 SD above Quad's
/// temperature curve (`ucb` at its T points, interpolated linearly in held-out loss, flat beyond
/// its ends: [`frontier_at`]) at the baseline's held-out loss; and no baseline point better than
/// the default's on both axes.
fn baseline_verdicts(s: &Setting, st: &BTreeMap<String, Stat>, md: &mut String) {
    let curve: Vec<(f64, (f64, f64), (f64, f64))> = s
        .selectors
        .iter()
        .filter_map(|sel| {
            let (family, t) = curve_of(&sel.name)?;
            let x = st.get(&sel.name)?;
            (family == "ucb").then_some((t, x.heldout, x.reference))
        })
        .collect();
    let default = st.get("ucb");
    let mut ts: Vec<f64> = curve.iter().map(|c| c.0).collect();
    ts.sort_by(f64::total_cmp);
    for sel in s.selectors.iter().filter(|sel| is_baseline(sel)) {
        let Some(b) = st.get(&sel.name) else { continue };
        if curve.len() >= 2 {
            if let Some((y, ysd)) = frontier_at(&curve, b.heldout.0) {
                let sd = ysd.max(b.reference.1);
                let gap = b.reference.0 - y;
                md.push_str(&format!(
                    "- (d) {} against Quad's curve (T = {ts:?}): at held-out {:.4} the curve gives {y:.4}, {} {:.4}, {gap:.4} above ({}): **{}**\n",
                    sel.name,
                    b.heldout.0,
                    sel.name,
                    b.reference.0,
                    in_sd(gap, sd),
                    verdict(gap, sd, 1.0)
                ));
            }
        }
        if let Some(q) = default {
            let dominates = b.reference.0 < q.reference.0 && b.heldout.0 < q.heldout.0;
            md.push_str(&format!(
                "- (d) {} against the default's point: reference {:.4} vs {:.4}, held-out {:.4} vs {:.4}: **{}**\n",
                sel.name,
                b.reference.0,
                q.reference.0,
                b.heldout.0,
                q.heldout.0,
                if dominates { "FAIL (better on both axes)" } else { "PASS (not better on both)" }
            ));
        }
    }
}

/// A gap in units of the larger seed-to-seed SD (none with one seed).
fn in_sd(gap: f64, sd: f64) -> String {
    if sd > 0.0 {
        format!("{:.1} SD, SD {sd:.4}", gap / sd)
    } else {
        "no SD with one seed".into()
    }
}

/// PASS when `gap` is at least `need` SDs; no verdict without an SD.
fn verdict(gap: f64, sd: f64, need: f64) -> &'static str {
    if sd == 0.0 {
        "n/a"
    } else if gap >= need * sd {
        "PASS"
    } else {
        "FAIL"
    }
}

/// The temperature curve a selector lies on: (family, T) for `ucb` and `predicted` runs whose
/// only difference from their family is `temperature=…` (the family keeps the other keys).
fn curve_of(name: &str) -> Option<(String, f64)> {
    let (base, keys) = name.split_once(':').unwrap_or((name, ""));
    if !matches!(base, "ucb" | "predicted") {
        return None;
    }
    let mut t = quad_select::bandit::BanditParams::default().temperature;
    let mut rest = Vec::new();
    for kv in keys.split('+').filter(|k| !k.is_empty()) {
        match kv.split_once('=') {
            Some(("temperature", v)) => t = v.parse().ok()?,
            _ => rest.push(kv),
        }
    }
    let family = if rest.is_empty() { base.to_string() } else { format!("{base}:{}", rest.join("+")) };
    Some((family, t))
}

fn frontier_plot(s: &Setting, rows: &[Row]) -> Result<()> {
    let st = stats(rows);
    let points: Vec<plot::FrontierPoint> = s
        .selectors
        .iter()
        .filter_map(|sel| {
            let x = st.get(&sel.name)?;
            Some(plot::FrontierPoint { label: sel.name.clone(), x: x.heldout, y: x.reference, mix: sel.mix, curve: curve_of(&sel.name) })
        })
        .collect();
    if points.is_empty() {
        return Ok(());
    }
    plot::frontier(
        &s.dir.join("frontier.png"),
        &format!("{} reference, {} tokens", s.reference, budget_label(s.budget)),
        "held-out loss (mean of domains)",
        "evaluation-reference loss",
        &points,
    )
}
