//! `quad proxy train`, `quad factors`, `quad influence` and `quad validate`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use quad_select::influence::stage::{self as infl, FactorArguments, ScoreArguments};
use quad_select::influence::{self, store, Damping, Strategy};
use quad_select::model::train::{self, TrainEvent};
use quad_select::model::{self, LayerSelection, LoadedModel};

use crate::args::{CorpusArgs, FisherArg, ProxyArgs};
use crate::progress::templated;

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

/// The flags of `quad factors`.
pub struct FactorsCmd {
    pub corpus: CorpusArgs,
    pub model: PathBuf,
    pub args: FactorArguments,
    pub out: PathBuf,
}

pub fn factors(cmd: FactorsCmd) -> Result<()> {
    let loaded = load(&cmd.model)?;
    let tokens = encode_all(&loaded, &read_texts(&cmd.corpus)?)?;
    // Documents with fewer than two tokens have no loss to fit on (as in `quad select`).
    let candidates: Vec<&[u32]> = tokens.iter().filter(|t| t.len() >= 2).map(Vec::as_slice).collect();
    let started = Instant::now();
    let sha = store::model_fingerprint(&cmd.model)?;
    let (factors, header) =
        infl::fit_factors(&loaded, &cmd.model, &sha, &candidates, &cmd.args, influence::DEFAULT_DAMPING_REL)?;
    store::save(&factors, &header, &cmd.out)?;
    let blocks: usize = factors.layers.iter().map(|l| l.blocks.len()).sum();
    println!(
        "fitted {} layers ({} blocks) on {} documents, {} tokens in {:.1} s -> {}",
        factors.layers.len(),
        blocks,
        factors.examples,
        factors.tokens,
        started.elapsed().as_secs_f64(),
        cmd.out.display()
    );
    Ok(())
}

/// The flags of `quad influence`.
pub struct InfluenceCmd {
    pub corpus: CorpusArgs,
    pub model: PathBuf,
    pub factors: PathBuf,
    pub reference: PathBuf,
    pub strategy: Strategy,
    pub damping: Damping,
    pub label_field: Option<String>,
    pub project: Option<influence::Projection>,
    pub max_tokens: Option<usize>,
    pub out: PathBuf,
}

pub fn influence(cmd: InfluenceCmd) -> Result<()> {
    let loaded = load(&cmd.model)?;
    let (fitted, header) = store::load_for_model(&cmd.factors, &cmd.model)?;
    let args = FactorArguments::matching(&fitted, &header);
    let scoring = ScoreArguments {
        strategy: cmd.strategy,
        damping: cmd.damping,
        max_tokens: cmd.max_tokens,
    };
    let ref_tokens = encode_all(&loaded, &read_texts(&cmd.corpus.with_input(&cmd.reference))?)?;
    let grad = infl::reference_gradient(&loaded, &ref_tokens, &args, scoring.max_tokens, &mut |_, _| {
        std::ops::ControlFlow::Continue(())
    })?;
    let mut ihvp = infl::reference_ihvp(Some(&fitted), &grad, header.per_head, &scoring)?;
    if let Some(p) = cmd.project {
        ihvp = ihvp.project(p);
    }
    let mut reader = cmd.corpus.open()?;
    let docs: Vec<_> = reader.by_ref().collect::<Result<_, _>>()?;
    eprintln!("{}", reader.report());
    let bar = templated(
        docs.len() as u64,
        "influence: [{bar:30}] {pos}/{len} docs, {per_sec} [{elapsed_precise}<{eta_precise}]",
    );
    let started = Instant::now();
    let scored =
        influence::score_documents(&loaded, &ihvp, &docs, &args.gradient_options(), scoring.max_tokens, || bar.inc(1))?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    influence::write_scores(&cmd.out, &docs, &scored)?;
    let n_scored = scored.iter().flatten().count();
    println!(
        "scored {} documents ({} skipped: fewer than two tokens) with {:?} in {:.1} s ({:.2} docs/s) -> {}",
        n_scored,
        docs.len() - n_scored,
        cmd.strategy,
        secs,
        docs.len() as f64 / secs.max(1e-9),
        cmd.out.display()
    );
    if let Some(field) = cmd.label_field {
        println!("mean influence by {field} (highest first):");
        for (k, mean, n) in influence::mean_by_label(&docs, &scored, &field) {
            println!("  {k:<16} {mean:>12.4e}  ({n} docs)");
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn validate(
    corpus: &CorpusArgs,
    reference: &Path,
    model: Option<PathBuf>,
    damping_rel: f64,
    fisher: FisherArg,
    layers: &LayerSelection,
    tokens: usize,
    out: &Path,
) -> Result<()> {
    let pool = read_texts(corpus)?;
    let refs = read_texts(&corpus.with_input(reference))?;
    let model_dir = match model {
        Some(m) => m,
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
    let labels = quad_select::influence::stage::Fisher::from(fisher).labels(0);
    let (per_head, whole) = influence::validate::validate_texts(&loaded, &pool, &refs, tokens, damping_rel, labels, layers)?;
    println!("per-head attention factors:\n{per_head}\nwhole-layer factors:\n{whole}");
    let path = out.join("validate.json");
    let json = serde_json::to_string_pretty(&serde_json::json!({"per_head": per_head, "whole_layer": whole}))?;
    quad_select::atomic::write_string_atomic(&path, &json).map_err(quad_select::path_io::at(&path))?;
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

/// `--damping` (absolute) or `--damping-rel`.
pub fn damping(rel: f64, absolute: Option<f64>) -> Damping {
    match absolute {
        Some(d) => Damping::Absolute(d),
        None => Damping::Relative(rel),
    }
}

/// `--project DIM` with its seed; zero is refused.
pub fn projection(dim: Option<usize>, seed: u64) -> Result<Option<influence::Projection>> {
    match dim {
        Some(0) => bail!("--project must be positive"),
        Some(dim) => Ok(Some(influence::Projection { dim, seed })),
        None => Ok(None),
    }
}
