//! The torture oracle, bounded for CI: the control (plain MAP_PRIVATE) must
//! be caught within 10 s at a fixed seed, and every strategy this machine
//! can use must come out clean of a short run (at most 120 s in all).
//!
//! Runs with its own harness (libtest-mimic) because the writers and readers
//! are this test binary re-executed as child processes.

use std::time::Duration;

use libtest_mimic::{Arguments, Failed, Trial};

mod common;
use mapcopy_check::fixture::FsKind;
use mapcopy_check::torture::{self, Config, Target};

/// Total budget of the clean runs, split between the usable strategies.
const CLEAN_BUDGET_S: f64 = 60.0;

/// A control run: `seed`, at most 10 s in rounds of 0.5 s, stopping at
/// the first violation and writing its replay file into `dir`.
fn control_config(target: Target, seed: u64, dir: &std::path::Path) -> Config {
    let mut cfg = Config::new(target, dir);
    cfg.seed = seed;
    cfg.seconds = Some(10.0);
    cfg.round = Duration::from_millis(500);
    cfg.stop_on_violation = true;
    cfg.replay_out = Some(dir.join("replay.txt"));
    cfg
}

fn control_is_caught() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let cfg = control_config(Target::Private, 42, dir.path());
    let stats = torture::run(&cfg, &mut |_| {})?;
    eprintln!(
        "control: {} ops, {} pages, stale {} torn {} changed {} signals {} model {} after {:?}",
        stats.ops,
        stats.pages,
        stats.stale,
        stats.torn,
        stats.changed,
        stats.signals,
        stats.model,
        stats.first_violation_after
    );
    if stats.model > 0 {
        return Err(format!(
            "the oracle's model disagreed with the file: {:?}",
            stats.examples
        )
        .into());
    }
    let Some(after) = stats.first_violation_after else {
        return Err("plain MAP_PRIVATE ran 10 s without a violation: the checker is blind".into());
    };
    if after > Duration::from_secs(10) {
        return Err(format!("control caught only after {after:?}").into());
    }
    if stats.changed + stats.signals + stats.stale == 0 {
        return Err("control produced only torn pages, not an S1/S2/S3 violation".into());
    }
    // The replay file reproduces a violation.
    replay_reproduces(&cfg, dir.path())
}

/// The replay file `cfg` wrote reproduces a violation within 20 attempts,
/// and the model stays exact while it does.
fn replay_reproduces(cfg: &Config, dir: &std::path::Path) -> Result<(), Failed> {
    let replay = torture::Replay::load(cfg.replay_out.as_ref().unwrap())?;
    let (attempt, rs) = torture::replay(&replay, dir, 20)?;
    eprintln!(
        "replay of {} ops: violation in attempt {attempt}: {:?}",
        replay.ops.len(),
        rs.examples.first()
    );
    if rs.violations() == 0 || rs.model > 0 {
        return Err(format!("replay did not reproduce: {:?}", rs.examples).into());
    }
    Ok(())
}

/// With no op that shrinks the file (no SIGBUS), plain MAP_PRIVATE must
/// still be caught: by S2, a page changing after it was read.
fn control_private_without_shrinking_fails_s2() -> Result<(), Failed> {
    use mapcopy_check::torture::op::Kind;
    let dir = tempfile::tempdir()?;
    let mut cfg = control_config(Target::Private, 43, dir.path());
    let (mask, _) = torture::supported_kinds(dir.path())?;
    cfg.kinds = Some(
        mask & !(Kind::Truncate.bit()
            | Kind::OTrunc.bit()
            | Kind::RdOnlyTrunc.bit()
            | Kind::Collapse.bit()),
    );
    let stats = torture::run(&cfg, &mut |_| {})?;
    eprintln!(
        "control (no shrink): {} ops, {} pages, changed {} signals {} after {:?}",
        stats.ops, stats.pages, stats.changed, stats.signals, stats.first_violation_after
    );
    if stats.changed == 0 || stats.model > 0 {
        return Err(format!("no S2 violation caught: {:?}", stats.examples).into());
    }
    // Its replay file (ops up to the changed re-read) reproduces it.
    replay_reproduces(&cfg, dir.path())
}

/// A copy taken before `T_map` and handed out again must be caught by S1.
fn control_stale_copy_fails_s1() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let cfg = control_config(Target::StaleCopy, 44, dir.path());
    let stats = torture::run(&cfg, &mut |_| {})?;
    eprintln!(
        "control (stale copy): {} ops, {} pages, stale {} after {:?}",
        stats.ops, stats.pages, stats.stale, stats.first_violation_after
    );
    if stats.stale == 0 || stats.model > 0 {
        return Err(format!("no S1 violation caught: {:?}", stats.examples).into());
    }
    Ok(())
}

/// Runs `s` clean for `seconds`: in the temp dir if probe finds it usable
/// for a file there, else on an xfs or btrfs loop image where it is usable,
/// else skips with the reasons.
fn clean_where_usable(s: mapcopy::Strategy, seconds: f64) -> Result<(), Failed> {
    let tmp = tempfile::tempdir()?;
    let probe_file = tmp.path().join("probe");
    std::fs::write(&probe_file, b"x")?;
    let (yes, no) = common::usable_for(&probe_file);
    if yes.contains(&s) {
        return clean(Target::Strategy(s), seconds, tmp.path());
    }
    let why = |no: &[(mapcopy::Strategy, String)]| {
        no.iter()
            .find(|x| x.0 == s)
            .map(|x| x.1.clone())
            .unwrap_or_default()
    };
    let mut whys = vec![format!("temp dir: {}", why(&no))];
    for kind in [FsKind::Xfs, FsKind::Btrfs] {
        let m = match common::mount(kind) {
            Ok(m) => m,
            Err(e) => {
                whys.push(format!("{kind}: {e}"));
                continue;
            }
        };
        let probe_file = m.path().join("probe");
        std::fs::write(&probe_file, b"x")?;
        let (yes, no) = common::usable_for(&probe_file);
        if yes.contains(&s) {
            eprintln!("{s}: running on a {kind} loop image");
            return clean(Target::Strategy(s), seconds, m.path());
        }
        whys.push(format!("{kind}: {}", why(&no)));
    }
    common::skip(&format!("{s} not usable here: {}", whys.join("; ")))
}

fn clean(target: Target, seconds: f64, dir: &std::path::Path) -> Result<(), Failed> {
    let mut cfg = Config::new(target, dir);
    cfg.seed = 7;
    cfg.seconds = Some(seconds);
    let stats = torture::run(&cfg, &mut |_| {})?;
    eprintln!(
        "{target}: {} ops, {} maps, {} pages, stale {} torn {} changed {} signals {} model {} hangs {}; map errors {:?}",
        stats.ops,
        stats.maps,
        stats.pages,
        stats.stale,
        stats.torn,
        stats.changed,
        stats.signals,
        stats.model,
        stats.hangs,
        stats.map_errors
    );
    if stats.violations() > 0 {
        return Err(format!("{} violations: {:#?}", stats.violations(), stats.examples).into());
    }
    if stats.ops == 0 || stats.pages == 0 {
        return Err(format!(
            "nothing was checked: {} ops, {} pages",
            stats.ops, stats.pages
        )
        .into());
    }
    Ok(())
}

/// On a kernel without `MAP_COPY`, `Strategy::Kernel` refuses the
/// torture's file with the reason, and Auto picks a strategy the torture
/// covers.
fn kernel_refuses_without_map_copy() -> Result<(), Failed> {
    let tmp = tempfile::tempdir()?;
    let path = tmp.path().join("torture-file");
    std::fs::write(&path, vec![7u8; 3 * 4096 + 1])?;
    let file = std::fs::File::open(&path)?;
    match mapcopy_check::options(mapcopy::Strategy::Kernel).map(&file) {
        Err(e)
            if e.kind() == mapcopy::ErrorKind::Unsupported
                && e.to_string().contains("no MAP_COPY") => {}
        Err(e) => return Err(format!("not the kernel's refusal: {e}").into()),
        Ok(_) => return Err("mapped with MAP_COPY on a kernel said to lack it".into()),
    }
    if mapcopy::MapCopy::map(&file)?.strategy() == mapcopy::Strategy::Kernel {
        return Err("Auto picked kernel".into());
    }
    Ok(())
}

/// `Strategy::Immutable` refuses the file a torture run writes, by name
/// and through Auto (which then picks a strategy the torture covers).
fn immutable_refuses_torture_file() -> Result<(), Failed> {
    let tmp = tempfile::tempdir()?;
    let path = tmp.path().join("torture-file");
    std::fs::write(&path, vec![7u8; 3 * 4096 + 1])?;
    let file = std::fs::File::open(&path)?;
    match mapcopy_check::options(mapcopy::Strategy::Immutable).map(&file) {
        Err(e) if e.kind() == mapcopy::ErrorKind::Unsupported => {}
        Err(e) => return Err(format!("not Unsupported: {e}").into()),
        Ok(_) => return Err("Immutable mapped a file anyone may write".into()),
    }
    let auto = mapcopy::MapCopy::map(&file)?;
    if auto.strategy() == mapcopy::Strategy::Immutable {
        return Err("Auto picked Immutable for a writable file".into());
    }
    Ok(())
}

fn main() {
    mapcopy_check::child::dispatch();
    let args = Arguments::from_args();
    // Strategies the kernel and process allow at all; each trial then finds
    // a filesystem it works on.
    let usable: Vec<_> = mapcopy::probe(None)
        .strategies
        .into_iter()
        .filter(|s| s.usable.is_ok() && s.strategy != mapcopy::Strategy::Immutable)
        .map(|s| s.strategy)
        .collect();
    // MAPCOPY_TORTURE_SECONDS overrides the total budget of the clean runs.
    let budget = std::env::var("MAPCOPY_TORTURE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CLEAN_BUDGET_S);
    let per = budget / usable.len().max(1) as f64;
    let mut trials = vec![
        Trial::test("control_private_is_caught_within_10s", control_is_caught),
        Trial::test(
            "control_private_without_shrinking_fails_s2",
            control_private_without_shrinking_fails_s2,
        ),
        Trial::test("control_stale_copy_fails_s1", control_stale_copy_fails_s1),
    ];
    for s in mapcopy::Strategy::ALL {
        let name = format!("clean_{}", s.name());
        if s == mapcopy::Strategy::Kernel && !usable.contains(&s) {
            // No MAP_COPY in this kernel: it must refuse, naming why (the
            // run itself is for a kernel with the series, in the VM).
            trials.push(Trial::test(name, kernel_refuses_without_map_copy));
        } else if s == mapcopy::Strategy::Immutable {
            // The torture writes its file; Immutable maps only files nobody
            // can write (tests/immutable.rs makes them and shows every
            // writer refused). Here: it refuses the torture's file.
            trials.push(Trial::test(name, immutable_refuses_torture_file));
        } else if usable.contains(&s) {
            trials.push(Trial::test(name, move || clean_where_usable(s, per)));
        } else {
            let why = mapcopy::probe(None)
                .strategies
                .into_iter()
                .find(|x| x.strategy == s)
                .and_then(|x| x.usable.err())
                .unwrap_or_default();
            trials.push(Trial::test(name, move || {
                common::skip(&format!("{s} not usable here: {why}"))
            }));
        }
    }
    // The clean runs share the machine's two cores: one at a time.
    let mut args = args;
    args.test_threads = Some(1);
    libtest_mimic::run(&args, trials).exit();
}
