//! `quad embed` and `quad cluster`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use crate::cluster::{self, Clustering, KMeansEvent};
use crate::corpus as corpus_mod;
use crate::embed::{self, BertOptions, Embeddings};

use crate::cli::args::{CorpusArgs, EmbedderArgs, KMeansArgs};
use crate::cli::progress::{bar, spinner};

/// Streams the corpus through the embedder into `out`, one chunk of rows in memory at a time
/// (rows scaled to unit norm).
pub fn embed(corpus: &CorpusArgs, args: &EmbedderArgs, out: &Path) -> Result<()> {
    let started = Instant::now();
    // A run killed here (SIGTERM, SIGKILL) left its partial matrix as a temporary.
    crate::atomic::remove_stale_temporaries(out, 0);
    let (written, describe) = embed_into(corpus, args, out)?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "embedded {} documents ({} dims, {describe}) in {secs:.1} s ({:.1} docs/s) -> {}",
        written.rows,
        written.dim,
        written.rows as f64 / secs.max(1e-9),
        out.join(Embeddings::MATRIX_FILE).display()
    );
    Ok(())
}

/// Embeds the corpus into the folder `dir` with a progress spinner: what was written and the
/// embedder's description.
fn embed_into(corpus: &CorpusArgs, args: &EmbedderArgs, dir: &Path) -> Result<(embed::EmbeddedDir, String)> {
    let embedder = make_embedder(args)?;
    let mut reader = corpus.open()?;
    let bar = spinner("embedding");
    let written = embed::embed_to_dir(reader.by_ref(), embedder.as_ref(), args.batch_size.max(1) * 8, dir, |n| {
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
    Ok((written, embedder.describe()))
}

fn make_embedder(args: &EmbedderArgs) -> Result<Box<dyn embed::Embedder>> {
    crate::embed::make_embedder(
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

/// `quad cluster`: the embeddings given (`--embeddings`), or the corpus embedded into a scratch
/// folder inside `out` first (removed after), then the stored, blocked fit `quad select` uses:
/// memory holds the fit sample and one block of rows, not the whole matrix.
pub fn cluster(
    corpus: &CorpusArgs,
    embedder: &EmbedderArgs,
    embeddings: Option<PathBuf>,
    kmeans: &KMeansArgs,
    label_field: Option<String>,
    out: &Path,
) -> Result<()> {
    let scratch;
    // A run killed here left its scratch embeddings as a temporary.
    crate::atomic::remove_stale_temporaries(out, 0);
    let (path, given) = match embeddings {
        Some(path) => (path, true),
        None => {
            let prefix = crate::atomic::temp_prefix();
            std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
            scratch = tempfile::Builder::new()
                .prefix(&prefix)
                .suffix(crate::atomic::TEMP_SUFFIX)
                .tempdir_in(out)
                .with_context(|| format!("making a scratch folder in {}", out.display()))?;
            let (written, describe) = embed_into(corpus, embedder, scratch.path())?;
            eprintln!("embedded {} documents with {describe}", written.rows);
            (scratch.path().to_path_buf(), false)
        }
    };
    let emb = embed::StoredEmbeddings::open(&path)?;
    // Given embeddings must be this corpus's documents, or the clusters (and labels) mean
    // nothing; the ones just made from it are.
    if given {
        corpus_mod::check_ids(&corpus.input, corpus.config(), &emb.ids)
            .with_context(|| format!("--embeddings {} against --input", path.display()))?;
    }
    let labels = match &label_field {
        Some(field) => Some(corpus_mod::labels_by_id(&corpus.input, corpus.config(), field, &emb.ids)?),
        None => None,
    };
    let started = Instant::now();
    let fitted = fit_with_bar(kmeans, &emb)?;
    let secs = started.elapsed().as_secs_f64();
    let mut extra = serde_json::json!({"embedder": emb.embedder, "fit_seconds": secs});
    println!(
        "k-means: k={} n={} inertia={:.3} iterations={} ({:.2} s)",
        fitted.k(),
        emb.ids.len(),
        fitted.inertia,
        fitted.n_iter,
        secs
    );
    report_structure(&fitted, kmeans.tau);
    if let (Some(field), Some(labels)) = (&label_field, &labels) {
        let agreement = cluster::label_agreement(&fitted.assignment, labels);
        println!(
            "agreement with '{field}': NMI={:.4} ARI={:.4} purity={:.4}",
            agreement.nmi, agreement.ari, agreement.purity
        );
        extra["label_field"] = serde_json::json!(field);
        extra["agreement"] = serde_json::to_value(agreement)?;
    }
    fitted.save(out, &emb.ids, &kmeans.params(), kmeans.tau, extra)?;
    println!("wrote {}", out.display());
    Ok(())
}

/// The stored fit with a progress bar over its iterations.
fn fit_with_bar(kmeans: &KMeansArgs, emb: &embed::StoredEmbeddings) -> Result<Clustering> {
    let params = kmeans.params();
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
    let fitted = Clustering::fit_stored(&valid, &emb.rows, &emb.ids, on_event)?;
    bar.finish_and_clear();
    Ok(fitted)
}

/// Prints the cluster sizes and the neighbour graph within τ.
fn report_structure(fitted: &Clustering, tau: f64) {
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
}
