//! Filesystems: the temp dir's and the loop mounts the trials run on.

use super::*;

/// A directory on one filesystem where trials make their files.
#[derive(Clone, Debug)]
pub(super) struct FsDir {
    pub(super) name: String,
    pub(super) path: PathBuf,
}

/// Which kinds a filesystem supports, known in advance (a kind the fs turns
/// out not to support at run time is skipped with the reason).
pub(super) fn fs_supports(fs: &str, kind: Kind) -> bool {
    !matches!(
        (fs, kind),
        ("ext4", Kind::CloneRange)
            | ("btrfs", Kind::CollapseRange | Kind::InsertRange)
            | (
                "tmpfs",
                Kind::CloneRange | Kind::CollapseRange | Kind::InsertRange
            )
    )
}

/// Sets up the filesystems: the temp dir's, plus xfs and btrfs loop mounts
/// (made here, or inherited from the outer run through `MOUNTS_ENV`).
/// Returns the dirs, the mounts to drop at the end, and the reasons any
/// could not be made.
pub(super) fn filesystems() -> (Vec<FsDir>, Vec<LoopMount>, Vec<(FsKind, String)>) {
    let tmp = std::env::temp_dir();
    let name = fixture::fs_name(&tmp).unwrap_or_else(|e| format!("unknown ({e})"));
    let mut dirs = vec![FsDir { name, path: tmp }];
    let mut mounts = Vec::new();
    let mut missing = Vec::new();
    // A re-executed single trial never mounts: it may die (SIGBUS, abort)
    // and leave the mounts behind. It uses the outer run's, if handed any.
    let list = std::env::var(MOUNTS_ENV)
        .ok()
        .or_else(|| std::env::var_os(privilege::TRIAL_ENV).map(|_| String::new()));
    if let Some(list) = list {
        for item in list.split(',').filter(|s| !s.is_empty()) {
            if let Some((name, path)) = item.split_once('=') {
                dirs.push(FsDir {
                    name: name.into(),
                    path: path.into(),
                });
            }
        }
        return (dirs, mounts, missing);
    }
    for kind in [FsKind::Xfs, FsKind::Btrfs] {
        match LoopMount::new(kind) {
            Ok(m) => {
                dirs.push(FsDir {
                    name: kind.name().into(),
                    path: m.path().to_path_buf(),
                });
                mounts.push(m);
            }
            Err(why) => missing.push((kind, why)),
        }
    }
    (dirs, mounts, missing)
}

pub(super) fn mounts_env(dirs: &[FsDir]) -> String {
    dirs.iter()
        .skip(1)
        .map(|d| format!("{}={}", d.name, d.path.display()))
        .collect::<Vec<_>>()
        .join(",")
}
