//! The goals verdict: each performance goal of the issues, and whether a
//! run's [`Results`] met it (rendered by `report`).

use mapcopy::Strategy;

use super::report::{ratio_str, writer_row};
use super::workload::{Method, Workload};
use super::{Results, WriterRow, fmt_secs, fmt_size, immutable, stats};

/// One performance goal of issue 6 and whether this run met it.
pub struct Goal {
    pub name: String,
    /// `None`: not measured.
    pub met: Option<bool>,
    pub detail: String,
}

impl Goal {
    pub(super) fn verdict(&self) -> &'static str {
        match self.met {
            Some(true) => "MET",
            Some(false) => "NOT MET",
            None => "NOT MEASURED",
        }
    }
}

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
                    "{}: {} ({s} {}, {} {}; fastest runs {})",
                    fmt_size(size),
                    ratio_str(Some(ratio)),
                    fmt_secs(t.median),
                    baseline.label(),
                    fmt_secs(b.median),
                    ratio_str(Some(b.min / t.min))
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
    g.extend(kernel_goals(r));
    let imm = &r.immutable;
    g.push(Goal {
        name: "immutable: map + first byte within 1.2× MAP_PRIVATE's time (a sealed memfd; ratio ≥ 0.83)".into(),
        met: imm.ratio().map(|x| x >= 1.0 / 1.2),
        detail: match imm.ratio() {
            Some(x) => format!("{x:.2} ({})", immutable::rows(imm).iter().map(|row| format!("{} {} µs", row[0], row[1])).collect::<Vec<_>>().join(", ")),
            None => imm.error.clone().unwrap_or_else(|| "not measured".into()),
        },
    });
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
    g.push(auto_pick_goal(r));
    g.extend(many_goals(r));
    g
}

/// The goals of issue 22 for `Strategy::Kernel` (MAP_COPY in the kernel).
fn kernel_goals(r: &Results) -> Vec<Goal> {
    let k = Strategy::Kernel;
    let sizes = &r.plan.sizes;
    vec![
        ratio_goal(
            r,
            "kernel: map + first byte ≥ 0.9× MAP_PRIVATE's speed at every size".into(),
            k,
            Method::MapPrivate,
            Workload::First,
            sizes,
            0.9,
        ),
        ratio_goal(
            r,
            "kernel: full scan ≥ 0.98× MAP_PRIVATE's speed at every size".into(),
            k,
            Method::MapPrivate,
            Workload::Scan,
            sizes,
            0.98,
        ),
        ratio_goal(
            r,
            format!(
                "kernel: 1 % random pages of {} ≥ 50× faster than std::fs::read",
                fmt_size(r.plan.random_size)
            ),
            k,
            Method::FsRead,
            Workload::Random,
            &[r.plan.random_size],
            50.0,
        ),
        kernel_writer_goal(r, true),
        kernel_writer_goal(r, false),
    ]
}

/// Kernel's extra cost per 4 KiB pwrite by another process: on pages still
/// shared with a copy (the first pass) at most one page copy (this run's
/// `page_copy_us`, allowed twice over for the saved page's bookkeeping); on
/// pages no copy holds any more (the second pass over the same pages) at
/// most 10 % of the write without a mapping, or 1 µs.
fn kernel_writer_goal(r: &Results, shared: bool) -> Goal {
    let name = if shared {
        "kernel: a writer's extra cost per 4 KiB page still shared with a copy ≤ one page copy (×2)"
    } else {
        "kernel: a writer's extra cost per 4 KiB page no copy holds ≈ nothing (≤ 10 % or 1 µs)"
    }
    .to_string();
    if let Some(why) = unavailable(r, Strategy::Kernel) {
        return Goal {
            name,
            met: None,
            detail: why,
        };
    }
    let pass = |w: &WriterRow| {
        stats(if shared {
            &w.us_per_write
        } else {
            &w.us_per_rewrite
        })
    };
    let row = writer_row(r, Some(Method::Strategy(Strategy::Kernel)));
    let none = writer_row(r, None).and_then(pass);
    match (none, row.and_then(pass), r.page_copy_us) {
        (Some(n), Some(k), Some(c)) => {
            let over = k.median - n.median;
            let limit = if shared {
                2.0 * c
            } else {
                (0.1 * n.median).max(1.0)
            };
            Goal {
                name,
                met: Some(over <= limit),
                detail: format!(
                    "{over:.2} µs extra per write (kernel {:.2} µs, {:.2} … {:.2}; no mapping {:.2} µs, {:.2} … {:.2}) = {:.1} page copies of {c:.2} µs; limit {limit:.2} µs",
                    k.median,
                    k.min,
                    k.max,
                    n.median,
                    n.min,
                    n.max,
                    over / c
                ),
            }
        }
        _ => Goal {
            name,
            met: Some(false),
            detail: format!(
                "failed: {}",
                row.and_then(|w| w.error.clone())
                    .or_else(|| writer_row(r, None).and_then(|w| w.error.clone()))
                    .unwrap_or_else(|| "no measurement".into())
            ),
        },
    }
}

const AUTO: Method = Method::Strategy(Strategy::Auto);

/// Auto's time against the time of the strategy it picked, in every
/// workload × size (the pick as `probe` names it for the bench's files).
fn auto_pick_goal(r: &Results) -> Goal {
    let name = "auto: within 1.2× of its pick's time in every workload and size (ratio ≥ 0.83)"
        .to_string();
    let Some(pick) = r.auto_pick else {
        return Goal {
            name,
            met: None,
            detail: "not measured (probe names no pick)".into(),
        };
    };
    if !r.methods.contains(&AUTO) || !r.methods.contains(&Method::Strategy(pick)) {
        return Goal {
            name,
            met: None,
            detail: format!("not measured (auto or its pick {pick} not selected)"),
        };
    }
    let mut worst: Option<(f64, String)> = None;
    let mut parts = Vec::new();
    for w in Workload::ALL {
        for size in r.plan.sizes_of(w) {
            let x = r.ratio(AUTO, Method::Strategy(pick), w, size);
            parts.push(format!("{} {}: {}", w.key(), fmt_size(size), ratio_str(x)));
            let x = x.unwrap_or(0.0);
            if worst.as_ref().is_none_or(|(v, _)| x < *v) {
                worst = Some((x, format!("{} {}", w.key(), fmt_size(size))));
            }
        }
    }
    let (v, at) = worst.unwrap_or((0.0, "nowhere".into()));
    Goal {
        name,
        met: Some(v >= 1.0 / 1.2),
        detail: format!(
            "auto picks {pick} here; {pick}'s median / auto's median: {} (worst {} at {at})",
            parts.join(", "),
            ratio_str(Some(v))
        ),
    }
}

/// The strategy Auto picked for most files of the many-files workload.
fn many_pick(r: &Results) -> Option<Strategy> {
    let row = r.many.row(AUTO)?;
    row.picked.iter().max_by_key(|(_, n)| *n).map(|(s, _)| *s)
}

/// Many files: Auto within 2× MAP_PRIVATE and within 1.2× of its pick.
fn many_goals(r: &Results) -> Vec<Goal> {
    let fmt = |x: Option<f64>| ratio_str(x);
    let auto_err = r.many.row(AUTO).and_then(|row| row.error.clone());
    let vs_private = r.many.ratio(AUTO, Method::MapPrivate);
    let mut g = vec![Goal {
        name: "many files: auto within 2× MAP_PRIVATE's time (ratio ≥ 0.50)".into(),
        met: vs_private
            .map(|x| x >= 0.5)
            .or(auto_err.as_ref().map(|_| false)),
        detail: match (&auto_err, vs_private) {
            (Some(e), _) => format!("auto failed: {e}"),
            (None, Some(x)) => format!("MAP_PRIVATE's median / auto's median = {}", fmt(Some(x))),
            (None, None) => "not measured".into(),
        },
    }];
    let pick = many_pick(r);
    let vs_pick = pick.and_then(|p| r.many.ratio(AUTO, Method::Strategy(p)));
    g.push(Goal {
        name: "many files: auto within 1.2× of its pick's time (ratio ≥ 0.83)".into(),
        met: vs_pick.map(|x| x >= 1.0 / 1.2),
        detail: match (pick, vs_pick) {
            (Some(p), Some(x)) => format!(
                "auto picked {p} for most files; {p}'s median / auto's median = {}",
                fmt(Some(x))
            ),
            (Some(p), None) => format!("auto picked {p}, which was not measured alone"),
            _ => "not measured".into(),
        },
    });
    g
}

/// Guard's writer overhead ≤ 20 µs per 4 KiB pwrite plus its copy; the copy
/// is priced as faulting in one fresh page plus writing it, at the rates
/// this run measured (or, failing that, at its THP copy rate).
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
    let copy_us = match r.memory {
        Some((fault, write)) => Some(4096.0 / (fault * 1e3) + 4096.0 / (write * 1e3)),
        None => r
            .cell(Method::ThpCopy, Workload::Scan, largest)
            .and_then(|c| c.stats())
            .map(|s| s.median * 1e6 / (largest as f64 / 4096.0)),
    };
    match (none, gs, copy_us) {
        (Some(n), Some(g), Some(c)) => {
            let over = g.median - n.median;
            let limit = 20.0 + c;
            Goal {
                name,
                met: Some(over <= limit),
                detail: format!(
                    "{over:.2} µs overhead per write (guard {:.2} µs, no mapping {:.2} µs); limit 20 µs + {c:.2} µs to fault in and fill a fresh 4 KiB page at this run's rates = {limit:.2} µs",
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
