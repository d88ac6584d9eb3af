//! A writer process that replaces a file's whole contents with another
//! file's (`pwrite` from offset 0, then `ftruncate` to the new length) —
//! a new version with another layout, as a program saving a structured
//! file in place does. It can open the file before it is told to write,
//! so that it *already holds it open* when a copy mapping is made.
//!
//! ```no_run
//! # fn main() -> Result<(), String> {
//! use mapcopy_check::rewrite::Rewriter;
//! # let (path, v2) = (std::path::Path::new("f"), std::path::Path::new("v2"));
//! let w = Rewriter::spawn(path, v2, true)?; // open now, write on `go`
//! // ... map `path` ...
//! w.rewrite()?;
//! # Ok(()) }
//! ```

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Stdio};

use crate::child;

/// Child entry point name.
pub const ENTRY: &str = "rewrite";

/// A started rewriter process, waiting for [`Rewriter::rewrite`].
#[derive(Debug)]
pub struct Rewriter {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Rewriter {
    /// Starts a process that will replace `path`'s contents with
    /// `new_contents`'s; with `open_now` it opens `path` for writing before
    /// this returns and keeps it open.
    pub fn spawn(path: &Path, new_contents: &Path, open_now: bool) -> Result<Rewriter, String> {
        let args = [
            path.display().to_string(),
            new_contents.display().to_string(),
            if open_now { "open-now" } else { "open-later" }.to_string(),
        ];
        let mut child = child::command(ENTRY, &args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawning the rewriter: {e}"))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        if line.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("the rewriter did not start: {line:?}"));
        }
        Ok(Rewriter {
            child,
            stdin,
            stdout,
        })
    }

    /// Tells it to rewrite the file and waits until it has.
    pub fn rewrite(mut self) -> Result<(), String> {
        writeln!(self.stdin, "go")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("telling the rewriter to go: {e}"))?;
        let mut line = String::new();
        let _ = self.stdout.read_line(&mut line);
        let status = self.child.wait().map_err(|e| format!("waiting: {e}"))?;
        if line.trim() == "ok" && status.success() {
            Ok(())
        } else {
            Err(format!("the rewriter failed ({status}): {line:?}"))
        }
    }
}

impl Drop for Rewriter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Child entry point: `PATH NEW_CONTENTS open-now|open-later`. Prints
/// `ready`, waits for a line, rewrites, prints `ok`.
pub fn child_main(args: &[String]) -> i32 {
    let [path, src, when] = args else {
        eprintln!("rewrite: expected PATH NEW_CONTENTS open-now|open-later");
        return 2;
    };
    let open = || OpenOptions::new().write(true).open(path);
    let early = if when == "open-now" {
        match open() {
            Ok(f) => Some(f),
            Err(e) => {
                println!("cannot open {path}: {e}");
                return 1;
            }
        }
    } else {
        None
    };
    println!("ready");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line).unwrap_or(0) == 0 {
        return 0;
    }
    let result = (|| -> std::io::Result<()> {
        let data = std::fs::read(src)?;
        let f = match early {
            Some(f) => f,
            None => open()?,
        };
        f.write_all_at(&data, 0)?;
        f.set_len(data.len() as u64)?;
        Ok(())
    })();
    match result {
        Ok(()) => {
            println!("ok");
            0
        }
        Err(e) => {
            println!("rewrite failed: {e}");
            1
        }
    }
}
