//! `mapcopy probe [PATH] [--json]`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use mapcopy::Probe;

/// Arguments of `mapcopy probe`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// File to probe; without it, what holds for any file on this machine.
    path: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs the probe and prints it. Exit status 0 unless PATH cannot be mapped
/// at all (then 1).
pub fn run(args: Args) -> ExitCode {
    let p = mapcopy::probe(args.path.as_deref());
    let out = if args.json {
        to_json(&p) + "\n"
    } else {
        to_text(&p)
    };
    // A closed stdout (`mapcopy probe | head`) is not an error worth a panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
    if p.auto.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn to_text(p: &Probe) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "kernel       {}", p.kernel);
    if let Some(path) = &p.path {
        let fs = match &p.filesystem {
            Some(Ok(fs)) => fs.clone(),
            Some(Err(e)) => e.clone(),
            None => "?".into(),
        };
        let _ = writeln!(out, "file         {} ({fs})", path.display());
    }
    // When the file itself cannot be mapped, every file-dependent line
    // would repeat that reason: say it once.
    let file_err = match &p.filesystem {
        Some(Err(e)) => Some(e.as_str()),
        _ => None,
    };
    let said = |text: &str| -> String {
        if Some(text) == file_err {
            "not for this file (see above)".into()
        } else {
            text.into()
        }
    };
    out.push_str("\ndetected\n");
    for f in &p.facts {
        let mark = match f.available {
            Some(true) => "yes",
            Some(false) => "no",
            None => "-",
        };
        let _ = writeln!(out, "  {:<13}{mark:<5}{}", f.topic, said(&f.finding));
    }
    out.push_str("\nstrategies (in the order auto tries them)\n");
    for s in &p.strategies {
        let (mark, text) = match &s.usable {
            Ok(how) => ("usable", how),
            Err(why) => ("no", why),
        };
        let pick = if p.auto.as_ref().ok() == Some(&s.strategy) {
            "*"
        } else {
            " "
        };
        let _ = writeln!(
            out,
            "{pick} {:<10}{mark:<8}{}",
            s.strategy.name(),
            said(text)
        );
        if s.usable.is_ok() {
            for l in &s.lacks {
                let _ = writeln!(out, "{:<20}lacks: {l}", "");
            }
        }
    }
    match &p.auto {
        Ok(s) => {
            let _ = writeln!(
                out,
                "\nauto picks: {s}{}",
                if p.path.is_some() {
                    " for this file"
                } else {
                    ""
                }
            );
        }
        Err(e) => {
            let _ = writeln!(out, "\nauto picks nothing: {}", said(e));
        }
    }
    out
}

/// `probe --json`: the same facts as the text, for programs. A strategy's
/// explanation is under `how` when it is usable, else `reason`.
fn to_json(p: &Probe) -> String {
    use serde_json::{Value, json};
    let filesystem = match &p.filesystem {
        Some(Ok(fs)) => json!({ "name": fs }),
        Some(Err(e)) => json!({ "error": e }),
        None => Value::Null,
    };
    let facts: Vec<Value> = p
        .facts
        .iter()
        .map(|f| json!({ "topic": f.topic, "available": f.available, "finding": f.finding }))
        .collect();
    let strategies: Vec<Value> = p
        .strategies
        .iter()
        .map(|s| {
            let (key, text) = match &s.usable {
                Ok(how) => ("how", how),
                Err(why) => ("reason", why),
            };
            let mut o = serde_json::Map::new();
            o.insert("strategy".into(), json!(s.strategy.name()));
            o.insert("usable".into(), json!(s.usable.is_ok()));
            o.insert(key.into(), json!(text));
            o.insert("lacks".into(), json!(s.lacks));
            Value::Object(o)
        })
        .collect();
    let v = json!({
        "kernel": p.kernel,
        "path": p.path.as_ref().map(|x| x.display().to_string()),
        "filesystem": filesystem,
        "facts": facts,
        "strategies": strategies,
        "auto": p.auto.as_ref().ok().map(|s| s.name()),
        "auto_error": p.auto.as_ref().err(),
    });
    serde_json::to_string_pretty(&v).expect("a JSON value always serializes")
}
