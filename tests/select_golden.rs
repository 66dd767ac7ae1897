//! The selection on pool-small is pinned: `selected.jsonl` from `quad select` with the tiny
//! fixture config must hash to the value recorded in `tests/fixtures/select-golden.txt`, and its
//! `rounds.csv` must match `tests/fixtures/select-golden-rounds.csv` (integers exactly, decimals
//! to their printed precision). A change of behaviour anywhere in the pipeline shows here.
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
    let got = format!("selected.jsonl {}\n", sha256_file(&out.join("selected.jsonl")));
    let golden = common::repo().join("tests/fixtures/select-golden.txt");
    let golden_rounds = common::repo().join("tests/fixtures/select-golden-rounds.csv");
    let rounds = std::fs::read_to_string(out.join("rounds.csv")).unwrap();
    if std::env::var_os("QUAD_WRITE_GOLDEN").is_some() {
        std::fs::write(&golden, &got).unwrap();
        std::fs::write(&golden_rounds, &rounds).unwrap();
    }
    let want = std::fs::read_to_string(&golden).unwrap();
    assert_eq!(got, want, "the selection on pool-small changed");
    assert_rounds_match(&rounds, &std::fs::read_to_string(&golden_rounds).unwrap());
}

/// rounds.csv against the pinned one: the same rows and columns, every integer equal, every
/// decimal (cluster scores and rewards, printed to 6 places) within 2e-6. Exact bytes are not
/// portable: glibc picks its `ln`/`exp` variants by CPU, so the sixth decimal of a Cluster Score
/// can differ between an AMD and an Intel machine running the same binary on the same data.
fn assert_rounds_match(got: &str, want: &str) {
    let (g, w): (Vec<&str>, Vec<&str>) = (got.lines().collect(), want.lines().collect());
    assert_eq!(g.len(), w.len(), "rounds.csv has {} lines, the pinned one {}", g.len(), w.len());
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let (fa, fb): (Vec<&str>, Vec<&str>) = (a.split([',', ' ']).collect(), b.split([',', ' ']).collect());
        assert_eq!(fa.len(), fb.len(), "rounds.csv line {}: {a} vs {b}", i + 1);
        for (x, y) in fa.iter().zip(&fb) {
            let same = match (x.contains('.'), x.parse::<f64>(), y.parse::<f64>()) {
                (true, Ok(u), Ok(v)) => (u - v).abs() <= 2e-6,
                _ => x == y,
            };
            assert!(same, "rounds.csv line {}: {a} vs the pinned {b}", i + 1);
        }
    }
}
