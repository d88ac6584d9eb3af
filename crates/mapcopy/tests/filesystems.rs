//! Filesystems where a file can change without this kernel seeing a write
//! to the inode mapped: overlayfs (a layer written directly) and FUSE (the
//! directory a server mirrors written directly); and tmpfs, where Lease is
//! shown to hold.
//!
//! Each trial mounts its own filesystem (root only; without root it skips,
//! or fails with `MAPCOPY_REQUIRE_ALL=1`), maps a file through it and has
//! a reader process — this binary re-executed, so that a `SIGBUS` fails the
//! trial instead of killing the suite — read part of the mapping, while
//! this process writes or truncates the file *by the other route*, then
//! read all of it again, checked by `mapcopy_check::oracle::Checker`:
//!
//! * `overlay/METHOD/{write-upper,truncate-upper,write-lower}`: Auto (it
//!   must pick Eager; per-page: Lazy), Eager and Lazy keep every page read
//!   before the write and never fault; the control (a plain `MAP_PRIVATE`
//!   of the overlay file) must be caught changing or faulting — the proof
//!   that the checker sees the writes at all;
//! * `overlay/auto/{upper,lower}/KIND`: every modification kind of the
//!   contract (that tmpfs layers support), by a writer process, directly
//!   on the upper file or on a lower-only file: Auto keeps the contract;
//! * `overlay/{guard,lease,reflink}/refuses`, `fuse/{guard,lease,reflink}/
//!   refuses`: named zero-copy strategies refuse with `Unsupported` naming
//!   the filesystem; `overlay/probe`, `fuse/probe` say so too;
//! * `fuse/METHOD/{write-source,truncate-source}`: Auto keeps the contract;
//! * `overlay-layer/...`: the other direction — the upper layer's real
//!   file (on an ext4 image) mapped directly while a writer process changes
//!   it through the overlay, with every modification kind of the contract
//!   (`through-overlay/KIND`): Guard and Lease refuse such a file
//!   (`overlay-layer/{guard,lease}/refuses`; before that check a guarded
//!   reader died of SIGBUS after a truncation through the overlay, a
//!   leased one after `truncate(2)` by path through it); Auto picks Eager
//!   and keeps the contract; the control is caught
//!   (`{write,truncate}-through-overlay`);
//! * `tmpfs/METHOD/{write,truncate}`, `tmpfs/lease/kind/KIND`: Lease (every
//!   modification kind tmpfs supports) and Auto keep it on tmpfs against a
//!   writer opening the file after the map; the control is caught; `tmpfs/guard/refuses` (Linux allows no pre-content marks
//!   there).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;

use libtest_mimic::{Arguments, Completion, Failed, Trial};
use mapcopy::{Consistency, ErrorKind, MapCopy, MapOptions, Strategy};
use mapcopy_check::control::{PageRead, PrivateMap};
use mapcopy_check::fixture::{self, FsKind, FuseMirror, LoopMount, Overlay, Tmpfs};
use mapcopy_check::modify::{ApplyError, Kind, Modification};
use mapcopy_check::oracle::{Checker, Source};
use mapcopy_check::pattern;

type Outcome = Result<Completion, Failed>;

/// The reader's entry point (`METHOD PATH`).
const READER: &str = "fs-reader";

/// A reader still running after this long is hung: killed, the trial fails.
const READER_LIMIT_SECS: u64 = 120;

fn page() -> usize {
    rustix::param::page_size()
}

/// Size of the file mapped: five pages and a partial one.
fn size() -> usize {
    5 * page() + 100
}

/// Pages the reader reads before the write.
const READ_BEFORE: u64 = 3;

fn skip(reason: impl std::fmt::Display) -> Outcome {
    match fixture::skip_or_fail(&reason) {
        Ok(r) => Ok(Completion::ignored_with(r)),
        Err(e) => Err(e.into()),
    }
}

fn fail<T>(msg: impl std::fmt::Display) -> Result<T, Failed> {
    Err(Failed::from(msg.to_string()))
}

// ---------------------------------------------------------------------------
// How the reader maps

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    /// A strategy (Auto included) under a consistency.
    Copy(Strategy, Consistency),
    /// A plain `MAP_PRIVATE` read-only mapping: must be caught.
    Control,
}

impl Method {
    fn name(self) -> String {
        match self {
            Method::Copy(s, Consistency::PerPage) => format!("{s}-per-page"),
            Method::Copy(s, _) => s.name().into(),
            Method::Control => "control".into(),
        }
    }

    fn parse(s: &str) -> Option<Method> {
        if s == "control" {
            return Some(Method::Control);
        }
        let (name, c) = match s.strip_suffix("-per-page") {
            Some(n) => (n, Consistency::PerPage),
            None => (s, Consistency::PointInTime),
        };
        name.parse().ok().map(|st| Method::Copy(st, c))
    }
}

/// The control mapping as a checker source: each page is read in a forked
/// child, so a page past the file's end shows as a fault, not a death.
struct ControlSource(PrivateMap, usize);

impl Source for ControlSource {
    fn len(&self) -> usize {
        self.1
    }
    fn read(&self, start: usize, out: &mut [u8]) -> Result<(), String> {
        let p = start / page();
        match self
            .0
            .read_pages(&[p], page())
            .map_err(|e| e.to_string())?
            .pop()
        {
            Some(PageRead::Bytes(b)) => {
                let from = start - p * page();
                out.copy_from_slice(&b[from..from + out.len()]);
                Ok(())
            }
            Some(PageRead::Sigbus) => Err("SIGBUS".into()),
            None => Err("no page read".into()),
        }
    }
}

/// The re-executed reader: maps `path` with `method`, reads the first
/// pages, says `ready <strategy>`, waits for a line (the write has been
/// made), reads every page. Exit 0: contract kept; 3: a violation (on
/// stderr); 2: could not run.
fn reader_main(method: &str, path: &Path) -> i32 {
    let Some(method) = Method::parse(method) else {
        eprintln!("unknown method {method:?}");
        return 2;
    };
    let run = || -> Result<Result<(), String>, String> {
        let initial = std::fs::read(path).map_err(|e| format!("reading the file: {e}"))?;
        let file = File::open(path).map_err(|e| format!("opening the file: {e}"))?;
        let len = initial.len();
        let (src, picked): (Box<dyn Source>, String) = match method {
            Method::Copy(s, c) => {
                let m: MapCopy = MapOptions::new()
                    .strategy(s)
                    .consistency(c)
                    .map(&file)
                    .map_err(|e| format!("map: {e}"))?;
                let picked = m.strategy().to_string();
                (Box::new(m), picked)
            }
            Method::Control => {
                let m = PrivateMap::new(&file, len).map_err(|e| format!("mmap: {e}"))?;
                (Box::new(ControlSource(m, len)), "control".into())
            }
        };
        drop(file);
        let mut checker = Checker::new(page(), 0, len, initial);
        if let Err(v) = checker.touch(&*src, 0..READ_BEFORE) {
            return Ok(Err(v.to_string()));
        }
        println!("ready {picked}");
        std::io::stdout().flush().map_err(|e| e.to_string())?;
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| format!("waiting for the writer: {e}"))?;
        let now = std::fs::read(path).map_err(|e| format!("reading the file again: {e}"))?;
        checker.push_state(now);
        Ok(checker.touch_all(&*src).map_err(|v| v.to_string()))
    };
    match run() {
        Ok(Ok(())) => 0,
        Ok(Err(violation)) => {
            eprintln!("{violation}");
            3
        }
        Err(e) => {
            eprintln!("{e}");
            2
        }
    }
}

/// What became of a reader.
#[derive(Debug)]
enum Read {
    /// Every page kept (the strategy `Auto` picked, or the one named).
    Kept(String),
    /// The checker caught a change, or the reader died of a signal.
    Broken(String),
}

/// Runs a reader of `path` with `method`; `write` is called between its
/// first and second reads (from this process: another process than the
/// reader's).
fn read_around(
    method: Method,
    path: &Path,
    write: impl FnOnce() -> std::io::Result<()>,
) -> Result<Read, Failed> {
    let mut child =
        mapcopy_check::child::command(READER, &[method.name().as_ref(), path.as_os_str()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Failed::from(format!("starting the reader: {e}")))?;
    // No reader may hang the suite (a fault never served, a writer stuck):
    // past the limit it is killed and the trial fails.
    let (finished, watch) = std::sync::mpsc::channel::<()>();
    let pid = rustix::process::Pid::from_child(&child);
    let hung = std::thread::spawn(move || {
        let limit = std::time::Duration::from_secs(READER_LIMIT_SECS);
        let timed_out = matches!(
            watch.recv_timeout(limit),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        );
        if timed_out {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        timed_out
    });
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    let _ = out.read_line(&mut line);
    let picked = line.trim().strip_prefix("ready ").map(str::to_string);
    let wrote = match picked {
        Some(_) => write().map_err(|e| format!("writing the file: {e}")),
        None => Ok(()),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"go\n");
    }
    let done = child.wait_with_output();
    let _ = finished.send(());
    if hung.join().unwrap_or(false) {
        return fail(format!(
            "the reader did not finish within {READER_LIMIT_SECS} s; killed"
        ));
    }
    let done = done.map_err(|e| Failed::from(format!("waiting for the reader: {e}")))?;
    wrote.map_err(Failed::from)?;
    let stderr = String::from_utf8_lossy(&done.stderr).trim().to_string();
    match (done.status.code(), done.status.signal(), picked) {
        (Some(0), _, Some(p)) => Ok(Read::Kept(p)),
        (Some(3), _, _) => Ok(Read::Broken(stderr)),
        (_, Some(sig), _) => Ok(Read::Broken(format!(
            "the reader died of signal {sig} ({}){stderr}",
            if sig == libc::SIGBUS { "SIGBUS" } else { "?" }
        ))),
        (code, _, _) => fail(format!("the reader failed ({code:?}): {stderr}")),
    }
}

/// A trial's verdict: a strategy (whose pick, for Auto, must be `expect`)
/// keeps every page; the control is caught.
fn judge(method: Method, expect: Option<Strategy>, read: Read) -> Outcome {
    match (method, read) {
        (Method::Control, Read::Broken(how)) => {
            eprintln!("control caught, as it must be: {how}");
            Ok(Completion::Completed)
        }
        (Method::Control, Read::Kept(_)) => {
            fail("the control kept every page: the checker did not see the write")
        }
        (Method::Copy(..), Read::Broken(how)) => fail(format!("contract broken: {how}")),
        (Method::Copy(..), Read::Kept(picked)) => match expect {
            Some(s) if picked != s.name() => fail(format!("Auto picked {picked}, expected {s}")),
            _ => Ok(Completion::Completed),
        },
    }
}

/// Overwrites `path` in place with pattern generation 1 (same size, no
/// truncation: the file's own inode is written).
fn rewrite(path: &Path) -> std::io::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    f.write_all_at(&pattern::bytes(1, 0, size()), 0)?;
    f.sync_data()
}

fn truncate(path: &Path) -> std::io::Result<()> {
    OpenOptions::new().write(true).open(path)?.set_len(0)
}

// ---------------------------------------------------------------------------
// overlayfs

/// `lower/low` exists only in the lower layer; `upper/up` in the upper one.
fn overlay() -> Result<Overlay, String> {
    Overlay::new(|lower, upper| {
        std::fs::write(lower.join("low"), pattern::bytes(0, 0, size()))?;
        std::fs::write(upper.join("up"), pattern::bytes(0, 0, size()))
    })
}

#[derive(Clone, Copy, Debug)]
enum LayerWrite {
    WriteUpper,
    TruncateUpper,
    WriteLower,
}

impl LayerWrite {
    const ALL: [LayerWrite; 3] = [Self::WriteUpper, Self::TruncateUpper, Self::WriteLower];

    fn name(self) -> &'static str {
        match self {
            Self::WriteUpper => "write-upper",
            Self::TruncateUpper => "truncate-upper",
            Self::WriteLower => "write-lower",
        }
    }
}

fn overlay_case(method: Method, w: LayerWrite, expect: Option<Strategy>) -> Outcome {
    let o = match overlay() {
        Ok(o) => o,
        Err(why) => return skip(why),
    };
    let (mapped, real) = match w {
        LayerWrite::WriteUpper | LayerWrite::TruncateUpper => {
            (o.merged().join("up"), o.upper().join("up"))
        }
        LayerWrite::WriteLower => (o.merged().join("low"), o.lower().join("low")),
    };
    let read = read_around(method, &mapped, || match w {
        LayerWrite::TruncateUpper => truncate(&real),
        _ => rewrite(&real),
    })?;
    if let LayerWrite::WriteLower = w
        && o.upper().join("low").exists()
    {
        return fail("the lower file was copied up: the case did not write the lower layer");
    }
    judge(method, expect, read)
}

/// Every modification kind a tmpfs layer supports, made by a writer
/// process directly on the upper file (`lower`: on a lower-only file),
/// under an Auto mapping of the overlay file.
fn overlay_kind_case(lower: bool, kind: Kind) -> Outcome {
    let o = match overlay() {
        Ok(o) => o,
        Err(why) => return skip(why),
    };
    let (mapped, real) = if lower {
        (o.merged().join("low"), o.lower().join("low"))
    } else {
        (o.merged().join("up"), o.upper().join("up"))
    };
    let m = Modification::new(kind, page() as u64, page() as u64, 1);
    let method = Method::Copy(Strategy::Auto, Consistency::PointInTime);
    let read = read_around(method, &mapped, || {
        m.apply(&real)
            .map_err(|e| std::io::Error::other(format!("{e:?}")))
    })?;
    judge(method, Some(Strategy::Eager), read)
}

/// Kinds tmpfs supports (it has no clone, collapse, insert or zero ranges).
fn on_tmpfs(k: Kind) -> bool {
    !matches!(
        k,
        Kind::CloneRange | Kind::CollapseRange | Kind::InsertRange | Kind::ZeroRange
    )
}

/// A named zero-copy strategy refuses a file on this filesystem with
/// `Unsupported`, naming it (under either consistency).
fn refuses(s: Strategy, path: &Path, fs: &str) -> Outcome {
    let file = File::open(path).map_err(|e| Failed::from(e.to_string()))?;
    for c in Consistency::ALL {
        match MapOptions::new().strategy(s).consistency(c).map(&file) {
            Ok(m) => return fail(format!("{s} mapped a file on {fs} ({c}): {m:?}")),
            Err(e) if e.kind() == ErrorKind::Unsupported && e.to_string().contains(fs) => {}
            Err(e) => {
                return fail(format!(
                    "{s} on {fs}: expected Unsupported naming {fs}: {e}"
                ));
            }
        }
    }
    Ok(Completion::Completed)
}

/// `probe` names the filesystem for each zero-copy strategy and picks Eager.
fn probe_says(path: &Path, fs: &str) -> Outcome {
    let p = mapcopy::probe(Some(path));
    if p.filesystem
        .as_ref()
        .and_then(|f| f.as_ref().ok())
        .map(String::as_str)
        != Some(fs)
    {
        return fail(format!(
            "probe's filesystem is {:?}, expected {fs}",
            p.filesystem
        ));
    }
    for e in &p.strategies {
        let zero_copy = matches!(
            e.strategy,
            Strategy::Kernel
                | Strategy::Immutable
                | Strategy::Guard
                | Strategy::Lease
                | Strategy::Reflink
        );
        match (&e.usable, zero_copy) {
            (Err(why), true) if why.contains(fs) => {}
            // No MAP_COPY in this kernel: refused before any filesystem.
            (Err(why), true) if e.strategy == Strategy::Kernel && why.contains("no MAP_COPY") => {}
            (Ok(_), false) => {}
            (u, _) => return fail(format!("probe on {fs}: {}: {u:?}", e.strategy)),
        }
    }
    if p.auto.as_ref().ok() != Some(&Strategy::Eager) {
        return fail(format!(
            "probe: Auto picks {:?} on {fs}, expected eager",
            p.auto
        ));
    }
    if !p
        .facts
        .iter()
        .any(|f| f.topic == "filesystem" && f.finding.contains(fs))
    {
        return fail(format!(
            "probe has no filesystem fact naming {fs}: {:?}",
            p.facts
        ));
    }
    Ok(Completion::Completed)
}

fn with_overlay(f: impl FnOnce(&Path) -> Outcome) -> Outcome {
    match overlay() {
        Ok(o) => {
            let r = f(&o.merged().join("up"));
            drop(o);
            r
        }
        Err(why) => skip(why),
    }
}

/// The other direction: the layer's real file (on ext4) mapped directly,
/// written or truncated *through the overlay* (a container writing a file
/// the host maps).
fn layer_case(method: Method, trunc: bool) -> Outcome {
    with_layer(|o| layer_read(o, method, trunc))
}

/// An overlay whose layers are on an ext4 loop image (where Guard and Lease
/// are otherwise used), with `upper/up`.
fn with_layer(f: impl FnOnce(&Overlay) -> Outcome) -> Outcome {
    let ext4 = match LoopMount::new(FsKind::Ext4) {
        Ok(m) => m,
        Err(why) => return skip(why),
    };
    let o = match Overlay::new_in(Some(ext4.path()), |_, upper| {
        std::fs::write(upper.join("up"), pattern::bytes(0, 0, size()))
    }) {
        Ok(o) => o,
        Err(why) => return skip(why),
    };
    let r = f(&o);
    drop(o);
    drop(ext4);
    r
}

/// Every modification kind of the contract, made by a writer process
/// through the overlay on the upper layer's file, mapped directly.
fn layer_kind_case(method: Method, kind: Kind) -> Outcome {
    with_layer(|o| {
        let through = o.merged().join("up");
        let m = Modification::new(kind, page() as u64, page() as u64, 1);
        let mut unsupported = None;
        let read = read_around(method, &o.upper().join("up"), || match m.apply(&through) {
            Ok(()) => Ok(()),
            Err(ApplyError::Unsupported(why)) => {
                unsupported = Some(why);
                Ok(())
            }
            Err(ApplyError::Failed(why)) => Err(std::io::Error::other(why)),
        })?;
        if let Some(why) = unsupported {
            return skip(format!("{kind} through an overlay on ext4: {why}"));
        }
        judge(method, Some(Strategy::Eager), read)
    })
}

fn layer_read(o: &Overlay, method: Method, trunc: bool) -> Outcome {
    let through = o.merged().join("up");
    let read = read_around(method, &o.upper().join("up"), || {
        if trunc {
            truncate(&through)
        } else {
            rewrite(&through)
        }
    })?;
    let expect = match method {
        // Guard and Lease refuse the upper layer's files; ext4 has no
        // reflink.
        Method::Copy(Strategy::Auto, _) => Some(Strategy::Eager),
        Method::Copy(s, _) => Some(s),
        Method::Control => None,
    };
    judge(method, expect, read)
}

// ---------------------------------------------------------------------------
// FUSE (bindfs)

fn fuse() -> Result<FuseMirror, String> {
    FuseMirror::new(|src| std::fs::write(src.join("file"), pattern::bytes(0, 0, size())))
}

fn fuse_case(method: Method, trunc: bool, expect: Option<Strategy>) -> Outcome {
    let m = match fuse() {
        Ok(m) => m,
        Err(why) => return skip(why),
    };
    let real = m.source().join("file");
    let read = read_around(method, &m.path().join("file"), || {
        if trunc {
            truncate(&real)
        } else {
            rewrite(&real)
        }
    })?;
    judge(method, expect, read)
}

fn with_fuse(f: impl FnOnce(&Path) -> Outcome) -> Outcome {
    match fuse() {
        Ok(m) => f(&m.path().join("file")),
        Err(why) => skip(why),
    }
}

// ---------------------------------------------------------------------------
// tmpfs: Lease is shown here; Linux refuses Guard's marks

fn with_tmpfs(f: impl FnOnce(&Path) -> Outcome) -> Outcome {
    let t = match Tmpfs::new() {
        Ok(t) => t,
        Err(why) => return skip(why),
    };
    let path = t.path().join("file");
    std::fs::write(&path, pattern::bytes(0, 0, size())).map_err(|e| Failed::from(e.to_string()))?;
    f(&path)
}

fn tmpfs_case(method: Method, trunc: bool) -> Outcome {
    with_tmpfs(|path| {
        let read = read_around(method, path, || {
            if trunc { truncate(path) } else { rewrite(path) }
        })?;
        let expect = match method {
            Method::Copy(s, _) if s != Strategy::Auto => Some(s),
            _ => None,
        };
        judge(method, expect, read)
    })
}

/// Every modification kind tmpfs supports, by a writer process started
/// after the map, under a Lease mapping.
fn tmpfs_kind_case(kind: Kind) -> Outcome {
    with_tmpfs(|path| {
        let m = Modification::new(kind, page() as u64, page() as u64, 1);
        let method = Method::Copy(Strategy::Lease, Consistency::PointInTime);
        let read = read_around(method, path, || {
            m.apply(path)
                .map_err(|e| std::io::Error::other(format!("{e:?}")))
        })?;
        judge(method, Some(Strategy::Lease), read)
    })
}

// ---------------------------------------------------------------------------

fn trials() -> Vec<Trial> {
    let pit = Consistency::PointInTime;
    let pp = Consistency::PerPage;
    let mut t = Vec::new();
    // Auto picks what keeps the contract; Eager and Lazy are it.
    let keepers = [
        (Method::Copy(Strategy::Auto, pit), Some(Strategy::Eager)),
        (Method::Copy(Strategy::Auto, pp), Some(Strategy::Lazy)),
        (Method::Copy(Strategy::Eager, pit), Some(Strategy::Eager)),
        (Method::Copy(Strategy::Lazy, pp), Some(Strategy::Lazy)),
        (Method::Control, None),
    ];
    for (m, expect) in keepers {
        for w in LayerWrite::ALL {
            t.push(Trial::ignorable_test(
                format!("overlay/{}/{}", m.name(), w.name()),
                move || overlay_case(m, w, expect),
            ));
        }
    }
    for (m, expect) in &keepers[..2] {
        let (m, expect) = (*m, *expect);
        for (case, trunc) in [("write-source", false), ("truncate-source", true)] {
            t.push(Trial::ignorable_test(
                format!("fuse/{}/{case}", m.name()),
                move || fuse_case(m, trunc, expect),
            ));
        }
    }
    for s in [Strategy::Guard, Strategy::Lease, Strategy::Reflink] {
        t.push(Trial::ignorable_test(
            format!("overlay/{s}/refuses"),
            move || with_overlay(|p| refuses(s, p, "overlayfs")),
        ));
        t.push(Trial::ignorable_test(
            format!("fuse/{s}/refuses"),
            move || with_fuse(|p| refuses(s, p, "fuse")),
        ));
    }
    for &kind in Kind::ALL.iter().filter(|&&k| on_tmpfs(k)) {
        for (layer, lower) in [("upper", false), ("lower", true)] {
            t.push(Trial::ignorable_test(
                format!("overlay/auto/{layer}/{kind}"),
                move || overlay_kind_case(lower, kind),
            ));
        }
    }
    // ext4 has no clone ranges (the contract suite runs them on xfs).
    for &kind in Kind::ALL.iter().filter(|&&k| k != Kind::CloneRange) {
        let m = Method::Copy(Strategy::Auto, pit);
        t.push(Trial::ignorable_test(
            format!("overlay-layer/auto/through-overlay/{kind}"),
            move || layer_kind_case(m, kind),
        ));
    }
    for s in [Strategy::Guard, Strategy::Lease] {
        t.push(Trial::ignorable_test(
            format!("overlay-layer/{s}/refuses"),
            move || with_layer(|o| refuses(s, &o.upper().join("up"), "upper layer")),
        ));
    }
    for m in [Method::Copy(Strategy::Auto, pit), Method::Control] {
        for (case, trunc) in [("write", false), ("truncate", true)] {
            t.push(Trial::ignorable_test(
                format!("overlay-layer/{}/{case}-through-overlay", m.name()),
                move || layer_case(m, trunc),
            ));
        }
    }
    t.push(Trial::ignorable_test("overlay/probe", || {
        with_overlay(|p| probe_says(p, "overlayfs"))
    }));
    t.push(Trial::ignorable_test("fuse/probe", || {
        with_fuse(|p| probe_says(p, "fuse"))
    }));
    for &kind in Kind::ALL.iter().filter(|&&k| on_tmpfs(k)) {
        t.push(Trial::ignorable_test(
            format!("tmpfs/lease/kind/{kind}"),
            move || tmpfs_kind_case(kind),
        ));
    }
    t.push(Trial::ignorable_test("tmpfs/guard/refuses", || {
        with_tmpfs(|p| refuses(Strategy::Guard, p, "tmpfs"))
    }));
    for m in [
        Method::Copy(Strategy::Lease, pit),
        Method::Copy(Strategy::Auto, pit),
        Method::Control,
    ] {
        for (case, trunc) in [("write", false), ("truncate", true)] {
            t.push(Trial::ignorable_test(
                format!("tmpfs/{}/{case}", m.name()),
                move || tmpfs_case(m, trunc),
            ));
        }
    }
    t
}

fn main() {
    mapcopy_check::child::dispatch_with(&[(READER, |args| match args {
        [method, path] => reader_main(method, Path::new(path)),
        _ => {
            eprintln!("the reader needs a method and a path");
            2
        }
    })]);
    let args = Arguments::from_args();
    libtest_mimic::run(&args, trials()).exit();
}
