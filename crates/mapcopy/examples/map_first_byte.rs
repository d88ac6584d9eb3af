//! Time of `map` + first byte for Kernel, Guard, Lease and Lazy against
//! plain `MAP_PRIVATE` (and, for Kernel, against a bare `MAP_COPY` mmap) on
//! one hot file, interleaved and with a fresh `open` per run like `mapcopy
//! bench` does. A strategy this machine cannot use is reported and skipped.
//!
//! ```text
//! cargo run --release --example map_first_byte -- FILE [N]
//! ```
use std::fs::File;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use mapcopy::Strategy;

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: map_first_byte FILE [N]");
    let n: usize = args.next().map(|s| s.parse().expect("N")).unwrap_or(200);
    let names = [
        "MAP_PRIVATE",
        "MAP_COPY",
        "kernel",
        "guard",
        "lease",
        "lazy",
    ];
    let strategies = [
        Strategy::Kernel,
        Strategy::Guard,
        Strategy::Lease,
        Strategy::Lazy,
    ];
    let mut skip = vec![false; names.len()];
    let mut t: Vec<Vec<Duration>> = vec![Vec::new(); names.len()];
    for _ in 0..n {
        for (i, times) in t.iter_mut().enumerate() {
            if skip[i] {
                continue;
            }
            let file = File::open(&path).expect("open");
            let len = file.metadata().expect("fstat").len() as usize;
            let start = Instant::now();
            let byte = match i {
                0 | 1 => {
                    // MAP_PRIVATE, or the mapping type 0x04 of the kernel
                    // series in kernel/ (MAP_COPY), which other kernels
                    // refuse.
                    let flags = if i == 0 {
                        rustix::mm::MapFlags::PRIVATE
                    } else {
                        rustix::mm::MapFlags::from_bits_retain(0x04)
                    };
                    // SAFETY: a fresh mapping of our own, unmapped below;
                    // nothing writes the file while the example runs.
                    let p = match unsafe {
                        rustix::mm::mmap(
                            std::ptr::null_mut(),
                            len,
                            rustix::mm::ProtFlags::READ,
                            flags,
                            file.as_fd(),
                            0,
                        )
                    } {
                        Ok(p) => p,
                        Err(e) => {
                            println!("{}: skipped: mmap: {e}", names[i]);
                            skip[i] = true;
                            continue;
                        }
                    };
                    // SAFETY: p maps `len` > 0 readable bytes.
                    let b = unsafe { p.cast::<u8>().read_volatile() };
                    times.push(start.elapsed());
                    // SAFETY: unmapping exactly what was mapped above.
                    unsafe { rustix::mm::munmap(p, len) }.expect("munmap");
                    b
                }
                _ => {
                    let s = strategies[i - 2];
                    let m = match mapcopy_check::options(s).map(&file) {
                        Ok(m) => m,
                        Err(e) => {
                            println!("{}: skipped: {e}", names[i]);
                            skip[i] = true;
                            continue;
                        }
                    };
                    let b = std::hint::black_box(m[0]);
                    times.push(start.elapsed());
                    b
                }
            };
            std::hint::black_box(byte);
            std::thread::sleep(Duration::from_micros(200));
            if std::env::var_os("TRASH").is_some() {
                std::hint::black_box(std::fs::read(&path).expect("read"));
            }
        }
    }
    for (name, times) in names.iter().zip(&mut t) {
        if times.is_empty() {
            continue;
        }
        times.sort();
        println!("{name:12} median {:?} min {:?}", times[n / 2], times[0]);
    }
}
