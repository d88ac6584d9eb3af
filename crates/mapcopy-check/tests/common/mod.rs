//! Helpers for the torture and fault tests, over
//! `mapcopy_check::fixture::LoopMount` (loop-mounted ext4/xfs/btrfs images).
#![allow(dead_code)]

use std::fs::File;
use std::path::Path;
use std::process::Command;

use mapcopy_check::fixture::{FsKind, LoopMount};

/// Skip (printing why) or, with `MAPCOPY_REQUIRE_ALL=1`, fail.
pub fn skip(why: &str) -> Result<(), libtest_mimic::Failed> {
    // Prints "skipped: ..." itself.
    mapcopy_check::fixture::skip_or_fail(why)
        .map(|_| ())
        .map_err(Into::into)
}

/// Runs a command; its stdout, or an error naming it and its stderr.
pub fn sh(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A loop-mounted filesystem of the given kind.
pub fn mount(kind: FsKind) -> Result<LoopMount, String> {
    LoopMount::new(kind)
}

/// Byte offset on the device of the first block of `path` (from
/// `filefrag -v`, which uses FIEMAP).
pub fn physical_start(path: &Path) -> Result<u64, String> {
    let out = sh("filefrag", &["-v", "-b4096", path.to_str().unwrap()])?;
    // "   0:        0..     255:      34816..     35071:    256:   last,eof"
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() == Some(&"0:") && f.len() >= 4 {
            let phys = f[3]
                .trim_end_matches("..")
                .parse::<u64>()
                .map_err(|e| format!("{line}: {e}"))?;
            return Ok(phys * 4096);
        }
    }
    Err(format!("no extent in filefrag output: {out}"))
}

/// Cuts the loop device under `m` at byte `at` (truncates its backing
/// image, `losetup -c`): every block from there on fails with EIO.
pub fn fail_io_from(m: &LoopMount, at: u64) -> Result<(), String> {
    File::options()
        .write(true)
        .open(m.image())
        .and_then(|f| f.set_len(at))
        .map_err(|e| e.to_string())?;
    sh("losetup", &["-c", m.device().ok_or("no loop device")?])?;
    Ok(())
}

/// Strategies `mapcopy::probe` finds usable for the file at `path`, and the
/// others with the reason.
pub fn usable_for(path: &Path) -> (Vec<mapcopy::Strategy>, Vec<(mapcopy::Strategy, String)>) {
    let mut yes = Vec::new();
    let mut no = Vec::new();
    for s in mapcopy::probe(Some(path)).strategies {
        match s.usable {
            Ok(_) => yes.push(s.strategy),
            Err(why) => no.push((s.strategy, why)),
        }
    }
    (yes, no)
}
