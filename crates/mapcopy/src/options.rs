//! The [`MapOptions`] builder and the checks every request passes first.

use std::fs::File;
use std::os::fd::AsFd;

use rustix::fs::FileType;

use crate::strategy::{self, Request};
use crate::sys::{self, file::Meta};
use crate::{Consistency, Error, MapCopy, MapCopyMut, Strategy};

/// How to map: which strategy, which range, whether to snapshot every page
/// now. Like `memmap2::MmapOptions`, but `map` is safe.
///
/// ```
/// use std::io::Write;
/// use mapcopy::{MapOptions, Strategy};
///
/// let mut file = tempfile::tempfile()?;
/// file.write_all(b"hello, snapshot")?;
///
/// // Bytes 7.. of the file, copied eagerly.
/// let map = MapOptions::new().strategy(Strategy::Eager).offset(7).map(&file)?;
/// assert_eq!(&map[..], b"snapshot");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct MapOptions {
    strategy: Strategy,
    offset: u64,
    len: Option<usize>,
    populate: bool,
    consistency: Consistency,
}

impl MapOptions {
    /// Whole file, [`Strategy::Auto`], [`Consistency::PointInTime`],
    /// snapshots taken lazily where the strategy can.
    ///
    /// ```
    /// let opts = mapcopy::MapOptions::new();
    /// # let _ = opts;
    /// ```
    pub fn new() -> MapOptions {
        MapOptions::default()
    }

    /// Use strategy `s`. A named strategy that cannot keep the contract for
    /// the file gives [`crate::ErrorKind::Unsupported`] instead of a mapping;
    /// `Auto` falls through to the next one.
    ///
    /// ```
    /// # let file = tempfile::tempfile().unwrap();
    /// let map = mapcopy::MapOptions::new().strategy(mapcopy::Strategy::Eager).map(&file)?;
    /// assert_eq!(map.strategy(), mapcopy::Strategy::Eager);
    /// # Ok::<(), mapcopy::Error>(())
    /// ```
    pub fn strategy(&mut self, s: Strategy) -> &mut Self {
        self.strategy = s;
        self
    }

    /// Start at byte `offset` of the file (any value up to the file's size;
    /// unaligned offsets are fine). Default 0.
    ///
    /// ```
    /// # use std::io::Write;
    /// # let mut file = tempfile::tempfile().unwrap();
    /// # file.write_all(b"0123456789").unwrap();
    /// let map = mapcopy::MapOptions::new().offset(3).len(4).map(&file)?;
    /// assert_eq!(&map[..], b"3456");
    /// # Ok::<(), mapcopy::Error>(())
    /// ```
    pub fn offset(&mut self, offset: u64) -> &mut Self {
        self.offset = offset;
        self
    }

    /// Map `len` bytes. Default: to the end of the file at map time. Bytes
    /// past the file's end (at the instant each page is snapshotted) read as
    /// zero.
    ///
    /// ```
    /// # let file = tempfile::tempfile().unwrap();
    /// // An empty file, a 10-byte mapping: all zeros, never SIGBUS.
    /// let map = mapcopy::MapOptions::new().len(10).map(&file)?;
    /// assert_eq!(&map[..], &[0u8; 10]);
    /// # Ok::<(), mapcopy::Error>(())
    /// ```
    pub fn len(&mut self, len: usize) -> &mut Self {
        self.len = Some(len);
        self
    }

    /// Take every page's snapshot before `map` returns (for lazy strategies;
    /// eager ones always do). Later writes by others then cost the mapping
    /// nothing.
    ///
    /// ```
    /// # let file = tempfile::tempfile().unwrap();
    /// let map = mapcopy::MapOptions::new().populate(true).map(&file)?;
    /// # drop(map);
    /// # Ok::<(), mapcopy::Error>(())
    /// ```
    pub fn populate(&mut self, yes: bool) -> &mut Self {
        self.populate = yes;
        self
    }

    /// Which instants the mapping's pages may show the file at. Default
    /// [`Consistency::PointInTime`]: the whole mapping is the file as of one
    /// instant during the `map` call. [`Consistency::PerPage`] lets each
    /// page be read at its first access (what lets [`Strategy::Lazy`] map
    /// huge files sparsely). [`Strategy::Auto`] considers only strategies
    /// that keep the consistency asked for; a named strategy that cannot
    /// keep it refuses with [`crate::ErrorKind::Unsupported`].
    ///
    /// ```
    /// use mapcopy::{Consistency, MapOptions};
    /// # let file = tempfile::tempfile().unwrap();
    /// let map = MapOptions::new().consistency(Consistency::PerPage).map(&file)?;
    /// # drop(map);
    /// # Ok::<(), mapcopy::Error>(())
    /// ```
    pub fn consistency(&mut self, c: Consistency) -> &mut Self {
        self.consistency = c;
        self
    }

    /// Maps the file read-only. See [`MapCopy`].
    ///
    /// ```
    /// # use std::io::Write;
    /// # let mut file = tempfile::tempfile().unwrap();
    /// # file.write_all(b"data").unwrap();
    /// let map = mapcopy::MapOptions::new().map(&file)?;
    /// assert_eq!(&map[..], b"data");
    /// # Ok::<(), mapcopy::Error>(())
    /// ```
    ///
    /// `file` is anything that has a file descriptor: `&File`,
    /// `BorrowedFd`, `OwnedFd`, ... (the mapping does not keep it).
    pub fn map(&self, file: impl AsFd) -> Result<MapCopy, Error> {
        let file = sys::fd::FileRef::new(file.as_fd());
        MapCopy::from_snapshot(self.snapshot(&file, false)?)
    }

    /// Maps the file with private, writable pages (S4: stores never reach
    /// the file). See [`MapCopyMut`].
    ///
    /// ```
    /// # use std::io::Write;
    /// # let mut file = tempfile::tempfile().unwrap();
    /// # file.write_all(b"data").unwrap();
    /// let mut map = mapcopy::MapOptions::new().map_mut(&file)?;
    /// map[0] = b'D';
    /// assert_eq!(&map[..], b"Data");
    /// # Ok::<(), mapcopy::Error>(())
    /// ```
    pub fn map_mut(&self, file: impl AsFd) -> Result<MapCopyMut, Error> {
        let file = sys::fd::FileRef::new(file.as_fd());
        MapCopyMut::from_snapshot(self.snapshot(&file, true)?)
    }

    fn snapshot(&self, file: &File, writable: bool) -> Result<Box<dyn strategy::Snapshot>, Error> {
        let req = self.request(file, writable)?;
        if req.len == 0 {
            // Nothing to snapshot, but a named strategy still has to be able
            // to serve this file, so that the answer does not depend on size.
            let s = match self.strategy {
                Strategy::Auto => strategy::choose(Some(&req)).0.unwrap_or(Strategy::Eager),
                s => {
                    strategy::check(s, Some(&req)).map_err(|why| Error::unsupported(s, why))?;
                    s
                }
            };
            return Ok(Box::new(Empty(s)));
        }
        strategy::map(self.strategy, &req)
    }

    /// Validates the file and the range; the one place bad input is caught.
    pub(crate) fn request<'f>(&self, file: &'f File, writable: bool) -> Result<Request<'f>, Error> {
        let meta = Meta::of(file).map_err(|e| Error::io("inspecting the file (fstat)", e))?;
        validate(&meta)?;
        if self.offset > meta.size {
            return Err(Error::invalid(format!(
                "offset {} is past the end of the file ({} bytes)",
                self.offset, meta.size
            )));
        }
        let len = match self.len {
            Some(len) => len,
            None => usize::try_from(meta.size - self.offset).map_err(|_| {
                Error::invalid(
                    "the file is larger than the address space; map a smaller range with .len()",
                )
            })?,
        };
        let page = sys::page_size() as u64;
        let aligned = self.offset & !(page - 1);
        let head = (self.offset - aligned) as usize;
        let end = (len as u64)
            .checked_add(self.offset)
            .and_then(|end| end.checked_add(page - 1))
            .filter(|&end| {
                end <= i64::MAX as u64
                    && usize::try_from(end - aligned).is_ok_and(|n| n < isize::MAX as usize)
            });
        if end.is_none() {
            return Err(Error::invalid(format!(
                "offset {} + length {len} overflows",
                self.offset
            )));
        }
        Ok(Request {
            file,
            meta,
            offset: aligned,
            head,
            len,
            writable,
            populate: self.populate,
            consistency: self.consistency,
            for_auto: false,
        })
    }
}

fn validate(meta: &Meta) -> Result<(), Error> {
    if meta.file_type != FileType::RegularFile {
        return Err(Error::invalid(format!(
            "cannot map a {}: only regular files have stable contents to snapshot; read it with std::io::Read instead",
            sys::file::type_name(meta.file_type)
        )));
    }
    if meta.is_pseudo_fs() {
        return Err(Error::invalid(format!(
            "cannot map a file on {}: its contents are generated on each read and its size is not real; read it with std::fs::read instead",
            sys::file::fs_name(meta.fs_type)
        )));
    }
    if !meta.readable {
        return Err(Error::invalid(
            "the file was opened without read access (write-only or O_PATH); open it with File::open or read(true)",
        ));
    }
    Ok(())
}

/// The snapshot of an empty range: no memory at all.
#[derive(Debug)]
struct Empty(Strategy);

// SAFETY: (`Snapshot`'s promises) an empty span at a fixed dangling,
// aligned address: no byte to read, write or change.
#[allow(unsafe_code)]
unsafe impl strategy::Snapshot for Empty {
    fn strategy(&self) -> Strategy {
        self.0
    }
    fn span(&self) -> strategy::Span {
        strategy::Span::EMPTY
    }
}
