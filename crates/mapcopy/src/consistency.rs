//! [`Consistency`]: whether every page of a mapping shows the file at one
//! instant, or each page at its own.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// Which instants a mapping's pages may show the file at.
///
/// A structured file (a header that points at data further on:
/// safetensors, ELF, DWARF, Arrow IPC, SQLite, fonts) must be read as one
/// version: a header of one version with data of another is garbage, or
/// worse, valid-looking garbage. [`Consistency::PointInTime`] (the default)
/// guarantees that. [`Consistency::PerPage`] is the weaker S1 contract of
/// the crate docs, which lets [`crate::Strategy::Lazy`] read huge files
/// sparsely.
///
/// | strategy | keeps |
/// |---|---|
/// | `Immutable` | point-in-time: the file cannot change at all |
/// | `Guard`, `Lease`, `Reflink` | point-in-time: the snapshot is the file at map time |
/// | `Eager` | point-in-time: the copy is validated (a read lease held over it, or the file's ctime and size unchanged across it, else copied again) |
/// | `Lazy` | per-page only: each page is read at its first access |
///
/// [`crate::Strategy::Auto`] considers only strategies that keep the
/// requested consistency; a named strategy that cannot refuses with
/// [`crate::ErrorKind::Unsupported`] and says why.
///
/// ```
/// use mapcopy::{Consistency, MapOptions, Strategy};
/// # let file = tempfile::tempfile()?;
/// // Lazy gives only per-page consistency, and says so when asked for more.
/// let err = MapOptions::new().strategy(Strategy::Lazy).map(&file).unwrap_err();
/// assert_eq!(err.kind(), mapcopy::ErrorKind::Unsupported);
/// // Asked for per-page, any strategy will do.
/// let map = MapOptions::new().consistency(Consistency::PerPage).map(&file)?;
/// # drop(map);
/// assert_eq!(Consistency::default(), Consistency::PointInTime);
/// assert_eq!("per-page".parse::<Consistency>()?, Consistency::PerPage);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Consistency {
    /// Every page holds the file as of one instant `T` with `T_map_start <=
    /// T <= T_map_return`: the 4.4BSD meaning of `MAP_COPY`. (A `write()`
    /// running at that instant may be seen in part, as the crate docs list
    /// per strategy.)
    #[default]
    PointInTime,
    /// Each page holds the file as of its own instant between the map call
    /// and the page's first access (S1). Pages of one mapping may show
    /// different versions of the file.
    PerPage,
}

impl Consistency {
    /// Both values, strongest first.
    pub const ALL: [Consistency; 2] = [Consistency::PointInTime, Consistency::PerPage];

    /// Lower-case name, as accepted by [`FromStr`] and the CLI:
    /// `point-in-time` or `per-page`.
    ///
    /// ```
    /// assert_eq!(mapcopy::Consistency::PerPage.name(), "per-page");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Consistency::PointInTime => "point-in-time",
            Consistency::PerPage => "per-page",
        }
    }
}

impl fmt::Display for Consistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Consistency {
    type Err = Error;
    fn from_str(s: &str) -> Result<Consistency, Error> {
        Consistency::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown consistency {s:?}; expected point-in-time or per-page"
                ))
            })
    }
}

impl crate::Strategy {
    /// Does this strategy keep consistency `c`? Every strategy keeps
    /// [`Consistency::PerPage`]; [`crate::Strategy::Lazy`] keeps nothing
    /// stronger. `Auto` keeps whatever it is asked for (it picks among the
    /// strategies that keep it).
    ///
    /// ```
    /// use mapcopy::{Consistency, Strategy};
    /// assert!(Strategy::Guard.keeps(Consistency::PointInTime));
    /// assert!(!Strategy::Lazy.keeps(Consistency::PointInTime));
    /// assert!(Strategy::Lazy.keeps(Consistency::PerPage));
    /// ```
    pub fn keeps(self, c: Consistency) -> bool {
        c == Consistency::PerPage || self != crate::Strategy::Lazy
    }
}
