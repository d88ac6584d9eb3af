//! What this kernel, process and filesystem allow: the detections behind
//! [`crate::probe()`] and the strategies' `check()` functions.
//!
//! Every function here *tries* the interface it reports on (creates a
//! userfaultfd, clones into a temporary file, takes and drops a lease, arms
//! and drops a fanotify mark) rather than guessing from version numbers, and
//! leaves nothing behind. Results are worded for a user: `Ok` says what is
//! available, `Err` why not.
//!
//! This module is policy only: every kernel call goes through the module of
//! `sys` that owns its interface ([`super::uffd`], [`super::lease`],
//! [`super::fanotify`], `rustix` for the rest).

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, Mode, OFlags};
use rustix::io::Errno;

use super::errno_of;
use super::fanotify::{FAN_PRE_ACCESS, Group, InitFlags};
use super::file::{Meta, fs_name};
use super::lease::{LeaseProbe, try_read_lease};
use super::uffd::{self, Route};

/// Capability numbers from `include/uapi/linux/capability.h`.
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_LEASE: u32 = 28;

/// The running kernel's release (`uname -r`) and its major.minor.
#[derive(Clone, Debug)]
pub(crate) struct Kernel {
    pub(crate) release: String,
    pub(crate) major: u32,
    pub(crate) minor: u32,
}

impl Kernel {
    /// The running kernel.
    pub(crate) fn running() -> Kernel {
        let release = rustix::system::uname()
            .release()
            .to_string_lossy()
            .into_owned();
        let mut nums = release
            .split(|c: char| !c.is_ascii_digit())
            .map(|n| n.parse::<u32>().unwrap_or(0));
        let major = nums.next().unwrap_or(0);
        let minor = nums.next().unwrap_or(0);
        Kernel {
            release,
            major,
            minor,
        }
    }

    /// Is this kernel at least `major.minor`?
    pub(crate) fn at_least(&self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }
}

/// The effective capabilities this crate cares about (`CapEff` in
/// `/proc/self/status`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Caps {
    /// `CAP_SYS_ADMIN`: fanotify pre-content events (Guard).
    pub(crate) sys_admin: bool,
    /// `CAP_LEASE`: leases on files this process does not own (Lease).
    pub(crate) lease: bool,
    /// `CAP_SYS_PTRACE`: userfaultfd for kernel-mode faults without the
    /// sysctl (Lazy).
    pub(crate) sys_ptrace: bool,
}

impl Caps {
    /// Reads `CapEff` of this process; `Err` if `/proc` cannot tell.
    pub(crate) fn effective() -> Result<Caps, String> {
        let status = std::fs::read_to_string("/proc/self/status")
            .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
        Caps::parse(&status).ok_or_else(|| "no CapEff line in /proc/self/status".into())
    }

    fn parse(status: &str) -> Option<Caps> {
        let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
        let bits = u64::from_str_radix(hex.trim(), 16).ok()?;
        let has = |cap: u32| bits & (1 << cap) != 0;
        Some(Caps {
            sys_admin: has(CAP_SYS_ADMIN),
            lease: has(CAP_LEASE),
            sys_ptrace: has(CAP_SYS_PTRACE),
        })
    }
}

impl fmt::Display for Caps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yn = |b: bool| if b { "held" } else { "not held" };
        write!(
            f,
            "CAP_SYS_ADMIN {}, CAP_LEASE {}, CAP_SYS_PTRACE {}",
            yn(self.sys_admin),
            yn(self.lease),
            yn(self.sys_ptrace)
        )
    }
}

/// Which ways of getting a userfaultfd work for this process.
#[derive(Clone, Debug)]
pub(crate) struct UffdModes {
    /// `userfaultfd(2)` without `UFFD_USER_MODE_ONLY`: handles faults from
    /// kernel mode too (a syscall reading the mapping).
    pub(crate) syscall_all: Result<(), Errno>,
    /// `userfaultfd(2)` with `UFFD_USER_MODE_ONLY`: user-mode faults only; a
    /// syscall touching an unfilled page fails with `EFAULT`.
    pub(crate) syscall_user_only: Result<(), Errno>,
    /// `open("/dev/userfaultfd")` + `USERFAULTFD_IOC_NEW`: all faults, gated
    /// by the device node's permissions.
    pub(crate) dev_node: Result<(), Errno>,
    /// `vm.unprivileged_userfaultfd`, if readable.
    pub(crate) unprivileged_sysctl: Option<u32>,
}

impl UffdModes {
    /// Tries each way once; every descriptor made is closed again.
    pub(crate) fn detect() -> UffdModes {
        let syscall_all = uffd::create(Route::Syscall).map(drop).map_err(errno_of);
        let syscall_user_only = uffd::try_user_mode_only().map_err(errno_of);
        let dev_node = uffd::create(Route::DevNode).map(drop).map_err(errno_of);
        let unprivileged_sysctl = std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
            .ok()
            .and_then(|s| s.trim().parse().ok());
        UffdModes {
            syscall_all,
            syscall_user_only,
            dev_node,
            unprivileged_sysctl,
        }
    }

    /// Can this process get a userfaultfd that also serves faults taken in
    /// kernel mode (what a `Lazy` mapping needs so that `write(fd, map)`
    /// works)?
    pub(crate) fn kernel_faults(&self) -> bool {
        self.syscall_all.is_ok() || self.dev_node.is_ok()
    }
}

impl fmt::Display for UffdModes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = |r: &Result<(), Errno>| match r {
            Ok(()) => "ok".to_string(),
            Err(e) => errno_name(*e),
        };
        write!(
            f,
            "userfaultfd(2) all faults: {}, user-mode only: {}; /dev/userfaultfd: {}; vm.unprivileged_userfaultfd={}",
            r(&self.syscall_all),
            r(&self.syscall_user_only),
            r(&self.dev_node),
            self.unprivileged_sysctl
                .map_or("unreadable".to_string(), |v| v.to_string())
        )
    }
}

/// The directory an open file lives in, from `/proc/self/fd`; `None` for
/// a deleted or unnamed file.
pub(crate) fn dir_of(file: &File) -> Option<PathBuf> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
    if !link.is_absolute() || link.to_string_lossy().ends_with(" (deleted)") {
        return None;
    }
    link.parent().map(Path::to_path_buf)
}

/// What needs a reflink, for when there is no file to try it on.
pub(crate) fn reflink_filesystems() -> &'static str {
    "reflink (FICLONE) works on xfs with reflink=1, btrfs and bcachefs (Reflink is shown to keep the contract on xfs and btrfs); not on ext4 or tmpfs"
}

/// Does `FICLONE` of `file` into an `O_TMPFILE` in its own directory work?
/// The clone is unlinked from birth and closed at once; on a filesystem
/// with reflinks it shares extents and copies nothing.
pub(crate) fn reflink(file: &File, meta: &Meta) -> Result<String, String> {
    let fs = fs_name(meta.fs_type);
    let Some(dir) = dir_of(file) else {
        return Err(format!(
            "cannot locate the file's directory to try a clone on {fs}; {}",
            reflink_filesystems()
        ));
    };
    let tmp = rfs::open(
        &dir,
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| match e {
        Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL => {
            format!(
                "{fs} has no O_TMPFILE to clone into (open: {})",
                errno_name(e)
            )
        }
        e => format!(
            "cannot make an O_TMPFILE in {} to try a clone ({}); {}",
            dir.display(),
            errno_name(e),
            reflink_filesystems()
        ),
    })?;
    match rfs::ioctl_ficlone(&tmp, file) {
        Ok(()) => Ok(format!("reflink (FICLONE) works on {fs}")),
        Err(e @ (Errno::OPNOTSUPP | Errno::INVAL | Errno::NOTTY)) => Err(format!(
            "{fs} does not support reflink (FICLONE: {})",
            errno_name(e)
        )),
        Err(e) => Err(format!("FICLONE on {fs} failed: {}", errno_name(e))),
    }
}

/// Who may take a lease, for when there is no particular file: the rule,
/// and whether a read lease works at all (tried on a fresh file of ours in
/// the temporary directory; `fs.leases-enable=0` turns leases off).
pub(crate) fn lease_permission() -> Result<String, String> {
    let caps = Caps::effective().unwrap_or_default();
    let who = if caps.lease {
        "on any file (CAP_LEASE held)"
    } else {
        "only on files this user owns (CAP_LEASE not held)"
    };
    let dir = std::env::temp_dir();
    let path = dir.join(format!(
        ".mapcopy-lease-probe-{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
    ));
    let tried = (|| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| {
                format!(
                    "cannot create a file in {} to try a lease: {e}",
                    dir.display()
                )
            })?;
        let f = File::open(&path).map_err(|e| format!("cannot reopen {}: {e}", path.display()));
        let _ = std::fs::remove_file(&path);
        read_lease(&f?).map_err(|e| {
            format!(
                "read leases do not work here (F_SETLEASE F_RDLCK on a fresh file: {})",
                errno_name(e)
            )
        })
    })();
    let _ = std::fs::remove_file(&path);
    tried.map(|()| format!("read leases work, {who}"))
}

/// Can this process take a read lease on `file`? Checks permission (owner
/// or `CAP_LEASE`) and then takes one on a fresh read-only descriptor and
/// releases it at once. `EAGAIN` means some process holds the file open
/// for writing.
pub(crate) fn lease(file: &File, meta: &Meta) -> Result<String, String> {
    let caps = Caps::effective().unwrap_or_default();
    let euid = rustix::process::geteuid().as_raw();
    let why = if euid == meta.uid {
        "this user owns the file"
    } else if caps.lease {
        "CAP_LEASE held"
    } else {
        return Err(format!(
            "a read lease needs the file's owner (uid {}) or CAP_LEASE; this process is uid {euid} without CAP_LEASE",
            meta.uid
        ));
    };
    let fresh = File::open(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|e| format!("cannot reopen the file read-only to try a lease: {e}"))?;
    read_lease(&fresh).map_err(|e| match e {
        Errno::AGAIN | Errno::BUSY if meta.writable => format!(
            "a read lease cannot be taken ({}): the descriptor given is itself open for writing; map through a read-only one",
            errno_name(e)
        ),
        Errno::AGAIN | Errno::BUSY => format!(
            "a read lease cannot be taken now ({}): some process holds the file open for writing ({why})",
            errno_name(e)
        ),
        e => format!("F_SETLEASE F_RDLCK failed: {} ({why})", errno_name(e)),
    })?;
    Ok(format!("read lease taken and released ({why})"))
}

/// Takes a read lease on `fd` (which must be open read-only) and drops it
/// ([`try_read_lease`]); a writer shows as `EAGAIN`.
fn read_lease(fd: &File) -> Result<(), Errno> {
    match try_read_lease(fd.as_fd()) {
        Ok(LeaseProbe::NoWriter) => Ok(()),
        Ok(LeaseProbe::WriterExists) => Err(Errno::AGAIN),
        Err(e) => Err(errno_of(e)),
    }
}

/// Can this process arm fanotify pre-content events (`FAN_PRE_ACCESS` in a
/// `FAN_CLASS_PRE_CONTENT` group) on `file`, or with `None` on a fresh
/// temporary file in the temporary directory? The group and its mark are
/// gone when this returns.
pub(crate) fn fanotify_pre_content(file: Option<(&File, &Meta)>) -> Result<String, String> {
    let kernel = Kernel::running();
    let caps = Caps::effective().unwrap_or_default();
    let capnote = if caps.sys_admin {
        "CAP_SYS_ADMIN held"
    } else {
        "CAP_SYS_ADMIN not held"
    };
    let fan = Group::new(InitFlags::empty()).map_err(|e| match errno_of(e) {
        Errno::PERM => format!(
            "fanotify pre-content events need CAP_SYS_ADMIN (fanotify_init: EPERM; {capnote})"
        ),
        e => format!(
            "fanotify_init(FAN_CLASS_PRE_CONTENT) failed on Linux {}: {}",
            kernel.release,
            errno_name(e)
        ),
    })?;

    let (target, fs, place) = match file {
        Some((f, meta)) => (
            f.as_fd().try_clone_to_owned(),
            fs_name(meta.fs_type),
            String::new(),
        ),
        None => {
            let dir = std::env::temp_dir();
            let t = rfs::open(
                &dir,
                OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(io::Error::from);
            let fs = rfs::statfs(&dir)
                .map(|s| {
                    #[allow(clippy::unnecessary_cast)]
                    fs_name(s.f_type as i64)
                })
                .unwrap_or_else(|_| "the temporary directory's filesystem".into());
            (
                t,
                fs,
                format!(" (tried on a temporary file in {})", dir.display()),
            )
        }
    };
    let target =
        target.map_err(|e| format!("cannot open a file to try a pre-content mark on: {e}"))?;
    // The mark dies with the group when `fan` is closed below.
    let res = match fan.mark_inode(target.as_fd(), FAN_PRE_ACCESS, false) {
        Ok(()) => Ok(format!(
            "fanotify pre-content events available on {fs}{place} ({capnote})"
        )),
        Err(e) => Err(match errno_of(e) {
            Errno::INVAL if !kernel.at_least(6, 14) => format!(
                "Linux {} has no fanotify pre-content events (FAN_PRE_ACCESS needs 6.14+)",
                kernel.release
            ),
            e @ (Errno::INVAL | Errno::OPNOTSUPP) => format!(
                "{fs} does not allow fanotify pre-content marks{place} (fanotify_mark: {})",
                errno_name(e)
            ),
            e => format!(
                "fanotify_mark(FAN_PRE_ACCESS) on {fs}{place} failed: {}",
                errno_name(e)
            ),
        }),
    };
    drop(fan);
    res
}

/// The symbolic name of an errno for messages (`EPERM`), for the ones the
/// detections meet; others as `errno N`. Neither `libc` (no
/// `strerrorname_np` binding) nor `rustix` names them.
pub(crate) fn errno_name(e: Errno) -> String {
    let name = match e {
        Errno::PERM => "EPERM",
        Errno::ACCESS => "EACCES",
        Errno::AGAIN => "EAGAIN",
        Errno::BUSY => "EBUSY",
        Errno::INVAL => "EINVAL",
        Errno::OPNOTSUPP => "EOPNOTSUPP",
        Errno::NOTTY => "ENOTTY",
        Errno::NOSYS => "ENOSYS",
        Errno::NOENT => "ENOENT",
        Errno::ISDIR => "EISDIR",
        Errno::XDEV => "EXDEV",
        Errno::ROFS => "EROFS",
        Errno::NOSPC => "ENOSPC",
        Errno::NOMEM => "ENOMEM",
        Errno::MFILE => "EMFILE",
        Errno::BADF => "EBADF",
        Errno::FAULT => "EFAULT",
        Errno::IO => "EIO",
        Errno::TXTBSY => "ETXTBSY",
        Errno::NODEV => "ENODEV",
        _ => return format!("errno {}", e.raw_os_error()),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_capeff() {
        let all = Caps::parse("Name:\tx\nCapEff:\t000001ffffffffff\n").unwrap();
        assert!(all.sys_admin && all.lease && all.sys_ptrace);
        let none = Caps::parse("CapEff:\t0000000000000000\n").unwrap();
        assert_eq!(none, Caps::default());
        let only_lease = Caps::parse("CapEff:\t0000000010000000\n").unwrap();
        assert!(only_lease.lease && !only_lease.sys_admin && !only_lease.sys_ptrace);
        assert!(Caps::parse("CapInh:\t0\n").is_none());
    }

    #[test]
    fn kernel_version_compares() {
        let k = Kernel {
            release: "6.14.0-rc1".into(),
            major: 6,
            minor: 14,
        };
        assert!(k.at_least(6, 14) && k.at_least(5, 19) && !k.at_least(6, 15));
        let running = Kernel::running();
        assert!(running.major >= 3, "{running:?}");
    }

    #[test]
    fn lease_try_sees_a_writer() {
        let dir = std::env::temp_dir();
        let tmp = dir.join(format!(".mapcopy-detect-test-{}", std::process::id()));
        std::fs::write(&tmp, b"x").unwrap();
        let file = File::open(&tmp).unwrap();
        let meta = Meta::of(&file).unwrap();
        // We own the file: a read lease can be taken.
        let free = lease(&file, &meta);
        assert!(free.is_ok(), "{free:?}");
        // A writer anywhere (here: this process) makes it EAGAIN.
        let writer = std::fs::OpenOptions::new().write(true).open(&tmp).unwrap();
        let busy = lease(&file, &meta);
        assert!(
            busy.as_ref().is_err_and(|e| e.contains("EAGAIN")),
            "{busy:?}"
        );
        drop(writer);
        assert!(lease(&file, &meta).is_ok());
        std::fs::remove_file(&tmp).unwrap();
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(Errno::PERM), "EPERM");
        assert_eq!(errno_name(Errno::AGAIN), "EAGAIN");
    }
}
