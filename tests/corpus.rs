//! Corpus reading: bad-input accounting, compressed files, Parquet, folders.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use quad_select::corpus::{CorpusConfig, CorpusError, CorpusReader, SkipReason};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/data/sample.jsonl")
}

#[test]
fn every_kind_of_bad_line_is_counted_by_reason() {
    let path = fixture("bad-lines.jsonl");
    let (docs, report) = CorpusReader::read_all(&path, CorpusConfig::default()).unwrap();
    let ids: Vec<&str> = docs.iter().map(|d| d.id.as_str()).collect();
    let no_id = format!("{}:15", path.display());
    assert_eq!(ids, vec!["a", "b", no_id.as_str(), "17"]);
    assert_eq!(docs[1].text, "Another good one, with unicode: café.");
    assert_eq!(report.documents, 4);
    let expect = [
        (SkipReason::InvalidJson, 2),
        (SkipReason::MissingText, 2),
        (SkipReason::NonStringText, 2),
        (SkipReason::EmptyText, 2),
        (SkipReason::InvalidUtf8, 1),
        (SkipReason::DuplicateId, 1),
        (SkipReason::InvalidId, 1),
    ];
    for (reason, n) in expect {
        assert_eq!(report.count(reason), n, "{reason}");
    }
    assert_eq!(report.skipped_total(), 11);
    assert_eq!(report.blank_lines, 1);
    // Every line is accounted for: kept + skipped + blank = lines in the file.
    let lines = std::fs::read(&path).unwrap().split(|&b| b == b'\n').count() as u64 - 1;
    assert_eq!(report.documents + report.skipped_total() + report.blank_lines, lines);
    // The printed report names every reason that occurred and where the first skips were.
    let printed = report.to_string();
    for (reason, _) in expect {
        assert!(printed.contains(reason.as_str()), "{printed}");
    }
    assert!(printed.contains("bad-lines.jsonl:3: invalid_json"), "{printed}");
}

#[test]
fn strict_mode_stops_at_the_first_bad_line_naming_file_and_line() {
    let path = fixture("bad-lines.jsonl");
    let config = CorpusConfig {
        strict: true,
        ..Default::default()
    };
    let err = CorpusReader::read_all(&path, config).unwrap_err();
    match &err {
        CorpusError::Strict { location, reason } => {
            assert_eq!(location.line, 3);
            assert_eq!(*reason, SkipReason::InvalidJson);
        }
        other => panic!("expected a strict error, got {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("bad-lines.jsonl:3") && msg.contains("invalid_json"), "{msg}");
}

#[test]
fn gzip_and_zstd_give_the_same_documents_as_plain_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let plain = std::fs::read(sample()).unwrap();
    let gz = dir.path().join("sample.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::default(),
    );
    enc.write_all(&plain).unwrap();
    enc.finish().unwrap();
    let zst = dir.path().join("sample.jsonl.zst");
    std::fs::write(&zst, zstd::encode_all(&plain[..], 3).unwrap()).unwrap();

    let (base, base_report) = CorpusReader::read_all(&sample(), CorpusConfig::default()).unwrap();
    assert!(base.len() >= 100);
    assert_eq!(base_report.skipped_total(), 0);
    for p in [&gz, &zst] {
        let (docs, report) = CorpusReader::read_all(p, CorpusConfig::default()).unwrap();
        assert_eq!(docs.len(), base.len(), "{}", p.display());
        assert_eq!(report.skipped_total(), 0);
        for (a, b) in docs.iter().zip(&base) {
            assert_eq!((&a.id, &a.text, &a.record), (&b.id, &b.text, &b.record));
        }
    }
}

#[test]
fn folder_reads_supported_files_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b.jsonl"), "{\"id\":\"b1\",\"text\":\"x\"}\n").unwrap();
    std::fs::write(dir.path().join("a.jsonl"), "{\"id\":\"a1\",\"text\":\"y\"}\n").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
    let zst = zstd::encode_all(&b"{\"id\":\"c1\",\"text\":\"z\"}\n"[..], 3).unwrap();
    std::fs::write(dir.path().join("c.jsonl.zst"), zst).unwrap();
    let (docs, report) = CorpusReader::read_all(dir.path(), CorpusConfig::default()).unwrap();
    let ids: Vec<&str> = docs.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, vec!["a1", "b1", "c1"]);
    assert_eq!(report.files.len(), 3);
}

#[test]
fn duplicate_ids_across_files_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.jsonl"), "{\"id\":\"x\",\"text\":\"one\"}\n").unwrap();
    std::fs::write(dir.path().join("b.jsonl"), "{\"id\":\"x\",\"text\":\"two\"}\n").unwrap();
    let (docs, report) = CorpusReader::read_all(dir.path(), CorpusConfig::default()).unwrap();
    assert_eq!(docs.len(), 1);
    assert_eq!(report.count(SkipReason::DuplicateId), 1);
}

#[test]
fn truncated_gzip_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let plain = std::fs::read(sample()).unwrap();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&plain).unwrap();
    let bytes = enc.finish().unwrap();
    let gz = dir.path().join("cut.jsonl.gz");
    std::fs::write(&gz, &bytes[..bytes.len() / 2]).unwrap();
    let err = CorpusReader::read_all(&gz, CorpusConfig::default()).unwrap_err();
    assert!(err.to_string().contains("cut.jsonl.gz"), "{err}");
}

#[test]
fn parquet_string_column_gives_the_same_documents() {
    use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
    use parquet::arrow::ArrowWriter;
    let (base, _) = CorpusReader::read_all(&sample(), CorpusConfig::default()).unwrap();
    let base = &base[..50];
    let ids: Vec<&str> = base.iter().map(|d| d.id.as_str()).collect();
    let texts: Vec<Option<&str>> = base
        .iter()
        .enumerate()
        .map(|(i, d)| if i == 7 { None } else { Some(d.text.as_str()) })
        .collect();
    let n: Vec<i64> = (0..base.len() as i64).collect();
    let batch = RecordBatch::try_from_iter(vec![
        ("id", Arc::new(StringArray::from(ids)) as ArrayRef),
        ("content", Arc::new(StringArray::from(texts)) as ArrayRef),
        ("n", Arc::new(Int64Array::from(n)) as ArrayRef),
    ])
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docs.parquet");
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();

    let config = CorpusConfig {
        text_field: "content".into(),
        ..Default::default()
    };
    let (docs, report) = CorpusReader::read_all(&path, config).unwrap();
    assert_eq!(docs.len(), 49);
    assert_eq!(report.count(SkipReason::MissingText), 1);
    assert_eq!(report.first_skips[0].0.line, 8);
    let expected: Vec<_> = base.iter().enumerate().filter(|(i, _)| *i != 7).collect();
    for (doc, (i, b)) in docs.iter().zip(expected) {
        assert_eq!(doc.id, b.id);
        assert_eq!(doc.text, b.text);
        assert_eq!(doc.field("n").as_deref(), Some(i.to_string().as_str()));
    }
}
