//! Owned memory mappings.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::io;
use std::os::fd::AsFd;
use std::ptr::NonNull;

use rustix::mm::{self, MapFlags, MprotectFlags, ProtFlags};

/// The `MAP_COPY` mapping type (`MAP_TYPE` field of mmap's flags) of the
/// kernel series in `kernel/`: 0x04 on every 64-bit architecture Rust
/// builds for (parisc, where it is 0x20, is not one of them).
pub(crate) const MAP_COPY: u32 = 0x04;

/// Alignment and granule of transparent huge pages on x86-64 and arm64 (4 KiB
/// base pages).
pub(crate) const HUGE_PAGE: usize = 2 << 20;

/// A mapping this process owns: created by one of the constructors, unmapped
/// on drop. Nothing else holds its address range, so dropping it cannot pull
/// memory from under another owner.
///
/// Reading the memory is `unsafe` (a slice made from [`Region::span`], or
/// [`Region::as_mut_slice`]): whether its bytes can change while a `&[u8]`
/// is alive depends on what the caller put there, and only the strategy
/// that made it can argue that (`strategy::Snapshot`).
#[derive(Debug)]
pub(crate) struct Region {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a Region is a plain range of address space; the owner decides who
// reads or writes it, and the kernel objects behind it are not thread-bound.
unsafe impl Send for Region {}
// SAFETY: as above; `&Region` gives no access to the memory without `unsafe`.
unsafe impl Sync for Region {}

/// Advice for [`Region::advise`]: only advices that never change what a
/// page holds or whether it can be read in this process, so they are safe
/// whatever borrows the range (memmap2 draws the same line between
/// `Advice` and `UncheckedAdvice`). The rest (`MADV_DONTNEED`, ...) goes
/// through the `unsafe` [`Region::unchecked_advise`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Advice {
    /// `MADV_HUGEPAGE`: back the range with transparent huge pages.
    Hugepage,
    /// `MADV_DONTFORK`: a forked child does not inherit the range.
    DontFork,
    /// `MADV_DOFORK`: undoes `DontFork`.
    DoFork,
    /// `MADV_POPULATE_READ`: fault every page in for reading now (an
    /// unreadable page is an error here, not a signal later).
    PopulateRead,
    /// `MADV_POPULATE_WRITE`: fault every page in for writing now; in a
    /// private mapping (every `Region` is one) a file page becomes a private
    /// copy holding the same bytes.
    PopulateWrite,
}

impl Advice {
    fn raw(self) -> mm::Advice {
        match self {
            Advice::Hugepage => mm::Advice::LinuxHugepage,
            Advice::DontFork => mm::Advice::LinuxDontFork,
            Advice::DoFork => mm::Advice::LinuxDoFork,
            Advice::PopulateRead => mm::Advice::LinuxPopulateRead,
            Advice::PopulateWrite => mm::Advice::LinuxPopulateWrite,
        }
    }
}

/// Where some bytes live: the first one and how many. Carries no borrow,
/// so it says nothing about who may read or write them; what they mean is
/// up to whoever hands it out (see `strategy::Snapshot::span`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) ptr: NonNull<u8>,
    pub(crate) len: usize,
}

impl Span {
    /// No bytes at all, at a well-aligned non-null address (a valid empty
    /// slice).
    pub(crate) const EMPTY: Span = Span {
        ptr: NonNull::dangling(),
        len: 0,
    };
}

impl Region {
    /// Bytes `[off, off + len)` of the region as a [`Span`]. Its address is
    /// the region's for as long as the region lives: nothing in `Region`
    /// moves it (`overlay_file` and `move_into` replace pages *inside* it).
    ///
    /// # Panics
    /// If the range is not inside the region (a bug in the caller).
    pub(crate) fn span(&self, off: usize, len: usize) -> Span {
        assert!(
            off <= self.len && len <= self.len - off,
            "span outside region"
        );
        // SAFETY: `off <= self.len` (asserted), so the result stays inside
        // (or one past the end of) this live mapping.
        let ptr = unsafe { self.ptr.add(off) };
        Span { ptr, len }
    }

    /// Fresh zero-filled private anonymous memory of `len` bytes (rounded up
    /// to pages), starting at a multiple of `align` (a power of two, at least
    /// a page). With `noreserve` the mapping is not charged to overcommit.
    pub(crate) fn anonymous(
        len: usize,
        prot: ProtFlags,
        noreserve: bool,
        align: usize,
    ) -> io::Result<Region> {
        let page = super::page_size();
        debug_assert!(align.is_power_of_two() && align >= page);
        let len = round_up(len.max(1), page).ok_or_else(too_big)?;
        let extra = align - page;
        let total = len.checked_add(extra).ok_or_else(too_big)?;
        let mut flags = MapFlags::PRIVATE;
        if noreserve {
            flags |= MapFlags::NORESERVE;
        }
        // SAFETY: a new anonymous mapping at an address of the kernel's
        // choosing aliases nothing that exists.
        let base =
            unsafe { mm::mmap_anonymous(std::ptr::null_mut(), total, prot, flags)? } as usize;
        let start = (base + align - 1) & !(align - 1);
        let end = start + len;
        // Trim the slack on both sides so the Region owns exactly [start, end).
        // SAFETY: both ranges lie inside the mapping just made and are not
        // referenced by anything.
        unsafe {
            if start > base {
                mm::munmap(base as *mut c_void, start - base)?;
            }
            if base + total > end {
                mm::munmap(end as *mut c_void, base + total - end)?;
            }
        }
        Ok(Region {
            ptr: NonNull::new(start as *mut u8).expect("mmap returned null"),
            len,
        })
    }

    /// A private (copy-on-write) mapping of `len` bytes of `fd` at page-aligned
    /// `offset`. Its contents follow the file until each page is written, so
    /// only a strategy that controls the writers may hand it out.
    pub(crate) fn file_private<Fd: AsFd>(
        fd: Fd,
        offset: u64,
        len: usize,
        prot: ProtFlags,
        noreserve: bool,
    ) -> io::Result<Region> {
        let mut flags = MapFlags::PRIVATE;
        if noreserve {
            flags |= MapFlags::NORESERVE;
        }
        Self::file_new(fd, offset, len, prot, flags)
    }

    /// A new mapping of `len` bytes (rounded up to pages) of `fd` at
    /// `offset` with `flags`, at an address of the kernel's choosing.
    fn file_new<Fd: AsFd>(
        fd: Fd,
        offset: u64,
        len: usize,
        prot: ProtFlags,
        flags: MapFlags,
    ) -> io::Result<Region> {
        let len = round_up(len.max(1), super::page_size()).ok_or_else(too_big)?;
        // SAFETY: a new mapping at an address of the kernel's choosing
        // aliases nothing that exists; a flags word the kernel does not
        // know (a mapping type it lacks) is refused, never misread.
        let ptr = unsafe { mm::mmap(std::ptr::null_mut(), len, prot, flags, fd, offset)? };
        Ok(Region {
            ptr: NonNull::new(ptr.cast()).expect("mmap returned null"),
            len,
        })
    }

    /// A `MAP_COPY` mapping (a mapping type of the kernel series in this
    /// repository's `kernel/`, not of mainline Linux) of `len` bytes of
    /// `fd` at page-aligned `offset`: its pages keep the file as of this
    /// call, whatever anyone does to the file later, and pages past the
    /// file's end at this call read zeros. A kernel without it fails with
    /// `EINVAL`; a filesystem that does not opt in with `EOPNOTSUPP`.
    #[cfg(target_pointer_width = "64")]
    pub(crate) fn file_copy<Fd: AsFd>(
        fd: Fd,
        offset: u64,
        len: usize,
        prot: ProtFlags,
    ) -> io::Result<Region> {
        Self::file_new(fd, offset, len, prot, MapFlags::from_bits_retain(MAP_COPY))
    }

    /// `len` bytes (rounded up to pages) starting at a multiple of `align`
    /// whose first `file_len` bytes map `fd` from page-aligned `offset`
    /// privately (copy-on-write) and whose rest is anonymous zeros: the
    /// range is reserved first and the file mapped over its head, so the
    /// pages wholly past the end of a shorter file are never file pages
    /// (those raise SIGBUS). Where the file covers the whole range and no
    /// alignment beyond a page is asked for, it is one file mapping, which
    /// is what the two steps would leave, with one `mmap` fewer. With
    /// `noreserve` nothing is charged to overcommit.
    ///
    /// Like [`Region::file_private`], the head's contents follow the file
    /// until each page is written, and reading it raises SIGBUS once the
    /// file is shorter than `offset + file_len` (up to the last partial
    /// page): only a strategy that controls the file's writers may read it.
    pub(crate) fn file_head<Fd: AsFd>(
        fd: Fd,
        offset: u64,
        file_len: usize,
        len: usize,
        prot: ProtFlags,
        noreserve: bool,
        align: usize,
    ) -> io::Result<Region> {
        let page = super::page_size();
        if file_len > 0 && file_len == len && align <= page {
            return Region::file_private(fd, offset, len, prot, noreserve);
        }
        let region = Region::anonymous(len, prot, noreserve, align.max(page))?;
        if file_len > 0 {
            // SAFETY: nothing borrows the fresh region yet, so no borrow can
            // see its pages change; whether the file holds the bytes is a
            // question for whoever reads them (see above).
            unsafe { region.overlay_file(0, file_len, fd, offset, prot, noreserve)? };
        }
        Ok(region)
    }

    /// [`Region::file_head`] of `map_len` bytes for a file of `size` bytes
    /// (page-aligned): the head is the file's part ([`file_part`]).
    pub(crate) fn file_padded<Fd: AsFd>(
        fd: Fd,
        offset: u64,
        map_len: usize,
        size: u64,
        prot: ProtFlags,
        noreserve: bool,
    ) -> io::Result<Region> {
        let page = super::page_size();
        let file_len = file_part(offset, map_len, size, page as u64);
        Region::file_head(fd, offset, file_len, map_len, prot, noreserve, page)
    }

    /// Maps `len` bytes of `fd` from page-aligned `file_off` privately
    /// (copy-on-write) over `[off, off + len)` of this region with
    /// `MAP_FIXED`, replacing what was there in one step: a concurrent access
    /// sees either the old or the new mapping, never a hole. With `noreserve`
    /// the range is not charged to overcommit even if writable.
    ///
    /// # Safety
    /// Any live borrow of the range must see the same bytes before and after
    /// (the new mapping holds what the old one showed, or nothing borrows
    /// the range), and the new mapping must not fault fatally within `len`
    /// (the file is at least `file_off + len` bytes, rounded to a page, for
    /// as long as the mapping lives).
    pub(crate) unsafe fn overlay_file<Fd: AsFd>(
        &self,
        off: usize,
        len: usize,
        fd: Fd,
        file_off: u64,
        prot: ProtFlags,
        noreserve: bool,
    ) -> io::Result<()> {
        self.check(off, len)?;
        let mut flags = MapFlags::PRIVATE | MapFlags::FIXED;
        if noreserve {
            flags |= MapFlags::NORESERVE;
        }
        // SAFETY: the range lies inside this region (checked), which we own,
        // so MAP_FIXED replaces only our own pages; the caller vouches for
        // the contents.
        unsafe {
            mm::mmap(
                self.ptr.as_ptr().add(off).cast(),
                len,
                prot,
                flags,
                fd,
                file_off,
            )?
        };
        Ok(())
    }

    /// Moves this region's pages (page tables, no copying) over
    /// `[off, off + self.len())` of `dst` with `mremap(MREMAP_FIXED)`,
    /// replacing what was there in one step, as [`Region::overlay_file`].
    /// On success `self`'s old address range is gone (nothing is unmapped
    /// twice); on failure nothing moved.
    ///
    /// # Safety
    /// As [`Region::overlay_file`]: every live borrow of `dst`'s range sees
    /// the same bytes in `self`.
    pub(crate) unsafe fn move_into(self, dst: &Region, off: usize) -> io::Result<()> {
        dst.check(off, self.len)?;
        // SAFETY: `self` is ours to give away and the target range lies
        // inside `dst` (checked), which we own; MREMAP_FIXED unmaps only that
        // range. The caller vouches for the contents.
        unsafe {
            mm::mremap_fixed(
                self.ptr.as_ptr().cast(),
                self.len,
                self.len,
                mm::MremapFlags::MAYMOVE,
                dst.ptr.as_ptr().add(off).cast(),
            )?
        };
        // The old range was moved away: do not unmap it in Drop.
        std::mem::forget(self);
        Ok(())
    }

    /// Replaces `[off, off + len)` (page-aligned, inside) with fresh
    /// zero-filled private anonymous memory, readable and writable, not
    /// charged to overcommit, in one step (`MAP_FIXED`) as
    /// [`Region::overlay_file`].
    ///
    /// # Safety
    /// No live borrow of the range can observe the change: nothing reads
    /// it, or what it held could never be read (file pages past the end of
    /// the file).
    pub(crate) unsafe fn zero(&self, off: usize, len: usize) -> io::Result<()> {
        self.check(off, len)?;
        // SAFETY: the range lies inside this region (checked), which we own,
        // so MAP_FIXED replaces only our own pages; the caller vouches that
        // nobody sees it happen.
        unsafe {
            mm::mmap_anonymous(
                self.ptr.as_ptr().add(off).cast(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE | MapFlags::FIXED | MapFlags::NORESERVE,
            )?
        };
        Ok(())
    }

    /// Copies `dst.len()` bytes from offset `off` of this region into `dst`.
    ///
    /// # Safety
    /// Reading `[off, off + dst.len())` cannot fault fatally (every page is
    /// anonymous, a private copy, or a file page below the file's end) and
    /// nothing writes it during the copy.
    pub(crate) unsafe fn read_into(&self, off: usize, dst: &mut [u8]) -> io::Result<()> {
        self.check(off, dst.len())?;
        // SAFETY: the source is inside this live region (checked) and
        // readable as the caller promised; `dst` is an exclusive borrow, so
        // the two cannot overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(off), dst.as_mut_ptr(), dst.len())
        };
        Ok(())
    }

    /// First byte of the region.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes, a multiple of the page size.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Changes the protection of `[off, off + len)` (page-aligned, inside).
    ///
    /// # Safety
    /// Every live reference into the range stays valid under `prot`: no
    /// `&[u8]` or [`Span`] someone reads loses read access, and no
    /// `&mut [u8]` loses write access (a store would fault, and a reference
    /// to memory that cannot be accessed is undefined behaviour).
    pub(crate) unsafe fn protect(
        &self,
        off: usize,
        len: usize,
        prot: MprotectFlags,
    ) -> io::Result<()> {
        self.check(off, len)?;
        // SAFETY: the range is inside this region (checked), so changing its
        // protection cannot affect memory outside it; the references into it
        // are the caller's promise.
        Ok(unsafe { mm::mprotect(self.ptr.as_ptr().add(off).cast(), len, prot) }?)
    }

    /// Gives the kernel advice about `[off, off + len)` that cannot change
    /// what it holds ([`Advice`]).
    pub(crate) fn advise(&self, off: usize, len: usize, advice: Advice) -> io::Result<()> {
        // SAFETY: none of the `Advice` values discards, replaces or hides a
        // page of this process's range (see its doc).
        unsafe { self.unchecked_advise(off, len, advice.raw()) }
    }

    /// Gives the kernel any advice about `[off, off + len)`, including the
    /// kinds that drop pages (`MADV_DONTNEED`: a private page reads as
    /// zeros, or the file's current bytes, again).
    ///
    /// # Safety
    /// Nothing borrows the range, or every borrow of it may see whatever the
    /// advice makes of its pages.
    pub(crate) unsafe fn unchecked_advise(
        &self,
        off: usize,
        len: usize,
        advice: mm::Advice,
    ) -> io::Result<()> {
        self.check(off, len)?;
        // SAFETY: the range is inside this region (checked), so the advice
        // reaches no memory outside it; its effect on borrows is the
        // caller's promise.
        Ok(unsafe { mm::madvise(self.ptr.as_ptr().add(off).cast(), len, advice) }?)
    }

    /// The region's bytes (tests only: the crate reads snapshots through
    /// `strategy::Snapshot::span`).
    ///
    /// # Safety
    /// The caller guarantees that the bytes in `[off, off + len)` do not
    /// change while the returned slice is alive (nobody writes them, the file
    /// behind a file mapping is not modified, no fault handler fills them
    /// with different data) and that reading them cannot fault fatally.
    #[cfg(test)]
    pub(crate) unsafe fn as_slice(&self, off: usize, len: usize) -> &[u8] {
        assert!(
            off <= self.len && len <= self.len - off,
            "slice outside region"
        );
        // SAFETY: in bounds (asserted) of a live mapping we own; stability is
        // the caller's promise.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(off), len) }
    }

    /// The region's bytes, writable.
    ///
    /// # Safety
    /// The caller guarantees that the bytes in `[off, off + len)` do not
    /// change while the returned slice is alive except through it (nobody
    /// else writes them, no fault handler fills them with different data),
    /// that reading them cannot fault fatally, and that the range is mapped
    /// writable.
    pub(crate) unsafe fn as_mut_slice(&mut self, off: usize, len: usize) -> &mut [u8] {
        assert!(
            off <= self.len && len <= self.len - off,
            "slice outside region"
        );
        // SAFETY: in bounds of a mapping we own, borrowed mutably through
        // `&mut self`, so no other reference to it exists.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(off), len) }
    }

    fn check(&self, off: usize, len: usize) -> io::Result<()> {
        if off <= self.len && len <= self.len - off {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "range outside region",
            ))
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: we own the whole range; every slice into it borrowed from
        // `self` and so has ended.
        let _ = unsafe { mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Bytes of a `map_len` mapping at `offset` that lie inside a file of
/// `size` bytes, rounded up to whole pages of `page` bytes (never more than
/// `map_len`): the part a private file mapping may cover without SIGBUS.
pub(crate) fn file_part(offset: u64, map_len: usize, size: u64, page: u64) -> usize {
    if size <= offset {
        return 0;
    }
    let inside = (size - offset).div_ceil(page) * page;
    inside.min(map_len as u64) as usize
}

/// `x` rounded up to a multiple of `to` (a power of two), or `None` on
/// overflow.
pub(crate) fn round_up(x: usize, to: usize) -> Option<usize> {
    Some(x.checked_add(to - 1)? & !(to - 1))
}

fn too_big() -> io::Error {
    io::Error::new(
        io::ErrorKind::OutOfMemory,
        "length overflows the address space",
    )
}

/// [`Region::advise`] for a range reached by address only: part of a
/// region that some other value owns (`Lazy`'s fork handlers keep
/// addresses, not `Region`s).
///
/// # Safety
/// `[addr, addr + len)` (page-aligned) is mapped memory of this process
/// that its owner keeps mapped for the call and lets the caller advise on.
pub(crate) unsafe fn advise_at(addr: usize, len: usize, advice: Advice) -> io::Result<()> {
    // SAFETY: a mapped range the caller may advise on (its promise); none
    // of the `Advice` values changes what a page holds.
    Ok(unsafe { mm::madvise(addr as *mut c_void, len, advice.raw()) }?)
}

/// [`Region::protect`] for a range reached by address only (`Lazy`'s fault
/// server holds a mapping's address while its owner holds the `Region`).
///
/// # Safety
/// As [`advise_at`], and as [`Region::protect`]: every live reference into
/// the range stays valid under `prot`.
pub(crate) unsafe fn protect_at(addr: usize, len: usize, prot: MprotectFlags) -> io::Result<()> {
    // SAFETY: the caller's promises above.
    Ok(unsafe { mm::mprotect(addr as *mut c_void, len, prot) }?)
}

/// `madvise` over the pages holding `bytes` (widened to whole pages).
/// Only the advices that never change contents reach here (see
/// `crate::Advice`): a read-ahead hint on memory the caller can read.
pub(crate) fn advise_bytes(bytes: &[u8], advice: mm::Advice) -> io::Result<()> {
    debug_assert!(matches!(
        advice,
        mm::Advice::Normal | mm::Advice::Random | mm::Advice::Sequential | mm::Advice::WillNeed
    ));
    if bytes.is_empty() {
        return Ok(());
    }
    let page = super::page_size();
    let start = bytes.as_ptr() as usize & !(page - 1);
    let end = (bytes.as_ptr() as usize + bytes.len()).next_multiple_of(page);
    // SAFETY: NORMAL, RANDOM, SEQUENTIAL and WILLNEED only change read-ahead
    // and what is paged in, never the contents of any page, so they cannot
    // invalidate any reference, whatever the range; the range is the pages
    // of a live borrowed slice (a copy mapping's own pages).
    Ok(unsafe { mm::madvise(start as *mut c_void, end - start, advice) }?)
}
