//! The per-process fanotify group: the guarded mappings and inodes, the
//! guard thread that answers events, detaching before a truncation or a
//! fork, and the shutdown that lets every writer go.

use super::*;

/// One guarded mapping: a region whose first `file_len` bytes map the file
/// at `offset` privately and whose rest is anonymous (past the end of the
/// file at map time: zeros, never SIGBUS).
pub(super) struct Mapping {
    pub(super) region: Region,
    pub(super) offset: u64,
    /// Bytes at the start of `region` still mapped from the file; the rest
    /// is anonymous. Only shrinks, only under `Guards::inodes`.
    pub(super) file_len: AtomicUsize,
    /// File ranges this guard made private (`MADV_POPULATE_WRITE`): their
    /// contents may differ from the file now, even where it has a hole.
    pub(super) copied: Mutex<Vec<(u64, u64)>>,
    /// Detached and inheritable (see `prepare_fork`): a forked child owns
    /// its copy of the region.
    pub(super) inherited: AtomicBool,
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
    pub(super) fn copy(&self, start: u64, end: u64, fd: BorrowedFd<'_>) -> io::Result<()> {
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
    pub(super) fn copy_pages(&self, off: usize, len: usize, fd: BorrowedFd<'_>) -> io::Result<()> {
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

    pub(super) fn file_len(&self) -> usize {
        self.file_len.load(Ordering::Relaxed)
    }

    /// Copies every file page of the mapping.
    pub(super) fn copy_all(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.copy(0, u64::MAX, fd)
    }

    /// Detaches the whole mapping from the file and lets a forked child
    /// inherit it. Called under `Guards::inodes`.
    pub(super) fn make_inheritable(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
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
    pub(super) fn detach(&self, from: u64, fd: BorrowedFd<'_>) -> io::Result<()> {
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
pub(super) fn data_extents(fd: BorrowedFd<'_>, lo: u64, end: u64, page: u64) -> Vec<(u64, u64)> {
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
pub(super) struct Inode {
    /// Our own read-only fd of the file, opened before the mark: the mark is
    /// removed through it and the lease probe runs on it.
    pub(super) fd: Arc<OwnedFd>,
    /// Counts `fd` among the fds live mappings keep.
    pub(super) _kept: crate::fds::Kept,
    pub(super) maps: Vec<Arc<Mapping>>,
    /// `map` calls between placing/reusing the mark and registering.
    pub(super) pending: usize,
}

/// The process's fanotify group and what it guards.
pub(super) struct Guards {
    pub(super) pid: rustix::process::Pid,
    pub(super) group: Group,
    pub(super) devnull: OwnedFd,
    pub(super) inodes: Mutex<HashMap<(u64, u64), Inode>>,
    /// Set (under `inodes`) once `shutdown` has snapshotted everything and
    /// released the group: nothing may register any more.
    pub(super) dead: AtomicBool,
    pub(super) buf: Mutex<Vec<u8>>,
}

/// The live group of this process (served by its own thread).
pub(super) static CURRENT: Mutex<Option<Arc<Guards>>> = Mutex::new(None);
/// Raw fds for the fork handler (which may not take locks).
pub(super) static GROUP_FD: AtomicI32 = AtomicI32::new(-1);
pub(super) static DEVNULL_FD: AtomicI32 = AtomicI32::new(-1);
pub(super) static AT_FORK: Once = Once::new();

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

pub(super) fn guards() -> Result<Arc<Guards>, Error> {
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
    let group = Group::new(INIT_FLAGS).map_err(|e| {
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
    AT_FORK.call_once(|| {
        // SAFETY: (`at_fork`'s promises) `child_after_fork` takes no lock
        // and cannot panic: it loads two atomics and calls `dup3`, which is
        // async-signal-safe; the numbers it loads name a live group and its
        // /dev/null or are -1 (see there).
        let r = unsafe { sys::fork::at_fork(None, None, Some(child_after_fork)) };
        fork_err = r.err();
    });
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
pub(super) fn prepare_fork() {
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
pub(super) fn serve_loop(g: Arc<Guards>) {
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
    pub(super) fn ready(&self) {
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
    pub(super) fn shutdown(&self) {
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
    pub(super) fn serve(&self, ev: Event) {
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
    pub(super) fn apply(&self, key: Option<(u64, u64)>, action: &Action) -> Response {
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

pub(super) fn stat_if_needed(
    action: &Action,
    stat: impl FnOnce() -> Option<rustix::fs::Stat>,
) -> Option<rustix::fs::Stat> {
    match action {
        Action::Allow => None,
        _ => stat(),
    }
}
