//! `quad embed` and `quad cluster`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use quad_select::cluster::{self, Clustering, KMeansEvent};
use quad_select::corpus::{self as corpus_mod, ReadReport};
use quad_select::embed::{self, BertOptions, Embeddings};

use crate::args::{CorpusArgs, EmbedderArgs, KMeansArgs};
use crate::progress::{bar, spinner};

/// Streams the corpus through the embedder into `out`, one chunk of rows in memory at a time
/// (rows scaled to unit norm).
pub fn embed(corpus: &CorpusArgs, args: &EmbedderArgs, out: &Path) -> Result<()> {
    let embedder = make_embedder(args)?;
    let mut reader = corpus.open()?;
    let bar = spinner("embedding");
    let started = Instant::now();
    let written = embed::embed_to_dir(reader.by_ref(), embedder.as_ref(), args.batch_size.max(1) * 8, out, |n| {
        bar.inc(n as u64);
        std::ops::ControlFlow::Continue(())
    })?;
    bar.finish_and_clear();
    eprintln!("{}", reader.report());
    if written.rows == 0 {
        bail!("{}: no documents to embed", corpus.input.display());
    }
    if written.rescaled > 0 {
        eprintln!("note: rescaled {} embedding rows to unit norm", written.rescaled);
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "embedded {} documents ({} dims, {}) in {:.1} s ({:.1} docs/s) -> {}",
        written.rows,
        written.dim,
        embedder.describe(),
        secs,
        written.rows as f64 / secs.max(1e-9),
        out.join(Embeddings::MATRIX_FILE).display()
    );
    Ok(())
}

fn make_embedder(args: &EmbedderArgs) -> Result<Box<dyn embed::Embedder>> {
    quad_select::embed::make_embedder(
        args.model.as_deref(),
        BertOptions {
            max_seq_length: args.max_seq_length,
            batch_size: args.batch_size,
        },
        args.hashing_dim,
    )
    .with_context(|| match &args.model {
        Some(m) => format!("loading embedding model {}", m.display()),
        None => "building the hashing embedder".into(),
    })
}

pub fn cluster(
    corpus: &CorpusArgs,
    embedder: &EmbedderArgs,
    embeddings: Option<PathBuf>,
    kmeans: &KMeansArgs,
    label_field: Option<String>,
    out: &Path,
) -> Result<()> {
    let params = kmeans.params();
    let tau = kmeans.tau;
    let valid = params.clone().check()?;
    let bar = bar(params.max_iter as u64, "k-means");
    let on_event = |ev| match ev {
        KMeansEvent::RunStarted { run, n_init } => {
            bar.set_position(0);
            bar.set_message(format!("init {}/{}", run + 1, n_init));
        }
        KMeansEvent::Iteration { iter, shift, .. } => {
            bar.set_position(iter as u64);
            if shift.is_finite() {
                bar.set_message(format!("shift {shift:.2e}"));
            }
        }
    };
    let started;
    let (fitted, ids, embedder, labels) = match embeddings {
        // Left on disk and read a block at a time: memory does not grow with rows × dim.
        Some(path) => {
            let emb = embed::StoredEmbeddings::open(&path)?;
            // The rows must be this corpus's documents, or the clusters (and labels) mean nothing.
            corpus_mod::check_ids(&corpus.input, corpus.config(), &emb.ids)
                .with_context(|| format!("--embeddings {} against --input", path.display()))?;
            let labels = match &label_field {
                Some(field) => Some(corpus_mod::labels_by_id(&corpus.input, corpus.config(), field, &emb.ids)?),
                None => None,
            };
            started = Instant::now();
            let fitted = Clustering::fit_stored(&valid, &emb.rows, &emb.ids, on_event)?;
            (fitted, emb.ids, emb.embedder, labels)
        }
        None => {
            let (labelled, report, secs) = embed_corpus(corpus, embedder, label_field.as_deref())?;
            eprintln!("{report}");
            let mut emb = labelled.embeddings;
            eprintln!("embedded {} documents with {} in {:.1} s", emb.ids.len(), emb.embedder, secs);
            let rescaled = cluster::prepare_rows(&mut emb)?;
            if rescaled > 0 {
                eprintln!("note: rescaled {rescaled} embedding rows to unit norm");
            }
            started = Instant::now();
            let fitted = Clustering::fit(&valid, emb.matrix.view(), on_event)?;
            (fitted, emb.ids, emb.embedder, labelled.labels)
        }
    };
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let mut extra = serde_json::json!({"embedder": embedder, "fit_seconds": secs});
    println!(
        "k-means: k={} n={} inertia={:.3} iterations={} ({:.2} s)",
        fitted.k(),
        ids.len(),
        fitted.inertia,
        fitted.n_iter,
        secs
    );
    let mut sizes = fitted.sizes.clone();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    println!("cluster sizes (largest first): {sizes:?}");
    let neighbours = fitted.neighbours(tau);
    let with_neighbours = neighbours.iter().filter(|n| !n.is_empty()).count();
    let edges: usize = neighbours.iter().map(Vec::len).sum::<usize>() / 2;
    println!(
        "neighbours within tau={tau}: {edges} pairs; {with_neighbours} of {} clusters have at least one",
        fitted.k()
    );
    if let (Some(field), Some(labels)) = (&label_field, &labels) {
        let agreement = cluster::label_agreement(&fitted.assignment, labels);
        println!(
            "agreement with '{field}': NMI={:.4} ARI={:.4} purity={:.4}",
            agreement.nmi, agreement.ari, agreement.purity
        );
        extra["label_field"] = serde_json::json!(field);
        extra["agreement"] = serde_json::to_value(agreement)?;
    }
    fitted.save(out, &ids, &params, tau, extra)?;
    println!("wrote {}", out.display());
    Ok(())
}

/// Streams the corpus through the chosen embedder with a progress spinner.
fn embed_corpus(
    corpus: &CorpusArgs,
    args: &EmbedderArgs,
    label_field: Option<&str>,
) -> Result<(embed::Labelled, ReadReport, f64)> {
    let embedder = make_embedder(args)?;
    let mut reader = corpus.open()?;
    let bar = spinner("embedding");
    let started = Instant::now();
    let labelled = embed::embed_labelled(reader.by_ref(), embedder.as_ref(), args.batch_size.max(1) * 8, label_field, |n| {
        bar.inc(n as u64)
    })?;
    bar.finish_and_clear();
    if labelled.missing_labels > 0 {
        eprintln!(
            "note: {} documents have no '{}' field; they count as label \"\"",
            labelled.missing_labels,
            label_field.unwrap_or_default()
        );
    }
    if labelled.embeddings.ids.is_empty() {
        // Why nothing is left: the skip counts.
        eprintln!("{}", reader.report());
        bail!("{}: no documents to embed", corpus.input.display());
    }
    Ok((labelled, reader.into_report(), started.elapsed().as_secs_f64()))
}
