//! The `Guard` strategy against every modification kind of the contract's S2,
//! each applied by another process (coreutils, `xfs_io`, or this test
//! binary re-executed as a child).
//!
//! Needs root (CAP_SYS_ADMIN) and a filesystem that allows pre-content
//! marks; without them every test prints why it skipped (a failure with
//! `MAPCOPY_REQUIRE_ALL=1`).

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Trial};
use mapcopy::{ErrorKind, MapCopy, MapOptions, Strategy};

const PAGE: usize = 4096;

/// The name of [`guard_child`] as an entry point.
const GUARD_CHILD: &str = "guard-child";

/// Whether Guard can run here; prints the reason when not.
fn usable(test: &str) -> bool {
    let p = mapcopy::probe(None);
    let g = p
        .strategies
        .iter()
        .find(|s| s.strategy == Strategy::Guard)
        .expect("guard is probed");
    match &g.usable {
        Ok(_) => true,
        Err(why) => {
            if let Err(e) = mapcopy_check::fixture::skip_or_fail(format!(
                "{test}: guard not usable here: {why}"
            )) {
                panic!("{e}");
            }
            false
        }
    }
}

/// A temp dir with a file of `pages` full pages plus `tail` bytes, page `i`
/// filled with byte `b'A' + i % 26`.
struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    original: Vec<u8>,
}

fn fixture(pages: usize, tail: usize) -> Fixture {
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let path = dir.path().join("data");
    let original: Vec<u8> = (0..pages * PAGE + tail)
        .map(|i| b'A' + (i / PAGE % 26) as u8)
        .collect();
    fs::write(&path, &original).unwrap();
    Fixture {
        _dir: dir,
        path,
        original,
    }
}

fn guard_map(path: &Path) -> MapCopy {
    let f = File::open(path).unwrap();
    MapOptions::new()
        .strategy(Strategy::Guard)
        .map(&f)
        .expect("guard maps")
}

/// Runs a shell command (another process) with a timeout, so that a writer
/// left hanging fails the test instead of hanging it.
fn sh(cmd: &str) {
    let t = Instant::now();
    let out = Command::new("timeout")
        .args(["20", "sh", "-c", cmd])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}) after {:?}: {}",
        out.status,
        t.elapsed(),
        String::from_utf8_lossy(&out.stdout)
    );
}

fn q(p: &Path) -> String {
    format!("'{}'", p.display())
}

/// Maps the fixture, reads the pages in `read_before`, applies `modify`,
/// and checks that every byte still reads as the original.
fn holds(name: &str, pages: usize, tail: usize, modify: impl FnOnce(&Path)) {
    if !usable(name) {
        return;
    }
    let fx = fixture(pages, tail);
    let map = guard_map(&fx.path);
    assert_eq!(map.strategy(), Strategy::Guard);
    // Read the first and the last page before, the rest only after.
    assert_eq!(map[0], fx.original[0]);
    assert_eq!(map[map.len() - 1], fx.original[fx.original.len() - 1]);
    modify(&fx.path);
    let now = fs::read(&fx.path).unwrap();
    assert_ne!(now, fx.original, "{name}: the modification changed nothing");
    assert!(
        map[..] == fx.original[..],
        "{name}: guarded mapping changed: first differing byte at {:?}",
        map.iter().zip(&fx.original).position(|(a, b)| a != b)
    );
}

fn write_by_dd() {
    holds("write_by_dd", 8, 100, |p| {
        sh(&format!(
            "dd if=/dev/zero of={} bs=4096 seek=2 count=3 conv=notrunc status=none",
            q(p)
        ))
    });
}

fn pwrite_and_pwritev_by_xfs_io() {
    holds("pwrite_and_pwritev_by_xfs_io", 8, 100, |p| {
        sh(&format!(
            "xfs_io -c 'pwrite -q -S 0x7a 5000 9000' -c 'pwrite -q -V 2 -S 0x79 20000 8192' {}",
            q(p)
        ))
    });
}

fn append_into_the_last_partial_page() {
    // The mapping reaches past the end of the file: the tail of the last
    // page must keep reading zeros, whether or not it was read before.
    if !usable("append_into_the_last_partial_page") {
        return;
    }
    let fx = fixture(1, 10);
    let f = File::open(&fx.path).unwrap();
    let opts = || {
        let mut o = MapOptions::new();
        o.strategy(Strategy::Guard).len(2 * PAGE);
        o
    };
    let read_before = opts().map(&f).unwrap();
    let unread = opts().map(&f).unwrap();
    assert_eq!(read_before[fx.original.len() + 5], 0);
    sh(&format!("printf 'XXXXXXXXXXXX' >> {}", q(&fx.path)));
    assert_eq!(fs::read(&fx.path).unwrap().len(), fx.original.len() + 12);
    for map in [&read_before, &unread] {
        assert_eq!(&map[..fx.original.len()], &fx.original[..]);
        assert!(map[fx.original.len()..].iter().all(|&b| b == 0));
    }
}

fn truncate_by_path_to_zero_and_regrow() {
    holds("truncate_by_path_to_zero_and_regrow", 6, 123, |p| {
        sh(&format!("truncate -s 0 {0} && truncate -s 5000 {0}", q(p)));
        sh(&format!(
            "dd if=/dev/urandom of={} bs=4096 count=7 status=none",
            q(p)
        ));
    });
}

fn ftruncate_into_the_middle() {
    holds("ftruncate_into_the_middle", 6, 0, |p| {
        // xfs_io truncate is ftruncate(2) on its own fd.
        sh(&format!("xfs_io -c 'truncate 10000' {}", q(p)))
    });
}

fn open_with_o_trunc() {
    holds("open_with_o_trunc", 5, 7, |p| {
        sh(&format!(": > {}", q(p)));
        sh(&format!("printf 'brand new' > {}", q(p)));
    });
}

fn fallocate_punch_zero_and_collapse() {
    holds("fallocate_punch_zero_and_collapse", 16, 0, |p| {
        sh(&format!("fallocate -p -o 4096 -l 8192 {}", q(p)));
        sh(&format!("fallocate -z -o 20480 -l 4096 {}", q(p)));
        // ext4 and xfs collapse only block-aligned ranges.
        sh(&format!("fallocate -c -o 32768 -l 8192 {}", q(p)));
    });
}

fn copy_file_range_into_the_file() {
    if !usable("copy_file_range_into_the_file") {
        return;
    }
    let fx = fixture(4, 0);
    let src = fx.path.with_file_name("src");
    fs::write(&src, vec![b'#'; 3 * PAGE]).unwrap();
    let map = guard_map(&fx.path);
    // Reading from the guarded file into another must not copy anything
    // nor break anything either.
    sh(&format!(
        "xfs_io -c 'copy_range -s 0 -d 0 -l 4096 {}' {}",
        fx.path.display(),
        q(&src)
    ));
    sh(&format!(
        "xfs_io -c 'copy_range -s 0 -d 4096 -l 8192 {}' {}",
        src.display(),
        q(&fx.path)
    ));
    assert_ne!(fs::read(&fx.path).unwrap(), fx.original);
    assert!(map[..] == fx.original[..]);
}

fn o_direct_write() {
    holds("o_direct_write", 8, 0, |p| {
        sh(&format!(
            "dd if=/dev/urandom of={} bs=4096 seek=1 count=2 oflag=direct conv=notrunc status=none",
            q(p)
        ))
    });
}

fn shared_mapping_made_after_ours() {
    holds("shared_mapping_made_after_ours", 4, 0, |p| {
        sh(&format!(
            "xfs_io -c 'mmap -rw 0 16384' -c 'mwrite -S 0x5a 0 16384' -c 'msync -s 0 16384' {}",
            q(p)
        ))
    });
}

fn second_hard_link() {
    holds("second_hard_link", 4, 0, |p| {
        let link = p.with_file_name("link");
        fs::hard_link(p, &link).unwrap();
        sh(&format!(
            "dd if=/dev/zero of={} bs=4096 count=2 conv=notrunc status=none",
            q(&link)
        ));
    });
}

fn cp_over_the_file() {
    holds("cp_over_the_file", 4, 10, |p| {
        let other = p.with_file_name("other");
        fs::write(&other, b"short").unwrap();
        // cp opens the existing destination with O_TRUNC.
        sh(&format!("cp {} {}", q(&other), q(p)));
    });
}

fn open_rdonly_trunc_by_another_process() {
    // Linux truncates on open(O_RDONLY|O_TRUNC) given write permission; no
    // lease breaks for it, but a guard sees the open (FAN_OPEN_PERM).
    holds("open_rdonly_trunc_by_another_process", 4, 10, |p| {
        sh(&format!(
            "python3 -c 'import os,sys; os.close(os.open(sys.argv[1], os.O_RDONLY | os.O_TRUNC))' {}",
            q(p)
        ));
        assert_eq!(fs::metadata(p).unwrap().len(), 0, "the open truncated");
    });
}

/// A loop device over a file, detached on drop.
struct LoopDev(String);

impl LoopDev {
    fn attach(p: &Path) -> LoopDev {
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(p)
            .output()
            .expect("losetup runs");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        LoopDev(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

fn loop_device_over_the_file_is_refused() {
    // A loop device holds its backing file open for writing: the read-lease
    // proof sees it.
    if !usable("loop_device_over_the_file_is_refused") {
        return;
    }
    let fx = fixture(4, 0);
    let _dev = LoopDev::attach(&fx.path);
    let f = File::open(&fx.path).unwrap();
    let err = MapOptions::new()
        .strategy(Strategy::Guard)
        .map(&f)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains("open for writing"), "{err}");
}

fn loop_device_attached_after_the_map_is_a_documented_hole() {
    // The loop driver writes its backing file with ->write_iter directly,
    // not through vfs_write, so no fanotify event is raised and the guard
    // cannot copy first (probe's "lacks" says so). This asserts the hole:
    // if it fails, the kernel now reports these writes; update "lacks".
    if !usable("loop_device_attached_after_the_map_is_a_documented_hole") {
        return;
    }
    let fx = fixture(4, 0);
    let map = guard_map(&fx.path);
    assert_eq!(map[0], fx.original[0]);
    let dev = LoopDev::attach(&fx.path);
    sh(&format!(
        "dd if=/dev/zero of={} bs=4096 count=1 conv=notrunc,fsync status=none",
        dev.0
    ));
    drop(dev);
    assert_eq!(fs::read(&fx.path).unwrap()[0], 0, "the loop write landed");
    assert_eq!(
        map[0], 0,
        "the guard saw the loop device's write: the kernel raises events for it now; take the hole out of probe's lacks"
    );
}

fn io_uring_write_by_a_child() {
    holds("io_uring_write_by_a_child", 4, 0, |p| {
        child("uring_write", p, "");
    });
}

fn writer_holding_the_file_open_is_refused() {
    if !usable("writer_holding_the_file_open_is_refused") {
        return;
    }
    let fx = fixture(2, 0);
    let mut writer = Command::new("sh")
        .args([
            "-c",
            &format!("exec 3>>{}; echo ready; exec sleep 30", q(&fx.path)),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(writer.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let f = File::open(&fx.path).unwrap();
    let err = MapOptions::new()
        .strategy(Strategy::Guard)
        .map(&f)
        .unwrap_err();
    let _ = writer.kill();
    let _ = writer.wait();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(
        err.to_string()
            .contains("open for writing by another process"),
        "{err}"
    );
    // Once the writer is gone it maps.
    let map = guard_map(&fx.path);
    assert!(map[..] == fx.original[..]);
}

fn writable_fd_is_refused() {
    if !usable("writable_fd_is_refused") {
        return;
    }
    let fx = fixture(1, 0);
    let rw = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fx.path)
        .unwrap();
    let e = MapOptions::new()
        .strategy(Strategy::Guard)
        .map(&rw)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.to_string().contains("open for writing"), "{e}");
}

fn map_mut_keeps_own_stores_through_truncation() {
    if !usable("map_mut_keeps_own_stores_through_truncation") {
        return;
    }
    let fx = fixture(6, 10);
    let f = File::open(&fx.path).unwrap();
    let mut m = MapOptions::new()
        .strategy(Strategy::Guard)
        .map_mut(&f)
        .unwrap();
    assert_eq!(m.strategy(), Strategy::Guard);
    m[5000] = b'!';
    sh(&format!("truncate -s 0 {}", q(&fx.path)));
    m[9000] = b'?';
    let mut want = fx.original.clone();
    want[5000] = b'!';
    want[9000] = b'?';
    assert!(m[..] == want[..]);
    // Stores never reach the file (S4).
    assert_eq!(fs::metadata(&fx.path).unwrap().len(), 0);
}

fn many_mappings_of_one_file() {
    holds("many_mappings_of_one_file", 16, 5, |p| {
        let f = File::open(p).unwrap();
        let original = fs::read(p).unwrap();
        let maps: Vec<(usize, MapCopy)> = (0..10)
            .map(|i| {
                let off = i * 3000;
                let m = MapOptions::new()
                    .strategy(Strategy::Guard)
                    .offset(off as u64)
                    .len(original.len() - off)
                    .map(&f)
                    .unwrap();
                (off, m)
            })
            .collect();
        // Drop one in the middle: the others stay guarded.
        let mut maps = maps;
        maps.remove(4);
        sh(&format!(
            "dd if=/dev/zero of={} bs=4096 seek=3 count=5 conv=notrunc status=none",
            q(p)
        ));
        sh(&format!("truncate -s 7000 {}", q(p)));
        for (off, m) in &maps {
            assert!(m[..] == original[*off..], "mapping at {off} changed");
        }
    });
}

fn own_process_writes() {
    holds("own_process_writes", 6, 0, |p| {
        // An fd this process opens after mapping; written from this thread
        // and from another one. Neither may deadlock.
        let w = OpenOptions::new().write(true).open(p).unwrap();
        w.write_all_at(&[1u8; 5000], 100).unwrap();
        let w2 = w.try_clone().unwrap();
        std::thread::spawn(move || {
            w2.write_all_at(&[2u8; 3000], 9000).unwrap();
            w2.set_len(5000).unwrap();
        })
        .join()
        .unwrap();
    });
}

fn sparse_64_gib_maps_without_reserving() {
    if !usable("sparse_64_gib_maps_without_reserving") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sparse");
    let f = File::create(&p).unwrap();
    f.set_len(64 << 30).unwrap();
    f.write_all_at(b"needle", 40 << 30).unwrap();
    drop(f);
    let map = guard_map(&p);
    assert_eq!(map.len(), 64 << 30);
    assert_eq!(&map[40 << 30..(40 << 30) + 6], b"needle");
    sh(&format!(
        "xfs_io -c 'pwrite -q -S 0x41 {} 4096' {}",
        40u64 << 30,
        q(&p)
    ));
    assert_eq!(&map[40 << 30..(40 << 30) + 6], b"needle");
    assert_eq!(map[1 << 30], 0);
}

fn kernel_reads_the_mapping() {
    if !usable("kernel_reads_the_mapping") {
        return;
    }
    let fx = fixture(3, 0);
    let map = guard_map(&fx.path);
    let out = fx.path.with_file_name("out");
    let mut o = File::create(&out).unwrap();
    o.write_all(&map).unwrap();
    drop(o);
    assert_eq!(fs::read(&out).unwrap(), fx.original);
}

fn hundred_files_under_a_thousand_writes() {
    if !usable("hundred_files_under_a_thousand_writes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for i in 0..100 {
        let p = dir.path().join(format!("f{i}"));
        let data: Vec<u8> = (0..4 * PAGE).map(|j| (i + j / PAGE) as u8).collect();
        fs::write(&p, &data).unwrap();
        let m = guard_map(&p);
        files.push((p, data, m));
    }
    let list: Vec<String> = files.iter().map(|f| f.0.display().to_string()).collect();
    let t = Instant::now();
    // 2000 pwrites spread over the 100 files by another process.
    child("many_writes", Path::new(&list.join("\n")), "2000");
    let dt = t.elapsed();
    eprintln!(
        "2000 guarded pwrites over 100 files by another process: {dt:?} ({:.0} writes/s)",
        2000.0 / dt.as_secs_f64()
    );
    for (p, data, m) in &files {
        assert_ne!(&fs::read(p).unwrap(), data);
        assert!(m[..] == data[..], "{} changed", p.display());
    }
}

fn dropping_the_last_mapping_removes_the_mark() {
    if !usable("dropping_the_last_mapping_removes_the_mark") {
        return;
    }
    let fx = fixture(2, 0);
    let ino = {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(&fx.path).unwrap().ino()
    };
    let a = guard_map(&fx.path);
    let b = guard_map(&fx.path);
    assert!(marked(ino), "no fanotify mark on the guarded inode");
    drop(a);
    assert!(marked(ino), "mark gone while a mapping remains");
    drop(b);
    assert!(!marked(ino), "mark left behind after the last mapping");
}

/// Whether any fanotify group of this process marks inode `ino`
/// (`/proc/self/fdinfo` lists `fanotify ino:<hex>` per inode mark).
fn marked(ino: u64) -> bool {
    let want = format!("fanotify ino:{ino:x} ");
    fs::read_dir("/proc/self/fd").unwrap().flatten().any(|e| {
        let link = fs::read_link(e.path()).unwrap_or_default();
        link.to_string_lossy().contains("fanotify")
            && fs::read_to_string(format!(
                "/proc/self/fdinfo/{}",
                e.file_name().to_string_lossy()
            ))
            .is_ok_and(|t| t.contains(&want))
    })
}

fn control_plain_map_private_is_caught() {
    // The same check on a plain MAP_PRIVATE mapping must fail: it shows the
    // check above can see a broken snapshot.
    let fx = fixture(4, 0);
    let f = File::open(&fx.path).unwrap();
    let len = fx.original.len();
    // SAFETY: a new private mapping of a file we created; we only read it,
    // and only before anything shrinks the file.
    let ptr = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            rustix::mm::ProtFlags::READ,
            rustix::mm::MapFlags::PRIVATE,
            &f,
            0,
        )
    }
    .unwrap();
    sh(&format!(
        "dd if=/dev/zero of={} bs=4096 seek=1 count=1 conv=notrunc status=none",
        q(&fx.path)
    ));
    // SAFETY: the mapping is live and `len` long; the file was not shrunk.
    let view = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) };
    let changed = view != &fx.original[..];
    // SAFETY: unmapping what we mapped; `view` is not used afterwards.
    unsafe { rustix::mm::munmap(ptr, len).unwrap() };
    assert!(
        changed,
        "plain MAP_PRIVATE kept the old bytes: the check is blind"
    );
}

fn nobody_gets_unsupported_with_the_reason() {
    if !usable("nobody_gets_unsupported_with_the_reason") {
        return;
    }
    let fx = fixture(1, 0);
    // Let uid 65534 reach the file.
    let dir = fx.path.parent().unwrap();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&fx.path, fs::Permissions::from_mode(0o644)).unwrap();
    let out = mapcopy_check::privilege::child_as_nobody(
        GUARD_CHILD,
        &["as_nobody".as_ref(), fx.path.as_os_str(), "".as_ref()],
    )
    .unwrap()
    .output()
    .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed: {text}");
    assert!(text.contains("NOBODY-OK"), "{text}");
}

/// Runs [`guard_child`] in a new process.
fn child(op: &str, path: &Path, arg: &str) {
    let out = mapcopy_check::child::wrapped(
        &["timeout", "60"],
        GUARD_CHILD,
        &[op.as_ref(), path.as_os_str(), arg.as_ref()],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "child {op} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The entry point of the child processes above (`OP PATH ARG`, run by
/// `child` and the tests that re-execute this binary).
fn guard_child(args: &[String]) -> i32 {
    let [op, path, arg] = args else {
        eprintln!("guard child: expected OP PATH ARG, got {args:?}");
        return 2;
    };
    let path = PathBuf::from(path);
    match op.as_str() {
        "as_nobody" => {
            assert_ne!(rustix::process::geteuid().as_raw(), 0);
            let p = mapcopy::probe(Some(&path));
            let g = p
                .strategies
                .iter()
                .find(|s| s.strategy == Strategy::Guard)
                .unwrap();
            let why = g.usable.clone().unwrap_err();
            assert!(why.contains("CAP_SYS_ADMIN"), "{why}");
            let f = File::open(&path).unwrap();
            let e = MapOptions::new()
                .strategy(Strategy::Guard)
                .map(&f)
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Unsupported);
            assert!(e.to_string().contains("CAP_SYS_ADMIN"), "{e}");
            println!("NOBODY-OK: {e}");
        }
        "uring_write" => {
            use io_uring::{IoUring, opcode, squeue, types};
            use std::os::fd::AsRawFd;
            let f = OpenOptions::new().write(true).open(&path).unwrap();
            let buf = vec![0xeeu8; 2 * PAGE];
            let mut ring = IoUring::new(4).unwrap();
            // Inline, then forced onto an io-wq worker thread (whose
            // /proc/TID/syscall shows its process's syscall, not the write).
            for (off, flags) in [(PAGE, squeue::Flags::empty()), (0, squeue::Flags::ASYNC)] {
                let sqe =
                    opcode::Write::new(types::Fd(f.as_raw_fd()), buf.as_ptr(), buf.len() as _)
                        .offset(off as u64)
                        .build()
                        .flags(flags);
                // SAFETY: `buf` outlives the submission (we wait for it below).
                unsafe { ring.submission().push(&sqe).unwrap() };
                ring.submit_and_wait(1).unwrap();
                let cqe = ring.completion().next().unwrap();
                assert_eq!(cqe.result(), buf.len() as i32, "io_uring write");
            }
        }
        "many_writes" => {
            let files: Vec<File> = path
                .to_str()
                .unwrap()
                .lines()
                .map(|p| OpenOptions::new().write(true).open(p).unwrap())
                .collect();
            let n: usize = arg.parse().unwrap();
            let t = Instant::now();
            for i in 0..n {
                let f = &files[i % files.len()];
                f.write_all_at(&[0xffu8; 512], ((i * 7) % (4 * PAGE - 512)) as u64)
                    .unwrap();
            }
            assert!(t.elapsed() < Duration::from_secs(55));
        }
        "fork_and_exit" => {
            // Map, fork a child that outlives us (without exec), exit.
            let f = File::open(&path).unwrap();
            let map = MapOptions::new().strategy(Strategy::Guard).map(&f).unwrap();
            assert_eq!(map[0], b'A');
            // SAFETY: the child only sleeps and exits (async-signal-safe
            // calls only).
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0);
            if pid == 0 {
                // SAFETY: plain libc calls in the forked child.
                unsafe {
                    // Let the test's pipe close when the parent exits.
                    libc::close(1);
                    libc::close(2);
                    libc::sleep(8);
                    libc::_exit(0);
                }
            }
            println!("FORKED {pid}");
            std::mem::forget(map);
            std::process::exit(0);
        }
        other => panic!("unknown child op {other}"),
    }
    0
}

/// Auto takes Guard for reads only where neither a lease nor a clone can be
/// had (a guard taxes every other reader of the file), and never for
/// map_mut where something copies less.
fn auto_prefers_lease_over_guard_for_reads_and_not_guard_for_map_mut() {
    if !usable("auto_prefers_lease_over_guard_for_reads_and_not_guard_for_map_mut") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    fs::write(&small, b"small").unwrap();
    let big = dir.path().join("big");
    File::create(&big).unwrap().set_len(128 << 20).unwrap();
    for p in [&small, &big] {
        // Read-only: as root a lease can always be had on this temp
        // filesystem, and it costs other readers nothing; Guard comes after
        // it (and after Reflink).
        let probe = mapcopy::probe(Some(p));
        eprintln!("{probe}");
        assert_eq!(probe.auto.clone().unwrap(), Strategy::Lease, "{probe}");
        let map = MapCopy::open(p).unwrap();
        assert_eq!(map.strategy(), Strategy::Lease);
        drop(map);
        // A named Guard still maps.
        let file = File::open(p).unwrap();
        let g = MapOptions::new()
            .strategy(Strategy::Guard)
            .map(&file)
            .unwrap();
        assert_eq!(g.strategy(), Strategy::Guard);
        drop(g);
        // map_mut: Guard would copy the whole range at map time; without a
        // reflink clone Auto prefers a strategy that copies only touched
        // pages (Lazy, as root) or at worst copies everything (Eager).
        // (Per-page: Lazy keeps only that; under the default point-in-time
        // it is not considered.)
        let file = File::open(p).unwrap();
        let pit = MapOptions::new().map_mut(&file).unwrap();
        assert_ne!(pit.strategy(), Strategy::Lazy, "Lazy under point-in-time");
        drop(pit);
        let m = MapOptions::new()
            .consistency(mapcopy::Consistency::PerPage)
            .map_mut(&file)
            .unwrap();
        if fs_has_reflink(p) {
            assert_eq!(m.strategy(), Strategy::Reflink);
        } else {
            assert!(
                matches!(m.strategy(), Strategy::Lazy | Strategy::Eager),
                "map_mut went to {:?}",
                m.strategy()
            );
        }
    }
}

fn fs_has_reflink(p: &Path) -> bool {
    let out = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(p)
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&out.stdout);
    t.contains("xfs") || t.contains("btrfs") || t.contains("bcachefs")
}

fn forked_child_never_holds_writers_up() {
    // A child forked (without exec) by a guarding process keeps a copy of
    // the fanotify fd unless the fork handler drops it; after the parent
    // exits, writers would then wait on a group nobody reads.
    if !usable("forked_child_never_holds_writers_up") {
        return;
    }
    let fx = fixture(2, 0);
    let out = mapcopy_check::child::command(
        GUARD_CHILD,
        &["fork_and_exit".as_ref(), fx.path.as_os_str(), "".as_ref()],
    )
    .stderr(Stdio::inherit())
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FORKED"), "{text}");
    let grandchild: i32 = text
        .split("FORKED ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let t = Instant::now();
    let st = Command::new("timeout")
        .args(["4", "truncate", "-s", "0"])
        .arg(&fx.path)
        .status()
        .unwrap();
    // SAFETY: kill(2) on the grandchild we were told about.
    unsafe { libc::kill(grandchild, libc::SIGKILL) };
    assert!(
        st.success(),
        "writer hung after the guarding parent exited ({st}, {:?})",
        t.elapsed()
    );
}

/// A forked child has no guard thread: libc's fork() detaches the mapping
/// first, so the child reads the snapshot, not the file rewritten after
/// the fork.
fn forked_child_reads_the_snapshot_not_the_rewritten_file() {
    if !usable("forked_child_reads_the_snapshot_not_the_rewritten_file") {
        return;
    }
    let fx = fixture(2, 0);
    let map = guard_map(&fx.path);
    let addr = map.as_ptr() as usize;
    let want = map[0];
    let (rd, wr) = rustix::pipe::pipe().unwrap();
    // SAFETY: the child only reads a pipe and memory, then exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let mut b = [0u8; 1];
        // SAFETY: one byte into a stack buffer from our pipe; then a read
        // of the inherited mapping and _exit.
        unsafe {
            libc::read(
                rustix::fd::AsRawFd::as_raw_fd(&rd),
                b.as_mut_ptr().cast(),
                1,
            );
            let got = std::ptr::read_volatile(addr as *const u8);
            libc::_exit(if got == want { 0 } else { 3 });
        }
    }
    drop(rd);
    std::fs::write(&fx.path, vec![want ^ 0xff; 8192]).unwrap();
    rustix::io::write(&wr, b"g").unwrap();
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status:#x} (exit 3: it read the rewritten file)"
    );
    assert_eq!(map[0], want);
    drop(map);
}

fn main() {
    mapcopy_check::child::dispatch_with(&[(GUARD_CHILD, guard_child)]);
    let args = Arguments::from_args();
    let trials = vec![
        Trial::test("write_by_dd", || {
            write_by_dd();
            Ok(())
        }),
        Trial::test("pwrite_and_pwritev_by_xfs_io", || {
            pwrite_and_pwritev_by_xfs_io();
            Ok(())
        }),
        Trial::test("append_into_the_last_partial_page", || {
            append_into_the_last_partial_page();
            Ok(())
        }),
        Trial::test("truncate_by_path_to_zero_and_regrow", || {
            truncate_by_path_to_zero_and_regrow();
            Ok(())
        }),
        Trial::test("ftruncate_into_the_middle", || {
            ftruncate_into_the_middle();
            Ok(())
        }),
        Trial::test("open_with_o_trunc", || {
            open_with_o_trunc();
            Ok(())
        }),
        Trial::test("fallocate_punch_zero_and_collapse", || {
            fallocate_punch_zero_and_collapse();
            Ok(())
        }),
        Trial::test("copy_file_range_into_the_file", || {
            copy_file_range_into_the_file();
            Ok(())
        }),
        Trial::test("o_direct_write", || {
            o_direct_write();
            Ok(())
        }),
        Trial::test("shared_mapping_made_after_ours", || {
            shared_mapping_made_after_ours();
            Ok(())
        }),
        Trial::test("second_hard_link", || {
            second_hard_link();
            Ok(())
        }),
        Trial::test("cp_over_the_file", || {
            cp_over_the_file();
            Ok(())
        }),
        Trial::test("open_rdonly_trunc_by_another_process", || {
            open_rdonly_trunc_by_another_process();
            Ok(())
        }),
        Trial::test("loop_device_over_the_file_is_refused", || {
            loop_device_over_the_file_is_refused();
            Ok(())
        }),
        Trial::test(
            "loop_device_attached_after_the_map_is_a_documented_hole",
            || {
                loop_device_attached_after_the_map_is_a_documented_hole();
                Ok(())
            },
        ),
        Trial::test("io_uring_write_by_a_child", || {
            io_uring_write_by_a_child();
            Ok(())
        }),
        Trial::test("writer_holding_the_file_open_is_refused", || {
            writer_holding_the_file_open_is_refused();
            Ok(())
        }),
        Trial::test("writable_fd_is_refused", || {
            writable_fd_is_refused();
            Ok(())
        }),
        Trial::test("map_mut_keeps_own_stores_through_truncation", || {
            map_mut_keeps_own_stores_through_truncation();
            Ok(())
        }),
        Trial::test("many_mappings_of_one_file", || {
            many_mappings_of_one_file();
            Ok(())
        }),
        Trial::test("own_process_writes", || {
            own_process_writes();
            Ok(())
        }),
        Trial::test("sparse_64_gib_maps_without_reserving", || {
            sparse_64_gib_maps_without_reserving();
            Ok(())
        }),
        Trial::test("kernel_reads_the_mapping", || {
            kernel_reads_the_mapping();
            Ok(())
        }),
        Trial::test("hundred_files_under_a_thousand_writes", || {
            hundred_files_under_a_thousand_writes();
            Ok(())
        }),
        Trial::test("dropping_the_last_mapping_removes_the_mark", || {
            dropping_the_last_mapping_removes_the_mark();
            Ok(())
        }),
        Trial::test("control_plain_map_private_is_caught", || {
            control_plain_map_private_is_caught();
            Ok(())
        }),
        Trial::test("nobody_gets_unsupported_with_the_reason", || {
            nobody_gets_unsupported_with_the_reason();
            Ok(())
        }),
        Trial::test(
            "auto_prefers_lease_over_guard_for_reads_and_not_guard_for_map_mut",
            || {
                auto_prefers_lease_over_guard_for_reads_and_not_guard_for_map_mut();
                Ok(())
            },
        ),
        Trial::test("forked_child_never_holds_writers_up", || {
            forked_child_never_holds_writers_up();
            Ok(())
        }),
        Trial::test(
            "forked_child_reads_the_snapshot_not_the_rewritten_file",
            || {
                forked_child_reads_the_snapshot_not_the_rewritten_file();
                Ok(())
            },
        ),
    ];
    libtest_mimic::run(&args, trials).exit();
}
