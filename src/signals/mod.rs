//! Cheap document-level signals of how much a document looks like the reference: what a
//! practitioner reaches for before influence functions, and the selectors built on them
//! (`--policy dsir | classifier | perplexity`, the bandit's signal policies).
//!
//! - [`Signal::Dsir`]: DSIR's log importance weight ([`dsir`]), a bag of hashed unigrams and
//!   bigrams ([`ngrams`]) of the reference against one of the pool.
//! - [`Signal::Classifier`]: the logit of a logistic-regression quality classifier
//!   ([`logistic`]) on the same features, the reference as positives and a seeded sample of the
//!   pool as negatives (the fastText / DCLM practice).
//! - [`Signal::Perplexity`]: minus the proxy's mean next-token loss on the document's first
//!   `max_tokens` (a forward pass, no backward; CCNet's and the Quad paper's PPL baseline), so
//!   that for every signal higher means "take first".
//!
//! Every signal is one number per document of the pool, finite or refused. Settings are the
//! `[signals]` table of a run's TOML ([`SignalsConfig`]), checked once into
//! [`ValidSignalsConfig`].

pub mod dsir;
pub mod logistic;
pub mod ngrams;

use std::fmt;
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use self::dsir::Dsir;
use self::logistic::{Logistic, SparseRow};
use self::ngrams::HashedNgrams;

/// Errors of the signal stage.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("invalid [signals] settings: {0}")]
    Params(String),
    #[error("{0}")]
    Input(String),
}

/// Which signal a policy takes documents by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Signal {
    Dsir,
    Classifier,
    Perplexity,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Dsir => "dsir",
            Signal::Classifier => "classifier",
            Signal::Perplexity => "perplexity",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The `[signals]` table as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SignalsConfig {
    /// Hash buckets of the unigram+bigram features (DSIR and the classifier): DSIR's 10,000.
    pub buckets: u32,
    /// Pool documents the classifier takes as negatives. None (the default): four times the
    /// reference's documents (the DCLM-style ratio) and at least 2,000 (so that a small
    /// reference still meets a sample of every region of the pool: about 60 documents a cluster
    /// at k = 32), at most the pool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub negatives: Option<usize>,
}

impl Default for SignalsConfig {
    fn default() -> Self {
        Self {
            buckets: HashedNgrams::DEFAULT_BUCKETS,
            negatives: None,
        }
    }
}

/// [`SignalsConfig`] checked: the featurizer and the negative sample's size rule.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSignalsConfig {
    pub ngrams: HashedNgrams,
    negatives: Option<usize>,
}

impl SignalsConfig {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    pub fn check(&self) -> Result<ValidSignalsConfig, SignalError> {
        let ngrams = HashedNgrams::new(self.buckets).map_err(SignalError::Params)?;
        if self.negatives == Some(0) {
            return Err(SignalError::Params("negatives = 0: the classifier needs pool documents as negatives".into()));
        }
        Ok(ValidSignalsConfig { ngrams, negatives: self.negatives })
    }
}

/// The fewest negatives the default sample takes.
pub const MIN_NEGATIVES: usize = 2_000;

impl ValidSignalsConfig {
    /// Negatives for a reference of `positives` documents and a pool of `pool` documents.
    pub fn negatives(&self, positives: usize, pool: usize) -> usize {
        self.negatives.unwrap_or_else(|| (4 * positives).max(MIN_NEGATIVES)).min(pool)
    }
}

/// What computing a signal took and what it fitted (written into the manifest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalReport {
    pub signal: Signal,
    /// Pool documents given a value.
    pub documents: usize,
    /// Tokens the proxy read in forward passes (perplexity; 0 for the n-gram signals).
    pub forward_tokens: usize,
    /// Seconds of this run (0 when the values came from the cache).
    pub seconds: f64,
    pub cached: bool,
    /// The classifier's sample and fit: negatives, the λ chosen, each λ's cross-validated loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier: Option<ClassifierFit>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierFit {
    pub positives: usize,
    pub negatives: usize,
    pub lambda: f64,
    pub cv_losses: Vec<(f64, f64)>,
    pub solver_steps: usize,
}

/// Documents read from the pool at a time.
const CHUNK: usize = 1024;

/// Calls `each(first, counts)` for every chunk of the pool's `n` documents, featurized in
/// parallel; `read` gives the texts of pool rows.
fn for_each_counts<E: fmt::Display>(
    n: usize,
    ngrams: HashedNgrams,
    read: &mut impl FnMut(&[usize]) -> Result<Vec<String>, E>,
    mut each: impl FnMut(usize, Vec<ngrams::Counts>),
) -> Result<(), SignalError> {
    for first in (0..n).step_by(CHUNK) {
        let idx: Vec<usize> = (first..(first + CHUNK).min(n)).collect();
        let texts = read(&idx).map_err(|e| SignalError::Input(e.to_string()))?;
        if texts.len() != idx.len() {
            return Err(SignalError::Input(format!("{} texts read for {} documents", texts.len(), idx.len())));
        }
        each(first, texts.par_iter().map(|t| ngrams.counts(t)).collect());
    }
    Ok(())
}

/// `value(counts)` of each of the pool's `n` documents, in order (one pass over the pool).
fn map_counts<E: fmt::Display>(
    n: usize,
    ngrams: HashedNgrams,
    read: &mut impl FnMut(&[usize]) -> Result<Vec<String>, E>,
    value: impl Fn(&ngrams::Counts) -> f64,
) -> Result<Vec<f64>, SignalError> {
    let mut out = vec![0.0; n];
    for_each_counts(n, ngrams, read, |first, counts| {
        for (k, c) in counts.iter().enumerate() {
            out[first + k] = value(c);
        }
    })?;
    Ok(out)
}

impl SignalReport {
    /// The report of an n-gram signal (no forward passes, no cache) over `documents`.
    fn ngram(signal: Signal, documents: usize, clock: Instant, classifier: Option<ClassifierFit>) -> Self {
        Self { signal, documents, forward_tokens: 0, seconds: clock.elapsed().as_secs_f64(), cached: false, classifier }
    }
}

/// Dense bucket totals of some texts.
fn totals(ngrams: HashedNgrams, texts: &[String]) -> Vec<u64> {
    let mut total = vec![0u64; ngrams.buckets() as usize];
    for c in texts.par_iter().map(|t| ngrams.counts(t)).collect::<Vec<_>>() {
        HashedNgrams::accumulate(&mut total, &c);
    }
    total
}

/// DSIR's log importance weight of each of the pool's `n` documents: the target model from
/// `reference`, the raw model from the whole pool (two passes over it).
pub fn dsir_weights<E: fmt::Display>(
    cfg: &ValidSignalsConfig,
    n: usize,
    reference: &[String],
    mut read: impl FnMut(&[usize]) -> Result<Vec<String>, E>,
) -> Result<(Vec<f64>, SignalReport), SignalError> {
    let clock = Instant::now();
    let target = totals(cfg.ngrams, reference);
    let mut raw = vec![0u64; cfg.ngrams.buckets() as usize];
    for_each_counts(n, cfg.ngrams, &mut read, |_, counts| {
        counts.iter().for_each(|c| HashedNgrams::accumulate(&mut raw, c));
    })?;
    let model = Dsir::fit(&target, &raw);
    let out = map_counts(n, cfg.ngrams, &mut read, |c| model.log_weight(c))?;
    let report = SignalReport::ngram(Signal::Dsir, n, clock, None);
    finite(Signal::Dsir, out).map(|v| (v, report))
}

/// The classifier's logit of each of the pool's `n` documents: fitted on `reference` (positives)
/// against a seeded sample of the pool (negatives, [`ValidSignalsConfig::negatives`]), λ by
/// cross-validation ([`Logistic::fit_cv`]).
pub fn classifier_logits<E: fmt::Display>(
    cfg: &ValidSignalsConfig,
    n: usize,
    reference: &[String],
    seed: u64,
    mut read: impl FnMut(&[usize]) -> Result<Vec<String>, E>,
) -> Result<(Vec<f64>, SignalReport), SignalError> {
    let clock = Instant::now();
    if reference.is_empty() || n == 0 {
        return Err(SignalError::Input("the classifier needs a reference document and a pool document".into()));
    }
    let m = cfg.negatives(reference.len(), n);
    let mut sample: Vec<usize> = (0..n).collect();
    sample.shuffle(&mut Xoshiro256PlusPlus::seed_from_u64(seed ^ 0xc1a5_51f1));
    sample.truncate(m);
    sample.sort_unstable();
    let negatives = read(&sample).map_err(|e| SignalError::Input(e.to_string()))?;
    let row = |t: &String| logistic::tf_row(&cfg.ngrams.counts(t));
    let mut rows: Vec<SparseRow> = reference.par_iter().map(row).collect();
    rows.extend(negatives.par_iter().map(row).collect::<Vec<_>>());
    let labels: Vec<bool> = (0..rows.len()).map(|i| i < reference.len()).collect();
    let dim = cfg.ngrams.buckets() as usize;
    let (fit, cv_losses) = Logistic::fit_cv(&rows, &labels, dim, &logistic::LAMBDAS, logistic::FOLDS, seed);
    let out = map_counts(n, cfg.ngrams, &mut read, |c| fit.logit(&logistic::tf_row(c)))?;
    let fitted = ClassifierFit { positives: reference.len(), negatives: m, lambda: fit.lambda, cv_losses, solver_steps: fit.steps };
    let report = SignalReport::ngram(Signal::Classifier, n, clock, Some(fitted));
    finite(Signal::Classifier, out).map(|v| (v, report))
}

/// Feature rows (documents × signals) of signal columns, each z-scored over the documents:
/// `(v − mean) / SD` (population SD; a constant column gives zeros), so that a ridge fit's
/// penalty weighs every signal alike whatever its unit.
pub fn zscored_rows(columns: &[&[f64]]) -> ndarray::Array2<f32> {
    let n = columns.first().map_or(0, |c| c.len());
    let mut rows = ndarray::Array2::<f32>::zeros((n, columns.len()));
    for (j, c) in columns.iter().enumerate() {
        let mean = c.iter().sum::<f64>() / n.max(1) as f64;
        let sd = (c.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n.max(1) as f64).sqrt();
        for (i, v) in c.iter().enumerate() {
            rows[[i, j]] = if sd > 0.0 { ((v - mean) / sd) as f32 } else { 0.0 };
        }
    }
    rows
}

/// The values, or an error naming the first that is not finite.
pub fn finite(signal: Signal, values: Vec<f64>) -> Result<Vec<f64>, SignalError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(d) => Err(SignalError::Input(format!("the {signal} signal of pool document {d} is {}", values[d]))),
        None => Ok(values),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Vec<String> {
        let mut p = Vec::new();
        for i in 0..40 {
            p.push(format!("the kernel module {i} loads the driver and calls the scheduler"));
            // As many words as the other: DSIR's log weight sums over n-grams, so length counts.
            p.push(format!("a river flows {i} miles through the valley to the sea"));
        }
        p
    }

    fn read(p: &[String]) -> impl FnMut(&[usize]) -> Result<Vec<String>, String> + '_ {
        move |idx| Ok(idx.iter().map(|&i| p[i].clone()).collect())
    }

    #[test]
    fn zscored_rows_have_mean_zero_and_unit_spread_per_column() {
        let a = [1.0, 2.0, 3.0, 6.0];
        let b = [5.0, 5.0, 5.0, 5.0];
        let rows = zscored_rows(&[&a, &b]);
        assert_eq!(rows.dim(), (4, 2));
        let col: Vec<f64> = rows.column(0).iter().map(|&v| f64::from(v)).collect();
        let mean = col.iter().sum::<f64>() / 4.0;
        let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 4.0;
        assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-6, "{mean} {var}");
        // Direct: (1 − 3) / sqrt(3.5).
        assert!((col[0] + 2.0 / 3.5f64.sqrt()).abs() < 1e-6);
        assert!(rows.column(1).iter().all(|&v| v == 0.0));
    }

    #[test]
    fn both_ngram_signals_rank_the_reference_like_documents_first() {
        let p = pool();
        let reference = vec!["the river and the valley".to_string(), "the sea in spring flows".to_string()];
        let cfg = SignalsConfig::default().check().unwrap();
        let (w, report) = dsir_weights(&cfg, p.len(), &reference, read(&p)).unwrap();
        assert_eq!(report.documents, p.len());
        let (l, report) = classifier_logits(&cfg, p.len(), &reference, 7, read(&p)).unwrap();
        let fit = report.classifier.unwrap();
        assert_eq!((fit.positives, fit.negatives), (2, p.len()));
        for s in [&w, &l] {
            for i in (0..p.len()).step_by(2) {
                assert!(s[i + 1] > s[i], "{i}: {} vs {}", s[i + 1], s[i]);
            }
        }
    }

    #[test]
    fn the_negative_sample_size_and_settings_are_checked() {
        let cfg = SignalsConfig::default().check().unwrap();
        assert_eq!(cfg.negatives(290, 17_991), 2_000);
        assert_eq!(cfg.negatives(1_000, 17_991), 4_000);
        assert_eq!(cfg.negatives(1_000, 3_000), 3_000);
        let given = SignalsConfig { negatives: Some(50), ..Default::default() }.check().unwrap();
        assert_eq!(given.negatives(290, 17_991), 50);
        assert!(SignalsConfig { negatives: Some(0), ..Default::default() }.check().is_err());
        assert!(SignalsConfig { buckets: 0, ..Default::default() }.check().is_err());
        assert!(finite(Signal::Dsir, vec![0.0, f64::NAN]).unwrap_err().to_string().contains("document 1"));
    }
}
