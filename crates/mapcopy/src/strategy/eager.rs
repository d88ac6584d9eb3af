//! `Eager`: copy the whole range into anonymous memory at map time.
//!
//! The memory is 2 MiB aligned with `MADV_HUGEPAGE`, so the kernel backs it
//! with transparent huge pages where it can (fresh 4 KiB pages cost several
//! times more per byte than the copy itself). `pread` fills it; short reads
//! are retried; bytes past the file's end at the time of the read stay zero.
//! Then the range is made read-only (`MapCopy`) or left writable
//! (`MapCopyMut`; stores are private anonymous memory, S4).
//!
//! Snapshot, [`Consistency::PerPage`]: each page as of the `pread` that
//! covered it, all between the map call's start and its return. Per-page
//! atomicity against a concurrent `write()` is not guaranteed (a `pread`
//! racing a `write` can see part of it); once `map` has returned nothing
//! changes.
//!
//! [`Consistency::PointInTime`] (the default): the copy is validated by the
//! file's change indicator (`sys::change`: size and ctime by `statx`,
//! settled to the coarse clock tick) taken before and after it; if the
//! file changed, the copy is taken again (up to [`PIT_ATTEMPTS`] times, then
//! `Unsupported`). Every modifying syscall and the first store through a
//! shared mapping into a clean page move ctime, so an unchanged stamp means
//! one version — except for what needs a writer that already holds the file
//! open when `map` starts: a `write()` already under way (it moved ctime
//! before the first stamp) and stores into already-dirty pages of a shared
//! writable mapping. The crate docs and `probe` list that.
//!
//! [`Consistency::PerPage`]: crate::Consistency::PerPage
//! [`Consistency::PointInTime`]: crate::Consistency::PointInTime
#![allow(unsafe_code)]

use rustix::mm::{MprotectFlags, ProtFlags};

use super::{Request, Snapshot, Span, Strategy};
use crate::sys::change::Stamp;
use crate::sys::file::read_full;
use crate::sys::mmap::{Advice, HUGE_PAGE, Region};
use crate::sys::procfs;
use crate::{Consistency, Error};

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
    let _ = region.advise(0, region.len(), Advice::Hugepage);
    fill(&mut region, req)?;
    if !req.writable {
        // SAFETY: the copy is complete and nothing borrows it (`fill`'s
        // slice is gone, no span was handed out), so no reference loses
        // write access.
        unsafe { region.protect(0, region.len(), MprotectFlags::READ) }
            .map_err(|e| Error::io("making the copy read-only", e))?;
    }
    Ok(Box::new(Eager {
        region,
        head: req.head,
        len: req.len,
    }))
}

/// Copies of a file that kept changing, before `map` gives up.
const PIT_ATTEMPTS: usize = 8;

/// Copies `[offset, offset + map_len)` of the file into `region`, stopping at
/// the end of the file (the rest stays zero); under point-in-time, again
/// until the file did not change during a copy.
fn fill(region: &mut Region, req: &Request<'_>) -> Result<(), Error> {
    let want = req.map_len();
    // SAFETY: fresh, writable anonymous memory borrowed exclusively; nothing
    // else can see it before `map` returns.
    let buf = unsafe { region.as_mut_slice(0, want) };
    let copy = |buf: &mut [u8]| {
        read_full(req.file, buf, req.offset)
            .map(drop)
            .map_err(|(at, e)| Error::io(format!("reading the file at offset {at}"), e))
    };
    if req.consistency == Consistency::PerPage {
        return copy(buf);
    }
    let stamp = || Stamp::of(req.file).map_err(|e| Error::io("statx of the file", e));
    for attempt in 0..PIT_ATTEMPTS {
        let mut before = stamp()?;
        // Changed within the current clock tick: on a filesystem with
        // coarse timestamps a change in the same tick would not show.
        for _ in 0..20 {
            if before.settled() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
            before = stamp()?;
        }
        if attempt > 0 {
            // Bytes past a shrunk end must read as zero.
            buf.fill(0);
        }
        copy(buf)?;
        if before.settled() && stamp()? == before {
            return Ok(());
        }
    }
    Err(Error::unsupported(
        Strategy::Eager,
        format!(
            "the file changed during each of {PIT_ATTEMPTS} copies, so no copy is of one version              (Consistency::PointInTime); map with .consistency(Consistency::PerPage) to accept              pages of different versions"
        ),
    ))
}

#[derive(Debug)]
struct Eager {
    region: Region,
    head: usize,
    len: usize,
}

// SAFETY: (`Snapshot`'s promises) the span is `[head, head + len)` of
// `region`, which is never remapped: the address is fixed for the value's
// life. Private anonymous memory, filled once by `fill` before this value
// existed; afterwards only a `MapCopyMut`'s stores write it (map_mut
// requests leave it writable, others are made read-only). Anonymous memory
// never faults fatally, and no fork handler touches it (a child inherits it
// as ordinary private memory).
unsafe impl Snapshot for Eager {
    fn strategy(&self) -> Strategy {
        Strategy::Eager
    }

    fn span(&self) -> Span {
        self.region.span(self.head, self.len)
    }
}
