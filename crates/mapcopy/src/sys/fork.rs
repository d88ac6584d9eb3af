//! `pthread_atfork` (neither rustix nor std wraps it; `libc` declares it).
#![allow(unsafe_code)]

use std::io;

/// A fork handler.
pub(crate) type Handler = Option<unsafe extern "C" fn()>;

/// Registers fork handlers: `prepare` runs in the parent before `fork()`
/// (libc's, not `posix_spawn` or `vfork`), `parent` in the parent after it,
/// `child` in the child right after it. `child` must be async-signal-safe.
pub(crate) fn at_fork(prepare: Handler, parent: Handler, child: Handler) -> io::Result<()> {
    // SAFETY: registering plain `extern "C" fn`s that live for the whole
    // program; libc calls them only around fork().
    let r = unsafe { libc::pthread_atfork(prepare, parent, child) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}
