//! Bandit-parameter sweeps: α, γ, τ, B (clusters per round), b (samples per cluster), m (documents
//! taken per accepted chunk) and k (number of clusters), one at a time around the defaults of experiments/compare.toml, each point a
//! `quad select` (policy ucb) evaluated with `quad eval`'s fixed model over `--seeds` seeds.
//!
//! ```sh
//! cargo run --release --example sweep -- --param alpha [--values 0,0.5,1,2,4] [--seeds 1] [--quick]
//! cargo run --release --example sweep -- --param all
//! ```
//!
//! Writes, under `--out` (default experiments/results/sweeps): `PARAM/*.json` (one row per run,
//! reused on a rerun), `sweep-PARAM.csv`, `sweep-PARAM.png` (reference loss vs the parameter),
//! `quality-diversity.png` (mean influence vs cluster entropy over every run found there and in
//! the comparison), `rounds.png` (one default run's reward per round and cumulative tokens), and,
//! for full runs, the tables into experiments/README.md.

#[path = "harness.rs"]
mod harness;
#[path = "plot.rs"]
mod plot;

use std::path::PathBuf;

use anyhow::{bail, Result};
use harness::{mean_std, update_readme, write_csv, Row, Setup};
use quad_select::select::SelectConfig;

const PARAMS: [&str; 7] = ["alpha", "gamma", "tau", "B", "b", "m", "k"];

fn default_values(param: &str) -> Vec<f64> {
    match param {
        "alpha" => vec![0.0, 0.25, 0.5, 1.0, 2.0, 4.0],
        "gamma" => vec![-1.0, -0.5, 0.0, 0.25, 0.5, 1.0],
        "tau" => vec![0.0, 0.1, 0.2, 0.3, 0.5],
        "B" => vec![1.0, 2.0, 4.0, 8.0],
        "b" => vec![2.0, 4.0, 8.0, 16.0],
        "m" => vec![8.0, 16.0, 32.0, 64.0],
        "k" => vec![8.0, 16.0, 32.0, 64.0],
        _ => Vec::new(),
    }
}

fn set(cfg: &mut SelectConfig, param: &str, v: f64) {
    match param {
        "alpha" => cfg.bandit.alpha = v,
        "gamma" => cfg.bandit.gamma = Some(v),
        "tau" => cfg.bandit.tau = v,
        "B" => cfg.bandit.arms_per_round = v as usize,
        "b" => cfg.bandit.samples_per_arm = v as usize,
        "m" => cfg.bandit.chunk = Some(v as usize),
        "k" => cfg.cluster.k = (v as usize).into(),
        _ => unreachable!("checked"),
    }
}

/// One-parameter sweeps of the bandit (see the module docs).
#[derive(clap::Parser)]
struct Args {
    /// alpha, gamma, tau, B, b, k or all.
    #[arg(long)]
    param: String,
    /// Values to sweep, comma-separated (default: the parameter's grid).
    #[arg(long, value_delimiter = ',')]
    values: Option<Vec<f64>>,
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    #[command(flatten)]
    run: harness::ComparisonArgs,
}

fn main() -> Result<()> {
    quad_select::influence::prefer_document_parallelism();
    quad_select::tune_allocator();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let Args { param, values, seeds, run } = <Args as clap::Parser>::parse();
    let params: Vec<&str> = if param == "all" {
        PARAMS.to_vec()
    } else if let Some(p) = PARAMS.iter().find(|p| **p == param) {
        vec![*p]
    } else {
        bail!("unknown parameter {param} (alpha, gamma, tau, B, b, k or all)");
    };
    let (quick, budget) = (run.quick, run.budget());
    let out = run.out.clone().unwrap_or_else(|| repo.join("experiments/results").join(if quick { "sweeps-quick" } else { "sweeps" }));
    // The comparison's split, so sweep rows and comparison rows are evaluated identically.
    let compare_dir = repo.join("experiments/results").join(run.name());
    let setup = Setup::new(
        &run.pool(),
        &harness::shared().join("data/reference-wiki.jsonl"),
        &compare_dir.join("split"),
        &run.cache(),
        budget,
        quick,
    )?;
    let base = SelectConfig::from_toml_file(&run.config())?;

    for p in params {
        let vals = values.clone().unwrap_or_else(|| default_values(p));
        let dir = out.join(p);
        let mut rows: Vec<Row> = Vec::new();
        for &v in &vals {
            for seed in 0..seeds {
                let mut cfg = base.clone();
                set(&mut cfg, p, v);
                cfg.bandit.seed = seed;
                rows.extend(setup.run_point(cfg, &dir, &format!("{p}={v}-s{seed}"), Some(v), seed)?);
            }
        }
        if harness::select_only() {
            eprintln!("select-only: {p} selections under {}/runs", dir.display());
            continue;
        }
        write_csv(&out.join(format!("sweep-{p}.csv")), &rows)?;
        let mut points = Vec::new();
        let mut md = format!(
            "Sweep of {p} (others at their defaults), budget {budget} tokens, {seeds} seed(s) per point.\n\n\
             | {p} | reference loss | held-out loss | cluster entropy | mean score (z) | scored fraction |\n|---|---|---|---|---|---|\n"
        );
        for &v in &vals {
            let rs: Vec<&Row> = rows.iter().filter(|r| r.value == Some(v)).collect();
            let (m, s) = mean_std(&rs.iter().map(|r| r.eval.reference_loss).collect::<Vec<_>>());
            let (h, hs) = mean_std(&rs.iter().map(|r| r.eval.heldout_mean).collect::<Vec<_>>());
            let (e, _) = mean_std(&rs.iter().map(|r| r.selection.cluster_entropy).collect::<Vec<_>>());
            let sc: Vec<f64> = rs.iter().filter_map(|r| r.selection.mean_score).collect();
            let (f, _) = mean_std(&rs.iter().map(|r| r.scored_fraction).collect::<Vec<_>>());
            md.push_str(&format!(
                "| {v} | {m:.4} ± {s:.4} | {h:.4} ± {hs:.4} | {e:.3} | {} | {f:.3} |\n",
                if sc.is_empty() { "–".to_string() } else { format!("{:.3}", mean_std(&sc).0) }
            ));
            points.push((v, m, s));
        }
        md.push_str(&format!("\n![reference loss vs {p}](results/sweeps/sweep-{p}.png)\n"));
        plot::line_with_errors(
            &out.join(format!("sweep-{p}.png")),
            &format!("reference loss vs {p}"),
            p,
            "reference loss (nats/token)",
            &points,
        )?;
        std::fs::write(out.join(format!("sweep-{p}.md")), &md)?;
        if !quick {
            update_readme(&format!("sweep-{p}"), &md)?;
        }
        print!("{md}");
    }

    // Quality vs diversity over every row on disk (sweeps and the comparison).
    let mut pts = Vec::new();
    for dir in [out.clone(), compare_dir.clone()] {
        for entry in walk(&dir) {
            if let Ok(row) = serde_json::from_str::<Row>(&std::fs::read_to_string(&entry)?) {
                if let Some(s) = row.selection.mean_score {
                    let group = if entry.starts_with(&out) { "ucb sweeps".to_string() } else { row.selector.clone() };
                    pts.push((group, row.selection.cluster_entropy, s));
                }
            }
        }
    }
    if !pts.is_empty() {
        plot::scatter(
            &out.join("quality-diversity.png"),
            "quality vs diversity of every selection",
            "cluster entropy (normalised)",
            "mean influence of selected documents (z)",
            &pts,
        )?;
    }
    // One default run's rounds.
    let default_run = out.join("alpha").join("runs").join("alpha=1-s0").join("rounds.csv");
    if let Ok(csv) = std::fs::read_to_string(&default_run) {
        plot::rounds(&out.join("rounds.png"), "one run (ucb, defaults): rounds", &csv)?;
    }
    Ok(())
}

/// Every `*.json` file directly in `dir` or one level below (not under `runs/`).
fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() && p.file_name().is_some_and(|n| n != "runs" && n != "split") {
            if let Ok(inner) = std::fs::read_dir(&p) {
                out.extend(inner.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "json")));
            }
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
    out.sort();
    out
}
