//! `quad eval`: does a selection help? A fresh small LM — the same architecture, tokenizer, seed,
//! steps and tokens for every selection compared — is trained on the selection, then its mean
//! next-token loss is measured on the reference set and on held-out documents of every pool domain.
//!
//! Held-out documents are split off the pool once, deterministically (per domain, the documents
//! whose seeded hash of the id is smallest), and kept out of the pool that selectors see, so no
//! selector can pick them.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device};
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::corpus::Document;
use crate::model::train::{eval_loss, optimise, stream, tokenize, ProxyParams, EOS};
use crate::model::{LlamaConfig, LlamaModel, ModelError};

/// The evaluation model and its training: a 3-block, width-160 Llama (≈1.6M parameters with a
/// 4096-token vocabulary), 300 steps of 8 windows of 256 tokens (614,400 training tokens).
/// [`eval_params_for_budget`] scales the steps with the selection's size.
pub fn eval_params() -> ProxyParams {
    ProxyParams {
        layers: 3,
        width: 160,
        heads: 4,
        context: 256,
        steps: 300,
        batch_size: 8,
        lr: 3e-3,
        warmup: 20,
        ..Default::default()
    }
}

/// A tiny evaluation model for CI-sized runs: 1 block, width 64, context 64, 20 steps.
pub fn eval_params_quick() -> ProxyParams {
    ProxyParams {
        layers: 1,
        width: 64,
        context: 64,
        steps: 20,
        ..eval_params()
    }
}

/// The record field holding a document's domain (`quad eval split`, `quad eval run`).
pub const LABEL_FIELD: &str = "domain";

/// Documents held out of each domain by `quad eval split`.
pub const HELDOUT_PER_DOMAIN: usize = 20;

/// Passes over the selection the evaluation model trains for: `steps = ⌈PASSES · budget /
/// (batch · context)⌉`, so every selection of a budget is seen at least once (its size in the
/// evaluation tokenizer's tokens is within a few percent of the budget) with the same compute per
/// budget token, whatever the budget.
pub const EVAL_PASSES: f64 = 1.25;

/// [`eval_params`] with the steps scaled to a budget of `budget_tokens` (see [`EVAL_PASSES`]).
pub fn eval_params_for_budget(budget_tokens: usize) -> ProxyParams {
    let p = eval_params();
    let per_step = (p.batch_size * p.context) as f64;
    ProxyParams {
        steps: ((EVAL_PASSES * budget_tokens as f64 / per_step).ceil() as usize).max(p.warmup + 1),
        ..p
    }
}

/// Seeded 64-bit FNV-1a of an id: the order in which splits hold documents out.
fn id_hash(seed: u64, id: &str) -> u64 {
    crate::hash::Fnv1a::seeded(seed).bytes(id.as_bytes()).finish()
}

/// Splits documents into (selectable pool, held-out) indices: for every value of the label
/// (`None`: one group), the `per_domain` documents with the smallest `hash(seed, id)` are held out.
pub fn split_heldout(docs: &[Document], labels: &[Option<String>], per_domain: usize, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let hash = |id: &str| id_hash(seed, id);
    let mut groups: BTreeMap<Option<&str>, Vec<(u64, usize)>> = BTreeMap::new();
    for (i, d) in docs.iter().enumerate() {
        groups.entry(labels[i].as_deref()).or_default().push((hash(&d.id), i));
    }
    let mut held = vec![false; docs.len()];
    for members in groups.values_mut() {
        members.sort();
        for &(_, i) in members.iter().take(per_domain) {
            held[i] = true;
        }
    }
    let pool = (0..docs.len()).filter(|&i| !held[i]).collect();
    let heldout = (0..docs.len()).filter(|&i| held[i]).collect();
    (pool, heldout)
}

/// Fields that name the article (or source) a reference document was cut from, tried in order.
pub const GROUP_FIELDS: [&str; 4] = ["article", "title", "source", "url"];

/// Contiguous id ranges a reference without a group field is cut into (see [`split_reference`]).
pub const REFERENCE_UNITS: usize = 8;

/// Splits a reference set into (target, evaluation) indices, whole articles to one side.
///
/// The unit of the split is the article: documents that share a value of the first field of
/// [`GROUP_FIELDS`] that every document has. Without such a field, documents cut from one article
/// are assumed to be contiguous in id order (ids ordered by their trailing number, else as given),
/// and the units are [`REFERENCE_UNITS`] contiguous ranges of equal size, so at most
/// `REFERENCE_UNITS − 1` articles (those cut by a range boundary) can have documents on both
/// sides. Units are ranked by `hash(seed, first id of the unit)`; the first ⌈units / 2⌉ form the
/// target half (given to the selector), the rest the evaluation half (used only to measure loss).
pub fn split_reference(docs: &[Document], seed: u64) -> (Vec<usize>, Vec<usize>) {
    let field = GROUP_FIELDS.iter().find(|f| !docs.is_empty() && docs.iter().all(|d| d.field(f).is_some()));
    let units: Vec<Vec<usize>> = match field {
        Some(f) => {
            let mut by: BTreeMap<String, Vec<usize>> = BTreeMap::new();
            for (i, d) in docs.iter().enumerate() {
                by.entry(d.field(f).unwrap_or_default()).or_default().push(i);
            }
            by.into_values().collect()
        }
        None => {
            let number = |id: &str| -> Option<u64> {
                let digits: String = id.chars().rev().take_while(char::is_ascii_digit).collect();
                digits.chars().rev().collect::<String>().parse().ok()
            };
            let mut order: Vec<usize> = (0..docs.len()).collect();
            if docs.iter().all(|d| number(&d.id).is_some()) {
                order.sort_by_key(|&i| (number(&docs[i].id), i));
            }
            let n = order.len();
            let units = REFERENCE_UNITS.min(n).max(1);
            (0..units).map(|u| order[u * n / units..(u + 1) * n / units].to_vec()).collect()
        }
    };
    let mut ranked: Vec<(u64, &Vec<usize>)> = units.iter().map(|u| (id_hash(seed, &docs[u[0]].id), u)).collect();
    ranked.sort();
    let half = ranked.len().div_ceil(2);
    let collect = |part: &[(u64, &Vec<usize>)]| {
        let mut v: Vec<usize> = part.iter().flat_map(|(_, u)| u.iter().copied()).collect();
        v.sort();
        v
    };
    (collect(&ranked[..half]), collect(&ranked[half..]))
}

/// Files of a reference split: the target half and the evaluation half (original records).
pub const REFERENCE_TARGET: &str = "target.jsonl";
pub const REFERENCE_EVAL: &str = "eval.jsonl";

/// Splits a reference set with [`split_reference`] and writes `dir/target.jsonl` and
/// `dir/eval.jsonl`. Returns (target, evaluation) sizes.
pub fn write_reference_split(docs: &[Document], seed: u64, dir: &std::path::Path) -> Result<(usize, usize), ModelError> {
    let (target, eval) = split_reference(docs, seed);
    write_parts(docs, dir, [(REFERENCE_TARGET, &target), (REFERENCE_EVAL, &eval)])?;
    Ok((target.len(), eval.len()))
}

/// Writes each part (file name, document indices) as `dir/NAME`, the original records one a line.
fn write_parts(docs: &[Document], dir: &std::path::Path, parts: [(&str, &Vec<usize>); 2]) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    for (name, idx) in parts {
        let path = dir.join(name);
        crate::atomic::write_atomic(&path, |w| {
            for &i in idx.iter() {
                writeln!(w, "{}", docs[i].record)?;
            }
            Ok(())
        })
        .map_err(|e| ModelError::io(&path, e))?;
    }
    Ok(())
}

/// Files of a split: the selectable pool, the held-out documents and the evaluation tokenizer.
pub const SPLIT_POOL: &str = "pool.jsonl";
pub const SPLIT_HELDOUT: &str = "heldout.jsonl";
pub const SPLIT_TOKENIZER: &str = "tokenizer.json";

/// Splits `docs` with [`split_heldout`] (domains from `label_field`) and writes `dir/pool.jsonl`
/// and `dir/heldout.jsonl` (the original records) and `dir/tokenizer.json` (a byte-level BPE of
/// `vocab_size` trained on the selectable pool). Returns (pool, held-out) sizes.
pub fn write_split(
    docs: &[Document],
    label_field: &str,
    per_domain: usize,
    seed: u64,
    vocab_size: usize,
    dir: &std::path::Path,
) -> Result<(usize, usize), ModelError> {
    let labels: Vec<Option<String>> = docs.iter().map(|d| d.field(label_field)).collect();
    if docs.is_empty() {
        return Err(ModelError::Config("the corpus has no documents to split".into()));
    }
    if labels.iter().all(Option::is_none) {
        return Err(ModelError::Config(format!(
            "no document has the label field '{label_field}': name the field holding the domains"
        )));
    }
    let (pool, held) = split_heldout(docs, &labels, per_domain, seed);
    if pool.is_empty() {
        return Err(ModelError::Config(format!(
            "all {} documents would be held out ({per_domain} per '{label_field}' value): nothing is left to select from; hold out fewer",
            docs.len()
        )));
    }
    write_parts(docs, dir, [(SPLIT_POOL, &pool), (SPLIT_HELDOUT, &held)])?;
    let texts: Vec<String> = pool.iter().map(|&i| docs[i].text.clone()).collect();
    let tok = crate::model::train::train_bpe(&texts, vocab_size)?;
    let json = tok.to_string(true).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    let path = dir.join(SPLIT_TOKENIZER);
    crate::atomic::write_string_atomic(&path, &json).map_err(|e| ModelError::io(&path, e))?;
    Ok((pool.len(), held.len()))
}

/// What the trained model scores on each evaluation set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalResult {
    /// Mean next-token loss on the reference set (nats/token).
    pub reference_loss: f64,
    /// Per pool domain: mean next-token loss on its held-out documents.
    pub heldout_loss: BTreeMap<String, f64>,
    /// Mean over domains of `heldout_loss`.
    pub heldout_mean: f64,
    /// Tokens in the selection (eval tokenizer).
    pub selection_tokens: usize,
    /// Tokens trained on (steps × batch × context; the selection repeats if it is smaller).
    pub tokens_trained: usize,
    pub parameters: usize,
    pub seconds: f64,
}

/// Windows an evaluation set is measured on at most: 1,024 × 257 tokens, enough for the whole
/// evaluation half of the wiki reference (≈ 580 windows) and every domain's held-out documents.
pub const EVAL_MAX_WINDOWS: usize = 1024;

/// Evaluation windows of a document set: each document's tokens (plus the end-of-text token) cut
/// into consecutive windows of `context + 1`, at most `max_windows` in all.
fn windows(docs: &[Vec<u32>], eos: u32, context: usize, max_windows: usize) -> Vec<Vec<u32>> {
    let s = stream(docs, eos);
    s.chunks(context + 1).filter(|w| w.len() >= 2).take(max_windows).map(<[u32]>::to_vec).collect()
}

/// Trains the evaluation model on `selection` (texts) with `tokenizer` and measures the losses.
/// `heldout` pairs a domain with a text. `seed` sets the initial weights and the batches.
pub fn evaluate(
    selection: &[String],
    tokenizer: &Tokenizer,
    reference: &[String],
    heldout: &[(String, String)],
    params: &ProxyParams,
    seed: u64,
) -> Result<EvalResult, ModelError> {
    let mut all = evaluate_many(selection, tokenizer, &[reference], heldout, params, seed)?;
    Ok(all.remove(0))
}

/// [`evaluate`] with one trained model measured on several reference sets: one result per
/// reference, in order (the held-out losses are shared). The model is the same whichever
/// reference it is measured on, so a selection that does not depend on the reference is trained once.
pub fn evaluate_many(
    selection: &[String],
    tokenizer: &Tokenizer,
    references: &[&[String]],
    heldout: &[(String, String)],
    params: &ProxyParams,
    seed: u64,
) -> Result<Vec<EvalResult>, ModelError> {
    let started = Instant::now();
    let params = ProxyParams { seed, ..params.clone() };
    params.validate()?;
    // An empty set has no loss: a mean over nothing would print 0.0 (or −0.0) and look measured.
    if selection.is_empty() {
        return Err(ModelError::Config("the selection has no documents to train on".into()));
    }
    if let Some(i) = references.iter().position(|r| r.is_empty()) {
        return Err(ModelError::Config(format!("reference set {} of {} has no documents", i + 1, references.len())));
    }
    if heldout.is_empty() {
        return Err(ModelError::Config("the held-out set has no documents".into()));
    }
    let eos = tokenizer.token_to_id(EOS).unwrap_or(0);
    let train = stream(&tokenize(tokenizer, selection)?, eos);
    let mut config = LlamaConfig::small(
        tokenizer.get_vocab_size(true),
        params.width,
        params.layers,
        params.heads,
        params.context,
    );
    config.eos_token_id = Some(eos);
    let model = LlamaModel::random(config, DType::F32, &Device::Cpu, seed)?;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0xe7a1);
    optimise(&model, &train, &params, &mut rng, |_, _, _| Ok(true))?;

    let loss_of = |texts: Vec<String>| -> Result<f64, ModelError> {
        let w = windows(&tokenize(tokenizer, &texts)?, eos, params.context, EVAL_MAX_WINDOWS);
        let refs: Vec<&[u32]> = w.iter().map(Vec::as_slice).collect();
        Ok(eval_loss(&model, &refs, params.context)?)
    };
    let reference_losses = references.iter().map(|r| loss_of(r.to_vec())).collect::<Result<Vec<f64>, _>>()?;
    let mut by_domain: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (d, t) in heldout {
        by_domain.entry(d.clone()).or_default().push(t.clone());
    }
    let mut heldout_loss = BTreeMap::new();
    for (d, texts) in by_domain {
        heldout_loss.insert(d, loss_of(texts)?);
    }
    let heldout_mean = heldout_loss.values().sum::<f64>() / heldout_loss.len().max(1) as f64;
    let seconds = started.elapsed().as_secs_f64();
    Ok(reference_losses
        .into_iter()
        .map(|reference_loss| EvalResult {
            reference_loss,
            heldout_loss: heldout_loss.clone(),
            heldout_mean,
            selection_tokens: train.len(),
            tokens_trained: params.steps * params.batch_size * params.context,
            parameters: model.num_parameters(),
            seconds,
        })
        .collect())
}

/// Diversity and quality of a selection, from its `selected.jsonl` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SelectionStats {
    pub documents: usize,
    /// Entropy of the cluster distribution over ln k (k clusters in the run): 0 = one cluster,
    /// 1 = evenly spread over all of them.
    pub cluster_entropy: f64,
    pub clusters_touched: usize,
    /// Documents per value of the label field.
    pub domains: BTreeMap<String, usize>,
    /// Mean standardised influence score of the selected documents that were scored.
    pub mean_score: Option<f64>,
    /// Selected documents that were scored.
    pub scored: usize,
}

/// Writes one evaluation's JSON (`{"eval", "selection", "seed", "path"}`) atomically.
pub fn write_result(
    out: &Path,
    result: &EvalResult,
    stats: &SelectionStats,
    seed: u64,
    selection: &Path,
) -> Result<(), crate::path_io::PathIoError> {
    let json = serde_json::json!({"eval": result, "selection": stats, "seed": seed, "path": selection});
    crate::atomic::write_string_atomic(out, &serde_json::to_string_pretty(&json).expect("plain data"))
        .map_err(crate::path_io::at(out))
}

/// Statistics of selected records (`quad.cluster`, `quad.score`, and `label_field`). A record in
/// a cluster `≥ k` is an error: the entropy over ln k would exceed 1 (k is not the run's).
pub fn selection_stats(records: &[serde_json::Value], k: usize, label_field: &str) -> Result<SelectionStats, String> {
    let mut per_cluster: BTreeMap<u64, usize> = BTreeMap::new();
    let mut domains = BTreeMap::new();
    let (mut sum, mut scored) = (0.0, 0usize);
    for r in records {
        if let Some(c) = r["quad"]["cluster"].as_u64() {
            *per_cluster.entry(c).or_default() += 1;
        }
        let d = r[label_field].as_str().unwrap_or("(none)").to_string();
        *domains.entry(d).or_default() += 1;
        if let Some(s) = r["quad"]["score"].as_f64() {
            sum += s;
            scored += 1;
        }
    }
    if let Some((&c, _)) = per_cluster.range(k as u64..).next() {
        return Err(format!("a selected document is in cluster {c}, but k = {k}: give the k of the run that selected it"));
    }
    let n: usize = per_cluster.values().sum();
    let h: f64 = per_cluster
        .values()
        .map(|&c| {
            let p = c as f64 / n as f64;
            -p * p.ln()
        })
        .sum();
    Ok(SelectionStats {
        documents: records.len(),
        cluster_entropy: if k > 1 { h / (k as f64).ln() } else { 0.0 },
        clusters_touched: per_cluster.len(),
        domains,
        mean_score: (scored > 0).then(|| sum / scored as f64),
        scored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::Location;

    fn doc(id: &str) -> Document {
        Document {
            id: id.into(),
            text: "x".into(),
            record: "{}".into(),
            location: Location {
                file: "f".into(),
                line: 1,
            },
        }
    }

    #[test]
    fn heldout_split_is_deterministic_per_domain_and_disjoint() {
        let docs: Vec<Document> = (0..40).map(|i| doc(&format!("d{i}"))).collect();
        let labels: Vec<Option<String>> = (0..40).map(|i| Some(if i % 2 == 0 { "a" } else { "b" }.into())).collect();
        let (pool, held) = split_heldout(&docs, &labels, 3, 7);
        assert_eq!(held.len(), 6);
        assert_eq!(pool.len() + held.len(), 40);
        assert!(pool.iter().all(|i| !held.contains(i)));
        assert_eq!(held.iter().filter(|&&i| i % 2 == 0).count(), 3);
        assert_eq!(split_heldout(&docs, &labels, 3, 7), (pool, held.clone()));
        assert_ne!(split_heldout(&docs, &labels, 3, 8).1, held);
    }

    fn doc_with(id: &str, record: &str) -> Document {
        Document {
            record: record.into(),
            ..doc(id)
        }
    }

    #[test]
    fn reference_split_keeps_contiguous_ranges_together() {
        // Ids out of order in the file: ranges follow the trailing number, not the line.
        let mut docs: Vec<Document> = (0..40).map(|i| doc(&format!("ref-{i}"))).collect();
        docs.reverse();
        let (target, eval) = split_reference(&docs, 0);
        assert_eq!(target.len() + eval.len(), 40);
        assert_eq!(target.len(), 20, "8 units of 5, 4 each side");
        let num = |i: usize| docs[i].id[4..].parse::<usize>().unwrap();
        // Each unit (ids 5u..5u+5) lies wholly on one side.
        for u in 0..8 {
            let in_target: Vec<bool> = (5 * u..5 * u + 5).map(|n| target.iter().any(|&i| num(i) == n)).collect();
            assert!(in_target.iter().all(|&t| t == in_target[0]), "unit {u} was cut: {in_target:?}");
        }
        assert_eq!(split_reference(&docs, 0), (target.clone(), eval));
        assert_ne!(split_reference(&docs, 1).0, target, "the seed changes the split");
    }

    #[test]
    fn reference_split_groups_by_article_field() {
        let docs: Vec<Document> = (0..30)
            .map(|i| doc_with(&format!("x{i}"), &format!(r#"{{"text":"t","title":"a{}"}}"#, i % 7)))
            .collect();
        let (target, eval) = split_reference(&docs, 3);
        assert_eq!(target.len() + eval.len(), 30);
        assert!(!target.is_empty() && !eval.is_empty());
        for &t in &target {
            for &e in &eval {
                assert_ne!(t % 7, e % 7, "article a{} is on both sides", t % 7);
            }
        }
    }

    #[test]
    fn eval_steps_cover_the_budget() {
        for budget in [1_000, 200_000, 400_000, 1_600_000] {
            let p = eval_params_for_budget(budget);
            assert!(p.steps * p.batch_size * p.context >= budget);
        }
        assert_eq!(eval_params_for_budget(400_000).steps, 245);
    }

    #[test]
    fn cluster_entropy_is_normalised() {
        let rec = |c: u64| serde_json::json!({"domain": "a", "quad": {"cluster": c, "score": 1.0}});
        let even: Vec<_> = (0..8).map(|i| rec(i % 4)).collect();
        let s = selection_stats(&even, 4, "domain").unwrap();
        assert!((s.cluster_entropy - 1.0).abs() < 1e-12);
        assert_eq!(s.clusters_touched, 4);
        let one: Vec<_> = (0..8).map(|_| rec(2)).collect();
        assert_eq!(selection_stats(&one, 4, "domain").unwrap().cluster_entropy, 0.0);
        // k below the clusters present: refused, not an entropy above 1.
        assert!(selection_stats(&even, 2, "domain").unwrap_err().contains("cluster 2, but k = 2"));
        assert_eq!(s.mean_score, Some(1.0));
        assert_eq!(s.domains["a"], 8);
    }
}
