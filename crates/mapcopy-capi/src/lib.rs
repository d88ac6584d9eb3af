//! The C ABI of mapcopy: `libmapcopy.so`, `libmapcopy.a` and
//! `include/mapcopy.h` (generated from this file by cbindgen; a test checks
//! that the header in the repository matches).
//!
//! ```c
//! struct mapcopy_map *m;
//! if (mapcopy_open("model.bin", NULL, &m) != MAPCOPY_OK) {
//!     fprintf(stderr, "mapcopy: %s\n", mapcopy_last_error());
//!     return 1;
//! }
//! use(mapcopy_data(m), mapcopy_len(m));   /* never changes, never SIGBUS */
//! mapcopy_close(m);
//! ```
//!
//! Every function returns (or reports) errors instead of unwinding: a
//! panic inside is caught and becomes [`MAPCOPY_ERR_INTERNAL`]. The message
//! of the last error of the calling thread is [`mapcopy_last_error`].
#![allow(unsafe_code)]
#![warn(missing_docs)]
// The C names are the ABI.
#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char, c_int};
use std::fs::File;
use std::os::fd::BorrowedFd;
use std::panic::{AssertUnwindSafe, catch_unwind};

use mapcopy_rs::{Consistency, ErrorKind, MapCopy, MapOptions, Strategy};

/// Success.
pub const MAPCOPY_OK: c_int = 0;
/// The strategy asked for (or, for `MAPCOPY_STRATEGY_AUTO`, every strategy)
/// cannot keep the contract for this file, process or kernel; the message
/// says why and what would work.
pub const MAPCOPY_ERR_UNSUPPORTED: c_int = -1;
/// Bad input: a NULL pointer, an unknown strategy or consistency, a range
/// past the end of the file, a directory, a pipe, ...
pub const MAPCOPY_ERR_INVALID_INPUT: c_int = -2;
/// The system said no (no such file, permission denied, an I/O error, no
/// memory); [`mapcopy_last_errno`] has the errno where there is one.
pub const MAPCOPY_ERR_IO: c_int = -3;
/// A bug in mapcopy (a panic, caught at the boundary).
pub const MAPCOPY_ERR_INTERNAL: c_int = -4;

/// Let mapcopy pick (the default).
pub const MAPCOPY_STRATEGY_AUTO: c_int = 0;
/// A read lease; snapshot when a writer opens the file.
pub const MAPCOPY_STRATEGY_LEASE: c_int = 1;
/// A reflink clone of the file.
pub const MAPCOPY_STRATEGY_REFLINK: c_int = 2;
/// fanotify pre-content events: copy pages a writer is about to change.
pub const MAPCOPY_STRATEGY_GUARD: c_int = 3;
/// userfaultfd: copy each page at its first access (per-page only).
pub const MAPCOPY_STRATEGY_LAZY: c_int = 4;
/// Copy everything at map time.
pub const MAPCOPY_STRATEGY_EAGER: c_int = 5;
/// A file nobody can change (a sealed memfd, fs-verity, erofs, squashfs):
/// a private mapping, nothing copied or kept.
pub const MAPCOPY_STRATEGY_IMMUTABLE: c_int = 6;
/// The kernel's own MAP_COPY (a patched kernel; unsupported elsewhere).
pub const MAPCOPY_STRATEGY_KERNEL: c_int = 7;

/// Every page as of one instant during the map call (the default).
pub const MAPCOPY_POINT_IN_TIME: c_int = 0;
/// Each page as of its first access.
pub const MAPCOPY_PER_PAGE: c_int = 1;

/// `length` meaning "to the end of the file at map time".
pub const MAPCOPY_TO_END: u64 = u64::MAX;

/// How to map. Fill with [`mapcopy_options_init`], then change fields;
/// a NULL `struct mapcopy_options *` means the defaults.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct mapcopy_options {
    /// One of `MAPCOPY_STRATEGY_*`.
    pub strategy: c_int,
    /// `MAPCOPY_POINT_IN_TIME` or `MAPCOPY_PER_PAGE`.
    pub consistency: c_int,
    /// File offset of the first byte (any value; rounded internally).
    pub offset: u64,
    /// Bytes to map, or `MAPCOPY_TO_END`.
    pub length: u64,
    /// Non-zero: take every page's snapshot before returning.
    pub populate: c_int,
}

impl Default for mapcopy_options {
    fn default() -> Self {
        mapcopy_options {
            strategy: MAPCOPY_STRATEGY_AUTO,
            consistency: MAPCOPY_POINT_IN_TIME,
            offset: 0,
            length: MAPCOPY_TO_END,
            populate: 0,
        }
    }
}

/// A copy mapping (opaque). Its bytes never change while it is open.
pub struct mapcopy_map {
    map: MapCopy,
}

/// The C-side error: a code, a message and maybe an errno.
struct Failure {
    code: c_int,
    message: String,
    errno: c_int,
}

thread_local! {
    static LAST: RefCell<(CString, c_int)> = RefCell::new((CString::default(), 0));
}

fn set_last(f: &Failure) {
    let msg = CString::new(f.message.replace('\0', "\\0")).unwrap_or_default();
    LAST.with(|l| *l.borrow_mut() = (msg, f.errno));
}

fn invalid(message: impl Into<String>) -> Failure {
    Failure {
        code: MAPCOPY_ERR_INVALID_INPUT,
        message: message.into(),
        errno: libc::EINVAL,
    }
}

impl From<mapcopy_rs::Error> for Failure {
    fn from(e: mapcopy_rs::Error) -> Failure {
        let errno = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .and_then(std::io::Error::raw_os_error)
            .unwrap_or(0);
        let code = match e.kind() {
            ErrorKind::Unsupported => MAPCOPY_ERR_UNSUPPORTED,
            ErrorKind::InvalidInput => MAPCOPY_ERR_INVALID_INPUT,
            _ => MAPCOPY_ERR_IO,
        };
        Failure {
            code,
            message: e.to_string(),
            errno,
        }
    }
}

/// Runs `f`, turning an error or a panic into a code (and the thread's
/// last error).
fn guard(f: impl FnOnce() -> Result<(), Failure>) -> c_int {
    let r = catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(Failure {
            code: MAPCOPY_ERR_INTERNAL,
            message: format!("internal error in mapcopy (please report): {what}"),
            errno: 0,
        })
    });
    match r {
        Ok(()) => {
            LAST.with(|l| *l.borrow_mut() = (CString::default(), 0));
            MAPCOPY_OK
        }
        Err(f) => {
            set_last(&f);
            f.code
        }
    }
}

fn strategy(code: c_int) -> Result<Strategy, Failure> {
    Ok(match code {
        MAPCOPY_STRATEGY_AUTO => Strategy::Auto,
        MAPCOPY_STRATEGY_LEASE => Strategy::Lease,
        MAPCOPY_STRATEGY_REFLINK => Strategy::Reflink,
        MAPCOPY_STRATEGY_GUARD => Strategy::Guard,
        MAPCOPY_STRATEGY_LAZY => Strategy::Lazy,
        MAPCOPY_STRATEGY_EAGER => Strategy::Eager,
        MAPCOPY_STRATEGY_IMMUTABLE => Strategy::Immutable,
        MAPCOPY_STRATEGY_KERNEL => Strategy::Kernel,
        other => {
            return Err(invalid(format!(
                "unknown strategy {other} (MAPCOPY_STRATEGY_*)"
            )));
        }
    })
}

/// The Rust options for `opts` (NULL: the defaults).
///
/// # Safety
/// `opts` is NULL or points to a readable `mapcopy_options`.
unsafe fn options(opts: *const mapcopy_options) -> Result<MapOptions, Failure> {
    // SAFETY: the caller's promise.
    let o = unsafe { opts.as_ref() }.copied().unwrap_or_default();
    let mut m = MapOptions::new();
    m.strategy(strategy(o.strategy)?)
        .offset(o.offset)
        .populate(o.populate != 0)
        .consistency(match o.consistency {
            MAPCOPY_POINT_IN_TIME => Consistency::PointInTime,
            MAPCOPY_PER_PAGE => Consistency::PerPage,
            other => {
                return Err(invalid(format!(
                    "unknown consistency {other} (MAPCOPY_POINT_IN_TIME or MAPCOPY_PER_PAGE)"
                )));
            }
        });
    if o.length != MAPCOPY_TO_END {
        let len = usize::try_from(o.length)
            .map_err(|_| invalid(format!("length {} does not fit in memory", o.length)))?;
        m.len(len);
    }
    Ok(m)
}

/// Writes a new mapping to `out`.
///
/// # Safety
/// `out` is NULL or writable.
unsafe fn hand_out(out: *mut *mut mapcopy_map, map: MapCopy) -> Result<(), Failure> {
    let b = Box::into_raw(Box::new(mapcopy_map { map }));
    // SAFETY: checked non-NULL by the callers before mapping; writable by
    // the caller's promise.
    unsafe { out.write(b) };
    Ok(())
}

/// Fills `opts` with the defaults: `MAPCOPY_STRATEGY_AUTO`,
/// `MAPCOPY_POINT_IN_TIME`, offset 0, `MAPCOPY_TO_END`, no populate.
///
/// # Safety
/// `opts` is NULL (then nothing happens) or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mapcopy_options_init(opts: *mut mapcopy_options) {
    // SAFETY: the caller's promise.
    if let Some(o) = unsafe { opts.as_mut() } {
        *o = mapcopy_options::default();
    }
}

/// Maps the file at `path` (opened read-only) with `opts` (NULL: the
/// defaults) and stores the mapping in `*out`. Returns `MAPCOPY_OK` or a
/// `MAPCOPY_ERR_*` code (then `*out` is untouched and
/// [`mapcopy_last_error`] says why).
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `opts` is NULL or readable;
/// `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mapcopy_open(
    path: *const c_char,
    opts: *const mapcopy_options,
    out: *mut *mut mapcopy_map,
) -> c_int {
    guard(|| {
        if path.is_null() || out.is_null() {
            return Err(invalid("mapcopy_open: path and out must not be NULL"));
        }
        // SAFETY: non-NULL and NUL-terminated by the caller's promise.
        let path = unsafe { CStr::from_ptr(path) };
        let path = std::path::Path::new(
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(path.to_bytes()),
        );
        // SAFETY: the caller's promise.
        let o = unsafe { options(opts) }?;
        let file = File::open(path).map_err(|e| Failure {
            code: MAPCOPY_ERR_IO,
            message: format!("opening {}: {e}", path.display()),
            errno: e.raw_os_error().unwrap_or(0),
        })?;
        let map = o.map(&file)?;
        // SAFETY: `out` checked above.
        unsafe { hand_out(out, map) }
    })
}

/// As [`mapcopy_open`], for an open file descriptor (readable; it stays
/// the caller's: not closed, and not needed after this returns).
///
/// # Safety
/// `fd` is an open file descriptor or negative; `opts` is NULL or
/// readable; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mapcopy_map_fd(
    fd: c_int,
    opts: *const mapcopy_options,
    out: *mut *mut mapcopy_map,
) -> c_int {
    guard(|| {
        if fd < 0 || out.is_null() {
            return Err(invalid(format!(
                "mapcopy_map_fd: fd {fd} is not a file descriptor, or out is NULL"
            )));
        }
        // SAFETY: the caller's promise.
        let o = unsafe { options(opts) }?;
        // SAFETY: an open fd by the caller's promise, borrowed for this call
        // only (the mapping does not keep it).
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let map = o.map(fd)?;
        // SAFETY: `out` checked above.
        unsafe { hand_out(out, map) }
    })
}

/// The mapped bytes (`mapcopy_len(m)` of them; not NUL-terminated). Valid
/// and unchanged until `mapcopy_close(m)`. NULL for a NULL `m`.
///
/// # Safety
/// `m` is NULL or a mapping from this library that is not closed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mapcopy_data(m: *const mapcopy_map) -> *const u8 {
    // SAFETY: the caller's promise.
    unsafe { m.as_ref() }.map_or(std::ptr::null(), |m| m.map.as_ptr())
}

/// The number of mapped bytes (0 for a NULL `m`).
///
/// # Safety
/// As [`mapcopy_data`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mapcopy_len(m: *const mapcopy_map) -> usize {
    // SAFETY: the caller's promise.
    unsafe { m.as_ref() }.map_or(0, |m| m.map.len())
}

/// The strategy that keeps the mapping, as a static lower-case string
/// ("immutable", "kernel", "lease", "reflink", "guard", "lazy", "eager"); ""
/// for a NULL `m`.
///
/// # Safety
/// As [`mapcopy_data`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mapcopy_strategy(m: *const mapcopy_map) -> *const c_char {
    // SAFETY: the caller's promise.
    let name = unsafe { m.as_ref() }.map_or("", |m| m.map.strategy().name());
    static NAMES: [&CStr; 9] = [
        c"auto",
        c"kernel",
        c"lease",
        c"reflink",
        c"guard",
        c"lazy",
        c"eager",
        c"immutable",
        c"",
    ];
    NAMES
        .iter()
        .find(|n| n.to_bytes() == name.as_bytes())
        .unwrap_or(&NAMES[8])
        .as_ptr()
}

/// Unmaps `m` (NULL: nothing). Its data pointer is invalid afterwards.
///
/// # Safety
/// `m` is NULL or a mapping from this library, closed at most once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mapcopy_close(m: *mut mapcopy_map) {
    if !m.is_null() {
        // SAFETY: made by `Box::into_raw` in `hand_out`, closed once.
        let b = unsafe { Box::from_raw(m) };
        let _ = catch_unwind(AssertUnwindSafe(move || drop(b)));
    }
}

/// The message of the calling thread's last failed call ("" after a
/// successful one). Valid until the thread's next call into mapcopy.
#[unsafe(no_mangle)]
pub extern "C" fn mapcopy_last_error() -> *const c_char {
    LAST.with(|l| l.borrow().0.as_ptr())
}

/// The errno behind the calling thread's last failed call, or 0.
#[unsafe(no_mangle)]
pub extern "C" fn mapcopy_last_errno() -> c_int {
    LAST.with(|l| l.borrow().1)
}
