//! `Kernel`: the kernel's own `MAP_COPY`, from the patch series in this
//! repository's `kernel/` (Linux 7.3; not in mainline). The kernel keeps
//! the mapping's pages as of the `mmap()` call — it copies a page for the
//! mapping only when a writer is about to change it in the page cache — so
//! nothing is kept here: no fd, no thread, no event, no copy at map time.
//!
//! Detected by trying: a kernel without `MAP_COPY` refuses the mapping type
//! with `EINVAL` (a kernel with the series but built without it, with
//! `EOPNOTSUPP`), a filesystem that does not opt in with `EOPNOTSUPP`
//! (the series opts in ext4, xfs and btrfs; NFS, FUSE, overlayfs, 9p and
//! the like are refused). Either is `Unsupported` with that reason, and
//! `Auto` goes on to the next strategy: on an unpatched kernel nothing
//! changes but the reason `probe` gives.
//!
//! `map_mut` is a writable `MAP_COPY` mapping: stores stay in the process
//! (private, as with `MAP_PRIVATE`). A forked child inherits the mapping
//! and its snapshot (the kernel's promise). 64-bit only, as the series.
#![allow(unsafe_code)]

use std::sync::OnceLock;

use rustix::mm::ProtFlags;

use super::{Request, Snapshot, Span, Strategy};
use crate::Error;
use crate::sys::mmap::Region;

/// Whether this kernel has `MAP_COPY`, found out once: tried on a memfd.
fn kernel() -> &'static Result<String, String> {
    static FOUND: OnceLock<Result<String, String>> = OnceLock::new();
    FOUND.get_or_init(probe_kernel)
}

#[cfg(target_pointer_width = "64")]
fn probe_kernel() -> Result<String, String> {
    use rustix::io::Errno;
    let release = crate::sys::detect::Kernel::running().release;
    let fd = rustix::fs::memfd_create("mapcopy-probe", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| format!("cannot make a memfd to try MAP_COPY on: {e}"))?;
    rustix::fs::ftruncate(&fd, crate::sys::page_size() as u64)
        .map_err(|e| format!("cannot size a memfd to try MAP_COPY on: {e}"))?;
    match Region::file_copy(&fd, 0, crate::sys::page_size(), ProtFlags::READ) {
        Ok(_) => Ok(format!("this kernel ({release}) has MAP_COPY")),
        Err(e) if e.raw_os_error() == Some(Errno::INVAL.raw_os_error()) => Err(format!(
            "this kernel ({release}) has no MAP_COPY (mmap: EINVAL); it is the mapping type of \
             the Linux 7.3 patch series in this repository's kernel/"
        )),
        // The type is known: the kernel has the series; shmem (the memfd)
        // may not opt in, and each file's filesystem answers for itself.
        Err(e) if e.raw_os_error() == Some(Errno::OPNOTSUPP.raw_os_error()) => Ok(format!(
            "this kernel ({release}) knows MAP_COPY (a memfd is refused: EOPNOTSUPP; each file's \
             filesystem must opt in)"
        )),
        Err(e) => Err(format!("trying MAP_COPY on a memfd failed: {e}")),
    }
}

#[cfg(not(target_pointer_width = "64"))]
fn probe_kernel() -> Result<String, String> {
    Err("MAP_COPY exists on 64-bit kernels only".into())
}

/// The cheap pre-check for `Auto`: the kernel's answer, cached.
pub(crate) fn pre_check() -> Result<(), String> {
    kernel().clone().map(drop)
}

pub(crate) fn check(req: Option<&Request<'_>>) -> Result<String, String> {
    let found = kernel().clone()?;
    let Some(req) = req else {
        return Ok(format!(
            "{found}; usable for files on a filesystem that opts in (ext4, xfs, btrfs)"
        ));
    };
    // A filesystem answers only when asked: map one page and let it go.
    #[cfg(target_pointer_width = "64")]
    match Region::file_copy(req.file, 0, crate::sys::page_size(), ProtFlags::READ) {
        Ok(_) => Ok(format!(
            "{found}; {} opts in",
            crate::sys::fs::name(req.meta.fs_type)
        )),
        Err(e) => Err(refusal(req, &e)),
    }
    #[cfg(not(target_pointer_width = "64"))]
    Err(found)
}

/// Why the kernel refused a `MAP_COPY` of the file in `req`.
fn refusal(req: &Request<'_>, e: &std::io::Error) -> String {
    let fs = crate::sys::fs::name(req.meta.fs_type);
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) => format!(
            "{fs} does not opt in to MAP_COPY (mmap: EOPNOTSUPP): this kernel keeps the promise \
             only where the filesystem says it can (ext4, xfs, btrfs)"
        ),
        Some(libc::EINVAL) => "this kernel has no MAP_COPY (mmap: EINVAL)".into(),
        _ => format!("MAP_COPY of this file on {fs} failed: {e}"),
    }
}

pub(crate) fn map(req: &Request<'_>) -> Result<Box<dyn Snapshot>, Error> {
    kernel()
        .clone()
        .map_err(|why| Error::unsupported(Strategy::Kernel, why))?;
    #[cfg(not(target_pointer_width = "64"))]
    return Err(Error::unsupported(
        Strategy::Kernel,
        "MAP_COPY exists on 64-bit kernels only",
    ));
    #[cfg(target_pointer_width = "64")]
    {
        let prot = if req.writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        let len = req.map_len();
        let region = match Region::file_copy(req.file, req.offset, len, prot) {
            Ok(r) => r,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EINVAL)) => {
                return Err(Error::unsupported(Strategy::Kernel, refusal(req, &e)));
            }
            Err(e) => return Err(Error::io(format!("MAP_COPY of {len} bytes of the file"), e)),
        };
        if req.populate {
            super::populate(&region, len)?;
        }
        Ok(Box::new(Kernel {
            region,
            head: req.head,
            len: req.len,
        }))
    }
}

#[derive(Debug)]
struct Kernel {
    region: Region,
    head: usize,
    len: usize,
}

// SAFETY: (`Snapshot`'s promises) the span is `[head, head + len)` of
// `region`, which is never remapped: the address is fixed for the value's
// life. The region is a MAP_COPY mapping, which the kernel created only
// after the filesystem opted in: its pages keep the file as of the mmap()
// call whatever any process does to the file later (the kernel copies a
// page for it before a writer changes it), pages past a later end of file
// keep their bytes and pages past the end at map time read zeros, so
// nothing faults fatally and nothing changes. map_mut requests map it
// writable, private as MAP_PRIVATE (S4); only the `MapCopyMut` writes it.
unsafe impl Snapshot for Kernel {
    fn strategy(&self) -> Strategy {
        Strategy::Kernel
    }

    fn span(&self) -> Span {
        self.region.span(self.head, self.len)
    }
}
