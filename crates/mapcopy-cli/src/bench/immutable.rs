//! What `Strategy::Immutable` costs the mapper: map + first byte of a
//! memfd sealed against writes and shrinking (a copy of the largest dense
//! file), against a plain `MAP_PRIVATE` of the same memfd and `Auto`, in
//! the same run, repetitions interleaved. The bench's other files are on a
//! writable filesystem, where Immutable refuses.

use std::fs::File;
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use mapcopy::{MapCopy, MapOptions, Strategy};
use rustix::fs::{MemfdFlags, SealFlags};

use super::json::{self, Json};
use super::{Progress, Stats, raw, stats};

/// Maps (and first bytes) per timed batch: one map is a few µs.
const BATCH: usize = 200;

/// One way of mapping the memfd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    MapPrivate,
    Named,
    Auto,
}

impl Way {
    const ALL: [Way; 3] = [Way::MapPrivate, Way::Named, Way::Auto];

    fn label(self) -> &'static str {
        match self {
            Way::MapPrivate => "MAP_PRIVATE",
            Way::Named => "immutable",
            Way::Auto => "auto",
        }
    }
}

/// One row: µs per map + first byte, one figure per repetition.
#[derive(Clone, Debug)]
pub struct Row {
    pub way: Way,
    pub us: Vec<f64>,
    pub error: Option<String>,
}

/// The table, or why it could not be measured.
#[derive(Clone, Debug, Default)]
pub struct ImmResults {
    pub size: u64,
    pub rows: Vec<Row>,
    pub error: Option<String>,
}

impl ImmResults {
    fn stats(&self, way: Way) -> Option<Stats> {
        self.rows
            .iter()
            .find(|r| r.way == way && r.error.is_none())
            .and_then(|r| stats(&r.us))
    }

    /// MAP_PRIVATE's median over Immutable's (1.0: the same cost).
    pub fn ratio(&self) -> Option<f64> {
        match (self.stats(Way::MapPrivate), self.stats(Way::Named)) {
            (Some(b), Some(t)) if t.median > 0.0 => Some(b.median / t.median),
            _ => None,
        }
    }
}

/// A memfd holding a copy of `path`, sealed with `F_SEAL_WRITE` and
/// `F_SEAL_SHRINK`.
fn sealed_copy(path: &Path) -> Result<(File, u64), String> {
    let fd = rustix::fs::memfd_create(
        "mapcopy-bench",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .map_err(|e| format!("memfd_create: {e}"))?;
    let mut memfd = File::from(fd);
    let mut src = File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let size =
        std::io::copy(&mut src, &mut memfd).map_err(|e| format!("filling the memfd: {e}"))?;
    rustix::fs::fcntl_add_seals(&memfd, SealFlags::WRITE | SealFlags::SHRINK)
        .map_err(|e| format!("sealing the memfd: {e}"))?;
    Ok((memfd, size))
}

/// µs per map + first byte with `way`, over one batch.
fn batch(way: Way, memfd: &File, len: usize) -> Result<f64, String> {
    let mut sum = 0u64;
    let start = Instant::now();
    for _ in 0..BATCH {
        match way {
            Way::MapPrivate => {
                // SAFETY: a sealed memfd: nobody can change or shrink it.
                let m =
                    unsafe { raw::Raw::private(memfd, len) }.map_err(|e| format!("mmap: {e}"))?;
                sum += m.bytes().first().copied().unwrap_or(0) as u64;
            }
            Way::Named | Way::Auto => {
                let mut o = MapOptions::new();
                if way == Way::Named {
                    o.strategy(Strategy::Immutable);
                }
                let m: MapCopy = o.map(memfd).map_err(|e| e.to_string())?;
                if m.strategy() != Strategy::Immutable {
                    return Err(format!("mapped by {}", m.strategy()));
                }
                sum += m.first().copied().unwrap_or(0) as u64;
            }
        }
    }
    let us = start.elapsed().as_secs_f64() * 1e6 / BATCH as f64;
    black_box(sum);
    Ok(us)
}

/// Measures every way `reps` times, interleaved.
pub fn measure(path: &Path, reps: usize, progress: &mut Progress) -> ImmResults {
    let (memfd, size) = match sealed_copy(path) {
        Ok(x) => x,
        Err(e) => {
            return ImmResults {
                error: Some(e),
                ..ImmResults::default()
            };
        }
    };
    let mut rows: Vec<Row> = Way::ALL
        .iter()
        .map(|&way| Row {
            way,
            us: Vec::new(),
            error: None,
        })
        .collect();
    for rep in 0..reps {
        for row in rows.iter_mut() {
            progress.step(&format!(
                "sealed memfd · {} · rep {}/{}",
                row.way.label(),
                rep + 1,
                reps
            ));
            if row.error.is_some() {
                continue;
            }
            match batch(row.way, &memfd, size as usize) {
                Ok(us) => row.us.push(us),
                Err(e) => row.error = Some(e),
            }
        }
    }
    ImmResults {
        size,
        rows,
        error: None,
    }
}

/// Repetitions counted in the progress total.
pub fn steps(reps: usize) -> usize {
    Way::ALL.len() * reps
}

pub const HEADERS: [&str; 3] = ["method", "map + first byte µs", "MAP_PRIVATE ÷ method"];

/// Table rows: median (min … max) and the ratio to MAP_PRIVATE.
pub fn rows(r: &ImmResults) -> Vec<[String; 3]> {
    if let Some(e) = &r.error {
        return vec![["not measured".into(), e.clone(), String::new()]];
    }
    let base = r.stats(Way::MapPrivate);
    r.rows
        .iter()
        .map(|row| {
            let label = row.way.label().to_string();
            if let Some(e) = &row.error {
                return [label, "FAILED".into(), e.clone()];
            }
            match stats(&row.us) {
                Some(s) => [
                    label,
                    format!("{:.2} ({:.2} … {:.2})", s.median, s.min, s.max),
                    base.filter(|_| s.median > 0.0)
                        .map_or("–".into(), |b| format!("{:.2}", b.median / s.median)),
                ],
                None => [label, "–".into(), "–".into()],
            }
        })
        .collect()
}

/// The rows for results.json.
pub fn json(r: &ImmResults) -> Json {
    json::obj([
        ("size", json::int(r.size as i64)),
        ("error", json::opt_str(r.error.as_deref())),
        (
            "records",
            Json::Array(
                r.rows
                    .iter()
                    .map(|row| {
                        let s = stats(&row.us);
                        json::obj([
                            ("method", Json::String(row.way.label().into())),
                            ("us_median", json::num(s.map(|s| s.median))),
                            ("us_min", json::num(s.map(|s| s.min))),
                            ("us_max", json::num(s.map(|s| s.max))),
                            ("error", json::opt_str(row.error.as_deref())),
                        ])
                    })
                    .collect(),
            ),
        ),
    ])
}
