//! The hashes the crate uses, each defined once: 64-bit FNV-1a (stable across runs and
//! platforms, for seeded orders and hashed features) and sha256 (for file fingerprints and cache
//! keys).

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::path_io::{at, PathIoError};

/// 64-bit FNV-1a: `h ← (h ⊕ x) · 0x100000001b3` from `h₀ = 0xcbf29ce484222325`.
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a(u64);

impl Fnv1a {
    pub const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    pub const PRIME: u64 = 0x100_0000_01b3;

    pub fn new() -> Self {
        Self(Self::OFFSET)
    }

    /// Starts from `OFFSET ⊕ seed`: a family of hashes, one per seed.
    pub fn seeded(seed: u64) -> Self {
        Self(Self::OFFSET ^ seed)
    }

    /// Feeds bytes one at a time (the standard FNV-1a).
    pub fn bytes(mut self, bytes: &[u8]) -> Self {
        for &b in bytes {
            self = self.word(b as u64);
        }
        self
    }

    /// Feeds one whole word in a single step (xor, then multiply): cheaper than its bytes, and
    /// what the token hash of sampled labels has always used.
    pub fn word(self, x: u64) -> Self {
        Self((self.0 ^ x).wrapping_mul(Self::PRIME))
    }

    pub fn finish(self) -> u64 {
        self.0
    }
}

impl Default for Fnv1a {
    fn default() -> Self {
        Self::new()
    }
}

/// FNV-1a of the concatenation of `parts`.
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    parts.iter().fold(Fnv1a::new(), |h, p| h.bytes(p)).finish()
}

/// Lower-case hex sha256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Feeds a file's bytes to a hasher.
fn feed_file(h: &mut Sha256, path: &Path) -> Result<(), PathIoError> {
    let mut f = std::fs::File::open(path).map_err(at(path))?;
    std::io::copy(&mut f, h).map_err(at(path))?;
    Ok(())
}

/// Lower-case hex sha256 of a file's bytes.
pub fn sha256_file(path: &Path) -> Result<String, PathIoError> {
    let mut h = Sha256::new();
    feed_file(&mut h, path)?;
    Ok(format!("{:x}", h.finalize()))
}

/// sha256 over several files in order, each as its name then its bytes (a corpus folder).
pub fn sha256_files(files: &[std::path::PathBuf]) -> Result<String, PathIoError> {
    let mut h = Sha256::new();
    for f in files {
        h.update(f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default().as_bytes());
        feed_file(&mut h, f)?;
    }
    Ok(format!("{:x}", h.finalize()))
}

/// A file's version as the file system tells it without reading it: device, inode, size and the
/// modification and change times to the nanosecond. Replacing a file (a rename over it) gives
/// another inode; writing it in place, another mtime and ctime.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(path: &Path) -> Result<Self, PathIoError> {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(path).map_err(at(path))?;
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// The sha256 of some files ([`sha256_files`]) with their stamps taken before they were hashed:
/// a run that hashes its inputs, then reads them, then [`Snapshot::check_unchanged`] knows that
/// the key and the contents it read come from the same bytes (a file replaced or written in
/// between is caught, not cached under the other version's key).
#[derive(Debug, Clone)]
pub struct Snapshot {
    files: Vec<std::path::PathBuf>,
    stamps: Vec<FileStamp>,
    pub sha256: String,
}

impl Snapshot {
    pub fn take(files: &[std::path::PathBuf]) -> Result<Self, PathIoError> {
        let stamps = files.iter().map(|f| FileStamp::of(f)).collect::<Result<Vec<_>, _>>()?;
        let sha256 = sha256_files(files)?;
        let snapshot = Self { files: files.to_vec(), stamps, sha256 };
        // Changed while it was hashed: the hash is of no one version.
        snapshot.check_unchanged().map_err(|path| PathIoError::new(&path, changed()))?;
        Ok(snapshot)
    }

    /// `Err(path)` of the first file whose stamp differs from the one taken before hashing.
    pub fn check_unchanged(&self) -> Result<(), std::path::PathBuf> {
        for (f, s) in self.files.iter().zip(&self.stamps) {
            if FileStamp::of(f).ok().as_ref() != Some(s) {
                return Err(f.clone());
            }
        }
        Ok(())
    }
}

/// The error of a file that changed while it was read.
pub fn changed() -> std::io::Error {
    std::io::Error::other("the file changed (was replaced or written) while quad read it; rerun once it is no longer being written")
}

/// A cache key: the first 16 hex digits of the sha256 of a JSON value's text.
pub fn key_of(parts: &serde_json::Value) -> String {
    sha256_hex(parts.to_string().as_bytes())[..16].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_published_vectors() {
        // From the FNV reference test suite (64-bit FNV-1a).
        assert_eq!(fnv1a(&[b""]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(&[b"foobar"]), 0x8594_4171_f739_67e8);
        assert_eq!(fnv1a(&[b"foo", b"bar"]), fnv1a(&[b"foobar"]));
    }

    /// Finding 12: a file replaced or rewritten after it was hashed is caught, not keyed with
    /// the old bytes' hash.
    #[test]
    fn a_snapshot_sees_a_file_replaced_or_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pool.jsonl");
        std::fs::write(&p, b"one").unwrap();
        let snap = Snapshot::take(std::slice::from_ref(&p)).unwrap();
        assert_eq!(snap.sha256, sha256_files(std::slice::from_ref(&p)).unwrap());
        assert!(snap.check_unchanged().is_ok());
        // Replaced by a rename (another inode), with the same size.
        let other = dir.path().join("new.jsonl");
        std::fs::write(&other, b"two").unwrap();
        std::fs::rename(&other, &p).unwrap();
        assert_eq!(snap.check_unchanged(), Err(p.clone()));
        // Written in place.
        let snap = Snapshot::take(std::slice::from_ref(&p)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&p, b"three").unwrap();
        assert_eq!(snap.check_unchanged(), Err(p));
    }

    #[test]
    fn sha256_of_a_file_matches_the_known_digest() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("abc");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(sha256_file(&p).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(sha256_hex(b"abc"), sha256_file(&p).unwrap());
    }
}
