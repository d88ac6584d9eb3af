//! The `mapcopy` Python module: MAP_COPY mappings as read-only buffers.
//!
//! ```python
//! import mapcopy, numpy
//! with mapcopy.open("weights.bin") as m:
//!     a = numpy.frombuffer(m, dtype=numpy.float32)  # zero-copy view
//!     print(m.strategy, len(m), a[:4])
//!     del a  # close() refuses while a view exists
//! ```
//!
//! A `MapCopy` object exports its mapping through the buffer protocol,
//! read-only (a request for a writable buffer raises `BufferError`), so
//! `memoryview(m)`, `bytes(m)` and `numpy.frombuffer(m, dtype)` work
//! without copying. Every exported view holds a reference to the object,
//! and `close()` raises `BufferError` while any view exists (as
//! `mmap.mmap.close` does): after `close()` returns the mapping is gone, and
//! no view can outlive it.
//!
//! Errors: `ErrorKind::Io` becomes `OSError` with the errno (so
//! `FileNotFoundError`, `PermissionError`, ... as Python picks for it),
//! `ErrorKind::InvalidInput` becomes `ValueError` and
//! `ErrorKind::Unsupported` becomes `mapcopy.UnsupportedError` (a subclass
//! of `OSError`).

use std::ffi::c_int;
use std::fs::File;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard};

use mapcopy_rs::{Consistency, ErrorKind, MapCopy, MapOptions, Strategy};
use pyo3::exceptions::{PyBufferError, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use pyo3::{create_exception, ffi};

create_exception!(
    mapcopy,
    UnsupportedError,
    PyOSError,
    "No strategy (or not the one asked for) can keep the MAP_COPY contract for this file here; the message says why."
);

/// A `mapcopy::Error` as the Python exception its kind calls for.
fn to_py(e: mapcopy_rs::Error, path: Option<&PathBuf>) -> PyErr {
    let msg = e.to_string();
    match e.kind() {
        ErrorKind::InvalidInput => PyValueError::new_err(msg),
        ErrorKind::Unsupported => UnsupportedError::new_err(msg),
        // Io, and any kind added later.
        _ => {
            let errno = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .and_then(std::io::Error::raw_os_error);
            os_error(errno, msg, path)
        }
    }
}

/// `OSError(errno, msg, filename)`, which Python turns into the matching
/// subclass (`FileNotFoundError` for `ENOENT`, ...).
fn os_error(errno: Option<i32>, msg: String, path: Option<&PathBuf>) -> PyErr {
    // Python prints the errno itself: drop io::Error's " (os error N)".
    let msg = match errno {
        Some(n) => msg
            .strip_suffix(&format!(" (os error {n})"))
            .map(str::to_owned)
            .unwrap_or(msg),
        None => msg,
    };
    match (errno, path) {
        (Some(n), Some(p)) => PyOSError::new_err((n, msg, p.to_string_lossy().into_owned())),
        (Some(n), None) => PyOSError::new_err((n, msg)),
        (None, _) => PyOSError::new_err(msg),
    }
}

/// What a `MapCopy` object owns, behind a lock (the object is shared by
/// every thread; with the GIL the lock is never contended).
struct Inner {
    /// `None` once closed.
    map: Option<MapCopy>,
    /// Buffers exported and not yet released.
    exports: usize,
}

/// A read-only MAP_COPY mapping of (a range of) a file.
///
/// Supports the buffer protocol (read-only, zero-copy), `len()`, the
/// context-manager protocol and `close()`.
#[pyclass(name = "MapCopy", module = "mapcopy", frozen)]
struct PyMapCopy {
    inner: Mutex<Inner>,
    strategy: &'static str,
    consistency: &'static str,
    offset: u64,
}

impl PyMapCopy {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere while it was held;
        // the counts in it stay consistent (every update is one statement).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn closed() -> PyErr {
    PyValueError::new_err("mapcopy mapping is closed")
}

#[pymethods]
impl PyMapCopy {
    /// The strategy that made this mapping: "lease", "reflink", "guard",
    /// "lazy" or "eager".
    #[getter]
    fn strategy(&self) -> &'static str {
        self.strategy
    }

    /// The consistency asked for: "point-in-time" or "per-page".
    #[getter]
    fn consistency(&self) -> &'static str {
        self.consistency
    }

    /// File offset of the first mapped byte.
    #[getter]
    fn offset(&self) -> u64 {
        self.offset
    }

    /// True once `close()` has unmapped it.
    #[getter]
    fn closed(&self) -> bool {
        self.lock().map.is_none()
    }

    fn __len__(&self) -> PyResult<usize> {
        self.lock().map.as_ref().map(|m| m.len()).ok_or_else(closed)
    }

    /// Unmaps now. Raises `BufferError` while a view of the buffer
    /// (`memoryview`, numpy array, ...) still exists; a second call does
    /// nothing.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let map = {
            let mut inner = self.lock();
            if inner.exports > 0 {
                return Err(PyBufferError::new_err(format!(
                    "cannot close a mapcopy mapping while {} exported buffer(s) (memoryview, numpy array, ...) exist; delete them first",
                    inner.exports
                )));
            }
            inner.map.take()
        };
        // Unmapping may wait for the strategy's helper thread: without the GIL.
        py.detach(move || drop(map));
        Ok(())
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    /// Closes (raising `BufferError` if views still exist, as `close()`).
    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        match &self.lock().map {
            Some(m) => format!(
                "<mapcopy.MapCopy strategy={} offset={} len={}>",
                self.strategy,
                self.offset,
                m.len()
            ),
            None => format!("<mapcopy.MapCopy strategy={} closed>", self.strategy),
        }
    }

    /// Buffer protocol: a read-only, one-dimensional buffer of bytes.
    ///
    /// # Safety
    ///
    /// `view` is a valid `Py_buffer` to fill, as CPython passes it.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        // SAFETY: `view` is valid (CPython's contract for getbuffer). An
        // exporter that fails must leave `obj` NULL; every error below does.
        unsafe { (*view).obj = std::ptr::null_mut() };
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err(
                "mapcopy mappings are read-only: a writable buffer was requested",
            ));
        }
        let py = slf.py();
        let this = slf.get();
        let mut inner = this.lock();
        let (ptr, len) = match &inner.map {
            Some(m) => (m.as_ptr(), m.len()),
            None => return Err(closed()),
        };
        let len = ffi::Py_ssize_t::try_from(len)
            .map_err(|_| PyBufferError::new_err("mapping too large for a buffer"))?;
        // SAFETY: `view` is valid (CPython's contract for getbuffer); `ptr`
        // points at `len` readable bytes that stay mapped while `view` holds
        // the reference to `slf` that PyBuffer_FillInfo takes, because
        // `close()` refuses while `exports` (counted below) is non-zero and
        // the mapping is dropped only with the object. readonly = 1, so a
        // PyBUF_WRITABLE request fails with BufferError and the bytes are
        // never written through the view.
        let rc = unsafe {
            ffi::PyBuffer_FillInfo(view, slf.as_ptr(), ptr.cast_mut().cast(), len, 1, flags)
        };
        if rc != 0 {
            // SAFETY: as above.
            unsafe { (*view).obj = std::ptr::null_mut() };
            return Err(PyErr::fetch(py));
        }
        inner.exports += 1;
        Ok(())
    }

    /// Buffer protocol: a view was released.
    ///
    /// # Safety
    ///
    /// Called by CPython once per successful `__getbuffer__`.
    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        let mut inner = self.lock();
        inner.exports = inner.exports.saturating_sub(1);
    }
}

/// Parses a non-negative integer argument.
fn non_negative(name: &str, v: i64) -> PyResult<u64> {
    u64::try_from(v).map_err(|_| PyValueError::new_err(format!("{name} must be >= 0, got {v}")))
}

/// Maps `length` bytes (default: to the end of the file) of the file at
/// `path` from `offset`, keeping the MAP_COPY contract: each page a snapshot
/// no other writer can change, no SIGBUS when the file is truncated. The
/// GIL is released while mapping.
#[pyfunction]
#[pyo3(signature = (path, *, strategy = "auto", offset = 0, length = None, populate = false, consistency = "point-in-time"))]
fn open(
    py: Python<'_>,
    path: PathBuf,
    strategy: &str,
    offset: i64,
    length: Option<i64>,
    populate: bool,
    consistency: &str,
) -> PyResult<PyMapCopy> {
    let strategy = Strategy::from_str(strategy).map_err(|e| to_py(e, None))?;
    let consistency = Consistency::from_str(consistency).map_err(|e| to_py(e, None))?;
    let offset = non_negative("offset", offset)?;
    let length = length
        .map(|l| {
            let l = non_negative("length", l)?;
            usize::try_from(l).map_err(|_| PyValueError::new_err("length too large"))
        })
        .transpose()?;
    let mut opts = MapOptions::new();
    opts.strategy(strategy)
        .offset(offset)
        .populate(populate)
        .consistency(consistency);
    if let Some(l) = length {
        opts.len(l);
    }
    let map = py
        .detach(|| -> Result<MapCopy, PyErrParts> {
            let file = File::open(&path).map_err(|e| PyErrParts::Os(e, path.clone()))?;
            opts.map(&file)
                .map_err(|e| PyErrParts::Map(e, path.clone()))
        })
        .map_err(|p| match p {
            PyErrParts::Os(e, p) => os_error(e.raw_os_error(), e.to_string(), Some(&p)),
            PyErrParts::Map(e, p) => to_py(e, Some(&p)),
        })?;
    Ok(PyMapCopy {
        strategy: map.strategy().name(),
        consistency: consistency.name(),
        offset,
        inner: Mutex::new(Inner {
            map: Some(map),
            exports: 0,
        }),
    })
}

/// An error made without the GIL, turned into a Python exception with it.
enum PyErrParts {
    Os(std::io::Error, PathBuf),
    Map(mapcopy_rs::Error, PathBuf),
}

/// Which strategies can map `path` (or any file) in this process on this
/// kernel, why not the others, and which one "auto" picks, as a dict:
/// `kernel`, `path`, `filesystem` (`{"name": ...}`, `{"error": ...}` or
/// None), `facts` (list of `{"topic", "available", "finding"}`),
/// `strategies` (list of `{"strategy", "usable", "how" or "reason",
/// "consistency", "lacks"}`), `auto` and `auto_error`: the shape of
/// `mapcopy probe --json`.
#[pyfunction]
#[pyo3(signature = (path = None))]
fn probe<'py>(py: Python<'py>, path: Option<PathBuf>) -> PyResult<Bound<'py, PyDict>> {
    let p = py.detach(|| mapcopy_rs::probe(path.as_deref()));
    let d = PyDict::new(py);
    d.set_item("kernel", &p.kernel)?;
    d.set_item("path", p.path.as_ref().map(|x| x.display().to_string()))?;
    let fs = match &p.filesystem {
        Some(Ok(name)) => {
            let f = PyDict::new(py);
            f.set_item("name", name)?;
            Some(f)
        }
        Some(Err(e)) => {
            let f = PyDict::new(py);
            f.set_item("error", e)?;
            Some(f)
        }
        None => None,
    };
    d.set_item("filesystem", fs)?;
    let facts = PyList::empty(py);
    for f in &p.facts {
        let x = PyDict::new(py);
        x.set_item("topic", f.topic)?;
        x.set_item("available", f.available)?;
        x.set_item("finding", &f.finding)?;
        facts.append(x)?;
    }
    d.set_item("facts", facts)?;
    let strategies = PyList::empty(py);
    for s in &p.strategies {
        let x = PyDict::new(py);
        x.set_item("strategy", s.strategy.name())?;
        match &s.usable {
            Ok(how) => {
                x.set_item("usable", true)?;
                x.set_item("how", how)?;
            }
            Err(why) => {
                x.set_item("usable", false)?;
                x.set_item("reason", why)?;
            }
        }
        x.set_item("consistency", s.consistency.name())?;
        x.set_item("lacks", s.lacks.clone())?;
        strategies.append(x)?;
    }
    d.set_item("strategies", strategies)?;
    match &p.auto {
        Ok(s) => {
            d.set_item("auto", s.name())?;
            d.set_item("auto_error", py.None())?;
        }
        Err(e) => {
            d.set_item("auto", py.None())?;
            d.set_item("auto_error", e)?;
        }
    }
    Ok(d)
}

/// MAP_COPY for Linux: read-only file mappings whose pages no other writer
/// can change, as zero-copy buffers.
#[pymodule(name = "mapcopy")]
fn mapcopy_py(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(open, m)?)?;
    m.add_function(wrap_pyfunction!(probe, m)?)?;
    m.add_class::<PyMapCopy>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("UnsupportedError", m.py().get_type::<UnsupportedError>())?;
    m.add(
        "STRATEGIES",
        Strategy::ALL.iter().map(|s| s.name()).collect::<Vec<_>>(),
    )?;
    Ok(())
}
