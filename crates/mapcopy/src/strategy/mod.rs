//! The strategies, one module each, and the selection among them.
//!
//! Each strategy module has the same two entry points:
//!
//! * `check(target) -> Result<String, String>`: can it keep the contract
//!   for this process and kernel (`target` = `None`) or for this file
//!   (`Some`)? `Ok` says what it found that makes it usable (for `probe`),
//!   `Err` the reason it is not, both worded for a user.
//! * `map(request) -> Result<Box<dyn Snapshot>, Error>`: make the mapping.
//!
//! A strategy never calls into another; shared machinery lives in `sys`.

use std::fmt;
use std::fs::File;
use std::str::FromStr;

use crate::Error;
use crate::sys::file::Meta;
pub(crate) use crate::sys::mmap::Span;

mod auto;
pub(crate) mod eager;
pub(crate) mod guard;
pub(crate) mod immutable;
pub(crate) mod kernel;
pub(crate) mod lazy;
pub(crate) mod lease;
pub(crate) mod reflink;

/// How a copy mapping keeps its pages stable. See the crate docs for what
/// each one needs and costs.
///
/// ```
/// use mapcopy::Strategy;
/// assert_eq!("lazy".parse::<Strategy>().unwrap(), Strategy::Lazy);
/// assert_eq!(Strategy::Eager.to_string(), "eager");
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Strategy {
    /// Pick the cheapest strategy that can keep the contract for this file,
    /// process and kernel ([`crate::probe`] explains the choice).
    #[default]
    Auto,
    /// The kernel's own `MAP_COPY` (the patch series in the repository's
    /// `kernel/`; not in mainline Linux): nothing kept, nothing copied
    /// until a writer changes a page. Unsupported, with the reason, on
    /// other kernels.
    Kernel,
    /// Files the kernel lets nobody change (a memfd sealed against writes
    /// and shrinking, fs-verity, erofs, squashfs): a private mapping of the
    /// file, nothing copied, nothing kept.
    Immutable,
    /// fanotify pre-content events: copy a page only when a writer is about
    /// to change it.
    Guard,
    /// A read lease: share the page cache until a writer opens the file, then
    /// snapshot before its `open` returns.
    Lease,
    /// `FICLONE` into an unlinked temporary file; the filesystem does the
    /// copy-on-write.
    Reflink,
    /// userfaultfd: copy each page on first access.
    Lazy,
    /// Copy everything at map time.
    Eager,
}

impl Strategy {
    /// Every concrete strategy (all but [`Strategy::Auto`]), in the order
    /// `Auto` considers them.
    pub const ALL: [Strategy; 7] = [
        Strategy::Immutable,
        Strategy::Kernel,
        Strategy::Lease,
        Strategy::Reflink,
        Strategy::Guard,
        Strategy::Lazy,
        Strategy::Eager,
    ];

    /// Lower-case name, as accepted by [`FromStr`] and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Auto => "auto",
            Strategy::Kernel => "kernel",
            Strategy::Immutable => "immutable",
            Strategy::Guard => "guard",
            Strategy::Lease => "lease",
            Strategy::Reflink => "reflink",
            Strategy::Lazy => "lazy",
            Strategy::Eager => "eager",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Strategy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Strategy, Error> {
        [Strategy::Auto]
            .into_iter()
            .chain(Strategy::ALL)
            .find(|k| k.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown strategy {s:?}; expected one of auto, kernel, immutable, guard, lease, reflink, lazy, eager"
                ))
            })
    }
}

/// A validated request to map a file, shared by every strategy.
#[derive(Clone, Debug)]
pub(crate) struct Request<'a> {
    pub(crate) file: &'a File,
    pub(crate) meta: Meta,
    /// File offset of the first mapped page (page-aligned).
    pub(crate) offset: u64,
    /// Bytes between `offset` and the first byte the user asked for.
    pub(crate) head: usize,
    /// Bytes the user asked for.
    pub(crate) len: usize,
    /// Hand out `&mut [u8]` (private stores, S4).
    pub(crate) writable: bool,
    /// Take every page's snapshot before returning.
    pub(crate) populate: bool,
    /// Which instants the pages may show (see [`crate::Consistency`]).
    pub(crate) consistency: crate::Consistency,
    /// Made by `Auto`: a refusal is cheap to take (the next strategy is
    /// tried), so no waiting out transient writers, and refusals are not
    /// explained at length (each explanation costs probes).
    pub(crate) for_auto: bool,
}

impl Request<'_> {
    /// Length of the page-aligned range that holds `head + len` bytes.
    pub(crate) fn map_len(&self) -> usize {
        let page = crate::sys::page_size();
        (self.head + self.len).div_ceil(page) * page
    }
}

/// `populate`: reads the first `len` bytes of `region` now, so that a page
/// that cannot be read is an `Io` error from `map` instead of SIGBUS on its
/// first touch.
pub(crate) fn populate(region: &crate::sys::mmap::Region, len: usize) -> Result<(), Error> {
    if len == 0 {
        return Ok(());
    }
    let len = len.next_multiple_of(crate::sys::page_size());
    region
        .advise(0, len, crate::sys::mmap::Advice::PopulateRead)
        .map_err(|e| {
            Error::io(
                "reading every page now (populate): a page could not be read, an I/O error \
                 (MADV_POPULATE_READ)",
                e,
            )
        })
}

/// The memory behind a [`crate::MapCopy`] or [`crate::MapCopyMut`]: a
/// strategy-owned snapshot that stays valid and unchanged until dropped.
///
/// `MapCopy` reads [`Snapshot::span`] once, when it is made, and from then
/// on derefs to that pointer and length inline (no call per index), so the
/// address range is part of the contract, not only the contents.
///
/// # Safety
///
/// An implementor promises, for the span `s` returned by the first call of
/// [`Snapshot::span`] and for the whole life of the value (until its `Drop`
/// starts, in every process that holds it, forked children included):
///
/// * **stable address**: every call returns the same `s`. Nothing moves the
///   bytes elsewhere: a step that swaps the pages behind them (a detach, a
///   lease break, a fork handler's snapshot) puts the new pages over the
///   very same range (`MAP_FIXED`, `mremap(MREMAP_FIXED)` onto it,
///   `UFFDIO_COPY`/`UFFDIO_MOVE` into it), never somewhere new;
/// * **valid**: `s.len` bytes from `s.ptr` are mapped and readable, and
///   reading them never faults fatally (no `SIGBUS`, no `SIGSEGV`); a read
///   may block while a fault handler fills a page;
/// * **unchanged** (S1–S3): no byte of the range changes, except by stores
///   through the [`crate::MapCopyMut`] that owns a snapshot made for
///   `map_mut` (`Request::writable`);
/// * **writable, private** for snapshots made for `map_mut`: the range is
///   mapped writable, nothing but that `MapCopyMut` writes it, and its
///   stores reach no file and no other process (S4). Snapshots made for
///   `map` may be read-only.
///
/// `Send + Sync` are required: `MapCopy` shares the snapshot between
/// threads.
#[allow(unsafe_code)] // the promise `MapCopy`'s Deref relies on
pub(crate) unsafe trait Snapshot: Send + Sync + fmt::Debug {
    /// The strategy that made it (never `Auto`).
    fn strategy(&self) -> Strategy;
    /// Where the user's bytes are: the same span for the snapshot's whole
    /// life (see the trait's safety section).
    fn span(&self) -> Span;
}

/// Is `s` able to map this request? `Ok` says on what grounds, `Err` why
/// not.
pub(crate) fn check(s: Strategy, req: Option<&Request<'_>>) -> Result<String, String> {
    if let Some(r) = req {
        auto::keeps(s, r.consistency)?;
    }
    match s {
        Strategy::Auto => Ok("picks among the others".into()),
        Strategy::Kernel => kernel::check(req),
        Strategy::Immutable => immutable::check(req),
        Strategy::Guard => guard::check(req),
        Strategy::Lease => lease::check(req),
        Strategy::Reflink => reflink::check(req),
        Strategy::Lazy => lazy::check(req),
        Strategy::Eager => eager::check(req),
    }
}

/// Maps `req` with `s`, or with the first strategy that can when `s` is `Auto`.
pub(crate) fn map(s: Strategy, req: &Request<'_>) -> Result<Box<dyn Snapshot>, Error> {
    if s == Strategy::Auto {
        return auto::map(req);
    }
    auto::keeps(s, req.consistency).map_err(|why| Error::unsupported(s, why))?;
    map_named(s, req).map_err(auto::out_of_fds_hint)
}

/// Maps with a concrete strategy, no consistency check.
fn map_named(s: Strategy, req: &Request<'_>) -> Result<Box<dyn Snapshot>, Error> {
    match s {
        Strategy::Auto => auto::map(req),
        Strategy::Kernel => kernel::map(req),
        Strategy::Immutable => immutable::map(req),
        Strategy::Guard => guard::map(req),
        Strategy::Lease => lease::map(req),
        Strategy::Reflink => reflink::map(req),
        Strategy::Lazy => lazy::map(req),
        Strategy::Eager => eager::map(req),
    }
}

/// The order `Auto` tries strategies in for read-only maps (`map`), chosen
/// by what each costs *other* processes (a read-only snapshot taken by
/// default must not slow down everybody else's reads) and then the mapper.
/// `mapcopy bench` measures both, in the same run: its "cost to another
/// process" table (another process's 4 KiB `pread` and `pwrite` while each
/// kind of mapping lives) and its per-workload tables against
/// `MAP_PRIVATE`; runs are kept in `bench-results/`, and the README quotes
/// one.
///
/// * `Immutable` first: where the kernel lets nobody change the file it
///   costs nobody anything and the mapper only a private mapping (its
///   bench goal: map + first byte within 1.2× `MAP_PRIVATE`); elsewhere it
///   refuses at no cost (the facts it needs are read by every map). Before
///   `Kernel`, which would map such a file too (a verity file on ext4, say)
///   but makes the kernel keep a snapshot of it for nothing.
/// * `Kernel` next: where the kernel has `MAP_COPY` (the series in
///   `kernel/`) and the filesystem opts in, it costs the mapper a private
///   mapping and other processes a page copy per page they change while a
///   copy shares it; elsewhere it refuses (the kernel's answer is cached).
/// * `Lease` next: other processes' reads and writes cost what they cost
///   without it (within the bench's noise); only the first writer's `open`
///   waits, for the snapshot (a copy of the range; a reflink clone on xfs
///   and btrfs), and a stopped mapper holds it up at most
///   `fs.lease-break-time`. For the mapper it is as cheap as `MAP_PRIVATE`.
///   Its one hole, `open(O_RDONLY | O_TRUNC)` by a process with write
///   permission (truncates without breaking the lease), is listed by
///   `probe`.
/// * `Reflink` next: nothing to other processes at all and no hole, but
///   the clone's page cache starts cold for the mapper (its full scan is
///   the bench's slowest zero-copy one).
/// * `Guard` only then (where a lease cannot be had: another owner without
///   `CAP_LEASE`, leases disabled): every read and write of the file by any
///   other process waits for a fanotify round trip (many times the read
///   itself: the bench's "cost to another process" table, runs in
///   `bench-results/`), and a stopped mapper stops them all without bound.
/// * `Lazy`, then `Eager`: copy what the owner touches, or everything.
pub(crate) fn auto_order() -> &'static [Strategy] {
    &Strategy::ALL
}

/// The order for writable maps (`map_mut`): `Immutable` (a private writable
/// mapping of a file nobody can change) and `Kernel` first, then as follows. `Guard` and `Lease` must take a
/// `map_mut` snapshot at map time (the owner's stores would be lost to a
/// truncation or a lease break otherwise): a reflink clone where the
/// filesystem has one, else a copy of the whole range. So a clone comes
/// first, then `Lazy`, which copies only what is touched; `Guard` and
/// `Lease` only before `Eager`.
const AUTO_ORDER_MUT: [Strategy; 7] = [
    Strategy::Immutable,
    Strategy::Kernel,
    Strategy::Reflink,
    Strategy::Lazy,
    Strategy::Guard,
    Strategy::Lease,
    Strategy::Eager,
];

/// `auto_order()`, or the `map_mut` order, for this request.
pub(crate) fn auto_order_for(req: Option<&Request<'_>>) -> &'static [Strategy] {
    match req {
        Some(r) if r.writable => &AUTO_ORDER_MUT,
        _ => auto_order(),
    }
}

/// The strategy `Auto` would pick for `req`, with the reasons the ones
/// before it were passed over.
pub(crate) fn choose(req: Option<&Request<'_>>) -> (Option<Strategy>, Vec<(Strategy, String)>) {
    let mut passed = Vec::new();
    for &s in auto_order_for(req) {
        if req.is_none() && s == Strategy::Immutable {
            // Whether a file is immutable is a fact of the file alone.
            passed.push((s, "used only for files nobody can change".into()));
            continue;
        }
        if req.is_none()
            && let Err(why) = auto::keeps(s, crate::Consistency::default())
        {
            passed.push((s, why));
            continue;
        }
        match check(s, req) {
            Ok(_) => return (Some(s), passed),
            Err(why) => passed.push((s, why)),
        }
    }
    (None, passed)
}
