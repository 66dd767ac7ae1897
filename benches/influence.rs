//! Influence throughput with the default proxy architecture (4 layers, width 256, 4 heads, vocab
//! 4096, all 28 linear layers, attention per head): EK-FAC factor fitting time (two passes over
//! 16 documents of 256 tokens, true Fisher) and candidate scoring in documents/s (256-token
//! documents, the reference iHVP computed once): before (captures split per document, each scored on
//! its own), batched, and batched in parallel as `quad select` runs it. Before/after, as measured:
//!
//!     cargo bench --bench influence -- 'score/'                             # candle's own threads
//!     CANDLE_NUM_THREADS=1 cargo bench --bench influence -- score_parallel  # what quad sets
//! Random weights: the cost does not depend on their values.

use candle_core::{DType, Device};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use quad_select::influence::{Damping, Factors, FitOptions, ReferenceIhvp, Strategy};
use quad_select::model::{Labels, LlamaConfig, LlamaModel};

fn docs(n: usize, len: usize, seed: u32) -> Vec<Vec<u32>> {
    (0..n as u32)
        .map(|d| (0..len as u32).map(|i| (i * 37 + d * 101 + seed * 7919) % 4096).collect())
        .collect()
}

fn bench_influence(c: &mut Criterion) {
    quad_select::tune_allocator();
    let model = LlamaModel::random(LlamaConfig::small(4096, 256, 4, 4, 256), DType::F32, &Device::Cpu, 0).unwrap();
    let opts = FitOptions::default();
    let fitting = docs(16, 257, 0);

    let mut group = c.benchmark_group("influence_default_proxy");
    group.sample_size(10);
    group.bench_function("fit_factors/16_docs_x_256_tokens", |b| {
        b.iter(|| Factors::fit(&model, &fitting, &opts).unwrap())
    });

    let factors = Factors::fit(&model, &fitting, &opts).unwrap();
    let reference = docs(8, 257, 1);
    let grad = quad_select::influence::factors::mean_gradient(&model, &reference, &opts).unwrap();
    let ihvp = ReferenceIhvp::new(&factors, &grad, Strategy::Ekfac, Damping::default()).unwrap();
    let candidates = docs(8, 257, 2);
    group.throughput(Throughput::Elements(candidates.len() as u64));
    // Before: captures split per document, each scored on its own (28 small products each).
    group.bench_function("score/8_docs_x_256_tokens", |b| {
        b.iter(|| {
            candidates
                .chunks(opts.batch)
                .map(|chunk| {
                    let caps = model.capture(chunk, opts.context, &opts.selection).unwrap();
                    caps.iter().flatten().map(|cap| ihvp.score(cap).unwrap()).sum::<f64>()
                })
                .sum::<f64>()
        })
    });
    // After: the batch scored whole (`ReferenceIhvp::score_batch`, what `score_documents` runs),
    // at the default batch and at larger ones.
    for batch in [opts.batch, 8, 16] {
        let docs = docs(16, 257, 2);
        group.throughput(Throughput::Elements(docs.len() as u64));
        group.bench_function(format!("score_batched/16_docs_x_256_tokens/batch_{batch}"), |b| {
            b.iter(|| {
                docs.chunks(batch)
                    .map(|chunk| {
                        let cap = model.capture_batch(chunk, opts.context, &opts.selection, Labels::Observed).unwrap();
                        ihvp.score_batch(&cap).unwrap().into_iter().flatten().sum::<f64>()
                    })
                    .sum::<f64>()
            })
        });
    }
    // What `quad select` runs (`influence::score_documents`): batches of the default size scored
    // in parallel, one per core. Run it with CANDLE_NUM_THREADS=1, as `quad` sets it: candle's own
    // per-op threads would fight the batches for the cores.
    // quad's default batch is `influence.batch` = 2.
    for batch in [quad_select::select::InfluenceConfig::default().batch, 4] {
        use rayon::prelude::*;
        let docs = docs(16, 257, 2);
        group.throughput(Throughput::Elements(docs.len() as u64));
        group.bench_function(format!("score_parallel/16_docs_x_256_tokens/batch_{batch}"), |b| {
            b.iter(|| {
                docs.par_chunks(batch)
                    .map(|chunk| {
                        let cap = model.capture_batch(chunk, opts.context, &opts.selection, Labels::Observed).unwrap();
                        ihvp.score_batch(&cap).unwrap().into_iter().flatten().sum::<f64>()
                    })
                    .sum::<f64>()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_influence);
criterion_main!(benches);
