//! k-means fit time: 20,000 × 384 unit vectors (a seeded mixture of 64 directions), k = 64, and
//! the assignment step alone.

use criterion::{criterion_group, criterion_main, Criterion};
use ndarray::Array2;
use quad_select::cluster::{assign, Clustering, KMeansParams};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256Plus;

fn mixture(n: usize, d: usize, centres: usize, seed: u64) -> Array2<f32> {
    let mut rng = Xoshiro256Plus::seed_from_u64(seed);
    let c = Array2::from_shape_fn((centres, d), |_| rng.gen_range(-1.0f32..1.0));
    let mut m = Array2::from_shape_fn((n, d), |(i, j)| {
        c[[i % centres, j]] + 0.8 * rng.gen_range(-1.0f32..1.0)
    });
    quad_select::embed::normalize_rows(&mut m);
    m
}

fn bench_kmeans(c: &mut Criterion) {
    let m = mixture(20_000, 384, 64, 7);
    let mut group = c.benchmark_group("kmeans_20k_x_384");
    group.sample_size(10);
    let params = KMeansParams {
        k: 64.into(),
        n_init: 1,
        max_iter: 300,
        ..Default::default()
    }
    .check()
    .unwrap();
    group.bench_function("fit_k64_n_init1", |b| {
        b.iter(|| Clustering::fit(&params, m.view(), |_| {}).unwrap())
    });
    let mb = KMeansParams {
        mini_batch: Some(2048),
        ..(*params).clone()
    }
    .check()
    .unwrap();
    group.bench_function("fit_k64_mini_batch2048", |b| {
        b.iter(|| Clustering::fit(&mb, m.view(), |_| {}).unwrap())
    });
    let centroids = m.slice(ndarray::s![..64, ..]).to_owned();
    group.bench_function("assign_k64", |b| b.iter(|| assign(m.view(), centroids.view())));
    group.finish();
}

criterion_group!(benches, bench_kmeans);
criterion_main!(benches);
