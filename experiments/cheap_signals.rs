//! Cheap per-document signals against the full influence score, and what they cost: on a seeded
//! sample of the pool, each document is scored with only its first N predicted tokens (the
//! reference side stays whole, as `quad select` takes it), which also gives the proxy's loss on
//! those tokens (the forward pass); every signal is compared with the document's full score from
//! a `topk` score cache (Spearman ρ, and the mean true z of the sample's top 10% by the signal),
//! and its scoring time with the full scoring of the same documents. experiments/README.md,
//! "The estimator study".
//!
//!     cargo run --release --example cheap_signals -- --cache .quad-cache --proxy proxy-KEY \
//!         --factors factors-KEY --refgrad refgrad-KEY.safetensors --scores scores-KEY.jsonl \
//!         --pool experiments/results/estimators/split/pool.jsonl [--docs 600] [--timed 128]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use clap::Parser;
use quad_select::corpus::{CorpusConfig, CorpusReader};

use quad_select::influence::DocumentScorer;

use quad_select::influence::validate::spearman;
use quad_select::model;
use quad_select::select::SelectConfig;
use rand::seq::SliceRandom;
use rand::SeedableRng;

#[path = "harness.rs"]
mod harness;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    scoring: harness::CachedScoring,
    /// The full scores (`scores-*.jsonl` of a `topk` run with this proxy, factors and reference).
    #[arg(long)]
    scores: String,
    #[arg(long)]
    pool: PathBuf,
    /// Documents in the sample.
    #[arg(long, default_value_t = 600)]
    docs: usize,
    /// Of them, how many are also scored in full to time it.
    #[arg(long, default_value_t = 128)]
    timed: usize,
    /// Predicted-token prefixes to try.
    #[arg(long, value_delimiter = ',', default_value = "16,32,64")]
    prefixes: Vec<usize>,
}

fn top_mean(signal: &[f64], truth: &[f64], frac: f64) -> f64 {
    let mut idx: Vec<usize> = (0..signal.len()).collect();
    idx.sort_by(|&a, &b| signal[b].total_cmp(&signal[a]));
    let n = ((signal.len() as f64 * frac).round() as usize).max(1);
    idx[..n].iter().map(|&i| truth[i]).sum::<f64>() / n as f64
}

fn main() -> Result<()> {
    quad_select::influence::prefer_document_parallelism();
    quad_select::tune_allocator();
    let a = Args::parse();
    let cfg = SelectConfig::default().check()?;
    let (_, ihvp) = a.scoring.load(&cfg)?;

    let mut full: HashMap<String, f64> = HashMap::new();
    for line in std::fs::read_to_string(a.scoring.cache.join(&a.scores)).context("--scores")?.lines() {
        if let Ok((id, s)) = serde_json::from_str::<(String, f64)>(line) {
            full.insert(id, s);
        }
    }
    // Standardised as the study standardises: by the pool's median and SD.
    let mut all: Vec<f64> = full.values().copied().collect();
    all.sort_by(f64::total_cmp);
    let median = all[all.len() / 2];
    let mean = all.iter().sum::<f64>() / all.len() as f64;
    let sd = (all.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (all.len() - 1) as f64).sqrt();

    let (docs, _) = CorpusReader::read_all(&a.pool, CorpusConfig::default())?;
    let mut docs: Vec<_> = docs.into_iter().filter(|d| full.contains_key(&d.id)).collect();
    docs.shuffle(&mut rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(0));
    docs.truncate(a.docs);
    let truth: Vec<f64> = docs.iter().map(|d| (full[&d.id] - median) / sd).collect();

    let proxy = a.scoring.proxy_path();
    let scorer_at = |n: Option<usize>| -> Result<DocumentScorer> {
        Ok(DocumentScorer::new(model::load(&proxy, DType::F32, &Device::Cpu)?, ihvp.clone(), &cfg.factors, n))
    };
    let timed = &docs[..a.timed.min(docs.len())];
    let started = Instant::now();
    let check = scorer_at(cfg.scoring.max_tokens)?.score(timed)?;
    let t_full = started.elapsed().as_secs_f64() / timed.len() as f64;
    let agree = check
        .iter()
        .zip(timed)
        .map(|(s, d)| s.map_or(0.0, |(s, _)| (s - full[&d.id]).abs() / full[&d.id].abs().max(1e-12)))
        .fold(0.0f64, f64::max);
    println!(
        "{} documents sampled; full scoring ({} tokens): {:.2} docs/s on {} of them (largest relative difference from the cache {agree:.1e})",
        docs.len(),
        cfg.scoring.max_tokens.map_or("all".into(), |n| n.to_string()),
        1.0 / t_full,
        timed.len()
    );
    println!("\n| signal | Spearman with the full score | mean true z, top 10% of the sample | cost per document / full scoring |\n|---|---|---|---|");
    println!("| *the full score* | 1.000 | {:.3} | 1.000 |", top_mean(&truth, &truth, 0.1));
    for &n in &a.prefixes {
        let started = Instant::now();
        let got = scorer_at(Some(n))?.score(&docs)?;
        let t = started.elapsed().as_secs_f64() / docs.len() as f64;
        let (score, loss): (Vec<f64>, Vec<f64>) = got.iter().map(|s| s.unwrap_or((0.0, 0.0))).unzip();
        // A high loss (the proxy finds the text unfamiliar) and a low one are both tried.
        let neg_loss: Vec<f64> = loss.iter().map(|l| -l).collect();
        println!("| influence, first {n} tokens | {:.3} | {:.3} | {:.3} |", spearman(&score, &truth), top_mean(&score, &truth, 0.1), t / t_full);
        println!(
            "| proxy loss, first {n} tokens (a forward pass; cost measured with its backward) | {:.3} | high: {:.3}, low: {:.3} | ≤ {:.3} |",
            spearman(&loss, &truth),
            top_mean(&loss, &truth, 0.1),
            top_mean(&neg_loss, &truth, 0.1),
            t / t_full
        );
    }
    Ok(())
}
