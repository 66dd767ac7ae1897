//! `quad select`.

use std::time::Instant;

use anyhow::Result;
use crate::bandit::{Budget, StopReason};
use crate::select::{rounds_done, SelectError, Selector};

use crate::cli::args::SelectArgs;
use crate::cli::progress::{stop_on_ctrl_c, CliObserver};

pub fn run(args: &SelectArgs) -> Result<()> {
    let config = args.config()?.check()?;
    let budget = Budget::from_options(args.budget_tokens, args.budget_documents)?;
    let selector = Selector::new(config)
        .cache(&args.cache)
        .checkpoint(args.out.join("checkpoint.json"), args.resume);
    let _lock = selector.prepare_out(&args.input, &args.reference, budget, &args.out)?;
    stop_on_ctrl_c();
    let mut observer = CliObserver::new();
    let started = Instant::now();
    let result = selector.select(&args.input, &args.reference, budget, &mut observer);
    observer.finish();
    let selection = match result {
        Err(SelectError::Interrupted {
            rounds: Some(rounds),
            docs,
            tokens,
        }) => {
            println!(
                "stopped after {}: {docs} documents, {tokens} tokens so far; continue with --resume",
                rounds_done(rounds)
            );
            return Err(crate::cli::Exit(crate::cli::EXIT_INTERRUPTED).into());
        }
        Err(e @ SelectError::Interrupted { rounds: None, .. }) => {
            eprintln!("{e}");
            return Err(crate::cli::Exit(crate::cli::EXIT_INTERRUPTED).into());
        }
        other => other?,
    };
    selection.write(&args.out)?;
    let m = &selection.manifest;
    let why = match &m.stop {
        Some(StopReason::BudgetMet) => "budget met".to_string(),
        Some(StopReason::PoolExhausted) => "pool exhausted before the budget".to_string(),
        Some(StopReason::NoArmAboveGamma) => {
            "stopped short of the budget: no cluster's mean score beats gamma (lower --gamma)".to_string()
        }
        other => format!("{other:?}"),
    };
    let speed = m.scoring.map_or(String::new(), |t| format!(", {} here at {:.1} docs/s", t.documents, t.docs_per_second));
    println!(
        "selected {} documents, {} tokens in {} rounds ({why}); scored {} documents ({:.1}% of the pool's scoring compute{speed}); {:.1} s -> {}",
        m.documents.selected,
        m.documents.tokens_selected,
        m.rounds,
        m.documents.scored,
        100.0 * m.documents.scored_compute_fraction,
        started.elapsed().as_secs_f64(),
        args.out.join("selected.jsonl").display()
    );
    Ok(())
}
