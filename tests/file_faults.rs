//! Values read from files, edited one at a time (the third reliability round): model configs,
//! factors, cache entries, flags and TOML values. One row per finding; each must end in a clear
//! error naming the field or the value (exit 1 or 2, never a panic or an abort), or, for a cache
//! entry, in the entry being computed again and the clean run's bytes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tiny proxy trained on the sample into `dir` (`width` wide, one layer, `vocab` tokens).
fn tiny_proxy(dir: &Path, width: &str, vocab: &str) {
    let sample = common::repo().join("experiments/data/sample.jsonl");
    common::quad(&[
        "proxy", "train", "--input", sample.to_str().unwrap(), "--out", dir.to_str().unwrap(),
        "--layers", "1", "--width", width, "--heads", "2", "--context", "48", "--vocab-size", vocab,
        "--steps", "10", "--eval-every", "10",
    ]);
}

fn fit(model: &Path, out: &Path) {
    let sample = common::repo().join("experiments/data/sample.jsonl");
    common::quad(&[
        "factors", "--input", sample.to_str().unwrap(), "--model", model.to_str().unwrap(),
        "--fit-docs", "16", "--context", "48", "--out", out.to_str().unwrap(),
    ]);
}

/// A copy of the folder `from` at `to` with `edit` applied to its JSON file `file`.
fn edited(from: &Path, to: &Path, file: &str, edit: &dyn Fn(&mut serde_json::Value)) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
    let mut v = common::read_json(&to.join(file));
    edit(&mut v);
    std::fs::write(to.join(file), serde_json::to_string(&v).unwrap()).unwrap();
    to.to_path_buf()
}

type Edit = Box<dyn Fn(&mut serde_json::Value)>;

fn set(field: &'static str, value: serde_json::Value) -> Edit {
    Box::new(move |v| v[field] = value.clone())
}

/// Runs quad; a failure message when it did not fail cleanly with `says` in its stderr.
fn refused(args: &[&str], says: &str) -> Option<String> {
    let o = Command::new(env!("CARGO_BIN_EXE_quad")).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    let clean = matches!(o.status.code(), Some(1) | Some(2)) && !stderr.contains("panicked");
    (!clean || !stderr.contains(says)).then(|| format!("quad {args:?}: exit {:?}, wanted «{says}» in:\n{stderr}", o.status.code()))
}

/// Every case (name, arguments, what stderr must say) refused cleanly; all failures at once.
fn assert_all_refused(cases: &[(&str, Vec<String>, &str)]) {
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(name, args, says)| {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            refused(&args, says).map(|f| format!("{name}: {f}"))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn edited_model_configs_and_factors_are_refused_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let sample = common::repo().join("experiments/data/sample.jsonl");
    let s = sample.to_str().unwrap();
    let reference = common::devil_reference(d);
    let r = reference.to_str().unwrap();
    let (model, wide) = (d.join("model"), d.join("wide"));
    tiny_proxy(&model, "16", "512");
    tiny_proxy(&wide, "32", "512");
    let small_vocab = d.join("small-vocab");
    tiny_proxy(&small_vocab, "16", "300");
    let (factors, wide_factors) = (d.join("factors"), d.join("wide-factors"));
    fit(&model, &factors);
    fit(&wide, &wide_factors);
    let mut failures = Vec::new();

    // Findings 1, 3-style config values and the confusing messages: `quad factors` on the edited model.
    let configs: Vec<(&str, Edit, &str)> = vec![
        ("num_hidden_layers 1e18", set("num_hidden_layers", serde_json::json!(1_000_000_000_000_000_000u64)), "num_hidden_layers"),
        ("num_hidden_layers 1e9", set("num_hidden_layers", serde_json::json!(1_000_000_000u64)), "num_hidden_layers"),
        ("num_hidden_layers 3 on 1-layer weights", set("num_hidden_layers", serde_json::json!(3)), "the weights hold 1 layers"),
        ("num_attention_heads 0", set("num_attention_heads", serde_json::json!(0)), "num_attention_heads = 0"),
        ("num_key_value_heads 0", set("num_key_value_heads", serde_json::json!(0)), "num_key_value_heads 0"),
        ("num_attention_heads 7", set("num_attention_heads", serde_json::json!(7)), "not divisible by num_attention_heads 7"),
        ("rms_norm_eps 1e308", set("rms_norm_eps", serde_json::json!(1e308)), "rms_norm_eps"),
        ("rms_norm_eps -1", set("rms_norm_eps", serde_json::json!(-1.0)), "rms_norm_eps = -1"),
        ("rope_theta 0", set("rope_theta", serde_json::json!(0.0)), "rope_theta = 0"),
        ("max_position_embeddings 1", set("max_position_embeddings", serde_json::json!(1)), "max_position_embeddings = 1"),
        ("model_type bert", set("model_type", serde_json::json!("bert")), "model_type \"bert\""),
        ("vocab_size below the tokenizer's", set("vocab_size", serde_json::json!(100)), "model.embed_tokens.weight"),
    ];
    for (i, (name, edit, says)) in configs.iter().enumerate() {
        let m = edited(&model, &d.join(format!("m{i}")), "config.json", edit.as_ref());
        let out = d.join(format!("f{i}"));
        if let Some(f) = refused(&["factors", "--input", s, "--model", m.to_str().unwrap(), "--fit-docs", "8", "--context", "48", "--out", out.to_str().unwrap()], says) {
            failures.push(format!("{name}: {f}"));
        }
        if let Some(f) = refused(&["factors", "--input", s, "--model", m.to_str().unwrap(), "--out", out.to_str().unwrap()], "config.json") {
            failures.push(format!("{name} (names the file): {f}"));
        }
    }

    // A tokenizer of another model (ids past the embedding rows): said so, not an index error.
    let swapped = edited(&small_vocab, &d.join("swapped"), "config.json", &|_| {});
    std::fs::copy(model.join("tokenizer.json"), swapped.join("tokenizer.json")).unwrap();
    if let Some(f) = refused(&["factors", "--input", s, "--model", swapped.to_str().unwrap(), "--out", d.join("fs").to_str().unwrap()], "the tokenizer and the model do not match") {
        failures.push(format!("a tokenizer of another model: {f}"));
    }

    // Findings 5-7, 10: `quad influence` with edited factors.
    let fingerprint = common::read_json(&factors.join("factors.json"))["model_sha256"].clone();
    let factor_edits: Vec<(&str, &Path, Edit, &str)> = vec![
        ("another model's factors, its sha edited", wide_factors.as_path(), set("model_sha256", fingerprint), "this model's shapes give"),
        ("layers []", factors.as_path(), set("layers", serde_json::json!([])), "`layers` is empty"),
        ("block rows [0, 1000]", factors.as_path(), Box::new(|v| v["layers"][0][1][0]["rows"] = serde_json::json!([0, 1000])), "this model's shapes give"),
        ("context 0", factors.as_path(), set("context", serde_json::json!(0)), "`context` = 0"),
        ("default_damping -1", factors.as_path(), set("default_damping", serde_json::json!(-1.0)), "default_damping"),
        ("examples 0", factors.as_path(), set("examples", serde_json::json!(0)), "nothing was fitted"),
        ("a layer past the model's", factors.as_path(), Box::new(|v| v["layers"][0][0]["block"] = serde_json::json!(5)), "the model has 1 layers"),
    ];
    for (i, (name, from, edit, says)) in factor_edits.iter().enumerate() {
        let f = edited(from, &d.join(format!("fe{i}")), "factors.json", edit.as_ref());
        let out = d.join(format!("scores{i}.jsonl"));
        let args = ["influence", "--input", s, "--reference", r, "--model", model.to_str().unwrap(), "--factors", f.to_str().unwrap(), "--out", out.to_str().unwrap()];
        if let Some(e) = refused(&args, says) {
            failures.push(format!("{name}: {e}"));
        }
        if let Some(e) = refused(&args, "factors.json") {
            failures.push(format!("{name} (names the file): {e}"));
        }
        assert!(!out.exists(), "{name}: scores were written");
    }

    // Finding 13: NaN in the factors' tensors is an error naming the tensor, never null scores.
    let nan = edited(&factors, &d.join("nan-factors"), "factors.json", &|_| {});
    let tensors_file = nan.join("factors.safetensors");
    let mut tensors = candle_core::safetensors::load(&tensors_file, &candle_core::Device::Cpu).unwrap();
    let name = tensors.keys().find(|k| k.ends_with(".lambda_a")).unwrap().clone();
    let n = tensors[&name].dims()[0];
    tensors.insert(name.clone(), candle_core::Tensor::from_vec(vec![f64::NAN; n], n, &candle_core::Device::Cpu).unwrap());
    candle_core::safetensors::save(&tensors, &tensors_file).unwrap();
    let out = d.join("nan-scores.jsonl");
    let args = ["influence", "--input", s, "--reference", r, "--model", model.to_str().unwrap(), "--factors", nan.to_str().unwrap(), "--out", out.to_str().unwrap()];
    if let Some(e) = refused(&args, &format!("{name} holds NaN")) {
        failures.push(format!("NaN factors: {e}"));
    }
    assert!(!out.exists(), "NaN factors: scores were written");

    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn values_out_of_range_in_flags_and_toml_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let s = common::repo().join("experiments/data/sample.jsonl");
    let s = s.to_str().unwrap();
    let reference = common::devil_reference(d);
    let r = reference.to_str().unwrap();
    let dp = |name: &str| d.join(name).to_str().unwrap().to_string();
    std::fs::write(d.join("huge-dim.toml"), "[embed]\nhashing_dim = 1000000000000\n").unwrap();
    std::fs::write(d.join("k-negative.toml"), "[cluster]\nk = -1\n").unwrap();
    std::fs::write(d.join("allowance0.toml"), "[bandit]\nallowance = 0\n").unwrap();
    let select = |config: &str| {
        vec!["select".to_string(), "--input".into(), s.into(), "--reference".into(), r.into(), "--budget-docs".into(), "5".into(), "--config".into(), dp(config), "--cache".into(), dp("cache"), "--out".into(), dp("o")]
    };
    let strings = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        ("proxy train --max-minutes 1e300 (finding 4)", strings(&["proxy", "train", "--input", s, "--max-minutes", "1e300", "--out", &dp("p")]), "--max-minutes"),
        ("--hashing-dim 1e11 (finding 9)", strings(&["embed", "--input", s, "--hashing-dim", "100000000000", "--out", &dp("e")]), "hashing dimension 100000000000"),
        ("hashing_dim = 1e12 in TOML (finding 9)", select("huge-dim.toml"), "hashing_dim"),
        ("k = -1 in TOML", select("k-negative.toml"), "k = -1"),
        ("allowance = 0 below calibration", select("allowance0.toml"), "allowance = 0"),
        ("--max-seq-length with the hashing embedder", strings(&["embed", "--input", s, "--max-seq-length", "64", "--out", &dp("e2")]), "maximum sequence length"),
        ("cluster --label-field nope", strings(&["cluster", "--input", s, "--k", "3", "--label-field", "nope", "--out", &dp("c")]), "field \"nope\""),
    ];
    assert_all_refused(&cases);
    for e in std::fs::read_dir(d).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.ends_with(".tmp"), "temporary left: {name}");
    }
}

#[test]
fn eval_refuses_held_out_selections_a_wrong_k_and_one_output_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let s = common::repo().join("experiments/data/sample.jsonl");
    let s = s.to_str().unwrap();
    let reference = common::devil_reference(d);
    let r = reference.to_str().unwrap();
    let dp = |name: &str| d.join(name).to_str().unwrap().to_string();
    common::quad(&["eval", "split", "--input", s, "--vocab-size", "300", "--heldout-per-domain", "2", "--out", &dp("split")]);
    // A selection with clusters 0..5 (as a k = 6 run writes them).
    let pool = std::fs::read_to_string(d.join("split/pool.jsonl")).unwrap();
    let selection: String = pool
        .lines()
        .take(12)
        .enumerate()
        .map(|(i, l)| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["quad"] = serde_json::json!({"cluster": i % 6});
            format!("{v}\n")
        })
        .collect();
    std::fs::write(d.join("sel.jsonl"), selection).unwrap();
    let held = dp("split/heldout.jsonl");
    let sel = dp("sel.jsonl");
    let split = dp("split");
    let run = |selection: &str, extra: &[&str]| {
        let mut a = vec!["eval", "run", "--selection", selection, "--split", &split, "--quick", "--steps", "2"];
        a.extend_from_slice(extra);
        a.iter().map(|x| x.to_string()).collect::<Vec<_>>()
    };
    let (out, out2) = (dp("r.json"), dp("r2.json"));
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        ("the held-out file as the selection (finding 15)", run(&held, &["--reference", r, "--k", "6", "--out", &out]), "in the held-out set"),
        ("the unsplit pool as the selection (finding 15)", run(s, &["--reference", r, "--k", "6", "--out", &out]), "in the held-out set"),
        ("--k 2 on a k = 6 selection (finding 16)", run(&sel, &["--reference", r, "--k", "2", "--out", &out]), "cluster 2, but k = 2"),
        ("one --out twice (finding 17)", run(&sel, &["--reference", r, "--reference", s, "--k", "6", "--out", &out, "--out", &out]), "given twice"),
        ("one --reference twice", run(&sel, &["--reference", r, "--reference", r, "--k", "6", "--out", &out, "--out", &out2]), "given twice"),
    ];
    assert_all_refused(&cases);
    assert!(!d.join("r.json").exists() && !d.join("r2.json").exists());
}

fn select_args(cache: &Path, out: &Path, reference: &Path) -> Vec<String> {
    let sample = common::repo().join("experiments/data/sample.jsonl");
    let config = common::repo().join("tests/fixtures/tiny-select.toml");
    [
        "select", "--input", sample.to_str().unwrap(), "--reference", reference.to_str().unwrap(),
        "--budget-tokens", "30000", "--config", config.to_str().unwrap(),
        "--cache", cache.to_str().unwrap(), "--out", out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Cache entries that parse but are not this problem's (finding 8 and the "not fixed by a
/// rerun" states): each is discarded, said once with its path, and computed again, giving the
/// clean run's bytes.
#[test]
fn cache_entries_that_parse_but_do_not_fit_are_computed_again() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let reference = common::devil_reference(d);
    let cache = d.join("cache");
    common::quad(&select_args(&cache, &d.join("solo"), &reference).iter().map(String::as_str).collect::<Vec<_>>());
    let expected = std::fs::read(d.join("solo/selected.jsonl")).unwrap();
    let entry = |prefix: &str| {
        std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} entry"))
    };
    let edit_json = |path: &Path, edit: &dyn Fn(&mut serde_json::Value)| {
        let mut v = common::read_json(path);
        edit(&mut v);
        std::fs::write(path, v.to_string()).unwrap();
    };
    let cases: Vec<(&str, &str, Edit)> = vec![
        ("5 assignments removed", "cluster-", Box::new(|v| { v[0].as_array_mut().unwrap().truncate(395); })),
        ("a cluster id out of range", "cluster-", Box::new(|v| v[0][3] = serde_json::json!(99))),
        ("centroid distances []", "cluster-", Box::new(|v| v[1] = serde_json::json!([]))),
        ("a negative centroid distance", "cluster-", Box::new(|v| v[1][0][1] = serde_json::json!(-0.5))),
        ("factors with layers []", "factors-", Box::new(|v| v["layers"] = serde_json::json!([]))),
        ("factors with another block layout", "factors-", Box::new(|v| v["per_head"] = serde_json::json!(false))),
    ];
    for (i, (name, prefix, edit)) in cases.iter().enumerate() {
        let path = entry(prefix);
        let file = if path.is_dir() { path.join("factors.json") } else { path.clone() };
        edit_json(&file, edit.as_ref());
        let out = d.join(format!("again{i}"));
        let o = Command::new(env!("CARGO_BIN_EXE_quad")).args(select_args(&cache, &out, &reference)).output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{name}: {stderr}");
        let said: Vec<&str> = stderr.lines().filter(|l| l.contains("could not be loaded")).collect();
        assert_eq!(said.len(), 1, "{name}: {stderr}");
        assert!(said[0].contains(path.file_name().unwrap().to_str().unwrap()), "{name}: the note names no entry: {}", said[0]);
        assert_eq!(std::fs::read(out.join("selected.jsonl")).unwrap(), expected, "{name}: another selection");
    }
}

/// Finding 18: one writer per output folder; the second is told who holds it, and the lock
/// goes with its holder (a killed run's is no obstacle).
#[test]
fn a_second_run_into_a_held_output_folder_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let reference = common::devil_reference(d);
    let out = d.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let held = quad_select::atomic::FolderLock::acquire(&out).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_quad")).args(select_args(&d.join("cache"), &out, &reference)).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("(pid {})", std::process::id())) && stderr.contains("is writing into this folder"), "{stderr}");
    drop(held);
    // A holder killed with SIGKILL leaves its lock file, not its lock.
    let mut child = Command::new(env!("CARGO_BIN_EXE_quad")).args(select_args(&d.join("cache"), &out, &reference)).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let _ = child.kill();
    let _ = child.wait();
    common::quad(&select_args(&d.join("cache"), &out, &reference).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.join("selected.jsonl").exists());
}

/// A pool with CR-only line endings reads as one bad line: the report says why.
#[test]
fn cr_only_line_endings_are_named_in_the_report() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("mac.jsonl");
    std::fs::write(&p, b"{\"id\":\"a\",\"text\":\"one\"}\r{\"id\":\"b\",\"text\":\"two\"}\r").unwrap();
    let (docs, report) = quad_select::corpus::CorpusReader::read_all(&p, quad_select::corpus::CorpusConfig::default()).unwrap();
    assert!(docs.is_empty());
    assert_eq!(report.cr_only_lines, 1);
    assert!(report.to_string().contains("CR-only line endings"), "{report}");
}
