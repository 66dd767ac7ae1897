//! `quad`: the command line ([`quad_select::cli`]).

fn main() {
    std::process::exit(quad_select::cli::main(std::env::args_os()));
}
