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

#[path = "harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use harness::{mean_std, read_records, update_readme, write_csv, Row, Setup};
use quad_select::bandit::PolicyName;
use quad_select::eval;
use quad_select::select::SelectConfig;
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

/// The selectors of the comparison on one budget (see the module docs).
#[derive(clap::Parser)]
struct Args {
    #[command(flatten)]
    run: harness::ComparisonArgs,
    #[arg(long, default_value_t = 3)]
    seeds: u64,
}

fn parse() -> Result<Opts> {
    let Args { run, seeds } = <Args as clap::Parser>::parse();
    Ok(Opts {
        quick: run.quick,
        seeds,
        out: run.out.clone().unwrap_or_else(|| harness::repo().join("experiments/results").join(run.name())),
        budget: run.budget(),
        pool: run.pool(),
        reference: harness::shared().join("data/reference-wiki.jsonl"),
        cache: run.cache(),
        config: run.config(),
    })
}

fn main() -> Result<()> {
    quad_select::influence::prefer_document_parallelism();
    quad_select::tune_allocator();
    let md = run(&parse()?)?;
    print!("{md}");
    Ok(())
}

/// Runs (or continues) the comparison; returns the Markdown table.
pub fn run(o: &Opts) -> Result<String> {
    std::fs::create_dir_all(&o.out)?;
    let setup = Setup::new(&o.pool, &o.reference, &o.out.join("split"), &o.cache, o.budget, o.quick)?;
    let params = &setup.params;
    let config = SelectConfig::from_toml_file(&o.config)?;
    let k = config.cluster.k;
    let mut rows: Vec<Row> = Vec::new();
    let policies = [PolicyName::Random, PolicyName::Uniform, PolicyName::Topk, PolicyName::Greedy, PolicyName::Ucb];
    for seed in 0..o.seeds {
        for policy in policies {
            let mut cfg = config.clone();
            cfg.bandit.policy = policy;
            cfg.bandit.seed = seed;
            rows.extend(setup.run_point(cfg, &o.out, &format!("{policy}-s{seed}"), None, seed)?);
        }
        // Sanity selection: only the pool's wikipedia documents, in seeded order, up to the budget
        // (counted with the evaluation tokenizer).
        let (texts, recs) = read_records(&setup.split.join(eval::SPLIT_POOL))?;
        let mut wiki: Vec<usize> = (0..recs.len()).filter(|&i| recs[i]["domain"] == "wikipedia").collect();
        wiki.shuffle(&mut rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed));
        let (mut chosen, mut tokens) = (Vec::new(), 0usize);
        for i in wiki {
            if tokens >= o.budget {
                break;
            }
            tokens += setup.tokenizer.encode(texts[i].as_str(), false).map_err(|e| anyhow::anyhow!("{e}"))?.len();
            chosen.push(i);
        }
        let sel_texts: Vec<String> = chosen.iter().map(|&i| texts[i].clone()).collect();
        let sel_recs: Vec<serde_json::Value> = chosen.iter().map(|&i| recs[i].clone()).collect();
        rows.extend(setup.run_texts(&sel_texts, &sel_recs, &o.out, &format!("wiki-only-s{seed}"), "wiki-only", k.resolve(recs.len()), seed)?);
    }
    if harness::select_only() {
        return Ok(format!("select-only: selections under {}/runs, evaluations deferred\n", o.out.display()));
    }
    write_csv(&o.out.join("compare.csv"), &rows)?;

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
        update_readme("compare", &md)?;
    }
    Ok(md)
}
