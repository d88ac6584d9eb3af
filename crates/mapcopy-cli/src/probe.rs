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

/// Hand-written JSON (the schema is small and fixed; no serde needed).
fn to_json(p: &Probe) -> String {
    let mut o = String::from("{\n");
    let _ = writeln!(o, "  \"kernel\": {},", js(&p.kernel));
    let _ = writeln!(
        o,
        "  \"path\": {},",
        p.path
            .as_ref()
            .map_or("null".into(), |x| js(&x.display().to_string()))
    );
    let fs = match &p.filesystem {
        Some(Ok(fs)) => format!("{{\"name\": {}}}", js(fs)),
        Some(Err(e)) => format!("{{\"error\": {}}}", js(e)),
        None => "null".into(),
    };
    let _ = writeln!(o, "  \"filesystem\": {fs},");
    o.push_str("  \"facts\": [\n");
    for (i, f) in p.facts.iter().enumerate() {
        let avail = f
            .available
            .map_or("null", |b| if b { "true" } else { "false" });
        let _ = write!(
            o,
            "    {{\"topic\": {}, \"available\": {avail}, \"finding\": {}}}",
            js(f.topic),
            js(&f.finding)
        );
        o.push_str(if i + 1 < p.facts.len() { ",\n" } else { "\n" });
    }
    o.push_str("  ],\n  \"strategies\": [\n");
    for (i, s) in p.strategies.iter().enumerate() {
        let (usable, text) = match &s.usable {
            Ok(how) => (true, how),
            Err(why) => (false, why),
        };
        let lacks: Vec<String> = s.lacks.iter().map(|l| js(l)).collect();
        let _ = write!(
            o,
            "    {{\"strategy\": {}, \"usable\": {usable}, \"{}\": {}, \"lacks\": [{}]}}",
            js(s.strategy.name()),
            if usable { "how" } else { "reason" },
            js(text),
            lacks.join(", ")
        );
        o.push_str(if i + 1 < p.strategies.len() {
            ",\n"
        } else {
            "\n"
        });
    }
    o.push_str("  ],\n");
    match &p.auto {
        Ok(s) => {
            let _ = writeln!(o, "  \"auto\": {},\n  \"auto_error\": null", js(s.name()));
        }
        Err(e) => {
            let _ = writeln!(o, "  \"auto\": null,\n  \"auto_error\": {}", js(e));
        }
    }
    o.push('}');
    o
}

/// A JSON string literal for `s` (RFC 8259 escaping).
fn js(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

#[cfg(test)]
mod tests {
    use super::js;

    #[test]
    fn escapes_json_strings() {
        assert_eq!(js("plain"), "\"plain\"");
        assert_eq!(js("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(js("l1\nl2\t\u{1}"), "\"l1\\nl2\\t\\u0001\"");
        assert_eq!(js("ünï"), "\"ünï\"");
    }
}
