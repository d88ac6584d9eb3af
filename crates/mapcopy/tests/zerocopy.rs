//! The zero-copy strategies, `Reflink` and `Lease`, on real filesystems:
//! ext4, xfs (`-m reflink=1`) and btrfs loop images made (and torn down) by
//! the tests themselves. Writers are other processes (`sh`, `dd`,
//! `truncate`, `fallocate`, `xfs_io`) or this test binary re-executed.
//!
//! Needs root (loop devices, mount). Without it, or without mkfs.xfs /
//! mkfs.btrfs, a test prints why it skipped; with `MAPCOPY_REQUIRE_ALL=1` a
//! skip is a failure.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};
use mapcopy::{ErrorKind, MapCopy, MapOptions, Strategy};

/// Entry point of this binary re-executed as a child (see `child_main`).
const CHILD_ENV: &str = "MAPCOPY_ZC_CHILD";

fn main() {
    if let Ok(name) = std::env::var(CHILD_ENV) {
        let args: Vec<String> = std::env::args().skip(1).collect();
        std::process::exit(child_main(&name, &args));
    }
    let args = Arguments::from_args();
    let mut trials = Vec::new();
    for fs in [Kind::Xfs, Kind::Btrfs] {
        trials.push(trial(format!("reflink/{fs}/writers"), move || {
            with_fs(fs, |dir| writers(Strategy::Reflink, dir))
        }));
        trials.push(trial(format!("reflink/{fs}/map_mut_private"), move || {
            with_fs(fs, |dir| map_mut_private(Strategy::Reflink, dir))
        }));
        trials.push(trial(
            format!("reflink/{fs}/past_eof_reads_zero"),
            move || with_fs(fs, |dir| past_eof(Strategy::Reflink, dir)),
        ));
        trials.push(trial(
            format!("reflink/{fs}/nothing_left_after_sigkill"),
            move || with_fs(fs, reflink_sigkill),
        ));
        trials.push(trial(
            format!("reflink/{fs}/read_only_dir_uses_mount"),
            move || with_fs(fs, reflink_read_only_dir),
        ));
    }
    trials.push(trial("reflink/ext4/refused".into(), || {
        with_fs(Kind::Ext4, reflink_refused)
    }));
    libtest_mimic::run(&args, trials).exit();
}

fn trial(name: String, f: impl FnOnce() -> Result<(), Failed> + Send + 'static) -> Trial {
    Trial::test(name, f)
}

// ---------------------------------------------------------------- fixtures

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Ext4,
    Xfs,
    Btrfs,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Ext4 => "ext4",
            Kind::Xfs => "xfs",
            Kind::Btrfs => "btrfs",
        })
    }
}

/// A loop-mounted filesystem image under a temporary directory; unmounted,
/// detached and deleted on drop (also when the test fails or panics).
struct LoopFs {
    mnt: PathBuf,
    dev: Option<String>,
    mounted: bool,
    _dir: tempfile::TempDir,
}

impl LoopFs {
    fn new(kind: Kind, size_mib: u64) -> Result<LoopFs, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("needs root for loop devices and mount".into());
        }
        let dir = tempfile::Builder::new()
            .prefix("mapcopy-zc-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let img = dir.path().join("fs.img");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).map_err(|e| e.to_string())?;
        File::create(&img)
            .and_then(|f| f.set_len(size_mib << 20))
            .map_err(|e| format!("image: {e}"))?;
        let mut me = LoopFs {
            mnt,
            dev: None,
            mounted: false,
            _dir: dir,
        };
        let (mkfs, opts): (&str, &[&str]) = match kind {
            Kind::Ext4 => ("mkfs.ext4", &["-q", "-F"]),
            Kind::Xfs => ("mkfs.xfs", &["-q", "-f", "-m", "reflink=1"]),
            Kind::Btrfs => ("mkfs.btrfs", &["-q", "-f"]),
        };
        run(Command::new(mkfs).args(opts).arg(&img)).map_err(|e| format!("{mkfs}: {e}"))?;
        let dev = run(Command::new("losetup").args(["--find", "--show"]).arg(&img))
            .map_err(|e| format!("losetup: {e}"))?;
        me.dev = Some(dev.trim().to_string());
        run(Command::new("mount").arg(dev.trim()).arg(&me.mnt))
            .map_err(|e| format!("mount: {e}"))?;
        me.mounted = true;
        fs::set_permissions(&me.mnt, fs::Permissions::from_mode(0o1777))
            .map_err(|e| e.to_string())?;
        Ok(me)
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted && run(Command::new("umount").arg(&self.mnt)).is_err() {
            let _ = run(Command::new("umount").arg("-l").arg(&self.mnt));
        }
        if let Some(dev) = &self.dev {
            let _ = run(Command::new("losetup").arg("-d").arg(dev));
        }
    }
}

/// Runs a command to completion; `Ok(stdout)` if it exited 0.
fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A skipped test: prints why; a failure under `MAPCOPY_REQUIRE_ALL=1`.
fn skip(why: &str) -> Result<(), Failed> {
    if std::env::var_os("MAPCOPY_REQUIRE_ALL").is_some_and(|v| v == "1") {
        return Err(format!("skip not allowed (MAPCOPY_REQUIRE_ALL=1): {why}").into());
    }
    eprintln!("skipped: {why}");
    Ok(())
}

fn with_fs(kind: Kind, f: impl FnOnce(&Path) -> Result<(), Failed>) -> Result<(), Failed> {
    match LoopFs::new(kind, 512) {
        Ok(lfs) => {
            let r = f(&lfs.mnt);
            drop(lfs);
            r
        }
        Err(why) => skip(&format!("no {kind} loop image: {why}")),
    }
}

// ------------------------------------------------------------------ helpers

/// Deterministic, position-dependent content: every page differs.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(7) as u8 ^ seed)
        .collect()
}

fn make_file(path: &Path, data: &[u8]) -> Result<(), Failed> {
    let mut f = File::create(path)?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(())
}

fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<(), Failed> {
    if cond { Ok(()) } else { Err(msg().into()) }
}

/// Writers in other processes, each given the file's path as `$1`.
const WRITERS: &[(&str, &str)] = &[
    ("open O_TRUNC", r#"printf new > "$1""#),
    ("truncate by path", r#"truncate -s 0 "$1""#),
    (
        "truncate then regrow",
        r#"truncate -s 0 "$1" && dd if=/dev/zero of="$1" bs=64k count=40 conv=notrunc status=none"#,
    ),
    (
        "MAP_SHARED store after our mapping",
        r#"xfs_io -c "mmap -rw 0 1m" -c "mwrite -S 0x58 0 1m" "$1""#,
    ),
    (
        "pwrite in place",
        r#"dd if=/dev/zero of="$1" bs=4096 count=10 seek=1 conv=notrunc status=none"#,
    ),
    ("O_APPEND into the tail", r#"printf tail >> "$1""#),
    ("punch a hole", r#"fallocate -p -o 0 -l 65536 "$1""#),
    (
        "O_DIRECT write",
        r#"xfs_io -d -c "pwrite -q -S 0x33 0 64k" "$1""#,
    ),
];

/// Runs writer `script` on `path` in a shell; returns how long it took.
fn write_with(script: &str, path: &Path) -> Result<Duration, Failed> {
    let t = Instant::now();
    run(Command::new("sh").arg("-c").arg(script).arg("sh").arg(path))?;
    Ok(t.elapsed())
}

/// Every writer in [`WRITERS`] against a fresh mapping: the mapping keeps
/// the bytes it had, pages read before and after the write alike.
fn writers(s: Strategy, dir: &Path) -> Result<(), Failed> {
    let len = (1 << 20) + 100; // a partial last page
    for (i, (what, script)) in WRITERS.iter().enumerate() {
        let path = dir.join(format!("w{i}"));
        let data = pattern(len, i as u8);
        make_file(&path, &data)?;
        let file = File::open(&path)?;
        let map = MapOptions::new().strategy(s).map(&file)?;
        ensure(map.strategy() == s, || {
            format!("mapped with {}", map.strategy())
        })?;
        // Read the first half before the write, the rest after.
        ensure(map[..len / 2] == data[..len / 2], || {
            format!("{what}: differs before")
        })?;
        let took = write_with(script, &path)?;
        eprintln!("  {s} {what}: writer took {took:?}");
        if let Some(at) = first_diff(&map, &data) {
            return Err(format!("{s}: after {what}, byte {at} of the mapping changed").into());
        }
        // The control: the file did change.
        let now = fs::read(&path)?;
        ensure(now != data, || {
            format!("{what}: the writer changed nothing")
        })?;
    }
    Ok(())
}

/// S4: stores into a `map_mut` mapping stay private; others' writes do not
/// reach it.
fn map_mut_private(s: Strategy, dir: &Path) -> Result<(), Failed> {
    let path = dir.join("mut");
    let data = pattern(300_000, 9);
    make_file(&path, &data)?;
    let file = File::open(&path)?;
    let mut map = MapOptions::new().strategy(s).map_mut(&file)?;
    map[..5].copy_from_slice(b"MINE!");
    write_with(
        r#"dd if=/dev/zero of="$1" bs=4096 count=80 conv=notrunc status=none"#,
        &path,
    )?;
    ensure(&map[..5] == b"MINE!", || "own stores lost".into())?;
    ensure(map[5..] == data[5..], || {
        "others' write leaked into map_mut".into()
    })?;
    ensure(fs::read(&path)?[..5] == [0; 5], || {
        "own store reached the file".into()
    })?;
    Ok(())
}

/// Bytes past the end of the file read as zero (no SIGBUS), even after the
/// file is truncated by someone else.
fn past_eof(s: Strategy, dir: &Path) -> Result<(), Failed> {
    let path = dir.join("short");
    make_file(&path, b"short file")?;
    let file = File::open(&path)?;
    let map = MapOptions::new().strategy(s).len(3 * 4096 + 7).map(&file)?;
    write_with(r#"truncate -s 0 "$1""#, &path)?;
    ensure(&map[..10] == b"short file", || "head changed".into())?;
    ensure(map[10..].iter().all(|&b| b == 0), || "tail not zero".into())?;
    Ok(())
}

// ------------------------------------------------------------------ reflink

/// ext4 has no reflink: the strategy says so instead of mapping.
fn reflink_refused(dir: &Path) -> Result<(), Failed> {
    let path = dir.join("f");
    make_file(&path, b"data")?;
    let file = File::open(&path)?;
    let err = MapOptions::new()
        .strategy(Strategy::Reflink)
        .map(&file)
        .expect_err("reflink on ext4 must be refused");
    eprintln!("  {err}");
    ensure(err.kind() == ErrorKind::Unsupported, || {
        format!("kind {:?}", err.kind())
    })?;
    let msg = err.to_string();
    ensure(msg.contains("ext4") && msg.contains("EOPNOTSUPP"), || {
        format!("reason does not name ext4 / EOPNOTSUPP: {msg}")
    })?;
    // And Auto never picks it there.
    let p = mapcopy::probe(Some(&path));
    let r = p
        .strategies
        .iter()
        .find(|x| x.strategy == Strategy::Reflink)
        .unwrap();
    ensure(r.usable.is_err(), || {
        "probe calls reflink usable on ext4".into()
    })?;
    Ok(())
}

/// The file's own directory is not writable: the clone goes elsewhere on
/// the same mount (here its root), and the mapping still works.
fn reflink_read_only_dir(dir: &Path) -> Result<(), Failed> {
    let ro = dir.join("ro");
    fs::create_dir(&ro)?;
    let path = ro.join("f");
    let data = pattern(50_000, 3);
    make_file(&path, &data)?;
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o555))?;
    // Root ignores directory permissions: do it as nobody.
    let out = as_nobody(&["reflink-map", path.to_str().unwrap()])?;
    ensure(out.contains("mapped reflink"), || {
        format!("child said: {out}")
    })?;
    Ok(())
}

/// A process holding a Reflink mapping is killed with SIGKILL: once it is
/// gone, the filesystem has as many inodes and as much free space as before.
fn reflink_sigkill(dir: &Path) -> Result<(), Failed> {
    let path = dir.join("big");
    make_file(&path, &pattern(32 << 20, 5))?;
    let before = usage(dir)?;
    let mut child = child_cmd("reflink-hold", &[path.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
    ensure(line.starts_with("mapped"), || {
        format!("child said {line:?}")
    })?;
    // Rewrite the original: the clone's blocks are now its own.
    write_with(
        r#"dd if=/dev/zero of="$1" bs=1M count=32 conv=notrunc status=none"#,
        &path,
    )?;
    let during = usage(dir)?;
    eprintln!("  used (inodes, blocks): before {before:?}, while held {during:?}");
    // btrfs does not count inodes (f_files is 0): blocks tell there.
    let counts_inodes = before.0 > 0;
    ensure(during.1 > before.1, || {
        "the clone's blocks are not counted while held".into()
    })?;
    ensure(!counts_inodes || during.0 > before.0, || {
        "the clone's inode is not counted while held".into()
    })?;
    child.kill()?;
    child.wait()?;
    let t = Instant::now();
    loop {
        let after = usage(dir)?;
        if after.0 == before.0 && after.1 <= before.1 + 64 {
            eprintln!("  after SIGKILL: {after:?} ({:?} to settle)", t.elapsed());
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(20) {
            return Err(
                format!("after SIGKILL the fs still holds more: {after:?} vs {before:?}").into(),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// (inodes in use, blocks in use) of the filesystem at `dir`, after syncing.
fn usage(dir: &Path) -> Result<(u64, u64), Failed> {
    let d = File::open(dir)?;
    rustix::fs::syncfs(&d)?;
    let st = rustix::fs::fstatvfs(&d)?;
    Ok((st.f_files - st.f_ffree, st.f_blocks - st.f_bfree))
}

// ----------------------------------------------------------------- children

fn child_cmd(name: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("own path"));
    cmd.env(CHILD_ENV, name).args(args);
    cmd
}

/// Runs child entry point `args[0]` as user nobody; its stdout.
fn as_nobody(args: &[&str]) -> Result<String, Failed> {
    let exe = std::env::current_exe()?;
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(exe)
        .args(&args[1..])
        .env(CHILD_ENV, args[0])
        .output()?;
    let so = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "child as nobody failed ({}): {so} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(so)
}

fn child_main(name: &str, args: &[String]) -> i32 {
    let map = |s: Strategy| -> Result<MapCopy, mapcopy::Error> {
        let file = File::open(&args[0]).map_err(|e| {
            eprintln!("open: {e}");
            std::process::exit(3)
        })?;
        MapOptions::new().strategy(s).map(&file)
    };
    match name {
        // Maps with Reflink, touches every page, says so, waits to be killed.
        "reflink-hold" => match map(Strategy::Reflink) {
            Ok(m) => {
                let sum: u64 = m.iter().step_by(4096).map(|&b| b as u64).sum();
                println!("mapped {sum}");
                std::io::stdout().flush().ok();
                std::thread::sleep(Duration::from_secs(600));
                0
            }
            Err(e) => {
                println!("error {e}");
                1
            }
        },
        // Maps with Reflink, checks the bytes against a fresh read.
        "reflink-map" => match map(Strategy::Reflink) {
            Ok(m) => {
                let data = fs::read(&args[0]).expect("read");
                if m[..] == data[..] {
                    println!("mapped reflink");
                    0
                } else {
                    println!("mapped reflink but bytes differ");
                    1
                }
            }
            Err(e) => {
                println!("error {e}");
                1
            }
        },
        other => {
            eprintln!("unknown child {other}");
            2
        }
    }
}
