//! No command may write over its own input: an output path (file or folder) that is, contains,
//! or lies inside an input path, after resolving symbolic links, is refused before anything is
//! written or removed (the reliability issue found `select` deleting its `--input` and `eval
//! split` shrinking its pool). One row per command that writes; every input keeps its bytes.

mod common;

use std::path::{Path, PathBuf};

struct Case {
    name: &'static str,
    /// Arguments; `{d}` is the case's folder (holding `pool.jsonl`, `ref.jsonl` and `sub/`).
    args: &'static [&'static str],
    /// What the message must say.
    says: &'static str,
}

const CASES: &[Case] = &[
    Case { name: "select --input inside --out", args: &["select", "--input", "{d}/out/selected.jsonl", "--reference", "{d}/ref.jsonl", "--budget-docs", "5", "--out", "{d}/out", "--cache", "{d}/../cache"], says: "--out {d}/out contains the input --input {d}/out/selected.jsonl" },
    Case { name: "select --reference inside --out", args: &["select", "--input", "{d}/pool.jsonl", "--reference", "{d}/out/selected.jsonl", "--budget-docs", "5", "--out", "{d}/out", "--cache", "{d}/../cache"], says: "contains the input --reference" },
    Case { name: "select --out is the pool's folder", args: &["select", "--input", "{d}/pool.jsonl", "--reference", "{d}/ref.jsonl", "--budget-docs", "5", "--out", "{d}", "--cache", "{d}/../cache"], says: "contains the input --input" },
    Case { name: "select --out inside a pool folder", args: &["select", "--input", "{d}", "--reference", "{d}/../ref-elsewhere.jsonl", "--budget-docs", "5", "--out", "{d}/sub/out", "--cache", "{d}/../cache"], says: "lies inside the input --input" },
    Case { name: "select --cache contains the pool", args: &["select", "--input", "{d}/pool.jsonl", "--reference", "{d}/ref.jsonl", "--budget-docs", "5", "--out", "{d}/../out", "--cache", "{d}"], says: "--cache {d} contains the input" },
    Case { name: "select --out is the config file", args: &["select", "--input", "{d}/pool.jsonl", "--reference", "{d}/ref.jsonl", "--budget-docs", "5", "--config", "{d}/sub/c.toml", "--out", "{d}/sub", "--cache", "{d}/../cache"], says: "contains the input --config" },
    Case { name: "select --out through a symlink to the pool's folder", args: &["select", "--input", "{d}/pool.jsonl", "--reference", "{d}/ref.jsonl", "--budget-docs", "5", "--out", "{d}/../link", "--cache", "{d}/../cache"], says: "contains the input --input" },
    Case { name: "eval split --out holds the input", args: &["eval", "split", "--input", "{d}/pool.jsonl", "--out", "{d}"], says: "--out {d} contains the input --input" },
    Case { name: "eval run --out is the selection", args: &["eval", "run", "--selection", "{d}/pool.jsonl", "--reference", "{d}/ref.jsonl", "--split", "{d}/sub", "--k", "4", "--quick", "--out", "{d}/pool.jsonl"], says: "is the input --selection" },
    Case { name: "eval run --out is the reference", args: &["eval", "run", "--selection", "{d}/pool.jsonl", "--reference", "{d}/ref.jsonl", "--split", "{d}/sub", "--k", "4", "--quick", "--out", "{d}/ref.jsonl"], says: "is the input --reference" },
    Case { name: "eval run --out inside the split", args: &["eval", "run", "--selection", "{d}/pool.jsonl", "--reference", "{d}/ref.jsonl", "--split", "{d}/sub", "--k", "4", "--quick", "--out", "{d}/sub/r.json"], says: "lies inside the input --split" },
    Case { name: "eval run --out is the manifest beside the selection", args: &["eval", "run", "--selection", "{d}/pool.jsonl", "--reference", "{d}/ref.jsonl", "--split", "{d}/sub", "--quick", "--out", "{d}/manifest.json"], says: "is the input manifest beside --selection" },
    Case { name: "embed --out holds the input", args: &["embed", "--input", "{d}/pool.jsonl", "--out", "{d}"], says: "contains the input --input" },
    Case { name: "cluster --out is the embeddings folder", args: &["cluster", "--input", "{d}/pool.jsonl", "--embeddings", "{d}/sub", "--k", "2", "--out", "{d}/sub"], says: "is the input --embeddings" },
    Case { name: "proxy train --out holds the input", args: &["proxy", "train", "--input", "{d}/sub/c.toml", "--out", "{d}/sub"], says: "contains the input --input" },
    Case { name: "factors --out is the model", args: &["factors", "--input", "{d}/pool.jsonl", "--model", "{d}/sub", "--out", "{d}/sub"], says: "is the input --model" },
    Case { name: "influence --out is the reference", args: &["influence", "--input", "{d}/pool.jsonl", "--model", "{d}/sub", "--factors", "{d}/sub", "--reference", "{d}/ref.jsonl", "--out", "{d}/ref.jsonl"], says: "is the input --reference" },
    Case { name: "influence --out inside the factors folder", args: &["influence", "--input", "{d}/pool.jsonl", "--model", "{d}/m", "--factors", "{d}/sub", "--reference", "{d}/ref.jsonl", "--out", "{d}/sub/s.jsonl"], says: "lies inside the input --factors" },
    Case { name: "validate --out holds the reference", args: &["validate", "--input", "{d}/../pool2.jsonl", "--reference", "{d}/ref.jsonl", "--out", "{d}"], says: "contains the input --reference" },
];

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_command_refuses_an_output_over_its_input_and_leaves_it_unchanged() {
    let sample = std::fs::read(common::repo().join("experiments/data/sample.jsonl")).unwrap();
    let mut failures = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join(format!("case{i}"));
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::create_dir_all(d.join("out")).unwrap();
        std::fs::write(d.join("pool.jsonl"), &sample).unwrap();
        std::fs::write(d.join("ref.jsonl"), &sample[..sample.len().min(4000)]).unwrap();
        std::fs::write(d.join("out/selected.jsonl"), &sample).unwrap();
        std::fs::write(d.join("sub/c.toml"), "").unwrap();
        std::fs::write(d.join("manifest.json"), "{}").unwrap();
        std::fs::write(root.path().join("pool2.jsonl"), &sample).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(&d, root.path().join("link")).unwrap();
        let before = snapshot(root.path());
        let ds = d.to_str().unwrap();
        let args: Vec<String> = case.args.iter().map(|a| a.replace("{d}", ds)).collect();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_quad")).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let says = case.says.replace("{d}", ds);
        if out.status.code() != Some(1) || !stderr.contains(&says) {
            failures.push(format!("{}: exit {:?}, wanted «{says}» in:\n{stderr}", case.name, out.status.code()));
        }
        if snapshot(root.path()) != before {
            failures.push(format!("{}: the files changed", case.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
