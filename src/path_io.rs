//! The one error for a failed file-system call: which path, and what the OS said. Every stage's
//! error type wraps it (`#[from]`), so a message always names the file.

use std::path::{Path, PathBuf};

/// An I/O error on a path.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct PathIoError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl PathIoError {
    pub fn new(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self {
            path: path.into(),
            source,
        }
    }
}

/// `map_err(at(path))` turns an `io::Error` on `path` into a [`PathIoError`].
pub fn at(path: &Path) -> impl FnOnce(std::io::Error) -> PathIoError + '_ {
    move |source| PathIoError::new(path, source)
}
