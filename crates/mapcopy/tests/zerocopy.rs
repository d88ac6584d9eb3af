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
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};
use mapcopy::{ErrorKind, MapCopy, MapOptions, Strategy};

fn main() {
    mapcopy_check::child::dispatch_with(&[
        ("lease-foreign", |a| child_main("lease-foreign", a)),
        ("lease-hold", |a| child_main("lease-hold", a)),
        ("lease-refused", |a| child_main("lease-refused", a)),
        ("rdonly-trunc", |a| child_main("rdonly-trunc", a)),
        ("reflink-hold", |a| child_main("reflink-hold", a)),
        ("reflink-map", |a| child_main("reflink-map", a)),
        ("reflink-refused", |a| child_main("reflink-refused", a)),
        ("shared-map-hold", |a| child_main("shared-map-hold", a)),
        ("truncate", |a| child_main("truncate", a)),
    ]);
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
    for fs in [Kind::Ext4, Kind::Xfs, Kind::Btrfs] {
        trials.push(trial(format!("lease/{fs}/writers"), move || {
            with_fs(fs, |dir| writers(Strategy::Lease, dir))
        }));
        trials.push(trial(format!("lease/{fs}/map_mut_private"), move || {
            with_fs(fs, |dir| map_mut_private(Strategy::Lease, dir))
        }));
        trials.push(trial(
            format!("lease/{fs}/past_eof_reads_zero"),
            move || with_fs(fs, |dir| past_eof(Strategy::Lease, dir)),
        ));
        trials.push(trial(format!("lease/{fs}/many_mappings"), move || {
            with_fs(fs, lease_many)
        }));
        trials.push(trial(format!("lease/{fs}/drop_during_break"), move || {
            with_fs(fs, lease_drop_in_flight)
        }));
        trials.push(trial(format!("lease/{fs}/auto_order"), move || {
            with_fs(fs, move |dir| auto_order(fs, dir))
        }));
    }
    trials.push(trial("lease/ext4/refusals".into(), || {
        with_fs(Kind::Ext4, lease_refusals)
    }));
    trials.push(trial("lease/ext4/rdonly_trunc_hole".into(), || {
        with_fs(Kind::Ext4, lease_rdonly_trunc_hole)
    }));
    trials.push(trial("lease/ext4/handler_replaced_later".into(), || {
        with_fs(Kind::Ext4, lease_handler_replaced)
    }));
    trials.push(trial("lease/ext4/sigkill_releases".into(), || {
        with_fs(Kind::Ext4, lease_sigkill)
    }));
    trials.push(trial("reflink/xfs/no_writable_dir_refused".into(), || {
        with_fs(Kind::Xfs, reflink_no_dir)
    }));
    trials.push(trial("lease/ext4/as_nobody".into(), || {
        with_fs(Kind::Ext4, lease_as_nobody)
    }));
    trials.push(trial(
        "lease/foreign_signal_handler".into(),
        lease_foreign_handler,
    ));
    trials.push(trial("lease/own_process_writes".into(), lease_own_writes));
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
    mapcopy_check::fixture::skip_or_fail(why)
        .map(drop)
        .map_err(Failed::from)
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
    // truncate(2) of the path (our own child: GNU truncate(1) opens the
    // file instead, with O_NONBLOCK; that case is the next one).
    (
        "truncate(2) by path",
        r#"MAPCOPY_CHECK_CHILD=truncate "$ZC_EXE" "$1" 0"#,
    ),
    // An O_NONBLOCK open for writing gets EAGAIN while a lease is being
    // broken (kernel semantics), and succeeds once the snapshot is taken.
    (
        "O_NONBLOCK open (GNU truncate), retried",
        r#"until truncate -s 0 "$1" 2>/dev/null; do sleep 0.01; done"#,
    ),
    (
        "truncate then regrow",
        r#"MAPCOPY_CHECK_CHILD=truncate "$ZC_EXE" "$1" 0 && dd if=/dev/zero of="$1" bs=64k count=40 conv=notrunc status=none"#,
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

/// Linux truncates on `open(O_RDONLY|O_TRUNC)` too (given write
/// permission), and that open does not break read leases.
const RDONLY_TRUNC: (&str, &str) = (
    "open(O_RDONLY|O_TRUNC)",
    r#"MAPCOPY_CHECK_CHILD=rdonly-trunc "$ZC_EXE" "$1""#,
);

/// Runs writer `script` on `path` in a shell; returns how long it took.
fn write_with(script: &str, path: &Path) -> Result<Duration, Failed> {
    let t = Instant::now();
    run(Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(path)
        .env("ZC_EXE", std::env::current_exe()?))?;
    Ok(t.elapsed())
}

/// Every writer in [`WRITERS`] against a fresh mapping: the mapping keeps
/// the bytes it had, pages read before and after the write alike.
fn writers(s: Strategy, dir: &Path) -> Result<(), Failed> {
    let len = (1 << 20) + 100; // a partial last page
    let mut all = WRITERS.to_vec();
    if s != Strategy::Lease {
        // Lease cannot stop this one: see `lease_rdonly_trunc_hole`.
        all.push(RDONLY_TRUNC);
    }
    for (i, (what, script)) in all.iter().enumerate() {
        let path = dir.join(format!("w{i}"));
        let data = pattern(len, i as u8);
        make_file(&path, &data)?;
        let file = File::open(&path)?;
        let map = mapcopy_check::options(s).map(&file)?;
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
    let mut map = mapcopy_check::options(s).map_mut(&file)?;
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
    let map = mapcopy_check::options(s).len(3 * 4096 + 7).map(&file)?;
    write_with(r#"MAPCOPY_CHECK_CHILD=truncate "$ZC_EXE" "$1" 0"#, &path)?;
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

// -------------------------------------------------------------------- lease

/// Longest a writer may wait on our lease before the test calls it hung:
/// well below the kernel's 45 s lease-break-time, far above a real answer.
const HUNG: Duration = Duration::from_secs(30);

/// Several mappings of one file, different ranges, one writer: all keep
/// their bytes; the writer waits for all of them.
fn lease_many(dir: &Path) -> Result<(), Failed> {
    let path = dir.join("many");
    let data = pattern(2 << 20, 4);
    make_file(&path, &data)?;
    let file = File::open(&path)?;
    let mut opts = MapOptions::new();
    opts.strategy(Strategy::Lease);
    let whole = opts.map(&file)?;
    let part = MapOptions::new()
        .strategy(Strategy::Lease)
        .offset(4096 + 3)
        .len(8192)
        .map(&file)?;
    let populated = MapOptions::new()
        .strategy(Strategy::Lease)
        .populate(true)
        .map(&file)?;
    ensure(whole[..] == data[..], || "whole differs before".into())?;
    let took = write_with(r#"printf new > "$1""#, &path)?;
    eprintln!("  3 mappings, O_TRUNC writer took {took:?}");
    ensure(took < HUNG, || format!("writer waited {took:?}"))?;
    ensure(whole[..] == data[..], || "whole changed".into())?;
    ensure(part[..] == data[4099..4099 + 8192], || {
        "part changed".into()
    })?;
    ensure(populated[..] == data[..], || "populated changed".into())?;
    Ok(())
}

/// A mapping dropped while a writer is breaking its lease: the writer goes
/// on at once (never waits out lease-break-time), whatever the timing.
fn lease_drop_in_flight(dir: &Path) -> Result<(), Failed> {
    let path = dir.join("drop");
    let data = pattern(8 << 20, 6);
    let mut worst = Duration::ZERO;
    for i in 0..12u64 {
        make_file(&path, &data)?;
        let file = File::open(&path)?;
        let map = MapOptions::new().strategy(Strategy::Lease).map(&file)?;
        let t = Instant::now();
        let mut w = Command::new("sh")
            .arg("-c")
            .arg(r#"printf x > "$1""#)
            .arg("sh")
            .arg(&path)
            .spawn()?;
        std::thread::sleep(Duration::from_micros(250 * i));
        drop(map);
        w.wait()?;
        worst = worst.max(t.elapsed());
    }
    eprintln!("  slowest writer over 12 drops during a break: {worst:?}");
    ensure(worst < HUNG, || format!("a writer waited {worst:?}"))
}

/// Auto picks Lease first (it costs other readers nothing); with a writer
/// present it falls through, for map_mut it takes Reflink where the
/// filesystem clones.
fn auto_order(fs: Kind, dir: &Path) -> Result<(), Failed> {
    let path = dir.join("auto");
    make_file(&path, &pattern(100_000, 1))?;
    let file = File::open(&path)?;
    // Usable if a probe says so within half a second: a lease is refused
    // for a moment while another test's forked child still holds copies of
    // writable fds (until its exec closes them).
    let usable = |s: Strategy| {
        (0..20).any(|i| {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(25));
            }
            mapcopy::probe(Some(&path))
                .strategies
                .iter()
                .any(|p| p.strategy == s && p.usable.is_ok())
        })
    };
    // Read-only: Lease first (no cost to other processes' reads), then
    // Reflink (none at all, a cold clone for us), then Guard.
    let first = [Strategy::Lease, Strategy::Reflink, Strategy::Guard]
        .into_iter()
        .find(|&s| usable(s))
        .ok_or_else(|| Failed::from("neither lease, reflink nor guard is usable here"))?;
    let m = auto_settled(first, || MapCopy::map(&file).map(|m| m.strategy()))?;
    ensure(m == first, || format!("auto picked {m}, expected {first}"))?;
    let writer = File::options().append(true).open(&path)?;
    let m = MapCopy::map(&file)?;
    let want = if fs == Kind::Ext4 {
        None
    } else {
        Some(Strategy::Reflink)
    };
    eprintln!("  {fs}: auto with a writer open: {}", m.strategy());
    ensure(
        !matches!(m.strategy(), Strategy::Lease | Strategy::Guard),
        || format!("{} taken despite a writer", m.strategy()),
    )?;
    if let Some(w) = want {
        ensure(m.strategy() == w, || {
            format!("auto picked {}", m.strategy())
        })?;
    }
    drop(writer);
    // map_mut: Guard and Lease would snapshot the whole range at map time, so
    // Auto takes a reflink clone where there is one, else Lazy (copies only
    // touched pages) where it is usable.
    let first_mut = match want {
        Some(w) => w,
        None if usable(Strategy::Lazy) => Strategy::Lazy,
        None => first,
    };
    // Per-page: under the default point-in-time Lazy is not considered.
    let per_page = || {
        let mut o = MapOptions::new();
        o.consistency(mapcopy::Consistency::PerPage);
        o
    };
    let mm = auto_settled(first_mut, || {
        let mut mm = per_page().map_mut(&file)?;
        mm[0] ^= 0xff;
        Ok(mm.strategy())
    })?;
    eprintln!("  {fs}: auto for map_mut: {mm}");
    ensure(mm == first_mut, || {
        format!("auto map_mut picked {mm}, expected {first_mut}")
    })?;
    let writer = File::options().append(true).open(&path)?;
    let mm = per_page().map_mut(&file)?;
    eprintln!(
        "  {fs}: auto for map_mut with a writer open: {}",
        mm.strategy()
    );
    drop(writer);
    if let Some(w) = want {
        ensure(mm.strategy() == w, || {
            format!("auto map_mut picked {}", mm.strategy())
        })?;
    }
    Ok(())
}

/// Auto's pick for a file nobody holds open for writing: `want`, unless a
/// writable fd just closed still lives in a child another test thread is
/// forking (until its exec): then Lease and Guard refuse for a moment and
/// Auto rightly takes the next strategy. Ask again a few times.
fn auto_settled(
    want: Strategy,
    pick: impl Fn() -> Result<Strategy, mapcopy::Error>,
) -> Result<Strategy, Failed> {
    let mut got = pick()?;
    for _ in 0..20 {
        if got == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
        got = pick()?;
    }
    Ok(got)
}

/// A child process holding a Lease mapping (entry point `lease-hold`),
/// started from `cmd` once it has said it mapped.
struct Holder {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Holder {
    fn start(mut cmd: Command) -> Result<Holder, Failed> {
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line)?;
        ensure(line.starts_with("mapped lease"), || {
            format!("child said {line:?}")
        })?;
        Ok(Holder { child, out })
    }

    /// Tells the child to compare its mapping with what it read at first;
    /// it must answer "intact".
    fn check_intact(mut self) -> Result<(), Failed> {
        writeln!(self.child.stdin.take().unwrap(), "check")?;
        let mut line = String::new();
        self.out.read_line(&mut line)?;
        self.child.wait()?;
        ensure(line.starts_with("intact"), || {
            format!("child said {line:?}")
        })
    }
}

/// Each refusal says why, before mapping.
fn lease_refusals(dir: &Path) -> Result<(), Failed> {
    let path = dir.join("refuse");
    make_file(&path, b"abc")?;
    let file = File::open(&path)?;
    let lease = || MapOptions::new().strategy(Strategy::Lease).map(&file);
    // Another process holds it open for writing.
    let mut holder = Command::new("sh")
        .arg("-c")
        .arg(r#"exec 3>>"$1"; echo open; exec sleep 5"#)
        .arg("sh")
        .arg(&path)
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap()).read_line(&mut line)?;
    let e = lease().expect_err("a writer holds the file");
    holder.kill()?;
    holder.wait()?;
    eprintln!("  writer elsewhere: {e}");
    ensure(
        e.kind() == ErrorKind::Unsupported && e.to_string().contains("EAGAIN"),
        || e.to_string(),
    )?;
    // Another process maps it shared-writable (and closed its fd).
    let mut m = child_cmd("shared-map-hold", &[path.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(m.stdout.take().unwrap()).read_line(&mut line)?;
    ensure(line.starts_with("mapped"), || {
        format!("child said {line:?}")
    })?;
    let r = lease();
    drop(m.stdin.take());
    m.wait()?;
    let e = r.expect_err("a shared-writable mapping exists");
    eprintln!("  MAP_SHARED writer (fd closed): {e}");
    ensure(e.to_string().contains("EAGAIN"), || e.to_string())?;
    // This process's own fd is writable.
    let rw = File::options().read(true).write(true).open(&path)?;
    let e = MapOptions::new()
        .strategy(Strategy::Lease)
        .map(&rw)
        .expect_err("own writable fd");
    eprintln!("  own writable fd: {e}");
    ensure(e.to_string().contains("open for writing"), || e.to_string())?;
    drop(rw);
    // And after all that, it works.
    let m = lease()?;
    ensure(&m[..] == b"abc", || "bytes".into())?;
    Ok(())
}

/// The documented limit of Lease: `open(O_RDONLY|O_TRUNC)` truncates the
/// file without breaking read leases (the kernel breaks leases only for
/// opens with write *access mode*), so a Lease mapping of it faults with
/// SIGBUS. Held in a child; this asserts the limit is as documented (if a
/// kernel closes the gap, this fails and the docs must change).
fn lease_rdonly_trunc_hole(dir: &Path) -> Result<(), Failed> {
    let path = dir.join("hole");
    make_file(&path, &pattern(64 << 10, 3))?;
    let mut holder = Holder::start(child_cmd("lease-hold", &[path.to_str().unwrap()]))?;
    let took = write_with(RDONLY_TRUNC.1, &path)?;
    writeln!(holder.child.stdin.take().unwrap(), "check")?;
    let status = holder.child.wait()?;
    use std::os::unix::process::ExitStatusExt;
    eprintln!(
        "  open(O_RDONLY|O_TRUNC) took {took:?} (no lease break), holder ended with {status}"
    );
    ensure(status.signal() == Some(libc::SIGBUS), || {
        format!("expected the documented SIGBUS, got {status}")
    })
}

/// The application replaces our lease-break handler after we installed it:
/// the break signal is lost, and the watcher's once-a-second poll still
/// snapshots and releases (the writer waits about a second, not 45).
fn lease_handler_replaced(dir: &Path) -> Result<(), Failed> {
    let path = dir.join("hijack");
    make_file(&path, &pattern(1 << 20, 9))?;
    let mut cmd = child_cmd("lease-hold", &[path.to_str().unwrap()]);
    cmd.env("MAPCOPY_LEASE_SIGNAL", "RTMIN+9")
        .env("ZC_HIJACK", "9");
    let holder = Holder::start(cmd)?;
    let took = write_with(r#"printf new > "$1""#, &path)?;
    eprintln!("  writer with the break signal lost took {took:?}");
    holder.check_intact()?;
    ensure(took < HUNG, || format!("writer waited {took:?}"))
}

/// A process holding a Lease mapping is killed: its lease goes with it, and
/// a writer opens at once.
fn lease_sigkill(dir: &Path) -> Result<(), Failed> {
    let path = dir.join("killed");
    make_file(&path, &pattern(1 << 20, 7))?;
    let mut holder = Holder::start(child_cmd("lease-hold", &[path.to_str().unwrap()]))?;
    holder.child.kill()?;
    holder.child.wait()?;
    let took = write_with(r#"printf new > "$1""#, &path)?;
    eprintln!("  writer after the holder's SIGKILL took {took:?}");
    ensure(took < HUNG, || format!("writer waited {took:?}"))
}

/// As nobody, with no directory on the file's mount it may write to:
/// Reflink says so (and names the way out) instead of mapping.
fn reflink_no_dir(dir: &Path) -> Result<(), Failed> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    let ro = dir.join("ro");
    fs::create_dir(&ro)?;
    let path = ro.join("f");
    make_file(&path, b"data")?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o555))?;
    let out = as_nobody(&["reflink-refused", path.to_str().unwrap()])?;
    eprintln!("  {}", out.trim());
    ensure(out.contains("MAPCOPY_TMPDIR"), || out.clone())
}

/// As nobody: a root-owned file is refused (EACCES: not the owner, no
/// CAP_LEASE); a file nobody owns works, and survives root's writer.
fn lease_as_nobody(dir: &Path) -> Result<(), Failed> {
    let theirs = dir.join("roots");
    make_file(&theirs, b"root's bytes")?;
    fs::set_permissions(&theirs, fs::Permissions::from_mode(0o644))?;
    let out = as_nobody(&["lease-refused", theirs.to_str().unwrap()])?;
    eprintln!("  as nobody on root's file: {}", out.trim());
    ensure(out.contains("EACCES") && out.contains("CAP_LEASE"), || {
        out.clone()
    })?;

    let mine = dir.join("nobodys");
    let data = pattern(1 << 20, 8);
    make_file(&mine, &data)?;
    std::os::unix::fs::chown(&mine, Some(65534), Some(65534))?;
    let cmd = mapcopy_check::privilege::child_as_nobody("lease-hold", &[&mine])?;
    let holder = Holder::start(cmd)?;
    let took = write_with(r#"printf new > "$1""#, &mine)?;
    eprintln!("  root's writer broke nobody's lease in {took:?}");
    holder.check_intact()
}

/// The application owns the lease-break signal: Lease refuses, naming it.
fn lease_foreign_handler() -> Result<(), Failed> {
    let tmp = tempfile::NamedTempFile::new()?;
    fs::write(tmp.path(), b"x")?;
    let out = child_cmd("lease-foreign", &[tmp.path().to_str().unwrap()])
        .env("MAPCOPY_LEASE_SIGNAL", "RTMIN+3")
        .output()?;
    let so = String::from_utf8_lossy(&out.stdout);
    eprintln!("  {}", so.trim());
    ensure(
        out.status.success() && so.contains("SIGRTMIN+3") && so.contains("MAPCOPY_LEASE_SIGNAL"),
        || format!("{so} {}", String::from_utf8_lossy(&out.stderr)),
    )
}

/// This process writes the file it maps (another fd, same thread): the
/// open waits for our own watcher thread, then goes on.
fn lease_own_writes() -> Result<(), Failed> {
    let tmp = tempfile::NamedTempFile::new()?;
    let path = tmp.into_temp_path();
    let data = pattern(4 << 20, 2);
    fs::write(&path, &data)?;
    let file = File::open(&path)?;
    let map = MapOptions::new().strategy(Strategy::Lease).map(&file)?;
    let t = Instant::now();
    fs::write(&path, b"v2")?;
    eprintln!("  in-process O_TRUNC writer took {:?}", t.elapsed());
    ensure(map[..] == data[..], || "changed".into())?;
    // And again, with a fresh lease, from another thread.
    let map = MapOptions::new().strategy(Strategy::Lease).map(&file)?;
    let p2 = path.to_path_buf();
    std::thread::spawn(move || fs::write(p2, b"v3"))
        .join()
        .unwrap()?;
    ensure(&map[..] == b"v2", || "changed".into())?;
    Ok(())
}

// ----------------------------------------------------------------- children

fn child_cmd(name: &str, args: &[&str]) -> Command {
    mapcopy_check::child::command(name, args)
}

/// Runs child entry point `args[0]` as user nobody; its stdout.
fn as_nobody(args: &[&str]) -> Result<String, Failed> {
    let out = mapcopy_check::privilege::child_as_nobody(args[0], &args[1..])?.output()?;
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
        mapcopy_check::options(s).map(&file)
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
        // truncate(2) of path args[0] to args[1] bytes.
        "truncate" => {
            let p = std::ffi::CString::new(args[0].as_bytes()).unwrap();
            let len: i64 = args[1].parse().unwrap();
            // SAFETY: a valid C string; truncate touches no memory of ours.
            if unsafe { libc::truncate(p.as_ptr(), len) } == 0 {
                0
            } else {
                eprintln!("truncate: {}", std::io::Error::last_os_error());
                1
            }
        }
        // Maps args[0] MAP_SHARED writable, closes the fd, says so, waits
        // for stdin to close.
        "shared-map-hold" => {
            let f = File::options()
                .read(true)
                .write(true)
                .open(&args[0])
                .unwrap();
            // SAFETY: a new shared mapping at an address of the kernel's
            // choosing; never accessed.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    std::os::fd::AsRawFd::as_raw_fd(&f),
                    0,
                )
            };
            assert_ne!(p, libc::MAP_FAILED);
            drop(f);
            println!("mapped");
            std::io::stdout().flush().ok();
            let mut l = String::new();
            std::io::stdin().read_line(&mut l).ok();
            0
        }
        // open(args[0], O_RDONLY|O_TRUNC).
        "rdonly-trunc" => match File::options()
            .read(true)
            .custom_flags(libc::O_TRUNC)
            .open(&args[0])
        {
            Ok(_) => 0,
            Err(e) => {
                eprintln!("open: {e}");
                1
            }
        },
        // Expects Reflink to be refused; prints the reason.
        "reflink-refused" => match map(Strategy::Reflink) {
            Ok(_) => {
                println!("mapped reflink (should have been refused)");
                1
            }
            Err(e) => {
                println!("refused: {e}");
                0
            }
        },
        // Expects Lease to be refused; prints the reason.
        "lease-refused" => match map(Strategy::Lease) {
            Ok(_) => {
                println!("mapped lease (should have been refused)");
                1
            }
            Err(e) => {
                println!("refused: {e}");
                0
            }
        },
        // Maps with Lease, says so, waits for a line on stdin, then checks
        // the bytes against what it read at map time.
        "lease-hold" => match map(Strategy::Lease) {
            Ok(m) => {
                if let Ok(n) = std::env::var("ZC_HIJACK") {
                    // Replace the lease-break handler, as an application
                    // might after mapcopy installed it.
                    extern "C" fn other(_: libc::c_int) {}
                    let sig = libc::SIGRTMIN() + n.parse::<i32>().unwrap();
                    // SAFETY: a zeroed sigaction with a plain handler.
                    unsafe {
                        let mut act: libc::sigaction = std::mem::zeroed();
                        act.sa_sigaction = other as *const () as usize;
                        libc::sigaction(sig, &act, std::ptr::null_mut());
                    }
                }
                let before = fs::read(&args[0]).expect("read");
                println!("mapped lease");
                std::io::stdout().flush().ok();
                let mut l = String::new();
                std::io::stdin().read_line(&mut l).ok();
                println!(
                    "{}",
                    if m[..] == before[..] {
                        "intact"
                    } else {
                        "CHANGED"
                    }
                );
                0
            }
            Err(e) => {
                println!("error {e}");
                1
            }
        },
        // Installs its own handler for the lease signal, then asks for Lease.
        "lease-foreign" => {
            extern "C" fn mine(_: libc::c_int) {}
            let sig = libc::SIGRTMIN() + 3;
            // SAFETY: a zeroed sigaction with a plain handler is valid.
            unsafe {
                let mut act: libc::sigaction = std::mem::zeroed();
                act.sa_sigaction = mine as *const () as usize;
                libc::sigaction(sig, &act, std::ptr::null_mut());
            }
            match map(Strategy::Lease) {
                Ok(_) => {
                    println!("mapped lease over the application's handler");
                    1
                }
                Err(e) => {
                    println!("refused: {e}");
                    0
                }
            }
        }
        other => {
            eprintln!("unknown child {other}");
            2
        }
    }
}
