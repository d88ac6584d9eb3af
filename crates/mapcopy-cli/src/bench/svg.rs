//! Horizontal bar charts as hand-written SVG (a plotting crate would be most
//! of the CLI's build time for a few rectangles).

use std::fmt::Write;

/// One bar: median with a min–max whisker.
pub struct Bar {
    pub label: String,
    /// `None` draws the note instead of a bar (a failed measurement).
    pub value: Option<f64>,
    pub min: f64,
    pub max: f64,
    pub color: &'static str,
    /// Text after the bar (the formatted value, a ratio, ...).
    pub note: String,
}

/// Bars under a heading.
pub struct Group {
    pub title: String,
    pub bars: Vec<Bar>,
}

/// How values map to length.
#[derive(Clone, Copy)]
pub enum Axis {
    /// Seconds on a log scale (decade ticks).
    LogSeconds,
    /// A linear scale from zero, ticks labelled with `unit`.
    Linear { unit: &'static str },
}

const WIDTH: f64 = 1080.0;
const X0: f64 = 130.0;
const X1: f64 = 720.0;
const ROW: f64 = 20.0;
const HEAD: f64 = 26.0;
const TOP: f64 = 64.0;

/// Colour of a method or strategy, by its label.
pub fn color(label: &str) -> &'static str {
    match label {
        "MAP_PRIVATE" => "#7f7f7f",
        "fs::read" => "#bcbd22",
        "THP copy" => "#8c564b",
        "guard" => "#1f77b4",
        "lease" => "#ff7f0e",
        "reflink" => "#2ca02c",
        "lazy" => "#d62728",
        "eager" => "#9467bd",
        _ => "#17becf",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The chart as an SVG document.
pub fn chart(title: &str, subtitle: &str, groups: &[Group], axis: Axis) -> String {
    let values = || {
        groups
            .iter()
            .flat_map(|g| &g.bars)
            .filter(|b| b.value.is_some())
    };
    let (lo, hi) = match axis {
        Axis::LogSeconds => {
            let min = values()
                .map(|b| b.min.min(b.value.unwrap_or(f64::MAX)))
                .filter(|v| *v > 0.0)
                .fold(f64::MAX, f64::min);
            let max = values().map(|b| b.max).fold(0.0, f64::max);
            if max <= 0.0 {
                (-6.0, 0.0)
            } else {
                let lo = min.log10().floor();
                let hi = max.log10().ceil();
                (lo, if hi > lo { hi } else { lo + 1.0 })
            }
        }
        Axis::Linear { .. } => {
            let max = values().map(|b| b.max).fold(0.0, f64::max);
            (0.0, nice_ceiling(max))
        }
    };
    let x = |v: f64| -> f64 {
        let t = match axis {
            Axis::LogSeconds if v > 0.0 => (v.log10() - lo) / (hi - lo),
            Axis::LogSeconds => 0.0,
            Axis::Linear { .. } => (v - lo) / (hi - lo),
        };
        X0 + t.clamp(0.0, 1.0) * (X1 - X0)
    };
    let rows: usize = groups.iter().map(|g| g.bars.len()).sum();
    let height = TOP + groups.len() as f64 * HEAD + rows as f64 * ROW + 40.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="22" font-size="16" font-weight="bold">{}</text>"#,
        esc(title)
    );
    let _ = writeln!(
        s,
        r##"<text x="10" y="42" fill="#555">{}</text>"##,
        esc(subtitle)
    );
    // Grid and tick labels.
    let bottom = height - 30.0;
    let ticks: Vec<(f64, String)> = match axis {
        Axis::LogSeconds => (lo as i32..=hi as i32)
            .map(|k| {
                let v = 10f64.powi(k);
                (v, decade_label(k))
            })
            .collect(),
        Axis::Linear { unit } => (0..=4)
            .map(|i| {
                let v = hi * i as f64 / 4.0;
                (v, format!("{} {unit}", trim_num(v)))
            })
            .collect(),
    };
    for (v, label) in &ticks {
        let tx = x(*v);
        let _ = writeln!(
            s,
            r##"<line x1="{tx:.1}" y1="{TOP}" x2="{tx:.1}" y2="{bottom}" stroke="#ddd"/><text x="{tx:.1}" y="{:.1}" text-anchor="middle" fill="#555">{}</text>"##,
            bottom + 14.0,
            esc(label)
        );
    }
    let mut y = TOP;
    for g in groups {
        y += HEAD;
        let _ = writeln!(
            s,
            r#"<text x="10" y="{:.1}" font-weight="bold">{}</text>"#,
            y - 8.0,
            esc(&g.title)
        );
        for b in &g.bars {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                X0 - 6.0,
                y + 14.0,
                esc(&b.label)
            );
            match b.value {
                Some(v) => {
                    let w = (x(v) - X0).max(1.0);
                    let _ = writeln!(
                        s,
                        r#"<rect x="{X0}" y="{:.1}" width="{w:.1}" height="{:.1}" fill="{}"/>"#,
                        y + 3.0,
                        ROW - 6.0,
                        b.color
                    );
                    let (a, c) = (x(b.min), x(b.max));
                    let _ = writeln!(
                        s,
                        r#"<line x1="{a:.1}" y1="{ym:.1}" x2="{c:.1}" y2="{ym:.1}" stroke="black"/><line x1="{a:.1}" y1="{:.1}" x2="{a:.1}" y2="{:.1}" stroke="black"/><line x1="{c:.1}" y1="{:.1}" x2="{c:.1}" y2="{:.1}" stroke="black"/>"#,
                        y + 6.0,
                        y + 14.0,
                        y + 6.0,
                        y + 14.0,
                        ym = y + 10.0
                    );
                    let _ = writeln!(
                        s,
                        r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
                        X1 + 8.0,
                        y + 14.0,
                        esc(&b.note)
                    );
                }
                None => {
                    let _ = writeln!(
                        s,
                        r##"<text x="{:.1}" y="{:.1}" fill="#b00">{}</text>"##,
                        X0 + 4.0,
                        y + 14.0,
                        esc(&b.note)
                    );
                }
            }
            y += ROW;
        }
    }
    s.push_str("</svg>\n");
    s
}

/// `10^k` seconds as `1 µs`, `10 ms`, `1 s`, ...
fn decade_label(k: i32) -> String {
    let (unit, base) = match k {
        ..=-10 => return format!("1e{k} s"),
        -9..=-7 => ("ns", -9),
        -6..=-4 => ("µs", -6),
        -3..=-1 => ("ms", -3),
        _ => ("s", 0),
    };
    format!("{} {unit}", 10u64.pow((k - base) as u32))
}

/// The smallest of 1, 1.2, 1.6, 2, 3, 4, 6, 8 × 10^k not below `v` (and above 0).
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 1.2, 1.6, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * p)
}

fn trim_num(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_bars_and_failures() {
        let g = Group {
            title: "64 MiB".into(),
            bars: vec![
                Bar {
                    label: "MAP_PRIVATE".into(),
                    value: Some(1e-3),
                    min: 9e-4,
                    max: 2e-3,
                    color: color("MAP_PRIVATE"),
                    note: "1 ms".into(),
                },
                Bar {
                    label: "lazy<x>".into(),
                    value: None,
                    min: 0.0,
                    max: 0.0,
                    color: color("lazy"),
                    note: "failed & <why>".into(),
                },
            ],
        };
        let svg = chart("t", "s", &[g], Axis::LogSeconds);
        assert!(svg.starts_with("<svg ") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<rect ").count(), 2); // background + one bar
        assert!(svg.contains("lazy&lt;x&gt;") && svg.contains("failed &amp; &lt;why&gt;"));
        assert_eq!(nice_ceiling(3.2), 4.0);
        assert_eq!(decade_label(-4), "100 µs");
        assert_eq!(decade_label(-3), "1 ms");
        assert_eq!(decade_label(1), "10 s");
        assert_eq!(nice_ceiling(10.0), 10.0);
    }
}
