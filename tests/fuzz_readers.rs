//! Structured fuzzing of every file format quad reads (proptest): a valid file of each kind, one
//! value mutated at a time — numbers set to 0, −1, huge, non-finite; arrays emptied, truncated or
//! lengthened; types swapped — and read as the commands read it. The property is always the
//! same: an error or a result, never a panic or an abort, and never success with a non-finite
//! output. Case counts are kept small enough for CI (the whole file runs in well under a minute).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use proptest::prelude::*;
use serde_json::{json, Value};

/// The mutations applied to one leaf (or container) of a JSON document.
#[derive(Debug, Clone, Copy)]
enum Mutation {
    Zero,
    MinusOne,
    Huge,
    Tiny,
    Max,
    NonFinite,
    Text,
    Null,
    Bool,
    EmptyArray,
    EmptyObject,
    Truncate,
    Lengthen,
}

const MUTATIONS: [Mutation; 13] = [
    Mutation::Zero,
    Mutation::MinusOne,
    Mutation::Huge,
    Mutation::Tiny,
    Mutation::Max,
    Mutation::NonFinite,
    Mutation::Text,
    Mutation::Null,
    Mutation::Bool,
    Mutation::EmptyArray,
    Mutation::EmptyObject,
    Mutation::Truncate,
    Mutation::Lengthen,
];

/// JSON pointers of every value under `v` (the root excluded).
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(x, p, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(x, p, out);
            }
        }
        _ => {}
    }
}

/// `v` with the value at the `pick`-th pointer mutated.
fn mutate(v: &Value, pick: usize, m: Mutation) -> Value {
    let mut v = v.clone();
    let mut all = Vec::new();
    pointers(&v, String::new(), &mut all);
    let target = v.pointer_mut(&all[pick % all.len()]).expect("a pointer of v");
    *target = match (m, target.clone()) {
        (Mutation::Zero, _) => json!(0),
        (Mutation::MinusOne, _) => json!(-1),
        (Mutation::Huge, _) => json!(1_000_000_000_000_000_000u64),
        (Mutation::Tiny, _) => json!(1e-300),
        (Mutation::Max, _) => json!(1e308),
        // JSON has no NaN: a number past f64's range reads as infinity where it parses at all.
        (Mutation::NonFinite, _) => serde_json::from_str("1e999").unwrap_or(json!(-1e308)),
        (Mutation::Text, _) => json!("x"),
        (Mutation::Null, _) => Value::Null,
        (Mutation::Bool, _) => json!(true),
        (Mutation::EmptyArray, _) => json!([]),
        (Mutation::EmptyObject, _) => json!({}),
        (Mutation::Truncate, Value::Array(mut a)) => {
            a.truncate(a.len() / 2);
            Value::Array(a)
        }
        (Mutation::Truncate, Value::String(s)) => json!(s.chars().take(s.chars().count() / 2).collect::<String>()),
        (Mutation::Lengthen, Value::Array(mut a)) => {
            if let Some(x) = a.last().cloned() {
                a.push(x);
            }
            Value::Array(a)
        }
        (Mutation::Lengthen, Value::Number(n)) => json!(n.as_f64().unwrap_or(1.0) * 1000.0 + 1.0),
        (_, other) => other,
    };
    v
}

/// A tiny proxy, factors fitted on it, and a 24-document input, made once for the whole file.
struct Fixture {
    _dir: tempfile::TempDir,
    model: PathBuf,
    factors: PathBuf,
    input: PathBuf,
    reference: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let sample = common::repo().join("experiments/data/sample.jsonl");
        let model = dir.path().join("model");
        let factors = dir.path().join("factors");
        common::quad(&[
            "proxy", "train", "--input", sample.to_str().unwrap(), "--out", model.to_str().unwrap(),
            "--layers", "1", "--width", "16", "--heads", "2", "--context", "32", "--vocab-size", "400",
            "--steps", "5", "--eval-every", "5",
        ]);
        common::quad(&[
            "factors", "--input", sample.to_str().unwrap(), "--model", model.to_str().unwrap(),
            "--fit-docs", "16", "--context", "32", "--out", factors.to_str().unwrap(),
        ]);
        let lines: Vec<&str> = include_str!("../experiments/data/sample.jsonl").lines().take(24).collect();
        let input = dir.path().join("input.jsonl");
        std::fs::write(&input, lines.join("\n")).unwrap();
        let reference = dir.path().join("reference.jsonl");
        std::fs::write(&reference, lines[..4].join("\n")).unwrap();
        Fixture { _dir: dir, model, factors, input, reference }
    })
}

/// A copy of folder `from` in a new temporary folder, with `file` replaced by `v`.
fn copy_with(from: &Path, file: &str, v: &Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    std::fs::write(dir.path().join(file), v.to_string()).unwrap();
    dir
}

/// Runs quad: the exit code (None: killed by a signal, an abort) and stderr.
fn run(args: &[&str]) -> (Option<i32>, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_quad")).args(args).output().unwrap();
    (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// A clean end: success, or an error exit (1, 2) that is no panic.
fn clean_end(code: Option<i32>, stderr: &str) -> bool {
    matches!(code, Some(0) | Some(1) | Some(2)) && !stderr.contains("panicked")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, failure_persistence: None, ..ProptestConfig::default() })]

    /// A proxy `config.json` with one value mutated: `quad factors` fails cleanly or writes
    /// factors that load and are finite.
    #[test]
    fn proxy_config_json(pick in 0usize..64, m in 0usize..MUTATIONS.len()) {
        let f = fixture();
        let config = common::read_json(&f.model.join("config.json"));
        let dir = copy_with(&f.model, "config.json", &mutate(&config, pick, MUTATIONS[m]));
        let out = dir.path().join("factors-out");
        let (code, stderr) = run(&["factors", "--input", f.input.to_str().unwrap(), "--model", dir.path().to_str().unwrap(), "--fit-docs", "8", "--context", "32", "--out", out.to_str().unwrap()]);
        prop_assert!(clean_end(code, &stderr), "exit {code:?}: {stderr}");
        if code == Some(0) {
            let loaded = quad_select::model::load(dir.path(), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
            prop_assert!(quad_select::influence::store::load(&out, &loaded.model.config).is_ok());
        }
    }

    /// A `factors.json` with one value mutated: `quad influence` fails cleanly, or succeeds with
    /// a finite score for every document long enough to have one.
    #[test]
    fn factors_json(pick in 0usize..256, m in 0usize..MUTATIONS.len()) {
        let f = fixture();
        let header = common::read_json(&f.factors.join("factors.json"));
        let dir = copy_with(&f.factors, "factors.json", &mutate(&header, pick, MUTATIONS[m]));
        let out = dir.path().join("scores.jsonl");
        let (code, stderr) = run(&["influence", "--input", f.input.to_str().unwrap(), "--reference", f.reference.to_str().unwrap(), "--model", f.model.to_str().unwrap(), "--factors", dir.path().to_str().unwrap(), "--out", out.to_str().unwrap()]);
        prop_assert!(clean_end(code, &stderr), "exit {code:?}: {stderr}");
        if code == Some(0) {
            for line in std::fs::read_to_string(&out).unwrap().lines() {
                let v: Value = serde_json::from_str(line).unwrap();
                prop_assert!(v["score"].as_f64().is_some_and(f64::is_finite) || v["loss"].is_null(), "{line}");
            }
        }
    }

    /// The BERT `config.json` of all-MiniLM-L6-v2 with one value mutated: loading fails cleanly,
    /// or the embedder gives finite unit rows.
    #[test]
    fn bert_config_json(pick in 0usize..32, m in 0usize..MUTATIONS.len()) {
        let minilm = common::minilm();
        let config = common::read_json(&minilm.join("config.json"));
        let dir = tempfile::tempdir().unwrap();
        for name in ["model.safetensors", "tokenizer.json", "sentence_bert_config.json"] {
            if minilm.join(name).exists() {
                std::os::unix::fs::symlink(minilm.join(name), dir.path().join(name)).unwrap();
            }
        }
        std::fs::write(dir.path().join("config.json"), mutate(&config, pick, MUTATIONS[m]).to_string()).unwrap();
        let loaded = quad_select::embed::BertEmbedder::load(dir.path(), quad_select::embed::BertOptions::default());
        if let Ok(e) = loaded {
            use quad_select::embed::Embedder as _;
            if let Ok(rows) = e.embed(&["a short text", "another one, a little longer than the first"]) {
                prop_assert!(rows.iter().all(|x| x.is_finite()));
            }
        }
    }

    /// GGUF metadata of SmolLM2 with one value replaced (a number set to 0, huge or negative, a
    /// type swapped, an array emptied): the config and tokenizer readers answer without a panic,
    /// and a config they accept is one the model can be built from.
    #[test]
    fn gguf_metadata(key in 0usize..64, m in 0usize..8) {
        use candle_core::quantized::gguf_file::Value as G;
        // Read anew each case (the header only: TensorInfo is not Clone).
        let mut file = std::fs::File::open(common::smollm2_gguf()).unwrap();
        let mut ct = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
        let mut keys: Vec<String> = ct.metadata.keys().filter(|k| k.starts_with("llama.") || k.starts_with("tokenizer.") || k.starts_with("general.")).cloned().collect();
        keys.sort();
        let k = keys[key % keys.len()].clone();
        let v = match m {
            0 => G::U32(0),
            1 => G::U64(u64::MAX),
            2 => G::I32(-1),
            3 => G::F32(f32::NAN),
            4 => G::F32(-1.0),
            5 => G::String("x".into()),
            6 => G::Array(vec![]),
            _ => G::U32(7),
        };
        ct.metadata.insert(k, v);
        if let Ok(config) = quad_select::model::gguf::config_from_metadata(&ct) {
            prop_assert!(config.validate().is_ok());
        }
        let _ = quad_select::model::gguf::tokenizer_from_metadata(&ct);
    }

    /// An embeddings `.npy` cut or with one header byte changed: opening and reading every block
    /// fails cleanly or gives the rows the header promises.
    #[test]
    fn embeddings_npy(cut in 0usize..400, at in 0usize..128, byte in any::<u8>()) {
        static NPY: OnceLock<Vec<u8>> = OnceLock::new();
        let bytes = NPY.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let mut w = quad_select::npy::NpyRowWriter::create(&dir.path().join("m.npy"), 4).unwrap();
            w.push(ndarray::Array2::<f32>::from_elem((6, 4), 0.5).view()).unwrap();
            w.finish().unwrap();
            std::fs::read(dir.path().join("m.npy")).unwrap()
        });
        let mut b = bytes.clone();
        if at < b.len() {
            b[at] = byte;
        }
        b.truncate(b.len().saturating_sub(cut % (b.len() + 1)));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.npy");
        std::fs::write(&p, &b).unwrap();
        if let Ok(rows) = quad_select::npy::NpyRows::open(&p) {
            let n = rows.rows();
            let mut seen = 0;
            for block in rows.blocks(4) {
                match block {
                    Ok((_, m)) => seen += m.nrows(),
                    Err(_) => break,
                }
            }
            prop_assert!(seen <= n);
        }
    }

    /// A Parquet file whose text column is of another type (binary with valid and invalid UTF-8,
    /// large_binary, integers, all nulls): every row is a document or a counted skip, and a
    /// binary text is read as its UTF-8, never as hex.
    #[test]
    fn parquet_column_types(kind in 0usize..5, texts in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..12), 1..20)) {
        use arrow_array::{ArrayRef, BinaryArray, Int64Array, LargeBinaryArray, NullArray, StringArray, RecordBatch};
        use std::sync::Arc;
        let ids: Vec<String> = (0..texts.len()).map(|i| format!("d{i}")).collect();
        let refs: Vec<&[u8]> = texts.iter().map(Vec::as_slice).collect();
        let column: ArrayRef = match kind {
            0 => Arc::new(BinaryArray::from_vec(refs.clone())),
            1 => Arc::new(LargeBinaryArray::from_vec(refs.clone())),
            2 => Arc::new(Int64Array::from_iter_values(0..texts.len() as i64)),
            3 => Arc::new(NullArray::new(texts.len())),
            _ => Arc::new(StringArray::from_iter_values(texts.iter().map(|t| String::from_utf8_lossy(t).into_owned()))),
        };
        let batch = RecordBatch::try_from_iter_with_nullable(vec![
            ("id", Arc::new(StringArray::from_iter_values(ids.iter())) as ArrayRef, false),
            ("text", column, true),
        ]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pool.parquet");
        let file = std::fs::File::create(&p).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let (docs, report) = quad_select::corpus::CorpusReader::read_all(&p, quad_select::corpus::CorpusConfig::default()).unwrap();
        prop_assert_eq!(docs.len() as u64 + report.skipped_total(), texts.len() as u64);
        if kind <= 1 {
            for d in &docs {
                let i: usize = d.id[1..].parse().unwrap();
                prop_assert_eq!(d.text.as_bytes(), texts[i].as_slice());
            }
            let invalid = texts.iter().filter(|t| std::str::from_utf8(t).is_err()).count() as u64;
            prop_assert_eq!(report.count(quad_select::corpus::SkipReason::InvalidUtf8), invalid);
        }
    }
}
