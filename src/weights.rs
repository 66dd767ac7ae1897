//! Where model weights may come from: safetensors (and GGUF) only.
//!
//! PyTorch checkpoints (`pytorch_model.bin`, `*.pt`, `*.pth`, `*.pkl`, `*.ckpt`) are Python pickles,
//! and unpickling runs arbitrary code from the file; we refuse them rather than load them.

use std::path::{Path, PathBuf};

/// Errors about model weight files.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error(
        "{path}: refusing to load a PyTorch pickle checkpoint — unpickling runs arbitrary code. \
         Convert it to model.safetensors (e.g. with the `safetensors` Python package) and retry"
    )]
    PickleRefused { path: PathBuf },
    #[error("{dir}: no model.safetensors in this model folder")]
    Missing { dir: PathBuf },
    #[error("{path}: not a model folder or weight file")]
    NotFound { path: PathBuf },
}

const PICKLE_EXTENSIONS: [&str; 5] = ["bin", "pt", "pth", "pkl", "ckpt"];

/// Is this file a pickle-format checkpoint (judged by its extension)?
pub fn is_pickle(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| PICKLE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

/// The safetensors weight file to load from a model folder (or a weight file named directly).
///
/// A folder must hold `model.safetensors`; if it only holds pickle checkpoints, or a pickle file is
/// named directly, the answer is [`WeightsError::PickleRefused`].
pub fn safetensors_file(path: &Path) -> Result<PathBuf, WeightsError> {
    if path.is_file() {
        if is_pickle(path) {
            return Err(WeightsError::PickleRefused {
                path: path.to_path_buf(),
            });
        }
        return Ok(path.to_path_buf());
    }
    if !path.is_dir() {
        return Err(WeightsError::NotFound {
            path: path.to_path_buf(),
        });
    }
    let st = path.join("model.safetensors");
    if st.is_file() {
        return Ok(st);
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    entries.sort();
    if let Some(pickle) = entries.iter().find(|p| is_pickle(p)) {
        return Err(WeightsError::PickleRefused {
            path: pickle.clone(),
        });
    }
    Err(WeightsError::Missing {
        dir: path.to_path_buf(),
    })
}

/// The tensor names in a safetensors file's header, read without loading any tensor (the
/// 8-byte little-endian header length, then the JSON header), so that a config can be checked
/// against the weights before anything is sized by it.
pub fn safetensors_names(path: &Path) -> Result<Vec<String>, String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file_len = f.metadata().map_err(|e| format!("{}: {e}", path.display()))?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| format!("{}: not a safetensors file ({e})", path.display()))?;
    let len = u64::from_le_bytes(len);
    if len > file_len.saturating_sub(8) || len > 100 << 20 {
        return Err(format!("{}: not a safetensors file (header length {len} for a {file_len}-byte file)", path.display()));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| format!("{}: not a safetensors header ({e})", path.display()))?;
    Ok(v.into_iter().map(|(k, _)| k).filter(|k| k != "__metadata__").collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pickles_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pytorch_model.bin"), b"\x80\x02}q\x00.").unwrap();
        let err = safetensors_file(dir.path()).unwrap_err();
        assert!(matches!(err, WeightsError::PickleRefused { .. }));
        assert!(err.to_string().contains("arbitrary code"));
        let pt = dir.path().join("model.pt");
        std::fs::write(&pt, b"x").unwrap();
        assert!(matches!(
            safetensors_file(&pt),
            Err(WeightsError::PickleRefused { .. })
        ));
    }

    #[test]
    fn safetensors_is_preferred_and_missing_is_clear() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            safetensors_file(dir.path()),
            Err(WeightsError::Missing { .. })
        ));
        std::fs::write(dir.path().join("pytorch_model.bin"), b"x").unwrap();
        std::fs::write(dir.path().join("model.safetensors"), b"x").unwrap();
        assert_eq!(
            safetensors_file(dir.path()).unwrap(),
            dir.path().join("model.safetensors")
        );
    }
}
