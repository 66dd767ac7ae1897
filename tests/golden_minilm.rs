//! BertEmbedder against sentence-transformers' all-MiniLM-L6-v2 golden values
//! (`../shared/golden/minilm-*.json`): same token ids, cosine ≥ 0.9999, max |Δ| ≤ 1e-4.

mod common;

use quad_select::corpus::{CorpusConfig, CorpusReader};
use quad_select::embed::{BertEmbedder, BertOptions, Embedder};
use quad_select::weights::WeightsError;
use serde_json::Value;

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn compare(label: &str, got: ndarray::ArrayView1<f32>, want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{label}: dimension");
    let dot: f64 = got.iter().zip(want).map(|(a, b)| *a as f64 * *b as f64).sum();
    let ng: f64 = got.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
    let nw: f64 = want.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
    let cos = dot / (ng * nw);
    let max_abs = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("{label}: cosine {cos:.8}, max |diff| {max_abs:.2e}");
    assert!(cos >= 0.9999, "{label}: cosine {cos}");
    assert!(max_abs <= 1e-4, "{label}: max abs diff {max_abs}");
}

#[test]
fn six_sentences_match_sentence_transformers() {
    let golden = common::read_json(&common::shared().join("golden/minilm-embeddings.json"));
    let embedder = BertEmbedder::load(&common::minilm(), BertOptions::default()).unwrap();
    assert_eq!(embedder.dim(), 384);
    assert_eq!(embedder.max_seq_length(), 256);
    let sentences = golden["sentences"].as_array().unwrap();
    let texts: Vec<&str> = sentences.iter().map(|s| s["text"].as_str().unwrap()).collect();
    assert!(texts.contains(&""), "the golden set includes the empty string");

    let token_ids = embedder.token_ids(&texts).unwrap();
    for (s, got) in sentences.iter().zip(&token_ids) {
        assert_eq!(got, &ids(&s["token_ids"]), "token ids of {:?}", s["text"]);
    }
    // The empty string is [CLS] [SEP], embedded like any other text.
    assert_eq!(token_ids[texts.iter().position(|t| t.is_empty()).unwrap()], vec![101, 102]);

    // Batched (padded to the longest) and one at a time must both match.
    let batched = embedder.embed(&texts).unwrap();
    for (i, s) in sentences.iter().enumerate() {
        let want = floats(&s["embedding"]);
        compare(&format!("sentence {i} batched"), batched.row(i), &want);
        let single = embedder.embed(&[texts[i]]).unwrap();
        compare(&format!("sentence {i} alone"), single.row(0), &want);
    }
}

#[test]
fn first_pool_documents_match_after_truncation_at_256() {
    let shared = common::shared();
    let golden = common::read_json(&shared.join("golden/minilm-pool-small.json"));
    let expected = golden["first3_docs"].as_array().unwrap();
    let (docs, _) =
        CorpusReader::read_all(&shared.join("data/pool-small.jsonl"), CorpusConfig::default())
            .unwrap();
    let embedder = BertEmbedder::load(&common::minilm(), BertOptions::default()).unwrap();
    let texts: Vec<&str> = expected
        .iter()
        .map(|e| {
            let id = e["id"].as_str().unwrap();
            docs.iter().find(|d| d.id == id).expect("golden doc in pool-small").text.as_str()
        })
        .collect();
    let token_ids = embedder.token_ids(&texts).unwrap();
    let m = embedder.embed(&texts).unwrap();
    for (i, e) in expected.iter().enumerate() {
        let want_ids = ids(&e["token_ids"]);
        assert_eq!(want_ids.len(), 256);
        assert_eq!(token_ids[i], want_ids, "token ids of {}", e["id"]);
        compare(e["id"].as_str().unwrap(), m.row(i), &floats(&e["embedding"]));
    }
}

#[test]
fn pickle_weights_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let src = common::minilm();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    // A pickle: protocol 2 header, empty dict, STOP.
    std::fs::write(dir.path().join("pytorch_model.bin"), b"\x80\x02}q\x00.").unwrap();
    let err = BertEmbedder::load(dir.path(), BertOptions::default())
        .err()
        .expect("must refuse");
    assert!(
        matches!(err, quad_select::embed::EmbedError::Weights(WeightsError::PickleRefused { .. })),
        "{err}"
    );
    // (The output outside the model folder: an output inside an input is refused first.)
    let elsewhere = tempfile::tempdir().unwrap();
    let stderr = common::quad_fails(&[
        "embed",
        "--input",
        common::repo().join("experiments/data/sample.jsonl").to_str().unwrap(),
        "--model",
        dir.path().to_str().unwrap(),
        "--out",
        elsewhere.path().join("out").to_str().unwrap(),
    ]);
    assert!(stderr.contains("pickle") && stderr.contains("arbitrary code"), "{stderr}");
    assert!(!elsewhere.path().join("out").exists(), "nothing written on refusal");
}
