//! Which filesystem a file is on, and on which filesystems each zero-copy
//! strategy's guarantee has been shown.
//!
//! Guard (fanotify), Lease (`F_SETLEASE`) and Reflink (`FICLONE`) rely on
//! this kernel seeing every write to the file's inode. That holds on a local
//! filesystem. It does not hold where the file can change by another route:
//!
//! * **overlayfs**: an overlay file is backed by a real file in the upper or
//!   lower layer, and that real file can be written directly (by the
//!   container runtime, a bind mount of the layer, a process on the host).
//!   Such a write breaks no lease and raises no fanotify event on the
//!   overlay file, and the overlay mapping shares the real file's page
//!   cache: its pages change, and a truncation of the upper file faults the
//!   reader (measured here: both, every run).
//! * **network and cluster filesystems** (NFS, SMB/CIFS, Ceph, 9p, AFS,
//!   OCFS2, GFS2): another client, or the server itself, changes the file.
//! * **FUSE** (virtiofs too): the server, or a direct write to whatever it
//!   serves from, changes the file unseen.
//! * **eCryptfs**: a stacked filesystem like overlayfs.
//!
//! So each strategy keeps the list of filesystems on which this crate's
//! tests have shown its guarantee ([`GUARD`], [`LEASE`], [`REFLINK`]) and
//! refuses elsewhere with the reason and what would work ([`shown`]). Lazy
//! and Eager copy with `pread`: they hold on every filesystem that reads
//! like one (a page, once copied, never changes).
//!
//! The filesystem is recognised by the `f_type` magic of `fstatfs`, which
//! [`super::file::Meta`] reads anyway: the check costs no syscall.

use std::fmt::Write as _;

/// Filesystem magic numbers (`f_type` of statfs) this crate reasons about,
/// from `include/uapi/linux/magic.h` (through `libc` where it has them).
#[allow(clippy::unnecessary_cast)]
pub(crate) mod magic {
    pub(crate) const EXT4: i64 = libc::EXT4_SUPER_MAGIC as i64;
    pub(crate) const XFS: i64 = libc::XFS_SUPER_MAGIC as i64;
    pub(crate) const BTRFS: i64 = libc::BTRFS_SUPER_MAGIC as i64;
    pub(crate) const TMPFS: i64 = libc::TMPFS_MAGIC as i64;
    pub(crate) const PROC: i64 = libc::PROC_SUPER_MAGIC as i64;
    pub(crate) const SYSFS: i64 = libc::SYSFS_MAGIC as i64;
    pub(crate) const DEBUGFS: i64 = libc::DEBUGFS_MAGIC as i64;
    pub(crate) const TRACEFS: i64 = libc::TRACEFS_MAGIC as i64;
    pub(crate) const CGROUP2: i64 = libc::CGROUP2_SUPER_MAGIC as i64;
    pub(crate) const OVERLAYFS: i64 = libc::OVERLAYFS_SUPER_MAGIC as i64;
    pub(crate) const NFS: i64 = libc::NFS_SUPER_MAGIC as i64;
    pub(crate) const FUSE: i64 = libc::FUSE_SUPER_MAGIC as i64;
    pub(crate) const AFS: i64 = libc::AFS_SUPER_MAGIC as i64;
    pub(crate) const OCFS2: i64 = libc::OCFS2_SUPER_MAGIC as i64;
    pub(crate) const ECRYPTFS: i64 = libc::ECRYPTFS_SUPER_MAGIC as i64;
    pub(crate) const SMB: i64 = libc::SMB_SUPER_MAGIC as i64;
    pub(crate) const HUGETLBFS: i64 = libc::HUGETLBFS_MAGIC as i64;
    /// `BCACHEFS_SUPER_MAGIC`; not in `libc`.
    pub(crate) const BCACHEFS: i64 = 0xca45_1a4e;
    /// `CIFS_SUPER_MAGIC` (`fs/smb/client/cifsglob.h`); not in `libc`.
    pub(crate) const CIFS: i64 = 0xff53_4d42;
    /// `SMB2_SUPER_MAGIC` (`fs/smb/client/cifsglob.h`); not in `libc`.
    pub(crate) const SMB2: i64 = 0xfe53_4d42;
    /// `CEPH_SUPER_MAGIC`; not in `libc`.
    pub(crate) const CEPH: i64 = 0x00c3_6400;
    /// `V9FS_MAGIC` (9p, also what many VMs share host directories by);
    /// not in `libc`.
    pub(crate) const V9FS: i64 = 0x0102_1997;
    /// `GFS2_MAGIC` (`include/uapi/linux/gfs2_ondisk.h`); not in `libc`.
    pub(crate) const GFS2: i64 = 0x0116_1970;
    /// `EROFS_SUPER_MAGIC_V1`; not in `libc`.
    pub(crate) const EROFS: i64 = 0xe0f5_e1e2;
    /// `SQUASHFS_MAGIC`.
    pub(crate) const SQUASHFS: i64 = 0x7371_7368;
}

/// Name of a filesystem type for messages.
pub(crate) fn name(f_type: i64) -> String {
    use magic::*;
    let known = match f_type {
        EXT4 => "ext4",
        XFS => "xfs",
        BTRFS => "btrfs",
        TMPFS => "tmpfs",
        PROC => "proc",
        SYSFS => "sysfs",
        DEBUGFS => "debugfs",
        TRACEFS => "tracefs",
        CGROUP2 => "cgroup2",
        BCACHEFS => "bcachefs",
        OVERLAYFS => "overlayfs",
        NFS => "nfs",
        FUSE => "fuse",
        AFS => "afs",
        OCFS2 => "ocfs2",
        GFS2 => "gfs2",
        ECRYPTFS => "ecryptfs",
        SMB | CIFS | SMB2 => "smb/cifs",
        CEPH => "ceph",
        V9FS => "9p",
        HUGETLBFS => "hugetlbfs",
        EROFS => "erofs",
        SQUASHFS => "squashfs",
        other => return format!("fs-{other:#x}"),
    };
    known.into()
}

/// The filesystems a strategy's guarantee has been shown on: the contract
/// suite (`tests/contract.rs`, `tests/filesystems.rs`) runs it on each.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shown {
    /// The strategy's name, as in messages.
    pub(crate) strategy: &'static str,
    /// `f_type`s the tests run it on.
    pub(crate) on: &'static [i64],
    /// Local filesystems where the strategy's own mechanism refuses, with a
    /// better reason than "not shown" (ext4 has no reflink): passed.
    pub(crate) mechanism_refuses: &'static [i64],
    /// What a write by another route fails to do, completing "a write to
    /// the upper or lower layer does not ...": why the strategy cannot keep
    /// the contract there. `None`: not known to fail, just not shown.
    pub(crate) sees: Option<&'static str>,
}

/// Guard: ext4 (the suite's temporary directory), xfs and btrfs (its loop
/// images). Not tmpfs: Linux refuses pre-content marks there (6.18:
/// `EOPNOTSUPP`), and should that change it is still to be shown.
pub(crate) const GUARD: Shown = Shown {
    strategy: "guard",
    on: &[magic::EXT4, magic::XFS, magic::BTRFS],
    mechanism_refuses: &[],
    sees: Some("raise a fanotify event on the file mapped"),
};

/// Lease: ext4, xfs and btrfs as Guard; tmpfs by `tests/filesystems.rs`
/// (every modification kind tmpfs supports, by a writer process).
pub(crate) const LEASE: Shown = Shown {
    strategy: "lease",
    on: &[magic::EXT4, magic::XFS, magic::BTRFS, magic::TMPFS],
    mechanism_refuses: &[],
    sees: Some("break a lease on the file mapped"),
};

/// Reflink: the filesystems of the suite that clone (on ext4 and tmpfs
/// `FICLONE` itself refuses).
pub(crate) const REFLINK: Shown = Shown {
    strategy: "reflink",
    on: &[magic::XFS, magic::BTRFS],
    mechanism_refuses: &[magic::EXT4, magic::TMPFS],
    sees: None,
};

/// How the file on a filesystem of type `f_type` can change without this
/// kernel seeing a write to the inode that was mapped; `None` for a local
/// filesystem.
pub(crate) fn unseen_writers(f_type: i64) -> Option<&'static str> {
    use magic::*;
    Some(match f_type {
        OVERLAYFS => {
            "an overlay file's real file in the upper or lower layer can be written directly"
        }
        ECRYPTFS => "the encrypted file in the lower directory can be written directly",
        NFS | SMB | CIFS | SMB2 | CEPH | V9FS | AFS => {
            "another client, or the server, can change the file; this kernel sees only the writes made through it"
        }
        OCFS2 | GFS2 => {
            "another node of the cluster can change the file; this kernel sees only its own writes"
        }
        FUSE => {
            "the FUSE server (or a direct write to what it serves, or another client of a \
             virtiofs share) can change the file; this kernel sees only the writes made through it"
        }
        _ => return None,
    })
}

/// Names of the filesystems in `on`, for messages: "ext4, xfs, btrfs".
pub(crate) fn names(on: &[i64]) -> String {
    on.iter().map(|&t| name(t)).collect::<Vec<_>>().join(", ")
}

/// `Ok` if `s`'s guarantee has been shown on filesystem `f_type` (or its
/// own mechanism gives the reason), else the reason to refuse, naming the
/// filesystem, how the contract would break and what keeps it instead:
/// "overlayfs (a write to the upper or lower layer does not break a lease
/// on the file mapped: ...); lease is shown to keep the contract on ext4,
/// ... only; Eager (or Lazy, under Consistency::PerPage) keeps it here".
pub(crate) fn shown(s: &Shown, f_type: i64) -> Result<(), String> {
    if s.on.contains(&f_type) || s.mechanism_refuses.contains(&f_type) {
        return Ok(());
    }
    let fs = name(f_type);
    let mut why = match (unseen_writers(f_type), s.sees) {
        (Some(how), Some(sees)) if f_type == magic::OVERLAYFS => {
            format!("{fs} (a write to the upper or lower layer does not {sees}: {how})")
        }
        (Some(how), Some(sees)) => format!("{fs} ({how}, and such a write does not {sees})"),
        (Some(how), None) => format!(
            "{fs} ({how}; this crate's tests have not shown {} there)",
            s.strategy
        ),
        (None, _) => format!(
            "{fs} (this crate's tests have not shown {} there)",
            s.strategy
        ),
    };
    let _ = write!(
        why,
        "; {} is shown to keep the contract on {} only; Eager (or Lazy, under \
         Consistency::PerPage) keeps it here",
        s.strategy,
        names(s.on)
    );
    Err(why)
}

/// For `probe`'s "usable" line: where `s` holds.
pub(crate) fn holds_on(s: &Shown) -> String {
    format!(
        "{} is shown to keep the contract on {}",
        s.strategy,
        names(s.on)
    )
}

/// The zero-copy strategies and where each is shown.
pub(crate) const ZERO_COPY: [Shown; 3] = [GUARD, LEASE, REFLINK];

/// What `probe` says about a file's filesystem: `Some(false)` where the
/// file can change unseen, else `None` (information only), and the finding.
pub(crate) fn finding(f_type: i64) -> (Option<bool>, String) {
    let fs = name(f_type);
    let here: Vec<&str> = ZERO_COPY
        .iter()
        .filter(|s| s.on.contains(&f_type))
        .map(|s| s.strategy)
        .collect();
    let here = if here.is_empty() {
        "none".to_string()
    } else {
        here.join(", ")
    };
    let tail = format!(
        "zero-copy strategies shown to keep the contract on {fs}: {here}; eager and lazy copy with pread and keep it on any filesystem"
    );
    match unseen_writers(f_type) {
        Some(how) => (
            Some(false),
            format!("{fs}: {how}, unseen by leases and fanotify on the file mapped; {tail}"),
        ),
        None => (None, format!("{fs}: {tail}")),
    }
}

/// Where each zero-copy strategy is shown, for when there is no file.
pub(crate) fn where_shown() -> String {
    let each: Vec<String> = ZERO_COPY
        .iter()
        .map(|s| format!("{} on {}", s.strategy, names(s.on)))
        .collect();
    format!(
        "zero-copy strategies are shown to keep the contract only on local filesystems: {}; \
         elsewhere (overlayfs, NFS, SMB, FUSE, virtiofs, 9p, Ceph, ...) they refuse, and eager \
         and lazy, which copy with pread, keep it",
        each.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_known_and_unknown() {
        assert_eq!(name(magic::EXT4), "ext4");
        assert_eq!(name(magic::OVERLAYFS), "overlayfs");
        assert_eq!(name(magic::FUSE), "fuse");
        assert_eq!(name(0x1234), "fs-0x1234");
        assert_eq!(names(GUARD.on), "ext4, xfs, btrfs");
        assert_eq!(names(LEASE.on), "ext4, xfs, btrfs, tmpfs");
    }

    #[test]
    fn shown_refuses_elsewhere_with_the_reason() {
        for s in [GUARD, LEASE, REFLINK] {
            for &t in s.on {
                assert!(shown(&s, t).is_ok(), "{} on {}", s.strategy, name(t));
            }
        }
        let why = shown(&LEASE, magic::OVERLAYFS).unwrap_err();
        assert!(
            why.starts_with(
                "overlayfs (a write to the upper or lower layer does not break a lease"
            ),
            "{why}"
        );
        assert!(why.contains("Eager"), "{why}");
        let why = shown(&GUARD, magic::NFS).unwrap_err();
        assert!(
            why.starts_with("nfs (") && why.contains("another client"),
            "{why}"
        );
        let why = shown(&GUARD, magic::FUSE).unwrap_err();
        assert!(why.contains("FUSE server"), "{why}");
        assert!(
            shown(&REFLINK, magic::EXT4).is_ok(),
            "FICLONE itself refuses there"
        );
        let why = shown(&REFLINK, magic::OVERLAYFS).unwrap_err();
        assert!(
            why.starts_with("overlayfs (an overlay file's real file"),
            "{why}"
        );
        let why = shown(&LEASE, magic::BCACHEFS).unwrap_err();
        assert!(
            why.starts_with("bcachefs (this crate's tests have not shown lease"),
            "{why}"
        );
        assert!(unseen_writers(magic::EXT4).is_none());
        let (avail, text) = finding(magic::OVERLAYFS);
        assert_eq!(avail, Some(false));
        assert!(
            text.starts_with("overlayfs: an overlay file's real file")
                && text.ends_with("any filesystem"),
            "{text}"
        );
        let (avail, text) = finding(magic::XFS);
        assert_eq!(avail, None);
        assert!(text.contains("on xfs: guard, lease, reflink;"), "{text}");
        assert!(finding(magic::TMPFS).1.contains("on tmpfs: lease;"));
        assert!(where_shown().contains("reflink on xfs, btrfs"));
        assert!(unseen_writers(magic::TMPFS).is_none());
    }
}
