//! Thin, safe wrappers over the kernel interfaces the strategies use.
//!
//! Everything here either wraps a `rustix` call in a type that owns what it
//! creates (a [`mmap::Region`] unmaps itself) or, where neither `rustix` nor
//! `libc` offers the interface, defines it once with the kernel header it
//! comes from. The rest of the crate is `#![deny(unsafe_code)]`.

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

/// Size of a base page. Linux on every architecture we build for reports it
/// through the aux vector; rustix caches it.
pub(crate) fn page_size() -> usize {
    rustix::param::page_size()
}

/// Turns a libc-style `-1 and errno` return into `io::Result`, like mio's
/// `syscall!` macro does, for the few calls rustix lacks.
pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
