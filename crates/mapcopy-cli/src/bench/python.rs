//! The Python package against what a numpy user does today, on the same
//! file in the same run: `mapcopy.open` + `numpy.frombuffer` + `sum`,
//! `numpy.fromfile` + `sum` (a copy) and `numpy.memmap` + `sum` (a plain
//! mapping: changes under the reader, SIGBUS on truncation).
//!
//! The interpreter is `$MAPCOPY_BENCH_PYTHON`, else `python3`; it needs the
//! `mapcopy` package (`pip install ./crates/mapcopy-py`) and numpy. Without
//! them the table says why it was not measured.

use std::path::Path;
use std::process::Command;

use super::json::{self, Json};
use super::{Stats, stats};

/// One way of reading the file from Python, and its times.
#[derive(Clone, Debug)]
pub struct PyRow {
    pub method: String,
    pub secs: Vec<f64>,
}

/// What the Python measurement found.
#[derive(Clone, Debug)]
pub struct PyResults {
    /// `Err`: why nothing was measured.
    pub rows: Result<Vec<PyRow>, String>,
    pub python: String,
}

/// The script: each method `reps` times, interleaved; prints one line per
/// sample, `METHOD SECONDS SUM`, and checks all sums agree.
const SCRIPT: &str = r#"
import sys, time, numpy, mapcopy
path, reps = sys.argv[1], int(sys.argv[2])
def via_mapcopy():
    with mapcopy.open(path) as m:
        a = numpy.frombuffer(m, dtype=numpy.uint64)
        s = int(a.sum())
        del a
        return s
def via_fromfile():
    return int(numpy.fromfile(path, dtype=numpy.uint64).sum())
def via_memmap():
    a = numpy.memmap(path, dtype=numpy.uint64, mode="r")
    s = int(a.sum())
    del a
    return s
methods = [("mapcopy.open+frombuffer", via_mapcopy), ("numpy.fromfile", via_fromfile), ("numpy.memmap", via_memmap)]
sums = set()
for r in range(reps):
    for k in range(len(methods)):
        name, f = methods[(r + k) % len(methods)]
        t = time.perf_counter()
        s = f()
        print(name, time.perf_counter() - t, s)
        sums.add(s)
if len(sums) != 1:
    sys.exit("the methods disagree: %r" % sums)
"#;

/// Runs the script on `path` (whose size must be a multiple of 8).
pub fn measure(path: &Path, reps: usize) -> PyResults {
    let python = std::env::var("MAPCOPY_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(path)
        .arg(reps.to_string())
        .output();
    let rows = match out {
        Err(e) => Err(format!("cannot run {python}: {e}")),
        Ok(o) if !o.status.success() => {
            let err = String::from_utf8_lossy(&o.stderr);
            let last = err.lines().last().unwrap_or("").trim().to_string();
            Err(if last.contains("No module named") {
                format!(
                    "{python}: {last} (pip install ./crates/mapcopy-py numpy, or set MAPCOPY_BENCH_PYTHON)"
                )
            } else {
                format!("{python} failed ({}): {last}", o.status)
            })
        }
        Ok(o) => parse(&String::from_utf8_lossy(&o.stdout)),
    };
    PyResults { rows, python }
}

fn parse(text: &str) -> Result<Vec<PyRow>, String> {
    let mut rows: Vec<PyRow> = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(name), Some(secs)) = (f.next(), f.next()) else {
            continue;
        };
        let secs: f64 = secs
            .parse()
            .map_err(|e| format!("bad line from python {line:?}: {e}"))?;
        match rows.iter_mut().find(|r| r.method == name) {
            Some(r) => r.secs.push(secs),
            None => rows.push(PyRow {
                method: name.to_string(),
                secs: vec![secs],
            }),
        }
    }
    if rows.len() != 3 {
        return Err(format!("python printed {} methods, expected 3", rows.len()));
    }
    Ok(rows)
}

pub const HEADERS: [&str; 4] = [
    "method",
    "median (min … max)",
    "vs numpy.fromfile",
    "vs numpy.memmap",
];

fn median_of(rows: &[PyRow], name: &str) -> Option<f64> {
    rows.iter()
        .find(|r| r.method == name)
        .and_then(|r| stats(&r.secs))
        .map(|s| s.median)
}

/// Table rows (ratios: baseline median / this median; above 1 is faster).
pub fn rows(r: &PyResults) -> Vec<[String; 4]> {
    let rows = match &r.rows {
        Ok(rows) => rows,
        Err(why) => {
            return vec![[
                "not measured".into(),
                why.clone(),
                String::new(),
                String::new(),
            ]];
        }
    };
    let ratio = |b: Option<f64>, s: &Stats| {
        b.filter(|_| s.median > 0.0)
            .map_or("–".into(), |b| format!("{:.2}×", b / s.median))
    };
    let (ff, mm) = (
        median_of(rows, "numpy.fromfile"),
        median_of(rows, "numpy.memmap"),
    );
    rows.iter()
        .filter_map(|row| {
            let s = stats(&row.secs)?;
            Some([
                row.method.clone(),
                format!(
                    "{} ({} … {})",
                    super::fmt_secs(s.median),
                    super::fmt_secs(s.min),
                    super::fmt_secs(s.max)
                ),
                ratio(ff, &s),
                ratio(mm, &s),
            ])
        })
        .collect()
}

/// For results.json.
pub fn json(r: &PyResults) -> Json {
    match &r.rows {
        Err(why) => json::obj([
            ("python", Json::String(r.python.clone())),
            ("error", Json::String(why.clone())),
        ]),
        Ok(rows) => json::obj([
            ("python", Json::String(r.python.clone())),
            (
                "records",
                Json::Array(
                    rows.iter()
                        .map(|row| {
                            json::obj([
                                ("method", Json::String(row.method.clone())),
                                (
                                    "samples_s",
                                    Json::Array(row.secs.iter().map(|&x| json::float(x)).collect()),
                                ),
                            ])
                        })
                        .collect(),
                ),
            ),
        ]),
    }
}
