//! Selector comparison at one token budget: `random`, `uniform`, `topk`, `greedy` and Quad's `ucb`,
//! each over several seeds, plus a sanity selection made only of the pool's wikipedia documents.
//! Every selection is evaluated with `quad eval`'s fixed model (reference loss, per-domain
//! held-out loss); rows go to `OUT/compare.csv`, the table to `OUT/compare.md` (and, for the full
//! run, into experiments/README.md between its markers).
//!
//! ```sh
//! cargo run --release --example compare -- [--quick] [--seeds 3] [--out experiments/results/compare]
//! ```
//!
//! Finished runs are skipped on a rerun (their result JSON is kept), so an interrupted comparison
//! continues where it stopped. Stage artifacts (embeddings, clusters, proxy, factors, influence
//! scores) are shared through the cache, so `topk` scoring the pool once serves every other run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{bail, Context, Result};
use quad_select::bandit::{Budget, Policy};
use quad_select::corpus::{CorpusConfig, CorpusReader};
use quad_select::eval::{self, EvalResult, SelectionStats};
use quad_select::select::{self, SelectConfig, SelectRun};
use rand::seq::SliceRandom;
use rand::SeedableRng;

pub struct Opts {
    pub quick: bool,
    pub seeds: u64,
    pub out: PathBuf,
    pub budget: usize,
    pub pool: PathBuf,
    pub reference: PathBuf,
    pub cache: PathBuf,
    pub config: PathBuf,
}

fn parse() -> Result<Opts> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shared = std::env::var_os("QUAD_SHARED").map(PathBuf::from).unwrap_or_else(|| repo.join("../shared"));
    let mut args = std::env::args().skip(1);
    let (mut quick, mut seeds, mut out, mut budget, mut cache) = (false, 3, None, None, None);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--quick" => quick = true,
            "--seeds" => seeds = val()?.parse()?,
            "--out" => out = Some(PathBuf::from(val()?)),
            "--budget-tokens" => budget = Some(val()?.parse()?),
            "--cache" => cache = Some(PathBuf::from(val()?)),
            "-h" | "--help" => {
                println!("compare [--quick] [--seeds N] [--out DIR] [--budget-tokens N] [--cache DIR]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    let name = if quick { "compare-quick" } else { "compare" };
    Ok(Opts {
        quick,
        seeds,
        out: out.unwrap_or_else(|| repo.join("experiments/results").join(name)),
        budget: budget.unwrap_or(if quick { 40_000 } else { 400_000 }),
        pool: shared.join(if quick { "data/pool-small.jsonl" } else { "data/pool.jsonl" }),
        reference: shared.join("data/reference-wiki.jsonl"),
        cache: cache.unwrap_or_else(|| repo.join(".quad-cache")),
        config: repo.join("experiments").join(format!("{name}.toml")),
    })
}

/// One evaluated selection.
#[derive(serde::Serialize, serde::Deserialize)]
struct Row {
    selector: String,
    seed: u64,
    eval: EvalResult,
    selection: SelectionStats,
    scored_fraction: f64,
    select_seconds: f64,
}

fn read_records(path: &Path) -> Result<(Vec<String>, Vec<serde_json::Value>)> {
    let (docs, _) = CorpusReader::read_all(path, CorpusConfig::default())?;
    let recs = docs.iter().map(|d| serde_json::from_str(&d.record)).collect::<Result<_, _>>()?;
    Ok((docs.into_iter().map(|d| d.text).collect(), recs))
}

fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    let v = if xs.len() > 1 { xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (m, v.sqrt())
}

fn main() -> Result<()> {
    quad_select::tune_allocator();
    let md = run(&parse()?)?;
    print!("{md}");
    Ok(())
}

/// Runs (or continues) the comparison; returns the Markdown table.
pub fn run(o: &Opts) -> Result<String> {
    std::fs::create_dir_all(&o.out)?;
    let split = o.out.join("split");
    if !split.join(eval::SPLIT_TOKENIZER).exists() {
        eprintln!("splitting held-out documents off {}", o.pool.display());
        let (docs, _) = CorpusReader::read_all(&o.pool, CorpusConfig::default())?;
        let per_domain = if o.quick { 5 } else { 20 };
        eval::write_split(&docs, "domain", per_domain, 0, 4096, &split)?;
    }
    let tokenizer = tokenizers::Tokenizer::from_file(split.join(eval::SPLIT_TOKENIZER)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (refs, _) = read_records(&o.reference)?;
    let heldout: Vec<(String, String)> = {
        let (texts, recs) = read_records(&split.join(eval::SPLIT_HELDOUT))?;
        recs.iter().map(|r| r["domain"].as_str().unwrap_or("(none)").to_string()).zip(texts).collect()
    };
    let mut params = eval::eval_params();
    if o.quick {
        params.layers = 1;
        params.width = 64;
        params.context = 64;
        params.steps = 20;
    }
    let config = SelectConfig::from_toml_file(&o.config)?;
    let k = config.cluster.k;

    let mut rows: Vec<Row> = Vec::new();
    let policies = [Policy::Random, Policy::Uniform, Policy::Topk, Policy::Greedy, Policy::Ucb];
    for seed in 0..o.seeds {
        for policy in policies {
            let name = format!("{policy}-s{seed}");
            let result = o.out.join(format!("{name}.json"));
            if let Ok(text) = std::fs::read_to_string(&result) {
                rows.push(serde_json::from_str(&text)?);
                continue;
            }
            let mut cfg = config.clone();
            cfg.bandit.policy = policy;
            cfg.bandit.seed = seed;
            let run = SelectRun {
                input: split.join(eval::SPLIT_POOL),
                reference: o.reference.clone(),
                budget: Budget::Tokens(o.budget),
                out: o.out.join("runs").join(&name),
                cache: o.cache.clone(),
                resume: true,
                config: cfg,
            };
            eprintln!("select {name}");
            let started = std::time::Instant::now();
            select::run(&run, &select::Quiet, &AtomicBool::new(false), None)?;
            let select_seconds = started.elapsed().as_secs_f64();
            let manifest: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(run.out.join("manifest.json"))?)?;
            let (texts, recs) = read_records(&run.out.join("selected.jsonl"))?;
            eprintln!("eval {name}");
            let ev = eval::evaluate(&texts, &tokenizer, &refs, &heldout, &params, seed)?;
            let row = Row {
                selector: policy.to_string(),
                seed,
                selection: eval::selection_stats(&recs, k, "domain"),
                eval: ev,
                scored_fraction: manifest["documents"]["scored_fraction"].as_f64().unwrap_or(0.0),
                select_seconds,
            };
            quad_select::atomic::write_string_atomic(&result, &serde_json::to_string_pretty(&row)?)?;
            eprintln!("{name}: reference loss {:.4}", row.eval.reference_loss);
            rows.push(row);
        }
        // Sanity selection: only the pool's wikipedia documents, in seeded order, up to the budget
        // (counted with the evaluation tokenizer).
        let name = format!("wiki-only-s{seed}");
        let result = o.out.join(format!("{name}.json"));
        if let Ok(text) = std::fs::read_to_string(&result) {
            rows.push(serde_json::from_str(&text)?);
            continue;
        }
        let (texts, recs) = read_records(&split.join(eval::SPLIT_POOL))?;
        let mut wiki: Vec<usize> = (0..recs.len()).filter(|&i| recs[i]["domain"] == "wikipedia").collect();
        wiki.shuffle(&mut rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed));
        let (mut chosen, mut tokens) = (Vec::new(), 0usize);
        for i in wiki {
            if tokens >= o.budget {
                break;
            }
            tokens += tokenizer.encode(texts[i].as_str(), false).map_err(|e| anyhow::anyhow!("{e}"))?.len();
            chosen.push(i);
        }
        let sel_texts: Vec<String> = chosen.iter().map(|&i| texts[i].clone()).collect();
        let sel_recs: Vec<serde_json::Value> = chosen.iter().map(|&i| recs[i].clone()).collect();
        eprintln!("eval {name}");
        let ev = eval::evaluate(&sel_texts, &tokenizer, &refs, &heldout, &params, seed)?;
        let row = Row {
            selector: "wiki-only".into(),
            seed,
            selection: eval::selection_stats(&sel_recs, k, "domain"),
            eval: ev,
            scored_fraction: 0.0,
            select_seconds: 0.0,
        };
        quad_select::atomic::write_string_atomic(&result, &serde_json::to_string_pretty(&row)?)?;
        rows.push(row);
    }

    // compare.csv: one line per run.
    let domains: Vec<String> = rows[0].eval.heldout_loss.keys().cloned().collect();
    quad_select::atomic::write_atomic(&o.out.join("compare.csv"), |w| {
        write!(w, "selector,seed,reference_loss,heldout_mean,cluster_entropy,clusters_touched,mean_score,scored_fraction,selection_tokens,select_seconds,eval_seconds")?;
        for d in &domains {
            write!(w, ",heldout_{d}")?;
        }
        writeln!(w)?;
        for r in &rows {
            write!(
                w,
                "{},{},{:.5},{:.5},{:.4},{},{},{:.4},{},{:.1},{:.1}",
                r.selector,
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

    // compare.md: mean ± std per selector.
    let mut by: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for r in &rows {
        by.entry(r.selector.as_str()).or_default().push(r);
    }
    let order = ["random", "uniform", "topk", "greedy", "ucb", "wiki-only"];
    let mut md = format!(
        "Budget {} tokens, {} seed(s), pool `{}`, reference `{}`; evaluation model: {} blocks, width {}, {} steps × {} × {} tokens.\n\n\
         | selector | reference loss | held-out loss (mean of domains) | cluster entropy | clusters | mean score (z) | scored fraction | select s | eval s |\n|---|---|---|---|---|---|---|---|---|\n",
        o.budget,
        o.seeds,
        o.pool.file_name().unwrap_or_default().to_string_lossy(),
        o.reference.file_name().unwrap_or_default().to_string_lossy(),
        params.layers,
        params.width,
        params.steps,
        params.batch_size,
        params.context
    );
    let mut summary: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for name in order {
        let Some(rs) = by.get(name) else { continue };
        let f = |g: &dyn Fn(&Row) -> f64| mean_std(&rs.iter().map(|r| g(r)).collect::<Vec<_>>());
        let (rl, rs_) = f(&|r| r.eval.reference_loss);
        let (hl, hs) = f(&|r| r.eval.heldout_mean);
        let (ce, _) = f(&|r| r.selection.cluster_entropy);
        let (ct, _) = f(&|r| r.selection.clusters_touched as f64);
        // The sanity selection bypasses the clustering: no cluster statistics.
        let (ce, ct) = if ct > 0.0 { (format!("{ce:.3}"), format!("{ct:.1}")) } else { ("–".into(), "–".into()) };
        let scores: Vec<f64> = rs.iter().filter_map(|r| r.selection.mean_score).collect();
        let ms = if scores.is_empty() { "–".to_string() } else { format!("{:.3}", mean_std(&scores).0) };
        let (sf, _) = f(&|r| r.scored_fraction);
        let (ss, _) = f(&|r| r.select_seconds);
        let (es, _) = f(&|r| r.eval.seconds);
        summary.insert(name, (rl, rs_));
        md.push_str(&format!(
            "| {name} | {rl:.4} ± {rs_:.4} | {hl:.4} ± {hs:.4} | {ce} | {ct} | {ms} | {sf:.3} | {ss:.0} | {es:.0} |\n"
        ));
    }
    if let (Some(&(r, rsd)), Some(&(w, wsd))) = (summary.get("random"), summary.get("wiki-only")) {
        let spread = rsd.max(wsd);
        md.push_str(&format!(
            "\nSanity: wiki-only reference loss is {:.4} below random's ({:.1} seed-to-seed standard deviations, the larger of the two spreads {:.4}).\n",
            r - w,
            if spread > 0.0 { (r - w) / spread } else { f64::INFINITY },
            spread
        ));
    }
    if let Some(&(u, usd)) = summary.get("ucb") {
        for other in ["random", "uniform", "topk"] {
            if let Some(&(x, xsd)) = summary.get(other) {
                let spread = usd.max(xsd);
                md.push_str(&format!(
                    "ucb vs {other}: {:+.4} nats reference loss ({:+.1} standard deviations; negative = ucb better).\n",
                    u - x,
                    if spread > 0.0 { (u - x) / spread } else { 0.0 }
                ));
            }
        }
    }
    quad_select::atomic::write_string_atomic(&o.out.join("compare.md"), &md)?;
    if !o.quick {
        let readme = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("experiments/README.md");
        if let Ok(text) = std::fs::read_to_string(&readme) {
            let (b, e) = ("<!-- compare:begin -->", "<!-- compare:end -->");
            if let (Some(i), Some(j)) = (text.find(b), text.find(e)) {
                let new = format!("{}{b}\n{md}{}", &text[..i], &text[j..]);
                quad_select::atomic::write_string_atomic(&readme, &new)?;
            }
        }
    }
    Ok(md)
}
