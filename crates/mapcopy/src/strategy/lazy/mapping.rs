//! One Lazy mapping as the server sees it: its region, its file, which
//! chunks are filled, its streams.

use super::*;

/// Where mappings' bytes are read from: the file, with `pread` ([`Pread`]);
/// tests put a source that fails on purpose in its place
/// ([`set_source`]).
pub(super) trait ReadAt: Sync {
    /// Reads `buf.len()` bytes of `file` at `at` (fewer at its end): the
    /// count read, or the offset that failed and why.
    fn read_at(&self, file: &File, buf: &mut [u8], at: u64) -> Result<usize, (u64, Errno)>;
}

/// The file itself.
pub(super) struct Pread;

impl ReadAt for Pread {
    fn read_at(&self, file: &File, buf: &mut [u8], at: u64) -> Result<usize, (u64, Errno)> {
        crate::sys::file::read_full(file, buf, at)
    }
}

static SOURCE: OnceLock<&'static dyn ReadAt> = OnceLock::new();

/// The source every mapping of this process reads from.
pub(super) fn source() -> &'static dyn ReadAt {
    *SOURCE.get_or_init(|| &Pread)
}

/// Makes `s` the source of this process's mappings, if none was used yet.
#[cfg(test)]
pub(super) fn set_source(s: &'static dyn ReadAt) -> bool {
    SOURCE.set(s).is_ok()
}

/// One lazy mapping, shared by its owner and the fillers.
#[derive(Debug)]
pub(super) struct Mapping {
    pub(super) start: usize,
    pub(super) len: usize,
    /// The whole region (address, length), alignment slack included.
    pub(super) span: (usize, usize),
    /// Shared with a forked child's list while a fork is under way.
    pub(super) file: Arc<File>,
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
    /// Decides what to do for a fault at `off`, and which chunks to
    /// prefetch ([`plan`]).
    pub(super) fn plan(&self, off: usize) -> (Plan, Option<Range<usize>>) {
        plan(
            &mut lock(&self.state),
            self.len,
            off,
            crate::sys::page_size(),
        )
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
        let done = source().read_at(&self.file, buf, at)?;
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
