//! What a whole-file change costs while a copy of the file is alive: another
//! process truncates a fresh copy of the largest dense file to 0 (timed,
//! every repetition), and, once per kind of mapping, rewrites every byte of
//! it while the bench process holds a mapping it has scanned whole: the
//! rewrite's time, the mapping process's anonymous memory before and after,
//! and how much the machine's used memory grew (a copy that saves pages in
//! the kernel, `Kernel`, keeps them outside the process's anonymous memory).

use std::fs::File;
use std::path::Path;

use mapcopy_check::bench_writer::{self, FileOp};

use super::json::{self, Json};
use super::workload::{Mem, Method, Workload};
use super::{Progress, Stats, raw, stats};

/// One kind of mapping (or none).
#[derive(Clone, Debug)]
pub struct FileRow {
    /// `None`: no mapping at all.
    pub method: Option<Method>,
    /// ms of the other process's `open` + `ftruncate(0)`.
    pub truncate_ms: Vec<f64>,
    /// Did the mapping's page 0 hold the same bytes after every truncation?
    /// `None` with no mapping, and for `MAP_PRIVATE` (touching it after a
    /// truncation raises SIGBUS).
    pub truncate_kept: Option<bool>,
    /// ms of the other process's rewrite of every byte.
    pub rewrite_ms: Option<f64>,
    /// Growth of this process's anonymous memory from before the map to
    /// after the full scan, and to after the rewrite.
    pub anon_before: i64,
    pub anon_after: i64,
    /// Growth of the machine's used memory (MemTotal − MemFree) over the
    /// rewrite.
    pub system_growth: i64,
    /// Did a second scan after the rewrite give the first's checksum?
    pub rewrite_kept: Option<bool>,
    pub error: Option<String>,
}

/// Runs both measurements for no mapping, `MAP_PRIVATE` and each strategy,
/// on fresh copies of `source` made at `victim`.
pub fn measure(
    methods: &[Method],
    source: &Path,
    victim: &Path,
    reps: usize,
    progress: &mut Progress,
) -> Vec<FileRow> {
    let mut rows: Vec<FileRow> = super::mappings_alive(methods)
        .into_iter()
        .map(|method| FileRow {
            method,
            truncate_ms: Vec::new(),
            truncate_kept: method.filter(|&m| m != Method::MapPrivate).map(|_| true),
            rewrite_ms: None,
            anon_before: 0,
            anon_after: 0,
            system_growth: 0,
            rewrite_kept: None,
            error: None,
        })
        .collect();
    for rep in 0..=reps {
        for (i, row) in rows.iter_mut().enumerate() {
            let label = row.method.map_or("no mapping", Method::label);
            if rep < reps {
                progress.step(&format!("truncate · {label} · rep {}/{}", rep + 1, reps));
            } else {
                progress.step(&format!("full rewrite · {label}"));
            }
            if row.error.is_some() {
                continue;
            }
            let result = fresh_copy(source, victim).and_then(|()| {
                if rep < reps {
                    truncate_once(row, victim)
                } else {
                    rewrite_once(row, victim, (i % 200) as u8 + 1)
                }
            });
            if let Err(e) = result {
                row.error = Some(e);
            }
            let _ = std::fs::remove_file(victim);
        }
    }
    rows
}

/// Copies `source` to `victim` (`copy_file_range`, a reflink where the
/// filesystem makes one), flushes it and reads it once so its pages are
/// cached, as the source's are.
fn fresh_copy(source: &Path, victim: &Path) -> Result<(), String> {
    let _ = std::fs::remove_file(victim);
    std::fs::copy(source, victim).map_err(|e| format!("copying to {}: {e}", victim.display()))?;
    File::open(victim)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("flushing {}: {e}", victim.display()))?;
    super::warm(victim).map_err(|e| format!("reading {}: {e}", victim.display()))
}

/// A live mapping of one kind, with a view of its bytes where reading them
/// is safe.
enum Live {
    None,
    Private(raw::Raw),
    Copy(mapcopy::MapCopy),
}

impl Live {
    fn new(method: Option<Method>, file: &File) -> Result<Live, String> {
        let len = file.metadata().map_err(|e| e.to_string())?.len() as usize;
        match method {
            None => Ok(Live::None),
            Some(Method::MapPrivate) => {
                // SAFETY: the control: its bytes may change or vanish under
                // it, so it is only read through `page0`'s volatile loads
                // and `scan_private`, never held as a `&[u8]` across a
                // change.
                let m =
                    unsafe { raw::Raw::private(file, len) }.map_err(|e| format!("mmap: {e}"))?;
                Ok(Live::Private(m))
            }
            Some(Method::Strategy(s)) => mapcopy_check::options(s)
                .map(file)
                .map(Live::Copy)
                .map_err(|e| e.to_string()),
            Some(other) => Err(format!("{} is not a mapping", other.label())),
        }
    }

    fn page0(&self) -> Option<Vec<u8>> {
        match self {
            Live::None => None,
            Live::Private(m) => Some(m.page0()),
            Live::Copy(m) => Some(m[..4096.min(m.len())].to_vec()),
        }
    }

    fn scan(&self) -> Option<u64> {
        match self {
            Live::None => None,
            Live::Private(m) => Some(Workload::Scan.run(m.bytes())),
            Live::Copy(m) => Some(Workload::Scan.run(&m[..])),
        }
    }
}

fn truncate_once(row: &mut FileRow, victim: &Path) -> Result<(), String> {
    let file = File::open(victim).map_err(|e| format!("opening {}: {e}", victim.display()))?;
    let live = Live::new(row.method, &file)?;
    let before = live.page0();
    let us = bench_writer::measure_op(victim, FileOp::Truncate)
        .map_err(|e| format!("truncating process: {e}"))?;
    row.truncate_ms.push(us / 1e3);
    if let (Some(kept), Live::Copy(_)) = (&mut row.truncate_kept, &live) {
        *kept &= live.page0() == before;
    }
    Ok(())
}

fn rewrite_once(row: &mut FileRow, victim: &Path, fill: u8) -> Result<(), String> {
    let file = File::open(victim).map_err(|e| format!("opening {}: {e}", victim.display()))?;
    let start = Mem::now();
    let live = Live::new(row.method, &file)?;
    let sum = live.scan();
    let scanned = Mem::now();
    let used = used_memory();
    let us = bench_writer::measure_op(victim, FileOp::Rewrite(fill))
        .map_err(|e| format!("rewriting process: {e}"))?;
    let after = Mem::now();
    row.system_growth = used_memory() - used;
    row.rewrite_ms = Some(us / 1e3);
    row.anon_before = scanned.anon - start.anon;
    row.anon_after = after.anon - start.anon;
    row.rewrite_kept = sum.map(|s| live.scan() == Some(s));
    Ok(())
}

/// MemTotal − MemFree from /proc/meminfo, in bytes (0 if unknown).
fn used_memory() -> i64 {
    let Ok(text) = std::fs::read_to_string("/proc/meminfo") else {
        return 0;
    };
    let field = |name: &str| -> i64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .map_or(0, |kib: i64| kib * 1024)
    };
    field("MemTotal:") - field("MemFree:")
}

pub const HEADERS: [&str; 8] = [
    "mapping alive",
    "truncate ms",
    "vs none",
    "page 0 kept",
    "rewrite ms",
    "anon MiB before → after",
    "used MiB +",
    "copy kept",
];

fn mib(b: i64) -> String {
    format!("{:.0}", b as f64 / (1 << 20) as f64)
}

fn kept(k: Option<bool>) -> String {
    match k {
        None => "–".into(),
        Some(true) => "yes".into(),
        Some(false) => "NO (changed)".into(),
    }
}

/// Table rows: truncate medians (min … max) and ratio to no mapping, then
/// the rewrite's figures.
pub fn rows(rows: &[FileRow]) -> Vec<[String; 8]> {
    let none: Option<Stats> = rows
        .iter()
        .find(|r| r.method.is_none())
        .and_then(|r| stats(&r.truncate_ms));
    rows.iter()
        .map(|r| {
            let label = r.method.map_or("no mapping", Method::label).to_string();
            if let Some(e) = &r.error {
                let mut row: [String; 8] = Default::default();
                row[0] = label;
                row[1] = "FAILED".into();
                row[2] = e.clone();
                return row;
            }
            let t = stats(&r.truncate_ms);
            [
                label,
                t.map_or("–".into(), |s| {
                    format!("{:.1} ({:.1} … {:.1})", s.median, s.min, s.max)
                }),
                match (t, none) {
                    (Some(s), Some(n)) if n.median > 0.0 => format!("{:.1}×", s.median / n.median),
                    _ => "–".into(),
                },
                kept(r.truncate_kept),
                r.rewrite_ms.map_or("–".into(), |ms| format!("{ms:.0}")),
                if r.method.is_some() {
                    format!("{} → {}", mib(r.anon_before), mib(r.anon_after))
                } else {
                    "–".into()
                },
                mib(r.system_growth),
                kept(r.rewrite_kept),
            ]
        })
        .collect()
}

/// The rows for results.json.
pub fn json(rows: &[FileRow]) -> Json {
    Json::Array(
        rows.iter()
            .map(|r| {
                let t = stats(&r.truncate_ms);
                json::obj([
                    (
                        "mapping",
                        Json::String(r.method.map_or("none", Method::key).into()),
                    ),
                    ("truncate_ms_median", json::num(t.map(|s| s.median))),
                    ("truncate_ms_min", json::num(t.map(|s| s.min))),
                    ("truncate_ms_max", json::num(t.map(|s| s.max))),
                    (
                        "truncate_page0_kept",
                        r.truncate_kept.map_or(Json::Null, Json::Bool),
                    ),
                    ("rewrite_ms", json::num(r.rewrite_ms)),
                    ("anon_bytes_before_rewrite", json::int(r.anon_before)),
                    ("anon_bytes_after_rewrite", json::int(r.anon_after)),
                    ("used_bytes_growth_over_rewrite", json::int(r.system_growth)),
                    (
                        "rewrite_copy_kept",
                        r.rewrite_kept.map_or(Json::Null, Json::Bool),
                    ),
                    ("error", json::opt_str(r.error.as_deref())),
                ])
            })
            .collect(),
    )
}
