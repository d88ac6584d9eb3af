//! The naive oracle: a list of every state the file went through since the
//! mapping was made, and a checker that holds a mapping to the contract.
//!
//! For each file page the mapping covers, the checker knows
//!
//! * S1: a page read for the first time must equal that page of *some*
//!   state the file was in since the mapping was made (bytes past that
//!   state's end read as zero) — the old bytes or a newer version, nothing
//!   else (not a mix, not zeros where the file had data, not garbage);
//! * S2: a page read before must read exactly as it did then.
//!
//! It works on file pages: with an unaligned offset the first and last pages
//! are partial, and only the mapped bytes of each are compared.
//!
//! ```
//! use mapcopy_check::oracle::{Checker, Plain};
//! use mapcopy_check::pattern;
//! let old = pattern::bytes(0, 0, 8192);
//! let mut c = Checker::new(4096, 0, 8192, old.clone());
//! let snapshot = old.clone();                     // a perfect copy mapping
//! c.touch(&Plain(&snapshot), [0])?;               // read page 0
//! c.push_state(pattern::bytes(1, 0, 8192));       // someone rewrote the file
//! c.touch_all(&Plain(&snapshot))?;                // old bytes: fine
//! let follows = pattern::bytes(1, 0, 8192);       // a mapping that follows the file
//! assert!(c.touch(&Plain(&follows), [0]).is_err()); // page 0 changed after it was read
//! # Ok::<(), mapcopy_check::oracle::Violation>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use crate::pattern;

/// Something the checker can read mapped bytes from.
pub trait Source {
    /// Mapped length in bytes.
    fn len(&self) -> usize;
    /// Is the mapping empty?
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copies mapped bytes `start .. start + out.len()` into `out`. `Err`
    /// means the read would fault (a simulated `SIGBUS`).
    fn read(&self, start: usize, out: &mut [u8]) -> Result<(), String>;
}

/// Reads a byte slice with volatile loads, so that each check really reads
/// the memory again (a copy mapping must not change, but the checker must
/// be able to see it if it does).
#[derive(Clone, Copy, Debug)]
pub struct Volatile<'a>(pub &'a [u8]);

impl Source for Volatile<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }
    // A volatile read, so that a change the contract forbids is seen
    // rather than optimised away.
    #[allow(unsafe_code)]
    fn read(&self, start: usize, out: &mut [u8]) -> Result<(), String> {
        for (i, o) in out.iter_mut().enumerate() {
            // SAFETY: `start + i` is in bounds of the slice (checked by the
            // indexing), so the pointer is valid and aligned for a u8 read.
            *o = unsafe { std::ptr::read_volatile(&self.0[start + i]) };
        }
        Ok(())
    }
}

impl Source for mapcopy::MapCopy {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
    fn read(&self, start: usize, out: &mut [u8]) -> Result<(), String> {
        Volatile(self).read(start, out)
    }
}

impl Source for mapcopy::MapCopyMut {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
    fn read(&self, start: usize, out: &mut [u8]) -> Result<(), String> {
        Volatile(self).read(start, out)
    }
}

/// Reads a byte slice plainly (for models and tests of the checker).
#[derive(Clone, Copy, Debug)]
pub struct Plain<'a>(pub &'a [u8]);

impl Source for Plain<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn read(&self, start: usize, out: &mut [u8]) -> Result<(), String> {
        out.copy_from_slice(&self.0[start..start + out.len()]);
        Ok(())
    }
}

/// A broken promise, with enough detail to see what the page held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// File page index.
    pub page: u64,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VIOLATION at file page {}: {}", self.page, self.message)
    }
}

impl std::error::Error for Violation {}

/// Holds a mapping of file bytes `off .. off + len` to the contract.
#[derive(Clone, Debug)]
pub struct Checker {
    page: u64,
    off: u64,
    len: usize,
    states: Vec<Vec<u8>>,
    /// page -> (index of the state it matched on first read, bytes)
    seen: BTreeMap<u64, (usize, Vec<u8>)>,
    /// First reads may only match states `..= limit` (e.g. 0 when every
    /// page was snapshotted at map time).
    limit: Option<usize>,
}

impl Checker {
    /// A checker for a mapping of `len` bytes at file offset `off`, made
    /// while the file held `initial`.
    pub fn new(page: usize, off: u64, len: usize, initial: Vec<u8>) -> Checker {
        Checker {
            page: page as u64,
            off,
            len,
            states: vec![initial],
            seen: BTreeMap::new(),
            limit: None,
        }
    }

    /// Declares that every page was snapshotted at map time (populate, or
    /// an eager strategy): first reads must then show the state at map time.
    pub fn snapshotted_at_map(&mut self) {
        self.limit = Some(0);
    }

    /// Records that the file now holds `contents`.
    pub fn push_state(&mut self, contents: Vec<u8>) {
        self.states.push(contents);
    }

    /// The file's contents now (the last state pushed).
    pub fn current(&self) -> &[u8] {
        self.states.last().expect("at least the initial state")
    }

    /// Every state so far, the one at map time first.
    pub fn states(&self) -> &[Vec<u8>] {
        &self.states
    }

    /// File pages the mapping covers.
    pub fn pages(&self) -> Range<u64> {
        if self.len == 0 {
            return 0..0;
        }
        self.off / self.page..(self.off + self.len as u64).div_ceil(self.page)
    }

    /// Range of mapping bytes that belong to file page `p`.
    pub fn mapped(&self, p: u64) -> Range<usize> {
        let a = (p * self.page).max(self.off);
        let b = ((p + 1) * self.page).min(self.off + self.len as u64);
        (a - self.off) as usize..(b - self.off) as usize
    }

    /// Page `p`'s mapped bytes in state `s` (zero past that state's end).
    pub fn expected(&self, s: usize, p: u64) -> Vec<u8> {
        let r = self.mapped(p);
        let state = &self.states[s];
        let a = self.off as usize + r.start;
        let mut out = vec![0u8; r.len()];
        if a < state.len() {
            let n = (state.len() - a).min(out.len());
            out[..n].copy_from_slice(&state[a..a + n]);
        }
        out
    }

    /// Which state page `p` matched when first read, if it was read.
    pub fn seen_state(&self, p: u64) -> Option<usize> {
        self.seen.get(&p).map(|(s, _)| *s)
    }

    /// Checks `bytes`, page `p`'s mapped bytes obtained by any means (a
    /// read through the mapping, or a syscall that read it).
    pub fn observe(&mut self, p: u64, bytes: Vec<u8>) -> Result<(), Violation> {
        let r = self.mapped(p);
        let file_start = self.off + r.start as u64;
        if let Some((s, before)) = self.seen.get(&p) {
            if *before != bytes {
                return Err(Violation {
                    page: p,
                    message: format!(
                        "changed after it was read (S2): it held state {s} [{}], now [{}] (file states since map: {})",
                        pattern::describe(before, file_start),
                        pattern::describe(&bytes, file_start),
                        self.states.len()
                    ),
                });
            }
            return Ok(());
        }
        let limit = self.limit.unwrap_or(self.states.len() - 1);
        // Prefer the oldest matching state (they can coincide).
        match (0..=limit).find(|&s| self.expected(s, p) == bytes) {
            Some(s) => {
                self.seen.insert(p, (s, bytes));
                Ok(())
            }
            None => {
                let candidates: Vec<String> = (0..=limit)
                    .map(|s| {
                        format!(
                            "state {s} [{}]",
                            pattern::describe(&self.expected(s, p), file_start)
                        )
                    })
                    .collect();
                Err(Violation {
                    page: p,
                    message: format!(
                        "first read holds [{}], which is none of the file's states since the mapping was made (S1): {}",
                        pattern::describe(&bytes, file_start),
                        candidates.join("; ")
                    ),
                })
            }
        }
    }

    /// Reads pages `pages` through `src` and checks them.
    pub fn touch(
        &mut self,
        src: &dyn Source,
        pages: impl IntoIterator<Item = u64>,
    ) -> Result<(), Violation> {
        assert_eq!(src.len(), self.len, "source and checker disagree on length");
        for p in pages {
            let r = self.mapped(p);
            let mut buf = vec![0u8; r.len()];
            src.read(r.start, &mut buf).map_err(|e| Violation {
                page: p,
                message: format!("reading it faults: {e}"),
            })?;
            self.observe(p, buf)?;
        }
        Ok(())
    }

    /// Reads and checks every page (first reads and re-reads alike).
    pub fn touch_all(&mut self, src: &dyn Source) -> Result<(), Violation> {
        self.touch(src, self.pages())
    }

    /// Checks a full copy of the mapped bytes obtained another way (say,
    /// `write(2)` from the mapping into a pipe).
    pub fn observe_all(&mut self, bytes: &[u8]) -> Result<(), Violation> {
        assert_eq!(bytes.len(), self.len);
        for p in self.pages() {
            let r = self.mapped(p);
            self.observe(p, bytes[r].to_vec())?;
        }
        Ok(())
    }
}

/// A model of a plain `MAP_PRIVATE` read-only mapping (the control): it
/// shows the file's current state and faults past the last page of the file.
#[derive(Debug)]
pub struct FollowsFile<'a> {
    /// Current file contents.
    pub file: &'a [u8],
    /// File offset of the mapping.
    pub off: u64,
    /// Mapping length.
    pub len: usize,
    /// Page size.
    pub page: usize,
}

impl Source for FollowsFile<'_> {
    fn len(&self) -> usize {
        self.len
    }
    fn read(&self, start: usize, out: &mut [u8]) -> Result<(), String> {
        let page = self.page as u64;
        let a = self.off + start as u64;
        let b = a + out.len() as u64;
        let last_page_end = (self.file.len() as u64).div_ceil(page) * page;
        if b > last_page_end {
            return Err(format!(
                "SIGBUS: bytes {a}..{b} lie past the file's last page (size {})",
                self.file.len()
            ));
        }
        for (i, o) in out.iter_mut().enumerate() {
            *o = self.file.get(a as usize + i).copied().unwrap_or(0);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unaligned_pages() {
        let c = Checker::new(4096, 100, 8192, vec![1; 8250]);
        assert_eq!(c.pages(), 0..3);
        assert_eq!(c.mapped(0), 0..3996);
        assert_eq!(c.mapped(1), 3996..8092);
        assert_eq!(c.mapped(2), 8092..8192);
        // past the end of the state: zeros
        let e = c.expected(0, 2);
        assert_eq!(e.len(), 100);
        assert_eq!(&e[..58], &[1u8; 58][..]);
        assert!(e[58..].iter().all(|&b| b == 0));
    }

    #[test]
    fn flags_mixed_and_changed_pages() {
        let old = pattern::bytes(0, 0, 8192);
        let new = pattern::bytes(1, 0, 8192);
        let mut c = Checker::new(4096, 0, 8192, old.clone());
        c.push_state(new.clone());
        // a page half old, half new is neither state
        let mut mixed = old.clone();
        mixed[..2048].copy_from_slice(&new[..2048]);
        let v = c.touch(&Plain(&mixed), [0]).unwrap_err();
        assert!(v.message.contains("none of the file's states"), "{v}");
        // new bytes in page 1 are fine on first read, but must then stay
        c.touch(&Plain(&new), [1]).unwrap();
        assert!(c.touch(&Plain(&old), [1]).is_err());
        // populate: only the state at map time is allowed
        let mut c = Checker::new(4096, 0, 8192, old.clone());
        c.snapshotted_at_map();
        c.push_state(new.clone());
        assert!(c.touch(&Plain(&new), [0]).is_err());
        c.touch(&Plain(&old), [0, 1]).unwrap();
    }

    #[test]
    fn follows_file_faults_past_the_end() {
        let f = FollowsFile {
            file: &[7u8; 5000],
            off: 0,
            len: 12288,
            page: 4096,
        };
        let mut buf = [0u8; 4096];
        f.read(4096, &mut buf).unwrap();
        assert_eq!(buf[903], 7);
        assert_eq!(buf[904], 0);
        assert!(f.read(8192, &mut buf).is_err());
    }
}
