//! The bandit on synthetic arms: properties (proptest), planted rewards, round-robin spread.

use std::collections::HashSet;

use proptest::prelude::*;
use quad_select::bandit::{neighbour_weight, Bandit, BanditParams, Budget, Policy, Problem, StopReason};

/// A synthetic pool: `sizes[c]` documents in cluster c, token counts 1..=40, distances from a
/// seeded hash in [0, 0.6].
fn problem(sizes: &[usize], budget: Budget, seed: u64) -> Problem {
    let mut cluster = Vec::new();
    let mut tokens = Vec::new();
    let mut h = seed.wrapping_add(1);
    let mut next = || {
        h ^= h << 13;
        h ^= h >> 7;
        h ^= h << 17;
        h
    };
    for (c, &n) in sizes.iter().enumerate() {
        for _ in 0..n {
            cluster.push(c);
            tokens.push(1 + (next() % 40) as usize);
        }
    }
    let k = sizes.len();
    let mut distances = vec![vec![0.0; k]; k];
    for i in 0..k {
        for j in i + 1..k {
            let d = (next() % 600) as f64 / 1000.0;
            distances[i][j] = d;
            distances[j][i] = d;
        }
    }
    Problem {
        cluster,
        tokens,
        distances,
        budget,
    }
}

/// Score of document d: its arm's planted mean plus deterministic noise in [-noise, noise].
fn planted(means: Vec<f64>, cluster: Vec<usize>, noise: f64) -> impl FnMut(&[usize]) -> Result<Vec<f64>, String> {
    move |docs: &[usize]| {
        Ok(docs
            .iter()
            .map(|&d| {
                let u = ((d as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) as f64 / (1u64 << 53) as f64;
                means[cluster[d]] + noise * (2.0 * u - 1.0)
            })
            .collect())
    }
}

fn policy_strategy() -> impl Strategy<Value = Policy> {
    prop::sample::select(Policy::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn selection_is_unique_meets_the_budget_and_skips_exhausted_arms(
        sizes in prop::collection::vec(0usize..30, 1..8),
        policy in policy_strategy(),
        by_tokens in any::<bool>(),
        limit in 1usize..400,
        alpha in 0.0f64..3.0,
        gamma in -1.0f64..1.0,
        tau in 0.0f64..0.8,
        b_arms in 1usize..4,
        b_samples in 1usize..6,
        chunk in 1usize..10,
        seed in 0u64..1000,
    ) {
        let budget = if by_tokens { Budget::Tokens(limit) } else { Budget::Documents(limit) };
        let prob = problem(&sizes, budget, seed);
        let means: Vec<f64> = (0..sizes.len()).map(|c| (c as f64 * 0.37).sin()).collect();
        let mut scorer = planted(means, prob.cluster.clone(), 0.5);
        let params = BanditParams {
            policy, alpha, gamma, tau, arms_per_round: b_arms, samples_per_arm: b_samples, chunk,
            calibration: 0, seed, ..Default::default()
        };
        let n = prob.tokens.len();
        let tokens = prob.tokens.clone();
        let mut bandit = Bandit::new(params, prob).unwrap();
        let mut rounds = 0;
        loop {
            let unavailable: HashSet<usize> = bandit.state().arms.iter().enumerate()
                .filter(|(_, a)| a.exhausted || a.spent).map(|(i, _)| i).collect();
            match bandit.step(&mut scorer).unwrap() {
                None => break,
                Some(log) => {
                    for p in &log.picks {
                        prop_assert!(!unavailable.contains(&p.arm), "exhausted arm {} chosen", p.arm);
                    }
                }
            }
            rounds += 1;
            prop_assert!(rounds < 10_000, "no progress");
        }
        let st = bandit.state();
        let docs: Vec<usize> = st.selected.iter().map(|s| s.doc).collect();
        let unique: HashSet<usize> = docs.iter().copied().collect();
        prop_assert_eq!(unique.len(), docs.len(), "a document was selected twice");
        let used_tokens: usize = docs.iter().map(|&d| tokens[d]).sum();
        prop_assert_eq!(used_tokens, st.tokens_selected);
        match st.stop.clone().unwrap() {
            StopReason::BudgetMet => match budget {
                Budget::Documents(l) => prop_assert_eq!(docs.len(), l),
                Budget::Tokens(l) => {
                    // Met, and the last document is the one that reached it.
                    prop_assert!(used_tokens >= l);
                    prop_assert!(used_tokens - tokens[*docs.last().unwrap()] < l);
                }
            },
            StopReason::PoolExhausted => prop_assert_eq!(docs.len(), n),
            StopReason::NoArmAboveGamma => {
                prop_assert!(policy != Policy::Uniform && policy != Policy::Random && policy != Policy::Topk);
                prop_assert!(st.arms.iter().all(|a| a.exhausted || a.spent));
            }
            StopReason::Interrupted => prop_assert!(false, "not interrupted"),
        }
    }

    #[test]
    fn neighbour_weights_are_in_unit_interval(d in 0.0f64..2.0, tau in 0.0f64..2.0) {
        let w = neighbour_weight(d, tau);
        prop_assert!((0.0..=1.0).contains(&w));
        prop_assert_eq!(neighbour_weight(0.0, tau), 1.0);
        if d >= tau && d > 0.0 {
            prop_assert_eq!(w, 0.0);
        }
    }

    #[test]
    fn same_seed_same_choices(
        sizes in prop::collection::vec(1usize..25, 2..7),
        policy in policy_strategy(),
        seed in 0u64..1000,
    ) {
        let run = || {
            let prob = problem(&sizes, Budget::Documents(60), seed);
            let means: Vec<f64> = (0..sizes.len()).map(|c| (c as f64).cos()).collect();
            let mut scorer = planted(means, prob.cluster.clone(), 0.8);
            let params = BanditParams { policy, seed, calibration: 8, ..Default::default() };
            let mut bandit = Bandit::new(params, prob).unwrap();
            bandit.run(&mut scorer, |_, _| true).unwrap();
            bandit.into_state()
        };
        prop_assert!(run() == run(), "two runs with the same seed differ");
    }

    #[test]
    fn alpha_zero_is_greedy(
        sizes in prop::collection::vec(5usize..25, 2..8),
        seed in 0u64..1000,
    ) {
        let prob = problem(&sizes, Budget::Documents(80), seed);
        let means: Vec<f64> = (0..sizes.len()).map(|c| (c as f64 * 1.3).sin()).collect();
        let picks = |policy: Policy, alpha: f64| {
            let mut scorer = planted(means.clone(), prob.cluster.clone(), 0.5);
            let params = BanditParams { policy, alpha, seed, calibration: 0, gamma: -2.0, ..Default::default() };
            let mut bandit = Bandit::new(params, prob.clone()).unwrap();
            let mut out = Vec::new();
            loop {
                let before = bandit.state().clone();
                let Some(log) = bandit.step(&mut scorer).unwrap() else { break };
                // Once every arm has been tried, the chosen arms have the best mean rewards.
                if before.arms.iter().all(|a| a.times_chosen > 0 || a.exhausted || a.spent) {
                    let chosen: HashSet<usize> = log.picks.iter().map(|p| p.arm).collect();
                    let worst_chosen = chosen.iter().map(|&i| before.arms[i].mean_reward()).fold(f64::INFINITY, f64::min);
                    for (i, a) in before.arms.iter().enumerate() {
                        if !chosen.contains(&i) && !a.exhausted && !a.spent {
                            assert!(a.mean_reward() <= worst_chosen + 1e-12, "arm {i} skipped with a better mean");
                        }
                    }
                }
                out.push(log.picks.iter().map(|p| p.arm).collect::<Vec<_>>());
            }
            out
        };
        prop_assert_eq!(picks(Policy::Ucb, 0.0), picks(Policy::Greedy, 1.0));
    }
}

#[test]
fn ucb_finds_the_planted_best_arms() {
    // 20 arms of 200 documents; arms 3, 7, 11, 15 have mean +1, the rest −1, noise ±1.5.
    let k = 20;
    let best: HashSet<usize> = [3, 7, 11, 15].into_iter().collect();
    let mut prob = problem(&vec![200; k], Budget::Documents(4000), 1);
    // No neighbour sharing: every arm stands alone.
    prob.distances = vec![vec![1.0; k]; k];
    for (i, row) in prob.distances.iter_mut().enumerate() {
        row[i] = 0.0;
    }
    let means: Vec<f64> = (0..k).map(|c| if best.contains(&c) { 1.0 } else { -1.0 }).collect();
    let mut scorer = planted(means, prob.cluster.clone(), 1.5);
    let params = BanditParams {
        arms_per_round: 4,
        samples_per_arm: 4,
        chunk: 8,
        gamma: 0.0,
        calibration: 0,
        alpha: 1.0,
        ..Default::default()
    };
    let mut bandit = Bandit::new(params, prob).unwrap();
    // Within 30 rounds (5 to try every arm once, then 25 more) the four most-chosen arms are the
    // planted best, most picks of the last 10 rounds go to them, and the selection comes from them.
    for _ in 0..30 {
        bandit.step(&mut scorer).unwrap().unwrap();
    }
    let st = bandit.state();
    let mut by_choice: Vec<usize> = (0..k).collect();
    by_choice.sort_by_key(|&i| std::cmp::Reverse(st.arms[i].times_chosen));
    let top: HashSet<usize> = by_choice[..4].iter().copied().collect();
    assert_eq!(top, best, "most-chosen arms {by_choice:?}");
    let late: Vec<usize> = st.rounds[20..].iter().flat_map(|r| r.picks.iter().map(|p| p.arm)).collect();
    let good = late.iter().filter(|a| best.contains(a)).count();
    assert!(good * 10 >= late.len() * 7, "{good} of {} late picks on the best arms", late.len());
    let from_best = st.selected.iter().filter(|s| best.contains(&s.cluster)).count();
    assert!(from_best * 10 >= st.selected.len() * 9, "{from_best} of {} from the best arms", st.selected.len());
    // 4 arms x 4 samples x 30 rounds at most.
    assert!(st.documents_scored <= 480);
}

#[test]
fn uniform_spreads_evenly_and_scores_nothing() {
    let k = 9;
    let prob = problem(&vec![100; k], Budget::Documents(500), 2);
    let mut scorer = |_: &[usize]| -> Result<Vec<f64>, String> { Err("uniform must not score".into()) };
    let params = BanditParams {
        policy: Policy::Uniform,
        chunk: 10,
        arms_per_round: 3,
        ..Default::default()
    };
    let mut bandit = Bandit::new(params, prob).unwrap();
    bandit.run(&mut scorer, |_, _| true).unwrap();
    let st = bandit.state();
    assert_eq!(st.docs_selected, 500);
    assert_eq!(st.documents_scored, 0);
    let per: Vec<usize> = st.arms.iter().map(|a| a.taken).collect();
    let (lo, hi) = (*per.iter().min().unwrap(), *per.iter().max().unwrap());
    assert!(hi - lo <= 10, "uneven spread {per:?}");
}

#[test]
fn high_gamma_stops_and_says_so() {
    let prob = problem(&[20, 20, 20], Budget::Documents(50), 3);
    let mut scorer = planted(vec![0.0, 0.1, -0.1], prob.cluster.clone(), 0.2);
    let params = BanditParams {
        gamma: 5.0,
        calibration: 0,
        ..Default::default()
    };
    let mut bandit = Bandit::new(params, prob).unwrap();
    bandit.run(&mut scorer, |_, _| true).unwrap();
    let st = bandit.state();
    assert_eq!(st.stop, Some(StopReason::NoArmAboveGamma));
    assert_eq!(st.docs_selected, 0);
    assert_eq!(st.documents_scored, 60);
}

#[test]
fn resumed_state_continues_identically() {
    let sizes = [30, 50, 20, 40, 60];
    let make = || problem(&sizes, Budget::Tokens(3000), 4);
    let means = vec![0.5, -0.2, 1.0, 0.1, -1.0];
    let params = BanditParams {
        chunk: 6,
        ..Default::default()
    };
    let mut whole = Bandit::new(params.clone(), make()).unwrap();
    whole.run(&mut planted(means.clone(), make().cluster, 1.0), |_, _| true).unwrap();

    let mut first = Bandit::new(params.clone(), make()).unwrap();
    let mut n = 0;
    first
        .run(&mut planted(means.clone(), make().cluster, 1.0), |_, _| {
            n += 1;
            n < 3
        })
        .unwrap();
    let saved = serde_json::to_string(first.state()).unwrap();
    assert_eq!(first.state().stop, Some(StopReason::Interrupted));
    let state = serde_json::from_str(&saved).unwrap();
    let mut resumed = Bandit::resume(params.clone(), make(), state).unwrap();
    resumed.run(&mut planted(means, make().cluster, 1.0), |_, _| true).unwrap();
    assert!(resumed.state() == whole.state(), "the resumed run differs from the uninterrupted one");

    // A checkpoint from other parameters is refused.
    let other = BanditParams { alpha: 2.0, ..params };
    let state = serde_json::from_str(&saved).unwrap();
    assert!(Bandit::resume(other, make(), state).is_err());
}
