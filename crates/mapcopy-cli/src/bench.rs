//! `mapcopy bench`: every strategy this machine can use, side by side with
//! plain `MAP_PRIVATE` (the zero-copy limit, contract broken),
//! `std::fs::read` (the ordinary copy) and a `pread` into fresh huge-page
//! memory (the copy limit), in one run, on the same files.
//!
//! Times are medians of N repetitions with min and max; ratios compare
//! medians taken in the same run (`baseline time / this time`, so 1.00 means
//! as fast as the baseline and 0.50 twice as slow). Repetitions interleave
//! the methods so that a noisy neighbour hurts them alike.

mod deref;
mod filecost;
mod forkcost;
mod goals;
mod immutable;
mod json;
mod many;
mod python;
mod raw;
mod report;
mod svg;
mod workload;

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use mapcopy::Strategy;
use mapcopy_check::bench_writer;

use workload::{Method, Sample, SplitMix, Workload};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Arguments of `mapcopy bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Smaller files (16 and 64 MiB, 256 MiB for the random case) and 3
    /// repetitions: finishes in under a minute. Not the real numbers.
    #[arg(long)]
    pub quick: bool,
    /// Drop the page cache before every timed run (needs root). Default: the
    /// page cache is hot.
    #[arg(long)]
    pub cold: bool,
    /// Repetitions of each measurement [default: 5; 3 with --quick].
    #[arg(long, short = 'n', value_name = "N")]
    pub reps: Option<usize>,
    /// Also write report.md, results.json and SVG plots into DIR.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Where to create the test files [default: the system temp dir]. Its
    /// filesystem decides what can run (reflink needs xfs or btrfs).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Only these strategies (comma-separated); the baselines always run.
    #[arg(long, value_delimiter = ',', value_name = "NAME")]
    pub strategy: Vec<Strategy>,
    /// File sizes for the workloads (e.g. 1M,4M), replacing the defaults.
    #[arg(long, value_delimiter = ',', value_parser = parse_size, hide = true)]
    pub sizes: Vec<u64>,
    /// Size of the extra sparse-ish file of the random workload.
    #[arg(long, value_parser = parse_size, hide = true)]
    pub random_size: Option<u64>,
    /// 4 KiB writes per writer-cost run.
    #[arg(long, hide = true)]
    pub writes: Option<usize>,
    /// Files of the many-files workload [default: 2000; 500 with --quick].
    #[arg(long, hide = true)]
    pub many_files: Option<usize>,
}

/// A size (the CLI's grammar, [`crate::size::parse`]) that is a whole
/// number of 4 KiB pages.
fn parse_size(s: &str) -> Result<u64, String> {
    Some(crate::size::parse(s)?)
        .filter(|&b| b >= 4096 && b % 4096 == 0)
        .ok_or_else(|| format!("size {s:?} must be a multiple of 4 KiB, at least 4K"))
}

/// What this run measures.
#[derive(Clone, Debug)]
pub struct Plan {
    pub quick: bool,
    /// Sizes given with the hidden --sizes / --random-size flags.
    pub custom: bool,
    pub cold: bool,
    pub reps: usize,
    /// Sizes of the dense files every workload runs on.
    pub sizes: Vec<u64>,
    /// The extra sparse-ish file of the random workload.
    pub random_size: u64,
    /// Size of the file the writer-cost processes write.
    pub writer_size: u64,
    pub writes: usize,
    /// Stop repeating a method in one cell once its runs took this long.
    pub budget_secs: f64,
    pub only: Vec<Strategy>,
    /// Files of the many-files workload.
    pub many_files: usize,
}

impl Plan {
    fn from_args(a: &Args) -> Plan {
        let reps = a.reps.unwrap_or(if a.quick { 3 } else { 5 }).max(1);
        let mut sizes = if !a.sizes.is_empty() {
            a.sizes.clone()
        } else if a.quick {
            vec![16 * MIB, 64 * MIB]
        } else {
            vec![64 * MIB, GIB]
        };
        sizes.sort_unstable();
        sizes.dedup();
        let random_size = a
            .random_size
            .unwrap_or(if a.quick { 256 * MIB } else { 4 * GIB });
        Plan {
            quick: a.quick,
            custom: !a.sizes.is_empty() || a.random_size.is_some(),
            cold: a.cold,
            reps,
            writer_size: sizes[0].min(64 * MIB),
            sizes,
            random_size,
            writes: a.writes.unwrap_or(if a.quick { 1024 } else { 4096 }),
            budget_secs: if a.quick { 3.0 } else { 30.0 },
            only: a.strategy.clone(),
            many_files: a.many_files.unwrap_or(if a.quick { 500 } else { 2000 }),
        }
    }

    /// The file sizes `w` runs on.
    pub fn sizes_of(&self, w: Workload) -> Vec<u64> {
        let mut v = self.sizes.clone();
        if w == Workload::Random && !v.contains(&self.random_size) {
            v.push(self.random_size);
        }
        v
    }

    /// One line saying what kind of run this is.
    pub fn describe(&self) -> String {
        let sizes: Vec<String> = self.sizes.iter().map(|&s| fmt_size(s)).collect();
        format!(
            "{}: files of {} (random pattern also on a {} sparse-ish file), page cache {}, {} repetition{} per measurement, {} 4 KiB writes per writer run",
            match (self.quick, self.custom) {
                (true, _) =>
                    "QUICK RUN (smaller files, fewer repetitions: indicative only, not the real numbers)",
                (false, true) => "CUSTOM SIZES (not the standard benchmark)",
                (false, false) => "full run",
            },
            sizes.join(" and "),
            fmt_size(self.random_size),
            if self.cold {
                "cold (dropped before every run)"
            } else {
                "hot"
            },
            self.reps,
            if self.reps == 1 { "" } else { "s" },
            self.writes,
        )
    }
}

/// The measurements of one method × workload × size.
#[derive(Clone, Debug)]
pub struct Cell {
    pub method: Method,
    pub workload: Workload,
    pub size: u64,
    pub secs: Vec<f64>,
    /// Largest growth of anonymous memory seen while the mapping lived.
    pub anon: i64,
    /// Largest growth of Private_Clean + Private_Dirty.
    pub private: i64,
    pub error: Option<String>,
}

/// Median, min, max.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// Stats of a non-empty sample.
pub fn stats(v: &[f64]) -> Option<Stats> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Some(Stats {
        median,
        min: s[0],
        max: s[n - 1],
    })
}

impl Cell {
    /// Median, min, max seconds, unless it failed.
    pub fn stats(&self) -> Option<Stats> {
        if self.error.is_some() {
            return None;
        }
        stats(&self.secs)
    }
}

/// Writer cost with one kind of mapping active.
#[derive(Clone, Debug)]
pub struct WriterRow {
    /// `None`: no mapping at all.
    pub method: Option<Method>,
    pub open_us: Vec<f64>,
    pub us_per_write: Vec<f64>,
    /// µs per 4 KiB `pwrite` of the second pass over the same pages (none
    /// of them still shared with a copy that saves pages).
    pub us_per_rewrite: Vec<f64>,
    /// µs per 4 KiB `pread` by the other process (before its writes).
    pub us_per_read: Vec<f64>,
    /// Did page 0, read before the writer ran, still hold the same bytes
    /// after it (every rep)? `None` with no mapping.
    pub page0_kept: Option<bool>,
    pub error: Option<String>,
}

/// Everything one run found.
#[derive(Debug)]
pub struct Results {
    pub plan: Plan,
    pub command: String,
    pub started_utc: String,
    pub kernel: String,
    pub cpus: usize,
    pub loadavg_start: String,
    pub loadavg_end: String,
    pub thp: String,
    pub filesystem: String,
    /// What became of the attempt to run at high priority.
    pub priority: String,
    /// GB/s of faulting in fresh THP memory and of writing it once resident.
    pub memory: Option<(f64, f64)>,
    /// µs to copy one cached 4 KiB page into a fresh (not yet faulted)
    /// 4 KiB page: what saving one page costs at the least.
    pub page_copy_us: Option<f64>,
    pub methods: Vec<Method>,
    /// Strategies not measured, and why.
    pub skipped: Vec<(Strategy, String)>,
    pub cells: Vec<Cell>,
    pub writer: Vec<WriterRow>,
    /// Truncating a copy of the largest dense file, and rewriting it whole,
    /// with each kind of mapping alive.
    pub filecost: Vec<filecost::FileRow>,
    /// `fork()` with each kind of mapping alive (the largest dense file).
    pub fork: Vec<forkcost::ForkRow>,
    /// Immutable against MAP_PRIVATE on a sealed memfd (a copy of the
    /// largest dense file).
    pub immutable: immutable::ImmResults,
    /// Byte-indexed loop against slice loop over each strategy's mapping.
    pub deref: Vec<deref::DerefRow>,
    /// The Python package against numpy's own ways (the largest dense file).
    pub python: python::PyResults,
    pub many: Many,
    /// What `probe` says Auto picks for the bench's files.
    pub auto_pick: Option<Strategy>,
    pub elapsed_secs: f64,
}

/// The many-files workload: every method over the same set of small files.
#[derive(Clone, Debug, Default)]
pub struct Many {
    pub files: usize,
    pub bytes: u64,
    pub rows: Vec<ManyRow>,
}

/// One method in the many-files workload.
#[derive(Clone, Debug)]
pub struct ManyRow {
    pub method: Method,
    pub secs: Vec<f64>,
    /// Open fds per live mapping (largest seen over the repetitions).
    pub fds_per_map: f64,
    /// For `auto`: files per picked strategy (last repetition).
    pub picked: Vec<(Strategy, usize)>,
    pub error: Option<String>,
}

impl Many {
    /// The row of `m`.
    pub fn row(&self, m: Method) -> Option<&ManyRow> {
        self.rows.iter().find(|r| r.method == m)
    }

    /// Median of `baseline` / median of `m`.
    pub fn ratio(&self, m: Method, baseline: Method) -> Option<f64> {
        let med = |m| {
            self.row(m)
                .filter(|r| r.error.is_none())
                .and_then(|r| stats(&r.secs))
                .map(|s| s.median)
        };
        let (t, b) = (med(m)?, med(baseline)?);
        (t > 0.0).then(|| b / t)
    }
}

impl Results {
    /// The cell of `m` × `w` × `size`.
    pub fn cell(&self, m: Method, w: Workload, size: u64) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.method == m && c.workload == w && c.size == size)
    }

    /// Median time of `baseline` / median time of `m`, in cell `w` × `size`.
    pub fn ratio(&self, m: Method, baseline: Method, w: Workload, size: u64) -> Option<f64> {
        let t = self.cell(m, w, size)?.stats()?.median;
        let b = self.cell(baseline, w, size)?.stats()?.median;
        (t > 0.0).then(|| b / t)
    }

    /// Why strategy `s` was not measured, if it was not.
    pub fn skip_reason(&self, s: Strategy) -> Option<&str> {
        self.skipped
            .iter()
            .find(|(k, _)| *k == s)
            .map(|(_, why)| why.as_str())
    }
}

/// Runs `mapcopy bench`: the table on stdout, progress on stderr, the
/// report files with `--out`.
pub fn run(args: Args) -> ExitCode {
    match bench(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mapcopy bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(args: Args) -> Result<(), String> {
    let plan = Plan::from_args(&args);
    let started = Instant::now();
    let started_utc = utc_now();
    fixed_mmap_threshold();
    let priority = raise_priority();
    if plan.cold {
        drop_caches().map_err(|e| format!("--cold needs to drop the page cache: {e}"))?;
    }
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("mapcopy-bench-")
        .tempdir_in(&base)
        .map_err(|e| format!("creating a temporary directory in {}: {e}", base.display()))?;
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out)
            .map_err(|e| format!("creating output directory {}: {e}", out.display()))?;
    }
    println!("mapcopy bench — {}", plan.describe());
    let command = std::env::args()
        .map(|a| if a.contains(' ') { format!("{a:?}") } else { a })
        .collect::<Vec<_>>()
        .join(" ");

    // The files.
    let mut progress = Progress::new(0);
    let mut files: Vec<(u64, bool, PathBuf)> = plan
        .sizes
        .iter()
        .map(|&s| {
            (
                s,
                false,
                tmp.path().join(format!("dense-{}.bin", fmt_size_key(s))),
            )
        })
        .collect();
    if !plan.sizes.contains(&plan.random_size) {
        files.push((
            plan.random_size,
            true,
            tmp.path()
                .join(format!("sparse-{}.bin", fmt_size_key(plan.random_size))),
        ));
    }
    let writer_path = tmp.path().join("writer.bin");
    let deref_path = tmp.path().join("deref.bin");
    for (size, sparse, path) in &files {
        progress.note(&format!(
            "creating {} {} file",
            fmt_size(*size),
            if *sparse { "sparse-ish" } else { "dense" }
        ));
        create_file(path, *size, *sparse)
            .map_err(|e| format!("creating {}: {e}", path.display()))?;
    }
    create_file(&writer_path, plan.writer_size, false)
        .map_err(|e| format!("creating {}: {e}", writer_path.display()))?;
    create_file(&deref_path, deref::SIZE, false)
        .map_err(|e| format!("creating {}: {e}", deref_path.display()))?;
    let path_of = |size: u64| -> &Path {
        &files
            .iter()
            .find(|(s, _, _)| *s == size)
            .expect("a file of every size")
            .2
    };

    // Which strategies can run here.
    let probe = mapcopy::probe(Some(&files[0].2));
    let mut methods: Vec<Method> = Method::BASELINES.to_vec();
    let mut skipped = Vec::new();
    for sp in &probe.strategies {
        if !plan.only.is_empty() && !plan.only.contains(&sp.strategy) {
            skipped.push((sp.strategy, "not selected (--strategy)".to_string()));
            continue;
        }
        match &sp.usable {
            Ok(_) => methods.push(Method::Strategy(sp.strategy)),
            Err(why) => skipped.push((sp.strategy, why.clone())),
        }
    }
    if plan.only.is_empty() || plan.only.contains(&Strategy::Auto) {
        methods.push(Method::Strategy(Strategy::Auto));
    }
    let filesystem = match &probe.filesystem {
        Some(Ok(fs)) => fs.clone(),
        Some(Err(e)) => format!("unknown ({e})"),
        None => "unknown".into(),
    };
    println!(
        "files in {} ({filesystem}); measuring: {}",
        tmp.path().display(),
        methods
            .iter()
            .map(|m| m.label())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (s, why) in &skipped {
        println!("  {s}: skipped: {why}");
    }
    println!();

    let writer_rows = 2 + methods.len() - Method::BASELINES.len();
    let total: usize = Workload::ALL
        .iter()
        .map(|&w| plan.sizes_of(w).len() * methods.len() * plan.reps)
        .sum::<usize>()
        + 2 * writer_rows * plan.reps
        + writer_rows * (plan.reps + 1)
        + (methods.len() - 1) * plan.reps
        + immutable::steps(plan.reps)
        + deref::planned(&methods).len() * plan.reps;
    progress.total = total;

    let loadavg_start = loadavg();
    progress.note("measuring fresh-memory cost");
    let memory = memory_probe(plan.sizes[plan.sizes.len() - 1].min(256 * MIB) as usize);
    let page_copy_us = page_copy_probe(64 * MIB as usize);
    let mut cells = Vec::new();
    for w in Workload::ALL {
        for size in plan.sizes_of(w) {
            let path = path_of(size);
            if !plan.cold {
                warm(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            }
            let mut row: Vec<Cell> = methods
                .iter()
                .map(|&m| Cell {
                    method: m,
                    workload: w,
                    size,
                    secs: Vec::new(),
                    anon: 0,
                    private: 0,
                    error: None,
                })
                .collect();
            // What every method must read: the checksum of the unchanged
            // file through MAP_PRIVATE (an untimed run).
            let reference = workload::run_once(Method::MapPrivate, w, path, size as usize)
                .map_err(|e| format!("MAP_PRIVATE of {}: {e}", path.display()))?
                .checksum;
            for rep in 0..plan.reps {
                // Each repetition starts with a different method, so none
                // always runs right after the same neighbour (a copy that
                // follows one freeing 1 GiB of small pages pays for
                // compaction).
                let n = row.len();
                for k in 0..n {
                    let cell = &mut row[(rep + k) % n];
                    progress.step(&format!(
                        "{} · {} · {} · rep {}/{}",
                        w.key(),
                        fmt_size(size),
                        cell.method.label(),
                        rep + 1,
                        plan.reps
                    ));
                    let spent: f64 = cell.secs.iter().sum();
                    if cell.error.is_some() || (rep > 0 && spent > plan.budget_secs) {
                        continue;
                    }
                    if plan.cold {
                        drop_caches().map_err(|e| format!("dropping the page cache: {e}"))?;
                    }
                    match workload::run_once(cell.method, w, path, size as usize) {
                        Ok(Sample {
                            secs,
                            checksum,
                            anon,
                            private,
                        }) => {
                            if checksum != reference {
                                cell.error = Some(format!(
                                    "wrong bytes: checksum {checksum:#x}, MAP_PRIVATE of the unchanged file gives {reference:#x}"
                                ));
                                continue;
                            }
                            cell.secs.push(secs);
                            cell.anon = cell.anon.max(anon);
                            cell.private = cell.private.max(private);
                        }
                        Err(e) => cell.error = Some(e),
                    }
                }
            }
            cells.extend(row);
        }
    }

    let writer = writer_cost(&plan, &methods, &writer_path, &mut progress);
    let largest = plan.sizes[plan.sizes.len() - 1];
    let filecost = filecost::measure(
        &methods,
        path_of(largest),
        &tmp.path().join("victim.bin"),
        plan.reps,
        &mut progress,
    );
    let fork = forkcost::measure(&methods, path_of(largest), plan.reps, &mut progress);
    let immutable = immutable::measure(path_of(largest), plan.reps, &mut progress);
    if !plan.cold {
        warm(&deref_path).map_err(|e| format!("reading {}: {e}", deref_path.display()))?;
    }
    let deref = deref::measure(&methods, &deref_path, plan.reps, &mut progress);
    progress
        .note("Python: mapcopy.open + numpy.frombuffer against numpy.fromfile and numpy.memmap");
    let python = python::measure(path_of(largest), plan.reps);
    let many = many_files(&plan, &methods, &tmp.path().join("many"), &mut progress)?;
    progress.finish();

    let results = Results {
        command,
        started_utc,
        kernel: probe.kernel.clone(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg_start,
        loadavg_end: loadavg(),
        thp: std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .map_or_else(|_| "unknown".into(), |s| s.trim().to_string()),
        filesystem,
        priority,
        memory,
        page_copy_us,
        methods,
        skipped,
        cells,
        writer,
        filecost,
        fork,
        immutable,
        deref,
        python,
        many,
        auto_pick: probe.auto.as_ref().ok().copied(),
        elapsed_secs: started.elapsed().as_secs_f64(),
        plan,
    };
    let goals = goals::goals(&results);
    print!("{}", report::text(&results, &goals));
    if let Some(out) = &args.out {
        report::write_dir(out, &results, &goals)
            .map_err(|e| format!("writing the report to {}: {e}", out.display()))?;
        println!("report written to {}", out.display());
    }
    drop(tmp);
    Ok(())
}

/// The many-files workload for every method but the THP copy limit (a
/// baseline for one big file), repetitions interleaved as in the others.
fn many_files(
    plan: &Plan,
    methods: &[Method],
    dir: &Path,
    progress: &mut Progress,
) -> Result<Many, String> {
    progress.note(&format!(
        "creating {} files of {}–{}",
        plan.many_files,
        fmt_size(many::MIN_FILE),
        fmt_size(many::MAX_FILE)
    ));
    let files = many::create(dir, plan.many_files)
        .map_err(|e| format!("creating the many-files set in {}: {e}", dir.display()))?;
    // Just written: hot in the page cache (and dropped per run with --cold).
    let reference = many::run_once(Method::MapPrivate, &files)?.checksum;
    let mut rows: Vec<ManyRow> = methods
        .iter()
        .filter(|&&m| m != Method::ThpCopy)
        .map(|&method| ManyRow {
            method,
            secs: Vec::new(),
            fds_per_map: 0.0,
            picked: Vec::new(),
            error: None,
        })
        .collect();
    for rep in 0..plan.reps {
        let n = rows.len();
        for k in 0..n {
            let row = &mut rows[(rep + k) % n];
            progress.step(&format!(
                "many files · {} · rep {}/{}",
                row.method.label(),
                rep + 1,
                plan.reps
            ));
            if row.error.is_some() {
                continue;
            }
            if plan.cold {
                drop_caches().map_err(|e| format!("dropping the page cache: {e}"))?;
            }
            match many::run_once(row.method, &files) {
                Ok(run) if run.checksum != reference => {
                    row.error = Some(format!(
                        "wrong bytes: checksum {:#x}, MAP_PRIVATE gives {reference:#x}",
                        run.checksum
                    ))
                }
                Ok(run) => {
                    row.secs.push(run.secs);
                    row.fds_per_map = row.fds_per_map.max(run.fds_per_map);
                    row.picked = run.picked.into_iter().collect();
                }
                Err(e) => row.error = Some(e),
            }
        }
    }
    Ok(Many {
        files: files.paths.len(),
        bytes: files.bytes,
        rows,
    })
}

/// Writer cost: a 4 KiB `pwrite` loop in another process, with no mapping,
/// with a plain MAP_PRIVATE one (the control: its page 0 changes), and with
/// each strategy's mapping active.
fn writer_cost(
    plan: &Plan,
    methods: &[Method],
    path: &Path,
    progress: &mut Progress,
) -> Vec<WriterRow> {
    let mut rows: Vec<WriterRow> = mappings_alive(methods)
        .into_iter()
        .map(|method| WriterRow {
            method,
            open_us: Vec::new(),
            us_per_write: Vec::new(),
            us_per_rewrite: Vec::new(),
            us_per_read: Vec::new(),
            page0_kept: method.map(|_| true),
            error: None,
        })
        .collect();
    let mut fill: u8 = 0;
    for rep in 0..plan.reps {
        for row in rows.iter_mut() {
            progress.step(&format!(
                "writer · {} · rep {}/{}",
                row.method.map_or("no mapping", Method::label),
                rep + 1,
                plan.reps
            ));
            if row.error.is_some() {
                continue;
            }
            fill = fill % 250 + 1;
            match writer_once(row.method, path, plan.writes, fill) {
                Ok((cost, kept)) => {
                    row.open_us.push(cost.open_us);
                    row.us_per_write.push(cost.us_per_write);
                    row.us_per_rewrite.push(cost.us_per_rewrite);
                    row.us_per_read.push(cost.us_per_read);
                    if let (Some(all), Some(k)) = (&mut row.page0_kept, kept) {
                        *all &= k;
                    }
                }
                Err(e) => row.error = Some(e),
            }
        }
    }
    rows
}

fn writer_once(
    method: Option<Method>,
    path: &Path,
    writes: usize,
    fill: u8,
) -> Result<(bench_writer::WriterCost, Option<bool>), String> {
    let file = File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let len = file.metadata().map_err(|e| e.to_string())?.len() as usize;
    let measure =
        || bench_writer::measure(path, writes, fill).map_err(|e| format!("writer process: {e}"));
    match method {
        None => Ok((measure()?, None)),
        Some(Method::MapPrivate) => {
            // The control. Its bytes change under it, so it is only read
            // through volatile loads, never as a `&[u8]`.
            // SAFETY: the mapping is never borrowed as a slice; `page0`
            // copies through raw volatile reads.
            let m = unsafe { raw::Raw::private(&file, len) }.map_err(|e| format!("mmap: {e}"))?;
            let before = m.page0();
            let cost = measure()?;
            Ok((cost, Some(m.page0() == before)))
        }
        Some(Method::Strategy(s)) => {
            let m = mapcopy_check::options(s)
                .map(&file)
                .map_err(|e| e.to_string())?;
            let before = m[..4096.min(m.len())].to_vec();
            let cost = measure()?;
            Ok((cost, Some(m[..before.len()] == before[..])))
        }
        Some(other) => Err(format!("{} is not a mapping", other.label())),
    }
}

/// What the other-process measurements run beside: no mapping, the
/// `MAP_PRIVATE` control, and each strategy's mapping.
pub fn mappings_alive(methods: &[Method]) -> Vec<Option<Method>> {
    let mut kinds: Vec<Option<Method>> = vec![None, Some(Method::MapPrivate)];
    kinds.extend(
        methods
            .iter()
            .filter(|m| !m.is_baseline())
            .map(|&m| Some(m)),
    );
    kinds
}

/// Creates a file of `size` bytes of splitmix64 output (the u64 at index
/// `i` of the file is `SplitMix::at(i)`). Sparse-ish: only the first MiB of
/// every 4 MiB holds data, the rest is a hole. Flushed to disk so that
/// writeback does not disturb the measurements.
fn create_file(path: &Path, size: u64, sparse: bool) -> std::io::Result<()> {
    let file = File::create(path)?;
    file.set_len(size)?;
    let chunk = if sparse { MIB } else { 8 * MIB };
    let stride = if sparse { 4 * MIB } else { chunk };
    let mut buf = vec![0u8; chunk as usize];
    let mut off = 0;
    while off < size {
        let n = chunk.min(size - off) as usize;
        for (j, w) in buf[..n].chunks_exact_mut(8).enumerate() {
            w.copy_from_slice(&SplitMix::at(off / 8 + j as u64).to_le_bytes());
        }
        file.write_all_at(&buf[..n], off)?;
        off += stride;
    }
    file.sync_all()
}

/// Reads the whole file once so its pages (holes included) are cached.
fn warm(path: &Path) -> std::io::Result<()> {
    let file = File::open(path)?;
    let mut buf = vec![0u8; 8 * MIB as usize];
    let mut off = 0;
    loop {
        let n = file.read_at(&mut buf, off)?;
        if n == 0 {
            return Ok(());
        }
        off += n as u64;
    }
}

/// Runs the bench at nice -20 where allowed, so that other work on the
/// machine disturbs the measurements less. Says what happened.
fn raise_priority() -> String {
    match rustix::process::setpriority_process(None, -20) {
        Ok(()) => "nice -20 (to reduce disturbance from other load)".into(),
        Err(e) => format!("default (nice -20 refused: {e})"),
    }
}

/// What fresh anonymous memory costs here: GB/s of faulting in `len` bytes
/// of new 2 MiB-aligned `MADV_HUGEPAGE` memory (`MADV_POPULATE_WRITE`,
/// i.e. allocating and zeroing), and of then writing the same memory again.
/// Every copy method pays the first; medians of 3.
fn memory_probe(len: usize) -> Option<(f64, f64)> {
    let mut fault = Vec::new();
    let mut write = Vec::new();
    for _ in 0..3 {
        let mut m = raw::Raw::thp(len).ok()?;
        let t0 = Instant::now();
        m.populate().ok()?;
        fault.push(len as f64 / t0.elapsed().as_secs_f64() / 1e9);
        let t1 = Instant::now();
        m.bytes_mut().fill(1);
        std::hint::black_box(m.bytes()[len - 1]);
        write.push(len as f64 / t1.elapsed().as_secs_f64() / 1e9);
    }
    Some((stats(&fault)?.median, stats(&write)?.median))
}

/// What saving one page costs at the least: µs per 4 KiB to copy `len`
/// resident bytes, page by page, into fresh anonymous memory faulted in 4 KiB
/// pages (`MADV_NOHUGEPAGE`) by the copy itself; median of 3.
fn page_copy_probe(len: usize) -> Option<f64> {
    let mut src = raw::Raw::thp(len).ok()?;
    src.bytes_mut().fill(7);
    let mut per_page = Vec::new();
    for _ in 0..3 {
        let mut dst = raw::Raw::small_pages(len).ok()?;
        let t = Instant::now();
        for (d, s) in dst
            .bytes_mut()
            .chunks_exact_mut(4096)
            .zip(src.bytes().chunks_exact(4096))
        {
            d.copy_from_slice(std::hint::black_box(s));
        }
        std::hint::black_box(dst.bytes()[len - 1]);
        per_page.push(t.elapsed().as_secs_f64() * 1e6 / (len / 4096) as f64);
    }
    Some(stats(&per_page)?.median)
}

/// glibc raises its mmap threshold after a large block is freed, so a
/// later `std::fs::read` of the same size would reuse already-faulted heap
/// memory and look cheaper than a fresh one depending on what ran before.
/// A fixed threshold keeps every large `Vec` fresh `mmap` memory, as in a
/// process that reads the file once.
fn fixed_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before the
    // bench starts any thread of its own.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// `sync; echo 3 > /proc/sys/vm/drop_caches`.
fn drop_caches() -> std::io::Result<()> {
    rustix::fs::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3")
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// `YYYY-MM-DD HH:MM UTC` from the system clock.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// `64 MiB`, `1 GiB`, `4 KiB`, `1.5 GiB`.
pub fn fmt_size(b: u64) -> String {
    let (unit, name) = if b >= GIB {
        (GIB, "GiB")
    } else if b >= MIB {
        (MIB, "MiB")
    } else {
        (1 << 10, "KiB")
    };
    if b.is_multiple_of(unit) {
        format!("{} {name}", b / unit)
    } else {
        format!("{:.1} {name}", b as f64 / unit as f64)
    }
}

fn fmt_size_key(b: u64) -> String {
    fmt_size(b).replace(' ', "").replace('.', "_")
}

/// Seconds, with a unit that keeps 3 significant digits.
pub fn fmt_secs(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.1} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.3} s")
    }
}

/// A progress line on stderr: redrawn in place on a terminal, one line per
/// 10 % otherwise.
struct Progress {
    total: usize,
    done: usize,
    tty: bool,
    started: Instant,
    last_decile: usize,
}

impl Progress {
    fn new(total: usize) -> Progress {
        Progress {
            total,
            done: 0,
            tty: std::io::stderr().is_terminal(),
            started: Instant::now(),
            last_decile: 0,
        }
    }

    fn note(&mut self, what: &str) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[K{what}");
        } else {
            let _ = writeln!(err, "bench: {what}");
        }
        let _ = err.flush();
    }

    fn step(&mut self, what: &str) {
        self.done += 1;
        let total = self.total.max(1);
        let pct = self.done * 100 / total;
        let elapsed = self.started.elapsed().as_secs();
        if self.tty {
            let width = 24;
            let filled = self.done * width / total;
            let bar: String =
                "#".repeat(filled.min(width)) + &"-".repeat(width - filled.min(width));
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K[{bar}] {pct:3}% {elapsed:4}s  {what}");
            let _ = err.flush();
        } else if pct / 10 > self.last_decile {
            self.last_decile = pct / 10;
            eprintln!(
                "bench: {pct:3}% ({}/{total}) after {elapsed} s: {what}",
                self.done
            );
        }
    }

    fn finish(&mut self) {
        if self.tty {
            eprint!("\r\x1b[K");
        }
        eprintln!(
            "bench: done in {:.1} s",
            self.started.elapsed().as_secs_f64()
        );
    }
}
