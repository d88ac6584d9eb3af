//! Turning [`Results`] into the goals verdict, the stdout table, report.md,
//! results.json and the SVG plots.

use std::fmt::Write as _;
use std::path::Path;

use mapcopy::Strategy;

use super::json::Json;
use super::svg::{self, Axis, Bar, Group};
use super::workload::{Method, Workload};
use super::{Results, WriterRow, fmt_secs, fmt_size, stats};

/// One performance goal of issue 6 and whether this run met it.
pub struct Goal {
    pub name: String,
    /// `None`: not measured.
    pub met: Option<bool>,
    pub detail: String,
}

impl Goal {
    fn verdict(&self) -> &'static str {
        match self.met {
            Some(true) => "MET",
            Some(false) => "NOT MET",
            None => "NOT MEASURED",
        }
    }
}

const RATIO_NOTE: &str = "ratio = baseline median time / this median time (same run): 1.00× = as fast as the baseline, 0.50× = twice as slow, 2.00× = twice as fast, 1/40× = 40 times slower";

fn unavailable(r: &Results, s: Strategy) -> Option<String> {
    if r.methods.contains(&Method::Strategy(s)) {
        None
    } else {
        Some(format!(
            "not measured (strategy unavailable: {})",
            r.skip_reason(s).unwrap_or("not probed")
        ))
    }
}

/// Checks `s` against `baseline` in workload `w` at every size in `sizes`:
/// met if every ratio is at least `min_ratio`.
fn ratio_goal(
    r: &Results,
    name: String,
    s: Strategy,
    baseline: Method,
    w: Workload,
    sizes: &[u64],
    min_ratio: f64,
) -> Goal {
    if let Some(why) = unavailable(r, s) {
        return Goal {
            name,
            met: None,
            detail: why,
        };
    }
    let m = Method::Strategy(s);
    let mut met = true;
    let mut parts = Vec::new();
    for &size in sizes {
        let cell = r.cell(m, w, size);
        let base = r.cell(baseline, w, size);
        match (cell.and_then(|c| c.stats()), base.and_then(|c| c.stats())) {
            (Some(t), Some(b)) => {
                let ratio = b.median / t.median;
                met &= ratio >= min_ratio;
                parts.push(format!(
                    "{}: {ratio:.2}× ({s} {}, {} {})",
                    fmt_size(size),
                    fmt_secs(t.median),
                    baseline.label(),
                    fmt_secs(b.median)
                ));
            }
            _ => {
                met = false;
                let err = cell
                    .and_then(|c| c.error.clone())
                    .or_else(|| base.and_then(|c| c.error.clone()))
                    .unwrap_or_else(|| "no measurement".into());
                parts.push(format!("{}: failed: {err}", fmt_size(size)));
            }
        }
    }
    Goal {
        name,
        met: Some(met),
        detail: parts.join("; "),
    }
}

/// The goals of issue 6, evaluated on this run.
pub fn goals(r: &Results) -> Vec<Goal> {
    let sizes = &r.plan.sizes;
    let mut g = Vec::new();
    for s in [Strategy::Guard, Strategy::Lease, Strategy::Lazy] {
        g.push(ratio_goal(
            r,
            format!(
                "{s}: map + first byte within 2× MAP_PRIVATE's time at every size (ratio ≥ 0.50)"
            ),
            s,
            Method::MapPrivate,
            Workload::First,
            sizes,
            0.5,
        ));
    }
    for s in [Strategy::Guard, Strategy::Lease] {
        g.push(ratio_goal(
            r,
            format!("{s}: full scan ≥ 0.9× MAP_PRIVATE"),
            s,
            Method::MapPrivate,
            Workload::Scan,
            sizes,
            0.9,
        ));
    }
    g.push(ratio_goal(
        r,
        "lazy: full scan ≥ 1.0× std::fs::read".into(),
        Strategy::Lazy,
        Method::FsRead,
        Workload::Scan,
        sizes,
        1.0,
    ));
    g.push(ratio_goal(
        r,
        "lazy: full scan ≥ 0.8× the THP copy limit".into(),
        Strategy::Lazy,
        Method::ThpCopy,
        Workload::Scan,
        sizes,
        0.8,
    ));
    g.push(ratio_goal(
        r,
        "eager: full scan ≥ 0.9× the THP copy limit".into(),
        Strategy::Eager,
        Method::ThpCopy,
        Workload::Scan,
        sizes,
        0.9,
    ));
    let big = r.plan.random_size;
    for s in [
        Strategy::Guard,
        Strategy::Lease,
        Strategy::Reflink,
        Strategy::Lazy,
    ] {
        g.push(ratio_goal(
            r,
            format!(
                "{s}: 1 % random pages of {} ≥ 50× faster than std::fs::read",
                fmt_size(big)
            ),
            s,
            Method::FsRead,
            Workload::Random,
            &[big],
            50.0,
        ));
    }
    g.push(guard_writer_goal(r));
    g
}

fn writer_row(r: &Results, m: Option<Method>) -> Option<&WriterRow> {
    r.writer.iter().find(|w| w.method == m)
}

/// Guard's writer overhead ≤ 20 µs per 4 KiB pwrite plus its copy; the copy
/// is priced at this run's THP copy rate (full scan, largest file).
fn guard_writer_goal(r: &Results) -> Goal {
    let name = "guard: writer overhead ≤ 20 µs per 4 KiB pwrite plus its copy".to_string();
    if let Some(why) = unavailable(r, Strategy::Guard) {
        return Goal {
            name,
            met: None,
            detail: why,
        };
    }
    let none = writer_row(r, None).and_then(|w| stats(&w.us_per_write));
    let guard = writer_row(r, Some(Method::Strategy(Strategy::Guard)));
    let gs = guard.and_then(|w| stats(&w.us_per_write));
    let largest = *r.plan.sizes.last().expect("at least one size");
    let copy_us = r
        .cell(Method::ThpCopy, Workload::Scan, largest)
        .and_then(|c| c.stats())
        .map(|s| s.median * 1e6 / (largest as f64 / 4096.0));
    match (none, gs, copy_us) {
        (Some(n), Some(g), Some(c)) => {
            let over = g.median - n.median;
            let limit = 20.0 + c;
            Goal {
                name,
                met: Some(over <= limit),
                detail: format!(
                    "{over:.2} µs overhead per write (guard {:.2} µs, no mapping {:.2} µs); limit 20 µs + {c:.2} µs copy of 4 KiB at this run's THP copy rate = {limit:.2} µs",
                    g.median, n.median
                ),
            }
        }
        _ => Goal {
            name,
            met: Some(false),
            detail: format!(
                "failed: {}",
                guard
                    .and_then(|g| g.error.clone())
                    .or_else(|| writer_row(r, None).and_then(|w| w.error.clone()))
                    .unwrap_or_else(|| "no measurement".into())
            ),
        },
    }
}

fn ratio_str(x: Option<f64>) -> String {
    match x {
        Some(x) if x >= 100.0 => format!("{x:.0}×"),
        Some(x) if x >= 10.0 => format!("{x:.1}×"),
        Some(x) if x >= 0.1 => format!("{x:.2}×"),
        // Far slower than the baseline: say how many times, `1/N×`.
        Some(x) if x > 0.0 => {
            let n = 1.0 / x;
            if n >= 100.0 {
                format!("1/{n:.0}×")
            } else {
                format!("1/{n:.1}×")
            }
        }
        _ => "–".into(),
    }
}

fn mib(b: i64) -> String {
    format!("{:.1}", b as f64 / (1 << 20) as f64)
}

/// Rows of one workload × size table: method, median, min…max, three
/// ratios, anon MiB, runs.
fn table_rows(r: &Results, w: Workload, size: u64) -> Vec<[String; 8]> {
    r.methods
        .iter()
        .filter_map(|&m| r.cell(m, w, size))
        .map(|c| match (&c.error, c.stats()) {
            (None, Some(s)) => [
                c.method.label().to_string(),
                fmt_secs(s.median),
                format!("{} … {}", fmt_secs(s.min), fmt_secs(s.max)),
                ratio_str(r.ratio(c.method, Method::MapPrivate, w, size)),
                ratio_str(r.ratio(c.method, Method::FsRead, w, size)),
                ratio_str(r.ratio(c.method, Method::ThpCopy, w, size)),
                mib(c.anon),
                c.secs.len().to_string(),
            ],
            (err, _) => [
                c.method.label().to_string(),
                "FAILED".into(),
                err.clone().unwrap_or_else(|| "no measurement".into()),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                c.secs.len().to_string(),
            ],
        })
        .collect()
}

const HEADERS: [&str; 8] = [
    "method",
    "median",
    "min … max",
    "vs MAP_PRIVATE",
    "vs fs::read",
    "vs THP copy",
    "anon MiB",
    "runs",
];

fn writer_rows(r: &Results) -> Vec<[String; 5]> {
    let none = writer_row(r, None).and_then(|w| stats(&w.us_per_write));
    r.writer
        .iter()
        .map(|w| {
            let label = w.method.map_or("no mapping", Method::label).to_string();
            let kept = match w.page0_kept {
                None => "–".into(),
                Some(true) => "yes".into(),
                Some(false) => "NO (changed)".into(),
            };
            match (&w.error, stats(&w.us_per_write), stats(&w.open_us)) {
                (None, Some(s), Some(o)) => [
                    label,
                    format!("{:.2} ({:.2} … {:.2})", s.median, s.min, s.max),
                    none.map_or("–".into(), |n| format!("{:+.2}", s.median - n.median)),
                    format!("{:.1} ({:.1} … {:.1})", o.median, o.min, o.max),
                    kept,
                ],
                (err, _, _) => [
                    label,
                    "FAILED".into(),
                    err.clone().unwrap_or_else(|| "no measurement".into()),
                    String::new(),
                    String::new(),
                ],
            }
        })
        .collect()
}

const WRITER_HEADERS: [&str; 5] = [
    "mapping active",
    "µs per 4 KiB pwrite",
    "overhead µs",
    "open() µs",
    "page 0 kept",
];

fn plain_table<const N: usize>(out: &mut String, headers: [&str; N], rows: &[[String; N]]) {
    let mut width = headers.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut String, cells: Vec<&str>| {
        let mut l = String::from(" ");
        for (i, (c, w)) in cells.iter().zip(width).enumerate() {
            let pad = w - c.chars().count();
            if i == 0 {
                l.push_str(&format!(" {c}{}", " ".repeat(pad)));
            } else {
                l.push_str(&format!("  {}{c}", " ".repeat(pad)));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(out, headers.to_vec());
    for row in rows {
        line(out, row.iter().map(String::as_str).collect());
    }
}

fn md_table<const N: usize>(out: &mut String, headers: [&str; N], rows: &[[String; N]]) {
    let _ = writeln!(out, "| {} |", headers.join(" | "));
    let _ = writeln!(
        out,
        "|{}",
        headers
            .iter()
            .enumerate()
            .map(|(i, _)| if i == 0 { "---|" } else { "---:|" })
            .collect::<String>()
    );
    for row in rows {
        let _ = writeln!(out, "| {} |", row.join(" | ").replace('\n', " "));
    }
}

fn header_lines(r: &Results) -> Vec<String> {
    let mut v = vec![
        format!("command: {}", r.command),
        format!("started: {}, took {:.0} s", r.started_utc, r.elapsed_secs),
        format!(
            "machine: Linux {}, {} CPUs, load average {} at start, {} at end{}",
            r.kernel,
            r.cpus,
            r.loadavg_start,
            r.loadavg_end,
            if busy(r) {
                " — the machine was busy (other work running): absolute numbers are noisy, compare within this run"
            } else {
                ""
            }
        ),
        format!(
            "THP: {}; files on {}; priority: {}",
            r.thp, r.filesystem, r.priority
        ),
        match r.memory {
            Some((fault, write)) => format!(
                "fresh anonymous memory: {fault:.2} GB/s to fault in (2 MiB pages, MADV_POPULATE_WRITE), {write:.2} GB/s to write once resident — every copy (fs::read, THP copy, eager, lazy) pays the first"
            ),
            None => "fresh anonymous memory: not measured".into(),
        },
        r.plan.describe(),
        RATIO_NOTE.to_string(),
        "times include the map (or read, or copy) and the pattern, not the unmap; anon MiB = growth of Anonymous in /proc/self/smaps_rollup while the mapping lived (copies; page cache not counted)".to_string(),
    ];
    for (s, why) in &r.skipped {
        v.push(format!("{s}: not measured: {why}"));
    }
    v
}

/// Load average above half the CPUs at start or end.
fn busy(r: &Results) -> bool {
    let load = |s: &str| {
        s.split_whitespace()
            .next()
            .and_then(|x| x.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let limit = (r.cpus as f64 * 0.5).max(0.5);
    load(&r.loadavg_start) > limit || load(&r.loadavg_end) > limit
}

/// The report for stdout.
pub fn text(r: &Results, goals: &[Goal]) -> String {
    let mut out = String::new();
    out.push('\n');
    for l in header_lines(r) {
        let _ = writeln!(out, "{l}");
    }
    for w in Workload::ALL {
        for size in r.plan.sizes_of(w) {
            let _ = writeln!(out, "\n{} — {}:", w.title(), fmt_size(size));
            plain_table(&mut out, HEADERS, &table_rows(r, w, size));
        }
    }
    let _ = writeln!(
        out,
        "\nwriter cost: {} × 4 KiB pwrite in another process, file of {}:",
        r.plan.writes,
        fmt_size(r.plan.writer_size)
    );
    plain_table(&mut out, WRITER_HEADERS, &writer_rows(r));
    let _ = writeln!(out, "\ngoals:");
    for g in goals {
        let _ = writeln!(out, "  [{}] {}\n      {}", g.verdict(), g.name, g.detail);
    }
    out
}

fn markdown(r: &Results, goals: &[Goal]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# mapcopy bench\n");
    for l in header_lines(r) {
        let _ = writeln!(out, "* {l}");
    }
    let _ = writeln!(out, "\n## Goals\n");
    for g in goals {
        let _ = writeln!(out, "* **{}** — {}: {}", g.verdict(), g.name, g.detail);
    }
    for w in Workload::ALL {
        let _ = writeln!(out, "\n## {}\n\n![{}]({}.svg)", w.title(), w.key(), w.key());
        for size in r.plan.sizes_of(w) {
            let _ = writeln!(out, "\n### {}\n", fmt_size(size));
            md_table(&mut out, HEADERS, &table_rows(r, w, size));
        }
    }
    let _ = writeln!(
        out,
        "\n## Writer cost\n\n{} × 4 KiB `pwrite` in another process on a {} file, with each kind of mapping alive in the bench process. \"page 0 kept\": the mapping's first page, read before the writer ran, held the same bytes afterwards (MAP_PRIVATE is the control that must fail).\n\n![writer](writer.svg)\n",
        r.plan.writes,
        fmt_size(r.plan.writer_size)
    );
    md_table(&mut out, WRITER_HEADERS, &writer_rows(r));
    out
}

fn results_json(r: &Results, goals: &[Goal]) -> Json {
    let records = r
        .cells
        .iter()
        .map(|c| {
            let s = c.stats();
            Json::obj([
                ("strategy", Json::Str(c.method.key().into())),
                ("baseline", Json::Bool(c.method.is_baseline())),
                ("workload", Json::Str(c.workload.key().into())),
                ("size_bytes", Json::Int(c.size as i64)),
                ("runs", Json::Int(c.secs.len() as i64)),
                ("median_s", Json::num(s.map(|s| s.median))),
                ("min_s", Json::num(s.map(|s| s.min))),
                ("max_s", Json::num(s.map(|s| s.max))),
                (
                    "ratio_to_map_private",
                    Json::num(r.ratio(c.method, Method::MapPrivate, c.workload, c.size)),
                ),
                (
                    "ratio_to_fs_read",
                    Json::num(r.ratio(c.method, Method::FsRead, c.workload, c.size)),
                ),
                (
                    "ratio_to_thp_copy",
                    Json::num(r.ratio(c.method, Method::ThpCopy, c.workload, c.size)),
                ),
                ("private_bytes", Json::Int(c.anon)),
                ("rss_private_bytes", Json::Int(c.private)),
                (
                    "samples_s",
                    Json::Arr(c.secs.iter().map(|&x| Json::Num(x)).collect()),
                ),
                ("error", Json::opt_str(c.error.as_deref())),
            ])
        })
        .collect();
    let writer = r
        .writer
        .iter()
        .map(|w| {
            let s = stats(&w.us_per_write);
            let o = stats(&w.open_us);
            Json::obj([
                (
                    "mapping",
                    Json::Str(w.method.map_or("none", Method::key).into()),
                ),
                ("us_per_write_median", Json::num(s.map(|s| s.median))),
                ("us_per_write_min", Json::num(s.map(|s| s.min))),
                ("us_per_write_max", Json::num(s.map(|s| s.max))),
                ("open_us_median", Json::num(o.map(|s| s.median))),
                ("page0_kept", w.page0_kept.map_or(Json::Null, Json::Bool)),
                ("error", Json::opt_str(w.error.as_deref())),
            ])
        })
        .collect();
    Json::obj([
        (
            "tool",
            Json::Str(format!("mapcopy bench {}", env!("CARGO_PKG_VERSION"))),
        ),
        ("command", Json::Str(r.command.clone())),
        ("started_utc", Json::Str(r.started_utc.clone())),
        ("elapsed_s", Json::Num(r.elapsed_secs)),
        ("quick", Json::Bool(r.plan.quick)),
        ("cold", Json::Bool(r.plan.cold)),
        ("reps", Json::Int(r.plan.reps as i64)),
        (
            "machine",
            Json::obj([
                ("kernel", Json::Str(r.kernel.clone())),
                ("cpus", Json::Int(r.cpus as i64)),
                ("loadavg_start", Json::Str(r.loadavg_start.clone())),
                ("loadavg_end", Json::Str(r.loadavg_end.clone())),
                ("busy", Json::Bool(busy(r))),
                ("thp", Json::Str(r.thp.clone())),
                ("filesystem", Json::Str(r.filesystem.clone())),
                ("priority", Json::Str(r.priority.clone())),
                ("fresh_memory_fault_gbps", Json::num(r.memory.map(|m| m.0))),
                (
                    "resident_memory_write_gbps",
                    Json::num(r.memory.map(|m| m.1)),
                ),
            ]),
        ),
        ("ratio_definition", Json::Str(RATIO_NOTE.into())),
        (
            "methods",
            Json::Arr(
                r.methods
                    .iter()
                    .map(|m| Json::Str(m.key().into()))
                    .collect(),
            ),
        ),
        (
            "skipped",
            Json::Arr(
                r.skipped
                    .iter()
                    .map(|(s, why)| {
                        Json::obj([
                            ("strategy", Json::Str(s.name().into())),
                            ("reason", Json::Str(why.clone())),
                        ])
                    })
                    .collect(),
            ),
        ),
        (
            "workloads",
            Json::Arr(
                Workload::ALL
                    .iter()
                    .map(|&w| {
                        Json::obj([
                            ("workload", Json::Str(w.key().into())),
                            ("title", Json::Str(w.title().into())),
                            (
                                "sizes",
                                Json::Arr(
                                    r.plan
                                        .sizes_of(w)
                                        .iter()
                                        .map(|&s| Json::Int(s as i64))
                                        .collect(),
                                ),
                            ),
                        ])
                    })
                    .collect(),
            ),
        ),
        ("records", Json::Arr(records)),
        ("writer_cost", Json::Arr(writer)),
        (
            "goals",
            Json::Arr(
                goals
                    .iter()
                    .map(|g| {
                        Json::obj([
                            ("goal", Json::Str(g.name.clone())),
                            ("met", g.met.map_or(Json::Null, Json::Bool)),
                            ("detail", Json::Str(g.detail.clone())),
                        ])
                    })
                    .collect(),
            ),
        ),
    ])
}

fn workload_svg(r: &Results, w: Workload) -> String {
    let groups: Vec<Group> = r
        .plan
        .sizes_of(w)
        .into_iter()
        .map(|size| Group {
            title: fmt_size(size),
            bars: r
                .methods
                .iter()
                .filter_map(|&m| r.cell(m, w, size))
                .map(|c| match c.stats() {
                    Some(s) => Bar {
                        label: c.method.label().into(),
                        value: Some(s.median),
                        min: s.min,
                        max: s.max,
                        color: svg::color(c.method.label()),
                        note: format!(
                            "{} · {} MAP_PRIVATE · {} fs::read",
                            fmt_secs(s.median),
                            ratio_str(r.ratio(c.method, Method::MapPrivate, w, size)),
                            ratio_str(r.ratio(c.method, Method::FsRead, w, size)),
                        ),
                    },
                    None => Bar {
                        label: c.method.label().into(),
                        value: None,
                        min: 0.0,
                        max: 0.0,
                        color: svg::color(c.method.label()),
                        note: format!("failed: {}", c.error.as_deref().unwrap_or("no data")),
                    },
                })
                .collect(),
        })
        .collect();
    svg::chart(
        &format!("mapcopy bench: {}", w.title()),
        &format!(
            "median time (log scale), whiskers min–max; {}{}",
            if r.plan.quick { "QUICK run; " } else { "" },
            r.started_utc
        ),
        &groups,
        Axis::LogSeconds,
    )
}

fn writer_svg(r: &Results) -> String {
    let bars = r
        .writer
        .iter()
        .map(|w| {
            let label = w.method.map_or("no mapping", Method::label).to_string();
            match (&w.error, stats(&w.us_per_write)) {
                (None, Some(s)) => Bar {
                    color: svg::color(&label),
                    label,
                    value: Some(s.median),
                    min: s.min,
                    max: s.max,
                    note: format!("{:.2} µs", s.median),
                },
                (err, _) => Bar {
                    color: svg::color(&label),
                    label,
                    value: None,
                    min: 0.0,
                    max: 0.0,
                    note: format!("failed: {}", err.as_deref().unwrap_or("no data")),
                },
            }
        })
        .collect();
    svg::chart(
        "mapcopy bench: writer cost",
        &format!(
            "µs per 4 KiB pwrite in another process while a mapping is alive; {}{}",
            if r.plan.quick { "QUICK run; " } else { "" },
            r.started_utc
        ),
        &[Group {
            title: format!(
                "{} writes to a {} file",
                r.plan.writes,
                fmt_size(r.plan.writer_size)
            ),
            bars,
        }],
        Axis::Linear { unit: "µs" },
    )
}

/// Writes report.md, results.json and one SVG per workload plus writer.svg.
pub fn write_dir(dir: &Path, r: &Results, goals: &[Goal]) -> std::io::Result<()> {
    std::fs::write(dir.join("report.md"), markdown(r, goals))?;
    std::fs::write(
        dir.join("results.json"),
        format!("{}\n", results_json(r, goals)),
    )?;
    for w in Workload::ALL {
        std::fs::write(dir.join(format!("{}.svg", w.key())), workload_svg(r, w))?;
    }
    std::fs::write(dir.join("writer.svg"), writer_svg(r))?;
    Ok(())
}
