//! `Lease`: a read lease (`F_SETLEASE`, `F_RDLCK`) over a private mapping of
//! the file; when a writer opens the file, snapshot the range before its
//! `open` returns.
//!
//! While the lease is held nobody has the file open for writing: the kernel
//! grants a read lease only then, and makes every later `open` for writing
//! (with or without `O_TRUNC`) and `truncate(2)` of a path wait until the
//! holder releases it (an `O_NONBLOCK` open fails with `EAGAIN` instead, and
//! succeeds once the snapshot is taken; but see `O_RDONLY | O_TRUNC` below). So until a writer appears the mapping shares the page cache — nothing
//! copied, nothing reserved — and its bytes are the file's bytes at map time.
//!
//! When a writer appears the kernel signals the watcher thread (the
//! lease-break signal, see below, with `si_fd` naming our fd). The watcher
//! then, still holding the lease:
//!
//! 1. where the filesystem clones (xfs with reflink, btrfs, ...): clones the
//!    file (`FICLONE`) into an unlinked `O_TMPFILE` on the same mount and
//!    maps the clone over the range with `MAP_FIXED` (no data copied);
//! 2. elsewhere (ext4, tmpfs, ...): reads the range into fresh anonymous
//!    memory and moves it over the range with `mremap(MREMAP_FIXED)`.
//!    (Not `MADV_POPULATE_WRITE` on the file mapping: its private copies
//!    would still belong to a mapping of the file, and `truncate` discards
//!    even the private copies of a file mapping beyond the new end — a
//!    later access then raises SIGBUS.)
//!
//! Both replace the mapping in one step with the same bytes, so a thread
//! reading meanwhile sees no change; then the watcher releases the lease
//! (`F_UNLCK`) and the writer's `open` returns. The mapping no longer refers
//! to the file at all.
//!
//! **Retaking the lease** after the writer closes: not done. After a break
//! the mapping is complete and independent of the file; a new lease could
//! only be used to drop the snapshot in favour of the page cache again, and
//! the file has (most likely) been changed by then.
//!
//! **The signal.** A realtime signal, `SIGRTMIN+11` unless the environment
//! variable `MAPCOPY_LEASE_SIGNAL` names another (`RTMIN+n`, `RTMAX-n` or a
//! number), read once per process. Its handler is installed on first use
//! only if the signal's disposition is the default; if the application has
//! a handler for it, `Lease` is `Unsupported` and says which signal and how
//! to pick another (no replacing, no chaining). The handler only writes
//! `si_fd` to a pipe the watcher thread reads; notifications are aimed at
//! the watcher thread alone (`F_SETOWN_EX`), which blocks every other
//! asynchronous signal, so application threads see no `EINTR` from us.
//! Should the signal be lost anyway (the application replaces our handler
//! later; the realtime queue overflows), the watcher also asks every held
//! lease once a second (`F_GETLEASE`) whether it is being broken: the writer
//! then waits about a second, and the snapshot is still taken first.
//!
//! **`map_mut`**: snapshotted at map time, under the lease (clone where the
//! filesystem clones, else a copy), and the lease released before `map_mut`
//! returns. Waiting for a break is not possible for a writable mapping: a
//! file mapping's private pages are discarded by `truncate`, and replacing
//! them on a break would race the owner's own concurrent stores.
//!
//! **Unsupported** (said before mapping): the fd passed in is open for
//! writing; any writer has the file open or mapped shared-writable
//! (`EAGAIN`, after retrying for up to 127 ms: a writable fd just closed can
//! live on briefly in a child another thread is forking); not the file's owner and no `CAP_LEASE`
//! (`EACCES`); a filesystem without leases (`EINVAL`), or leases disabled
//! (`fs.leases-enable = 0`); the lease-break signal taken by the
//! application; no reflink and not enough memory to copy the range when a
//! writer comes.
//!
//! **Limits** (properties this strategy lacks):
//!
//! * **`open(O_RDONLY | O_TRUNC)`**: Linux truncates on such an open (given
//!   write permission) but breaks leases only for opens whose access mode
//!   is write (`__break_lease` looks at `O_ACCMODE`), so this open truncates
//!   under a read lease without notice: the mapping's pages past the new
//!   end fault with SIGBUS, as with plain `MAP_PRIVATE` (measured on Linux
//!   6.18, ext4; `tests/zerocopy.rs` asserts it). No lease can prevent it;
//!   `Reflink` (a clone) and the copying strategies are immune.
//! * The kernel waits for a lease holder only `fs.lease-break-time` seconds
//!   (45 by default). The watcher answers in milliseconds (a reflink clone)
//!   or at the speed of a copy from the page cache (the `fs::read` and THP
//!   copy rows of `mapcopy bench`'s full-scan table; runs are recorded in
//!   the repository's `bench-results/`); but a
//!   process that is stopped (SIGSTOP, a debugger) or frozen longer than
//!   that lets the writer through before its snapshot is taken: the
//!   mapping then shows the write (`tests/stopped.rs` shows it for all
//!   three ways to stop a process, with the writer's wait bounded by the
//!   sysctl).
//! * `fork()`: a child has no watcher to serve a break, so before libc's
//!   `fork()` every leased mapping is snapshotted as on a break (a clone
//!   where the filesystem clones, else a copy of the range) and its lease
//!   released (see `crate::fork`); the child inherits the snapshot. The
//!   copy is paid at the first fork, not per page.
//! * Without reflink, a break costs a copy of the whole mapped range,
//!   paid before the writer's `open` returns; many mappings of one file each
//!   pay it.
//!
//! **Read errors** (`EIO`): with `populate`, `map` reads every page and
//! returns an `Io` error; otherwise a page whose data cannot be read raises
//! SIGBUS when touched, as in any file mapping — and if a writer comes
//! first, the copy made on the break cannot read it either (below).
//!
//! If the watcher thread fails, every lease is snapshotted and released
//! (`Source::shutdown`); if a snapshot cannot be made at all (no memory, a
//! read error in the copy), the process aborts with a message rather than
//! let a writer change a mapping.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::fs::File;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use rustix::fs::{Mode, OFlags};
use rustix::mm::{MprotectFlags, ProtFlags};
use rustix::process::Pid;

use super::{Request, Snapshot, Span, Strategy};
use crate::Error;
use crate::sys::clone::{CloneDir, CloneError};
use crate::sys::file::{fs_name, read_full};
use crate::sys::lease::{self, Lease};
use crate::sys::mmap::{Advice, HUGE_PAGE, Region};
use crate::sys::overlay;
use crate::sys::{procfs, signal};
use crate::watcher::{self, Registration, Source};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn check(req: Option<&Request<'_>>) -> Result<String, String> {
    if !lease::leases_enabled() {
        return Err("leases are disabled on this machine (/proc/sys/fs/leases-enable is 0)".into());
    }
    let sig = signal::status()?;
    let Some(req) = req else {
        return Ok(format!(
            "read leases enabled (a holder must answer a break within {} s); {sig}; \
             per file it needs the owner or CAP_LEASE and no writer; {}",
            lease::break_time().map_or("?".into(), |t| t.to_string()),
            crate::sys::fs::holds_on(&crate::sys::fs::LEASE)
        ));
    };
    static_checks(req)?;
    if let Some(why) = overlay::refusal(req.file, req.meta.dev, overlay::Escape::Lease) {
        return Err(why);
    }
    // Try it: the only reliable test for writers, permission and
    // filesystem support. The lease is released at once.
    let (signo, _) = signal::install()?;
    let file = reopen(req)?;
    lease::set_signal(&file, signo).map_err(|e| format!("F_SETSIG failed: {e}"))?;
    // No retry on EAGAIN here (unlike `map`): `Auto` asks this for every
    // file, often ones a writer holds open; a transient writer just makes
    // it pick the next strategy.
    lease::set_lease(&file, Lease::Read).map_err(|e| refusal(e, req))?;
    let _ = lease::set_lease(&file, Lease::Unlock);
    let plan = plan(req)?;
    Ok(format!(
        "no writer has the file open; {}; {sig}; {}",
        describe_plan(&plan, req),
        crate::sys::fs::holds_on(&crate::sys::fs::LEASE)
    ))
}

/// `Auto`'s pre-check: what needs no syscall (the fd passed in is not
/// writable; owner or `CAP_LEASE`, capabilities read once per process).
/// Whether a writer holds the file open is `map`'s to find out.
pub(crate) fn pre_check(req: &Request<'_>) -> Result<(), String> {
    static_checks(req)?;
    let euid = rustix::process::geteuid().as_raw();
    if euid != req.meta.uid && !super::auto::caps().lease {
        return Err(format!(
            "a read lease needs the file's owner (uid {}) or CAP_LEASE; this process is uid {euid} without CAP_LEASE",
            req.meta.uid
        ));
    }
    Ok(())
}

/// The first pause of [`transient`].
const FIRST_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);

/// `F_SETLEASE` failed with `e`: worth another try after a pause? EAGAIN can
/// be transient: a writable fd its owner closed may live on for a moment in
/// a child another thread is forking (until the child's exec closes it).
/// Pauses 1, 2, 4, ... 64 ms (127 ms in all) before calling it a writer
/// (only `map` retries: a named strategy's refusal is an error for the
/// caller, and Auto's `check` has already seen no writer).
fn transient(e: &std::io::Error, pause: &mut std::time::Duration) -> bool {
    if e.raw_os_error() != Some(libc::EAGAIN) || pause.as_millis() > 64 {
        return false;
    }
    std::thread::sleep(*pause);
    *pause *= 2;
    true
}

/// Refusals that need no syscall.
fn static_checks(req: &Request<'_>) -> Result<(), String> {
    crate::sys::fs::shown(&crate::sys::fs::LEASE, req.meta.fs_type)?;
    if req.meta.writable {
        return Err(
            "this process holds the file open for writing (the fd passed in is writable); \
             a read lease needs no writer anywhere, this process included"
                .into(),
        );
    }
    Ok(())
}

/// Why `F_SETLEASE` refused, for a user.
fn refusal(e: std::io::Error, req: &Request<'_>) -> String {
    match e.raw_os_error() {
        Some(libc::EAGAIN) => "the file is open for writing (by this or another process, or \
             mapped shared-writable); a read lease can only be taken while nobody has it open for \
             writing (F_SETLEASE: EAGAIN)"
            .into(),
        Some(libc::EACCES) => format!(
            "this process (uid {}) is not the file's owner (uid {}) and lacks CAP_LEASE \
             (F_SETLEASE: EACCES)",
            rustix::process::geteuid().as_raw(),
            req.meta.uid
        ),
        Some(libc::EINVAL) if !lease::leases_enabled() => {
            "leases are disabled on this machine (/proc/sys/fs/leases-enable is 0)".into()
        }
        Some(libc::EINVAL) => format!(
            "{} does not support leases (F_SETLEASE: EINVAL)",
            fs_name(req.meta.fs_type)
        ),
        _ => format!("F_SETLEASE failed: {e}"),
    }
}

/// A new read-only open file of the same inode (our own open file
/// description: the lease belongs to it, not to the caller's fd).
fn reopen(req: &Request<'_>) -> Result<File, String> {
    let fd = rustix::fs::open(
        format!("/proc/self/fd/{}", req.file.as_raw_fd()),
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map_err(|e| format!("cannot reopen the file read-only for a lease of its own: {e}"))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| format!("fstat: {e}"))?;
    if st.st_dev != req.meta.dev || st.st_ino != req.meta.ino {
        return Err("reopening the file through /proc/self/fd gave another file".into());
    }
    Ok(File::from(fd))
}

/// How a break will be snapshotted: a clone directory, or `None` for a copy
/// (then the range must fit in memory).
fn plan(req: &Request<'_>) -> Result<Option<CloneDir>, String> {
    match CloneDir::find(req.file, req.meta.fs_type) {
        Ok(dir) => Ok(Some(dir)),
        Err(no_clone) => {
            let len = req.map_len() as u64;
            // Free memory and swap (sysinfo, one syscall) understate what is
            // available (no reclaimable page cache): when the range fits in
            // them, skip reading /proc/meminfo.
            let si = rustix::system::sysinfo();
            let unit = u64::from(si.mem_unit.max(1));
            let free = (si.freeram as u64).saturating_add(si.freeswap as u64) * unit;
            if len <= free {
                return Ok(None);
            }
            match procfs::memory_available() {
                Some(avail) if len > avail => Err(format!(
                    "when a writer comes the whole range ({len} bytes) must be copied ({no_clone}), \
                     and only {avail} bytes of memory are available"
                )),
                _ => Ok(None),
            }
        }
    }
}

fn describe_plan(plan: &Option<CloneDir>, req: &Request<'_>) -> String {
    match plan {
        Some(dir) => format!(
            "a writer's open waits for a reflink clone (in {})",
            dir.path().display()
        ),
        None => format!(
            "a writer's open waits for a copy of the range ({} bytes; {} has no reflink here)",
            req.map_len(),
            fs_name(req.meta.fs_type)
        ),
    }
}

pub(crate) fn map(req: &Request<'_>) -> Result<Box<dyn Snapshot>, Error> {
    let unsupported = |why: String| Error::unsupported(Strategy::Lease, why);
    // (fs.leases-enable = 0 shows as EINVAL from F_SETLEASE; `refusal` says
    // so. Not read here: every map would pay for reading /proc.)
    static_checks(req).map_err(unsupported)?;
    // A file an overlay truncates through (its upper layer) escapes the
    // lease. One poll unless the filesystem holds an upper layer.
    if let Some(why) = overlay::refusal(req.file, req.meta.dev, overlay::Escape::Lease) {
        return Err(unsupported(why));
    }
    let (signo, breaks) = signal::install().map_err(unsupported)?;
    crate::fork::on_prepare(prepare_fork)
        .map_err(|e| Error::io("registering the fork handler", e))?;
    let plan = plan(req).map_err(unsupported)?;
    let file = reopen(req).map_err(unsupported)?;
    lease::set_signal(&file, signo).map_err(|e| Error::io("F_SETSIG", e))?;

    // Hold the table from taking the lease until the entry is in it: the
    // watcher looks breaks up in the table, so it waits for us.
    let mut pause = FIRST_PAUSE;
    let (mut table, tid, stale) = loop {
        let mut table = lock(&TABLE);
        let (tid, stale) = ensure_source(&mut table, breaks.clone())?;
        match lease::set_lease(&file, Lease::Read) {
            Ok(()) => break (table, tid, stale),
            Err(e) => {
                drop(table);
                // Dropped only after unlocking: dropping a registration
                // waits for the watcher's callback in progress, which may be
                // ours waiting for the table.
                drop(stale);
                // Auto does not wait out a writer: the next strategy can map.
                if !req.for_auto && transient(&e, &mut pause) {
                    continue;
                }
                return Err(unsupported(refusal(e, req)));
            }
        }
    };
    let unlock = |table: MutexGuard<'_, Option<Table>>| {
        drop(table);
        drop(stale);
    };
    let made = (|| -> Result<Entry, Error> {
        lease::set_owner_thread(&file, tid).map_err(|e| Error::io("F_SETOWN_EX", e))?;
        // Stable while the lease is held.
        let size = rustix::fs::fstat(&file)
            .map_err(|e| Error::io("fstat", e))?
            .st_size as u64;
        let len = req.map_len();
        let page = crate::sys::page_size();
        let in_file = size.saturating_sub(req.offset);
        let file_len = if in_file >= len as u64 {
            len
        } else {
            (in_file as usize).div_ceil(page) * page
        };
        // The file covers the whole range: map it directly (one mmap
        // instead of a reservation, its trimming and an overlay) when the
        // kernel places it as the reservation would (huge-page aligned, as
        // ext4 and xfs do for large mappings), or when alignment cannot
        // matter (less than a huge page). The file cannot shrink while our
        // lease is held (same argument as the overlay below).
        let direct = if file_len == len {
            match Region::file_private(&file, req.offset, len, prot(req.writable), true) {
                Ok(r) if len < HUGE_PAGE || (r.as_ptr() as usize).is_multiple_of(HUGE_PAGE) => {
                    Some(r)
                }
                _ => None,
            }
        } else {
            None
        };
        let region = match direct {
            Some(r) => r,
            None => overlaid(&file, req, len, file_len)?,
        };
        // A child must not inherit a mapping only our lease keeps stable.
        region
            .advise(0, region.len(), Advice::DontFork)
            .map_err(|e| Error::io("madvise(MADV_DONTFORK)", e))?;
        Ok(Entry {
            region,
            file_len,
            offset: req.offset,
            size,
            fs_type: req.meta.fs_type,
            writable: req.writable,
            key: file.as_raw_fd(),
            pid: rustix::process::getpid(),
            abandoned: AtomicBool::new(false),
            inherited: AtomicBool::new(false),
            _kept: crate::fds::Kept::new(),
            state: Mutex::new(State {
                file: None,
                clones: false,
            }),
        })
    })();
    let entry = match made {
        Ok(e) => e,
        Err(err) => {
            let _ = lease::set_lease(&file, Lease::Unlock);
            unlock(table);
            return Err(err);
        }
    };
    let key = entry.key;
    {
        let mut st = lock(&entry.state);
        st.file = Some(file);
        st.clones = plan.is_some();
    }
    let entry = Arc::new(entry);
    let poll = table.as_mut().map(|t| {
        t.entries.insert(key, Arc::downgrade(&entry));
        t.poll.clone()
    });
    unlock(table);
    if let Some(p) = poll {
        p.arm();
    }
    if req.populate || req.writable {
        // Every page's snapshot now: do what a break would, release. For
        // map_mut always (see the module docs). Nobody has the mapping yet,
        // so a failure is an error for the caller, not an abort.
        if let Err(why) = entry.try_resolve(false) {
            entry.release_now();
            return Err(Error::io("taking the snapshot", std::io::Error::other(why)));
        }
    }
    if req.populate {
        // A clone's pages come from disk.
        super::populate(&entry.region, entry.file_len)?;
    }
    Ok(Box::new(LeaseMap {
        entry: ManuallyDrop::new(entry),
        head: req.head,
        len: req.len,
    }))
}

/// One leased mapping, shared by its [`LeaseMap`] and the watcher.
#[derive(Debug)]
struct Entry {
    /// The mapping: the file's pages `[0, file_len)`, anonymous zeros after.
    region: Region,
    file_len: usize,
    /// File offset of the region's first byte.
    offset: u64,
    /// File size at map time (unchanged while leased).
    size: u64,
    fs_type: i64,
    /// For `map_mut`: mapped read-write (and snapshotted at map time).
    writable: bool,
    /// Our lease fd's number: what `si_fd` says.
    key: RawFd,
    /// The process that made it (a forked child must not touch it).
    pid: Pid,
    /// Its `LeaseMap` is being dropped: release, don't snapshot.
    abandoned: AtomicBool,
    /// Snapshotted and inheritable: a forked child owns its copy of the
    /// region.
    inherited: AtomicBool,
    /// Counts our lease fd among the fds live mappings keep.
    _kept: crate::fds::Kept,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Our open file holding the lease; `None` once released.
    file: Option<File>,
    /// Clone on a break (else copy). The clone directory is looked up
    /// again then (remembered per mount, so a reopen): holding its `O_PATH`
    /// fd here would keep a second fd per mapping.
    clones: bool,
}

impl Entry {
    /// Snapshots the range (unless abandoned) and releases the lease. With
    /// `only_if_breaking`, does nothing if the lease is held and not being
    /// broken (a stale or spurious notification).
    fn resolve(&self, only_if_breaking: bool) {
        if let Err(why) = self.try_resolve(only_if_breaking) {
            eprintln!(
                "mapcopy: cannot snapshot a Lease mapping before releasing its lease ({why}); \
                 aborting rather than let a writer change mapped bytes"
            );
            std::process::abort();
        }
    }

    /// Releases the lease without a snapshot (the mapping is going away).
    fn release_now(&self) {
        let mut st = lock(&self.state);
        if let Some(file) = st.file.take() {
            let _ = lease::set_lease(&file, Lease::Unlock);
        }
        st.clones = false;
    }

    /// As `resolve`, but a failed snapshot is returned (the lease is then
    /// still held) instead of aborting.
    fn try_resolve(&self, only_if_breaking: bool) -> Result<(), String> {
        let mut st = lock(&self.state);
        let Some(file) = st.file.as_ref() else {
            return Ok(());
        };
        if only_if_breaking && matches!(lease::get_lease(file), Ok(Lease::Read)) {
            return Ok(());
        }
        if !self.abandoned.load(Ordering::Acquire) {
            self.snapshot(file, st.clones)?;
        }
        // Snapshotted, the whole mapping is independent of the file: a
        // forked child may inherit it (the clone or copy came without
        // MADV_DONTFORK; the rest of the region gets the same).
        if !self.abandoned.load(Ordering::Acquire)
            && self
                .region
                .advise(0, self.region.len(), Advice::DoFork)
                .is_ok()
        {
            self.inherited.store(true, Ordering::Release);
        }
        let _ = lease::set_lease(file, Lease::Unlock);
        st.file = None;
        st.clones = false;
        Ok(())
    }

    /// Replaces `[0, file_len)` with a private snapshot of the same bytes.
    /// Called with the lease held.
    fn snapshot(&self, file: &File, clones: bool) -> Result<(), String> {
        if self.file_len == 0 {
            return Ok(());
        }
        let mut note = String::new();
        let dir = match clones.then(|| CloneDir::find(file, self.fs_type)) {
            Some(Ok(dir)) => Some(dir),
            Some(Err(why)) => {
                note = format!("no clone directory: {why}; ");
                None
            }
            None => None,
        };
        if let Some(dir) = dir {
            match dir.clone_file(file, self.fs_type) {
                Ok(clone) => {
                    let size = rustix::fs::fstat(&clone).map(|s| s.st_size as u64);
                    if size.as_ref().is_ok_and(|&s| s == self.size) {
                        // SAFETY: the clone was made under our lease, so it
                        // holds exactly the bytes the file (and so the
                        // mapping) holds, and is as long as the file was at
                        // map time; nobody else can reach it (unlinked
                        // O_TMPFILE, fd closed when this returns; the mapping
                        // keeps it). MAP_FIXED swaps the pages in one step
                        // under the mmap lock, so concurrent readers see the
                        // same bytes throughout.
                        match unsafe {
                            self.region.overlay_file(
                                0,
                                self.file_len,
                                &clone,
                                self.offset,
                                prot(self.writable),
                                self.writable,
                            )
                        } {
                            Ok(()) => return Ok(()),
                            Err(e) => note = format!("mapping the clone failed: {e}; "),
                        }
                    } else {
                        note = format!("the clone's size is {size:?}, not {}; ", self.size);
                    }
                }
                Err(CloneError::Unsupported(why)) | Err(CloneError::Io(why, _)) => {
                    note = format!("clone failed: {why}; ")
                }
            }
        }
        let len = self.file_len;
        let mut copy = Region::anonymous(len, ProtFlags::READ | ProtFlags::WRITE, false, HUGE_PAGE)
            .map_err(|e| format!("{note}allocating {len} bytes for the copy: {e}"))?;
        let _ = copy.advise(0, len, Advice::Hugepage);
        // SAFETY: fresh anonymous memory, borrowed exclusively here.
        let buf = unsafe { copy.as_mut_slice(0, len) };
        read_full(file, buf, self.offset).map_err(|(at, e)| {
            let e = std::io::Error::from(e);
            format!("{note}reading the file at offset {at}: {e}")
        })?;
        if !self.writable {
            // SAFETY: the slice `read_full` filled is gone and nothing else
            // borrows the fresh copy, so no reference loses write access.
            unsafe { copy.protect(0, len, MprotectFlags::READ) }
                .map_err(|e| format!("{note}mprotect: {e}"))?;
        }
        // SAFETY: `copy` holds the file's bytes read under our lease — the
        // bytes the mapping shows (bytes past the end of the file in the last
        // page are zero in both). mremap swaps the pages in one step under
        // the mmap lock.
        unsafe { copy.move_into(&self.region, 0) }.map_err(|e| format!("{note}mremap: {e}"))
    }
}

/// Protection of a mapping made for `map_mut` (`writable`) or `map`.
/// A huge-page aligned reservation of `len` bytes whose first `file_len`
/// map the file privately.
fn overlaid(file: &File, req: &Request<'_>, len: usize, file_len: usize) -> Result<Region, Error> {
    // The file holds bytes up to the last partial page of `file_len`
    // (completed with zeros by the kernel) and cannot shrink while our
    // lease is held; after the lease is gone this part is replaced (see
    // `Entry::resolve`).
    let prot = prot(req.writable);
    Region::file_head(file, req.offset, file_len, len, prot, true, HUGE_PAGE).map_err(|e| {
        Error::io(
            format!("mapping the file over {len} bytes of address space"),
            e,
        )
    })
}

fn prot(writable: bool) -> ProtFlags {
    if writable {
        ProtFlags::READ | ProtFlags::WRITE
    } else {
        ProtFlags::READ
    }
}

/// The mapping handed to the user.
#[derive(Debug)]
struct LeaseMap {
    entry: ManuallyDrop<Arc<Entry>>,
    head: usize,
    len: usize,
}

// SAFETY: (`Snapshot`'s promises) the span is `[head, head + len)` of the
// entry's region, which is never remapped elsewhere: a break (or the fork
// handler, `prepare_fork`, which does the same) replaces `[0, file_len)` in
// place, by mapping the clone `MAP_FIXED` over it (`Region::overlay_file`)
// or moving the copy onto it (`Region::move_into`, `mremap(MREMAP_FIXED)`),
// so the address is fixed for the value's life, in the parent and in a
// forked child. Contents: until the lease is released the region's first
// `file_len` bytes map the file privately while the kernel guarantees that
// no one has it open for writing (a read lease exists only then, and any
// open for writing, O_TRUNC open or truncate(2) waits for the lease to go),
// so its bytes cannot change and it cannot shrink (no SIGBUS). The lease is
// released only after `Entry::resolve` replaced that part with a private
// snapshot of the same bytes (clone or copy) — or after this value is gone
// (drop). The rest of the region is anonymous zeros. map_mut requests are
// mapped read-write and snapshotted before `map` returned (clone or copy,
// lease released), so only the `MapCopyMut` writes them; the watcher no
// longer touches a released entry. Others are read-only.
unsafe impl Snapshot for LeaseMap {
    fn strategy(&self) -> Strategy {
        Strategy::Lease
    }

    fn span(&self) -> Span {
        self.entry.region.span(self.head, self.len)
    }
}

impl Drop for LeaseMap {
    fn drop(&mut self) {
        // SAFETY: taken once, here; `self.entry` is not used afterwards.
        let entry = unsafe { ManuallyDrop::take(&mut self.entry) };
        if entry.pid != rustix::process::getpid() {
            // A forked child's copy of this value. Snapshotted before the
            // fork, the region is the child's own (the lease was released):
            // unmap it with the last reference, taking no lock (a parent
            // thread may have held one at the fork). Otherwise it was not
            // inherited (DONTFORK; its address may now hold something else)
            // and the lease is the parent's: touch nothing.
            if entry.inherited.load(Ordering::Acquire) {
                drop(entry);
            } else {
                std::mem::forget(entry);
            }
            return;
        }
        entry.abandoned.store(true, Ordering::Release);
        if let Some(t) = lock(&TABLE).as_mut().filter(|t| t.pid == entry.pid) {
            let ours = t
                .entries
                .get(&entry.key)
                .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(&entry)));
            if ours {
                t.entries.remove(&entry.key);
            }
        }
        // Release at once, so a writer waiting on this lease goes on now; if
        // the watcher is resolving it this waits for that (bounded).
        {
            let mut st = lock(&entry.state);
            if let Some(file) = st.file.take() {
                let _ = lease::set_lease(&file, Lease::Unlock);
            }
            st.clones = false;
        }
        // The region goes with the last reference (ours, or the watcher's
        // if it is looking at it right now).
        drop(entry);
    }
}

// ----------------------------------------------------------------- watcher

/// The per-process set of leased mappings, and the watcher source that
/// serves their breaks.
struct Table {
    pid: Pid,
    source: Arc<LeaseSource>,
    _reg: Registration,
    poll: Arc<LeasePoll>,
    _poll_reg: Registration,
    entries: HashMap<RawFd, Weak<Entry>>,
}

static TABLE: Mutex<Option<Table>> = Mutex::new(None);

/// Runs in the parent before `fork()` (see `crate::fork`): a child has no
/// watcher to serve a break, so every leased mapping of this process is
/// snapshotted now, as on a break, and its lease released.
fn prepare_fork() {
    let pid = rustix::process::getpid();
    for e in targets(None).into_iter().filter(|e| e.pid == pid) {
        if let Err(why) = e.try_resolve(false) {
            eprintln!(
                "mapcopy: cannot snapshot a Lease mapping before fork() ({why}); it stays leased \
                 in the parent and a child touching it gets SIGSEGV"
            );
        }
    }
}

/// Makes sure this process's lease sources are registered with a live
/// watcher; returns the watcher thread's id (where breaks are sent), and
/// registrations the caller must drop after unlocking the table.
fn ensure_source(
    slot: &mut Option<Table>,
    breaks: Arc<signal::Breaks>,
) -> Result<(rustix::thread::Pid, Stale), Error> {
    let pid = rustix::process::getpid();
    if let Some(t) = slot
        .as_ref()
        .filter(|t| t.pid == pid && !t.source.dead.load(Ordering::Acquire))
    {
        return Ok((t._reg.thread_tid(), None));
    }
    let poll = Arc::new(LeasePoll::new().map_err(|e| Error::io("timerfd_create", e))?);
    let (entries, stale) = match slot.take() {
        // Inherited through fork: the registration, epoll set and leases are
        // the parent's; dropping them here would unregister the parent's
        // pipe from the (shared) epoll set. Leave them alone.
        Some(t) if t.pid != pid => {
            std::mem::forget(t);
            (HashMap::new(), None)
        }
        // The watcher failed: every entry was resolved by `shutdown`.
        Some(t) => (t.entries, Some((t._reg, t._poll_reg))),
        None => (HashMap::new(), None),
    };
    // An fd of our own for the pipe: a stale registration of the previous
    // source may still hold the pipe's other fd in the same epoll set.
    let fd = rustix::io::fcntl_dupfd_cloexec(breaks.fd(), 0)
        .map_err(|e| Error::io("dup of the lease-break pipe", e))?;
    let source = Arc::new(LeaseSource {
        breaks,
        fd,
        dead: AtomicBool::new(false),
    });
    let reg = watcher::register(source.clone())
        .map_err(|e| Error::io("starting the watcher thread for lease breaks", e))?;
    let tid = reg.thread_tid();
    let poll_reg = watcher::register(poll.clone())
        .map_err(|e| Error::io("registering the lease poll timer", e))?;
    if !entries.is_empty() {
        poll.arm();
    }
    *slot = Some(Table {
        pid,
        source,
        _reg: reg,
        poll,
        _poll_reg: poll_reg,
        entries,
    });
    Ok((tid, stale))
}

/// Registrations of sources replaced because their watcher failed.
type Stale = Option<(Registration, Registration)>;

/// Live entries for the given `si_fd`s, or all of them.
fn targets(fds: Option<&[RawFd]>) -> Vec<Arc<Entry>> {
    let t = lock(&TABLE);
    let Some(t) = t.as_ref() else {
        return Vec::new();
    };
    match fds {
        None => t.entries.values().filter_map(Weak::upgrade).collect(),
        Some(fds) => fds
            .iter()
            .filter_map(|fd| t.entries.get(fd))
            .filter_map(Weak::upgrade)
            .collect(),
    }
}

struct LeaseSource {
    breaks: Arc<signal::Breaks>,
    /// What the watcher waits on: this source's own fd of the pipe.
    fd: std::os::fd::OwnedFd,
    /// Set by `shutdown`: the watcher is gone, register anew.
    dead: AtomicBool,
}

impl Source for LeaseSource {
    fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    fn ready(&self) {
        let (fds, overflow) = self.breaks.drain();
        let all = overflow || fds.contains(&-1);
        resolve_on_worker(targets(if all { None } else { Some(&fds) }));
    }

    fn shutdown(&self) {
        self.dead.store(true, Ordering::Release);
        for e in targets(None) {
            e.resolve(false);
        }
    }

    fn name(&self) -> &'static str {
        "lease"
    }
}

/// Resolves breaking leases on this process's lease worker thread, not on
/// the watcher: a break without reflink copies the whole range (at copy
/// speed: the THP copy row of `mapcopy bench`'s full-scan table, runs in the
/// repository's `bench-results/`), and the watcher serves every Lazy fault
/// of the process meanwhile. The writer's `open` still waits for the
/// snapshot (that is the contract); nobody else does. Should the worker not
/// start, resolves here.
fn resolve_on_worker(entries: Vec<Arc<Entry>>) {
    use std::sync::mpsc::{Sender, channel};
    static WORKER: Mutex<Option<(Pid, Sender<Arc<Entry>>)>> = Mutex::new(None);
    if entries.is_empty() {
        return;
    }
    let pid = rustix::process::getpid();
    let mut w = lock(&WORKER);
    if w.as_ref().is_none_or(|(p, _)| *p != pid) {
        let (tx, rx) = channel::<Arc<Entry>>();
        let spawned = std::thread::Builder::new()
            .name("mapcopy-lease".into())
            .spawn(move || {
                crate::sys::signal::block_async_signals(None);
                for e in rx {
                    let r =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| e.resolve(true)));
                    if r.is_err() {
                        // A writer would wait out lease-break-time for a
                        // snapshot nobody takes: stop loudly instead.
                        eprintln!("mapcopy: the lease worker panicked; aborting");
                        std::process::abort();
                    }
                }
            });
        *w = spawned.ok().map(|_| (pid, tx));
    }
    let mut left = entries;
    if let Some((_, tx)) = w.as_ref() {
        left.retain(|e| tx.send(e.clone()).is_err());
    }
    drop(w);
    for e in left {
        e.resolve(true);
    }
}

/// The backstop for lost lease-break signals: while any lease is held, the
/// watcher asks every lease once a second (`F_GETLEASE`) whether it is
/// being broken. A signal is lost if the application replaced our handler
/// after we installed it, or if the realtime signal queue overflowed (the
/// kernel then sends `SIGIO`, which the watcher thread blocks); a writer
/// then waits up to a second instead of lease-break-time, and still gets
/// the snapshot taken first.
struct LeasePoll {
    timer: std::os::fd::OwnedFd,
    armed: AtomicBool,
}

/// How often the backstop looks.
const POLL_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl LeasePoll {
    fn new() -> std::io::Result<LeasePoll> {
        use rustix::time::{TimerfdClockId, TimerfdFlags, timerfd_create};
        let timer = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
        )?;
        Ok(LeasePoll {
            timer,
            armed: AtomicBool::new(false),
        })
    }

    fn set(&self, every: std::time::Duration) {
        use rustix::time::{Itimerspec, TimerfdTimerFlags, Timespec, timerfd_settime};
        let ts = Timespec {
            tv_sec: every.as_secs() as _,
            tv_nsec: every.subsec_nanos() as _,
        };
        let spec = Itimerspec {
            it_interval: ts,
            it_value: ts,
        };
        let _ = timerfd_settime(&self.timer, TimerfdTimerFlags::empty(), &spec);
    }

    /// Start ticking (if not already).
    fn arm(&self) {
        if !self.armed.swap(true, Ordering::AcqRel) {
            self.set(POLL_EVERY);
        }
    }
}

impl Source for LeasePoll {
    fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.timer.as_fd()
    }

    fn ready(&self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.timer, &mut buf);
        let entries = targets(None);
        if entries.is_empty() {
            // Nothing leased: stop ticking, unless a lease came meanwhile.
            self.armed.store(false, Ordering::Release);
            self.set(std::time::Duration::ZERO);
            if !targets(None).is_empty() {
                self.arm();
            }
            return;
        }
        resolve_on_worker(entries);
    }

    fn shutdown(&self) {
        for e in targets(None) {
            e.resolve(false);
        }
    }

    fn name(&self) -> &'static str {
        "lease poll"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MapOptions, Strategy};
    use std::io::Write;

    fn leased(data: &[u8]) -> (tempfile::TempPath, File) {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(data).unwrap();
        let path = tmp.into_temp_path();
        let file = File::open(&path).unwrap();
        (path, file)
    }

    /// The watcher failing: `shutdown` snapshots and releases every lease,
    /// and the mapping keeps its bytes while the file is rewritten.
    #[test]
    fn shutdown_snapshots_and_releases() {
        let data = vec![7u8; 3 * 4096 + 5];
        let (path, file) = leased(&data);
        let map = MapOptions::new()
            .strategy(Strategy::Lease)
            .map(&file)
            .unwrap();
        let src = lock(&TABLE).as_ref().unwrap().source.clone();
        src.shutdown();
        // Released: a writable open does not wait for anyone.
        let t = std::time::Instant::now();
        std::fs::write(&path, b"changed").unwrap();
        assert!(t.elapsed() < std::time::Duration::from_secs(10));
        assert_eq!(&map[..], &data[..]);
        // A new mapping registers with a new source.
        let map2 = MapOptions::new()
            .strategy(Strategy::Lease)
            .map(&file)
            .unwrap();
        assert_eq!(&map2[..], b"changed");
    }

    /// `MapCopy` derefs to the address it read at map time, so a break and
    /// the fork handler's snapshot must put the copy (or clone) over the
    /// same range: the snapshot's span and bytes stay where they were.
    #[test]
    fn break_and_fork_prepare_keep_the_address() {
        let data: Vec<u8> = (0..5 * 4096 + 3).map(|i| (i % 251) as u8).collect();
        let (path, file) = leased(&data);
        let map = MapOptions::new()
            .strategy(Strategy::Lease)
            .map(&file)
            .unwrap();
        let at = map.as_ptr();
        // A writer opens the file: the break snapshots first.
        std::fs::write(&path, b"changed").unwrap();
        assert!(map.span_unchanged());
        assert_eq!(map.as_ptr(), at);
        assert_eq!(&map[..], &data[..]);
        // What libc's fork() runs first: every leased mapping snapshotted.
        std::fs::write(&path, &data).unwrap();
        let map = MapOptions::new()
            .strategy(Strategy::Lease)
            .map(File::open(&path).unwrap())
            .unwrap();
        let at = map.as_ptr();
        prepare_fork();
        assert!(map.span_unchanged());
        assert_eq!(map.as_ptr(), at);
        std::fs::write(&path, b"changed").unwrap();
        assert_eq!(&map[..], &data[..]);
    }

    #[test]
    fn map_mut_is_private_and_refuses_writable_fd() {
        let (path, file) = leased(b"abc");
        let mut m = MapOptions::new()
            .strategy(Strategy::Lease)
            .map_mut(&file)
            .unwrap();
        m[0] = b'X';
        std::fs::write(&path, b"new").unwrap();
        assert_eq!(&m[..], b"Xbc");
        drop(m);
        std::fs::write(&path, b"abc").unwrap();
        let rw = File::options().read(true).write(true).open(&path).unwrap();
        let e = MapOptions::new()
            .strategy(Strategy::Lease)
            .map(&rw)
            .unwrap_err();
        assert!(e.to_string().contains("open for writing"), "{e}");
        drop(rw);
        // A writer elsewhere in the process (another fd) gives EAGAIN.
        let _w = File::options().append(true).open(&path).unwrap();
        let e = MapOptions::new()
            .strategy(Strategy::Lease)
            .map(&file)
            .unwrap_err();
        assert!(e.to_string().contains("EAGAIN"), "{e}");
    }
}
