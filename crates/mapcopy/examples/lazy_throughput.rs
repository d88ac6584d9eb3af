//! First-touch throughput of `Strategy::Lazy` on a hot file, next to
//! `std::fs::read`, `Strategy::Eager` (pread into fresh 2 MiB THP memory, the
//! copy limit on this machine) in the same run.
//!
//! ```text
//! cargo run --release -p mapcopy --example lazy_throughput -- [SIZE_MIB] [REPS] [DIR]
//! ```
//!
//! Each line: median wall time of REPS runs (min–max), GB/s (10^9 bytes/s)
//! for open/map + a full sequential scan that sums every u64 (or reads one
//! byte per page), and the median CPU time of the whole process (all
//! threads: reader, fault handler, prefetcher) for it — the figure that
//! other load on the machine disturbs least. For Lazy, the mapping's
//! `AnonHugePages` after the scan shows whether chunks arrived as huge
//! pages (UFFDIO_MOVE).

use std::fs::File;
use std::io::Write;
use std::time::{Duration, Instant};

use mapcopy::{MapOptions, Strategy};

fn sum_u64(b: &[u8]) -> u64 {
    let head = b.as_ptr().align_offset(8).min(b.len());
    let (pre, rest) = b.split_at(head);
    let (mid, post) = rest.split_at(rest.len() - rest.len() % 8);
    let mut s = pre.iter().chain(post).map(|&x| u64::from(x)).sum::<u64>();
    for c in mid.chunks_exact(8) {
        s = s.wrapping_add(u64::from_ne_bytes(c.try_into().unwrap()));
    }
    s
}

fn touch_pages(b: &[u8]) -> u64 {
    b.iter().step_by(4096).map(|&x| u64::from(x)).sum()
}

fn anon_huge(addr: usize, len: usize) -> u64 {
    let s = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut inside = false;
    let mut kb = 0;
    for l in s.lines() {
        if let Some((a, b)) = l.split_once(' ').and_then(|(r, _)| r.split_once('-')) {
            if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                inside = a >= addr && b <= addr + len;
                continue;
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

/// CPU time (user + system) of the whole process so far.
fn cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn bench(name: &str, bytes: u64, reps: usize, mut f: impl FnMut() -> String) -> f64 {
    let mut wall = Vec::new();
    let mut cpus = Vec::new();
    let mut note = String::new();
    for _ in 0..reps {
        let (w, c) = (Instant::now(), cpu());
        note = f();
        wall.push(w.elapsed());
        cpus.push(cpu() - c);
    }
    wall.sort();
    cpus.sort();
    let med = wall[wall.len() / 2];
    let gbs = bytes as f64 / med.as_secs_f64() / 1e9;
    println!(
        "{name:<30} {:>7.1} ms ({:>6.1}–{:>6.1})  {gbs:>5.2} GB/s  cpu {:>6.1} ms  {note}",
        med.as_secs_f64() * 1e3,
        wall[0].as_secs_f64() * 1e3,
        wall[wall.len() - 1].as_secs_f64() * 1e3,
        cpus[cpus.len() / 2].as_secs_f64() * 1e3,
    );
    gbs
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
    let expect = sum_u64(&std::fs::read(&path)?); // also makes the cache hot
    println!("{mib} MiB hot file in {dir}, median of {reps}; scan = sum of u64s");
    let check = |got: u64, what: &str| assert_eq!(got, expect, "{what}: wrong contents");

    if std::env::var_os("LAZY_ONLY").is_some() {
        for _ in 0..reps {
            bench("lazy + scan", size, 1, || {
                let m = MapOptions::new()
                    .strategy(Strategy::Lazy)
                    .map(&file)
                    .unwrap();
                check(sum_u64(&m), "lazy");
                String::new()
            });
            bench("lazy mut + scan", size, 1, || {
                let m = MapOptions::new()
                    .strategy(Strategy::Lazy)
                    .map_mut(&file)
                    .unwrap();
                check(sum_u64(&m), "lazy");
                String::new()
            });
            bench("eager + scan", size, 1, || {
                let m = MapOptions::new()
                    .strategy(Strategy::Eager)
                    .map(&file)
                    .unwrap();
                check(sum_u64(&m), "lazy");
                String::new()
            });
        }
        return Ok(());
    }
    let pages = (size / 4096) as usize;
    let picks = pages / 100;
    if std::env::var_os("LAZY_RANDOM").is_some() {
        for _ in 0..reps {
            let m = MapOptions::new()
                .strategy(Strategy::Lazy)
                .map(&file)
                .unwrap();
            let mut x: u64 = 0x2545_f491_4f6c_dd1d;
            for _ in 0..picks {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                std::hint::black_box(m[(x as usize % pages) * 4096]);
            }
        }
        return Ok(());
    }
    // Map + first byte, per call (µs): plain MAP_PRIVATE against Lazy.
    let first = |f: &mut dyn FnMut() -> u8| {
        let mut t: Vec<f64> = (0..200)
            .map(|_| {
                let s = Instant::now();
                std::hint::black_box(f());
                s.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    let private = first(&mut || {
        // SAFETY: a fresh private read-only mapping of a file nobody else
        // writes during this read; unmapped right after.
        unsafe {
            let p = rustix::mm::mmap(
                std::ptr::null_mut(),
                size as usize,
                rustix::mm::ProtFlags::READ,
                rustix::mm::MapFlags::PRIVATE,
                &file,
                0,
            )
            .unwrap();
            let v = std::ptr::read_volatile(p.cast::<u8>());
            rustix::mm::munmap(p, size as usize).unwrap();
            v
        }
    });
    let lazy_first = first(&mut || {
        let m = MapOptions::new()
            .strategy(Strategy::Lazy)
            .map(&file)
            .unwrap();
        m[0]
    });
    println!(
        "map + first byte: MAP_PRIVATE {private:.1} µs, lazy {lazy_first:.1} µs ({:.2}x), median of 200",
        lazy_first / private
    );
    let read = bench("std::fs::read + scan", size, reps, || {
        check(sum_u64(&std::fs::read(&path).unwrap()), "read");
        String::new()
    });
    let eager = bench("eager (THP copy) + scan", size, reps, || {
        let m = MapOptions::new()
            .strategy(Strategy::Eager)
            .map(&file)
            .unwrap();
        check(sum_u64(&m), "eager");
        String::new()
    });
    let lazy = bench("lazy + scan", size, reps, || {
        let m = MapOptions::new()
            .strategy(Strategy::Lazy)
            .map(&file)
            .unwrap();
        check(sum_u64(&m), "lazy");
        format!(
            "AnonHugePages {} MiB",
            anon_huge(m.as_ptr() as usize, m.len()) >> 20
        )
    });
    bench("lazy + 1 byte per page", size, reps, || {
        let m = MapOptions::new()
            .strategy(Strategy::Lazy)
            .map(&file)
            .unwrap();
        std::hint::black_box(touch_pages(&m));
        String::new()
    });
    bench("lazy map_mut + scan", size, reps, || {
        let m = MapOptions::new()
            .strategy(Strategy::Lazy)
            .map_mut(&file)
            .unwrap();
        check(sum_u64(&m), "lazy mut");
        String::new()
    });
    bench("lazy populate(true) + scan", size, reps, || {
        let m = MapOptions::new()
            .strategy(Strategy::Lazy)
            .populate(true)
            .map(&file)
            .unwrap();
        check(sum_u64(&m), "lazy populate");
        String::new()
    });
    let mut best = f64::MAX;
    bench("lazy 1% random pages", size, reps, || {
        let s = Instant::now();
        let m = MapOptions::new()
            .strategy(Strategy::Lazy)
            .map(&file)
            .unwrap();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut sum = 0u64;
        for _ in 0..picks {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            sum += u64::from(m[(x as usize % pages) * 4096]);
        }
        std::hint::black_box(sum);
        let us = s.elapsed().as_secs_f64() * 1e6 / picks as f64;
        best = best.min(us);
        format!("{picks} pages, {us:.1} µs per page (best {best:.1})")
    });
    bench("lazy map_mut 1% random stores", size, reps, || {
        let s = Instant::now();
        let mut m = MapOptions::new()
            .strategy(Strategy::Lazy)
            .map_mut(&file)
            .unwrap();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..picks {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            m[(x as usize % pages) * 4096] ^= 1;
        }
        let us = s.elapsed().as_secs_f64() * 1e6 / picks as f64;
        format!("{picks} pages, {us:.1} µs per page")
    });
    println!(
        "lazy / std::fs::read = {:.2}x, lazy / eager (THP copy limit) = {:.2}x",
        lazy / read,
        lazy / eager
    );
    Ok(())
}
