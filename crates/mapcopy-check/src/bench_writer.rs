//! The writer half of `mapcopy bench`'s writer-cost measurement.
//!
//! A copy mapping can make *other* processes pay: a `Guard` answers a
//! fanotify event before each of their writes, a `Lease` makes the first
//! writer's `open` wait until the range is snapshotted. To see that cost the
//! writer must be another process, so [`measure`] re-executes the running
//! binary (see [`crate::child`]) as entry point [`ENTRY`], which first opens
//! the file read-only and `pread`s 4 KiB blocks of successive pages (what
//! any other reader pays), then opens it for writing and `pwrite`s them
//! twice over, timing each `open` and each loop separately. The first pass
//! writes pages a copy may still share with the file; by the second a copy
//! that saves pages (`Kernel`) holds none of them any more.
//!
//! [`measure_op`] times one whole-file operation in another process the
//! same way: a truncation to 0 or a rewrite of every byte.
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
    /// Microseconds its `open(O_RDONLY)` took.
    pub open_read_us: f64,
    /// Microseconds per 4 KiB `pread`, averaged over the read loop (as many
    /// reads as writes, same offsets, before any write).
    pub us_per_read: f64,
    /// Microseconds its `open(O_WRONLY)` took (a `Lease` snapshots during it).
    pub open_us: f64,
    /// Microseconds per 4 KiB `pwrite`, averaged over the loop.
    pub us_per_write: f64,
    /// Microseconds per 4 KiB `pwrite` of a second loop over the same
    /// blocks, right after the first.
    pub us_per_rewrite: f64,
    /// Number of writes in the loop.
    pub writes: usize,
}

/// Runs the writer in a new process on `path`: `writes` 4 KiB `pread`s,
/// then `writes` 4 KiB `pwrite`s of the byte `fill`, block `i` at offset `4096 * i` modulo the file's size
/// rounded down to whole blocks, then the same `pwrite`s again (of
/// `fill + 1`). Returns what the child measured (process
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
    let fields: Vec<u64> = text
        .split_whitespace()
        .map(str::parse::<u64>)
        .collect::<Result<_, _>>()
        .unwrap_or_default();
    match fields[..] {
        [ro_open_ns, read_ns, open_ns, loop_ns, loop2_ns, n] if n > 0 => Ok(WriterCost {
            open_read_us: ro_open_ns as f64 / 1e3,
            us_per_read: read_ns as f64 / 1e3 / n as f64,
            open_us: open_ns as f64 / 1e3,
            us_per_write: loop_ns as f64 / 1e3 / n as f64,
            us_per_rewrite: loop2_ns as f64 / 1e3 / n as f64,
            writes: n as usize,
        }),
        _ => Err(io::Error::other(format!(
            "writer process printed {:?}, expected \"RO_OPEN_NS READ_NS OPEN_NS LOOP_NS LOOP2_NS WRITES\"",
            text.trim()
        ))),
    }
}

/// The child's side: `ARGS = PATH WRITES FILL`. Prints
/// `RO_OPEN_NS READ_NS OPEN_NS LOOP_NS LOOP2_NS WRITES` on stdout; returns
/// the exit status.
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
    let t = Instant::now();
    let reader = std::fs::File::open(path).map_err(|e| format!("opening {path}: {e}"))?;
    let ro_opened = t.elapsed();
    let blocks = reader
        .metadata()
        .map_err(|e| format!("fstat {path}: {e}"))?
        .len()
        / BLOCK as u64;
    if blocks == 0 {
        return Err(format!("{path} is smaller than one {BLOCK}-byte block"));
    }
    let mut rbuf = [0u8; BLOCK];
    let t = Instant::now();
    for i in 0..writes as u64 {
        reader
            .read_exact_at(&mut rbuf, (i % blocks) * BLOCK as u64)
            .map_err(|e| format!("pread {path}: {e}"))?;
    }
    let read = t.elapsed();
    drop(reader);
    let t0 = Instant::now();
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| format!("opening {path} for writing: {e}"))?;
    let opened = t0.elapsed();
    let buf = [fill; BLOCK];
    let t1 = Instant::now();
    for i in 0..writes as u64 {
        file.write_all_at(&buf, (i % blocks) * BLOCK as u64)
            .map_err(|e| format!("pwrite {path}: {e}"))?;
    }
    let looped = t1.elapsed();
    let buf = [fill.wrapping_add(1); BLOCK];
    let t2 = Instant::now();
    for i in 0..writes as u64 {
        file.write_all_at(&buf, (i % blocks) * BLOCK as u64)
            .map_err(|e| format!("pwrite {path}: {e}"))?;
    }
    let looped2 = t2.elapsed();
    Ok(format!(
        "{} {} {} {} {} {writes}",
        ro_opened.as_nanos(),
        read.as_nanos(),
        opened.as_nanos(),
        looped.as_nanos(),
        looped2.as_nanos()
    ))
}

/// Name of [`measure_op`]'s child entry point.
pub const OP_ENTRY: &str = "bench-file-op";

/// A whole-file operation for [`measure_op`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileOp {
    /// `ftruncate(fd, 0)`.
    Truncate,
    /// `pwrite` every byte of the file (1 MiB per call) with this byte.
    Rewrite(u8),
}

/// Runs `op` on `path` in a new process and returns the microseconds it
/// took there: the `open(O_WRONLY)` and the operation (process start-up
/// not included).
pub fn measure_op(path: &Path, op: FileOp) -> io::Result<f64> {
    let op = match op {
        FileOp::Truncate => "truncate".to_string(),
        FileOp::Rewrite(fill) => format!("rewrite:{fill}"),
    };
    let args = [path.to_string_lossy().into_owned(), op];
    let out = crate::child::command(OP_ENTRY, &args)
        .stderr(std::process::Stdio::inherit())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.trim().parse::<u64>() {
        Ok(ns) if out.status.success() => Ok(ns as f64 / 1e3),
        _ => Err(io::Error::other(format!(
            "file-op process failed ({}): {}",
            out.status,
            text.trim()
        ))),
    }
}

/// [`measure_op`]'s child: `ARGS = PATH truncate|rewrite:FILL`. Prints the
/// nanoseconds on stdout; returns the exit status.
pub fn op_child_main(args: &[String]) -> i32 {
    match op_child(args) {
        Ok(ns) => {
            println!("{ns}");
            0
        }
        Err(e) => {
            eprintln!("bench-file-op: {e}");
            1
        }
    }
}

fn op_child(args: &[String]) -> Result<u128, String> {
    let [path, op] = args else {
        return Err(format!("expected PATH OP, got {args:?}"));
    };
    let t = Instant::now();
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| format!("opening {path} for writing: {e}"))?;
    if op == "truncate" {
        file.set_len(0)
            .map_err(|e| format!("ftruncate {path}: {e}"))?;
    } else if let Some(fill) = op.strip_prefix("rewrite:") {
        let fill: u8 = fill
            .parse()
            .map_err(|e| format!("bad fill byte {fill:?}: {e}"))?;
        let len = file
            .metadata()
            .map_err(|e| format!("fstat {path}: {e}"))?
            .len();
        let buf = vec![fill; 1 << 20];
        let mut off = 0;
        while off < len {
            let n = (len - off).min(buf.len() as u64) as usize;
            file.write_all_at(&buf[..n], off)
                .map_err(|e| format!("pwrite {path}: {e}"))?;
            off += n as u64;
        }
    } else {
        return Err(format!("unknown operation {op:?}"));
    }
    Ok(t.elapsed().as_nanos())
}
