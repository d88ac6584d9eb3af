//! Running parts of a test as an unprivileged user (`nobody`, uid/gid
//! 65534) with `setpriv`, for the cases whose answer depends on privilege
//! (which strategy `Auto` picks, which errors a strategy gives).
//!
//! A closure cannot change its user safely inside a multi-threaded test
//! process, so the unprivileged part always runs in a new process: either a
//! [`crate::child`] entry point ([`child_as_nobody`]) or one trial of a
//! libtest-style test binary re-executed with a filter ([`trial`]).
//!
//! ```no_run
//! use mapcopy_check::privilege;
//! match privilege::trial("auto/probe", true) {
//!     Ok(mut cmd) => assert!(cmd.status().unwrap().success()),
//!     Err(why) => eprintln!("skipped: {why}"),
//! }
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::child;

/// uid and gid of `nobody`.
pub const NOBODY: u32 = 65534;

/// Environment variable set in a process that [`trial`] started.
pub const TRIAL_ENV: &str = "MAPCOPY_CHECK_TRIAL";

/// Is this process running as root (effective uid 0)?
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn setpriv() -> Result<PathBuf, String> {
    ["/usr/bin/setpriv", "/bin/setpriv", "/usr/sbin/setpriv"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| "setpriv (util-linux) is not installed".to_string())
}

/// A command that runs `program` as `nobody` with no supplementary groups
/// and no capabilities. `Err` says why it cannot (not root, no setpriv).
pub fn as_nobody(program: &Path) -> Result<Command, String> {
    if !is_root() {
        return Err("switching to the unprivileged user needs root".into());
    }
    let mut cmd = Command::new(setpriv()?);
    cmd.arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg("--clear-groups")
        .arg("--inh-caps=-all")
        .arg("--")
        .arg(program);
    Ok(cmd)
}

/// The running executable, checked to be executable by `nobody` (every
/// directory on the way searchable by others).
pub fn current_exe_for_nobody() -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut p = exe.as_path();
    let meta = std::fs::metadata(p).map_err(|e| e.to_string())?;
    if meta.permissions().mode() & 0o001 == 0 {
        return Err(format!("{} is not executable by others", exe.display()));
    }
    while let Some(parent) = p.parent() {
        let m = std::fs::metadata(parent).map_err(|e| e.to_string())?;
        if m.permissions().mode() & 0o001 == 0 {
            return Err(format!(
                "{} is not searchable by others, so nobody cannot run {}",
                parent.display(),
                exe.display()
            ));
        }
        p = parent;
    }
    Ok(exe)
}

/// A [`crate::child`] entry point run as `nobody`.
pub fn child_as_nobody<S: AsRef<std::ffi::OsStr>>(
    name: &str,
    args: &[S],
) -> Result<Command, String> {
    let exe = current_exe_for_nobody()?;
    let mut cmd = as_nobody(&exe)?;
    cmd.env(child::CHILD_ENV, name).args(args);
    Ok(cmd)
}

/// One trial of this (libtest-compatible) test binary, run alone in a new
/// process (`--exact NAME`), as `nobody` if `unprivileged`. The child sees
/// [`TRIAL_ENV`] set to the trial name.
pub fn trial(name: &str, unprivileged: bool) -> Result<Command, String> {
    let mut cmd = if unprivileged {
        as_nobody(&current_exe_for_nobody()?)?
    } else {
        Command::new(std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?)
    };
    cmd.args(["--exact", name, "--test-threads", "1", "--nocapture"])
        .env(TRIAL_ENV, name)
        .env_remove(child::CHILD_ENV);
    Ok(cmd)
}

/// Is this process a single trial started by [`trial`] for `name`?
pub fn in_trial(name: &str) -> bool {
    std::env::var(TRIAL_ENV).is_ok_and(|v| v == name)
}
