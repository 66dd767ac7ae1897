//! What a run tells the caller while it works ([`Event`]), and the [`Observer`] that watches it
//! and may stop it between stages and rounds.

use std::ops::ControlFlow;

use crate::bandit::{Budget, RoundLog};

/// What a run tells its [`Observer`].
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// A stage starts (`cached`: its artifact is reused).
    Stage { name: &'a str, cached: bool },
    /// Work done within the current stage.
    Progress { done: u64, total: u64 },
    /// A free-form line (counts, skips, resuming).
    Note(&'a str),
    /// A stage finished. Returning `Break` stops the run here.
    StageDone { name: &'a str },
    /// A bandit round finished and was checkpointed. Returning `Break` stops the run here; the
    /// checkpoint resumes it.
    Round {
        log: &'a RoundLog,
        budget: Budget,
        /// The largest Cluster Score (or policy index) among the round's picks.
        best_index: f64,
    },
}

/// Watches a run, and may stop it between stages and rounds (Ctrl-C, a deadline, a test).
pub trait Observer {
    fn event(&mut self, event: Event<'_>) -> ControlFlow<()>;
}

/// An observer that sees nothing and never stops the run.
pub struct Quiet;

impl Observer for Quiet {
    fn event(&mut self, _: Event<'_>) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

impl<F: FnMut(Event<'_>) -> ControlFlow<()>> Observer for F {
    fn event(&mut self, event: Event<'_>) -> ControlFlow<()> {
        self(event)
    }
}

