//! `Lazy` across `fork()`: the child gets a fault server of its own.
//!
//! A child made by `fork()` has no thread of the parent, and its copy of a
//! userfaultfd range is no longer registered (the parent's userfaultfd does
//! not ask for `UFFD_FEATURE_EVENT_FORK`, which would make the *parent*
//! serve the child — and leave it unserved, reading zeros, once the parent
//! is gone). So, around libc's `fork()` (see `crate::fork`):
//!
//! * **prepare** (parent): the mappings' regions, `MADV_DONTFORK` the rest
//!   of the time, are made inheritable, and their list is kept for the two
//!   handlers below. A gate keeps them from being unmapped until the fork
//!   is over.
//! * **parent**: the regions are `MADV_DONTFORK` again, so a child made
//!   without the fork handlers (a raw `clone`) gets `SIGSEGV` touching one,
//!   never zeros.
//! * **child**: a new userfaultfd registers every inherited region before
//!   `fork()` returns, and a thread of the child serves its faults from the
//!   file (by the parent's fd, duplicated): pages the parent had filled are
//!   inherited as they are (copy-on-write), each missing page is read at
//!   its first access in the child — per-page consistency, as `Lazy` keeps
//!   anyway. Nothing is copied at the fork, whatever the mapping's size.
//!   The child's server is itself inherited the same way by a grandchild.
//!
//! A read error in the child's server aborts the child with a message, as
//! in the parent; if the child cannot get a userfaultfd or a thread, it
//! aborts at once rather than let a page read as zeros.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::fs::File;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rustix::io::Errno;

use crate::sys::mmap::{Advice, advise_at};

use crate::sys::uffd::{Msg, Uffd};

/// Bytes read and installed per fault in a child (at most).
const WINDOW: usize = 64 << 10;

/// One region a forked child inherits.
#[derive(Debug)]
pub(super) struct Inherit {
    /// The whole region (registered with the userfaultfd).
    pub(super) base: usize,
    pub(super) total: usize,
    /// The part that shows the file: `[start, start + len)` holds the
    /// file's bytes from `offset` on.
    pub(super) start: usize,
    pub(super) len: usize,
    pub(super) offset: u64,
    /// The file: the mapping's own in the parent (shared, so it stays open
    /// while the list lives), a duplicate of it in a child that adopted the
    /// region.
    pub(super) file: Arc<File>,
}

/// A forked child's server: its userfaultfd and the regions it serves.
struct ChildServer {
    pid: i32,
    uffd: Uffd,
    /// Each with the child's own duplicate of the file.
    maps: Mutex<Vec<Inherit>>,
}

/// This process's child server, if it is a forked child that inherited
/// lazy mappings. Leaked on purpose: it lives as long as the process, and
/// a lock-free pointer is all a grandchild needs to tell it is not its own.
static CHILD: AtomicPtr<ChildServer> = AtomicPtr::new(std::ptr::null_mut());

/// Kept from the prepare step until the fork is over.
static GATE: RwLock<()> = RwLock::new(());

type Stash = (Vec<Inherit>, RwLockWriteGuard<'static, ()>);

thread_local! {
    /// The forking thread's list and gate, between prepare and parent/child.
    static STASH: RefCell<Option<Stash>> = const { RefCell::new(None) };
}

/// Keeps the prepare step from running (and so a region from being made
/// inheritable) while a mapping goes away.
pub(super) fn hold() -> RwLockReadGuard<'static, ()> {
    GATE.read().unwrap_or_else(PoisonError::into_inner)
}

/// The steps to register with `crate::fork`.
pub(super) const STEPS: crate::fork::Steps = crate::fork::Steps {
    prepare,
    parent: Some(parent),
    child: Some(child),
};

/// This process's child server, if any.
fn current() -> Option<&'static ChildServer> {
    let p = CHILD.load(Ordering::Acquire);
    // SAFETY: a non-null pointer came from `Box::into_raw` in `child` and is
    // never freed.
    let c = unsafe { p.as_ref() }?;
    (c.pid == rustix::process::getpid().as_raw_nonzero().get()).then_some(c)
}

/// Sets the inheritance of `[base, base + total)`.
///
/// # Safety
/// The range is a whole lazy region of this process that stays mapped for
/// the call (the forking thread holds the gate, which keeps every region
/// in the list from being unmapped): DOFORK/DONTFORK change only what a
/// child inherits, and no other code's memory may have its inheritance
/// changed.
unsafe fn advise(base: usize, total: usize, advice: Advice) -> std::io::Result<()> {
    // SAFETY: a live lazy region (the caller's promise above);
    // DOFORK/DONTFORK only change what a child inherits.
    unsafe { advise_at(base, total, advice) }
}

fn prepare() {
    let gate = GATE.write().unwrap_or_else(PoisonError::into_inner);
    let mut list = Vec::new();
    super::inheritable(&mut list);
    if let Some(c) = current() {
        let maps = c.maps.lock().unwrap_or_else(PoisonError::into_inner);
        list.extend(maps.iter().map(|m| Inherit {
            file: m.file.clone(),
            ..*m
        }));
    }
    // SAFETY: every entry is a whole region of a live mapping of this
    // process (the server's or the child server's list, read under their
    // locks), and `gate` keeps each mapped until the fork is over.
    list.retain(|m| unsafe { advise(m.base, m.total, Advice::DoFork) }.is_ok());
    STASH.with(|s| *s.borrow_mut() = Some((list, gate)));
}

fn parent() {
    let Some((list, gate)) = STASH.with(|s| s.borrow_mut().take()) else {
        return;
    };
    for m in &list {
        // SAFETY: as in `prepare`: regions of live mappings, kept mapped by
        // `gate` until it is dropped below.
        let _ = unsafe { advise(m.base, m.total, Advice::DontFork) };
    }
    drop(gate);
}

fn child() {
    let Some((list, gate)) = STASH.with(|s| s.borrow_mut().take()) else {
        return;
    };
    drop(gate);
    if list.is_empty() {
        return;
    }
    if let Err(e) = adopt(list) {
        eprintln!(
            "mapcopy: a forked child cannot serve its inherited Lazy mappings ({e}); aborting \
             rather than let untouched pages read as zeros"
        );
        std::process::abort();
    }
}

/// Registers the inherited regions with a new userfaultfd and starts the
/// thread that serves it.
fn adopt(list: Vec<Inherit>) -> std::io::Result<()> {
    let route = super::probe().map_err(std::io::Error::other)?.route;
    let uffd = Uffd::new(route, 0)?;
    let mut maps = Vec::with_capacity(list.len());
    for m in list {
        let fd = rustix::io::fcntl_dupfd_cloexec(&*m.file, 0)?;
        // SAFETY: the region is this process's copy of the parent's
        // anonymous lazy region; from here on this process serves its
        // missing pages (the thread below) for as long as it is registered.
        unsafe { uffd.register_missing(m.base, m.total) }?;
        maps.push(Inherit {
            file: Arc::new(File::from(fd)),
            ..m
        });
    }
    let srv = Box::into_raw(Box::new(ChildServer {
        pid: rustix::process::getpid().as_raw_nonzero().get(),
        uffd,
        maps: Mutex::new(maps),
    }));
    CHILD.store(srv, Ordering::Release);
    // SAFETY: just leaked; never freed.
    let srv: &'static ChildServer = unsafe { &*srv };
    std::thread::Builder::new()
        .name("mapcopy-lazy".into())
        .spawn(move || srv.serve())?;
    Ok(())
}

/// A forked child drops the mapping at `base`: true if this process serves
/// it (then it is unregistered here and the caller unmaps it), false if it
/// was never inherited (the caller must not touch the address).
pub(super) fn release(base: usize) -> bool {
    let Some(c) = current() else {
        return false;
    };
    let mut maps = c.maps.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(i) = maps.iter().position(|m| m.base == base) else {
        return false;
    };
    let m = maps.swap_remove(i);
    // SAFETY: this process's own copy of the region, registered with this
    // uffd in `adopt`; its owner drops it and unmaps it right after this
    // returns, so no page of it needs serving any more.
    let _ = unsafe { c.uffd.unregister(m.base, m.total) };
    true
}

impl ChildServer {
    fn serve(&self) {
        use rustix::event::{PollFd, PollFlags, poll};
        crate::sys::signal::block_async_signals(None);
        let mut msgs = Vec::new();
        let mut buf = vec![0u8; WINDOW];
        loop {
            let mut fds = [PollFd::new(&self.uffd, PollFlags::IN)];
            match poll(&mut fds, None) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => fatal(&format!("poll on the userfaultfd failed: {e}")),
            }
            match self.uffd.read(&mut msgs, 64) {
                Ok(_) => {}
                Err(e) => fatal(&format!("reading the userfaultfd failed: {e}")),
            }
            for m in &msgs {
                if let Msg::PageFault { address, .. } = *m {
                    self.fault(address as usize, &mut buf);
                }
            }
        }
    }

    /// Fills the missing pages of a window from the faulting page on.
    fn fault(&self, addr: usize, buf: &mut [u8]) {
        let page = crate::sys::page_size();
        let addr = addr & !(page - 1);
        let maps = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(m) = maps
            .iter()
            .find(|m| addr >= m.base && addr < m.base + m.total)
        else {
            // Stale: unregistering woke whoever waited.
            return;
        };
        let in_file = addr >= m.start && addr < m.start + m.len;
        let end = if in_file {
            m.start + m.len
        } else {
            m.base + m.total
        };
        let n = WINDOW.min(end - addr);
        let buf = &mut buf[..n];
        buf.fill(0);
        if in_file {
            let at = m.offset + (addr - m.start) as u64;
            if let Err((pos, e)) = crate::sys::file::read_full(&*m.file, buf, at) {
                fatal(&format!(
                    "reading the mapped file at offset {pos} failed: {e}"
                ));
            }
        }
        let mut done = 0;
        while done < n {
            // SAFETY: `[addr + done, addr + n)` is page-aligned and inside a
            // region registered with our userfaultfd that this thread
            // serves; `buf` holds `n` readable bytes.
            let p = unsafe { self.uffd.copy(addr + done, buf[done..].as_ptr(), n - done) };
            done += p.done;
            match p.err {
                None => break,
                Some(Errno::AGAIN) => {}
                // A page already there (filled before the fork, or by an
                // earlier window): skip it.
                Some(Errno::EXIST) => done += page,
                // The region went away meanwhile.
                Some(Errno::NOENT) if p.done == 0 => break,
                Some(e) => fatal(&format!("UFFDIO_COPY failed: {e}")),
            }
        }
        // SAFETY: the faulting page of a region registered with our
        // userfaultfd, which this thread serves (found under `maps`).
        let _ = unsafe { self.uffd.wake(addr, page) };
    }
}

fn fatal(what: &str) -> ! {
    eprintln!(
        "mapcopy: the Lazy fault server of a forked child cannot go on ({what}); aborting rather \
         than let a page read as zeros"
    );
    std::process::abort();
}
