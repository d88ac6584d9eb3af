//! Chunk planning: for a fault at an offset, what to fill (a wake-up, a
//! range, a whole chunk) and which chunks to prefetch, from the mapping's
//! chunk states and its streams of sequential faults. Pure logic over
//! [`State`], tested without userfaultfd.

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

/// Decides what to do for a fault at `off` of a mapping of `len` bytes
/// whose state is `st`, and which chunks to prefetch: a stream the fault
/// continues grows its window (`MIN_WINDOW`, times `GROWTH` per fault, up
/// to a chunk); a stream at a whole chunk fills whole chunks and prefetches
/// `AHEAD` of them; other faults fill their window within their chunk.
pub(super) fn plan(
    st: &mut State,
    len: usize,
    off: usize,
    page: usize,
) -> (Plan, Option<Range<usize>>) {
    let c = off / CHUNK;
    let nchunks = len.div_ceil(CHUNK);
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
    let chunk_end = ((c + 1) * CHUNK).min(len);
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

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 4096;

    fn state(len: usize) -> State {
        State {
            chunks: vec![ChunkState::Empty; len.div_ceil(CHUNK)],
            streams: [Stream::default(); STREAMS],
            tick: 0,
            failed: None,
        }
    }

    #[test]
    fn a_sequential_reader_grows_to_whole_chunks_and_prefetches() {
        let len = 16 * CHUNK;
        let mut st = state(len);
        let mut off = 0;
        let mut sizes = Vec::new();
        // Windows grow within chunk 0 until one reaches a whole chunk: that
        // fault fills to the chunk's end and starts the prefetcher.
        loop {
            match plan(&mut st, len, off, PAGE) {
                (Plan::Range(at, n), None) => {
                    assert_eq!(at, off);
                    sizes.push(n);
                    off += n;
                }
                (Plan::Range(at, n), Some(ahead)) => {
                    assert_eq!((at, at + n), (off, CHUNK));
                    assert_eq!(ahead, 1..1 + AHEAD);
                    off = CHUNK;
                    break;
                }
                other => panic!("fault at {off}: {other:?}"),
            }
        }
        assert_eq!(sizes[0], MIN_WINDOW.max(PAGE));
        assert!(sizes.windows(2).all(|w| w[1] == w[0] * GROWTH), "{sizes:?}");
        assert_eq!(st.chunks[0], ChunkState::Partial);
        // The next fault takes chunk 1 whole; the prefetch moves one on.
        match plan(&mut st, len, off, PAGE) {
            (Plan::Chunk(1), Some(ahead)) => assert_eq!(ahead, 1 + AHEAD..2 + AHEAD),
            other => panic!("fault at {off}: {other:?}"),
        }
        assert_eq!(st.chunks[1], ChunkState::Busy);
    }

    #[test]
    fn random_faults_stay_small_and_full_chunks_only_wake() {
        let len = 8 * CHUNK;
        let mut st = state(len);
        for off in [5 * CHUNK + 3 * PAGE, CHUNK + 7 * PAGE, 7 * CHUNK] {
            match plan(&mut st, len, off, PAGE) {
                (Plan::Range(at, n), None) => assert_eq!((at, n), (off, MIN_WINDOW.max(PAGE))),
                other => panic!("fault at {off}: {other:?}"),
            }
        }
        st.chunks[2] = ChunkState::Full;
        match plan(&mut st, len, 2 * CHUNK + PAGE, PAGE) {
            (Plan::Wake(at, n), None) => assert_eq!((at, n), (2 * CHUNK + PAGE, PAGE)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_busy_chunk_is_left_to_its_filler() {
        let len = 4 * CHUNK;
        let mut st = state(len);
        st.chunks[1] = ChunkState::Busy;
        assert!(matches!(
            plan(&mut st, len, CHUNK + PAGE, PAGE),
            (Plan::Nothing, None)
        ));
    }

    #[test]
    fn the_last_chunk_ends_at_the_mapping() {
        let len = CHUNK + 3 * PAGE;
        let mut st = state(len);
        st.streams[0] = Stream {
            next: CHUNK,
            window: CHUNK,
            prefetched_to: 0,
            used: 1,
        };
        match plan(&mut st, len, CHUNK, PAGE) {
            (Plan::Chunk(1), None) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(st.chunks[1], ChunkState::Busy);
    }
}
