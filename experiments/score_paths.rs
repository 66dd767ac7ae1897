//! Scoring before and after `ReferenceIhvp::score_batch`, on the real proxy: the same documents
//! scored by both paths (captures split per document and scored one by one; the batch scored
//! whole), their largest relative difference, and documents/s of each, at the defaults
//! (`quad select`'s factors, reference iHVP, batch and `max_tokens`).
//!
//!     cargo run --release --example score_paths -- --cache /work/quad-cache \
//!         --proxy proxy-6fb9cf618192fb46 --factors factors-0834e7f414770006 \
//!         --refgrad refgrad-7d51c5ac3a1ca5af.safetensors --pool ../shared/data/pool.jsonl [--docs 128] [--batch 4]
//!
//! The cache names are those of a finished `quad select` (its `--cache` folder).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;

use quad_select::corpus::{CorpusConfig, CorpusReader};

use quad_select::model::{capture::truncate_predicted, Labels};
use quad_select::select::SelectConfig;

#[path = "harness.rs"]
mod harness;

/// Scoring paths compared on the real proxy (see the module docs).
#[derive(clap::Parser)]
struct Args {
    #[command(flatten)]
    scoring: harness::CachedScoring,
    /// The pool the documents are read from.
    #[arg(long)]
    pool: PathBuf,
    /// Documents scored.
    #[arg(long, default_value_t = 128)]
    docs: usize,
    /// Documents per pass (default: the configuration's).
    #[arg(long)]
    batch: Option<usize>,
}

fn main() -> Result<()> {
    quad_select::influence::prefer_document_parallelism();
    quad_select::tune_allocator();
    let Args { scoring, pool, docs: n, batch } = <Args as clap::Parser>::parse();
    let cfg = SelectConfig::default().check()?;
    let (loaded, ihvp) = scoring.load(&cfg)?;
    let mut opts = cfg.factors.gradient_options();
    if let Some(b) = batch {
        opts.batch = b;
    }
    let reader = CorpusReader::open(&pool, CorpusConfig::default())?;
    let mut docs = Vec::new();
    for d in reader.take(n) {
        let mut ids = loaded.encode(&d?.text)?;
        truncate_predicted(&mut ids, cfg.scoring.max_tokens);
        if ids.len() >= 2 {
            docs.push(ids);
        }
    }
    // Longest first, as `score_documents` batches them.
    docs.sort_by_key(|d| std::cmp::Reverse(d.len()));
    let tokens: usize = docs.iter().map(|d| d.len() - 1).sum();

    let started = Instant::now();
    let mut before = Vec::new();
    for chunk in docs.chunks(opts.batch) {
        for c in loaded.model.capture(chunk, opts.context, &opts.selection)?.into_iter().flatten() {
            before.push(ihvp.score(&c)?);
        }
    }
    let t_before = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut after = Vec::new();
    for chunk in docs.chunks(opts.batch) {
        let cap = loaded.model.capture_batch(chunk, opts.context, &opts.selection, Labels::Observed)?;
        after.extend(ihvp.score_batch(&cap)?.into_iter().flatten());
    }
    let t_after = started.elapsed().as_secs_f64();
    // Batches in parallel, one per core (rayon), each pass's own products nested in it.
    let started = Instant::now();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pool = rayon::ThreadPoolBuilder::new().num_threads(cores).build()?;
    let parallel: Vec<f64> = pool.install(|| -> Result<Vec<f64>> {
        use rayon::prelude::*;
        let per_batch = docs
            .par_chunks(opts.batch)
            .map(|chunk| -> Result<Vec<f64>> {
                let cap = loaded.model.capture_batch(chunk, opts.context, &opts.selection, Labels::Observed)?;
                Ok(ihvp.score_batch(&cap)?.into_iter().flatten().collect())
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(per_batch.into_iter().flatten().collect())
    })?;
    let t_parallel = started.elapsed().as_secs_f64();
    let max_rel_parallel = before.iter().zip(&parallel).map(|(a, b)| (a - b).abs() / a.abs().max(1e-12)).fold(0f64, f64::max);
    let scale = before.iter().fold(0f64, |m, s| m.max(s.abs()));
    let max_rel = before.iter().zip(&after).map(|(a, b)| (a - b).abs() / a.abs().max(1e-12)).fold(0f64, f64::max);
    let max_abs = before.iter().zip(&after).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
    println!(
        "{} documents, {} predicted tokens (mean {:.0}), batch {}, CANDLE_NUM_THREADS={}: per-document path {:.2} docs/s, \
         batched {:.2} docs/s ({:.2}×), batched with batches in parallel {:.2} docs/s ({:.2}×); \
         largest relative difference {max_rel:.2e} ({max_rel_parallel:.2e} in parallel), largest absolute {max_abs:.2e} (scores up to {scale:.3e})",
        docs.len(),
        tokens,
        tokens as f64 / docs.len() as f64,
        opts.batch,
        format!(
            "{} RAYON_NUM_THREADS={}",
            std::env::var("CANDLE_NUM_THREADS").unwrap_or_else(|_| "unset".into()),
            std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into())
        ),
        docs.len() as f64 / t_before,
        docs.len() as f64 / t_after,
        t_before / t_after,
        docs.len() as f64 / t_parallel,
        t_before / t_parallel
    );
    Ok(())
}
