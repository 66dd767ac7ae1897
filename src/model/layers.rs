//! The layer vocabulary of a Llama-family model, and every tensor's name, spelled once.
//!
//! [`LayerKind`] / [`LayerId`] / [`LayerSelection`] name the linear layers that gradients are
//! captured on; [`names`] gives the Hugging Face name of every tensor (what loading, saving,
//! `named_vars` and the GGUF mapping all use) and its GGUF counterpart.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The linear layers of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LayerKind {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl LayerKind {
    pub const ALL: [LayerKind; 7] = [
        LayerKind::Q,
        LayerKind::K,
        LayerKind::V,
        LayerKind::O,
        LayerKind::Gate,
        LayerKind::Up,
        LayerKind::Down,
    ];
    pub const ATTENTION: [LayerKind; 4] = [LayerKind::Q, LayerKind::K, LayerKind::V, LayerKind::O];
    pub const MLP: [LayerKind; 3] = [LayerKind::Gate, LayerKind::Up, LayerKind::Down];

    /// Path of the layer inside a block, as in Hugging Face tensor names.
    pub fn hf_name(self) -> &'static str {
        match self {
            LayerKind::Q => "self_attn.q_proj",
            LayerKind::K => "self_attn.k_proj",
            LayerKind::V => "self_attn.v_proj",
            LayerKind::O => "self_attn.o_proj",
            LayerKind::Gate => "mlp.gate_proj",
            LayerKind::Up => "mlp.up_proj",
            LayerKind::Down => "mlp.down_proj",
        }
    }

    /// The same layer's name in GGUF files (`blk.N.NAME.weight`).
    pub fn gguf_name(self) -> &'static str {
        match self {
            LayerKind::Q => "attn_q",
            LayerKind::K => "attn_k",
            LayerKind::V => "attn_v",
            LayerKind::O => "attn_output",
            LayerKind::Gate => "ffn_gate",
            LayerKind::Up => "ffn_up",
            LayerKind::Down => "ffn_down",
        }
    }

    pub fn is_attention(self) -> bool {
        Self::ATTENTION.contains(&self)
    }
}

/// One linear layer: block index and kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LayerId {
    pub block: usize,
    pub kind: LayerKind,
}

impl fmt::Display for LayerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", names::block(self.block), self.kind.hf_name())
    }
}

/// Which linear layers to capture: attention, MLP or both, optionally only some blocks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerSelection {
    pub kinds: Vec<LayerKind>,
    /// `None`: every block.
    pub blocks: Option<Vec<usize>>,
}

impl Default for LayerSelection {
    fn default() -> Self {
        Self::all()
    }
}

impl LayerSelection {
    pub fn all() -> Self {
        Self {
            kinds: LayerKind::ALL.to_vec(),
            blocks: None,
        }
    }
    pub fn attention() -> Self {
        Self {
            kinds: LayerKind::ATTENTION.to_vec(),
            blocks: None,
        }
    }
    pub fn mlp() -> Self {
        Self {
            kinds: LayerKind::MLP.to_vec(),
            blocks: None,
        }
    }
    /// Restricts the selection to the named blocks.
    pub fn with_blocks(mut self, blocks: Vec<usize>) -> Self {
        self.blocks = Some(blocks);
        self
    }

    pub fn contains(&self, id: LayerId) -> bool {
        self.kinds.contains(&id.kind)
            && self.blocks.as_ref().is_none_or(|b| b.contains(&id.block))
    }

    /// The selected layers of a model with `n_blocks` blocks, in forward order.
    pub fn layers(&self, n_blocks: usize) -> Vec<LayerId> {
        (0..n_blocks)
            .flat_map(|block| LayerKind::ALL.into_iter().map(move |kind| LayerId { block, kind }))
            .filter(|id| self.contains(*id))
            .collect()
    }
}

/// The inverse of [`FromStr`]: `both`, `attention`, `mlp`, or the layer names (the blocks are not
/// part of the written form).
impl fmt::Display for LayerSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kinds = |set: &[LayerKind]| self.kinds.len() == set.len() && set.iter().all(|k| self.kinds.contains(k));
        if kinds(&LayerKind::ALL) {
            return f.write_str("both");
        }
        if kinds(&LayerKind::ATTENTION) {
            return f.write_str("attention");
        }
        if kinds(&LayerKind::MLP) {
            return f.write_str("mlp");
        }
        let names: Vec<&str> = self.kinds.iter().map(|k| k.hf_name().rsplit('.').next().unwrap_or_default()).collect();
        f.write_str(&names.join(","))
    }
}

impl FromStr for LayerSelection {
    type Err = String;
    /// `attention`, `mlp`, `both`, or a comma-separated list of those and layer names
    /// (`q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut kinds = Vec::new();
        for item in s.split(',').map(str::trim) {
            match item {
                "attention" | "attn" => kinds.extend(LayerKind::ATTENTION),
                "mlp" => kinds.extend(LayerKind::MLP),
                "both" | "all" => kinds.extend(LayerKind::ALL),
                other => match LayerKind::ALL.into_iter().find(|k| k.hf_name().ends_with(&format!(".{other}"))) {
                    Some(k) => kinds.push(k),
                    None => {
                        return Err(format!(
                            "unknown layer set {other:?} (expected attention, mlp, both or a layer name such as q_proj, down_proj)"
                        ))
                    }
                },
            }
        }
        // Forward order, no repeats.
        let kinds = LayerKind::ALL.into_iter().filter(|k| kinds.contains(k)).collect();
        Ok(Self { kinds, blocks: None })
    }
}

/// A block's RMSNorm weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockNorm {
    /// Before attention.
    Input,
    /// Before the MLP.
    PostAttention,
}

impl BlockNorm {
    pub const ALL: [BlockNorm; 2] = [BlockNorm::Input, BlockNorm::PostAttention];

    pub fn hf_name(self) -> &'static str {
        match self {
            BlockNorm::Input => "input_layernorm",
            BlockNorm::PostAttention => "post_attention_layernorm",
        }
    }

    pub fn gguf_name(self) -> &'static str {
        match self {
            BlockNorm::Input => "attn_norm",
            BlockNorm::PostAttention => "ffn_norm",
        }
    }
}

/// Tensor names: Hugging Face (`model.layers.N.self_attn.q_proj.weight`) and GGUF
/// (`blk.N.attn_q.weight`).
pub mod names {
    use super::{BlockNorm, LayerKind};

    pub const EMBED: &str = "model.embed_tokens.weight";
    pub const FINAL_NORM: &str = "model.norm.weight";
    pub const LM_HEAD: &str = "lm_head.weight";
    pub const GGUF_EMBED: &str = "token_embd.weight";
    pub const GGUF_FINAL_NORM: &str = "output_norm.weight";
    pub const GGUF_LM_HEAD: &str = "output.weight";

    /// `model.layers.N`.
    pub fn block(n: usize) -> String {
        format!("model.layers.{n}")
    }

    pub fn linear_weight(n: usize, kind: LayerKind) -> String {
        format!("{}.{}.weight", block(n), kind.hf_name())
    }

    pub fn linear_bias(n: usize, kind: LayerKind) -> String {
        format!("{}.{}.bias", block(n), kind.hf_name())
    }

    pub fn norm(n: usize, norm: BlockNorm) -> String {
        format!("{}.{}.weight", block(n), norm.hf_name())
    }

    pub fn gguf_linear(n: usize, kind: LayerKind) -> String {
        format!("blk.{n}.{}.weight", kind.gguf_name())
    }

    pub fn gguf_norm(n: usize, norm: BlockNorm) -> String {
        format!("blk.{n}.{}.weight", norm.gguf_name())
    }

    /// How many decoder layers a set of tensor names holds: distinct `N` of `PREFIX.N.…` names
    /// (`model.layers` for Hugging Face names, `blk` for GGUF's).
    pub fn layers_present<'a>(names: impl IntoIterator<Item = &'a str>, prefix: &str) -> usize {
        let mut seen = std::collections::BTreeSet::new();
        for name in names {
            let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('.')) else { continue };
            if let Some(n) = rest.split('.').next().and_then(|n| n.parse::<usize>().ok()) {
                seen.insert(n);
            }
        }
        seen.len()
    }

    /// Whether a tensor is an RMSNorm weight (initialised to ones).
    pub fn is_norm(name: &str) -> bool {
        name == FINAL_NORM || BlockNorm::ALL.iter().any(|n| name.ends_with(&format!(".{}.weight", n.hf_name())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_hugging_face_and_gguf_ones() {
        assert_eq!(names::linear_weight(3, LayerKind::Q), "model.layers.3.self_attn.q_proj.weight");
        assert_eq!(names::linear_bias(0, LayerKind::V), "model.layers.0.self_attn.v_proj.bias");
        assert_eq!(names::norm(1, BlockNorm::PostAttention), "model.layers.1.post_attention_layernorm.weight");
        assert_eq!(names::gguf_linear(2, LayerKind::O), "blk.2.attn_output.weight");
        assert_eq!(names::gguf_norm(2, BlockNorm::Input), "blk.2.attn_norm.weight");
        assert_eq!(LayerId { block: 4, kind: LayerKind::Down }.to_string(), "model.layers.4.mlp.down_proj");
        assert!(names::is_norm("model.norm.weight") && names::is_norm(&names::norm(0, BlockNorm::Input)));
        assert!(!names::is_norm(&names::linear_weight(0, LayerKind::Up)));
    }
}
