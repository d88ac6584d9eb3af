//! What indexing a mapping byte by byte costs against walking it as one
//! slice: code ported from memmap2 indexes the map directly
//! (`for i in 0..m.len() { s += m[i] }`), and that loop should run as fast
//! as `for &b in &m[..]`, i.e. `Deref` must be an inline pointer and
//! length the compiler can hoist out of the loop, not a call per byte.
//!
//! For each strategy (with `map` and with `map_mut`): a populated mapping
//! of [`SIZE`] bytes, [`PAIRS`] pairs of runs per repetition (the byte loop
//! and the slice loop alternate, each starting the pair in turn), sums
//! checked equal; the ratio compares medians taken in the same run.

use std::fs::File;
use std::hint::black_box;
use std::ops::Deref;
use std::path::Path;
use std::time::Instant;

use mapcopy::Strategy;

use super::json::{self, Json};
use super::workload::Method;
use super::{Progress, Stats, stats};

/// Size of the mapping the loops run over.
pub const SIZE: u64 = 16 << 20;

/// Byte-loop / slice-loop pairs per repetition.
pub const PAIRS: usize = 5;

/// One strategy, mapped with `map` or `map_mut`, and its loop times.
#[derive(Clone, Debug)]
pub struct DerefRow {
    pub strategy: Strategy,
    /// Mapped with `map_mut` (`MapCopyMut`) instead of `map`.
    pub writable: bool,
    /// Seconds of the byte-indexed loop.
    pub indexed: Vec<f64>,
    /// Seconds of the slice loop.
    pub slice: Vec<f64>,
    pub error: Option<String>,
}

impl DerefRow {
    /// Median of the byte loop / median of the slice loop (1.00: as fast).
    pub fn ratio(&self) -> Option<f64> {
        if self.error.is_some() {
            return None;
        }
        let (i, s) = (stats(&self.indexed)?, stats(&self.slice)?);
        (s.median > 0.0).then(|| i.median / s.median)
    }

    fn label(&self) -> String {
        format!(
            "{} ({})",
            self.strategy,
            if self.writable { "map_mut" } else { "map" }
        )
    }
}

/// The strategies of `methods` (Auto included), each with `map` and
/// `map_mut`.
pub fn planned(methods: &[Method]) -> Vec<(Strategy, bool)> {
    methods
        .iter()
        .filter_map(|m| match m {
            Method::Strategy(s) => Some(*s),
            _ => None,
        })
        .flat_map(|s| [(s, false), (s, true)])
        .collect()
}

/// Runs the workload on `path` (a file of [`SIZE`] bytes) for every
/// strategy of `methods`, repetitions interleaved across strategies.
pub fn measure(
    methods: &[Method],
    path: &Path,
    reps: usize,
    progress: &mut Progress,
) -> Vec<DerefRow> {
    let mut rows: Vec<DerefRow> = planned(methods)
        .into_iter()
        .map(|(strategy, writable)| DerefRow {
            strategy,
            writable,
            indexed: Vec::new(),
            slice: Vec::new(),
            error: None,
        })
        .collect();
    for rep in 0..reps {
        for row in rows.iter_mut() {
            progress.step(&format!(
                "deref · {} · rep {}/{}",
                row.label(),
                rep + 1,
                reps
            ));
            if row.error.is_some() {
                continue;
            }
            match once(row.strategy, row.writable, path, rep) {
                Ok((i, s)) => {
                    row.indexed.extend(i);
                    row.slice.extend(s);
                }
                Err(e) => row.error = Some(e),
            }
        }
    }
    rows
}

/// Maps `path` (populated), then times [`PAIRS`] pairs of loops; `rep`
/// decides which loop starts the first pair.
fn once(
    s: Strategy,
    writable: bool,
    path: &Path,
    rep: usize,
) -> Result<(Vec<f64>, Vec<f64>), String> {
    let file = File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let mut o = mapcopy_check::options(s);
    o.populate(true);
    if writable {
        let m = o.map_mut(&file).map_err(|e| e.to_string())?;
        pairs(&m, rep)
    } else {
        let m = o.map(&file).map_err(|e| e.to_string())?;
        pairs(&m, rep)
    }
}

/// The timed loops over one mapping.
fn pairs<M: Deref<Target = [u8]>>(m: &M, rep: usize) -> Result<(Vec<f64>, Vec<f64>), String> {
    let (mut indexed, mut slice) = (Vec::new(), Vec::new());
    for k in 0..PAIRS {
        let mut run = |byte_first: bool| -> Result<(), String> {
            let (t, sum) = if byte_first {
                timed(|| indexed_sum(black_box(m)))
            } else {
                timed(|| slice_sum(black_box(m)))
            };
            let other = if byte_first {
                slice_sum(black_box(m))
            } else {
                indexed_sum(black_box(m))
            };
            if sum != other {
                return Err(format!(
                    "the loops disagree: byte-indexed sum {} against slice sum {}",
                    if byte_first { sum } else { other },
                    if byte_first { other } else { sum },
                ));
            }
            if byte_first {
                indexed.push(t);
            } else {
                slice.push(t);
            }
            Ok(())
        };
        let first = (rep + k).is_multiple_of(2);
        run(first)?;
        run(!first)?;
    }
    Ok((indexed, slice))
}

fn timed(f: impl FnOnce() -> u64) -> (f64, u64) {
    let t = Instant::now();
    let sum = black_box(f());
    (t.elapsed().as_secs_f64(), sum)
}

/// `for i in 0..m.len() { s += m[i] }`: every index goes through `Deref`.
#[inline(never)]
fn indexed_sum<M: Deref<Target = [u8]>>(m: &M) -> u64 {
    let mut s = 0u64;
    #[allow(clippy::needless_range_loop)]
    for i in 0..m.len() {
        s = s.wrapping_add(u64::from(m[i]));
    }
    s
}

/// `for &b in &m[..]`: one `Deref`, then a plain slice.
#[inline(never)]
fn slice_sum<M: Deref<Target = [u8]>>(m: &M) -> u64 {
    let mut s = 0u64;
    for &b in &m[..] {
        s = s.wrapping_add(u64::from(b));
    }
    s
}

pub const HEADERS: [&str; 4] = [
    "strategy",
    "byte-indexed loop",
    "slice loop",
    "byte / slice",
];

fn cell(s: Option<Stats>) -> String {
    s.map_or("–".into(), |s| {
        format!(
            "{} ({} … {})",
            super::fmt_secs(s.median),
            super::fmt_secs(s.min),
            super::fmt_secs(s.max)
        )
    })
}

/// Table rows: medians (min … max) and the ratio of medians.
pub fn rows(rows: &[DerefRow]) -> Vec<[String; 4]> {
    rows.iter()
        .map(|r| {
            if let Some(e) = &r.error {
                return [r.label(), "FAILED".into(), e.clone(), String::new()];
            }
            [
                r.label(),
                cell(stats(&r.indexed)),
                cell(stats(&r.slice)),
                r.ratio().map_or("–".into(), |x| format!("{x:.2}×")),
            ]
        })
        .collect()
}

/// The rows for results.json.
pub fn json(rows: &[DerefRow]) -> Json {
    Json::Array(
        rows.iter()
            .map(|r| {
                let (i, s) = (stats(&r.indexed), stats(&r.slice));
                json::obj([
                    ("strategy", Json::String(r.strategy.name().into())),
                    ("map_mut", Json::Bool(r.writable)),
                    ("indexed_secs_median", json::num(i.map(|s| s.median))),
                    ("indexed_secs_min", json::num(i.map(|s| s.min))),
                    ("slice_secs_median", json::num(s.map(|s| s.median))),
                    ("slice_secs_min", json::num(s.map(|s| s.min))),
                    ("indexed_over_slice", json::num(r.ratio())),
                    ("error", json::opt_str(r.error.as_deref())),
                ])
            })
            .collect(),
    )
}
