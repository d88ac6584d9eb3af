//! Writer operations: what they are, how they are chosen, how they are
//! logged, and what each does to the model of the file.
//!
//! An [`Op`] carries every parameter its execution needs, so the log is
//! enough to replay it. Writers hold a lock around each op, so ops never
//! overlap in time: the log, sorted by start time, is the order the file saw
//! them in, and the model replays it exactly (see [`crate::torture::model`]).

use std::fmt;

use super::stamp::{CHUNK, PAGE};

/// Every modification kind of the contract's S2 (the `mapcopy` crate docs),
/// as the torture writers apply
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `lseek` + `write(2)`.
    Write,
    /// `pwrite(2)`.
    Pwrite,
    /// `lseek` + `writev(2)` with the buffer cut into several iovecs.
    Writev,
    /// `write(2)` on a file opened `O_APPEND`.
    Append,
    /// `ftruncate(2)` to a smaller or larger size.
    Truncate,
    /// `open(O_TRUNC)`, then write the file anew from offset 0.
    OTrunc,
    /// `open(O_RDONLY | O_TRUNC)` (Linux truncates on it, given write
    /// permission), then a separate open writes the file anew.
    RdOnlyTrunc,
    /// `fallocate(PUNCH_HOLE | KEEP_SIZE)`.
    Punch,
    /// `fallocate(ZERO_RANGE | KEEP_SIZE)`.
    ZeroRange,
    /// `fallocate(COLLAPSE_RANGE)`: removes pages, later ones move down.
    Collapse,
    /// `fallocate(INSERT_RANGE)`: inserts a hole, later pages move up.
    Insert,
    /// `copy_file_range(2)` within the file.
    CopyRange,
    /// `ioctl(FICLONERANGE)` within the file.
    CloneRange,
    /// `pwrite(2)` on a file opened `O_DIRECT`.
    Direct,
    /// `IORING_OP_WRITE` through io_uring.
    Uring,
    /// Stores through a `MAP_SHARED` mapping made by the writer.
    MmapStore,
}

impl Kind {
    /// All kinds, in a fixed order.
    pub const ALL: [Kind; 16] = [
        Kind::Write,
        Kind::Pwrite,
        Kind::Writev,
        Kind::Append,
        Kind::Truncate,
        Kind::OTrunc,
        Kind::RdOnlyTrunc,
        Kind::Punch,
        Kind::ZeroRange,
        Kind::Collapse,
        Kind::Insert,
        Kind::CopyRange,
        Kind::CloneRange,
        Kind::Direct,
        Kind::Uring,
        Kind::MmapStore,
    ];

    /// Short name used in logs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Write => "write",
            Kind::Pwrite => "pwrite",
            Kind::Writev => "writev",
            Kind::Append => "append",
            Kind::Truncate => "truncate",
            Kind::OTrunc => "otrunc",
            Kind::RdOnlyTrunc => "rdtrunc",
            Kind::Punch => "punch",
            Kind::ZeroRange => "zero",
            Kind::Collapse => "collapse",
            Kind::Insert => "insert",
            Kind::CopyRange => "copy",
            Kind::CloneRange => "clone",
            Kind::Direct => "direct",
            Kind::Uring => "uring",
            Kind::MmapStore => "mmap",
        }
    }

    /// Parses [`Kind::name`].
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Bit of this kind in a kind mask.
    pub fn bit(self) -> u32 {
        1 << (self as u32)
    }

    /// Mask of every kind.
    pub fn all_mask() -> u32 {
        Kind::ALL.iter().fold(0, |m, k| m | k.bit())
    }

    /// Kinds in `mask`.
    pub fn in_mask(mask: u32) -> Vec<Kind> {
        Kind::ALL
            .into_iter()
            .filter(|k| mask & k.bit() != 0)
            .collect()
    }
}

/// One writer operation, fully parameterized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// What it does.
    pub kind: Kind,
    /// Target offset (bytes). For `Append` the file size, for `Truncate`
    /// and `OTrunc` unused (0).
    pub off: u64,
    /// Length in bytes (for `Truncate` the new size; for `OTrunc` the
    /// length written after truncation).
    pub len: u64,
    /// Source offset for `CopyRange`/`CloneRange`; iovec-split seed for
    /// `Writev`.
    pub src: u64,
    /// Version stamped into the data this op writes (unique, non-zero).
    pub version: u64,
    /// Open the file through its second hard link.
    pub link: bool,
}

/// A logged op: the op, the file size the writer saw before it (under the
/// lock), its CLOCK_MONOTONIC start and end, and its outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    /// The op.
    pub op: Op,
    /// File size before the op.
    pub size_before: u64,
    /// CLOCK_MONOTONIC ns just before the first syscall of the op.
    pub start: u64,
    /// CLOCK_MONOTONIC ns just after the last syscall of the op.
    pub end: u64,
    /// Bytes done (copy/write count), or `-errno` if the op failed before
    /// changing anything.
    pub result: i64,
    /// Writer that ran it.
    pub writer: u32,
}

impl fmt::Display for Logged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.op;
        write!(
            f,
            "op {} {} {} {} {} {:x} {} {} {} {}",
            self.writer,
            o.kind.name(),
            o.off,
            o.len,
            o.src,
            o.version,
            o.link as u8,
            self.size_before,
            self.start,
            self.end,
        )?;
        write!(f, " {}", self.result)
    }
}

impl Logged {
    /// Parses a line written by `Display`.
    pub fn parse(line: &str) -> Option<Logged> {
        let mut it = line.split_ascii_whitespace();
        if it.next()? != "op" {
            return None;
        }
        let writer = it.next()?.parse().ok()?;
        let kind = Kind::parse(it.next()?)?;
        let off = it.next()?.parse().ok()?;
        let len = it.next()?.parse().ok()?;
        let src = it.next()?.parse().ok()?;
        let version = u64::from_str_radix(it.next()?, 16).ok()?;
        let link = it.next()? == "1";
        let size_before = it.next()?.parse().ok()?;
        let start = it.next()?.parse().ok()?;
        let end = it.next()?.parse().ok()?;
        let result = it.next()?.parse().ok()?;
        Some(Logged {
            op: Op {
                kind,
                off,
                len,
                src,
                version,
                link,
            },
            size_before,
            start,
            end,
            result,
            writer,
        })
    }
}

pub use crate::prng::Rng;

const P: u64 = PAGE as u64;
const C: u64 = CHUNK as u64;

/// Largest op length in pages.
const MAX_OP_PAGES: u64 = 8;

/// Picks the next op for a file of `size` bytes that may grow to `max`
/// bytes, among the kinds in `mask`. Returns `None` when no enabled kind
/// fits this size (the caller tries again with another draw).
pub fn generate(rng: &mut Rng, mask: u32, size: u64, max: u64, version: u64) -> Option<Op> {
    let kinds = Kind::in_mask(mask);
    let kind = kinds[rng.below(kinds.len() as u64) as usize];
    let link = rng.chance(1, 4);
    let floor_p = size / P * P;
    let chunks = |rng: &mut Rng, max_bytes: u64| -> u64 {
        // A length in chunks, often whole pages, at most max_bytes.
        let n = if rng.chance(1, 2) {
            rng.range(1, MAX_OP_PAGES) * P
        } else {
            rng.range(1, MAX_OP_PAGES * P / C) * C
        };
        n.min(max_bytes) / C * C
    };
    let mut op = Op {
        kind,
        off: 0,
        len: 0,
        src: 0,
        version,
        link,
    };
    match kind {
        Kind::Write | Kind::Pwrite | Kind::Writev | Kind::Uring => {
            // Anywhere up to two pages past the end (making a hole).
            let hi = (size + 2 * P).min(max - C) / C;
            op.off = rng.range(0, hi) * C;
            op.len = chunks(rng, max - op.off);
            op.src = rng.next_u64();
        }
        Kind::Direct => {
            let hi = (size.div_ceil(P) + 1).min(max / P - 1);
            op.off = rng.range(0, hi) * P;
            op.len = rng.range(1, MAX_OP_PAGES).min((max - op.off) / P) * P;
        }
        Kind::Append => {
            op.off = size;
            if size + C > max {
                return None;
            }
            op.len = chunks(rng, max - size);
        }
        Kind::Truncate => {
            op.len = rng.range(0, max / C) * C;
        }
        Kind::OTrunc | Kind::RdOnlyTrunc => {
            op.len = rng.range(0, max / C) * C;
        }
        Kind::Punch | Kind::ZeroRange | Kind::MmapStore => {
            if size < C {
                return None;
            }
            op.off = rng.below(size / C) * C;
            op.len = chunks(rng, size - op.off);
        }
        Kind::Collapse => {
            // offset + len must stay below the size.
            let pages = size.div_ceil(P);
            if pages < 2 {
                return None;
            }
            let at = rng.below(pages - 1);
            let room = (size - 1) / P - at; // pages removable keeping off+len < size
            if room == 0 {
                return None;
            }
            op.off = at * P;
            op.len = rng.range(1, room.min(MAX_OP_PAGES)) * P;
        }
        Kind::Insert => {
            if size == 0 || size + P > max {
                return None;
            }
            op.off = rng.below(size.div_ceil(P)) * P;
            if op.off >= size {
                return None;
            }
            op.len = rng.range(1, ((max - size) / P).min(MAX_OP_PAGES)) * P;
        }
        Kind::CopyRange | Kind::CloneRange => {
            // Whole pages, source inside the file, target not overlapping.
            let pages = floor_p / P;
            if pages < 2 {
                return None;
            }
            let n = rng.range(1, (pages / 2).min(MAX_OP_PAGES));
            op.src = rng.range(0, pages - n) * P;
            op.len = n * P;
            let dst_hi = if kind == Kind::CloneRange {
                pages - n
            } else {
                (max / P - n).min(pages)
            };
            op.off = rng.range(0, dst_hi) * P;
            if op.off < op.src + op.len && op.src < op.off + op.len {
                return None;
            }
        }
    }
    if op.len == 0 && !matches!(kind, Kind::Truncate | Kind::OTrunc | Kind::RdOnlyTrunc) {
        return None;
    }
    Some(op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::torture::model::Model;

    /// Every generated op is well-formed for the size it was drawn for, and
    /// the model applying it stays inside the maximum size.
    #[test]
    fn generated_ops_fit_the_file() {
        let max = 64 * P;
        let mut model = Model::new(8 * P, max, 1);
        let mut rng = Rng::new(3);
        let mut seen = std::collections::BTreeSet::new();
        for v in 2..50_000u64 {
            let size = model.size;
            let Some(op) = generate(&mut rng, Kind::all_mask(), size, max, v) else {
                continue;
            };
            seen.insert(op.kind);
            assert_eq!(op.off % C, 0, "{op:?}");
            assert_eq!(op.len % C, 0, "{op:?}");
            match op.kind {
                Kind::Collapse => {
                    assert!(op.off + op.len < size && op.off % P == 0 && op.len % P == 0)
                }
                Kind::Insert => assert!(op.off < size && size + op.len <= max && op.off % P == 0),
                Kind::CopyRange | Kind::CloneRange => {
                    assert!(op.src + op.len <= size && op.off + op.len <= max);
                    assert!(
                        op.off >= op.src + op.len || op.src >= op.off + op.len,
                        "{op:?}"
                    );
                }
                Kind::MmapStore | Kind::Punch | Kind::ZeroRange => assert!(op.off + op.len <= size),
                Kind::Direct => {
                    assert!(op.off % P == 0 && op.len % P == 0 && op.off + op.len <= max)
                }
                Kind::Truncate | Kind::OTrunc | Kind::RdOnlyTrunc => assert!(op.len <= max),
                _ => assert!(op.off + op.len <= max),
            }
            let l = Logged {
                result: op.len as i64,
                op,
                size_before: size,
                start: v * 10,
                end: v * 10 + 5,
                writer: 1,
            };
            model.apply(&l, &mut |_, _| {}).unwrap();
            assert!(model.size <= max && model.size.is_multiple_of(C));
        }
        assert_eq!(seen.len(), Kind::ALL.len(), "every kind drawn: {seen:?}");
    }
}
