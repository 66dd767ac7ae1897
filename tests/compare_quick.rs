//! The `--quick` selector comparison end to end (experiments/compare.rs on pool-small, two seeds):
//! every selector runs, is evaluated, and the table has its rows and columns. No winner asserted.

mod common;

#[path = "../experiments/compare.rs"]
#[allow(dead_code)]
mod compare;

#[test]
fn quick_comparison_runs_end_to_end() {
    let shared = common::shared();
    let tmp = tempfile::tempdir().unwrap();
    let opts = compare::Opts {
        quick: true,
        seeds: 2,
        out: tmp.path().join("out"),
        budget: 40_000,
        pool: shared.join("data/pool-small.jsonl"),
        reference: shared.join("data/reference-wiki.jsonl"),
        cache: tmp.path().join("cache"),
        config: common::repo().join("experiments/compare-quick.toml"),
    };
    let md = compare::run(&opts).unwrap();
    eprintln!("{md}");
    for selector in ["random", "uniform", "topk", "greedy", "ucb", "wiki-only"] {
        let line = md.lines().find(|l| l.starts_with(&format!("| {selector} |"))).unwrap_or_else(|| panic!("no row for {selector}:\n{md}"));
        assert_eq!(line.matches('|').count(), 10, "{line}");
        assert!(line.contains(" ± "), "{line}");
    }
    assert!(md.contains("Sanity: wiki-only reference loss"), "{md}");
    assert!(md.contains("ucb vs topk"), "{md}");
    let csv = std::fs::read_to_string(opts.out.join("compare.csv")).unwrap();
    // Header plus 6 selectors x 2 seeds; 11 held-out domains as columns.
    assert_eq!(csv.lines().count(), 1 + 12, "{csv}");
    assert_eq!(csv.lines().next().unwrap().matches("heldout_").count(), 1 + 11);
    // topk scored everything, random and uniform nothing, ucb a fraction.
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no {name} column"));
    let frac = |sel: &str| -> f64 {
        let l = csv.lines().find(|l| l.starts_with(&format!("{sel},")) && l.split(',').nth(col("seed")) == Some("0")).unwrap();
        l.split(',').nth(col("scored_fraction")).unwrap().parse().unwrap()
    };
    assert_eq!(frac("topk"), 1.0);
    assert_eq!(frac("random"), 0.0);
    assert!(frac("ucb") > 0.0 && frac("ucb") < 1.0);
    // A rerun reuses every finished run.
    let again = compare::run(&opts).unwrap();
    assert_eq!(again, md);
}
