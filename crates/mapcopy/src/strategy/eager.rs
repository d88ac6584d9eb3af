//! `Eager`: copy the whole range into anonymous memory at map time.
//!
//! The memory is 2 MiB aligned with `MADV_HUGEPAGE`, so the kernel backs it
//! with transparent huge pages where it can (fresh 4 KiB pages cost several
//! times more per byte than the copy itself). `pread` fills it; short reads
//! are retried; bytes past the file's end at the time of the read stay zero.
//! Then the range is made read-only (`MapCopy`) or left writable
//! (`MapCopyMut`; stores are private anonymous memory, S4).
//!
//! Snapshot: each page as of the `pread` that covered it, all between the map
//! call's start and its return. Per-page atomicity against a concurrent
//! `write()` is not guaranteed (a `pread` racing a `write` can see part of
//! it); once `map` has returned nothing changes.
#![allow(unsafe_code)]

use rustix::mm::{Advice, MprotectFlags, ProtFlags};

use super::{Request, Snapshot, Strategy};
use crate::Error;
use crate::sys::file::read_full;
use crate::sys::mmap::{HUGE_PAGE, Region};
use crate::sys::procfs;

pub(crate) fn check(req: Option<&Request<'_>>) -> Result<String, String> {
    let Some(req) = req else {
        return Ok("needs nothing but memory for the whole range".into());
    };
    fits_in_memory(req.map_len() as u64)
}

fn fits_in_memory(len: u64) -> Result<String, String> {
    match procfs::memory_available() {
        Some(avail) if len > avail => Err(format!(
            "copying {len} bytes needs more memory than the machine has available ({avail} bytes); \
             use a strategy that copies only touched pages (lazy, guard, lease, reflink) or map a smaller range"
        )),
        Some(avail) => Ok(format!(
            "{len} bytes to copy, {avail} bytes of memory available"
        )),
        None => Ok(format!("{len} bytes to copy (memory available unknown)")),
    }
}

pub(crate) fn map(req: &Request<'_>) -> Result<Box<dyn Snapshot>, Error> {
    check(Some(req)).map_err(|why| Error::unsupported(Strategy::Eager, why))?;
    let len = req.map_len();
    let mut region =
        Region::anonymous(len, ProtFlags::READ | ProtFlags::WRITE, false, HUGE_PAGE)
            .map_err(|e| Error::io(format!("allocating {len} bytes of anonymous memory"), e))?;
    // Only advice; a kernel without THP just ignores it.
    let _ = region.advise(0, region.len(), Advice::LinuxHugepage);
    fill(&mut region, req)?;
    if !req.writable {
        region
            .protect(0, region.len(), MprotectFlags::READ)
            .map_err(|e| Error::io("making the copy read-only", e))?;
    }
    Ok(Box::new(Eager {
        region,
        head: req.head,
        len: req.len,
    }))
}

/// Copies `[offset, offset + map_len)` of the file into `region`, stopping at
/// the end of the file (the rest stays zero).
fn fill(region: &mut Region, req: &Request<'_>) -> Result<(), Error> {
    let want = req.map_len();
    // SAFETY: fresh, writable anonymous memory borrowed exclusively; nothing
    // else can see it before `map` returns.
    let buf = unsafe { region.as_mut_slice(0, want) };
    read_full(req.file, buf, req.offset)
        .map_err(|(at, e)| Error::io(format!("reading the file at offset {at}"), e))
}

#[derive(Debug)]
struct Eager {
    region: Region,
    head: usize,
    len: usize,
}

impl Snapshot for Eager {
    fn strategy(&self) -> Strategy {
        Strategy::Eager
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: private anonymous memory filled once by `fill` before this
        // value existed; afterwards only `bytes_mut` (through `&mut self`)
        // writes it. Anonymous memory never faults fatally.
        unsafe { self.region.as_slice(self.head, self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above; the region stayed writable for map_mut requests
        // (the only ones that reach here) and `&mut self` is exclusive.
        unsafe { self.region.as_mut_slice(self.head, self.len) }
    }
}
