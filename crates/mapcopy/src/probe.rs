//! Capability detection: which strategies this machine, process and file
//! allow, and why not the others.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::strategy::{self, Strategy};
use crate::{Consistency, MapOptions, sys};

/// What [`probe`] found: for each strategy, usable or the reason not, and
/// which one [`Strategy::Auto`] picks.
///
/// ```
/// let p = mapcopy::probe(None);
/// assert_eq!(p.strategies.len(), 7);
/// // Eager needs nothing, so Auto always has a choice.
/// assert!(p.auto.is_ok());
/// println!("{p}");
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Probe {
    /// `uname -r` of the running kernel.
    pub kernel: String,
    /// The file probed, if any.
    pub path: Option<PathBuf>,
    /// Filesystem type of `path` (`ext4`, `xfs`, ...), or why it could not
    /// be inspected.
    pub filesystem: Option<Result<String, String>>,
    /// What was detected about the kernel, this process and the file
    /// (capabilities, userfaultfd modes, reflink, leases, fanotify), in the
    /// order shown by `mapcopy probe`.
    pub facts: Vec<Fact>,
    /// One entry per concrete strategy, in the order `Auto` considers them.
    pub strategies: Vec<StrategyProbe>,
    /// The strategy `Auto` picks, or why none can.
    pub auto: Result<Strategy, String>,
}

/// One detected fact in a [`Probe`], such as "userfaultfd for kernel-mode
/// faults works".
///
/// ```
/// let p = mapcopy::probe(None);
/// let caps = p.facts.iter().find(|f| f.topic == "capabilities").unwrap();
/// println!("{}: {}", caps.topic, caps.finding);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Fact {
    /// What was examined: `capabilities`, `userfaultfd`, `filesystem`
    /// (which zero-copy strategies are shown to keep the contract on it;
    /// not available where the file can change unseen, as on overlayfs or
    /// FUSE), `reflink`, `lease` or `fanotify`.
    pub topic: &'static str,
    /// `Some(true)` if the interface is available to this process (for this
    /// file), `Some(false)` if not, `None` for information only.
    pub available: Option<bool>,
    /// What was found, worded for a user.
    pub finding: String,
}

/// One strategy's verdict in a [`Probe`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StrategyProbe {
    /// Which strategy.
    pub strategy: Strategy,
    /// `Ok` with what makes it usable if it can keep the contract here, else
    /// `Err` with the reason it cannot.
    pub usable: Result<String, String>,
    /// The strongest [`Consistency`] it keeps: [`Consistency::PointInTime`]
    /// (the whole mapping is the file at one instant during `map`) or only
    /// [`Consistency::PerPage`]. `usable` is about the contract under
    /// per-page; under point-in-time a strategy that keeps only per-page
    /// refuses.
    pub consistency: Consistency,
    /// Properties beyond the contract that this strategy does not give
    /// (a strategy may lack some and must say so), worded for a user.
    pub lacks: Vec<&'static str>,
}

/// The strongest consistency `s` keeps (the table of
/// [`Strategy::keeps`]).
fn strongest(s: Strategy) -> Consistency {
    Consistency::ALL
        .into_iter()
        .find(|&c| s.keeps(c))
        .unwrap_or(Consistency::PerPage)
}

/// What `s` does not give beyond the contract. Each strategy's owner keeps
/// its entry in step with the crate docs.
fn lacks(s: Strategy) -> Vec<&'static str> {
    match s {
        Strategy::Kernel => vec![
            "kernels without the MAP_COPY series (every mainline kernel): it is refused there, with the reason, and Auto goes on",
            "filesystems that do not opt in: the series opts in ext4, xfs and btrfs and refuses the others (NFS, FUSE, overlayfs, 9p, tmpfs, ...) with EOPNOTSUPP",
            "read errors: a page that cannot be read (EIO) raises SIGBUS when touched, as with any file mapping (populate(true) turns it into a map error)",
            "memory: before a writer changes a page your copy still reads from the page cache, the kernel saves that page, charged to your memory cgroup; if it cannot, your copy raises SIGBUS from then on (the writer is never failed for your sake)",
            "writers racing the map on xfs: in a 60 s torture run one page read as zeroes while another process ran an insert range (kernel/README.md); ext4 passed the same run",
        ],
        Strategy::Immutable => vec![
            "files that can change: it maps only a memfd sealed with F_SEAL_WRITE and F_SEAL_SHRINK, a file with fs-verity enabled, or a file on erofs or squashfs, and refuses every other file (a read-only mount or chattr +i is not enough)",
            "writes to the block device or image file under an erofs or squashfs mount (by root, or the owner of a loop device's backing file): pages not in the page cache are read again from the changed device; the kernel treats that as corruption of a mounted filesystem, not as a write to the file",
            "read errors: a page that cannot be read (EIO; on fs-verity, a block that fails verification) raises SIGBUS when touched, as with any file mapping (populate(true) turns it into a map error)",
        ],
        Strategy::Eager => vec![
            "point-in-time against a writer that already holds the file open when map starts: the copy is retaken until the file's size and ctime are the same before and after it, which every later writer's syscalls (and its first store to a clean shared-mapped page) change; a write() already under way, or stores into already-dirty pages of a shared writable mapping, can still be seen in part",
            "per-page atomicity against a concurrent write() under Consistency::PerPage (no validation then): a page read while a write() runs may hold part of it (it never changes afterwards)",
        ],
        Strategy::Lazy => vec![
            "point-in-time consistency: each page is read at its first access, so pages of one mapping can be of different versions (a header of one version, data of another); it maps only with Consistency::PerPage",
            "per-page atomicity against a concurrent write(): a page read while a write() runs may hold part of it (it never changes afterwards)",
            "fork(): a child made by libc's fork() gets its own fault server (a thread and a userfaultfd, made before fork() returns): it inherits the pages filled so far and reads the others from the file at its first access (per-page); a child made without libc's fork handlers (a raw clone) gets SIGSEGV touching the mapping, never zeros",
        ],
        Strategy::Guard => vec![
            "open(O_RDONLY|O_TRUNC) already under way when the guard is armed (the file's first guarded mapping in this process): an open that passed its permission check before the mark existed truncates without an event and without breaking the lease that proves there is no writer; the mapping's pages past the new end then fault (SIGBUS). Later such opens are seen (FAN_OPEN_PERM) and handled",
            "writes through an overlay mounted in another mount namespace (a rootless container's) whose upper layer holds the file: the overlay writes it through an internal backing file that raises no fanotify event (an overlay mounted in this namespace is seen, and the map refused)",
            "writes through a loop device attached to the file after the map: the loop driver writes with ->write_iter directly and raises no fanotify event, so those pages change under the mapping (a loop device attached before the map holds the file open for writing, and the map is refused)",
            "fork(): a child inherits the mapping, but the first fork() after mapping copies its data into anonymous memory (a child has no guard thread), so that fork() costs a copy of the range's data and the mapping stops sharing the page cache; a child made without libc's fork handlers (a raw clone) gets SIGSEGV touching it",
            "cost to others: every read, write, mmap and open of the file by any process waits for this process's guard thread (a fanotify round trip), and while this process is stopped (SIGSTOP, a debugger, a cgroup freeze) they wait until it runs again, without bound",
            "read errors: a page that cannot be read (EIO) raises SIGBUS when touched, as with any file mapping (populate(true) turns it into a map error)",
        ],
        Strategy::Lease => vec![
            "open(O_RDONLY|O_TRUNC): Linux truncates on it without breaking the lease; the mapping's pages past the new end then fault (SIGBUS)",
            "truncate(2) by path through an overlay mounted in another mount namespace (a rootless container's) whose upper layer holds the file: it breaks no lease (an overlay mounted in this namespace is seen, and the map refused)",
            "fork(): a child inherits the mapping, but the first fork() after mapping snapshots it as a lease break does (a reflink clone where the filesystem has one, else a copy of the range) and releases the lease; a child made without libc's fork handlers (a raw clone) gets SIGSEGV touching it",
            "writers wait: a writer's open for writing (or truncate) waits until the snapshot is taken (a clone: milliseconds; else a copy of the range); an O_NONBLOCK open fails with EAGAIN meanwhile",
            "a process stopped longer than fs.lease-break-time (45 s by default; SIGSTOP, a debugger, a cgroup freeze) when a writer comes lets that writer through before its snapshot: the mapping then shows the write (and faults past a truncation)",
        ],
        Strategy::Reflink => vec![
            "per-page atomicity against stores through another process's MAP_SHARED mapping: a page being stored to while the clone is taken may hold part of those stores (it never changes afterwards; write() and other syscalls are atomic against the clone)",
        ],
        _ => Vec::new(),
    }
}

/// Detects which strategies can map `path` (or any file, with `None`) in
/// this process on this kernel, and which one `Auto` would choose.
///
/// ```
/// let tmp = tempfile::NamedTempFile::new().unwrap();
/// let p = mapcopy::probe(Some(tmp.path()));
/// for s in &p.strategies {
///     match &s.usable {
///         Ok(how) => println!("{}: usable ({how})", s.strategy),
///         Err(why) => println!("{}: not usable: {why}", s.strategy),
///     }
/// }
/// ```
pub fn probe(path: Option<&Path>) -> Probe {
    let kernel = sys::detect::Kernel::running().release;
    let mut filesystem = None;
    let file = path.map(|p| File::open(p).map_err(|e| format!("cannot open {}: {e}", p.display())));
    // Usability is about the contract (per-page); what each strategy keeps
    // beyond it is `consistency`, and Auto's pick is for the default.
    let mut opts = MapOptions::new();
    opts.consistency(Consistency::PerPage);
    let req = match &file {
        Some(Ok(f)) => match opts.request(f, false) {
            Ok(r) => {
                filesystem = Some(Ok(sys::file::fs_name(r.meta.fs_type)));
                Some(Ok(r))
            }
            Err(e) => Some(Err(e.to_string())),
        },
        Some(Err(e)) => Some(Err(e.clone())),
        None => None,
    };
    let (strategies, auto) = match &req {
        Some(Err(e)) => {
            filesystem = Some(Err(e.clone()));
            let entries = Strategy::ALL
                .iter()
                .map(|&s| StrategyProbe {
                    strategy: s,
                    usable: Err(e.clone()),
                    consistency: strongest(s),
                    lacks: lacks(s),
                })
                .collect();
            (entries, Err(e.clone()))
        }
        _ => {
            let r = req.as_ref().and_then(|r| r.as_ref().ok());
            let entries = Strategy::ALL
                .iter()
                .map(|&s| StrategyProbe {
                    strategy: s,
                    usable: strategy::check(s, r),
                    consistency: strongest(s),
                    lacks: lacks(s),
                })
                .collect();
            let pit = r.map(|r| strategy::Request {
                consistency: Consistency::default(),
                ..r.clone()
            });
            let auto = strategy::choose(pit.as_ref().or(r))
                .0
                .ok_or_else(|| "no strategy can map this file".to_string());
            (entries, auto)
        }
    };
    let file_meta = match &req {
        Some(Ok(r)) => Some(Ok((r.file, &r.meta))),
        Some(Err(e)) => Some(Err(e.clone())),
        None => None,
    };
    Probe {
        kernel,
        path: path.map(Path::to_path_buf),
        filesystem,
        facts: facts(file_meta),
        strategies,
        auto,
    }
}

/// Runs every detection of `sys::detect` once, on the file if there is one.
fn facts(file: Option<Result<(&File, &sys::file::Meta), String>>) -> Vec<Fact> {
    use sys::detect;
    let fact = |topic, r: Result<String, String>| Fact {
        topic,
        available: Some(r.is_ok()),
        finding: r.unwrap_or_else(|e| e),
    };
    let mut out = Vec::new();
    out.push(match detect::Caps::effective() {
        Ok(c) => Fact {
            topic: "capabilities",
            available: None,
            finding: format!("{c} (euid {})", rustix::process::geteuid().as_raw()),
        },
        Err(e) => fact("capabilities", Err(e)),
    });
    let uffd = detect::UffdModes::detect();
    let verdict = if uffd.kernel_faults() {
        "kernel-mode faults can be served"
    } else if uffd.syscall_user_only.is_ok() {
        "only user-mode faults (a syscall reading an unfilled page would fail with EFAULT)"
    } else {
        "no userfaultfd at all"
    };
    out.push(Fact {
        topic: "userfaultfd",
        available: Some(uffd.kernel_faults()),
        finding: format!("{uffd} => {verdict}"),
    });
    out.push(match &file {
        Some(Ok((_, meta))) => {
            let (available, finding) = sys::fs::finding(meta.fs_type);
            Fact {
                topic: "filesystem",
                available,
                finding,
            }
        }
        Some(Err(e)) => fact("filesystem", Err(e.clone())),
        None => Fact {
            topic: "filesystem",
            available: None,
            finding: sys::fs::where_shown(),
        },
    });
    match file {
        Some(Ok((f, meta))) => {
            out.push(fact("reflink", detect::reflink(f, meta)));
            out.push(fact("lease", detect::lease(f, meta)));
            out.push(fact(
                "fanotify",
                detect::fanotify_pre_content(Some((f, meta))),
            ));
        }
        Some(Err(e)) => {
            for topic in ["reflink", "lease", "fanotify"] {
                out.push(fact(topic, Err(e.clone())));
            }
        }
        None => {
            out.push(Fact {
                topic: "reflink",
                available: None,
                finding: detect::reflink_filesystems().into(),
            });
            out.push(fact("lease", detect::lease_permission()));
            out.push(fact("fanotify", detect::fanotify_pre_content(None)));
        }
    }
    out
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "kernel: {}", self.kernel)?;
        if let Some(p) = &self.path {
            write!(f, "file: {}", p.display())?;
            match &self.filesystem {
                Some(Ok(fs)) => writeln!(f, " (on {fs})")?,
                Some(Err(e)) => writeln!(f, " ({e})")?,
                None => writeln!(f)?,
            }
        }
        for fact in &self.facts {
            let mark = match fact.available {
                Some(true) => "yes",
                Some(false) => "no ",
                None => "   ",
            };
            writeln!(f, "  {:<12} {mark} {}", fact.topic, fact.finding)?;
        }
        for s in &self.strategies {
            match &s.usable {
                Ok(how) => writeln!(
                    f,
                    "  {:<8} usable ({}): {how}",
                    s.strategy.name(),
                    s.consistency
                )?,
                Err(why) => writeln!(f, "  {:<8} no: {why}", s.strategy.name())?,
            }
        }
        match &self.auto {
            Ok(s) => write!(f, "auto picks: {s} (for {})", Consistency::default()),
            Err(e) => write!(f, "auto picks nothing: {e}"),
        }
    }
}
