//! `quad proxy train`, `quad factors`, `quad influence` and `quad validate`.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use crate::influence::stage as infl;
use crate::influence::{self, store, DocumentScorer};
use crate::model::train::{self, TrainEvent};
use crate::model::{self, LoadedModel};

use crate::cli::args::{CorpusArgs, FactorsArgs, InfluenceArgs, ProxyArgs, ValidateArgs};
use crate::cli::progress::templated;

pub fn proxy_train(corpus: &CorpusArgs, args: &ProxyArgs, out: &Path) -> Result<()> {
    let params = args.params();
    let texts = read_texts(corpus)?;
    let bar = templated(
        params.steps as u64,
        "proxy: [{bar:30}] step {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]",
    );
    let mut val = f64::NAN;
    let report = train::train_proxy(texts, &params, out, |ev| {
        match ev {
            TrainEvent::TokenizerReady { vocab } => bar.println(format!("tokenizer: {vocab} tokens")),
            TrainEvent::Step { step, loss, .. } => {
                bar.set_position(step as u64);
                bar.set_message(format!("loss {loss:.3} val {val:.3}"));
            }
            TrainEvent::Validated { val_loss, .. } => val = val_loss,
        }
        std::ops::ControlFlow::Continue(())
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

pub fn factors(corpus: &CorpusArgs, flags: &FactorsArgs, out: &Path) -> Result<()> {
    let args = flags.to_arguments();
    let loaded = load(&flags.model)?;
    let tokens = encode_all(&loaded, &read_texts(corpus)?)?;
    // Documents with fewer than two tokens have no loss to fit on (as in `quad select`).
    let candidates: Vec<&[u32]> = tokens.iter().filter(|t| t.len() >= 2).map(Vec::as_slice).collect();
    let started = Instant::now();
    let sha = store::model_fingerprint(&flags.model)?;
    let (factors, header) =
        infl::fit_factors(&loaded, &flags.model, &sha, &candidates, &args, influence::DEFAULT_DAMPING_REL)?;
    store::save(&factors, &header, out)?;
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

pub fn influence(corpus: &CorpusArgs, flags: &InfluenceArgs, out: &Path) -> Result<()> {
    let scoring = flags.to_arguments();
    let reference = read_texts(&corpus.with_input(&flags.reference))?;
    let batch = crate::select::InfluenceConfig::default().batch;
    let mut scorer = DocumentScorer::load(&flags.model, &flags.factors, &reference, &scoring, batch)
        .with_context(|| format!("loading {} with the factors in {}", flags.model.display(), flags.factors.display()))?;
    if let Some(p) = flags.projection() {
        scorer = scorer.project(p);
    }
    let mut reader = corpus.open()?;
    let docs: Vec<_> = reader.by_ref().collect::<Result<_, _>>()?;
    eprintln!("{}", reader.report());
    let bar = templated(
        docs.len() as u64,
        "influence: [{bar:30}] {pos}/{len} docs, {per_sec} [{elapsed_precise}<{eta_precise}]",
    );
    let started = Instant::now();
    let scored = scorer.score_with(&docs, || bar.inc(1))?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    influence::write_scores(out, &docs, &scored)?;
    let n_scored = scored.iter().flatten().count();
    println!(
        "scored {} documents ({} skipped: fewer than two tokens) with {:?} in {:.1} s ({:.2} docs/s) -> {}",
        n_scored,
        docs.len() - n_scored,
        scoring.strategy,
        secs,
        docs.len() as f64 / secs.max(1e-9),
        out.display()
    );
    if let Some(field) = &flags.label_field {
        println!("mean influence by {field} (highest first):");
        for (k, mean, n) in influence::mean_by_label(&docs, &scored, field) {
            println!("  {k:<16} {mean:>12.4e}  ({n} docs)");
        }
    }
    Ok(())
}

pub fn validate(corpus: &CorpusArgs, flags: &ValidateArgs, out: &Path) -> Result<()> {
    let pool = read_texts(corpus)?;
    let refs = read_texts(&corpus.with_input(&flags.reference))?;
    let model_dir = match &flags.model {
        Some(m) => m.clone(),
        None => {
            let dir = out.join("tiny-model");
            let report = influence::validate::train_tiny_model(&pool, &dir)?;
            eprintln!(
                "trained a tiny model ({} parameters): validation loss {:.3} -> {:.3}",
                report.parameters, report.initial_val_loss, report.final_val_loss
            );
            dir
        }
    };
    let loaded = model::load(&model_dir, DType::F64, &Device::Cpu)?;
    let (per_head, whole) = influence::validate::validate_texts(&loaded, &pool, &refs, &flags.to_arguments())?;
    println!("per-head attention factors:\n{per_head}\nwhole-layer factors:\n{whole}");
    let path = out.join("validate.json");
    let json = serde_json::to_string_pretty(&serde_json::json!({"per_head": per_head, "whole_layer": whole}))?;
    crate::atomic::write_string_atomic(&path, &json).map_err(crate::path_io::at(&path))?;
    Ok(())
}

fn load(model: &Path) -> Result<LoadedModel> {
    model::load(model, DType::F32, &Device::Cpu).with_context(|| format!("loading model {}", model.display()))
}

fn read_texts(corpus: &CorpusArgs) -> Result<Vec<String>> {
    let mut reader = corpus.open()?;
    let texts = reader.by_ref().map(|d| d.map(|d| d.text)).collect::<Result<Vec<_>, _>>()?;
    eprintln!("{}: {}", corpus.input.display(), reader.report());
    Ok(texts)
}

fn encode_all(loaded: &LoadedModel, texts: &[String]) -> Result<Vec<Vec<u32>>> {
    texts.iter().map(|t| Ok(loaded.encode(t)?)).collect()
}
