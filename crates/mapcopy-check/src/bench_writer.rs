//! The writer half of `mapcopy bench`'s writer-cost measurement.
//!
//! A copy mapping can make *other* processes pay: a `Guard` answers a
//! fanotify event before each of their writes, a `Lease` makes the first
//! writer's `open` wait until the range is snapshotted. To see that cost the
//! writer must be another process, so [`measure`] re-executes the running
//! binary (see [`crate::child`]) as entry point [`ENTRY`], which opens the
//! file for writing and `pwrite`s 4 KiB blocks to successive pages, timing
//! the `open` and the write loop separately.
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! mapcopy_check::child::dispatch(); // first thing in main
//! let cost = mapcopy_check::bench_writer::measure("/tmp/some-file".as_ref(), 1024, 0xab)?;
//! println!("open {:.1} µs, {:.2} µs per 4 KiB pwrite", cost.open_us, cost.us_per_write);
//! # Ok(())
//! # }
//! ```

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

/// Name of the child entry point (see [`crate::child::dispatch`]).
pub const ENTRY: &str = "bench-writer";

/// Size of each write.
pub const BLOCK: usize = 4096;

/// What one writer process measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WriterCost {
    /// Microseconds its `open(O_WRONLY)` took (a `Lease` snapshots during it).
    pub open_us: f64,
    /// Microseconds per 4 KiB `pwrite`, averaged over the loop.
    pub us_per_write: f64,
    /// Number of writes in the loop.
    pub writes: usize,
}

/// Runs the writer in a new process on `path`: `writes` 4 KiB `pwrite`s of
/// the byte `fill`, block `i` at offset `4096 * i` modulo the file's size
/// rounded down to whole blocks. Returns what the child measured (process
/// start-up is not included).
pub fn measure(path: &Path, writes: usize, fill: u8) -> io::Result<WriterCost> {
    let args = [
        path.to_string_lossy().into_owned(),
        writes.to_string(),
        fill.to_string(),
    ];
    let out = crate::child::command(ENTRY, &args)
        .stderr(std::process::Stdio::inherit())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "writer process failed ({}): {}",
            out.status,
            text.trim()
        )));
    }
    let mut fields = text.split_whitespace().map(str::parse::<u64>);
    match (fields.next(), fields.next(), fields.next()) {
        (Some(Ok(open_ns)), Some(Ok(loop_ns)), Some(Ok(n))) if n > 0 => Ok(WriterCost {
            open_us: open_ns as f64 / 1e3,
            us_per_write: loop_ns as f64 / 1e3 / n as f64,
            writes: n as usize,
        }),
        _ => Err(io::Error::other(format!(
            "writer process printed {:?}, expected \"OPEN_NS LOOP_NS WRITES\"",
            text.trim()
        ))),
    }
}

/// The child's side: `ARGS = PATH WRITES FILL`. Prints
/// `OPEN_NS LOOP_NS WRITES` on stdout; returns the exit status.
pub fn child_main(args: &[String]) -> i32 {
    match child(args) {
        Ok(line) => {
            println!("{line}");
            0
        }
        Err(e) => {
            eprintln!("bench-writer: {e}");
            1
        }
    }
}

fn child(args: &[String]) -> Result<String, String> {
    let [path, writes, fill] = args else {
        return Err(format!("expected PATH WRITES FILL, got {args:?}"));
    };
    let writes: usize = writes
        .parse()
        .map_err(|e| format!("bad write count {writes:?}: {e}"))?;
    let fill: u8 = fill
        .parse()
        .map_err(|e| format!("bad fill byte {fill:?}: {e}"))?;
    let t0 = Instant::now();
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| format!("opening {path} for writing: {e}"))?;
    let opened = t0.elapsed();
    let blocks = file
        .metadata()
        .map_err(|e| format!("fstat {path}: {e}"))?
        .len()
        / BLOCK as u64;
    if blocks == 0 {
        return Err(format!("{path} is smaller than one {BLOCK}-byte block"));
    }
    let buf = [fill; BLOCK];
    let t1 = Instant::now();
    for i in 0..writes as u64 {
        file.write_all_at(&buf, (i % blocks) * BLOCK as u64)
            .map_err(|e| format!("pwrite {path}: {e}"))?;
    }
    let looped = t1.elapsed();
    Ok(format!(
        "{} {} {writes}",
        opened.as_nanos(),
        looped.as_nanos()
    ))
}
