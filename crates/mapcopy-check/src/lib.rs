//! Test machinery for mapcopy, shared by the contract tests, the CLI's demo
//! and torture commands: writers that run in other processes, fixtures, and
//! the oracle.
//!
//! * [`pattern`]: recognisable per-page content (generation + offset).
//! * [`modify`]: every modification kind of the contract's S2, applied from
//!   a separate process, with a model of the result.
//! * [`oracle`]: the checker that holds a mapping to S1/S2.
//! * [`fixture`]: temp files and loop-mounted xfs/btrfs/ext4 images, and
//!   the skip-or-fail rule (`MAPCOPY_REQUIRE_ALL=1`).
//! * [`privilege`]: running a child or a command as an unprivileged user.
//! * [`child`]: re-executing the current binary as a separate process.
//! * [`rewrite`]: a process that replaces a file's contents with a new
//!   version, optionally holding it open before the map.
//! * [`prng`]: the seeded splitmix64 generator of the torture and the bench.
//!
//! Unsafe code is denied here and allowed only in the modules that map or
//! signal (each says why).

#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod bench_writer;
pub mod child;
pub mod control;
pub mod demo;
pub mod fixture;
pub mod modify;
pub mod oracle;
pub mod pattern;
pub mod privilege;
pub mod prng;
pub mod rewrite;
pub mod torture;

/// `MapOptions` for strategy `s` as a user of it maps: the default
/// consistency (point-in-time) where `s` keeps it, per-page for a strategy
/// that keeps only that (`Lazy`), so that every strategy's contract cases
/// run.
///
/// ```
/// use mapcopy::{Consistency, Strategy};
/// # let file = tempfile::tempfile().unwrap();
/// let map = mapcopy_check::options(Strategy::Eager).map(&file).unwrap();
/// # drop(map);
/// ```
pub fn options(s: mapcopy::Strategy) -> mapcopy::MapOptions {
    use mapcopy::Consistency;
    let mut o = mapcopy::MapOptions::new();
    o.strategy(s);
    if !s.keeps(Consistency::PointInTime) {
        o.consistency(Consistency::PerPage);
    }
    o
}
