//! The library API end to end on the shipped sample with the tiny fixture config: select through
//! `Selector`, read the scored fraction and the selection from the returned `Selection` (nothing
//! is read back from disk), stop through the observer after round 2 and resume from the
//! checkpoint to the same selection.

mod common;

use std::ops::ControlFlow;

use quad_select::bandit::Budget;
use quad_select::select::{Event, Quiet, SelectConfig, SelectError, Selector};

fn config() -> SelectConfig {
    let text = std::fs::read_to_string(common::repo().join("tests/fixtures/tiny-select.toml")).unwrap();
    toml::from_str(&text).unwrap()
}

/// The shipped sample, a reference of its first 20 `devil` records written into `dir`, and the
/// sample's text.
fn sample_and_reference(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let pool = common::repo().join("experiments/data/sample.jsonl");
    let reference = dir.join("ref.jsonl");
    let sample = std::fs::read_to_string(&pool).unwrap();
    let lines: Vec<&str> = sample.lines().filter(|l| l.contains("\"domain\": \"devil\"")).take(20).collect();
    std::fs::write(&reference, lines.join("\n") + "\n").unwrap();
    (pool, reference, sample)
}

#[test]
fn select_through_the_library_and_resume_after_an_observer_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let (pool, reference, sample) = sample_and_reference(tmp.path());
    let cache = tmp.path().join("cache");
    let budget = Budget::Tokens(30_000);

    let selector = Selector::new(config().check().unwrap()).cache(&cache);
    let selection = selector.select(&pool, &reference, budget, &mut Quiet).unwrap();
    let m = &selection.manifest;
    assert!(selection.tokens() >= 30_000);
    assert_eq!(selection.documents.len(), m.documents.selected);
    assert_eq!(selection.documents.iter().map(|d| d.tokens).sum::<usize>(), m.documents.tokens_selected);
    let fraction = selection.scored_fraction();
    assert!(fraction > 0.0 && fraction < 1.0, "{fraction}");
    assert_eq!(fraction, m.documents.scored as f64 / m.documents.selectable as f64);
    let ids: std::collections::HashSet<&str> = selection.ids().collect();
    assert_eq!(ids.len(), selection.documents.len(), "a document selected twice");
    for d in &selection.documents {
        assert!(sample.contains(&d.record), "record changed: {}", d.id);
        assert!(d.cluster < selection.clusters.len());
    }
    assert_eq!(selection.rounds.len(), m.rounds);
    assert_eq!(selection.clusters.iter().map(|c| c.size).sum::<usize>(), m.documents.selectable);
    // The manifest round-trips through its JSON form.
    let json = serde_json::to_string(m).unwrap();
    assert_eq!(&serde_json::from_str::<quad_select::select::Manifest>(&json).unwrap(), m);

    // An observer that stops after round 2, then a resumed run: the same selection.
    let checkpoint = tmp.path().join("checkpoint.json");
    let parted = Selector::new(config().check().unwrap()).cache(&cache).checkpoint(&checkpoint, true);
    let mut stages = Vec::new();
    let mut stop_after_two = |e: Event<'_>| match e {
        Event::Stage { name, cached } => {
            stages.push((name.to_string(), cached));
            ControlFlow::Continue(())
        }
        Event::Round { log, .. } if log.round + 1 >= 2 => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    };
    match parted.select(&pool, &reference, budget, &mut stop_after_two) {
        Err(SelectError::Interrupted { rounds, .. }) => assert_eq!(rounds, Some(2)),
        other => panic!("expected an interruption, got {:?}", other.map(|s| s.documents.len())),
    }
    assert!(stages.iter().any(|(n, cached)| n == "embed" && *cached), "{stages:?}");
    let resumed = parted.select(&pool, &reference, budget, &mut Quiet).unwrap();
    assert_eq!(resumed.documents, selection.documents);
    assert_eq!(resumed.rounds, selection.rounds);
}

/// A stop asked for inside a long stage (embedding, proxy training, factor fitting, the reference
/// gradient) ends that stage at its next batch, before it finishes, with nothing selected; a rerun
/// on the same cache then gives the uninterrupted selection.
#[test]
fn a_stop_inside_a_stage_ends_it_at_the_next_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = common::repo().join("experiments/data/sample.jsonl");
    let reference = tmp.path().join("ref.jsonl");
    let sample = std::fs::read_to_string(&pool).unwrap();
    let lines: Vec<&str> = sample.lines().filter(|l| l.contains("\"domain\": \"jargon\"")).take(20).collect();
    std::fs::write(&reference, lines.join("\n") + "\n").unwrap();
    let budget = Budget::Tokens(30_000);
    let solo = Selector::new(config().check().unwrap())
        .cache(tmp.path().join("solo"))
        .select(&pool, &reference, budget, &mut Quiet)
        .unwrap();

    let cache = tmp.path().join("cache");
    // Each stage's label (Event::Stage) and key (Event::StageDone).
    for (stage, key) in [("embed", "embed"), ("train proxy", "proxy"), ("fit factors", "factors"), ("reference gradient", "reference")] {
        let (mut current, mut finished, mut progress_seen) = (String::new(), Vec::new(), false);
        let mut stop_inside = |e: Event<'_>| match e {
            Event::Stage { name, .. } => {
                current = name.to_string();
                ControlFlow::Continue(())
            }
            Event::StageDone { name } => {
                finished.push(name.to_string());
                ControlFlow::Continue(())
            }
            Event::Progress { .. } if current == stage => {
                progress_seen = true;
                ControlFlow::Break(())
            }
            _ => ControlFlow::Continue(()),
        };
        let result = Selector::new(config().check().unwrap()).cache(&cache).select(&pool, &reference, budget, &mut stop_inside);
        match result {
            Err(SelectError::Interrupted { rounds: None, .. }) => {}
            other => panic!("{stage}: expected a stop before the bandit, got {:?}", other.map(|s| s.documents.len())),
        }
        assert!(progress_seen, "{stage}: no progress reported inside the stage");
        assert_eq!(current, stage, "{stage}: the run went on to {current}");
        assert!(!finished.iter().any(|f| f == key), "{stage} finished: {finished:?}");
    }
    let rerun = Selector::new(config().check().unwrap()).cache(&cache).select(&pool, &reference, budget, &mut Quiet).unwrap();
    assert_eq!(rerun.documents, solo.documents);
}

/// The practitioners' baselines through the whole pipeline: each signal policy meets the budget
/// without scoring and reports its signal (perplexity's losses come from the cache on a rerun);
/// Quad with `estimator = "signals"` reads the DSIR and classifier signals as its feature rows,
/// reports both, and gives the same selection again.
#[test]
fn signal_policies_and_the_signal_estimator_select_through_the_pipeline() {
    use quad_select::bandit::{Estimator, PolicyName};
    use quad_select::signals::Signal;
    let tmp = tempfile::tempdir().unwrap();
    let (pool, reference, _) = sample_and_reference(tmp.path());
    let cache = tmp.path().join("cache");
    let budget = Budget::Tokens(30_000);
    let run = |policy: PolicyName, estimator: Estimator| {
        let mut cfg = config();
        cfg.bandit.policy = policy;
        cfg.bandit.estimator = estimator;
        Selector::new(cfg.check().unwrap()).cache(&cache).select(&pool, &reference, budget, &mut Quiet).unwrap()
    };
    // Policies that only count tokens train the proxy's tokenizer, not the proxy.
    let counted_only = run(PolicyName::Dsir, Estimator::ClusterMean);
    let names: Vec<String> = std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!names.iter().any(|n| n.starts_with("proxy-")), "a proxy was trained for dsir: {names:?}");
    assert!(names.iter().any(|n| n.starts_with("tokenizer-") && n.ends_with(".json")), "{names:?}");
    assert!(counted_only.manifest.stages.iter().any(|s| s.stage == "tokenizer"));
    for (policy, signal) in [(PolicyName::Dsir, Signal::Dsir), (PolicyName::Classifier, Signal::Classifier), (PolicyName::Perplexity, Signal::Perplexity)] {
        let s = run(policy, Estimator::ClusterMean);
        let m = &s.manifest;
        assert!(s.tokens() >= 30_000, "{policy}: {} tokens", s.tokens());
        assert_eq!(m.documents.scored, 0, "{policy} scored documents");
        let r = m.signal.as_ref().unwrap_or_else(|| panic!("{policy}: no signal report"));
        assert_eq!((r.signal, r.documents), (signal, m.documents.selectable));
        assert_eq!(r.forward_tokens > 0, policy == PolicyName::Perplexity, "{policy}: {r:?}");
        assert_eq!(r.classifier.is_some(), policy == PolicyName::Classifier);
        assert!(m.estimator_signals.is_empty());
    }
    // Perplexity trained the proxy; dsir now counts with the proxy's own tokenizer: the same
    // tokens, the same selection, the same fingerprint.
    let with_proxy = run(PolicyName::Dsir, Estimator::ClusterMean);
    assert_eq!(with_proxy.documents, counted_only.documents);
    assert_eq!(with_proxy.manifest.model.sha256, counted_only.manifest.model.sha256);
    let again = run(PolicyName::Perplexity, Estimator::ClusterMean);
    let r = again.manifest.signal.unwrap();
    assert!(r.cached && r.forward_tokens == 0, "the losses were not read back from the cache: {r:?}");

    let quad = run(PolicyName::Ucb, Estimator::Signals);
    let m = &quad.manifest;
    assert!(m.documents.scored > 0 && quad.tokens() >= 30_000);
    assert!(m.signal.is_none());
    let read: Vec<Signal> = m.estimator_signals.iter().map(|r| r.signal).collect();
    assert_eq!(read, [Signal::Dsir, Signal::Classifier]);
    assert_eq!(run(PolicyName::Ucb, Estimator::Signals).documents, quad.documents);
}
