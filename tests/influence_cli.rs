//! `quad factors` + `quad influence` end to end on a tiny proxy and the shipped sample.

mod common;

use quad_select::influence::store;

fn tiny_proxy(dir: &std::path::Path, seed: &str) {
    let sample = common::repo().join("experiments/data/sample.jsonl");
    common::quad(&[
        "proxy", "train", "--input", sample.to_str().unwrap(), "--out", dir.to_str().unwrap(),
        "--layers", "1", "--width", "16", "--heads", "2", "--context", "48", "--vocab-size", "512",
        "--steps", "20", "--eval-every", "10", "--seed", seed,
    ]);
}

#[test]
fn factors_then_influence_score_every_document() {
    let tmp = tempfile::tempdir().unwrap();
    let sample = common::repo().join("experiments/data/sample.jsonl");
    let model = tmp.path().join("model");
    tiny_proxy(&model, "0");
    let factors = tmp.path().join("factors");
    let out = common::quad(&[
        "factors", "--input", sample.to_str().unwrap(), "--model", model.to_str().unwrap(),
        "--fit-docs", "40", "--context", "48", "--out", factors.to_str().unwrap(),
    ]);
    assert!(out.contains("fitted 7 layers (11 blocks) on 40 documents"), "{out}");
    let config = quad_select::model::load(&model, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap().model.config;
    let (fitted, header) = store::load(&factors, &config).unwrap();
    assert!(header.per_head && fitted.layers.len() == 7);
    for l in &fitted.layers {
        for (_, f) in &l.blocks {
            assert!(f.ekfac.is_some());
            assert!(f.lambda_a.iter().all(|x| *x >= 0.0));
        }
    }

    // A reference set of Shakespeare scenes; candidates: the whole sample.
    let reference = tmp.path().join("ref.jsonl");
    let lines: Vec<String> = std::fs::read_to_string(&sample)
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"domain\": \"shakespeare\""))
        .take(10)
        .map(String::from)
        .collect();
    std::fs::write(&reference, lines.join("\n") + "\n").unwrap();
    let scores = tmp.path().join("scores.jsonl");
    let out = common::quad(&[
        "influence", "--input", sample.to_str().unwrap(), "--model", model.to_str().unwrap(),
        "--factors", factors.to_str().unwrap(), "--reference", reference.to_str().unwrap(),
        "--label-field", "domain", "--out", scores.to_str().unwrap(),
    ]);
    eprintln!("{out}");
    assert!(out.contains("scored 400 documents"), "{out}");
    assert!(out.contains("mean influence by domain"), "{out}");
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&scores)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 400);
    assert!(rows.iter().all(|r| r["score"].as_f64().is_some_and(f64::is_finite)));

    // A Rademacher projection to 12×12 per layer (of 16×16 and 48×16 layers) keeps the ranking
    // close; the same seed gives the same scores.
    let projected = tmp.path().join("projected.jsonl");
    let run_projected = || {
        common::quad(&[
            "influence", "--input", sample.to_str().unwrap(), "--model", model.to_str().unwrap(),
            "--factors", factors.to_str().unwrap(), "--reference", reference.to_str().unwrap(),
            "--project", "12", "--project-seed", "5", "--out", projected.to_str().unwrap(),
        ]);
        std::fs::read_to_string(&projected).unwrap()
    };
    let first = run_projected();
    assert_eq!(first, run_projected());
    let score = |l: &str| serde_json::from_str::<serde_json::Value>(l).unwrap()["score"].as_f64().unwrap();
    let proj: Vec<f64> = first.lines().map(score).collect();
    let full: Vec<f64> = rows.iter().map(|r| r["score"].as_f64().unwrap()).collect();
    let rho = quad_select::influence::validate::spearman(&proj, &full);
    eprintln!("projected vs full Spearman {rho:.3}");
    assert!(rho > 0.5, "projected scores lost the ranking: Spearman {rho}");

    // Factors fitted on another model are refused.
    let other = tmp.path().join("other");
    tiny_proxy(&other, "1");
    let err = common::quad_fails(&[
        "influence", "--input", sample.to_str().unwrap(), "--model", other.to_str().unwrap(),
        "--factors", factors.to_str().unwrap(), "--reference", reference.to_str().unwrap(),
        "--out", scores.to_str().unwrap(),
    ]);
    assert!(err.contains("fitted on another model"), "{err}");
}
