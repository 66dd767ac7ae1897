//! Corpus stage: stream documents from JSONL (plain, `.gz`, `.zst`) and Parquet files.
//!
//! A corpus is one file or a folder of files. Every record becomes a [`Document`] holding its id,
//! its text and the whole original record (the JSONL line byte for byte, or a Parquet row as one
//! JSON object) so a later stage can write it back unchanged.
//!
//! Bad input never panics and never vanishes silently: every record that cannot become a document
//! is skipped and counted by [`SkipReason`] in the [`ReadReport`]; with `strict` the first one is an
//! error naming the file and line instead.
//!
//! Memory is bounded: files are read one line (or one Parquet row batch) at a time. The only state
//! that grows with the corpus is the set of ids seen, which duplicate detection needs.
//! [`DocumentStore`] keeps a corpus read once on disk, for stages that visit it by index.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

mod store;
pub use store::DocumentStore;

/// The most of a document's text that any stage reads at once (embedding, proxy training,
/// factors, scoring read a document's head; token counting reads it in pieces). A tokenizer's and
/// an embedder's working memory grow with their input (an encoding keeps offsets, masks and a
/// string per token), so one 20 MB document must not cost gigabytes; the head of 64 KB holds far
/// more tokens than any context these stages use.
pub const TEXT_PIECE_BYTES: usize = 1 << 16;

/// The head of `text` that the stages read: all of it up to [`TEXT_PIECE_BYTES`], else cut
/// before the last whitespace within that many bytes (at a character boundary when there is none).
pub fn text_head(text: &str) -> &str {
    text_split(text).0
}

/// `text` as (head, rest): see [`text_head`].
pub fn text_split(text: &str) -> (&str, &str) {
    if text.len() <= TEXT_PIECE_BYTES {
        return (text, "");
    }
    let mut cut = TEXT_PIECE_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    // Before a whitespace: byte-level BPE joins a space to the word after it.
    if let Some(i) = text[..cut].rfind(char::is_whitespace).filter(|&i| i > 0) {
        cut = i;
    }
    text.split_at(cut)
}

/// Errors of the corpus stage.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error(transparent)]
    Io(#[from] crate::path_io::PathIoError),
    #[error("{path}: not a supported corpus file (expected .jsonl, .jsonl.gz, .jsonl.zst or .parquet)")]
    UnsupportedFile { path: PathBuf },
    #[error("{path}: no corpus files (.jsonl, .jsonl.gz, .jsonl.zst, .parquet) in this folder")]
    EmptyFolder { path: PathBuf },
    /// A pipe, a device or standard input: a corpus is read more than once (ids, then texts by
    /// position), so it must be a file that can be opened again.
    #[error("{path}: not a regular file or folder (a pipe, a device or standard input?); quad reads a corpus more than once, so write the stream to a file and give that")]
    NotAFile { path: PathBuf },
    #[error("{path}: a symbolic link to nothing ({target}); remove it or point it at a corpus file")]
    DanglingLink { path: PathBuf, target: PathBuf },
    #[error("document {id:?} is not in {path}")]
    MissingId { id: String, path: PathBuf },
    #[error("no record of {path} has the field {field:?}")]
    NoSuchField { field: String, path: PathBuf },
    #[error("{path} does not hold the documents these rows were made from: {what}")]
    IdsDiffer { path: PathBuf, what: String },
    #[error("{path}: Parquet error: {message}")]
    Parquet { path: PathBuf, message: String },
    #[error("{location}: {reason} (--strict stops at the first bad record)")]
    Strict {
        location: Location,
        reason: SkipReason,
    },
}

/// Why a record was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The line is not valid UTF-8.
    InvalidUtf8,
    /// The line is not a JSON object.
    InvalidJson,
    /// The text field is absent or null.
    MissingText,
    /// The text field is present but not a string.
    NonStringText,
    /// The text is empty or only whitespace.
    EmptyText,
    /// The id field is present but neither a string nor an integer.
    InvalidId,
    /// An earlier record already used this id.
    DuplicateId,
}

impl SkipReason {
    pub const ALL: [SkipReason; 7] = [
        SkipReason::InvalidUtf8,
        SkipReason::InvalidJson,
        SkipReason::MissingText,
        SkipReason::NonStringText,
        SkipReason::EmptyText,
        SkipReason::InvalidId,
        SkipReason::DuplicateId,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::InvalidUtf8 => "invalid_utf8",
            SkipReason::InvalidJson => "invalid_json",
            SkipReason::MissingText => "missing_text",
            SkipReason::NonStringText => "non_string_text",
            SkipReason::EmptyText => "empty_text",
            SkipReason::InvalidId => "invalid_id",
            SkipReason::DuplicateId => "duplicate_id",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a record came from: file and 1-based line (JSONL) or row (Parquet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub file: PathBuf,
    pub line: u64,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// One document of the corpus.
#[derive(Debug, Clone)]
pub struct Document {
    /// The id field, or `file:line` when the record has none.
    pub id: String,
    /// The text field.
    pub text: String,
    /// The original record as JSON text: the JSONL line unchanged, or a Parquet row as an object.
    pub record: String,
    pub location: Location,
}

impl Document {
    /// A top-level field of the original record, as a string (numbers and booleans are printed).
    pub fn field(&self, name: &str) -> Option<String> {
        let value: Value = serde_json::from_str(&self.record).ok()?;
        match value.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    }
}

/// How to read records.
#[derive(Debug, Clone)]
pub struct CorpusConfig {
    /// Field holding the document text.
    pub text_field: String,
    /// Field holding the document id; when a record lacks it the id is `file:line`.
    pub id_field: String,
    /// Make the first bad record an error instead of a counted skip.
    pub strict: bool,
}

impl Default for CorpusConfig {
    fn default() -> Self {
        Self {
            text_field: "text".into(),
            id_field: "id".into(),
            strict: false,
        }
    }
}

/// What reading a corpus did: files read, documents kept, records skipped by reason.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReadReport {
    pub files: Vec<PathBuf>,
    pub documents: u64,
    /// Skipped records per reason (only reasons that occurred).
    pub skipped: BTreeMap<SkipReason, u64>,
    /// Blank lines between records (not records, so not skips; counted so nothing goes unseen).
    pub blank_lines: u64,
    /// The first few skipped records, for the user to look at.
    pub first_skips: Vec<(Location, SkipReason)>,
    /// Records that were not JSON and hold a carriage return between what look like records
    /// (`}\r{`): a file with CR-only line endings reads as one long line.
    #[serde(default)]
    pub cr_only_lines: u64,
}

impl ReadReport {
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }

    pub fn count(&self, reason: SkipReason) -> u64 {
        self.skipped.get(&reason).copied().unwrap_or(0)
    }
}

impl fmt::Display for ReadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "read {} documents from {} file(s)",
            self.documents,
            self.files.len()
        )?;
        if self.skipped.is_empty() {
            write!(f, "; none skipped")?;
        } else {
            write!(f, "; skipped {}:", self.skipped_total())?;
            for (reason, n) in &self.skipped {
                write!(f, " {reason}={n}")?;
            }
            for (loc, reason) in &self.first_skips {
                write!(f, "\n  e.g. {loc}: {reason}")?;
            }
        }
        if self.blank_lines > 0 {
            write!(f, "; {} blank line(s) ignored", self.blank_lines)?;
        }
        if self.cr_only_lines > 0 {
            write!(
                f,
                "\n  hint: {} skipped line(s) hold records separated by a carriage return alone (CR-only line endings); convert them to LF (tr '\\r' '\\n')",
                self.cr_only_lines
            )?;
        }
        Ok(())
    }
}

const FIRST_SKIPS_KEPT: usize = 5;

/// The corpus files named by `path`: the file itself, or the supported files of a folder (sorted,
/// not recursive).
pub fn corpus_files(path: &Path) -> Result<Vec<PathBuf>, CorpusError> {
    let io = |source| CorpusError::Io(crate::path_io::PathIoError::new(path, source));
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() && !meta.is_dir() {
        return Err(CorpusError::NotAFile { path: path.to_path_buf() });
    }
    if meta.is_file() {
        if FileKind::of(path).is_none() {
            return Err(CorpusError::UnsupportedFile {
                path: path.to_path_buf(),
            });
        }
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let p = entry.map_err(io)?.path();
        if FileKind::of(&p).is_none() {
            continue;
        }
        // A corpus file that cannot be read is an error, whether unreadable or a link to
        // nothing: never a silent gap in the pool.
        match std::fs::metadata(&p) {
            Ok(m) if m.is_file() => files.push(p),
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(CorpusError::NotAFile { path: p }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && p.is_symlink() => {
                let target = std::fs::read_link(&p).unwrap_or_default();
                return Err(CorpusError::DanglingLink { path: p, target });
            }
            Err(e) => return Err(CorpusError::Io(crate::path_io::PathIoError::new(&p, e))),
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(CorpusError::EmptyFolder {
            path: path.to_path_buf(),
        });
    }
    Ok(files)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Jsonl,
    JsonlGz,
    JsonlZst,
    Parquet,
}

impl FileKind {
    fn of(path: &Path) -> Option<FileKind> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        if name.ends_with(".jsonl") || name.ends_with(".ndjson") {
            Some(FileKind::Jsonl)
        } else if name.ends_with(".jsonl.gz") || name.ends_with(".ndjson.gz") {
            Some(FileKind::JsonlGz)
        } else if name.ends_with(".jsonl.zst") || name.ends_with(".ndjson.zst") {
            Some(FileKind::JsonlZst)
        } else if name.ends_with(".parquet") {
            Some(FileKind::Parquet)
        } else {
            None
        }
    }
}

/// A source of raw records: numbered lines of one file, as bytes.
type RawRecords = Box<dyn Iterator<Item = Result<(u64, Vec<u8>), CorpusError>>>;

fn open_records(path: &Path, config: &CorpusConfig) -> Result<RawRecords, CorpusError> {
    let io = |source| CorpusError::Io(crate::path_io::PathIoError::new(path, source));
    let kind = FileKind::of(path).ok_or_else(|| CorpusError::UnsupportedFile {
        path: path.to_path_buf(),
    })?;
    let file = File::open(path).map_err(io)?;
    let reader: Box<dyn Read> = match kind {
        FileKind::Jsonl => Box::new(file),
        FileKind::JsonlGz => Box::new(flate2::read::MultiGzDecoder::new(file)),
        FileKind::JsonlZst => Box::new(zstd::stream::read::Decoder::new(file).map_err(io)?),
        FileKind::Parquet => return parquet_records(path, file, [config.text_field.clone(), config.id_field.clone()]),
    };
    Ok(Box::new(LineRecords {
        path: path.to_path_buf(),
        reader: BufReader::with_capacity(1 << 16, reader),
        line: 0,
        done: false,
    }))
}

/// Lines of a (decompressed) byte stream, kept as bytes so invalid UTF-8 can be counted.
struct LineRecords {
    path: PathBuf,
    reader: BufReader<Box<dyn Read>>,
    line: u64,
    done: bool,
}

impl Iterator for LineRecords {
    type Item = Result<(u64, Vec<u8>), CorpusError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut buf = Vec::new();
        match self.reader.read_until(b'\n', &mut buf) {
            Ok(0) => {
                self.done = true;
                None
            }
            Ok(_) => {
                self.line += 1;
                // A UTF-8 byte-order mark (editors on Windows write one) is not part of the record.
                if self.line == 1 && buf.starts_with(b"\xEF\xBB\xBF") {
                    buf.drain(..3);
                }
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                    if buf.last() == Some(&b'\r') {
                        buf.pop();
                    }
                }
                Some(Ok((self.line, buf)))
            }
            Err(source) => {
                self.done = true;
                Some(Err(CorpusError::Io(crate::path_io::PathIoError::new(&self.path, source))))
            }
        }
    }
}

/// Parquet rows as JSON object lines, one row batch in memory at a time. Binary columns named
/// by `text_fields` (the text and id fields) are decoded as UTF-8 ([`decode_binary_columns`]):
/// Arrow's JSON writer would give their bytes as hex.
fn parquet_records(path: &Path, file: File, text_fields: [String; 2]) -> Result<RawRecords, CorpusError> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    // The parquet crate's messages begin with "Parquet error: " already; ours adds it once.
    let perr = |e: &dyn fmt::Display| CorpusError::Parquet {
        path: path.to_path_buf(),
        message: e.to_string().trim_start_matches("Parquet error: ").to_string(),
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| perr(&e))?
        .with_batch_size(1024)
        .build()
        .map_err(|e| perr(&e))?;
    let path = path.to_path_buf();
    let mut row: u64 = 0;
    let iter = reader.flat_map(move |batch| {
        let lines: Vec<Result<(u64, Vec<u8>), CorpusError>> = match batch {
            Err(e) => vec![Err(CorpusError::Parquet {
                path: path.clone(),
                message: e.to_string(),
            })],
            Ok(batch) => {
                let (batch, not_utf8) = match decode_binary_columns(batch, &text_fields) {
                    Ok(b) => b,
                    Err(e) => {
                        return vec![Err(CorpusError::Parquet {
                            path: path.clone(),
                            message: format!("decoding a binary column as text: {e}"),
                        })]
                    }
                };
                let mut out = Vec::new();
                let mut writer = arrow_json::LineDelimitedWriter::new(&mut out);
                match writer.write(&batch).and_then(|_| writer.finish()) {
                    Err(e) => vec![Err(CorpusError::Parquet {
                        path: path.clone(),
                        message: format!("cannot turn rows into JSON: {e}"),
                    })],
                    Ok(()) => {
                        drop(writer);
                        out.split(|&b| b == b'\n')
                            .take(batch.num_rows())
                            .enumerate()
                            .map(|(i, l)| {
                                row += 1;
                                // A row whose text is not UTF-8 reaches the record parser as bytes
                                // that are not, and is counted as such (invalid_utf8).
                                Ok((row, if not_utf8[i] { NOT_UTF8.to_vec() } else { l.to_vec() }))
                            })
                            .collect()
                    }
                }
            }
        };
        lines
    });
    Ok(Box::new(iter))
}

/// The bytes that stand for a Parquet row whose text or id is binary and not UTF-8.
const NOT_UTF8: &[u8] = b"\xff";

/// `batch` with its top-level binary columns (`binary`, `large_binary`, `binary_view`) named in
/// `fields` as UTF-8 string columns, and which rows held a value there that is not UTF-8 (those
/// values become null; the caller skips the rows).
fn decode_binary_columns(
    batch: arrow_array::RecordBatch,
    fields: &[String],
) -> Result<(arrow_array::RecordBatch, Vec<bool>), String> {
    use arrow_array::{Array, ArrayRef, BinaryArray, BinaryViewArray, LargeBinaryArray, StringArray};
    use std::sync::Arc;
    let mut not_utf8 = vec![false; batch.num_rows()];
    let schema = batch.schema();
    let mut decoded = false;
    let mut columns: Vec<(String, ArrayRef, bool)> = Vec::new();
    for (field, col) in schema.fields().iter().zip(batch.columns()) {
        let values: Option<Vec<Option<&[u8]>>> = if !fields.contains(field.name()) {
            None
        } else if let Some(a) = col.as_any().downcast_ref::<BinaryArray>() {
            Some(a.iter().collect())
        } else if let Some(a) = col.as_any().downcast_ref::<LargeBinaryArray>() {
            Some(a.iter().collect())
        } else {
            col.as_any().downcast_ref::<BinaryViewArray>().map(|a| a.iter().collect())
        };
        let col = match values {
            None => col.clone(),
            Some(values) => {
                decoded = true;
                let text: StringArray = values
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| {
                        v.and_then(|b| match std::str::from_utf8(b) {
                            Ok(s) => Some(s),
                            Err(_) => {
                                not_utf8[i] = true;
                                None
                            }
                        })
                    })
                    .collect();
                Arc::new(text) as ArrayRef
            }
        };
        columns.push((field.name().clone(), col.clone(), col.null_count() > 0 || field.is_nullable()));
    }
    if !decoded {
        return Ok((batch, not_utf8));
    }
    let batch = arrow_array::RecordBatch::try_from_iter_with_nullable(columns).map_err(|e| e.to_string())?;
    Ok((batch, not_utf8))
}

/// Streams the documents of a corpus, counting what it skips.
///
/// Iterate it for `Result<Document, CorpusError>`; an `Err` ends the stream (I/O failure, or a bad
/// record under `strict`). Afterwards [`CorpusReader::report`] says what was read and skipped.
pub struct CorpusReader {
    config: CorpusConfig,
    files: std::vec::IntoIter<PathBuf>,
    current: Option<(PathBuf, RawRecords)>,
    seen_ids: HashSet<String>,
    report: ReadReport,
    failed: bool,
}

impl CorpusReader {
    /// Opens a file or a folder of corpus files.
    pub fn open(path: &Path, config: CorpusConfig) -> Result<Self, CorpusError> {
        let files = corpus_files(path)?;
        let report = ReadReport {
            files: files.clone(),
            ..Default::default()
        };
        Ok(Self {
            config,
            files: files.into_iter(),
            current: None,
            seen_ids: HashSet::new(),
            report,
            failed: false,
        })
    }

    /// What has been read and skipped so far.
    pub fn report(&self) -> &ReadReport {
        &self.report
    }

    pub fn into_report(self) -> ReadReport {
        self.report
    }

    /// Reads the whole corpus into memory (for small corpora and tests).
    pub fn read_all(path: &Path, config: CorpusConfig) -> Result<(Vec<Document>, ReadReport), CorpusError> {
        let mut reader = Self::open(path, config)?;
        let docs = reader.by_ref().collect::<Result<Vec<_>, _>>()?;
        Ok((docs, reader.into_report()))
    }

    fn skip(&mut self, location: Location, reason: SkipReason) -> Option<CorpusError> {
        if self.config.strict {
            return Some(CorpusError::Strict { location, reason });
        }
        *self.report.skipped.entry(reason).or_insert(0) += 1;
        if self.report.first_skips.len() < FIRST_SKIPS_KEPT {
            self.report.first_skips.push((location, reason));
        }
        None
    }

    /// Turns one raw line into a document, or the reason it cannot be one.
    fn parse(&mut self, file: &Path, line: u64, bytes: Vec<u8>) -> Result<Document, SkipReason> {
        let record = String::from_utf8(bytes).map_err(|_| SkipReason::InvalidUtf8)?;
        let value: Value = serde_json::from_str(&record).map_err(|_| SkipReason::InvalidJson)?;
        let obj = value.as_object().ok_or(SkipReason::InvalidJson)?;
        let text = match obj.get(&self.config.text_field) {
            None | Some(Value::Null) => return Err(SkipReason::MissingText),
            Some(Value::String(s)) => s,
            Some(_) => return Err(SkipReason::NonStringText),
        };
        if text.trim().is_empty() {
            return Err(SkipReason::EmptyText);
        }
        let id = match obj.get(&self.config.id_field) {
            None | Some(Value::Null) => format!("{}:{line}", file.display()),
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
            Some(_) => return Err(SkipReason::InvalidId),
        };
        if self.seen_ids.contains(&id) {
            return Err(SkipReason::DuplicateId);
        }
        self.seen_ids.insert(id.clone());
        Ok(Document {
            id,
            text: text.clone(),
            record,
            location: Location {
                file: file.to_path_buf(),
                line,
            },
        })
    }
}

impl Iterator for CorpusReader {
    type Item = Result<Document, CorpusError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            if self.current.is_none() {
                let file = self.files.next()?;
                match open_records(&file, &self.config) {
                    Ok(records) => self.current = Some((file, records)),
                    Err(e) => {
                        self.failed = true;
                        return Some(Err(e));
                    }
                }
            }
            let (file, records) = self.current.as_mut().expect("set above");
            let file = file.clone();
            let (line, bytes) = match records.next() {
                None => {
                    self.current = None;
                    continue;
                }
                Some(Err(e)) => {
                    self.failed = true;
                    return Some(Err(e));
                }
                Some(Ok(raw)) => raw,
            };
            if bytes.iter().all(|b| b.is_ascii_whitespace()) {
                self.report.blank_lines += 1;
                continue;
            }
            // Looked at only when the line fails: a CR between two records.
            let cr_joined = |b: &[u8]| b.windows(3).any(|w| w[0] == b'}' && w[1] == b'\r' && w[2] == b'{');
            let cr_only = bytes.contains(&b'\r') && cr_joined(&bytes);
            match self.parse(&file, line, bytes) {
                Ok(doc) => {
                    self.report.documents += 1;
                    return Some(Ok(doc));
                }
                Err(reason) => {
                    if reason == SkipReason::InvalidJson && cr_only {
                        self.report.cr_only_lines += 1;
                    }
                    if let Some(err) = self.skip(Location { file, line }, reason) {
                        self.failed = true;
                        return Some(Err(err));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn long_texts_are_cut_before_whitespace_and_on_char_boundaries() {
        let short = "a few words";
        assert_eq!(text_head(short), short);
        let words = "word ".repeat(TEXT_PIECE_BYTES / 5 + 10);
        let head = text_head(&words);
        assert!(head.len() <= TEXT_PIECE_BYTES && head.ends_with("word"), "{}", &head[head.len() - 10..]);
        // No whitespace at all: cut at a character boundary (é is two bytes).
        let solid = "é".repeat(TEXT_PIECE_BYTES);
        let (h, t) = text_split(&solid);
        assert!(!h.is_empty() && h.len() <= TEXT_PIECE_BYTES && h.len() % 2 == 0);
        assert_eq!(h.len() + t.len(), solid.len());
    }

    fn write(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
        let p = dir.join(name);
        File::create(&p).unwrap().write_all(content).unwrap();
        p
    }

    #[test]
    fn ids_default_to_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "a.jsonl", b"{\"text\":\"one\"}\n{\"text\":\"two\",\"id\":7}\n");
        let (docs, report) = CorpusReader::read_all(&p, CorpusConfig::default()).unwrap();
        assert_eq!(docs[0].id, format!("{}:1", p.display()));
        assert_eq!(docs[1].id, "7");
        assert_eq!(report.documents, 2);
        assert_eq!(docs[1].record, "{\"text\":\"two\",\"id\":7}");
    }

    #[test]
    fn custom_fields_and_crlf() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "a.jsonl", b"{\"body\":\"x\",\"key\":\"k1\",\"domain\":\"d\"}\r\n");
        let cfg = CorpusConfig {
            text_field: "body".into(),
            id_field: "key".into(),
            strict: false,
        };
        let (docs, _) = CorpusReader::read_all(&p, cfg).unwrap();
        assert_eq!(docs[0].id, "k1");
        assert_eq!(docs[0].text, "x");
        assert_eq!(docs[0].field("domain").as_deref(), Some("d"));
    }

    #[test]
    fn a_byte_order_mark_is_stripped() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "bom.jsonl", b"\xEF\xBB\xBF{\"id\":\"a\",\"text\":\"x\"}\n{\"id\":\"b\",\"text\":\"y\"}\n");
        let (docs, report) = CorpusReader::read_all(&p, CorpusConfig::default()).unwrap();
        assert_eq!(docs.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(docs[0].record, r#"{"id":"a","text":"x"}"#);
        assert_eq!(report.skipped_total(), 0);
    }

    #[test]
    fn unsupported_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "a.csv", b"x");
        assert!(matches!(
            CorpusReader::open(&p, CorpusConfig::default()),
            Err(CorpusError::UnsupportedFile { .. })
        ));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            CorpusReader::open(empty.path(), CorpusConfig::default()),
            Err(CorpusError::EmptyFolder { .. })
        ));
    }
}

/// The value of `field` for each of `ids`, in that order, read from the corpus at `path` (labels
/// for embeddings computed earlier). An id missing from the corpus is an error: the embeddings
/// belong to another corpus.
pub fn labels_by_id(path: &Path, config: CorpusConfig, field: &str, ids: &[String]) -> Result<Vec<String>, CorpusError> {
    let mut by_id = std::collections::HashMap::new();
    let mut labelled = 0usize;
    for doc in CorpusReader::open(path, config)? {
        let doc = doc?;
        let label = doc.field(field);
        labelled += usize::from(label.is_some());
        by_id.insert(doc.id, label.unwrap_or_default());
    }
    // No record has the field: every "label" would be the same blank, and agreement perfect.
    if labelled == 0 {
        return Err(CorpusError::NoSuchField { field: field.to_string(), path: path.to_path_buf() });
    }
    ids.iter()
        .map(|id| {
            by_id.get(id).cloned().ok_or_else(|| CorpusError::MissingId {
                id: id.clone(),
                path: path.to_path_buf(),
            })
        })
        .collect()
}

/// Checks that the corpus at `path` yields exactly `ids`, in order (rows computed from it earlier,
/// e.g. by `quad embed`, which writes them in reading order). One streaming pass; the first
/// difference is the error.
pub fn check_ids(path: &Path, config: CorpusConfig, ids: &[String]) -> Result<(), CorpusError> {
    let differ = |what: String| CorpusError::IdsDiffer {
        path: path.to_path_buf(),
        what,
    };
    let mut n = 0;
    for doc in CorpusReader::open(path, config)? {
        let doc = doc?;
        match ids.get(n) {
            Some(id) if *id == doc.id => {}
            Some(id) => return Err(differ(format!("row {} is {id:?}, the corpus has {:?} there", n + 1, doc.id))),
            None => return Err(differ(format!("the corpus has more documents than the {} rows", ids.len()))),
        }
        n += 1;
    }
    if n < ids.len() {
        return Err(differ(format!("{} rows, the corpus has {n} documents", ids.len())));
    }
    Ok(())
}
