//! The `--quick` frontier experiment end to end (experiments/frontier.rs on pool-small, both
//! references, one seed): the reference halves are disjoint whole ranges, every selector of the
//! grid (random, uniform, topk, the mixtures, ucb) runs and is evaluated by `quad eval run`
//! processes, the tables carry the (a)/(b)/(c) verdicts and a rerun reuses every finished run.
//! No winner is asserted.

mod common;

#[path = "../experiments/frontier.rs"]
#[allow(dead_code)]
mod frontier;

use std::collections::HashSet;

fn ids(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn quick_frontier_runs_end_to_end() {
    let shared = common::shared();
    let tmp = tempfile::tempdir().unwrap();
    let data = shared.join("data");
    let opts = frontier::Opts {
        quick: true,
        references: vec![
            ("wiki".into(), data.join("reference-wiki.jsonl")),
            ("abstracts".into(), data.join("reference-abstracts.jsonl")),
        ],
        budgets: vec![40_000],
        selectors: None,
        seeds: 1,
        jobs: 2,
        select_only: false,
        out: tmp.path().join("out"),
        cache: tmp.path().join("cache"),
        pool: data.join("pool-small.jsonl"),
        config: quad_select::select::SelectConfig::from_toml_file(&common::repo().join("experiments/compare-quick.toml")).unwrap(),
        readme: false,
        quad: env!("CARGO_BIN_EXE_quad").into(),
        external: Vec::new(),
    };
    let md = frontier::run(&opts).unwrap();
    eprintln!("{md}");

    // Reference halves: disjoint, together the whole set, neither empty.
    for (name, path) in &opts.references {
        let dir = opts.out.join(format!("ref-{name}"));
        let (t, e) = (ids(&dir.join("target.jsonl")), ids(&dir.join("eval.jsonl")));
        let all: HashSet<&String> = t.iter().chain(&e).collect();
        assert!(!t.is_empty() && !e.is_empty());
        assert_eq!(all.len(), t.len() + e.len(), "{name}: a document on both sides");
        assert_eq!(all.len(), ids(path).len());
    }
    for setting in ["wiki-40k", "abstracts-40k"] {
        let table = std::fs::read_to_string(opts.out.join(setting).join("table.md")).unwrap();
        for sel in ["random", "uniform", "topk", "mix-0.25", "mix-0.5", "mix-0.75", "ucb"] {
            let line = table.lines().find(|l| l.starts_with(&format!("| {sel} |"))).unwrap_or_else(|| panic!("{setting}: no row for {sel}:\n{table}"));
            assert_eq!(line.matches('|').count(), 7, "{line}");
            assert!(line.contains(" ± "), "{line}");
        }
        for verdict in ["(a) quality", "(b) beyond the frontier", "(c) cost"] {
            assert!(table.contains(&format!("ucb {verdict}")), "{setting}: no {verdict} line:\n{table}");
        }
        assert!(opts.out.join(setting).join("frontier.png").is_file());
        // Mixtures take their top part from topk's selection and never a document twice.
        let sel = |run: &str| ids(&opts.out.join(setting).join("runs").join(run).join("selected.jsonl"));
        let topk = sel("topk-s0");
        for p in ["mix-0.25", "mix-0.5", "mix-0.75"] {
            let m = sel(&format!("{p}-s0"));
            assert_eq!(m.iter().collect::<HashSet<_>>().len(), m.len(), "{p}: duplicate");
            let frac: f64 = p[4..].parse().unwrap();
            let head = (frac * topk.len() as f64 * 0.8) as usize;
            assert_eq!(&m[..head], &topk[..head], "{p}: its first documents are topk's best");
        }
    }
    // random and uniform do not see the reference: one trained model serves both references.
    for sel in ["random", "uniform"] {
        let ev: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(opts.out.join("abstracts-40k/evals").join(format!("{sel}-s0.json"))).unwrap()).unwrap();
        assert!(ev["path"].as_str().unwrap().contains("wiki-40k"), "{sel}: evaluated apart: {ev}");
    }
    // A rerun reuses every finished run and writes the same tables.
    let again = frontier::run(&opts).unwrap();
    assert_eq!(again, md);
}
