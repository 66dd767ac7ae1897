//! The estimator study: how well does each [`Estimator`] predict an unscored document's
//! standardised influence score from the documents that were scored?
//!
//! On full-pool scores (a `topk` run's score cache), for each feature set (an embedding cache and
//! the clustering made on it) and each reference: draw the scored set as Quad draws it (the
//! default bandit's scoring phase — calibration, exploration pass, refinement rounds — run with
//! the cached scores as its oracle) and, separately, as a uniform random sample of the same size;
//! fit every estimator on it and measure, on the unscored documents, Spearman's ρ, R², and the mean
//! true z of each estimator's top 10% and top 30%. z is standardised by the pool's median and
//! standard deviation. Writes a Markdown table (experiments/README.md, "The estimator study").
//!
//!     cargo run --release --example estimators -- \
//!         --features hashing=.quad-cache/embed-KEY:.quad-cache/cluster-KEY.json \
//!         --scores wiki=.quad-cache/scores-KEY.jsonl --scores abstracts=.quad-cache/scores-KEY.jsonl \
//!         [--pool POOL --reference wiki=TARGET --reference abstracts=TARGET --losses FILE] \
//!         [--draws 5] [--out experiments/results/estimators/study.md]
//!
//! With `--pool` and `--reference`, the practitioners' signals (issue 33: DSIR log weight,
//! classifier logit, and with `--losses` the proxy loss) are also tried: ridge on them, the
//! cluster mean plus a ridge fit of its residual on them, and each signal alone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use ndarray::Array2;
use quad_select::bandit::estimate::{Estimator, Sample};
use quad_select::bandit::{Bandit, BanditParams, Budget, Problem};
use quad_select::influence::validate::spearman;
use quad_select::npy::NpyRows;
use rand::seq::SliceRandom;
use rand::SeedableRng;

#[derive(Parser)]
struct Args {
    /// NAME=EMBED_DIR:CLUSTER_FILE (an `embed-*` cache folder and the `cluster-*.json` fitted on
    /// it); repeatable.
    #[arg(long, required = true)]
    features: Vec<String>,
    /// NAME=SCORES_FILE (a `scores-*.jsonl` cache file holding every pool document); repeatable.
    #[arg(long, required = true)]
    scores: Vec<String>,
    /// Draws of each kind (seeds 0, 1, …).
    #[arg(long, default_value_t = 5)]
    draws: u64,
    /// Where the Markdown table goes (also printed).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The pool (JSONL with the ids of the features): with `--reference`, every document's
    /// practitioners' signals (DSIR log weight, classifier logit) are computed and tried as
    /// features of the estimate (`quad_select::signals`, the `dsir` and `classifier` policies').
    #[arg(long)]
    pool: Option<PathBuf>,
    /// NAME=TARGET_FILE: the reference half each `--scores NAME` was scored against; repeatable.
    #[arg(long)]
    reference: Vec<String>,
    /// The proxy's loss of every pool document (`["id", loss]` a line; `full_scores`' losses.jsonl),
    /// the third signal.
    #[arg(long)]
    losses: Option<PathBuf>,
}

/// Every document's signals for one reference (pool order of the features), z-scored over the
/// pool, with their names: the columns of the signal estimators' feature rows.
struct Signals {
    names: Vec<&'static str>,
    columns: Vec<Vec<f64>>,
}

impl Signals {
    fn compute(f: &FeatureSet, texts: &[String], reference: &[String], losses: Option<&HashMap<String, f64>>) -> Result<Self> {
        let cfg = quad_select::signals::SignalsConfig::default().check()?;
        let read = |idx: &[usize]| -> Result<Vec<String>, String> { Ok(idx.iter().map(|&i| texts[i].clone()).collect()) };
        let (dsir, _) = quad_select::signals::dsir_weights(&cfg, texts.len(), reference, read)?;
        let (logit, fit) = quad_select::signals::classifier_logits(&cfg, texts.len(), reference, 0, read)?;
        eprintln!("classifier: {:?}", fit.classifier);
        let mut out = Signals { names: vec!["DSIR log weight", "classifier logit"], columns: vec![dsir, logit] };
        if let Some(l) = losses {
            out.names.push("proxy loss");
            out.columns.push(f.ids.iter().map(|id| l.get(id).copied().with_context(|| format!("no loss for {id}"))).collect::<Result<_>>()?);
        }
        Ok(out)
    }

    /// The z-scored columns as feature rows (documents × signals), as the pipeline forms them.
    fn rows(&self) -> Array2<f32> {
        let columns: Vec<&[f64]> = self.columns.iter().map(Vec::as_slice).collect();
        quad_select::signals::zscored_rows(&columns)
    }
}

fn split_named(s: &str) -> Result<(String, String)> {
    let (n, v) = s.split_once('=').with_context(|| format!("{s}: expected NAME=VALUE"))?;
    Ok((n.to_string(), v.to_string()))
}

struct FeatureSet {
    name: String,
    ids: Vec<String>,
    rows: Array2<f32>,
    cluster: Vec<usize>,
    distances: Vec<Vec<f64>>,
}

fn load_features(spec: &str) -> Result<FeatureSet> {
    let (name, paths) = split_named(spec)?;
    let (embed, clusters) = paths.split_once(':').with_context(|| format!("{spec}: expected EMBED_DIR:CLUSTER_FILE"))?;
    let embed = Path::new(embed);
    let ids: Vec<String> = std::fs::read_to_string(embed.join("ids.jsonl"))?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("ids.jsonl")?;
    let npy = NpyRows::open(&embed.join("embeddings.npy"))?;
    let rows = npy.read_rows(0..npy.rows())?;
    let (cluster, distances): (Vec<usize>, Vec<Vec<f64>>) =
        serde_json::from_str(&std::fs::read_to_string(clusters)?).with_context(|| clusters.to_string())?;
    if rows.nrows() != ids.len() || cluster.len() != ids.len() {
        bail!("{name}: {} rows, {} ids, {} cluster labels", rows.nrows(), ids.len(), cluster.len());
    }
    Ok(FeatureSet { name, ids, rows, cluster, distances })
}

fn load_scores(path: &str) -> Result<HashMap<String, f64>> {
    let mut out = HashMap::new();
    for line in std::fs::read_to_string(path).with_context(|| path.to_string())?.lines() {
        if let Ok((id, s)) = serde_json::from_str::<(String, f64)>(line) {
            out.insert(id, s);
        }
    }
    Ok(out)
}

/// Quad's scored set: the default bandit's scoring phase on the cached scores.
fn quad_draw(f: &FeatureSet, raw: &[f64], seed: u64) -> Result<Vec<usize>> {
    let problem = Problem {
        cluster: f.cluster.clone(),
        tokens: vec![1; raw.len()],
        distances: f.distances.clone(),
        budget: Budget::Documents(raw.len() / 4),
    };
    let params = BanditParams { seed, ..BanditParams::default() }.check()?;
    let mut bandit = Bandit::new(params, problem)?;
    let allowance = bandit.allowance();
    let mut oracle = |idx: &[usize]| -> Result<Vec<f64>, String> { Ok(idx.iter().map(|&d| raw[d]).collect()) };
    while bandit.state().documents_scored < allowance {
        if bandit.step(&mut oracle)?.is_none() {
            break;
        }
    }
    Ok(bandit.state().scores.iter().enumerate().filter_map(|(d, s)| s.map(|_| d)).collect())
}

fn uniform_draw(n: usize, size: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x5eed_0f_u64));
    order.truncate(size);
    order
}

/// Mean true z of the top `frac` of documents by `pred`.
fn top_mean(pred: &[f64], truth: &[f64], frac: f64) -> f64 {
    let mut idx: Vec<usize> = (0..pred.len()).collect();
    idx.sort_by(|&a, &b| pred[b].total_cmp(&pred[a]).then(a.cmp(&b)));
    let n = ((pred.len() as f64 * frac).round() as usize).max(1);
    idx[..n].iter().map(|&i| truth[i]).sum::<f64>() / n as f64
}

#[derive(Default, Clone)]
struct Metrics {
    spearman: Vec<f64>,
    r2: Vec<f64>,
    top10: Vec<f64>,
    top30: Vec<f64>,
}

impl Metrics {
    /// Adds one draw: `all` is the prediction for every document, measured on `rest` (the
    /// unscored) against `truth`; R² only for a fitted estimate (a raw signal has no scale).
    fn measure(&mut self, all: &[f64], rest: &[usize], truth: &[f64], fitted: bool) {
        let pred: Vec<f64> = rest.iter().map(|&d| all[d]).collect();
        self.spearman.push(spearman(&pred, truth));
        if fitted {
            let tm = truth.iter().sum::<f64>() / truth.len() as f64;
            let sse: f64 = pred.iter().zip(truth).map(|(p, t)| (p - t).powi(2)).sum();
            let sst: f64 = truth.iter().map(|t| (t - tm).powi(2)).sum();
            self.r2.push(1.0 - sse / sst);
        }
        self.top10.push(top_mean(&pred, truth, 0.1));
        self.top30.push(top_mean(&pred, truth, 0.3));
    }
}

fn mean_sd(v: &[f64]) -> String {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let sd = if v.len() > 1 { (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() } else { 0.0 };
    format!("{m:.3} ± {sd:.3}")
}

/// η²: the share of the score variance that lies between clusters.
fn eta_squared(z: &[f64], cluster: &[usize]) -> f64 {
    let k = cluster.iter().max().map_or(0, |m| m + 1);
    let mean = z.iter().sum::<f64>() / z.len() as f64;
    let (mut sum, mut n) = (vec![0.0; k], vec![0usize; k]);
    for (&v, &c) in z.iter().zip(cluster) {
        sum[c] += v;
        n[c] += 1;
    }
    let between: f64 = (0..k).filter(|&c| n[c] > 0).map(|c| n[c] as f64 * (sum[c] / n[c] as f64 - mean).powi(2)).sum();
    let total: f64 = z.iter().map(|v| (v - mean).powi(2)).sum();
    between / total
}

fn main() -> Result<()> {
    quad_select::tune_allocator();
    let args = Args::parse();
    let estimators = [
        Estimator::ClusterMean,
        Estimator::Ridge,
        Estimator::Knn { k: 5 },
        Estimator::Knn { k: 20 },
        Estimator::Knn { k: 50 },
        Estimator::ClusterRidge,
        Estimator::Mlp { hidden: 64, seed: 0 },
    ];
    let pool: Option<(HashMap<String, usize>, Vec<String>)> = match &args.pool {
        Some(p) => {
            let (docs, _) = quad_select::corpus::CorpusReader::read_all(p, quad_select::corpus::CorpusConfig::default())?;
            Some((docs.iter().enumerate().map(|(i, d)| (d.id.clone(), i)).collect(), docs.into_iter().map(|d| d.text).collect()))
        }
        None => None,
    };
    let mut references: HashMap<String, Vec<String>> = HashMap::new();
    for spec in &args.reference {
        let (name, path) = split_named(spec)?;
        let (docs, _) = quad_select::corpus::CorpusReader::read_all(Path::new(&path), quad_select::corpus::CorpusConfig::default())?;
        references.insert(name, docs.into_iter().map(|d| d.text).collect());
    }
    let losses = args.losses.as_ref().map(|p| load_scores(&p.display().to_string())).transpose()?;
    let mut md = String::from(
        "| features | reference | draw | estimator | Spearman | R² | mean true z, top 10% | mean true z, top 30% |\n|---|---|---|---|---|---|---|---|\n",
    );
    let mut notes = Vec::new();
    for fspec in &args.features {
        let f = load_features(fspec)?;
        for sspec in &args.scores {
            let (rname, path) = split_named(sspec)?;
            let by_id = load_scores(&path)?;
            let raw: Vec<f64> = f
                .ids
                .iter()
                .map(|id| by_id.get(id).copied().with_context(|| format!("{rname}: no score for {id}")))
                .collect::<Result<_>>()?;
            let mut sorted = raw.clone();
            sorted.sort_by(f64::total_cmp);
            let median = sorted[sorted.len() / 2];
            let mean = raw.iter().sum::<f64>() / raw.len() as f64;
            let sd = (raw.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (raw.len() - 1) as f64).sqrt();
            let z: Vec<f64> = raw.iter().map(|s| (s - median) / sd).collect();
            let signals = match (&pool, references.get(&rname)) {
                (Some((index, texts)), Some(reference)) => {
                    let ordered: Vec<String> = f
                        .ids
                        .iter()
                        .map(|id| index.get(id).map(|&i| texts[i].clone()).with_context(|| format!("{id} is not in --pool")))
                        .collect::<Result<_>>()?;
                    let sig = Signals::compute(&f, &ordered, reference, losses.as_ref())?;
                    let rows = sig.rows();
                    for (name, col) in sig.names.iter().zip(&sig.columns) {
                        let (m, n) = (col.iter().sum::<f64>() / col.len() as f64, col.len() as f64);
                        let sd = (col.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n).sqrt();
                        notes.push(format!(
                            "{} / {rname}: the {name} has mean {m:.3} and SD {sd:.3} over the pool; its Spearman with z {:.3}",
                            f.name,
                            spearman(col, &z)
                        ));
                    }
                    Some((sig, rows))
                }
                _ => None,
            };
            notes.push(format!("{} / {rname}: η² between the {} clusters {:.3}", f.name, f.distances.len(), eta_squared(&z, &f.cluster)));
            let size = quad_draw(&f, &raw, 0)?.len();
            for kind in ["quad", "uniform"] {
                let mut per: Vec<Metrics> = vec![Metrics::default(); estimators.len()];
                let mut extra: Vec<(String, Metrics)> = Vec::new();
                let mut oracle = Metrics::default();
                for seed in 0..args.draws {
                    let drawn = if kind == "quad" { quad_draw(&f, &raw, seed)? } else { uniform_draw(raw.len(), size, seed) };
                    let scored: Vec<(usize, f64)> = drawn.iter().map(|&d| (d, z[d])).collect();
                    let mut is_scored = vec![false; z.len()];
                    drawn.iter().for_each(|&d| is_scored[d] = true);
                    let rest: Vec<usize> = (0..z.len()).filter(|&d| !is_scored[d]).collect();
                    let truth: Vec<f64> = rest.iter().map(|&d| z[d]).collect();
                    oracle.top10.push(top_mean(&truth, &truth, 0.1));
                    oracle.top30.push(top_mean(&truth, &truth, 0.3));
                    let sample = Sample { features: &f.rows, cluster: &f.cluster, k: f.distances.len(), scored: &scored };
                    for (e, m) in estimators.iter().zip(per.iter_mut()) {
                        m.measure(&e.predict(&sample)?, &rest, &truth, true);
                    }
                    if let Some((sig, rows)) = &signals {
                        let on_signals = Sample { features: rows, ..sample };
                        let mut e = 0;
                        let mut next = |label: String, all: &[f64], fitted: bool| {
                            if extra.len() <= e {
                                extra.push((label, Metrics::default()));
                            }
                            extra[e].1.measure(all, &rest, &truth, fitted);
                            e += 1;
                        };
                        next(format!("ridge on [{}]", sig.names.join(", ")), &Estimator::Ridge.predict(&on_signals)?, true);
                        next(format!("cluster mean + ridge residual on [{}]", sig.names.join(", ")), &Estimator::ClusterRidge.predict(&on_signals)?, true);
                        for (name, col) in sig.names.iter().zip(&sig.columns) {
                            next(format!("{name}, highest first (no fit)"), col, false);
                            let neg: Vec<f64> = col.iter().map(|v| -v).collect();
                            next(format!("{name}, lowest first (no fit)"), &neg, false);
                        }
                    }
                    eprintln!("{} {rname} {kind} draw {seed}: {} scored", f.name, drawn.len());
                }
                let named = estimators.iter().map(|e| e.name()).zip(per.iter()).chain(extra.iter().map(|(n, m)| (n.clone(), m)));
                for (name, m) in named {
                    let r2 = if m.r2.is_empty() { "–".to_string() } else { mean_sd(&m.r2) };
                    md += &format!(
                        "| {} | {rname} | {kind} ({size}) | {name} | {} | {r2} | {} | {} |\n",
                        f.name,
                        mean_sd(&m.spearman),
                        mean_sd(&m.top10),
                        mean_sd(&m.top30)
                    );
                }
                md += &format!(
                    "| {} | {rname} | {kind} ({size}) | *the truly best* | | | {} | {} |\n",
                    f.name,
                    mean_sd(&oracle.top10),
                    mean_sd(&oracle.top30)
                );
            }
        }
    }
    md += &format!("\n{} draws of each kind (seeds 0–{}).\n", args.draws, args.draws.saturating_sub(1));
    for n in notes {
        md += &format!("- {n}\n");
    }
    print!("{md}");
    if let Some(out) = &args.out {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(out, &md)?;
    }
    Ok(())
}
