//! Full-pool influence scores against several references in one pass: each document's forward and
//! backward pass is made once and scored against every reference's iHVP, so two references cost
//! one `topk` scoring instead of two. The scores are those `quad select --policy topk` caches (the
//! same batches, the same `score_token_batch`), written as its score cache is (`["id", score]` a
//! line), with each document's proxy loss beside them (the `perplexity` signal).
//!
//!     cargo run --release --example full_scores -- --cache .quad-cache --proxy proxy-KEY \
//!         --factors factors-KEY --refgrad wiki=refgrad-KEY.safetensors \
//!         --refgrad abstracts=refgrad-KEY.safetensors \
//!         --pool experiments/results/frontier/split/pool.jsonl --out experiments/results/estimators/scores
//!
//! Writes `OUT/scores-NAME.jsonl` and `OUT/losses.jsonl`. Chunks of the pool are appended to
//! `*.partial` files as they finish, so a killed run resumes where it stopped.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use quad_select::corpus::{CorpusConfig, CorpusReader};
use quad_select::influence::{encode_for_scoring, run_planned, stage, store, InfluenceError, ReferenceIhvp};
use quad_select::select::SelectConfig;
use rayon::prelude::*;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    cache: PathBuf,
    /// The proxy's folder in the cache (proxy-KEY).
    #[arg(long)]
    proxy: String,
    /// The factors' folder in the cache (factors-KEY).
    #[arg(long)]
    factors: String,
    /// NAME=FILE: a reference gradient in the cache (refgrad-KEY.safetensors); repeatable.
    #[arg(long, required = true)]
    refgrad: Vec<String>,
    #[arg(long)]
    pool: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// Documents per chunk written (and resumed from).
    #[arg(long, default_value_t = 1024)]
    chunk: usize,
}

fn done_ids(path: &Path) -> Result<HashSet<String>> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(HashSet::new()) };
    // A line cut by a kill is dropped (and its document scored again).
    Ok(text.lines().filter_map(|l| serde_json::from_str::<(String, f64)>(l).ok()).map(|(id, _)| id).collect())
}

fn main() -> Result<()> {
    quad_select::influence::prefer_document_parallelism();
    quad_select::tune_allocator();
    let a = Args::parse();
    let cfg = SelectConfig::default().check()?;
    let loaded = quad_select::model::load(&a.cache.join(&a.proxy), candle_core::DType::F32, &candle_core::Device::Cpu)?;
    let (factors, _) = store::load(&a.cache.join(&a.factors), &loaded.model.config)?;
    let layer_ids = cfg.factors.layers.layers(loaded.model.config.num_hidden_layers);
    let mut refs: Vec<(String, ReferenceIhvp)> = Vec::new();
    for spec in &a.refgrad {
        let (name, file) = spec.split_once('=').with_context(|| format!("--refgrad {spec}: expected NAME=FILE"))?;
        let grad = store::load_layers(&a.cache.join(file), &layer_ids, &loaded.model.config)?;
        refs.push((name.to_string(), stage::reference_ihvp(Some(&factors), &grad, cfg.factors.per_head, &cfg.scoring)?));
    }
    let gradient = cfg.factors.gradient_options();
    std::fs::create_dir_all(&a.out)?;
    let partial = |name: &str| a.out.join(format!("{name}.jsonl.partial"));
    let losses_name = "losses".to_string();
    let names: Vec<String> = refs.iter().map(|(n, _)| format!("scores-{n}")).chain([losses_name.clone()]).collect();
    // Resume from the documents every file has.
    let mut done: Option<HashSet<String>> = None;
    for n in &names {
        let ids = done_ids(&partial(n))?;
        done = Some(match done {
            None => ids,
            Some(d) => d.intersection(&ids).cloned().collect(),
        });
    }
    let done = done.unwrap_or_default();

    let (docs, _) = CorpusReader::read_all(&a.pool, CorpusConfig::default())?;
    let todo: Vec<_> = docs.iter().filter(|d| !done.contains(&d.id)).collect();
    eprintln!("{} documents, {} already scored, {} references", docs.len(), docs.len() - todo.len(), refs.len());
    let mut files = names
        .iter()
        .map(|n| Ok(std::fs::OpenOptions::new().create(true).append(true).open(partial(n))?))
        .collect::<Result<Vec<_>>>()?;
    let started = Instant::now();
    for (c, chunk) in todo.chunks(a.chunk.max(1)).enumerate() {
        let ids = chunk
            .iter()
            .map(|d| encode_for_scoring(&loaded, &d.id, &d.text, cfg.scoring.max_tokens))
            .collect::<Result<Vec<_>, InfluenceError>>()?;
        // One capture per batch, scored against every reference: (scores per reference, loss).
        let got: Vec<Option<(Vec<f64>, f64)>> = run_planned(&ids, gradient.batch, |batches| {
            batches
                .par_iter()
                .map(|batch| -> Result<Vec<Option<(Vec<f64>, f64)>>, InfluenceError> {
                    let cap = loaded.model.capture_batch(batch, gradient.context, &gradient.selection, quad_select::model::Labels::Observed)?;
                    let per_ref = refs.iter().map(|(_, ih)| ih.score_batch(&cap)).collect::<Result<Vec<_>, _>>()?;
                    Ok((0..batch.len())
                        .map(|i| {
                            let scores: Option<Vec<f64>> = per_ref.iter().map(|s| s[i]).collect();
                            scores.zip(cap.losses[i])
                        })
                        .collect())
                })
                .collect()
        })?;
        let mut lines = vec![String::new(); names.len()];
        for (d, g) in chunk.iter().zip(&got) {
            let Some((scores, loss)) = g else { continue };
            if scores.iter().any(|s| !s.is_finite()) || !loss.is_finite() {
                bail!("{}: a non-finite score or loss ({scores:?}, {loss})", d.id);
            }
            for (r, s) in scores.iter().enumerate() {
                lines[r].push_str(&serde_json::to_string(&(&d.id, s))?);
                lines[r].push('\n');
            }
            lines[names.len() - 1].push_str(&serde_json::to_string(&(&d.id, loss))?);
            lines[names.len() - 1].push('\n');
        }
        for (f, l) in files.iter_mut().zip(&lines) {
            f.write_all(l.as_bytes())?;
            f.flush()?;
        }
        let n = ((c + 1) * a.chunk).min(todo.len());
        let rate = n as f64 / started.elapsed().as_secs_f64();
        eprintln!("{n}/{} scored, {rate:.1} docs/s", todo.len());
    }
    for n in &names {
        std::fs::rename(partial(n), a.out.join(format!("{n}.jsonl")))?;
    }
    eprintln!("wrote {} in {:.0} s", a.out.display(), started.elapsed().as_secs_f64());
    Ok(())
}
