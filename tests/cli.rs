//! The `quad` binary end to end on the shipped sample (hashing embedder: no model needed).

mod common;

use quad_select::corpus::{CorpusConfig, CorpusReader};
use quad_select::embed::Embeddings;

#[test]
fn embed_then_cluster_reuses_the_saved_embeddings() {
    let sample = common::repo().join("experiments/data/sample.jsonl");
    let tmp = tempfile::tempdir().unwrap();
    let emb_dir = tmp.path().join("emb");
    let out = common::quad(&[
        "embed",
        "--input",
        sample.to_str().unwrap(),
        "--out",
        emb_dir.to_str().unwrap(),
    ]);
    assert!(out.contains("embedded 400 documents"), "{out}");

    let emb = Embeddings::load(&emb_dir).unwrap();
    let (docs, _) = CorpusReader::read_all(&sample, CorpusConfig::default()).unwrap();
    assert_eq!(emb.ids, docs.iter().map(|d| d.id.clone()).collect::<Vec<_>>());
    assert_eq!(emb.matrix.dim(), (400, 2048));
    assert!(emb.embedder.starts_with("hashing"));
    for row in emb.matrix.rows() {
        assert!((row.dot(&row) - 1.0).abs() < 1e-5);
    }

    let cl_dir = tmp.path().join("clusters");
    let out = common::quad(&[
        "cluster",
        "--input",
        sample.to_str().unwrap(),
        "--embeddings",
        emb_dir.join("embeddings.npy").to_str().unwrap(),
        "--k",
        "3",
        "--label-field",
        "domain",
        "--out",
        cl_dir.to_str().unwrap(),
    ]);
    // Shakespeare, the Jargon File and the Devil's Dictionary separate cleanly.
    assert!(common::metric(&out, "NMI") >= 0.8, "{out}");
    assert!(common::metric(&out, "purity") >= 0.9, "{out}");
    let clusters = common::read_json(&cl_dir.join("clusters.json"));
    assert_eq!(clusters["k"], 3);
    assert_eq!(clusters["extra"]["label_field"], "domain");
    assert!(cl_dir.join("centroids.npy").is_file());

    // Embeddings of another corpus (or a missing one) are refused, not clustered.
    let other = tmp.path().join("other.jsonl");
    std::fs::write(&other, "{\"id\":\"x\",\"text\":\"another corpus\"}\n").unwrap();
    for input in [other.to_str().unwrap(), "/nonexistent/pool.jsonl"] {
        let stderr = common::quad_fails(&[
            "cluster",
            "--input",
            input,
            "--embeddings",
            emb_dir.to_str().unwrap(),
            "--k",
            "3",
            "--out",
            tmp.path().join("c2").to_str().unwrap(),
        ]);
        assert!(stderr.contains("--embeddings") && stderr.contains(input), "{stderr}");
        assert!(!tmp.path().join("c2").join("clusters.json").exists());
    }
}

#[test]
fn strict_flag_turns_the_first_bad_line_into_an_error() {
    let fixture = common::repo().join("tests/fixtures/bad-lines.jsonl");
    let tmp = tempfile::tempdir().unwrap();
    let stderr = common::quad_fails(&[
        "embed",
        "--strict",
        "--input",
        fixture.to_str().unwrap(),
        "--out",
        tmp.path().join("e").to_str().unwrap(),
    ]);
    assert!(stderr.contains("bad-lines.jsonl:3: invalid_json"), "{stderr}");
    assert!(!tmp.path().join("e").exists());
    // Without --strict the same file embeds its 4 good documents and reports the skips.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_quad"))
        .args(["embed", "--input", fixture.to_str().unwrap(), "--out"])
        .arg(tmp.path().join("e"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("read 4 documents") && stderr.contains("skipped 11"), "{stderr}");
    // `quad select` takes --strict too, and stops at the same line before any stage runs.
    let stderr = common::quad_fails(&[
        "select",
        "--strict",
        "--input",
        fixture.to_str().unwrap(),
        "--reference",
        fixture.to_str().unwrap(),
        "--budget-tokens",
        "100",
        "--cache",
        tmp.path().join("cache").to_str().unwrap(),
        "--out",
        tmp.path().join("s").to_str().unwrap(),
    ]);
    assert!(stderr.contains("bad-lines.jsonl:3: invalid_json"), "{stderr}");
    assert!(!tmp.path().join("s").join("selected.jsonl").exists());
}

#[test]
fn missing_input_and_bad_params_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let stderr = common::quad_fails(&[
        "cluster",
        "--input",
        "/nonexistent/pool.jsonl",
        "--k",
        "2",
        "--out",
        tmp.path().to_str().unwrap(),
    ]);
    assert!(stderr.contains("/nonexistent/pool.jsonl"), "{stderr}");
    let sample = common::repo().join("experiments/data/sample.jsonl");
    let stderr = common::quad_fails(&[
        "cluster",
        "--input",
        sample.to_str().unwrap(),
        "--k",
        "0",
        "--out",
        tmp.path().to_str().unwrap(),
    ]);
    assert!(stderr.contains("k must be at least 1"), "{stderr}");
}

#[test]
fn every_record_skipped_still_reports_why() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("all-bad.jsonl");
    std::fs::write(&bad, "{\"text\":\"\"}\n{\"id\":3}\nnot json\n").unwrap();
    for cmd in ["embed", "cluster"] {
        let stderr = common::quad_fails(&[cmd, "--input", bad.to_str().unwrap(), "--out", tmp.path().join(cmd).to_str().unwrap()]);
        assert!(stderr.contains("no documents to embed"), "{cmd}: {stderr}");
        for reason in ["empty_text", "missing_text", "invalid_json"] {
            assert!(stderr.contains(reason), "{cmd}: no {reason} in the summary:\n{stderr}");
        }
    }
    // A missing file's cause is printed once.
    let stderr = common::quad_fails(&["embed", "--input", "/nonexistent/x.jsonl", "--out", tmp.path().join("m").to_str().unwrap()]);
    assert_eq!(stderr.matches("No such file or directory").count(), 1, "{stderr}");
}

/// Asserts that `quad ARGS --help` shows each flag's default as `[default: VALUE]`.
fn assert_help_defaults(args: &[&str], defaults: &[(&str, String)]) {
    let mut a = args.to_vec();
    a.push("--help");
    let out = common::quad(&a);
    for (flag, value) in defaults {
        let at = out.find(&format!("{flag} <")).unwrap_or_else(|| panic!("no {flag} in:\n{out}"));
        let entry = &out[at..];
        let end = entry[2..].find("\n      --").map_or(entry.len(), |i| i + 2);
        assert!(entry[..end].contains(&format!("[default: {value}]")), "{args:?} {flag}: {}", &entry[..end]);
    }
}

#[test]
fn select_help_shows_the_defaults() {
    let d = quad_select::select::SelectConfig::default();
    assert_help_defaults(
        &["select"],
        &[
            ("--alpha", d.bandit.alpha.to_string()),
            ("--tau", d.bandit.tau.to_string()),
            ("--temperature", d.bandit.temperature.to_string()),
            ("--arms-per-round", d.bandit.arms_per_round.to_string()),
            ("--samples-per-arm", d.bandit.samples_per_arm.to_string()),
            ("--k", d.cluster.k.to_string()),
            ("--seed", d.bandit.seed.to_string()),
        ],
    );
}

/// The other commands' defaults are the library's (`quad select` and `quad factors` fit the same
/// factors unless told otherwise): written once, in the library's `Default`s.
#[test]
fn every_command_shows_the_library_defaults() {
    use quad_select::influence::validate::ValidationOptions;
    use quad_select::select::{FactorsConfig, InfluenceConfig};
    let f = FactorsConfig::default();
    assert_help_defaults(
        &["factors"],
        &[
            ("--fit-docs", f.fit_docs.to_string()),
            ("--max-tokens", f.max_tokens.to_string()),
            ("--context", f.context.to_string()),
            ("--layers", f.layers.selection().to_string()),
            ("--fisher", f.fisher.name().to_string()),
        ],
    );
    let i = InfluenceConfig::default();
    assert_help_defaults(
        &["influence"],
        &[("--strategy", i.strategy.to_string()), ("--damping-rel", i.damping_rel.to_string())],
    );
    let v = ValidationOptions::default();
    assert_help_defaults(&["validate"], &[("--tokens", v.tokens.to_string()), ("--damping-rel", v.damping_rel.to_string())]);
    let p = quad_select::model::train::ProxyParams::default();
    assert_help_defaults(
        &["proxy", "train"],
        &[
            ("--layers", p.layers.to_string()),
            ("--width", p.width.to_string()),
            ("--steps", p.steps.to_string()),
            ("--lr", p.lr.to_string()),
            ("--max-docs", p.max_docs.to_string()),
        ],
    );
    let k = quad_select::cluster::KMeansParams::default();
    assert_help_defaults(
        &["cluster"],
        &[
            ("--k", k.k.to_string()),
            ("--fit-rows", k.fit_rows.to_string()),
            ("--n-init", k.n_init.to_string()),
            ("--tau", quad_select::bandit::BanditParams::default().tau.to_string()),
            ("--text-field", quad_select::corpus::CorpusConfig::default().text_field),
        ],
    );
}

#[test]
fn temperature_flag_is_checked_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let sample = common::repo().join("experiments/data/sample.jsonl");
    let base = |extra: &[&str]| {
        let mut a = vec![
            "select".to_string(),
            "--input".into(),
            sample.to_str().unwrap().into(),
            "--reference".into(),
            sample.to_str().unwrap().into(),
            "--budget-docs".into(),
            "10".into(),
            "--cache".into(),
            tmp.path().join("cache").to_str().unwrap().into(),
            "--out".into(),
            tmp.path().join("out").to_str().unwrap().into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    for bad in ["0", "-1", "inf", "NaN"] {
        let args = base(&["--temperature", bad]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let stderr = common::quad_fails(&args);
        assert!(stderr.contains("temperature must be a finite number > 0"), "{bad}: {stderr}");
    }
    let args = base(&["--temperature", "1", "--gamma", "0.5"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stderr = common::quad_fails(&args);
    assert!(stderr.contains("--temperature") && stderr.contains("--gamma"), "{stderr}");
    let toml = tmp.path().join("threshold.toml");
    std::fs::write(&toml, "[bandit]\nallocation = \"threshold\"\n").unwrap();
    let args = base(&["--temperature", "1", "--config", toml.to_str().unwrap()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stderr = common::quad_fails(&args);
    assert!(stderr.contains("temperature applies to the tilted allocations"), "{stderr}");
    assert!(!tmp.path().join("cache").exists(), "nothing was computed");
}

/// A budget of nothing is a usage error (exit 2), not an empty selection; `--budget-documents`
/// is the spelling Python shares, `--budget-docs` still works.
#[test]
fn budgets_are_positive_and_spelled_once() {
    let tmp = tempfile::tempdir().unwrap();
    let sample = common::repo().join("experiments/data/sample.jsonl");
    let s = sample.to_str().unwrap();
    let out = tmp.path().join("out");
    for flag in ["--budget-tokens", "--budget-documents", "--budget-docs"] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_quad"))
            .args(["select", "--input", s, "--reference", s, flag, "0", "--out", out.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{flag} 0");
        assert!(String::from_utf8_lossy(&o.stderr).contains("must be at least 1"), "{flag}");
        assert!(!out.exists(), "nothing written for {flag} 0");
    }
}

/// The reference may name its fields apart from the pool's: a pool of `content`/`doc_id` with a
/// reference of `text`/`id` fails without `--reference-text-field` (the pool's fields apply to
/// both) and selects with it.
#[test]
fn the_reference_has_its_own_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let sample = std::fs::read_to_string(common::repo().join("experiments/data/sample.jsonl")).unwrap();
    let pool = tmp.path().join("pool.jsonl");
    let renamed: String = sample
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            let text = o.remove("text").unwrap();
            let id = o.remove("id").unwrap();
            o.insert("content".into(), text);
            o.insert("doc_id".into(), id);
            v.to_string() + "\n"
        })
        .collect();
    std::fs::write(&pool, renamed).unwrap();
    let reference = common::repo().join("experiments/data/sample.jsonl");
    let config = common::repo().join("tests/fixtures/tiny-select.toml");
    let args = |out: &str, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "select", "--input", pool.to_str().unwrap(), "--reference", reference.to_str().unwrap(),
            "--text-field", "content", "--id-field", "doc_id", "--budget-documents", "20", "--policy", "random",
            "--config", config.to_str().unwrap(), "--cache", tmp.path().join("cache").to_str().unwrap(),
            "--out", tmp.path().join(out).to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let a = args("shared", &[]);
    let stderr = common::quad_fails(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(stderr.contains("reference"), "{stderr}");
    let a = args("own", &["--reference-text-field", "text", "--reference-id-field", "id"]);
    common::quad(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let manifest = common::read_json(&tmp.path().join("own/manifest.json"));
    assert_eq!(manifest["parameters"]["reference_text_field"], "text");
    assert_eq!(manifest["inputs"]["reference"]["read"]["documents"], 400);
}
