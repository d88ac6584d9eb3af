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
//!
//! Layout: `probe` (can this process serve faults, by which route),
//! `server` (the per-process fault server: fills, fault-around windows,
//! prefetch), `staging` (buffers file bytes are read into), `mapping` (one
//! mapping as the server sees it), `plan` (what to fill for a fault, pure
//! logic), `forked` (a forked child's own server),
//! and here: `map` and the snapshot.
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

mod mapping;
mod plan;
mod probe;
mod server;
mod staging;

use mapping::*;
use plan::*;
pub(crate) use probe::check;
use probe::*;
use server::*;
use staging::*;

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
        file: Arc::new(file),
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
        // SAFETY: `[0, len)` is inside the mapping (`len <= m.len`), which
        // stays live: this thread owns the `Lazy` that would drop it;
        // `bytes` holds `len` readable bytes.
        unsafe { self.server.copy_all(m, 0, bytes.as_ptr(), len) };
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
        // SAFETY: the whole region, registered with this uffd in `map`; it
        // is dead (no filler installs into it any more) and unmapped right
        // below, so none of its pages needs serving.
        let _ = unsafe {
            self.server
                .uffd
                .unregister(self.region.as_ptr() as usize, self.region.len())
        };
        drop(live);
        // SAFETY: dropped exactly once, here; no filler touches the range
        // any more (dead, unregistered) and every borrow of it has ended.
        unsafe { ManuallyDrop::drop(&mut self.region) };
    }
}

#[cfg(test)]
mod tests;
