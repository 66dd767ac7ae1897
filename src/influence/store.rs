//! Saving and loading fitted factors: `factors.safetensors` (eigenbases, eigenvalues, EK-FAC
//! eigenvalues per block, f64) and `factors.json` (model fingerprint, layers and block ranges,
//! per-head flag, fitting sample size).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};

use super::factors::{block_ranges, Factors, InfluenceError, LayerFactors};
use super::kfac::{BlockRange, KroneckerFactors};
use crate::model::{LayerId, LlamaConfig};

/// The JSON header written beside the tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FactorsHeader {
    /// sha256 of the model's weight file, so factors are not used with another model.
    pub model_sha256: String,
    pub model: String,
    pub per_head: bool,
    pub examples: usize,
    pub tokens: usize,
    pub context: usize,
    /// Default damping: this × the mean eigenvalue of each block.
    pub default_damping: f64,
    /// The curvature fitted: "true" (Fisher with sampled labels, = GGN) or "empirical".
    #[serde(default = "empirical")]
    pub fisher: String,
    pub layers: Vec<(LayerId, Vec<BlockRange>)>,
}

fn empirical() -> String {
    "empirical".into()
}

/// The files of a model that the loaders read, so that a cache key over them changes whenever a
/// result could: a `.gguf` file alone (it carries its tokenizer and settings), or a folder's (or a
/// weights file's folder's) weights, `config.json`, `tokenizer.json`, and
/// `sentence_bert_config.json` when there is one (the embedder's sequence length).
pub fn model_files(model_path: &Path) -> Result<Vec<std::path::PathBuf>, InfluenceError> {
    let is_gguf = model_path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if model_path.is_file() && is_gguf {
        return Ok(vec![model_path.to_path_buf()]);
    }
    let weights = crate::weights::safetensors_file(model_path).map_err(|e| InfluenceError::Input(e.to_string()))?;
    let dir = weights.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut files = vec![weights, dir.join("config.json"), dir.join("tokenizer.json")];
    let st = dir.join("sentence_bert_config.json");
    if st.is_file() {
        files.push(st);
    }
    Ok(files)
}

/// sha256 over every file of [`model_files`] (each as its name then its bytes): what factors,
/// reference gradients, scores and checkpoints are keyed on. Editing a model's `config.json` or
/// replacing its tokenizer changes it, not only new weights.
pub fn model_fingerprint(model_path: &Path) -> Result<String, InfluenceError> {
    crate::hash::sha256_files(&model_files(model_path)?).map_err(|e| InfluenceError::Input(e.to_string()))
}

fn t2(a: &Array2<f64>) -> candle_core::Result<Tensor> {
    // LAPACK hands eigenvectors back in column-major order; store row-major.
    let v: Vec<f64> = a.as_standard_layout().iter().copied().collect();
    Tensor::from_vec(v, a.dim(), &Device::Cpu)
}

fn t1(a: &Array1<f64>) -> candle_core::Result<Tensor> {
    Tensor::from_vec(a.to_vec(), a.len(), &Device::Cpu)
}

fn a2(t: &Tensor) -> candle_core::Result<Array2<f64>> {
    let (r, c) = t.dims2()?;
    Ok(Array2::from_shape_vec((r, c), t.flatten_all()?.to_vec1()?).expect("dims"))
}

fn a1(t: &Tensor) -> candle_core::Result<Array1<f64>> {
    Ok(Array1::from_vec(t.to_vec1()?))
}

/// Writes the factors into `dir` (atomically per file).
pub fn save(factors: &Factors, header: &FactorsHeader, dir: &Path) -> Result<(), InfluenceError> {
    let io = |p: &Path, e: std::io::Error| InfluenceError::Input(format!("{}: {e}", p.display()));
    // Finite or refused: factors that would make every score NaN are not written.
    if factors.tokens == 0 || factors.examples == 0 {
        return Err(InfluenceError::Input(format!(
            "no tokens to fit factors on ({} examples, {} tokens): give more documents or a larger token limit",
            factors.examples, factors.tokens
        )));
    }
    for lf in &factors.layers {
        for (r, f) in &lf.blocks {
            let finite = |mut a: ndarray::iter::Iter<'_, f64, ndarray::IxDyn>| a.all(|x| x.is_finite());
            let parts = [f.q_a.view().into_dyn(), f.q_s.view().into_dyn(), f.lambda_a.view().into_dyn(), f.lambda_s.view().into_dyn()];
            if !parts.into_iter().all(|p| finite(p.iter())) || f.ekfac.as_ref().is_some_and(|e| !e.iter().all(|x| x.is_finite())) {
                return Err(InfluenceError::Input(format!("fitting gave non-finite factors for {} block {r:?}", lf.id)));
            }
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let mut tensors = HashMap::new();
    for lf in &factors.layers {
        for (b, (_, f)) in lf.blocks.iter().enumerate() {
            let p = format!("{}.block{b}", lf.id);
            tensors.insert(format!("{p}.q_a"), t2(&f.q_a)?);
            tensors.insert(format!("{p}.lambda_a"), t1(&f.lambda_a)?);
            tensors.insert(format!("{p}.q_s"), t2(&f.q_s)?);
            tensors.insert(format!("{p}.lambda_s"), t1(&f.lambda_s)?);
            if let Some(e) = &f.ekfac {
                tensors.insert(format!("{p}.ekfac"), t2(e)?);
            }
        }
    }
    save_tensors(&tensors, &dir.join("factors.safetensors"))?;
    let json = serde_json::to_string_pretty(header).map_err(|e| InfluenceError::Input(e.to_string()))?;
    let hp = dir.join("factors.json");
    crate::atomic::write_string_atomic(&hp, &json).map_err(|e| io(&hp, e))?;
    Ok(())
}

/// [`load`], refusing factors fitted on another model than `model_path` (whose config is
/// `config`).
pub fn load_for_model(dir: &Path, model_path: &Path, config: &LlamaConfig) -> Result<(Factors, FactorsHeader), InfluenceError> {
    let (factors, header) = load(dir, config)?;
    if header.model_sha256 != model_fingerprint(model_path)? {
        return Err(InfluenceError::Input(format!(
            "the factors in {} were fitted on another model ({}); refit them with `quad factors`",
            dir.display(),
            header.model
        )));
    }
    Ok((factors, header))
}

impl FactorsHeader {
    /// The header against the model the factors are for (`config`): at least one layer, each a
    /// layer of that model once, with the block ranges that model's shapes give
    /// ([`block_ranges`]); a context of at least two tokens, at least one example and token, a
    /// finite positive damping, a known curvature.
    pub fn check(&self, config: &LlamaConfig) -> Result<(), String> {
        if self.layers.is_empty() {
            return Err("`layers` is empty".into());
        }
        if self.context < 2 {
            return Err(format!("`context` = {}: must be at least 2", self.context));
        }
        if self.examples == 0 || self.tokens == 0 {
            return Err(format!("fitted on {} examples and {} tokens: nothing was fitted", self.examples, self.tokens));
        }
        if !(self.default_damping.is_finite() && self.default_damping > 0.0) {
            return Err(format!("`default_damping` = {}: must be finite and positive", self.default_damping));
        }
        if self.fisher != "true" && self.fisher != "empirical" {
            return Err(format!("`fisher` = {:?}: must be \"true\" or \"empirical\"", self.fisher));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (id, ranges) in &self.layers {
            if id.block >= config.num_hidden_layers {
                return Err(format!("layer {id}: the model has {} layers", config.num_hidden_layers));
            }
            if !seen.insert(*id) {
                return Err(format!("layer {id} is listed twice"));
            }
            let expected = block_ranges(config, *id, self.per_head);
            if *ranges != expected {
                return Err(format!("layer {id}: blocks {ranges:?}, but this model's shapes give {expected:?}"));
            }
        }
        Ok(())
    }
}

/// Reads factors written by [`save`] for the model whose config is `config`: the header is
/// checked against it ([`FactorsHeader::check`]), every tensor's shape against its block, and
/// every value is finite (eigenvalues ≥ 0 up to rounding). The error names the file and the value.
pub fn load(dir: &Path, config: &LlamaConfig) -> Result<(Factors, FactorsHeader), InfluenceError> {
    let hp = dir.join("factors.json");
    let text = std::fs::read_to_string(&hp).map_err(|e| InfluenceError::Input(format!("{}: {e}", hp.display())))?;
    let header: FactorsHeader =
        serde_json::from_str(&text).map_err(|e| InfluenceError::Input(format!("{}: {e}", hp.display())))?;
    header.check(config).map_err(|e| InfluenceError::Input(format!("{}: {e}", hp.display())))?;
    let tp = dir.join("factors.safetensors");
    let mut tensors = candle_core::safetensors::load(&tp, &Device::Cpu)
        .map_err(|e| InfluenceError::Input(format!("{}: {e}", tp.display())))?;
    let take = |tensors: &mut HashMap<String, Tensor>, name: String, shape: &[usize]| {
        let t = tensors
            .remove(&name)
            .ok_or_else(|| InfluenceError::Input(format!("{}: lacks tensor {name}", tp.display())))?;
        checked(t, &name, shape, &tp)
    };
    let mut layers = Vec::new();
    for (id, ranges) in &header.layers {
        let mut blocks = Vec::new();
        for (b, r) in ranges.iter().enumerate() {
            let p = format!("{id}.block{b}");
            let (rows, cols) = (r.rows.1 - r.rows.0, r.cols.1 - r.cols.0);
            // Plain K-FAC factors have none; a present one of the wrong shape is an error.
            let ekfac_name = format!("{p}.ekfac");
            let ekfac = if tensors.contains_key(&ekfac_name) {
                Some(a2(&take(&mut tensors, ekfac_name, &[rows, cols])?)?)
            } else {
                None
            };
            let lambda_a = a1(&take(&mut tensors, format!("{p}.lambda_a"), &[cols])?)?;
            let lambda_s = a1(&take(&mut tensors, format!("{p}.lambda_s"), &[rows])?)?;
            for (name, l) in [("lambda_a", &lambda_a), ("lambda_s", &lambda_s)] {
                let tolerance = -1e-6 * l.iter().fold(1.0f64, |m, v| m.max(v.abs()));
                if let Some(x) = l.iter().find(|&&x| x < tolerance) {
                    return Err(InfluenceError::Input(format!("{}: {p}.{name} has a negative eigenvalue {x}", tp.display())));
                }
            }
            blocks.push((
                *r,
                KroneckerFactors {
                    q_a: a2(&take(&mut tensors, format!("{p}.q_a"), &[cols, cols])?)?,
                    lambda_a,
                    q_s: a2(&take(&mut tensors, format!("{p}.q_s"), &[rows, rows])?)?,
                    lambda_s,
                    ekfac,
                    ekfac_examples: header.examples,
                },
            ));
        }
        layers.push(LayerFactors { id: *id, blocks });
    }
    Ok((
        Factors {
            layers,
            per_head: header.per_head,
            examples: header.examples,
            tokens: header.tokens,
        },
        header,
    ))
}

/// A loaded tensor as f64 of exactly `shape` with finite values, or an error naming it in `file`.
fn checked(t: Tensor, name: &str, shape: &[usize], file: &Path) -> Result<Tensor, InfluenceError> {
    if t.dims() != shape {
        return Err(InfluenceError::Input(format!("{}: {name} has shape {:?}, expected {shape:?}", file.display(), t.dims())));
    }
    let t = t.to_dtype(candle_core::DType::F64)?;
    if !t.sum_all()?.to_scalar::<f64>()?.is_finite() && !t.flatten_all()?.to_vec1::<f64>()?.iter().all(|x| x.is_finite()) {
        return Err(InfluenceError::Input(format!("{}: {name} holds NaN or infinite values", file.display())));
    }
    Ok(t)
}

/// Saves per-layer matrices (e.g. the reference gradient) as f64 tensors named by layer, atomically.
pub fn save_layers(layers: &[(LayerId, Array2<f64>)], path: &Path) -> Result<(), InfluenceError> {
    let mut tensors = HashMap::new();
    for (id, m) in layers {
        tensors.insert(id.to_string(), t2(m)?);
    }
    save_tensors(&tensors, path)
}

/// Writes tensors as safetensors through a uniquely named temporary file renamed into place (two
/// runs sharing a cache never write the same temporary file, and a reader never sees half a file);
/// a failed write (a full disk) names the path.
fn save_tensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<(), InfluenceError> {
    let bytes = safetensors::serialize(tensors.iter().map(|(k, v)| (k.clone(), v)).collect::<Vec<_>>(), None)
        .map_err(|e| InfluenceError::Input(format!("{}: serialising tensors: {e}", path.display())))?;
    crate::atomic::write_atomic(path, |w| std::io::Write::write_all(w, &bytes))
        .map_err(|e| InfluenceError::Input(format!("{}: {e}", path.display())))
}

/// Loads matrices saved by [`save_layers`] for the given layers of the model whose config is
/// `config`, in that order: each of that layer's weight shape, with finite values.
pub fn load_layers(path: &Path, ids: &[LayerId], config: &LlamaConfig) -> Result<Vec<(LayerId, Array2<f64>)>, InfluenceError> {
    let mut tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| InfluenceError::Input(format!("{}: {e}", path.display())))?;
    ids.iter()
        .map(|id| {
            if id.block >= config.num_hidden_layers {
                return Err(InfluenceError::Input(format!("layer {id}: the model has {} layers", config.num_hidden_layers)));
            }
            let t = tensors
                .remove(&id.to_string())
                .ok_or_else(|| InfluenceError::Input(format!("{} lacks {id}", path.display())))?;
            let whole = block_ranges(config, *id, false)[0];
            let t = checked(t, &id.to_string(), &[whole.rows.1, whole.cols.1], path)?;
            Ok((*id, a2(&t)?))
        })
        .collect()
}
