//! One Lazy mapping as the server sees it: its region, its file, which
//! chunks are filled, its streams.

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ChunkState {
    /// Nothing filled by us.
    Empty,
    /// Some pages may be filled.
    Partial,
    /// A filler claimed it and fills all of it.
    Busy,
    /// Every page present.
    Full,
}

#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Stream {
    /// Offset where the next sequential fault is expected.
    pub(super) next: usize,
    /// Current window (0 = unused slot).
    pub(super) window: usize,
    /// Chunks before this one were handed to the prefetcher.
    pub(super) prefetched_to: usize,
    /// For replacing the least recently used stream.
    pub(super) used: u64,
}

#[derive(Debug)]
pub(super) struct State {
    pub(super) chunks: Vec<ChunkState>,
    pub(super) streams: [Stream; STREAMS],
    pub(super) tick: u64,
    /// A prefetch read that failed while populating.
    pub(super) failed: Option<(u64, Errno)>,
}

#[derive(Debug)]
pub(super) enum Plan {
    Nothing,
    Wake(usize, usize),
    Range(usize, usize),
    Chunk(usize),
}

/// One lazy mapping, shared by its owner and the fillers.
#[derive(Debug)]
pub(super) struct Mapping {
    pub(super) start: usize,
    pub(super) len: usize,
    /// The whole region (address, length), alignment slack included.
    pub(super) span: (usize, usize),
    pub(super) file: File,
    /// Counts `file` among the fds live mappings keep.
    pub(super) _kept: crate::fds::Kept,
    pub(super) offset: u64,
    /// False once dropping began; fillers hold it shared while installing.
    pub(super) live: RwLock<bool>,
    /// Whether the memory is currently mapped read-only.
    pub(super) read_only: AtomicBool,
    /// Set while `populate` fills it inside the map call (no one else can
    /// touch it yet).
    pub(super) populating: AtomicBool,
    pub(super) state: Mutex<State>,
    /// Signalled (with `state`) when a chunk becomes `Full`.
    pub(super) filled: Condvar,
}

impl Mapping {
    pub(super) fn chunk_end(&self, c: usize) -> usize {
        ((c + 1) * CHUNK).min(self.len)
    }

    /// Decides what to do for a fault at `off`, and which chunks to
    /// prefetch.
    pub(super) fn plan(&self, off: usize) -> (Plan, Option<Range<usize>>) {
        let page = crate::sys::page_size();
        let c = off / CHUNK;
        let nchunks = self.len.div_ceil(CHUNK);
        let mut st = lock(&self.state);
        st.tick += 1;
        let tick = st.tick;
        // Find the stream this fault continues, or start one.
        let found = st.streams.iter().position(|s| {
            s.window > 0 && off >= s.next && off <= s.next.max(s.prefetched_to * CHUNK) + s.window
        });
        let i = match found {
            Some(i) => {
                let s = &mut st.streams[i];
                s.window = (s.window * GROWTH).min(CHUNK);
                i
            }
            None => {
                let i = (0..STREAMS)
                    .min_by_key(|&i| st.streams[i].used)
                    .expect("streams");
                st.streams[i] = Stream {
                    next: off,
                    window: MIN_WINDOW.max(page),
                    prefetched_to: 0,
                    used: 0,
                };
                i
            }
        };
        st.streams[i].used = tick;
        let window = st.streams[i].window;
        let chunk_end = self.chunk_end(c);
        let plan = match st.chunks[c] {
            ChunkState::Full => Plan::Wake(off, page),
            ChunkState::Busy if window >= CHUNK => {
                // Someone fills this chunk and will wake the reader; help
                // the stream along by taking the next chunk nobody has.
                let ahead = st.streams[i].prefetched_to.max(c + 1).min(nchunks);
                match (c + 1..ahead).find(|&k| st.chunks[k] == ChunkState::Empty) {
                    Some(k) => {
                        st.chunks[k] = ChunkState::Busy;
                        Plan::Chunk(k)
                    }
                    None => Plan::Nothing,
                }
            }
            ChunkState::Busy => Plan::Nothing,
            ChunkState::Empty if window >= CHUNK => {
                st.chunks[c] = ChunkState::Busy;
                Plan::Chunk(c)
            }
            state => {
                if state == ChunkState::Empty {
                    st.chunks[c] = ChunkState::Partial;
                }
                let end = if window >= CHUNK {
                    chunk_end
                } else {
                    (off + window).min(chunk_end)
                };
                Plan::Range(off, end - off)
            }
        };
        let s = &mut st.streams[i];
        s.next = if window >= CHUNK {
            chunk_end
        } else {
            (off + window).min(chunk_end)
        };
        let mut ahead = None;
        if window >= CHUNK {
            let from = (c + 1).max(s.prefetched_to);
            let to = (c + 1 + AHEAD).min(nchunks);
            if from < to {
                s.prefetched_to = to;
                ahead = Some(from..to);
            }
        }
        (plan, ahead)
    }

    /// Claims an empty chunk for a whole-chunk fill.
    pub(super) fn claim(&self, c: usize) -> bool {
        let mut st = lock(&self.state);
        if st.chunks[c] == ChunkState::Empty {
            st.chunks[c] = ChunkState::Busy;
            true
        } else {
            false
        }
    }

    /// Reads the file at mapping offset `off` into `buf`, zero past the end
    /// of the file. `Err` names the file offset that failed.
    pub(super) fn read(&self, buf: &mut [u8], off: usize) -> Result<(), (u64, Errno)> {
        let at = self.offset + off as u64;
        #[cfg(test)]
        {
            let fail = tests::FAIL_READ_AT.load(Ordering::Relaxed);
            if (at..at + buf.len() as u64).contains(&fail) {
                return Err((fail, Errno::IO));
            }
        }
        let done = crate::sys::file::read_full(&self.file, buf, at)?;
        buf[done..].fill(0);
        Ok(())
    }

    /// The file's path (looked up only for messages).
    pub(super) fn what(&self) -> String {
        let fd = self.file.as_raw_fd();
        std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| format!("the file at fd {fd}"))
    }

    pub(super) fn fatal(&self, what: &str) -> ! {
        fatal_msg(&format!("{}: {what}", self.what()))
    }

    pub(super) fn fatal_read(&self, pos: u64, e: Errno) -> ! {
        self.fatal(&format!(
            "reading the file at offset {pos} to serve a page fault failed: {e} (errno {})",
            e.raw_os_error()
        ))
    }
}
