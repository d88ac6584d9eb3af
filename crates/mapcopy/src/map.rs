//! [`MapCopy`] and [`MapCopyMut`]: the mappings handed to users.

use std::fmt;
use std::fs::File;
use std::ops::{Deref, DerefMut};
use std::os::fd::AsFd;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Arc;

use crate::strategy::{Snapshot, Span};
use crate::{Error, MapOptions, Strategy};

/// A read-only copy mapping: the file's bytes as `&[u8]`, each page a
/// snapshot that no other writer can change (the contract in the crate docs).
///
/// It derefs to `[u8]`, is `Send + Sync + 'static`, and its address is stable
/// for its whole life. `Deref` is an inline pointer and length, as
/// memmap2's: indexing the map byte by byte (`map[i]` in a loop) costs what
/// indexing a slice does. Being stable, it can back zero-copy buffers
/// (`bytes::Bytes::from_owner`, Arrow buffers) directly. `clone` is cheap:
/// clones share one mapping, unmapped when the last one goes. With the
/// `stable_deref_trait` feature it is `StableDeref` (owning_ref, yoke); with
/// the `bytes` feature it converts into `bytes::Bytes` without a copy.
///
/// ```
/// use std::io::Write;
/// let mut file = tempfile::NamedTempFile::new()?;
/// file.write_all(b"model weights")?;
///
/// let map = mapcopy::MapCopy::open(file.path())?;
/// // Another process rewriting the file now cannot change `map`.
/// assert_eq!(&map[..5], b"model");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct MapCopy {
    /// The user's first byte: `inner`'s span, read once at construction
    /// (fixed for the snapshot's life, see `Snapshot`).
    ptr: NonNull<u8>,
    len: usize,
    /// Owns the bytes; never asked for them again.
    inner: Arc<dyn Snapshot>,
}

// SAFETY: `MapCopy` is a shared, read-only view of bytes that never change
// (`Snapshot`'s promises) plus the `Arc` that owns them, which is `Send +
// Sync` (`Snapshot: Send + Sync`). Sending it or sharing it between threads
// hands out only `&[u8]` into immutable memory, like an `Arc<[u8]>`.
#[allow(unsafe_code)]
unsafe impl Send for MapCopy {}
// SAFETY: as above.
#[allow(unsafe_code)]
unsafe impl Sync for MapCopy {}

impl MapCopy {
    /// Opens `path` read-only and maps the whole file with [`Strategy::Auto`].
    ///
    /// ```
    /// # let tmp = tempfile::NamedTempFile::new().unwrap();
    /// # std::fs::write(tmp.path(), b"abc").unwrap();
    /// let map = mapcopy::MapCopy::open(tmp.path())?;
    /// assert_eq!(map.len(), 3);
    /// # Ok::<(), mapcopy::Error>(())
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<MapCopy, Error> {
        let path = path.as_ref();
        let file =
            File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        MapCopy::map(&file)
    }

    /// Maps the whole of an open file with [`Strategy::Auto`]. The file needs
    /// read access; the mapping does not borrow it.
    ///
    /// ```
    /// # use std::io::Write;
    /// # let mut file = tempfile::tempfile().unwrap();
    /// # file.write_all(b"abc").unwrap();
    /// let map = mapcopy::MapCopy::map(&file)?;
    /// drop(file);
    /// assert_eq!(&map[..], b"abc");
    /// # Ok::<(), mapcopy::Error>(())
    /// ```
    pub fn map(file: impl AsFd) -> Result<MapCopy, Error> {
        MapOptions::new().map(file)
    }

    /// The strategy that made this mapping (never [`Strategy::Auto`]).
    ///
    /// ```
    /// # let file = tempfile::tempfile().unwrap();
    /// let map = mapcopy::MapCopy::map(&file)?;
    /// assert_ne!(map.strategy(), mapcopy::Strategy::Auto);
    /// # Ok::<(), mapcopy::Error>(())
    /// ```
    pub fn strategy(&self) -> Strategy {
        self.inner.strategy()
    }

    /// Gives the kernel `advice` about the whole mapping (see
    /// [`MapCopy::advise_range`]).
    ///
    /// ```
    /// # use std::io::Write;
    /// # let mut file = tempfile::tempfile().unwrap();
    /// # file.write_all(&[7; 10_000]).unwrap();
    /// let map = mapcopy::MapCopy::map(&file)?;
    /// map.advise(mapcopy::Advice::Sequential)?;
    /// assert_eq!(map[9_999], 7);
    /// # Ok::<(), mapcopy::Error>(())
    /// ```
    pub fn advise(&self, advice: Advice) -> Result<(), Error> {
        self.advise_range(advice, 0, self.len())
    }

    /// Gives the kernel `advice` about bytes `offset .. offset + len` of the
    /// mapping (widened to whole pages). Only advice that cannot change
    /// what the mapping holds exists here — memmap2's `unchecked_advise`
    /// advices such as `MADV_DONTNEED` would drop snapshotted pages, so
    /// there is no way to give them.
    pub fn advise_range(&self, advice: Advice, offset: usize, len: usize) -> Result<(), Error> {
        let bytes: &[u8] = self;
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| {
                Error::invalid(format!(
                    "advise_range: {offset} + {len} is past the end of the mapping ({} bytes)",
                    bytes.len()
                ))
            })?;
        crate::sys::mmap::advise_bytes(&bytes[offset..end], advice.raw())
            .map_err(|e| Error::io(format!("madvise({advice:?})"), e))
    }

    pub(crate) fn from_snapshot(inner: Box<dyn Snapshot>) -> Result<MapCopy, Error> {
        let Span { ptr, len } = inner.span();
        Ok(MapCopy {
            ptr,
            len,
            inner: Arc::from(inner),
        })
    }

    /// Does the snapshot still say its bytes are where this value points?
    /// (Always, by `Snapshot`'s promises; checked in debug builds when a
    /// value is dropped, after whatever detach, lease break or fork it went
    /// through, and by the strategies' tests.)
    pub(crate) fn span_unchanged(&self) -> bool {
        self.inner.span()
            == Span {
                ptr: self.ptr,
                len: self.len,
            }
    }
}

impl Drop for MapCopy {
    fn drop(&mut self) {
        debug_assert!(
            self.span_unchanged(),
            "a {} snapshot moved its bytes",
            self.inner.strategy()
        );
    }
}

/// Advice for [`MapCopy::advise`]: hints about how the mapping will be
/// read. None of them can change its bytes.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Advice {
    /// No special treatment (`MADV_NORMAL`).
    Normal,
    /// Pages will be read in random order: read ahead less
    /// (`MADV_RANDOM`).
    Random,
    /// Pages will be read in order: read ahead more (`MADV_SEQUENTIAL`).
    Sequential,
    /// Pages will be read soon: start reading them in (`MADV_WILLNEED`).
    WillNeed,
}

impl Advice {
    fn raw(self) -> rustix::mm::Advice {
        match self {
            Advice::Normal => rustix::mm::Advice::Normal,
            Advice::Random => rustix::mm::Advice::Random,
            Advice::Sequential => rustix::mm::Advice::Sequential,
            Advice::WillNeed => rustix::mm::Advice::WillNeed,
        }
    }
}

#[cfg(feature = "stable_deref_trait")]
// SAFETY: the bytes live in memory the snapshot owns (never in `MapCopy`
// itself), at an address that does not change for the snapshot's life
// (`Snapshot`'s promises; `MapCopy` keeps that address from construction
// on), and clones share that snapshot and that address: moving a `MapCopy`
// never moves what it derefs to.
#[allow(unsafe_code)]
unsafe impl stable_deref_trait::StableDeref for MapCopy {}

#[cfg(feature = "stable_deref_trait")]
// SAFETY: a clone derefs to the very same bytes (shared snapshot).
#[allow(unsafe_code)]
unsafe impl stable_deref_trait::CloneStableDeref for MapCopy {}

#[cfg(feature = "bytes")]
impl From<MapCopy> for bytes::Bytes {
    /// Without a copy: the `Bytes` owns the mapping.
    fn from(m: MapCopy) -> bytes::Bytes {
        bytes::Bytes::from_owner(m)
    }
}

impl Deref for MapCopy {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        #[allow(unsafe_code)]
        // SAFETY: `ptr` and `len` are the span of `inner` (read once in
        // `from_snapshot`), which `self` keeps alive for at least as long as
        // the returned borrow of `self`. `Snapshot`'s promises: that span is
        // the same for the snapshot's whole life (a detach, lease break or
        // fork handler swaps pages in place, never moves them), mapped,
        // readable without a fatal fault, non-null and trivially aligned for
        // `u8`, and its bytes never change — a snapshot behind a `MapCopy`
        // was made for `map`, so not even a `MapCopyMut` writes it. A span
        // lies inside one mapping, so `len <= isize::MAX`.
        unsafe {
            std::slice::from_raw_parts(self.ptr.as_ptr(), self.len)
        }
    }
}

impl AsRef<[u8]> for MapCopy {
    #[inline]
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl fmt::Debug for MapCopy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapCopy")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .field("strategy", &self.strategy())
            .finish()
    }
}

/// A writable copy mapping: like [`MapCopy`], and the owner's own stores
/// stay private (S4), exactly like a `MAP_PRIVATE` mapping's.
///
/// ```
/// use std::io::Write;
/// let mut file = tempfile::tempfile()?;
/// file.write_all(b"abc")?;
///
/// let mut map = mapcopy::MapOptions::new().map_mut(&file)?;
/// map.copy_from_slice(b"xyz");
/// assert_eq!(&map[..], b"xyz");
/// // The file still holds "abc".
/// # use std::io::{Read, Seek};
/// # let mut s = String::new();
/// # file.rewind()?; file.read_to_string(&mut s)?;
/// # assert_eq!(s, "abc");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct MapCopyMut {
    /// The user's first byte: `inner`'s span, read once at construction
    /// (fixed for the snapshot's life, see `Snapshot`).
    ptr: NonNull<u8>,
    len: usize,
    /// Owns the bytes; never asked for them again.
    inner: Box<dyn Snapshot>,
}

// SAFETY: `MapCopyMut` owns its bytes exclusively (a `map_mut` snapshot:
// nothing but this value writes them, `Snapshot`'s promises) together with
// the `Box` that keeps them, which is `Send + Sync`; like a `Box<[u8]>`,
// `&mut` access needs `&mut self` and `&self` gives only `&[u8]`.
#[allow(unsafe_code)]
unsafe impl Send for MapCopyMut {}
// SAFETY: as above.
#[allow(unsafe_code)]
unsafe impl Sync for MapCopyMut {}

impl MapCopyMut {
    /// The strategy that made this mapping (never [`Strategy::Auto`]).
    ///
    /// ```
    /// # let file = tempfile::tempfile().unwrap();
    /// let map = mapcopy::MapOptions::new().map_mut(&file)?;
    /// assert_ne!(map.strategy(), mapcopy::Strategy::Auto);
    /// # Ok::<(), mapcopy::Error>(())
    /// ```
    pub fn strategy(&self) -> Strategy {
        self.inner.strategy()
    }

    /// Made from a snapshot of a `map_mut` request (`Request::writable`).
    pub(crate) fn from_snapshot(inner: Box<dyn Snapshot>) -> Result<MapCopyMut, Error> {
        let Span { ptr, len } = inner.span();
        Ok(MapCopyMut { ptr, len, inner })
    }

    /// As [`MapCopy`]'s: does the snapshot still say its bytes are where
    /// this value points?
    pub(crate) fn span_unchanged(&self) -> bool {
        self.inner.span()
            == Span {
                ptr: self.ptr,
                len: self.len,
            }
    }
}

impl Drop for MapCopyMut {
    fn drop(&mut self) {
        debug_assert!(
            self.span_unchanged(),
            "a {} snapshot moved its bytes",
            self.inner.strategy()
        );
    }
}

impl Deref for MapCopyMut {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        #[allow(unsafe_code)]
        // SAFETY: as in `MapCopy`'s `deref`: the span of `inner`, alive as
        // long as `self`, at an address fixed for the snapshot's life,
        // readable without a fatal fault. Its bytes change only by stores
        // through `deref_mut`, which needs `&mut self`, so none happens
        // while this shared borrow lives.
        unsafe {
            std::slice::from_raw_parts(self.ptr.as_ptr(), self.len)
        }
    }
}

impl DerefMut for MapCopyMut {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        #[allow(unsafe_code)]
        // SAFETY: as in `deref`, and: `inner` was made for `map_mut`, so the
        // span is mapped writable and nothing but this value writes or
        // hands out references into it (`Snapshot`'s promises); `&mut self`
        // makes this the only live reference. The span is outside the
        // `Box`'s allocation, so the borrow aliases nothing Rust owns.
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len)
        }
    }
}

impl AsRef<[u8]> for MapCopyMut {
    #[inline]
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl AsMut<[u8]> for MapCopyMut {
    #[inline]
    fn as_mut(&mut self) -> &mut [u8] {
        self
    }
}

impl fmt::Debug for MapCopyMut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapCopyMut")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .field("strategy", &self.strategy())
            .finish()
    }
}
