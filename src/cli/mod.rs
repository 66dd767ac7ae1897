//! The `quad` command line, as a function: the binary (`src/main.rs`) and the Python package's
//! `quad` command (its entry point calls [`main`] through the extension module, so the wheel needs
//! no second binary) both run it. Flags are parsed in `args`, each command in `commands` builds
//! library types and prints, and `progress` draws bars; no stage logic lives here.

mod args;
mod commands;
mod progress;

use std::ffi::OsString;

use anyhow::Result;

use args::{Cli, Command, ProxyCommand};

/// Runs `quad` with `args` (the program name first, as [`std::env::args_os`] gives them) and
/// returns its exit status: 0, 1 for an error (printed on stderr), 2 for a usage error,
/// [`EXIT_INTERRUPTED`] after Ctrl-C. Call it before the process starts other threads: it sets an
/// environment variable (see [`crate::influence::prefer_document_parallelism`]).
pub fn main<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    crate::influence::prefer_document_parallelism();
    crate::tune_allocator();
    let parsed = args::command()
        .try_get_matches_from(args)
        .and_then(|m| <Cli as clap::FromArgMatches>::from_arg_matches(&m));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are "errors" that print to stdout and exit 0.
            let _ = e.print();
            return e.exit_code();
        }
    };
    match run(cli) {
        Ok(()) => 0,
        Err(e) => match e.downcast_ref::<Exit>() {
            Some(Exit(code)) => *code,
            None => {
                eprintln!("error: {}", crate::error_text::error_text(e.as_ref()));
                1
            }
        },
    }
}

/// Exit status of a run stopped by Ctrl-C: 128 + SIGINT, as a shell reports a process it killed.
pub const EXIT_INTERRUPTED: i32 = 130;

/// A command that has said why it stops and only wants this exit status.
#[derive(Debug)]
pub struct Exit(pub i32);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for Exit {}

fn run(cli: Cli) -> Result<()> {
    cli.command.check_paths()?;
    match cli.command {
        Command::Select(args) => commands::select::run(&args),
        Command::Eval(cmd) => commands::eval::run(cmd),
        Command::Embed { corpus, embedder, out } => commands::embed::embed(&corpus, &embedder, &out),
        Command::Cluster {
            corpus,
            embedder,
            embeddings,
            kmeans,
            label_field,
            out,
        } => commands::embed::cluster(&corpus, &embedder, embeddings, &kmeans, label_field, &out),
        Command::Proxy(ProxyCommand::Train { corpus, proxy, out }) => commands::model::proxy_train(&corpus, &proxy, &out),
        Command::Factors { corpus, factors, out } => commands::model::factors(&corpus, &factors, &out),
        Command::Influence { corpus, influence, out } => commands::model::influence(&corpus, &influence, &out),
        Command::Validate { corpus, validate, out } => commands::model::validate(&corpus, &validate, &out),
    }
}
