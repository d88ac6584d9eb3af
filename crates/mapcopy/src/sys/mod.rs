//! Thin wrappers over the kernel interfaces the strategies use, each
//! interface in one module:
//!
//! | interface | module |
//! |---|---|
//! | `mmap`, `mremap`, `madvise`, `mprotect` | [`mmap`] (`Region`) |
//! | `userfaultfd(2)`, `/dev/userfaultfd`, `UFFDIO_*` | [`uffd`] |
//! | `fanotify_init`, `fanotify_mark`, events, responses | [`fanotify`] |
//! | `F_SETLEASE`, `F_GETLEASE`, `F_SETSIG`, `F_SETOWN_EX`, the read-lease probe | [`lease`] |
//! | `sigaction` and the lease-break handler | [`signal`] |
//! | `pthread_atfork` | [`fork`] |
//! | `FICLONE`, `O_TMPFILE`, mount lookup | [`clone`] |
//! | `fstat`/`statx`/`fstatfs`, seals, `pread` | [`mod@file`], [`fs`], [`change`] |
//! | `/proc/PID/syscall`, `fdinfo`, `mem` | [`proc_pid`] |
//! | `/proc/meminfo` | [`procfs`] |
//! | overlayfs layers (`/proc/self/mountinfo`) | [`overlay`] |
//! | a `File` view of a `BorrowedFd` | [`fd`] |
//!
//! Each either wraps a `rustix` call in a type that owns what it creates (a
//! [`mmap::Region`] unmaps itself) or, where `rustix` lacks the interface,
//! wraps `libc` (or `rustix::ioctl` with the kernel's structs) once, saying
//! so. A function that a bad argument could turn into undefined behaviour
//! is an `unsafe fn` with a `# Safety` section or takes a type that rules
//! the bad argument out (`BorrowedFd`, [`mmap::Advice`]). [`detect`] is
//! policy over these modules and calls the kernel only through them. Outside
//! `sys`, only the strategies use `unsafe`, for what their own argument
//! covers (their snapshots' stability, the ranges they register and fill);
//! the rest of the crate is `#![deny(unsafe_code)]` but for single items
//! that each argue for themselves: in `map` (`MapCopy`'s marker-trait
//! impls and the slice its `Deref` makes), in `options` (the empty
//! snapshot) and in `crate::fork` (registering, with [`fork::at_fork`], the
//! handlers the strategies' fork steps run from).

pub(crate) mod change;
pub(crate) mod clone;
pub(crate) mod detect;
pub(crate) mod fanotify;
pub(crate) mod fd;
pub(crate) mod file;
pub(crate) mod fork;
pub(crate) mod fs;
pub(crate) mod lease;
pub(crate) mod mmap;
pub(crate) mod overlay;
pub(crate) mod proc_pid;
pub(crate) mod procfs;
pub(crate) mod signal;
pub(crate) mod uffd;

use std::io;

use rustix::io::Errno;

/// Size of a base page. Linux on every architecture we build for reports it
/// through the aux vector; rustix caches it.
pub(crate) fn page_size() -> usize {
    rustix::param::page_size()
}

/// Turns a libc-style `-1 and errno` return into `io::Result`, like mio's
/// `syscall!` macro does, for the few calls rustix lacks: the only one in
/// the crate.
pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// The errno behind an `io::Error` from one of the wrappers here (`EIO`
/// for one that carries none), for callers that match on `Errno`.
pub(crate) fn errno_of(e: io::Error) -> Errno {
    Errno::from_io_error(&e).unwrap_or(Errno::IO)
}
