//! `quad select` end to end on the shipped sample with a tiny proxy (tests/fixtures/tiny-select.toml):
//! outputs and their shape, stage caching, and a run stopped after round 2 then resumed giving a
//! byte-identical selected.jsonl.

mod common;

use std::path::Path;
use std::process::Command;

fn select(cache: &Path, out: &Path, extra: &[&str], stop_after: Option<usize>) -> (String, String) {
    let sample = common::repo().join("experiments/data/sample.jsonl");
    let config = common::repo().join("tests/fixtures/tiny-select.toml");
    let reference = common::devil_reference(cache.parent().unwrap());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quad"));
    cmd.args([
        "select", "--input", sample.to_str().unwrap(), "--reference", reference.to_str().unwrap(),
        "--budget-tokens", "30000", "--config", config.to_str().unwrap(), "--cache", cache.to_str().unwrap(),
        "--out", out.to_str().unwrap(),
    ]);
    cmd.args(extra);
    if let Some(k) = stop_after {
        cmd.env("QUAD_STOP_AFTER_ROUND", k.to_string());
    }
    let o = cmd.output().unwrap();
    let (stdout, stderr) = (String::from_utf8(o.stdout).unwrap(), String::from_utf8(o.stderr).unwrap());
    if stop_after.is_some() {
        // Stopped as Ctrl-C would stop it: 128 + SIGINT.
        assert_eq!(o.status.code(), Some(130), "quad select stopped early:\n{stderr}");
    } else {
        assert!(o.status.success(), "quad select failed:\n{stderr}");
    }
    (stdout, stderr)
}

#[test]
fn select_writes_outputs_caches_stages_and_resumes_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let full = tmp.path().join("full");
    let (stdout, stderr) = select(&cache, &full, &[], None);
    eprintln!("{stderr}\n{stdout}");
    assert!(stdout.contains("budget met"), "{stdout}");

    // selected.jsonl: original lines, unchanged, plus a quad object; no document twice.
    let sample = std::fs::read_to_string(common::repo().join("experiments/data/sample.jsonl")).unwrap();
    let originals: std::collections::HashSet<&str> = sample.lines().collect();
    let selected = std::fs::read_to_string(full.join("selected.jsonl")).unwrap();
    let mut ids = std::collections::HashSet::new();
    for line in selected.lines() {
        let cut = line.rfind(",\"quad\":").expect("quad object appended");
        assert!(originals.contains(format!("{}}}", &line[..cut]).as_str()), "record changed: {line}");
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["quad"]["cluster"].as_u64().is_some() && v["quad"]["round"].as_u64().is_some());
        assert!(ids.insert(v["id"].as_str().unwrap().to_string()), "selected twice");
    }
    let manifest = common::read_json(&full.join("manifest.json"));
    let tokens = manifest["documents"]["tokens_selected"].as_u64().unwrap();
    assert!(tokens >= 30000, "{manifest}");
    assert_eq!(manifest["documents"]["selected"].as_u64().unwrap() as usize, ids.len());
    assert!(manifest["documents"]["scored_fraction"].as_f64().unwrap() > 0.0);
    // Scoring compute is counted in the tokens scoring reads, near the count's fraction.
    let compute = manifest["documents"]["scored_compute_fraction"].as_f64().unwrap();
    let count = manifest["documents"]["scored_fraction"].as_f64().unwrap();
    assert!(compute > 0.0 && compute < 1.0 && (compute / count - 1.0).abs() < 0.5, "{compute} vs {count}");
    // The scoring done in this run, and its speed, measured inside it.
    let s = &manifest["scoring"];
    assert_eq!(s["documents"].as_u64().unwrap(), manifest["documents"]["scored"].as_u64().unwrap(), "a fresh cache scores every document here");
    assert!(s["tokens"].as_u64().unwrap() > 0 && s["seconds"].as_f64().unwrap() > 0.0 && s["docs_per_second"].as_f64().unwrap() > 0.0);
    assert!(stdout.contains("docs/s") && stdout.contains("of the pool's scoring compute"), "{stdout}");
    assert_eq!(manifest["parameters"]["bandit"]["chunk"], 4);
    assert_eq!(manifest["stop"], "budget_met");
    let stages: Vec<&str> = manifest["stages"].as_array().unwrap().iter().map(|s| s["stage"].as_str().unwrap()).collect();
    for s in ["corpus", "embed", "cluster", "proxy", "factors", "reference", "bandit"] {
        assert!(stages.contains(&s), "no timing for {s}: {stages:?}");
    }
    let rounds = std::fs::read_to_string(full.join("rounds.csv")).unwrap();
    assert!(rounds.starts_with("round,arms,cluster_scores,rewards,scored,accepted,docs_selected,tokens_selected\n"));
    let n_rounds = rounds.lines().count() - 1;
    assert_eq!(n_rounds as u64, manifest["rounds"].as_u64().unwrap());
    assert!(n_rounds > 3, "too few rounds ({n_rounds}) to test resuming after round 2");
    let clusters = std::fs::read_to_string(full.join("clusters.csv")).unwrap();
    assert_eq!(clusters.lines().count(), 1 + 6, "{clusters}");

    // A new α reuses every stage.
    let (stdout, stderr) = select(&cache, &tmp.path().join("alpha"), &["--alpha", "0.3"], None);
    let m = common::read_json(&tmp.path().join("alpha").join("manifest.json"));
    // Scores read from the cache are not scoring done here.
    let here = m["scoring"]["documents"].as_u64().unwrap_or(0);
    assert!(here < m["documents"]["scored"].as_u64().unwrap(), "{stdout}");
    for s in ["embed: cached", "cluster: cached", "train proxy: cached", "fit factors: cached", "reference gradient: cached"] {
        assert!(stderr.contains(s), "{s} missing:\n{stderr}");
    }

    // Stopped after round 2 (as Ctrl-C would), then resumed: the same bytes.
    // An older run's outputs in the folder are removed when the run starts.
    let parted = tmp.path().join("parted");
    std::fs::create_dir_all(&parted).unwrap();
    for f in ["selected.jsonl", "manifest.json", "rounds.csv", "clusters.csv"] {
        std::fs::copy(full.join(f), parted.join(f)).unwrap();
    }
    let (stdout, _) = select(&cache, &parted, &[], Some(2));
    assert!(stdout.contains("stopped after 2 rounds (the last: round 1)") && stdout.contains("continue with --resume"), "{stdout}");
    for f in ["selected.jsonl", "manifest.json", "rounds.csv", "clusters.csv"] {
        assert!(!parted.join(f).exists(), "a stale {f} survived the stopped run");
    }
    assert!(parted.join("checkpoint.json").exists());
    let (stdout, stderr) = select(&cache, &parted, &["--resume"], None);
    assert!(stderr.contains("resuming after 2 rounds (the last: round 1)"), "{stderr}");
    assert!(stdout.contains("budget met"), "{stdout}");
    assert_eq!(std::fs::read(parted.join("selected.jsonl")).unwrap(), selected.as_bytes());

    // A checkpoint from other parameters is refused.
    let (_, _) = select(&cache, &tmp.path().join("p2"), &[], Some(1));
    let sample_path = common::repo().join("experiments/data/sample.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_quad"))
        .args([
            "select", "--input", sample_path.to_str().unwrap(), "--reference",
            tmp.path().join("ref.jsonl").to_str().unwrap(), "--budget-tokens", "30000", "--config",
            common::repo().join("tests/fixtures/tiny-select.toml").to_str().unwrap(), "--cache",
            cache.to_str().unwrap(), "--out", tmp.path().join("p2").to_str().unwrap(), "--resume", "--gamma", "0.5",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    // Refused before any stage runs, naming the first setting that differs.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("was made with config.bandit.") && stderr.contains("rerun without --resume"), "{stderr}");
    assert!(!stderr.contains("embed"), "{stderr}");
}

#[test]
fn select_rejects_bad_config() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(&cfg, "[bandit]\nalpha = -1.0\n").unwrap();
    let sample = common::repo().join("experiments/data/sample.jsonl");
    let err = common::quad_fails(&[
        "select", "--input", sample.to_str().unwrap(), "--reference", sample.to_str().unwrap(), "--budget-docs", "5",
        "--config", cfg.to_str().unwrap(), "--out", tmp.path().join("o").to_str().unwrap(),
    ]);
    assert!(err.contains("alpha"), "{err}");
    std::fs::write(&cfg, "[bandit]\nalhpa = 1.0\n").unwrap();
    let err = common::quad_fails(&[
        "select", "--input", sample.to_str().unwrap(), "--reference", sample.to_str().unwrap(), "--budget-docs", "5",
        "--config", cfg.to_str().unwrap(), "--out", tmp.path().join("o").to_str().unwrap(),
    ]);
    assert!(err.contains("alhpa"), "{err}");
}

#[test]
fn editing_a_model_folder_invalidates_what_was_cached_from_it() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    select(&cache, &tmp.path().join("first"), &[], None);
    // The proxy the first run trained, used as a given model folder.
    let proxy = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("proxy-"))
        .expect("a trained proxy in the cache");
    let model = tmp.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(proxy.join(f), model.join(f)).unwrap();
    }
    let m = model.to_str().unwrap();
    // The same files as the trained proxy: what was computed from it is reused.
    let (_, stderr) = select(&cache, &tmp.path().join("a"), &["--model", m], None);
    assert!(stderr.contains("fit factors: cached") && stderr.contains("reference gradient: cached"), "{stderr}");
    // Only config.json changes (not the weights): nothing computed from the model may be reused.
    let cfg = model.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v["rms_norm_eps"] = serde_json::json!(0.01);
    std::fs::write(&cfg, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    let (_, stderr) = select(&cache, &tmp.path().join("c"), &["--model", m], None);
    assert!(!stderr.contains("fit factors: cached") && !stderr.contains("reference gradient: cached"), "{stderr}");
}
