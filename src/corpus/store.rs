//! A corpus read once and kept on disk: [`DocumentStore`].
//!
//! The selection pipeline visits the pool several times (embedding, token counts, proxy training,
//! scoring, the output) and by index. Holding every document in memory costs kilobytes per
//! document; the store keeps each record in an unnamed scratch file instead, and in memory only
//! what every stage needs per document: its id, where its record ends in the file and where it came
//! from (about 60 bytes plus the id). Whatever the corpus's format (plain or compressed JSONL,
//! Parquet), a document is then one positioned read away.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{CorpusConfig, CorpusError, CorpusReader, Document, Location, ReadReport};
use crate::path_io::{at, PathIoError};

/// The documents of a corpus, records on disk (see the module docs).
pub struct DocumentStore {
    spill: File,
    /// Where the spill lives (for error messages; the file itself has no name).
    scratch: PathBuf,
    /// End offset of each record in `spill`; record i starts where record i − 1 ends.
    ends: Vec<u64>,
    ids: Vec<String>,
    /// File (index into `files`) and line of each document.
    lines: Vec<(u32, u64)>,
    files: Vec<PathBuf>,
    text_field: String,
}

impl DocumentStore {
    /// Reads the corpus at `path` once, as [`CorpusReader`] does (same documents, same skips and
    /// errors), and shows every document to `visit` on the way. Records go to an unnamed file in
    /// `scratch`, which the system removes when the store is dropped or the process ends, however
    /// it ends.
    pub fn read(
        path: &Path,
        config: CorpusConfig,
        scratch: &Path,
        mut visit: impl FnMut(&Document),
    ) -> Result<(Self, ReadReport), CorpusError> {
        std::fs::create_dir_all(scratch).map_err(at(scratch))?;
        let spill = tempfile::tempfile_in(scratch).map_err(at(scratch))?;
        let text_field = config.text_field.clone();
        let mut reader = CorpusReader::open(path, config)?;
        let mut out = BufWriter::with_capacity(1 << 20, spill);
        let (mut ends, mut ids, mut lines, mut files) = (Vec::new(), Vec::new(), Vec::new(), Vec::<PathBuf>::new());
        // The spill has no name: say what was being written where (a full disk, say).
        let spill_err = |e: std::io::Error| PathIoError::new(scratch, std::io::Error::new(e.kind(), format!("the pool's scratch copy: {e}")));
        let mut end = 0u64;
        for doc in reader.by_ref() {
            let doc = doc?;
            visit(&doc);
            out.write_all(doc.record.as_bytes()).map_err(spill_err)?;
            end += doc.record.len() as u64;
            ends.push(end);
            if files.last() != Some(&doc.location.file) {
                files.push(doc.location.file.clone());
            }
            lines.push(((files.len() - 1) as u32, doc.location.line));
            ids.push(doc.id);
        }
        let spill = out.into_inner().map_err(|e| spill_err(e.into_error()))?;
        ids.shrink_to_fit();
        let store = Self {
            spill,
            scratch: scratch.to_path_buf(),
            ends,
            ids,
            lines,
            files,
            text_field,
        };
        Ok((store, reader.into_report()))
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Every document's id, in corpus order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    pub fn location(&self, i: usize) -> Location {
        let (file, line) = self.lines[i];
        Location {
            file: self.files[file as usize].clone(),
            line,
        }
    }

    /// The original record of document `i`, as [`Document::record`].
    pub fn record(&self, i: usize) -> Result<String, CorpusError> {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        let mut bytes = vec![0u8; (self.ends[i] - start) as usize];
        self.spill.read_exact_at(&mut bytes, start).map_err(at(&self.scratch))?;
        String::from_utf8(bytes).map_err(|_| self.damaged(i))
    }

    /// Document `i`, as the reader gave it.
    pub fn document(&self, i: usize) -> Result<Document, CorpusError> {
        let record = self.record(i)?;
        let text = match serde_json::from_str::<Value>(&record) {
            Ok(Value::Object(mut obj)) => match obj.remove(&self.text_field) {
                Some(Value::String(s)) => s,
                _ => return Err(self.damaged(i)),
            },
            _ => return Err(self.damaged(i)),
        };
        Ok(Document {
            id: self.ids[i].clone(),
            text,
            record,
            location: self.location(i),
        })
    }

    /// Documents `idx`, in that order.
    pub fn documents(&self, idx: &[usize]) -> Result<Vec<Document>, CorpusError> {
        idx.iter().map(|&i| self.document(i)).collect()
    }

    /// Every document in corpus order, one at a time.
    pub fn iter(&self) -> impl Iterator<Item = Result<Document, CorpusError>> + '_ {
        (0..self.len()).map(|i| self.document(i))
    }

    /// A record that read back differently from how it was written: the scratch file was changed.
    fn damaged(&self, i: usize) -> CorpusError {
        let msg = format!("the scratch copy of document {:?} ({}) is damaged", self.ids[i], self.location(i));
        CorpusError::Io(PathIoError::new(&self.scratch, std::io::Error::new(std::io::ErrorKind::InvalidData, msg)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gives_back_what_the_reader_read() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.jsonl");
        let b = dir.path().join("b.jsonl");
        std::fs::write(&a, "{\"id\":\"x\",\"text\":\"héllo\",\"n\":1}\nnot json\n\n{\"text\":\"no id\"}\n").unwrap();
        std::fs::write(&b, "{\"id\":\"y\",\"text\":\"last\"}\n").unwrap();
        let scratch = dir.path().join("scratch");
        let mut seen = Vec::new();
        let (store, report) = DocumentStore::read(dir.path(), CorpusConfig::default(), &scratch, |d| seen.push(d.id.clone())).unwrap();
        let (docs, expected) = CorpusReader::read_all(dir.path(), CorpusConfig::default()).unwrap();
        assert_eq!(report, expected);
        assert_eq!(store.len(), 3);
        assert_eq!(store.ids(), seen.as_slice());
        for (i, d) in docs.iter().enumerate() {
            let got = store.document(i).unwrap();
            assert_eq!((&got.id, &got.text, &got.record, &got.location), (&d.id, &d.text, &d.record, &d.location));
        }
        let picked = store.documents(&[2, 0]).unwrap();
        assert_eq!((picked[0].text.as_str(), picked[1].text.as_str()), ("last", "héllo"));
        assert_eq!(store.iter().count(), 3);
        // The spill has no name: nothing is left in the scratch folder.
        assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);
    }

    #[test]
    fn reader_errors_come_through() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.jsonl");
        std::fs::write(&a, "{\"text\":\"ok\"}\n{\"text\":3}\n").unwrap();
        let strict = CorpusConfig {
            strict: true,
            ..Default::default()
        };
        let err = DocumentStore::read(&a, strict, dir.path(), |_| {}).err().unwrap();
        assert!(matches!(err, CorpusError::Strict { .. }));
    }
}
