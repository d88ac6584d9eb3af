//! `mapcopy`: probe what this machine offers, demonstrate the contract.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod torture;

/// MAP_COPY for Linux: file mappings that other writers cannot change.
#[derive(Parser, Debug)]
#[command(name = "mapcopy", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Seeded random writers race readers of every strategy; the checker
    /// proves the contract from their logs. Last line: `N passed, N failed`.
    Torture(torture::Args),
}

fn main() -> ExitCode {
    // Re-executed as a writer or checker process: runs that and exits.
    mapcopy_check::child::dispatch();
    match Cli::parse().command {
        Command::Torture(args) => torture::run(args),
    }
}
