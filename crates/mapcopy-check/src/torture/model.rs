//! The reference model of the file and the snapshot checker.
//!
//! The model holds, for each page, the [`Runs`] of cells it contains.
//! Replaying the writers' ops (sorted by start time; they never overlap)
//! gives, for every page, a timeline: the sequence of contents it went
//! through, each with the interval of the op that produced it. Content `k`
//! of a page was possibly the file's content at any instant in
//! `[start(op_k), end(op_{k+1})]` (the op that made it may have changed the
//! page at its very start, the op that replaced it at its very end).
//!
//! A reader that mapped at `T_map` and first touched page `p` at `T_touch`
//! saw a legal content iff it equals one whose interval meets
//! `[T_map, T_touch]` (S1). If it equals none, but every chunk of it equals
//! the same chunk of one of those contents (or is garbage from a copy torn
//! inside a chunk), the page is *torn*: a mix of contents the file went
//! through in that window — the non-atomicity some strategies document.
//! Otherwise it is an S1 violation: content the file did not have then.

use super::op::{Kind, Logged};
use super::stamp::{CHUNK, CHUNKS, Cell, PAGE, Runs};

const P: u64 = PAGE as u64;
const C: u64 = CHUNK as u64;

/// The file as the writers' ops made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Model {
    /// Contents of each page, up to the maximum size.
    pub pages: Vec<Runs>,
    /// Size in bytes (a multiple of [`CHUNK`]).
    pub size: u64,
}

impl Model {
    /// A file of `size` bytes written by one op of `version`, able to grow to
    /// `max` bytes.
    pub fn new(size: u64, max: u64, version: u64) -> Model {
        let npages = max.div_ceil(P) as usize;
        let mut m = Model {
            pages: vec![Runs::uniform(Cell::Zero); npages],
            size: 0,
        };
        m.write(0, size, version, &mut |_, _| {});
        m
    }

    /// Maximum size in bytes.
    pub fn max(&self) -> u64 {
        self.pages.len() as u64 * P
    }

    fn set(&mut self, p: usize, r: Runs, emit: &mut dyn FnMut(usize, &Runs)) {
        if self.pages[p] != r {
            emit(p, &r);
            self.pages[p] = r;
        }
    }

    /// Sets chunks `[from, to)` (byte offsets, chunk-aligned) to data of
    /// `version` written at their own position, or to zero.
    fn fill(
        &mut self,
        from: u64,
        to: u64,
        version: Option<u64>,
        emit: &mut dyn FnMut(usize, &Runs),
    ) {
        let mut x = from;
        while x < to {
            let p = (x / P) as usize;
            let page_end = (p as u64 + 1) * P;
            let stop = to.min(page_end);
            let c0 = ((x % P) / C) as usize;
            let c1 = c0 + ((stop - x) / C) as usize;
            let cell = match version {
                Some(v) => Cell::Data {
                    origin: p as u64,
                    version: v,
                },
                None => Cell::Zero,
            };
            let r = self.pages[p].with(c0, c1, cell);
            self.set(p, r, emit);
            x = stop;
        }
    }

    fn write(&mut self, off: u64, len: u64, version: u64, emit: &mut dyn FnMut(usize, &Runs)) {
        self.fill(off, off + len, Some(version), emit);
        self.size = self.size.max(off + len);
    }

    fn truncate(&mut self, new: u64, emit: &mut dyn FnMut(usize, &Runs)) {
        if new < self.size {
            let old = self.size;
            self.fill(new, old.div_ceil(P) * P, None, emit);
        }
        self.size = new;
    }

    /// Applies one logged op, calling `emit(page, new_content)` for every
    /// content a page goes through, in order. Returns an error if the log
    /// contradicts the model (the size the writer saw differs).
    pub fn apply(&mut self, l: &Logged, emit: &mut dyn FnMut(usize, &Runs)) -> Result<(), String> {
        if l.size_before != self.size {
            return Err(format!(
                "writer {} saw size {} before {:?} (version {:x}) but the model has {}",
                l.writer, l.size_before, l.op.kind, l.op.version, self.size
            ));
        }
        if l.result < 0 {
            return Ok(()); // failed before changing anything
        }
        let o = &l.op;
        let done = l.result as u64;
        match o.kind {
            Kind::Write
            | Kind::Pwrite
            | Kind::Writev
            | Kind::Uring
            | Kind::Direct
            | Kind::MmapStore => self.write(o.off, done, o.version, emit),
            Kind::Append => self.write(l.size_before, done, o.version, emit),
            Kind::Truncate => self.truncate(o.len, emit),
            Kind::OTrunc | Kind::RdOnlyTrunc => {
                self.truncate(0, emit);
                self.write(0, done, o.version, emit);
            }
            Kind::Punch | Kind::ZeroRange => {
                let to = (o.off + o.len).min(self.size);
                self.fill(o.off, to, None, emit)
            }
            Kind::Collapse | Kind::Insert => {
                // Measured (ext4, Linux 6.18): a read racing a collapse or
                // insert can return zeros for the pages being shifted (the
                // page cache is dropped from the offset on while extents
                // move). So every shifted page may be zero during the op,
                // then holds its new content.
                let (a, k) = ((o.off / P) as usize, (o.len / P) as usize);
                let old_pages = self.size.div_ceil(P) as usize;
                let before = self.pages.clone();
                let top = if o.kind == Kind::Insert {
                    old_pages + k
                } else {
                    old_pages
                };
                for p in a..top {
                    self.set(p, Runs::uniform(Cell::Zero), emit);
                }
                for p in a..top {
                    let r = if o.kind == Kind::Insert {
                        if p < a + k {
                            Runs::uniform(Cell::Zero)
                        } else {
                            before[p - k].clone()
                        }
                    } else if p + k < old_pages {
                        before[p + k].clone()
                    } else {
                        Runs::uniform(Cell::Zero)
                    };
                    self.set(p, r, emit);
                }
                if o.kind == Kind::Insert {
                    self.size += o.len;
                } else {
                    self.size -= o.len;
                }
            }
            Kind::CopyRange | Kind::CloneRange => {
                // Page-aligned, non-overlapping: chunk indices are kept.
                let n = done;
                let mut x = 0;
                while x < n {
                    let sp = ((o.src + x) / P) as usize;
                    let dp = ((o.off + x) / P) as usize;
                    let upto = (n - x).min(P);
                    let c1 = (upto / C) as usize;
                    let src = self.pages[sp].clone();
                    let r = Runs::from_cells((0..CHUNKS).map(|c| {
                        if c < c1 {
                            src.cell(c)
                        } else {
                            self.pages[dp].cell(c)
                        }
                    }));
                    self.set(dp, r, emit);
                    x += P;
                }
                self.size = self.size.max(o.off + n);
            }
        }
        Ok(())
    }

    /// Compares the model with the file's actual bytes: `None` if equal,
    /// else a description of the first difference.
    pub fn diff(&self, bytes: &[u8]) -> Option<String> {
        if bytes.len() as u64 != self.size {
            return Some(format!(
                "file size {} but model size {}",
                bytes.len(),
                self.size
            ));
        }
        for (p, chunk) in bytes.chunks(PAGE).enumerate() {
            let seen = Runs::decode(chunk);
            let want = self.pages[p].prefix(chunk.len() / CHUNK);
            if seen != want {
                return Some(format!("page {p}: file has {seen}, model has {want}"));
            }
        }
        None
    }
}

/// One content of a page, with the interval of the op that produced it.
#[derive(Clone, Debug)]
struct Entry {
    start: u64,
    end: u64,
    content: Runs,
    /// Made by stores through a `MAP_SHARED` mapping: while they ran, the
    /// page held any chunk-wise mix of the previous content and this one.
    store: bool,
}

/// What the checker concluded about one observed page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Equal to a content the page had in the window.
    Ok,
    /// A chunk-wise mix of the contents before and after a store through a
    /// `MAP_SHARED` mapping that ran in the window: the file itself held it
    /// while the store ran (stores are not atomic), so it is legal.
    MidStore,
    /// A mix, chunk by chunk, of contents the page had in the window.
    Torn,
    /// Content the page did not have at any instant of the window.
    Stale,
}

/// Per-page timelines for one round: the contents each page went through
/// and when.
#[derive(Clone, Debug)]
pub struct Timelines {
    pages: Vec<Vec<Entry>>,
}

impl Timelines {
    /// Timelines starting from `model` (contents valid since time 0),
    /// advanced through `ops` (sorted by start), with `model` updated to
    /// the end state.
    pub fn build(model: &mut Model, ops: &[Logged]) -> Result<Timelines, String> {
        let mut pages: Vec<Vec<Entry>> = model
            .pages
            .iter()
            .map(|r| {
                vec![Entry {
                    start: 0,
                    end: 0,
                    content: r.clone(),
                    store: false,
                }]
            })
            .collect();
        for l in ops {
            model.apply(l, &mut |p, r| {
                pages[p].push(Entry {
                    start: l.start,
                    end: l.end,
                    content: r.clone(),
                    store: l.op.kind == Kind::MmapStore,
                })
            })?;
        }
        Ok(Timelines { pages })
    }

    /// The contents page `p` possibly had at some instant of
    /// `[t_map, t_touch]`.
    pub fn candidates(&self, p: usize, t_map: u64, t_touch: u64) -> Vec<&Runs> {
        self.window(p, t_map, t_touch)
            .iter()
            .map(|e| &e.content)
            .collect()
    }

    /// The timeline entries of page `p` possible in `[t_map, t_touch]`, and
    /// the one before the first of them (for mid-store mixes).
    fn window(&self, p: usize, t_map: u64, t_touch: u64) -> &[Entry] {
        let Some(tl) = self.pages.get(p) else {
            return &[];
        };
        // Entry i is possible during [tl[i].start, tl[i+1].end] (or forever
        // after its start if it is the last). Ends are non-decreasing.
        let first = tl[1..].partition_point(|e| e.end < t_map);
        let n = tl[first..]
            .iter()
            .take_while(|e| e.start <= t_touch)
            .count();
        &tl[first..first + n]
    }

    /// Judges content `seen` (its first `seen.len()` chunks) observed at page
    /// `p` by a reader that mapped at `t_map` and first touched the page at
    /// `t_touch`.
    pub fn judge(&self, p: usize, t_map: u64, t_touch: u64, seen: &Runs) -> (Verdict, Vec<&Runs>) {
        let n = seen.len();
        let win = self.window(p, t_map, t_touch);
        let cands: Vec<&Runs> = win.iter().map(|e| &e.content).collect();
        if cands.iter().any(|c| c.prefix(n) == *seen) {
            return (Verdict::Ok, cands);
        }
        // A store through MAP_SHARED is not atomic for the file itself:
        // while it ran, the page held a chunk-wise mix of before and after
        // (and a chunk being copied): a real state of the file.
        let mid_store = win.windows(2).any(|w| {
            w[1].store
                && (0..n).all(|c| {
                    let cell = seen.cell(c);
                    cell == Cell::Garbage
                        || cell == w[0].content.cell(c)
                        || cell == w[1].content.cell(c)
                })
        });
        if mid_store {
            return (Verdict::MidStore, cands);
        }
        let torn = (0..n).all(|c| {
            let cell = seen.cell(c);
            cell == Cell::Garbage || cands.iter().any(|k| k.cell(c) == cell)
        });
        (if torn { Verdict::Torn } else { Verdict::Stale }, cands)
    }
}

#[cfg(test)]
mod tests {
    use super::super::op::Op;
    use super::*;

    fn logged(kind: Kind, off: u64, len: u64, src: u64, version: u64, size: u64, t: u64) -> Logged {
        Logged {
            op: Op {
                kind,
                off,
                len,
                src,
                version,
                link: false,
            },
            size_before: size,
            start: t,
            end: t + 10,
            result: len as i64,
            writer: 0,
        }
    }

    fn d(origin: u64, version: u64) -> Runs {
        Runs::uniform(Cell::Data { origin, version })
    }

    #[test]
    fn collapse_insert_copy_move_pages() {
        let mut m = Model::new(4 * P, 16 * P, 1);
        let ops = vec![
            logged(Kind::Collapse, P, P, 0, 2, 4 * P, 100),
            logged(Kind::Insert, 0, P, 0, 3, 3 * P, 200),
            logged(Kind::CopyRange, 0, P, 3 * P, 4, 4 * P, 300),
        ];
        let tl = Timelines::build(&mut m, &ops).unwrap();
        assert_eq!(m.size, 4 * P);
        // After collapse: [0,2,3]; insert at 0: [z,0,2,3]; copy page 3 -> 0.
        assert_eq!(m.pages[0], d(3, 1));
        assert_eq!(m.pages[1], d(0, 1));
        assert_eq!(m.pages[2], d(2, 1));
        assert_eq!(m.pages[3], d(3, 1));
        // Page 1 held origin 1 until the collapse, then 2, then 0.
        assert_eq!(tl.judge(1, 50, 60, &d(1, 1)).0, Verdict::Ok);
        assert_eq!(tl.judge(1, 150, 160, &d(1, 1)).0, Verdict::Stale);
        assert_eq!(tl.judge(1, 150, 160, &d(2, 1)).0, Verdict::Ok);
        // Window overlapping the insert: both.
        assert_eq!(tl.judge(1, 150, 205, &d(0, 1)).0, Verdict::Ok);
        assert_eq!(tl.judge(1, 150, 205, &d(2, 1)).0, Verdict::Ok);
        let torn = d(2, 1).with(
            0,
            10,
            Cell::Data {
                origin: 0,
                version: 1,
            },
        );
        assert_eq!(tl.judge(1, 150, 205, &torn).0, Verdict::Torn);
        assert_eq!(tl.judge(1, 250, 260, &torn).0, Verdict::Stale);
    }

    #[test]
    fn a_page_mid_way_through_a_shared_store_is_legal_a_write_tear_is_not() {
        let mut m = Model::new(2 * P, 8 * P, 1);
        let ops = vec![
            logged(Kind::MmapStore, 0, P, 0, 2, 2 * P, 100),
            logged(Kind::Pwrite, P, P, 0, 3, 2 * P, 200),
        ];
        let tl = Timelines::build(&mut m, &ops).unwrap();
        let mix0 = d(0, 1).with(
            0,
            20,
            Cell::Data {
                origin: 0,
                version: 2,
            },
        );
        assert_eq!(tl.judge(0, 90, 105, &mix0).0, Verdict::MidStore);
        let mix1 = d(1, 1).with(
            0,
            20,
            Cell::Data {
                origin: 1,
                version: 3,
            },
        );
        assert_eq!(tl.judge(1, 190, 205, &mix1).0, Verdict::Torn);
        // Outside the store's window the mix is no state the file had.
        assert_eq!(tl.judge(0, 150, 160, &mix0).0, Verdict::Stale);
        assert_eq!(tl.judge(0, 10, 20, &mix0).0, Verdict::Stale);
    }

    #[test]
    fn truncate_and_append_partial_pages() {
        let mut m = Model::new(2 * P, 8 * P, 1);
        let ops = vec![
            logged(Kind::Truncate, 0, P + 3 * C, 0, 2, 2 * P, 100),
            logged(Kind::Append, P + 3 * C, 2 * C, 0, 3, P + 3 * C, 200),
        ];
        let tl = Timelines::build(&mut m, &ops).unwrap();
        assert_eq!(m.size, P + 5 * C);
        let want = d(1, 1)
            .with(
                3,
                5,
                Cell::Data {
                    origin: 1,
                    version: 3,
                },
            )
            .with(5, CHUNKS, Cell::Zero);
        assert_eq!(m.pages[1], want);
        assert_eq!(tl.judge(1, 300, 310, &want).0, Verdict::Ok);
        assert_eq!(tl.judge(1, 150, 160, &d(1, 1)).0, Verdict::Stale);
        assert_eq!(tl.judge(1, 50, 160, &d(1, 1)).0, Verdict::Ok);
        // Observed only up to a short mapping: a prefix.
        assert_eq!(tl.judge(1, 300, 310, &want.prefix(4)).0, Verdict::Ok);
    }
}
