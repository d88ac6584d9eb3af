//! The baselines' memory: a plain `MAP_PRIVATE` file mapping (what
//! `memmap2::Mmap::map_copy_read_only` gives, contract broken) and fresh
//! 2 MiB-aligned transparent-huge-page anonymous memory (the copy limit).
//!
//! Hand-written over rustix because these are exactly the unsafe mappings
//! the library exists to replace; the bench needs them raw to compare.

use std::ffi::c_void;
use std::fs::File;
use std::io;
use std::ptr::NonNull;

use rustix::mm::{self, Advice, MapFlags, ProtFlags};

/// Huge page size (x86-64 and arm64 with 4 KiB base pages).
pub const HUGE_PAGE: usize = 2 << 20;

/// A mapping owned by the bench, unmapped on drop.
pub struct Raw {
    ptr: NonNull<u8>,
    len: usize,
    /// Whole mapping, including alignment slack kept mapped.
    map_ptr: *mut c_void,
    map_len: usize,
    writable: bool,
}

impl Raw {
    /// `mmap(PROT_READ, MAP_PRIVATE)` of the first `len` bytes of `file`.
    ///
    /// # Safety
    ///
    /// Its bytes follow the file: while the mapping lives nobody may shrink
    /// the file, and nobody may change it while a slice from [`Raw::bytes`]
    /// is alive. (The bench's files live in its own temporary directory; only
    /// the writer-cost phase writes one while it is mapped, and reads that
    /// mapping through [`Raw::page0`] alone.)
    pub unsafe fn private(file: &File, len: usize) -> io::Result<Raw> {
        if len == 0 {
            return Err(io::Error::other("cannot map 0 bytes"));
        }
        // SAFETY: a new mapping at an address of the kernel's choosing
        // aliases nothing; the caller promises the file stays unchanged.
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
        Ok(Raw {
            ptr: NonNull::new(ptr.cast()).expect("mmap returned null"),
            len,
            map_ptr: ptr,
            map_len: len,
            writable: false,
        })
    }

    /// Fresh zero-filled anonymous read-write memory of `len` bytes starting
    /// at a 2 MiB boundary, advised `MADV_HUGEPAGE` before first touch.
    pub fn thp(len: usize) -> io::Result<Raw> {
        let map_len = len.max(1) + HUGE_PAGE;
        let base = fresh_anon(map_len)?;
        let start = (base as usize).next_multiple_of(HUGE_PAGE);
        let ptr = start as *mut c_void;
        // SAFETY: the range lies inside the mapping just made; advice does
        // not change its contents (fresh memory reads as zero either way).
        // Only advice: a kernel without THP ignores it.
        let _ = unsafe { mm::madvise(ptr, len.max(1), Advice::LinuxHugepage) };
        Ok(Raw {
            ptr: NonNull::new(start as *mut u8).expect("mmap returned null"),
            len,
            map_ptr: base,
            map_len,
            writable: true,
        })
    }

    /// Fresh zero-filled anonymous read-write memory of `len` bytes, advised
    /// `MADV_NOHUGEPAGE`: faulted in 4 KiB pages on first touch.
    pub fn small_pages(len: usize) -> io::Result<Raw> {
        let map_len = len.max(1);
        let base = fresh_anon(map_len)?;
        // SAFETY: the mapping just made; advice does not change its
        // contents. Only advice: a kernel without THP ignores it.
        let _ = unsafe { mm::madvise(base, map_len, Advice::LinuxNoHugepage) };
        Ok(Raw {
            ptr: NonNull::new(base.cast()).expect("mmap returned null"),
            len,
            map_ptr: base,
            map_len,
            writable: true,
        })
    }

    /// Faults in every page for writing (`MADV_POPULATE_WRITE`): for `thp`
    /// memory, what a copy into it pays before the copy itself.
    pub fn populate(&mut self) -> io::Result<()> {
        assert!(self.writable, "populating a read-only file mapping");
        // SAFETY: the range is this mapping's own anonymous memory; populating
        // it does not change its contents (zero).
        unsafe {
            mm::madvise(
                self.ptr.as_ptr().cast(),
                self.len,
                Advice::LinuxPopulateWrite,
            )
        }?;
        Ok(())
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes at `ptr` are mapped readable for as long as
        // `self` lives; for file mappings the constructor's caller promised
        // the file does not change (see `private`).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// A copy of the first page (or less), read with volatile loads and no
    /// `&[u8]`: for the writer-cost control, whose bytes change under it.
    pub fn page0(&self) -> Vec<u8> {
        (0..self.len.min(4096))
            // SAFETY: in bounds of a live readable mapping; a volatile load
            // of a byte another process may be changing yields some value,
            // and no reference to the memory is formed.
            .map(|i| unsafe { self.ptr.as_ptr().add(i).read_volatile() })
            .collect()
    }

    /// The mapped bytes, writable (only for `thp` memory).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        assert!(self.writable, "a read-only file mapping has no &mut bytes");
        // SAFETY: as in `bytes`; `&mut self` is exclusive. Only called on
        // read-write anonymous memory (file mappings are PROT_READ and never
        // reach here).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        // SAFETY: this exact range was mapped by the constructor and nothing
        // borrowed from it outlives `self`.
        let _ = unsafe { mm::munmap(self.map_ptr, self.map_len) };
    }
}

/// `pread` of `file` from offset 0 into `buf` in `chunk`-byte calls until
/// `buf` is full or the file ends.
pub fn pread_full(file: &File, buf: &mut [u8], chunk: usize) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let end = (done + chunk).min(buf.len());
        match rustix::io::pread(file, &mut buf[done..end], done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// libc's `fork()` (fork handlers run, as for any program that forks); the
/// child exits at once. Returns the child's pid in the parent.
pub fn fork_and_exit() -> io::Result<libc::pid_t> {
    // SAFETY: the child only calls _exit (async-signal-safe), so whatever
    // locks other threads held at the fork do not matter to it.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pid)
}

/// Waits for a child made by [`fork_and_exit`].
pub fn reap(pid: libc::pid_t) -> io::Result<()> {
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a live local.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A new private anonymous read-write mapping of `map_len` bytes.
fn fresh_anon(map_len: usize) -> io::Result<*mut c_void> {
    // SAFETY: a new anonymous mapping at an address of the kernel's choosing
    // aliases nothing.
    Ok(unsafe {
        mm::mmap_anonymous(
            std::ptr::null_mut(),
            map_len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE,
        )?
    })
}
