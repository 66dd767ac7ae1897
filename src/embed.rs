//! Embed stage: documents → rows of unit-norm f32 vectors.
//!
//! Two embedders share the [`Embedder`] trait:
//! - [`BertEmbedder`]: a BERT-family sentence model (e.g. all-MiniLM-L6-v2) run with
//!   candle-transformers from a local folder, pooled exactly as sentence-transformers does:
//!   truncate at `max_seq_length` (from `sentence_bert_config.json`), pad per batch only, mean-pool
//!   the last hidden state over the attention mask, L2-normalise.
//! - [`HashingEmbedder`]: the zero-setup default — signed feature hashing of lower-cased word
//!   unigrams and bigrams with sublinear term frequency, L2-normalised. No weights.
//!
//! [`embed_documents`] runs an embedder over a document stream chunk by chunk, so memory holds one
//! chunk of texts plus the growing embeddings matrix, never the corpus.

use crate::hash::fnv1a;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use ndarray::{Array2, ArrayView1, Axis};
use serde::{Deserialize, Serialize};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::atomic::write_atomic;
use crate::corpus::{CorpusError, Document};
use crate::weights::{self, WeightsError};

/// Errors of the embed stage.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("model: {0}")]
    Model(#[from] candle_core::Error),
    #[error(transparent)]
    Corpus(#[from] CorpusError),
    #[error(transparent)]
    Io(#[from] crate::path_io::PathIoError),
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    /// The progress callback stopped the run (Ctrl-C).
    #[error("interrupted")]
    Interrupted,
    /// A setting out of range.
    #[error("{0}")]
    Invalid(String),
    /// An executor that embeds elsewhere failed or answered out of shape.
    #[error("embedding executor: {0}")]
    Executor(String),
}

/// Turns texts into unit-norm vectors of a fixed dimension.
pub trait Embedder: Send + Sync {
    /// Length of every embedding.
    fn dim(&self) -> usize;
    /// Embeds a batch of texts: one unit-norm row per text, in order.
    fn embed(&self, texts: &[&str]) -> Result<Array2<f32>, EmbedError>;
    /// A short description that identifies the embedder and its settings (for metadata and caches).
    fn describe(&self) -> String;
}

/// Scales each row to unit L2 norm (rows of norm 0 are left at 0; callers check for them).
/// Matches `torch.nn.functional.normalize`: `x / max(‖x‖, 1e-12)`.
pub fn normalize_rows(m: &mut Array2<f32>) {
    for mut row in m.rows_mut() {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row /= norm.max(1e-12);
    }
}

// ---------------------------------------------------------------------------------------------
// Hashing embedder

/// Signed feature hashing of lower-cased word unigrams and bigrams.
///
/// Each feature f (a word, or two adjacent words) with count `tf` adds `s(f)·(1 + ln tf)` to
/// coordinate `h(f) mod dim`, where `h` is 64-bit FNV-1a and the sign `s(f)` is the hash's top bit
/// (signed hashing keeps inner products unbiased under collisions). The vector is L2-normalised.
/// Texts without any word fall back to hashing their non-space characters, so no non-blank text
/// gets a zero vector.
#[derive(Debug, Clone)]
pub struct HashingEmbedder {
    dim: usize,
}

impl HashingEmbedder {
    pub const DEFAULT_DIM: usize = 2048;
    /// The largest dimension accepted: a chunk of 256 rows is then 1 GiB, and the stored matrix
    /// 4 MiB a document (beyond that the matrix, not the hashing, would be the problem).
    pub const MAX_DIM: usize = 1 << 20;

    /// A dimension in `1..=MAX_DIM`, or the reason it is not.
    pub fn check_dim(dim: usize) -> Result<usize, String> {
        if (1..=Self::MAX_DIM).contains(&dim) {
            Ok(dim)
        } else {
            Err(format!("hashing dimension {dim}: must be between 1 and {}", Self::MAX_DIM))
        }
    }

    pub fn new(dim: usize) -> Self {
        assert!(dim > 0, "hashing dimension must be positive");
        Self { dim }
    }

    fn features(text: &str) -> HashMap<u64, u32> {
        let lower = text.to_lowercase();
        let words: Vec<&str> = lower
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect();
        let mut counts: HashMap<u64, u32> = HashMap::new();
        for w in &words {
            *counts.entry(fnv1a(&[w.as_bytes()])).or_insert(0) += 1;
        }
        for pair in words.windows(2) {
            let key = fnv1a(&[pair[0].as_bytes(), b" ", pair[1].as_bytes()]);
            *counts.entry(key).or_insert(0) += 1;
        }
        if counts.is_empty() {
            for c in lower.chars().filter(|c| !c.is_whitespace()) {
                let mut buf = [0u8; 4];
                *counts
                    .entry(fnv1a(&[c.encode_utf8(&mut buf).as_bytes()]))
                    .or_insert(0) += 1;
            }
        }
        counts
    }

    fn embed_one(&self, text: &str, out: &mut ndarray::ArrayViewMut1<f32>) {
        // In hash order: a HashMap's own order changes from map to map, and features that share a
        // slot would be summed in another order, so the same text got other last bits each call.
        let mut features: Vec<(u64, u32)> = Self::features(text).into_iter().collect();
        features.sort_unstable_by_key(|&(h, _)| h);
        for (h, tf) in features {
            let idx = (h % self.dim as u64) as usize;
            let sign = if h >> 63 == 1 { -1.0 } else { 1.0 };
            out[idx] += sign * (1.0 + (tf as f32).ln());
        }
    }
}

impl Default for HashingEmbedder {
    fn default() -> Self {
        Self::new(Self::DEFAULT_DIM)
    }
}


impl Embedder for HashingEmbedder {
    fn dim(&self) -> usize {
        self.dim
    }

    fn embed(&self, texts: &[&str]) -> Result<Array2<f32>, EmbedError> {
        use rayon::prelude::*;
        let mut m = Array2::<f32>::zeros((texts.len(), self.dim));
        m.axis_iter_mut(Axis(0))
            .into_par_iter()
            .zip(texts.par_iter())
            .for_each(|(mut row, text)| self.embed_one(text, &mut row));
        normalize_rows(&mut m);
        Ok(m)
    }

    fn describe(&self) -> String {
        format!("hashing(dim={},unigrams+bigrams,sublinear-tf,fnv1a)", self.dim)
    }
}

// ---------------------------------------------------------------------------------------------
// BERT embedder

/// Options for loading a [`BertEmbedder`].
#[derive(Debug, Clone)]
pub struct BertOptions {
    /// Override of the maximum sequence length (tokens, counting `[CLS]` and `[SEP]`).
    pub max_seq_length: Option<usize>,
    /// Texts per forward pass (after sorting by length, as sentence-transformers does).
    pub batch_size: usize,
}

impl Default for BertOptions {
    fn default() -> Self {
        Self {
            max_seq_length: None,
            batch_size: 32,
        }
    }
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

/// A BERT-family sentence embedder: mean pooling over the attention mask, then L2 normalisation.
pub struct BertEmbedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    dim: usize,
    max_seq_length: usize,
    batch_size: usize,
    name: String,
    /// The model folder, for errors.
    path: PathBuf,
}

impl BertEmbedder {
    /// Loads `config.json`, `model.safetensors` (tensor names with or without a `bert.` prefix) and
    /// `tokenizer.json` from a local folder. Pickle checkpoints are refused.
    pub fn load(path: &Path, options: BertOptions) -> Result<Self, EmbedError> {
        let weights_path = weights::safetensors_file(path)?;
        // A weights file named directly: its folder holds the config and the tokenizer.
        let dir = if path.is_file() { weights_path.parent().unwrap_or(Path::new(".")) } else { path };
        let config_path = dir.join("config.json");
        let config_text = std::fs::read_to_string(&config_path).map_err(crate::path_io::at(&config_path))?;
        let config: BertConfig =
            serde_json::from_str(&config_text).map_err(|e| EmbedError::Config {
                path: config_path.clone(),
                message: format!("not a BERT config.json: {e}"),
            })?;
        let names = weights::safetensors_names(&weights_path).map_err(|message| EmbedError::Config {
            path: weights_path.clone(),
            message,
        })?;
        // Checked here: candle's BERT divides by the head count and trusts every size.
        check_bert_config(&config, &names).map_err(|message| EmbedError::Config {
            path: config_path.clone(),
            message,
        })?;
        let st_max = read_sentence_bert_max_len(dir)?;
        let max_seq_length = options
            .max_seq_length
            .or(st_max)
            .unwrap_or(config.max_position_embeddings)
            .min(config.max_position_embeddings);
        if max_seq_length < 2 {
            return Err(EmbedError::Config {
                path: config_path,
                message: format!("max_seq_length {max_seq_length} leaves no room for [CLS] and [SEP]"),
            });
        }

        let tokenizer_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path).map_err(|e| {
            EmbedError::Tokenizer(format!("{}: {e}", tokenizer_path.display()))
        })?;
        // The shipped tokenizer.json may carry its own truncation (128) and fixed padding;
        // sentence-transformers overrides both: truncate at max_seq_length, pad per batch.
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(None);

        let device = Device::Cpu;
        // SAFETY: the file is memory-mapped read-only; it must not be modified while loaded.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights_path], DType::F32, &device)? };
        let model = BertModel::load(vb, &config)?;
        Ok(Self {
            model,
            tokenizer,
            device,
            dim: config.hidden_size,
            max_seq_length,
            batch_size: options.batch_size.max(1),
            path: dir.to_path_buf(),
            name: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| dir.display().to_string()),
        })
    }

    /// The maximum number of tokens per text, `[CLS]` and `[SEP]` included.
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// Token ids of each text, truncated as the embedder truncates them.
    pub fn token_ids(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, EmbedError> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        Ok(encodings.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Forward pass over one padded batch; returns mean-pooled (not yet normalised) rows.
    fn pooled(&self, batch: &[&Vec<u32>]) -> Result<Array2<f32>, EmbedError> {
        let n = batch.len();
        let len = batch.iter().map(|ids| ids.len()).max().unwrap_or(0);
        let mut ids = vec![0u32; n * len];
        let mut mask = vec![0u32; n * len];
        for (i, seq) in batch.iter().enumerate() {
            ids[i * len..i * len + seq.len()].copy_from_slice(seq);
            mask[i * len..i * len + seq.len()].fill(1);
        }
        let ids = Tensor::from_vec(ids, (n, len), &self.device)?;
        let mask = Tensor::from_vec(mask, (n, len), &self.device)?;
        let token_types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &token_types, Some(&mask))?; // (n, len, dim)
        let maskf = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (n, len, 1)
        let summed = hidden.broadcast_mul(&maskf)?.sum(1)?; // (n, dim)
        let counts = maskf.sum(1)?.clamp(1e-9f32, f32::MAX)?; // (n, 1)
        let mean = summed.broadcast_div(&counts)?;
        let rows: Vec<Vec<f32>> = mean.to_vec2()?;
        let mut out = Array2::<f32>::zeros((n, self.dim));
        for (i, r) in rows.into_iter().enumerate() {
            out.row_mut(i).assign(&ArrayView1::from(&r));
        }
        Ok(out)
    }
}

/// A BERT `config.json` against the bounds the encoder needs and the weights it comes with:
/// positive sizes, heads dividing the width, a finite `layer_norm_eps` in (0, 1), at least two
/// positions, and as many layers as the weights hold (`encoder.layer.N`, with or without a
/// `bert.` prefix).
pub fn check_bert_config(c: &BertConfig, tensor_names: &[String]) -> Result<(), String> {
    crate::model::config::check_sizes(
        &[
            ("vocab_size", c.vocab_size),
            ("hidden_size", c.hidden_size),
            ("num_hidden_layers", c.num_hidden_layers),
            ("num_attention_heads", c.num_attention_heads),
            ("intermediate_size", c.intermediate_size),
            ("type_vocab_size", c.type_vocab_size),
        ],
        &[
            ("vocab_size × hidden_size", c.vocab_size, c.hidden_size),
            ("intermediate_size × hidden_size", c.intermediate_size, c.hidden_size),
            ("max_position_embeddings × hidden_size", c.max_position_embeddings, c.hidden_size),
        ],
    )?;
    if c.hidden_size % c.num_attention_heads != 0 {
        return Err(format!(
            "hidden_size {} is not divisible by num_attention_heads {}",
            c.hidden_size, c.num_attention_heads
        ));
    }
    if c.max_position_embeddings < 2 {
        return Err(format!("max_position_embeddings = {}: needs room for [CLS] and [SEP]", c.max_position_embeddings));
    }
    if !(c.layer_norm_eps.is_finite() && c.layer_norm_eps > 0.0 && c.layer_norm_eps < 1.0) {
        return Err(format!("layer_norm_eps = {}: must be finite, positive and below 1", c.layer_norm_eps));
    }
    let stripped = tensor_names.iter().map(|n| n.strip_prefix("bert.").unwrap_or(n));
    let present = crate::model::layers::names::layers_present(stripped, "encoder.layer");
    if present != c.num_hidden_layers {
        return Err(format!("num_hidden_layers = {} but the weights hold {present} layers", c.num_hidden_layers));
    }
    Ok(())
}

fn read_sentence_bert_max_len(dir: &Path) -> Result<Option<usize>, EmbedError> {
    let path = dir.join("sentence_bert_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(crate::path_io::at(&path))?;
    let cfg: SentenceBertConfig = serde_json::from_str(&text).map_err(|e| EmbedError::Config {
        path,
        message: e.to_string(),
    })?;
    Ok(cfg.max_seq_length)
}

impl Embedder for BertEmbedder {
    fn dim(&self) -> usize {
        self.dim
    }

    fn embed(&self, texts: &[&str]) -> Result<Array2<f32>, EmbedError> {
        let token_ids = self.token_ids(texts)?;
        // Longest first, as sentence-transformers does, so each batch pads little.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(token_ids[i].len()));
        let mut out = Array2::<f32>::zeros((texts.len(), self.dim));
        for chunk in order.chunks(self.batch_size) {
            let batch: Vec<&Vec<u32>> = chunk.iter().map(|&i| &token_ids[i]).collect();
            let pooled = self.pooled(&batch)?;
            for (row, &i) in chunk.iter().enumerate() {
                out.row_mut(i).assign(&pooled.row(row));
            }
        }
        // Finite or refused: NaN or ±inf here comes from the model (its weights), not the texts.
        if out.iter().any(|x| !x.is_finite()) {
            return Err(EmbedError::Config {
                path: self.path.clone(),
                message: "the model gives non-finite embeddings (NaN or infinite values in its weights)".into(),
            });
        }
        normalize_rows(&mut out);
        Ok(out)
    }

    fn describe(&self) -> String {
        format!(
            "bert({},dim={},max_seq_length={},mean-pool,l2)",
            self.name, self.dim, self.max_seq_length
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Running an embedder over a corpus, and the embeddings on disk

/// Embeddings of a corpus: row i belongs to `ids[i]`.
#[derive(Debug, Clone)]
pub struct Embeddings {
    pub ids: Vec<String>,
    pub matrix: Array2<f32>,
    /// What produced them ([`Embedder::describe`]).
    pub embedder: String,
}

#[derive(Serialize, Deserialize)]
struct EmbeddingsMeta {
    embedder: String,
    rows: usize,
    dim: usize,
}

impl Embeddings {
    pub const MATRIX_FILE: &'static str = "embeddings.npy";
    pub const IDS_FILE: &'static str = "ids.jsonl";
    pub const META_FILE: &'static str = "embeddings.json";

    /// Reads embeddings written by [`embed_to_dir`]: `path` is the folder, or the `.npy` file
    /// with `ids.jsonl` beside it.
    pub fn load(path: &Path) -> Result<Self, EmbedError> {
        use ndarray_npy::ReadNpyExt;
        let (dir, npy) = if path.is_dir() {
            (path.to_path_buf(), path.join(Self::MATRIX_FILE))
        } else {
            (
                path.parent().unwrap_or(Path::new(".")).to_path_buf(),
                path.to_path_buf(),
            )
        };
        let file = std::fs::File::open(&npy).map_err(crate::path_io::at(&npy))?;
        let matrix = Array2::<f32>::read_npy(BufReader::new(file)).map_err(|e| EmbedError::Format {
            path: npy.clone(),
            message: format!("not a 2-D f32 .npy matrix: {e}"),
        })?;
        let (ids, embedder) = read_ids_and_meta(&dir, matrix.nrows(), &npy)?;
        Ok(Self {
            ids,
            matrix,
            embedder,
        })
    }
}

/// `ids.jsonl` (checked against the row count) and the embedder named in `embeddings.json`.
fn read_ids_and_meta(dir: &Path, rows: usize, npy: &Path) -> Result<(Vec<String>, String), EmbedError> {
    let ids_path = dir.join(Embeddings::IDS_FILE);
    let file = std::fs::File::open(&ids_path).map_err(crate::path_io::at(&ids_path))?;
    let mut ids = Vec::with_capacity(rows);
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(crate::path_io::at(&ids_path))?;
        let id: String = serde_json::from_str(&line).map_err(|e| EmbedError::Format {
            path: ids_path.clone(),
            message: format!("line {}: not a JSON string: {e}", n + 1),
        })?;
        ids.push(id);
    }
    if ids.len() != rows {
        return Err(EmbedError::Format {
            path: ids_path,
            message: format!("{} ids for {} embedding rows in {}", ids.len(), rows, npy.display()),
        });
    }
    let embedder = std::fs::read_to_string(dir.join(Embeddings::META_FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<EmbeddingsMeta>(&t).ok())
        .map(|m| m.embedder)
        .unwrap_or_else(|| "unknown".into());
    Ok((ids, embedder))
}

/// Embeddings left on disk and read a block of rows at a time: what the selection pipeline
/// clusters, so its memory does not grow with rows × dim.
pub struct StoredEmbeddings {
    pub ids: Vec<String>,
    pub rows: crate::npy::NpyRows,
    pub embedder: String,
}

impl StoredEmbeddings {
    /// Opens a folder written by [`embed_to_dir`] (or `quad embed`), or its `embeddings.npy`.
    pub fn open(path: &Path) -> Result<Self, EmbedError> {
        let (dir, npy) = if path.is_dir() {
            (path.to_path_buf(), path.join(Embeddings::MATRIX_FILE))
        } else {
            (path.parent().unwrap_or(Path::new(".")).to_path_buf(), path.to_path_buf())
        };
        let rows = crate::npy::NpyRows::open(&npy)?;
        let (ids, embedder) = read_ids_and_meta(&dir, rows.rows(), &npy)?;
        Ok(Self { ids, rows, embedder })
    }
}

/// Scales a row to unit norm unless it is already within 1e-4 of it (or is zero or not finite,
/// which the cluster stage reports). Returns whether it was rescaled.
pub fn rescale_to_unit(mut row: ndarray::ArrayViewMut1<f32>) -> bool {
    if row.iter().any(|x| !x.is_finite()) {
        return false;
    }
    let norm = row.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>().sqrt();
    if norm == 0.0 || (norm - 1.0).abs() <= 1e-4 {
        return false;
    }
    row /= norm as f32;
    true
}

/// One chunk of texts as [`embed_to_dir`] embeds it (and so as `quad select` does, in chunks of
/// 256): each text's head ([`crate::corpus::text_head`]: a huge document costs no more than
/// 64 KB), one row per text, rows scaled to unit norm; with the number of rows that needed it.
/// A sentence embedder batches by length inside a chunk, so the same texts chunked otherwise may
/// differ in the last bits.
pub fn embed_chunk<S: AsRef<str>>(embedder: &dyn Embedder, texts: &[S]) -> Result<(Array2<f32>, usize), EmbedError> {
    let refs: Vec<&str> = texts.iter().map(|t| crate::corpus::text_head(t.as_ref())).collect();
    let mut rows = embedder.embed(&refs)?;
    let rescaled = rows.rows_mut().into_iter().map(rescale_to_unit).filter(|&r| r).count();
    Ok((rows, rescaled))
}

/// What [`embed_to_dir`] wrote.
pub struct EmbeddedDir {
    pub rows: usize,
    pub dim: usize,
    /// Rows scaled to unit norm on the way (see [`rescale_to_unit`]).
    pub rescaled: usize,
}

/// Embeds a document stream into `dir` (`embeddings.npy`, `ids.jsonl`, `embeddings.json`)
/// chunk by chunk, rows scaled to unit norm, holding only one chunk of rows in memory: the
/// streamed counterpart of [`embed_documents`], and the one writer of an embeddings folder.
/// A folder this call creates is removed again if it fails (a bad record under `--strict`, say).
/// `on_progress` hears the rows written after every chunk and may stop the run there
/// ([`EmbedError::Interrupted`], Ctrl-C): a folder stopped half-way has no `embeddings.json`.
pub fn embed_to_dir<I, P>(documents: I, embedder: &dyn Embedder, chunk: usize, dir: &Path, on_progress: P) -> Result<EmbeddedDir, EmbedError>
where
    I: IntoIterator<Item = Result<Document, CorpusError>>,
    P: FnMut(usize) -> ControlFlow<()>,
{
    let mut one_at_a_time = |chunks: Vec<Vec<String>>| chunks.iter().map(|c| embed_chunk(embedder, c)).collect();
    embed_to_dir_grouped(documents, embedder, chunk, 1, &mut one_at_a_time, dir, on_progress)
}

/// Embeds one group of chunks ([`embed_chunk`] each, in order).
pub type EmbedGroup<'a> = &'a mut dyn FnMut(Vec<Vec<String>>) -> Result<Vec<(Array2<f32>, usize)>, EmbedError>;

/// [`embed_to_dir`] with the chunks handed to `embed_group` `group` at a time (the last group may
/// be shorter), for an executor that embeds chunks in parallel elsewhere. `embedder` names the
/// embeddings and gives their dimension; every chunk must come back as [`embed_chunk`] on it
/// would make it, and then the folder is the same.
pub fn embed_to_dir_grouped<I, P>(
    documents: I,
    embedder: &dyn Embedder,
    chunk: usize,
    group: usize,
    embed_group: EmbedGroup<'_>,
    dir: &Path,
    on_progress: P,
) -> Result<EmbeddedDir, EmbedError>
where
    I: IntoIterator<Item = Result<Document, CorpusError>>,
    P: FnMut(usize) -> ControlFlow<()>,
{
    let created = !dir.exists();
    let mut on_progress = on_progress;
    let result = write_embeddings(&mut documents.into_iter(), embedder, (chunk, group), embed_group, dir, &mut on_progress);
    if result.is_err() && created {
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

/// [`embed_to_dir_grouped`]'s work: chunks of `chunk` texts, `group` chunks at a time.
fn write_embeddings(
    documents: &mut dyn Iterator<Item = Result<Document, CorpusError>>,
    embedder: &dyn Embedder,
    (chunk, group): (usize, usize),
    embed_group: EmbedGroup<'_>,
    dir: &Path,
    on_progress: &mut dyn FnMut(usize) -> ControlFlow<()>,
) -> Result<EmbeddedDir, EmbedError> {
    use std::io::Write as _;
    std::fs::create_dir_all(dir).map_err(crate::path_io::at(dir))?;
    let (chunk, group) = (chunk.max(1), group.max(1));
    let dim = embedder.dim();
    let mut writer = crate::npy::NpyRowWriter::create(&dir.join(Embeddings::MATRIX_FILE), dim)?;
    let ids_path = dir.join(Embeddings::IDS_FILE);
    let ids_file = crate::atomic::AtomicFile::create(&ids_path).map_err(crate::path_io::at(&ids_path))?;
    let mut ids_out = std::io::BufWriter::new(ids_file);
    let mut texts: Vec<String> = Vec::with_capacity(chunk);
    let mut pending: Vec<Vec<String>> = Vec::with_capacity(group);
    let mut rescaled = 0;
    let mut flush = |pending: &mut Vec<Vec<String>>, writer: &mut crate::npy::NpyRowWriter| -> Result<(), EmbedError> {
        if pending.is_empty() {
            return Ok(());
        }
        let sizes: Vec<usize> = pending.iter().map(Vec::len).collect();
        let embedded = embed_group(std::mem::take(pending))?;
        if embedded.len() != sizes.len() {
            return Err(EmbedError::Executor(format!("{} chunks embedded of {}", embedded.len(), sizes.len())));
        }
        for ((rows, fixed), n) in embedded.into_iter().zip(sizes) {
            if rows.dim() != (n, dim) {
                return Err(EmbedError::Executor(format!("a chunk of {n} texts came back as {:?} rows (dimension {dim})", rows.dim())));
            }
            // Finite or refused: nothing non-finite reaches the stored matrix.
            if rows.iter().any(|x| !x.is_finite()) {
                return Err(EmbedError::Invalid(format!("{} gave non-finite embeddings", embedder.describe())));
            }
            rescaled += fixed;
            writer.push(rows.view())?;
            if on_progress(n).is_break() {
                return Err(EmbedError::Interrupted);
            }
        }
        Ok(())
    };
    for doc in documents {
        let doc = doc?;
        serde_json::to_writer(&mut ids_out, &doc.id).map_err(|e| crate::path_io::PathIoError::new(&ids_path, e.into()))?;
        ids_out.write_all(b"\n").map_err(crate::path_io::at(&ids_path))?;
        texts.push(doc.text);
        if texts.len() == chunk {
            pending.push(std::mem::replace(&mut texts, Vec::with_capacity(chunk)));
            if pending.len() == group {
                flush(&mut pending, &mut writer)?;
            }
        }
    }
    if !texts.is_empty() {
        pending.push(texts);
    }
    flush(&mut pending, &mut writer)?;
    let rows = writer.finish()?;
    let ids_file = ids_out.into_inner().map_err(|e| crate::path_io::PathIoError::new(&ids_path, e.into_error()))?;
    ids_file.commit().map_err(crate::path_io::at(&ids_path))?;
    let meta = dir.join(Embeddings::META_FILE);
    let m = EmbeddingsMeta {
        embedder: embedder.describe(),
        rows,
        dim,
    };
    write_atomic(&meta, |w| {
        serde_json::to_writer_pretty(&mut *w, &m)?;
        w.write_all(b"\n")
    })
    .map_err(crate::path_io::at(&meta))?;
    Ok(EmbeddedDir { rows, dim, rescaled })
}

/// Embeds a document stream chunk by chunk.
///
/// `on_document` sees every document before it is dropped (e.g. to collect labels);
/// `on_progress` is told how many documents each chunk added. Only `chunk` texts are held at once.
pub fn embed_documents<I, F, P>(
    documents: I,
    embedder: &dyn Embedder,
    chunk: usize,
    mut on_document: F,
    mut on_progress: P,
) -> Result<Embeddings, EmbedError>
where
    I: IntoIterator<Item = Result<Document, CorpusError>>,
    F: FnMut(&Document),
    P: FnMut(usize),
{
    let chunk = chunk.max(1);
    let dim = embedder.dim();
    let mut ids = Vec::new();
    let mut data: Vec<f32> = Vec::new();
    let mut texts: Vec<String> = Vec::with_capacity(chunk);
    let mut flush = |texts: &mut Vec<String>, data: &mut Vec<f32>| -> Result<(), EmbedError> {
        if texts.is_empty() {
            return Ok(());
        }
        // Each document's head (corpus::text_head): a huge document costs no more than 64 KB.
        let refs: Vec<&str> = texts.iter().map(|t| crate::corpus::text_head(t)).collect();
        let rows = embedder.embed(&refs)?;
        data.extend(rows.iter());
        on_progress(texts.len());
        texts.clear();
        Ok(())
    };
    for doc in documents {
        let doc = doc?;
        on_document(&doc);
        ids.push(doc.id);
        texts.push(doc.text);
        if texts.len() == chunk {
            flush(&mut texts, &mut data)?;
        }
    }
    flush(&mut texts, &mut data)?;
    let matrix = Array2::from_shape_vec((ids.len(), dim), data).expect("rows × dim by construction");
    Ok(Embeddings {
        ids,
        matrix,
        embedder: embedder.describe(),
    })
}

/// Builds the embedder the user asked for: a BERT-family model from `model_dir`, or the hashing
/// embedder when no folder is given.
pub fn make_embedder(
    model_dir: Option<&Path>,
    bert: BertOptions,
    hashing_dim: usize,
) -> Result<Box<dyn Embedder>, EmbedError> {
    Ok(match model_dir {
        Some(dir) => Box::new(BertEmbedder::load(dir, bert)?),
        None if bert.max_seq_length.is_some() => {
            return Err(EmbedError::Invalid(
                "a maximum sequence length applies to a sentence-embedding model, not the hashing embedder (give the model, or drop the length)".into(),
            ))
        }
        None => Box::new(HashingEmbedder::new(HashingEmbedder::check_dim(hashing_dim).map_err(EmbedError::Invalid)?)),
    })
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_rows_are_unit_norm_and_deterministic() {
        let e = HashingEmbedder::new(256);
        let m = e.embed(&["The cat sat.", "the CAT sat", "!!!", "dogs bark loudly"]).unwrap();
        for row in m.rows() {
            let n: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((n - 1.0).abs() < 1e-5);
        }
        // Case and punctuation do not matter.
        let d: f32 = (&m.row(0) - &m.row(1)).iter().map(|v| v.abs()).sum();
        assert!(d < 1e-6);
        assert_eq!(m, e.embed(&["The cat sat.", "the CAT sat", "!!!", "dogs bark loudly"]).unwrap());
    }

    /// Many features sharing few slots: the sums must not depend on a HashMap's order, which
    /// differs from map to map (it gave other last bits on most calls before).
    #[test]
    fn hashing_gives_the_same_bits_on_every_call() {
        let text: String = (0..3000u64).map(|i| format!("w{} ", i * i % 997)).collect();
        let e = HashingEmbedder::new(8);
        let first = e.embed(&[text.as_str()]).unwrap();
        for _ in 0..20 {
            let again = e.embed(&[text.as_str()]).unwrap();
            assert!(first.iter().zip(again.iter()).all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }

    /// Checks the formula against a direct computation for a tiny text.
    #[test]
    fn hashing_matches_direct_formula() {
        let dim = 1 << 20; // large enough that these few features do not collide
        let e = HashingEmbedder::new(dim);
        let m = e.embed(&["a b a"]).unwrap();
        let mut expect = vec![0f32; dim];
        let feats: [(&[&[u8]], f32); 4] = [
            (&[b"a"], 1.0 + 2f32.ln()),
            (&[b"b"], 1.0),
            (&[b"a", b" ", b"b"], 1.0),
            (&[b"b", b" ", b"a"], 1.0),
        ];
        for (parts, v) in feats {
            let h = fnv1a(parts);
            let s = if h >> 63 == 1 { -1.0 } else { 1.0 };
            expect[(h % dim as u64) as usize] += s * v;
        }
        let norm = expect.iter().map(|v| v * v).sum::<f32>().sqrt();
        for (i, x) in expect.iter().enumerate() {
            assert!((m[[0, i]] - x / norm).abs() < 1e-6);
        }
    }
}
