//! Embedding throughput (docs/s) on real pool documents: MiniLM (BertEmbedder) and hashing.
//!
//! Needs `models/all-MiniLM-L6-v2` (scripts/fetch-models.sh) and `../shared/data/pool-small.jsonl`.
//! Whole-corpus figures (all of pool-small) come from `quad embed`; see the README.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use quad_select::corpus::{CorpusConfig, CorpusReader};
use quad_select::embed::{BertEmbedder, BertOptions, Embedder, HashingEmbedder};

fn texts(n: usize) -> Vec<String> {
    let pool = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/pool-small.jsonl");
    let (docs, _) = CorpusReader::read_all(&pool, CorpusConfig::default()).expect("pool-small");
    docs.into_iter().take(n).map(|d| d.text).collect()
}

fn bench_embed(c: &mut Criterion) {
    quad_select::tune_allocator();
    let docs = texts(64);
    let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
    let mut group = c.benchmark_group("embed");
    group.throughput(Throughput::Elements(refs.len() as u64));
    group.sample_size(10);

    let hashing = HashingEmbedder::default();
    group.bench_function("hashing_2048/64_docs", |b| b.iter(|| hashing.embed(&refs).unwrap()));

    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2");
    match BertEmbedder::load(&model, BertOptions::default()) {
        Ok(bert) => {
            group.bench_function("minilm_l6/64_docs", |b| b.iter(|| bert.embed(&refs).unwrap()));
        }
        Err(e) => eprintln!("skipping MiniLM benchmark ({e}); run scripts/fetch-models.sh"),
    }
    group.finish();
}

criterion_group!(benches, bench_embed);
criterion_main!(benches);
