//! A Llama-family decoder (RMSNorm, rotary embeddings, SwiGLU MLP, grouped-query attention,
//! optional tied embeddings) written with differentiable candle ops only, so that every weight
//! and every intermediate tensor gets a gradient.
//!
//! candle_nn's fused `softmax_last_dim`, `rms_norm`, `rope` (and `RmsNorm::forward` on contiguous
//! input) compute correct values but record no gradient; candle-transformers' models use them, so
//! they serve as inference references only. Here RMSNorm is `x / sqrt(mean(x²) + ε) · w`, RoPE is
//! Hugging Face's `x·cos + rotate_half(x)·sin` (primitive ops), the attention softmax is
//! [`super::ops::causal_softmax`] (fused, with its own backward pass), and SiLU is candle's `silu`
//! unary op (which has a backward rule).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var, D};

use super::layers::{names, BlockNorm, LayerId, LayerKind, LayerSelection};
use super::config::LlamaConfig;
use super::ModelError;

/// A linear layer `y = x Wᵀ (+ b)` with W of shape (out, in).
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Var,
    pub bias: Option<Var>,
}

impl Linear {
    /// With `detach`, the weights take no part in the backward pass (no weight gradients).
    fn forward(&self, x: &Tensor, detach: bool) -> candle_core::Result<Tensor> {
        let y = x.matmul(&param(&self.weight, detach).t()?)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&param(b, detach)),
            None => Ok(y),
        }
    }

    pub fn d_in(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn d_out(&self) -> usize {
        self.weight.dims()[0]
    }
}

/// One transformer block.
#[derive(Debug, Clone)]
pub struct Block {
    pub input_layernorm: Var,
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub post_attention_layernorm: Var,
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Block {
    pub fn linear(&self, kind: LayerKind) -> &Linear {
        match kind {
            LayerKind::Q => &self.q_proj,
            LayerKind::K => &self.k_proj,
            LayerKind::V => &self.v_proj,
            LayerKind::O => &self.o_proj,
            LayerKind::Gate => &self.gate_proj,
            LayerKind::Up => &self.up_proj,
            LayerKind::Down => &self.down_proj,
        }
    }
}

/// What the tapped linear layers recorded during one forward pass: (layer, input `a`, output
/// probe `p`), 2-D tensors with rows = batch × positions.
#[derive(Default)]
pub struct Tap {
    pub selection: LayerSelection,
    pub records: Vec<(LayerId, Tensor, Tensor)>,
    /// Detach every weight from the graph, so the backward pass computes only what the probes'
    /// gradients need: a third fewer matmul flops when weight gradients are not wanted.
    pub detach_weights: bool,
}

/// A weight as a graph tensor, or detached from the graph (a view of the same storage).
fn param(v: &Var, detach: bool) -> Tensor {
    if detach {
        v.as_tensor().detach()
    } else {
        v.as_tensor().clone()
    }
}

/// The decoder. Weights are [`Var`]s so gradients reach them.
#[derive(Debug, Clone)]
pub struct LlamaModel {
    pub config: LlamaConfig,
    pub embed_tokens: Var,
    pub blocks: Vec<Block>,
    pub norm: Var,
    /// `None` when the output projection is tied to `embed_tokens`.
    pub lm_head: Option<Var>,
    pub dtype: DType,
    pub device: Device,
}

impl LlamaModel {
    /// Builds a model from named tensors with Hugging Face names
    /// (`model.embed_tokens.weight`, `model.layers.N.self_attn.q_proj.weight`, …).
    pub fn from_tensors(
        config: LlamaConfig,
        mut tensors: HashMap<String, Tensor>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, ModelError> {
        config.validate().map_err(ModelError::Config)?;
        // The config's layer count against the weights' (before anything is sized by it): a
        // config that claims fewer layers would silently drop the rest.
        let present = names::layers_present(tensors.keys().map(String::as_str), "model.layers");
        if present != config.num_hidden_layers {
            return Err(ModelError::Config(format!(
                "num_hidden_layers = {} but the weights hold {present} layers",
                config.num_hidden_layers
            )));
        }
        let mut take = |name: &str, shape: &[usize]| -> Result<Var, ModelError> {
            let t = tensors
                .remove(name)
                .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
            if t.dims() != shape {
                return Err(ModelError::Shape {
                    name: name.to_string(),
                    expected: shape.to_vec(),
                    found: t.dims().to_vec(),
                });
            }
            let t = t.to_dtype(dtype)?.to_device(device)?;
            // NaN or ±inf weights make every loss and score non-finite (and the factors' eigensolver
            // fail): refuse them here, naming the tensor. The sum is taken in f64 (no overflow).
            if !t.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?.is_finite() {
                return Err(ModelError::Format(format!("tensor {name} holds NaN or infinite values")));
            }
            Ok(Var::from_tensor(&t)?)
        };
        let c = &config;
        let h = c.hidden_size;
        let embed_tokens = take(names::EMBED, &[c.vocab_size, h])?;
        let mut blocks = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let mut lin = |kind: LayerKind| -> Result<Linear, ModelError> {
                let [out, inp] = linear_shape(c, kind);
                Ok(Linear {
                    weight: take(&names::linear_weight(i, kind), &[out, inp])?,
                    bias: if has_bias(c, kind) {
                        Some(take(&names::linear_bias(i, kind), &[out])?)
                    } else {
                        None
                    },
                })
            };
            let [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj] =
                LayerKind::ALL.map(&mut lin);
            blocks.push(Block {
                input_layernorm: take(&names::norm(i, BlockNorm::Input), &[h])?,
                q_proj: q_proj?,
                k_proj: k_proj?,
                v_proj: v_proj?,
                o_proj: o_proj?,
                post_attention_layernorm: take(&names::norm(i, BlockNorm::PostAttention), &[h])?,
                gate_proj: gate_proj?,
                up_proj: up_proj?,
                down_proj: down_proj?,
            });
        }
        let norm = take(names::FINAL_NORM, &[h])?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(take(names::LM_HEAD, &[c.vocab_size, h])?)
        };
        Ok(Self {
            config,
            embed_tokens,
            blocks,
            norm,
            lm_head,
            dtype,
            device: device.clone(),
        })
    }

    /// A randomly initialised model (normal(0, 0.02) weights, unit norms), seeded.
    pub fn random(config: LlamaConfig, dtype: DType, device: &Device, seed: u64) -> Result<Self, ModelError> {
        use rand::SeedableRng;
        use rand_distr::{Distribution, Normal};
        config.validate().map_err(ModelError::Config)?;
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed);
        let normal = Normal::new(0.0f64, 0.02).expect("valid normal");
        let mut tensors = HashMap::new();
        let names = parameter_shapes(&config);
        for (name, shape) in names {
            let n: usize = shape.iter().product();
            let t = if names::is_norm(&name) {
                Tensor::ones(shape.as_slice(), DType::F64, device)?
            } else if name.ends_with(".bias") {
                Tensor::zeros(shape.as_slice(), DType::F64, device)?
            } else {
                let v: Vec<f64> = (0..n).map(|_| normal.sample(&mut rng)).collect();
                Tensor::from_vec(v, shape.as_slice(), device)?
            };
            tensors.insert(name, t);
        }
        Self::from_tensors(config, tensors, dtype, device)
    }

    /// Every weight with its Hugging Face name.
    pub fn named_vars(&self) -> Vec<(String, &Var)> {
        let mut out = vec![(names::EMBED.to_string(), &self.embed_tokens)];
        for (i, b) in self.blocks.iter().enumerate() {
            out.push((names::norm(i, BlockNorm::Input), &b.input_layernorm));
            for kind in LayerKind::ALL {
                let lin = b.linear(kind);
                out.push((names::linear_weight(i, kind), &lin.weight));
                if let Some(bias) = &lin.bias {
                    out.push((names::linear_bias(i, kind), bias));
                }
            }
            out.push((names::norm(i, BlockNorm::PostAttention), &b.post_attention_layernorm));
        }
        out.push((names::FINAL_NORM.to_string(), &self.norm));
        if let Some(head) = &self.lm_head {
            out.push((names::LM_HEAD.to_string(), head));
        }
        out
    }

    pub fn vars(&self) -> Vec<Var> {
        self.named_vars().into_iter().map(|(_, v)| v.clone()).collect()
    }

    pub fn num_parameters(&self) -> usize {
        self.named_vars().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Writes `model.safetensors` (f32, Hugging Face names) and `config.json` into `dir`, atomically.
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let tensors: HashMap<String, Tensor> = self
            .named_vars()
            .into_iter()
            .map(|(n, v)| Ok((n, v.as_tensor().to_dtype(DType::F32)?)))
            .collect::<candle_core::Result<_>>()?;
        let path = dir.join("model.safetensors");
        let bytes = safetensors::serialize(
            tensors.iter().map(|(k, v)| (k.clone(), v)).collect::<Vec<_>>(),
            None,
        )
        .map_err(|e| ModelError::Format(format!("serialising weights: {e}")))?;
        crate::atomic::write_atomic(&path, |w| w.write_all(&bytes)).map_err(|e| ModelError::io(&path, e))?;
        let cfg = dir.join("config.json");
        let mut value = serde_json::to_value(&self.config).map_err(|e| ModelError::Format(e.to_string()))?;
        value["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
        value["torch_dtype"] = serde_json::json!("float32");
        let text = serde_json::to_string_pretty(&value).map_err(|e| ModelError::Format(e.to_string()))?;
        crate::atomic::write_string_atomic(&cfg, &text).map_err(|e| ModelError::io(&cfg, e))?;
        Ok(())
    }

    /// RoPE tables for positions `0..t`: `cos`, `sin` of shape (t, head_dim), each half repeated
    /// (Hugging Face's non-interleaved layout).
    fn rope_tables(&self, t: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let d = self.config.head_dim();
        let theta = self.config.rope_theta;
        let inv: Vec<f64> = (0..d / 2).map(|i| 1.0 / theta.powf(2.0 * i as f64 / d as f64)).collect();
        let mut cos = Vec::with_capacity(t * d);
        let mut sin = Vec::with_capacity(t * d);
        for p in 0..t {
            for _ in 0..2 {
                for f in &inv {
                    let a = p as f64 * f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        let cos = Tensor::from_vec(cos, (t, d), &self.device)?.to_dtype(self.dtype)?;
        let sin = Tensor::from_vec(sin, (t, d), &self.device)?.to_dtype(self.dtype)?;
        Ok((cos, sin))
    }

    /// Logits (batch, positions, vocab) for token ids (batch, positions).
    ///
    /// When `tap` is given, every selected linear layer records its 2-D input `a`
    /// (rows = batch·positions, d_in) and a zero probe variable `p` added to its output
    /// (rows, d_out); after `loss.backward()`, `grads.get(&p)` is the per-token output gradient `g`.
    pub fn forward(&self, ids: &Tensor, mut tap: Option<&mut Tap>) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let c = &self.config;
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_kv_heads(), c.head_dim());
        let (cos, sin) = self.rope_tables(t)?;
        let eps = c.rms_norm_eps;
        let detach = tap.as_ref().is_some_and(|t| t.detach_weights);

        let mut x = param(&self.embed_tokens, detach)
            .index_select(&ids.flatten_all()?, 0)?; // (b·t, h)
        for (li, block) in self.blocks.iter().enumerate() {
            let mut lin = |kind: LayerKind, input: &Tensor| -> candle_core::Result<Tensor> {
                let y = block.linear(kind).forward(input, detach)?;
                if let Some(tap) = tap.as_deref_mut() {
                    let id = LayerId { block: li, kind };
                    if tap.selection.contains(id) {
                        // candle's backward drops the gradients of intermediate tensors and keeps
                        // only those of variables, so we add a zero-valued probe variable:
                        // y' = y + p with p = 0 leaves the values unchanged and ∂L/∂p = ∂L/∂y.
                        let probe = Var::zeros(y.shape(), y.dtype(), y.device())?;
                        let y = (y + probe.as_tensor())?;
                        tap.records.push((id, input.clone(), probe.as_tensor().clone()));
                        return Ok(y);
                    }
                }
                Ok(y)
            };
            // Attention.
            let hn = rms_norm(&x, &param(&block.input_layernorm, detach), eps)?;
            let q = lin(LayerKind::Q, &hn)?;
            let k = lin(LayerKind::K, &hn)?;
            let v = lin(LayerKind::V, &hn)?;
            let heads = |y: Tensor, n: usize| -> candle_core::Result<Tensor> {
                y.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()
            };
            let q = rope(&heads(q, nh)?, &cos, &sin)?;
            let k = rope(&heads(k, nkv)?, &cos, &sin)?;
            let v = heads(v, nkv)?;
            let (k, v) = (repeat_kv(k, nh / nkv)?, repeat_kv(v, nh / nkv)?);
            let att = super::ops::causal_softmax(&q.matmul(&k.t()?.contiguous()?)?, 1.0 / (hd as f64).sqrt())?;
            let y = att.matmul(&v)?; // (b, nh, t, hd)
            let y = y.transpose(1, 2)?.contiguous()?.reshape((b * t, nh * hd))?;
            let o = lin(LayerKind::O, &y)?;
            x = (x + o)?;
            // MLP.
            let hn = rms_norm(&x, &param(&block.post_attention_layernorm, detach), eps)?;
            let gate = lin(LayerKind::Gate, &hn)?;
            let up = lin(LayerKind::Up, &hn)?;
            let act = (gate.silu()? * up)?;
            let down = lin(LayerKind::Down, &act)?;
            x = (x + down)?;
        }
        let x = rms_norm(&x, &param(&self.norm, detach), eps)?;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        let logits = x.matmul(&param(head, detach).t()?)?;
        logits.reshape((b, t, c.vocab_size))
    }
}

/// `x / sqrt(mean(x²) + ε) · w` over the last dimension (primitive ops: differentiable).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(w)
}

/// Hugging Face rotary embedding: `x·cos + rotate_half(x)·sin`, `rotate_half([x1, x2]) = [−x2, x1]`.
/// `x`: (b, heads, t, d); `cos`, `sin`: (t, d).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?
}

/// Repeats each K/V head `n` times consecutively (head h of the queries uses K/V head h / n).
fn repeat_kv(x: Tensor, n: usize) -> candle_core::Result<Tensor> {
    if n == 1 {
        return Ok(x);
    }
    let (b, kv, t, d) = x.dims4()?;
    Tensor::cat(&vec![&x; n], 2)?.reshape((b, kv * n, t, d))
}

/// Every parameter's Hugging Face name and shape, in a fixed order.
pub fn parameter_shapes(c: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let h = c.hidden_size;
    let mut out = vec![(names::EMBED.to_string(), vec![c.vocab_size, h])];
    for i in 0..c.num_hidden_layers {
        out.push((names::norm(i, BlockNorm::Input), vec![h]));
        for kind in LayerKind::ALL {
            let [o, inp] = linear_shape(c, kind);
            out.push((names::linear_weight(i, kind), vec![o, inp]));
            if has_bias(c, kind) {
                out.push((names::linear_bias(i, kind), vec![o]));
            }
        }
        out.push((names::norm(i, BlockNorm::PostAttention), vec![h]));
    }
    out.push((names::FINAL_NORM.to_string(), vec![h]));
    if !c.tie_word_embeddings {
        out.push((names::LM_HEAD.to_string(), vec![c.vocab_size, h]));
    }
    out
}

/// `[out, in]` of a linear layer's weight.
fn linear_shape(c: &LlamaConfig, kind: LayerKind) -> [usize; 2] {
    let (h, hd) = (c.hidden_size, c.head_dim());
    let (nq, nkv) = (c.num_attention_heads * hd, c.num_kv_heads() * hd);
    match kind {
        LayerKind::Q => [nq, h],
        LayerKind::K | LayerKind::V => [nkv, h],
        LayerKind::O => [h, nq],
        LayerKind::Gate | LayerKind::Up => [c.intermediate_size, h],
        LayerKind::Down => [h, c.intermediate_size],
    }
}

/// Q, K and V carry a bias when the config says so (Qwen-style); the others never do.
fn has_bias(c: &LlamaConfig, kind: LayerKind) -> bool {
    c.attention_bias && matches!(kind, LayerKind::Q | LayerKind::K | LayerKind::V)
}
