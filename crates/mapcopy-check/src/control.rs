//! The control: a plain `MAP_PRIVATE` file mapping, what `memmap2`'s
//! `map_copy` gives, which breaks the contract. Checkers are shown to catch
//! real violations by running them against it.
//!
//! Reading it after another process shrank the file raises `SIGBUS`, so
//! [`PrivateMap::read_pages`] reads it in a forked child, one page at a
//! time, and reports which pages faulted instead of dying.
//!
//! Unsafe: it is a raw `mmap` whose bytes change under it, read with
//! volatile loads, in a forked child.
#![allow(unsafe_code)]

use std::fs::File;
use std::io::{self, Read};
use std::ptr::NonNull;

use rustix::mm::{self, MapFlags, ProtFlags};
use rustix::process::{Pid, WaitOptions};

/// What reading one page of a [`PrivateMap`] gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PageRead {
    /// The page's bytes (shorter than a page for the last, partial page).
    Bytes(Vec<u8>),
    /// The read raised `SIGBUS`: the page lies past the file's current end.
    Sigbus,
}

/// A read-only `MAP_PRIVATE` mapping of a file: the unprotected baseline.
#[derive(Debug)]
pub struct PrivateMap {
    ptr: NonNull<u8>,
    len: usize,
}

impl PrivateMap {
    /// Maps the first `len` bytes of `file` (`len > 0`) read-only and
    /// private, exactly as `mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0)`.
    pub fn new(file: &File, len: usize) -> io::Result<PrivateMap> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot map zero bytes",
            ));
        }
        // SAFETY: a new mapping at an address of the kernel's choosing
        // aliases nothing in this process. Its memory is only ever read
        // through raw pointers (volatile reads and write(2)), never through
        // references, so other processes changing it is no aliasing bug.
        let ptr = unsafe {
            mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ,
                MapFlags::PRIVATE,
                file,
                0,
            )?
        };
        Ok(PrivateMap {
            ptr: NonNull::new(ptr.cast()).expect("mmap returned null"),
            len,
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a `PrivateMap` maps at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Reads the byte at `offset` in this process (a first touch faults the
    /// page in). Panics if `offset` is out of range.
    ///
    /// Call it only while no other process can have shrunk the file below
    /// `offset`: otherwise this process dies of `SIGBUS` (use
    /// [`PrivateMap::read_pages`] then).
    pub fn touch(&self, offset: usize) -> u8 {
        assert!(offset < self.len, "offset {offset} outside the mapping");
        // SAFETY: in bounds of a live, readable mapping we own. A volatile
        // read through a raw pointer creates no reference, so bytes changed
        // by another process are just a value read; the only failure is
        // SIGBUS past the file's end, which the caller rules out.
        unsafe { self.ptr.as_ptr().add(offset).read_volatile() }
    }

    /// Reads pages (indices of `page_size` bytes) in forked child processes,
    /// with real loads as a program would make them, and returns each
    /// page's bytes or [`PageRead::Sigbus`]. After a child dies of `SIGBUS`
    /// a new one carries on with the next page.
    pub fn read_pages(&self, pages: &[usize], page_size: usize) -> io::Result<Vec<PageRead>> {
        // Everything the child needs, computed before fork: after fork in a
        // multi-threaded process only async-signal-safe calls are allowed,
        // so the child only loads, calls write(2) and _exit(2).
        let spans: Vec<(usize, usize)> = pages
            .iter()
            .map(|&p| {
                let start = p.checked_mul(page_size).filter(|&s| s < self.len);
                match start {
                    Some(s) => Ok((self.ptr.as_ptr() as usize + s, page_size.min(self.len - s))),
                    None => Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("page {p} outside the mapping"),
                    )),
                }
            })
            .collect::<io::Result<_>>()?;
        let mut out = Vec::with_capacity(pages.len());
        let mut next = 0;
        while next < spans.len() {
            let todo = &spans[next..];
            let (got, sigbus) = read_in_child(todo)?;
            let full = count_full(&got, todo);
            let mut at = 0;
            for &(_, len) in &todo[..full] {
                out.push(PageRead::Bytes(got[at..at + len].to_vec()));
                at += len;
            }
            next += full;
            if sigbus && next < spans.len() {
                out.push(PageRead::Sigbus);
                next += 1;
            } else if next < spans.len() {
                return Err(io::Error::other(
                    "the page-reading child exited early without a SIGBUS",
                ));
            }
        }
        Ok(out)
    }
}

/// How many spans of `todo` are wholly contained in the `got` bytes.
fn count_full(got: &[u8], todo: &[(usize, usize)]) -> usize {
    let mut total = 0;
    let mut n = 0;
    for &(_, len) in todo {
        if total + len > got.len() {
            break;
        }
        total += len;
        n += 1;
    }
    n
}

/// Forks a child that loads and sends each span in turn through a pipe.
/// Returns the bytes received and whether the child died of `SIGBUS`.
fn read_in_child(spans: &[(usize, usize)]) -> io::Result<(Vec<u8>, bool)> {
    let (rd, wr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let wr_raw = std::os::fd::AsRawFd::as_raw_fd(&wr);
    // SAFETY: fork has no memory-safety preconditions by itself; the child
    // below runs only async-signal-safe code (volatile loads from the
    // inherited private mapping, write(2), _exit(2)) and touches no lock,
    // allocator or Rust destructor, as POSIX requires after fork in a
    // multi-threaded process.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        for &(addr, len) in spans {
            // SAFETY: (addr, len) lies inside the inherited mapping (checked
            // when the spans were built). A page past the file's end raises
            // SIGBUS here and ends this child, which is what we measure.
            unsafe { (addr as *const u8).read_volatile() };
            let mut done = 0;
            while done < len {
                // SAFETY: writes bytes of the mapping just loaded to the
                // pipe; write(2) is async-signal-safe.
                let n = unsafe {
                    libc::write(wr_raw, (addr + done) as *const libc::c_void, len - done)
                };
                if n <= 0 {
                    if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                        continue;
                    }
                    // SAFETY: _exit is async-signal-safe and never returns.
                    unsafe { libc::_exit(3) };
                }
                done += n as usize;
            }
        }
        // SAFETY: as above.
        unsafe { libc::_exit(0) };
    }
    drop(wr);
    let mut got = Vec::new();
    let read = File::from(rd).read_to_end(&mut got);
    // SAFETY: pid is our child, just forked.
    let status = rustix::process::waitpid(
        Some(unsafe { Pid::from_raw_unchecked(pid) }),
        WaitOptions::empty(),
    )?
    .map(|(_, s)| s);
    read?;
    let Some(status) = status else {
        return Err(io::Error::other("waitpid returned no status"));
    };
    if status.exited() && status.exit_status() == Some(0) {
        Ok((got, false))
    } else if status.signaled() && status.terminating_signal() == Some(libc::SIGBUS) {
        Ok((got, true))
    } else {
        Err(io::Error::other(format!(
            "the page-reading child failed: {status:?}"
        )))
    }
}

impl Drop for PrivateMap {
    fn drop(&mut self) {
        // SAFETY: we own the whole range and hand out no references into it.
        let _ = unsafe { mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_pages_and_reports_sigbus_past_a_shrink() {
        let ps = rustix::param::page_size();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&vec![7u8; 4 * ps]).unwrap();
        let file = File::open(f.path()).unwrap();
        let map = PrivateMap::new(&file, 4 * ps).unwrap();
        assert_eq!(map.touch(3 * ps), 7);
        f.as_file().set_len(ps as u64 + 10).unwrap();
        let got = map.read_pages(&[0, 2, 1, 3], ps).unwrap();
        assert_eq!(got[0], PageRead::Bytes(vec![7; ps]));
        assert_eq!(got[1], PageRead::Sigbus);
        let mut partial = vec![0u8; ps];
        partial[..10].fill(7);
        assert_eq!(got[2], PageRead::Bytes(partial));
        assert_eq!(got[3], PageRead::Sigbus);
        assert!(map.read_pages(&[4], ps).is_err());
    }
}
