//! `Auto`: the first strategy, in [`super::auto_order_for`], that keeps the
//! requested consistency and can map the file — at the cost of the one it
//! picks.
//!
//! What holds for the process (capabilities, the kernel, whether a
//! fanotify pre-content group or a userfaultfd can be had) is found out
//! once; what holds for a filesystem (reflink, pre-content marks) once per
//! filesystem; only what holds for one file (a writer holding it open, its
//! owner) is looked at per call — by the strategy's own `map`, which has
//! to look anyway. So `Auto` does not run the strategies' `check` (the
//! exact answer [`crate::probe`] gives, which may create and destroy kernel
//! objects to find out); it runs each one's cheap, cached pre-check and
//! then its `map`, and takes an `Unsupported` refusal as "try the next".
//! When file descriptors run out (the fds live mappings keep pass half the
//! soft `RLIMIT_NOFILE`, or the kernel says `EMFILE`/`ENFILE`), it passes
//! over the strategies that keep one (see `crate::fds`).

use std::sync::OnceLock;

use super::{
    Request, Snapshot, Strategy, auto_order_for, guard, immutable, kernel, lazy, lease, map_named,
    reflink,
};
use crate::sys::detect::Caps;
use crate::{Consistency, Error, ErrorKind, fds};

/// `Ok` if `s` keeps consistency `c`, else why not (for users).
pub(crate) fn keeps(s: Strategy, c: Consistency) -> Result<(), String> {
    if s.keeps(c) {
        return Ok(());
    }
    Err(format!(
        "{s} fills each page at its first access, so its pages can be of different versions of \
         the file; it keeps only Consistency::PerPage, not {c} (map with \
         .consistency(Consistency::PerPage), or with a strategy that snapshots at map time)"
    ))
}

/// This process's effective capabilities, read once.
pub(crate) fn caps() -> Caps {
    static CAPS: OnceLock<Caps> = OnceLock::new();
    *CAPS.get_or_init(|| Caps::effective().unwrap_or_default())
}

/// Does `s` keep an fd open per live mapping (or per file)?
fn keeps_fds(s: Strategy) -> bool {
    matches!(s, Strategy::Guard | Strategy::Lease | Strategy::Lazy)
}

/// The cheap pre-check of `s` for `Auto`: cached process and filesystem
/// facts, and what the request itself shows. `Err` is why `s` is passed
/// over.
fn pre_check(s: Strategy, req: &Request<'_>) -> Result<(), String> {
    keeps(s, req.consistency)?;
    if keeps_fds(s) && !fds::room() {
        return Err(format!(
            "the fds kept for live mappings ({}) reached half the soft RLIMIT_NOFILE",
            fds::kept()
        ));
    }
    match s {
        Strategy::Kernel => kernel::pre_check(),
        Strategy::Immutable => immutable::immutable(req).map(drop),
        Strategy::Guard => guard::pre_check(req),
        Strategy::Lease => lease::pre_check(req),
        Strategy::Reflink => reflink::check(Some(req)).map(drop),
        Strategy::Lazy => lazy::check(Some(req)).map(drop),
        Strategy::Eager | Strategy::Auto => Ok(()),
    }
}

/// Maps `req` with the first strategy that can.
pub(crate) fn map(req: &Request<'_>) -> Result<Box<dyn Snapshot>, Error> {
    let req = Request {
        for_auto: true,
        ..req.clone()
    };
    let mut reasons = Vec::new();
    for &s in auto_order_for(Some(&req)) {
        if let Err(why) = pre_check(s, &req) {
            reasons.push(format!("{s}: {why}"));
            continue;
        }
        match map_named(s, &req) {
            Ok(snap) => return Ok(snap),
            // A strategy can find out only in `map` that it cannot keep the
            // contract (a writer holds the file open); fall through. So do
            // fds running out: the next strategies may need none.
            Err(e) if e.kind() == ErrorKind::Unsupported => reasons.push(format!("{s}: {e}")),
            Err(e) if e.raw_os_error().is_some_and(fds::is_exhausted) => {
                reasons.push(format!("{s}: {e}"))
            }
            // Real I/O errors stop here.
            Err(e) => return Err(e),
        }
    }
    Err(Error::unsupported(Strategy::Auto, reasons.join("; ")))
}

/// A named strategy's error, with what to do if fds ran out.
pub(crate) fn out_of_fds_hint(e: Error) -> Error {
    let errno = e.raw_os_error();
    let msg = e.to_string();
    let out = errno.is_some_and(fds::is_exhausted)
        || msg.contains("(os error 24)")
        || msg.contains("(os error 23)");
    if out { e.with_hint(fds::HINT) } else { e }
}
