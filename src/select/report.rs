//! The outputs of `quad select`, each written atomically: `selected.jsonl` (original records,
//! unchanged, plus a `quad` object), `manifest.json` (parameters, input hashes, counts, timings),
//! `rounds.csv` (one line per round) and `clusters.csv` (one line per cluster).

use std::path::Path;

use crate::atomic::write_atomic;
use crate::bandit::{BanditState, Budget};
use crate::corpus::{Document, ReadReport};
use crate::select::{io, SelectConfig, SelectError, StageTiming};

/// Inputs and their fingerprints, for the manifest.
pub struct RunInputs<'a> {
    pub pool: &'a Path,
    pub pool_sha256: &'a str,
    pub pool_report: &'a ReadReport,
    pub reference: &'a Path,
    pub reference_sha256: &'a str,
    pub reference_report: &'a ReadReport,
    pub model: &'a Path,
    pub model_sha256: &'a str,
    pub factors_key: &'a str,
    /// sha256 of `factors.safetensors` (none for policies that do not score).
    pub factors_sha256: Option<&'a str>,
    /// Pool documents with fewer than two tokens (not selectable: nothing to score).
    pub too_short: usize,
    /// Cluster and token count of each selectable document (the bandit's indices).
    pub cluster_of: &'a [usize],
    pub tokens: &'a [usize],
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

#[allow(clippy::too_many_arguments)]
pub fn write_outputs(
    out: &Path,
    config: &SelectConfig,
    budget: Budget,
    docs: &[Document],
    eligible: &[usize],
    state: &BanditState,
    inputs: &RunInputs,
    timings: &[StageTiming],
) -> Result<(), SelectError> {
    let selected = out.join("selected.jsonl");
    write_atomic(&selected, |w| {
        for s in &state.selected {
            let doc = &docs[eligible[s.doc]];
            let quad = serde_json::json!({
                "cluster": s.cluster,
                "round": s.round,
                "reward": s.reward,
                "score": s.score,
            });
            writeln!(w, "{}", annotate(&doc.record, &quad))?;
        }
        Ok(())
    })
    .map_err(io(&selected))?;

    let rounds = out.join("rounds.csv");
    write_atomic(&rounds, |w| {
        writeln!(w, "round,arms,cluster_scores,rewards,scored,accepted,docs_selected,tokens_selected")?;
        for r in &state.rounds {
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
    .map_err(io(&rounds))?;

    let k = state.arms.len();
    let (mut sizes, mut taken_tokens) = (vec![0usize; k], vec![0usize; k]);
    for &c in inputs.cluster_of {
        sizes[c] += 1;
    }
    for s in &state.selected {
        taken_tokens[s.cluster] += inputs.tokens[s.doc];
    }
    let clusters = out.join("clusters.csv");
    write_atomic(&clusters, |w| {
        writeln!(w, "cluster,size,times_chosen,reward_sum,updates,mean_reward,scored,taken,taken_tokens,exhausted,spent")?;
        for (i, a) in state.arms.iter().enumerate() {
            writeln!(
                w,
                "{i},{},{},{:.6},{},{:.6},{},{},{},{},{}",
                sizes[i],
                a.times_chosen,
                a.reward_sum,
                a.updates,
                a.mean_reward(),
                a.scored,
                a.taken,
                taken_tokens[i],
                a.exhausted,
                a.spent
            )?;
        }
        Ok(())
    })
    .map_err(io(&clusters))?;

    let n = eligible.len();
    let manifest = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "budget": budget,
        "parameters": config,
        "inputs": {
            "pool": {"path": inputs.pool, "sha256": inputs.pool_sha256, "read": inputs.pool_report},
            "reference": {"path": inputs.reference, "sha256": inputs.reference_sha256, "read": inputs.reference_report},
        },
        "model": {"path": inputs.model, "sha256": inputs.model_sha256},
        "factors": {"key": inputs.factors_key, "sha256": inputs.factors_sha256},
        "documents": {
            "read": docs.len(),
            "selectable": n,
            "too_short_to_score": inputs.too_short,
            "scored": state.documents_scored,
            "scored_fraction": state.documents_scored as f64 / n.max(1) as f64,
            "selected": state.docs_selected,
            "tokens_selected": state.tokens_selected,
        },
        "rounds": state.round,
        "stop": state.stop,
        "calibration": state.calibration.map(|(m, s)| serde_json::json!({"median": m, "std": s})),
        "stages": timings,
    });
    let path = out.join("manifest.json");
    crate::atomic::write_string_atomic(&path, &serde_json::to_string_pretty(&manifest).expect("plain data"))
        .map_err(io(&path))?;
    Ok(())
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
