//! `mapcopy`: probe what this machine offers, demonstrate the contract.
//!
//! Each subcommand lives in its own module with an `Args` struct (clap
//! derive) and a `run(args) -> ExitCode`; this file only dispatches. To add
//! one, write `src/<name>.rs` and add a variant to [`Command`] and a line to
//! `main`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod demo;
mod probe;
mod size;
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
    /// Which strategies can map PATH (or any file) here, and why not the others.
    Probe(probe::Args),
    /// Show plain MAP_PRIVATE breaking under another process's writes, and
    /// every usable copy strategy keeping its snapshot.
    Demo(demo::Args),
    /// Seeded random writers race readers of every strategy; the checker
    /// proves the contract from their logs. Last line: `N passed, N failed`.
    Torture(torture::Args),
    /// Every usable strategy against MAP_PRIVATE, std::fs::read and the THP
    /// copy limit in one run: table, goals, and with --out a report and plots.
    Bench(bench::Args),
}

fn main() -> ExitCode {
    // Re-executed as a writer or checker process: runs that and exits.
    mapcopy_check::child::dispatch();
    match Cli::parse().command {
        Command::Probe(args) => probe::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Torture(args) => torture::run(args),
        Command::Bench(args) => bench::run(args),
    }
}
