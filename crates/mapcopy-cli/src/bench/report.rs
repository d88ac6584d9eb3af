//! Turning [`Results`] and the goals verdict into the stdout table, report.md,
//! results.json and the SVG plots.

use std::fmt::Write as _;
use std::path::Path;

use mapcopy::Strategy;

use super::goals::Goal;
use super::json::{self, Json};
use super::svg::{self, Axis, Bar, Group};
use super::workload::{Method, Workload};
use super::{
    Results, WriterRow, deref, filecost, fmt_secs, fmt_size, forkcost, immutable, python, stats,
};

/// How every ratio in the tables reads.
const RATIO_NOTE: &str = "ratio = baseline median time / this median time (same run): 1.00× = as fast as the baseline, 0.50× = twice as slow, 2.00× = twice as fast, 1/40× = 40 times slower";

/// A table row for a method that failed: its label, FAILED, the error.
fn failed_row<const N: usize>(m: Method, err: &Option<String>) -> [String; N] {
    let mut row: [String; N] = std::array::from_fn(|_| String::new());
    row[0] = m.label().to_string();
    row[1] = "FAILED".into();
    row[2] = err.clone().unwrap_or_else(|| "no measurement".into());
    row
}

/// Rows of the many-files table.
fn many_rows(r: &Results) -> Vec<[String; 7]> {
    r.many
        .rows
        .iter()
        .map(|row| match (&row.error, stats(&row.secs)) {
            (None, Some(s)) => [
                row.method.label().to_string(),
                fmt_secs(s.median),
                format!("{} … {}", fmt_secs(s.min), fmt_secs(s.max)),
                ratio_str(r.many.ratio(row.method, Method::MapPrivate)),
                ratio_str(r.many.ratio(row.method, Method::FsRead)),
                format!("{:.2}", row.fds_per_map),
                row.picked
                    .iter()
                    .map(|(s, n)| format!("{s} {n}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ],
            (err, _) => failed_row(row.method, err),
        })
        .collect()
}

const MANY_HEADERS: [&str; 7] = [
    "method",
    "median",
    "min … max",
    "vs MAP_PRIVATE",
    "vs fs::read",
    "fds per live map",
    "auto picked",
];

fn python_title(r: &Results) -> String {
    format!(
        "Python: sum of a {} file as uint64, mapcopy.open + numpy.frombuffer (zero-copy, the contract kept) against numpy.fromfile (a copy) and numpy.memmap (a plain mapping, contract broken)",
        fmt_size(r.plan.sizes[r.plan.sizes.len() - 1])
    )
}

fn filecost_title(r: &Results) -> String {
    format!(
        "truncation and full rewrite by another process of a fresh copy of the {} file (cached), with each kind of mapping alive: truncate to 0 ({} repetitions; first byte of the mapping read), rewrite of every byte (once; the mapping scanned whole before and after)",
        fmt_size(*r.plan.sizes.last().expect("at least one size")),
        r.plan.reps
    )
}

fn fork_title(r: &Results) -> String {
    format!(
        "fork() cost: the parent's time in fork() with a {} mapping alive (first byte read), the child exiting at once",
        fmt_size(r.plan.sizes[r.plan.sizes.len() - 1])
    )
}

fn immutable_title(r: &Results) -> String {
    format!(
        "immutable files: map + first byte of a {} memfd sealed with F_SEAL_WRITE and F_SEAL_SHRINK (a copy of the largest file), µs per map, median (min … max) of batches of 200",
        fmt_size(r.immutable.size)
    )
}

fn deref_title() -> String {
    format!(
        "indexing through Deref: `for i in 0..m.len() {{ s += m[i] }}` against `for &b in &m[..]` over a populated {} mapping, {} pairs of runs per repetition, interleaved (goal: byte / slice ≤ 1.10× for every strategy)",
        fmt_size(deref::SIZE),
        deref::PAIRS
    )
}

fn many_title(r: &Results) -> String {
    format!(
        "many files: {} files of {}–{} ({} in all), each opened, mapped (or read) and read once, all kept live",
        r.many.files,
        fmt_size(super::many::MIN_FILE),
        fmt_size(super::many::MAX_FILE),
        fmt_size(r.many.bytes)
    )
}

pub(super) fn writer_row(r: &Results, m: Option<Method>) -> Option<&WriterRow> {
    r.writer.iter().find(|w| w.method == m)
}

pub(super) fn ratio_str(x: Option<f64>) -> String {
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
            (err, _) => {
                let mut row = failed_row(c.method, err);
                row[7] = c.secs.len().to_string();
                row
            }
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

fn writer_rows(r: &Results) -> Vec<[String; 9]> {
    let none = writer_row(r, None).and_then(|w| stats(&w.us_per_write));
    let none_again = writer_row(r, None).and_then(|w| stats(&w.us_per_rewrite));
    let none_read = writer_row(r, None).and_then(|w| stats(&w.us_per_read));
    r.writer
        .iter()
        .map(|w| {
            let label = w.method.map_or("no mapping", Method::label).to_string();
            let kept = match w.page0_kept {
                None => "–".into(),
                Some(true) => "yes".into(),
                Some(false) => "NO (changed)".into(),
            };
            match (
                &w.error,
                stats(&w.us_per_write),
                stats(&w.open_us),
                stats(&w.us_per_read),
                stats(&w.us_per_rewrite),
            ) {
                (None, Some(s), Some(o), Some(rd), Some(again)) => [
                    label,
                    format!("{:.2} ({:.2} … {:.2})", rd.median, rd.min, rd.max),
                    none_read.map_or("–".into(), |n| format!("{:+.2}", rd.median - n.median)),
                    format!("{:.2} ({:.2} … {:.2})", s.median, s.min, s.max),
                    none.map_or("–".into(), |n| format!("{:+.2}", s.median - n.median)),
                    format!("{:.2} ({:.2} … {:.2})", again.median, again.min, again.max),
                    none_again.map_or("–".into(), |n| format!("{:+.2}", again.median - n.median)),
                    format!("{:.1} ({:.1} … {:.1})", o.median, o.min, o.max),
                    kept,
                ],
                (err, ..) => {
                    let mut row: [String; 9] = Default::default();
                    row[0] = label;
                    row[1] = "FAILED".into();
                    row[2] = err.clone().unwrap_or_else(|| "no measurement".into());
                    row
                }
            }
        })
        .collect()
}

const WRITER_HEADERS: [&str; 9] = [
    "mapping active",
    "µs per 4 KiB pread",
    "read overhead µs",
    "µs per 4 KiB pwrite",
    "overhead µs",
    "same pages again µs",
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
        match r.page_copy_us {
            Some(us) => format!(
                "one page copy (a cached 4 KiB page into a fresh 4 KiB page, faulted in by the copy): {us:.2} µs"
            ),
            None => "one page copy: not measured".into(),
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
        "\ncost to another process: {} × 4 KiB pread, then as many pwrite, file of {}:",
        r.plan.writes,
        fmt_size(r.plan.writer_size)
    );
    plain_table(&mut out, WRITER_HEADERS, &writer_rows(r));
    let _ = writeln!(out, "\n{}:", filecost_title(r));
    plain_table(&mut out, filecost::HEADERS, &filecost::rows(&r.filecost));
    let _ = writeln!(out, "\n{}:", fork_title(r));
    plain_table(&mut out, forkcost::HEADERS, &forkcost::rows(&r.fork));
    let _ = writeln!(out, "\n{}:", immutable_title(r));
    plain_table(&mut out, immutable::HEADERS, &immutable::rows(&r.immutable));
    let _ = writeln!(out, "\n{}:", deref_title());
    plain_table(&mut out, deref::HEADERS, &deref::rows(&r.deref));
    let _ = writeln!(out, "\n{}:", python_title(r));
    plain_table(&mut out, python::HEADERS, &python::rows(&r.python));
    let _ = writeln!(out, "\n{}:", many_title(r));
    plain_table(&mut out, MANY_HEADERS, &many_rows(r));
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
        "\n## Cost to other processes\n\n{} × 4 KiB `pread`, then as many `pwrite`, in another process on a {} file, with each kind of mapping alive in the bench process (the reads come first, so a Lease is not yet broken while they run). \"page 0 kept\": the mapping's first page, read before the writer ran, held the same bytes afterwards (MAP_PRIVATE is the control that must fail).\n\n![writer](writer.svg)\n",
        r.plan.writes,
        fmt_size(r.plan.writer_size)
    );
    md_table(&mut out, WRITER_HEADERS, &writer_rows(r));
    let _ = writeln!(
        out,
        "\n## Truncation and full rewrite\n\n{}. \"page 0 kept\": the mapping's first page held the same bytes after the truncation; \"copy kept\": a scan after the rewrite gave the first scan's checksum (MAP_PRIVATE is the control that must fail); \"used MiB +\": growth of MemTotal − MemFree over the rewrite (the whole machine; a `kernel` copy's saved pages are not in the process's anonymous memory).\n",
        filecost_title(r)
    );
    md_table(&mut out, filecost::HEADERS, &filecost::rows(&r.filecost));
    let _ = writeln!(
        out,
        "\n## fork()\n\n{}. A child has no guard thread, fault server or lease-break handler, so before the first fork `guard` copies the mapping's data into anonymous memory, `lease` snapshots as on a break and `lazy` fills its unread pages; later forks pay nothing more.\n",
        fork_title(r)
    );
    md_table(&mut out, forkcost::HEADERS, &forkcost::rows(&r.fork));
    let _ = writeln!(
        out,
        "\n## Immutable files\n\n{}. The bench's own files are on a writable filesystem, where `immutable` refuses; a sealed memfd is a file it maps.\n",
        immutable_title(r)
    );
    md_table(&mut out, immutable::HEADERS, &immutable::rows(&r.immutable));
    let _ = writeln!(
        out,
        "\n## Indexing through Deref\n\n{}. Code ported from memmap2 indexes the mapping directly; \"byte / slice\" is the byte loop's median over the slice loop's (1.00×: as fast).\n",
        deref_title()
    );
    md_table(&mut out, deref::HEADERS, &deref::rows(&r.deref));
    let _ = writeln!(
        out,
        "\n## Python\n\n{} ({}). Ratios: the baseline's median over this method's (above 1: faster).\n",
        python_title(r),
        r.python.python
    );
    md_table(&mut out, python::HEADERS, &python::rows(&r.python));
    let _ = writeln!(
        out,
        "\n## Many files\n\n{}. \"fds per live map\": file descriptors the process holds per live mapping (`/proc/self/fd`, all mappings live).\n",
        many_title(r)
    );
    md_table(&mut out, MANY_HEADERS, &many_rows(r));
    out
}

fn results_json(r: &Results, goals: &[Goal]) -> Json {
    let records = r
        .cells
        .iter()
        .map(|c| {
            let s = c.stats();
            json::obj([
                ("strategy", Json::String(c.method.key().into())),
                ("baseline", Json::Bool(c.method.is_baseline())),
                ("workload", Json::String(c.workload.key().into())),
                ("size_bytes", json::int(c.size as i64)),
                ("runs", json::int(c.secs.len() as i64)),
                ("median_s", json::num(s.map(|s| s.median))),
                ("min_s", json::num(s.map(|s| s.min))),
                ("max_s", json::num(s.map(|s| s.max))),
                (
                    "ratio_to_map_private",
                    json::num(r.ratio(c.method, Method::MapPrivate, c.workload, c.size)),
                ),
                (
                    "ratio_to_fs_read",
                    json::num(r.ratio(c.method, Method::FsRead, c.workload, c.size)),
                ),
                (
                    "ratio_to_thp_copy",
                    json::num(r.ratio(c.method, Method::ThpCopy, c.workload, c.size)),
                ),
                ("private_bytes", json::int(c.anon)),
                ("rss_private_bytes", json::int(c.private)),
                (
                    "samples_s",
                    Json::Array(c.secs.iter().map(|&x| json::float(x)).collect()),
                ),
                ("error", json::opt_str(c.error.as_deref())),
            ])
        })
        .collect();
    let writer = r
        .writer
        .iter()
        .map(|w| {
            let s = stats(&w.us_per_write);
            let o = stats(&w.open_us);
            json::obj([
                (
                    "mapping",
                    Json::String(w.method.map_or("none", Method::key).into()),
                ),
                (
                    "us_per_read_median",
                    json::num(stats(&w.us_per_read).map(|s| s.median)),
                ),
                ("us_per_write_median", json::num(s.map(|s| s.median))),
                ("us_per_write_min", json::num(s.map(|s| s.min))),
                ("us_per_write_max", json::num(s.map(|s| s.max))),
                (
                    "us_per_rewrite_median",
                    json::num(stats(&w.us_per_rewrite).map(|s| s.median)),
                ),
                ("open_us_median", json::num(o.map(|s| s.median))),
                ("page0_kept", w.page0_kept.map_or(Json::Null, Json::Bool)),
                ("error", json::opt_str(w.error.as_deref())),
            ])
        })
        .collect();
    json::obj([
        (
            "tool",
            Json::String(format!("mapcopy bench {}", env!("CARGO_PKG_VERSION"))),
        ),
        ("command", Json::String(r.command.clone())),
        ("started_utc", Json::String(r.started_utc.clone())),
        ("elapsed_s", json::float(r.elapsed_secs)),
        ("quick", Json::Bool(r.plan.quick)),
        ("cold", Json::Bool(r.plan.cold)),
        ("reps", json::int(r.plan.reps as i64)),
        (
            "machine",
            json::obj([
                ("kernel", Json::String(r.kernel.clone())),
                ("cpus", json::int(r.cpus as i64)),
                ("loadavg_start", Json::String(r.loadavg_start.clone())),
                ("loadavg_end", Json::String(r.loadavg_end.clone())),
                ("busy", Json::Bool(busy(r))),
                ("thp", Json::String(r.thp.clone())),
                ("filesystem", Json::String(r.filesystem.clone())),
                ("priority", Json::String(r.priority.clone())),
                ("fresh_memory_fault_gbps", json::num(r.memory.map(|m| m.0))),
                (
                    "resident_memory_write_gbps",
                    json::num(r.memory.map(|m| m.1)),
                ),
                ("page_copy_us", json::num(r.page_copy_us)),
            ]),
        ),
        ("ratio_definition", Json::String(RATIO_NOTE.into())),
        (
            "methods",
            Json::Array(
                r.methods
                    .iter()
                    .map(|m| Json::String(m.key().into()))
                    .collect(),
            ),
        ),
        (
            "skipped",
            Json::Array(
                r.skipped
                    .iter()
                    .map(|(s, why)| {
                        json::obj([
                            ("strategy", Json::String(s.name().into())),
                            ("reason", Json::String(why.clone())),
                        ])
                    })
                    .collect(),
            ),
        ),
        (
            "workloads",
            Json::Array(
                Workload::ALL
                    .iter()
                    .map(|&w| {
                        json::obj([
                            ("workload", Json::String(w.key().into())),
                            ("title", Json::String(w.title().into())),
                            (
                                "sizes",
                                Json::Array(
                                    r.plan
                                        .sizes_of(w)
                                        .iter()
                                        .map(|&s| json::int(s as i64))
                                        .collect(),
                                ),
                            ),
                        ])
                    })
                    .collect(),
            ),
        ),
        ("records", Json::Array(records)),
        ("writer_cost", Json::Array(writer)),
        ("file_cost", filecost::json(&r.filecost)),
        ("fork_cost", forkcost::json(&r.fork)),
        ("immutable", immutable::json(&r.immutable)),
        ("deref", deref::json(&r.deref)),
        ("python", python::json(&r.python)),
        ("auto_pick", json::opt_str(r.auto_pick.map(Strategy::name))),
        (
            "many_files",
            json::obj([
                ("files", json::int(r.many.files as i64)),
                ("bytes", json::int(r.many.bytes as i64)),
                (
                    "records",
                    Json::Array(
                        r.many
                            .rows
                            .iter()
                            .map(|row| {
                                let s = stats(&row.secs);
                                json::obj([
                                    ("strategy", Json::String(row.method.key().into())),
                                    ("median_s", json::num(s.map(|s| s.median))),
                                    ("min_s", json::num(s.map(|s| s.min))),
                                    ("max_s", json::num(s.map(|s| s.max))),
                                    (
                                        "ratio_to_map_private",
                                        json::num(r.many.ratio(row.method, Method::MapPrivate)),
                                    ),
                                    (
                                        "ratio_to_fs_read",
                                        json::num(r.many.ratio(row.method, Method::FsRead)),
                                    ),
                                    ("fds_per_live_map", json::float(row.fds_per_map)),
                                    (
                                        "picked",
                                        Json::Object(
                                            row.picked
                                                .iter()
                                                .map(|(s, n)| {
                                                    (s.name().to_string(), json::int(*n as i64))
                                                })
                                                .collect(),
                                        ),
                                    ),
                                    (
                                        "samples_s",
                                        Json::Array(
                                            row.secs.iter().map(|&x| json::float(x)).collect(),
                                        ),
                                    ),
                                    ("error", json::opt_str(row.error.as_deref())),
                                ])
                            })
                            .collect(),
                    ),
                ),
            ]),
        ),
        (
            "goals",
            Json::Array(
                goals
                    .iter()
                    .map(|g| {
                        json::obj([
                            ("goal", Json::String(g.name.clone())),
                            ("met", g.met.map_or(Json::Null, Json::Bool)),
                            ("detail", Json::String(g.detail.clone())),
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
        format!("{}\n", json::pretty(&results_json(r, goals))),
    )?;
    for w in Workload::ALL {
        std::fs::write(dir.join(format!("{}.svg", w.key())), workload_svg(r, w))?;
    }
    std::fs::write(dir.join("writer.svg"), writer_svg(r))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::goals::goals;
    use crate::bench::{Cell, Plan};

    const MIB: u64 = 1 << 20;

    fn results(cells: Vec<(Method, Workload, u64, f64)>, writer: Vec<WriterRow>) -> Results {
        let plan = Plan {
            quick: false,
            custom: true,
            cold: false,
            reps: 1,
            sizes: vec![MIB, 2 * MIB],
            random_size: 4 * MIB,
            writer_size: MIB,
            writes: 1,
            budget_secs: 1.0,
            only: vec![],
            many_files: 0,
        };
        Results {
            plan,
            command: "mapcopy bench".into(),
            started_utc: "now".into(),
            kernel: "6.18".into(),
            cpus: 2,
            loadavg_start: "0.1".into(),
            loadavg_end: "0.1".into(),
            thp: "madvise".into(),
            filesystem: "ext4".into(),
            priority: "default".into(),
            memory: Some((4.096, 4.096)),
            page_copy_us: Some(1.0),
            methods: vec![
                Method::MapPrivate,
                Method::FsRead,
                Method::ThpCopy,
                Method::Strategy(Strategy::Guard),
                Method::Strategy(Strategy::Eager),
            ],
            skipped: vec![(Strategy::Lazy, "no userfaultfd here".into())],
            cells: cells
                .into_iter()
                .map(|(method, workload, size, secs)| Cell {
                    method,
                    workload,
                    size,
                    secs: vec![secs],
                    anon: 0,
                    private: 0,
                    error: None,
                })
                .collect(),
            writer,
            filecost: Vec::new(),
            fork: Vec::new(),
            immutable: Default::default(),
            deref: Vec::new(),
            python: python::PyResults {
                rows: Err("not run".into()),
                python: String::new(),
            },
            many: Default::default(),
            auto_pick: None,
            elapsed_secs: 1.0,
        }
    }

    fn goal<'a>(goals: &'a [Goal], name: &str) -> &'a Goal {
        goals
            .iter()
            .find(|g| g.name.starts_with(name))
            .unwrap_or_else(|| panic!("no goal {name}"))
    }

    #[test]
    fn kernel_writer_goals_split_shared_and_unshared_pages() {
        let kernel = Method::Strategy(Strategy::Kernel);
        let row = |method, first: f64, again: f64| WriterRow {
            method,
            open_us: vec![1.0],
            us_per_write: vec![first],
            us_per_rewrite: vec![again],
            us_per_read: vec![1.0],
            page0_kept: method.map(|_| true),
            error: None,
        };
        let shared = "kernel: a writer's extra cost per 4 KiB page still shared";
        let unshared = "kernel: a writer's extra cost per 4 KiB page no copy holds";
        // Not probed usable: not measured.
        let r = results(vec![], vec![row(None, 5.0, 5.0)]);
        assert_eq!(goal(&goals(&r), shared).met, None);
        // One page copy costs 1 µs here. 2 µs extra on shared pages (two
        // copies' worth) and 0.5 µs on the rest: both met; 3 and 2: neither.
        for (first, again, met) in [(7.0, 5.5, true), (8.0, 7.0, false)] {
            let mut r = results(
                vec![],
                vec![row(None, 5.0, 5.0), row(Some(kernel), first, again)],
            );
            r.methods.push(kernel);
            let g = goals(&r);
            assert_eq!(
                goal(&g, shared).met,
                Some(met),
                "{}",
                goal(&g, shared).detail
            );
            assert_eq!(
                goal(&g, unshared).met,
                Some(met),
                "{}",
                goal(&g, unshared).detail
            );
        }
    }

    #[test]
    fn goals_compare_medians_at_every_size() {
        let guard = Method::Strategy(Strategy::Guard);
        let eager = Method::Strategy(Strategy::Eager);
        let mut cells = vec![];
        for size in [MIB, 2 * MIB] {
            cells.push((Method::MapPrivate, Workload::Scan, size, 1.0));
            cells.push((Method::ThpCopy, Workload::Scan, size, 1.0));
            cells.push((Method::MapPrivate, Workload::First, size, 1.0));
        }
        // Guard: 0.95× MAP_PRIVATE at 1 MiB but 0.5× at 2 MiB: not met.
        cells.push((guard, Workload::Scan, MIB, 1.0 / 0.95));
        cells.push((guard, Workload::Scan, 2 * MIB, 2.0));
        // Eager: at least 0.9× the THP copy at both sizes: met.
        cells.push((eager, Workload::Scan, MIB, 1.0 / 0.91));
        cells.push((eager, Workload::Scan, 2 * MIB, 1.0 / 0.95));
        // Guard's first byte: 1.9× MAP_PRIVATE's time at both: met.
        cells.push((guard, Workload::First, MIB, 1.9));
        cells.push((guard, Workload::First, 2 * MIB, 1.9));
        let writer = vec![
            WriterRow {
                method: None,
                open_us: vec![1.0],
                us_per_write: vec![5.0],
                us_per_rewrite: vec![5.0],
                us_per_read: vec![1.0],
                page0_kept: None,
                error: None,
            },
            WriterRow {
                method: Some(guard),
                open_us: vec![1.0],
                us_per_write: vec![26.0],
                us_per_rewrite: vec![26.0],
                us_per_read: vec![20.0],
                page0_kept: Some(true),
                error: None,
            },
        ];
        let mut r = results(cells, writer);
        let g = goals(&r);
        assert_eq!(g.len(), 22);
        // Immutable not measured: no verdict, the reason.
        let imm = goal(&g, "immutable: map + first byte");
        assert_eq!((imm.met, imm.detail.as_str()), (None, "not measured"));
        // 10 µs against MAP_PRIVATE's 9: met (0.9 ≥ 1/1.2); 12: not.
        for (us, met) in [(10.0, true), (12.0, false)] {
            r.immutable = immutable::ImmResults {
                size: MIB,
                rows: vec![
                    immutable::Row {
                        way: immutable::Way::MapPrivate,
                        us: vec![9.0],
                        error: None,
                    },
                    immutable::Row {
                        way: immutable::Way::Named,
                        us: vec![us],
                        error: None,
                    },
                ],
                error: None,
            };
            let g = goals(&r);
            assert_eq!(goal(&g, "immutable: map").met, Some(met), "{us} µs");
        }
        assert_eq!(goal(&g, "guard: full scan").met, Some(false));
        assert_eq!(goal(&g, "eager: full scan").met, Some(true));
        assert_eq!(goal(&g, "guard: map + first byte").met, Some(true));
        // Lazy was skipped: says so with the reason, not a verdict.
        let lazy = goal(&g, "lazy: full scan ≥ 1.0×");
        assert_eq!(lazy.met, None);
        assert_eq!(
            lazy.detail,
            "not measured (strategy unavailable: no userfaultfd here)"
        );
        // Guard measured but the random workload is missing: a failure.
        let random = goal(&g, "guard: 1 % random");
        assert_eq!(random.met, Some(false));
        assert!(random.detail.contains("failed"), "{}", random.detail);
        // 21 µs overhead; limit 20 + 1 µs fault + 1 µs write at 4.096 GB/s.
        let w = goal(&g, "guard: writer overhead");
        assert_eq!(w.met, Some(true), "{}", w.detail);
        // The text report shows every goal with its verdict.
        let text = text(&r, &g);
        assert!(text.contains("[NOT MEASURED] lazy"));
        assert!(text.contains("[NOT MET] guard: full scan"));
    }
}
