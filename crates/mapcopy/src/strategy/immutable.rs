//! `Immutable`: files the kernel itself will not let anyone change while
//! they exist, mapped privately with nothing kept — no fd, no thread, no
//! event, no copy.
//!
//! A file qualifies when the kernel refuses every write, truncation and
//! hole punch on it, for every process, for as long as the mapping can
//! live:
//!
//! * a **memfd sealed with `F_SEAL_WRITE` and `F_SEAL_SHRINK`**: seals can
//!   never be removed; `F_SEAL_WRITE` refuses `write`, writable shared
//!   mappings and `fallocate`, and the kernel sets it only when no writable
//!   shared mapping exists and no page is pinned for writing (it waits for
//!   pins, then fails with `EBUSY`); `F_SEAL_SHRINK` refuses truncation.
//!   `F_SEAL_FUTURE_WRITE` alone is not enough, and refused: a writable
//!   `MAP_SHARED` mapping made before that seal keeps storing into the
//!   pages (shown by the tests).
//! * a file with **fs-verity** enabled (`STATX_ATTR_VERITY`): the kernel
//!   refuses every open for writing and every truncation, for good, and
//!   verifies each page it reads against the file's Merkle tree.
//! * a file on **erofs** or **squashfs**: filesystems with no write
//!   support at all (not a read-only mount of a writable filesystem, which
//!   a remount or another mount of the same device can write).
//!
//! Not immutable, so refused: a read-only mount (`ro`, a read-only bind
//! mount) of a writable filesystem, `chattr +i` (root clears it), a file
//! with no writer today, a memfd with only some of the seals, a sealed memfd
//! on hugetlbfs (not shown by the tests).
//!
//! The mapping is `MAP_PRIVATE` of the file itself; pages past the file's
//! end (the file can only grow, and only a memfd without `F_SEAL_GROW`)
//! are anonymous zeros. A forked child shares it like any private mapping.
//! `map_mut` gives a private writable mapping (stores stay in the process).
//!
//! What it does not cover: the device or image file under an erofs or
//! squashfs mount. Whoever can write the block device (root, or the owner
//! of a loop device's backing file) changes what the filesystem reads for
//! pages not in the page cache — the kernel treats that as corruption of a
//! mounted filesystem, not as a write to the file, and so does this crate.
//! Files with fs-verity are verified page by page instead: a changed block
//! fails to read (`EIO`, SIGBUS on touch; `populate(true)` turns it into a
//! map error; shown on ext4 by `tests/immutable.rs`, `verity/corrupted-block`,
//! in the VM of `kernel/vm-contract.sh`).
#![allow(unsafe_code)]

use rustix::fs::SealFlags;
use rustix::mm::ProtFlags;

use super::{Request, Snapshot, Span, Strategy};
use crate::Error;
use crate::sys::fs::magic;
use crate::sys::mmap::Region;

/// The seals that make a memfd immutable.
const SEALS: SealFlags = SealFlags::WRITE.union(SealFlags::SHRINK);

/// Why the file in `req` cannot change, or why it could.
pub(crate) fn immutable(req: &Request<'_>) -> Result<&'static str, String> {
    let m = &req.meta;
    match m.fs_type {
        magic::EROFS => return Ok("the file is on erofs, which has no write support"),
        magic::SQUASHFS => return Ok("the file is on squashfs, which has no write support"),
        _ => {}
    }
    if m.verity {
        return Ok(
            "fs-verity is enabled on the file: the kernel refuses every open for \
                   writing and every truncation of it",
        );
    }
    if m.seals.contains(SEALS) {
        return Ok("the memfd is sealed with F_SEAL_WRITE and F_SEAL_SHRINK");
    }
    const KINDS: &str = "Immutable maps only a memfd sealed with F_SEAL_WRITE and F_SEAL_SHRINK, \
                         a file with fs-verity enabled, or a file on erofs or squashfs";
    let fs = crate::sys::fs::name(m.fs_type);
    if m.fs_type == magic::HUGETLBFS {
        return Err(format!(
            "a file on hugetlbfs (sealed or not, not shown by this crate's tests); {KINDS}"
        ));
    }
    if !m.seals.is_empty() {
        let mut missing = Vec::new();
        if !m.seals.contains(SealFlags::WRITE) {
            missing.push(if m.seals.contains(SealFlags::FUTURE_WRITE) {
                "F_SEAL_WRITE (F_SEAL_FUTURE_WRITE is not enough: a writable MAP_SHARED \
                 mapping made before it still stores into the memfd)"
            } else {
                "F_SEAL_WRITE"
            });
        }
        if !m.seals.contains(SealFlags::SHRINK) {
            missing.push("F_SEAL_SHRINK");
        }
        return Err(format!(
            "the memfd is sealed without {}; {KINDS}",
            missing.join(" and ")
        ));
    }
    Err(format!(
        "the file (on {fs}) can be written or truncated by whoever may open it for writing \
         (a read-only mount or chattr +i does not change that: a remount, another mount or \
         root can); {KINDS}"
    ))
}

pub(crate) fn check(req: Option<&Request<'_>>) -> Result<String, String> {
    match req {
        None => Ok(
            "needs nothing from the process or kernel; usable for files that cannot \
                    change: a memfd sealed with F_SEAL_WRITE and F_SEAL_SHRINK, a file with \
                    fs-verity enabled, a file on erofs or squashfs"
                .into(),
        ),
        Some(req) => immutable(req).map(|why| format!("{why}; mapped privately, nothing kept")),
    }
}

pub(crate) fn map(req: &Request<'_>) -> Result<Box<dyn Snapshot>, Error> {
    immutable(req).map_err(|why| Error::unsupported(Strategy::Immutable, why))?;
    let prot = if req.writable {
        ProtFlags::READ | ProtFlags::WRITE
    } else {
        ProtFlags::READ
    };
    let len = req.map_len();
    // The size seen by the request is the size for good: no one can
    // shrink the file (a sealed memfd may grow; the bytes past the size
    // the request saw read as zeros, as in any snapshot of that size).
    let region = Region::file_padded(req.file, req.offset, len, req.meta.size, prot, req.writable)
        .map_err(|e| Error::io(format!("mapping {len} bytes of the file"), e))?;
    let in_file = req.meta.size.saturating_sub(req.offset).min(len as u64) as usize;
    if req.populate {
        super::populate(&region, in_file)?;
    }
    Ok(Box::new(Immutable {
        region,
        head: req.head,
        len: req.len,
    }))
}

#[derive(Debug)]
struct Immutable {
    region: Region,
    head: usize,
    len: usize,
}

// SAFETY: (`Snapshot`'s promises) the span is `[head, head + len)` of
// `region`, which is never remapped: the address is fixed for the value's
// life. `map` checked that the kernel refuses every change to the file's
// bytes and every shrink, for every process and for good (seals cannot be
// removed; fs-verity cannot be turned off; erofs and squashfs have no write
// path), so the pages of this MAP_PRIVATE mapping never change and never
// fault fatally (pages past the size seen at map time are anonymous zeros).
// map_mut requests map it writable (MAP_PRIVATE: stores stay in this
// process, S4); only the `MapCopyMut` writes it.
unsafe impl Snapshot for Immutable {
    fn strategy(&self) -> Strategy {
        Strategy::Immutable
    }

    fn span(&self) -> Span {
        self.region.span(self.head, self.len)
    }
}
