//! The modifications `mapcopy demo` makes, run in a separate writer
//! process, and the model of what the file holds after each.
//!
//! File contents are versioned: [`fill`] gives the bytes of version `v` at
//! any offset (a hash of version and position, so every page of every
//! version differs). The demo file starts as version 1; every modification
//! writes version 2 bytes.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

/// The entry point name the writer runs under (see [`crate::child`]).
pub const WRITER: &str = "demo-writer";

/// Fills `buf` with the bytes of version `version` at file offsets
/// `offset..offset + buf.len()`.
///
/// ```
/// let mut a = [0u8; 16];
/// let mut b = [0u8; 8];
/// mapcopy_check::demo::fill(1, 0, &mut a);
/// mapcopy_check::demo::fill(1, 8, &mut b);
/// assert_eq!(&a[8..], &b);
/// ```
pub fn fill(version: u32, offset: u64, buf: &mut [u8]) {
    let mut i = 0;
    while i < buf.len() {
        let at = offset + i as u64;
        let word = crate::prng::splitmix64(((version as u64) << 48) ^ (at / 8)).to_le_bytes();
        let start = (at % 8) as usize;
        let n = (8 - start).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&word[start..start + n]);
        i += n;
    }
}

/// Writes `len` bytes of version `version` to `file` at its current
/// position (or at its end for `O_APPEND`), `start` being the file offset
/// the bytes belong at.
fn write_version(file: &mut File, version: u32, start: u64, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        fill(version, start + done, &mut buf[..n]);
        file.write_all(&buf[..n])?;
        done += n as u64;
    }
    Ok(())
}

/// Creates (or replaces) `path` holding `size` bytes of version 1 and
/// closes it, so no writer holds it open afterwards.
pub fn create(path: &Path, size: u64) -> io::Result<()> {
    let mut f = File::create(path)?;
    write_version(&mut f, 1, 0, size)
}

/// One modification of the demo, made by another process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Modification {
    /// `pwrite` of one page of version 2 at page index `page`.
    Pwrite {
        /// Page index.
        page: u64,
    },
    /// `ftruncate` to `shrink_to`, then an `O_APPEND` write of `len` bytes
    /// of version 2 (which land at `shrink_to`).
    AppendAfterShrink {
        /// Size after the shrink.
        shrink_to: u64,
        /// Bytes appended.
        len: u64,
    },
    /// `ftruncate` to `to` bytes.
    Truncate {
        /// New size.
        to: u64,
    },
    /// `open(O_WRONLY | O_TRUNC)` and a rewrite of `size` bytes of version 2.
    OTruncRewrite {
        /// Size written.
        size: u64,
    },
}

impl Modification {
    /// The file's size after this modification of a file of `size` bytes.
    pub fn new_size(&self, size: u64) -> u64 {
        match *self {
            Modification::Pwrite { .. } => size,
            Modification::AppendAfterShrink { shrink_to, len } => shrink_to + len,
            Modification::Truncate { to } => to,
            Modification::OTruncRewrite { size: s } => s,
        }
    }

    /// The version of the byte at `offset` after this modification of a
    /// version-1 file of `size` bytes, or `None` past the new end (reads as
    /// zero).
    pub fn version_at(&self, size: u64, offset: u64, page_size: u64) -> Option<u32> {
        if offset >= self.new_size(size) {
            return None;
        }
        Some(match *self {
            Modification::Pwrite { page } => {
                if offset / page_size == page {
                    2
                } else {
                    1
                }
            }
            Modification::AppendAfterShrink { shrink_to, .. } => {
                if offset >= shrink_to {
                    2
                } else {
                    1
                }
            }
            Modification::Truncate { .. } => 1,
            Modification::OTruncRewrite { .. } => 2,
        })
    }

    /// The bytes `[offset, offset + buf.len())` of the file after the
    /// modification (zero past its new end).
    pub fn expected(&self, size: u64, offset: u64, page_size: u64, buf: &mut [u8]) {
        // Runs of bytes with the same version, each filled at once.
        let mut i = 0;
        while i < buf.len() {
            let v = self.version_at(size, offset + i as u64, page_size);
            let mut end = i + 1;
            while end < buf.len() && self.version_at(size, offset + end as u64, page_size) == v {
                end += 1;
            }
            match v {
                Some(v) => fill(v, offset + i as u64, &mut buf[i..end]),
                None => buf[i..end].fill(0),
            }
            i = end;
        }
    }

    fn to_args(self, path: &Path, page_size: u64) -> Vec<String> {
        let p = path.display().to_string();
        match self {
            Modification::Pwrite { page } => {
                vec!["pwrite".into(), p, page.to_string(), page_size.to_string()]
            }
            Modification::AppendAfterShrink { shrink_to, len } => vec![
                "append-after-shrink".into(),
                p,
                shrink_to.to_string(),
                len.to_string(),
            ],
            Modification::Truncate { to } => vec!["truncate".into(), p, to.to_string()],
            Modification::OTruncRewrite { size } => {
                vec!["otrunc-rewrite".into(), p, size.to_string()]
            }
        }
    }

    /// A command that applies this modification to `path` in a new process
    /// (the current executable re-executed; its `main` must call
    /// [`crate::child::dispatch`] first).
    pub fn command(&self, path: &Path, page_size: u64) -> Command {
        crate::child::command(WRITER, &self.to_args(path, page_size))
    }

    /// Applies the modification in this process.
    pub fn apply(&self, path: &Path, page_size: u64) -> io::Result<()> {
        match *self {
            Modification::Pwrite { page } => {
                let f = OpenOptions::new().write(true).open(path)?;
                let off = page * page_size;
                let mut buf = vec![0u8; page_size as usize];
                fill(2, off, &mut buf);
                f.write_all_at(&buf, off)
            }
            Modification::AppendAfterShrink { shrink_to, len } => {
                OpenOptions::new()
                    .write(true)
                    .open(path)?
                    .set_len(shrink_to)?;
                let mut f = OpenOptions::new().append(true).open(path)?;
                write_version(&mut f, 2, shrink_to, len)
            }
            Modification::Truncate { to } => OpenOptions::new().write(true).open(path)?.set_len(to),
            Modification::OTruncRewrite { size } => {
                // File::create is open(O_WRONLY | O_CREAT | O_TRUNC).
                let mut f = File::create(path)?;
                write_version(&mut f, 2, 0, size)
            }
        }
    }
}

/// The writer process: parses the arguments [`Modification::command`]
/// made and applies the modification. Returns the exit status.
pub fn writer_main(args: &[String]) -> i32 {
    let num = |i: usize| -> Option<u64> { args.get(i)?.parse().ok() };
    let parsed = match args.first().map(String::as_str) {
        Some("pwrite") => num(2)
            .zip(num(3))
            .map(|(page, ps)| (Modification::Pwrite { page }, ps)),
        Some("append-after-shrink") => num(2)
            .zip(num(3))
            .map(|(shrink_to, len)| (Modification::AppendAfterShrink { shrink_to, len }, 1)),
        Some("truncate") => num(2).map(|to| (Modification::Truncate { to }, 1)),
        Some("otrunc-rewrite") => num(2).map(|size| (Modification::OTruncRewrite { size }, 1)),
        _ => None,
    };
    let (Some((m, page_size)), Some(path)) = (parsed, args.get(1)) else {
        eprintln!("{WRITER}: bad arguments {args:?}");
        return 2;
    };
    match m.apply(Path::new(path), page_size) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{WRITER}: {m:?} on {path}: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_matches_what_the_writer_does() {
        let ps = 4096u64;
        let size = 10 * ps + 100;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        for m in [
            Modification::Pwrite { page: 3 },
            Modification::AppendAfterShrink {
                shrink_to: 7 * ps + ps / 2,
                len: ps,
            },
            Modification::Truncate { to: size / 2 },
            Modification::OTruncRewrite { size },
        ] {
            create(&path, size).unwrap();
            m.apply(&path, ps).unwrap();
            let got = std::fs::read(&path).unwrap();
            assert_eq!(got.len() as u64, m.new_size(size), "{m:?}");
            let mut want = vec![0u8; got.len()];
            m.expected(size, 0, ps, &mut want);
            assert!(got == want, "{m:?}: file differs from the model");
            let mut v1 = vec![0u8; size as usize];
            fill(1, 0, &mut v1);
            assert!(got != v1, "{m:?} changed nothing");
        }
    }
}
