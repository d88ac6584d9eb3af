//! What a `Guard` costs, in one run: another process's 4 KiB `pread` and
//! `pwrite` on a guarded file against an unguarded one (and against an
//! unguarded file while a guard is active elsewhere), the cost of a read
//! lease break on the same file (raw `F_SETLEASE`, and with the whole-range
//! copy a lease holder has to make before it lets the writer go), and a
//! full scan of a Guard mapping against plain `MAP_PRIVATE`.
//!
//! ```text
//! cargo run --release --example guard_cost -- [DIR] [SCAN_MIB]
//! ```
//!
//! Needs root (fanotify pre-content events). DIR defaults to the temp dir;
//! SCAN_MIB (default 1024) is the size of the file for the scan and lease
//! tests. The writers and readers are this program re-executed as a child
//! process.

use std::fs::{self, File, OpenOptions};
use std::hint::black_box;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mapcopy::{MapOptions, Strategy};

const PAGE: usize = 4096;
const OPS: usize = 20_000;

fn main() {
    if let Ok(op) = std::env::var("GUARD_COST_CHILD") {
        return child(&op);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = tempfile::tempdir_in(
        args.first()
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir),
    )
    .unwrap();
    let scan_mib: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1024);
    println!(
        "kernel {}, dir {} ({})",
        rustix::system::uname().release().to_string_lossy(),
        dir.path().display(),
        fs_of(dir.path())
    );

    // --- latency of another process's 4 KiB pread / pwrite --------------
    let small = dir.path().join("small");
    let other = dir.path().join("other");
    let size = 64 << 20;
    for p in [&small, &other] {
        fs::write(p, vec![7u8; size]).unwrap();
    }
    let base_r = run_child("pread", &small);
    let base_w = run_child("pwrite", &small);
    let base_o = run_child("open", &small);
    let f = File::open(&small).unwrap();
    let map = MapOptions::new()
        .strategy(Strategy::Guard)
        .map(&f)
        .expect("guard map (run as root on ext4/xfs/btrfs)");
    let g_r = run_child("pread", &small);
    // Distinct pages: each write costs the event plus one page copy.
    let g_w = run_child("pwrite", &small);
    // The same pages again: already private, the event alone.
    let g_w2 = run_child("pwrite", &small);
    let g_o = run_child("open", &small);
    let u_r = run_child("pread", &other);
    let u_w = run_child("pwrite", &other);
    black_box(&map[..]);
    drop(map);
    println!("\n4 KiB ops by another process, mean per op over {OPS} ops (median in brackets):");
    row("pread, unguarded file", base_r, None);
    row("pread, guarded file", g_r, Some(base_r));
    row("pwrite, unguarded file", base_w, None);
    row(
        "pwrite, guarded, first touch (event + 4 KiB copy)",
        g_w,
        Some(base_w),
    );
    row(
        "pwrite, guarded, page already copied (event only)",
        g_w2,
        Some(base_w),
    );
    row("open+close, unguarded", base_o, None);
    row("open+close, guarded", g_o, Some(base_o));
    row(
        "pread, other file while a guard is active",
        u_r,
        Some(base_r),
    );
    row(
        "pwrite, other file while a guard is active",
        u_w,
        Some(base_w),
    );

    // --- lease break --------------------------------------------------
    let big = dir.path().join("big");
    {
        let f = File::create(&big).unwrap();
        let chunk = vec![0x5au8; 1 << 20];
        for i in 0..scan_mib {
            f.write_all_at(&chunk, (i << 20) as u64).unwrap();
        }
    }
    println!("\nlease break on the 64 MiB file (writer's open(O_WRONLY) latency):");
    println!("  raw F_SETLEASE break: {:?}", lease_break(&small, false));
    println!(
        "  break + holder copies the 64 MiB first: {:?}",
        lease_break(&small, true)
    );
    println!("lease break on a {scan_mib} MiB file (writer's open(O_WRONLY) latency):");
    let raw = lease_break(&big, false);
    println!("  raw F_SETLEASE break, holder unlocks at once: {raw:?}");
    let copy = lease_break(&big, true);
    println!("  break + holder copies the whole range first (Lease without reflink): {copy:?}");
    for (name, p) in [("64 MiB", &small), ("1 GiB", &big)] {
        let f = File::open(p).unwrap();
        match MapOptions::new().strategy(Strategy::Lease).map(&f) {
            Ok(m) => {
                let t = run_child("open_once", p).0;
                black_box(&m[..]);
                println!("  the Lease strategy on the {name} file: writer's open took {t:?}");
            }
            Err(e) => println!("  the Lease strategy on the {name} file: not usable ({e})"),
        }
    }
    let g = run_child("open_once", &big);
    let f = File::open(&big).unwrap();
    let map = MapOptions::new().strategy(Strategy::Guard).map(&f).unwrap();
    let gopen = run_child("open_once", &big);
    drop(map);
    println!(
        "  same open on a Guard-mapped file instead: {:?} (unguarded {:?})",
        gopen.0, g.0
    );

    // --- full scan ------------------------------------------------------
    let f = File::open(&big).unwrap();
    let len = scan_mib << 20;
    // Warm the page cache.
    let _ = fs::read(&big).unwrap();
    println!("\nfull scan of {scan_mib} MiB (hot page cache), read one u64 per 64 bytes:");
    let plain_run = || {
        let t = Instant::now();
        let plain = PlainPrivate::new(&f, len);
        let s = scan(plain.bytes());
        drop(plain);
        (t.elapsed(), s)
    };
    let guard_run = || {
        let t = Instant::now();
        let g = MapOptions::new().strategy(Strategy::Guard).map(&f).unwrap();
        let s = scan(&g);
        drop(g);
        (t.elapsed(), s)
    };
    let mut ratios = Vec::new();
    for round in 0..7 {
        // Alternate which goes first.
        let ((tp, s1), (tg, s2)) = if round % 2 == 0 {
            let p = plain_run();
            (p, guard_run())
        } else {
            let g = guard_run();
            (plain_run(), g)
        };
        assert_eq!(s1, s2);
        let ratio = tp.as_secs_f64() / tg.as_secs_f64();
        ratios.push(ratio);
        println!(
            "  round {round}: MAP_PRIVATE {:.2} GB/s, Guard {:.2} GB/s, Guard/MAP_PRIVATE {ratio:.3} (map+scan+unmap each)",
            len as f64 / tp.as_secs_f64() / 1e9,
            len as f64 / tg.as_secs_f64() / 1e9,
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!("  median Guard/MAP_PRIVATE over 7 rounds: {:.3}", ratios[3]);
}

fn fs_of(p: &Path) -> String {
    let out = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn row(name: &str, (mean, median): (Duration, Duration), base: Option<(Duration, Duration)>) {
    let delta = base.map_or(String::new(), |(b, bm)| {
        format!(
            "  added {:+.2} µs mean, {:+.2} µs median",
            (mean.as_secs_f64() - b.as_secs_f64()) * 1e6,
            (median.as_secs_f64() - bm.as_secs_f64()) * 1e6
        )
    });
    println!(
        "  {name:<55} {:>8.2} µs [{:>7.2}]{delta}",
        mean.as_secs_f64() * 1e6,
        median.as_secs_f64() * 1e6
    );
}

/// Runs child `op` on `path`; returns its (mean, median) per-op time.
fn run_child(op: &str, path: &Path) -> (Duration, Duration) {
    let out = Command::new(std::env::current_exe().unwrap())
        .env("GUARD_COST_CHILD", op)
        .env("GUARD_COST_PATH", path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child {op}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    let mut it = s.split_whitespace().map(|x| x.parse::<u64>().unwrap());
    (
        Duration::from_nanos(it.next().unwrap()),
        Duration::from_nanos(it.next().unwrap()),
    )
}

fn child(op: &str) {
    let path = PathBuf::from(std::env::var("GUARD_COST_PATH").unwrap());
    let mut times = Vec::with_capacity(OPS);
    let mut buf = vec![0u8; PAGE];
    match op {
        "pread" | "pwrite" => {
            let f = OpenOptions::new()
                .read(true)
                .write(op == "pwrite")
                .open(&path)
                .unwrap();
            let pages = f.metadata().unwrap().len() as usize / PAGE;
            for i in 0..OPS {
                // A different page each time (stride through the file).
                let off = ((i * 7919) % pages * PAGE) as u64;
                let t = Instant::now();
                if op == "pread" {
                    f.read_exact_at(&mut buf, off).unwrap();
                } else {
                    f.write_all_at(&buf, off).unwrap();
                }
                times.push(t.elapsed());
            }
        }
        "open" => {
            for _ in 0..OPS {
                let t = Instant::now();
                drop(File::open(&path).unwrap());
                times.push(t.elapsed());
            }
        }
        "open_once" => {
            let t = Instant::now();
            drop(OpenOptions::new().write(true).open(&path).unwrap());
            times.push(t.elapsed());
        }
        other => panic!("unknown op {other}"),
    }
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    times.sort();
    let median = times[times.len() / 2];
    println!("{} {}", mean.as_nanos(), median.as_nanos());
}

/// Takes a read lease on `path`, lets a child open it for writing, and on
/// the break (seen by polling `F_GETLEASE`, which reports the type the
/// lease is being broken to; the break signal is set to the ignored
/// `SIGURG`) optionally copies the whole file, then unlocks. Returns the
/// child's open latency.
fn lease_break(path: &Path, copy: bool) -> Duration {
    let f = File::open(path).unwrap();
    let fd = f.as_raw_fd();
    // SAFETY: fcntl with integer arguments on a file we own.
    unsafe {
        libc::fcntl(fd, 10 /* F_SETSIG */, libc::SIGURG);
        assert_eq!(
            libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK),
            0,
            "F_SETLEASE: {}",
            std::io::Error::last_os_error()
        );
    }
    let p = path.to_path_buf();
    let h = std::thread::spawn(move || run_child("open_once", &p).0);
    // SAFETY: as above.
    while unsafe { libc::fcntl(fd, libc::F_GETLEASE) } == libc::F_RDLCK {
        std::thread::sleep(Duration::from_micros(5));
    }
    if copy {
        black_box(fs::read(path).unwrap());
    }
    // SAFETY: as above.
    unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
    h.join().unwrap()
}

fn scan(b: &[u8]) -> u64 {
    let mut s = 0u64;
    for c in b.chunks_exact(64) {
        s = s.wrapping_add(u64::from_ne_bytes(c[..8].try_into().unwrap()));
    }
    s
}

/// The zero-copy limit: plain MAP_PRIVATE (contract broken).
struct PlainPrivate {
    ptr: *mut std::ffi::c_void,
    len: usize,
}

impl PlainPrivate {
    fn new(f: &File, len: usize) -> PlainPrivate {
        // SAFETY: a new private read-only mapping; nobody modifies the file
        // during the scan.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ,
                rustix::mm::MapFlags::PRIVATE,
                f,
                0,
            )
        }
        .unwrap();
        PlainPrivate { ptr, len }
    }
    fn bytes(&self) -> &[u8] {
        // SAFETY: live mapping of `len` bytes, see `new`.
        unsafe { std::slice::from_raw_parts(self.ptr.cast(), self.len) }
    }
}

impl Drop for PlainPrivate {
    fn drop(&mut self) {
        // SAFETY: unmapping what `new` mapped; no slice outlives `self`.
        unsafe { rustix::mm::munmap(self.ptr, self.len).unwrap() };
    }
}
