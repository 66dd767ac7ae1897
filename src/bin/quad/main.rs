//! `quad`: the command line. Flags are parsed in [`args`], each command in [`commands`] builds
//! library types and prints, and [`progress`] draws bars; no stage logic lives here.

mod args;
mod commands;
mod progress;

use anyhow::Result;

use args::{Cli, Command, ProxyCommand};

fn main() {
    // Before any thread exists: it sets an environment variable (see its docs).
    quad_select::influence::prefer_document_parallelism();
    quad_select::tune_allocator();
    let cli = args::command()
        .try_get_matches()
        .and_then(|m| <Cli as clap::FromArgMatches>::from_arg_matches(&m))
        .unwrap_or_else(|e| e.exit());
    if let Err(e) = run(cli) {
        if let Some(Exit(code)) = e.downcast_ref::<Exit>() {
            std::process::exit(*code);
        }
        eprintln!("error: {}", quad_select::error_text::error_text(e.as_ref()));
        std::process::exit(1);
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
