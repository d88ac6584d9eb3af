//! First-touch throughput of `Strategy::Lazy` on a hot file, next to
//! `std::fs::read`, `Strategy::Eager` (pread into fresh 2 MiB THP memory, the
//! copy limit) and plain `MAP_PRIVATE` (no copy; contract broken), all in
//! the same run.
//!
//! ```text
//! cargo run --release -p mapcopy --example lazy_throughput -- [SIZE_MIB] [REPS] [DIR]
//! ```
//!
//! Each line: the median of REPS runs, min–max, and GB/s (10^9 bytes/s) for
//! mapping + a full sequential scan that sums every u64 (or reads one byte
//! per page). Memory after the Lazy scan: `AnonHugePages` of the mapping.

use std::fs::File;
use std::io::Write;
use std::time::{Duration, Instant};

use mapcopy::{MapOptions, Strategy};

fn sum_u64(b: &[u8]) -> u64 {
    let (pre, mid, post) = unsafe_free_align(b);
    let mut s = pre.iter().chain(post).map(|&x| u64::from(x)).sum::<u64>();
    for c in mid.chunks_exact(8) {
        s = s.wrapping_add(u64::from_ne_bytes(c.try_into().unwrap()));
    }
    s
}

/// Splits `b` so that the middle part starts 8-aligned (without unsafe).
fn unsafe_free_align(b: &[u8]) -> (&[u8], &[u8], &[u8]) {
    let head = b.as_ptr().align_offset(8).min(b.len());
    let (pre, rest) = b.split_at(head);
    let tail = rest.len() % 8;
    let (mid, post) = rest.split_at(rest.len() - tail);
    (pre, mid, post)
}

fn touch_pages(b: &[u8]) -> u64 {
    b.iter().step_by(4096).map(|&x| u64::from(x)).sum()
}

fn anon_huge(addr: usize, len: usize) -> u64 {
    let s = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut inside = false;
    let mut kb = 0;
    for l in s.lines() {
        if let Some((range, _)) = l.split_once(' ') {
            if let Some((a, b)) = range.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    inside = a >= addr && b <= addr + len;
                    continue;
                }
            }
        }
        if inside && l.starts_with("AnonHugePages:") {
            kb += l[14..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap_or(0);
        }
    }
    kb * 1024
}

fn stats(name: &str, bytes: u64, mut t: Vec<Duration>) {
    t.sort();
    let med = t[t.len() / 2];
    let gbs = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e9;
    println!(
        "{name:<36} median {:>8.1} ms  ({:>6.1}–{:>6.1})  {:>6.2} GB/s",
        med.as_secs_f64() * 1e3,
        t[0].as_secs_f64() * 1e3,
        t[t.len() - 1].as_secs_f64() * 1e3,
        gbs(med)
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let mib: u64 = args.get(1).map_or(Ok(1024), |s| s.parse())?;
    let reps: usize = args.get(2).map_or(Ok(5), |s| s.parse())?;
    let dir = args
        .get(3)
        .cloned()
        .unwrap_or_else(|| std::env::temp_dir().display().to_string());
    let size = mib << 20;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
    let mut block = vec![0u8; 1 << 20];
    for i in 0..mib {
        for (k, b) in block.iter_mut().enumerate() {
            *b = (k as u64 ^ i) as u8;
        }
        tmp.write_all(&block)?;
    }
    tmp.flush()?;
    let path = tmp.path().to_path_buf();
    let file = File::open(&path)?;
    std::hint::black_box(std::fs::read(&path)?); // hot page cache
    println!("{mib} MiB hot file in {dir}, {reps} reps, full scan = sum of u64s");
    println!("lazy: {}", mapcopy::probe(None));

    let mut expect = 0;
    let mut t = Vec::new();
    for _ in 0..reps {
        let s = Instant::now();
        let v = std::fs::read(&path)?;
        expect = sum_u64(&v);
        t.push(s.elapsed());
    }
    stats("std::fs::read + scan", size, t);

    for (label, strategy) in [
        ("eager (THP copy limit) + scan", Strategy::Eager),
        ("lazy + scan", Strategy::Lazy),
    ] {
        let mut t = Vec::new();
        let mut huge = 0;
        for _ in 0..reps {
            let s = Instant::now();
            let m = MapOptions::new().strategy(strategy).map(&file)?;
            let got = sum_u64(&m);
            t.push(s.elapsed());
            assert_eq!(got, expect, "{label}: wrong contents");
            huge = anon_huge(m.as_ptr() as usize, m.len());
        }
        stats(label, size, t);
        println!("{:<36} AnonHugePages after scan: {} MiB", "", huge >> 20);
    }
    let mut t = Vec::new();
    for _ in 0..reps {
        let s = Instant::now();
        let m = MapOptions::new().strategy(Strategy::Lazy).map(&file)?;
        std::hint::black_box(touch_pages(&m));
        t.push(s.elapsed());
    }
    stats("lazy + one byte per page", size, t);
    let mut t = Vec::new();
    for _ in 0..reps {
        let s = Instant::now();
        let m = MapOptions::new().strategy(Strategy::Lazy).map_mut(&file)?;
        assert_eq!(sum_u64(&m), expect);
        t.push(s.elapsed());
    }
    stats("lazy map_mut + scan", size, t);
    let mut t = Vec::new();
    for _ in 0..reps {
        let s = Instant::now();
        let m = MapOptions::new()
            .strategy(Strategy::Lazy)
            .populate(true)
            .map(&file)?;
        assert_eq!(sum_u64(&m), expect);
        t.push(s.elapsed());
    }
    stats("lazy populate(true) + scan", size, t);
    Ok(())
}
