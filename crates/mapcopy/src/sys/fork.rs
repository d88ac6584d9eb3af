//! `pthread_atfork` (neither rustix nor std wraps it; `libc` declares it).
#![allow(unsafe_code)]

use std::io;

/// A fork handler.
pub(crate) type Handler = Option<unsafe extern "C" fn()>;

/// Registers fork handlers: `prepare` runs in the parent before `fork()`
/// (libc's, not `posix_spawn` or `vfork`), `parent` in the parent after it,
/// `child` in the child right after it. Registrations cannot be undone.
///
/// # Safety
/// Each handler must be sound to call at its point of *every* later
/// `fork()` of this process, whoever calls it, for the rest of the
/// process's life:
///
/// * none may unwind into libc (a panic must be caught, or abort);
/// * `prepare` and `parent` run in the forking thread while other threads
///   go on; they may take locks, but not ones the forking thread may
///   already hold;
/// * `child` runs in the child, whose only thread is the one that forked:
///   every lock another thread of the parent held at the fork stays held
///   forever, and data another thread was changing is left half-changed.
///   So `child` finds its state without a lock another thread may have
///   held (atomics, a thread-local of the forking thread, a lock its own
///   `prepare` took), and calls only what works in such a child:
///   async-signal-safe functions, and with glibc also `malloc` and thread
///   creation (glibc resets its own locks in the child).
pub(crate) unsafe fn at_fork(prepare: Handler, parent: Handler, child: Handler) -> io::Result<()> {
    // SAFETY: `pthread_atfork` only stores the three pointers; what calling
    // them at each fork means is the caller's promise above.
    let r = unsafe { libc::pthread_atfork(prepare, parent, child) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}
