//! The per-process fault server: reads userfaultfd messages, fills pages
//! (`UFFDIO_COPY`, whole chunks with `UFFDIO_MOVE`), plans fault-around
//! windows per stream and prefetches ahead of sequential readers.

use super::*;

/// The process's one userfaultfd and everything that serves it.
pub(super) struct Server {
    pub(super) uffd: Uffd,
    pub(super) pid: Pid,
    pub(super) can_move: bool,
    /// Live mappings by start address.
    pub(super) mappings: RwLock<BTreeMap<usize, Arc<Mapping>>>,
    pub(super) prefetch: Prefetch,
    /// Keeps the uffd registered with the watcher.
    pub(super) registration: Mutex<Option<Registration>>,
    /// Set once the fallback serving thread runs (after a watcher failure).
    pub(super) fallback: AtomicBool,
    pub(super) me: Weak<Server>,
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

pub(super) static SERVER: Mutex<Option<Arc<Server>>> = Mutex::new(None);

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// This process's server, created on first use (and again in a forked
/// child: the parent's userfaultfd belongs to the parent's address space).
pub(super) fn server() -> Result<Arc<Server>, Error> {
    server_with(true)
}

/// [`server`]; if this process has none yet, the one made now fills whole
/// chunks with `UFFDIO_MOVE` when the kernel has it (6.8+) only if
/// `use_move`, else with `UFFDIO_COPY` as on kernels before 6.8 (tests
/// exercise that path on any kernel this way). An existing server is
/// returned as it is.
pub(super) fn server_with(use_move: bool) -> Result<Arc<Server>, Error> {
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
    let can_move = uffd.has(u64::from(g::UFFD_FEATURE_MOVE)) && want_move != 0 && use_move;
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
pub(super) fn inheritable(out: &mut Vec<forked::Inherit>) {
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
        file: m.file.clone(),
    }));
}

/// Aborts the process if the thread unwinds through it: a panicking fault
/// handler must not leave faulting threads waiting.
pub(super) struct AbortOnUnwind(&'static str);

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

pub(super) fn fatal_msg(what: &str) -> ! {
    say(&format!(
        "mapcopy: lazy mapping: {what}; aborting the process: a thread faulting on the mapping \
         can be given neither an error nor made-up bytes, and must not wait forever\n"
    ));
    std::process::abort();
}

/// Writes to stderr with plain write(2): `eprintln!` takes the stderr lock,
/// which a thread faulting on a lazy page (say, while printing it) may hold.
pub(super) fn say(msg: &str) {
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
    pub(super) fn serve_faults(&self) {
        let mut msgs = Vec::with_capacity(64);
        watcher::serve_polling(Some(POLL_TURN), || self.serve_pending(&mut msgs));
    }

    /// Reads and serves one batch of pending fault messages; returns how
    /// many were read.
    pub(super) fn serve_pending(&self, msgs: &mut Vec<Msg>) -> usize {
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

    pub(super) fn lookup(&self, addr: usize) -> Option<Arc<Mapping>> {
        let maps = self.mappings.read().unwrap_or_else(PoisonError::into_inner);
        let (_, m) = maps.range(..=addr).next_back()?;
        (addr < m.start + m.len).then(|| m.clone())
    }

    /// Serves one fault message (possibly stale).
    pub(super) fn fault(&self, addr: usize) {
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
                // SAFETY: a range of `m` (plans never leave the mapping),
                // registered with this uffd, which this server serves. If
                // `m` was dropped meanwhile the range is unregistered or
                // belongs to a later mapping of this server: a thread woken
                // there faults again, and is served again.
                let _ = unsafe { self.uffd.wake(m.start + off, len) };
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

    /// Fills the missing pages of `[off, off + len)` (inside `m`, at most a
    /// chunk) with `UFFDIO_COPY`. `Err` = the `pread` at that file offset
    /// failed.
    pub(super) fn fill_range(
        &self,
        m: &Mapping,
        off: usize,
        len: usize,
    ) -> Result<(), (u64, Errno)> {
        assert!(
            off.checked_add(len).is_some_and(|end| end <= m.len),
            "a fill outside the mapping"
        );
        with_staging(|st| {
            // SAFETY: the staging buffer is this thread's alone; nothing
            // else reads or writes it while `buf` lives.
            let buf = unsafe { st.as_mut_slice(0, len) };
            m.read(buf, off)?;
            let live = m.live.read().unwrap_or_else(PoisonError::into_inner);
            if *live {
                // SAFETY: `[off, off + len)` is inside `m` (asserted), which
                // is live while `live` is held; `buf` holds `len` bytes.
                unsafe { self.copy_all(m, off, buf.as_ptr(), len) };
            }
            Ok(())
        })
    }

    /// Fills chunk `c`, which the caller claimed (`Busy`), completely, and
    /// marks it `Full`.
    pub(super) fn fill_chunk(&self, m: &Mapping, c: usize) -> Result<(), (u64, Errno)> {
        let off = c * CHUNK;
        assert!(off < m.len, "chunk {c} outside the mapping");
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
                // SAFETY: chunk `c` of `m` (asserted inside it), claimed by
                // the caller, live while `live` is held; `base` is this
                // thread's CHUNK-aligned staging chunk, which nothing
                // borrows now (the slice read into is gone).
                done = unsafe { self.move_chunk(m, off, base) };
            }
            if done < len {
                // The part not moved is still in the staging buffer.
                let src = (base + done) as *const u8;
                // SAFETY: the rest of the chunk, inside the live `m` as
                // above; the staging chunk still holds its `len - done`
                // bytes at `src`.
                unsafe { self.copy_all(m, off + done, src, len - done) };
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
        // SAFETY: chunk `c` of `m`, registered with this uffd, which this
        // server serves; if `m` was dropped meanwhile, as in `fault`'s
        // `Plan::Wake`: a woken thread faults again and is served again.
        let _ = unsafe { self.uffd.wake(m.start + off, len) };
        res
    }

    /// Moves the staging chunk at `src` to chunk offset `off` of `m`;
    /// returns how many bytes were moved (the rest is still in staging).
    ///
    /// # Safety
    /// `[off, off + CHUNK)` is a whole chunk of `m` that the caller claimed
    /// (its pages are all missing and no reference into it exists), and `m`
    /// stays live for the call (the caller holds `m.live` shared and saw it
    /// true). `src` is a CHUNK-aligned, CHUNK-long private anonymous buffer
    /// of the calling thread that nothing borrows: its pages are given
    /// away.
    pub(super) unsafe fn move_chunk(&self, m: &Mapping, off: usize, src: usize) -> usize {
        let dst = m.start + off;
        let ro = m.read_only.load(Ordering::Acquire);
        // UFFDIO_MOVE only moves between writable areas: open the chunk for
        // the move and close it again (its pages are all missing, so no
        // reader has seen any byte of it).
        if ro {
            let rw = MprotectFlags::READ | MprotectFlags::WRITE;
            // SAFETY: the chunk lies inside the live mapping (we hold its
            // lock shared); no reference into it can exist yet, and adding
            // write access invalidates none anyway.
            if unsafe { mmap::protect_at(dst, CHUNK, rw) }.is_err() {
                return 0;
            }
        }
        // A read-only mapping wakes its waiters only once the chunk is
        // read-only again (`fill_chunk` wakes the whole chunk at the end).
        let mode = if ro { uffd::MOVE_MODE_DONTWAKE } else { 0 };
        // SAFETY: `dst` is a chunk of a live mapping registered with this
        // uffd that we claimed; `src` is this thread's staging chunk, which
        // nothing borrows now and whose pages we give away.
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
    ///
    /// # Safety
    /// `off` is page-aligned and `[off, off + len)` lies inside `m`, which
    /// stays live for the call (the caller holds `m.live` shared and saw it
    /// true, or owns the `Lazy` that would drop it); `src` is readable for
    /// `len` bytes.
    pub(super) unsafe fn copy_all(&self, m: &Mapping, off: usize, src: *const u8, len: usize) {
        let page = crate::sys::page_size();
        let mut done = 0;
        while done < len {
            // SAFETY: the range is inside a live mapping registered with this
            // uffd (the caller's promise); `src` has `len` bytes.
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
                    // SAFETY: a page of the live `m` (as above), served by
                    // this server.
                    let _ = unsafe { self.uffd.wake(m.start + off + done, page) };
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
    pub(super) fn schedule(&self, m: Arc<Mapping>, chunks: Range<usize>) {
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
pub(super) struct Prefetch {
    pub(super) queue: Mutex<VecDeque<(Arc<Mapping>, Range<usize>)>>,
    pub(super) cv: Condvar,
    pub(super) started: OnceLock<bool>,
}

impl Prefetch {
    /// Starts the thread if needed; false if it cannot run.
    pub(super) fn start(&self, srv: Arc<Server>) -> bool {
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

pub(super) fn prefetch_loop(srv: &Server) {
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
