//! Progress on the terminal: a bar per stage and a line per round for `quad select` (an
//! [`Observer`] that also stops the run on Ctrl-C), and the bars of the single-stage commands.

use std::io::IsTerminal;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use crate::bandit::Budget;
use crate::select::{Event, Observer};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Makes the first Ctrl-C a request to stop after the current stage or round; a second quits at
/// once (exit 130; the last checkpoint still resumes).
pub fn stop_on_ctrl_c() {
    // Only an atomic is touched (the handler runs on ctrlc's own thread). Setting it fails only
    // when a handler is already set, which nothing else in `quad` does.
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
}

/// Stage bars and per-round lines for `quad select`; stops the run after Ctrl-C, or after round
/// `stop_after` (the test hook `QUAD_STOP_AFTER_ROUND`, which acts as Ctrl-C would).
pub struct CliObserver {
    bar: Option<ProgressBar>,
    stop_after: Option<usize>,
}

impl CliObserver {
    pub fn new() -> Self {
        Self {
            bar: None,
            stop_after: std::env::var("QUAD_STOP_AFTER_ROUND").ok().and_then(|v| v.parse().ok()),
        }
    }

    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }

    fn println(&self, line: &str) {
        match &self.bar {
            Some(b) if !b.is_hidden() => b.println(line),
            _ => eprintln!("{line}"),
        }
    }

    fn stage(&mut self, name: &str, cached: bool) {
        self.finish();
        if cached {
            eprintln!("{name}: cached");
            return;
        }
        if !std::io::stderr().is_terminal() {
            eprintln!("{name} ...");
        }
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template("{prefix}: [{bar:30}] {pos}/{len} [{elapsed_precise}<{eta_precise}]")
                .expect("valid template")
                .progress_chars("=> "),
        );
        b.set_prefix(name.to_string());
        self.bar = Some(b);
    }

    fn round(&self, log: &crate::bandit::RoundLog, budget: Budget, best: f64) {
        let (used, limit, unit) = match budget {
            Budget::Tokens(n) => (log.tokens_selected, n, "tokens"),
            Budget::Documents(n) => (log.docs_selected, n, "docs"),
        };
        let line = format!(
            "round {:>4}: {used}/{limit} {unit}, scored {}, accepted {}, best CS {best:.3}",
            log.round, log.scored, log.accepted
        );
        if let Some(b) = self.bar.as_ref().filter(|b| !b.is_hidden()) {
            b.set_length(limit as u64);
            b.set_position(used.min(limit) as u64);
        }
        self.println(&line);
    }
}

impl Observer for CliObserver {
    fn event(&mut self, event: Event<'_>) -> ControlFlow<()> {
        let mut stop = INTERRUPTED.load(Ordering::SeqCst);
        match event {
            Event::Stage { name, cached } => self.stage(name, cached),
            Event::Progress { done, total } => {
                if let Some(b) = &self.bar {
                    b.set_length(total);
                    b.set_position(done);
                }
            }
            Event::Note(line) => self.println(line),
            Event::StageDone { .. } => {}
            Event::Round { log, budget, best_index } => {
                self.round(log, budget, best_index);
                stop |= self.stop_after.is_some_and(|k| log.round + 1 >= k);
            }
        }
        if stop {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

/// A spinner counting documents.
pub fn spinner(what: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix}: {pos} docs, {per_sec} [{elapsed_precise}]")
            .expect("valid template"),
    );
    bar.set_prefix(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A bar of `len` iterations.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix}: [{bar:30}] iter {pos} {msg} [{elapsed_precise}]")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

/// A bar of `len` items with a custom template.
pub fn templated(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(ProgressStyle::with_template(template).expect("valid template").progress_chars("=> "));
    bar
}
