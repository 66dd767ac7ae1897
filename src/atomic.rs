//! Atomic file output: write to a temporary file in the target folder, then rename over the target,
//! so a reader never sees a half-written file and a crash leaves the old file (or none).

use std::io::{self, BufWriter, Write};
use std::path::Path;

/// A file being written in place of `path`: a temporary file in the same folder, renamed over
/// `path` by [`AtomicFile::commit`] after an fsync, and removed if dropped uncommitted.
pub struct AtomicFile {
    tmp: tempfile::NamedTempFile,
    path: std::path::PathBuf,
}

impl AtomicFile {
    pub fn create(path: &Path) -> io::Result<Self> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir)?;
        let prefix = temp_prefix();
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix).suffix(TEMP_SUFFIX);
        // Mode 0666 at open(2), so the kernel applies the user's umask as for any file the user
        // writes (tempfile's default, 0600, would make outputs private whatever the umask).
        #[cfg(unix)]
        builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
        Ok(Self {
            tmp: builder.tempfile_in(dir)?,
            path: path.to_path_buf(),
        })
    }

    /// The temporary file, to write (and seek) in.
    pub fn file(&self) -> &std::fs::File {
        self.tmp.as_file()
    }

    /// Syncs the file, renames it over the target, then syncs the folder: the rename itself is
    /// durable (after a power loss the target is the new file or the old one, never missing).
    pub fn commit(self) -> io::Result<()> {
        self.tmp.as_file().sync_all()?;
        self.tmp.persist(&self.path).map_err(|e| e.error)?;
        sync_parent(&self.path)
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file().write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file().flush()
    }
}

/// Fsyncs the folder holding `path` (where the platform allows opening a folder; elsewhere a no-op).
pub fn sync_parent(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Every temporary this crate writes is named `.quad-PID-….tmp`: the process that owns it can be
/// told from its name, so a later run removes what a killed one left ([`remove_stale_temporaries`]).
pub const TEMP_PREFIX: &str = ".quad-";
pub const TEMP_SUFFIX: &str = ".tmp";

/// `.quad-PID-`: the start of this process's temporaries' names.
pub fn temp_prefix() -> String {
    format!("{TEMP_PREFIX}{}-", std::process::id())
}

/// The process id in a temporary's name, if the name is one of ours.
fn temp_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(TEMP_PREFIX)?;
    if !name.ends_with(TEMP_SUFFIX) {
        return None;
    }
    let (pid, _) = rest.split_once('-')?;
    pid.parse().ok()
}

/// Whether a process with this id runs (a pid reused by another process counts as alive: its
/// temporaries are kept, never removed while their owner might write them).
fn alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
        // Signal 0 checks that the process exists; EPERM means it exists under another user.
        let r = unsafe { libc::kill(pid, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    true
}

/// An exclusive hold on an output folder: one writer at a time. The lock is an advisory `flock`
/// on `DIR/.quad-lock` (which names its holder's pid), taken without waiting and released when
/// the guard drops or the process ends however it ends (a killed run leaves nothing to clean:
/// the kernel drops its locks). The file itself stays: removing it could let two runs lock two
/// different files.
#[derive(Debug)]
pub struct FolderLock {
    _file: std::fs::File,
}

impl FolderLock {
    pub const FILE: &'static str = ".quad-lock";

    /// Locks `dir` (which must exist), or says which process holds it.
    pub fn acquire(dir: &Path) -> io::Result<Self> {
        use std::io::{Read as _, Seek as _, Write as _};
        let path = dir.join(Self::FILE);
        let mut f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        #[cfg(unix)]
        {
            use std::os::unix::io::AsRawFd;
            // SAFETY: flock on a file descriptor this handle owns.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                    return Err(e);
                }
                let mut holder = String::new();
                let _ = f.read_to_string(&mut holder);
                let who = match holder.trim() {
                    "" => "another quad run".to_string(),
                    pid => format!("another quad run (pid {pid})"),
                };
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("{who} is writing into this folder; wait for it to finish or choose another output folder"),
                ));
            }
        }
        f.set_len(0)?;
        f.rewind()?;
        write!(f, "{}", std::process::id())?;
        Ok(Self { _file: f })
    }
}

/// Removes the temporaries (files and folders named by [`temp_prefix`]) that processes no longer
/// running left in `dir` and in its sub-folders, `depth` levels down; returns how many. A killed
/// run leaves them (an atomic file's partial bytes, a half-trained model's scratch folder) and
/// nothing else ever would.
pub fn remove_stale_temporaries(dir: &Path, depth: usize) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        match temp_owner(&name) {
            Some(pid) if !alive(pid) => {
                let gone = if is_dir { std::fs::remove_dir_all(e.path()) } else { std::fs::remove_file(e.path()) };
                removed += usize::from(gone.is_ok());
            }
            Some(_) => {}
            None if is_dir && depth > 0 => removed += remove_stale_temporaries(&e.path(), depth - 1),
            None => {}
        }
    }
    removed
}

/// Writes `path` atomically with the bytes `write` produces.
pub fn write_atomic<F>(path: &Path, write: F) -> io::Result<()>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    let out = AtomicFile::create(path)?;
    {
        let mut w = BufWriter::new(out.file());
        write(&mut w)?;
        w.flush()?;
    }
    out.commit()
}

/// Writes a string atomically.
pub fn write_string_atomic(path: &Path, s: &str) -> io::Result<()> {
    write_atomic(path, |w| w.write_all(s.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn outputs_get_the_users_umask() {
        use std::os::unix::fs::PermissionsExt;
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let umask = status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.txt");
        write_string_atomic(&p, "x").unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666 & !umask, "mode {mode:o} under umask {umask:o}");
    }

    #[test]
    fn only_dead_processes_temporaries_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("embed-x");
        std::fs::create_dir_all(&sub).unwrap();
        // A pid above the kernel's limit (2^22) belongs to no process.
        let dead = format!("{TEMP_PREFIX}99999999-abc{TEMP_SUFFIX}");
        let mine = format!("{}abc{TEMP_SUFFIX}", temp_prefix());
        std::fs::write(sub.join(&dead), "partial").unwrap();
        std::fs::create_dir_all(dir.path().join(&dead)).unwrap();
        std::fs::write(dir.path().join(&dead).join("model.safetensors"), "x").unwrap();
        std::fs::write(sub.join(&mine), "mine").unwrap();
        std::fs::write(sub.join("ids.jsonl"), "kept").unwrap();
        std::fs::write(dir.path().join(".tmp-not-ours.tmp"), "kept").unwrap();
        assert_eq!(remove_stale_temporaries(dir.path(), 1), 2);
        assert!(!sub.join(&dead).exists() && !dir.path().join(&dead).exists());
        assert!(sub.join(&mine).exists() && sub.join("ids.jsonl").exists());
        assert!(dir.path().join(".tmp-not-ours.tmp").exists());
        assert_eq!(temp_owner(&mine), Some(std::process::id()));
        assert_eq!(temp_owner("ids.jsonl"), None);
    }

    #[test]
    fn replaces_whole_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.txt");
        write_string_atomic(&p, "first version, longer").unwrap();
        write_string_atomic(&p, "second").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "second");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let failed = write_atomic(&p, |_| Err(io::Error::other("boom")));
        assert!(failed.is_err());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "second");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
