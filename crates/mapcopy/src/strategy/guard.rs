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
//!
//! Layout: `classify` (what the task behind an event is about to do, and
//! so what to copy or detach first), `group` (the per-process group, the
//! guarded mappings, the guard thread, detach before a truncation or a
//! fork, shutdown), and here: the checks, `map`, the snapshot.
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
use crate::sys::fanotify::{Event, FAN_PRE_ACCESS, Group, InitFlags, Response};
use crate::sys::lease::{LeaseProbe, try_read_lease};
use crate::sys::mmap::{Advice, HUGE_PAGE, Region, file_part};
use crate::sys::proc_pid::{self, FdInfo, Syscall};
use crate::sys::{self, detect, file};
use crate::watcher;

/// Events the guard asks for on every guarded inode.
const MASK: u64 = FAN_PRE_ACCESS | libc::FAN_OPEN_PERM;

/// `fanotify_init` flags beyond a group's own (permission events before
/// content access, read-only event fds): tids in events (the syscall of the
/// *thread* is what tells read from write), never drop or limit (an
/// overflowed permission event would be lost).
const INIT_FLAGS: InitFlags = InitFlags::REPORT_TID
    .union(InitFlags::UNLIMITED_QUEUE)
    .union(InitFlags::UNLIMITED_MARKS);

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

mod classify;
mod group;

use classify::*;
use group::*;

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
