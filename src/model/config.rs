//! Hyper-parameters of a Llama-family model, read from a Hugging Face `config.json`.

use serde::{Deserialize, Serialize};

/// The subset of a Hugging Face Llama / Qwen2 / SmolLM `config.json` that the forward pass needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Grouped-query attention: K/V heads (defaults to `num_attention_heads`).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    /// The output projection shares the token embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections (Qwen2 style).
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    #[serde(default = "default_model_type")]
    pub model_type: String,
    #[serde(default)]
    pub hidden_act: Option<String>,
}

/// The most decoder layers a config may declare (the largest public Llama has 126).
pub const MAX_LAYERS: usize = 1024;

/// The most elements one weight tensor may have (2³⁴: 64 GiB of f32, beyond any proxy).
pub const MAX_TENSOR_ELEMENTS: usize = 1 << 34;

/// `model_type`s whose decoder is this file's: Llama and the families built the same way.
pub const LLAMA_MODEL_TYPES: &[&str] = &["llama", "qwen2"];

/// The size checks every model config shares: each of `positive` above 0 (`num_hidden_layers`
/// also at most [`MAX_LAYERS`]), and each product in `tensors` (a weight's rows × columns) at most
/// [`MAX_TENSOR_ELEMENTS`]. The message names the field and its value.
pub fn check_sizes(positive: &[(&str, usize)], tensors: &[(&str, usize, usize)]) -> Result<(), String> {
    if let Some((field, v)) = positive.iter().find(|(_, v)| *v == 0) {
        return Err(format!("{field} = {v}: must be positive"));
    }
    if let Some((field, v)) = positive.iter().find(|(f, v)| *f == "num_hidden_layers" && *v > MAX_LAYERS) {
        return Err(format!("{field} = {v}: more than {MAX_LAYERS}"));
    }
    for (field, a, b) in tensors {
        if a.checked_mul(*b).is_none_or(|n| n > MAX_TENSOR_ELEMENTS) {
            return Err(format!("{field} = {a} × {b}: more than {MAX_TENSOR_ELEMENTS} elements in one tensor"));
        }
    }
    Ok(())
}

fn default_eps() -> f64 {
    1e-5
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_max_pos() -> usize {
    2048
}
fn default_model_type() -> String {
    "llama".into()
}

impl LlamaConfig {
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Checks every field against the bounds the forward pass needs, with a message naming the
    /// field and its value: positive sizes, heads that divide the width (and K/V heads that
    /// divide the heads), an even head dimension, a context of at least two positions, a finite
    /// positive `rms_norm_eps` and `rope_theta`, and a Llama-family `model_type`. Sizes are also
    /// bounded (no tensor over [`MAX_TENSOR_ELEMENTS`], at most [`MAX_LAYERS`] layers), so a
    /// config cannot ask for more memory than any real checkpoint holds before its weights are
    /// checked against it.
    pub fn validate(&self) -> Result<(), String> {
        check_sizes(
            &[
                ("vocab_size", self.vocab_size),
                ("hidden_size", self.hidden_size),
                ("intermediate_size", self.intermediate_size),
                ("num_hidden_layers", self.num_hidden_layers),
                ("num_attention_heads", self.num_attention_heads),
            ],
            &[
                ("vocab_size × hidden_size", self.vocab_size, self.hidden_size),
                ("intermediate_size × hidden_size", self.intermediate_size, self.hidden_size),
            ],
        )?;
        let h = self.num_attention_heads;
        if self.hidden_size % h != 0 {
            return Err(format!(
                "hidden_size {} is not divisible by num_attention_heads {h}",
                self.hidden_size
            ));
        }
        if self.head_dim() % 2 != 0 {
            return Err(format!("head dimension {} must be even for rotary embeddings", self.head_dim()));
        }
        let kv = self.num_kv_heads();
        if kv == 0 || h % kv != 0 {
            return Err(format!("num_attention_heads {h} is not a multiple of num_key_value_heads {kv}"));
        }
        if self.max_position_embeddings < 2 {
            return Err(format!(
                "max_position_embeddings = {}: a causal LM needs at least 2 positions",
                self.max_position_embeddings
            ));
        }
        for (field, v) in [("rms_norm_eps", self.rms_norm_eps), ("rope_theta", self.rope_theta)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{field} = {v}: must be finite and positive"));
            }
        }
        // An eps as large as the activations' scale flattens every norm to ~0: no model is trained so.
        if self.rms_norm_eps >= 1.0 {
            return Err(format!("rms_norm_eps = {}: must be below 1", self.rms_norm_eps));
        }
        if !LLAMA_MODEL_TYPES.contains(&self.model_type.as_str()) {
            return Err(format!(
                "model_type {:?} is not a Llama-family decoder (one of {})",
                self.model_type,
                LLAMA_MODEL_TYPES.join(", ")
            ));
        }
        if let Some(act) = &self.hidden_act {
            if act != "silu" && act != "swish" {
                return Err(format!("hidden_act {act:?} is not supported (Llama-family models use silu)"));
            }
        }
        Ok(())
    }

    /// A small configuration for tests and the in-house proxy.
    pub fn small(vocab_size: usize, hidden: usize, layers: usize, heads: usize, context: usize) -> Self {
        Self {
            vocab_size,
            hidden_size: hidden,
            // SwiGLU width ≈ 8/3 · hidden, rounded up to a multiple of 8.
            intermediate_size: (hidden * 8 / 3).div_ceil(8) * 8,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: Some(heads),
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            max_position_embeddings: context,
            tie_word_embeddings: true,
            attention_bias: false,
            bos_token_id: None,
            eos_token_id: None,
            model_type: "llama".into(),
            hidden_act: Some("silu".into()),
        }
    }
}
