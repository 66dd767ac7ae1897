//! Fault injection: bad inputs, kills, concurrent runs and broken model files. Every case is
//! what a careless or hostile user did to `quad` once (the reliability issue); each must end in a
//! clear error or a counted skip, never a panic, a lost result or a stale one.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use proptest::prelude::*;
use quad_select::corpus::{CorpusConfig, CorpusReader, SkipReason};

// ---------------------------------------------------------------------------------------------
// Bad inputs to the corpus reader: one row per finding, the expected count per reason.

struct BadInput {
    name: &'static str,
    bytes: &'static [u8],
    documents: u64,
    skipped: &'static [(SkipReason, u64)],
}

const BAD_INPUTS: &[BadInput] = &[
    BadInput {
        name: "byte-order mark before the first record",
        bytes: b"\xEF\xBB\xBF{\"id\":\"a\",\"text\":\"one\"}\n{\"id\":\"b\",\"text\":\"two\"}\n",
        documents: 2,
        skipped: &[],
    },
    BadInput {
        name: "invalid UTF-8",
        bytes: b"{\"id\":\"a\",\"text\":\"\xff\xfe\"}\n{\"id\":\"b\",\"text\":\"ok\"}\n",
        documents: 1,
        skipped: &[(SkipReason::InvalidUtf8, 1)],
    },
    BadInput {
        name: "not JSON, a JSON array, a truncated object",
        bytes: b"hello\n[1,2]\n{\"id\":\"a\",\"text\":\"cut\n{\"id\":\"b\",\"text\":\"ok\"}\n",
        documents: 1,
        skipped: &[(SkipReason::InvalidJson, 3)],
    },
    BadInput {
        name: "missing, null, non-string and blank text",
        bytes: b"{\"id\":\"a\"}\n{\"id\":\"b\",\"text\":null}\n{\"id\":\"c\",\"text\":5}\n{\"id\":\"d\",\"text\":\"  \\n\"}\n{\"id\":\"e\",\"text\":\"ok\"}\n",
        documents: 1,
        skipped: &[(SkipReason::MissingText, 2), (SkipReason::NonStringText, 1), (SkipReason::EmptyText, 1)],
    },
    BadInput {
        name: "bad and duplicate ids",
        bytes: b"{\"id\":[1],\"text\":\"x\"}\n{\"id\":1.5,\"text\":\"x\"}\n{\"id\":\"a\",\"text\":\"x\"}\n{\"id\":\"a\",\"text\":\"y\"}\n",
        documents: 1,
        skipped: &[(SkipReason::InvalidId, 2), (SkipReason::DuplicateId, 1)],
    },
    BadInput {
        name: "blank lines and CRLF endings",
        bytes: b"\r\n{\"id\":\"a\",\"text\":\"x\"}\r\n\n\n{\"id\":\"b\",\"text\":\"y\"}\r\n",
        documents: 2,
        skipped: &[],
    },
    BadInput {
        name: "no final newline",
        bytes: b"{\"id\":\"a\",\"text\":\"x\"}\n{\"id\":\"b\",\"text\":\"y\"}",
        documents: 2,
        skipped: &[],
    },
];

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn bad_inputs_are_counted_by_reason_and_strict_names_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, case) in BAD_INPUTS.iter().enumerate() {
        let p = write(tmp.path(), &format!("case{i}.jsonl"), case.bytes);
        let (docs, report) = CorpusReader::read_all(&p, CorpusConfig::default())
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(docs.len() as u64, case.documents, "{}", case.name);
        for &(reason, n) in case.skipped {
            assert_eq!(report.count(reason), n, "{}: {reason:?}", case.name);
        }
        let total: u64 = case.skipped.iter().map(|s| s.1).sum();
        assert_eq!(report.skipped_total(), total, "{}", case.name);
        if total > 0 {
            let strict = CorpusConfig { strict: true, ..CorpusConfig::default() };
            let err = CorpusReader::read_all(&p, strict).err().unwrap_or_else(|| panic!("{}: strict read passed", case.name));
            assert!(err.to_string().contains(&format!("case{i}.jsonl:")), "{}: {err}", case.name);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random bytes: no panic, and every non-blank line is a document or a counted skip.
    #[test]
    fn random_bytes_never_panic_and_every_line_is_accounted_for(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let tmp = tempfile::tempdir().unwrap();
        let p = write(tmp.path(), "r.jsonl", &bytes);
        let (docs, report) = CorpusReader::read_all(&p, CorpusConfig::default()).unwrap();
        let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
        let lines = body
            .split(|&b| b == b'\n')
            .filter(|l| !l.strip_suffix(b"\r").unwrap_or(l).iter().all(u8::is_ascii_whitespace))
            .count() as u64;
        prop_assert_eq!(docs.len() as u64 + report.skipped_total(), lines);
    }

    /// Random JSON objects: no panic; a record is a document exactly when its text is a
    /// non-blank string and its id usable and new.
    #[test]
    fn random_json_records_never_panic(records in prop::collection::vec(
        (prop::option::of(prop_oneof![Just(serde_json::json!("t")), Just(serde_json::json!(" ")), Just(serde_json::json!(3)), Just(serde_json::Value::Null)]),
         prop::option::of(prop_oneof![(0u8..4).prop_map(|i| serde_json::json!(format!("id{i}"))), Just(serde_json::json!(1.5)), Just(serde_json::json!([1]))])),
        0..24)) {
        let tmp = tempfile::tempdir().unwrap();
        let mut text = String::new();
        for (t, id) in &records {
            let mut o = serde_json::Map::new();
            if let Some(t) = t { o.insert("text".into(), t.clone()); }
            if let Some(id) = id { o.insert("id".into(), id.clone()); }
            text.push_str(&serde_json::Value::Object(o).to_string());
            text.push('\n');
        }
        let p = write(tmp.path(), "j.jsonl", text.as_bytes());
        let (docs, report) = CorpusReader::read_all(&p, CorpusConfig::default()).unwrap();
        prop_assert_eq!(docs.len() as u64 + report.skipped_total(), records.len() as u64);
    }
}

// ---------------------------------------------------------------------------------------------
// `quad select` under kills and concurrency, on the shipped sample with the tiny config.

fn select_cmd(cache: &Path, out: &Path, extra: &[&str]) -> Command {
    select_cmd_on(&common::repo().join("experiments/data/sample.jsonl"), cache, out, extra)
}

fn select_cmd_on(sample: &Path, cache: &Path, out: &Path, extra: &[&str]) -> Command {
    let config = common::repo().join("tests/fixtures/tiny-select.toml");
    let reference = common::devil_reference(cache.parent().unwrap());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quad"));
    cmd.args(["select", "--input", sample.to_str().unwrap(), "--reference", reference.to_str().unwrap()])
        .args(["--budget-tokens", "30000", "--config", config.to_str().unwrap()])
        .args(["--cache", cache.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

fn run_ok(mut cmd: Command) {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "quad select failed:\n{}", String::from_utf8_lossy(&o.stderr));
}

/// An uninterrupted run on a fresh cache under `dir`: its wall time (to spread faults over) and
/// its `selected.jsonl`.
fn solo_run(dir: &Path) -> (Duration, Vec<u8>) {
    let solo = dir.join("solo");
    let started = std::time::Instant::now();
    run_ok(select_cmd(&dir.join("solo-cache"), &solo, &[]));
    (started.elapsed(), std::fs::read(solo.join("selected.jsonl")).unwrap())
}

/// Files and folders under `dir` whose names mark them as temporaries.
fn temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") || name.starts_with(".tmp") {
                found.push(e.path());
            } else if e.path().is_dir() {
                stack.push(e.path());
            }
        }
    }
    found
}

#[test]
fn killed_anywhere_then_rerun_or_resumed_gives_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let (wall, expected) = solo_run(tmp.path());
    // SIGKILL on a fresh cache at 20 moments 50 ms apart over the first second (reading,
    // embedding, the first cache entries: where a poisoned cache was found) and at 8 spread over
    // the whole run (proxy training, factors, the bandit, writing). Mid-run kills are continued
    // with --resume; every kill is then followed by a plain rerun. Always the same selection, byte
    // for byte, and no temporary left in the cache or the output.
    let early = (1..=20u64).map(|j| j * 50);
    let spread = (1..=8u32).map(|j| (wall * j / 9).as_millis() as u64);
    let mut killed_mid_run = 0;
    for (i, ms) in early.chain(spread).enumerate() {
        let cache = tmp.path().join(format!("cache{i}"));
        let out = tmp.path().join(format!("out{i}"));
        let mut child = select_cmd(&cache, &out, &[]).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        let _ = child.kill();
        let _ = child.wait();
        if !out.join("manifest.json").exists() {
            killed_mid_run += 1;
            if i % 2 == 1 {
                // (A kill between the last two renames may leave a selected.jsonl without its
                // manifest: the manifest, written last, is what marks a finished selection.)
                run_ok(select_cmd(&cache, &out, &["--resume"]));
                assert_eq!(std::fs::read(out.join("selected.jsonl")).unwrap(), expected, "kill at {ms} ms, --resume");
            }
        }
        run_ok(select_cmd(&cache, &out, &[]));
        assert_eq!(std::fs::read(out.join("selected.jsonl")).unwrap(), expected, "kill at {ms} ms, rerun");
        let left = [temporaries(&cache), temporaries(&out)].concat();
        assert!(left.is_empty(), "kill at {ms} ms: temporaries left after the rerun: {left:?}");
    }
    assert!(killed_mid_run >= 20, "only {killed_mid_run} of 28 kills landed before the run ended ({wall:?})");
}

#[test]
fn a_damaged_cache_entry_of_every_kind_is_computed_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, expected) = solo_run(tmp.path());
    let cache = tmp.path().join("solo-cache");
    let entry = |prefix: &str| {
        std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} entry"))
    };
    // What a kill, a full disk or a hand edit leaves: each entry's marker present, its content not.
    std::fs::remove_file(entry("embed-").join("ids.jsonl")).unwrap();
    std::fs::write(entry("cluster-"), "{").unwrap();
    std::fs::write(entry("proxy-").join("model.safetensors"), b"\x08\0\0\0").unwrap();
    std::fs::write(entry("factors-").join("factors.safetensors"), b"").unwrap();
    std::fs::write(entry("refgrad-"), b"not safetensors").unwrap();
    // And temporaries of processes that no longer run (no pid reaches 99999999).
    std::fs::write(entry("embed-").join(".quad-99999999-ids.tmp"), b"partial").unwrap();
    std::fs::create_dir_all(cache.join(".quad-99999999-proxy-x.tmp")).unwrap();
    let out = tmp.path().join("again");
    let o = select_cmd(&cache, &out, &[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert_eq!(std::fs::read(out.join("selected.jsonl")).unwrap(), expected);
    for prefix in ["embed-", "cluster-", "proxy-", "factors-", "refgrad-"] {
        let said = stderr.lines().filter(|l| l.contains("could not be loaded") && l.contains(prefix)).count();
        assert_eq!(said, 1, "{prefix}: said {said} times:\n{stderr}");
    }
    assert!(stderr.contains("removed 2 temporaries"), "{stderr}");
    assert!(temporaries(&cache).is_empty(), "{:?}", temporaries(&cache));
    // Repaired: the next run loads every entry.
    let o = select_cmd(&cache, &tmp.path().join("third"), &[]).output().unwrap();
    assert!(!String::from_utf8_lossy(&o.stderr).contains("could not be loaded"));
}

#[test]
fn two_runs_sharing_one_fresh_cache_both_finish_as_if_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    for alpha in ["1.0", "2.0"] {
        let out = tmp.path().join(format!("solo-{alpha}"));
        run_ok(select_cmd(&tmp.path().join(format!("cache-{alpha}")), &out, &["--alpha", alpha]));
        expected.push(std::fs::read(out.join("selected.jsonl")).unwrap());
    }
    let shared = tmp.path().join("shared-cache");
    let children: Vec<_> = ["1.0", "2.0"]
        .iter()
        .map(|alpha| select_cmd(&shared, &tmp.path().join(format!("shared-{alpha}")), &["--alpha", alpha]).spawn().unwrap())
        .collect();
    for (child, (alpha, want)) in children.into_iter().zip(["1.0", "2.0"].iter().zip(&expected)) {
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "α = {alpha} failed beside another run:\n{}", String::from_utf8_lossy(&o.stderr));
        let got = std::fs::read(tmp.path().join(format!("shared-{alpha}")).join("selected.jsonl")).unwrap();
        assert_eq!(&got, want, "α = {alpha}: the selection differs from its solo run");
    }
    // No scratch left behind, and the score file has only whole lines.
    for e in std::fs::read_dir(&shared).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.ends_with(".tmp"), "left behind: {name}");
        if name.starts_with("scores-") {
            let text = std::fs::read_to_string(shared.join(&name)).unwrap();
            for line in text.lines() {
                assert!(serde_json::from_str::<(String, f64)>(line).is_ok(), "{name}: bad line {line:?}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Broken model files: a clear error naming the file, never a panic.

#[test]
fn broken_model_files_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    run_ok(select_cmd(&cache, &tmp.path().join("first"), &[]));
    let proxy = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("proxy-"))
        .expect("a trained proxy in the cache");
    let fresh = |name: &str| {
        let m = tmp.path().join(name);
        std::fs::create_dir_all(&m).unwrap();
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            std::fs::copy(proxy.join(f), m.join(f)).unwrap();
        }
        m
    };
    let weights = std::fs::read(proxy.join("model.safetensors")).unwrap();
    // (what is broken, the file the error must name)
    let cases: Vec<(PathBuf, &str)> = vec![
        {
            let m = fresh("cut-weights");
            std::fs::write(m.join("model.safetensors"), &weights[..weights.len() / 2]).unwrap();
            (m, "model.safetensors")
        },
        {
            let m = fresh("tokenizer-not-json");
            std::fs::write(m.join("tokenizer.json"), "this is not json").unwrap();
            (m, "tokenizer.json")
        },
        {
            let m = fresh("config-not-json");
            std::fs::write(m.join("config.json"), "{").unwrap();
            (m, "config.json")
        },
        {
            // The config says a wider model than the weights hold.
            let m = fresh("shape-mismatch");
            let cfg = m.join("config.json");
            let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
            v["hidden_size"] = serde_json::json!(v["hidden_size"].as_u64().unwrap() * 2);
            std::fs::write(&cfg, v.to_string()).unwrap();
            (m, "model.safetensors")
        },
        {
            let m = tmp.path().join("cut.gguf");
            std::fs::write(&m, b"GGUF\x03\x00\x00\x00").unwrap();
            (m, "cut.gguf")
        },
        {
            let m = tmp.path().join("model.bin");
            std::fs::write(&m, b"\x80\x02pickle").unwrap();
            (m, "model.bin")
        },
    ];
    for (model, names) in cases {
        let o = select_cmd(&cache, &tmp.path().join("out-broken"), &["--model", model.to_str().unwrap()]).output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{}: accepted", model.display());
        assert_eq!(o.status.code(), Some(1), "{}: {stderr}", model.display());
        assert!(!stderr.contains("panicked"), "{}: {stderr}", model.display());
        assert!(stderr.contains(names), "{}: the error should name {names}:\n{stderr}", model.display());
    }
}

#[test]
fn ctrl_c_anywhere_exits_130_leaves_no_selection_and_resumes_to_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let (wall, expected) = solo_run(tmp.path());
    let mut interrupted = 0;
    for (i, ms) in (1..=4u32).map(|j| (wall * j / 5).as_millis() as u64).enumerate() {
        let cache = tmp.path().join(format!("int-cache{i}"));
        let out = tmp.path().join(format!("int-out{i}"));
        let child = select_cmd(&cache, &out, &[]).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        // SAFETY: a signal to our own child process.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        let o = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        match o.status.code() {
            Some(0) => assert_eq!(std::fs::read(out.join("selected.jsonl")).unwrap(), expected, "finished at {ms} ms"),
            Some(130) => {
                interrupted += 1;
                assert!(!out.join("selected.jsonl").exists() && !out.join("manifest.json").exists(), "{ms} ms");
                run_ok(select_cmd(&cache, &out, &["--resume"]));
                assert_eq!(std::fs::read(out.join("selected.jsonl")).unwrap(), expected, "Ctrl-C at {ms} ms");
            }
            other => panic!("Ctrl-C at {ms} ms: exit {other:?}\n{stderr}"),
        }
    }
    assert!(interrupted >= 2, "only {interrupted} of 4 Ctrl-Cs landed before the run ended ({wall:?})");
}

/// Every file and folder a run leaves in `--out` and `--cache` has the mode an ordinary
/// `File::create` / `create_dir` gives under the user's umask (here 027: group may read, others
/// not), never tempfile's private 0600 / 0700.
#[test]
fn outputs_and_cache_entries_respect_the_umask() {
    use std::os::unix::fs::PermissionsExt as _;
    use std::os::unix::process::CommandExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let (cache, out) = (tmp.path().join("cache"), tmp.path().join("out"));
    let mut cmd = select_cmd(&cache, &out, &[]);
    // SAFETY: umask is async-signal-safe; it runs in the child between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o027);
            Ok(())
        })
    };
    run_ok(cmd);
    fn walk(dir: &Path, seen: &mut Vec<(PathBuf, u32, bool)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            seen.push((e.path(), meta.permissions().mode() & 0o777, meta.is_dir()));
            if meta.is_dir() {
                walk(&e.path(), seen);
            }
        }
    }
    let mut seen = Vec::new();
    walk(&out, &mut seen);
    walk(&cache, &mut seen);
    assert!(seen.iter().any(|(p, _, _)| p.ends_with("selected.jsonl")));
    assert!(seen.iter().any(|(p, _, dir)| *dir && p.file_name().unwrap().to_string_lossy().starts_with("proxy-")));
    for (path, mode, dir) in &seen {
        let want = if *dir { 0o750 } else { 0o640 };
        assert_eq!(*mode, want, "{} has mode {mode:o}", path.display());
    }
}

/// A write that fails half-way (a file-size limit standing in for a full disk) is a clear error
/// naming the file, at every kind of write: the pool's scratch copy, the embeddings, the factors'
/// safetensors. Nothing half-written is taken for a cache entry: the run without the limit then
/// gives the solo run's bytes.
#[test]
fn a_full_disk_is_an_error_that_names_the_file() {
    use std::os::unix::process::CommandExt as _;
    let tmp = tempfile::tempdir().unwrap();
    // A pool of 30 documents: its scratch copy is smaller than the factors file.
    let sample = std::fs::read_to_string(common::repo().join("experiments/data/sample.jsonl")).unwrap();
    let pool = tmp.path().join("pool.jsonl");
    std::fs::write(&pool, sample.lines().take(30).collect::<Vec<_>>().join("\n") + "\n").unwrap();
    let cache = tmp.path().join("cache");
    let cmd = |out: &str, limit: Option<u64>| {
        let mut cmd = select_cmd_on(&pool, &cache, &tmp.path().join(out), &[]);
        if let Some(limit) = limit {
            // SAFETY: signal and setrlimit are async-signal-safe; they run in the child before exec.
            unsafe {
                cmd.pre_exec(move || {
                    // Past the limit a write fails with EFBIG instead of killing the process.
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    let lim = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
                    Ok(())
                })
            };
        }
        cmd
    };
    let failing = |out: &str, limit: u64, names: &str| {
        let o = cmd(out, Some(limit)).output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "limit {limit}: {stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(last.starts_with("error: ") && last.contains(names) && last.contains("too large"), "limit {limit}: {last}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    };
    run_ok(cmd("solo", None));
    let solo = std::fs::read(tmp.path().join("solo/selected.jsonl")).unwrap();
    let pool_bytes = std::fs::metadata(&pool).unwrap().len();
    let factors = std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().path()).find(|p| p.file_name().unwrap().to_string_lossy().starts_with("factors-")).unwrap();
    let factors_bytes = std::fs::metadata(factors.join("factors.safetensors")).unwrap().len();
    assert!(pool_bytes < factors_bytes, "the pool ({pool_bytes} B) must be smaller than the factors ({factors_bytes} B)");

    failing("a", pool_bytes / 2, "the pool's scratch copy");
    std::fs::remove_dir_all(&factors).unwrap();
    failing("b", (pool_bytes + factors_bytes) / 2, "factors.safetensors");
    let embed = std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().path()).find(|p| p.file_name().unwrap().to_string_lossy().starts_with("embed-")).unwrap();
    let embed_bytes = std::fs::metadata(embed.join("embeddings.npy")).unwrap().len();
    std::fs::remove_dir_all(&embed).unwrap();
    failing("c", pool_bytes.max(embed_bytes / 2), "embeddings.npy");

    run_ok(cmd("after", None));
    assert_eq!(std::fs::read(tmp.path().join("after/selected.jsonl")).unwrap(), solo);
}

// ---------------------------------------------------------------------------------------------
// Edited and damaged checkpoints: resumed to the uninterrupted bytes, or refused with an error
// naming the checkpoint; never a panic, never other bytes.

/// A finished run on a cache of its own (shared by the checkpoint tests): its folder, cache and
/// out folder, and the checkpoint of the same run stopped after round 7 (as Ctrl-C would stop
/// it), from which a resume must give the finished run's bytes.
fn finished_run() -> &'static (tempfile::TempDir, PathBuf, PathBuf, Vec<u8>) {
    static RUN: std::sync::OnceLock<(tempfile::TempDir, PathBuf, PathBuf, Vec<u8>)> = std::sync::OnceLock::new();
    RUN.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let (cache, out) = (tmp.path().join("cache"), tmp.path().join("out"));
        run_ok(select_cmd(&cache, &out, &[]));
        let parted = tmp.path().join("parted");
        let o = select_cmd(&cache, &parted, &[]).env("QUAD_STOP_AFTER_ROUND", "7").output().unwrap();
        assert_eq!(o.status.code(), Some(130), "{}", String::from_utf8_lossy(&o.stderr));
        let bytes = std::fs::read(parted.join("checkpoint.json")).unwrap();
        (tmp, cache, out, bytes)
    })
}

/// Resumes from `checkpoint` (bytes) in a fresh out folder: `Ok(selected.jsonl)` or `Err(stderr)`;
/// a panic (exit 101) or any other exit status fails the test.
fn resume_from(checkpoint: &[u8]) -> Result<Vec<u8>, String> {
    let (tmp, cache, _, _) = finished_run();
    let out = tempfile::tempdir_in(tmp.path()).unwrap();
    std::fs::write(out.path().join("checkpoint.json"), checkpoint).unwrap();
    let o = select_cmd(cache, out.path(), &["--resume"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    match o.status.code() {
        Some(0) => Ok(std::fs::read(out.path().join("selected.jsonl")).unwrap()),
        Some(1) => Err(stderr),
        other => panic!("exit {other:?} resuming an edited checkpoint:\n{stderr}"),
    }
}

/// The checkpoint's own checksum recomputed after an edit (what a deliberate forger would do):
/// the state checks behind the checksum must still catch the edit.
fn rehash(v: &mut serde_json::Value) {
    let body = serde_json::json!({"request": v["request"], "run_key": v["run_key"], "state": v["state"]});
    v["sha256"] = serde_json::json!(quad_select::hash::sha256_hex(body.to_string().as_bytes()));
}

#[test]
fn an_edited_checkpoint_is_refused_with_the_field_named() {
    let (_, _, out, bytes) = finished_run();
    let expected = std::fs::read(out.join("selected.jsonl")).unwrap();
    assert_eq!(resume_from(bytes).unwrap(), expected, "the unedited checkpoint resumes to the uninterrupted bytes");
    let original: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    type Edit = fn(&mut serde_json::Value);
    let edits: &[(&str, Edit, &str)] = &[
        ("an arm added", |s| {
            let arm = s["arms"][0].clone();
            s["arms"].as_array_mut().unwrap().push(arm);
        }, "arms:"),
        ("an arm removed", |s| { s["arms"].as_array_mut().unwrap().pop(); }, "arms:"),
        ("scores shortened", |s| s["scores"]["len"] = serde_json::json!(3), "scores"),
        ("taken shortened", |s| s["taken"]["len"] = serde_json::json!(3), "taken"),
        ("a selected document out of range", |s| s["selected"][0]["doc"] = serde_json::json!(1_000_000), "selected[0].doc"),
        ("a selected cluster out of range", |s| s["selected"][0]["cluster"] = serde_json::json!(99), "selected[0].cluster"),
        ("docs_selected", |s| s["docs_selected"] = serde_json::json!(95), "docs_selected"),
        ("tokens_selected", |s| s["tokens_selected"] = serde_json::json!(5), "tokens_selected"),
        ("budget_met with the budget not met", |s| s["stop"] = serde_json::json!("budget_met"), "stop: budget_met"),
        ("round 2^63", |s| s["round"] = serde_json::json!(1u64 << 63), "round"),
        ("a non-finite calibration", |s| s["calibration"] = serde_json::json!([0.0, 0.0]), "calibration"),
    ];
    let mut failures = Vec::new();
    for (name, edit, says) in edits {
        for forged in [false, true] {
            let mut v = original.clone();
            edit(&mut v["state"]);
            if forged {
                rehash(&mut v);
            }
            match resume_from(v.to_string().as_bytes()) {
                Ok(_) => failures.push(format!("{name} (checksum {}): resumed", if forged { "forged" } else { "stale" })),
                Err(e) => {
                    let want = if forged { *says } else { "checksum" };
                    if !e.contains("checkpoint.json") || !e.contains(want) {
                        failures.push(format!("{name}: wanted «{want}» and the checkpoint named in:\n{e}"));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every leaf of a JSON value, as a path of keys and indices.
fn leaves(v: &serde_json::Value, at: Vec<serde_json::Value>, out: &mut Vec<Vec<serde_json::Value>>) {
    match v {
        serde_json::Value::Object(m) => m.iter().for_each(|(k, x)| leaves(x, [at.clone(), vec![serde_json::json!(k)]].concat(), out)),
        serde_json::Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| leaves(x, [at.clone(), vec![serde_json::json!(i)]].concat(), out)),
        _ => out.push(at),
    }
}

fn at_path<'a>(v: &'a mut serde_json::Value, path: &[serde_json::Value]) -> &'a mut serde_json::Value {
    path.iter().fold(v, |v, p| match p {
        serde_json::Value::String(k) => &mut v[k.as_str()],
        p => &mut v[p.as_u64().unwrap() as usize],
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Arbitrary bytes, and the real checkpoint with bytes overwritten or cut.
    #[test]
    fn arbitrary_checkpoint_bytes_resume_identically_or_are_refused(
        random in prop::collection::vec(any::<u8>(), 0..512),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
        kind in 0..3u8,
    ) {
        let (_, _, out, bytes) = finished_run();
        let expected = std::fs::read(out.join("selected.jsonl")).unwrap();
        let mut edited = bytes.clone();
        match kind {
            0 => edited = random,
            1 => for (i, b) in &flips { let i = i.index(edited.len()); edited[i] = *b; },
            _ => edited.truncate(cut.index(edited.len())),
        }
        match resume_from(&edited) {
            Ok(got) => prop_assert_eq!(got, expected),
            Err(e) => prop_assert!(e.contains("checkpoint.json"), "{}", e),
        }
    }

    /// One leaf of the JSON replaced (numbers huge or negative, strings, null), with the
    /// checksum left alone (refused unless the edit changed nothing) or forged (what passes
    /// every check may resume, to whatever the forged state says; never a panic).
    #[test]
    fn arbitrary_checkpoint_edits_resume_identically_or_are_refused(
        which in any::<prop::sample::Index>(),
        value in prop_oneof![
            Just(serde_json::Value::Null),
            any::<i64>().prop_map(|x| serde_json::json!(x)),
            any::<u64>().prop_map(|x| serde_json::json!(x)),
            (-1e6f64..1e6).prop_map(|x| serde_json::json!(x)),
            Just(serde_json::json!("budget_met")),
            Just(serde_json::json!([])),
            (0u64..64).prop_map(|x| serde_json::json!(x)),
        ],
        forged in any::<bool>(),
    ) {
        let (_, _, out, bytes) = finished_run();
        let expected = std::fs::read(out.join("selected.jsonl")).unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        let mut paths = Vec::new();
        leaves(&v, Vec::new(), &mut paths);
        let path = which.get(&paths).clone();
        let unchanged = *at_path(&mut v, &path) == value;
        *at_path(&mut v, &path) = value;
        if forged {
            rehash(&mut v);
        }
        match resume_from(v.to_string().as_bytes()) {
            Ok(got) if !forged => prop_assert_eq!(got, expected, "edit at {:?} resumed", path),
            Ok(_) => {}
            Err(e) => {
                prop_assert!(e.contains("checkpoint.json"), "{}", e);
                prop_assert!(forged || !unchanged, "a no-op edit at {:?} was refused: {}", path, e);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Values no run can use: refused where they enter, naming the flag, the setting or the file;
// never a panic (exit 101), never a run that reports success on nothing.

#[test]
fn unusable_values_are_refused_naming_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let sample = common::repo().join("experiments/data/sample.jsonl");
    let s = sample.to_str().unwrap().to_string();
    let reference = common::devil_reference(d);
    let r = reference.to_str().unwrap().to_string();
    let dp = |name: &str| d.join(name).to_str().unwrap().to_string();
    std::fs::write(d.join("empty.jsonl"), "").unwrap();
    std::fs::write(d.join("hashing0.toml"), "[embed]\nhashing_dim = 0\n").unwrap();
    std::fs::write(d.join("damping-inf.toml"), "[influence]\ndamping_rel = inf\n").unwrap();
    std::fs::write(d.join("a-file"), "").unwrap();
    std::fs::create_dir_all(d.join("folder")).unwrap();
    std::fs::copy(&sample, d.join("folder/a.jsonl")).unwrap();
    std::os::unix::fs::symlink(d.join("gone.jsonl"), d.join("folder/b.jsonl")).unwrap();
    // A real split to evaluate against, and one whose held-out file is empty.
    common::quad(&["eval", "split", "--input", &s, "--vocab-size", "300", "--heldout-per-domain", "2", "--out", &dp("split")]);
    std::fs::create_dir_all(d.join("split-noheld")).unwrap();
    std::fs::copy(d.join("split/tokenizer.json"), d.join("split-noheld/tokenizer.json")).unwrap();
    std::fs::write(d.join("split-noheld/heldout.jsonl"), "").unwrap();
    let select = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["select", "--input", &s, "--reference", &r, "--budget-docs", "5", "--cache", &dp("cache")]
            .iter()
            .map(|x| x.to_string())
            .collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        if !extra.contains(&"--out") {
            a.extend(["--out".to_string(), dp("o")]);
        }
        a
    };
    let eval_run = |extra: &[&str]| -> Vec<String> {
        // The split's pool: a selection must not share documents with the held-out set.
        let pool = dp("split/pool.jsonl");
        let mut a: Vec<String> = ["eval", "run", "--selection", &pool, "--quick", "--out", &dp("r.json")].iter().map(|x| x.to_string()).collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let strings = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        ("embed --hashing-dim 0", strings(&["embed", "--input", &s, "--hashing-dim", "0", "--out", &dp("e")]), "--hashing-dim"),
        ("cluster --hashing-dim 0", strings(&["cluster", "--input", &s, "--hashing-dim", "0", "--out", &dp("c")]), "--hashing-dim"),
        ("[embed] hashing_dim = 0", select(&["--config", &dp("hashing0.toml")]), "hashing_dim"),
        ("proxy train --max-minutes NaN", strings(&["proxy", "train", "--input", &s, "--max-minutes", "NaN", "--out", &dp("p")]), "--max-minutes"),
        ("proxy train --max-minutes inf", strings(&["proxy", "train", "--input", &s, "--max-minutes", "inf", "--out", &dp("p")]), "--max-minutes"),
        ("[influence] damping_rel = inf", select(&["--config", &dp("damping-inf.toml")]), "damping_rel"),
        ("influence --damping-rel inf", strings(&["influence", "--input", &s, "--model", &dp("m"), "--factors", &dp("f"), "--reference", &r, "--damping-rel", "inf", "--out", &dp("i.jsonl")]), "--damping-rel"),
        ("cluster --tau NaN", strings(&["cluster", "--input", &s, "--tau", "NaN", "--out", &dp("c")]), "--tau"),
        ("factors --context 1", strings(&["factors", "--input", &s, "--model", &dp("m"), "--context", "1", "--out", &dp("f")]), "--context"),
        ("factors --fit-docs 0", strings(&["factors", "--input", &s, "--model", &dp("m"), "--fit-docs", "0", "--out", &dp("f")]), "--fit-docs"),
        ("validate --tokens 1", strings(&["validate", "--input", &s, "--reference", &r, "--tokens", "1", "--out", &dp("v")]), "--tokens"),
        ("eval run --reference empty", eval_run(&["--reference", &dp("empty.jsonl"), "--split", &dp("split"), "--k", "4"]), "reference set 1 of 1 has no documents"),
        ("eval run --k 0", eval_run(&["--reference", &r, "--split", &dp("split"), "--k", "0"]), "--k"),
        ("eval run, an empty held-out set", eval_run(&["--reference", &r, "--split", &dp("split-noheld"), "--k", "4"]), "held-out set has no documents"),
        ("eval split, an empty input", strings(&["eval", "split", "--input", &dp("empty.jsonl"), "--out", &dp("s1")]), "no documents"),
        ("eval split, no label field", strings(&["eval", "split", "--input", &s, "--label-field", "nope", "--out", &dp("s2")]), "no document has the label field 'nope'"),
        ("eval split, everything held out", strings(&["eval", "split", "--input", &s, "--heldout-per-domain", "1000", "--out", &dp("s3")]), "would be held out"),
        ("eval split --vocab-size 0", strings(&["eval", "split", "--input", &s, "--vocab-size", "0", "--out", &dp("s4")]), "--vocab-size"),
        ("a dangling symlink in the input folder", strings(&["embed", "--input", &dp("folder"), "--out", &dp("e")]), "symbolic link to nothing"),
        ("--input /dev/null (a device, as a pipe)", strings(&["embed", "--input", "/dev/null", "--out", &dp("e")]), "not a regular file or folder"),
        ("--out /dev/null", select(&["--out", "/dev/null"]), "must be a folder"),
        ("--cache is a file", strings(&["select", "--input", &s, "--reference", &r, "--budget-docs", "5", "--cache", &dp("a-file"), "--out", &dp("o")]), "must be a folder"),
    ];
    let mut failures = Vec::new();
    for (name, args, says) in &cases {
        let o = Command::new(env!("CARGO_BIN_EXE_quad")).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        let ok_code = matches!(o.status.code(), Some(1) | Some(2));
        if !ok_code || !stderr.contains(says) {
            failures.push(format!("{name}: exit {:?}, wanted «{says}» in:\n{stderr}", o.status.code()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_resume_with_a_changed_flag_is_refused_before_any_work_or_removal() {
    let (tmp, cache, out, _) = finished_run();
    let copy = tempfile::tempdir_in(tmp.path()).unwrap();
    for f in ["selected.jsonl", "manifest.json", "rounds.csv", "clusters.csv", "checkpoint.json"] {
        std::fs::copy(out.join(f), copy.path().join(f)).unwrap();
    }
    let o = select_cmd(cache, copy.path(), &["--resume", "--alpha", "3"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("config.bandit.alpha = 1.0; this run has 3.0"), "{stderr}");
    assert!(!stderr.contains("embed"), "a stage ran before the refusal:\n{stderr}");
    for f in ["selected.jsonl", "manifest.json"] {
        assert_eq!(std::fs::read(copy.path().join(f)).unwrap(), std::fs::read(out.join(f)).unwrap(), "{f} was removed or changed");
    }
}
