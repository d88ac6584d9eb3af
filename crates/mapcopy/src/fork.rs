//! What `fork()` does to copy mappings.
//!
//! A child made by `fork()` has only the forking thread: no guard thread,
//! no userfaultfd server, no lease-break handler of the parent serves it.
//! So the strategies whose file pages still depend on such a helper make
//! their mappings complete and independent of the file *in the parent,
//! just before the fork* — a `pthread_atfork` prepare handler, which libc's
//! `fork()` runs (what Python's `os.fork`, `multiprocessing`, gunicorn and
//! Rust's `Command` without `posix_spawn` call):
//!
//! * `Guard` moves the mapping's file pages into anonymous memory (the same
//!   step it takes before a truncation: the file's data extents only) and
//!   drops the file's mark when no mapping needs it any more;
//! * `Lease` does what a lease break does (a reflink clone, else a copy)
//!   and releases the lease.
//!
//! `Lazy` copies nothing (filling every unread page of a sparse 64 GiB
//! mapping at a fork is no option): its regions are inherited during the
//! fork only, and the child handler gives the child a fault server of its
//! own before `fork()` returns.
//!
//! The parent's bytes do not change (each step replaces pages with the same
//! bytes), the mapping is then inherited like any private memory (shared
//! copy-on-write with the child: no second copy), and it stays valid in the
//! child for the child's whole life, after the parent unmaps or exits, and
//! in nested forks. Point-in-time mappings stay at the parent's instant.
//! For `Guard` and `Lease` the price is paid once, at the first fork: the
//! data of the mapped range is read (a `Lease` on a filesystem that clones
//! pays almost nothing), and the mapping no longer shares the page cache.
//! `posix_spawn` and `vfork` run no handlers and share or replace the
//! address space: nothing happens for them.
//!
//! A mapping that is being made by another thread while a fork happens may
//! miss the handler; it stays `MADV_DONTFORK`, so touching it in the child
//! raises `SIGSEGV` — never a changed byte.
//!
//! Locks: a child inherits every lock in the state some other thread of the
//! parent left it in. So the prepare steps are found without a lock, and a
//! step runs only in the process that registered it (a child that never
//! mapped with that strategy takes none of its locks).

use std::cell::Cell;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Once, OnceLock};

use crate::sys;

/// What a strategy does around a fork: `prepare` in the parent before it,
/// then `parent` in the parent or `child` in the child (only if `prepare`
/// ran in this fork). `child` runs in a process whose other threads are
/// gone, with every lock as they left it: it takes no lock another thread
/// may have held (only ones its own `prepare` took), as
/// `sys::fork::at_fork` requires of the handlers that run it.
#[derive(Clone, Copy)]
pub(crate) struct Steps {
    pub(crate) prepare: fn(),
    pub(crate) parent: Option<fn()>,
    pub(crate) child: Option<fn()>,
}

/// One registered set of steps and the process that registered it last.
struct Slot {
    steps: OnceLock<Steps>,
    pid: AtomicI32,
}

/// One slot per strategy that needs one, and a spare.
static SLOTS: [Slot; 4] = [const {
    Slot {
        steps: OnceLock::new(),
        pid: AtomicI32::new(0),
    }
}; 4];
static INSTALL: Once = Once::new();

thread_local! {
    /// The slots whose `prepare` ran in this thread's fork under way.
    static RAN: Cell<u32> = const { Cell::new(0) };
}

/// Runs `f` without letting a panic unwind into libc's fork.
fn guarded(f: fn(), what: &str) {
    if std::panic::catch_unwind(f).is_err() {
        eprintln!("mapcopy: {what} failed; a child touching the mapping gets SIGSEGV");
    }
}

extern "C" fn prepare() {
    let pid = rustix::process::getpid().as_raw_nonzero().get();
    let mut ran = 0;
    for (i, slot) in SLOTS.iter().enumerate() {
        let Some(steps) = slot.steps.get() else {
            continue;
        };
        if slot.pid.load(Ordering::Acquire) != pid {
            continue;
        }
        guarded(steps.prepare, "preparing a mapping for fork()");
        ran |= 1 << i;
    }
    let _ = RAN.try_with(|r| r.set(ran));
}

/// Runs the `pick`ed step of every slot whose `prepare` ran.
fn after(pick: fn(&Steps) -> Option<fn()>, what: &str) {
    let ran = RAN.try_with(|r| r.replace(0)).unwrap_or(0);
    for (i, slot) in SLOTS.iter().enumerate() {
        if ran & (1 << i) == 0 {
            continue;
        }
        if let Some(f) = slot.steps.get().and_then(pick) {
            guarded(f, what);
        }
    }
}

extern "C" fn parent() {
    after(|s| s.parent, "finishing a fork() in the parent");
}

extern "C" fn child() {
    after(|s| s.child, "taking over a mapping in a forked child");
}

/// Runs `steps` around every later `fork()` of this process (not of a
/// child that inherits the registration: it registers again if it makes
/// mappings of its own). Registering again is cheap.
pub(crate) fn on_fork(steps: Steps) -> std::io::Result<()> {
    let mut err = None;
    INSTALL.call_once(|| {
        // SAFETY: (`at_fork`'s promises) the three handlers catch every
        // panic of a step (`guarded`) and find the slots without a lock
        // (`OnceLock::get`, atomics) and which steps ran in a thread-local
        // of the forking thread; the steps themselves keep `Steps`' rules
        // (a child step takes no lock another thread may have held).
        #[allow(unsafe_code)]
        let r = unsafe { sys::fork::at_fork(Some(prepare), Some(parent), Some(child)) };
        err = r.err();
    });
    if let Some(e) = err {
        return Err(e);
    }
    let pid = rustix::process::getpid().as_raw_nonzero().get();
    for slot in &SLOTS {
        let s = slot.steps.get_or_init(|| steps);
        if std::ptr::fn_addr_eq(s.prepare, steps.prepare) {
            slot.pid.store(pid, Ordering::Release);
            return Ok(());
        }
    }
    Err(std::io::Error::other("no free slot for fork handlers"))
}

/// [`on_fork`] with only a prepare step.
pub(crate) fn on_prepare(step: fn()) -> std::io::Result<()> {
    on_fork(Steps {
        prepare: step,
        parent: None,
        child: None,
    })
}
