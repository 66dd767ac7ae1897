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
