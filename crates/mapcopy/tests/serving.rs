//! The threads that serve mappings do bounded work: a Lease break that
//! copies 1 GiB (no reflink on the temp dir's filesystem) must not hold up
//! the Lazy faults of the same process.
//!
//! Measured, not assumed: a thread touches fresh pages of a Lazy mapping
//! (each a userfaultfd fault) before and while another process's `open`
//! breaks the lease of a 1 GiB Lease mapping. If the break's copy ran on the
//! thread that serves the faults, a fault arriving during it would wait for
//! the rest of the copy — about as long as the copy. The assertion is
//! generous, for a loaded 2-core machine: the slowest fault during the copy
//! stays under a quarter of the copy's duration.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mapcopy::{Consistency, MapOptions, Strategy};
use mapcopy_check::fixture;
use mapcopy_check::rewrite::Rewriter;

const GIB: u64 = 1 << 30;
const PAGE: usize = 4096;

/// Touches fresh pages of `map` (seeded, spread out so no prefetch covers
/// the next), one at a time, returning each touch's latency, until `stop`.
fn touch_until(map: &[u8], start: usize, stop: &AtomicBool, max: usize) -> Vec<Duration> {
    let pages = map.len() / PAGE;
    let mut out = Vec::new();
    let mut x: u64 = 0x5eed + start as u64;
    while !stop.load(Ordering::Relaxed) && out.len() < max {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let p = (x >> 33) as usize % pages;
        let t = Instant::now();
        std::hint::black_box(map[p * PAGE]);
        out.push(t.elapsed());
    }
    out
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn main() {
    // The writer below is this binary, re-executed.
    mapcopy_check::child::dispatch();
    lazy_faults_are_not_held_up_by_a_lease_break_copy();
    println!("serving: ok");
}

fn lazy_faults_are_not_held_up_by_a_lease_break_copy() {
    let dir = std::env::temp_dir();
    let probe = mapcopy::probe(None);
    for s in [Strategy::Lazy, Strategy::Lease] {
        let e = probe.strategies.iter().find(|e| e.strategy == s).unwrap();
        if let Err(why) = &e.usable {
            fixture::skip_or_fail(format!("{s} is not usable here: {why}")).unwrap();
            return;
        }
    }
    let tmp = tempfile::Builder::new()
        .prefix("mapcopy-serving-")
        .tempdir_in(&dir)
        .unwrap();
    // The leased file: 1 GiB of data (not a hole: the copy must read it).
    let big = tmp.path().join("big.bin");
    write_dense(&big, GIB).unwrap();
    // The lazy file: sparse, so that each fault is the handler's own cost.
    let lazy_path = tmp.path().join("lazy.bin");
    File::create(&lazy_path)
        .unwrap()
        .set_len(512 << 20)
        .unwrap();
    let small = tmp.path().join("small.bin");
    std::fs::write(&small, b"version 2").unwrap();

    let big_file = File::open(&big).unwrap();
    let leased = match MapOptions::new().strategy(Strategy::Lease).map(&big_file) {
        Ok(m) => m,
        Err(e) => {
            fixture::skip_or_fail(format!("lease mapping of 1 GiB: {e}")).unwrap();
            return;
        }
    };
    assert_eq!(leased[0], 1, "the leased file's first byte");
    let lazy_file = File::open(&lazy_path).unwrap();
    let lazy = mapcopy_check::options(Strategy::Lazy)
        .consistency(Consistency::PerPage)
        .map(&lazy_file)
        .unwrap();

    // Baseline: faults with nothing else going on.
    let stop = AtomicBool::new(false);
    let mut baseline = touch_until(&lazy, 0, &stop, 300);
    let base_median = median(&mut baseline);

    // The break: another process opens the leased file for writing; its
    // open returns once the 1 GiB snapshot is taken.
    let writer = Rewriter::spawn(&big, &small, false).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let during = Arc::new(Mutex::new(Vec::new()));
    let copy_secs = std::thread::scope(|sc| {
        let (stop2, during2, lazy2) = (stop.clone(), during.clone(), &lazy);
        let toucher = sc.spawn(move || {
            // Give the break a moment to start, then fault throughout it.
            std::thread::sleep(Duration::from_millis(20));
            let v = touch_until(lazy2, 1, &stop2, usize::MAX);
            *during2.lock().unwrap() = v;
        });
        let t = Instant::now();
        writer.rewrite().unwrap();
        let copy = t.elapsed();
        stop.store(true, Ordering::Relaxed);
        toucher.join().unwrap();
        copy
    });
    assert_eq!(leased[0], 1, "the snapshot keeps version 1");
    let mut during = std::mem::take(&mut *during.lock().unwrap());
    let max_during = during.iter().copied().max().unwrap_or_default();
    let med_during = median(&mut during);
    eprintln!(
        "lease break of 1 GiB took {copy_secs:?}; lazy faults: baseline median {base_median:?}; during the break {} faults, median {med_during:?}, max {max_during:?}",
        during.len()
    );
    assert!(
        copy_secs > Duration::from_millis(100),
        "the break took only {copy_secs:?}: it cannot have copied 1 GiB (reflink?), the test shows nothing"
    );
    assert!(
        during.len() >= 10,
        "only {} faults during a {copy_secs:?} break",
        during.len()
    );
    assert!(
        max_during < copy_secs / 4,
        "a Lazy fault waited {max_during:?} during a {copy_secs:?} lease-break copy (baseline median {base_median:?}): the copy holds up the fault handler"
    );
}

fn write_dense(path: &Path, size: u64) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::with_capacity(8 << 20, File::create(path)?);
    let chunk: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8 + 1).collect();
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    f.flush()
}
