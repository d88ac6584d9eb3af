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

pub(crate) mod eager;
pub(crate) mod guard;
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
    pub const ALL: [Strategy; 5] = [
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
                    "unknown strategy {s:?}; expected one of auto, guard, lease, reflink, lazy, eager"
                ))
            })
    }
}

/// A validated request to map a file, shared by every strategy.
#[derive(Debug)]
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
    #[allow(dead_code)] // read by the lazy strategies
    pub(crate) populate: bool,
}

impl Request<'_> {
    /// Length of the page-aligned range that holds `head + len` bytes.
    pub(crate) fn map_len(&self) -> usize {
        let page = crate::sys::page_size();
        (self.head + self.len).div_ceil(page) * page
    }
}

/// The memory behind a [`crate::MapCopy`]: a strategy-owned snapshot that
/// stays valid and unchanged until dropped.
pub(crate) trait Snapshot: Send + Sync + fmt::Debug {
    /// The strategy that made it (never `Auto`).
    fn strategy(&self) -> Strategy;
    /// The user's bytes. Their contents never change (S1–S3).
    fn bytes(&self) -> &[u8];
    /// The user's bytes, writable; only called on snapshots made for
    /// `map_mut`. Stores stay private (S4).
    fn bytes_mut(&mut self) -> &mut [u8];
}

/// Is `s` able to map this request? `Ok` says on what grounds, `Err` why
/// not.
pub(crate) fn check(s: Strategy, req: Option<&Request<'_>>) -> Result<String, String> {
    match s {
        Strategy::Auto => Ok("picks among the others".into()),
        Strategy::Guard => guard::check(req).map(|ok| match req.and_then(guard_first) {
            Some(why) => format!("{ok}; {why}"),
            None => ok,
        }),
        Strategy::Lease => lease::check(req),
        Strategy::Reflink => reflink::check(req),
        Strategy::Lazy => lazy::check(req),
        Strategy::Eager => eager::check(req),
    }
}

/// Maps `req` with `s`, or with the first strategy that can when `s` is `Auto`.
pub(crate) fn map(s: Strategy, req: &Request<'_>) -> Result<Box<dyn Snapshot>, Error> {
    match s {
        Strategy::Auto => auto(req),
        Strategy::Guard => guard::map(req),
        Strategy::Lease => lease::map(req),
        Strategy::Reflink => reflink::map(req),
        Strategy::Lazy => lazy::map(req),
        Strategy::Eager => eager::map(req),
    }
}

/// The order `Auto` tries strategies in, cheapest first.
///
/// `Guard` comes after `Lease` and `Reflink`: those cost other processes
/// nothing per access, a guard adds a fanotify round trip (+25 µs median
/// measured per 4 KiB `pread`) to every read, write and open of the file by
/// anyone. It comes
/// before `Lazy` and `Eager`, which copy every page the owner touches while
/// a guard shares the page cache. [`auto_order_for`] moves it ahead of
/// `Lease` for large ranges without reflink.
pub(crate) fn auto_order() -> &'static [Strategy] {
    &Strategy::ALL
}

/// A mapping at least this long goes to `Guard` before `Lease` when the
/// filesystem cannot reflink: a lease break then copies the whole range
/// while the writer's `open` waits. Measured on ext4 (`examples/guard_cost`,
/// one run, loaded 2-core machine): a writer's `open` under `Lease` waited
/// 434 ms for 64 MiB and 1.62 s for 1 GiB; under `Guard` 63 µs, and each
/// later 4 KiB `pread`/`pwrite` of others paid +25 µs / +56 µs (median),
/// +78 µs with the page copy. At 64 MiB one break costs as much as ~17 000
/// guarded reads; below it the lease's zero per-access cost wins. With
/// reflink (xfs, btrfs) the break clones instead (1 GiB: 10–40 ms), so
/// `Lease` stays first.
pub(crate) const GUARD_BEFORE_LEASE: usize = 64 << 20;

/// `auto_order()` adjusted for this request: `Guard` moves ahead of `Lease`
/// when [`guard_first`] says so.
pub(crate) fn auto_order_for(req: Option<&Request<'_>>) -> Vec<Strategy> {
    let mut order = auto_order().to_vec();
    if req.is_some_and(|r| guard_first(r).is_some()) {
        if let (Some(g), Some(l)) = (
            order.iter().position(|&s| s == Strategy::Guard),
            order.iter().position(|&s| s == Strategy::Lease),
        ) {
            if g > l {
                let guard = order.remove(g);
                order.insert(l, guard);
            }
        }
    }
    order
}

/// Why `Auto` prefers `Guard` to `Lease` for `req`, or `None` if it does
/// not (a small range, or a filesystem that clones cheaply on a break).
pub(crate) fn guard_first(req: &Request<'_>) -> Option<String> {
    if req.map_len() < GUARD_BEFORE_LEASE || reflink::check(Some(req)).is_ok() {
        return None;
    }
    Some(format!(
        "auto prefers it to lease here: {} MiB without reflink would be copied while a writer's open waits for the lease break; a guard copies only the pages writers touch",
        req.map_len() >> 20
    ))
}

/// The strategy `Auto` would pick for `req`, with the reasons the ones
/// before it were passed over.
pub(crate) fn choose(req: Option<&Request<'_>>) -> (Option<Strategy>, Vec<(Strategy, String)>) {
    let mut passed = Vec::new();
    for s in auto_order_for(req) {
        match check(s, req) {
            Ok(_) => return (Some(s), passed),
            Err(why) => passed.push((s, why)),
        }
    }
    (None, passed)
}

fn auto(req: &Request<'_>) -> Result<Box<dyn Snapshot>, Error> {
    let mut reasons = Vec::new();
    for s in auto_order_for(Some(req)) {
        if let Err(why) = check(s, Some(req)) {
            reasons.push(format!("{s}: {why}"));
            continue;
        }
        match map(s, req) {
            Ok(snap) => return Ok(snap),
            // A strategy can still find out late that it cannot keep the
            // contract (a writer opened the file between check and map);
            // fall through to the next one. Real I/O errors stop here.
            Err(e) if e.kind() == crate::ErrorKind::Unsupported => {
                reasons.push(format!("{s}: {e}"))
            }
            Err(e) => return Err(e),
        }
    }
    Err(Error::unsupported(Strategy::Auto, reasons.join("; ")))
}
