//! File leases (`fcntl(F_SETLEASE)`, `F_GETLEASE`) and where their break
//! notification goes (`F_SETSIG`, `F_SETOWN_EX`).
//!
//! Neither rustix nor libc wraps these (libc lacks `F_SETSIG`,
//! `F_SETOWN_EX` and `struct f_owner_ex` for Linux/glibc), so the constants
//! and the struct come from `linux-raw-sys` (the kernel's
//! `include/uapi/asm-generic/fcntl.h`) and the calls go through
//! `libc::fcntl`.
//!
//! A read lease on an fd exists only while nobody has the file open for
//! writing; a later `open` for writing, `truncate(2)` of the path or an
//! `O_TRUNC` open blocks until the holder releases it (`F_UNLCK`) or
//! `/proc/sys/fs/lease-break-time` seconds pass. The holder learns of the
//! break by a signal: `F_SETSIG` picks it (and makes it carry `si_fd`),
//! `F_SETOWN_EX` picks the thread. Used by the `Lease` strategy, and
//! reusable by any strategy that needs the "no writer exists" proof.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use linux_raw_sys::general as k;

use super::cvt;

/// Which lease an fd holds (or is being broken to).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lease {
    /// `F_RDLCK`: no writer may open the file without breaking it.
    Read,
    /// `F_WRLCK`: nobody else may open the file.
    Write,
    /// `F_UNLCK`: none (or the lease is being broken to none).
    Unlock,
}

impl Lease {
    fn raw(self) -> libc::c_int {
        (match self {
            Lease::Read => k::F_RDLCK,
            Lease::Write => k::F_WRLCK,
            Lease::Unlock => k::F_UNLCK,
        }) as libc::c_int
    }
}

/// `fcntl(fd, F_SETLEASE, lease)`. Errors as the kernel gives them:
/// `EAGAIN` (a writer has the file open, or it is mapped shared-writable),
/// `EACCES` (not the owner and no `CAP_LEASE`), `EINVAL` (the filesystem
/// has no leases, or `fs.leases-enable` is 0).
pub(crate) fn set_lease<Fd: AsFd>(fd: Fd, lease: Lease) -> io::Result<()> {
    // SAFETY: F_SETLEASE takes an int argument and touches no memory of ours.
    cvt(unsafe {
        libc::fcntl(
            fd.as_fd().as_raw_fd(),
            k::F_SETLEASE as libc::c_int,
            lease.raw(),
        )
    })
    .map(drop)
}

/// `fcntl(fd, F_GETLEASE)`: the lease held through this fd. While a lease is
/// being broken it reports the type it is being broken *to* (`Unlock` for
/// a read lease a writer is waiting on).
pub(crate) fn get_lease<Fd: AsFd>(fd: Fd) -> io::Result<Lease> {
    // SAFETY: F_GETLEASE takes no argument and touches no memory of ours.
    let r = cvt(unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), k::F_GETLEASE as libc::c_int) })?;
    Ok(match r as u32 {
        k::F_RDLCK => Lease::Read,
        k::F_WRLCK => Lease::Write,
        _ => Lease::Unlock,
    })
}

/// `fcntl(fd, F_SETSIG, signo)`: deliver this fd's I/O and lease-break
/// notifications as `signo` with `si_fd` set (instead of a plain `SIGIO`,
/// whose default action kills the process). Set it before taking a lease.
pub(crate) fn set_signal<Fd: AsFd>(fd: Fd, signo: i32) -> io::Result<()> {
    // SAFETY: F_SETSIG takes an int argument and touches no memory of ours.
    cvt(unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), k::F_SETSIG as libc::c_int, signo) }).map(drop)
}

/// `fcntl(fd, F_SETOWN_EX, {F_OWNER_TID, tid})`: send this fd's
/// notifications to thread `tid` of this process only, not to whichever
/// thread the kernel picks. `F_SETLEASE` resets the owner to the whole
/// process, so call this after it.
pub(crate) fn set_owner_thread<Fd: AsFd>(fd: Fd, tid: rustix::thread::Pid) -> io::Result<()> {
    let owner = k::f_owner_ex {
        type_: k::F_OWNER_TID as _,
        pid: tid.as_raw_nonzero().get(),
    };
    // SAFETY: F_SETOWN_EX reads one `struct f_owner_ex` through the pointer,
    // which points to a live, initialized value of exactly that type.
    cvt(unsafe {
        libc::fcntl(
            fd.as_fd().as_raw_fd(),
            k::F_SETOWN_EX as libc::c_int,
            &owner as *const k::f_owner_ex,
        )
    })
    .map(drop)
}

/// Outcome of [`try_read_lease`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LeaseProbe {
    /// A read lease was granted (and released again): no writable fd of the
    /// file existed at that instant.
    NoWriter,
    /// `EAGAIN`: some process holds the file open for writing (or maps it
    /// shared and writable).
    WriterExists,
}

/// Takes and immediately drops a read lease on `file` (`F_SETLEASE F_RDLCK`
/// then `F_UNLCK`). The kernel refuses a read lease with `EAGAIN` while any
/// writable fd of the file is open, which is the proof the `Guard` needs
/// and what `sys::detect` reports. `file` should be this crate's own
/// read-only fd (a lease belongs to the open file description).
pub(crate) fn try_read_lease(file: BorrowedFd<'_>) -> io::Result<LeaseProbe> {
    // Should a writer open the file in the microseconds the lease is held,
    // the kernel signals the holder; the default SIGIO would kill this
    // process, SIGURG is ignored by default.
    set_signal(file, libc::SIGURG)?;
    match set_lease(file, Lease::Read) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => return Ok(LeaseProbe::WriterExists),
        Err(e) => return Err(e),
    }
    set_lease(file, Lease::Unlock)?;
    Ok(LeaseProbe::NoWriter)
}

/// Whether the kernel offers leases at all (`/proc/sys/fs/leases-enable`).
pub(crate) fn leases_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/fs/leases-enable").map_or(true, |s| s.trim() != "0")
}

/// Seconds a lease holder has to release before the kernel breaks the lease
/// itself (`/proc/sys/fs/lease-break-time`).
pub(crate) fn break_time() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/lease-break-time")
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    #[test]
    fn read_lease_round_trip() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let f = File::open(tmp.path()).unwrap();
        assert_eq!(get_lease(&f).unwrap(), Lease::Unlock);
        // The NamedTempFile's own fd is writable: no read lease while it is open.
        let e = set_lease(&f, Lease::Read).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EAGAIN));
        let path = tmp.into_temp_path();
        let f = File::open(&path).unwrap();
        set_lease(&f, Lease::Read).unwrap();
        assert_eq!(get_lease(&f).unwrap(), Lease::Read);
        set_lease(&f, Lease::Unlock).unwrap();
        assert_eq!(get_lease(&f).unwrap(), Lease::Unlock);
    }
}
