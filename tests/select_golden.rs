//! The selection on pool-small is pinned: `selected.jsonl` and `rounds.csv` from `quad select`
//! with the tiny fixture config must hash to the values recorded in
//! `tests/fixtures/select-golden.txt`, which were written by the code before the library-API
//! refactor. A change of behaviour anywhere in the pipeline shows here.
//!
//! To re-pin after an intended change of behaviour: `QUAD_WRITE_GOLDEN=1 cargo test --release
//! --test select_golden`, and say why in the commit.

mod common;

use sha2::{Digest, Sha256};
use std::process::Command;

fn sha256_file(path: &std::path::Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    format!("{:x}", Sha256::digest(&bytes))
}

#[test]
fn selection_on_pool_small_is_pinned() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = common::shared();
    let out = tmp.path().join("out");
    let o = Command::new(env!("CARGO_BIN_EXE_quad"))
        .args([
            "select",
            "--input",
            shared.join("data/pool-small.jsonl").to_str().unwrap(),
            "--reference",
            shared.join("data/reference-abstracts.jsonl").to_str().unwrap(),
            "--budget-tokens",
            "60000",
            "--config",
            common::repo().join("tests/fixtures/tiny-select.toml").to_str().unwrap(),
            "--cache",
            tmp.path().join("cache").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "quad select failed:\n{}", String::from_utf8_lossy(&o.stderr));
    let got = format!(
        "selected.jsonl {}\nrounds.csv {}\n",
        sha256_file(&out.join("selected.jsonl")),
        sha256_file(&out.join("rounds.csv"))
    );
    let golden = common::repo().join("tests/fixtures/select-golden.txt");
    if std::env::var_os("QUAD_WRITE_GOLDEN").is_some() {
        std::fs::write(&golden, &got).unwrap();
    }
    let want = std::fs::read_to_string(&golden).unwrap();
    assert_eq!(got, want, "the selection on pool-small changed");
}
