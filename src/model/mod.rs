//! Model stage: a Llama-family causal LM in candle whose per-document loss gradients we can take,
//! layer by layer.
//!
//! - [`config`]: hyper-parameters from a Hugging Face `config.json`;
//! - [`llama`]: the forward pass in differentiable candle ops;
//! - [`ops`]: fused causal softmax and cross-entropy with hand-written backward passes;
//! - [`layers`]: the layer vocabulary and every tensor's name;
//! - [`capture`]: per-document loss, per-layer inputs `a_t` and output gradients `g_t`;
//! - [`gguf`]: loading a GGUF checkpoint (dequantised to f32) and its tokenizer;
//! - [`train`]: the in-house proxy (`quad proxy train`).

pub mod capture;
pub mod config;
pub mod gguf;
pub mod layers;
pub mod llama;
pub mod ops;
pub mod train;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use tokenizers::Tokenizer;

pub use capture::{BatchCapture, DocCapture, Labels, LayerCapture};
pub use layers::{LayerId, LayerKind, LayerSelection};
pub use config::LlamaConfig;
pub use llama::LlamaModel;

/// Errors of the model stage.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Weights(#[from] crate::weights::WeightsError),
    #[error("model config: {0}")]
    Config(String),
    #[error("weights lack tensor {0}")]
    MissingTensor(String),
    #[error("tensor {name} has shape {found:?}, expected {expected:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{0}")]
    Format(String),
    #[error("tensor op: {0}")]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Io(#[from] crate::path_io::PathIoError),
    /// The caller asked training to stop (its event callback broke off); nothing was saved.
    #[error("training stopped at step {step}; nothing was saved")]
    Interrupted { step: usize },
}

impl ModelError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        ModelError::Io(crate::path_io::PathIoError::new(path, source))
    }
}

/// A model with its tokenizer.
pub struct LoadedModel {
    pub model: LlamaModel,
    pub tokenizer: Tokenizer,
    /// What was loaded (folder or file), for reports and cache keys.
    pub source: PathBuf,
}

impl LoadedModel {
    /// Tokens in `text`, counted a [`crate::corpus::TEXT_PIECE_BYTES`] piece at a time (cut at whitespace, so the
    /// count is that of the whole text; memory stays that of one piece).
    pub fn count_tokens(&self, text: &str) -> Result<usize, ModelError> {
        count_tokens(&self.tokenizer, text)
    }

    /// Token ids of a text, without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        encode(&self.tokenizer, text)
    }
}

/// [`LoadedModel::count_tokens`] with a tokenizer alone.
pub fn count_tokens(tokenizer: &Tokenizer, text: &str) -> Result<usize, ModelError> {
    let mut rest = text;
    let mut n = 0;
    while !rest.is_empty() {
        let (head, tail) = crate::corpus::text_split(rest);
        n += encode(tokenizer, head)?.len();
        rest = tail;
    }
    Ok(n)
}

/// [`LoadedModel::encode`] with a tokenizer alone.
pub fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>, ModelError> {
    let enc = tokenizer.encode(text, false).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    Ok(enc.get_ids().to_vec())
}

/// Loads a model: a Hugging Face folder (`config.json`, `model.safetensors`, `tokenizer.json`) or
/// a `.gguf` file (dequantised to f32). Pickle checkpoints are refused.
pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<LoadedModel, ModelError> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        let (model, tokenizer) = gguf::load(path, dtype, device)?;
        return Ok(LoadedModel {
            model,
            tokenizer,
            source: path.to_path_buf(),
        });
    }
    let weights = crate::weights::safetensors_file(path)?;
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent().unwrap_or(Path::new(".")).to_path_buf()
    };
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
    let config: LlamaConfig = serde_json::from_str(&text)
        .map_err(|e| ModelError::Config(format!("{}: {e}", cfg_path.display())))?;
    // Checked before any weight is read or any size is taken from it.
    config.validate().map_err(|e| ModelError::Config(format!("{}: {e}", cfg_path.display())))?;
    let tensors: HashMap<String, Tensor> = candle_core::safetensors::load(&weights, device)
        .map_err(|e| ModelError::Format(format!("{}: {e}", weights.display())))?;
    // Some checkpoints store a tied lm_head anyway; drop it so the tie holds.
    let mut tensors = tensors;
    if config.tie_word_embeddings {
        tensors.remove(layers::names::LM_HEAD);
    }
    // Weights that do not fit the config: say which file.
    let model = LlamaModel::from_tensors(config, tensors, dtype, device).map_err(|e| match e {
        ModelError::Shape { .. } | ModelError::MissingTensor(_) | ModelError::Config(_) | ModelError::Format(_) => {
            ModelError::Format(format!("{} (with {}): {e}", weights.display(), cfg_path.display()))
        }
        e => e,
    })?;
    let tok_path = dir.join("tokenizer.json");
    let tokenizer = Tokenizer::from_file(&tok_path)
        .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", tok_path.display())))?;
    check_tokenizer(&tokenizer, &model.config, &tok_path, &weights)?;
    Ok(LoadedModel {
        model,
        tokenizer,
        source: path.to_path_buf(),
    })
}

/// Refuses a tokenizer whose ids reach past the model's embedding rows (a tokenizer of another
/// model): every such token would fail deep in the forward pass.
pub(crate) fn check_tokenizer(tokenizer: &Tokenizer, config: &LlamaConfig, tokenizer_file: &Path, model_file: &Path) -> Result<(), ModelError> {
    if let Some(max) = tokenizer.get_vocab(true).values().max() {
        if *max as usize >= config.vocab_size {
            return Err(ModelError::Tokenizer(format!(
                "{} gives token ids up to {max}, but {} has vocab_size {}: the tokenizer and the model do not match",
                tokenizer_file.display(),
                model_file.display(),
                config.vocab_size
            )));
        }
    }
    Ok(())
}

/// Keeps large freed blocks in the heap instead of returning them to the OS.
///
/// candle allocates a fresh buffer for every tensor op; under glibc's default policy each buffer
/// over the (at most 32 MB) mmap threshold is a fresh `mmap` whose pages the kernel must zero and
/// fault in, which on 2 cores cost 40% of BERT embedding time in system calls. Raising the
/// thresholds makes such buffers reusable. Call once at program start (the CLI and benches do).
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning parameters; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
