//! `mapcopy torture`: seeded random writers (separate processes, every
//! modification kind) race seeded random readers of each strategy; the
//! checker proves S1–S3 from their logs (see `mapcopy_check::torture`).
//!
//! Output: a progress line on stderr, a table per strategy on stdout, and
//! the last line `N passed, N failed`, counting strategies (a strategy
//! passes when it shows no violation; torn pages fail only strategies that
//! do not document them). With `--replay FILE` the unit is the replay: it
//! fails when the violation is reproduced.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use mapcopy_check::torture::op::Kind;
use mapcopy_check::torture::{self, Config, Progress, Stats, Target};

/// Arguments of `mapcopy torture`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Strategy to torture: a name (eager, lazy, reflink, lease, guard),
    /// `all` (every strategy probe finds usable), or `private` (plain
    /// MAP_PRIVATE, the control that must fail).
    #[arg(long, default_value = "all")]
    strategy: String,
    /// Run each strategy this many seconds (default 10 unless --ops).
    #[arg(long, conflicts_with = "ops")]
    seconds: Option<f64>,
    /// Run each strategy for this many writer operations.
    #[arg(long)]
    ops: Option<u64>,
    /// Master seed (default: from the clock; always printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Writer processes.
    #[arg(long, default_value_t = 2)]
    writers: u32,
    /// Reader processes.
    #[arg(long, default_value_t = 2)]
    readers: u32,
    /// Largest file size, in 4 KiB pages.
    #[arg(long, default_value_t = 64)]
    pages: u64,
    /// Directory on the filesystem to test (default: the temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Only these op kinds, comma-separated (write, pwrite, writev, append,
    /// truncate, otrunc, rdtrunc, punch, zero, collapse, insert, copy,
    /// clone, direct, uring, mmap). Default: every kind the filesystem
    /// supports, minus those a strategy documents it does not survive.
    #[arg(long, value_delimiter = ',')]
    kinds: Option<Vec<String>>,
    /// Re-run the op log of a violation written by an earlier run.
    #[arg(long, value_name = "FILE")]
    replay: Option<PathBuf>,
    /// Where a violation's op log is written [default: the system temp
    /// dir] (never the current directory: a run in a checkout must not
    /// leave files in it).
    #[arg(long, value_name = "DIR")]
    replay_dir: Option<PathBuf>,
    /// Attempts for --replay.
    #[arg(long, default_value_t = 50)]
    attempts: u32,
}

/// Runs the torture. Exit status 0 when every strategy passed, 1 when one
/// failed, 2 on a usage or setup error.
pub fn run(args: Args) -> ExitCode {
    match run_inner(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("mapcopy torture: {e}");
            ExitCode::from(2)
        }
    }
}

fn run_inner(args: Args) -> Result<bool, String> {
    let dir = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    if !dir.is_dir() {
        return Err(format!("--dir {}: not a directory", dir.display()));
    }
    if let Some(file) = &args.replay {
        return replay(file, &dir, args.attempts);
    }
    let seed = args
        .seed
        .unwrap_or_else(|| torture::now() ^ u64::from(std::process::id()) << 32);
    let targets = select(&args.strategy, &dir)?;
    let replay_dir = args.replay_dir.clone().unwrap_or_else(std::env::temp_dir);
    if !replay_dir.is_dir() {
        return Err(format!(
            "--replay-dir {}: not a directory",
            replay_dir.display()
        ));
    }
    let kinds = match &args.kinds {
        None => None,
        Some(names) => Some(names.iter().try_fold(0u32, |m, n| {
            Kind::parse(n.trim())
                .map(|k| m | k.bit())
                .ok_or_else(|| format!("--kinds: unknown op kind {n:?}"))
        })?),
    };
    let per = match (args.seconds, args.ops) {
        (Some(s), _) => format!("{s} s per strategy"),
        (None, Some(n)) => format!("{n} ops per strategy"),
        (None, None) => "10 s per strategy".into(),
    };
    println!(
        "mapcopy torture: seed {seed}, {} writers, {} readers, files up to {} pages, {per}, in {}",
        args.writers,
        args.readers,
        args.pages,
        dir.display()
    );
    let (_, skipped) =
        torture::supported_kinds(&dir).map_err(|e| format!("probing {}: {e}", dir.display()))?;
    for (k, why) in &skipped {
        println!("op kind {} not used here: {why}", k.name());
    }
    let mut results: Vec<(Target, Stats)> = Vec::new();
    for target in targets {
        if kinds.is_none() {
            for (k, why) in torture::documented_gaps(target) {
                println!("op kind {} not used for {target}: {why}", k.name());
            }
        }
        let mut cfg = Config::new(target, &dir);
        cfg.kinds = kinds;
        cfg.seed = seed;
        cfg.seconds = args.seconds;
        cfg.ops = args.ops;
        cfg.writers = args.writers.max(1);
        cfg.readers = args.readers.max(1);
        cfg.max_pages = args.pages.max(4);
        cfg.replay_out = Some(replay_dir.join(format!(
            "mapcopy-torture-{}-seed{seed}.replay",
            target.name()
        )));
        let stats = torture::run(&cfg, &mut |p: Progress<'_>| progress_line(&p))
            .map_err(|e| format!("{target}: {e}"))?;
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprint!("\r{:79}\r", "");
        }
        if stats.violations() > 0 {
            println!(
                "{target}: {} violations (seed {seed}; first violating event {:.3} s into the run, reported after {:.2} s):",
                stats.violations(),
                stats
                    .first_violation_event
                    .unwrap_or_default()
                    .as_secs_f64(),
                stats
                    .first_violation_after
                    .unwrap_or_default()
                    .as_secs_f64()
            );
            for e in stats.examples.iter().take(3) {
                println!("  {e}");
            }
            if let Some(r) = &stats.replay {
                println!(
                    "  op log written: reproduce with `mapcopy torture --replay {}`",
                    r.display()
                );
            }
        }
        if std::env::var_os("MAPCOPY_TORTURE_VERBOSE").is_some() {
            for (k, n) in &stats.ops_by_kind {
                let ns = stats.op_ns_by_kind.get(k).copied().unwrap_or(0);
                println!(
                    "{target}: {k:<9} {n:>9} ops, {:>8.1} us each",
                    ns as f64 / *n as f64 / 1e3
                );
            }
            for (e, n) in &stats.op_errors {
                println!("{target}: op error {e}: {n}");
            }
            println!(
                "{target}: {} pages seen mid-way through a MAP_SHARED store (legal)",
                stats.mid_store
            );
            for e in &stats.torn_examples {
                println!("{target}: documented tear: {e}");
            }
        }
        for (e, n) in &stats.map_errors {
            println!("{target}: map failed {n} times: {e}");
        }
        results.push((target, stats));
    }
    print_table(&results);
    let failed = results.iter().filter(|(_, s)| s.violations() > 0).count();
    println!("{} passed, {failed} failed", results.len() - failed);
    Ok(failed == 0)
}

fn select(name: &str, dir: &Path) -> Result<Vec<Target>, String> {
    if name != "all" {
        let t = Target::parse(name).map_err(|e| e.to_string())?;
        if let Target::Strategy(s) = t
            && s == mapcopy::Strategy::Auto
        {
            return Err("--strategy auto is not a strategy to torture; name one, or all".into());
        }
        return Ok(vec![t]);
    }
    // Probe with a file in the directory under test.
    // Closed before probing: an open writable fd would itself make a lease
    // or a guard refuse.
    let probe_file = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .into_temp_path();
    let p = mapcopy::probe(Some(&probe_file));
    let mut out = Vec::new();
    for s in &p.strategies {
        match &s.usable {
            Ok(_) => out.push(Target::Strategy(s.strategy)),
            Err(why) => println!("skip {}: {why}", s.strategy),
        }
    }
    if out.is_empty() {
        return Err("no strategy is usable here".into());
    }
    Ok(out)
}

fn progress_line(p: &Progress<'_>) {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return;
    }
    let width = 20;
    let filled = (p.done * width as f64).round() as usize;
    eprint!(
        "\r{:<8} [{}{}] {:3.0}% {} ops, {} pages, {} violations ",
        p.target.name(),
        "#".repeat(filled.min(width)),
        ".".repeat(width - filled.min(width)),
        p.done * 100.0,
        p.stats.ops,
        p.stats.pages,
        p.stats.violations()
    );
    let _ = std::io::stderr().flush();
}

fn print_table(results: &[(Target, Stats)]) {
    println!(
        "{:<10} {:>10} {:>8} {:>10} {:>6} {:>6} {:>8} {:>7} {:>6} {:>5} {:>8} {:>8}  result",
        "strategy",
        "ops",
        "maps",
        "pages",
        "stale",
        "torn",
        "changed",
        "signal",
        "model",
        "hang",
        "maperr",
        "time"
    );
    for (t, s) in results {
        let torn = if s.torn_counts {
            s.torn.to_string()
        } else {
            format!("({})", s.torn)
        };
        println!(
            "{:<10} {:>10} {:>8} {:>10} {:>6} {:>6} {:>8} {:>7} {:>6} {:>5} {:>8} {:>7.1}s  {}",
            t.name(),
            s.ops,
            s.maps,
            s.pages,
            s.stale,
            torn,
            s.changed,
            s.signals,
            s.model,
            s.hangs,
            s.map_errors.values().sum::<u64>(),
            s.elapsed.as_secs_f64(),
            if s.violations() == 0 { "pass" } else { "FAIL" }
        );
    }
    if results.iter().any(|(_, s)| !s.torn_counts && s.torn > 0) {
        println!(
            "(n): torn pages a strategy documents (a page copied while a write() runs); not counted"
        );
    }
}

fn replay(file: &Path, dir: &Path, attempts: u32) -> Result<bool, String> {
    let r = torture::Replay::load(file)?;
    println!(
        "replaying {}: {} ops against {}, up to {attempts} attempts",
        file.display(),
        r.ops.len(),
        r.target
    );
    let (attempt, stats) = torture::replay(&r, dir, attempts)?;
    if stats.violations() > 0 {
        println!("reproduced in attempt {attempt}:");
        for e in stats.examples.iter().take(3) {
            println!("  {e}");
        }
        println!("0 passed, 1 failed");
        Ok(false)
    } else {
        println!("not reproduced in {attempts} attempts");
        println!("1 passed, 0 failed");
        Ok(true)
    }
}
