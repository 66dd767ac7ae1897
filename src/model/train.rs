//! The in-house proxy: a small Llama-style model trained from scratch on a seeded sample of the
//! pool (`quad proxy train`), the default proxy when the user names no model.
//!
//! Tokenizer: a byte-level BPE trained on the training documents (tokenizers crate), or a given
//! `tokenizer.json`. Training: AdamW, linear warm-up then cosine decay to 10% of the peak rate,
//! global gradient-norm clipping, random windows of `context + 1` tokens from the concatenated
//! training stream (documents separated by `<|endoftext|>`). The validation loss is measured on fixed
//! windows of held-out documents. Output, in Hugging Face layout so it loads like any checkpoint:
//! `config.json`, `model.safetensors`, `tokenizer.json`, plus `train_log.csv`.


use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::Serialize;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use super::capture::LossBatch;
use super::{LlamaConfig, LlamaModel, ModelError};

/// End-of-document token of the trained tokenizer.
pub const EOS: &str = "<|endoftext|>";

/// Proxy training settings.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyParams {
    pub layers: usize,
    pub width: usize,
    pub heads: usize,
    pub context: usize,
    /// BPE vocabulary size (ignored with `tokenizer`).
    pub vocab_size: usize,
    /// Use this `tokenizer.json` instead of training one.
    pub tokenizer: Option<PathBuf>,
    pub steps: usize,
    /// Sequences (windows of `context` tokens) per step.
    pub batch_size: usize,
    pub lr: f64,
    pub warmup: usize,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value.
    pub clip: f64,
    pub seed: u64,
    /// At most this many documents are sampled from the pool (seeded).
    pub max_docs: usize,
    /// Share of sampled documents held out for validation.
    pub val_fraction: f64,
    /// Validate every this many steps.
    pub eval_every: usize,
    /// Stop early when training has run this long.
    pub time_limit: Option<Duration>,
}

impl Default for ProxyParams {
    fn default() -> Self {
        Self {
            layers: 4,
            width: 256,
            heads: 4,
            context: 256,
            vocab_size: 4096,
            tokenizer: None,
            steps: 400,
            batch_size: 8,
            lr: 3e-3,
            warmup: 30,
            weight_decay: 0.1,
            clip: 1.0,
            seed: 0,
            max_docs: 20_000,
            val_fraction: 0.05,
            eval_every: 25,
            time_limit: None,
        }
    }
}

impl ProxyParams {
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.layers == 0 || self.width == 0 || self.heads == 0 || self.context < 2 {
            return bad("layers, width and heads must be positive and context at least 2".into());
        }
        if self.width % self.heads != 0 || (self.width / self.heads) % 2 != 0 {
            return bad(format!("width {} must split into {} heads of even size", self.width, self.heads));
        }
        if self.steps == 0 || self.batch_size == 0 || self.eval_every == 0 {
            return bad("steps, batch size and eval interval must be positive".into());
        }
        let finite = self.lr.is_finite() && self.clip.is_finite() && self.weight_decay.is_finite();
        if !(self.lr > 0.0 && self.clip > 0.0 && self.weight_decay >= 0.0 && finite) {
            return bad("lr and clip must be finite and positive, weight decay finite and non-negative".into());
        }
        if !(self.val_fraction > 0.0 && self.val_fraction < 0.5) {
            return bad("validation fraction must be in (0, 0.5)".into());
        }
        if self.tokenizer.is_none() && self.vocab_size < 300 {
            return bad("vocab size must be at least 300 (256 bytes plus merges)".into());
        }
        Ok(())
    }
}

/// One row of `train_log.csv`.
#[derive(Debug, Clone, Serialize)]
pub struct LogRow {
    pub step: usize,
    pub train_loss: f64,
    pub val_loss: f64,
    pub tokens_per_s: f64,
    pub lr: f64,
}

/// What training did.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub parameters: usize,
    pub train_docs: usize,
    pub val_docs: usize,
    pub train_tokens: usize,
    pub steps: usize,
    pub initial_val_loss: f64,
    pub final_val_loss: f64,
    pub seconds: f64,
    pub log: Vec<LogRow>,
}

/// Progress of training, for a progress bar.
#[derive(Debug, Clone, Copy)]
pub enum TrainEvent {
    TokenizerReady { vocab: usize },
    Step { step: usize, of: usize, loss: f64 },
    Validated { step: usize, val_loss: f64 },
}

/// Trains a byte-level BPE on `texts` with `EOS` as its one special token.
pub fn train_bpe(texts: &[String], vocab_size: usize) -> Result<Tokenizer, ModelError> {
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(vec![AddedToken::from(EOS, true)])
        .build()
        .into();
    tokenizer
        .train(&mut trainer, texts.iter())
        .map_err(|e| ModelError::Tokenizer(format!("training BPE: {e}")))?;
    Ok(tokenizer)
}

/// Learning rate at `step` (0-based): linear warm-up to `lr`, then cosine decay to `lr / 10`.
pub fn learning_rate(p: &ProxyParams, step: usize) -> f64 {
    if step < p.warmup {
        return p.lr * (step + 1) as f64 / p.warmup as f64;
    }
    let span = (p.steps - p.warmup).max(1) as f64;
    let progress = ((step - p.warmup) as f64 / span).min(1.0);
    let floor = p.lr / 10.0;
    floor + (p.lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

pub(crate) fn tokenize(tokenizer: &Tokenizer, texts: &[String]) -> Result<Vec<Vec<u32>>, ModelError> {
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    Ok(tokenizer
        .encode_batch(refs, false)
        .map_err(|e| ModelError::Tokenizer(e.to_string()))?
        .into_iter()
        .map(|e| e.get_ids().to_vec())
        .collect())
}

/// Concatenates documents, each followed by `eos`.
pub(crate) fn stream(docs: &[Vec<u32>], eos: u32) -> Vec<u32> {
    let mut s = Vec::with_capacity(docs.iter().map(|d| d.len() + 1).sum());
    for d in docs {
        s.extend_from_slice(d);
        s.push(eos);
    }
    s
}

/// Mean next-token loss over fixed windows (no gradients).
pub(crate) fn eval_loss(model: &LlamaModel, windows: &[&[u32]], context: usize) -> candle_core::Result<f64> {
    let mut total = 0.0;
    let mut n = 0usize;
    for chunk in windows.chunks(8) {
        let batch = LossBatch::new(chunk, context, false, model)?;
        let logits = model.forward(&batch.ids, None)?.detach();
        let l = batch.loss(&batch.nll(&logits)?)?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let tokens: usize = chunk.iter().map(|w| w.len() - 1).sum();
        total += l * tokens as f64;
        n += tokens;
    }
    Ok(total / n.max(1) as f64)
}

/// Trains the proxy on `texts` (the pool's documents) and saves it into `out`.
pub fn train_proxy(
    texts: Vec<String>,
    params: &ProxyParams,
    out: &Path,
    on_event: impl FnMut(TrainEvent) -> ControlFlow<()>,
) -> Result<TrainReport, ModelError> {
    let pick = |idx: &[usize]| Ok(idx.iter().map(|&i| texts[i].clone()).collect());
    train_proxy_from(texts.len(), pick, params, out, on_event)
}

/// [`train_proxy`] on a pool of `n` texts that `fetch` reads by index: only the seeded sample
/// (at most `max_docs`) is ever in memory. Same texts, same model as [`train_proxy`].
pub fn train_proxy_from(
    n: usize,
    mut fetch: impl FnMut(&[usize]) -> Result<Vec<String>, ModelError>,
    params: &ProxyParams,
    out: &Path,
    mut on_event: impl FnMut(TrainEvent) -> ControlFlow<()>,
) -> Result<TrainReport, ModelError> {
    params.validate()?;
    let started = Instant::now();
    let (train_idx, val_idx, mut rng) = sample_split(n, params)?;
    let (texts, val_texts) = (fetch(&train_idx)?, fetch(&val_idx)?);

    let (tokenizer, eos) = proxy_tokenizer(params, &texts)?;
    let vocab = tokenizer.get_vocab_size(true);
    let _ = on_event(TrainEvent::TokenizerReady { vocab });

    let train_stream = stream(&tokenize(&tokenizer, &texts)?, eos);
    let val_stream = stream(&tokenize(&tokenizer, &val_texts)?, eos);
    let win = params.context + 1;
    if train_stream.len() < win + 1 || val_stream.len() < 2 {
        return Err(ModelError::Config(format!(
            "too little text: {} training tokens for windows of {win}",
            train_stream.len()
        )));
    }
    let val_windows = validation_windows(&val_stream, params.context);

    let mut config = LlamaConfig::small(vocab, params.width, params.layers, params.heads, params.context);
    config.eos_token_id = Some(eos);
    let device = Device::Cpu;
    let model = LlamaModel::random(config, DType::F32, &device, params.seed)?;
    let initial_val = eval_loss(&model, &val_windows, params.context)?;
    let _ = on_event(TrainEvent::Validated { step: 0, val_loss: initial_val });
    let mut log = LogWindow::new(initial_val);
    let steps_done = optimise(&model, &train_stream, params, &mut rng, |step, l, lr| {
        log.add(params.batch_size * params.context, l);
        // The caller may stop training at any step (Ctrl-C): nothing is saved.
        if on_event(TrainEvent::Step { step, of: params.steps, loss: l }).is_break() {
            return Err(ModelError::Interrupted { step });
        }
        let out_of_time = params.time_limit.is_some_and(|t| started.elapsed() >= t);
        if step % params.eval_every == 0 || step == params.steps || out_of_time {
            let val_loss = eval_loss(&model, &val_windows, params.context)?;
            let _ = on_event(TrainEvent::Validated { step, val_loss });
            log.close(step, val_loss, lr);
        }
        Ok(!out_of_time)
    })?;
    let (log, last_val) = (log.rows, log.last_val);
    save_proxy(out, &model, &tokenizer, &log)?;
    Ok(TrainReport {
        parameters: model.num_parameters(),
        train_docs: texts.len(),
        val_docs: val_texts.len(),
        train_tokens: train_stream.len(),
        steps: steps_done,
        initial_val_loss: initial_val,
        final_val_loss: last_val,
        seconds: started.elapsed().as_secs_f64(),
        log,
    })
}

/// The proxy's tokenizer (the given one, or a byte-level BPE trained on `texts`) and its
/// end-of-text id.
fn proxy_tokenizer(params: &ProxyParams, texts: &[String]) -> Result<(Tokenizer, u32), ModelError> {
    let tokenizer = match &params.tokenizer {
        Some(path) => Tokenizer::from_file(path).map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?,
        None => train_bpe(texts, params.vocab_size)?,
    };
    let eos = tokenizer.token_to_id(EOS).or_else(|| tokenizer.token_to_id("</s>")).unwrap_or(0);
    Ok((tokenizer, eos))
}

/// The training log, one row per validation: the mean training loss and the throughput since
/// the last one.
struct LogWindow {
    rows: Vec<LogRow>,
    last_val: f64,
    tokens: usize,
    loss: f64,
    steps: usize,
    start: Instant,
}

impl LogWindow {
    fn new(initial_val: f64) -> Self {
        let first = LogRow { step: 0, train_loss: f64::NAN, val_loss: initial_val, tokens_per_s: 0.0, lr: 0.0 };
        Self { rows: vec![first], last_val: initial_val, tokens: 0, loss: 0.0, steps: 0, start: Instant::now() }
    }

    fn add(&mut self, tokens: usize, loss: f64) {
        self.tokens += tokens;
        self.loss += loss;
        self.steps += 1;
    }

    /// A validation at `step`: closes the window into a row.
    fn close(&mut self, step: usize, val_loss: f64, lr: f64) {
        self.last_val = val_loss;
        self.rows.push(LogRow {
            step,
            train_loss: self.loss / self.steps as f64,
            val_loss,
            tokens_per_s: self.tokens as f64 / self.start.elapsed().as_secs_f64(),
            lr,
        });
        (self.tokens, self.loss, self.steps, self.start) = (0, 0.0, 0, Instant::now());
    }
}

/// Writes the proxy's folder: the model, tokenizer.json and train_log.csv (each atomically).
/// A tokenizer as the proxy's folder holds it (`tokenizer.json`'s text).
pub fn tokenizer_json(tokenizer: &Tokenizer) -> Result<String, ModelError> {
    tokenizer.to_string(true).map_err(|e| ModelError::Tokenizer(e.to_string()))
}

/// The tokenizer [`train_proxy_from`] trains (or loads) with the same documents and params,
/// without the model: the same sample, the same texts, the same BPE. The policies that only
/// count tokens (no scoring, no forward pass) need no more.
pub fn train_tokenizer_from(
    n: usize,
    mut fetch: impl FnMut(&[usize]) -> Result<Vec<String>, ModelError>,
    params: &ProxyParams,
) -> Result<Tokenizer, ModelError> {
    params.validate()?;
    let (train_idx, _, _) = sample_split(n, params)?;
    Ok(proxy_tokenizer(params, &fetch(&train_idx)?)?.0)
}

fn save_proxy(out: &Path, model: &LlamaModel, tokenizer: &Tokenizer, log: &[LogRow]) -> Result<(), ModelError> {
    model.save(out)?;
    let tok_path = out.join("tokenizer.json");
    let tok_json = tokenizer_json(tokenizer)?;
    crate::atomic::write_string_atomic(&tok_path, &tok_json).map_err(|e| ModelError::io(&tok_path, e))?;
    let log_path = out.join("train_log.csv");
    crate::atomic::write_atomic(&log_path, |w| {
        writeln!(w, "step,train_loss,val_loss,tokens_per_s,lr")?;
        for r in log {
            writeln!(w, "{},{:.6},{:.6},{:.1},{:.3e}", r.step, r.train_loss, r.val_loss, r.tokens_per_s, r.lr)?;
        }
        Ok(())
    })
    .map_err(|e| ModelError::io(&log_path, e))
}

/// Trains `model` in place on random windows of `context + 1` tokens of `train_stream`: AdamW,
/// warm-up + cosine schedule, global gradient clipping, `params.steps` steps of `batch_size`
/// windows. `after_step(step, loss, lr)` (1-based step) runs after each step and returns false to
/// stop early. Returns the steps done.
pub(crate) fn optimise(
    model: &LlamaModel,
    train_stream: &[u32],
    params: &ProxyParams,
    rng: &mut Xoshiro256PlusPlus,
    mut after_step: impl FnMut(usize, f64, f64) -> Result<bool, ModelError>,
) -> Result<usize, ModelError> {
    let win = params.context + 1;
    if train_stream.len() < win + 1 {
        return Err(ModelError::Config(format!(
            "too little text: {} training tokens for windows of {win}",
            train_stream.len()
        )));
    }
    let mut opt = AdamW::new(
        model.vars(),
        ParamsAdamW {
            lr: params.lr,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: params.weight_decay,
        },
    )?;
    for step in 0..params.steps {
        let lr = learning_rate(params, step);
        opt.set_learning_rate(lr);
        let seqs: Vec<&[u32]> = (0..params.batch_size)
            .map(|_| {
                let s = rng.gen_range(0..train_stream.len() - win);
                &train_stream[s..s + win]
            })
            .collect();
        let batch = LossBatch::new(&seqs, params.context, false, model)?;
        let logits = model.forward(&batch.ids, None)?;
        let loss = batch.loss(&batch.nll(&logits)?)?;
        let mut grads = loss.backward()?;
        clip_gradients(model, &mut grads, params.clip)?;
        opt.step(&grads)?;
        let l = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !l.is_finite() {
            return Err(ModelError::Format(format!("training diverged at step {step} (loss {l})")));
        }
        if !after_step(step + 1, l, lr)? {
            return Ok(step + 1);
        }
    }
    Ok(params.steps)
}

/// Scales all gradients by `min(1, clip / ‖g‖)` where ‖g‖ is the global L2 norm.
fn clip_gradients(
    model: &LlamaModel,
    grads: &mut candle_core::backprop::GradStore,
    clip: f64,
) -> candle_core::Result<f64> {
    let mut sq = 0.0;
    for v in model.vars() {
        if let Some(g) = grads.get(v.as_tensor()) {
            sq += g.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        }
    }
    let norm = sq.sqrt();
    if norm > clip {
        let scale = clip / norm;
        for v in model.vars() {
            if let Some(g) = grads.get(v.as_tensor()) {
                let scaled = (g * scale)?;
                grads.insert(v.as_tensor(), scaled);
            }
        }
    }
    Ok(norm)
}

/// The seeded sample of a pool of `n` texts, as indices: shuffled, cut to `max_docs`, split into
/// (train, validation). Returns the RNG too, so training continues the same seeded stream.
fn sample_split(n: usize, params: &ProxyParams) -> Result<(Vec<usize>, Vec<usize>, Xoshiro256PlusPlus), ModelError> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(params.seed);
    // Shuffling indices draws from the RNG exactly as shuffling the texts would.
    let mut texts: Vec<usize> = (0..n).collect();
    texts.shuffle(&mut rng);
    texts.truncate(params.max_docs);
    if texts.len() < 2 {
        return Err(ModelError::Config(format!(
            "need at least 2 documents to train a proxy, got {}",
            texts.len()
        )));
    }
    let n_val = ((texts.len() as f64 * params.val_fraction).round() as usize).clamp(1, texts.len() - 1);
    let val = texts.split_off(texts.len() - n_val);
    Ok((texts, val, rng))
}

/// Fixed validation windows of `context + 1` tokens: consecutive, non-overlapping, at most 64.
fn validation_windows(stream: &[u32], context: usize) -> Vec<&[u32]> {
    stream.chunks(context + 1).filter(|w| w.len() >= 2).take(64).collect()
}

/// Validation loss of a (reloaded) proxy on the held-out windows `train_proxy` used with the same
/// texts and params — to check that a saved proxy reproduces its logged loss.
pub fn validation_loss(
    model: &LlamaModel,
    tokenizer: &Tokenizer,
    texts: Vec<String>,
    params: &ProxyParams,
) -> Result<f64, ModelError> {
    let (_, val_idx, _) = sample_split(texts.len(), params)?;
    let val_texts: Vec<String> = val_idx.iter().map(|&i| texts[i].clone()).collect();
    let eos = tokenizer.token_to_id(EOS).unwrap_or(0);
    let val_stream = stream(&tokenize(tokenizer, &val_texts)?, eos);
    Ok(eval_loss(model, &validation_windows(&val_stream, params.context), params.context)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_a_tenth() {
        let p = ProxyParams {
            steps: 100,
            warmup: 10,
            lr: 1.0,
            ..Default::default()
        };
        assert!((learning_rate(&p, 0) - 0.1).abs() < 1e-12);
        assert!((learning_rate(&p, 9) - 1.0).abs() < 1e-12);
        assert!((learning_rate(&p, 10) - 1.0).abs() < 1e-12);
        assert!((learning_rate(&p, 55) - 0.55).abs() < 1e-12);
        assert!((learning_rate(&p, 100) - 0.1).abs() < 1e-12);
    }
}
