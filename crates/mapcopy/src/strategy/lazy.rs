//! `Lazy`: anonymous memory filled on first access from the file, through
//! userfaultfd.
//!
//! # How
//!
//! A mapping is private anonymous memory (`MAP_NORESERVE`, 2 MiB aligned,
//! `MADV_HUGEPAGE`, `MADV_DONTFORK`) registered for missing-page faults with
//! the process's single userfaultfd. The fd is served by the per-process
//! watcher thread (`crate::watcher`): for a fault it `pread`s the file into
//! a reused staging buffer and installs the bytes with `UFFDIO_COPY`, or,
//! for whole 2 MiB chunks when the kernel has `UFFDIO_MOVE` (6.8+), `pread`s
//! into a 2 MiB-aligned transparent huge page and *moves* that page into the
//! mapping (no second copy, and the mapping ends up backed by huge pages,
//! which fresh 4 KiB pages are several times slower to fill than).
//!
//! Neither ioctl ever replaces a page that is already present, so a page,
//! once read, never changes (S2). A page's bytes are the file's at the
//! `pread` that filled it, which runs after the map call started and before
//! the faulting access completes (S1); bytes past the end of the file at
//! that moment are zero, and shrinking the file never faults the reader
//! (S3). Stores into a `MapCopyMut` land in private anonymous memory (S4).
//!
//! # Fault-around and prefetch
//!
//! Each mapping tracks up to four access streams. A fault that does not
//! continue a stream fills one page; each fault continuing one multiplies its
//! window by four, and once it reaches 2 MiB the stream fills whole 2 MiB
//! chunks and hands the next chunks (16 MiB ahead) to one per-process
//! prefetch thread, so a sequential reader mostly finds its pages already
//! there. Windows never cross the mapping's end. Chunks have a state
//! (empty, partly filled, claimed by a filler, full): a claimed chunk is
//! filled completely by its claimer, so a fault there needs no work of its
//! own, and its thread is woken by the claimer's fill (plus a final
//! `UFFDIO_WAKE` over the chunk). Two threads filling the same page race
//! harmlessly: the loser's `UFFDIO_COPY` gets `EEXIST`, skips that page and
//! wakes it. `map` itself fills the first page on the calling thread, which
//! spares the usual first access (at the start) a round trip.
//!
//! `UFFDIO_MOVE` only moves into writable memory, so for a read-only
//! mapping the claimed chunk is made writable just for the move and
//! read-only again right after, before the threads waiting on it are woken.
//! A thread touching the chunk for the first time in those microseconds
//! reads it without faulting; only `unsafe` code storing through a `&[u8]`
//! could tell the protection was briefly looser.
//!
//! # Dropping
//!
//! Every mapping is in a registry keyed by address, and has a lock that
//! fillers hold (shared) while they install pages. `Drop` takes it
//! exclusively, marks the mapping dead, removes it from the registry,
//! unregisters the range, and only then unmaps. A stale fault message, or
//! a prefetch job, for an address that was unmapped is dropped after the
//! registry lookup or the liveness check; if the address was reused by a
//! new mapping, the lookup finds the new one and fills from *its* file.
//!
//! # Failure policy
//!
//! A thread faulting on a page cannot be given an error, must not see
//! invented bytes, and must not wait forever. So when serving a fault
//! cannot go on — `pread` fails (`EIO`, ...), the kernel refuses to install
//! a page (`ENOMEM`), or the handler panics — the process is **aborted**
//! with a message on stderr naming the file, the offset and the error. If
//! the watcher thread stops because *another* strategy's handler failed,
//! [`Source::shutdown`] starts a dedicated thread that keeps serving this
//! userfaultfd (and aborts if it cannot start one). With `populate(true)`
//! the whole range is read by `map` itself, and a read error is returned as
//! an [`crate::ErrorKind::Io`] error instead.
//!
//! # fork
//!
//! A child made by libc's `fork()` inherits the mapping and gets a fault
//! server of its own before `fork()` returns (see `forked`): pages filled
//! in the parent are inherited, missing ones are read in the child at
//! first access. Nothing is copied at the fork. Outside a fork the memory
//! is `MADV_DONTFORK`, so a child made without the fork handlers (a raw
//! `clone`) gets `SIGSEGV` touching it — never zeros.
//!
//! # Needs
//!
//! A userfaultfd that delivers faults raised in kernel mode (a `write(2)`
//! whose source is an untouched page), that is, one created without
//! `UFFD_USER_MODE_ONLY`: the `userfaultfd(2)` syscall with CAP_SYS_PTRACE
//! (root) or `vm.unprivileged_userfaultfd=1`, or `/dev/userfaultfd` opened
//! read-write. [`check`] tries both routes once per process.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::mem::ManuallyDrop;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, RwLock, Weak};
use std::thread;
use std::time::Duration;

use linux_raw_sys::general as g;
use rustix::io::Errno;
use rustix::mm::{self as rmm, MprotectFlags, ProtFlags};
use rustix::process::Pid;

use super::{Request, Snapshot, Span, Strategy};
use crate::Error;
use crate::sys::mmap::{self, Advice, HUGE_PAGE, Region};
use crate::sys::procfs;
use crate::sys::uffd::{self, Msg, Route, Uffd};
use crate::watcher::{self, Registration, Source};

mod forked;

/// Granule of whole-chunk fills, prefetch and huge pages.
const CHUNK: usize = HUGE_PAGE;
/// First fault-around window of a new stream.
const MIN_WINDOW: usize = 4 << 10;
/// Growth factor of a stream's window per sequential fault.
const GROWTH: usize = 4;
/// How many chunks ahead of a sequential reader the prefetcher fills.
const AHEAD: usize = 8;
/// Streams tracked per mapping.
const STREAMS: usize = 4;
/// The longest the handler keeps the watcher thread in one turn of
/// polling for faults, so that other sources on it get theirs.
const POLL_TURN: Duration = Duration::from_millis(2);

// ---------------------------------------------------------------------------
// Process-level probe

/// What the process-level probe found: a route to a userfaultfd serving
/// kernel faults, and the features it offers.
#[derive(Debug)]
struct Probe {
    route: Route,
    features: u64,
    found: String,
}

/// Tries both routes once per process. A failure for lack of resources
/// right now (too many open files, no memory) is reported as such and not
/// remembered: it says nothing about privileges, and the next map may work.
fn probe() -> Result<&'static Probe, String> {
    static PROBE: OnceLock<Result<Probe, String>> = OnceLock::new();
    if let Some(p) = PROBE.get() {
        return p.as_ref().map_err(Clone::clone);
    }
    let first = run_probe();
    if let Err(why) = &first
        && let Some(e) = transient_failure()
    {
        return Err(format!(
            "cannot create a userfaultfd right now ({e}); try again when the process has \
             file descriptors and memory to spare (details: {why})"
        ));
    }
    PROBE.get_or_init(|| first).as_ref().map_err(Clone::clone)
}

/// Whether creating a userfaultfd fails for a passing lack of resources
/// (EMFILE, ENFILE, ENOMEM) rather than for privileges: the error if so.
fn transient_failure() -> Option<std::io::Error> {
    [Route::Syscall, Route::DevNode].into_iter().find_map(|r| {
        uffd::available(r).err().filter(|e| {
            matches!(
                e.raw_os_error(),
                Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM)
            )
        })
    })
}

fn unprivileged_sysctl() -> Option<String> {
    std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
        .ok()
        .map(|s| s.trim().to_string())
}

fn run_probe() -> Result<Probe, String> {
    let sysctl = unprivileged_sysctl();
    let move_note = |features: u64| {
        if features & u64::from(g::UFFD_FEATURE_MOVE) != 0 {
            "; UFFDIO_MOVE available (sequential fills become 2 MiB huge pages)"
        } else {
            "; no UFFDIO_MOVE (Linux < 6.8): fills use UFFDIO_COPY into 4 KiB pages"
        }
    };
    let syscall_err = match uffd::available(Route::Syscall) {
        Ok(api) => {
            let why = if sysctl.as_deref() == Some("1") {
                "vm.unprivileged_userfaultfd=1"
            } else {
                "this process has CAP_SYS_PTRACE"
            };
            return Ok(Probe {
                route: Route::Syscall,
                features: api.features,
                found: format!(
                    "userfaultfd(2) serves kernel-mode faults ({why}){}",
                    move_note(api.features)
                ),
            });
        }
        Err(e) => e,
    };
    let dev_err = match uffd::available(Route::DevNode) {
        Ok(api) => {
            return Ok(Probe {
                route: Route::DevNode,
                features: api.features,
                found: format!(
                    "/dev/userfaultfd is accessible and serves kernel-mode faults{}",
                    move_note(api.features)
                ),
            });
        }
        Err(e) => e,
    };
    let syscall_why = match syscall_err.raw_os_error() {
        Some(libc::EPERM) => format!(
            "userfaultfd(2) without UFFD_USER_MODE_ONLY was refused (EPERM): the process lacks \
             CAP_SYS_PTRACE and vm.unprivileged_userfaultfd is {}",
            sysctl.as_deref().unwrap_or("unreadable")
        ),
        Some(libc::ENOSYS) => {
            "userfaultfd(2) does not exist here (ENOSYS: kernel without CONFIG_USERFAULTFD, or a \
             seccomp filter)"
                .to_string()
        }
        _ => format!("userfaultfd(2) failed: {syscall_err}"),
    };
    let dev_why = match dev_err.raw_os_error() {
        Some(libc::ENOENT) => "/dev/userfaultfd does not exist (Linux < 6.1)".to_string(),
        _ => {
            let mode = rustix::fs::stat("/dev/userfaultfd")
                .map(|st| format!(" (mode {:o}, owner uid {})", st.st_mode & 0o777, st.st_uid))
                .unwrap_or_default();
            format!("/dev/userfaultfd cannot be used: {dev_err}{mode}")
        }
    };
    Err(format!(
        "no userfaultfd that serves kernel-mode faults (needed so that a syscall such as write(2) \
         reading an untouched page does not fail with EFAULT): {syscall_why}; {dev_why}. \
         Enable one: run as root or with CAP_SYS_PTRACE, set `sysctl vm.unprivileged_userfaultfd=1`, \
         or give this user read-write access to /dev/userfaultfd (for example a udev rule or \
         `setfacl -m u:USER:rw /dev/userfaultfd`)"
    ))
}

pub(crate) fn check(req: Option<&Request<'_>>) -> Result<String, String> {
    let p = probe()?;
    let Some(req) = req else {
        return Ok(p.found.clone());
    };
    if req.populate {
        let len = req.map_len() as u64;
        if let Some(avail) = procfs::memory_available().filter(|&a| len > a) {
            return Err(format!(
                "populate(true) would copy {len} bytes, more than the memory available \
                 ({avail} bytes); map without populate so that only touched pages are copied"
            ));
        }
    }
    Ok(p.found.clone())
}

// ---------------------------------------------------------------------------
// The per-process server

/// The process's one userfaultfd and everything that serves it.
struct Server {
    uffd: Uffd,
    pid: Pid,
    can_move: bool,
    /// Live mappings by start address.
    mappings: RwLock<BTreeMap<usize, Arc<Mapping>>>,
    prefetch: Prefetch,
    /// Keeps the uffd registered with the watcher.
    registration: Mutex<Option<Registration>>,
    /// Set once the fallback serving thread runs (after a watcher failure).
    fallback: AtomicBool,
    me: Weak<Server>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("uffd", &self.uffd)
            .field("pid", &self.pid)
            .field("can_move", &self.can_move)
            .finish_non_exhaustive()
    }
}

static SERVER: Mutex<Option<Arc<Server>>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// This process's server, created on first use (and again in a forked
/// child: the parent's userfaultfd belongs to the parent's address space).
fn server() -> Result<Arc<Server>, Error> {
    let p = probe().map_err(|why| Error::unsupported(Strategy::Lazy, why))?;
    let mut cur = lock(&SERVER);
    let pid = rustix::process::getpid();
    if let Some(s) = cur.as_ref().filter(|s| s.pid == pid) {
        return Ok(s.clone());
    }
    // A forked child: the parent's server is not ours to tear down (its
    // fds are shared with the parent); leak this copy of it.
    std::mem::forget(cur.take());
    let want_move = p.features & u64::from(g::UFFD_FEATURE_MOVE);
    let uffd = Uffd::new(p.route, want_move)
        .map_err(|e| Error::io("creating the process's userfaultfd", e))?;
    let can_move = uffd.has(u64::from(g::UFFD_FEATURE_MOVE)) && want_move != 0;
    // Tests exercise the UFFDIO_COPY-only path of kernels before 6.8 too.
    #[cfg(test)]
    let can_move = can_move && std::env::var("MAPCOPY_LAZY_CHILD").as_deref() != Ok("nomove");
    let srv = Arc::new_cyclic(|me| Server {
        uffd,
        pid,
        can_move,
        mappings: RwLock::new(BTreeMap::new()),
        prefetch: Prefetch::default(),
        registration: Mutex::new(None),
        fallback: AtomicBool::new(false),
        me: me.clone(),
    });
    crate::fork::on_fork(forked::STEPS)
        .map_err(|e| Error::io("registering the fork handlers", e))?;
    let reg = watcher::register(srv.clone())
        .map_err(|e| Error::io("registering the userfaultfd with the watcher thread", e))?;
    *lock(&srv.registration) = Some(reg);
    *cur = Some(srv.clone());
    Ok(srv)
}

/// This process's own mappings, for a forked child to inherit (see
/// `forked`); nothing in a forked child that has not mapped with Lazy
/// itself.
fn inheritable(out: &mut Vec<forked::Inherit>) {
    let Some(srv) = lock(&SERVER)
        .clone()
        .filter(|s| s.pid == rustix::process::getpid())
    else {
        return;
    };
    let maps = srv.mappings.read().unwrap_or_else(PoisonError::into_inner);
    out.extend(maps.values().map(|m| forked::Inherit {
        base: m.span.0,
        total: m.span.1,
        start: m.start,
        len: m.len,
        offset: m.offset,
        fd: m.file.as_raw_fd(),
    }));
}

/// Aborts the process if the thread unwinds through it: a panicking fault
/// handler must not leave faulting threads waiting.
struct AbortOnUnwind(&'static str);

impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        if thread::panicking() {
            say(&format!(
                "mapcopy: the lazy (userfaultfd) {} panicked; aborting so that no thread waits \
                 forever on a page fault\n",
                self.0
            ));
            std::process::abort();
        }
    }
}

impl Source for Server {
    fn fd(&self) -> BorrowedFd<'_> {
        self.uffd.as_fd()
    }

    fn ready(&self) {
        let _guard = AbortOnUnwind("fault handler");
        self.serve_faults();
    }

    fn shutdown(&self) {
        // The watcher is gone; keep serving on a thread of our own.
        let Some(me) = self.me.upgrade() else { return };
        if self.fallback.swap(true, Ordering::SeqCst) {
            return;
        }
        lock(&self.registration).take();
        let spawned = thread::Builder::new()
            .name("mapcopy-uffd".into())
            .spawn(move || {
                let _guard = AbortOnUnwind("fallback fault handler");
                loop {
                    let mut pfd = [rustix::event::PollFd::new(
                        &me.uffd,
                        rustix::event::PollFlags::IN,
                    )];
                    match rustix::event::poll(&mut pfd, None) {
                        Ok(_) | Err(Errno::INTR) => {}
                        Err(e) => fatal_msg(&format!("polling the userfaultfd failed: {e}")),
                    }
                    me.serve_faults();
                }
            });
        if let Err(e) = spawned {
            fatal_msg(&format!(
                "the watcher thread stopped and no thread could be started to serve page faults \
                 ({e})"
            ));
        }
    }

    fn name(&self) -> &'static str {
        "lazy (userfaultfd)"
    }
}

fn fatal_msg(what: &str) -> ! {
    say(&format!(
        "mapcopy: lazy mapping: {what}; aborting the process: a thread faulting on the mapping \
         can be given neither an error nor made-up bytes, and must not wait forever\n"
    ));
    std::process::abort();
}

/// Writes to stderr with plain write(2): `eprintln!` takes the stderr lock,
/// which a thread faulting on a lazy page (say, while printing it) may hold.
fn say(msg: &str) {
    let mut b = msg.as_bytes();
    while !b.is_empty() {
        match rustix::io::write(std::io::stderr().as_fd(), b) {
            Ok(0) => return,
            Ok(n) => b = &b[n..],
            Err(Errno::INTR) => {}
            Err(_) => return,
        }
    }
}

impl Server {
    /// Serves faults as they come, polling for the next for
    /// [`watcher::POLL_AFTER_EVENT`] before it lets the thread sleep, and for
    /// at most [`POLL_TURN`] in all, so that other sources on the watcher get
    /// their turn (the fd is level-triggered and comes back if more is
    /// pending).
    fn serve_faults(&self) {
        let mut msgs = Vec::with_capacity(64);
        watcher::serve_polling(Some(POLL_TURN), || self.serve_pending(&mut msgs));
    }

    /// Reads and serves one batch of pending fault messages; returns how
    /// many were read.
    fn serve_pending(&self, msgs: &mut Vec<Msg>) -> usize {
        match self.uffd.read(msgs, 64) {
            Ok(n) => {
                for m in msgs.iter() {
                    if let Msg::PageFault { address, .. } = *m {
                        self.fault(address as usize);
                    }
                }
                n
            }
            Err(e) => fatal_msg(&format!("reading the userfaultfd failed: {e}")),
        }
    }

    fn lookup(&self, addr: usize) -> Option<Arc<Mapping>> {
        let maps = self.mappings.read().unwrap_or_else(PoisonError::into_inner);
        let (_, m) = maps.range(..=addr).next_back()?;
        (addr < m.start + m.len).then(|| m.clone())
    }

    /// Serves one fault message (possibly stale).
    fn fault(&self, addr: usize) {
        let Some(m) = self.lookup(addr) else {
            // Stale: the mapping is gone (unregistering woke its waiters).
            return;
        };
        let page = crate::sys::page_size();
        let off = (addr - m.start) & !(page - 1);
        let (plan, ahead) = m.plan(off);
        match plan {
            Plan::Nothing => {}
            Plan::Wake(off, len) => {
                let _ = self.uffd.wake(m.start + off, len);
            }
            Plan::Range(off, len) => {
                if let Err((pos, e)) = self.fill_range(&m, off, len) {
                    m.fatal_read(pos, e);
                }
            }
            Plan::Chunk(c) => {
                if let Err((pos, e)) = self.fill_chunk(&m, c) {
                    m.fatal_read(pos, e);
                }
            }
        }
        if let Some(chunks) = ahead {
            self.schedule(m, chunks);
        }
    }

    /// Fills the missing pages of `[off, off + len)` with `UFFDIO_COPY`.
    /// `Err` = the `pread` at that file offset failed.
    fn fill_range(&self, m: &Mapping, off: usize, len: usize) -> Result<(), (u64, Errno)> {
        with_staging(|st| {
            // SAFETY: the staging buffer is this thread's alone; nothing
            // else reads or writes it while `buf` lives.
            let buf = unsafe { st.as_mut_slice(0, len) };
            m.read(buf, off)?;
            let live = m.live.read().unwrap_or_else(PoisonError::into_inner);
            if *live {
                self.copy_all(m, off, buf.as_ptr(), len);
            }
            Ok(())
        })
    }

    /// Fills chunk `c`, which the caller claimed (`Busy`), completely, and
    /// marks it `Full`.
    fn fill_chunk(&self, m: &Mapping, c: usize) -> Result<(), (u64, Errno)> {
        let off = c * CHUNK;
        let len = CHUNK.min(m.len - off);
        let res = with_staging(|st| {
            let base = st.as_ptr() as usize;
            {
                // SAFETY: as in `fill_range`; the borrow ends before any
                // page is moved away.
                let buf = unsafe { st.as_mut_slice(0, len) };
                m.read(buf, off)?;
            }
            let live = m.live.read().unwrap_or_else(PoisonError::into_inner);
            if !*live {
                return Ok(());
            }
            let mut done = 0;
            if self.can_move && len == CHUNK && base.is_multiple_of(CHUNK) {
                done = self.move_chunk(m, off, base);
            }
            if done < len {
                // The part not moved is still in the staging buffer.
                let src = (base + done) as *const u8;
                self.copy_all(m, off + done, src, len - done);
                if done > 0 {
                    // A move that stopped half-way leaves the staging chunk
                    // in 4 KiB pieces; start it afresh so that the next
                    // fill gets a huge page again.
                    // SAFETY: nothing borrows the staging buffer now (the
                    // slice that was read into is gone; its pages were
                    // copied or moved into the mapping).
                    let _ = unsafe { st.unchecked_advise(0, CHUNK, rmm::Advice::LinuxDontNeed) };
                }
            }
            Ok(())
        });
        lock(&m.state).chunks[c] = ChunkState::Full;
        m.filled.notify_all();
        // Belt and braces: anyone who faulted in this chunk while it was
        // claimed waits for us; every page is present now.
        let _ = self.uffd.wake(m.start + off, len);
        res
    }

    /// Moves the staging chunk at `src` to chunk offset `off` of `m`;
    /// returns how many bytes were moved (the rest is still in staging).
    fn move_chunk(&self, m: &Mapping, off: usize, src: usize) -> usize {
        let dst = m.start + off;
        let ro = m.read_only.load(Ordering::Acquire);
        // UFFDIO_MOVE only moves between writable areas: open the chunk for
        // the move and close it again (its pages are all missing, so no
        // reader has seen any byte of it).
        // SAFETY: the chunk lies inside the live mapping (we hold its lock
        // shared); no reference into it can exist yet, and adding write
        // access invalidates none anyway.
        if ro
            && unsafe { mmap::protect_at(dst, CHUNK, MprotectFlags::READ | MprotectFlags::WRITE) }
                .is_err()
        {
            return 0;
        }
        // SAFETY: `dst` is a chunk of a live mapping registered with this
        // uffd that we claimed; `src` is this thread's staging chunk, which
        // nothing borrows now and whose pages we give away.
        // A read-only mapping wakes its waiters only once the chunk is
        // read-only again (`fill_chunk` wakes the whole chunk at the end).
        let mode = if ro { uffd::MOVE_MODE_DONTWAKE } else { 0 };
        let p = unsafe { self.uffd.move_pages(dst, src, CHUNK, mode) };
        if ro {
            // SAFETY: the chunk is inside the live mapping (as above); no
            // `&mut` into it exists (a read-only mapping hands out `&[u8]`
            // only). If it fails the chunk stays writable, which only
            // matters to `unsafe` code writing through a `&[u8]`.
            let _ = unsafe { mmap::protect_at(dst, CHUNK, MprotectFlags::READ) };
        }
        p.done
    }

    /// `UFFDIO_COPY` of `[off, off + len)` from `src`, skipping (and waking)
    /// pages that are already present.
    fn copy_all(&self, m: &Mapping, off: usize, src: *const u8, len: usize) {
        let page = crate::sys::page_size();
        let mut done = 0;
        while done < len {
            // SAFETY: the range is inside a live mapping registered with this
            // uffd (the caller holds its lock shared); `src` has `len` bytes.
            let p = unsafe {
                self.uffd
                    .copy(m.start + off + done, src.add(done), len - done)
            };
            done += p.done;
            match p.err {
                None => {}
                Some(Errno::EXIST) => {
                    // Someone else filled this page; whoever waits on it
                    // may have missed that wake-up: wake it, skip it.
                    let _ = self.uffd.wake(m.start + off + done, page);
                    done += page;
                }
                Some(Errno::AGAIN) | Some(Errno::INTR) => {}
                Some(e) => m.fatal(&format!(
                    "installing bytes at offset {} with UFFDIO_COPY failed: {e}",
                    m.offset + (off + done) as u64
                )),
            }
        }
    }

    /// Hands chunks to the prefetch thread, starting it on first use.
    fn schedule(&self, m: Arc<Mapping>, chunks: Range<usize>) {
        let Some(me) = self.me.upgrade() else { return };
        if !self.prefetch.start(me) {
            return;
        }
        lock(&self.prefetch.queue).push_back((m, chunks));
        self.prefetch.cv.notify_one();
    }
}

/// The prefetch thread's queue.
#[derive(Default)]
struct Prefetch {
    queue: Mutex<VecDeque<(Arc<Mapping>, Range<usize>)>>,
    cv: Condvar,
    started: OnceLock<bool>,
}

impl Prefetch {
    /// Starts the thread if needed; false if it cannot run.
    fn start(&self, srv: Arc<Server>) -> bool {
        *self.started.get_or_init(|| {
            thread::Builder::new()
                .name("mapcopy-prefetch".into())
                .spawn(move || {
                    let _guard = AbortOnUnwind("prefetch thread");
                    prefetch_loop(&srv)
                })
                .is_ok()
        })
    }
}

fn prefetch_loop(srv: &Server) {
    loop {
        let (m, chunks) = {
            let mut q = lock(&srv.prefetch.queue);
            loop {
                if let Some(job) = q.pop_front() {
                    break job;
                }
                q = srv
                    .prefetch
                    .cv
                    .wait(q)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        };
        for c in chunks {
            if !*m.live.read().unwrap_or_else(PoisonError::into_inner) {
                break;
            }
            if !m.claim(c) {
                continue;
            }
            if let Err((pos, e)) = srv.fill_chunk(&m, c) {
                if m.populating.load(Ordering::Acquire) {
                    // Nobody can fault on it yet: `populate` reports it.
                    lock(&m.state).failed.get_or_insert((pos, e));
                    m.filled.notify_all();
                    break;
                }
                m.fatal_read(pos, e);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Staging buffers

struct Staging {
    region: Region,
    pid: Pid,
}

thread_local! {
    static STAGING: RefCell<Option<Staging>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's 2 MiB-aligned staging chunk.
fn with_staging<R>(f: impl FnOnce(&mut Region) -> R) -> R {
    STAGING.with(|cell| {
        let mut cell = cell.borrow_mut();
        let pid = rustix::process::getpid();
        if cell.as_ref().is_some_and(|s| s.pid != pid) {
            // Inherited over fork() from a thread of the parent: the memory
            // was MADV_DONTFORK and is not ours; forget it without unmapping.
            std::mem::forget(cell.take());
        }
        if cell.is_none() {
            let region =
                Region::anonymous(CHUNK, ProtFlags::READ | ProtFlags::WRITE, false, HUGE_PAGE)
                    .unwrap_or_else(|e| {
                        fatal_msg(&format!("allocating a staging buffer failed: {e}"))
                    });
            let _ = region.advise(0, CHUNK, Advice::Hugepage);
            let _ = region.advise(0, CHUNK, Advice::DontFork);
            *cell = Some(Staging { region, pid });
        }
        f(&mut cell.as_mut().expect("staging set").region)
    })
}

// ---------------------------------------------------------------------------
// Mappings

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    /// Nothing filled by us.
    Empty,
    /// Some pages may be filled.
    Partial,
    /// A filler claimed it and fills all of it.
    Busy,
    /// Every page present.
    Full,
}

#[derive(Clone, Copy, Debug, Default)]
struct Stream {
    /// Offset where the next sequential fault is expected.
    next: usize,
    /// Current window (0 = unused slot).
    window: usize,
    /// Chunks before this one were handed to the prefetcher.
    prefetched_to: usize,
    /// For replacing the least recently used stream.
    used: u64,
}

#[derive(Debug)]
struct State {
    chunks: Vec<ChunkState>,
    streams: [Stream; STREAMS],
    tick: u64,
    /// A prefetch read that failed while populating.
    failed: Option<(u64, Errno)>,
}

#[derive(Debug)]
enum Plan {
    Nothing,
    Wake(usize, usize),
    Range(usize, usize),
    Chunk(usize),
}

/// One lazy mapping, shared by its owner and the fillers.
#[derive(Debug)]
struct Mapping {
    start: usize,
    len: usize,
    /// The whole region (address, length), alignment slack included.
    span: (usize, usize),
    file: File,
    /// Counts `file` among the fds live mappings keep.
    _kept: crate::fds::Kept,
    offset: u64,
    /// False once dropping began; fillers hold it shared while installing.
    live: RwLock<bool>,
    /// Whether the memory is currently mapped read-only.
    read_only: AtomicBool,
    /// Set while `populate` fills it inside the map call (no one else can
    /// touch it yet).
    populating: AtomicBool,
    state: Mutex<State>,
    /// Signalled (with `state`) when a chunk becomes `Full`.
    filled: Condvar,
}

impl Mapping {
    fn chunk_end(&self, c: usize) -> usize {
        ((c + 1) * CHUNK).min(self.len)
    }

    /// Decides what to do for a fault at `off`, and which chunks to
    /// prefetch.
    fn plan(&self, off: usize) -> (Plan, Option<Range<usize>>) {
        let page = crate::sys::page_size();
        let c = off / CHUNK;
        let nchunks = self.len.div_ceil(CHUNK);
        let mut st = lock(&self.state);
        st.tick += 1;
        let tick = st.tick;
        // Find the stream this fault continues, or start one.
        let found = st.streams.iter().position(|s| {
            s.window > 0 && off >= s.next && off <= s.next.max(s.prefetched_to * CHUNK) + s.window
        });
        let i = match found {
            Some(i) => {
                let s = &mut st.streams[i];
                s.window = (s.window * GROWTH).min(CHUNK);
                i
            }
            None => {
                let i = (0..STREAMS)
                    .min_by_key(|&i| st.streams[i].used)
                    .expect("streams");
                st.streams[i] = Stream {
                    next: off,
                    window: MIN_WINDOW.max(page),
                    prefetched_to: 0,
                    used: 0,
                };
                i
            }
        };
        st.streams[i].used = tick;
        let window = st.streams[i].window;
        let chunk_end = self.chunk_end(c);
        let plan = match st.chunks[c] {
            ChunkState::Full => Plan::Wake(off, page),
            ChunkState::Busy if window >= CHUNK => {
                // Someone fills this chunk and will wake the reader; help
                // the stream along by taking the next chunk nobody has.
                let ahead = st.streams[i].prefetched_to.max(c + 1).min(nchunks);
                match (c + 1..ahead).find(|&k| st.chunks[k] == ChunkState::Empty) {
                    Some(k) => {
                        st.chunks[k] = ChunkState::Busy;
                        Plan::Chunk(k)
                    }
                    None => Plan::Nothing,
                }
            }
            ChunkState::Busy => Plan::Nothing,
            ChunkState::Empty if window >= CHUNK => {
                st.chunks[c] = ChunkState::Busy;
                Plan::Chunk(c)
            }
            state => {
                if state == ChunkState::Empty {
                    st.chunks[c] = ChunkState::Partial;
                }
                let end = if window >= CHUNK {
                    chunk_end
                } else {
                    (off + window).min(chunk_end)
                };
                Plan::Range(off, end - off)
            }
        };
        let s = &mut st.streams[i];
        s.next = if window >= CHUNK {
            chunk_end
        } else {
            (off + window).min(chunk_end)
        };
        let mut ahead = None;
        if window >= CHUNK {
            let from = (c + 1).max(s.prefetched_to);
            let to = (c + 1 + AHEAD).min(nchunks);
            if from < to {
                s.prefetched_to = to;
                ahead = Some(from..to);
            }
        }
        (plan, ahead)
    }

    /// Claims an empty chunk for a whole-chunk fill.
    fn claim(&self, c: usize) -> bool {
        let mut st = lock(&self.state);
        if st.chunks[c] == ChunkState::Empty {
            st.chunks[c] = ChunkState::Busy;
            true
        } else {
            false
        }
    }

    /// Reads the file at mapping offset `off` into `buf`, zero past the end
    /// of the file. `Err` names the file offset that failed.
    fn read(&self, buf: &mut [u8], off: usize) -> Result<(), (u64, Errno)> {
        let at = self.offset + off as u64;
        #[cfg(test)]
        {
            let fail = tests::FAIL_READ_AT.load(Ordering::Relaxed);
            if (at..at + buf.len() as u64).contains(&fail) {
                return Err((fail, Errno::IO));
            }
        }
        let done = crate::sys::file::read_full(&self.file, buf, at)?;
        buf[done..].fill(0);
        Ok(())
    }

    /// The file's path (looked up only for messages).
    fn what(&self) -> String {
        let fd = self.file.as_raw_fd();
        std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| format!("the file at fd {fd}"))
    }

    fn fatal(&self, what: &str) -> ! {
        fatal_msg(&format!("{}: {what}", self.what()))
    }

    fn fatal_read(&self, pos: u64, e: Errno) -> ! {
        self.fatal(&format!(
            "reading the file at offset {pos} to serve a page fault failed: {e} (errno {})",
            e.raw_os_error()
        ))
    }
}

// ---------------------------------------------------------------------------
// Map and the snapshot

pub(crate) fn map(req: &Request<'_>) -> Result<Box<dyn Snapshot>, Error> {
    check(Some(req)).map_err(|why| Error::unsupported(Strategy::Lazy, why))?;
    let srv = server()?;
    let len = req.map_len();
    let file = req
        .file
        .try_clone()
        .map_err(|e| Error::io("duplicating the file descriptor", e))?;
    // Writable while populating (or for map_mut); read-only otherwise.
    let rw = req.writable || req.populate;
    let prot = if rw {
        ProtFlags::READ | ProtFlags::WRITE
    } else {
        ProtFlags::READ
    };
    // Ranges of 2 MiB or more start 2 MiB-aligned, so that chunks can be
    // huge pages. The region is over-sized by the alignment slack, which
    // stays reserved but untouched: trimming it would cost two munmaps per
    // map call, a good part of mapping small files.
    let page = crate::sys::page_size();
    let huge = len >= CHUNK;
    let align = if huge { CHUNK } else { page };
    let region = len
        .checked_add(align - page)
        .ok_or_else(|| Error::invalid("length overflows the address space"))
        .and_then(|total| {
            Region::anonymous(total, prot, true, page)
                .map_err(|e| Error::io(format!("reserving {total} bytes of address space"), e))
        })?;
    if huge {
        // THP lets a fault leave the page-middle-directory entry empty, so
        // that whole chunks can be moved in as huge pages. Only advice.
        let _ = region.advise(0, region.len(), Advice::Hugepage);
    }
    region
        .advise(0, region.len(), Advice::DontFork)
        .map_err(|e| Error::io("MADV_DONTFORK on the mapping", e))?;
    let base = region.as_ptr() as usize;
    let start = base.next_multiple_of(align);
    // SAFETY: `region` is fresh anonymous memory that this mapping owns; it
    // stays registered until `Lazy::drop` unregisters it, and the server
    // serves every fault in it meanwhile (or aborts the process). The slack
    // outside `[start, start + len)` is never touched.
    unsafe { srv.uffd.register_missing(base, region.len()) }
        .map_err(|e| Error::io("registering the mapping with userfaultfd", e))?;
    let nchunks = len.div_ceil(CHUNK);
    let mapping = Arc::new(Mapping {
        start,
        len,
        span: (base, region.len()),
        file,
        _kept: crate::fds::Kept::new(),
        offset: req.offset,
        live: RwLock::new(true),
        read_only: AtomicBool::new(!rw),
        populating: AtomicBool::new(req.populate),
        state: Mutex::new(State {
            chunks: vec![ChunkState::Empty; nchunks],
            streams: [Stream::default(); STREAMS],
            tick: 0,
            failed: None,
        }),
        filled: Condvar::new(),
    });
    srv.mappings
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(start, mapping.clone());
    let lazy = Lazy {
        mapping,
        server: srv,
        region: ManuallyDrop::new(region),
        head: start - base + req.head,
        len: req.len,
    };
    if !req.populate {
        lazy.prefill()?;
    }
    if req.populate {
        lazy.populate()?;
        if !req.writable {
            // SAFETY: `populate` filled every page and its writes are done;
            // nothing has read the mapping yet (`map` has not returned), so
            // no reference loses write access.
            unsafe {
                lazy.region
                    .protect(0, lazy.region.len(), MprotectFlags::READ)
            }
            .map_err(|e| Error::io("making the copy read-only", e))?;
            lazy.mapping.read_only.store(true, Ordering::Release);
        }
    }
    Ok(Box::new(lazy))
}

#[derive(Debug)]
struct Lazy {
    mapping: Arc<Mapping>,
    server: Arc<Server>,
    /// Unmapped by `Drop` after unregistering (and never in a forked child).
    /// The mapping is `[mapping.start, + mapping.len)` inside it.
    region: ManuallyDrop<Region>,
    /// Offset of the user's first byte in `region`.
    head: usize,
    len: usize,
}

impl Lazy {
    /// Fills the first window now, on the calling thread: most readers
    /// start at the beginning, and this saves their first fault's round
    /// trip through the handler. The stream it starts grows as usual.
    fn prefill(&self) -> Result<(), Error> {
        /// One page-aligned page on the stack (O_DIRECT fds need aligned
        /// buffers), which spares two syscalls per map call.
        #[repr(C, align(4096))]
        struct PageBuf([u8; 4096]);

        let m = &self.mapping;
        let window = MIN_WINDOW.max(crate::sys::page_size());
        let len = window.min(m.len);
        let mut stack = PageBuf([0; 4096]);
        let mut heap = None;
        let bytes: &mut [u8] = if len <= stack.0.len() {
            &mut stack.0[..len]
        } else {
            let buf = heap.insert(
                Region::anonymous(len, ProtFlags::READ | ProtFlags::WRITE, false, window)
                    .map_err(|e| Error::io("allocating a read buffer", e))?,
            );
            // SAFETY: fresh anonymous memory, borrowed only here.
            unsafe { buf.as_mut_slice(0, len) }
        };
        m.read(bytes, 0)
            .map_err(|(pos, e)| Error::io(format!("reading {} at offset {pos}", m.what()), e))?;
        {
            let mut st = lock(&m.state);
            st.chunks[0] = ChunkState::Partial;
            st.tick = 1;
            st.streams[0] = Stream {
                next: len,
                window,
                prefetched_to: 0,
                used: 1,
            };
        }
        self.server.copy_all(m, 0, bytes.as_ptr(), len);
        Ok(())
    }

    /// Fills every chunk now (the mapping is not visible to anyone yet).
    /// The prefetch thread helps from the other end; both claim chunks, so
    /// each is filled once.
    fn populate(&self) -> Result<(), Error> {
        let m = &self.mapping;
        let n = m.len.div_ceil(CHUNK);
        let err =
            |(pos, e): (u64, Errno)| Error::io(format!("reading {} at offset {pos}", m.what()), e);
        if n > 1 {
            self.server.schedule(m.clone(), (n / 2)..n);
        }
        for c in 0..n {
            if lock(&m.state).failed.is_some() {
                break;
            }
            if m.claim(c) {
                self.server.fill_chunk(m, c).map_err(err)?;
            }
        }
        // Wait for the chunks the prefetch thread still holds.
        let mut st = lock(&m.state);
        while st.failed.is_none() && st.chunks.contains(&ChunkState::Busy) {
            st = m.filled.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        if let Some(f) = st.failed {
            return Err(err(f));
        }
        drop(st);
        m.populating.store(false, Ordering::Release);
        Ok(())
    }
}

// SAFETY: (`Snapshot`'s promises) the span is `[head, head + len)` of
// `region`, which is never remapped: pages are installed *into* it
// (UFFDIO_COPY, UFFDIO_MOVE at the faulting address), and the fork handlers
// (`forked`) only change its inheritance and register the same range with
// a child's userfaultfd, so the address is fixed for the value's life, in
// the parent and in a forked child. A page of the region is either
// missing — then touching it blocks until a server installs the file's
// bytes (or the process aborts) — or present, and then it never changes:
// UFFDIO_COPY and UFFDIO_MOVE only fill missing pages, nothing else writes
// a read-only mapping, and stores to a writable one (map_mut requests)
// come only from the `MapCopyMut`. Anonymous memory never faults fatally
// in this process (MADV_DONTFORK only affects children).
unsafe impl Snapshot for Lazy {
    fn strategy(&self) -> Strategy {
        Strategy::Lazy
    }

    fn span(&self) -> Span {
        self.region.span(self.head, self.len)
    }
}

impl Drop for Lazy {
    fn drop(&mut self) {
        if rustix::process::getpid() != self.server.pid {
            // A forked child dropping its copy of the parent's value. The
            // parent's server and uffd are not this process's: touch neither
            // (nor any lock of theirs). If the fork handlers handed the
            // region to this process's own server, it is unregistered there
            // and unmapped here; otherwise it was never mapped here
            // (MADV_DONTFORK) and its address may hold something else.
            if forked::release(self.region.as_ptr() as usize) {
                // SAFETY: dropped exactly once, here; unregistered, and no
                // borrow of it outlives `self`.
                unsafe { ManuallyDrop::drop(&mut self.region) };
            }
            return;
        }
        let _fork = forked::hold();
        let m = &self.mapping;
        let mut live = m.live.write().unwrap_or_else(PoisonError::into_inner);
        *live = false;
        self.server
            .mappings
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&m.start);
        let _ = self
            .server
            .uffd
            .unregister(self.region.as_ptr() as usize, self.region.len());
        drop(live);
        // SAFETY: dropped exactly once, here; no filler touches the range
        // any more (dead, unregistered) and every borrow of it has ended.
        unsafe { ManuallyDrop::drop(&mut self.region) };
    }
}

#[cfg(test)]
mod tests;
