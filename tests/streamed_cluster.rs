//! The streamed path (embeddings written chunk by chunk to disk, clustered a block of rows at a
//! time) gives the same rows and the same k-means assignments as the in-memory path, on a generated
//! 20,000-document pool: with every row in the fit, and with a sampled fit.

use quad_select::cluster::{self, Clustering, KMeansParams};
use quad_select::corpus::{CorpusError, Document, Location};
use quad_select::embed::{self, HashingEmbedder, StoredEmbeddings};
use rand::{Rng, SeedableRng};

fn pool(n: usize) -> Vec<Document> {
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(11);
    // Twenty "topics" of 30 words each; a document draws most of its words from one topic.
    let words: Vec<String> = (0..600).map(|i| format!("w{i}")).collect();
    (0..n)
        .map(|i| {
            let topic = rng.gen_range(0..20);
            let text: Vec<&str> = (0..rng.gen_range(5..40))
                .map(|_| {
                    let w = if rng.gen_bool(0.8) { topic * 30 + rng.gen_range(0..30) } else { rng.gen_range(0..600) };
                    words[w].as_str()
                })
                .collect();
            let text = text.join(" ");
            Document {
                id: format!("doc-{i}"),
                record: serde_json::json!({"id": format!("doc-{i}"), "text": text}).to_string(),
                text,
                location: Location { file: "gen".into(), line: i as u64 + 1 },
            }
        })
        .collect()
}

#[test]
fn streamed_and_in_memory_paths_agree_on_20k_documents() {
    let docs = pool(20_000);
    let embedder = HashingEmbedder::new(512);
    let as_stream = || docs.iter().cloned().map(Ok::<_, CorpusError>);

    let mut in_memory = embed::embed_documents(as_stream(), &embedder, 1000, |_| {}, |_| {}).unwrap();
    cluster::prepare_rows(&mut in_memory).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let written = embed::embed_to_dir(as_stream(), &embedder, 1000, dir.path(), |_| std::ops::ControlFlow::Continue(())).unwrap();
    assert_eq!((written.rows, written.dim), (20_000, 512));
    let stored = StoredEmbeddings::open(dir.path()).unwrap();
    assert_eq!(stored.ids, in_memory.ids);
    assert_eq!(stored.rows.read_rows(0..20_000).unwrap(), in_memory.matrix);

    for fit_rows in [65_536, 5_000] {
        let params = KMeansParams { k: 20.into(), n_init: 1, max_iter: 50, fit_rows, ..Default::default() }.check().unwrap();
        let a = Clustering::fit(&params, in_memory.matrix.view(), |_| {}).unwrap();
        let b = Clustering::fit_stored(&params, &stored.rows, &stored.ids, |_| {}).unwrap();
        assert_eq!(a.assignment, b.assignment, "fit_rows {fit_rows}");
        assert_eq!(a.inertia, b.inertia);
    }
}
