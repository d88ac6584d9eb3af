//! `Reflink`: clone the whole file (`FICLONE`) into an unlinked temporary
//! file on the same mount, and map the clone privately.
//!
//! The clone shares the file's extents; the filesystem copies a block only
//! when the original is written later (copy-on-write in the filesystem), so
//! no data is copied at map time and the clone's page cache is its own. Map
//! time grows with the file's extent count, not its size (see the crate's
//! `zerocopy` example for measurements).
//!
//! Snapshot: the whole file at the instant of the clone (between the map
//! call's start and its return), atomically — `FICLONE` holds both inodes'
//! locks for the duration, so even a concurrent `write()` (buffered, direct
//! or io_uring) lands wholly before or wholly after. Not so stores through
//! another process's `MAP_SHARED` mapping that exists before the map call:
//! they take no lock, so a page being stored to while the clone is taken
//! may hold part of those stores (the torture run sees it as a torn page;
//! the page never changes afterwards). `FICLONE` first writes the file's
//! dirty pages back, so map time also grows with the dirty data. The mapped length was decided from an earlier `fstat`;
//! the clone's own size is what counts: bytes past the clone's end read as
//! zero (anonymous pages, never SIGBUS).
//!
//! Where the clone goes: the file's own directory, else another directory on
//! the same mount where `O_TMPFILE` works (`$MAPCOPY_TMPDIR`, the mount's
//! root and its `tmp`, the usual temporary directories), found by mount id;
//! none → `Unsupported` with that reason. The temporary file is never linked,
//! so nothing is left on disk after drop, panic or `SIGKILL`. The clone takes
//! no space until the original is rewritten; then the filesystem keeps the
//! old blocks alive for the mapping's lifetime (count them against quotas
//! of the mapping process's user).
//!
//! `populate`: the snapshot is complete when `map` returns anyway; with it,
//! `map` also reads every page, so a read error (`EIO`) is an `Io` error
//! from `map`. Without it, a page whose data cannot be read raises SIGBUS
//! when touched, as in any file mapping.
//! A `fork()`ed child shares the mapping and sees the same snapshot.
#![allow(unsafe_code)]

use rustix::mm::ProtFlags;

use super::{Request, Snapshot, Span, Strategy};
use crate::Error;
use crate::sys::clone::{CloneDir, CloneError};
use crate::sys::mmap::Region;

pub(crate) fn check(req: Option<&Request<'_>>) -> Result<String, String> {
    let Some(req) = req else {
        return Ok(
            "the kernel has FICLONE; usable for files on a filesystem with reflink \
             (shown on xfs made with -m reflink=1 and btrfs) where a temporary file can be created on the same mount"
                .into(),
        );
    };
    crate::sys::fs::shown(&crate::sys::fs::REFLINK, req.meta.fs_type)?;
    let dir = CloneDir::find(req.file, req.meta.fs_type)?;
    Ok(format!(
        "{} clones files; temporary clones go to {}; {}",
        crate::sys::file::fs_name(req.meta.fs_type),
        dir.path().display(),
        crate::sys::fs::holds_on(&crate::sys::fs::REFLINK)
    ))
}

pub(crate) fn map(req: &Request<'_>) -> Result<Box<dyn Snapshot>, Error> {
    let unsupported = |why: String| Error::unsupported(Strategy::Reflink, why);
    crate::sys::fs::shown(&crate::sys::fs::REFLINK, req.meta.fs_type).map_err(unsupported)?;
    let dir = CloneDir::find(req.file, req.meta.fs_type).map_err(unsupported)?;
    let clone = match dir.clone_file(req.file, req.meta.fs_type) {
        Ok(fd) => fd,
        Err(CloneError::Unsupported(why)) => return Err(unsupported(why)),
        Err(CloneError::Io(what, e)) => return Err(Error::io(what, e)),
    };
    // The clone's size, not the size seen at request time: the file may have
    // changed in between, the clone is what we hold.
    let size = rustix::fs::fstat(&clone)
        .map_err(|e| Error::io("inspecting the clone (fstat)", e))?
        .st_size as u64;
    let prot = if req.writable {
        ProtFlags::READ | ProtFlags::WRITE
    } else {
        ProtFlags::READ
    };
    let len = req.map_len();
    let region = Region::file_padded(&clone, req.offset, len, size, prot, req.writable)
        .map_err(|e| Error::io(format!("mapping {len} bytes of the clone"), e))?;
    // The mapping keeps the clone alive; closing our fd leaves no other way
    // into it (not even /proc/self/fd).
    drop(clone);
    let in_file = size.saturating_sub(req.offset).min(len as u64) as usize;
    if req.populate {
        super::populate(&region, in_file)?;
    }
    Ok(Box::new(Reflink {
        region,
        head: req.head,
        len: req.len,
    }))
}

#[derive(Debug)]
struct Reflink {
    region: Region,
    head: usize,
    len: usize,
}

// SAFETY: (`Snapshot`'s promises) the span is `[head, head + len)` of
// `region`, which is never remapped: the address is fixed for the value's
// life. The region maps (MAP_PRIVATE) an unlinked O_TMPFILE that only this
// process ever had open, through an fd closed right after mapping: no
// directory entry, no fd, no shared mapping of it exists, so nothing can
// write, truncate or punch it (a process able to ptrace us could reach it
// through /proc/PID/map_files, but it could equally write our memory). Its
// extents are shared with the original file, and the filesystem's
// copy-on-write gives every later write to the original new blocks, so the
// clone's bytes never change. Its size never changes, so its pages never
// fault fatally; pages past its end are anonymous zeros. map_mut requests
// map it writable (MAP_PRIVATE: stores stay in this process, S4); only the
// `MapCopyMut` writes it.
unsafe impl Snapshot for Reflink {
    fn strategy(&self) -> Strategy {
        Strategy::Reflink
    }

    fn span(&self) -> Span {
        self.region.span(self.head, self.len)
    }
}
