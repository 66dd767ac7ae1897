//! The cache of a selection run: one [`StageCache::stage`] for every stage's artifact (make the
//! key, load it if cached, otherwise compute and save, time it, tell the observer, let it stop
//! the run), the influence [`ScoreCache`], and the bandit [`Checkpoint`].
//!
//! Layout (`cache/`): `embed-KEY/`, `cluster-KEY.json`, `proxy-KEY/`, `factors-KEY/`,
//! `refgrad-KEY.safetensors`, `scores-KEY.jsonl`. A key covers everything upstream: changing k
//! re-clusters but reuses embeddings, proxy and factors.

use std::collections::HashMap;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::error::SelectError;
use super::observer::{Event, Observer};
use crate::bandit::BanditState;
use crate::path_io::at;

/// Time, memory and cache use of one stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageTiming {
    pub stage: String,
    pub seconds: f64,
    pub cached: bool,
    pub key: String,
    /// The process's peak resident memory while the stage ran, in MB (what it held from earlier
    /// stages included). Linux only: `None` elsewhere.
    #[serde(default)]
    pub peak_rss_mb: Option<f64>,
}

/// When a stage started. Starting one resets the process's peak-RSS mark (Linux's
/// `/proc/self/clear_refs`), so the peak read when the stage ends is the stage's own.
#[derive(Debug, Clone, Copy)]
pub struct StageClock {
    started: Instant,
}

impl StageClock {
    pub fn start() -> Self {
        // Best effort: without it the reading is the peak since the last reset.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        Self { started: Instant::now() }
    }

    pub fn seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// `VmHWM` of `/proc/self/status` (peak resident set since the last reset), in MB.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Where a stage keeps its artifact, and the file whose presence means it is complete.
pub struct Artifact {
    /// `cache/NAME-KEY` (a folder) or `cache/NAME-KEY.EXT` (a file).
    pub path: PathBuf,
    /// The file written last; present only when the artifact is whole.
    pub marker: PathBuf,
}

/// Runs stages against a cache folder and records their timings.
pub struct StageCache {
    dir: PathBuf,
    pub timings: Vec<StageTiming>,
}

impl StageCache {
    /// Opens (creates) the cache folder and removes the temporaries that killed runs left there
    /// (see [`crate::atomic::remove_stale_temporaries`]), returning how many it removed.
    pub fn open(dir: &Path) -> Result<(Self, usize), SelectError> {
        std::fs::create_dir_all(dir).map_err(at(dir))?;
        let removed = crate::atomic::remove_stale_temporaries(dir, 1);
        Ok((Self {
            dir: dir.to_path_buf(),
            timings: Vec::new(),
        }, removed))
    }

    /// A folder artifact `NAME-KEY/`, complete when `marker` exists inside it.
    pub fn folder(&self, name: &str, key: &str, marker: &str) -> Artifact {
        let path = self.dir.join(format!("{name}-{key}"));
        Artifact {
            marker: path.join(marker),
            path,
        }
    }

    /// A file artifact `NAME-KEY.EXT`.
    pub fn file(&self, name: &str, key: &str, ext: &str) -> Artifact {
        let path = self.dir.join(format!("{name}-{key}.{ext}"));
        Artifact {
            marker: path.clone(),
            path,
        }
    }

    /// A scratch folder of this run's own beside the artifacts (runs may share the cache), for a
    /// folder written whole and then renamed; removed when dropped (an error or a stop leaves none).
    pub fn scratch_dir(&self, prefix: &str) -> Result<tempfile::TempDir, SelectError> {
        use std::os::unix::fs::PermissionsExt as _;
        // 0777 less the umask, as `create_dir` gives: the folder is renamed into the cache.
        tempfile::Builder::new()
            .prefix(&format!("{}{prefix}", crate::atomic::temp_prefix()))
            .suffix(crate::atomic::TEMP_SUFFIX)
            .permissions(std::fs::Permissions::from_mode(0o777))
            .tempdir_in(&self.dir)
            .map_err(|e| SelectError::Io(crate::path_io::PathIoError::new(&self.dir, e)))
    }

    /// One stage: `load` the artifact when it is complete, otherwise `compute` it (which saves
    /// it); then record the time and let the observer stop the run. `stage` names it in the
    /// manifest's timings, `label` to the observer.
    #[allow(clippy::too_many_arguments)]
    pub fn stage<T>(
        &mut self,
        observer: &mut dyn Observer,
        (stage, label): (&str, &str),
        key: &str,
        artifact: Option<&Artifact>,
        load: impl FnOnce(&Path) -> Result<T, SelectError>,
        compute: impl FnOnce(Option<&Path>, &mut dyn Observer) -> Result<T, SelectError>,
    ) -> Result<T, SelectError> {
        let mut cached = artifact.is_some_and(|a| a.marker.exists());
        // Announcing a stage never stops it: stopping is honoured between stages.
        let _ = observer.event(Event::Stage { name: label, cached });
        let started = StageClock::start();
        let value = match artifact {
            Some(a) if cached => match load(&a.path) {
                Ok(v) => v,
                // A complete-looking entry that does not load (edited, truncated, from another
                // version) is absent: computed again, never an error.
                Err(e) => {
                    cached = false;
                    self.discard(observer, a, &e)?;
                    compute(Some(&a.path), observer)?
                }
            },
            _ => compute(artifact.map(|a| a.path.as_path()), observer)?,
        };
        self.finish(observer, stage, started, cached, key)?;
        Ok(value)
    }

    /// Removes a cache entry that failed to load, saying so once: it is first renamed to a
    /// temporary name of this process (so a run that shares the cache never sees it half
    /// removed), then deleted.
    pub fn discard(&self, observer: &mut dyn Observer, artifact: &Artifact, why: &dyn std::fmt::Display) -> Result<(), SelectError> {
        let note = format!("cache entry {} could not be loaded ({why}); computing it again", artifact.path.display());
        let _ = observer.event(Event::Note(&note));
        let aside = self.dir.join(format!(
            "{}discarded-{}{}",
            crate::atomic::temp_prefix(),
            artifact.path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            crate::atomic::TEMP_SUFFIX
        ));
        match std::fs::rename(&artifact.path, &aside) {
            Ok(()) => {}
            // Another run discarded it first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(at(&artifact.path)(e).into()),
        }
        let removed = if aside.is_dir() { std::fs::remove_dir_all(&aside) } else { std::fs::remove_file(&aside) };
        removed.map_err(|e| at(&aside)(e).into())
    }

    /// Records a finished stage (also one run outside [`StageCache::stage`]) and lets the
    /// observer stop the run here.
    pub fn finish(
        &mut self,
        observer: &mut dyn Observer,
        stage: &str,
        started: StageClock,
        cached: bool,
        key: &str,
    ) -> Result<(), SelectError> {
        self.record(stage, started, cached, key);
        match observer.event(Event::StageDone { name: stage }) {
            ControlFlow::Continue(()) => Ok(()),
            ControlFlow::Break(()) => Err(SelectError::stopped()),
        }
    }

    /// Records a stage run outside [`StageCache::stage`].
    pub fn record(&mut self, stage: &str, started: StageClock, cached: bool, key: &str) {
        self.timings.push(StageTiming {
            stage: stage.into(),
            seconds: started.seconds(),
            cached,
            key: key.into(),
            peak_rss_mb: peak_rss_mb(),
        });
    }
}

/// Influence scores by document id, persisted as JSONL lines appended as they are computed, so
/// a rerun with another α or γ scores only documents it has not seen.
pub struct ScoreCache {
    path: PathBuf,
    scores: HashMap<String, f64>,
    pending: Vec<(String, f64)>,
}

impl ScoreCache {
    pub fn open(path: &Path) -> Result<Self, SelectError> {
        let mut scores = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(path) {
            // A line cut by a crash is ignored: its document is scored again.
            for line in text.lines() {
                if let Ok((id, s)) = serde_json::from_str::<(String, f64)>(line) {
                    scores.insert(id, s);
                }
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            scores,
            pending: Vec::new(),
        })
    }

    pub fn get(&self, id: &str) -> Option<f64> {
        self.scores.get(id).copied()
    }

    pub fn put(&mut self, id: &str, s: f64) {
        self.scores.insert(id.to_string(), s);
        self.pending.push((id.to_string(), s));
    }

    pub fn flush(&mut self) -> Result<(), SelectError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&self.path)
            .map_err(at(&self.path))?;
        // One writer at a time when runs share the cache; the lock goes with the file handle.
        lock_exclusive(&f).map_err(at(&self.path))?;
        let mut buf = String::new();
        // A line cut by a crash is closed first, so that it spoils no line of ours.
        if !ends_with_newline(&f).map_err(at(&self.path))? {
            buf.push('\n');
        }
        for (id, s) in self.pending.drain(..) {
            buf.push_str(&serde_json::to_string(&(id, s)).expect("plain data"));
            buf.push('\n');
        }
        f.write_all(buf.as_bytes()).map_err(at(&self.path))?;
        Ok(())
    }
}

/// An advisory exclusive lock on `f` (flock), released when the file is closed.
fn lock_exclusive(f: &std::fs::File) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock on a file descriptor this handle owns.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    #[cfg(not(unix))]
    let _ = f;
    Ok(())
}

/// Whether the file is empty or its last byte is a newline.
fn ends_with_newline(f: &std::fs::File) -> std::io::Result<bool> {
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(true);
    }
    let mut last = [0u8; 1];
    #[cfg(unix)]
    std::os::unix::fs::FileExt::read_exact_at(f, &mut last, len - 1)?;
    #[cfg(not(unix))]
    {
        last[0] = b'\n';
    }
    Ok(last[0] == b'\n')
}

/// The checkpoint file: what the run was asked for (its request: resolved input paths, budget
/// and every setting, known before any stage runs), the run's key (which also covers the inputs'
/// contents and every stage's artifact), the bandit state after the last finished round, and a
/// sha256 of the three. A resumed run is checked against the request before anything is done or
/// removed, against the key once the stages have run, and the state against the problem it
/// claims to continue ([`crate::bandit::BanditState::check`]).
pub struct Checkpoint {
    path: PathBuf,
    request: serde_json::Value,
    run_key: String,
    state: serde_json::Value,
}

/// The version of the file's layout; another is refused (rerun without --resume).
const CHECKPOINT_FORMAT: u64 = 2;

impl Checkpoint {
    /// The checksum of a checkpoint's content: sha256 of its request, key and state as compact
    /// JSON with sorted keys (serde_json's `Value` order), so that reading and writing agree.
    fn checksum(request: &serde_json::Value, run_key: &str, state: &serde_json::Value) -> String {
        let body = serde_json::json!({"request": request, "run_key": run_key, "state": state});
        crate::hash::sha256_hex(body.to_string().as_bytes())
    }

    /// Reads a checkpoint and verifies its checksum.
    pub fn read(path: &Path) -> Result<Self, SelectError> {
        let refuse = |why: String| {
            SelectError::Config(format!(
                "{}: {why}; rerun without --resume to start over",
                path.display()
            ))
        };
        let bytes = std::fs::read(path).map_err(at(path))?;
        let mut v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| refuse(format!("not a checkpoint quad wrote ({e})")))?;
        let Some(obj) = v.as_object_mut() else {
            return Err(refuse("not a checkpoint quad wrote (not a JSON object)".into()));
        };
        match obj.get("format").and_then(serde_json::Value::as_u64) {
            Some(CHECKPOINT_FORMAT) => {}
            Some(f) => return Err(refuse(format!("checkpoint format {f}, this quad reads format {CHECKPOINT_FORMAT}"))),
            None => return Err(refuse("written by an older quad (no format field), or not a checkpoint".into())),
        }
        let mut take = |field: &str| obj.remove(field).ok_or_else(|| refuse(format!("the checkpoint has no `{field}`")));
        let sha = take("sha256")?;
        let request = take("request")?;
        let run_key = take("run_key")?;
        let state = take("state")?;
        let run_key = run_key.as_str().ok_or_else(|| refuse("`run_key` is not a string".into()))?.to_string();
        if sha.as_str() != Some(Self::checksum(&request, &run_key, &state).as_str()) {
            return Err(refuse("its content does not match its checksum (edited or damaged)".into()));
        }
        Ok(Self {
            path: path.to_path_buf(),
            request,
            run_key,
            state,
        })
    }

    /// Refuses a checkpoint made for another request, naming the first setting that differs.
    pub fn check_request(&self, request: &serde_json::Value) -> Result<(), SelectError> {
        if let Some((field, then, now)) = first_difference(&self.request, request, String::new()) {
            return Err(SelectError::Config(format!(
                "{} was made with {field} = {then}; this run has {now}; rerun without --resume to start over",
                self.path.display()
            )));
        }
        Ok(())
    }

    /// The saved state, when the checkpoint belongs to a run with this key.
    pub fn into_state(self, run_key: &str) -> Result<BanditState, SelectError> {
        if self.run_key != run_key {
            return Err(SelectError::Config(format!(
                "{} belongs to a run with other inputs or parameters; rerun without --resume to start over",
                self.path.display()
            )));
        }
        serde_json::from_value(self.state).map_err(|e| SelectError::Config(format!("{}: state: {e}", self.path.display())))
    }

    pub fn save(path: &Path, request: &serde_json::Value, run_key: &str, state: &BanditState) -> Result<(), SelectError> {
        let state = serde_json::to_value(state).expect("plain data");
        let sha256 = Self::checksum(request, run_key, &state);
        let json = serde_json::json!({
            "format": CHECKPOINT_FORMAT,
            "sha256": sha256,
            "request": request,
            "run_key": run_key,
            "state": state,
        });
        crate::atomic::write_string_atomic(path, &json.to_string()).map_err(at(path))?;
        Ok(())
    }
}

/// The first place where two JSON values differ: its dotted path and both values.
fn first_difference(a: &serde_json::Value, b: &serde_json::Value, at: String) -> Option<(String, String, String)> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let path = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                first_difference(x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null), path)
            })
        }
        _ if a == b => None,
        _ => Some((at, a.to_string(), b.to_string())),
    }
}
