//! `Guard`: share the page cache, copy a page only when a writer is about to
//! change it.
//!
//! The mapping is a `MAP_PRIVATE` mapping of the file (`PROT_READ |
//! PROT_WRITE`, `MAP_NORESERVE`, so a huge sparse file reserves nothing).
//! Until a page is written it is the page cache's page. One fanotify group
//! per process (`FAN_CLASS_PRE_CONTENT`) holds an inode mark
//! (`FAN_PRE_ACCESS | FAN_OPEN_PERM`) on every guarded file; the kernel
//! stops every later reader, writer, truncater and mapper of the file before
//! it touches the data and waits for this process's answer. The answer comes
//! from the guard thread of this process (its own thread, not the shared
//! watcher: see `serve_loop`):
//!
//! * the event does not say read or write, so the task's syscall
//!   (`/proc/TID/syscall`) and its fd's flags (`/proc/TID/fdinfo/FD`) do:
//!   reads, `pread`, `MAP_PRIVATE` mmaps and read-only opens are allowed at
//!   once;
//! * before a write, `fallocate`, `copy_file_range`, clone or dedupe into the
//!   file, the pages it will touch are copied into private pages of every
//!   guarded mapping of the inode (`MADV_POPULATE_WRITE`), then it is
//!   allowed. Writes also copy the page holding the end of the file (an
//!   `O_APPEND` write lands there, but the event names the file position);
//! * a truncation unmaps even private copies of file pages
//!   (`unmap_mapping_range(..., even_cows = 1)`), so before a truncate (the
//!   event names only the page of the new size), `open(O_TRUNC)`, a
//!   collapse/insert `fallocate`, or a `MAP_SHARED` mmap through a writable
//!   fd (its stores raise nothing), the mapping from the affected offset to
//!   its end is *detached*: the file's data there (`SEEK_DATA`, holes cost
//!   nothing) and the pages copied earlier are copied into anonymous memory
//!   that `mremap` moves over the range in one step. Anything that cannot
//!   be classified (task gone, `/proc` unreadable, io_uring, unknown
//!   syscalls) detaches from the reported offset to the end, which covers
//!   writes, appends and truncation alike.
//!
//! A writable mapping (`map_mut`) cannot stay a file mapping (a
//! truncation would throw the owner's stores away with the private pages),
//! so it is detached completely before `map_mut` returns: the file's data
//! is copied, holes are not, and the guard is not needed afterwards.
//!
//! Events are armed per open file at open time, so a file opened for
//! writing *before* the mark would write unseen: after the mark is placed
//! (and again for every mapping) a read lease is tried, which the kernel
//! refuses while any writable fd exists; then the writer is reported as
//! [`crate::ErrorKind::Unsupported`].
//!
//! A stopped process (SIGSTOP, a debugger, a cgroup freeze) answers no
//! event: every read and write of a guarded file by any process waits
//! until it runs again (fanotify permission events have no timeout;
//! `tests/stopped.rs`). The mapping keeps its bytes.
//!
//! Failure: if the guard thread fails, [`Guards::shutdown`] first copies every
//! page of every guarded mapping, then releases the group, so the kernel
//! allows whatever is pending: no writer hangs, no snapshot is lost.
//!
//! `fork()`: a child has no guard thread, so before libc's `fork()` every
//! guarded mapping is detached (its file pages moved into anonymous memory,
//! as before a truncation) and made inheritable (see `crate::fork`); the
//! child shares those pages copy-on-write. The child drops its copy of the
//! group fd at once (a `pthread_atfork` child handler), so a child that
//! outlives its parent never holds writers up. A mapping made by another
//! thread during the fork stays `MADV_DONTFORK` (the child gets SIGSEGV on
//! touching it, never changed bytes).
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once, OnceLock, PoisonError};

use rustix::fs::{Mode, OFlags};
use rustix::mm::ProtFlags;

use super::{Request, Snapshot, Span, Strategy};
use crate::Error;
use crate::sys::fanotify::{Event, FAN_PRE_ACCESS, Group, Response};
use crate::sys::lease::{LeaseProbe, try_read_lease};
use crate::sys::mmap::{Advice, HUGE_PAGE, Region, file_part};
use crate::sys::proc_pid::{self, FdInfo, Syscall};
use crate::sys::{self, detect, file};
use crate::watcher;

/// Events the guard asks for on every guarded inode.
const MASK: u64 = FAN_PRE_ACCESS | libc::FAN_OPEN_PERM;

/// `fanotify_init` flags: permission events before content access, tids in
/// events (the syscall of the *thread* is what tells read from write),
/// never drop or limit (an overflowed permission event would be lost).
const INIT_FLAGS: libc::c_uint = libc::FAN_CLASS_PRE_CONTENT
    | libc::FAN_CLOEXEC
    | libc::FAN_NONBLOCK
    | libc::FAN_REPORT_TID
    | libc::FAN_UNLIMITED_QUEUE
    | libc::FAN_UNLIMITED_MARKS;

/// Flags of the fd delivered with each event (read-only, opened by the
/// kernel without notification, so reading it cannot raise events).
const EVENT_F_FLAGS: libc::c_uint = (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as _;

/// First kernel with `FAN_PRE_ACCESS`.
const MIN_KERNEL: (u32, u32) = (6, 14);

/// How many times `map` retries when the file shrinks between its `fstat`
/// and its registration.
const MAP_RETRIES: usize = 8;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------
// check

pub(crate) fn check(req: Option<&Request<'_>>) -> Result<String, String> {
    if let Some(r) = req {
        sys::fs::shown(&sys::fs::GUARD, r.meta.fs_type)?;
    }
    // A throwaway group and mark prove the capability (CAP_SYS_ADMIN), the
    // kernel (FAN_PRE_ACCESS) and the filesystem.
    let found = detect::fanotify_pre_content(req.map(|r| (r.file, &r.meta)))?;
    let found = format!("{found}; {}", sys::fs::holds_on(&sys::fs::GUARD));
    let Some(req) = req else {
        return Ok(found);
    };
    if req.meta.writable {
        return Err(FD_WRITABLE.into());
    }
    if let Some(why) = sys::overlay::refusal(req.file, req.meta.dev, sys::overlay::Escape::Guard) {
        return Err(why);
    }
    let fd = reopen(req.file)
        .map_err(|e| format!("cannot open a second read-only fd of the file: {e}"))?;
    match lease_probe(fd.as_fd(), true) {
        Ok(LeaseProbe::NoWriter) => Ok(format!(
            "{found}; no writer holds the file open (read lease granted)"
        )),
        Ok(LeaseProbe::WriterExists) => Err(WRITER_OPEN.into()),
        Err(e) => Err(format!(
            "cannot prove that no writer holds the file open (read lease refused: {e})"
        )),
    }
}

/// `Auto`'s pre-check: what holds for the process (kernel, capability,
/// whether a group could be made) and the filesystem (whether it took a
/// mark), as found by earlier `map` calls, and whether the fd passed in is
/// writable. No kernel object is made; the writer check is `map`'s.
pub(crate) fn pre_check(req: &Request<'_>) -> Result<(), String> {
    sys::fs::shown(&sys::fs::GUARD, req.meta.fs_type)?;
    kernel_ok()?;
    if !super::auto::caps().sys_admin {
        return Err("needs CAP_SYS_ADMIN for fanotify pre-content events".into());
    }
    if let Some(why) = GROUP_REFUSED.get() {
        return Err(why.clone());
    }
    if let Some(why) = lock(&FS_REFUSED)
        .as_ref()
        .and_then(|m| m.get(&req.meta.dev))
    {
        return Err(why.clone());
    }
    if req.meta.writable {
        return Err(FD_WRITABLE.into());
    }
    Ok(())
}

/// Why this process cannot have a pre-content group, once it was refused.
static GROUP_REFUSED: OnceLock<String> = OnceLock::new();
/// Filesystems (by `st_dev`) that refused a pre-content mark, and why.
static FS_REFUSED: Mutex<Option<HashMap<u64, String>>> = Mutex::new(None);

const FD_WRITABLE: &str = "the file descriptor passed in is open for writing: writes through an fd opened before the guard armed raise no events; pass a read-only File";

fn group_error(e: io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) => "needs CAP_SYS_ADMIN for fanotify permission events (run as root or grant the capability)".to_string(),
        _ => format!("the kernel refused a pre-content fanotify group: {e}"),
    }
}

const WRITER_OPEN: &str = "file is open for writing by another process (a read lease was refused); its writes would raise no events";

/// [`try_read_lease`], tried a few times over ~10 ms: a
/// writable fd can exist for a moment without a writer (a child between
/// `fork` and `exec` holds copies of its parent's fds until `O_CLOEXEC`
/// closes them).
fn lease_probe(fd: BorrowedFd<'_>, patient: bool) -> io::Result<LeaseProbe> {
    if !patient {
        return try_read_lease(fd);
    }
    for _ in 0..5 {
        match try_read_lease(fd)? {
            LeaseProbe::NoWriter => return Ok(LeaseProbe::NoWriter),
            LeaseProbe::WriterExists => std::thread::sleep(std::time::Duration::from_millis(2)),
        }
    }
    try_read_lease(fd)
}

fn kernel_ok() -> Result<String, String> {
    // The running kernel's release cannot change: ask uname once.
    static KERNEL: OnceLock<Result<String, String>> = OnceLock::new();
    KERNEL.get_or_init(kernel_release_ok).clone()
}

fn kernel_release_ok() -> Result<String, String> {
    let kernel = detect::Kernel::running();
    if !kernel.at_least(MIN_KERNEL.0, MIN_KERNEL.1) {
        return Err(format!(
            "kernel {} predates fanotify pre-content events (FAN_PRE_ACCESS, Linux {}.{})",
            kernel.release, MIN_KERNEL.0, MIN_KERNEL.1
        ));
    }
    Ok(kernel.release)
}

/// A fresh read-only open file description of the same file (through
/// `/proc/self/fd`), so that the lease probe and the inode mark use an fd
/// that this crate owns and that was opened before the mark (unarmed).
fn reopen(file: &std::fs::File) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    let flags = OFlags::RDONLY | OFlags::LARGEFILE | OFlags::NOCTTY | OFlags::CLOEXEC;
    match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(fd) => Ok(fd),
        // Without /proc, share the caller's description.
        Err(_) => file.as_fd().try_clone_to_owned(),
    }
}

// ---------------------------------------------------------------------------
// the per-process group

/// One guarded mapping: a region whose first `file_len` bytes map the file
/// at `offset` privately and whose rest is anonymous (past the end of the
/// file at map time: zeros, never SIGBUS).
struct Mapping {
    region: Region,
    offset: u64,
    /// Bytes at the start of `region` still mapped from the file; the rest
    /// is anonymous. Only shrinks, only under `Guards::inodes`.
    file_len: AtomicUsize,
    /// File ranges this guard made private (`MADV_POPULATE_WRITE`): their
    /// contents may differ from the file now, even where it has a hole.
    copied: Mutex<Vec<(u64, u64)>>,
    /// Detached and inheritable (see `prepare_fork`): a forked child owns
    /// its copy of the region.
    inherited: AtomicBool,
}

impl fmt::Debug for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mapping")
            .field("ptr", &self.region.as_ptr())
            .field("len", &self.region.len())
            .field("offset", &self.offset)
            .field("file_len", &self.file_len.load(Ordering::Relaxed))
            .finish()
    }
}

impl Mapping {
    /// Copies the file pages of `[start, end)` (file offsets) that this
    /// mapping holds into private pages. Pages already private stay as
    /// they are.
    fn copy(&self, start: u64, end: u64, fd: BorrowedFd<'_>) -> io::Result<()> {
        let page = sys::page_size() as u64;
        let lo = (start & !(page - 1)).max(self.offset);
        let hi = end
            .saturating_add(page - 1)
            .min(self.offset + self.file_len() as u64)
            & !(page - 1);
        if lo >= hi {
            return Ok(());
        }
        let off = (lo - self.offset) as usize;
        let len = (hi - lo) as usize;
        loop {
            match self.region.advise(off, len, Advice::PopulateWrite) {
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EFAULT) => {
                    self.copy_pages(off, len, fd)?
                }
                r => r?,
            }
            break;
        }
        let mut copied = lock(&self.copied);
        match copied.last_mut() {
            Some(last) if last.0 <= lo && last.1 >= lo => last.1 = last.1.max(hi),
            _ => copied.push((lo, hi)),
        }
        Ok(())
    }

    /// Page by page, after a fault: a page wholly past the end of the file
    /// (a shrink slipped past) becomes zeros; a page inside the file that
    /// cannot be read (an I/O error) is an `EIO` error, never zeros.
    fn copy_pages(&self, off: usize, len: usize, fd: BorrowedFd<'_>) -> io::Result<()> {
        let page = sys::page_size();
        for p in (off..off + len).step_by(page) {
            match self.region.advise(p, page, Advice::PopulateWrite) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EFAULT) => {
                    let size = rustix::fs::fstat(fd)?.st_size as u64;
                    if self.offset + (p as u64) < size {
                        return Err(io::Error::other(format!(
                            "reading the file at offset {} failed (I/O error)",
                            self.offset + p as u64
                        )));
                    }
                    // SAFETY: the page is past the end of the file, so its
                    // contents were unreadable (a read would have raised
                    // SIGBUS) and no reference can observe a change.
                    unsafe { self.region.zero(p, page) }?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn file_len(&self) -> usize {
        self.file_len.load(Ordering::Relaxed)
    }

    /// Copies every file page of the mapping.
    fn copy_all(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.copy(0, u64::MAX, fd)
    }

    /// Detaches the whole mapping from the file and lets a forked child
    /// inherit it. Called under `Guards::inodes`.
    fn make_inheritable(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.detach(0, fd)?;
        self.region.advise(0, self.region.len(), Advice::DoFork)?;
        self.inherited.store(true, Ordering::Release);
        Ok(())
    }

    /// Moves the file pages from file offset `from` on out of the file
    /// mapping into anonymous memory with the same contents. Needed before
    /// a truncation: it unmaps even private copies of file pages
    /// (`unmap_mapping_range(..., even_cows = 1)`), so a copy made by
    /// `MADV_POPULATE_WRITE` alone would turn into SIGBUS. Only the file's
    /// data extents (`SEEK_DATA`, through `fd`) and the pages copied
    /// earlier are copied; holes become untouched anonymous memory, so a
    /// huge sparse file costs only its data.
    fn detach(&self, from: u64, fd: BorrowedFd<'_>) -> io::Result<()> {
        let page = sys::page_size() as u64;
        let file_len = self.file_len();
        let lo = (from & !(page - 1)).max(self.offset);
        let end = self.offset + file_len as u64;
        if lo >= end {
            return Ok(());
        }
        let off = (lo - self.offset) as usize;
        let len = file_len - off;
        let rw = ProtFlags::READ | ProtFlags::WRITE;
        // Where the destination starts on a huge-page boundary, copy into
        // huge pages: faulting them in is several times faster than 4 KiB
        // pages here, `mremap` moves them whole, and a later fork() copies
        // one entry per 2 MiB instead of 512.
        let dst = self.region.as_ptr() as usize + off;
        let huge = len >= HUGE_PAGE && dst.is_multiple_of(HUGE_PAGE);
        let mut tmp =
            Region::anonymous(len, rw, true, if huge { HUGE_PAGE } else { page as usize })?;
        if huge {
            // Only advice: without THP the copy is made of small pages.
            let _ = tmp.advise(0, len, Advice::Hugepage);
        }
        let mut ranges = data_extents(fd, lo, end, page);
        ranges.extend(
            lock(&self.copied)
                .iter()
                .map(|&(a, b)| (a.max(lo), b.min(end)))
                .filter(|(a, b)| a < b),
        );
        for &(a, b) in &ranges {
            // Fault the file's pages in first: an unreadable block must
            // become an error here, not a SIGBUS in the copy below.
            let src = (a - self.offset) as usize;
            if let Err(e) = self
                .region
                .advise(src, (b - a) as usize, Advice::PopulateRead)
            {
                return Err(io::Error::other(format!(
                    "reading the file between {a} and {b} failed ({e})"
                )));
            }
        }
        for (a, b) in ranges {
            let src = (a - self.offset) as usize;
            let dst = (a - lo) as usize;
            // SAFETY: `tmp` is new and shared with nobody, so this is the
            // only borrow of it; [a, b) is clipped to [lo, end), inside it.
            let to = unsafe { tmp.as_mut_slice(dst, (b - a) as usize) };
            // SAFETY: the source pages are either private copies or file
            // pages inside the file's data (below its size, faulted in
            // above), so reading cannot fault fatally; writers of the file
            // wait for this thread's answer, so nothing changes them.
            unsafe { self.region.read_into(src, to) }?;
        }
        // SAFETY: moves `tmp`'s pages over [off, off + len) of our own
        // region, replacing that range atomically with identical contents
        // (readers see the same bytes before and after); its range then
        // belongs to `self.region`.
        unsafe { tmp.move_into(&self.region, off) }?;
        self.file_len.store(off, Ordering::Relaxed);
        lock(&self.copied).retain(|&(a, _)| a < lo);
        Ok(())
    }
}

/// The page-rounded data extents of the file in `[lo, end)` (all of it if
/// the filesystem cannot tell).
fn data_extents(fd: BorrowedFd<'_>, lo: u64, end: u64, page: u64) -> Vec<(u64, u64)> {
    use rustix::fs::{SeekFrom, seek};
    let mut out = Vec::new();
    let mut pos = lo;
    while pos < end {
        let data = match seek(fd, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => {
                out.push((pos, end));
                break;
            }
        };
        if data >= end {
            break;
        }
        let hole = match seek(fd, SeekFrom::Hole(data)) {
            Ok(h) => h,
            Err(_) => end,
        };
        let a = (data & !(page - 1)).max(lo);
        let b = hole.div_ceil(page).saturating_mul(page).min(end);
        if a < b {
            out.push((a, b));
        }
        pos = b.max(pos + page);
    }
    out
}

/// Everything guarded for one inode.
struct Inode {
    /// Our own read-only fd of the file, opened before the mark: the mark is
    /// removed through it and the lease probe runs on it.
    fd: Arc<OwnedFd>,
    /// Counts `fd` among the fds live mappings keep.
    _kept: crate::fds::Kept,
    maps: Vec<Arc<Mapping>>,
    /// `map` calls between placing/reusing the mark and registering.
    pending: usize,
}

/// The process's fanotify group and what it guards.
struct Guards {
    pid: rustix::process::Pid,
    group: Group,
    devnull: OwnedFd,
    inodes: Mutex<HashMap<(u64, u64), Inode>>,
    /// Set (under `inodes`) once `shutdown` has snapshotted everything and
    /// released the group: nothing may register any more.
    dead: AtomicBool,
    buf: Mutex<Vec<u8>>,
}

/// The live group of this process (served by its own thread).
static CURRENT: Mutex<Option<Arc<Guards>>> = Mutex::new(None);
/// Raw fds for the fork handler (which may not take locks).
static GROUP_FD: AtomicI32 = AtomicI32::new(-1);
static DEVNULL_FD: AtomicI32 = AtomicI32::new(-1);
static AT_FORK: Once = Once::new();

extern "C" fn child_after_fork() {
    let g = GROUP_FD.load(Ordering::Relaxed);
    let n = DEVNULL_FD.load(Ordering::Relaxed);
    if g >= 0 && n >= 0 {
        // SAFETY: `g` and `n` are the fds of the group in `CURRENT` (which
        // holds it, so neither is closed while published: `guards` withdraws
        // the numbers before it lets a group go), its own group fd and its
        // /dev/null.
        unsafe { Group::detach_raw(g, n) };
    }
}

fn guards() -> Result<Arc<Guards>, Error> {
    let mut cur = lock(&CURRENT);
    let pid = rustix::process::getpid();
    if let Some(g) = cur.as_ref()
        && g.pid == pid
        && !g.dead.load(Ordering::Acquire)
    {
        return Ok(g.clone());
    }
    // The published numbers name only the group in `CURRENT`: the one
    // taken out below may be closed (and its number reused) while no new
    // one is published yet.
    GROUP_FD.store(-1, Ordering::Relaxed);
    DEVNULL_FD.store(-1, Ordering::Relaxed);
    if let Some(old) = cur.take()
        && old.pid != pid
    {
        // Inherited through fork: its fd is /dev/null here already and
        // its mappings were not inherited; leave it alone.
        std::mem::forget(old);
    }
    let group = Group::new(INIT_FLAGS, EVENT_F_FLAGS).map_err(|e| {
        if e.raw_os_error().is_some_and(crate::fds::is_exhausted) {
            // Out of fds: an I/O error with its errno, so that Auto moves on
            // and a named Guard says what to do.
            return Error::io("creating the fanotify group", e);
        }
        let why = group_error(e);
        // A lasting refusal (no capability, no kernel support): Auto need
        // not ask again in this process.
        let _ = GROUP_REFUSED.set(why.clone());
        Error::unsupported(Strategy::Guard, why)
    })?;
    let devnull = rustix::fs::open(
        c"/dev/null",
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("opening /dev/null", e))?;
    let g = Arc::new(Guards {
        pid,
        group,
        devnull,
        inodes: Mutex::new(HashMap::new()),
        dead: AtomicBool::new(false),
        buf: Mutex::new(vec![0u8; 4096 * 4]),
    });
    let served = g.clone();
    std::thread::Builder::new()
        .name("mapcopy-guard".into())
        .spawn(move || serve_loop(served))
        .map_err(|e| Error::io("starting the guard thread", e))?;
    GROUP_FD.store(g.group.as_fd().as_raw_fd(), Ordering::Relaxed);
    DEVNULL_FD.store(g.devnull.as_raw_fd(), Ordering::Relaxed);
    let mut fork_err = None;
    AT_FORK.call_once(|| fork_err = sys::fork::at_fork(None, None, Some(child_after_fork)).err());
    if let Some(e) = fork_err.or_else(|| crate::fork::on_prepare(prepare_fork).err()) {
        return Err(Error::io("registering the fork handlers", e));
    }
    *cur = Some(g.clone());
    Ok(g)
}

/// Runs in the parent before `fork()` (see `crate::fork`): a child has no
/// guard thread, so every guarded mapping is detached from the file (its
/// file pages moved into anonymous memory with the same bytes, as before a
/// truncation), made inheritable and unregistered; marks no mapping needs
/// any more are removed, so other processes stop paying for them.
fn prepare_fork() {
    let Some(g) = lock(&CURRENT)
        .clone()
        .filter(|g| g.pid == rustix::process::getpid())
    else {
        return;
    };
    let mut inodes = lock(&g.inodes);
    let keys: Vec<(u64, u64)> = inodes.keys().copied().collect();
    for key in keys {
        let Some(inode) = inodes.get_mut(&key) else {
            continue;
        };
        let fd = inode.fd.clone();
        inode.maps.retain(|m| match m.make_inheritable(fd.as_fd()) {
            Ok(()) => false,
            Err(e) => {
                eprintln!(
                    "mapcopy: cannot copy a Guard mapping before fork() ({e}); it stays \
                     guarded in the parent and a child touching it gets SIGSEGV"
                );
                true
            }
        });
        release_if_unused(&g, &mut inodes, key);
    }
}

/// The guard thread: answers the group's events until the group dies.
///
/// It is not the shared watcher thread on purpose: that thread reads files
/// for other strategies (`Lazy` fills pages with `pread`, `Lease` copies on
/// a break), and a read of a guarded file raises an event that only this
/// thread can answer; on one thread that read would wait for itself.
/// Failure policy as the watcher's: on a panic or error, take every page
/// ([`Guards::shutdown`]), release the group (the kernel then allows what
/// is pending) and stop; if even that fails, abort.
fn serve_loop(g: Arc<Guards>) {
    use rustix::event::{PollFd, PollFlags, poll};
    crate::sys::signal::block_async_signals(None);
    let why = loop {
        if g.dead.load(Ordering::Acquire) {
            return;
        }
        let mut fds = [PollFd::new(&g.group, PollFlags::IN)];
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => break format!("poll on the fanotify group failed: {e}"),
        }
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| g.ready())) {
            break p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
        }
    };
    eprintln!(
        "mapcopy: guard thread failing ({why}); copying every guarded page and letting writers go"
    );
    if catch_unwind(AssertUnwindSafe(|| g.shutdown())).is_err() {
        eprintln!(
            "mapcopy: guarded mappings could not be made safe without the guard thread; aborting"
        );
        std::process::abort();
    }
}

impl Guards {
    /// Answers every queued event, then keeps polling for the next for
    /// [`watcher::POLL_AFTER_EVENT`] before it lets the thread sleep.
    fn ready(&self) {
        let mut buf = lock(&self.buf);
        watcher::serve_polling(None, || {
            let events = match self.group.read_events(&mut buf) {
                Ok(ev) => ev,
                // Panicking makes the guard thread call `shutdown`, which keeps
                // every snapshot and lets the pending writers go.
                Err(e) => panic!("reading fanotify events: {e}"),
            };
            let n = events.len();
            for ev in events {
                self.serve(ev);
            }
            n
        });
    }

    /// The guard thread is going away: take every page of every mapping
    /// into anonymous memory, then release the group.
    fn shutdown(&self) {
        let mut inodes = lock(&self.inodes);
        for inode in inodes.values() {
            for m in &inode.maps {
                if let Err(e) = m.detach(0, inode.fd.as_fd()) {
                    // Cannot keep the snapshot without the guard thread: it
                    // aborts the process on this panic.
                    panic!("copying a guarded mapping before giving up the guard: {e}");
                }
            }
        }
        self.dead.store(true, Ordering::Release);
        inodes.clear();
        drop(inodes);
        self.group.detach(self.devnull.as_fd());
    }

    /// Classifies one event, copies what it needs, answers it.
    fn serve(&self, ev: Event) {
        let Some(fd) = ev.fd.as_ref() else {
            // FAN_NOFD: a queue overflow notice (cannot happen with an
            // unlimited queue; permission events are never dropped).
            return;
        };
        // fstat only when the classification needs it (not for reads).
        let st = std::cell::OnceCell::new();
        let stat = || *st.get_or_init(|| rustix::fs::fstat(fd).ok());
        let action = classify(&ev, &|| stat().map(|s| (s.st_ino, s.st_size as u64)), &Proc);
        let response = match (&action, stat_if_needed(&action, stat)) {
            (Action::Allow, _) => Response::Allow,
            (_, Some(s)) => self.apply(Some((s.st_dev, s.st_ino)), &action),
            // Cannot tell which file: protect every one.
            (_, None) => self.apply(None, &Action::Detach(0)),
        };
        // An errno in a deny is only accepted for pre-content events.
        let response = match response {
            Response::Deny(_) if ev.mask & FAN_PRE_ACCESS == 0 => Response::Deny(0),
            r => r,
        };
        match self.group.respond(fd.as_fd(), response) {
            // ENOENT: the task was killed while waiting; nothing to answer.
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            // Never leave a writer waiting: fall back to a plain answer.
            Err(_) => {
                if self.group.respond(fd.as_fd(), Response::Deny(0)).is_err() {
                    let _ = self.group.respond(fd.as_fd(), Response::Allow);
                }
            }
        }
    }

    /// Copies the ranges of `action` in every mapping of `key` (or of every
    /// inode with `None`).
    fn apply(&self, key: Option<(u64, u64)>, action: &Action) -> Response {
        let ranges: &[(u64, u64)] = match action {
            Action::Allow => return Response::Allow,
            Action::Copy(r) => r,
            Action::Detach(_) => &[],
        };
        let inodes = lock(&self.inodes);
        let mut result = Response::Allow;
        let mut run = |inode: &Inode| {
            for m in &inode.maps {
                let mut r = Ok(());
                for &(start, end) in ranges {
                    r = r.and_then(|()| m.copy(start, end, inode.fd.as_fd()));
                }
                if let Action::Detach(from) = action {
                    r = r.and_then(|()| m.detach(*from, inode.fd.as_fd()));
                }
                if let Err(e) = r {
                    // The pages cannot be kept (out of memory): refuse the
                    // access rather than let it change the snapshot.
                    eprintln!(
                        "mapcopy: guard could not copy pages before a modification ({e}); denying it"
                    );
                    result = Response::Deny(libc::EIO);
                }
            }
        };
        match key {
            Some(k) => {
                if let Some(i) = inodes.get(&k) {
                    run(i)
                }
            }
            None => inodes.values().for_each(run),
        }
        result
    }
}

fn stat_if_needed(
    action: &Action,
    stat: impl FnOnce() -> Option<rustix::fs::Stat>,
) -> Option<rustix::fs::Stat> {
    match action {
        Action::Allow => None,
        _ => stat(),
    }
}

// ---------------------------------------------------------------------------
// classification

/// What to do before allowing an event: nothing, copy these file ranges
/// (`[start, end)`, `end` may be `u64::MAX` = to the end of every mapping),
/// or (`Detach`) move everything from this offset on out of the file
/// mapping: the file may get shorter (a truncation unmaps even private
/// copies), or later stores will raise no events (a shared writable mmap).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Action {
    Allow,
    Copy(Vec<(u64, u64)>),
    Detach(u64),
}

/// Where classification looks up the writer (a trait so tests can fake it).
trait Lookup {
    fn syscall(&self, tid: i32) -> Option<Syscall>;
    fn fdinfo(&self, tid: i32, fd: u64) -> Option<FdInfo>;
    fn read_u64(&self, tid: i32, addr: u64) -> Option<u64>;
}

/// The real thing: `/proc`.
struct Proc;

impl Lookup for Proc {
    fn syscall(&self, tid: i32) -> Option<Syscall> {
        proc_pid::syscall(tid)
    }
    fn fdinfo(&self, tid: i32, fd: u64) -> Option<FdInfo> {
        proc_pid::fdinfo(tid, fd)
    }
    fn read_u64(&self, tid: i32, addr: u64) -> Option<u64> {
        proc_pid::read_u64(tid, addr)
    }
}

/// Decides what event `ev` on inode `ino` (current size `size`) needs.
/// `file` gives the inode number and current size of the file (`fstat` of
/// the event's fd; `None` if that fails), asked only when needed.
fn classify(ev: &Event, file: &dyn Fn() -> Option<(u64, u64)>, look: &dyn Lookup) -> Action {
    // `None` also for an io_uring worker or a kernel thread, whose syscall
    // line is not the request it runs (see `proc_pid::syscall`).
    let sc = look.syscall(ev.pid);
    if ev.mask & libc::FAN_OPEN_PERM != 0 {
        return classify_open(ev.pid, sc, look);
    }
    if ev.mask & FAN_PRE_ACCESS == 0 {
        // Not something we asked for; be safe.
        return Action::Detach(0);
    }
    let (start, count) = ev.range.unwrap_or((0, u64::MAX));
    let end = start.saturating_add(count);
    // Unknown: covers a write at the range, an append (at or after the
    // position) and a truncation to a size in the range.
    let unknown = Action::Detach(start);
    let Some(sc) = sc else { return unknown };
    let a = sc.args;
    let ours = |fd: u64| {
        let theirs = look.fdinfo(ev.pid, fd).map(|i| i.ino);
        match (theirs, file()) {
            (Some(t), Some((ino, _))) => t == ino,
            _ => true,
        }
    };
    // The range, and the page holding the end of the file: an O_APPEND
    // write (or pwrite on an O_APPEND fd, which appends too) lands there
    // although the event names the file position. Copying that page always
    // is cheaper than reading the fd's flags from /proc.
    let write = || match file() {
        Some((_, size)) => Action::Copy(vec![(start, end), (size.saturating_sub(1), size)]),
        None => unknown.clone(),
    };
    match sc.nr {
        libc::SYS_read
        | libc::SYS_pread64
        | libc::SYS_readv
        | libc::SYS_preadv
        | libc::SYS_preadv2
        | libc::SYS_readahead
        | libc::SYS_execve
        | libc::SYS_execveat => Action::Allow,
        // Data flows from in to out; only the out side writes.
        libc::SYS_sendfile => copy_if(ours(a[0]), (start, end)),
        libc::SYS_splice | libc::SYS_copy_file_range => copy_if(ours(a[2]), (start, end)),
        libc::SYS_write
        | libc::SYS_pwrite64
        | libc::SYS_writev
        | libc::SYS_pwritev
        | libc::SYS_pwritev2 => write(),
        libc::SYS_fallocate => {
            let mode = a[1] as i32;
            if mode & (libc::FALLOC_FL_COLLAPSE_RANGE | libc::FALLOC_FL_INSERT_RANGE) != 0 {
                // Shifts everything after the offset.
                Action::Detach(start.min(a[2]))
            } else {
                Action::Copy(vec![(start, end)])
            }
        }
        libc::SYS_ftruncate | libc::SYS_truncate => Action::Detach(start.min(a[1])),
        libc::SYS_mmap => {
            let shared = a[3] as i32 & libc::MAP_SHARED != 0;
            let writable = look.fdinfo(ev.pid, a[4]).is_none_or(|i| i.writable());
            if shared && writable {
                // Its stores will raise nothing: take everything now.
                Action::Detach(0)
            } else {
                Action::Allow
            }
        }
        libc::SYS_ioctl => {
            let req = a[1] as u32;
            if req == linux_raw_sys::ioctl::FICLONE || req == linux_raw_sys::ioctl::FICLONERANGE {
                // The ioctl's fd is the destination.
                if ours(a[0]) {
                    Action::Detach(start)
                } else {
                    Action::Allow
                }
            } else if req == linux_raw_sys::ioctl::FIDEDUPERANGE {
                Action::Copy(vec![(start, end)])
            } else {
                unknown
            }
        }
        _ => unknown,
    }
}

fn copy_if(cond: bool, range: (u64, u64)) -> Action {
    if cond {
        Action::Copy(vec![range])
    } else {
        Action::Allow
    }
}

/// `FAN_OPEN_PERM`: only `O_TRUNC` changes data at open time; every later
/// access through the new fd raises its own pre-content events.
fn classify_open(tid: i32, sc: Option<Syscall>, look: &dyn Lookup) -> Action {
    let Some(sc) = sc else {
        return Action::Detach(0);
    };
    let flags: Option<u64> = match sc.nr {
        #[cfg(target_arch = "x86_64")]
        libc::SYS_open => Some(sc.args[1]),
        #[cfg(target_arch = "x86_64")]
        libc::SYS_creat => Some(libc::O_TRUNC as u64),
        libc::SYS_openat => Some(sc.args[2]),
        libc::SYS_open_by_handle_at => Some(sc.args[2]),
        // struct open_how { __u64 flags; ... }
        libc::SYS_openat2 => look.read_u64(tid, sc.args[2]),
        libc::SYS_execve | libc::SYS_execveat => Some(0),
        _ => None,
    };
    match flags {
        Some(f) if f as i32 & libc::O_TRUNC == 0 => Action::Allow,
        _ => Action::Detach(0),
    }
}

// ---------------------------------------------------------------------------
// map

pub(crate) fn map(req: &Request<'_>) -> Result<Box<dyn Snapshot>, Error> {
    let unsupported = |why: String| Error::unsupported(Strategy::Guard, why);
    // A refusal says what `check` (and so `probe`) says.
    // (Not for Auto: the explanation costs a probe, and Auto moves on.)
    let explain = |e: Error| {
        if req.for_auto || e.kind() != crate::ErrorKind::Unsupported {
            return e;
        }
        match check(Some(req)) {
            Err(why) => unsupported(why),
            _ => e,
        }
    };
    sys::fs::shown(&sys::fs::GUARD, req.meta.fs_type).map_err(unsupported)?;
    kernel_ok().map_err(unsupported).map_err(explain)?;
    if req.meta.writable {
        return Err(unsupported(FD_WRITABLE.into()));
    }
    let g = guards().map_err(explain)?;
    let key = (req.meta.dev, req.meta.ino);
    let fd = arm(&g, req, key).map_err(explain)?;
    let result = map_armed(&g, req, key, &fd);
    {
        let mut inodes = lock(&g.inodes);
        if let Some(i) = inodes.get_mut(&key) {
            i.pending -= 1;
        }
        release_if_unused(&g, &mut inodes, key);
    }
    result
}

/// Makes sure the inode carries the group's mark; returns our fd of it.
/// Counts as a pending `map` until [`map`] decrements it.
fn arm(g: &Arc<Guards>, req: &Request<'_>, key: (u64, u64)) -> Result<Arc<OwnedFd>, Error> {
    if let Some(i) = lock(&g.inodes).get_mut(&key) {
        i.pending += 1;
        return Ok(i.fd.clone());
    }
    // A file an overlay writes through (its upper layer) escapes the
    // guard: checked once per armed inode.
    if let Some(why) = sys::overlay::refusal(req.file, req.meta.dev, sys::overlay::Escape::Guard) {
        return Err(Error::unsupported(Strategy::Guard, why));
    }
    // Opened before the mark exists, so it is unarmed: mapping and leasing
    // through it raise no events of our own.
    let fd = reopen(req.file).map_err(|e| Error::io("re-opening the file read-only", e))?;
    let mut inodes = lock(&g.inodes);
    if g.dead.load(Ordering::Acquire) {
        return Err(Error::unsupported(
            Strategy::Guard,
            "the guard thread failed; map again",
        ));
    }
    if let Some(i) = inodes.get_mut(&key) {
        i.pending += 1;
        return Ok(i.fd.clone());
    }
    g.group.mark_inode(fd.as_fd(), MASK, false).map_err(|e| {
        let why = format!(
            "{} refuses pre-content fanotify marks ({e})",
            file::fs_name(req.meta.fs_type)
        );
        if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) {
            // The filesystem's answer: remembered for Auto by st_dev.
            lock(&FS_REFUSED)
                .get_or_insert_with(HashMap::new)
                .insert(req.meta.dev, why.clone());
        }
        Error::unsupported(Strategy::Guard, why)
    })?;
    let fd = Arc::new(fd);
    inodes.insert(
        key,
        Inode {
            _kept: crate::fds::Kept::new(),
            fd: fd.clone(),
            maps: Vec::new(),
            pending: 1,
        },
    );
    Ok(fd)
}

/// Drops the inode's entry and mark when nothing uses them any more.
fn release_if_unused(g: &Guards, inodes: &mut HashMap<(u64, u64), Inode>, key: (u64, u64)) {
    let unused = inodes
        .get(&key)
        .is_some_and(|i| i.maps.is_empty() && i.pending == 0);
    if unused {
        let i = inodes.remove(&key).expect("present");
        if !g.dead.load(Ordering::Acquire) {
            let _ = g.group.mark_inode(i.fd.as_fd(), MASK, true);
        }
    }
}

fn map_armed(
    g: &Arc<Guards>,
    req: &Request<'_>,
    key: (u64, u64),
    fd: &Arc<OwnedFd>,
) -> Result<Box<dyn Snapshot>, Error> {
    let page = sys::page_size() as u64;
    let map_len = req.map_len();
    for _ in 0..MAP_RETRIES {
        let size = rustix::fs::fstat(&**fd)
            .map_err(|e| Error::io("inspecting the file (fstat)", e))?
            .st_size as u64;
        let file_len = file_part(req.offset, map_len, size, page);
        let m = Arc::new(make_region(fd, req.offset, map_len, file_len)?);
        {
            let mut inodes = lock(&g.inodes);
            if g.dead.load(Ordering::Acquire) {
                return Err(Error::unsupported(
                    Strategy::Guard,
                    "the guard thread failed; map again",
                ));
            }
            inodes
                .get_mut(&key)
                .expect("armed inode")
                .maps
                .push(m.clone());
        }
        let unregister = || {
            let mut inodes = lock(&g.inodes);
            if let Some(i) = inodes.get_mut(&key) {
                i.maps.retain(|x| !Arc::ptr_eq(x, &m));
            }
        };
        // From here every modification raises an event that copies into
        // `m` first. Prove that none is already under way or possible
        // unseen: any in-flight write, truncate or O_TRUNC open, and any
        // fd opened for writing before the mark, holds write access.
        match lease_probe(fd.as_fd(), !req.for_auto) {
            Ok(LeaseProbe::NoWriter) => {}
            Ok(LeaseProbe::WriterExists) => {
                unregister();
                return Err(Error::unsupported(Strategy::Guard, WRITER_OPEN));
            }
            Err(e) => {
                unregister();
                return Err(Error::unsupported(
                    Strategy::Guard,
                    format!("cannot prove that no writer holds the file open (read lease: {e})"),
                ));
            }
        }
        // A shrink that completed between the fstat and the lease would
        // leave file pages of `m` past the end (SIGBUS): map again.
        let now = rustix::fs::fstat(&**fd)
            .map_err(|e| Error::io("inspecting the file (fstat)", e))?
            .st_size as u64;
        if file_part(req.offset, map_len, now, page) < file_len {
            unregister();
            continue;
        }
        if req.writable {
            // The owner's stores would land in private pages of a file
            // mapping, which a truncation by anybody throws away (even
            // private copies are unmapped). So a writable mapping takes all
            // of the file's data into anonymous memory now (holes cost
            // nothing), while the guard still holds writers off, and then
            // needs no guard.
            let mut inodes = lock(&g.inodes);
            let r = m.detach(0, fd.as_fd());
            if let Some(i) = inodes.get_mut(&key) {
                i.maps.retain(|x| !Arc::ptr_eq(x, &m));
            }
            drop(inodes);
            r.map_err(|e| Error::io("copying the file into private memory", e))?;
        } else if req.populate {
            // Under the lock: the guard thread may be detaching this mapping.
            let r = {
                let _inodes = lock(&g.inodes);
                m.copy_all(fd.as_fd())
            };
            if let Err(e) = r {
                unregister();
                return Err(Error::io("populating the mapping", e));
            }
        }
        return Ok(Box::new(Guard {
            guards: g.clone(),
            key,
            map: Some(m),
            head: req.head,
            len: req.len,
        }));
    }
    Err(Error::unsupported(
        Strategy::Guard,
        "the file kept shrinking while it was being mapped",
    ))
}

/// Reserves `map_len` bytes and maps the first `file_len` of them
/// privately onto the file at `offset` ([`Region::file_head`]).
fn make_region(
    fd: &OwnedFd,
    offset: u64,
    map_len: usize,
    file_len: usize,
) -> Result<Mapping, Error> {
    let rw = ProtFlags::READ | ProtFlags::WRITE;
    let region = Region::file_head(fd, offset, file_len, map_len, rw, true, sys::page_size())
        .map_err(|e| Error::io("mapping the file (mmap MAP_PRIVATE)", e))?;
    finish_region(region, offset, file_len)
}

/// Marks `region` not to be inherited and wraps it.
fn finish_region(region: Region, offset: u64, file_len: usize) -> Result<Mapping, Error> {
    // A child made by fork() would get file pages nobody guards for it.
    region
        .advise(0, region.len(), Advice::DontFork)
        .map_err(|e| Error::io("madvise(MADV_DONTFORK)", e))?;
    Ok(Mapping {
        region,
        offset,
        file_len: AtomicUsize::new(file_len),
        copied: Mutex::new(Vec::new()),
        inherited: AtomicBool::new(false),
    })
}

/// The snapshot handed to `MapCopy`.
struct Guard {
    guards: Arc<Guards>,
    key: (u64, u64),
    map: Option<Arc<Mapping>>,
    head: usize,
    len: usize,
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("map", &self.map)
            .field("head", &self.head)
            .field("len", &self.len)
            .finish()
    }
}

impl Guard {
    fn mapping(&self) -> &Mapping {
        self.map.as_ref().expect("mapping present until drop")
    }
}

// SAFETY: (`Snapshot`'s promises) the span is `[head, head + len)` of the
// mapping's region, which is never remapped elsewhere: `Mapping::detach`
// moves its anonymous copy over the same range (`Region::move_into`,
// `mremap(MREMAP_FIXED)` onto `region.as_ptr() + off`),
// `Mapping::copy_pages` maps zeros `MAP_FIXED` at the same page
// (`Region::zero`), and the fork handler (`prepare_fork`) detaches the same
// way, so the address is fixed for the value's life, in the parent and in a
// forked child (which inherits the detached region as it is). Contents:
// every page is either anonymous (private from the start), already a
// private copy, or the page cache's page of a file that nobody can modify
// without first raising a fanotify event that this process answers only
// after copying that page into this mapping (or, if the guard thread fails,
// after copying every page); each of those steps replaces pages with the
// same bytes. No writer held the file open when the mapping was registered
// (read lease). Reads never fault fatally: before any truncation is
// allowed, the pages it could remove are detached into anonymous memory.
// map_mut snapshots are all anonymous, read-write memory, detached from
// the file and unregistered before `map` returned, so the guard thread
// never touches them; only the `MapCopyMut` writes them.
unsafe impl Snapshot for Guard {
    fn strategy(&self) -> Strategy {
        Strategy::Guard
    }

    fn span(&self) -> Span {
        self.mapping().region.span(self.head, self.len)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let Some(m) = self.map.take() else { return };
        if self.guards.pid != rustix::process::getpid() {
            // A forked child. An inheritable mapping was detached before the
            // fork and is this child's own memory: unmap it (no lock: one may
            // have been held by a parent thread at the fork). Any other was
            // not inherited (MADV_DONTFORK) and its address may be reused:
            // touch nothing.
            if m.inherited.load(Ordering::Acquire) {
                drop(m);
            } else {
                std::mem::forget(m);
            }
            return;
        }
        let mut inodes = lock(&self.guards.inodes);
        if let Some(i) = inodes.get_mut(&self.key) {
            i.maps.retain(|x| !Arc::ptr_eq(x, &m));
        }
        release_if_unused(&self.guards, &mut inodes, self.key);
        drop(inodes);
        drop(m);
    }
}

#[cfg(test)]
mod tests;
