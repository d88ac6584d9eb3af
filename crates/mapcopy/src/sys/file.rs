//! What a file descriptor refers to, checked before anything is mapped.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;

use rustix::fs::{self, AtFlags, FileType, OFlags, SealFlags, StatxAttributes, StatxFlags};
use rustix::io::Errno;

// The magic → name table lives in `sys::fs`; re-exported for the callers
// that name it through here.
pub(crate) use super::fs::{magic, name as fs_name};

/// What kind of thing an fd is, for the error when it is not a regular file.
pub(crate) fn type_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symbolic link",
        FileType::Fifo => "pipe (FIFO)",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        _ => "file of unknown type",
    }
}

/// The facts about an open file that decide how it can be mapped.
#[derive(Clone, Debug)]

pub(crate) struct Meta {
    pub(crate) file_type: FileType,
    /// Size in bytes at the time of the check.
    pub(crate) size: u64,
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) uid: u32,
    /// `f_type` of the filesystem.
    pub(crate) fs_type: i64,
    /// The fd can be read (`O_RDONLY` or `O_RDWR`, not `O_PATH`).
    pub(crate) readable: bool,
    /// The fd can be written (this process itself holds a writer).
    pub(crate) writable: bool,
    /// fs-verity is enabled on the file (`STATX_ATTR_VERITY`): no open for
    /// writing and no truncation will ever succeed.
    pub(crate) verity: bool,
    /// The file's seals (`F_GET_SEALS`), read for files on tmpfs (a memfd)
    /// only; empty elsewhere.
    pub(crate) seals: SealFlags,
}

impl Meta {
    pub(crate) fn of(file: &File) -> io::Result<Meta> {
        let sfs = fs::fstatfs(file)?;
        #[allow(clippy::unnecessary_cast)]
        let fs_type = sfs.f_type as i64;
        let fl = fs::fcntl_getfl(file)?;
        let acc = fl & OFlags::RWMODE;
        let path = fl.contains(OFlags::PATH);
        // Seals before the size: seals are never removed, so a size read
        // after F_SEAL_SHRINK was seen is one the file never goes below.
        let seals = if fs_type == magic::TMPFS && !path {
            // EINVAL: not a memfd (a tmpfs file made by open takes no seals).
            fs::fcntl_get_seals(file).unwrap_or(SealFlags::empty())
        } else {
            SealFlags::empty()
        };
        // statx rather than fstat: the same cost, and it also tells whether
        // fs-verity is on (the filesystem sets that before the size is read).
        let st = fs::statx(file, "", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS)?;
        let file_type = FileType::from_raw_mode(st.stx_mode.into());
        Ok(Meta {
            file_type,
            size: st.stx_size,
            dev: fs::makedev(st.stx_dev_major, st.stx_dev_minor),
            ino: st.stx_ino,
            uid: st.stx_uid,
            fs_type,
            readable: !path && (acc == OFlags::RDONLY || acc == OFlags::RDWR),
            writable: !path && (acc == OFlags::WRONLY || acc == OFlags::RDWR),
            verity: st.stx_attributes.contains(StatxAttributes::VERITY),
            seals,
        })
    }

    /// Filesystems whose regular files have no stable size or contents
    /// (generated on read).
    pub(crate) fn is_pseudo_fs(&self) -> bool {
        use magic::*;
        matches!(self.fs_type, PROC | SYSFS | DEBUGFS | TRACEFS | CGROUP2)
    }
}

/// `pread` until `buf` is full or the file ends (the rest of `buf` is left
/// as it was: zeros in fresh memory), retrying short reads, `EINTR` and
/// `EAGAIN`; returns how many bytes were read. An error comes with the file
/// offset that failed.
pub(crate) fn read_full<Fd: AsFd>(
    file: Fd,
    buf: &mut [u8],
    offset: u64,
) -> Result<usize, (u64, Errno)> {
    let mut done = 0;
    while done < buf.len() {
        let at = offset + done as u64;
        match rustix::io::pread(&file, &mut buf[done..], at) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(Errno::INTR | Errno::AGAIN) => continue,
            Err(e) => return Err((at, e)),
        }
    }
    Ok(done)
}
