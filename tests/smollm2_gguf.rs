//! SmolLM2-135M from its 4-bit GGUF, dequantised into our f32 model: it models Wikipedia text,
//! and its logits agree with candle-transformers' `quantized_llama` on the same file (which uses
//! llama.cpp's interleaved rotary layout, so agreement proves the Q/K un-permutation).

mod common;

use candle_core::{DType, Device, Tensor, D};
use candle_transformers::models::quantized_llama::ModelWeights;
use quad_select::corpus::{CorpusConfig, CorpusReader};

fn first_chars(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Mean next-token NLL from logits (T, V) for tokens `ids`.
fn mean_nll(logits: &Tensor, ids: &[u32]) -> f64 {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1).unwrap();
    let logp: Vec<Vec<f32>> = logp.to_vec2().unwrap();
    let n = ids.len() - 1;
    (0..n).map(|i| -(logp[i][ids[i + 1] as usize] as f64)).sum::<f64>() / n as f64
}

#[test]
fn gguf_model_matches_quantized_llama_and_models_wikipedia() {
    let path = common::smollm2_gguf();
    let dev = Device::Cpu;
    let loaded = quad_select::model::load(&path, DType::F32, &dev).unwrap();
    let c = &loaded.model.config;
    assert_eq!(
        (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_kv_heads()),
        (30, 576, 9, 3)
    );
    assert!(c.tie_word_embeddings);
    assert!((c.rope_theta - 1e5).abs() < 1.0);
    // Digits are split one by one.
    let ids = loaded.encode("year 2024").unwrap();
    let toks: Vec<String> = ids.iter().map(|&i| loaded.tokenizer.id_to_token(i).unwrap()).collect();
    assert!(toks.ends_with(&["2".into(), "0".into(), "2".into(), "4".into()]), "{toks:?}");
    assert_eq!(loaded.tokenizer.decode(&ids, false).unwrap(), "year 2024");

    let mut file = std::fs::File::open(&path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    let mut reference = ModelWeights::from_gguf(content, &mut file, &dev).unwrap();

    let (docs, _) = CorpusReader::read_all(
        &common::shared().join("data/reference-wiki.jsonl"),
        CorpusConfig::default(),
    )
    .unwrap();
    let (mut agree, mut total) = (0usize, 0usize);
    for doc in docs.iter().take(3) {
        let ids = loaded.encode(first_chars(&doc.text, 1000)).unwrap();
        let t = ids.len();
        let input = Tensor::from_slice(&ids, (1, t), &dev).unwrap();
        let ours = loaded.model.forward(&input, None).unwrap().squeeze(0).unwrap(); // (T, V)

        reference.clear_kv_cache();
        let mut rows = Vec::with_capacity(t);
        for (pos, &id) in ids.iter().enumerate() {
            let x = Tensor::from_slice(&[id], (1, 1), &dev).unwrap();
            rows.push(reference.forward(&x, pos).unwrap().squeeze(0).unwrap());
        }
        let theirs = Tensor::stack(&rows, 0).unwrap(); // (T, V)

        let max_abs = common::max_abs_diff(&ours, &theirs);
        let a: Vec<u32> = ours.argmax(D::Minus1).unwrap().to_vec1().unwrap();
        let b: Vec<u32> = theirs.argmax(D::Minus1).unwrap().to_vec1().unwrap();
        let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
        agree += same;
        total += t;
        let (l_ours, l_theirs) = (mean_nll(&ours, &ids), mean_nll(&theirs, &ids));
        eprintln!(
            "{}: {t} tokens, loss ours {l_ours:.4} vs quantized_llama {l_theirs:.4} nats/token, \
             max |Δlogit| {max_abs:.4}, argmax agreement {:.1}%",
            doc.id,
            100.0 * same as f64 / t as f64
        );
        // Also through the capture path (mean over predicted tokens, same thing).
        let via_model = loaded.model.doc_losses(&[ids.clone()], 2048).unwrap()[0].unwrap();
        assert!((via_model - l_ours).abs() < 1e-4, "{via_model} vs {l_ours}");
        assert!(l_ours < 3.5, "{}: loss {l_ours}", doc.id);
        assert!((l_ours - l_theirs).abs() <= 0.02 * l_theirs, "{l_ours} vs {l_theirs}");
    }
    let rate = agree as f64 / total as f64;
    eprintln!("argmax agreement over all positions: {:.2}%", 100.0 * rate);
    assert!(rate >= 0.95, "argmax agreement {rate}");
}
