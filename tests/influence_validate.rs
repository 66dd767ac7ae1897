//! Influence against the exact damped empirical Fisher on a tiny trained model (1 block, width 16:
//! 3,328 targeted weights, 6,000 fitting examples, 240 candidates): EK-FAC ≥ K-FAC ≥ identity, and
//! per-head factors change the scores compared with whole-layer factors.
//!
//! Measured (damping 0.1·tr(F_b)/n_b): Spearman with the exact scores — exact block-diagonal 0.82,
//! EK-FAC 0.61, K-FAC 0.59, identity 0.25. The target of EK-FAC ≥ 0.90 is NOT met: even
//! the exact solve restricted to the block-diagonal structure reaches only 0.82, so coupling between
//! layers/heads dominates at this size. Set QUAD_VALIDATE_DAMPING to try other damping scales
//! (1.0 gives EK-FAC 0.70, K-FAC 0.68).

mod common;

use candle_core::{DType, Device};
use quad_select::corpus::{CorpusConfig, CorpusReader};
use quad_select::influence::validate::validate;
use quad_select::influence::FitOptions;
use quad_select::model::train::{train_proxy, ProxyParams};

const TOKENS: usize = 48;

#[test]
fn ekfac_tracks_exact_influence_on_a_tiny_trained_model() {
    let shared = common::shared();
    let (pool, _) = CorpusReader::read_all(&shared.join("data/pool-small.jsonl"), CorpusConfig::default()).unwrap();
    let (wiki, _) =
        CorpusReader::read_all(&shared.join("data/reference-wiki.jsonl"), CorpusConfig::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let params = ProxyParams {
        layers: 1,
        width: 16,
        heads: 2,
        context: TOKENS,
        vocab_size: 512,
        steps: 150,
        batch_size: 8,
        lr: 1e-2,
        warmup: 10,
        eval_every: 50,
        ..Default::default()
    };
    let texts: Vec<String> = pool.iter().map(|d| d.text.clone()).collect();
    let report = train_proxy(texts, &params, tmp.path(), |_| {}).unwrap();
    eprintln!(
        "tiny model: {} parameters, validation loss {:.3} -> {:.3}",
        report.parameters, report.initial_val_loss, report.final_val_loss
    );
    let loaded = quad_select::model::load(tmp.path(), DType::F64, &Device::Cpu).unwrap();
    let enc = |text: &str| {
        let mut ids = loaded.encode(text).unwrap();
        ids.truncate(TOKENS + 1);
        ids
    };
    // Fitting examples: every 49-token piece of the even-numbered pool documents, so that the
    // empirical Fisher has more examples than parameters.
    let fitting: Vec<Vec<u32>> = pool
        .iter()
        .step_by(2)
        .flat_map(|d| {
            let ids = loaded.encode(&d.text).unwrap();
            ids.chunks(TOKENS + 1).filter(|c| c.len() > 8).map(|c| c.to_vec()).collect::<Vec<_>>()
        })
        .take(6000)
        .collect();
    let candidates: Vec<Vec<u32>> = pool.iter().skip(1).step_by(2).take(240).map(|d| enc(&d.text)).collect();
    let reference: Vec<Vec<u32>> = wiki.iter().take(40).map(|d| enc(&d.text)).collect();

    let mut results = Vec::new();
    for per_head in [true, false] {
        let opts = FitOptions {
            per_head,
            context: TOKENS,
            batch: 16,
            ..Default::default()
        };
        let damping: f64 = std::env::var("QUAD_VALIDATE_DAMPING").map(|v| v.parse().unwrap()).unwrap_or(0.1);
        let r = validate(&loaded.model, &fitting, &reference, &candidates, &opts, damping).unwrap();
        eprintln!("{r}");
        results.push(r);
    }
    let per_head = &results[0];
    assert!(per_head.candidates >= 200);
    let (id, kfac, ekfac) = (&per_head.rows[1], &per_head.rows[2], &per_head.rows[3]);
    // Regression guard at the measured level (see the module note), not the 0.90 target.
    assert!(ekfac.spearman >= 0.55, "EK-FAC Spearman {}", ekfac.spearman);
    assert!(ekfac.spearman >= kfac.spearman, "EK-FAC {} < K-FAC {}", ekfac.spearman, kfac.spearman);
    assert!(kfac.spearman >= id.spearman, "K-FAC {} < identity {}", kfac.spearman, id.spearman);
    assert!(ekfac.ihvp_relative_error <= kfac.ihvp_relative_error);
    // Per-head factors change the scores (the two EK-FAC correlations differ).
    let whole = &results[1];
    assert!(
        (whole.rows[3].spearman - ekfac.spearman).abs() > 1e-4
            || (whole.rows[3].pearson - ekfac.pearson).abs() > 1e-4,
        "per-head and whole-layer factors gave the same scores"
    );
}
