//! Loading a Llama-architecture GGUF checkpoint into the f32 (or f64) [`LlamaModel`].
//!
//! Every tensor is dequantised with candle's GGUF reader (`QTensor::dequantize`). llama.cpp's
//! converter stores the Q and K projections permuted for its interleaved rotary layout:
//! `W_gguf = W_hf.reshape(h, 2, d/2, in).swapaxes(1, 2).reshape(out, in)` per head group (h = heads
//! for Q, K/V heads for K). We invert it, `W_hf = W_gguf.reshape(h, d/2, 2, in).swapaxes(1, 2)`,
//! so the model can use Hugging Face's non-interleaved RoPE.
//!
//! The tokenizer is rebuilt from the metadata (`tokenizer.ggml.tokens`, `tokenizer.ggml.merges`):
//! byte-level BPE with digits split individually (the pre-tokenizer of SmolLM / GPT-2-style
//! vocabularies), control tokens (`token_type` 3) added as special tokens.

use super::layers::{names, BlockNorm, LayerKind};
use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use super::{LlamaConfig, LlamaModel, ModelError};

fn md<'a>(ct: &'a Content, key: &str) -> Result<&'a Value, ModelError> {
    ct.metadata
        .get(key)
        .ok_or_else(|| ModelError::Format(format!("GGUF metadata lacks {key}")))
}

fn md_usize(ct: &Content, key: &str) -> Result<usize, ModelError> {
    let v = md(ct, key)?;
    v.to_u32()
        .map(|x| x as usize)
        .or_else(|_| v.to_u64().map(|x| x as usize))
        .map_err(|e| ModelError::Format(format!("{key}: {e}")))
}

/// Hyper-parameters from GGUF metadata (llama architecture).
pub fn config_from_metadata(ct: &Content) -> Result<LlamaConfig, ModelError> {
    let arch = md(ct, "general.architecture")?
        .to_string()
        .map_err(|e| ModelError::Format(e.to_string()))?
        .clone();
    if arch != "llama" {
        return Err(ModelError::Format(format!(
            "GGUF architecture {arch:?} is not supported (only llama)"
        )));
    }
    let vocab = md(ct, "tokenizer.ggml.tokens")?
        .to_vec()
        .map_err(|e| ModelError::Format(e.to_string()))?
        .len();
    let f = |key: &str, default: f64| -> f64 {
        ct.metadata
            .get(key)
            .and_then(|v| v.to_f32().ok())
            .map(|x| x as f64)
            .unwrap_or(default)
    };
    let heads = md_usize(ct, "llama.attention.head_count")?;
    let config = LlamaConfig {
        vocab_size: vocab,
        hidden_size: md_usize(ct, "llama.embedding_length")?,
        intermediate_size: md_usize(ct, "llama.feed_forward_length")?,
        num_hidden_layers: md_usize(ct, "llama.block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: Some(md_usize(ct, "llama.attention.head_count_kv").unwrap_or(heads)),
        rms_norm_eps: f("llama.attention.layer_norm_rms_epsilon", 1e-5),
        rope_theta: f("llama.rope.freq_base", 10_000.0),
        max_position_embeddings: md_usize(ct, "llama.context_length").unwrap_or(2048),
        tie_word_embeddings: !ct.tensor_infos.contains_key("output.weight"),
        attention_bias: false,
        bos_token_id: md_usize(ct, "tokenizer.ggml.bos_token_id").ok().map(|x| x as u32),
        eos_token_id: md_usize(ct, "tokenizer.ggml.eos_token_id").ok().map(|x| x as u32),
        model_type: "llama".into(),
        hidden_act: Some("silu".into()),
    };
    // Checked before a tensor is read or sized by it (a zero head count divided the Q rows).
    config.validate().map_err(|e| ModelError::Config(format!("GGUF metadata: {e}")))?;
    let present = names::layers_present(ct.tensor_infos.keys().map(String::as_str), "blk");
    if present != config.num_hidden_layers {
        return Err(ModelError::Config(format!(
            "GGUF metadata: llama.block_count = {} but the file holds {present} blocks",
            config.num_hidden_layers
        )));
    }
    Ok(config)
}

/// Inverts llama.cpp's rotary permutation of a Q or K weight (`heads` = head groups in it).
pub fn unpermute_qk(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let hd = out / heads;
    w.reshape((heads, hd / 2, 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))
}

/// llama.cpp's permutation (Hugging Face → GGUF layout), the inverse of [`unpermute_qk`].
pub fn permute_qk(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let hd = out / heads;
    w.reshape((heads, 2, hd / 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))
}

/// Loads model and tokenizer from a `.gguf` file.
pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<(LlamaModel, Tokenizer), ModelError> {
    let mut file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let ct = Content::read(&mut file)
        .map_err(|e| ModelError::Format(format!("{}: not a GGUF file: {e}", path.display())))?;
    let in_file = |e: ModelError| match e {
        ModelError::Config(m) | ModelError::Format(m) => ModelError::Format(format!("{}: {m}", path.display())),
        ModelError::Tokenizer(m) => ModelError::Tokenizer(format!("{}: {m}", path.display())),
        e => e,
    };
    let config = config_from_metadata(&ct).map_err(in_file)?;
    let tokenizer = tokenizer_from_metadata(&ct).map_err(in_file)?;
    let mut get = |name: &str| -> Result<Tensor, ModelError> {
        Ok(ct
            .tensor(&mut file, name, device)
            .map_err(|e| ModelError::Format(format!("{}: tensor {name}: {e}", path.display())))?
            .dequantize(device)?)
    };
    let mut tensors = HashMap::new();
    tensors.insert(names::EMBED.to_string(), get(names::GGUF_EMBED)?);
    tensors.insert(names::FINAL_NORM.to_string(), get(names::GGUF_FINAL_NORM)?);
    if !config.tie_word_embeddings {
        tensors.insert(names::LM_HEAD.to_string(), get(names::GGUF_LM_HEAD)?);
    }
    for i in 0..config.num_hidden_layers {
        for norm in BlockNorm::ALL {
            tensors.insert(names::norm(i, norm), get(&names::gguf_norm(i, norm))?);
        }
        for kind in LayerKind::ALL {
            let w = get(&names::gguf_linear(i, kind))?;
            // llama.cpp stores Q and K with rows permuted for its rope layout.
            let w = match kind {
                LayerKind::Q => unpermute_qk(&w, config.num_attention_heads)?,
                LayerKind::K => unpermute_qk(&w, config.num_kv_heads())?,
                _ => w,
            };
            tensors.insert(names::linear_weight(i, kind), w);
        }
    }
    let model = LlamaModel::from_tensors(config, tensors, dtype, device).map_err(in_file)?;
    super::check_tokenizer(&tokenizer, &model.config, path, path)?;
    Ok((model, tokenizer))
}

/// Byte-level BPE tokenizer from `tokenizer.ggml.*` metadata.
pub fn tokenizer_from_metadata(ct: &Content) -> Result<Tokenizer, ModelError> {
    let fmt = |e: candle_core::Error| ModelError::Format(e.to_string());
    let model = md(ct, "tokenizer.ggml.model")?.to_string().map_err(fmt)?;
    if model != "gpt2" {
        return Err(ModelError::Tokenizer(format!(
            "GGUF tokenizer model {model:?} is not supported (only byte-level BPE, \"gpt2\")"
        )));
    }
    let tokens: Vec<String> = md(ct, "tokenizer.ggml.tokens")?
        .to_vec()
        .map_err(fmt)?
        .iter()
        .map(|v| v.to_string().cloned())
        .collect::<Result<_, _>>()
        .map_err(fmt)?;
    let merges: Vec<(String, String)> = md(ct, "tokenizer.ggml.merges")?
        .to_vec()
        .map_err(fmt)?
        .iter()
        .map(|v| {
            let s = v.to_string().map_err(fmt)?;
            s.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| ModelError::Tokenizer(format!("bad merge {s:?}")))
        })
        .collect::<Result<_, _>>()?;
    let types: Vec<i32> = match ct.metadata.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(fmt)?
            .iter()
            .map(|x| x.to_i32())
            .collect::<Result<_, _>>()
            .map_err(fmt)?,
        None => vec![1; tokens.len()],
    };
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let pre = Sequence::new(vec![
        PreTokenizerWrapper::Digits(Digits::new(true)),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
    ]);
    tokenizer.with_pre_tokenizer(Some(pre));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    let specials: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &t)| t == 3)
        .map(|(tok, _)| AddedToken::from(tok.clone(), true))
        .collect();
    tokenizer
        .add_special_tokens(specials)
        .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        let dev = Device::Cpu;
        let w = Tensor::arange(0f32, 48., &dev).unwrap().reshape((12, 4)).unwrap();
        let p = permute_qk(&w, 3).unwrap();
        assert_ne!(p.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
        let back = unpermute_qk(&p, 3).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
        // Within a head of dim 4, HF rows [r0, r1, r2, r3] become interleaved [r0, r2, r1, r3].
        let rows = p.to_vec2::<f32>().unwrap();
        let orig = w.to_vec2::<f32>().unwrap();
        assert_eq!(rows[1], orig[2]);
        assert_eq!(rows[2], orig[1]);
    }
}
