//! Running a piece of this crate in a separate process.
//!
//! The contract says "writes by anyone": the writers in tests, the demo and
//! the torture run must be other processes, not threads. Every binary that
//! uses this crate re-executes itself: it calls [`dispatch`] first thing in
//! `main`, and [`command`] builds a `Command` that runs the named entry point
//! in a fresh copy of the same executable.
//!
//! ```no_run
//! mapcopy_check::child::dispatch(); // returns only in the parent
//! // ... the program proper
//! ```

use std::process::Command;

/// Environment variable naming the entry point a child runs.
pub const CHILD_ENV: &str = "MAPCOPY_CHECK_CHILD";

/// If this process was started by [`command`], runs the entry point it names
/// with the command-line arguments and exits with its status. Otherwise
/// returns at once.
pub fn dispatch() {
    dispatch_with(&[]);
}

/// An entry point of one binary: its name and what it runs (the
/// command-line arguments in, the exit status out).
pub type Entry = (&'static str, fn(&[String]) -> i32);

/// [`dispatch`], with the binary's own entry points `local` tried first:
/// how a test binary runs pieces of itself as other processes (start them
/// with [`command`]).
pub fn dispatch_with(local: &[Entry]) {
    let Ok(name) = std::env::var(CHILD_ENV) else {
        return;
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some((_, run)) = local.iter().find(|(n, _)| *n == name) {
        std::process::exit(run(&args));
    }
    let code = match name.as_str() {
        // Entry points, one line each: "name" => module::child_main(&args),
        crate::demo::WRITER => crate::demo::writer_main(&args),
        crate::modify::ENTRY => crate::modify::child_main(&args),
        "torture-writer" => crate::torture::writer::child_main(&args),
        "torture-reader" => crate::torture::reader::child_main(&args),
        crate::bench_writer::ENTRY => crate::bench_writer::child_main(&args),
        crate::bench_writer::OP_ENTRY => crate::bench_writer::op_child_main(&args),
        crate::rewrite::ENTRY => crate::rewrite::child_main(&args),
        "echo" => {
            // Prints its arguments: lets a test prove the re-exec works.
            println!("{}", args.join(" "));
            0
        }
        other => {
            eprintln!("mapcopy-check: unknown child entry point {other:?}");
            2
        }
    };
    std::process::exit(code);
}

/// A `Command` that runs entry point `name` with `args` in a new process
/// (this same executable, re-executed).
pub fn command<S: AsRef<std::ffi::OsStr>>(name: &str, args: &[S]) -> Command {
    wrapped(&[], name, args)
}

/// [`command`] run through `wrapper` (e.g. `["timeout", "60"]`): the
/// wrapper's program with its arguments, then this executable.
pub fn wrapped<S: AsRef<std::ffi::OsStr>>(wrapper: &[&str], name: &str, args: &[S]) -> Command {
    let exe = std::env::current_exe().expect("path of the running executable");
    let mut cmd = match wrapper.split_first() {
        Some((prog, rest)) => {
            let mut c = Command::new(prog);
            c.args(rest).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    cmd.env(CHILD_ENV, name).args(args);
    cmd
}
