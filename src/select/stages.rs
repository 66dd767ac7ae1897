//! The pipeline behind [`super::Selector::select`], one function per stage.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use serde_json::json;

use super::cache::{Checkpoint, ScoreCache, StageCache, StageClock};
use super::report::{self, RunInputs, Selection};
use super::executor::{Executor, ScoringSetup};
use super::observer::{Event, Observer};
use super::{SelectError, Selector, ValidSelectConfig};
use crate::bandit::{Bandit, BanditState, Budget, Problem, StopReason};
use crate::cluster::{self, Clustering};
use crate::corpus::{CorpusReader, Document, DocumentStore, ReadReport};
use crate::embed::{BertOptions, Embeddings, StoredEmbeddings};
use super::keys;
use crate::influence::{self, stage as infl, store, Factors, ReferenceIhvp};
use crate::model::train::train_proxy_from;
use crate::model::{self, LoadedModel};
use crate::path_io::at;

/// The pool (on disk, by index) and the reference (small, in memory) as read.
struct Inputs {
    pool: DocumentStore,
    ref_docs: Vec<Document>,
    pool_report: ReadReport,
    ref_report: ReadReport,
    pool_sha: String,
    ref_sha: String,
    corpus_key: String,
}

/// The clustering the bandit uses.
struct Clusters {
    assignment: Vec<usize>,
    distances: Vec<Vec<f64>>,
    key: String,
    /// The pool's embedding rows (read by estimators other than the cluster mean).
    embeddings: crate::npy::NpyRows,
}

/// The proxy model and its fingerprint.
struct Proxy {
    /// None where the policy only counts tokens (no scoring, no forward pass): then only the
    /// proxy's tokenizer is made ([`tokenizer_only`]).
    model: Option<LoadedModel>,
    tokenizer: tokenizers::Tokenizer,
    /// The model (or, without one, the tokenizer file) and its fingerprint.
    path: PathBuf,
    sha: String,
}

impl Proxy {
    /// The model, for the stages that run it; none is loaded only for policies that never reach
    /// them.
    fn loaded(&self) -> Result<&LoadedModel, SelectError> {
        self.model.as_ref().ok_or_else(|| SelectError::Config("this policy loaded no proxy model (it only counts tokens)".into()))
    }
}

/// Token counts, and the documents long enough to score (the bandit's indices).
struct Tokens {
    counts: Vec<u32>,
    eligible: Vec<usize>,
    too_short: usize,
}

/// The reference iHVP (for policies that score) and the keys of what it came from.
struct Influence {
    ihvp: Option<ReferenceIhvp>,
    /// Where a scoring worker finds what `ihvp` came from (policies that score).
    setup: Option<ScoringSetup>,
    factors_key: String,
    factors_sha: Option<String>,
    score_key: String,
}

pub(super) fn run(
    selector: &Selector,
    pool: &Path,
    reference: &Path,
    budget: Budget,
    observer: &mut dyn Observer,
    executor: &mut dyn Executor,
) -> Result<Selection, SelectError> {
    selector.check_paths(pool, reference, None)?;
    selector.check_resume(pool, reference, budget)?;
    let request = selector.request(pool, reference, budget);
    let cfg = &selector.config;
    let mut cache = open_cache(&selector.cache, observer)?;
    let inputs = read_inputs(cfg, pool, reference, &selector.cache, &mut cache, observer)?;
    let clusters = cluster_pool(cfg, &inputs, &mut cache, observer, executor)?;
    let proxy = load_proxy(cfg, &inputs, &mut cache, observer)?;
    let tokens = tokenize(&proxy, &inputs.pool, &mut cache, observer)?;
    let influence = reference_ihvp(cfg, &inputs, &proxy, &tokens, &mut cache, observer)?;
    let mut signals = all_signals(cfg, &inputs, &proxy, &tokens, &selector.cache, &mut cache, observer)?;
    let started = StageClock::start();
    let value_key = signals.value_key(&influence.score_key);
    let run_key = keys::run(cfg, (&clusters.key, &proxy.sha, &value_key), budget, tokens.too_short);
    let problem = Problem {
        cluster: tokens.eligible.iter().map(|&i| clusters.assignment[i]).collect(),
        tokens: tokens.eligible.iter().map(|&i| tokens.counts[i] as usize).collect(),
        distances: clusters.distances,
        budget,
    };
    let (cluster_of, doc_tokens) = (problem.cluster.clone(), problem.tokens.clone());
    let mut scorer = Scorer {
        cfg,
        proxy: &proxy,
        pool: &inputs.pool,
        eligible: &tokens.eligible,
        ihvp: influence.ihvp.as_ref(),
        setup: influence.setup.clone(),
        executor,
        scores: ScoreCache::open(&selector.cache.join(format!("scores-{}.jsonl", influence.score_key)))?,
        scored_here: (0, 0, 0.0),
    };
    let (features, estimator_reports) = signals.estimator_features(clusters.embeddings, &tokens.eligible);
    let (signal_values, signal_report) = signals.policy.map(|s| (s.values, s.report)).unzip();
    let state = run_bandit(selector, problem, (features, signal_values), (&request, &run_key), &mut scorer, observer)?;
    let scoring = scorer.throughput();
    let cap = cfg.scoring.max_tokens.unwrap_or(usize::MAX);
    let scoring_tokens: Vec<usize> = doc_tokens.iter().map(|&t| t.saturating_sub(1).min(cap)).collect();
    cache.record("bandit", started, false, &run_key);
    if state.stop == Some(StopReason::Interrupted) {
        return Err(SelectError::Interrupted {
            rounds: Some(state.round),
            docs: state.docs_selected,
            tokens: state.tokens_selected,
        });
    }
    let started = StageClock::start();
    let documents = report::selected_documents(&inputs.pool, &tokens.eligible, &state, &doc_tokens)?;
    cache.record("report", started, false, "");
    let run = RunInputs {
        pool,
        pool_sha256: &inputs.pool_sha,
        pool_report: &inputs.pool_report,
        reference,
        reference_sha256: &inputs.ref_sha,
        reference_report: &inputs.ref_report,
        model: &proxy.path,
        model_sha256: &proxy.sha,
        factors_key: &influence.factors_key,
        factors_sha256: influence.factors_sha.as_deref(),
        too_short: tokens.too_short,
        cluster_of: &cluster_of,
        tokens: &doc_tokens,
        scoring_tokens: &scoring_tokens,
        scoring,
        signal: signal_report,
        estimator_signals: estimator_reports,
    };
    Ok(report::assemble(&cfg.raw, budget, documents, inputs.pool.len(), tokens.eligible.len(), state, &run, cache.timings))
}

/// The stage cache, with the temporaries of killed runs removed (and said).
fn open_cache(dir: &Path, observer: &mut dyn Observer) -> Result<StageCache, SelectError> {
    let (cache, stale) = StageCache::open(dir)?;
    if stale > 0 {
        let note = format!("removed {stale} temporaries that killed runs left in {}", dir.display());
        let _ = observer.event(Event::Note(&note));
    }
    Ok(cache)
}

fn read_inputs(
    cfg: &ValidSelectConfig,
    pool: &Path,
    reference: &Path,
    scratch: &Path,
    cache: &mut StageCache,
    observer: &mut dyn Observer,
) -> Result<Inputs, SelectError> {
    let started = StageClock::start();
    let _ = observer.event(Event::Stage {
        name: "read corpus",
        cached: false,
    });
    // Hashed before they are read, and checked unchanged after: the keys and the documents
    // come from the same bytes (a file replaced in between is refused, never cached).
    let pool_snapshot = crate::hash::Snapshot::take(&crate::corpus::corpus_files(pool)?)?;
    let ref_snapshot = crate::hash::Snapshot::take(&crate::corpus::corpus_files(reference)?)?;
    // The first record that already has a "quad" field (selected.jsonl adds one).
    let mut clash: Option<(String, String)> = None;
    let (docs, pool_report) = DocumentStore::read(pool, cfg.corpus.clone(), scratch, |d| {
        if clash.is_none() && has_field(&d.record, "quad") {
            clash = Some((d.id.clone(), d.location.to_string()));
        }
    })?;
    let (ref_docs, ref_report) = CorpusReader::read_all(reference, cfg.reference.clone())?;
    let _ = observer.event(Event::Note(&pool_report.to_string()));
    let _ = observer.event(Event::Note(&ref_report.to_string()));
    if docs.is_empty() {
        return Err(SelectError::Config(format!("{}: no usable documents", pool.display())));
    }
    if ref_docs.is_empty() {
        return Err(SelectError::Config(format!("{}: no usable reference documents", reference.display())));
    }
    if let Some((id, location)) = clash {
        return Err(SelectError::Config(format!(
            "{id} ({location}) already has a \"quad\" field, which selected.jsonl would overwrite"
        )));
    }
    for snapshot in [&pool_snapshot, &ref_snapshot] {
        snapshot
            .check_unchanged()
            .map_err(|path| SelectError::Io(crate::path_io::PathIoError::new(&path, crate::hash::changed())))?;
    }
    let (pool_sha, ref_sha) = (pool_snapshot.sha256, ref_snapshot.sha256);
    let corpus_key = keys::corpus(cfg, &pool_sha);
    cache.finish(observer, "corpus", started, false, &corpus_key)?;
    Ok(Inputs {
        pool: docs,
        ref_docs,
        pool_report,
        ref_report,
        pool_sha,
        ref_sha,
        corpus_key,
    })
}

/// The pool's embeddings, in the cache (computed there, chunk by chunk, when missing): its key
/// and the stored matrix, read back by blocks, so memory does not grow with rows × dim.
fn embed_pool(
    cfg: &ValidSelectConfig,
    inputs: &Inputs,
    cache: &mut StageCache,
    observer: &mut dyn Observer,
    executor: &mut dyn Executor,
) -> Result<(String, StoredEmbeddings), SelectError> {
    let group = executor.parallelism().max(1);
    let raw = &cfg.raw;
    let embedder_id = match &raw.embed.model {
        Some(m) => json!(["bert", store::model_fingerprint(m)?]),
        None => json!(["hashing", raw.embed.hashing_dim]),
    };
    let embed_key = keys::embed(&inputs.corpus_key, embedder_id);
    // The metadata is written last (after the matrix and the ids): its presence marks a whole entry.
    let artifact = cache.folder("embed", &embed_key, Embeddings::META_FILE);
    let docs = &inputs.pool;
    // Rows of other documents than this corpus's are no entry of this key: computed again.
    let load = |p: &Path| -> Result<StoredEmbeddings, SelectError> {
        let emb = StoredEmbeddings::open(p)?;
        if emb.ids != docs.ids() {
            return Err(SelectError::Config(format!("{}: the ids are not this corpus's", p.display())));
        }
        Ok(emb)
    };
    let emb = cache.stage(observer, ("embed", "embed"), &embed_key, Some(&artifact), load, |p, obs| {
        let embedder = crate::embed::make_embedder(
            raw.embed.model.as_deref(),
            BertOptions {
                batch_size: raw.embed.batch_size,
                ..Default::default()
            },
            raw.embed.hashing_dim,
        )?;
        let (total, mut done) = (docs.len() as u64, 0u64);
        let dir = p.expect("embeddings have a folder");
        // The observer may stop the run between two chunks (Ctrl-C).
        let mut embed_group = |chunks: Vec<Vec<String>>| executor.embed(chunks, embedder.as_ref(), raw);
        crate::embed::embed_to_dir_grouped(docs.iter(), embedder.as_ref(), 256, group, &mut embed_group, dir, |n| {
            done += n as u64;
            obs.event(Event::Progress { done, total })
        })
        .map_err(|e| match e {
            crate::embed::EmbedError::Interrupted => SelectError::stopped(),
            e => e.into(),
        })?;
        Ok(StoredEmbeddings::open(dir)?)
    })?;
    Ok((embed_key, emb))
}

/// Embeddings, then k-means over them: the pool's clusters and their centroid distances, in the
/// cache (fitted there when missing).
fn cluster_pool(
    cfg: &ValidSelectConfig,
    inputs: &Inputs,
    cache: &mut StageCache,
    observer: &mut dyn Observer,
    executor: &mut dyn Executor,
) -> Result<Clusters, SelectError> {
    let (embed_key, emb) = embed_pool(cfg, inputs, cache, observer, executor)?;
    let group = executor.parallelism().max(1);
    let docs = &inputs.pool;
    let key = keys::cluster(cfg, &embed_key);
    let artifact = cache.file("cluster", &key, "json");
    // An entry that parses is not yet this problem's: checked against the pool and k (a failure
    // is discarded and fitted again by the cache).
    let load = |p: &Path| -> Result<(Vec<usize>, Vec<Vec<f64>>), SelectError> {
        let text = std::fs::read_to_string(p).map_err(at(p))?;
        let (assignment, distances): (Vec<usize>, Vec<Vec<f64>>) =
            serde_json::from_str(&text).map_err(|e| SelectError::Config(format!("{}: {e}", p.display())))?;
        check_clusters(&assignment, &distances, docs.len(), cfg.kmeans.k.resolve(docs.len()))
            .map_err(|e| SelectError::Config(format!("{}: {e}", p.display())))?;
        Ok((assignment, distances))
    };
    let (assignment, distances) = cache.stage(observer, ("cluster", "cluster"), &key, Some(&artifact), load, |p, obs| {
        let valid = &cfg.kmeans;
        let k = valid.k.resolve(docs.len());
        if k > docs.len() {
            return Err(SelectError::Config(format!(
                "k = {k} clusters for {} documents: lower cluster.k",
                docs.len()
            )));
        }
        let mut assign_group = |blocks, centroids: ndarray::ArrayView2<f32>| executor.assign(blocks, centroids);
        let on_event = |ev| {
            if let cluster::KMeansEvent::Iteration { iter, .. } = ev {
                let _ = obs.event(Event::Progress {
                    done: iter as u64,
                    total: valid.max_iter as u64,
                });
            }
        };
        let fitted = Clustering::fit_stored_with(valid, &emb.rows, &emb.ids, on_event, group, &mut assign_group)?;
        let d: Vec<Vec<f64>> = fitted
            .centroid_distances
            .rows()
            .into_iter()
            .map(|r| r.iter().map(|&x| x as f64).collect())
            .collect();
        let p = p.expect("clusters have a file");
        let json = serde_json::to_string(&(&fitted.assignment, &d)).expect("plain data");
        crate::atomic::write_string_atomic(p, &json).map_err(at(p))?;
        Ok((fitted.assignment, d))
    })?;
    Ok(Clusters {
        assignment,
        distances,
        key,
        embeddings: emb.rows,
    })
}

/// A clustering against its problem: one cluster id per document, each below `k`, and a k × k
/// matrix of finite, non-negative centroid distances.
fn check_clusters(assignment: &[usize], distances: &[Vec<f64>], docs: usize, k: usize) -> Result<(), String> {
    if assignment.len() != docs {
        return Err(format!("{} cluster assignments for {docs} documents", assignment.len()));
    }
    if distances.len() != k || distances.iter().any(|r| r.len() != k) {
        return Err(format!("the centroid distances are not {k} × {k}"));
    }
    if let Some((d, c)) = assignment.iter().enumerate().find(|(_, &c)| c >= k) {
        return Err(format!("document {d} is in cluster {c}, out of range for k = {k}"));
    }
    for (i, row) in distances.iter().enumerate() {
        if let Some((j, x)) = row.iter().enumerate().find(|(_, x)| !(x.is_finite() && **x >= 0.0)) {
            return Err(format!("centroid distance ({i}, {j}) = {x}"));
        }
    }
    Ok(())
}

/// The given proxy, or the in-house one trained on the pool (cached).
fn load_proxy(
    cfg: &ValidSelectConfig,
    inputs: &Inputs,
    cache: &mut StageCache,
    observer: &mut dyn Observer,
) -> Result<Proxy, SelectError> {
    let raw = &cfg.raw;
    if raw.proxy.model.is_none() && !raw.bandit.policy.needs_model() {
        return tokenizer_only(cfg, inputs, cache, observer);
    }
    let started = StageClock::start();
    let mut loaded = None;
    let (path, cached) = match &raw.proxy.model {
        Some(m) => {
            // A model given is loaded, not taken from the cache.
            let _ = observer.event(Event::Stage {
                name: "load model",
                cached: false,
            });
            (m.clone(), false)
        }
        None => {
            let key = keys::proxy(cfg, &inputs.corpus_key);
            let artifact = cache.folder("proxy", &key, "model.safetensors");
            let mut cached = artifact.marker.exists();
            let _ = observer.event(Event::Stage {
                name: "train proxy",
                cached,
            });
            if cached {
                // A cached proxy that does not load is absent: trained again, never an error.
                match model::load(&artifact.path, DType::F32, &Device::Cpu) {
                    Ok(l) => loaded = Some(l),
                    Err(e) => {
                        cache.discard(observer, &artifact, &e)?;
                        cached = false;
                    }
                }
            }
            if !cached {
                train_into_cache(cfg, inputs, cache, &artifact, &key, observer)?;
            }
            (artifact.path, cached)
        }
    };
    let loaded = match loaded {
        Some(l) => l,
        None => model::load(&path, DType::F32, &Device::Cpu)?,
    };
    let sha = store::model_fingerprint(&path)?;
    cache.finish(observer, "proxy", started, cached, &sha[..16])?;
    let tokenizer = loaded.tokenizer.clone();
    Ok(Proxy { model: Some(loaded), tokenizer, path, sha })
}

/// The in-house proxy's tokenizer alone, for a policy that only counts tokens (the budget's
/// unit): the trained proxy's own if it is cached, else `tokenizer-KEY.json`, trained as the proxy
/// would train it (the same documents, the same BPE: the same counts either way) in seconds
/// instead of the proxy's minutes. Its fingerprint is that of the file's text, which is the same
/// in both places.
fn tokenizer_only(cfg: &ValidSelectConfig, inputs: &Inputs, cache: &mut StageCache, observer: &mut dyn Observer) -> Result<Proxy, SelectError> {
    let started = StageClock::start();
    let key = keys::proxy(cfg, &inputs.corpus_key);
    let proxy_tokenizer = cache.folder("proxy", &key, "model.safetensors");
    let artifact = cache.file("tokenizer", &key, "json");
    let (path, mut cached) = if proxy_tokenizer.marker.exists() {
        (proxy_tokenizer.path.join("tokenizer.json"), true)
    } else {
        (artifact.path.clone(), artifact.marker.exists())
    };
    let _ = observer.event(Event::Stage { name: "tokenizer", cached });
    let read = |p: &Path| -> Result<(tokenizers::Tokenizer, String), String> {
        let text = std::fs::read_to_string(p).map_err(|e| e.to_string())?;
        let tokenizer = text.parse::<tokenizers::Tokenizer>().map_err(|e| e.to_string())?;
        Ok((tokenizer, text))
    };
    let mut got = None;
    if cached {
        match read(&path) {
            Ok(t) => got = Some(t),
            // A cached tokenizer that does not load is absent: made again, never an error.
            Err(e) if path == artifact.path => {
                cache.discard(observer, &artifact, &e)?;
                cached = false;
            }
            Err(e) => return Err(SelectError::Config(format!("{}: {e}", path.display()))),
        }
    }
    let (tokenizer, text) = match got {
        Some(t) => t,
        None => {
            let tokenizer = model::train::train_tokenizer_from(inputs.pool.len(), proxy_texts(inputs), &cfg.raw.proxy.train)?;
            let text = model::train::tokenizer_json(&tokenizer)?;
            crate::atomic::write_string_atomic(&artifact.path, &text).map_err(at(&artifact.path))?;
            (tokenizer, text)
        }
    };
    let sha = crate::hash::sha256_hex(text.as_bytes());
    cache.finish(observer, "tokenizer", started, cached, &sha[..16])?;
    Ok(Proxy { model: None, tokenizer, path, sha })
}

/// The documents' texts the proxy (and its tokenizer) trains on: each document's head only
/// ([`crate::corpus::text_head`]): one huge document must not take the tokenizer's memory with it.
fn proxy_texts(inputs: &Inputs) -> impl FnMut(&[usize]) -> Result<Vec<String>, model::ModelError> + '_ {
    |idx: &[usize]| {
        let docs = inputs.pool.documents(idx).map_err(|e| model::ModelError::Config(e.to_string()))?;
        Ok(docs
            .into_iter()
            .map(|d| {
                let mut text = d.text;
                text.truncate(crate::corpus::text_head(&text).len());
                text
            })
            .collect())
    }
}

/// Trains the in-house proxy on the pool into a scratch folder of this run's own and renames it
/// whole into the cache: a half-written proxy is never cached.
fn train_into_cache(
    cfg: &ValidSelectConfig,
    inputs: &Inputs,
    cache: &mut StageCache,
    artifact: &super::cache::Artifact,
    key: &str,
    observer: &mut dyn Observer,
) -> Result<(), SelectError> {
    let raw = &cfg.raw;
    let scratch = cache.scratch_dir(&format!("proxy-{key}."))?;
    let tmp = scratch.path();
    let steps = raw.proxy.train.steps as u64;
    let trained = train_proxy_from(inputs.pool.len(), proxy_texts(inputs), &raw.proxy.train, tmp, |ev| match ev {
        // The observer may stop the run between two steps (Ctrl-C).
        model::train::TrainEvent::Step { step, .. } => observer.event(Event::Progress {
            done: step as u64,
            total: steps,
        }),
        _ => std::ops::ControlFlow::Continue(()),
    });
    match trained {
        Err(model::ModelError::Interrupted { .. }) => return Err(SelectError::stopped()),
        other => other?,
    };
    match std::fs::rename(tmp, &artifact.path) {
        Ok(()) => crate::atomic::sync_parent(&artifact.path).map_err(at(&artifact.path))?,
        // Another run on this cache finished the same proxy first (same key, same
        // seeded training): theirs stands, ours goes (with `scratch`).
        Err(_) if artifact.marker.exists() => {}
        Err(e) => return Err(at(&artifact.path)(e).into()),
    }
    Ok(())
}

/// Token counts (the budget's unit) and the documents too short to score: the pool is encoded
/// a chunk at a time, and only the counts are kept.
fn tokenize(
    proxy: &Proxy,
    pool: &DocumentStore,
    cache: &mut StageCache,
    observer: &mut dyn Observer,
) -> Result<Tokens, SelectError> {
    let started = StageClock::start();
    let _ = observer.event(Event::Stage {
        name: "tokenize",
        cached: false,
    });
    let mut counts = Vec::with_capacity(pool.len());
    let all: Vec<usize> = (0..pool.len()).collect();
    for chunk in all.chunks(TOKENIZE_CHUNK) {
        let docs = pool.documents(chunk)?;
        let mut heads = encode_all(&proxy.tokenizer, &docs)?.into_iter();
        for d in &docs {
            let head = heads.next().map_or(0, |ids| ids.len());
            // A document longer than one piece is counted piece by piece (the budget counts it whole).
            let n = if d.text.len() > crate::corpus::TEXT_PIECE_BYTES { model::count_tokens(&proxy.tokenizer, &d.text)? } else { head };
            counts.push(u32::try_from(n).unwrap_or(u32::MAX));
        }
        // The observer may stop the run between two chunks (Ctrl-C: minutes at a million documents).
        if pool.len() > TOKENIZE_CHUNK
            && observer
                .event(Event::Progress {
                    done: counts.len() as u64,
                    total: pool.len() as u64,
                })
                .is_break()
        {
            return Err(SelectError::stopped());
        }
    }
    let eligible: Vec<usize> = (0..pool.len()).filter(|&i| counts[i] >= 2).collect();
    let too_short = pool.len() - eligible.len();
    if too_short > 0 {
        let line = format!("skipped {too_short} documents with fewer than two tokens (nothing to score)");
        let _ = observer.event(Event::Note(&line));
    }
    cache.finish(observer, "tokenize", started, false, "")?;
    Ok(Tokens {
        counts,
        eligible,
        too_short,
    })
}

/// Documents per tokenizer call of [`tokenize`].
const TOKENIZE_CHUNK: usize = 4096;

/// Token ids of each document's head ([`crate::corpus::text_head`]: every stage that reads tokens uses at
/// most the first few hundred).
fn encode_all(tokenizer: &tokenizers::Tokenizer, docs: &[Document]) -> Result<Vec<Vec<u32>>, SelectError> {
    let texts: Vec<&str> = docs.iter().map(|d| crate::corpus::text_head(&d.text)).collect();
    let enc = tokenizer
        .encode_batch(texts, false)
        .map_err(|e| SelectError::Model(model::ModelError::Tokenizer(e.to_string())))?;
    Ok(enc.into_iter().map(|e| e.get_ids().to_vec()).collect())
}

/// Whether a JSON record has a top-level `field` (a record that is not an object has none). Only
/// records that mention the field's name at all are parsed (again: the reader parsed them once).
fn has_field(record: &str, field: &str) -> bool {
    record.contains(field)
        && matches!(serde_json::from_str::<serde_json::Value>(record), Ok(serde_json::Value::Object(o)) if o.contains_key(field))
}

/// Factors (fitted on a sample of the pool), then the reference gradient and its iHVP.
fn reference_ihvp(
    cfg: &ValidSelectConfig,
    inputs: &Inputs,
    proxy: &Proxy,
    tokens: &Tokens,
    cache: &mut StageCache,
    observer: &mut dyn Observer,
) -> Result<Influence, SelectError> {
    let raw = &cfg.raw;
    let factors_key = keys::factors(cfg, &proxy.sha, &inputs.corpus_key);
    let ref_key = keys::reference_gradient(cfg, &proxy.sha, &inputs.ref_sha);
    let score_key = keys::scores(cfg, &ref_key, &factors_key);
    let factors_artifact = cache.folder("factors", &factors_key, "factors.json");
    let mut result = Influence {
        ihvp: None,
        setup: None,
        factors_sha: None,
        factors_key,
        score_key,
    };
    if !raw.bandit.policy.scores() {
        return Ok(result);
    }
    let loaded = proxy.loaded()?;
    let mut factors: Option<Factors> = None;
    if raw.influence.strategy != influence::Strategy::Identity {
        let fit = |p: Option<&Path>, obs: &mut dyn Observer| {
            let fetch = |idx: &[usize]| -> Result<Vec<Vec<u32>>, influence::InfluenceError> {
                let picked: Vec<usize> = idx.iter().map(|&i| tokens.eligible[i]).collect();
                let docs = inputs.pool.documents(&picked).map_err(|e| influence::InfluenceError::Input(e.to_string()))?;
                encode_all(&proxy.tokenizer, &docs).map_err(|e| influence::InfluenceError::Input(e.to_string()))
            };
            let (f, header) = infl::fit_factors_from(
                loaded,
                &proxy.path,
                &proxy.sha,
                tokens.eligible.len(),
                fetch,
                &cfg.factors,
                raw.influence.damping_rel,
                // The observer may stop the fit between two batches (Ctrl-C).
                &mut |done, total| obs.event(Event::Progress { done: done as u64, total: total as u64 }),
            )
            .map_err(stopped_or)?;
            store::save(&f, &header, p.expect("factors have a folder"))?;
            Ok(f)
        };
        let load = |p: &Path| Ok(store::load(p, &loaded.model.config)?.0);
        factors = Some(cache.stage(observer, ("factors", "fit factors"), &result.factors_key, Some(&factors_artifact), load, fit)?);
        let factors_file = factors_artifact.path.join("factors.safetensors");
        result.factors_sha = Some(crate::hash::sha256_file(&factors_file).map_err(SelectError::Io)?);
    }
    let artifact = cache.file("refgrad", &ref_key, "safetensors");
    let layer_ids = cfg.factors.layers.layers(loaded.model.config.num_hidden_layers);
    let grad = cache.stage(
        observer,
        ("reference", "reference gradient"),
        &ref_key,
        Some(&artifact),
        |p| Ok(store::load_layers(p, &layer_ids, &loaded.model.config)?),
        |p, obs| {
            let ref_tokens = encode_all(&proxy.tokenizer, &inputs.ref_docs)?;
            let g = infl::reference_gradient(loaded, &ref_tokens, &cfg.factors, cfg.scoring.max_tokens, &mut |done, total| {
                obs.event(Event::Progress { done: done as u64, total: total as u64 })
            })
            .map_err(stopped_or)?;
            store::save_layers(&g, p.expect("the gradient has a file"))?;
            Ok(g)
        },
    )?;
    result.ihvp = Some(infl::reference_ihvp(factors.as_ref(), &grad, cfg.factors.per_head, &cfg.scoring)?);
    result.setup = Some(ScoringSetup {
        proxy: proxy.path.clone(),
        factors: factors.is_some().then(|| factors_artifact.path.clone()),
        reference_gradient: artifact.path.clone(),
        config: raw.clone(),
    });
    Ok(result)
}

/// A signal's values (for the signal policy or the estimator), one per eligible document, and
/// what computing them took.
struct SignalValues {
    values: Vec<f64>,
    report: crate::signals::SignalReport,
    key: String,
}

/// The signals a run reads: the signal policy's, and the estimator's feature columns.
struct RunSignals {
    policy: Option<SignalValues>,
    estimator: Vec<SignalValues>,
}

impl RunSignals {
    /// What the run's selection depends on beside the clusters and the proxy: the scores (or
    /// the policy's signal) and the estimator's signals.
    fn value_key(&self, score_key: &str) -> String {
        let first = self.policy.as_ref().map_or(score_key, |s| &s.key);
        std::iter::once(first).chain(self.estimator.iter().map(|s| s.key.as_str())).collect::<Vec<_>>().join("+")
    }

    /// The estimator's feature rows (the bandit's row d is the pool's row `eligible[d]`): the
    /// z-scored signal columns where it reads signals, else the embedding; and the signals'
    /// reports.
    fn estimator_features(
        &mut self,
        embeddings: crate::npy::NpyRows,
        eligible: &[usize],
    ) -> (Box<dyn crate::bandit::FeatureRows>, Vec<crate::signals::SignalReport>) {
        let estimator = std::mem::take(&mut self.estimator);
        if estimator.is_empty() {
            let rows = crate::bandit::estimate::Reindexed { inner: embeddings, index: eligible.to_vec() };
            return (Box::new(rows), Vec::new());
        }
        let columns: Vec<&[f64]> = estimator.iter().map(|s| s.values.as_slice()).collect();
        let rows = crate::signals::zscored_rows(&columns);
        (Box::new(rows), estimator.into_iter().map(|s| s.report).collect())
    }
}

/// The signals a run reads ([`RunSignals`]), each of the eligible documents: DSIR's log weights
/// or the classifier's logits (computed here: seconds), or minus the proxy's mean token loss
/// (forward passes, kept by document id in `losses-KEY.jsonl`, so another budget or reference
/// reuses them).
fn all_signals(
    cfg: &ValidSelectConfig,
    inputs: &Inputs,
    proxy: &Proxy,
    tokens: &Tokens,
    cache_dir: &Path,
    cache: &mut StageCache,
    observer: &mut dyn Observer,
) -> Result<RunSignals, SelectError> {
    let reference: Vec<String> = inputs.ref_docs.iter().map(|d| d.text.clone()).collect();
    let mut one = |signal: crate::signals::Signal| -> Result<SignalValues, SelectError> {
        use crate::signals::{self, Signal};
        let key = keys::signal(cfg, signal, (&inputs.corpus_key, &proxy.sha, &inputs.ref_sha));
        let started = StageClock::start();
        let label = format!("signal ({signal})");
        let _ = observer.event(Event::Stage { name: &label, cached: false });
        let n = tokens.eligible.len();
        let read = |idx: &[usize]| -> Result<Vec<String>, SelectError> {
            let picked: Vec<usize> = idx.iter().map(|&i| tokens.eligible[i]).collect();
            Ok(inputs.pool.documents(&picked)?.into_iter().map(|d| d.text).collect())
        };
        let (values, report) = match signal {
            Signal::Dsir => signals::dsir_weights(&cfg.signals, n, &reference, read)?,
            Signal::Classifier => signals::classifier_logits(&cfg.signals, n, &reference, cfg.bandit.seed, read)?,
            Signal::Perplexity => {
                let path = cache_dir.join(format!("losses-{}.jsonl", keys::losses(cfg, &proxy.sha)));
                proxy_losses(cfg, inputs, proxy, tokens, &path, observer)?
            }
        };
        cache.finish(observer, "signal", started, report.cached, &key)?;
        Ok(SignalValues { values, report, key })
    };
    let policy = cfg.raw.bandit.policy.signal().map(&mut one).transpose()?;
    let estimator = cfg.raw.bandit.estimator.signals().iter().map(|&sig| one(sig)).collect::<Result<Vec<_>, _>>()?;
    Ok(RunSignals { policy, estimator })
}

/// Minus the proxy's mean next-token loss of each eligible document (its first `max_tokens`),
/// from `path` where a finite, non-negative loss is kept for its id, else by a forward pass
/// (saved there at once). Runs here, never on a scoring executor (which scores influence).
fn proxy_losses(
    cfg: &ValidSelectConfig,
    inputs: &Inputs,
    proxy: &Proxy,
    tokens: &Tokens,
    path: &Path,
    observer: &mut dyn Observer,
) -> Result<(Vec<f64>, crate::signals::SignalReport), SelectError> {
    use rayon::prelude::*;
    let clock = std::time::Instant::now();
    let mut kept = ScoreCache::open(path)?;
    let ids = inputs.pool.ids();
    let n = tokens.eligible.len();
    let mut out = vec![0.0; n];
    let mut todo = Vec::new();
    for (d, &i) in tokens.eligible.iter().enumerate() {
        match kept.get(&ids[i]).filter(|l| l.is_finite() && *l >= 0.0) {
            Some(l) => out[d] = -l,
            None => todo.push(d),
        }
    }
    let opts = cfg.factors.gradient_options();
    let loaded = proxy.loaded()?;
    let mut forward_tokens = 0;
    for (piece, ds) in todo.chunks(256).enumerate() {
        let picked: Vec<usize> = ds.iter().map(|&d| tokens.eligible[d]).collect();
        let docs = inputs.pool.documents(&picked)?;
        let encoded = docs
            .iter()
            .map(|d| influence::encode_for_scoring(loaded, &d.id, &d.text, cfg.scoring.max_tokens))
            .collect::<Result<Vec<_>, _>>()?;
        forward_tokens += encoded.iter().map(|e| e.len()).sum::<usize>();
        // Batches of similar length, as scoring plans them, each one forward pass.
        let losses = influence::run_planned(&encoded, opts.batch, |batches| {
            batches
                .par_iter()
                .map(|b| loaded.model.doc_losses(b, opts.context))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| SelectError::Model(model::ModelError::from(e)))
        })?;
        for (k, loss) in losses.into_iter().enumerate() {
            let loss = loss.ok_or_else(|| SelectError::Config(format!("{}: no tokens to take a loss over", docs[k].id)))?;
            if !(loss.is_finite() && loss >= 0.0) {
                return Err(SelectError::Config(format!(
                    "{}: the proxy's loss is {loss}: its weights or config do not give finite values",
                    docs[k].id
                )));
            }
            out[ds[k]] = -loss;
            kept.put(&docs[k].id, loss);
        }
        kept.flush()?;
        let done = ((piece + 1) * 256).min(todo.len()) as u64;
        if observer.event(Event::Progress { done, total: todo.len() as u64 }).is_break() {
            return Err(SelectError::stopped());
        }
    }
    let report = crate::signals::SignalReport {
        signal: crate::signals::Signal::Perplexity,
        documents: n,
        forward_tokens,
        seconds: clock.elapsed().as_secs_f64(),
        cached: todo.is_empty(),
        classifier: None,
    };
    Ok((out, report))
}

/// An influence error as a selection error: a stop asked for by the observer is the run's
/// [`SelectError::stopped`].
fn stopped_or(e: influence::InfluenceError) -> SelectError {
    match e {
        influence::InfluenceError::Interrupted => SelectError::stopped(),
        e => e.into(),
    }
}

/// Scores bandit indices: from the score cache, or by the proxy (saved to the cache at once).
struct Scorer<'a> {
    cfg: &'a ValidSelectConfig,
    proxy: &'a Proxy,
    pool: &'a DocumentStore,
    eligible: &'a [usize],
    ihvp: Option<&'a ReferenceIhvp>,
    /// Handed to the executor before the first document is scored (then `None`).
    setup: Option<ScoringSetup>,
    executor: &'a mut dyn Executor,
    scores: ScoreCache,
    /// Documents, predicted tokens and seconds scored here (cache hits not counted).
    scored_here: (usize, usize, f64),
}

impl Scorer<'_> {
    /// What scoring here (not from the cache) took, if anything was scored.
    fn throughput(&self) -> Option<report::ScoringThroughput> {
        let (documents, tokens, seconds) = self.scored_here;
        (documents > 0).then(|| report::ScoringThroughput {
            documents,
            tokens,
            seconds,
            docs_per_second: documents as f64 / seconds.max(1e-9),
        })
    }

    fn score(&mut self, idx: &[usize], observer: &mut dyn Observer) -> Result<Vec<f64>, SelectError> {
        let ihvp = self.ihvp.expect("scoring policies have an iHVP");
        let id = |i: usize| &self.pool.ids()[self.eligible[i]];
        let mut out = vec![0.0; idx.len()];
        let mut todo = Vec::new();
        for (k, &i) in idx.iter().enumerate() {
            match self.scores.get(id(i)) {
                Some(s) => out[k] = s,
                None => todo.push(k),
            }
        }
        // In pieces, each saved to the score cache at once: a long `topk` pass that is killed
        // keeps what it scored.
        let total = todo.len() as u64;
        let opts = self.cfg.factors.gradient_options();
        if !todo.is_empty() {
            if let Some(setup) = self.setup.take() {
                self.executor.prepare_scoring(&setup)?;
            }
        }
        let loaded = self.proxy.loaded()?;
        let here = |batch: &[Vec<u32>]| -> Result<Vec<Option<f64>>, influence::InfluenceError> {
            Ok(influence::score_token_batch(loaded, ihvp, batch, &opts)?.into_iter().map(|s| s.map(|(score, _)| score)).collect())
        };
        for (piece, ks) in todo.chunks(64).enumerate() {
            let clock = std::time::Instant::now();
            let picked: Vec<usize> = ks.iter().map(|&k| self.eligible[idx[k]]).collect();
            let docs = self.pool.documents(&picked)?;
            let ids = docs
                .iter()
                .map(|d| influence::encode_for_scoring(loaded, &d.id, &d.text, self.cfg.scoring.max_tokens))
                .collect::<Result<Vec<_>, _>>()?;
            // Batches of similar length, each scored in one pass wherever the executor runs it.
            let scored = influence::run_planned(&ids, opts.batch, |batches| self.executor.score(batches, &here))?;
            self.scored_here.0 += ids.len();
            self.scored_here.1 += ids.iter().map(|d| d.len().saturating_sub(1)).sum::<usize>();
            self.scored_here.2 += clock.elapsed().as_secs_f64();
            for (&k, s) in ks.iter().zip(scored) {
                let score = s.ok_or_else(|| SelectError::Config("a scored document had no tokens".into()))?;
                out[k] = score;
                self.scores.put(id(idx[k]), score);
            }
            self.scores.flush()?;
            if total > 64 {
                let done = ((piece + 1) * 64).min(todo.len()) as u64;
                let _ = observer.event(Event::Progress { done, total });
            }
        }
        Ok(out)
    }
}

/// Runs the bandit from the checkpoint (when resuming) or from the start, checkpointing after
/// every round; the observer may stop it after any round.
fn run_bandit(
    selector: &Selector,
    problem: Problem,
    (features, signal): (Box<dyn crate::bandit::FeatureRows>, Option<Vec<f64>>),
    (request, run_key): (&serde_json::Value, &str),
    scorer: &mut Scorer<'_>,
    observer: &mut dyn Observer,
) -> Result<BanditState, SelectError> {
    let params = selector.config.bandit.clone();
    let budget = problem.budget;
    let checkpoint = selector.checkpoint.as_deref();
    let mut bandit = match checkpoint.filter(|p| selector.resume && p.exists()) {
        Some(path) => {
            let checkpoint = Checkpoint::read(path)?;
            checkpoint.check_request(request)?;
            let state = checkpoint.into_state(run_key)?;
            let _ = observer.event(Event::Note(&format!("resuming after {}", super::rounds_done(state.round))));
            Bandit::resume(params, problem, state)
                .map_err(|e| SelectError::Config(format!("{}: {e}; rerun without --resume to start over", path.display())))?
                .with_features(features)?
        }
        None => {
            if selector.resume {
                let _ = observer.event(Event::Note("no checkpoint to resume; starting from the first round"));
            }
            Bandit::new(params, problem)?.with_features(features)?
        }
    };
    if let Some(values) = signal {
        bandit = bandit.with_signal(values)?;
    }
    let policy = format!("select ({})", selector.config.raw.bandit.policy);
    let _ = observer.event(Event::Stage {
        name: &policy,
        cached: false,
    });
    let observer = RefCell::new(observer);
    let mut score = |idx: &[usize]| scorer.score(idx, &mut **observer.borrow_mut());
    let mut failed = None;
    bandit.run(&mut score, |b, log| {
        if let Some(path) = checkpoint {
            if let Err(e) = Checkpoint::save(path, request, run_key, b.state()) {
                failed = Some(e);
                return false;
            }
        }
        let best_index = log.picks.iter().map(|p| p.index).fold(f64::NEG_INFINITY, f64::max);
        let event = Event::Round {
            log,
            budget,
            best_index,
        };
        observer.borrow_mut().event(event).is_continue()
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    if let Some(path) = checkpoint {
        Checkpoint::save(path, request, run_key, bandit.state())?;
    }
    Ok(bandit.into_state())
}
