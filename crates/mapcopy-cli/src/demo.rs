//! `mapcopy demo [--size N] [--dir D]`: plain `MAP_PRIVATE` against every
//! usable copy strategy, under five modifications made by another process.
//!
//! Each modification gets a fresh version-1 file and fresh mappings: the
//! control (`MAP_PRIVATE`, what `memmap2::MmapOptions::map_copy` gives) and
//! one `MapCopy` per usable strategy. Some pages of each mapping are read
//! ("touched"); a separate writer process modifies the file; then the
//! touched pages and a sample of untouched ones are read again and
//! compared with the file's old and new contents:
//!
//! * touched pages must still hold the old bytes (S2), else `VIOLATED`;
//! * untouched pages may hold the old or the new bytes (S1; zero past a new
//!   end), anything else is `VIOLATED`;
//! * a read that faults is `SIGBUS` (S3). The control is read in forked
//!   children so that the demo survives it.

use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mapcopy::MapCopy;
use mapcopy_check::control::{PageRead, PrivateMap};
use mapcopy_check::demo::{self as model, Modification};

/// `println!` that ignores a closed stdout (`mapcopy demo | head`), so the
/// demo still finishes and removes its file.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// Arguments of `mapcopy demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Size of the demo file: bytes, or with a K/M/G suffix (powers of 1024).
    #[arg(long, default_value = "64M", value_parser = crate::size::parse)]
    size: u64,
    /// Directory to make the temporary file in (default: the system's
    /// temporary directory). Try one on xfs or btrfs to see other strategies.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Modifications, in the order of the table's columns, with their
/// headers.
fn modifications(size: u64, ps: u64, g: &Geometry) -> [(Title, Modification); 5] {
    [
        (
            ("pwrite", "touched page"),
            Modification::Pwrite {
                page: g.hit_touched,
            },
        ),
        (
            ("pwrite", "untouched page"),
            Modification::Pwrite {
                page: g.hit_untouched,
            },
        ),
        (
            ("O_APPEND", "after shrink"),
            Modification::AppendAfterShrink {
                shrink_to: size - 2 * ps - ps / 2,
                len: ps,
            },
        ),
        (
            ("truncate", "to half"),
            Modification::Truncate { to: size / 2 },
        ),
        (
            ("open(O_TRUNC)", "+ rewrite"),
            Modification::OTruncRewrite { size },
        ),
    ]
}

/// A column title, two lines.
type Title = (&'static str, &'static str);

/// Which pages are read before the write and which only after.
struct Geometry {
    /// Read before the modification (sorted).
    touched: Vec<usize>,
    /// Read only after it (sorted, disjoint from `touched`).
    untouched: Vec<usize>,
    /// The touched page the first pwrite hits.
    hit_touched: u64,
    /// The untouched page the second pwrite hits.
    hit_untouched: u64,
}

impl Geometry {
    /// About 128 evenly spread touched pages plus the last three (the
    /// append-after-shrink happens there), and as many untouched ones
    /// halfway between them.
    fn new(pages: usize) -> Geometry {
        let stride = (pages / 128).max(2);
        let mut touched: Vec<usize> = (0..pages).step_by(stride).collect();
        touched.extend(pages.saturating_sub(3)..pages);
        touched.sort_unstable();
        touched.dedup();
        let untouched: Vec<usize> = (stride / 2..pages)
            .step_by(stride)
            .filter(|p| touched.binary_search(p).is_err())
            .collect();
        let quarter = pages / 4;
        let pick = |set: &[usize]| {
            set.iter()
                .copied()
                .find(|&p| p >= quarter)
                .unwrap_or(set[0]) as u64
        };
        Geometry {
            hit_touched: pick(&touched),
            hit_untouched: pick(&untouched),
            touched,
            untouched,
        }
    }
}

/// One mapping under test.
enum Mapping {
    Control(PrivateMap),
    Copy(MapCopy),
}

/// What one mapping showed under one modification.
#[derive(Clone, Debug, Default)]
struct Cell {
    /// Touched pages that changed (S2 broken).
    changed: usize,
    /// Untouched pages holding neither the old nor the new bytes.
    garbage: usize,
    /// Touched / untouched pages whose read raised SIGBUS.
    sigbus: usize,
    sigbus_untouched: usize,
    /// Untouched pages (that the write changed) read as old / new bytes.
    later_old: usize,
    later_new: usize,
}

impl Cell {
    fn broken(&self) -> bool {
        self.changed + self.garbage + self.sigbus + self.sigbus_untouched > 0
    }

    fn text(&self) -> String {
        let violated = self.changed + self.garbage > 0;
        match (violated, self.sigbus + self.sigbus_untouched > 0) {
            (true, true) => "VIOLATED+SIGBUS".into(),
            (true, false) => "VIOLATED".into(),
            (false, true) => "SIGBUS".into(),
            (false, false) => match (self.later_old > 0, self.later_new > 0) {
                (true, true) => "kept, old+new".into(),
                (true, false) => "kept, old".into(),
                (false, true) => "kept, new".into(),
                (false, false) => "kept".into(),
            },
        }
    }

    fn detail(&self, touched: usize, untouched: usize) -> String {
        let mut parts = Vec::new();
        if self.changed > 0 {
            parts.push(format!(
                "{} of {touched} pages read before the write changed",
                self.changed
            ));
        }
        if self.garbage > 0 {
            parts.push(format!(
                "{} pages first read after it hold neither old nor new bytes",
                self.garbage
            ));
        }
        if self.sigbus > 0 {
            parts.push(format!(
                "reading {} of {touched} pages read before the write raised SIGBUS",
                self.sigbus
            ));
        }
        if self.sigbus_untouched > 0 {
            parts.push(format!(
                "reading {} of {untouched} pages first read after it raised SIGBUS",
                self.sigbus_untouched
            ));
        }
        parts.join("; ")
    }
}

/// One row of the table.
struct Row {
    name: String,
    control: bool,
    map_times: Vec<Duration>,
    touch_times: Vec<Duration>,
    cells: Vec<Cell>,
}

/// Runs the demo; exit status 0 only if no copy mapping broke the contract
/// and the control was seen breaking it.
pub fn run(args: Args) -> ExitCode {
    match demo(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("mapcopy demo: {e}");
            ExitCode::from(2)
        }
    }
}

fn demo(args: &Args) -> Result<bool, String> {
    let ps = rustix::param::page_size() as u64;
    let size = args.size;
    if size < 16 * ps {
        return Err(format!(
            "--size {size} is too small: the demo needs at least 16 pages ({} bytes)",
            16 * ps
        ));
    }
    let len = usize::try_from(size).map_err(|_| "--size does not fit in memory".to_string())?;
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("mapcopy-demo-")
        .tempdir_in(&base)
        .map_err(|e| {
            format!(
                "cannot make a temporary directory in {}: {e}",
                base.display()
            )
        })?;
    let path = dir.path().join("probe");
    model::create(&path, size).map_err(|e| format!("cannot write {}: {e}", path.display()))?;

    let probe = mapcopy::probe(Some(&path));
    let _ = std::fs::remove_file(&path);
    let fs = match &probe.filesystem {
        Some(Ok(fs)) => fs.clone(),
        _ => "unknown filesystem".into(),
    };
    say!(
        "mapcopy demo: {} files on {fs} in {} (removed afterwards), Linux {}",
        human_bytes(size),
        dir.path().display(),
        probe.kernel
    );
    let mut strategies = Vec::new();
    for s in &probe.strategies {
        match &s.usable {
            Ok(_) => strategies.push(s.strategy),
            Err(why) => say!("  skipping {:<8} {why}", s.strategy.name()),
        }
    }
    let pages = size.div_ceil(ps) as usize;
    let g = Geometry::new(pages);
    let mods = modifications(size, ps, &g);
    say!(
        "Each column: a fresh file, {} pages read (touched) in every mapping, then a separate",
        g.touched.len()
    );
    say!(
        "writer process modifies it, then those pages and {} untouched ones are read again.\n",
        g.untouched.len()
    );

    let mut rows: Vec<Row> = std::iter::once((CONTROL.to_string(), true))
        .chain(strategies.iter().map(|s| (s.name().to_string(), false)))
        .map(|(name, control)| Row {
            name,
            control,
            map_times: Vec::new(),
            touch_times: Vec::new(),
            cells: Vec::new(),
        })
        .collect();

    for (i, (_, m)) in mods.iter().enumerate() {
        // A fresh file per column, so that no column sees another's writer.
        let path = dir.path().join(format!("data-{}", i + 1));
        model::create(&path, size).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let file = File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let mut maps = Vec::new();
        for (row, s) in rows
            .iter_mut()
            .zip(std::iter::once(None).chain(strategies.iter().map(Some)))
        {
            let t = Instant::now();
            let map = match s {
                None => Mapping::Control(
                    PrivateMap::new(&file, len).map_err(|e| format!("mmap MAP_PRIVATE: {e}"))?,
                ),
                Some(&s) => Mapping::Copy(
                    mapcopy_check::options(s)
                        .map(&file)
                        .map_err(|e| format!("mapping with {s}: {e}"))?,
                ),
            };
            row.map_times.push(t.elapsed());
            maps.push(map);
        }
        for (row, map) in rows.iter_mut().zip(&maps) {
            let t = Instant::now();
            touch(map, &g.touched, ps as usize);
            row.touch_times.push(t.elapsed());
        }
        run_writer(m, &path, ps)?;
        for (row, map) in rows.iter_mut().zip(&maps) {
            row.cells.push(check(map, m, &g, size, ps)?);
        }
        drop(maps);
        drop(file);
        let _ = std::fs::remove_file(&path);
    }
    drop(dir);

    print_table(&rows, &mods, &g);
    let copies_ok = rows
        .iter()
        .filter(|r| !r.control)
        .all(|r| r.cells.iter().all(|c| !c.broken()));
    let control_caught = rows
        .iter()
        .filter(|r| r.control)
        .all(|r| r.cells.iter().any(Cell::broken));
    say!();
    if !control_caught {
        say!(
            "FAIL: the control (MAP_PRIVATE) never broke the contract, so this check proves nothing here"
        );
    }
    if copies_ok {
        say!(
            "Every copy mapping kept the contract; MAP_PRIVATE did not (what memmap2 hides behind `unsafe`)."
        );
    } else {
        say!("FAIL: a copy mapping broke the contract (see VIOLATED/SIGBUS above).");
    }
    Ok(copies_ok && control_caught)
}

/// Reads one byte of each page (the first access, which takes the
/// snapshot for lazy strategies).
fn touch(map: &Mapping, pages: &[usize], ps: usize) {
    let mut sum = 0u8;
    match map {
        Mapping::Control(m) => {
            for &p in pages {
                sum = sum.wrapping_add(m.touch(p * ps));
            }
        }
        Mapping::Copy(m) => {
            for &p in pages {
                sum = sum.wrapping_add(m[p * ps]);
            }
        }
    }
    std::hint::black_box(sum);
}

/// Runs `m` in a separate writer process and waits for it (at most a
/// minute: a writer must never be left hanging, nor hang the demo).
fn run_writer(m: &Modification, path: &Path, ps: u64) -> Result<(), String> {
    let mut child = m
        .command(path, ps)
        .spawn()
        .map_err(|e| format!("cannot start the writer process: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => return Err(format!("the writer process ({m:?}) failed: {st}")),
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the writer process ({m:?}) hung for 60 s; killed it"
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => return Err(format!("waiting for the writer: {e}")),
        }
    }
}

/// Reads the touched and untouched pages of `map` after `m` and compares
/// them with the file's contents before and after.
fn check(
    map: &Mapping,
    m: &Modification,
    g: &Geometry,
    size: u64,
    ps: u64,
) -> Result<Cell, String> {
    let all: Vec<(usize, bool)> = g
        .touched
        .iter()
        .map(|&p| (p, true))
        .chain(g.untouched.iter().map(|&p| (p, false)))
        .collect();
    let pages: Vec<usize> = all.iter().map(|&(p, _)| p).collect();
    let reads: Vec<PageRead> = match map {
        Mapping::Control(c) => c
            .read_pages(&pages, ps as usize)
            .map_err(|e| format!("reading the MAP_PRIVATE control: {e}"))?,
        Mapping::Copy(c) => pages
            .iter()
            .map(|&p| {
                let start = p * ps as usize;
                let end = (start + ps as usize).min(c.len());
                PageRead::Bytes(c[start..end].to_vec())
            })
            .collect(),
    };
    let mut cell = Cell::default();
    let mut old = vec![0u8; ps as usize];
    let mut new = vec![0u8; ps as usize];
    for (&(p, was_touched), read) in all.iter().zip(&reads) {
        let bytes = match read {
            PageRead::Bytes(b) => b,
            PageRead::Sigbus if was_touched => {
                cell.sigbus += 1;
                continue;
            }
            PageRead::Sigbus => {
                cell.sigbus_untouched += 1;
                continue;
            }
        };
        let off = p as u64 * ps;
        let old = &mut old[..bytes.len()];
        let new = &mut new[..bytes.len()];
        // Version 1 up to the original size, zero past it.
        let valid = (size.saturating_sub(off) as usize).min(bytes.len());
        model::fill(1, off, &mut old[..valid]);
        old[valid..].fill(0);
        m.expected(size, off, ps, new);
        let is_old = bytes[..] == old[..];
        let is_new = bytes[..] == new[..];
        if was_touched {
            if !is_old {
                cell.changed += 1;
            }
        } else if !is_old && !is_new {
            cell.garbage += 1;
        } else if old != new {
            if is_old {
                cell.later_old += 1;
            } else {
                cell.later_new += 1;
            }
        }
    }
    Ok(cell)
}

const COL: usize = 17;
const CONTROL: &str = "MAP_PRIVATE (control)";

fn print_table(rows: &[Row], mods: &[(Title, Modification); 5], g: &Geometry) {
    let name_w = rows.iter().map(|r| r.name.len()).max().unwrap_or(0) + 2;
    let mut lines: Vec<String> = Vec::new();
    let mut line = format!("{:<name_w$}{:>10}{:>12}   ", "", "map", "1st touch");
    for ((top, _), _) in mods {
        let _ = write!(line, "{top:<COL$}");
    }
    lines.push(line);
    let mut line = format!(
        "{:<name_w$}{:>10}{:>12}   ",
        "mapping",
        "time",
        format!("{} pages", g.touched.len())
    );
    for ((_, bottom), _) in mods {
        let _ = write!(line, "{bottom:<COL$}");
    }
    lines.push(line);
    let width = name_w + 25 + COL * mods.len() - 2;
    lines.push("-".repeat(width));
    for r in rows {
        let mut line = format!(
            "{:<name_w$}{:>10}{:>12}   ",
            r.name,
            human_time(median(&r.map_times)),
            human_time(median(&r.touch_times))
        );
        for c in &r.cells {
            let _ = write!(line, "{:<COL$}", c.text());
        }
        lines.push(line);
    }
    for l in &lines {
        say!("{}", l.trim_end());
    }
    say!();
    say!("kept      every page read before the write still holds the old bytes (S2), and the");
    say!("          pages first read after it hold the old bytes (old), the new ones (new; zero");
    say!("          past a new end) or some of each (old+new), all allowed by S1");
    say!("VIOLATED  a page read before the write changed, or a page holds neither version");
    say!("SIGBUS    reading a page faulted (read in a child process, so the demo survives)");
    say!(
        "times     medians over the five columns; 1st touch = one byte read from each touched page"
    );
    let mut first = true;
    for r in rows {
        for (c, ((top, bottom), _)) in r.cells.iter().zip(mods) {
            if c.broken() {
                if first {
                    say!();
                    first = false;
                }
                say!(
                    "{} / {top} {bottom}: {}",
                    r.name,
                    c.detail(g.touched.len(), g.untouched.len())
                );
            }
        }
    }
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn human_time(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.1} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

fn human_bytes(n: u64) -> String {
    if n >= 1 << 30 && n.is_multiple_of(1 << 30) {
        format!("{} GiB", n >> 30)
    } else if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n}-byte")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_keeps_touched_and_untouched_apart() {
        for pages in [16, 17, 64, 1000, 16384] {
            let g = Geometry::new(pages);
            assert!(
                g.touched
                    .iter()
                    .all(|p| g.untouched.binary_search(p).is_err())
            );
            assert!(g.touched.binary_search(&(g.hit_touched as usize)).is_ok());
            assert!(
                g.untouched
                    .binary_search(&(g.hit_untouched as usize))
                    .is_ok()
            );
            assert!(g.touched.contains(&(pages - 1)) && !g.untouched.is_empty());
            assert!(*g.untouched.last().unwrap() < pages);
        }
    }

    #[test]
    fn cell_texts() {
        let kept = Cell {
            later_new: 3,
            ..Cell::default()
        };
        assert_eq!(kept.text(), "kept, new");
        let bad = Cell {
            changed: 1,
            sigbus: 2,
            ..Cell::default()
        };
        assert_eq!(bad.text(), "VIOLATED+SIGBUS");
        assert!(bad.broken() && !kept.broken());
    }
}
