//! The *many files* workload: thousands of small files (4–400 KiB), each
//! mapped (or read), read once, and all kept live until the last one is
//! done — what a search tool, an indexer or a linker does. Also counts the
//! file descriptors each live mapping keeps open (`/proc/self/fd`).

use std::collections::BTreeMap;
use std::fs::File;
use std::hint::black_box;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use mapcopy::Strategy;

use super::raw::Raw;
use super::workload::{self, Method, SplitMix};

/// Smallest and largest file of the workload.
pub const MIN_FILE: u64 = 4 << 10;
pub const MAX_FILE: u64 = 400 << 10;

/// The files of the workload.
pub struct Files {
    pub paths: Vec<PathBuf>,
    pub bytes: u64,
}

/// Creates `n` files of seeded random sizes in `MIN_FILE..=MAX_FILE` under
/// `dir` (not page multiples: last partial pages are part of the test).
pub fn create(dir: &Path, n: usize) -> std::io::Result<Files> {
    std::fs::create_dir_all(dir)?;
    let mut rng = SplitMix(0x6d61_6e79);
    let mut paths = Vec::with_capacity(n);
    let mut bytes = 0;
    let mut buf = Vec::new();
    for i in 0..n {
        let size = MIN_FILE + rng.next_u64() % (MAX_FILE - MIN_FILE + 1);
        buf.clear();
        buf.extend((0..size).map(|k| (k as u8) ^ (i as u8)));
        let path = dir.join(format!("f{i:05}.bin"));
        File::create(&path)?.write_all(&buf)?;
        bytes += size;
        paths.push(path);
    }
    Ok(Files { paths, bytes })
}

/// One timed run of `method` over every file.
pub struct Run {
    pub secs: f64,
    pub checksum: u64,
    /// Open fds while every mapping was live, minus those before, per file.
    pub fds_per_map: f64,
    /// For `auto`: how many files each strategy was picked for.
    pub picked: BTreeMap<Strategy, usize>,
}

/// Number of open fds of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

enum Held {
    Raw(Raw),
    Vec(Vec<u8>),
    Map(mapcopy::MapCopy),
}

impl Held {
    fn bytes(&self) -> &[u8] {
        match self {
            Held::Raw(r) => r.bytes(),
            Held::Vec(v) => v,
            Held::Map(m) => m,
        }
    }
}

/// Maps (or reads) every file with `method`, reads each once, keeps all
/// live until the last; the time covers opening, mapping and reading, not
/// the final unmapping.
pub fn run_once(method: Method, files: &Files) -> Result<Run, String> {
    let fds_before = open_fds();
    let mut held = Vec::with_capacity(files.paths.len());
    let mut checksum = 0u64;
    let mut picked = BTreeMap::new();
    let t0 = Instant::now();
    for path in &files.paths {
        let h = match method {
            Method::FsRead => {
                Held::Vec(std::fs::read(path).map_err(|e| format!("std::fs::read: {e}"))?)
            }
            _ => {
                let file = File::open(path).map_err(|e| format!("open: {e}"))?;
                match method {
                    Method::MapPrivate => {
                        let len = file.metadata().map_err(|e| format!("fstat: {e}"))?.len();
                        // SAFETY: the bench's files live in its own
                        // temporary directory; nothing writes them.
                        Held::Raw(
                            unsafe { Raw::private(&file, len as usize) }
                                .map_err(|e| format!("mmap: {e}"))?,
                        )
                    }
                    Method::Strategy(s) => {
                        let m = workload::options(s).map(&file).map_err(|e| e.to_string())?;
                        if s == Strategy::Auto {
                            *picked.entry(m.strategy()).or_insert(0) += 1;
                        }
                        Held::Map(m)
                    }
                    Method::FsRead | Method::ThpCopy => {
                        return Err("not a method of the many-files workload".into());
                    }
                }
            }
        };
        checksum = checksum.wrapping_add(workload::sum_u64(black_box(h.bytes())));
        held.push(h);
    }
    let secs = t0.elapsed().as_secs_f64();
    let fds = open_fds().saturating_sub(fds_before);
    drop(held);
    Ok(Run {
        secs,
        checksum,
        fds_per_map: fds as f64 / files.paths.len().max(1) as f64,
        picked,
    })
}
