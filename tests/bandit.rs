//! The bandit on synthetic arms: properties (proptest), planted rewards, round-robin spread.

use std::collections::HashSet;

use proptest::prelude::*;
use quad_select::bandit::{neighbour_weight, AllocationName, Bandit, BanditParams, Budget, PolicyName, Problem, StopReason};

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

/// A bandit for any policy: a signal policy gets a seeded signal (one value per document).
fn signalled(params: BanditParams, prob: Problem) -> Bandit {
    let signal = params.policy.signal().map(|_| (0..prob.tokens.len()).map(|d| ((d * 7919) % 101) as f64 / 10.0).collect());
    let bandit = Bandit::new(params.check().unwrap(), prob).unwrap();
    match signal {
        Some(v) => bandit.with_signal(v).unwrap(),
        None => bandit,
    }
}

fn policy_strategy() -> impl Strategy<Value = PolicyName> {
    prop::sample::select(PolicyName::ALL.to_vec())
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
        fixed_gamma in any::<bool>(),
        explore_first in any::<bool>(),
        temperature in prop::option::of(0.2f64..3.0),
    ) {
        let budget = if by_tokens { Budget::Tokens(limit) } else { Budget::Documents(limit) };
        let prob = problem(&sizes, budget, seed);
        let means: Vec<f64> = (0..sizes.len()).map(|c| (c as f64 * 0.37).sin()).collect();
        let mut scorer = planted(means, prob.cluster.clone(), 0.5);
        let params = BanditParams {
            policy, alpha, gamma: (fixed_gamma && temperature.is_none()).then_some(gamma), tau, arms_per_round: b_arms, samples_per_arm: b_samples,
            chunk: Some(chunk), explore_first, calibration: 0, seed,
            allocation: if temperature.is_some() { AllocationName::Tilted } else { AllocationName::Threshold },
            temperature: temperature.unwrap_or(1.0), ..Default::default()
        };
        let n = prob.tokens.len();
        let tokens = prob.tokens.clone();
        let mut bandit = signalled(params, prob);
        let mut rounds = 0;
        loop {
            let unavailable: HashSet<usize> = bandit.state().arms.iter().enumerate()
                .filter(|(_, a)| a.exhausted || a.spent).map(|(i, _)| i).collect();
            match bandit.step(&mut scorer).unwrap() {
                None => break,
                Some(log) => {
                    for p in &log.picks {
                        prop_assert!(p.arm.is_none_or(|a| !unavailable.contains(&a)), "exhausted arm {:?} chosen", p.arm);
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
                prop_assert!(!matches!(policy, PolicyName::Uniform | PolicyName::Random | PolicyName::Topk | PolicyName::Mix));
                // Every arm is used up, or (after the exploration pass) its estimate, plus a
                // confidence margin ≥ 0, does not beat γ.
                let cannot_beat = |a: &quad_select::bandit::ArmState| {
                    explore_first && a.scored > 0 && a.score_sum / a.scored as f64 <= gamma
                };
                prop_assert!(st.arms.iter().all(|a| a.exhausted || a.spent || cannot_beat(a)));
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
            let mut bandit = signalled(params, prob);
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
        let picks = |policy: PolicyName, alpha: f64| {
            let mut scorer = planted(means.clone(), prob.cluster.clone(), 0.5);
            let params = BanditParams { policy, alpha, seed, calibration: 0, gamma: Some(-2.0), explore_first: false, allocation: AllocationName::Threshold, ..Default::default() };
            let mut bandit = signalled(params, prob.clone());
            let mut out = Vec::new();
            loop {
                let before = bandit.state().clone();
                let Some(log) = bandit.step(&mut scorer).unwrap() else { break };
                // Once every arm has been tried, the chosen arms have the best mean rewards.
                if before.arms.iter().all(|a| a.times_chosen > 0 || a.exhausted || a.spent) {
                    let chosen: HashSet<usize> = log.picks.iter().filter_map(|p| p.arm).collect();
                    let worst_chosen = chosen.iter().map(|&i| before.arms[i].mean_reward()).fold(f64::INFINITY, f64::min);
                    for (i, a) in before.arms.iter().enumerate() {
                        if !chosen.contains(&i) && !a.exhausted && !a.spent {
                            assert!(a.mean_reward() <= worst_chosen + 1e-12, "arm {i} skipped with a better mean");
                        }
                    }
                }
                out.push(log.picks.iter().filter_map(|p| p.arm).collect::<Vec<_>>());
            }
            out
        };
        prop_assert_eq!(picks(PolicyName::Ucb, 0.0), picks(PolicyName::Greedy, 1.0));
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
        chunk: Some(8),
        gamma: Some(0.0),
        allocation: AllocationName::Threshold,
        calibration: 0,
        alpha: 1.0,
        ..Default::default()
    };
    let mut bandit = Bandit::new(params.check().unwrap(), prob).unwrap();
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
    let late: Vec<usize> = st.rounds[20..].iter().flat_map(|r| r.picks.iter().filter_map(|p| p.arm)).collect();
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
        policy: PolicyName::Uniform,
        chunk: Some(10),
        arms_per_round: 3,
        ..Default::default()
    };
    let mut bandit = Bandit::new(params.check().unwrap(), prob).unwrap();
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
        gamma: Some(5.0),
        allocation: AllocationName::Threshold,
        calibration: 0,
        ..Default::default()
    };
    let mut bandit = Bandit::new(params.check().unwrap(), prob).unwrap();
    bandit.run(&mut scorer, |_, _| true).unwrap();
    let st = bandit.state();
    assert_eq!(st.stop, Some(StopReason::NoArmAboveGamma));
    assert_eq!(st.docs_selected, 0);
    // The exploration pass samples every arm once (3 × 8); then no arm may beat γ = 5.
    assert_eq!(st.documents_scored, 24);
}

#[test]
fn resumed_state_continues_identically() {
    let sizes = [30, 50, 20, 40, 60];
    let make = || problem(&sizes, Budget::Tokens(3000), 4);
    let means = vec![0.5, -0.2, 1.0, 0.1, -1.0];
    let params = BanditParams {
        chunk: Some(6),
        ..Default::default()
    };
    let mut whole = Bandit::new(params.clone().check().unwrap(), make()).unwrap();
    whole.run(&mut planted(means.clone(), make().cluster, 1.0), |_, _| true).unwrap();

    let mut first = Bandit::new(params.clone().check().unwrap(), make()).unwrap();
    let mut n = 0;
    first
        .run(&mut planted(means.clone(), make().cluster, 1.0), |_, _| {
            n += 1;
            n < 3
        })
        .unwrap();
    let saved = serde_json::to_string(first.state()).unwrap();
    assert_eq!(first.state().stop, Some(StopReason::Interrupted));
    // Scores and taken flags are stored sparsely, and read back the same.
    let back: quad_select::bandit::BanditState = serde_json::from_str(&saved).unwrap();
    assert!(&back == first.state());
    let value: serde_json::Value = serde_json::from_str(&saved).unwrap();
    let scored = first.state().scores.iter().filter(|s| s.is_some()).count();
    assert_eq!(value["scores"]["set"].as_array().unwrap().len(), scored);
    assert_eq!(value["scores"]["len"], first.state().scores.len());
    let state = serde_json::from_str(&saved).unwrap();
    let mut resumed = Bandit::resume(params.clone().check().unwrap(), make(), state).unwrap();
    resumed.run(&mut planted(means, make().cluster, 1.0), |_, _| true).unwrap();
    assert!(resumed.state() == whole.state(), "the resumed run differs from the uninterrupted one");

    // A checkpoint from other parameters is refused.
    let other = BanditParams { alpha: 2.0, ..params };
    let state = serde_json::from_str(&saved).unwrap();
    assert!(Bandit::resume(other.check().unwrap(), make(), state).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// `mix`: the best-scored documents fill the fraction `mix` of the budget, the rest is taken
    /// at random from the others, no document twice, and the budget is met exactly as `topk` meets it.
    /// A budget whose top part rounds to nothing is `random` and scores nothing.
    #[test]
    fn mix_takes_the_top_fraction_then_random(
        sizes in prop::collection::vec(1usize..40, 2..6),
        limit in 10usize..60,
        mix in 0.0f64..=1.0,
        seed in 0u64..1000,
    ) {
        let prob = problem(&sizes, Budget::Documents(limit), seed);
        let n = prob.tokens.len();
        prop_assume!(n > limit);
        let means: Vec<f64> = (0..sizes.len()).map(|c| c as f64).collect();
        let mut scorer = planted(means.clone(), prob.cluster.clone(), 0.4);
        let scores = scorer(&(0..n).collect::<Vec<_>>()).unwrap();
        let params = BanditParams { policy: PolicyName::Mix, mix, seed, calibration: 0, ..Default::default() };
        let mut bandit = Bandit::new(params.check().unwrap(), prob).unwrap();
        bandit.run(&mut scorer, |_, _| true).unwrap();
        let st = bandit.state();
        let docs: Vec<usize> = st.selected.iter().map(|s| s.doc).collect();
        prop_assert_eq!(docs.len(), limit);
        prop_assert_eq!(docs.iter().collect::<HashSet<_>>().len(), limit);
        let top = (mix * limit as f64).round() as usize;
        let mut ranked: Vec<usize> = (0..n).collect();
        ranked.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        // The first `top` taken are exactly the `top` best, in order.
        prop_assert_eq!(&docs[..top], &ranked[..top]);
        // The pool is scored for the top part only: a part that takes nothing scores nothing.
        prop_assert_eq!(st.documents_scored, if top == 0 { 0 } else { n });
    }
}

/// A pool of `k` arms of `size` documents whose planted means fall with the arm index, no
/// neighbour sharing.
fn ranked_arms(k: usize, size: usize, budget: Budget) -> (Problem, Vec<f64>) {
    let mut prob = problem(&vec![size; k], budget, 9);
    prob.distances = vec![vec![1.0; k]; k];
    for (i, row) in prob.distances.iter_mut().enumerate() {
        row[i] = 0.0;
    }
    let means = (0..k).map(|c| 2.0 - 4.0 * c as f64 / (k - 1) as f64).collect();
    (prob, means)
}

#[test]
fn the_default_explores_every_arm_before_taking_anything() {
    let (prob, means) = ranked_arms(12, 50, Budget::Documents(150));
    let mut scorer = planted(means, prob.cluster.clone(), 0.5);
    let mut bandit = Bandit::new(BanditParams { calibration: 16, ..Default::default() }.check().unwrap(), prob).unwrap();
    // (the pass is the same for either allocation)
    while let Some(log) = bandit.step(&mut scorer).unwrap() {
        let st = bandit.state();
        if st.arms.iter().any(|a| a.times_chosen == 0) {
            assert_eq!(log.accepted, 0, "round {} took documents before every arm was sampled", log.round);
        }
    }
    assert_eq!(bandit.state().docs_selected, 150);
}

#[test]
fn the_fitted_gamma_admits_just_enough_arms() {
    // Direct check of the rule on a partly run bandit: the arms whose estimate beats γ hold at
    // least coverage × the remaining budget, and without the weakest of them they would not.
    for coverage in [1.0, 2.0, 3.0] {
        let (prob, means) = ranked_arms(16, 40, Budget::Tokens(4000));
        let tokens = prob.tokens.clone();
        let cluster = prob.cluster.clone();
        let mut scorer = planted(means, prob.cluster.clone(), 0.3);
        let params = BanditParams { coverage, calibration: 0, allocation: AllocationName::Threshold, ..Default::default() };
        let mut bandit = Bandit::new(params.check().unwrap(), prob).unwrap();
        for _ in 0..6 {
            bandit.step(&mut scorer).unwrap();
        }
        let st = bandit.state();
        let gamma = bandit.fitted_gamma(coverage);
        let remaining = 4000usize.saturating_sub(st.tokens_selected) as f64;
        let mut above: Vec<(f64, f64)> = Vec::new();
        for (c, a) in st.arms.iter().enumerate() {
            if a.scored == 0 || a.exhausted || a.spent {
                continue;
            }
            let est = a.score_sum / a.scored as f64;
            let mass: usize = (0..tokens.len()).filter(|&d| cluster[d] == c && !st.taken[d]).map(|d| tokens[d]).sum();
            if est > gamma {
                above.push((est, mass as f64));
            }
        }
        let held: f64 = above.iter().map(|a| a.1).sum();
        assert!(held >= coverage * remaining, "coverage {coverage}: {held} < {}", coverage * remaining);
        let weakest = above.iter().map(|a| a.0).fold(f64::INFINITY, f64::min);
        let without: f64 = above.iter().filter(|a| a.0 > weakest).map(|a| a.1).sum();
        assert!(without < coverage * remaining, "coverage {coverage}: γ = {gamma} admits more arms than needed");
    }
}

#[test]
fn the_fitted_threshold_meets_the_budget_from_the_best_arms() {
    // Half the pool's arms would fill the budget twice over (coverage 2 of a budget of a quarter
    // of the pool); the selection comes from them, and the budget is met even though a fixed
    // γ above every arm's mean would stop short.
    let (prob, means) = ranked_arms(16, 60, Budget::Documents(240));
    let best: HashSet<usize> = (0..8).collect();
    let mut scorer = planted(means, prob.cluster.clone(), 0.5);
    let params = BanditParams { calibration: 32, allocation: AllocationName::Threshold, ..Default::default() };
    let mut bandit = Bandit::new(params.check().unwrap(), prob).unwrap();
    assert_eq!(bandit.chunk(), 15, "even share: 240 documents over 16 arms");
    bandit.run(&mut scorer, |_, _| true).unwrap();
    let st = bandit.state();
    assert_eq!(st.stop, Some(StopReason::BudgetMet));
    assert_eq!(st.docs_selected, 240);
    let from_best = st.selected.iter().filter(|s| best.contains(&s.cluster)).count();
    assert!(from_best * 10 >= 240 * 9, "{from_best} of 240 from the best half");
    assert!(st.documents_scored < 960 / 2, "scored {} of 960", st.documents_scored);
}

#[test]
fn tilted_quotas_follow_size_times_exp_estimate() {
    let (prob, means) = ranked_arms(10, 40, Budget::Documents(120));
    let mut scorer = planted(means, prob.cluster.clone(), 0.3);
    let params = BanditParams { calibration: 0, allocation: AllocationName::Tilted, ..Default::default() };
    let mut bandit = Bandit::new(params.check().unwrap(), prob).unwrap();
    // After the exploration pass (3 rounds of 4 arms), every arm has an estimate.
    for _ in 0..3 {
        bandit.step(&mut scorer).unwrap();
    }
    let st = bandit.state();
    let q = bandit.quotas(BanditParams::default().temperature);
    assert!((q.iter().sum::<f64>() - 120.0).abs() < 1e-9, "{q:?}");
    let est: Vec<f64> = st.arms.iter().map(|a| a.score_sum / a.scored as f64).collect();
    // Uncapped arms: q_c ∝ 40 · exp(e_c / T), checked pairwise against the direct formula.
    let t = BanditParams::default().temperature;
    for a in 0..10 {
        assert!(q[a] <= 40.0 + 1e-9);
        for b in 0..10 {
            if q[a] < 40.0 && q[b] < 40.0 {
                assert!(((q[a] / q[b]).ln() - (est[a] - est[b]) / t).abs() < 1e-9, "arms {a}, {b}");
            }
        }
    }
    // The run meets the budget, spread over the arms (quotas are rounded up, so the last arms
    // in Cluster Score order may find the budget met), more from the better arms.
    bandit.run(&mut scorer, |_, _| true).unwrap();
    let st = bandit.state();
    assert_eq!(st.docs_selected, 120);
    let served = (0..10).filter(|&c| q[c] >= 1.0 && st.arms[c].taken >= 1).count();
    let entitled = (0..10).filter(|&c| q[c] >= 1.0).count();
    assert!(served + 2 >= entitled, "{served} of {entitled} arms with a quota got documents");
    assert!(st.arms[0].taken > st.arms[9].taken);
}

/// Per-arm sums of `p_d = min(1, λ · w_d)` with λ found by bisection (in ln λ) so that `Σ p_d = docs`:
/// the direct, slow form of the document-level water-filling.
fn direct_document_quotas(w: &[f64], cluster: &[usize], k: usize, docs: f64) -> Vec<f64> {
    let fill = |ln_l: f64| w.iter().map(|&x| (ln_l.exp() * x).min(1.0)).sum::<f64>();
    let (mut lo, mut hi) = (-700.0, 700.0);
    for _ in 0..200 {
        let mid = (lo + hi) / 2.0;
        if fill(mid) < docs {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let l = ((lo + hi) / 2.0).exp();
    let mut q = vec![0.0; k];
    for (d, &x) in w.iter().enumerate() {
        q[cluster[d]] += (l * x).min(1.0);
    }
    q
}

#[test]
fn document_quotas_match_the_direct_water_filling() {
    let (prob, means) = ranked_arms(10, 40, Budget::Documents(120));
    let cluster = prob.cluster.clone();
    let mut scorer = planted(means, cluster.clone(), 2.0);
    let t = 0.5;
    let params = BanditParams {
        calibration: 0,
        allocation: AllocationName::TiltedDocuments,
        temperature: t,
        ..Default::default()
    };
    let mut bandit = Bandit::new(params.check().unwrap(), prob).unwrap();
    assert_eq!(bandit.allowance(), 2 * 10 * 8);
    // Exploration (3 rounds of 4 arms), then refinement rounds: nothing is taken while scoring.
    for _ in 0..5 {
        bandit.step(&mut scorer).unwrap();
    }
    let st = bandit.state();
    assert_eq!(st.docs_selected, 0, "documents taken while the allowance lasts");
    assert!(st.documents_scored > 80 && st.documents_scored <= 160, "{}", st.documents_scored);
    let est: Vec<f64> = st.arms.iter().map(|a| a.score_sum / a.scored as f64).collect();
    let w: Vec<f64> = (0..cluster.len())
        .map(|d| (st.scores[d].unwrap_or(est[cluster[d]]) / t).exp())
        .collect();
    let direct = direct_document_quotas(&w, &cluster, 10, 120.0);
    let q = bandit.document_quotas(t);
    for c in 0..10 {
        assert!((q[c] - direct[c]).abs() < 1e-6, "arm {c}: {} vs direct {}", q[c], direct[c]);
    }
    assert!((direct.iter().sum::<f64>() - 120.0).abs() < 1e-6);
    let scores: Vec<Option<f64>> = st.scores.clone();
    bandit.run(&mut scorer, |_, _| true).unwrap();
    let st = bandit.state();
    assert_eq!(st.docs_selected, 120);
    assert!(st.documents_scored <= bandit.allowance());
    // The best scored documents, whose own weights fill their shares, are taken.
    let mut best: Vec<(f64, usize)> = scores.iter().enumerate().filter_map(|(d, s)| s.map(|s| (s, d))).collect();
    best.sort_by(|a, b| b.0.total_cmp(&a.0));
    let top: Vec<usize> = best.iter().take(20).map(|x| x.1).collect();
    let taken = top.iter().filter(|&&d| st.taken[d]).count();
    assert!(taken >= 18, "{taken} of the 20 best scored documents taken");
}

/// Features of a synthetic pool: unit rows in 8 dimensions from a seeded hash; the score of
/// document d is linear in its row (`4 · x_d · u`), so an estimator on the rows can see what the
/// cluster mean cannot.
fn linear_pool(n: usize, seed: u64) -> (ndarray::Array2<f32>, Vec<f64>) {
    let mut h = seed.wrapping_add(7);
    let mut next = || {
        h ^= h << 13;
        h ^= h >> 7;
        h ^= h << 17;
        (h % 20_001) as f32 / 10_000.0 - 1.0
    };
    let mut x = ndarray::Array2::from_shape_fn((n, 8), |_| next());
    for mut r in x.outer_iter_mut() {
        let norm = r.dot(&r).sqrt();
        r /= norm;
    }
    let u = [0.6, -0.3, 0.5, 0.1, -0.4, 0.2, 0.3, 0.0];
    let s = x.outer_iter().map(|r| 4.0 * r.iter().zip(u).map(|(a, b)| f64::from(*a) * b).sum::<f64>()).collect();
    (x, s)
}

fn by_index(scores: Vec<f64>) -> impl FnMut(&[usize]) -> Result<Vec<f64>, String> {
    move |docs: &[usize]| Ok(docs.iter().map(|&d| scores[d]).collect())
}

#[test]
fn predicted_scores_a_uniform_sample_of_the_allowance_whatever_the_scores() {
    let sizes = [120, 80, 200, 60, 140];
    let make = || problem(&sizes, Budget::Documents(100), 3);
    let n: usize = sizes.iter().sum();
    let params = BanditParams { policy: PolicyName::Predicted, ..Default::default() };
    let scored_set = |scores: Vec<f64>| {
        let mut b = Bandit::new(params.clone().check().unwrap(), make()).unwrap();
        b.run(&mut by_index(scores), |_, _| true).unwrap();
        assert_eq!(b.state().stop, Some(StopReason::BudgetMet));
        assert_eq!(b.state().documents_scored, b.allowance(), "scores exactly Quad's allowance");
        b.state().scores.iter().enumerate().filter_map(|(d, s)| s.map(|_| d)).collect::<Vec<_>>()
    };
    // What is scored does not depend on what the scores turn out to be (not adaptive).
    let a = scored_set((0..n).map(|d| d as f64).collect());
    let b = scored_set((0..n).map(|d| -(d as f64) * 0.5 + 3.0).collect());
    assert_eq!(a, b);
    // Quad's bandit, given the same scores, scores where they are high.
    let mut quad = Bandit::new(BanditParams::default().check().unwrap(), make()).unwrap();
    quad.run(&mut by_index((0..n).map(|d| d as f64).collect()), |_, _| true).unwrap();
    assert_eq!(quad.state().documents_scored, quad.allowance());
}

#[test]
fn a_document_level_estimator_takes_the_documents_it_expects_to_be_best() {
    use quad_select::bandit::Estimator;
    let sizes = [150, 150, 150, 150];
    let n: usize = sizes.iter().sum();
    let (x, s) = linear_pool(n, 11);
    let make = || problem(&sizes, Budget::Documents(120), 5);
    let run = |estimator: Estimator, policy: PolicyName| {
        let params = BanditParams { estimator, policy, ..Default::default() };
        let mut b = Bandit::new(params.check().unwrap(), make()).unwrap().with_features(Box::new(x.clone())).unwrap();
        b.run(&mut by_index(s.clone()), |_, _| true).unwrap();
        assert_eq!(b.state().stop, Some(StopReason::BudgetMet));
        assert_eq!(b.state().docs_selected, 120);
        b.state().selected.iter().map(|t| s[t.doc]).sum::<f64>() / 120.0
    };
    // The clusters here carry no signal; the rows carry all of it.
    for policy in [PolicyName::Ucb, PolicyName::Predicted] {
        let mean = run(Estimator::ClusterMean, policy);
        let ridge = run(Estimator::Ridge, policy);
        assert!(ridge > mean + 0.3, "{policy}: ridge {ridge:.3} vs cluster mean {mean:.3}");
    }
    // Without the rows, an estimator that needs them is a clear error, not a panic.
    let params = BanditParams { estimator: Estimator::Ridge, ..Default::default() };
    let mut b = Bandit::new(params.check().unwrap(), make()).unwrap();
    let err = b.run(&mut by_index(s.clone()), |_, _| true).unwrap_err();
    assert!(err.to_string().contains("needs the pool's embeddings"), "{err}");
    // Rows that do not match the pool are refused up front.
    let params = BanditParams { estimator: Estimator::Ridge, ..Default::default() };
    assert!(Bandit::new(params.check().unwrap(), make()).unwrap().with_features(Box::new(x.slice(ndarray::s![..10, ..]).to_owned())).is_err());
}

#[test]
fn a_resumed_run_with_a_document_level_estimator_continues_identically() {
    use quad_select::bandit::Estimator;
    let sizes = [90, 60, 120, 30];
    let n: usize = sizes.iter().sum();
    let (x, s) = linear_pool(n, 2);
    let make = || problem(&sizes, Budget::Tokens(2000), 9);
    let params = BanditParams { estimator: Estimator::ClusterRidge, chunk: Some(5), ..Default::default() };
    let fresh = || Bandit::new(params.clone().check().unwrap(), make()).unwrap().with_features(Box::new(x.clone())).unwrap();
    let mut whole = fresh();
    whole.run(&mut by_index(s.clone()), |_, _| true).unwrap();
    for stop_after in [3, 12] {
        let mut first = fresh();
        let mut rounds = 0;
        first.run(&mut by_index(s.clone()), |_, _| { rounds += 1; rounds < stop_after }).unwrap();
        let state = serde_json::from_str(&serde_json::to_string(first.state()).unwrap()).unwrap();
        let mut resumed = Bandit::resume(params.clone().check().unwrap(), make(), state).unwrap().with_features(Box::new(x.clone())).unwrap();
        resumed.run(&mut by_index(s.clone()), |_, _| true).unwrap();
        assert!(resumed.state() == whole.state(), "resumed after {stop_after} rounds: differs");
    }
}

#[test]
fn the_default_estimator_is_not_written_into_parameters() {
    let json = serde_json::to_value(BanditParams::default()).unwrap();
    assert!(json.get("estimator").is_none(), "manifests of default runs keep their bytes");
    let p: BanditParams = toml::from_str("estimator = \"ridge\"").unwrap();
    assert_eq!(p.estimator, quad_select::bandit::Estimator::Ridge);
    let p: BanditParams = toml::from_str("estimator = { knn = { k = 20 } }").unwrap();
    assert_eq!(p.estimator, quad_select::bandit::Estimator::Knn { k: 20 });
    assert!(toml::from_str::<BanditParams>("estimator = \"oracle\"").is_err());
    let zero: BanditParams = toml::from_str("estimator = { knn = { k = 0 } }").unwrap();
    assert!(zero.check().is_err());
}

#[test]
fn a_calibration_sample_of_equal_scores_is_an_error() {
    // What an infinite damping gave: every score 0.0, nothing to standardise by.
    let (prob, _) = ranked_arms(4, 20, Budget::Documents(10));
    let mut zeros = |idx: &[usize]| Ok::<_, String>(vec![0.0; idx.len()]);
    let mut bandit = Bandit::new(BanditParams { calibration: 16, ..Default::default() }.check().unwrap(), prob).unwrap();
    let e = loop {
        match bandit.step(&mut zeros) {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the run finished on equal scores"),
            Err(e) => break e.to_string(),
        }
    };
    assert!(e.contains("all equal"), "{e}");
}

/// The signal policies (`dsir`, `classifier`, `perplexity`): without β the highest signals
/// first until the budget is met, as `topk` meets it; nothing scored.
#[test]
fn a_signal_policy_without_beta_takes_the_highest_signals_first() {
    for policy in [PolicyName::Classifier, PolicyName::Perplexity] {
        let prob = problem(&[30, 20, 10], Budget::Tokens(300), 4);
        let n = prob.tokens.len();
        let signal: Vec<f64> = (0..n).map(|d| ((d * 37) % n) as f64).collect();
        let tokens = prob.tokens.clone();
        let params = BanditParams { policy, ..Default::default() };
        let mut bandit = Bandit::new(params.check().unwrap(), prob).unwrap().with_signal(signal.clone()).unwrap();
        let mut never = |_: &[usize]| -> Result<Vec<f64>, String> { panic!("a signal policy scores nothing") };
        bandit.run(&mut never, |_, _| true).unwrap();
        let st = bandit.state();
        let docs: Vec<usize> = st.selected.iter().map(|s| s.doc).collect();
        let mut ranked: Vec<usize> = (0..n).collect();
        ranked.sort_by(|&a, &b| signal[b].total_cmp(&signal[a]));
        assert_eq!(docs, ranked[..docs.len()]);
        // The budget is met by the last document taken, not before.
        let used: usize = docs.iter().map(|&d| tokens[d]).sum();
        assert!(used >= 300 && used - tokens[*docs.last().unwrap()] < 300);
        assert_eq!((st.documents_scored, st.stop.clone()), (0, Some(StopReason::BudgetMet)));
    }
}

/// With β, documents are drawn without replacement with probability ∝ exp(β · s): the first
/// document taken, over many seeds, follows that law (signals 0, ln 2, ln 4 at β = 1: 1/7, 2/7,
/// 4/7; at β = 2: 1/21, 4/21, 16/21).
#[test]
fn a_signal_policy_with_beta_draws_in_proportion_to_exp_beta_signal() {
    for (beta, expect) in [(1.0, [1.0 / 7.0, 2.0 / 7.0, 4.0 / 7.0]), (2.0, [1.0 / 21.0, 4.0 / 21.0, 16.0 / 21.0])] {
        let mut first = [0usize; 3];
        let draws = 4000;
        for seed in 0..draws {
            let prob = problem(&[3], Budget::Documents(1), 0);
            let params = BanditParams { policy: PolicyName::Dsir, beta: Some(beta), seed, ..Default::default() };
            let signal = vec![0.0, 2f64.ln(), 4f64.ln()];
            let mut bandit = Bandit::new(params.check().unwrap(), prob).unwrap().with_signal(signal).unwrap();
            bandit.run(&mut |_: &[usize]| -> Result<Vec<f64>, String> { unreachable!() }, |_, _| true).unwrap();
            first[bandit.state().selected[0].doc] += 1;
        }
        for d in 0..3 {
            let p = first[d] as f64 / draws as f64;
            // 4 binomial SDs at 4,000 draws.
            let sd = (expect[d] * (1.0 - expect[d]) / draws as f64).sqrt();
            assert!((p - expect[d]).abs() < 4.0 * sd, "β {beta}, doc {d}: {p} vs {}", expect[d]);
        }
    }
}

#[test]
fn a_signal_policy_refuses_a_missing_or_bad_signal() {
    let prob = || problem(&[5, 5], Budget::Documents(3), 1);
    let params = || BanditParams { policy: PolicyName::Dsir, ..Default::default() }.check().unwrap();
    let mut bandit = Bandit::new(params(), prob()).unwrap();
    let e = bandit.run(&mut |_: &[usize]| -> Result<Vec<f64>, String> { unreachable!() }, |_, _| true).unwrap_err();
    assert!(e.to_string().contains("dsir signal"), "{e}");
    assert!(Bandit::new(params(), prob()).unwrap().with_signal(vec![0.0; 9]).is_err());
    let mut nan = vec![0.0; 10];
    nan[4] = f64::NAN;
    let e = Bandit::new(params(), prob()).unwrap().with_signal(nan).err().unwrap();
    assert!(e.to_string().contains("document 4"), "{e}");
}
