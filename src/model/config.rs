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

    /// Checks the shapes fit together, with a message naming the offending field.
    pub fn validate(&self) -> Result<(), String> {
        let h = self.num_attention_heads;
        if h == 0 || self.hidden_size % h != 0 {
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
        if let Some(act) = &self.hidden_act {
            if act != "silu" && act != "swish" {
                return Err(format!("hidden_act {act:?} is not supported (Llama-family models use silu)"));
            }
        }
        if self.vocab_size == 0 || self.num_hidden_layers == 0 || self.intermediate_size == 0 {
            return Err("vocab_size, num_hidden_layers and intermediate_size must be positive".into());
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
