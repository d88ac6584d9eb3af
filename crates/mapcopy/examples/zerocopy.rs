//! Measures the zero-copy strategies (one run each; compare ratios within a
//! run, not absolute numbers across machines):
//!
//! * a writer's `open()` delay when it breaks a `Lease`, per file size;
//! * full-scan throughput of `Lease` and `Reflink` against a plain
//!   `MAP_PRIVATE` mapping (the zero-copy limit, contract broken) and
//!   `std::fs::read` (the copy baseline);
//! * private memory (`Private_Dirty`, `Anonymous` from
//!   `/proc/self/smaps_rollup`) held after a read-only scan;
//! * `Reflink` map time against file size and extent count.
//!
//! ```text
//! cargo run --release -p mapcopy --example zerocopy -- DIR [SIZE_MIB...]
//! ```
//!
//! `DIR` is a directory on the filesystem to measure (e.g. a loop-mounted
//! xfs with reflink, and an ext4 one); files are created there and removed.
#![allow(unsafe_code)]

use std::fs::{self, File};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mapcopy::{MapOptions, Strategy};

const CHILD: &str = "MAPCOPY_ZC_BENCH_CHILD";

fn main() {
    if std::env::var_os(CHILD).is_some() {
        // The writer: time one open() for writing.
        let path = std::env::args().nth(1).unwrap();
        let t = Instant::now();
        let f = File::options().write(true).open(&path);
        let took = t.elapsed();
        match f {
            Ok(_) => println!("{}", took.as_nanos()),
            Err(e) => println!("error {e}"),
        }
        return;
    }
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().expect("usage: zerocopy DIR [SIZE_MIB...]"));
    let mut sizes: Vec<usize> = args.map(|a| a.parse().expect("size in MiB")).collect();
    if sizes.is_empty() {
        sizes = vec![64, 1024];
    }
    let fs = fs_name(&dir);
    println!("# {} on {fs}", dir.display());
    for &mib in &sizes {
        let path = dir.join(format!("bench-{mib}"));
        make(&path, mib << 20);
        println!("\n## {mib} MiB file ({} extents)", extents(&path));
        writer_delay(&path);
        scans(&path);
        let _ = fs::remove_file(&path);
    }
    reflink_vs_extents(&dir);
}

fn fs_name(dir: &Path) -> String {
    let out = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir)
        .output()
        .expect("stat");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn make(path: &Path, len: usize) {
    let mut f = File::create(path).unwrap();
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i * 31 % 251) as u8).collect();
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        f.write_all(&chunk[..n]).unwrap();
        left -= n;
    }
    f.sync_all().unwrap();
}

fn make_unsynced(path: &Path, len: usize) {
    let mut f = File::create(path).unwrap();
    let chunk = vec![0x42u8; 1 << 20];
    for _ in 0..len >> 20 {
        f.write_all(&chunk).unwrap();
    }
}

fn extents(path: &Path) -> String {
    let out = Command::new("filefrag").arg(path).output();
    out.ok()
        .and_then(|o| {
            let s = String::from_utf8_lossy(&o.stdout).to_string();
            s.rsplit(": ")
                .next()
                .map(|t| t.split_whitespace().next().unwrap_or("?").to_string())
        })
        .unwrap_or_else(|| "?".into())
}

/// The writer's open() delay: with no lease, and breaking a Lease (page
/// cache hot, every page of the mapping read once).
fn writer_delay(path: &Path) {
    let open_in_child = || -> String {
        let out = Command::new(std::env::current_exe().unwrap())
            .arg(path)
            .env(CHILD, "1")
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        match s.parse::<u128>() {
            Ok(ns) => format!("{:.3} ms", ns as f64 / 1e6),
            Err(_) => s,
        }
    };
    println!("writer open(O_WRONLY), no lease: {}", open_in_child());
    let file = File::open(path).unwrap();
    let _warm = fs::read(path).unwrap();
    drop(_warm);
    match MapOptions::new().strategy(Strategy::Lease).map(&file) {
        Ok(map) => {
            let sum = scan(&map);
            let d = open_in_child();
            let intact = scan(&map) == sum;
            println!("writer open(O_WRONLY), breaking a Lease: {d} (mapping intact: {intact})");
        }
        Err(e) => println!("lease: {e}"),
    }
}

/// Sums the bytes 8 at a time: touches every page, cheap per byte.
fn scan(b: &[u8]) -> u64 {
    // SAFETY: every bit pattern is a valid u64.
    let (head, mid, tail) = unsafe { b.align_to::<u64>() };
    let mut s = 0u64;
    for &x in head.iter().chain(tail) {
        s = s.wrapping_add(x as u64);
    }
    for &x in mid {
        s = s.wrapping_add(x);
    }
    std::hint::black_box(s)
}

fn gbps(len: usize, d: Duration) -> String {
    format!("{:6.2} GB/s", len as f64 / d.as_secs_f64() / 1e9)
}

/// (Private_Dirty, Anonymous) of this process in KiB.
fn private_kib() -> (u64, u64) {
    let text = fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("Private_Dirty:"), field("Anonymous:"))
}

fn scans(path: &Path) {
    let len = fs::metadata(path).unwrap().len() as usize;
    let file = File::open(path).unwrap();
    let _ = fs::read(path).unwrap(); // page cache hot
    println!(
        "{:<14} {:>11} {:>14} {:>14} {:>10} {:>22}",
        "scan", "map", "map+scan", "2nd scan", "vs MAP_PRIVATE", "private after (KiB)"
    );
    let mut base = None;
    let mut row = |name: &str,
                   map_t: Duration,
                   scan_t: Duration,
                   scan2: Option<Duration>,
                   mem: (i64, i64)| {
        let total = map_t + scan_t;
        let ratio = base.map_or("1.00".to_string(), |b: Duration| {
            format!("{:.2}", b.as_secs_f64() / total.as_secs_f64())
        });
        if base.is_none() {
            base = Some(total);
        }
        println!(
            "{name:<14} {:>9.2}ms {} {:>14} {ratio:>14} {:>10} dirty {:>6} anon",
            map_t.as_secs_f64() * 1e3,
            gbps(len, total),
            scan2.map_or("-".into(), |d| gbps(len, d)),
            mem.0,
            mem.1
        );
    };
    let delta = |a: (u64, u64), b: (u64, u64)| (b.0 as i64 - a.0 as i64, b.1 as i64 - a.1 as i64);

    // MAP_PRIVATE, read-only: the zero-copy limit.
    {
        let m0 = private_kib();
        let t = Instant::now();
        // SAFETY: a fresh private read-only mapping of a file nobody else
        // writes during this measurement.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let map_t = t.elapsed();
        // SAFETY: as above, `len` bytes mapped.
        let b = unsafe { std::slice::from_raw_parts(p as *const u8, len) };
        let t = Instant::now();
        scan(b);
        let scan_t = t.elapsed();
        let t = Instant::now();
        scan(b);
        let s2 = t.elapsed();
        let mem = delta(m0, private_kib());
        row("MAP_PRIVATE", map_t, scan_t, Some(s2), mem);
        // SAFETY: unmapping what we mapped; `b` is not used after.
        unsafe { libc::munmap(p, len) };
    }
    for s in [Strategy::Lease, Strategy::Reflink, Strategy::Eager] {
        let m0 = private_kib();
        let t = Instant::now();
        let map = match mapcopy_check::options(s).map(&file) {
            Ok(m) => m,
            Err(e) => {
                println!("{:<14} {e}", s.to_string());
                continue;
            }
        };
        let map_t = t.elapsed();
        let t = Instant::now();
        scan(&map);
        let scan_t = t.elapsed();
        let t = Instant::now();
        scan(&map);
        let s2 = t.elapsed();
        let mem = delta(m0, private_kib());
        row(s.name(), map_t, scan_t, Some(s2), mem);
    }
    {
        let m0 = private_kib();
        let t = Instant::now();
        let v = fs::read(path).unwrap();
        let read_t = t.elapsed();
        let t = Instant::now();
        scan(&v);
        let scan_t = t.elapsed();
        let mem = delta(m0, private_kib());
        row("std::fs::read", read_t, scan_t, None, mem);
    }
}

/// Reflink map time against size and extent count: contiguous files, and a
/// file whose every other 4 KiB block was rewritten after a clone (so its
/// extents alternate shared / own).
fn reflink_vs_extents(dir: &Path) {
    println!("\n## Reflink map time vs size and extents");
    let time_map = |path: &Path| -> String {
        let f = File::open(path).unwrap();
        let t = Instant::now();
        match MapOptions::new().strategy(Strategy::Reflink).map(&f) {
            Ok(m) => {
                let d = t.elapsed();
                drop(m);
                format!("{:.3} ms", d.as_secs_f64() * 1e3)
            }
            Err(e) => e.to_string(),
        }
    };
    for mib in [1usize, 64, 1024] {
        let p = dir.join(format!("contig-{mib}"));
        make(&p, mib << 20);
        println!(
            "{mib:>5} MiB, {:>6} extents: map {}",
            extents(&p),
            time_map(&p)
        );
        let _ = fs::remove_file(&p);
    }
    // Dirty page cache: FICLONE first writes the source's dirty pages back.
    for mib in [64usize, 1024] {
        let p = dir.join(format!("dirty-{mib}"));
        make_unsynced(&p, mib << 20);
        println!(
            "{mib:>5} MiB just written, not synced (dirty): map {}",
            time_map(&p)
        );
        let _ = fs::remove_file(&p);
    }
    for (mib, step) in [(64usize, 8usize), (64, 2)] {
        let p = dir.join("frag");
        let keep = dir.join("frag-keep");
        make(&p, mib << 20);
        let st = Command::new("cp")
            .args(["--reflink=always"])
            .arg(&p)
            .arg(&keep)
            .status()
            .unwrap();
        if !st.success() {
            println!("(no reflink here: cannot make a fragmented clone)");
            let _ = fs::remove_file(&p);
            return;
        }
        let f = File::options().write(true).open(&p).unwrap();
        let block = [0x5au8; 4096];
        let mut off = 0;
        while off < mib << 20 {
            rustix::io::pwrite(&f, &block, off as u64).unwrap();
            off += step * 4096;
        }
        f.sync_all().unwrap();
        drop(f);
        println!(
            "{mib:>5} MiB, {:>6} extents (every {step}th block rewritten): map {}",
            extents(&p),
            time_map(&p)
        );
        let _ = fs::remove_file(&p);
        let _ = fs::remove_file(&keep);
    }
}
