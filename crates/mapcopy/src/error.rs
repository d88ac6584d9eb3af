//! The one error type of the crate.

use std::fmt;
use std::io;

use crate::Strategy;

/// What went wrong, in the three ways a caller can act on.
///
/// ```
/// use mapcopy::{ErrorKind, MapOptions};
/// let dir = std::fs::File::open("/").unwrap();
/// let err = MapOptions::new().map(&dir).unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::InvalidInput);
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The chosen strategy cannot keep the contract here (for this file,
    /// this process or this kernel). The message names the reason; another
    /// strategy, or [`Strategy::Auto`], may work.
    Unsupported,
    /// The request itself is wrong: not a regular file, an offset past the
    /// end, a length that overflows, a file opened write-only.
    InvalidInput,
    /// The kernel refused an operation (reading the file, allocating memory).
    /// [`std::error::Error::source`] holds the underlying [`io::Error`].
    Io,
}

/// The error of every fallible call in this crate.
///
/// Its message says what failed and, where there is one, what to do instead.
/// It converts into [`io::Error`] for callers that use `?` in io code.
///
/// ```
/// use mapcopy::{ErrorKind, MapOptions, Strategy};
/// let file = tempfile::tempfile().unwrap();
/// match MapOptions::new().offset(1 << 40).map(&file) {
///     Err(e) => {
///         assert_eq!(e.kind(), ErrorKind::InvalidInput);
///         eprintln!("cannot map: {e}");
///     }
///     Ok(_) => unreachable!("offset is past the end of an empty file"),
/// }
/// ```
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<io::Error>,
}

impl Error {
    /// Which of the three kinds this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The errno behind an `Io` error, if any.
    pub(crate) fn raw_os_error(&self) -> Option<i32> {
        self.source.as_ref().and_then(io::Error::raw_os_error)
    }

    /// The same error with `hint` appended to its message.
    pub(crate) fn with_hint(mut self, hint: &str) -> Error {
        self.message = format!("{}; {hint}", self.message);
        self
    }

    pub(crate) fn unsupported(strategy: Strategy, reason: impl fmt::Display) -> Error {
        Error {
            kind: ErrorKind::Unsupported,
            message: format!(
                "strategy {strategy} cannot keep the MAP_COPY contract here: {reason}"
            ),
            source: None,
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Error {
        Error {
            kind: ErrorKind::InvalidInput,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn io(context: impl fmt::Display, source: impl Into<io::Error>) -> Error {
        let source = source.into();
        Error {
            kind: ErrorKind::Io,
            message: format!("{context}: {source}"),
            source: Some(source),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match e.kind {
            ErrorKind::Unsupported => io::ErrorKind::Unsupported,
            ErrorKind::InvalidInput => io::ErrorKind::InvalidInput,
            ErrorKind::Io => e
                .source
                .as_ref()
                .map_or(io::ErrorKind::Other, io::Error::kind),
        };
        io::Error::new(kind, e)
    }
}
