//! Page stamps: bytes that name where they came from.
//!
//! The file is cut into 4 KiB pages and each page into 64-byte chunks. A
//! writer never writes arbitrary bytes: the chunk it writes at page `p`,
//! chunk `c`, for version `v` is [`chunk`]`(p, v, c)`, which carries `p`,
//! `v`, `c` and a checksum. Reading any chunk back therefore tells which
//! page and version it was written as ([`Cell::Data`]), that it is all zero
//! ([`Cell::Zero`]: a hole, or past the end of the file), or that it is
//! neither ([`Cell::Garbage`]: a copy that raced a write inside the chunk).
//! A page is a run-length list of cells ([`Runs`]): the model says which
//! runs each page may hold, the readers report which runs they saw.

use std::fmt::{self, Write as _};

/// Bytes in a page of the model (the page size this oracle requires).
pub const PAGE: usize = 4096;
/// Bytes in a chunk, the unit a stamp is checked in.
pub const CHUNK: usize = 64;
/// Chunks in a page.
pub const CHUNKS: usize = PAGE / CHUNK;

const MAGIC: u64 = 0x4d43_5452; // "MCTR"

/// The hash stamps are made of.
pub use crate::prng::splitmix64 as mix;

/// What one chunk holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cell {
    /// All zero bytes: a hole, a zeroed range, or past the end of the file.
    Zero,
    /// The chunk written for page `origin`, version `version` (at the chunk
    /// index it is found at).
    Data {
        /// Page index the data was written to (data moved by collapse,
        /// insert, copy or clone keeps naming its origin page).
        origin: u64,
        /// Version: unique per writer operation, never 0.
        version: u64,
    },
    /// Neither: a torn chunk, a chunk found at the wrong index, or bytes no
    /// writer wrote.
    Garbage,
}

/// The 64 bytes written at page `origin`, chunk `c`, for `version`.
pub fn chunk(origin: u64, version: u64, c: usize) -> [u8; CHUNK] {
    let mut w = [0u64; 8];
    w[0] = (MAGIC << 32) | c as u64;
    w[1] = origin;
    w[2] = version;
    let seed = mix(origin ^ mix(version ^ (c as u64) << 48));
    for (i, x) in w.iter_mut().enumerate().take(7).skip(3) {
        *x = mix(seed.wrapping_add(i as u64));
    }
    w[7] = checksum(&w[..7]);
    let mut out = [0u8; CHUNK];
    for (i, x) in w.iter().enumerate() {
        out[i * 8..i * 8 + 8].copy_from_slice(&x.to_le_bytes());
    }
    out
}

fn checksum(w: &[u64]) -> u64 {
    w.iter().fold(0x5bd1_e995_u64, |h, &x| mix(h ^ x)) | 1
}

/// Decodes the chunk found at chunk index `c` of a page.
pub fn decode(bytes: &[u8], c: usize) -> Cell {
    debug_assert_eq!(bytes.len(), CHUNK);
    let mut w = [0u64; 8];
    for (i, x) in w.iter_mut().enumerate() {
        *x = u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap());
    }
    if w.iter().all(|&x| x == 0) {
        return Cell::Zero;
    }
    if w[0] != (MAGIC << 32) | c as u64 || w[7] != checksum(&w[..7]) || w[2] == 0 {
        return Cell::Garbage;
    }
    let cell = Cell::Data {
        origin: w[1],
        version: w[2],
    };
    // The filler must match too, or a chunk pasted together from two
    // stamps with the same header would pass.
    if chunk(w[1], w[2], c) != *bytes {
        return Cell::Garbage;
    }
    cell
}

/// Fills `buf` with the stamps of `version` for the file range starting at
/// byte `offset` (both chunk-aligned).
pub fn fill(buf: &mut [u8], offset: u64, version: u64) {
    debug_assert!(offset.is_multiple_of(CHUNK as u64) && buf.len().is_multiple_of(CHUNK));
    for (i, out) in buf.chunks_exact_mut(CHUNK).enumerate() {
        let x = offset + (i * CHUNK) as u64;
        let page = x / PAGE as u64;
        let c = (x % PAGE as u64) as usize / CHUNK;
        out.copy_from_slice(&chunk(page, version, c));
    }
}

/// The bytes a page holds when its cells are `runs` (used to restore a
/// file to a model state for `--replay`, and by tests).
pub fn render(runs: &Runs, out: &mut [u8]) {
    for c in 0..out.len() / CHUNK {
        let bytes = match runs.cell(c) {
            Cell::Zero | Cell::Garbage => [0u8; CHUNK],
            Cell::Data { origin, version } => chunk(origin, version, c),
        };
        out[c * CHUNK..(c + 1) * CHUNK].copy_from_slice(&bytes);
    }
}

/// A page as run-length encoded cells: `(end_chunk_exclusive, cell)`,
/// ends strictly increasing, the last one [`CHUNKS`] (or less, for a page
/// observed only up to the end of a mapping).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Runs(pub Vec<(u8, Cell)>);

impl Runs {
    /// A page that is one cell throughout.
    pub fn uniform(cell: Cell) -> Runs {
        Runs(vec![(CHUNKS as u8, cell)])
    }

    /// The cell at chunk `c` (Zero past the last run).
    pub fn cell(&self, c: usize) -> Cell {
        for &(end, cell) in &self.0 {
            if c < end as usize {
                return cell;
            }
        }
        Cell::Zero
    }

    /// Number of chunks covered.
    pub fn len(&self) -> usize {
        self.0.last().map_or(0, |r| r.0 as usize)
    }

    /// No chunks.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Builds runs from one cell per chunk.
    pub fn from_cells(cells: impl IntoIterator<Item = Cell>) -> Runs {
        let mut v: Vec<(u8, Cell)> = Vec::with_capacity(1);
        for (i, cell) in cells.into_iter().enumerate() {
            match v.last_mut() {
                Some(last) if last.1 == cell => last.0 = (i + 1) as u8,
                _ => v.push(((i + 1) as u8, cell)),
            }
        }
        Runs(v)
    }

    /// The first `n` chunks.
    pub fn prefix(&self, n: usize) -> Runs {
        Runs::from_cells((0..n).map(|c| self.cell(c)))
    }

    /// This page with chunks in `[from, to)` replaced by `cell`.
    pub fn with(&self, from: usize, to: usize, cell: Cell) -> Runs {
        Runs::from_cells((0..CHUNKS).map(|c| {
            if c >= from && c < to {
                cell
            } else {
                self.cell(c)
            }
        }))
    }

    /// Decodes the page bytes read back (up to 4096 bytes; fewer for a page
    /// cut by the end of the mapping).
    pub fn decode(bytes: &[u8]) -> Runs {
        Runs::from_cells(
            bytes
                .chunks_exact(CHUNK)
                .enumerate()
                .map(|(c, b)| decode(b, c)),
        )
    }

    /// Parses the text form written by `Display`.
    pub fn parse(s: &str) -> Option<Runs> {
        if s == "-" {
            return Some(Runs(Vec::new()));
        }
        let mut v = Vec::new();
        for part in s.split(',') {
            let (end, cell) = part.split_once('=')?;
            let end: u8 = end.parse().ok()?;
            let cell = match cell {
                "z" => Cell::Zero,
                "g" => Cell::Garbage,
                d => {
                    let (o, ver) = d.split_once('/')?;
                    Cell::Data {
                        origin: o.parse().ok()?,
                        version: u64::from_str_radix(ver, 16).ok()?,
                    }
                }
            };
            v.push((end, cell));
        }
        Some(Runs(v))
    }
}

impl fmt::Display for Runs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("-");
        }
        let mut s = String::new();
        for (i, (end, cell)) in self.0.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            match cell {
                Cell::Zero => write!(s, "{end}=z")?,
                Cell::Garbage => write!(s, "{end}=g")?,
                Cell::Data { origin, version } => write!(s, "{end}={origin}/{version:x}")?,
            }
        }
        f.write_str(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_tears_are_seen() {
        let mut page = vec![0u8; PAGE];
        fill(&mut page, 3 * PAGE as u64, 77);
        let r = Runs::decode(&page);
        assert_eq!(
            r,
            Runs::uniform(Cell::Data {
                origin: 3,
                version: 77
            })
        );
        assert_eq!(Runs::parse(&r.to_string()), Some(r.clone()));
        // Half of it from another version: two runs, no garbage.
        let mut other = vec![0u8; PAGE];
        fill(&mut other, 3 * PAGE as u64, 78);
        page[2048..].copy_from_slice(&other[2048..]);
        let r = Runs::decode(&page);
        assert_eq!(r.0.len(), 2);
        // A tear inside a chunk is garbage.
        page[24..32].copy_from_slice(&other[24..32]);
        assert_eq!(Runs::decode(&page).cell(0), Cell::Garbage);
        // Data written for another page index does not decode as this one's
        // at a different chunk index.
        assert_eq!(decode(&chunk(1, 5, 2), 3), Cell::Garbage);
        assert_eq!(decode(&[0u8; CHUNK], 0), Cell::Zero);
        let mut out = vec![0u8; PAGE];
        let runs = Runs::uniform(Cell::Data {
            origin: 9,
            version: 1,
        })
        .with(10, 20, Cell::Zero);
        render(&runs, &mut out);
        assert_eq!(Runs::decode(&out), runs);
    }
}
