//! `MAP_COPY` for Linux: map a file you do not control and get `&[u8]`
//! whose pages no other writer can change — from safe Rust.
//!
//! A plain `mmap` of a file (what `memmap2` gives, behind `unsafe`) shows
//! other processes' writes as they happen and raises `SIGBUS` when the file
//! shrinks, so a `&[u8]` over it can change under the borrow checker's feet.
//! A [`MapCopy`] cannot: it keeps the contract below, using whichever kernel
//! interface this machine offers to keep it cheaply.
//!
//! ```
//! use std::io::Write;
//! let mut tmp = tempfile::NamedTempFile::new()?;
//! tmp.write_all(b"version 1")?;
//!
//! let map = mapcopy::MapCopy::open(tmp.path())?;
//! assert_eq!(&map[..], b"version 1");
//! // Another writer truncates and rewrites the file ...
//! std::fs::write(tmp.path(), b"v2")?;
//! // ... and the bytes already read stay as they were: no change, no SIGBUS.
//! // (A page first touched only after the write may show the new bytes,
//! // with zeros past the new end: see S1.)
//! assert_eq!(&map[..], b"version 1");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # The contract
//!
//! A copy mapping of a byte range of a regular file promises:
//!
//! * **S1 snapshot** — each page holds the file's bytes at one instant
//!   `T_p` with `T_map <= T_p <= T_first_access(p)`. Bytes past the file's
//!   end at `T_p` read as zero. `T_p` may differ from page to page.
//! * **S2 stability** — once a page has been read, later writes by anyone
//!   (`write`, `pwrite`, `O_APPEND`, truncate, `open(O_TRUNC)`, `fallocate`,
//!   `copy_file_range`, clone ranges, `O_DIRECT`, io_uring, stores through
//!   another process's `MAP_SHARED` mapping, a second hard link) never
//!   change it.
//! * **S3 no SIGBUS** — truncation or hole punching by others never faults
//!   the reader.
//! * **S4 privacy** — a writable mapping ([`MapOptions::map_mut`]) behaves
//!   like `MAP_PRIVATE` for the owner's own stores: they never reach the
//!   file.
//! * **S5 safety** — because of S1–S3 the mapping is handed out as `&[u8]`.
//!   Nothing in this API is `unsafe` to call.
//!
//! **Consistency** ([`MapOptions::consistency`]): S1 lets each page have
//! its own instant. Under [`Consistency::PointInTime`] — the default — all
//! pages share one: every page holds the file as of one instant `T` with
//! `T_map_start <= T <= T_map_return`, so a structured file (a header that
//! points at data: safetensors, ELF, DWARF, Arrow IPC, SQLite, fonts) is
//! always one version. [`Consistency::PerPage`] is S1 alone, what lets
//! `Lazy` serve huge files sparsely. Per-page atomicity caveats against a
//! concurrent `write()` (below) stay as listed.
//!
//! A strategy that cannot keep the contract in some situation says so before
//! mapping, with [`ErrorKind::Unsupported`] and the reason; it never maps and
//! silently breaks it.
//!
//! # Strategies
//!
//! | strategy | how | snapshot taken | data copied | needs |
//! |---|---|---|---|---|
//! | [`Strategy::Kernel`] | the kernel's own `MAP_COPY` mapping type (the Linux 7.3 patch series in the repository's `kernel/`) | at map time | a page when a writer is about to change one a copy shares | a kernel with the series (mainline refuses: `EINVAL`) and a filesystem that opts in (ext4, xfs, btrfs); 64-bit |
//! | [`Strategy::Immutable`] | `MAP_PRIVATE` of the file itself; no fd, thread or event kept | — (the file never changes) | nothing | a file the kernel lets nobody change: a memfd sealed with `F_SEAL_WRITE` and `F_SEAL_SHRINK`, a file with fs-verity enabled, a file on erofs or squashfs (not a read-only mount, not `chattr +i`) |
//! | [`Strategy::Lazy`] | userfaultfd: anonymous memory filled on first access by `pread` + `UFFDIO_COPY` (sequential 2 MiB chunks: `UFFDIO_MOVE` of huge pages, Linux 6.8+) | per page, at first access | pages touched | userfaultfd that serves kernel-mode faults (root, `/dev/userfaultfd` access, or `vm.unprivileged_userfaultfd=1`); any filesystem |
//! | [`Strategy::Eager`] | `pread` into 2 MiB-aligned anonymous memory (`MADV_HUGEPAGE`) | at map time | everything | memory for the whole range; any filesystem |
//! | [`Strategy::Guard`] | `MAP_PRIVATE` of the file; fanotify pre-content events stop every other access until the pages a writer will change are copied | per page, before a writer changes it | pages writers change (`map_mut`: the file's data at map time) | `CAP_SYS_ADMIN`, Linux 6.14+, a file on ext4, xfs or btrfs (below: *Filesystems*); no writer holding the file open |
//! | [`Strategy::Lease`] | `F_SETLEASE` read lease over a private mapping; on a lease break, a reflink clone (or a copy) replaces the range before the writer's `open` returns | at map time | nothing until a writer opens; then none with reflink, else the range | owner of the file or `CAP_LEASE`; a file on ext4, xfs, btrfs or tmpfs; no writer at map time; the lease-break signal (`MAPCOPY_LEASE_SIGNAL`, default `SIGRTMIN+11`) not taken by the application; read-only mappings |
//! | [`Strategy::Reflink`] | `FICLONE` into an unlinked `O_TMPFILE` on the same mount, private mapping of the clone | at map time, atomically | none (filesystem CoW) | a file on xfs (`-m reflink=1`) or btrfs and a directory on the file's mount where an `O_TMPFILE` can be made (`MAPCOPY_TMPDIR` names one) |
//!
//! **Filesystems.** `Immutable` maps only files no writer can reach on any
//! filesystem: erofs and squashfs (no write support), a sealed memfd, a
//! file with fs-verity. `Guard`, `Lease` and `Reflink` keep the contract only
//! where this kernel sees every write to the file (a fanotify event, a
//! lease break, a clone copied on write). Each is used only on the
//! filesystems where this crate's tests show it — Guard: ext4, xfs, btrfs;
//! Lease: ext4, xfs, btrfs, tmpfs; Reflink: xfs, btrfs — recognised by the
//! file's `statfs` magic (read by every map anyway), and refuses elsewhere
//! with [`ErrorKind::Unsupported`] naming the filesystem and what keeps the
//! contract there. Notably **overlayfs** (Docker, Podman): an overlay
//! file's real file in the upper or lower layer can be written directly,
//! which breaks no lease on the overlay file and raises no fanotify event
//! on it, while a mapping of the overlay file shares the real file's page
//! cache (its pages change; a truncation of the upper file faults it). The
//! same holds for FUSE and virtiofs (the server, or a write to what it
//! serves), and for NFS, SMB, Ceph, 9p and cluster filesystems (another
//! client or node; not tested, refused). Conversely a file in an overlay's
//! upper layer, mapped directly, can be written through the overlay, which
//! raises no fanotify event on it, and truncated by path through it, which
//! breaks no lease on it: `Guard` and `Lease` refuse a file in the upper
//! layer of an overlay mounted in this mount namespace (one in another
//! namespace, a rootless container's, is not seen). `Eager` and `Lazy` copy with
//! `pread` and keep the contract on every filesystem, so there `Auto` picks
//! `Eager` (`Lazy` under [`Consistency::PerPage`]). On a network filesystem
//! a `Lazy` page fill reads through the network when the page is first
//! touched (a read error then aborts the process; see below), and `Eager`'s
//! point-in-time validation sees the size and ctime the client's attribute
//! cache shows. [`probe`] reports the file's filesystem as the
//! `filesystem` fact.
//!
//! Consistency kept: `Immutable` maps a file that never changes (any
//! instant is the same); `Guard`, `Lease` and `Reflink` snapshot at map time
//! (point-in-time); `Eager` copies at map time and, under point-in-time,
//! validates the copy (the file's size and ctime unchanged across it, else
//! copied again; see below for what a writer already holding the file open
//! can still do); `Lazy` keeps only per-page and refuses point-in-time.
//! [`Strategy::keeps`] is the table; [`probe`] reports it per strategy.
//!
//! [`Strategy::Auto`] (the default) takes the first usable one in the order
//! of [`Strategy::ALL`] — Immutable, Kernel, Lease, Reflink, Guard, Lazy,
//! Eager —
//! for
//! [`MapOptions::map`], ordered by what each costs *other* processes: a
//! Lease costs their reads and writes nothing measurable and makes only the
//! first writer's `open` wait for the snapshot (bounded by
//! `fs.lease-break-time` even if the mapper is stopped); a Reflink costs
//! them nothing (the mapper reads a cold clone); a Guard makes every read
//! of the file by anybody wait for a fanotify round trip (many times the
//! read: `mapcopy bench`'s "cost to another process" table; the
//! repository's `bench-results/` keeps measured runs) and
//! stops them all while the mapper is stopped. The price of Lease first: `open(O_RDONLY | O_TRUNC)` (below),
//! which a guard sees. Immutable comes first: for a file nobody can change
//! it costs nobody anything and the mapper a private mapping, and
//! elsewhere it refuses for free (the facts it needs are read by every
//! map); it comes before Kernel, which would map such a file too but makes
//! the kernel keep a snapshot of it for nothing. For [`MapOptions::map_mut`]
//! the order is Immutable, Kernel, Reflink, Lazy,
//! Guard, Lease, Eager: Guard and Lease must snapshot a writable mapping at map
//! time, which without a reflink clone means copying the whole range.
//! [`probe`] tells which strategy Auto picks and why each other one cannot.
//! Auto considers only strategies that keep the requested consistency; it
//! learns what holds for the process and for each filesystem once, so a
//! call costs what its pick's `map` costs; and it passes over the
//! strategies that keep an fd per mapping (Guard per file, Lease, Lazy)
//! once those fds reach half the soft `RLIMIT_NOFILE` or the kernel has no
//! fd to give, so thousands of live mappings never exhaust the process's
//! fds.
//!
//! Properties some strategies lack (the list per strategy is
//! [`StrategyProbe::lacks`], what `mapcopy probe` prints; the repository
//! README renders it):
//!
//! * **Point-in-time against a writer already holding the file open**
//!   (`Eager`): every modifying syscall and a shared mapping's first store
//!   into a clean page move the file's ctime, which `Eager` checks around
//!   its copy; a `write()` already under way when the copy starts (it moved
//!   ctime before) and stores into already-dirty pages of a shared writable
//!   mapping do not, and can be seen in part. They need a writer that holds
//!   the file open when `map` starts (Guard and Lease refuse to map then).
//! * **Per-page atomicity against a concurrent `write()`**: `Lazy` and
//!   `Eager` read with `pread`, which the kernel does not make atomic against
//!   a `write()` running at the same moment on the same page; such a page
//!   can hold part of that write. It still never changes after it was read.
//! * **Per-page atomicity against `MAP_SHARED` stores**: `Reflink` clones
//!   the file atomically against `write()` and every other syscall, but
//!   stores through another process's shared mapping take no lock: a page
//!   being stored to at that moment may hold part of the stores (it never
//!   changes afterwards).
//! * **`open(O_RDONLY | O_TRUNC)`** (Linux truncates on it, given write
//!   permission) does not break a lease: under `Lease` such an open by
//!   another process truncates the file under the mapping, whose pages past
//!   the new end then fault (SIGBUS). `Guard` sees such opens
//!   (`FAN_OPEN_PERM`) and detaches first — except one already under way at
//!   the instant the guard is armed for the file (its permission check done
//!   before the mark existed; the torture run hits that window when it maps
//!   and drops guarded mappings thousands of times a second while such opens
//!   run). `Reflink` and the copying strategies are immune.
//! * **Loop devices**: the loop driver writes its backing file with
//!   `->write_iter` directly, raising no fanotify event, so writes through a
//!   loop device attached to the file *after* a `Guard` mapping was made
//!   change its pages unseen. (One attached before holds the file open for
//!   writing, and `Guard` refuses to map.) `Lease` sees the attach (it opens
//!   the file for writing); the other strategies are immune.
//! * **Writers' `open`**: under `Lease`, a writer's `open` for writing (or
//!   `truncate(2)`) waits until the snapshot is taken (milliseconds with
//!   reflink, a copy of the range without); an `O_NONBLOCK` open fails with
//!   `EAGAIN` meanwhile (kernel lease semantics). If the mapping process does
//!   not answer within `fs.lease-break-time` (45 s; e.g. it is stopped in a
//!   debugger) the kernel lets the writer through.
//! * **A stopped mapper** (`SIGSTOP`, a debugger stopping every thread, a
//!   cgroup v2 freeze; `tests/stopped.rs` does all three): `Eager`, `Lazy`,
//!   `Reflink` and `Immutable` make nobody wait and keep their bytes.
//!   `Lease` makes no reader wait; a writer's `open` waits
//!   `fs.lease-break-time`, then the kernel lets it through before the
//!   stopped mapper has taken its snapshot, and the mapping shows the write
//!   (and faults past a truncation): the snapshot is lost, not kept. `Guard`
//!   keeps its bytes, but every read and write of the file by any process
//!   waits until the mapper runs again, without bound (fanotify permission
//!   events have no timeout). A mapper that may be stopped for long should
//!   name a copying strategy, or `Reflink`.
//! * **fork**: a child made by libc's `fork()` (what Python, gunicorn and
//!   `multiprocessing` call) inherits every mapping and reads exactly the
//!   parent's snapshot for its whole life (after the parent unmaps or
//!   exits, in nested forks). A child has no guard thread, lease-break
//!   handler or fault server of the parent, so `pthread_atfork` handlers
//!   step in: before the first `fork()`, `Guard` copies the range's data
//!   into anonymous memory and `Lease` snapshots as on a lease break (a
//!   reflink clone, else a copy) — that first `fork()` pays for it
//!   (`mapcopy bench` reports the cost), later ones do not; `Lazy` copies
//!   nothing: the child gets a fault server of its own before `fork()`
//!   returns. `posix_spawn`/`vfork` run no handler. A child made without
//!   the handlers (a raw `clone`) gets SIGSEGV touching a `Guard`, `Lease`
//!   or `Lazy` mapping, never changed bytes or zeros.
//! * **Cost to other processes**: while a `Guard` mapping exists, every
//!   read, write, mmap and open of the file by any process waits for this
//!   process's watcher thread to classify it (a fanotify round trip,
//!   measured by `mapcopy bench`; writes also wait for the copy of the
//!   pages they touch).
//! * **Read errors after mapping**: a `Lazy` mapping reads the file when a
//!   page is first touched. If that read fails (`EIO`, ...) the faulting
//!   thread can be given neither an error nor invented bytes, and must not
//!   hang, so the process **aborts** with a message on stderr naming the
//!   file, the offset and the error. With `populate(true)` everything is read
//!   inside the map call and a read error is returned as
//!   [`ErrorKind::Io`] instead. A `Guard` mapping reads the page cache
//!   directly, like any file mapping: a page that cannot be read raises
//!   `SIGBUS` in the thread touching it (with `populate(true)`: an
//!   [`ErrorKind::Io`] error from the map call); a writer whose pages the
//!   guard cannot read to copy them is refused with `EIO`.
//! * **Memory**: a `Lazy` mapping reserves address space only
//!   (`MAP_NORESERVE`) and allocates pages as they are touched, plus
//!   fault-around: one page for an isolated access, growing to whole 2 MiB
//!   chunks (and up to 16 MiB of prefetch ahead) for sequential reads. Its
//!   `MapCopyMut` is not charged to overcommit either, so stores into very
//!   many pages can run out of memory like any `MAP_NORESERVE` mapping.
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

mod consistency;
mod error;
mod fds;
mod fork;
mod map;
mod options;
mod probe;
mod strategy;
mod sys;
mod watcher;

pub use consistency::Consistency;
pub use error::{Error, ErrorKind};
pub use map::{Advice, MapCopy, MapCopyMut};
pub use options::MapOptions;
pub use probe::{Fact, Probe, StrategyProbe, probe};
pub use strategy::Strategy;

// The READMEs' examples compile (doctests only; not part of the API). The
// repository's README is not in the packaged crate: build.rs says whether
// it is there.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

#[cfg(all(doctest, workspace_readme))]
#[doc = include_str!("../../../README.md")]
pub struct WorkspaceReadmeDoctests;
