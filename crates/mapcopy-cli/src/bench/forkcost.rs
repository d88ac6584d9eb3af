//! What `fork()` costs the process that holds a mapping: the first fork
//! after mapping (where `Guard`, `Lease` and `Lazy` make the mapping
//! complete in the parent, since a child has no thread to serve it) and
//! the next one, against a process with no mapping and with a plain
//! `MAP_PRIVATE` one, in the same run.

use std::fs::File;
use std::path::Path;
use std::time::Instant;

use super::json::{self, Json};
use super::workload::Method;
use super::{Progress, Stats, raw, stats};

/// One kind of mapping (or none) and the forks it was timed with.
#[derive(Clone, Debug)]
pub struct ForkRow {
    /// `None`: no mapping at all.
    pub method: Option<Method>,
    /// µs of the first `fork()` after the map, in the parent.
    pub first_us: Vec<f64>,
    /// µs of the second.
    pub second_us: Vec<f64>,
    pub error: Option<String>,
}

/// Times two forks per repetition for no mapping, `MAP_PRIVATE` and each
/// strategy, repetitions interleaved.
pub fn measure(
    methods: &[Method],
    path: &Path,
    reps: usize,
    progress: &mut Progress,
) -> Vec<ForkRow> {
    let mut rows: Vec<ForkRow> = super::mappings_alive(methods)
        .into_iter()
        .map(|method| ForkRow {
            method,
            first_us: Vec::new(),
            second_us: Vec::new(),
            error: None,
        })
        .collect();
    for rep in 0..reps {
        for row in rows.iter_mut() {
            progress.step(&format!(
                "fork · {} · rep {}/{}",
                row.method.map_or("no mapping", Method::label),
                rep + 1,
                reps
            ));
            if row.error.is_some() {
                continue;
            }
            match once(row.method, path) {
                Ok((a, b)) => {
                    row.first_us.push(a);
                    row.second_us.push(b);
                }
                Err(e) => row.error = Some(e),
            }
        }
    }
    rows
}

/// Maps `path` with `method`, reads its first byte, forks twice (each
/// child exits at once) and returns the parent's µs in each `fork()`.
fn once(method: Option<Method>, path: &Path) -> Result<(f64, f64), String> {
    let file = File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let len = file.metadata().map_err(|e| e.to_string())?.len() as usize;
    let two = || -> Result<(f64, f64), String> { Ok((timed_fork()?, timed_fork()?)) };
    match method {
        None => two(),
        Some(Method::MapPrivate) => {
            // SAFETY: the bench's own file, which nobody changes while the
            // mapping lives; it is read only through `page0`.
            let m = unsafe { raw::Raw::private(&file, len) }.map_err(|e| format!("mmap: {e}"))?;
            let _ = m.page0();
            two()
        }
        Some(Method::Strategy(s)) => {
            let m = mapcopy_check::options(s)
                .map(&file)
                .map_err(|e| e.to_string())?;
            let first = m.first().copied();
            let t = two()?;
            if m.first().copied() != first {
                return Err("the mapping's first byte changed across fork".into());
            }
            Ok(t)
        }
        Some(other) => Err(format!("{} is not a mapping", other.label())),
    }
}

fn timed_fork() -> Result<f64, String> {
    let t = Instant::now();
    let pid = raw::fork_and_exit().map_err(|e| format!("fork: {e}"))?;
    let us = t.elapsed().as_secs_f64() * 1e6;
    raw::reap(pid).map_err(|e| format!("waitpid: {e}"))?;
    Ok(us)
}

pub const HEADERS: [&str; 5] = [
    "mapping alive",
    "first fork() µs",
    "vs none",
    "second fork() µs",
    "vs none",
];

fn cell(s: Option<Stats>, none: Option<Stats>) -> [String; 2] {
    match s {
        Some(s) => [
            format!("{:.0} ({:.0} … {:.0})", s.median, s.min, s.max),
            none.filter(|n| n.median > 0.0)
                .map_or("–".into(), |n| format!("{:.1}×", s.median / n.median)),
        ],
        None => ["–".into(), "–".into()],
    }
}

/// Table rows: medians (min … max) and ratios to no mapping.
pub fn rows(rows: &[ForkRow]) -> Vec<[String; 5]> {
    let none = rows.iter().find(|r| r.method.is_none());
    let (n1, n2) = (
        none.and_then(|r| stats(&r.first_us)),
        none.and_then(|r| stats(&r.second_us)),
    );
    rows.iter()
        .map(|r| {
            let label = r.method.map_or("no mapping", Method::label).to_string();
            if let Some(e) = &r.error {
                return [
                    label,
                    "FAILED".into(),
                    e.clone(),
                    String::new(),
                    String::new(),
                ];
            }
            let [a, ra] = cell(stats(&r.first_us), n1);
            let [b, rb] = cell(stats(&r.second_us), n2);
            [label, a, ra, b, rb]
        })
        .collect()
}

/// The rows for results.json.
pub fn json(rows: &[ForkRow]) -> Json {
    Json::Array(
        rows.iter()
            .map(|r| {
                let (a, b) = (stats(&r.first_us), stats(&r.second_us));
                json::obj([
                    (
                        "mapping",
                        Json::String(r.method.map_or("none", Method::key).into()),
                    ),
                    ("first_fork_us_median", json::num(a.map(|s| s.median))),
                    ("first_fork_us_min", json::num(a.map(|s| s.min))),
                    ("first_fork_us_max", json::num(a.map(|s| s.max))),
                    ("second_fork_us_median", json::num(b.map(|s| s.median))),
                    ("error", json::opt_str(r.error.as_deref())),
                ])
            })
            .collect(),
    )
}
