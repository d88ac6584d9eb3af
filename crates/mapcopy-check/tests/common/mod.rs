//! Loop-mounted filesystems for the torture and fault tests (a small local
//! helper; `mapcopy_check::fixture` offers the same once it is on main).
#![allow(dead_code)]

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Skip (printing why) or, with `MAPCOPY_REQUIRE_ALL=1`, fail.
pub fn skip(why: &str) -> Result<(), libtest_mimic::Failed> {
    if std::env::var("MAPCOPY_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        return Err(format!("MAPCOPY_REQUIRE_ALL=1 and this test cannot run: {why}").into());
    }
    eprintln!("skipped: {why}");
    Ok(())
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

/// A filesystem (4 KiB blocks) on a loop device over a sparse file in a temp
/// dir. Torn down on drop (umount, losetup -d), even after a failure.
pub struct LoopFs {
    dir: tempfile::TempDir,
    loopdev: Option<String>,
    mounted: bool,
}

impl LoopFs {
    /// `fstype` is `ext4` or `xfs` (xfs needs at least 300 MiB).
    pub fn new(fstype: &str, mib: u64) -> Result<LoopFs, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("needs root (loop devices, mount)".into());
        }
        let mkfs = format!("mkfs.{fstype}");
        for tool in ["losetup", mkfs.as_str()] {
            if Command::new(tool).arg("-V").output().is_err() {
                return Err(format!("{tool} is not installed"));
            }
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let img = dir.path().join("img");
        File::create(&img)
            .and_then(|f| f.set_len(mib << 20))
            .map_err(|e| e.to_string())?;
        let mut fs = LoopFs {
            dir,
            loopdev: None,
            mounted: false,
        };
        fs.loopdev = Some(sh("losetup", &["--find", "--show", img.to_str().unwrap()])?);
        let dev = fs.loopdev.clone().unwrap();
        match fstype {
            "ext4" => sh(&mkfs, &["-q", "-F", "-b", "4096", &dev])?,
            "xfs" => sh(&mkfs, &["-q", "-f", "-m", "reflink=1", &dev])?,
            other => return Err(format!("unknown filesystem {other}")),
        };
        let mnt = fs.mnt();
        fs::create_dir_all(&mnt).map_err(|e| e.to_string())?;
        sh("mount", &[&dev, mnt.to_str().unwrap()])?;
        fs.mounted = true;
        Ok(fs)
    }

    /// Where it is mounted.
    pub fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
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

    /// Cuts the device at byte `at` (truncates the backing file, `losetup
    /// -c`): every block from there on fails with EIO.
    pub fn fail_io_from(&self, at: u64) -> Result<(), String> {
        let img = self.dir.path().join("img");
        File::options()
            .write(true)
            .open(&img)
            .and_then(|f| f.set_len(at))
            .map_err(|e| e.to_string())?;
        sh("losetup", &["-c", self.loopdev.as_ref().unwrap()])?;
        Ok(())
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted {
            let mnt = self.mnt();
            if sh("umount", &[mnt.to_str().unwrap()]).is_err() {
                let _ = sh("umount", &["-l", mnt.to_str().unwrap()]);
            }
        }
        if let Some(dev) = &self.loopdev {
            let _ = sh("losetup", &["-d", dev]);
        }
    }
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
