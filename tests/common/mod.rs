//! Paths the integration tests share.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared` beside the repository (override with QUAD_SHARED).
pub fn shared() -> PathBuf {
    let p = std::env::var_os("QUAD_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared"));
    assert!(
        p.join("data/pool-small.jsonl").is_file(),
        "shared data not found at {} (set QUAD_SHARED)",
        p.display()
    );
    p
}

/// The all-MiniLM-L6-v2 folder fetched by scripts/fetch-models.sh (override with QUAD_MINILM).
pub fn minilm() -> PathBuf {
    let p = std::env::var_os("QUAD_MINILM")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("models/all-MiniLM-L6-v2"));
    assert!(
        p.join("model.safetensors").is_file(),
        "all-MiniLM-L6-v2 not found at {}: run `bash scripts/fetch-models.sh`",
        p.display()
    );
    p
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Runs the `quad` binary; returns stdout, panicking with stderr if it fails.
pub fn quad(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_quad"))
        .args(args)
        .output()
        .expect("run quad");
    assert!(
        out.status.success(),
        "quad {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs the `quad` binary expecting failure; returns stderr.
pub fn quad_fails(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_quad"))
        .args(args)
        .output()
        .expect("run quad");
    assert!(!out.status.success(), "quad {args:?} should have failed");
    String::from_utf8(out.stderr).unwrap()
}

/// Parses `name=value` from a line of quad's output.
pub fn metric(stdout: &str, name: &str) -> f64 {
    let key = format!("{name}=");
    let start = stdout
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in output:\n{stdout}"))
        + key.len();
    let rest = &stdout[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == 'e'))
        .unwrap_or(rest.len());
    rest[..end].parse().unwrap()
}

/// The SmolLM2-135M-Instruct GGUF fetched by scripts/fetch-models.sh (override with QUAD_SMOLLM2).
pub fn smollm2_gguf() -> PathBuf {
    let p = std::env::var_os("QUAD_SMOLLM2")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert!(
        p.is_file(),
        "SmolLM2 GGUF not found at {}: run `bash scripts/fetch-models.sh`",
        p.display()
    );
    p
}

/// Largest absolute element-wise difference of two tensors of the same shape.
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .to_dtype(candle_core::DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// A 20-document reference for `quad select` tests: the Devil's Dictionary entries of the shipped
/// sample, written once into `dir/ref.jsonl`.
pub fn devil_reference(dir: &Path) -> PathBuf {
    let reference = dir.join("ref.jsonl");
    if !reference.exists() {
        let lines: Vec<String> = std::fs::read_to_string(repo().join("experiments/data/sample.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"domain\": \"devil\""))
            .take(20)
            .map(String::from)
            .collect();
        std::fs::write(&reference, lines.join("\n") + "\n").unwrap();
    }
    reference
}
