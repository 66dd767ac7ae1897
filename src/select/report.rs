//! What a selection run returns ([`Selection`], with a typed [`Manifest`]) and the output folder
//! [`Selection::write`] makes of it, each file written atomically: `selected.jsonl` (original
//! records, unchanged, plus a `quad` object), `manifest.json` (parameters, input hashes, counts,
//! timings), `rounds.csv` (one line per round) and `clusters.csv` (one line per cluster).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::cache::StageTiming;
use super::config::SelectConfig;
use super::error::SelectError;
use crate::atomic::write_atomic;
use crate::bandit::{ArmState, BanditState, Budget, RoundLog, StopReason};
use crate::corpus::{DocumentStore, ReadReport};
use crate::path_io::at;

/// One selected document, with where it came from in the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelectedDoc {
    pub id: String,
    /// The input record, byte for byte.
    pub record: String,
    /// Proxy-tokenizer tokens (the budget's unit).
    pub tokens: usize,
    pub cluster: usize,
    /// The round that took it.
    pub round: usize,
    /// Its cluster's reward when taken (none for policies without rewards).
    pub reward: Option<f64>,
    /// Its own influence score, when it was scored.
    pub score: Option<f64>,
}

impl SelectedDoc {
    /// Its line of `selected.jsonl`: the input record with the run's provenance added as a
    /// `"quad"` field.
    pub fn line(&self) -> String {
        annotate(&self.record, &quad_object(self))
    }
}

/// One cluster at the end of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterSummary {
    /// Selectable documents in it.
    pub size: usize,
    pub taken_tokens: usize,
    pub arm: ArmState,
}

/// A file the run read, and its fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputFile {
    pub path: PathBuf,
    pub sha256: String,
    pub read: ReadReport,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inputs {
    pub pool: InputFile,
    pub reference: InputFile,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRef {
    pub path: PathBuf,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FactorsRef {
    pub key: String,
    /// sha256 of `factors.safetensors` (none for policies that do not score).
    pub sha256: Option<String>,
}

/// Document counts of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentCounts {
    pub read: usize,
    pub selectable: usize,
    pub too_short_to_score: usize,
    pub scored: usize,
    /// Scored documents / selectable documents.
    pub scored_fraction: f64,
    pub selected: usize,
    pub tokens_selected: usize,
    /// Tokens of every selectable document (what a budget of 100% would take).
    #[serde(default)]
    pub tokens_selectable: usize,
    /// The scoring compute spent, as a fraction of scoring every selectable document: predicted
    /// tokens scored (each document's first `influence.max_tokens`) over those of the whole pool
    /// (a forward and backward pass costs in proportion to its tokens).
    #[serde(default)]
    pub scored_compute_fraction: f64,
}

/// How fast this process scored: documents and predicted tokens scored here (not read from
/// the score cache) and the seconds it took.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScoringThroughput {
    pub documents: usize,
    pub tokens: usize,
    pub seconds: f64,
    pub docs_per_second: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub median: f64,
    pub std: f64,
}

/// `manifest.json`: everything needed to tell what a selection is and how it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: String,
    pub budget: Budget,
    pub parameters: SelectConfig,
    /// k in force (the number of clusters; `parameters.cluster.k` may say "auto").
    #[serde(default)]
    pub k: Option<usize>,
    pub inputs: Inputs,
    pub model: ModelRef,
    pub factors: FactorsRef,
    pub documents: DocumentCounts,
    pub rounds: usize,
    pub stop: Option<StopReason>,
    pub calibration: Option<Calibration>,
    pub stages: Vec<StageTiming>,
    /// Scoring inside this run (none when nothing was scored here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scoring: Option<ScoringThroughput>,
    /// The signal a signal policy took documents by: what computing it read and took
    /// (forward-passed tokens for perplexity) and the classifier's fit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<crate::signals::SignalReport>,
    /// The signals the estimator read as feature rows (`estimator = "signals"`), in column order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub estimator_signals: Vec<crate::signals::SignalReport>,
}

impl Manifest {
    /// Reads the `manifest.json` of an output folder.
    pub fn read(path: &Path) -> Result<Self, SelectError> {
        let text = std::fs::read_to_string(path).map_err(at(path))?;
        serde_json::from_str(&text).map_err(|e| SelectError::Config(format!("{}: {e}", path.display())))
    }
}

/// The parts of a `manifest.json` that every version has written (the document counts and k),
/// for tools that read old and new runs alike; [`Manifest::read`] wants the current version.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ManifestSummary {
    pub documents: DocumentCounts,
    #[serde(default)]
    k: Option<usize>,
    parameters: ParametersSummary,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct ParametersSummary {
    cluster: ClusterCountSummary,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct ClusterCountSummary {
    /// A number, or "auto" in runs that recorded the k in force at the top level.
    k: serde_json::Value,
}

impl ManifestSummary {
    /// k in force: recorded at the top level, or (older runs) the configured number.
    pub fn k(&self) -> Option<usize> {
        self.k.or_else(|| self.parameters.cluster.k.as_u64().map(|k| k as usize))
    }

    pub fn read(path: &Path) -> Result<Self, SelectError> {
        let text = std::fs::read_to_string(path).map_err(at(path))?;
        serde_json::from_str(&text).map_err(|e| SelectError::Config(format!("{}: {e}", path.display())))
    }
}

/// The result of a selection run.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// In the order taken.
    pub documents: Vec<SelectedDoc>,
    pub rounds: Vec<RoundLog>,
    pub clusters: Vec<ClusterSummary>,
    pub manifest: Manifest,
}

impl Selection {
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.documents.iter().map(|d| d.id.as_str())
    }

    /// Documents scored / selectable documents: the cost of the run in proxy passes.
    pub fn scored_fraction(&self) -> f64 {
        self.manifest.documents.scored_fraction
    }

    pub fn tokens(&self) -> usize {
        self.manifest.documents.tokens_selected
    }

    /// Writes `selected.jsonl`, `rounds.csv`, `clusters.csv` and `manifest.json` into `out`.
    /// The files [`Self::write`] writes; `manifest.json` is written last, so a folder without it
    /// holds no finished selection.
    pub const OUTPUT_FILES: [&'static str; 4] = ["selected.jsonl", "rounds.csv", "clusters.csv", "manifest.json"];

    /// Removes the outputs of an earlier run from `out` (manifest first), so that a run that stops
    /// early cannot leave an older selection to be taken for its own. The checkpoint stays.
    pub fn clear_outputs(out: &Path) -> Result<(), SelectError> {
        for name in Self::OUTPUT_FILES.iter().rev() {
            let path = out.join(name);
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(at(&path)(e).into()),
                _ => {}
            }
        }
        Ok(())
    }

    pub fn write(&self, out: &Path) -> Result<(), SelectError> {
        std::fs::create_dir_all(out).map_err(at(out))?;
        let selected = out.join("selected.jsonl");
        write_atomic(&selected, |w| {
            for d in &self.documents {
                writeln!(w, "{}", d.line())?;
            }
            Ok(())
        })
        .map_err(at(&selected))?;
        let rounds = out.join("rounds.csv");
        write_atomic(&rounds, |w| {
            writeln!(w, "round,arms,cluster_scores,rewards,scored,accepted,docs_selected,tokens_selected")?;
            for r in &self.rounds {
                let arms = join(r.picks.iter().map(|p| p.arm.map_or("-".to_string(), |a| a.to_string())));
                let cs = join(r.picks.iter().map(|p| format!("{:.6}", p.index)));
                let rewards = join(r.picks.iter().map(|p| p.reward.map_or("-".to_string(), |x| format!("{x:.6}"))));
                writeln!(
                    w,
                    "{},{arms},{cs},{rewards},{},{},{},{}",
                    r.round, r.scored, r.accepted, r.docs_selected, r.tokens_selected
                )?;
            }
            Ok(())
        })
        .map_err(at(&rounds))?;
        let clusters = out.join("clusters.csv");
        write_atomic(&clusters, |w| {
            writeln!(w, "cluster,size,times_chosen,reward_sum,updates,mean_reward,scored,taken,taken_tokens,exhausted,spent")?;
            for (i, c) in self.clusters.iter().enumerate() {
                let a = &c.arm;
                writeln!(
                    w,
                    "{i},{},{},{:.6},{},{:.6},{},{},{},{},{}",
                    c.size,
                    a.times_chosen,
                    a.reward_sum,
                    a.updates,
                    a.mean_reward(),
                    a.scored,
                    a.taken,
                    c.taken_tokens,
                    a.exhausted,
                    a.spent
                )?;
            }
            Ok(())
        })
        .map_err(at(&clusters))?;
        let path = out.join("manifest.json");
        let json = serde_json::to_string_pretty(&self.manifest).expect("plain data");
        crate::atomic::write_string_atomic(&path, &json).map_err(at(&path))?;
        Ok(())
    }
}

/// The `quad` object added to a selected record.
fn quad_object(d: &SelectedDoc) -> serde_json::Value {
    serde_json::json!({
        "cluster": d.cluster,
        "round": d.round,
        "reward": d.reward,
        "score": d.score,
    })
}

/// The record with `"quad": {...}` added before its closing brace; the rest is byte-for-byte the
/// input line.
pub fn annotate(record: &str, quad: &serde_json::Value) -> String {
    let trimmed = record.trim_end();
    let body = trimmed.strip_suffix('}').unwrap_or(trimmed).trim_end();
    let sep = if body.trim_start() == "{" { "" } else { "," };
    format!("{body}{sep}\"quad\":{quad}}}")
}

fn join<T: ToString>(xs: impl Iterator<Item = T>) -> String {
    xs.map(|x| x.to_string()).collect::<Vec<_>>().join(" ")
}

/// Inputs and their fingerprints, for the manifest.
pub(super) struct RunInputs<'a> {
    pub pool: &'a Path,
    pub pool_sha256: &'a str,
    pub pool_report: &'a ReadReport,
    pub reference: &'a Path,
    pub reference_sha256: &'a str,
    pub reference_report: &'a ReadReport,
    pub model: &'a Path,
    pub model_sha256: &'a str,
    pub factors_key: &'a str,
    pub factors_sha256: Option<&'a str>,
    /// Pool documents with fewer than two tokens (not selectable: nothing to score).
    pub too_short: usize,
    /// Cluster and token count of each selectable document (the bandit's indices).
    pub cluster_of: &'a [usize],
    pub tokens: &'a [usize],
    /// Predicted tokens scoring reads of each selectable document.
    pub scoring_tokens: &'a [usize],
    pub scoring: Option<ScoringThroughput>,
    pub signal: Option<crate::signals::SignalReport>,
    pub estimator_signals: Vec<crate::signals::SignalReport>,
}

/// The selected documents of a finished bandit run, their records read back from the pool.
pub(super) fn selected_documents(
    docs: &DocumentStore,
    eligible: &[usize],
    state: &BanditState,
    tokens: &[usize],
) -> Result<Vec<SelectedDoc>, SelectError> {
    state
        .selected
        .iter()
        .map(|s| {
            let i = eligible[s.doc];
            Ok(SelectedDoc {
                id: docs.ids()[i].clone(),
                record: docs.record(i)?,
                tokens: tokens[s.doc],
                cluster: s.cluster,
                round: s.round,
                reward: s.reward,
                score: s.score,
            })
        })
        .collect()
}

/// The [`Selection`] of a finished bandit run (`read`: documents read from the pool;
/// `selectable`: those long enough to score, the bandit's indices).
#[allow(clippy::too_many_arguments)]
pub(super) fn assemble(
    config: &SelectConfig,
    budget: Budget,
    documents: Vec<SelectedDoc>,
    read: usize,
    selectable: usize,
    state: BanditState,
    inputs: &RunInputs,
    timings: Vec<StageTiming>,
) -> Selection {
    let mut clusters: Vec<ClusterSummary> = state
        .arms
        .iter()
        .map(|a| ClusterSummary {
            size: 0,
            taken_tokens: 0,
            arm: a.clone(),
        })
        .collect();
    for &c in inputs.cluster_of {
        clusters[c].size += 1;
    }
    for s in &state.selected {
        clusters[s.cluster].taken_tokens += inputs.tokens[s.doc];
    }
    let n = selectable;
    let file = |path: &Path, sha: &str, read: &ReadReport| InputFile {
        path: path.to_path_buf(),
        sha256: sha.to_string(),
        read: read.clone(),
    };
    let manifest = Manifest {
        version: env!("CARGO_PKG_VERSION").to_string(),
        budget,
        parameters: config.clone(),
        k: Some(state.arms.len()),
        inputs: Inputs {
            pool: file(inputs.pool, inputs.pool_sha256, inputs.pool_report),
            reference: file(inputs.reference, inputs.reference_sha256, inputs.reference_report),
        },
        model: ModelRef {
            path: inputs.model.to_path_buf(),
            sha256: inputs.model_sha256.to_string(),
        },
        factors: FactorsRef {
            key: inputs.factors_key.to_string(),
            sha256: inputs.factors_sha256.map(str::to_string),
        },
        documents: DocumentCounts {
            read,
            selectable: n,
            too_short_to_score: inputs.too_short,
            scored: state.documents_scored,
            scored_fraction: state.documents_scored as f64 / n.max(1) as f64,
            selected: state.docs_selected,
            tokens_selected: state.tokens_selected,
            tokens_selectable: inputs.tokens.iter().sum(),
            scored_compute_fraction: {
                let all: usize = inputs.scoring_tokens.iter().sum();
                let scored: usize =
                    state.scores.iter().zip(inputs.scoring_tokens).filter(|(s, _)| s.is_some()).map(|(_, &t)| t).sum();
                scored as f64 / all.max(1) as f64
            },
        },
        rounds: state.round,
        stop: state.stop.clone(),
        calibration: state.calibration.map(|(median, std)| Calibration { median, std }),
        stages: timings,
        scoring: inputs.scoring,
        signal: inputs.signal.clone(),
        estimator_signals: inputs.estimator_signals.clone(),
    };
    Selection {
        documents,
        rounds: state.rounds,
        clusters,
        manifest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotate_keeps_the_record_and_adds_quad() {
        let q = serde_json::json!({"cluster": 3});
        assert_eq!(annotate(r#"{"text": "a", "x": 1}"#, &q), r#"{"text": "a", "x": 1,"quad":{"cluster":3}}"#);
        assert_eq!(annotate("{}", &q), r#"{"quad":{"cluster":3}}"#);
        assert_eq!(annotate("{ }\n", &q), r#"{"quad":{"cluster":3}}"#);
        let v: serde_json::Value = serde_json::from_str(&annotate(r#"{"text":"b"}  "#, &q)).unwrap();
        assert_eq!(v["quad"]["cluster"], 3);
        assert_eq!(v["text"], "b");
    }
}
