//! Cost of a random first touch under `Lazy`: maps a file and reads one
//! byte from 1 % of its pages in a seeded random order, against the same
//! pattern on plain `MAP_PRIVATE` (one page-cache fault each) and
//! `std::fs::read` of the whole file.
//!
//! ```text
//! cargo run --release --example lazy_random -- FILE [ROUNDS]
//! ```
use std::fs::File;
use std::hint::black_box;
use std::time::{Duration, Instant};

use mapcopy::Strategy;

fn touch(bytes: &[u8], pages: usize) -> (u64, usize) {
    let mut x: u64 = 0x6d61_7063_6f70_7921;
    let mut sum = 0u64;
    let n = pages.div_ceil(100);
    for _ in 0..n {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        sum = sum.wrapping_add(bytes[((x >> 20) as usize % pages) * 4096] as u64);
    }
    (sum, n)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: lazy_random FILE [ROUNDS]");
    let rounds: usize = args.next().map(|s| s.parse().expect("ROUNDS")).unwrap_or(5);
    let file = File::open(&path).expect("open");
    let len = file.metadata().expect("fstat").len() as usize;
    let pages = len / 4096;
    let mut lazy = Vec::new();
    let mut private = Vec::new();
    let mut read = Vec::new();
    let mut faults = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        let m = mapcopy_check::options(Strategy::Lazy)
            .map(&file)
            .expect("lazy map");
        let (s, n) = touch(&m, pages);
        black_box(s);
        lazy.push(t.elapsed());
        faults = n;
        drop(m);
        // SAFETY: a private read-only mapping of a file nothing writes
        // while the example runs, unmapped below.
        let p = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ,
                rustix::mm::MapFlags::PRIVATE,
                &file,
                0,
            )
        }
        .expect("mmap");
        let t = Instant::now();
        // SAFETY: `p` maps `len` readable bytes until the munmap below.
        let bytes = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) };
        black_box(touch(bytes, pages));
        private.push(t.elapsed());
        // SAFETY: unmapping exactly what was mapped above.
        unsafe { rustix::mm::munmap(p, len) }.expect("munmap");
        let t = Instant::now();
        black_box(std::fs::read(&path).expect("read").len());
        read.push(t.elapsed());
    }
    let med = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (l, p, r) = (med(&mut lazy), med(&mut private), med(&mut read));
    println!(
        "{faults} random pages of {} MiB: lazy {l:?} ({:.1} µs per page), MAP_PRIVATE {p:?}, std::fs::read {r:?}: lazy {:.1}× faster than fs::read",
        len >> 20,
        l.as_secs_f64() * 1e6 / faults as f64,
        r.as_secs_f64() / l.as_secs_f64()
    );
}
