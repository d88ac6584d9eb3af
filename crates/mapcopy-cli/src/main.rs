mod bench;

use std::process::ExitCode;

use clap::Parser;

/// MAP_COPY for Linux: file mappings no other writer can change.
#[derive(Parser)]
#[command(name = "mapcopy", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Every strategy against MAP_PRIVATE, std::fs::read and the THP copy
    /// limit in one run: table, report, plots, goals.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    mapcopy_check::child::dispatch();
    let result = match Cli::parse().command {
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mapcopy: {e}");
            ExitCode::FAILURE
        }
    }
}
