//! Capability detection: which strategies this machine, process and file
//! allow, and why not the others.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::strategy::{self, Strategy};
use crate::{MapOptions, sys};

/// What [`probe`] found: for each strategy, usable or the reason not, and
/// which one [`Strategy::Auto`] picks.
///
/// ```
/// let p = mapcopy::probe(None);
/// assert_eq!(p.strategies.len(), 5);
/// // Eager needs nothing, so Auto always has a choice.
/// assert!(p.auto.is_ok());
/// println!("{p}");
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Probe {
    /// `uname -r` of the running kernel.
    pub kernel: String,
    /// The file probed, if any.
    pub path: Option<PathBuf>,
    /// Filesystem type of `path` (`ext4`, `xfs`, ...), or why it could not
    /// be inspected.
    pub filesystem: Option<Result<String, String>>,
    /// One entry per concrete strategy, in the order `Auto` considers them.
    pub strategies: Vec<StrategyProbe>,
    /// The strategy `Auto` picks, or why none can.
    pub auto: Result<Strategy, String>,
}

/// One strategy's verdict in a [`Probe`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StrategyProbe {
    /// Which strategy.
    pub strategy: Strategy,
    /// `Ok` with what makes it usable if it can keep the contract here, else
    /// `Err` with the reason it cannot.
    pub usable: Result<String, String>,
}

/// Detects which strategies can map `path` (or any file, with `None`) in
/// this process on this kernel, and which one `Auto` would choose.
///
/// ```
/// let tmp = tempfile::NamedTempFile::new().unwrap();
/// let p = mapcopy::probe(Some(tmp.path()));
/// for s in &p.strategies {
///     match &s.usable {
///         Ok(how) => println!("{}: usable ({how})", s.strategy),
///         Err(why) => println!("{}: not usable: {why}", s.strategy),
///     }
/// }
/// ```
pub fn probe(path: Option<&Path>) -> Probe {
    let kernel = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let mut filesystem = None;
    let file = path.map(|p| File::open(p).map_err(|e| format!("cannot open {}: {e}", p.display())));
    let opts = MapOptions::new();
    let req = match &file {
        Some(Ok(f)) => match opts.request(f, false) {
            Ok(r) => {
                filesystem = Some(Ok(sys::file::fs_name(r.meta.fs_type)));
                Some(Ok(r))
            }
            Err(e) => Some(Err(e.to_string())),
        },
        Some(Err(e)) => Some(Err(e.clone())),
        None => None,
    };
    let (strategies, auto) = match &req {
        Some(Err(e)) => {
            filesystem = Some(Err(e.clone()));
            let entries = Strategy::ALL
                .iter()
                .map(|&s| StrategyProbe {
                    strategy: s,
                    usable: Err(e.clone()),
                })
                .collect();
            (entries, Err(e.clone()))
        }
        _ => {
            let r = req.as_ref().and_then(|r| r.as_ref().ok());
            let entries = Strategy::ALL
                .iter()
                .map(|&s| StrategyProbe {
                    strategy: s,
                    usable: strategy::check(s, r),
                })
                .collect();
            let auto = strategy::choose(r)
                .0
                .ok_or_else(|| "no strategy can map this file".to_string());
            (entries, auto)
        }
    };
    Probe {
        kernel,
        path: path.map(Path::to_path_buf),
        filesystem,
        strategies,
        auto,
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "kernel: {}", self.kernel)?;
        if let Some(p) = &self.path {
            write!(f, "file: {}", p.display())?;
            match &self.filesystem {
                Some(Ok(fs)) => writeln!(f, " (on {fs})")?,
                Some(Err(e)) => writeln!(f, " ({e})")?,
                None => writeln!(f)?,
            }
        }
        for s in &self.strategies {
            match &s.usable {
                Ok(how) => writeln!(f, "  {:<8} usable: {how}", s.strategy.name())?,
                Err(why) => writeln!(f, "  {:<8} no: {why}", s.strategy.name())?,
            }
        }
        match &self.auto {
            Ok(s) => write!(f, "auto picks: {s}"),
            Err(e) => write!(f, "auto picks nothing: {e}"),
        }
    }
}
