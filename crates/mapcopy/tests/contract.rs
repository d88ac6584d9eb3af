//! The contract suite: one runner, every concrete strategy × every case.
//!
//! Like memchr's tests run one oracle against every backend, each case here
//! is written once and generated as a trial for every strategy that
//! `mapcopy::probe` knows (named `STRATEGY/FS/CASE`), plus a test-only
//! `control` backend — a plain `MAP_PRIVATE` mapping — that must be caught
//! breaking the contract exactly where the model says it does (this proves
//! the checker can fail).
//!
//! * A strategy whose probe says "not implemented yet" is not part of the
//!   suite: one ignored trial `STRATEGY/not-implemented` says so (not a
//!   failure even with `MAPCOPY_REQUIRE_ALL=1`).
//! * A strategy that is implemented but not usable here: its trials are
//!   ignored with the reason — or fail with `MAPCOPY_REQUIRE_ALL=1`.
//! * Cases run on the temp dir's filesystem (ext4 here) and, where a
//!   strategy or a modification kind needs it, on xfs/btrfs loop mounts
//!   made at startup (root only) and removed at the end.
//! * Privilege-dependent trials (`auto/*`, `*/bad-input/*`) also run as
//!   `nobody` (`nobody/...`): the binary re-executes itself under `setpriv`
//!   with a filter for that one trial.
//! * Control trials re-execute themselves too: a plain mapping faults with
//!   SIGBUS after a truncation, which must kill a child, not the suite.
//!
//! Cases, each checked by `mapcopy_check::oracle::Checker` (pages read
//! before a modification keep their bytes; pages first read after it hold
//! the bytes of some file state since the mapping was made, zero past that
//! state's end; nothing else, and never change again):
//!
//! * `modify/KIND`, `modify-far/KIND`: every modification kind of S2, from
//!   another process, near the start and 2 MiB in;
//! * `truncate-zero-regrow`, `truncate-zero-read-regrow`,
//!   `unaligned-subrange`, `large-*`, `self-write` (the mapping process
//!   writes itself), `populate` (every page as at map time);
//! * `size/N` (0, 1, 4095, 4096, 4097, 3 pages + 1, with unaligned
//!   sub-ranges), `threads*` (8 threads racing on first touch), `fork*`
//!   (a child, a grandchild outliving both parents, forks while threads
//!   fault and a writer writes: `contract/fork.rs`), `kernel-access` (`write(2)`
//!   from untouched pages), `map-mut*` (S4), `many-mappings`, `churn`,
//!   `huge-sparse` (64 GiB);
//! * `point-in-time/safetensors/*`, `per-page/safetensors/*`: a
//!   safetensors file rewritten by another process (holding it open before
//!   the map, or opening it after) with other tensors and another layout,
//!   after the header page was read and before any tensor page was: every
//!   strategy that keeps point-in-time yields the version-1 tensors exactly
//!   (or refuses, where documented); Lazy under per-page and the control
//!   show the mixture;
//! * `bad-input/*` (directories, pipes, sockets, devices, /proc files,
//!   write-only fds, bad offsets and lengths), `auto/probe`, and their `nobody/` twins;
//! * `fixture/*`: loop mounts, and that writers report "unsupported on this
//!   filesystem" apart from failures.
//!
//! Layout (`contract/`): `filesystems`, `backends` (the strategies and the
//! control), `scripts` (map, read, modify from another process, check),
//! `cases` (the other per-strategy cases), `fork`, `bad_input`, `auto`
//! (Auto and probe), `structured` (safetensors); here: the trial list.
//!
//! Env: `MAPCOPY_REQUIRE_ALL=1` turns skips into failures;
//! `MAPCOPY_TRIAL_TIMEOUT` (seconds, default 120) bounds each trial.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Completion, Failed, Trial};
use mapcopy::{Consistency, ErrorKind, MapCopy, MapOptions, Strategy};
use mapcopy_check::fixture::{self, FsKind, LoopMount, TestFile};
use mapcopy_check::modify::{ApplyError, Kind, Modification, Writer};
use mapcopy_check::oracle::{Checker, FollowsFile, Source, Violation};
use mapcopy_check::rewrite::Rewriter;
use mapcopy_check::{pattern, privilege};

#[path = "contract/fork.rs"]
mod fork;

type Outcome = Result<Completion, Failed>;

/// Env var by which the outer run hands its loop mounts to re-executed
/// trials: `xfs=/path,btrfs=/path`.
const MOUNTS_ENV: &str = "MAPCOPY_CONTRACT_MOUNTS";

fn page() -> usize {
    rustix::param::page_size()
}

fn skip(reason: impl std::fmt::Display) -> Outcome {
    match fixture::skip_or_fail(&reason) {
        Ok(r) => Ok(Completion::ignored_with(r)),
        Err(e) => Err(e.into()),
    }
}

fn fail<T>(msg: impl std::fmt::Display) -> Result<T, Failed> {
    Err(Failed::from(msg.to_string()))
}

fn io<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> Failed + '_ {
    move |e| Failed::from(format!("{what}: {e}"))
}

#[path = "contract/auto.rs"]
mod auto;
#[path = "contract/backends.rs"]
mod backends;
#[path = "contract/bad_input.rs"]
mod bad_input;
#[path = "contract/cases.rs"]
mod cases;
#[path = "contract/filesystems.rs"]
mod filesystems;
#[path = "contract/scripts.rs"]
mod scripts;
#[path = "contract/structured.rs"]
mod structured;

use auto::*;
use backends::*;
use bad_input::*;
use cases::*;
use filesystems::*;
use scripts::*;
use structured::*;

// ---------------------------------------------------------------------------
// The trial list

fn trials(dirs: &[FsDir], missing: &[(FsKind, String)]) -> Vec<Trial> {
    let mut t = Vec::new();
    let mounts = mounts_env(dirs);
    let primary = dirs[0].clone();
    for (kind, why) in missing {
        let why = why.clone();
        t.push(watched(format!("fixture/{kind}-loop-mount"), move || {
            skip(why)
        }));
    }
    // The writers report "unsupported here" apart from failures.
    for d in dirs {
        for kind in [Kind::CloneRange, Kind::CollapseRange, Kind::InsertRange] {
            if fs_supports(&d.name, kind) {
                continue;
            }
            let dir = d.path.clone();
            t.push(watched(
                format!("fixture/{}/unsupported/{kind}", d.name),
                move || unsupported_case(&dir, kind),
            ));
        }
    }
    // Which strategies are part of the suite, and on which filesystems.
    let machine = mapcopy::probe(None);
    let mut backends: Vec<(Backend, Vec<FsDir>)> = Vec::new();
    for e in &machine.strategies {
        let s = e.strategy;
        if let Err(why) = &e.usable
            && not_implemented(why)
        {
            // Not part of the suite until it lands; one ignored trial says so
            // (not a failure even with MAPCOPY_REQUIRE_ALL=1).
            let why = format!("{s} is not part of the suite yet: {why}");
            t.push(watched(format!("{s}/not-implemented"), move || {
                Ok(Completion::ignored_with(why))
            }));
            continue;
        }
        if s == Strategy::Kernel
            && let Err(why) = &e.usable
            && why.contains("no MAP_COPY")
        {
            // This kernel has no MAP_COPY (the series in kernel/ is not in
            // it): the cases run where it is (the VM); here, every map
            // refuses with the reason, and Auto goes on.
            for d in dirs {
                let dir = d.path.clone();
                t.push(watched(
                    format!("kernel/{}/refused-without-map-copy", d.name),
                    move || kernel_refused_case(&dir),
                ));
            }
            continue;
        }
        if s == Strategy::Immutable {
            // Its files cannot be modified, so the cases here (which modify
            // the file) cannot run on it; `tests/immutable.rs` makes its
            // files (sealed memfds, erofs and squashfs images, fs-verity
            // files on ext4 where the kernel has fs-verity) and shows every
            // modification refused. Here: it refuses every file of the
            // suite's filesystems, which any process may write.
            for d in dirs {
                let dir = d.path.clone();
                t.push(watched(
                    format!("immutable/{}/refuses-writable-files", d.name),
                    move || immutable_refuses_case(&dir),
                ));
            }
            continue;
        }
        let on: Vec<FsDir> = dirs
            .iter()
            .filter(|d| usable_in(s, &d.path).is_ok())
            .cloned()
            .collect();
        let fs = if on.iter().any(|d| d.name == primary.name) || on.is_empty() {
            // Usable on the temp dir (or nowhere: the trials say why).
            vec![primary.clone()]
        } else {
            on
        };
        backends.push((Backend::Copy(s), fs));
    }
    backends.push((Backend::Control, vec![primary.clone()]));

    for (backend, fss) in &backends {
        let b = *backend;
        let bname = b.name();
        // Filesystems for kinds the primary fs lacks (clone ranges).
        let mut kind_fs: Vec<(Kind, FsDir)> = Vec::new();
        for &kind in Kind::ALL {
            for d in fss {
                if fs_supports(&d.name, kind) {
                    kind_fs.push((kind, d.clone()));
                }
            }
            if !fss.iter().any(|d| fs_supports(&d.name, kind)) {
                for d in dirs.iter().filter(|d| fs_supports(&d.name, kind)) {
                    if let Backend::Copy(s) = b
                        && usable_in(s, &d.path).is_err()
                    {
                        continue;
                    }
                    kind_fs.push((kind, d.clone()));
                }
            }
        }
        for (kind, d) in kind_fs {
            for (case, base) in [("modify", 0), ("modify-far", 2 << 20)] {
                let name = format!("{bname}/{}/{case}/{kind}", d.name);
                let script = modify_script(kind, base);
                t.push(script_trial(
                    b,
                    name,
                    d.path.clone(),
                    script,
                    mounts.clone(),
                ));
            }
        }
        for d in fss {
            for (case, script) in [
                ("truncate-zero-regrow", truncate_zero_regrow(false)),
                ("truncate-zero-read-regrow", truncate_zero_regrow(true)),
                ("unaligned-subrange", unaligned_subrange_script()),
                ("large-sequential", large_script(false)),
                ("large-random", large_script(true)),
                ("large-unaligned", large_unaligned_script()),
                ("self-write", self_write_script()),
                ("untouched-write", untouched_write_script()),
            ] {
                let name = format!("{bname}/{}/{case}", d.name);
                t.push(script_trial(
                    b,
                    name,
                    d.path.clone(),
                    script,
                    mounts.clone(),
                ));
            }
            // A structured file rewritten with another layout: one version
            // under point-in-time, the mixture under per-page (Lazy) and in
            // the control.
            let mut cons = vec![Consistency::PointInTime];
            if let Backend::Copy(s) = b
                && !s.keeps(Consistency::PointInTime)
            {
                cons.push(Consistency::PerPage);
            }
            for c in cons {
                for (when, open_before) in
                    [("writer-open-before", true), ("writer-opens-after", false)]
                {
                    let dir = d.path.clone();
                    t.push(watched(
                        format!("{bname}/{}/{c}/safetensors/{when}", d.name),
                        move || safetensors_case(b, &dir, c, open_before),
                    ));
                }
            }
            let Backend::Copy(s) = b else { continue };
            let dir = d.path.clone();
            let pre = format!("{bname}/{}", d.name);
            for size in [0, 1, 4095, 4096, 4097, 3 * page() + 1] {
                let dir = dir.clone();
                t.push(watched(format!("{pre}/size/{size}"), move || {
                    size_case(s, &dir, size)
                }));
            }
            let dd = dir.clone();
            t.push(watched(format!("{pre}/populate"), move || {
                strategy_script(s, &dd, &populate_script())
            }));
            let dd = dir.clone();
            t.push(watched(format!("{pre}/churn"), move || churn_case(s, &dd)));
            let dd = dir.clone();
            t.push(watched(format!("{pre}/many-mappings"), move || {
                many_mappings_case(s, &dd)
            }));
            let dd = dir.clone();
            t.push(watched(format!("{pre}/threads"), move || {
                threads_case(s, &dd, false)
            }));
            let dd = dir.clone();
            t.push(watched(format!("{pre}/threads-many-mappings"), move || {
                threads_case(s, &dd, true)
            }));
            let dd = dir.clone();
            t.push(watched(format!("{pre}/fork"), move || fork::case(s, &dd)));
            let dd = dir.clone();
            t.push(watched(format!("{pre}/fork-nested"), move || {
                fork::nested_case(s, &dd)
            }));
            let dd = dir.clone();
            t.push(watched(format!("{pre}/fork-threads"), move || {
                fork::threads_case(s, &dd)
            }));
            let dd = dir.clone();
            t.push(watched(format!("{pre}/kernel-access"), move || {
                kernel_access_case(s, &dd)
            }));
            let dd = dir.clone();
            t.push(watched(format!("{pre}/huge-sparse"), move || {
                huge_sparse_case(s, &dd)
            }));
            let dd = dir.clone();
            t.push(watched(format!("{pre}/map-mut-large"), move || {
                map_mut_large_case(s, &dd)
            }));
            let dd = dir.clone();
            t.push(watched(format!("{pre}/map-mut"), move || {
                map_mut_case(s, &dd)
            }));
        }
    }
    // Every strategy at once on one file.
    {
        let name = format!("mixed/{}/all-strategies", primary.name);
        let (n, dir) = (name.clone(), primary.path.clone());
        t.push(watched(name, move || mixed_case(&n, &dir)));
    }
    // Unreadable data (EIO), per strategy.
    for (b, _) in &backends {
        let Backend::Copy(s) = *b else { continue };
        for populate in [false, true] {
            let name = format!(
                "{s}/btrfs/read-error{}",
                if populate { "-populate" } else { "" }
            );
            let n = name.clone();
            t.push(watched(name, move || read_error_case(&n, s, populate)));
        }
    }
    // Bad input: for every strategy in the suite and Auto; also as nobody.
    let mut named: Vec<Strategy> = vec![Strategy::Auto];
    named.extend(backends.iter().filter_map(|(b, _)| match b {
        Backend::Copy(s) => Some(*s),
        Backend::Control => None,
    }));
    for s in named {
        for b in BAD {
            let name = format!("{s}/bad-input/{}", b.name());
            t.push(watched(name.clone(), move || bad_input_case(s, b)));
            t.push(watched(format!("nobody/{name}"), move || {
                nobody_trial(&name)
            }));
        }
    }
    t.push(watched("auto/probe", auto_probe_case));
    t.push(watched("nobody/auto/probe", || nobody_trial("auto/probe")));
    t
}

fn script_trial(b: Backend, name: String, dir: PathBuf, script: Script, mounts: String) -> Trial {
    let n = name.clone();
    watched(name, move || match b {
        Backend::Copy(s) => strategy_script(s, &dir, &script),
        Backend::Control => control_trial(&n, &dir, &script, &mounts),
    })
}

/// Trials running now, and when they started (for the watchdog).
static RUNNING: Mutex<BTreeMap<String, Instant>> = Mutex::new(BTreeMap::new());
/// The loop mounts, so that the watchdog can remove them before it aborts.
static MOUNTS: Mutex<Vec<LoopMount>> = Mutex::new(Vec::new());

/// A trial registered with the watchdog.
fn watched(name: impl Into<String>, f: impl FnOnce() -> Outcome + Send + 'static) -> Trial {
    let name = name.into();
    let n = name.clone();
    Trial::ignorable_test(name, move || {
        RUNNING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(n.clone(), Instant::now());
        let r = f();
        RUNNING.lock().unwrap_or_else(|e| e.into_inner()).remove(&n);
        r
    })
}

/// No trial may hang the suite (a writer blocked forever, a fault never
/// served): after `MAPCOPY_TRIAL_TIMEOUT` seconds (default 120) of one
/// trial, print it, remove the loop mounts and exit with failure.
fn start_watchdog() {
    let limit = std::env::var("MAPCOPY_TRIAL_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120u64);
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let hung: Vec<String> = RUNNING
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|(_, t)| t.elapsed() > Duration::from_secs(limit))
                .map(|(n, _)| n.clone())
                .collect();
            if !hung.is_empty() {
                eprintln!("HUNG: trial(s) {hung:?} ran longer than {limit} s; aborting the suite");
                MOUNTS.lock().unwrap_or_else(|e| e.into_inner()).clear();
                std::process::exit(101);
            }
        }
    });
}

fn main() {
    mapcopy_check::child::dispatch();
    let args = Arguments::from_args();
    let (dirs, mounts, missing) = if args.list {
        let tmp = std::env::temp_dir();
        let name = fixture::fs_name(&tmp).unwrap_or_default();
        (vec![FsDir { name, path: tmp }], Vec::new(), Vec::new())
    } else {
        filesystems()
    };
    *MOUNTS.lock().unwrap_or_else(|e| e.into_inner()) = mounts;
    start_watchdog();
    let trials = trials(&dirs, &missing);
    let conclusion = libtest_mimic::run(&args, trials);
    // Unmount before exiting (exit skips destructors).
    MOUNTS.lock().unwrap_or_else(|e| e.into_inner()).clear();
    conclusion.exit();
}
