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
//! (`Lazy` is not among them: filling every unread page of a sparse 64 GiB
//! mapping at each fork is no option, and its child needs a fault server
//! of its own. Its memory stays `MADV_DONTFORK`: a child touching it gets
//! SIGSEGV, never zeros.)
//!
//! The parent's bytes do not change (each step replaces pages with the same
//! bytes), the mapping is then inherited like any private memory (shared
//! copy-on-write with the child: no second copy), and it stays valid in the
//! child for the child's whole life, after the parent unmaps or exits, and
//! in nested forks. Point-in-time mappings stay at the parent's instant.
//! The price is paid once, at the first fork: the data of the mapped range
//! is read (`Reflink`, `Eager` and a `Lease` on a filesystem that clones
//! pay nothing or almost nothing), and the mapping no longer shares the
//! page cache. `posix_spawn` and `vfork` run no handlers and share or
//! replace the address space: nothing happens for them.
//!
//! A mapping that is being made by another thread while a fork happens may
//! miss the handler; it stays `MADV_DONTFORK`, so touching it in the child
//! raises `SIGSEGV` — never a changed byte.
//!
//! Locks: a child inherits every lock in the state some other thread of the
//! parent left it in. So the prepare steps are found without a lock, and a
//! step runs only in the process that registered it (a child that never
//! mapped with that strategy takes none of its locks).

use std::sync::Once;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, Ordering};

use crate::sys;

/// One registered prepare step and the process that registered it last.
struct Slot {
    step: OnceLock<fn()>,
    pid: AtomicI32,
}

/// One slot per strategy that needs one, and a spare.
static SLOTS: [Slot; 4] = [const {
    Slot {
        step: OnceLock::new(),
        pid: AtomicI32::new(0),
    }
}; 4];
static INSTALL: Once = Once::new();

extern "C" fn prepare() {
    let pid = rustix::process::getpid().as_raw_nonzero().get();
    for slot in &SLOTS {
        let Some(step) = slot.step.get() else {
            continue;
        };
        if slot.pid.load(Ordering::Acquire) != pid {
            continue;
        }
        // A panic must not unwind into libc's fork.
        if std::panic::catch_unwind(step).is_err() {
            eprintln!(
                "mapcopy: preparing a mapping for fork() failed; a child touching it gets SIGSEGV"
            );
        }
    }
}

/// Runs `step` in the parent before every later `fork()` of this process
/// (not in a child that inherits the registration: it registers again if
/// it makes mappings of its own). Registering again is cheap.
pub(crate) fn on_prepare(step: fn()) -> std::io::Result<()> {
    let mut err = None;
    INSTALL.call_once(|| err = sys::fork::at_fork(Some(prepare), None, None).err());
    if let Some(e) = err {
        return Err(e);
    }
    let pid = rustix::process::getpid().as_raw_nonzero().get();
    for slot in &SLOTS {
        let s = *slot.step.get_or_init(|| step);
        if std::ptr::fn_addr_eq(s, step) {
            slot.pid.store(pid, Ordering::Release);
            return Ok(());
        }
    }
    Err(std::io::Error::other("no free slot for a fork handler"))
}
