//! A stopped mapper: what other processes wait for, and what the mapping
//! keeps, for every strategy that can make anyone wait, under the three
//! ways a process stops without its consent — `SIGSTOP` (Ctrl-Z, a job
//! control stop), `ptrace` (a debugger stopping every thread) and a cgroup
//! v2 freeze (`cgroup.freeze`: `docker pause`, systemd freezing a unit).
//!
//! Each trial starts a mapper process that maps a 4-page file and reads
//! it all, stops it, then from this process (another process, as the
//! contract says) times a 4 KiB `pread` and an `open(O_WRONLY)` + `pwrite`
//! of page 0, each given `HOLD` to finish before the mapper is resumed.
//! After resuming, the mapper reports whether its bytes are still the
//! file's bytes at map time. What each strategy does is its documented
//! behaviour (crate docs and `probe`'s "lacks"):
//!
//! * Eager, Lazy, Reflink: nobody waits (both calls well under 1 s); the
//!   mapping is kept.
//! * Lease: reads do not wait; the writer's `open` waits
//!   `fs.lease-break-time` (set to 2 s for this run, restored after), then
//!   the kernel lets it through before the stopped mapper took its
//!   snapshot, and the mapping shows the write: the documented hole.
//! * Guard: every read and write of the file waits until the mapper runs
//!   again (no bound: fanotify permission events have none); the mapping is
//!   kept. This is the documented limit that keeps Guard after Lease in
//!   Auto's order.
//!
//! (Immutable keeps nothing anyone waits on: the kernel refuses writers to
//! its files at once, `tests/immutable.rs`.) Root only: the freeze needs a
//! cgroup, and the lease-break time is a sysctl.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};
use mapcopy::{Consistency, MapOptions, Strategy};
use mapcopy_check::fixture::{self, FsKind, LoopMount};
use mapcopy_check::privilege;

type Outcome = Result<(), Failed>;

/// The mapper's entry point (`STRATEGY PATH`).
const MAPPER: &str = "stopped-mapper";

/// How long a call may wait for a stopped mapper before the test resumes
/// it anyway.
const HOLD: Duration = Duration::from_secs(4);

/// `fs.lease-break-time` during the run, in seconds.
const LEASE_BREAK: u64 = 2;

const PAGE: usize = 4096;
const SIZE: usize = 4 * PAGE;

fn fail<T>(msg: impl std::fmt::Display) -> Result<T, Failed> {
    Err(Failed::from(msg.to_string()))
}

fn contents(generation: u8) -> Vec<u8> {
    (0..SIZE)
        .map(|i| (i % 241) as u8 ^ generation.wrapping_mul(0x5b))
        .collect()
}

// ---------------------------------------------------------------------------
// The mapper process

fn mapper_main(args: &[String]) -> i32 {
    let [strategy, path] = args else {
        eprintln!("mapper: expected STRATEGY PATH, got {args:?}");
        return 2;
    };
    let run = || -> Result<(), String> {
        let s: Strategy = strategy.parse().map_err(|e| format!("{e}"))?;
        let file = File::open(path).map_err(|e| format!("open: {e}"))?;
        let mut o = MapOptions::new();
        o.strategy(s);
        if !s.keeps(Consistency::PointInTime) {
            o.consistency(Consistency::PerPage);
        }
        let map = o.map(&file).map_err(|e| format!("map: {e}"))?;
        drop(file);
        let at_map = map.to_vec(); // every page read
        let mut out = std::io::stdout();
        writeln!(out, "ready {}", map.strategy()).map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
        for line in std::io::stdin().lock().lines() {
            let line = line.map_err(|e| e.to_string())?;
            if line.trim() != "check" {
                continue;
            }
            let verdict = match map.iter().zip(&at_map).position(|(a, b)| a != b) {
                None => "kept".to_string(),
                Some(i) => format!("changed at byte {i}"),
            };
            writeln!(out, "{verdict}").map_err(|e| e.to_string())?;
            out.flush().map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    match run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("mapper: {e}");
            1
        }
    }
}

struct Mapper {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Mapper {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn line(&mut self) -> Result<String, Failed> {
        let mut l = String::new();
        self.stdout
            .read_line(&mut l)
            .map_err(|e| format!("reading from the mapper: {e}"))?;
        Ok(l.trim().to_string())
    }

    fn check(&mut self) -> Result<String, Failed> {
        writeln!(self.stdin, "check").map_err(|e| format!("to the mapper: {e}"))?;
        self.line()
    }
}

impl Drop for Mapper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Ways to stop it

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Sigstop,
    Ptrace,
    Freeze,
}

impl Stop {
    const ALL: [Stop; 3] = [Stop::Sigstop, Stop::Ptrace, Stop::Freeze];

    fn name(self) -> &'static str {
        match self {
            Stop::Sigstop => "sigstop",
            Stop::Ptrace => "ptrace",
            Stop::Freeze => "cgroup-freeze",
        }
    }
}

/// The process state letter of every thread of `pid` (`/proc/PID/task`).
fn thread_states(pid: i32) -> Vec<char> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let stat = std::fs::read_to_string(e.ok()?.path().join("stat")).ok()?;
        stat.rsplit_once(") ")?.1.chars().next()
    })
    .collect()
}

fn tids(pid: i32) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> Outcome {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > Duration::from_secs(10) {
            return fail(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// A cgroup v2 directory made for one mapper, removed on drop.
struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    fn new() -> Result<Cgroup, String> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("mountinfo: {e}"))?;
        let root = mountinfo
            .lines()
            .find_map(|l| {
                let (pre, post) = l.split_once(" - ")?;
                (post.split_whitespace().next()? == "cgroup2")
                    .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
            })
            .ok_or("no cgroup2 mount")?;
        let dir = root.join(format!("mapcopy-stopped-{}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        Ok(Cgroup { dir })
    }

    fn write(&self, file: &str, value: &str) -> Result<(), Failed> {
        std::fs::write(self.dir.join(file), value)
            .map_err(|e| format!("writing {value} to {file}: {e}").into())
    }

    fn frozen(&self) -> bool {
        std::fs::read_to_string(self.dir.join("cgroup.events"))
            .is_ok_and(|e| e.lines().any(|l| l == "frozen 1"))
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("cgroup.freeze"), "0");
        for _ in 0..200 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn ptrace(req: libc::c_uint, tid: i32) -> Result<(), Failed> {
    // SAFETY: ptrace requests on a child of this process that take no
    // pointers (addr and data 0).
    let r = unsafe { libc::ptrace(req, tid, 0usize, 0usize) };
    if r < 0 {
        return fail(format!(
            "ptrace({req}, {tid}): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Stops `m` by `how`; returns what resumes it.
fn stop(m: &Mapper, how: Stop, cgroup: Option<&Cgroup>) -> Result<Vec<i32>, Failed> {
    let pid = m.pid();
    match how {
        Stop::Sigstop => {
            rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid).ok_or("pid 0")?,
                rustix::process::Signal::STOP,
            )
            .map_err(|e| format!("SIGSTOP: {e}"))?;
            wait_until("every thread stopped", || {
                let s = thread_states(pid);
                !s.is_empty() && s.iter().all(|&c| c == 'T')
            })?;
            Ok(Vec::new())
        }
        Stop::Ptrace => {
            // As a debugger does: seize and interrupt every thread.
            let tids = tids(pid);
            for &t in &tids {
                ptrace(libc::PTRACE_SEIZE, t)?;
                ptrace(libc::PTRACE_INTERRUPT, t)?;
            }
            for &t in &tids {
                let mut status = 0;
                // SAFETY: waits for a traced thread of our child.
                if unsafe { libc::waitpid(t, &mut status, libc::__WALL) } != t {
                    return fail(format!("waitpid({t}): {}", std::io::Error::last_os_error()));
                }
            }
            Ok(tids)
        }
        Stop::Freeze => {
            let cg = cgroup.ok_or("no cgroup")?;
            cg.write("cgroup.freeze", "1")?;
            wait_until("the cgroup frozen", || cg.frozen())?;
            Ok(Vec::new())
        }
    }
}

fn resume(m: &Mapper, how: Stop, traced: &[i32], cgroup: Option<&Cgroup>) -> Outcome {
    match how {
        Stop::Sigstop => rustix::process::kill_process(
            rustix::process::Pid::from_raw(m.pid()).ok_or("pid 0")?,
            rustix::process::Signal::CONT,
        )
        .map_err(|e| format!("SIGCONT: {e}").into()),
        Stop::Ptrace => {
            for &t in traced {
                ptrace(libc::PTRACE_DETACH, t)?;
            }
            Ok(())
        }
        Stop::Freeze => cgroup.ok_or("no cgroup")?.write("cgroup.freeze", "0"),
    }
}

// ---------------------------------------------------------------------------
// The other process's calls

/// Runs `f` on a thread; returns its result and duration if it finished
/// within `HOLD`, else a receiver for when it does.
type Timed = Result<Duration, String>;

fn start(f: impl FnOnce() -> Result<(), String> + Send + 'static) -> mpsc::Receiver<Timed> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let t = Instant::now();
        let r = f().map(|()| t.elapsed());
        let _ = tx.send(r);
    });
    rx
}

/// What the other process saw: `None` = still waiting after `HOLD`.
fn within_hold(rx: &mpsc::Receiver<Timed>) -> Result<Option<Duration>, Failed> {
    match rx.recv_timeout(HOLD) {
        Ok(r) => r.map(Some).map_err(Failed::from),
        Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
        Err(e) => fail(format!("the calling thread died: {e}")),
    }
}

fn fmt(d: Option<Duration>) -> String {
    d.map_or(format!("still waiting after {HOLD:?}"), |d| {
        format!("{d:.2?}")
    })
}

// ---------------------------------------------------------------------------
// The case

fn case(s: Strategy, how: Stop, dir: &Path) -> Outcome {
    let path = dir.join(format!("stopped-{s}-{}", how.name()));
    std::fs::write(&path, contents(1)).map_err(|e| format!("writing the file: {e}"))?;
    let cgroup = match how {
        Stop::Freeze => Some(Cgroup::new().map_err(|e| format!("cgroup: {e}"))?),
        _ => None,
    };
    let mut child = mapcopy_check::child::command(MAPPER, &[s.name().as_ref(), path.as_os_str()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the mapper: {e}"))?;
    // Into the cgroup before it maps: any process it starts is frozen too.
    if let Some(cg) = &cgroup {
        cg.write("cgroup.procs", &child.id().to_string())?;
    }
    let stdin = child.stdin.take().ok_or("stdin")?;
    let stdout = BufReader::new(child.stdout.take().ok_or("stdout")?);
    let mut m = Mapper {
        child,
        stdin,
        stdout,
    };
    let ready = m.line()?;
    if ready != format!("ready {s}") {
        return fail(format!("the mapper said {ready:?}"));
    }

    let traced = stop(&m, how, cgroup.as_ref())?;
    let p = path.clone();
    let read = start(move || {
        let f = File::open(&p).map_err(|e| format!("open: {e}"))?;
        let mut buf = [0u8; PAGE];
        f.read_exact_at(&mut buf, PAGE as u64)
            .map_err(|e| format!("pread: {e}"))
    });
    let read_t = within_hold(&read)?;
    let p = path.clone();
    let write = start(move || {
        let f = OpenOptions::new()
            .write(true)
            .open(&p)
            .map_err(|e| format!("open for writing: {e}"))?;
        f.write_all_at(&contents(2)[..PAGE], 0)
            .map_err(|e| format!("pwrite: {e}"))
    });
    let write_t = within_hold(&write)?;
    resume(&m, how, &traced, cgroup.as_ref())?;
    // Calls still waiting finish now.
    let done = |rx: mpsc::Receiver<Timed>, t: Option<Duration>| -> Result<(), Failed> {
        if t.is_none() {
            rx.recv_timeout(Duration::from_secs(30))
                .map_err(|e| format!("a call did not finish after the resume: {e}"))?
                .map_err(Failed::from)?;
        }
        Ok(())
    };
    done(read, read_t)?;
    done(write, write_t)?;
    let kept = m.check()?;
    eprintln!(
        "{s}, {}: read {}, write {}, mapping {kept}",
        how.name(),
        fmt(read_t),
        fmt(write_t)
    );

    let second = Duration::from_secs(1);
    let quick = |t: Option<Duration>| t.is_some_and(|t| t < second);
    match s {
        Strategy::Eager | Strategy::Lazy | Strategy::Reflink => {
            if !quick(read_t) || !quick(write_t) || kept != "kept" {
                return fail(format!(
                    "{s} made others wait or lost its bytes: read {}, write {}, mapping {kept}",
                    fmt(read_t),
                    fmt(write_t)
                ));
            }
        }
        Strategy::Lease => {
            let bound = Duration::from_secs(LEASE_BREAK);
            let waited_break = write_t
                .is_some_and(|t| t + Duration::from_millis(300) >= bound && t <= bound + second);
            if !quick(read_t) || !waited_break || !kept.starts_with("changed") {
                return fail(format!(
                    "lease, as documented: reads at once, the writer after fs.lease-break-time \
                     ({LEASE_BREAK} s), then the mapping shows the write; got read {}, write {}, \
                     mapping {kept}",
                    fmt(read_t),
                    fmt(write_t)
                ));
            }
        }
        Strategy::Guard => {
            if read_t.is_some() || write_t.is_some() || kept != "kept" {
                return fail(format!(
                    "guard, as documented: reads and writes wait until the mapper runs, the \
                     mapping is kept; got read {}, write {}, mapping {kept} (if it no longer \
                     waits, update the docs)",
                    fmt(read_t),
                    fmt(write_t)
                ));
            }
        }
        other => return fail(format!("{other} is not part of this test")),
    }
    Ok(())
}

/// Sets `fs.lease-break-time` for the run, restores it on drop.
struct LeaseBreakTime(Option<String>);

impl LeaseBreakTime {
    const PATH: &str = "/proc/sys/fs/lease-break-time";

    fn set(secs: u64) -> LeaseBreakTime {
        let old = std::fs::read_to_string(Self::PATH).ok();
        if old.is_some() && std::fs::write(Self::PATH, secs.to_string()).is_ok() {
            LeaseBreakTime(old)
        } else {
            LeaseBreakTime(None)
        }
    }
}

impl Drop for LeaseBreakTime {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            let _ = std::fs::write(Self::PATH, old.trim());
        }
    }
}

fn main() {
    mapcopy_check::child::dispatch_with(&[(MAPPER, mapper_main)]);
    let mut args = Arguments::from_args();
    // One at a time: the trials time calls and share the sysctl.
    args.test_threads = Some(1);
    let root = privilege::is_root();
    let _lease_break = root.then(|| LeaseBreakTime::set(LEASE_BREAK));
    let tmp = std::env::temp_dir();
    let xfs = if root {
        LoopMount::new(FsKind::Xfs).ok()
    } else {
        None
    };
    let xfs_dir = xfs.as_ref().map(|m| m.path().to_path_buf());
    let mut trials = Vec::new();
    for s in [
        Strategy::Guard,
        Strategy::Lease,
        Strategy::Reflink,
        Strategy::Lazy,
        Strategy::Eager,
    ] {
        for how in Stop::ALL {
            let dir = if s == Strategy::Reflink {
                xfs_dir.clone()
            } else {
                Some(tmp.clone())
            };
            trials.push(Trial::test(format!("{s}/{}", how.name()), move || {
                if !root {
                    return fixture::skip_or_fail(
                        "needs root (a cgroup, the lease-break-time sysctl)",
                    )
                    .map(drop)
                    .map_err(Failed::from);
                }
                match &dir {
                    Some(d) => case(s, how, d),
                    None => fixture::skip_or_fail("no xfs loop image for reflink")
                        .map(drop)
                        .map_err(Failed::from),
                }
            }));
        }
    }
    let conclusion = libtest_mimic::run(&args, trials);
    drop(xfs);
    drop(_lease_break);
    conclusion.exit();
}
