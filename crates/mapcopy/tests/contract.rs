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

// ---------------------------------------------------------------------------
// Filesystems

/// A directory on one filesystem where trials make their files.
#[derive(Clone, Debug)]
struct FsDir {
    name: String,
    path: PathBuf,
}

/// Which kinds a filesystem supports, known in advance (a kind the fs turns
/// out not to support at run time is skipped with the reason).
fn fs_supports(fs: &str, kind: Kind) -> bool {
    !matches!(
        (fs, kind),
        ("ext4", Kind::CloneRange)
            | ("btrfs", Kind::CollapseRange | Kind::InsertRange)
            | (
                "tmpfs",
                Kind::CloneRange | Kind::CollapseRange | Kind::InsertRange
            )
    )
}

/// Sets up the filesystems: the temp dir's, plus xfs and btrfs loop mounts
/// (made here, or inherited from the outer run through `MOUNTS_ENV`).
/// Returns the dirs, the mounts to drop at the end, and the reasons any
/// could not be made.
fn filesystems() -> (Vec<FsDir>, Vec<LoopMount>, Vec<(FsKind, String)>) {
    let tmp = std::env::temp_dir();
    let name = fixture::fs_name(&tmp).unwrap_or_else(|e| format!("unknown ({e})"));
    let mut dirs = vec![FsDir { name, path: tmp }];
    let mut mounts = Vec::new();
    let mut missing = Vec::new();
    // A re-executed single trial never mounts: it may die (SIGBUS, abort)
    // and leave the mounts behind. It uses the outer run's, if handed any.
    let list = std::env::var(MOUNTS_ENV)
        .ok()
        .or_else(|| std::env::var_os(privilege::TRIAL_ENV).map(|_| String::new()));
    if let Some(list) = list {
        for item in list.split(',').filter(|s| !s.is_empty()) {
            if let Some((name, path)) = item.split_once('=') {
                dirs.push(FsDir {
                    name: name.into(),
                    path: path.into(),
                });
            }
        }
        return (dirs, mounts, missing);
    }
    for kind in [FsKind::Xfs, FsKind::Btrfs] {
        match LoopMount::new(kind) {
            Ok(m) => {
                dirs.push(FsDir {
                    name: kind.name().into(),
                    path: m.path().to_path_buf(),
                });
                mounts.push(m);
            }
            Err(why) => missing.push((kind, why)),
        }
    }
    (dirs, mounts, missing)
}

fn mounts_env(dirs: &[FsDir]) -> String {
    dirs.iter()
        .skip(1)
        .map(|d| format!("{}={}", d.name, d.path.display()))
        .collect::<Vec<_>>()
        .join(",")
}

// ---------------------------------------------------------------------------
// Backends: the strategies, and the control

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Copy(Strategy),
    /// Plain MAP_PRIVATE, read-only: what memmap2's `map_copy_read_only`
    /// gives. Breaks the contract; the checker must say so.
    Control,
}

impl Backend {
    fn name(self) -> String {
        match self {
            Backend::Copy(s) => s.name().into(),
            Backend::Control => "control".into(),
        }
    }
}

/// A plain `MAP_PRIVATE` read-only file mapping (the control).
struct Control {
    ptr: *mut u8,
    map_len: usize,
    head: usize,
    len: usize,
}

impl Control {
    fn new(file: &File, off: u64, len: usize) -> std::io::Result<Control> {
        let p = page() as u64;
        let aligned = off & !(p - 1);
        let head = (off - aligned) as usize;
        let map_len = (head + len).div_ceil(page()) * page();
        if map_len == 0 {
            return Ok(Control {
                ptr: std::ptr::null_mut(),
                map_len,
                head,
                len,
            });
        }
        // SAFETY: a new read-only mapping at an address the kernel picks; it
        // aliases nothing. Reading it may raise SIGBUS after a truncation,
        // which is why control trials run in a child process; its contents
        // may change under us, which is why it is only read through raw
        // pointers with volatile loads, never as a `&[u8]`.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                map_len,
                rustix::mm::ProtFlags::READ,
                rustix::mm::MapFlags::PRIVATE,
                file,
                aligned,
            )
        }?;
        Ok(Control {
            ptr: ptr.cast(),
            map_len,
            head,
            len,
        })
    }
}

impl Source for Control {
    fn len(&self) -> usize {
        self.len
    }
    fn read(&self, start: usize, out: &mut [u8]) -> Result<(), String> {
        assert!(start + out.len() <= self.len);
        for (i, o) in out.iter_mut().enumerate() {
            // SAFETY: in bounds of the live mapping (asserted above).
            *o = unsafe { self.ptr.add(self.head + start + i).read_volatile() };
        }
        Ok(())
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        if self.map_len > 0 {
            // SAFETY: the mapping made in `new`, unmapped once.
            let _ = unsafe { rustix::mm::munmap(self.ptr.cast(), self.map_len) };
        }
    }
}

enum Mapped {
    Copy(MapCopy),
    Control(Control),
}

impl Mapped {
    fn source(&self) -> &dyn Source {
        match self {
            Mapped::Copy(m) => m,
            Mapped::Control(c) => c,
        }
    }
}

fn map_with(
    backend: Backend,
    file: &File,
    off: u64,
    len: Option<usize>,
    populate: bool,
) -> Result<Mapped, Result<mapcopy::Error, String>> {
    match backend {
        Backend::Copy(s) => {
            let mut o = mapcopy_check::options(s);
            o.offset(off).populate(populate);
            if let Some(l) = len {
                o.len(l);
            }
            o.map(file).map(Mapped::Copy).map_err(Ok)
        }
        Backend::Control => {
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            let len = len.unwrap_or((size - off) as usize);
            Control::new(file, off, len)
                .map(Mapped::Control)
                .map_err(|e| Err(format!("control mmap failed: {e}")))
        }
    }
}

/// Is strategy `s` usable for files in `dir`? `Err` is the probe's reason.
fn usable_in(s: Strategy, dir: &Path) -> Result<(), String> {
    let f = TestFile::new_in(dir, 3 * page() + 1, 0).map_err(|e| e.to_string())?;
    let p = mapcopy::probe(Some(f.path()));
    let e = p
        .strategies
        .iter()
        .find(|e| e.strategy == s)
        .ok_or_else(|| format!("probe does not list {s}"))?;
    e.usable.clone().map(|_| ())
}

/// `Strategy::Immutable` refuses a writable file in `dir` (read-only
/// `map` and `map_mut`), with `Unsupported`, and `probe` says so too.
fn immutable_refuses_case(dir: &Path) -> Outcome {
    let f = TestFile::new_in(dir, 3 * page() + 1, 0).map_err(io("test file"))?;
    let file = f.open().map_err(io("open"))?;
    for writable in [false, true] {
        let o = mapcopy_check::options(Strategy::Immutable);
        let r = if writable {
            o.map_mut(&file).map(drop)
        } else {
            o.map(&file).map(drop)
        };
        match r {
            Err(e) if e.kind() == ErrorKind::Unsupported => {}
            Err(e) => return fail(format!("map_mut={writable}: not Unsupported: {e}")),
            Ok(()) => return fail(format!("map_mut={writable}: a writable file was mapped")),
        }
    }
    match usable_in(Strategy::Immutable, dir) {
        Err(why) if why.contains("can be written") => Ok(Completion::Completed),
        other => fail(format!("probe: {other:?}")),
    }
}

/// Does strategy `s` offer `map_mut` for files in `dir`? A strategy may
/// refuse writable mappings altogether (`Unsupported`, with the reason);
/// then every `map_mut` must refuse, and the read-only cases still run.
fn offers_map_mut(s: Strategy, dir: &Path) -> Result<(), String> {
    let f = TestFile::new_in(dir, 3 * page() + 1, 0).map_err(|e| e.to_string())?;
    let file = f.open().map_err(|e| e.to_string())?;
    match mapcopy_check::options(s).map_mut(&file) {
        Err(e) if e.kind() == ErrorKind::Unsupported => Err(e.to_string()),
        _ => Ok(()),
    }
}

/// Runs `cmd` to completion, or kills it after `secs` (a hang must fail
/// one trial, not the suite). Returns its status, stdout and stderr.
fn run_bounded(
    mut cmd: std::process::Command,
    secs: u64,
) -> Result<(std::process::ExitStatus, String, String), Failed> {
    use std::process::Stdio;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io("starting the child"))?;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(st) = child.try_wait().map_err(io("wait"))? {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    match status {
        Some(st) => Ok((st, out, err)),
        None => fail(format!(
            "the child hung for {secs} s and was killed:\n{out}\n{err}"
        )),
    }
}

fn not_implemented(reason: &str) -> bool {
    reason.contains("not implemented yet")
}

// ---------------------------------------------------------------------------
// Scripts: map, read some pages, modify from another process, check

#[derive(Clone, Debug)]
enum Step {
    Touch(Vec<u64>),
    TouchAll,
    Modify(Modification),
    /// The same, done by the mapping process itself.
    SelfModify(Modification),
}

#[derive(Clone, Debug)]
struct Script {
    size: usize,
    off: u64,
    len: Option<usize>,
    populate: bool,
    steps: Vec<Step>,
}

/// How a script run ended, short of a failure.
enum Ran {
    Done,
    /// The strategy refused the mapping with `Unsupported` while a writer
    /// held the file open (allowed: it said so before mapping).
    Refused(String),
    /// A modification is not available on this filesystem.
    Unsupported(String),
}

#[derive(Debug)]
enum ScriptError {
    Violation(usize, Violation),
    Other(String),
}

impl std::fmt::Display for ScriptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScriptError::Violation(step, v) => write!(f, "at step {step}: {v}"),
            ScriptError::Other(s) => f.write_str(s),
        }
    }
}

fn run_script(backend: Backend, dir: &Path, script: &Script) -> Result<Ran, ScriptError> {
    let other = |e: String| ScriptError::Other(e);
    let tf = TestFile::new_in(dir, script.size, 0).map_err(|e| other(format!("test file: {e}")))?;
    let path = tf.path().to_path_buf();
    // Writers whose mapping must exist before ours start now.
    let mut early: Vec<Option<Writer>> = Vec::new();
    for s in &script.steps {
        early.push(match s {
            Step::Modify(m) if m.kind.open_before_map() => match Writer::spawn(m, &path) {
                Ok(w) => Some(w),
                Err(ApplyError::Unsupported(w)) => return Ok(Ran::Unsupported(w)),
                Err(e) => return Err(other(format!("starting the writer for {m}: {e}"))),
            },
            _ => None,
        });
    }
    let holds_open = early.iter().any(Option::is_some);
    let initial = tf.contents().map_err(|e| other(e.to_string()))?;
    let file = tf.open().map_err(|e| other(e.to_string()))?;
    let mapped = match map_with(backend, &file, script.off, script.len, script.populate) {
        Ok(m) => m,
        Err(Ok(e)) if holds_open && e.kind() == ErrorKind::Unsupported => {
            return Ok(Ran::Refused(e.to_string()));
        }
        Err(Ok(e)) => return Err(other(format!("mapping failed: {e}"))),
        Err(Err(e)) => return Err(other(e)),
    };
    let src = mapped.source();
    let len = src.len();
    let expect_len = script
        .len
        .unwrap_or(script.size.saturating_sub(script.off as usize));
    if len != expect_len {
        return Err(other(format!(
            "mapping has {len} bytes, asked for {expect_len}"
        )));
    }
    let mut checker = Checker::new(page(), script.off, len, initial);
    if script.populate {
        checker.snapshotted_at_map();
    }
    for (i, step) in script.steps.iter().enumerate() {
        eprintln!("step {i}: {step:?}");
        let r = match step {
            Step::Touch(pages) => checker.touch(src, pages.iter().copied()),
            Step::TouchAll => checker.touch_all(src),
            Step::Modify(m) | Step::SelfModify(m) => {
                let old = checker.current().to_vec();
                let res = match early[i].take() {
                    Some(w) => w.apply_checked(&old),
                    None if matches!(step, Step::SelfModify(_)) => m.apply_here(&path, &old),
                    None => m.apply_checked(&path, &old),
                };
                match res {
                    Ok(new) => {
                        checker.push_state(new);
                        Ok(())
                    }
                    Err(ApplyError::Unsupported(why)) => {
                        return Ok(Ran::Unsupported(format!("{m}: {why}")));
                    }
                    Err(e) => return Err(other(format!("modification {m}: {e}"))),
                }
            }
        };
        r.map_err(|v| ScriptError::Violation(i, v))?;
    }
    drop(mapped);
    // Which version each page showed when first read (old = state 0).
    let mut counts = vec![0usize; checker.states().len()];
    for pg in checker.pages() {
        if let Some(st) = checker.seen_state(pg) {
            counts[st] += 1;
        }
    }
    eprintln!("pages by the file state they showed when first read: {counts:?}");
    Ok(Ran::Done)
}

/// What a plain MAP_PRIVATE mapping would show when running `script`: the
/// first step at which the checker must flag it, and the violation.
fn predict_control(script: &Script) -> Option<(usize, Violation)> {
    let mut state = pattern::bytes(0, 0, script.size);
    let len = script
        .len
        .unwrap_or(script.size.saturating_sub(script.off as usize));
    let mut checker = Checker::new(page(), script.off, len, state.clone());
    for (i, step) in script.steps.iter().enumerate() {
        let src = FollowsFile {
            file: &state,
            off: script.off,
            len,
            page: page(),
        };
        let r = match step {
            Step::Touch(p) => checker.touch(&src, p.iter().copied()),
            Step::TouchAll => checker.touch_all(&src),
            Step::Modify(m) | Step::SelfModify(m) => {
                state = m.model(&state);
                checker.push_state(state.clone());
                Ok(())
            }
        };
        if let Err(v) = r {
            return Some((i, v));
        }
    }
    None
}

fn script_outcome(r: Result<Ran, ScriptError>) -> Outcome {
    match r {
        Ok(Ran::Done) => Ok(Completion::Completed),
        Ok(Ran::Refused(why)) => {
            eprintln!("refused before mapping (allowed, a writer held the file open): {why}");
            Ok(Completion::Completed)
        }
        Ok(Ran::Unsupported(why)) => skip(format!("modification not available here: {why}")),
        Err(e) => fail(e),
    }
}

// The standard script for one modification kind.
/// The standard script for one modification kind. With `base` > 0 the
/// file has `base` more bytes in front and everything happens that far in
/// (a huge-page boundary away from the only page read at the start), so
/// lazy strategies meet the modification on pages they have not filled.
fn modify_script(kind: Kind, base: u64) -> Script {
    let p = page() as u64;
    let g = 1;
    let shift = match kind {
        Kind::Append | Kind::OpenTrunc | Kind::Cp | Kind::ShellRedirect => 0,
        _ => base,
    };
    let m = |off: u64, len: u64| Modification::new(kind, off + shift, len, g);
    let m1 = match kind {
        Kind::Write => m(p - 10, 2 * p + 20),
        Kind::Pwrite => m(100, 3 * p),
        Kind::Writev => m(2 * p + 7, p + 50),
        Kind::Append => m(0, 5000),
        Kind::FtruncateShrink => m(2 * p + 100, 0),
        Kind::FtruncateGrow => m(7 * p + 5, 0),
        Kind::TruncatePath => m(p + 1, 0),
        Kind::OpenTrunc => m(0, 2 * p + 300),
        Kind::PunchHole => m(p / 2, 2 * p),
        Kind::ZeroRange => m(2 * p + 10, p),
        Kind::CollapseRange => m(p, p),
        Kind::InsertRange => m(2 * p, p),
        Kind::CopyFileRange => m(50, 3 * p),
        Kind::CloneRange => m(p, 2 * p),
        Kind::ODirect => m(p, 2 * p),
        Kind::IoUring => m(300, 2 * p),
        Kind::SharedBefore => m(100, 3 * p),
        Kind::SharedAfter => m(2 * p + 100, 2 * p),
        Kind::HardLink => m(10, 4 * p),
        Kind::Cp => m(0, 3 * p + 17),
        Kind::ShellRedirect => m(0, 2 * p + 9),
    };
    let b = base / p;
    Script {
        // 4 pages and a partial fifth; the mapping covers the fifth whole,
        // so the zeros past the end (and an append into them) are checked.
        size: (base + 4 * p + 1000) as usize,
        off: 0,
        len: Some((base + 5 * p) as usize),
        populate: false,
        steps: vec![
            Step::Touch(if base == 0 {
                vec![0, 2, 4]
            } else {
                vec![0, b + 2, b + 4]
            }),
            Step::Modify(m1),
            Step::TouchAll,
            // Pages first read after the modification must not change either.
            Step::Modify(Modification::new(Kind::Pwrite, 0, base + 5 * p, 2)),
            Step::TouchAll,
        ],
    }
}

fn truncate_zero_regrow(read_between: bool) -> Script {
    let p = page() as u64;
    let mut steps = vec![
        Step::Touch(vec![0]),
        Step::Modify(Modification::new(Kind::FtruncateShrink, 0, 0, 0)),
    ];
    if read_between {
        steps.push(Step::TouchAll);
    }
    steps.extend([
        Step::Modify(Modification::new(Kind::Pwrite, 0, 4 * p, 1)),
        Step::TouchAll,
        Step::Modify(Modification::new(Kind::Pwrite, 0, 4 * p, 2)),
        Step::TouchAll,
    ]);
    Script {
        size: 3 * p as usize + 1,
        off: 0,
        len: Some(4 * p as usize),
        populate: false,
        steps,
    }
}

/// A mapping of an unaligned sub-range (partial first and last pages),
/// modified inside and around it, then shrunk into its middle.
fn unaligned_subrange_script() -> Script {
    let p = page() as u64;
    Script {
        size: 4 * p as usize + 1000,
        off: p + 123,
        len: Some(2 * p as usize + 5),
        populate: false,
        steps: vec![
            Step::Touch(vec![1]),
            Step::Modify(Modification::new(Kind::Pwrite, 50, 4 * p, 1)),
            Step::Touch(vec![2]),
            Step::Modify(Modification::new(Kind::FtruncateShrink, 2 * p + 50, 0, 0)),
            Step::TouchAll,
            Step::Modify(Modification::new(Kind::Pwrite, 0, 5 * p, 2)),
            Step::TouchAll,
        ],
    }
}

/// A file of a bit more than two huge pages, read sequentially (so lazy
/// strategies grow their fault-around window) or in a seeded random order,
/// with modifications in between.
fn large_script(random: bool) -> Script {
    let p = page() as u64;
    let mib = 1u64 << 20;
    let size = 4 * mib + 3 * p + 17;
    let pages = size.div_ceil(p);
    let steps = if !random {
        vec![
            Step::Touch((0..64).collect()),
            Step::Modify(Modification::new(Kind::Pwrite, mib + 100, 2 * mib, 1)),
            Step::Touch((64..700).collect()),
            Step::Modify(Modification::new(
                Kind::FtruncateShrink,
                3 * mib + 100,
                0,
                0,
            )),
            Step::TouchAll,
            Step::Modify(Modification::new(Kind::Pwrite, 0, size, 2)),
            Step::TouchAll,
        ]
    } else {
        // A small LCG: deterministic, no dependency.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move |n: u64| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % n
        };
        let mut touch = || Step::Touch((0..40).map(|_| next(pages)).collect());
        let (t1, t2, t3) = (touch(), touch(), touch());
        vec![
            t1,
            Step::Modify(Modification::new(
                Kind::Pwrite,
                3 * mib / 2 + 77,
                mib + 5,
                1,
            )),
            t2,
            Step::Modify(Modification::new(Kind::PunchHole, mib, mib / 2, 0)),
            t3,
            Step::Modify(Modification::new(Kind::Append, 0, 10_000, 2)),
            Step::TouchAll,
            Step::Modify(Modification::new(Kind::Pwrite, 0, size, 3)),
            Step::TouchAll,
        ]
    };
    Script {
        size: size as usize,
        off: 0,
        len: None,
        populate: false,
        steps,
    }
}

/// An unaligned sub-range of a large file that starts and ends inside huge
/// pages and inside base pages.
fn large_unaligned_script() -> Script {
    let p = page() as u64;
    let mib = 1u64 << 20;
    let off = mib + 3 * p + 77;
    let len = 3 * mib + 5;
    let first = off / p;
    let last = (off + len - 1) / p;
    Script {
        size: (5 * mib) as usize,
        off,
        len: Some(len as usize),
        populate: false,
        steps: vec![
            Step::Touch(vec![first, first + 1, last]),
            Step::Modify(Modification::new(Kind::Pwrite, off - 50, 2 * mib, 1)),
            Step::Touch((first + 2..first + 300).collect()),
            Step::Modify(Modification::new(Kind::FtruncateShrink, 3 * mib + 9, 0, 0)),
            Step::TouchAll,
            Step::Modify(Modification::new(Kind::Pwrite, 0, 5 * mib, 2)),
            Step::TouchAll,
        ],
    }
}

/// The mapping process itself writes and truncates the file (strategies
/// that watch writers must not deadlock on or miss their own process).
fn self_write_script() -> Script {
    let p = page() as u64;
    Script {
        size: 4 * p as usize + 1000,
        off: 0,
        len: Some(5 * p as usize),
        populate: false,
        steps: vec![
            Step::Touch(vec![0, 2]),
            Step::SelfModify(Modification::new(Kind::Pwrite, 100, 3 * p, 1)),
            Step::Touch(vec![1]),
            Step::SelfModify(Modification::new(Kind::FtruncateShrink, p + 5, 0, 0)),
            Step::TouchAll,
            Step::SelfModify(Modification::new(Kind::OpenTrunc, 0, 5 * p, 2)),
            Step::TouchAll,
        ],
    }
}

/// Writes only to pages nobody has read yet: S1 lets every page show the
/// new bytes, so even plain MAP_PRIVATE keeps the contract here — the
/// control must pass this one (the checker has no false positives).
fn untouched_write_script() -> Script {
    let p = page() as u64;
    Script {
        size: 4 * p as usize + 1000,
        off: 0,
        len: None,
        populate: false,
        steps: vec![
            Step::Touch(vec![0]),
            Step::Modify(Modification::new(Kind::Pwrite, 2 * p + 10, p, 1)),
            Step::TouchAll,
        ],
    }
}

fn populate_script() -> Script {
    let p = page() as u64;
    Script {
        size: 3 * p as usize + 1,
        off: 0,
        len: None,
        populate: true,
        steps: vec![
            Step::Modify(Modification::new(Kind::Pwrite, 0, 4 * p, 1)),
            Step::TouchAll,
            Step::Modify(Modification::new(Kind::FtruncateShrink, 0, 0, 0)),
            Step::TouchAll,
        ],
    }
}

/// Runs `script` with a strategy, after checking the strategy is usable.
fn strategy_script(s: Strategy, dir: &Path, script: &Script) -> Outcome {
    if let Err(why) = usable_in(s, dir) {
        return skip(format!("{s} is not usable here: {why}"));
    }
    script_outcome(run_script(Backend::Copy(s), dir, script))
}

/// A control trial: re-runs itself in a child (a SIGBUS must not kill the
/// suite), and checks that the checker flagged the control exactly where
/// the model of a MAP_PRIVATE mapping says it breaks the contract.
fn control_trial(name: &str, dir: &Path, script: &Script, mounts: &str) -> Outcome {
    if privilege::in_trial(name) {
        // The inner run: check the control like any strategy.
        return script_outcome(run_script(Backend::Control, dir, script));
    }
    let predicted = predict_control(script);
    let mut cmd = privilege::trial(name, false).map_err(Failed::from)?;
    cmd.env(MOUNTS_ENV, mounts);
    let (status, stdout, stderr) = run_bounded(cmd, 60)?;
    let all = format!("{stdout}\n{stderr}");
    if stdout.contains("1 ignored") {
        return skip(format!("control run skipped: {}", all.trim()));
    }
    // The last step the child started.
    let last_step = stderr
        .lines()
        .filter_map(|l| {
            l.strip_prefix("step ")?
                .split(':')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .next_back();
    match (&predicted, status.signal(), status.success()) {
        (None, None, true) if stdout.contains("1 passed") => {
            eprintln!("control kept the contract here, as predicted");
            Ok(Completion::Completed)
        }
        (Some((step, v)), Some(libc::SIGBUS), _) if v.message.contains("SIGBUS") => {
            if last_step == Some(*step) {
                eprintln!("control faulted with SIGBUS at step {step}, as predicted");
                Ok(Completion::Completed)
            } else {
                fail(format!(
                    "control faulted with SIGBUS at step {last_step:?}, predicted at step {step}: {all}"
                ))
            }
        }
        (Some((step, v)), None, false) if !v.message.contains("SIGBUS") => {
            let want = format!("at step {step}: VIOLATION at file page {}", v.page);
            if all.contains(&want) {
                eprintln!("checker flagged the control as predicted: {v}");
                Ok(Completion::Completed)
            } else {
                fail(format!(
                    "control failed, but not as predicted ({want}: {v}):\n{all}"
                ))
            }
        }
        _ => fail(format!(
            "prediction {:?} but the control run ended with {} :\n{all}",
            predicted.as_ref().map(|(s, v)| format!("step {s}: {v}")),
            status
        )),
    }
}

/// A kind this filesystem lacks must come back as `Unsupported`, not as a
/// failure, and leave the file as it was.
fn unsupported_case(dir: &Path, kind: Kind) -> Outcome {
    let p = page() as u64;
    let tf = TestFile::new_in(dir, 4 * p as usize, 0).map_err(io("test file"))?;
    let old = tf.contents().map_err(io("read"))?;
    match Modification::new(kind, p, p, 1).apply_checked(tf.path(), &old) {
        Err(ApplyError::Unsupported(why)) => {
            eprintln!("{kind}: unsupported, as expected: {why}");
            check_bytes(&tf.contents().map_err(io("read"))?, &old, "file after")?;
            Ok(Completion::Completed)
        }
        other => fail(format!("{kind}: want Unsupported, got {other:?}")),
    }
}

// ---------------------------------------------------------------------------
// Other cases, per strategy

fn check_bytes(got: &[u8], want: &[u8], what: &str) -> Result<(), Failed> {
    if got.len() != want.len() {
        return fail(format!("{what}: {} bytes, want {}", got.len(), want.len()));
    }
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        return fail(format!(
            "{what}: first difference at byte {i}: got [{}] want [{}]",
            pattern::describe(&got[i..(i + 64).min(got.len())], i as u64),
            pattern::describe(&want[i..(i + 64).min(want.len())], i as u64)
        ));
    }
    Ok(())
}

/// `content[off .. off + len]`, zero past its end.
fn slice_zero_ext(content: &[u8], off: usize, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    if off < content.len() {
        let n = (content.len() - off).min(len);
        v[..n].copy_from_slice(&content[off..off + n]);
    }
    v
}

fn size_case(s: Strategy, dir: &Path, size: usize) -> Outcome {
    if let Err(why) = usable_in(s, dir) {
        return skip(format!("{s} is not usable here: {why}"));
    }
    let p = page();
    let tf = TestFile::new_in(dir, size, 0).map_err(io("test file"))?;
    let content = tf.contents().map_err(io("read"))?;
    let file = tf.open().map_err(io("open"))?;
    let mut_refused = offers_map_mut(s, dir);
    let mut ranges: Vec<(usize, Option<usize>)> =
        vec![(0, None), (size, Some(0)), (0, Some(size + p + 3))];
    if size > 0 {
        ranges.extend([
            (0, Some(size)),
            (1, Some(size - 1)),
            (size / 2, Some(size - size / 2)),
            (size - 1, Some(1)),
            (size / 3, Some(2 * p)),
        ]);
    }
    if size > 4095 {
        ranges.push((4095, Some(2)));
    }
    if size > 4098 {
        ranges.push((4097, Some(size - 4098)));
    }
    for (off, len) in ranges {
        let mut o = mapcopy_check::options(s);
        o.offset(off as u64);
        if let Some(l) = len {
            o.len(l);
        }
        let want = slice_zero_ext(&content, off, len.unwrap_or(size - off));
        let what = format!("size {size}, offset {off}, len {len:?}");
        let m = o.map(&file).map_err(io(&what))?;
        if m.strategy() != s {
            return fail(format!("{what}: mapped by {}, asked for {s}", m.strategy()));
        }
        let mut got = vec![0u8; m.len()];
        Source::read(&m, 0, &mut got).map_err(Failed::from)?;
        check_bytes(&got, &want, &what)?;
        // Same through map_mut (or the strategy's refusal of writable
        // mappings, the same every time).
        match (o.map_mut(&file), &mut_refused) {
            (Ok(mm), Ok(())) => check_bytes(&mm, &want, &format!("{what} (map_mut)"))?,
            (Err(e), Err(_)) if e.kind() == ErrorKind::Unsupported => {}
            (r, refused) => {
                return fail(format!(
                    "{what} (map_mut): got {:?}, but map_mut of a plain file gave {refused:?}",
                    r.map(|m| m.len())
                ));
            }
        }
    }
    // And the whole file against a modification.
    if size > 0 {
        let script = Script {
            size,
            off: 0,
            len: None,
            populate: false,
            steps: vec![
                Step::Touch(vec![0]),
                Step::Modify(Modification::new(Kind::Pwrite, 0, (size + p) as u64, 1)),
                Step::TouchAll,
                Step::Modify(Modification::new(Kind::FtruncateShrink, 0, 0, 0)),
                Step::TouchAll,
            ],
        };
        return script_outcome(run_script(Backend::Copy(s), dir, &script));
    }
    Ok(Completion::Completed)
}

/// Several mappings of one file, made at different versions of it; each
/// keeps its own snapshot.
fn many_mappings_case(s: Strategy, dir: &Path) -> Outcome {
    if let Err(why) = usable_in(s, dir) {
        return skip(format!("{s} is not usable here: {why}"));
    }
    let p = page();
    let tf = TestFile::new_in(dir, 3 * p + 1, 0).map_err(io("test file"))?;
    let file = tf.open().map_err(io("open"))?;
    let mut maps = Vec::new();
    let mut content = tf.contents().map_err(io("read"))?;
    for g in 1..=3u32 {
        let m = mapcopy_check::options(s).map(&file).map_err(io("map"))?;
        let mut c = Checker::new(p, 0, m.len(), content.clone());
        c.touch(&m, [(g as u64 - 1) % 4]).map_err(Failed::from)?;
        maps.push((m, c));
        content = Modification::new(Kind::Pwrite, 0, 4 * p as u64, g)
            .apply_checked(tf.path(), &content)
            .map_err(io("pwrite"))?;
        for (m, c) in &mut maps {
            c.push_state(content.clone());
            c.touch(m, [(g as u64) % 4]).map_err(Failed::from)?;
        }
    }
    for (m, c) in &mut maps {
        c.touch_all(m).map_err(Failed::from)?;
    }
    Ok(Completion::Completed)
}

/// Mappings made and dropped in quick succession, alternating between two
/// files with different contents (a new mapping may land at the address of
/// the one just dropped, while its fault-around or prefetch is still in
/// flight), while another thread keeps reading a third, long-lived mapping.
fn churn_case(s: Strategy, dir: &Path) -> Outcome {
    if let Err(why) = usable_in(s, dir) {
        return skip(format!("{s} is not usable here: {why}"));
    }
    let p = page();
    let size = (4 << 20) + 3 * p + 17;
    let files = [
        TestFile::new_in(dir, size, 0).map_err(io("test file"))?,
        TestFile::new_in(dir, size, 5).map_err(io("test file"))?,
    ];
    let contents = [
        files[0].contents().map_err(io("read"))?,
        files[1].contents().map_err(io("read"))?,
    ];
    let opened = [
        files[0].open().map_err(io("open"))?,
        files[1].open().map_err(io("open"))?,
    ];
    let steady_file = TestFile::new_in(dir, size, 9).map_err(io("test file"))?;
    let steady_content = steady_file.contents().map_err(io("read"))?;
    let steady = mapcopy_check::options(s)
        .map(&steady_file.open().map_err(io("open"))?)
        .map_err(io("map"))?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let pages = size.div_ceil(p) as u64;
    std::thread::scope(|sc| -> Result<(), Failed> {
        let reader = sc.spawn(|| -> Result<usize, String> {
            let mut c = Checker::new(p, 0, steady.len(), steady_content.clone());
            let mut rounds = 0;
            let mut pg = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                c.touch(&steady, [pg])
                    .map_err(|v| format!("steady mapping: {v}"))?;
                pg = (pg * 7 + 13) % pages;
                rounds += 1;
            }
            Ok(rounds)
        });
        let mut x: u64 = 12345;
        let r = (|| -> Result<(), Failed> {
            for i in 0..60 {
                let which = i % 2;
                let m = mapcopy_check::options(s)
                    .map(&opened[which])
                    .map_err(io("map"))?;
                let mut c = Checker::new(p, 0, m.len(), contents[which].clone());
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let first = (x >> 33) % pages;
                let touch: Vec<u64> = if i % 5 == 0 {
                    (0..pages).collect()
                } else {
                    vec![first, (first + 1) % pages, (first + 600) % pages]
                };
                c.touch(&m, touch)
                    .map_err(|v| Failed::from(format!("iteration {i}, file {which}: {v}")))?;
                drop(m);
            }
            Ok(())
        })();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let rounds = reader
            .join()
            .expect("reader thread")
            .map_err(Failed::from)?;
        eprintln!("steady reader checked {rounds} page reads during the churn");
        r
    })?;
    Ok(Completion::Completed)
}

/// 8 threads race on first touch: over one mapping, or over three mappings
/// of the same file at different offsets (one handler serving several).
fn threads_case(s: Strategy, dir: &Path, multi: bool) -> Outcome {
    if let Err(why) = usable_in(s, dir) {
        return skip(format!("{s} is not usable here: {why}"));
    }
    let p = page();
    // More than a huge page, so fault-around windows collide too.
    let size = 600 * p + 123;
    let tf = TestFile::new_in(dir, size, 0).map_err(io("test file"))?;
    let initial = tf.contents().map_err(io("read"))?;
    let file = tf.open().map_err(io("open"))?;
    let offsets: &[u64] = if multi {
        &[0, 5 * p as u64 + 7, (1 << 20) + 3]
    } else {
        &[0]
    };
    let mut maps = Vec::new();
    for &off in offsets {
        let m = mapcopy_check::options(s)
            .offset(off)
            .map(&file)
            .map_err(io("map"))?;
        let c = Checker::new(p, off, m.len(), initial.clone());
        maps.push((m, c));
    }
    // Another process changes every page before anyone touched one.
    let new = Modification::new(Kind::Pwrite, 0, size as u64 + 1, 1)
        .apply_checked(tf.path(), &initial)
        .map_err(io("pwrite"))?;
    for (_, c) in &mut maps {
        c.push_state(new.clone());
    }
    const THREADS: usize = 8;
    let barrier = Barrier::new(THREADS);
    // seen[thread][mapping][page index]
    let seen: Vec<Vec<Vec<Vec<u8>>>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..THREADS)
            .map(|t| {
                let (maps, barrier) = (&maps, &barrier);
                sc.spawn(move || {
                    let mut out: Vec<Vec<Vec<u8>>> = maps
                        .iter()
                        .map(|(_, c)| vec![Vec::new(); c.pages().count()])
                        .collect();
                    barrier.wait();
                    // Each thread walks the pages from a different start, in
                    // alternating directions, so first touches collide.
                    for mi in 0..maps.len() {
                        let mi = (mi + t) % maps.len();
                        let (map, c) = &maps[mi];
                        let pages: Vec<u64> = c.pages().collect();
                        let n = pages.len();
                        for k in 0..n {
                            let i = if t % 2 == 0 {
                                (k + t) % n
                            } else {
                                (n * 2 - k - t) % n
                            };
                            let r = c.mapped(pages[i]);
                            let mut buf = vec![0u8; r.len()];
                            Source::read(map, r.start, &mut buf).expect("read");
                            out[mi][i] = buf;
                        }
                    }
                    out
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("reader thread"))
            .collect()
    });
    for (mi, (_, c)) in maps.iter_mut().enumerate() {
        let pages: Vec<u64> = c.pages().collect();
        for (i, &pg) in pages.iter().enumerate() {
            for t in 1..THREADS {
                if seen[t][mi][i] != seen[0][mi][i] {
                    return fail(format!(
                        "mapping {mi}: threads 0 and {t} saw different bytes in page {pg}: [{}] vs [{}]",
                        pattern::describe(&seen[0][mi][i], pg * p as u64),
                        pattern::describe(&seen[t][mi][i], pg * p as u64)
                    ));
                }
            }
            c.observe(pg, seen[0][mi][i].clone())
                .map_err(|v| Failed::from(format!("mapping {mi}: {v}")))?;
        }
    }
    let newer = Modification::new(Kind::Pwrite, 0, size as u64 + 1, 2)
        .apply_checked(tf.path(), &new)
        .map_err(io("pwrite"))?;
    for (mi, (m, c)) in maps.iter_mut().enumerate() {
        c.push_state(newer.clone());
        c.touch_all(m)
            .map_err(|v| Failed::from(format!("mapping {mi}: {v}")))?;
    }
    Ok(Completion::Completed)
}

fn kernel_access_case(s: Strategy, dir: &Path) -> Outcome {
    if let Err(why) = usable_in(s, dir) {
        return skip(format!("{s} is not usable here: {why}"));
    }
    let p = page();
    let size = 3 * p + 1;
    let tf = TestFile::new_in(dir, size, 0).map_err(io("test file"))?;
    let old = tf.contents().map_err(io("read"))?;
    let file = tf.open().map_err(io("open"))?;
    // 1. Straight from a fresh mapping into a file (write(2) reads it in
    //    kernel mode).
    let map = mapcopy_check::options(s).map(&file).map_err(io("map"))?;
    let out_path = tf.dir().join("out");
    let mut out = File::create(&out_path).map_err(io("create"))?;
    out.write_all(&map)
        .map_err(io("write(2) from an untouched mapping to a file"))?;
    drop(out);
    check_bytes(
        &std::fs::read(&out_path).map_err(io("read"))?,
        &old,
        "file written from the mapping",
    )?;
    // 2. A new mapping, the file modified, then write(2) into a pipe.
    let map = mapcopy_check::options(s).map(&file).map_err(io("map"))?;
    let mut checker = Checker::new(p, 0, map.len(), old);
    let new = Modification::new(Kind::Pwrite, 0, 4 * p as u64, 1)
        .apply_checked(tf.path(), checker.current())
        .map_err(io("pwrite"))?;
    checker.push_state(new);
    let (rd, wr) = rustix::pipe::pipe().map_err(io("pipe"))?;
    let mut wr = File::from(wr);
    wr.write_all(&map)
        .map_err(io("write(2) from an untouched mapping to a pipe"))?;
    drop(wr);
    let mut got = Vec::new();
    File::from(rd)
        .read_to_end(&mut got)
        .map_err(io("read pipe"))?;
    if got.len() != map.len() {
        return fail(format!("pipe got {} bytes of {}", got.len(), map.len()));
    }
    checker.observe_all(&got).map_err(Failed::from)?;
    // Reading through the mapping now must agree with what the kernel saw.
    checker.touch_all(&map).map_err(Failed::from)?;
    Ok(Completion::Completed)
}

/// Does page `pg` as read (`got`) equal some state's page with
/// `overlay` stored over it at `at` (the owner's private stores)?
fn state_with_overlay(
    c: &Checker,
    pg: u64,
    got: &[u8],
    at: usize,
    overlay: &[u8],
) -> Result<(), Failed> {
    for s in 0..c.states().len() {
        let mut exp = c.expected(s, pg);
        exp[at..at + overlay.len()].copy_from_slice(overlay);
        if exp == got {
            return Ok(());
        }
    }
    fail(format!(
        "page {pg} after a private store at {at}..{}: [{}] is no file state with the store applied",
        at + overlay.len(),
        pattern::describe(got, pg * page() as u64)
    ))
}

/// A large writable mapping: sequential reads (lazy strategies start
/// filling ahead), private stores scattered over untouched pages, the file
/// rewritten twice by another process. Every page must be a file state with
/// exactly the owner's stores on top, and stay so.
fn map_mut_large_case(s: Strategy, dir: &Path) -> Outcome {
    if let Err(why) = usable_in(s, dir) {
        return skip(format!("{s} is not usable here: {why}"));
    }
    if let Err(why) = offers_map_mut(s, dir) {
        // Documented by the strategy, not a lack of this machine.
        return Ok(Completion::ignored_with(format!(
            "{s} offers no map_mut: {why}"
        )));
    }
    let p = page();
    let size = (6 << 20) + 123;
    let tf = TestFile::new_in(dir, size, 0).map_err(io("test file"))?;
    let old = tf.contents().map_err(io("read"))?;
    let file = tf.open().map_err(io("open"))?;
    let mut map = mapcopy_check::options(s)
        .map_mut(&file)
        .map_err(io("map_mut"))?;
    let mut c = Checker::new(p, 0, map.len(), old.clone());
    c.touch(&map, 0..32).map_err(Failed::from)?;
    let pages = c.pages().end;
    // Stores into every 37th page, at a page-dependent spot.
    let stored: Vec<(u64, usize)> = (40..pages)
        .step_by(37)
        .map(|pg| (pg, (pg as usize * 13) % c.mapped(pg).len()))
        .collect();
    for &(pg, at) in &stored {
        map[c.mapped(pg).start + at] = 0xA5;
    }
    let new = Modification::new(Kind::Pwrite, 0, size as u64, 1)
        .apply_checked(tf.path(), &old)
        .map_err(io("pwrite"))?;
    c.push_state(new.clone());
    let mut first: Vec<Vec<u8>> = Vec::new();
    for pg in 0..pages {
        let r = c.mapped(pg);
        let got = map[r.clone()].to_vec();
        match stored.iter().find(|(q, _)| *q == pg) {
            Some(&(_, at)) => state_with_overlay(&c, pg, &got, at, &[0xA5])?,
            None => c.observe(pg, got.clone()).map_err(Failed::from)?,
        }
        first.push(got);
    }
    let newer = Modification::new(Kind::Pwrite, 0, size as u64, 2)
        .apply_checked(tf.path(), &new)
        .map_err(io("pwrite"))?;
    for pg in 0..pages {
        let r = c.mapped(pg);
        if map[r] != first[pg as usize][..] {
            return fail(format!("page {pg} changed after it was read"));
        }
    }
    drop(map);
    check_bytes(
        &std::fs::read(tf.path()).map_err(io("read"))?,
        &newer,
        "file at the end",
    )?;
    Ok(Completion::Completed)
}

fn vm_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|st| {
            st.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// A 64 GiB sparse file, more than this machine's memory: a strategy maps
/// it without allocating it (touching a few pages costs a few pages), or
/// refuses with `Unsupported`/`Io` — never an OOM kill, never `InvalidInput`.
fn huge_sparse_case(s: Strategy, dir: &Path) -> Outcome {
    if let Err(why) = usable_in(s, dir) {
        return skip(format!("{s} is not usable here: {why}"));
    }
    let p = page() as u64;
    let gib = 1u64 << 30;
    let size = 64 * gib;
    let tf = TestFile::new_in(dir, 0, 0).map_err(io("test file"))?;
    let spots = [0, 32 * gib, size - 5000];
    {
        use std::os::unix::fs::FileExt;
        let f = OpenOptions::new()
            .write(true)
            .open(tf.path())
            .map_err(io("open"))?;
        f.set_len(size).map_err(io("ftruncate 64 GiB"))?;
        for &at in &spots {
            f.write_all_at(&pattern::bytes(0, at, p as usize), at)
                .map_err(io("pwrite"))?;
        }
    }
    let file = tf.open().map_err(io("open"))?;
    let rss0 = vm_rss();
    let map = match mapcopy_check::options(s).map(&file) {
        Ok(m) => m,
        Err(e) if matches!(e.kind(), ErrorKind::Unsupported | ErrorKind::Io) => {
            eprintln!("{s} refuses a 64 GiB file ({:?}): {e}", e.kind());
            return Ok(Completion::Completed);
        }
        Err(e) => return fail(format!("64 GiB sparse file: {:?} {e}", e.kind())),
    };
    if map.len() as u64 != size {
        return fail(format!("mapped {} bytes of {size}", map.len()));
    }
    let read = |at: u64, n: usize| -> Result<Vec<u8>, Failed> {
        let mut b = vec![0u8; n];
        Source::read(&map, at as usize, &mut b).map_err(Failed::from)?;
        Ok(b)
    };
    for &at in &spots {
        let want = slice_zero_ext(
            &pattern::bytes(0, at, p as usize),
            0,
            (size - at).min(p) as usize,
        );
        check_bytes(&read(at, want.len())?, &want, &format!("data at {at}"))?;
    }
    check_bytes(
        &read(gib, p as usize)?,
        &vec![0; p as usize],
        "hole at 1 GiB",
    )?;
    // Another process writes into a touched page and shrinks the file.
    let m1 = Modification::new(Kind::Pwrite, 32 * gib, 3 * p, 1);
    m1.apply(tf.path()).map_err(io("pwrite"))?;
    Modification::new(Kind::FtruncateShrink, 33 * gib, 0, 0)
        .apply(tf.path())
        .map_err(io("ftruncate"))?;
    let want = pattern::bytes(0, 32 * gib, p as usize);
    check_bytes(
        &read(32 * gib, p as usize)?,
        &want,
        "touched page after pwrite",
    )?;
    let tail = read(size - 5000, 5000)?;
    // 4096 bytes of data, then the hole up to the old end.
    let want_tail = slice_zero_ext(&pattern::bytes(0, size - 5000, p as usize), 0, 5000);
    check_bytes(&tail, &want_tail, "touched last page after the truncation")?;
    // Untouched: the old bytes (a hole, zeros) or the new ones.
    let next = read(32 * gib + p, p as usize)?;
    if next != vec![0; p as usize] && next != pattern::bytes(1, 32 * gib + p, p as usize) {
        return fail(format!(
            "untouched page at 32 GiB + 1 page holds [{}]",
            pattern::describe(&next, 32 * gib + p)
        ));
    }
    check_bytes(
        &read(40 * gib, p as usize)?,
        &vec![0; p as usize],
        "past the new end",
    )?;
    let grown = vm_rss().saturating_sub(rss0);
    // Other trials run in this process too; a 64 GiB allocation would show.
    if grown > gib {
        return fail(format!(
            "resident memory grew by {grown} bytes for a few touched pages"
        ));
    }
    eprintln!("{s}: 64 GiB sparse file mapped; resident memory grew by {grown} bytes");
    Ok(Completion::Completed)
}

/// One file mapped by every usable strategy at once, in one process (they
/// share the per-process watcher thread), then modified by another
/// process. Runs in a child: a deadlock between strategies must fail this
/// trial, not hang the suite.
fn mixed_case(name: &str, dir: &Path) -> Outcome {
    if !privilege::in_trial(name) {
        let mut cmd = privilege::trial(name, false).map_err(Failed::from)?;
        cmd.env(MOUNTS_ENV, "");
        let (status, out, err) = run_bounded(cmd, 60)?;
        return if status.success() && out.contains("1 passed") {
            eprintln!("{}", err.trim());
            Ok(Completion::Completed)
        } else {
            fail(format!("{status}:\n{out}\n{err}"))
        };
    }
    let p = page();
    let size = (3 << 20) + 5;
    let tf = TestFile::new_in(dir, size, 0).map_err(io("test file"))?;
    let old = tf.contents().map_err(io("read"))?;
    let pr = mapcopy::probe(Some(tf.path()));
    let mut maps = Vec::new();
    for e in pr.strategies.iter().filter(|e| e.usable.is_ok()) {
        // Each user opens the file itself, after the others have mapped it
        // (a file opened after a fanotify mark exists raises its events).
        let file = tf.open().map_err(io("open"))?;
        let m = mapcopy_check::options(e.strategy)
            .map(&file)
            .map_err(io(e.strategy.name()))?;
        let mut c = Checker::new(p, 0, m.len(), old.clone());
        eprintln!("mapped with {}; touching pages 0 and 600", e.strategy);
        c.touch(&m, [0, 600])
            .map_err(|v| Failed::from(format!("{}: {v}", e.strategy)))?;
        maps.push((e.strategy, m, c));
    }
    let mut state = old;
    for m in [
        Modification::new(Kind::Pwrite, 0, size as u64, 1),
        Modification::new(Kind::FtruncateShrink, 1 << 20, 0, 0),
    ] {
        eprintln!("{m}");
        state = m
            .apply_checked(tf.path(), &state)
            .map_err(io("modification"))?;
        for (s, map, c) in &mut maps {
            c.push_state(state.clone());
            eprintln!("reading every page through the {s} mapping");
            c.touch_all(map)
                .map_err(|v| Failed::from(format!("{s}: {v}")))?;
        }
    }
    let names: Vec<&str> = maps.iter().map(|(s, _, _)| s.name()).collect();
    eprintln!("one file mapped at once by {names:?}: all kept the contract");
    Ok(Completion::Completed)
}

/// Env var naming the file a re-executed read-error trial maps.
const FILE_ENV: &str = "MAPCOPY_CONTRACT_FILE";

/// What a strategy documents for a file whose data cannot be read (`EIO`).
#[derive(Debug, PartialEq, Eq)]
enum OnReadError {
    /// `map` returns an `Io` error.
    MapFails,
    /// `map` succeeds; the access that needs the bad block aborts the
    /// process with a message (a faulting thread can be given no error).
    AbortOnTouch,
    /// `map` succeeds; touching the unreadable page raises SIGBUS, as in
    /// any file mapping (the zero-copy strategies map the file or a clone).
    SigbusOnTouch,
    /// Not documented: any of the above.
    Either,
}

fn on_read_error(s: Strategy, populate: bool) -> OnReadError {
    match (s, populate) {
        (Strategy::Eager, _) | (Strategy::Lazy | Strategy::Guard, true) => OnReadError::MapFails,
        (Strategy::Lazy, false) => OnReadError::AbortOnTouch,
        (Strategy::Lease | Strategy::Reflink, true) => OnReadError::MapFails,
        (Strategy::Lease | Strategy::Reflink | Strategy::Guard, false) => {
            OnReadError::SigbusOnTouch
        }
        _ => OnReadError::Either,
    }
}

/// A file whose page 16 cannot be read: btrfs with that block's data
/// corrupted in the image, so the checksum fails and reads get `EIO`. The
/// strategy must fail as it documents — never hand out wrong bytes, never
/// hang. Runs in a child (an abort must not kill the suite).
fn read_error_case(name: &str, s: Strategy, populate: bool) -> Outcome {
    let p = page();
    let size = 64 * p;
    if privilege::in_trial(name) {
        let path = std::env::var(FILE_ENV).map_err(io("file to map"))?;
        let want = pattern::bytes(0, 0, size);
        let file = File::open(&path).map_err(io("open"))?;
        match mapcopy_check::options(s).populate(populate).map(&file) {
            Err(e) => println!("MAP-ERR {:?}: {e}", e.kind()),
            Ok(m) => {
                for i in 0..size / p {
                    let mut got = vec![0u8; p];
                    Source::read(&m, i * p, &mut got).map_err(Failed::from)?;
                    if got == want[i * p..(i + 1) * p] {
                        println!("PAGE {i} ok");
                    } else {
                        println!(
                            "WRONG page {i}: [{}]",
                            pattern::describe(&got, (i * p) as u64)
                        );
                    }
                }
                println!("DONE");
            }
        }
        return Ok(Completion::Completed);
    }
    let mut mnt = match LoopMount::new(FsKind::Btrfs) {
        Ok(m) => m,
        Err(why) => return skip(why),
    };
    if let Err(why) = usable_in(s, mnt.path()) {
        return skip(format!("{s} is not usable on btrfs: {why}"));
    }
    let path = mnt.path().join("file");
    std::fs::write(&path, pattern::bytes(0, 0, size)).map_err(io("write"))?;
    File::open(&path)
        .and_then(|f| f.sync_all())
        .map_err(io("fsync"))?;
    mnt.unmount().map_err(Failed::from)?;
    mnt.corrupt(&pattern::bytes(0, 16 * p as u64, 32), p, b'X')
        .map_err(Failed::from)?;
    mnt.mount().map_err(Failed::from)?;
    let mut cmd = privilege::trial(name, false).map_err(Failed::from)?;
    cmd.env(FILE_ENV, &path);
    let (status, out, err) = run_bounded(cmd, 60)?;
    // (libtest prints "test NAME ... " before the trial's first line)
    let pages_ok = out.matches("PAGE ").count();
    let map_err = out
        .find("MAP-ERR ")
        .map(|i| out[i..].lines().next().unwrap_or_default());
    let all = format!("{status}\n{out}\n{err}");
    if out.contains("WRONG") {
        return fail(format!(
            "wrong bytes handed out for an unreadable file:\n{all}"
        ));
    }
    if out.contains("DONE") {
        return fail(format!(
            "every page read fine although page 16 is unreadable:\n{all}"
        ));
    }
    let aborted = status.signal() == Some(libc::SIGABRT) && !err.trim().is_empty();
    let map_failed = status.success() && map_err.is_some_and(|l| l.starts_with("MAP-ERR Io"));
    let sigbus = status.signal() == Some(libc::SIGBUS);
    let ok = match on_read_error(s, populate) {
        OnReadError::MapFails => map_failed,
        OnReadError::AbortOnTouch => aborted,
        OnReadError::SigbusOnTouch => sigbus,
        OnReadError::Either => map_failed || aborted,
    };
    if !ok {
        return fail(format!(
            "{s} documents {:?} for a read error, but: {all}",
            on_read_error(s, populate)
        ));
    }
    let last = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    eprintln!(
        "{s}: {} after {pages_ok} good pages; {}",
        if aborted {
            "aborted"
        } else if sigbus {
            "SIGBUS on touch"
        } else {
            "map failed"
        },
        map_err.unwrap_or(last)
    );
    Ok(Completion::Completed)
}

fn map_mut_case(s: Strategy, dir: &Path) -> Outcome {
    if let Err(why) = usable_in(s, dir) {
        return skip(format!("{s} is not usable here: {why}"));
    }
    if let Err(why) = offers_map_mut(s, dir) {
        // Documented by the strategy, not a lack of this machine.
        return Ok(Completion::ignored_with(format!(
            "{s} offers no map_mut: {why}"
        )));
    }
    let p = page();
    let size = 4 * p + 1;
    let tf = TestFile::new_in(dir, size, 0).map_err(io("test file"))?;
    let old = tf.contents().map_err(io("read"))?;
    let file = tf.open().map_err(io("open"))?;
    let mut map = mapcopy_check::options(s)
        .map_mut(&file)
        .map_err(io("map_mut"))?;
    if map.strategy() != s {
        return fail(format!("mapped by {}", map.strategy()));
    }
    let mut c = Checker::new(p, 0, map.len(), old.clone());
    c.touch(&map, [0]).map_err(Failed::from)?;
    // Another process rewrites everything.
    let new = Modification::new(Kind::Pwrite, 0, 5 * p as u64, 1)
        .apply_checked(tf.path(), &old)
        .map_err(io("pwrite"))?;
    c.push_state(new);
    // A store into an untouched page (a write fault on a missing page).
    map[p + 5] = 0xA5;
    state_with_overlay(&c, 1, &map[p..2 * p], 5, &[0xA5])?;
    // The kernel stores into an untouched page: read(2) into it.
    let other = tf.dir().join("other");
    let seven = pattern::bytes(7, 0, 200);
    std::fs::write(&other, &seven).map_err(io("write other"))?;
    let n = File::open(&other)
        .and_then(|mut f| f.read(&mut map[2 * p + 100..2 * p + 300]))
        .map_err(io("read(2) into an untouched page of the mapping"))?;
    if n != 200 {
        return fail(format!("read(2) into the mapping read {n} bytes, want 200"));
    }
    state_with_overlay(&c, 2, &map[2 * p..3 * p], 100, &seven)?;
    // The pattern is ASCII: 0xA5 never occurs in the file unless a store leaked.
    map.fill(0xA5);
    let leaked = |what: &str| -> Result<(), Failed> {
        let now = std::fs::read(tf.path()).map_err(io("read"))?;
        if let Some(i) = now.iter().position(|&b| b == 0xA5) {
            return fail(format!(
                "{what}: a private store reached the file at byte {i}"
            ));
        }
        Ok(())
    };
    leaked("after the stores")?;
    check_bytes(
        &std::fs::read(tf.path()).map_err(io("read"))?,
        c.current(),
        "file after private stores",
    )?;
    let newer = Modification::new(Kind::Pwrite, 0, 5 * p as u64, 2)
        .apply_checked(tf.path(), c.current())
        .map_err(io("pwrite"))?;
    if let Some(i) = map.iter().position(|&b| b != 0xA5) {
        return fail(format!(
            "own store at byte {i} lost after another process wrote the file"
        ));
    }
    drop(map);
    leaked("after dropping the mapping")?;
    check_bytes(
        &std::fs::read(tf.path()).map_err(io("read"))?,
        &newer,
        "file at the end",
    )?;
    Ok(Completion::Completed)
}

// ---------------------------------------------------------------------------
// Bad input: each gets a clear error, never a panic or a mapping

#[derive(Clone, Copy, Debug)]
enum Bad {
    Directory,
    Fifo,
    UnixSocket,
    DevNull,
    ProcFile,
    WriteOnly,
    OPath,
    OffsetPastEnd,
    Overflow,
    UnalignedOffset,
    ZeroLength,
    EmptyFile,
}

const BAD: [Bad; 12] = [
    Bad::Directory,
    Bad::Fifo,
    Bad::UnixSocket,
    Bad::DevNull,
    Bad::ProcFile,
    Bad::WriteOnly,
    Bad::OPath,
    Bad::OffsetPastEnd,
    Bad::Overflow,
    Bad::UnalignedOffset,
    Bad::ZeroLength,
    Bad::EmptyFile,
];

impl Bad {
    fn name(self) -> &'static str {
        match self {
            Bad::Directory => "directory",
            Bad::Fifo => "fifo",
            Bad::UnixSocket => "unix-socket",
            Bad::DevNull => "dev-null",
            Bad::ProcFile => "proc-file",
            Bad::WriteOnly => "write-only",
            Bad::OPath => "o-path",
            Bad::OffsetPastEnd => "offset-past-end",
            Bad::Overflow => "offset-len-overflow",
            Bad::UnalignedOffset => "unaligned-offset-ok",
            Bad::ZeroLength => "zero-length-ok",
            Bad::EmptyFile => "empty-file-ok",
        }
    }
}

/// `None` = a strategy-specific outcome (Ok when usable, Unsupported not).
fn bad_expected(b: Bad) -> Option<ErrorKind> {
    match b {
        Bad::UnalignedOffset | Bad::ZeroLength | Bad::EmptyFile => None,
        _ => Some(ErrorKind::InvalidInput),
    }
}

fn bad_input_case(s: Strategy, b: Bad) -> Outcome {
    let p = page();
    let tf = TestFile::new(3 * p + 1).map_err(io("test file"))?;
    let content = tf.contents().map_err(io("read"))?;
    let mut o = mapcopy_check::options(s);
    let mut want = content.clone();
    let file: File = match b {
        Bad::Directory => File::open(tf.dir()).map_err(io("open dir"))?,
        Bad::Fifo => {
            let fifo = tf.dir().join("fifo");
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &fifo,
                rustix::fs::FileType::Fifo,
                0o600.into(),
                0,
            )
            .map_err(io("mkfifo"))?;
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo)
                .map_err(io("open fifo"))?
        }
        Bad::UnixSocket => {
            let (a, _b) = std::os::unix::net::UnixStream::pair().map_err(io("socketpair"))?;
            File::from(OwnedFd::from(a))
        }
        Bad::DevNull => File::open("/dev/null").map_err(io("/dev/null"))?,
        Bad::ProcFile => File::open("/proc/self/status").map_err(io("/proc/self/status"))?,
        Bad::WriteOnly => OpenOptions::new()
            .write(true)
            .open(tf.path())
            .map_err(io("open O_WRONLY"))?,
        Bad::OPath => OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(tf.path())
            .map_err(io("open O_PATH"))?,
        Bad::OffsetPastEnd => {
            o.offset(content.len() as u64 + 1);
            tf.open().map_err(io("open"))?
        }
        Bad::Overflow => {
            o.offset(10).len(usize::MAX - 5);
            tf.open().map_err(io("open"))?
        }
        Bad::UnalignedOffset => {
            o.offset(p as u64 + 7).len(p + 3);
            want = content[p + 7..2 * p + 10].to_vec();
            tf.open().map_err(io("open"))?
        }
        Bad::ZeroLength => {
            o.offset(5).len(0);
            want.clear();
            tf.open().map_err(io("open"))?
        }
        Bad::EmptyFile => {
            std::fs::write(tf.path(), b"").map_err(io("truncate"))?;
            want.clear();
            tf.open().map_err(io("open"))?
        }
    };
    let usable = if s == Strategy::Auto {
        Ok(())
    } else {
        usable_in(s, &std::env::temp_dir())
    };
    let mut_refused = if usable.is_ok() {
        offers_map_mut(s, &std::env::temp_dir()).is_err()
    } else {
        false
    };
    for mutable in [false, true] {
        let what = format!(
            "{} with {s}{}",
            b.name(),
            if mutable { " (map_mut)" } else { "" }
        );
        let r: Result<Vec<u8>, mapcopy::Error> = if mutable {
            o.map_mut(&file).map(|m| m.to_vec())
        } else {
            o.map(&file).map(|m| m.to_vec())
        };
        match (bad_expected(b), r) {
            (Some(kind), Err(e)) if e.kind() == kind => {
                if e.to_string().is_empty() {
                    return fail(format!("{what}: empty error message"));
                }
                eprintln!("{what}: {:?}: {e}", e.kind());
            }
            (Some(kind), r) => {
                return fail(format!(
                    "{what}: want {kind:?}, got {:?}",
                    r.map(|v| v.len())
                ));
            }
            (None, Ok(got)) if usable.is_ok() && !(mutable && mut_refused) => {
                check_bytes(&got, &want, &what)?
            }
            (None, Err(e)) if mutable && mut_refused && e.kind() == ErrorKind::Unsupported => {
                eprintln!("{what}: {s} refuses map_mut: {e}");
            }
            (None, Err(e)) if usable.is_err() && e.kind() == ErrorKind::Unsupported => {
                eprintln!("{what}: Unsupported as probe said: {e}");
            }
            (None, r) => {
                return fail(format!(
                    "{what}: probe says {usable:?}, map gave {:?}",
                    r.map(|v| v.len())
                ));
            }
        }
    }
    Ok(Completion::Completed)
}

// ---------------------------------------------------------------------------
// Auto and probe, as root and as nobody

/// Can this process use userfaultfd for kernel-mode faults, judged from
/// the machine's settings rather than the library's probe?
fn uffd_allowed_by_facts() -> (bool, String) {
    if privilege::is_root() {
        return (true, "running as root".into());
    }
    let sysctl = std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
        .unwrap_or_default()
        .trim()
        .to_string();
    if sysctl == "1" {
        return (true, "vm.unprivileged_userfaultfd=1".into());
    }
    let dev = rustix::fs::access(
        "/dev/userfaultfd",
        rustix::fs::Access::READ_OK | rustix::fs::Access::WRITE_OK,
    );
    if dev.is_ok() {
        return (true, "/dev/userfaultfd is accessible".into());
    }
    (
        false,
        format!(
            "uid {}, vm.unprivileged_userfaultfd={sysctl:?}, /dev/userfaultfd: {dev:?}",
            rustix::process::geteuid().as_raw()
        ),
    )
}

fn auto_probe_case() -> Outcome {
    let p = page();
    let tf = TestFile::new(3 * p + 1).map_err(io("test file"))?;
    let content = tf.contents().map_err(io("read"))?;
    let pr = mapcopy::probe(Some(tf.path()));
    eprintln!("as uid {}:\n{pr}", rustix::process::geteuid().as_raw());
    let order: Vec<Strategy> = pr.strategies.iter().map(|e| e.strategy).collect();
    if order != Strategy::ALL {
        return fail(format!("probe lists {order:?}, want {:?}", Strategy::ALL));
    }
    let first_usable = pr
        .strategies
        .iter()
        .find(|e| e.usable.is_ok())
        .map(|e| e.strategy);
    if pr.auto.as_ref().ok().copied() != first_usable {
        return fail(format!(
            "auto picks {:?}, first usable is {first_usable:?}",
            pr.auto
        ));
    }
    let eager = pr
        .strategies
        .iter()
        .find(|e| e.strategy == Strategy::Eager)
        .expect("eager");
    if let Err(why) = &eager.usable {
        return fail(format!("Eager needs nothing but says {why}"));
    }
    // Lazy against the facts of this process.
    let lazy = pr
        .strategies
        .iter()
        .find(|e| e.strategy == Strategy::Lazy)
        .expect("lazy");
    let (allowed, facts) = uffd_allowed_by_facts();
    match &lazy.usable {
        Err(why) if not_implemented(why) => eprintln!("lazy: {why}"),
        Ok(how) if allowed => eprintln!("lazy usable ({how}); facts: {facts}"),
        Err(why) if !allowed => eprintln!("lazy not usable ({why}); facts: {facts}"),
        u => {
            return fail(format!(
                "lazy probe says {u:?} but the facts say allowed={allowed}: {facts}"
            ));
        }
    }
    if allowed && lazy.usable.is_ok() {
        // Nothing before Lazy in Auto's order may be skipped for no reason:
        // Auto picks Lazy or an earlier usable strategy.
        let pick = pr.auto.clone().map_err(Failed::from)?;
        let li = Strategy::ALL.iter().position(|&s| s == Strategy::Lazy);
        let pi = Strategy::ALL.iter().position(|&s| s == pick);
        if pi > li {
            return fail(format!("auto picks {pick} although lazy is usable"));
        }
    }
    if !allowed && pr.auto == Ok(Strategy::Lazy) {
        return fail("auto picks lazy although userfaultfd is not usable here");
    }
    // Auto maps with exactly what probe said.
    let m = MapCopy::open(tf.path()).map_err(io("MapCopy::open"))?;
    if Ok(m.strategy()) != pr.auto {
        return fail(format!(
            "MapCopy::open used {}, probe said {:?}",
            m.strategy(),
            pr.auto
        ));
    }
    check_bytes(&m, &content, "auto mapping")?;
    drop(m);
    // Named strategies: usable ones map, the others refuse with the reason.
    let file = tf.open().map_err(io("open"))?;
    for e in &pr.strategies {
        let r = mapcopy_check::options(e.strategy).map(&file);
        match (&e.usable, r) {
            (Ok(_), Ok(m)) if m.strategy() == e.strategy => {
                check_bytes(&m, &content, e.strategy.name())?
            }
            (Err(why), Err(err)) if err.kind() == ErrorKind::Unsupported => {
                let msg = err.to_string();
                if !msg.contains(e.strategy.name()) || !msg.contains(why.as_str()) {
                    return fail(format!(
                        "{}: error {msg:?} does not name the strategy and the reason {why:?}",
                        e.strategy
                    ));
                }
            }
            (u, r) => {
                return fail(format!(
                    "{}: probe says {u:?}, map gave {:?}",
                    e.strategy,
                    r.map(|m| m.strategy())
                ));
            }
        }
    }
    // A strategy that keeps only per-page refuses the default
    // (point-in-time), saying so; probe's consistency is the one it keeps.
    for e in &pr.strategies {
        if e.consistency != Consistency::PointInTime && e.strategy.keeps(Consistency::PointInTime)
            || e.consistency == Consistency::PointInTime
                && !e.strategy.keeps(Consistency::PointInTime)
        {
            return fail(format!(
                "{}: probe says it keeps {}",
                e.strategy, e.consistency
            ));
        }
        if e.consistency == Consistency::PerPage && e.usable.is_ok() {
            match MapOptions::new().strategy(e.strategy).map(&file) {
                Err(err)
                    if err.kind() == ErrorKind::Unsupported
                        && err.to_string().contains("PerPage") => {}
                r => {
                    return fail(format!(
                        "{} under point-in-time: {:?}, not a refusal naming Consistency::PerPage",
                        e.strategy,
                        r.map(|m| m.strategy())
                    ));
                }
            }
        }
    }
    // probe(None) agrees on process-wide answers.
    let none = mapcopy::probe(None);
    if none.auto.is_err() {
        return fail(format!("probe(None) has no pick: {:?}", none.auto));
    }
    let lazy_none = none
        .strategies
        .iter()
        .find(|e| e.strategy == Strategy::Lazy)
        .expect("lazy");
    if lazy_none.usable.is_ok() != lazy.usable.is_ok() {
        return fail(format!(
            "lazy: probe(None) {:?} vs probe(file) {:?}",
            lazy_none.usable, lazy.usable
        ));
    }
    Ok(Completion::Completed)
}

/// Re-runs trial `inner` as nobody and reports its outcome.
fn nobody_trial(inner: &str) -> Outcome {
    let mut cmd = match privilege::trial(inner, true) {
        Ok(c) => c,
        Err(why) => return skip(format!("cannot run as nobody: {why}")),
    };
    let out = cmd.output().map_err(io("running the trial as nobody"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() && stdout.contains("1 passed") {
        eprintln!("{stderr}");
        Ok(Completion::Completed)
    } else if out.status.success() && stdout.contains("1 ignored") {
        skip(format!("as nobody: {}", stderr.trim()))
    } else {
        fail(format!(
            "as nobody, {inner} ended with {}:\n{stdout}\n{stderr}",
            out.status
        ))
    }
}

// ---------------------------------------------------------------------------
// The trial list

// ---------------------------------------------------------------------------
// Consistency: a structured file (safetensors) rewritten with another layout

/// The tensors of a safetensors buffer, as (name, dtype, shape, data).
type Tensors = Vec<(String, String, Vec<usize>, Vec<u8>)>;

fn tensor_bytes(n: usize, seed: u64) -> Vec<u8> {
    (0..n as u64)
        .map(|i| (i.wrapping_mul(0x9e37_79b9).wrapping_add(seed) >> 7) as u8)
        .collect()
}

/// Serializes tensors `(name, dtype, shape)` filled with seeded bytes.
fn safetensors_file(spec: &[(&str, safetensors::Dtype, &[usize])], seed: u64) -> Vec<u8> {
    let data: Vec<(String, Vec<u8>, safetensors::Dtype, Vec<usize>)> = spec
        .iter()
        .enumerate()
        .map(|(k, &(name, dtype, shape))| {
            let n = shape.iter().product::<usize>() * dtype.bitsize() / 8;
            (
                name.to_string(),
                tensor_bytes(n, seed + k as u64),
                dtype,
                shape.to_vec(),
            )
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(name, bytes, dtype, shape)| {
            let v = safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                .expect("valid tensor");
            (name.clone(), v)
        })
        .collect();
    safetensors::serialize(views, None).expect("serialize")
}

/// Version 1: three tensors, header on page 0, data over many pages.
fn safetensors_v1() -> Vec<u8> {
    use safetensors::Dtype::*;
    safetensors_file(
        &[
            ("embed", F32, &[256, 256]),
            ("bias", I64, &[4096]),
            ("mask", U8, &[3 * 4096 + 17]),
        ],
        1,
    )
}

/// Version 2: other tensors, another layout, larger than version 1 (so the
/// control's pages never fall past the end: it must fail on bytes, not on
/// SIGBUS).
fn safetensors_v2() -> Vec<u8> {
    use safetensors::Dtype::*;
    safetensors_file(
        &[
            ("mask", U8, &[1000]),
            ("proj", F64, &[160, 256]),
            ("embed", F32, &[64]),
            ("extra", I32, &[20_000]),
        ],
        99,
    )
}

/// Deserializes `bytes`, or says why it cannot.
fn tensors_of(bytes: &[u8]) -> Result<Tensors, String> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let mut out: Tensors = st
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            (
                name,
                format!("{:?}", t.dtype()),
                t.shape().to_vec(),
                t.data().to_vec(),
            )
        })
        .collect();
    out.sort();
    Ok(out)
}

/// How a mapping of a safetensors file fared when another process rewrote
/// the file after the header page was read and before any tensor page was.
enum Fared {
    /// The map call refused (`Unsupported`), with the message.
    Refused(String),
    /// Deserialized to exactly the version-1 tensors.
    V1,
    /// Anything else: the mixture (or error) seen.
    Mixed(String),
}

fn safetensors_run(
    b: Backend,
    dir: &Path,
    c: Consistency,
    open_before: bool,
) -> Result<Fared, Failed> {
    let v1 = safetensors_v1();
    let v2 = safetensors_v2();
    let want = tensors_of(&v1).map_err(|e| Failed::from(format!("v1 does not parse: {e}")))?;
    let tmp = tempfile::Builder::new()
        .prefix("mapcopy-pit-")
        .tempdir_in(dir)
        .map_err(io("temp dir"))?;
    let path = tmp.path().join("model.safetensors");
    let next = tmp.path().join("v2.safetensors");
    std::fs::write(&path, &v1).map_err(io("writing v1"))?;
    std::fs::write(&next, &v2).map_err(io("writing v2"))?;
    let writer = Rewriter::spawn(&path, &next, open_before).map_err(Failed::from)?;
    let file = File::open(&path).map_err(io("open"))?;
    let mapped = match b {
        Backend::Copy(s) => match MapOptions::new().strategy(s).consistency(c).map(&file) {
            Ok(m) => Mapped::Copy(m),
            Err(e) if e.kind() == ErrorKind::Unsupported => {
                return Ok(Fared::Refused(e.to_string()));
            }
            Err(e) => return fail(format!("map: {e}")),
        },
        Backend::Control => Mapped::Control(Control::new(&file, 0, v1.len()).map_err(io("mmap"))?),
    };
    let src = mapped.source();
    // Read the header (page 0) only, as a reader of the format does first.
    let mut head = vec![0u8; page().min(v1.len())];
    src.read(0, &mut head).map_err(Failed::from)?;
    writer.rewrite().map_err(Failed::from)?;
    let mut all = vec![0u8; src.len()];
    src.read(0, &mut all).map_err(Failed::from)?;
    Ok(match tensors_of(&all) {
        Ok(got) if got == want => Fared::V1,
        Ok(got) => {
            let intact = got.iter().filter(|t| want.contains(t)).count();
            Fared::Mixed(format!(
                "{intact} of {} version-1 tensors intact",
                want.len()
            ))
        }
        Err(e) => Fared::Mixed(format!("does not deserialize: {e}")),
    })
}

/// `point-in-time/safetensors/*` and `per-page/safetensors/*`: a writer that
/// holds the file open before the map (`open_before`) or opens it after,
/// and rewrites it with other tensors and another layout after the header
/// page was read and before any tensor page was. A strategy that keeps `c`
/// = point-in-time yields the version-1 tensors exactly or refuses (Lazy
/// always; Guard and Lease when a writer holds the file open, as
/// documented). Lazy under per-page and the control show the mixture.
fn safetensors_case(b: Backend, dir: &Path, c: Consistency, open_before: bool) -> Outcome {
    if let Backend::Copy(s) = b
        && let Err(why) = usable_in(s, dir)
    {
        return skip(format!("{s} is not usable here: {why}"));
    }
    let fared = safetensors_run(b, dir, c, open_before)?;
    let keeps = match b {
        Backend::Copy(s) => s.keeps(c) && c == Consistency::PointInTime,
        Backend::Control => false,
    };
    match (b, fared) {
        (_, Fared::V1) if keeps => Ok(Completion::Completed),
        (Backend::Copy(s), Fared::Refused(why)) => {
            let documented =
                !s.keeps(c) || (open_before && matches!(s, Strategy::Guard | Strategy::Lease));
            if documented {
                Ok(Completion::Completed)
            } else {
                fail(format!(
                    "{s} refused under {c} (writer open before: {open_before}): {why}"
                ))
            }
        }
        (_, Fared::Mixed(what)) if keeps => fail(format!(
            "{} claims {c} but mixed versions: {what}",
            b.name()
        )),
        // Per-page (Lazy) and the control: the header page is version 1,
        // the tensor pages version 2 — the mixture must show.
        (_, Fared::Mixed(_)) => Ok(Completion::Completed),
        (_, Fared::V1) => fail(format!(
            "{} under {c} read the version-1 tensors although the tensor pages were first touched after the rewrite: the case did not exercise mixing",
            b.name()
        )),
        (Backend::Control, Fared::Refused(_)) => unreachable!("the control never refuses"),
    }
}

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
        if s == Strategy::Immutable {
            // Its files cannot be modified, so the cases here (which modify
            // the file) cannot run on it; `tests/immutable.rs` makes its
            // files (sealed memfds, erofs and squashfs images) and shows
            // every modification refused. Here: it refuses every file of
            // the suite's filesystems, which any process may write.
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
