//! A file's change indicator (size and ctime from `statx`), for telling
//! whether a copy taken with `pread` holds one version of the file.
//!
//! Every syscall that changes a file's data or size moves its ctime
//! (`file_update_time`, `file_modified`, `setattr`), and so does the first
//! store through a shared writable mapping into a clean page
//! (`page_mkwrite`). The kernel stamps ctime from the coarse clock
//! (`CLOCK_REALTIME_COARSE`); on filesystems with multigrain timestamps
//! (ext4, xfs, btrfs, tmpfs since Linux 6.13) a change after ctime was
//! queried gets a fine-grained, strictly later stamp. So if the stamp read
//! before a copy is older than the current coarse tick ([`Stamp::settled`]),
//! any change during the copy gives a different stamp after it, on every
//! filesystem. What no stamp shows: a `write()` that updated ctime before
//! the first stamp and is still copying data, and stores into pages of a
//! shared writable mapping that are already dirty. Both need a writer that
//! already holds the file open (an fd or mapping with write access).

use std::os::fd::AsFd;

use rustix::fs::{AtFlags, StatxFlags};
use rustix::time::{ClockId, clock_gettime};

/// Size and ctime of a file at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub(crate) size: u64,
    ctime: (i64, u32),
    mtime: (i64, u32),
}

impl Stamp {
    /// The stamp of `fd` now.
    pub(crate) fn of(fd: impl AsFd) -> std::io::Result<Stamp> {
        let st = rustix::fs::statx(
            fd,
            c"",
            AtFlags::EMPTY_PATH,
            StatxFlags::SIZE | StatxFlags::CTIME | StatxFlags::MTIME,
        )?;
        Ok(Stamp {
            size: st.stx_size,
            ctime: (st.stx_ctime.tv_sec, st.stx_ctime.tv_nsec),
            mtime: (st.stx_mtime.tv_sec, st.stx_mtime.tv_nsec),
        })
    }

    /// Is ctime older than the current coarse tick, so that any later
    /// change is sure to move it (see the module docs)? A file changed
    /// within the last tick is not settled yet: wait a tick and stamp again.
    pub(crate) fn settled(&self) -> bool {
        let now = clock_gettime(ClockId::RealtimeCoarse);
        (now.tv_sec, now.tv_nsec as u32) > self.ctime
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_write_moves_the_stamp() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"one").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let a = Stamp::of(&f).unwrap();
        assert!(a.settled(), "20 ms after the write: {a:?}");
        assert_eq!(a, Stamp::of(&f).unwrap(), "nothing changed");
        // Same size, same tick as the stamp: still seen.
        rustix::io::pwrite(&f, b"two", 0).unwrap();
        let b = Stamp::of(&f).unwrap();
        assert_ne!(a, b);
        assert_eq!(b.size, 3);
    }
}
