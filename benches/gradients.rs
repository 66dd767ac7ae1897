//! Per-document gradient capture throughput (tokens/s) — the default proxy architecture and
//! SmolLM2-135M (GGUF, dequantised to f32) — next to this machine's f32 matmul GFLOP/s in candle,
//! so the closing figures can say what fraction of the machine the gradient pass reaches.
//!
//! A forward+backward pass costs about 6·P·T FLOPs for P weights in the matmuls and T tokens,
//! plus the attention terms; the printed "GFLOP/s" uses 6·P·T.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use quad_select::corpus::{CorpusConfig, CorpusReader};
use quad_select::model::{LayerSelection, LlamaConfig, LlamaModel};

fn texts(n: usize) -> Vec<String> {
    let pool = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/pool-small.jsonl");
    let (docs, _) = CorpusReader::read_all(&pool, CorpusConfig::default()).expect("pool-small");
    docs.into_iter().take(n).map(|d| d.text).collect()
}

fn matmul_params(m: &LlamaModel) -> usize {
    let lin: usize = m
        .blocks
        .iter()
        .flat_map(|b| quad_select::model::LayerKind::ALL.map(|k| b.linear(k).weight.elem_count()))
        .sum();
    lin + m.embed_tokens.elem_count() // the output projection
}

fn bench_matmul(c: &mut Criterion) {
    quad_select::tune_allocator();
    let dev = Device::Cpu;
    let n = 1024;
    let a = Tensor::randn(0f32, 1.0, (n, n), &dev).unwrap();
    let b = Tensor::randn(0f32, 1.0, (n, n), &dev).unwrap();
    let mut group = c.benchmark_group("matmul_f32");
    group.sample_size(20);
    // Throughput in "elements" = FLOPs, so criterion's elem/s reads as FLOP/s.
    group.throughput(Throughput::Elements(2 * (n as u64).pow(3)));
    group.bench_function("1024x1024x1024", |bch| bch.iter(|| a.matmul(&b).unwrap()));
    group.finish();
}

fn bench_capture(c: &mut Criterion) {
    quad_select::tune_allocator();
    let dev = Device::Cpu;
    let mut group = c.benchmark_group("gradient_capture");
    group.sample_size(10);

    // Default proxy architecture (4 layers, width 256, 4 heads, vocab 4096), one 256-token window.
    let proxy = LlamaModel::random(LlamaConfig::small(4096, 256, 4, 4, 256), DType::F32, &dev, 0).unwrap();
    let doc: Vec<u32> = (0..257).map(|i| (i * 37 % 4096) as u32).collect();
    let tokens = (doc.len() - 1) as u64;
    eprintln!(
        "proxy: {} parameters, ~{:.2} GFLOP per 256-token capture",
        proxy.num_parameters(),
        6.0 * matmul_params(&proxy) as f64 * tokens as f64 / 1e9
    );
    group.throughput(Throughput::Elements(tokens));
    group.bench_function("proxy_4x256/256_tokens", |b| {
        b.iter(|| proxy.capture(std::slice::from_ref(&doc), 256, &LayerSelection::all()).unwrap())
    });

    let gguf = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    match quad_select::model::load(&gguf, DType::F32, &dev) {
        Ok(smol) => {
            let text = texts(8).join("\n\n");
            let mut ids = smol.encode(&text).unwrap();
            ids.truncate(257);
            let tokens = (ids.len() - 1) as u64;
            eprintln!(
                "SmolLM2-135M: {} parameters, ~{:.1} GFLOP per {tokens}-token capture",
                smol.model.num_parameters(),
                6.0 * matmul_params(&smol.model) as f64 * tokens as f64 / 1e9
            );
            group.throughput(Throughput::Elements(tokens));
            group.bench_function("smollm2_135m/256_tokens", |b| {
                b.iter(|| smol.model.capture(std::slice::from_ref(&ids), 2048, &LayerSelection::all()).unwrap())
            });
        }
        Err(e) => eprintln!("skipping SmolLM2 ({e}); run scripts/fetch-models.sh"),
    }
    group.finish();
}

criterion_group!(benches, bench_matmul, bench_capture);
criterion_main!(benches);
