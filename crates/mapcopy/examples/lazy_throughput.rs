//! First-touch throughput of `Strategy::Lazy` on a hot file, next to
//! `std::fs::read`, `Strategy::Eager` (pread into fresh 2 MiB THP memory, the
//! copy limit on this machine) in the same run.
//!
//! ```text
//! cargo run --release -p mapcopy --example lazy_throughput -- [SIZE_MIB] [REPS] [DIR]
//! ```
//!
//! The cases run interleaved (one round = every case once, each round
//! starting with another case; REPS rounds), so that load from other
//! processes and memory fragmentation hit them alike. Each line: median wall
//! time (min–max), GB/s (10^9 bytes/s) of the file size over it, and the
//! median CPU time of the whole process (all threads: reader, fault
//! handler, prefetcher). Scans sum every u64. For Lazy, the mapping's
//! `AnonHugePages` after the scan shows whether chunks arrived as huge pages
//! (UFFDIO_MOVE). `ONLY=substring` runs only the matching cases.

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
        if let Some((a, b)) = l.split_once(' ').and_then(|(r, _)| r.split_once('-'))
            && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            inside = a < addr + len && b > addr;
            continue;
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

type Case<'a> = (&'static str, Box<dyn FnMut() -> String + 'a>);

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
    println!("{mib} MiB hot file in {dir}, {reps} interleaved rounds");
    let check = move |got: u64, what: &str| assert_eq!(got, expect, "{what}: wrong contents");
    let pages = (size / 4096) as usize;
    let picks = pages / 100;
    let lazy = || mapcopy_check::options(Strategy::Lazy).clone();
    let random = move |m: &mut dyn FnMut(usize)| {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..picks {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            m((x as usize % pages) * 4096);
        }
    };

    let (file, path) = (&file, &path);
    let mut cases: Vec<Case> = vec![
        (
            "std::fs::read + scan",
            Box::new(move || {
                check(sum_u64(&std::fs::read(path).unwrap()), "read");
                String::new()
            }),
        ),
        (
            "eager (THP copy limit) + scan",
            Box::new(move || {
                let m = MapOptions::new()
                    .strategy(Strategy::Eager)
                    .map(file)
                    .unwrap();
                check(sum_u64(&m), "eager");
                String::new()
            }),
        ),
        (
            "lazy + scan",
            Box::new(move || {
                let m = lazy().map(file).unwrap();
                check(sum_u64(&m), "lazy");
                format!(
                    "AnonHugePages {} MiB",
                    anon_huge(m.as_ptr() as usize, m.len()) >> 20
                )
            }),
        ),
        (
            "lazy + 1 byte per page",
            Box::new(move || {
                let m = lazy().map(file).unwrap();
                std::hint::black_box(touch_pages(&m));
                String::new()
            }),
        ),
        (
            "lazy + scan, 4 threads",
            Box::new(move || {
                let m = lazy().map(file).unwrap();
                let q = m.len() / 4;
                let total = std::thread::scope(|s| {
                    let hs: Vec<_> = (0..4)
                        .map(|i| {
                            let part = &m[i * q..if i == 3 { m.len() } else { (i + 1) * q }];
                            s.spawn(move || sum_u64(part))
                        })
                        .collect();
                    hs.into_iter()
                        .map(|h| h.join().unwrap())
                        .fold(0, u64::wrapping_add)
                });
                check(total, "lazy 4 threads");
                String::new()
            }),
        ),
        (
            "lazy map_mut + scan",
            Box::new(move || {
                let m = lazy().map_mut(file).unwrap();
                check(sum_u64(&m), "lazy mut");
                String::new()
            }),
        ),
        (
            "lazy populate(true) + scan",
            Box::new(move || {
                let m = lazy().populate(true).map(file).unwrap();
                check(sum_u64(&m), "lazy populate");
                String::new()
            }),
        ),
        (
            "lazy 1% random pages",
            Box::new(move || {
                let s = Instant::now();
                let m = lazy().map(file).unwrap();
                let mut sum = 0u64;
                random(&mut |i| sum += u64::from(m[i]));
                std::hint::black_box(sum);
                format!(
                    "{picks} pages, {:.1} µs per page",
                    s.elapsed().as_secs_f64() * 1e6 / picks as f64
                )
            }),
        ),
        (
            "lazy map_mut 1% random stores",
            Box::new(move || {
                let s = Instant::now();
                let mut m = lazy().map_mut(file).unwrap();
                random(&mut |i| m[i] ^= 1);
                format!(
                    "{picks} pages, {:.1} µs per page",
                    s.elapsed().as_secs_f64() * 1e6 / picks as f64
                )
            }),
        ),
    ];
    if let Ok(only) = std::env::var("ONLY") {
        cases.retain(|(n, _)| n.contains(only.as_str()));
    }

    // Map + first byte (µs, median of 200; the unmap is not timed): plain
    // MAP_PRIVATE against Lazy.
    let first = |f: &mut dyn FnMut() -> f64| {
        let mut t: Vec<f64> = (0..200).map(|_| f()).collect();
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    let private = first(&mut || {
        let s = Instant::now();
        // SAFETY: a fresh private read-only mapping of a file nobody else
        // writes during this read; unmapped right after.
        unsafe {
            let p = rustix::mm::mmap(
                std::ptr::null_mut(),
                size as usize,
                rustix::mm::ProtFlags::READ,
                rustix::mm::MapFlags::PRIVATE,
                file,
                0,
            )
            .unwrap();
            std::hint::black_box(std::ptr::read_volatile(p.cast::<u8>()));
            let t = s.elapsed().as_secs_f64() * 1e6;
            rustix::mm::munmap(p, size as usize).unwrap();
            t
        }
    });
    let lazy_first = first(&mut || {
        let s = Instant::now();
        let m = lazy().map(file).unwrap();
        std::hint::black_box(m[0]);
        s.elapsed().as_secs_f64() * 1e6
    });
    println!(
        "map + first byte: MAP_PRIVATE {private:.1} µs, lazy {lazy_first:.1} µs ({:.2}x)",
        lazy_first / private
    );
    if std::env::var_os("XCOLD").is_some() {
        for _ in 0..3 {
            let mut v = Vec::new();
            for _ in 0..20 {
                std::hint::black_box(std::fs::read(path).unwrap().len());
                let s = Instant::now();
                let m = lazy().map(file).unwrap();
                std::hint::black_box(m[0]);
                let t = s.elapsed().as_secs_f64() * 1e6;
                drop(m);
                std::hint::black_box(std::fs::read(path).unwrap().len());
                let s = Instant::now();
                let f2 = File::open(path).unwrap();
                // SAFETY: as above.
                let p = unsafe {
                    rustix::mm::mmap(
                        std::ptr::null_mut(),
                        size as usize,
                        rustix::mm::ProtFlags::READ,
                        rustix::mm::MapFlags::PRIVATE,
                        &f2,
                        0,
                    )
                    .unwrap()
                };
                std::hint::black_box(unsafe { std::ptr::read_volatile(p.cast::<u8>()) });
                let t2 = s.elapsed().as_secs_f64() * 1e6;
                unsafe { rustix::mm::munmap(p, size as usize).unwrap() };
                v.push((t, t2));
            }
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
            let l = v[10].0;
            v.sort_by(|a, b| a.1.total_cmp(&b.1));
            println!("cold: lazy {l:.1} µs, private {:.1} µs", v[10].1);
        }
    }

    let mut wall = vec![Vec::new(); cases.len()];
    let mut cpus = vec![Vec::new(); cases.len()];
    let mut notes = vec![String::new(); cases.len()];
    let n = cases.len();
    for rep in 0..reps {
        // Each round starts with another case, so that none always follows
        // the same neighbour (a copy after one that freed 1 GiB of small
        // pages pays for compaction).
        for k in 0..n {
            let i = (rep + k) % n;
            let f = &mut cases[i].1;
            let (w, c) = (Instant::now(), cpu());
            notes[i] = f();
            wall[i].push(w.elapsed());
            cpus[i].push(cpu() - c);
        }
    }
    let mut gbs = Vec::new();
    for (i, (name, _)) in cases.iter().enumerate() {
        let (w, c) = (&mut wall[i], &mut cpus[i]);
        w.sort();
        c.sort();
        let med = w[w.len() / 2];
        let g = size as f64 / med.as_secs_f64() / 1e9;
        gbs.push((*name, g));
        println!(
            "{name:<30} {:>7.1} ms ({:>6.1}–{:>6.1})  {g:>6.2} GB/s  cpu {:>6.1} ms  {}",
            med.as_secs_f64() * 1e3,
            w[0].as_secs_f64() * 1e3,
            w[w.len() - 1].as_secs_f64() * 1e3,
            c[c.len() / 2].as_secs_f64() * 1e3,
            notes[i]
        );
    }
    let get = |n: &str| gbs.iter().find(|(k, _)| *k == n).map(|(_, g)| *g);
    if let (Some(l), Some(r), Some(e)) = (
        get("lazy + scan"),
        get("std::fs::read + scan"),
        get("eager (THP copy limit) + scan"),
    ) {
        println!(
            "lazy + scan: {:.2}x std::fs::read, {:.2}x the THP copy limit (eager)",
            l / r,
            l / e
        );
    }
    Ok(())
}
