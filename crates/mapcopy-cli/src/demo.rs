//! `mapcopy demo` (being written).

/// Arguments of `mapcopy demo`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> std::process::ExitCode {
    std::process::ExitCode::FAILURE
}
