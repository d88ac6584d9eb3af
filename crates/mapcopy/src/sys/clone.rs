//! Reflink clones into unlinked temporary files: where to create them and
//! what the kernel's refusals mean.
//!
//! A clone (`FICLONE`) shares the source's extents; the filesystem copies a
//! block only when one side writes it. The clone lives in an `O_TMPFILE`
//! that is never linked into a directory, so it disappears with its last
//! reference (our fd or a mapping of it) — after drop, panic or `SIGKILL`
//! alike; only a crash of the whole machine leaves an orphan inode, which the
//! filesystem's own orphan recovery frees at the next mount.
//!
//! `FICLONE` works only within one *mount* (`ioctl_file_clone` returns
//! `EXDEV` when the two files' `f_path.mnt` differ, even on one filesystem),
//! so the directory for the temporary file is chosen by mount id
//! (`statx(STATX_MNT_ID)`), not by `st_dev` (which also differs between btrfs
//! subvolumes of one mount, where cloning works).
//!
//! Used by the `Reflink` strategy (the whole mapping is a clone) and by
//! `Lease` (a clone is its snapshot when a lease breaks).
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, IFlags, Mode, OFlags, StatxFlags};
use rustix::io::Errno;

use super::errno_of;
use super::file::fs_name;

/// Environment variable naming a directory to create clones in, tried
/// before any other (it must be on the same mount as the file).
pub(crate) const TMPDIR_ENV: &str = "MAPCOPY_TMPDIR";

/// A directory on the file's mount where this process can create
/// `O_TMPFILE`s, and where the filesystem was seen to clone.
#[derive(Debug)]
pub(crate) struct CloneDir {
    dir: OwnedFd,
    path: PathBuf,
}

impl CloneDir {
    /// Finds a directory on the same mount as `file` where an `O_TMPFILE` can
    /// be created and a clone between two such files succeeds. `Err` is the
    /// user-facing reason there is none (no reflink on this filesystem, no
    /// writable directory on this mount, ...).
    ///
    /// What was found is remembered per mount (by its never-reused id,
    /// `STATX_MNT_ID_UNIQUE`, Linux 6.8; older kernels do not remember) and
    /// effective uid for the life of the process: later calls only reopen
    /// and re-check the directory (the probe clone is what costs).
    pub(crate) fn find(file: &File, fs_type: i64) -> Result<CloneDir, String> {
        let unique = unique_mount_id(file);
        let euid = rustix::process::geteuid().as_raw();
        let known = unique.and_then(|u| {
            lock_known()
                .iter()
                .find(|k| k.mnt == u && k.euid == euid)
                .map(|k| k.found.clone())
        });
        match known {
            Some(Err(no_reflink)) => return Err(no_reflink),
            Some(Ok(path)) => {
                let reopened = rfs::open(
                    &path,
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                );
                if let Ok(dir) = reopened
                    && unique_mount_id(&dir) == unique
                {
                    return Ok(CloneDir { dir, path });
                }
                forget(&path);
            }
            None => {}
        }
        let mnt = mount_id(file).map_err(|e| format!("cannot find the file's mount: {e}"))?;
        let remember = |found: Result<PathBuf, String>| {
            let Some(u) = unique else { return };
            let mut k = lock_known();
            k.retain(|k| !(k.mnt == u && k.euid == euid));
            k.push(Known {
                mnt: u,
                euid,
                found,
            });
        };
        let mut tried = Vec::new();
        for cand in candidates(file, mnt.0) {
            let dir = match rfs::open(
                &cand,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(d) => d,
                Err(_) => continue,
            };
            match mount_id(&dir) {
                Ok(m) if m == mnt => {}
                _ => continue,
            }
            let dir = CloneDir { dir, path: cand };
            match dir.probe() {
                Ok(()) => {
                    remember(Ok(dir.path.clone()));
                    return Ok(dir);
                }
                // The filesystem itself cannot clone: no other directory on
                // this mount will do better.
                Err(Errno::OPNOTSUPP) | Err(Errno::NOTTY) => {
                    let why = format!(
                        "{} does not support reflink (FICLONE fails with EOPNOTSUPP){}",
                        fs_name(fs_type),
                        no_reflink_hint(fs_type)
                    );
                    remember(Err(why.clone()));
                    return Err(why);
                }
                Err(e) => tried.push(format!("{}: {e}", dir.path.display())),
            }
        }
        if tried.is_empty() {
            Err(format!(
                "no directory on the file's mount ({}) was found to create a temporary clone in; \
                 set {TMPDIR_ENV} to a writable directory on that mount",
                mnt.1
            ))
        } else {
            Err(format!(
                "no directory on the file's mount ({}) lets this process create a temporary clone \
                 (tried {}); set {TMPDIR_ENV} to a writable directory on that mount",
                mnt.1,
                tried.join(", ")
            ))
        }
    }

    /// Where the clones go (for messages).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// A new unlinked, empty, private temporary file in this directory.
    pub(crate) fn tmpfile(&self) -> io::Result<OwnedFd> {
        Ok(rfs::openat(
            &self.dir,
            ".",
            OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )?)
    }

    /// Can this directory hold a tmpfile and does the filesystem clone?
    /// Clones one empty tmpfile into another: no data, no trace.
    fn probe(&self) -> Result<(), Errno> {
        let a = self.tmpfile().map_err(errno_of)?;
        let b = self.tmpfile().map_err(errno_of)?;
        rfs::ioctl_ficlone(&b, &a)
    }

    /// Clones all of `src` into a new temporary file and returns it. The
    /// clone is atomic: it holds `src`'s bytes at one instant, and its size
    /// (`fstat`) is `src`'s size at that instant. `Err` is a user-facing
    /// reason the filesystem refused (or an I/O error's text).
    pub(crate) fn clone_file(&self, src: &File, fs_type: i64) -> Result<OwnedFd, CloneError> {
        let dst = self.tmpfile().map_err(|e| {
            // It worked when found; not any more (permissions, read-only
            // remount, full): look again next time.
            forget(&self.path);
            CloneError::Unsupported(format!(
                "cannot create a temporary file for the clone in {}: {e}",
                self.path.display()
            ))
        })?;
        // btrfs refuses to clone between a nodatacow (chattr +C) file and a
        // checksummed one (EINVAL): give the clone the source's NOCOW flag.
        if rfs::ioctl_getflags(src).is_ok_and(|f| f.contains(IFlags::NOCOW)) {
            let _ = rfs::ioctl_setflags(&dst, IFlags::NOCOW);
        }
        loop {
            match rfs::ioctl_ficlone(&dst, src) {
                Ok(()) => return Ok(dst),
                Err(Errno::INTR) => continue,
                Err(e) => {
                    // Whatever was remembered may be wrong now.
                    forget(&self.path);
                    return Err(ficlone_error(e, fs_type));
                }
            }
        }
    }
}

/// What `CloneDir::find` found for one mount and effective uid.
struct Known {
    mnt: u64,
    euid: u32,
    /// A directory that clones, or why the filesystem cannot.
    found: Result<PathBuf, String>,
}

static KNOWN: std::sync::Mutex<Vec<Known>> = std::sync::Mutex::new(Vec::new());

fn lock_known() -> std::sync::MutexGuard<'static, Vec<Known>> {
    KNOWN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Drops what was remembered about directory `path`.
fn forget(path: &Path) {
    lock_known().retain(|k| k.found.as_ref().map_or(true, |p| p != path));
}

/// Why a clone failed: the filesystem cannot (`Unsupported`), or an I/O
/// error worth reporting as such.
#[derive(Debug)]
pub(crate) enum CloneError {
    Unsupported(String),
    Io(String, io::Error),
}

fn ficlone_error(e: Errno, fs_type: i64) -> CloneError {
    let fs = fs_name(fs_type);
    let why = match e {
        Errno::OPNOTSUPP | Errno::NOTTY => format!(
            "{fs} does not support reflink (FICLONE: EOPNOTSUPP){}",
            no_reflink_hint(fs_type)
        ),
        Errno::XDEV => "the temporary file ended up on another mount than the file (FICLONE: EXDEV); \
             clones work only within one mount"
            .to_string(),
        Errno::INVAL => format!(
            "{fs} refused to clone this file (FICLONE: EINVAL): it cannot share this file's extents \
             (on btrfs: a nodatacow/checksum mismatch; elsewhere: a layout the filesystem cannot clone)"
        ),
        Errno::TXTBSY => "the file is an active swap file (FICLONE: ETXTBSY)".to_string(),
        Errno::PERM => {
            "the filesystem does not allow cloning this file (FICLONE: EPERM: immutable, append-only or a swap file)"
                .to_string()
        }
        Errno::BADF => "the file is not open for reading (FICLONE: EBADF)".to_string(),
        Errno::ISDIR => "not a regular file (FICLONE: EISDIR)".to_string(),
        other => {
            return CloneError::Io(
                "cloning the file (FICLONE)".to_string(),
                io::Error::from_raw_os_error(other.raw_os_error()),
            );
        }
    };
    CloneError::Unsupported(why)
}

fn no_reflink_hint(fs_type: i64) -> &'static str {
    use super::file::magic::*;
    match fs_type {
        EXT4 => "; use xfs (mkfs.xfs -m reflink=1) or btrfs",
        XFS => "; this xfs was made without reflink (mkfs.xfs -m reflink=1 enables it)",
        TMPFS => "; tmpfs has no reflink",
        _ => "",
    }
}

/// The mount id of an fd (`statx(STATX_MNT_ID)`, Linux 5.8), or its device
/// number on older kernels; with a printable name for messages.
fn mount_id<Fd: AsFd>(fd: Fd) -> io::Result<(u64, String)> {
    let st = rfs::statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID)?;
    if StatxFlags::from_bits_retain(st.stx_mask).contains(StatxFlags::MNT_ID) {
        Ok((st.stx_mnt_id, format!("mount id {}", st.stx_mnt_id)))
    } else {
        let dev = ((st.stx_dev_major as u64) << 32) | st.stx_dev_minor as u64;
        Ok((
            dev | 1 << 63,
            format!("device {}:{}", st.stx_dev_major, st.stx_dev_minor),
        ))
    }
}

/// The mount's never-reused id (`STATX_MNT_ID_UNIQUE`, Linux 6.8), if the
/// kernel has it. (rustix has no name for the flag yet; the value is from
/// `include/uapi/linux/stat.h` via linux-raw-sys.)
fn unique_mount_id<Fd: AsFd>(fd: Fd) -> Option<u64> {
    let want = StatxFlags::from_bits_retain(linux_raw_sys::general::STATX_MNT_ID_UNIQUE);
    let st = rfs::statx(fd, "", AtFlags::EMPTY_PATH, want).ok()?;
    StatxFlags::from_bits_retain(st.stx_mask)
        .contains(want)
        .then_some(st.stx_mnt_id)
}

/// Directories to try, best first: `$MAPCOPY_TMPDIR`, the file's own
/// directory, the root of its mount (from `/proc/self/mountinfo`) and its
/// `tmp`/`var/tmp`, then the usual temporary directories (which qualify only
/// if they are on the same mount).
fn candidates(file: &File, mnt_id: u64) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(d) = std::env::var_os(TMPDIR_ENV) {
        out.push(PathBuf::from(d));
    }
    if let Some(dir) = own_dir(file) {
        out.push(dir);
    }
    if let Some(root) = mount_point(mnt_id) {
        out.push(root.join("tmp"));
        out.push(root.join("var/tmp"));
        out.push(root);
    }
    out.push(std::env::temp_dir());
    out.extend(["/tmp", "/var/tmp", "/dev/shm"].map(PathBuf::from));
    out.dedup();
    out
}

/// The directory the file was opened in, if it still has a name there.
fn own_dir(file: &File) -> Option<PathBuf> {
    use std::os::fd::AsRawFd;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
    if link.as_os_str().as_encoded_bytes().ends_with(b" (deleted)") || !link.is_absolute() {
        return None;
    }
    link.parent().map(Path::to_path_buf)
}

/// Where mount `mnt_id` is mounted in this process's namespace.
fn mount_point(mnt_id: u64) -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|line| {
        let mut f = line.split(' ');
        let id: u64 = f.next()?.parse().ok()?;
        if id != mnt_id {
            return None;
        }
        Some(unescape(f.nth(3)?))
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo() {
        assert_eq!(unescape(r"/mnt/a\040b"), PathBuf::from("/mnt/a b"));
        assert_eq!(unescape(r"/x\134y"), PathBuf::from("/x\\y"));
        assert_eq!(unescape(r"/plain"), PathBuf::from("/plain"));
        assert_eq!(unescape(r"/end\04"), PathBuf::from(r"/end\04"));
    }

    #[test]
    fn own_mount_is_found() {
        let f = File::open("/proc/self/exe").unwrap();
        let (id, _) = mount_id(&f).unwrap();
        let root = mount_point(id).expect("the executable's mount is listed");
        assert!(root.is_absolute());
    }
}
