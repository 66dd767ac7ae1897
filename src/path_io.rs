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

/// A path given to a command, and the flag (or argument) that named it, for messages.
#[derive(Debug, Clone, Copy)]
pub struct Named<'a> {
    pub flag: &'a str,
    pub path: &'a Path,
}

impl<'a> Named<'a> {
    pub fn new(flag: &'a str, path: &'a Path) -> Self {
        Self { flag, path }
    }
}

/// An output that would write over an input: refused before anything is written or removed.
#[derive(Debug, thiserror::Error)]
#[error(
    "{out_flag} {} {relation} the input {in_flag} {}: writing there could change or remove an input; choose an output outside every input",
    out.display(),
    in_.display()
)]
pub struct OverlapError {
    pub out_flag: String,
    pub out: PathBuf,
    pub relation: &'static str,
    pub in_flag: String,
    pub in_: PathBuf,
}

/// `path` made absolute with every symbolic link resolved: the deepest part that exists is
/// canonicalised and the rest appended (`..` taken lexically), so that an output that does not
/// exist yet still resolves to where it would be written.
pub fn resolve(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut rest = Vec::new();
    let mut head = abs.as_path();
    loop {
        if let Ok(c) = head.canonicalize() {
            let mut out = c;
            for part in rest.iter().rev() {
                match part {
                    std::path::Component::ParentDir => {
                        out.pop();
                    }
                    std::path::Component::CurDir => {}
                    other => out.push(other.as_os_str()),
                }
            }
            return out;
        }
        match (head.parent(), head.components().next_back()) {
            (Some(parent), Some(last)) => {
                rest.push(last);
                head = parent;
            }
            _ => return abs,
        }
    }
}

/// Refuses an output that is, contains, or lies inside an input (after resolving symbolic
/// links): whatever a command writes or clears there could be, or replace, what it reads.
pub fn refuse_output_over_input(outputs: &[Named<'_>], inputs: &[Named<'_>]) -> Result<(), OverlapError> {
    let ins: Vec<(Named<'_>, PathBuf)> = inputs.iter().map(|i| (*i, resolve(i.path))).collect();
    for o in outputs {
        let out = resolve(o.path);
        for (i, inp) in &ins {
            let relation = if out == *inp {
                "is"
            } else if out.starts_with(inp) {
                "lies inside"
            } else if inp.starts_with(&out) {
                "contains"
            } else {
                continue;
            };
            return Err(OverlapError {
                out_flag: o.flag.to_string(),
                out: o.path.to_path_buf(),
                relation,
                in_flag: i.flag.to_string(),
                in_: i.path.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// A folder a command writes into: it may not exist yet, but if it does it must be a folder.
pub fn check_output_folder(flag: &str, path: &Path) -> Result<(), PathIoError> {
    match std::fs::metadata(path) {
        Ok(m) if !m.is_dir() => Err(PathIoError::new(
            path,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{flag} must be a folder (or a path that does not exist yet), and this is a file"),
            ),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlaps_are_found_through_symlinks_and_missing_parts() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("d");
        std::fs::create_dir_all(&d).unwrap();
        let pool = d.join("pool.jsonl");
        std::fs::write(&pool, "{}\n").unwrap();
        let link = tmp.path().join("link");
        #[cfg(unix)]
        std::os::unix::fs::symlink(&d, &link).unwrap();
        #[cfg(not(unix))]
        std::fs::create_dir_all(&link).unwrap();
        let input = [Named::new("--input", &pool)];
        let check = |out: &Path| refuse_output_over_input(&[Named::new("--out", out)], &input).map_err(|e| e.relation);
        assert_eq!(check(&d), Err("contains"));
        assert_eq!(check(&pool), Err("is"));
        assert_eq!(check(&d.join("x/../pool.jsonl")), Err("is"));
        #[cfg(unix)]
        {
            assert_eq!(check(&link), Err("contains"));
            assert_eq!(check(&link.join("pool.jsonl")), Err("is"));
        }
        let folder_input = [Named::new("--input", &d)];
        let e = refuse_output_over_input(&[Named::new("--out", &d.join("new/out"))], &folder_input).unwrap_err();
        assert_eq!(e.relation, "lies inside");
        assert!(e.to_string().starts_with("--out ") && e.to_string().contains("lies inside the input --input"), "{e}");
        assert!(check(&tmp.path().join("elsewhere")).is_ok());
        assert!(check(&tmp.path().join("d2")).is_ok(), "a sibling whose name extends the input's folder");
    }

    #[test]
    fn an_output_folder_that_is_a_file_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("f");
        std::fs::write(&f, "").unwrap();
        let e = check_output_folder("--out", &f).unwrap_err();
        assert!(e.to_string().contains("--out must be a folder"), "{e}");
        assert!(check_output_folder("--out", tmp.path()).is_ok());
        assert!(check_output_folder("--out", &tmp.path().join("new")).is_ok());
    }
}
