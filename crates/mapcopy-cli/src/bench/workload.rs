//! What is measured: the methods (baselines and strategies), the access
//! patterns, and the memory a mapping costs.

use std::fs::File;
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use mapcopy::{MapOptions, Strategy};

use super::raw::{self, Raw};

/// `pread` chunk for the THP copy baseline: 1 GiB per call (2 MiB calls
/// measured no faster here).
pub const COPY_CHUNK: usize = 1 << 30;

const PAGE: usize = 4096;

/// One way of getting at a file's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// `mmap(PROT_READ, MAP_PRIVATE)`: what memmap2 does; the zero-copy
    /// limit, contract broken.
    MapPrivate,
    /// `std::fs::read` into a `Vec<u8>`: the ordinary copy.
    FsRead,
    /// `pread` (1 GiB per call) into fresh 2 MiB-aligned `MADV_HUGEPAGE`
    /// anonymous memory: the copy limit on this machine.
    ThpCopy,
    /// A mapcopy strategy.
    Strategy(Strategy),
}

impl Method {
    /// The three baselines, in the order they run.
    pub const BASELINES: [Method; 3] = [Method::MapPrivate, Method::FsRead, Method::ThpCopy];

    /// Name in tables and plots.
    pub fn label(self) -> &'static str {
        match self {
            Method::MapPrivate => "MAP_PRIVATE",
            Method::FsRead => "fs::read",
            Method::ThpCopy => "THP copy",
            Method::Strategy(s) => s.name(),
        }
    }

    /// Name in results.json.
    pub fn key(self) -> &'static str {
        match self {
            Method::MapPrivate => "map_private",
            Method::FsRead => "fs_read",
            Method::ThpCopy => "thp_copy",
            Method::Strategy(s) => s.name(),
        }
    }

    /// Is it one of the baselines?
    pub fn is_baseline(self) -> bool {
        !matches!(self, Method::Strategy(_))
    }
}

/// An access pattern. Each one includes getting at the bytes (map, read or
/// copy), so a copy baseline pays for the whole file even for one byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Workload {
    /// Map, read the first byte.
    First,
    /// Map, sum every little-endian u64.
    Scan,
    /// Map, read one u64 from 1 % of the pages, chosen at random (seeded).
    Random,
    /// Map, four threads each sum a disjoint quarter.
    Threads,
}

impl Workload {
    /// Every workload, in report order.
    pub const ALL: [Workload; 4] = [
        Workload::First,
        Workload::Scan,
        Workload::Random,
        Workload::Threads,
    ];

    /// Name in results.json and file names.
    pub fn key(self) -> &'static str {
        match self {
            Workload::First => "first",
            Workload::Scan => "scan",
            Workload::Random => "random",
            Workload::Threads => "threads",
        }
    }

    /// Title in tables and plots.
    pub fn title(self) -> &'static str {
        match self {
            Workload::First => "map + first byte",
            Workload::Scan => "full sequential scan (sum of u64s)",
            Workload::Random => "1 % of pages at random",
            Workload::Threads => "4 threads scanning disjoint quarters",
        }
    }

    /// Runs the pattern over `bytes`; the result is a checksum that every
    /// method must agree on.
    pub fn run(self, bytes: &[u8]) -> u64 {
        match self {
            Workload::First => bytes.first().copied().unwrap_or(0) as u64,
            Workload::Scan => sum_u64(bytes),
            Workload::Random => random_pages(bytes),
            Workload::Threads => {
                let quarter = (bytes.len() / 4) & !7;
                std::thread::scope(|s| {
                    let parts: Vec<_> = (0..4)
                        .map(|i| {
                            let start = i * quarter;
                            let end = if i == 3 { bytes.len() } else { start + quarter };
                            let part = &bytes[start..end];
                            s.spawn(move || sum_u64(part))
                        })
                        .collect();
                    parts
                        .into_iter()
                        .map(|h| h.join().expect("scan thread panicked"))
                        .fold(0u64, u64::wrapping_add)
                })
            }
        }
    }
}

/// Wrapping sum of the little-endian u64s of `bytes`, the last partial one
/// zero-padded. Sums of 8-byte-aligned pieces add up to the sum of the whole.
pub fn sum_u64(bytes: &[u8]) -> u64 {
    let word = |w: &[u8]| u64::from_le_bytes(w.try_into().expect("8 bytes"));
    // Four independent sums so the loop vectorizes.
    let mut acc = [0u64; 4];
    let mut blocks = bytes.chunks_exact(32);
    for b in &mut blocks {
        for (k, acc) in acc.iter_mut().enumerate() {
            *acc = acc.wrapping_add(word(&b[8 * k..8 * k + 8]));
        }
    }
    let mut sum = acc.iter().fold(0u64, |s, &a| s.wrapping_add(a));
    let mut words = blocks.remainder().chunks_exact(8);
    for w in &mut words {
        sum = sum.wrapping_add(word(w));
    }
    let rest = words.remainder();
    let mut last = [0u8; 8];
    last[..rest.len()].copy_from_slice(rest);
    sum.wrapping_add(u64::from_le_bytes(last))
}

/// Reads one u64 from 1 % of the pages (at least one), at random (a fixed
/// seed, so every method reads the same pages).
fn random_pages(bytes: &[u8]) -> u64 {
    let pages = bytes.len().div_ceil(PAGE);
    if pages == 0 {
        return 0;
    }
    let mut rng = SplitMix(0x6d61_7063_6f70_7921);
    let mut sum = 0u64;
    for _ in 0..pages.div_ceil(100) {
        let off = (rng.next_u64() % pages as u64) as usize * PAGE;
        let v = match bytes.get(off..off + 8) {
            Some(w) => u64::from_le_bytes(w.try_into().expect("8 bytes")),
            None => bytes[off] as u64,
        };
        sum = sum.wrapping_add(v);
    }
    sum
}

/// splitmix64: the file contents and the random page choice.
pub use mapcopy_check::prng::SplitMix;

/// Memory of this process from `/proc/self/smaps_rollup`, in bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Mem {
    /// `Anonymous`: private anonymous pages (copies; not page cache).
    pub anon: i64,
    /// `Private_Clean + Private_Dirty`: pages mapped only by this process
    /// (including page-cache pages no other process maps).
    pub private: i64,
}

impl Mem {
    /// Now, or zeros if `/proc` cannot tell.
    pub fn now() -> Mem {
        let Ok(text) = std::fs::read_to_string("/proc/self/smaps_rollup") else {
            return Mem::default();
        };
        let field = |name: &str| -> i64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<i64>()
                        .ok()
                })
                .map_or(0, |kib| kib * 1024)
        };
        Mem {
            anon: field("Anonymous:"),
            private: field("Private_Clean:") + field("Private_Dirty:"),
        }
    }
}

/// One timed run.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Seconds from before the map (or read) to the end of the pattern;
    /// unmapping is not included.
    pub secs: f64,
    /// The pattern's checksum.
    pub checksum: u64,
    /// Growth of `Mem::anon` while the mapping was alive.
    pub anon: i64,
    /// Growth of `Mem::private` while the mapping was alive.
    pub private: i64,
}

/// Opens `path`, then times `method` + `workload` over its first `len` bytes.
pub fn run_once(
    method: Method,
    workload: Workload,
    path: &Path,
    len: usize,
) -> Result<Sample, String> {
    let file = File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    match method {
        Method::MapPrivate => timed(
            workload,
            || {
                // SAFETY: the bench's data files live in its own temporary
                // directory; nothing writes them while they are mapped.
                unsafe { Raw::private(&file, len) }.map_err(|e| format!("mmap: {e}"))
            },
            Raw::bytes,
        ),
        Method::FsRead => timed(
            workload,
            || std::fs::read(path).map_err(|e| format!("std::fs::read: {e}")),
            |v| v.as_slice(),
        ),
        Method::ThpCopy => timed(
            workload,
            || {
                let mut m = Raw::thp(len).map_err(|e| format!("mmap: {e}"))?;
                raw::pread_full(&file, m.bytes_mut(), COPY_CHUNK)
                    .map_err(|e| format!("pread: {e}"))?;
                Ok(m)
            },
            Raw::bytes,
        ),
        Method::Strategy(s) => timed(
            workload,
            || options(s).map(&file).map_err(|e| e.to_string()),
            |m| &m[..],
        ),
    }
}

/// How the bench maps with strategy `s`: the default consistency
/// (point-in-time) where `s` keeps it, per-page for a strategy that keeps
/// only that (Lazy), as a user of that strategy would have to.
pub fn options(s: Strategy) -> MapOptions {
    mapcopy_check::options(s)
}

fn timed<T>(
    workload: Workload,
    make: impl FnOnce() -> Result<T, String>,
    view: impl Fn(&T) -> &[u8],
) -> Result<Sample, String> {
    let before = Mem::now();
    let t0 = Instant::now();
    let m = make()?;
    let checksum = black_box(workload.run(black_box(view(&m))));
    let secs = t0.elapsed().as_secs_f64();
    let after = Mem::now();
    drop(m);
    Ok(Sample {
        secs,
        checksum,
        anon: after.anon - before.anon,
        private: after.private - before.private,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_sum_to_whole() {
        let bytes: Vec<u8> = (0..100_003u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let whole = sum_u64(&bytes);
        let naive = bytes.chunks(8).fold(0u64, |s, c| {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            s.wrapping_add(u64::from_le_bytes(w))
        });
        assert_eq!(whole, naive);
        assert_eq!(Workload::Threads.run(&bytes), whole);
        assert_eq!(Workload::Scan.run(&bytes), whole);
        assert_eq!(Workload::First.run(&bytes), bytes[0] as u64);
        assert_ne!(Workload::Random.run(&bytes), 0);
    }
}
