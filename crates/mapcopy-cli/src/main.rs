//! `mapcopy`: measure the strategies.
//!
//! Each subcommand lives in its own module with an `Args` struct (clap
//! derive) and a `run(args) -> ExitCode`; this file only dispatches.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;

/// MAP_COPY for Linux: file mappings that other writers cannot change.
#[derive(Parser, Debug)]
#[command(name = "mapcopy", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Every usable strategy against MAP_PRIVATE, std::fs::read and the THP
    /// copy limit in one run: table, goals, and with --out a report and plots.
    Bench(bench::Args),
}

fn main() -> ExitCode {
    // Re-executed as a writer or checker process: runs that and exits.
    mapcopy_check::child::dispatch();
    match Cli::parse().command {
        Command::Bench(args) => bench::run(args),
    }
}
