//! Tests of the `Guard` strategy's internals.

use super::*;

struct Fake {
    io_worker: bool,
    sc: Option<Syscall>,
    info: Option<FdInfo>,
    mem: Option<u64>,
}

impl Lookup for Fake {
    fn syscall(&self, _: i32) -> Option<Syscall> {
        // As `proc_pid::syscall`: nothing for an io_uring worker.
        self.sc.filter(|_| !self.io_worker)
    }
    fn fdinfo(&self, _: i32, _: u64) -> Option<FdInfo> {
        self.info
    }
    fn read_u64(&self, _: i32, _: u64) -> Option<u64> {
        self.mem
    }
}

fn ev(mask: u64, range: Option<(u64, u64)>) -> Event {
    Event {
        mask,
        fd: None,
        pid: 1,
        range,
    }
}

fn fake(nr: i64, args: [u64; 6], flags: i32) -> Fake {
    Fake {
        io_worker: false,
        sc: Some(Syscall { nr, args }),
        info: Some(FdInfo { flags, ino: 7 }),
        mem: None,
    }
}

const PA: u64 = FAN_PRE_ACCESS;

/// The file: inode 7 of `size` bytes.
fn f(size: u64) -> impl Fn() -> Option<(u64, u64)> {
    move || Some((7, size))
}

#[test]
fn reads_are_allowed_writes_copied() {
    let e = ev(PA, Some((4096, 4096)));
    let rd = fake(libc::SYS_pread64, [3, 0, 4096, 4096, 0, 0], libc::O_RDONLY);
    assert_eq!(classify(&e, &f(100_000), &rd), Action::Allow);
    // The same "syscall" shown by an io_uring worker is not trusted.
    let mut worker = fake(libc::SYS_pread64, [3, 0, 4096, 4096, 0, 0], libc::O_RDONLY);
    worker.io_worker = true;
    assert_eq!(classify(&e, &f(100_000), &worker), Action::Detach(4096));
    let wr = fake(libc::SYS_pwrite64, [3, 0, 4096, 4096, 0, 0], libc::O_RDWR);
    assert_eq!(
        classify(&e, &f(100_000), &wr),
        Action::Copy(vec![(4096, 8192), (99_999, 100_000)])
    );
}

#[test]
fn append_also_copies_the_end() {
    let e = ev(PA, Some((0, 4096)));
    let wr = fake(
        libc::SYS_write,
        [3, 0, 10, 0, 0, 0],
        libc::O_WRONLY | libc::O_APPEND,
    );
    let Action::Copy(r) = classify(&e, &f(5000), &wr) else {
        panic!("append not copied")
    };
    assert!(r.iter().any(|&(s, e)| s <= 4999 && e > 4999), "{r:?}");
}

#[test]
fn truncate_copies_to_the_end() {
    let e = ev(PA, Some((8192, 4096)));
    let t = fake(libc::SYS_ftruncate, [3, 10_000, 0, 0, 0, 0], libc::O_WRONLY);
    assert_eq!(classify(&e, &f(100_000), &t), Action::Detach(8192));
    let t = fake(libc::SYS_truncate, [0x1000, 0, 0, 0, 0, 0], 0);
    assert_eq!(classify(&e, &f(100_000), &t), Action::Detach(0));
}

#[test]
fn mmap_shared_writable_copies_everything() {
    let e = ev(PA, Some((0, 4096)));
    let flags = libc::MAP_SHARED as u64;
    let m = fake(libc::SYS_mmap, [0, 4096, 3, flags, 5, 0], libc::O_RDWR);
    assert_eq!(classify(&e, &f(4096), &m), Action::Detach(0));
    let ro = fake(libc::SYS_mmap, [0, 4096, 1, flags, 5, 0], libc::O_RDONLY);
    assert_eq!(classify(&e, &f(4096), &ro), Action::Allow);
    let private = libc::MAP_PRIVATE as u64;
    let p = fake(libc::SYS_mmap, [0, 4096, 3, private, 5, 0], libc::O_RDWR);
    assert_eq!(classify(&e, &f(4096), &p), Action::Allow);
}

#[test]
fn unknown_is_a_write_to_the_end() {
    let e = ev(PA, Some((4096, 4096)));
    let gone = Fake {
        io_worker: false,
        sc: None,
        info: None,
        mem: None,
    };
    assert_eq!(classify(&e, &f(100_000), &gone), Action::Detach(4096));
    let uring = fake(libc::SYS_io_uring_enter, [0; 6], 0);
    assert_eq!(classify(&e, &f(100_000), &uring), Action::Detach(4096));
}

#[test]
fn copy_file_range_copies_only_into_us() {
    let e = ev(PA, Some((0, 4096)));
    let mut c = fake(
        libc::SYS_copy_file_range,
        [3, 0, 4, 0, 4096, 0],
        libc::O_RDWR,
    );
    assert_eq!(classify(&e, &f(4096), &c), Action::Copy(vec![(0, 4096)]));
    c.info = Some(FdInfo {
        flags: libc::O_RDWR,
        ino: 8,
    });
    assert_eq!(classify(&e, &f(4096), &c), Action::Allow);
}

#[test]
fn open_with_o_trunc_copies_everything() {
    let e = ev(libc::FAN_OPEN_PERM, None);
    let t = fake(
        libc::SYS_openat,
        [0, 0, (libc::O_WRONLY | libc::O_TRUNC) as u64, 0, 0, 0],
        0,
    );
    assert_eq!(classify(&e, &f(1), &t), Action::Detach(0));
    let r = fake(libc::SYS_openat, [0, 0, libc::O_RDWR as u64, 0, 0, 0], 0);
    assert_eq!(classify(&e, &f(1), &r), Action::Allow);
    let mut o2 = fake(libc::SYS_openat2, [0, 0, 0x1000, 24, 0, 0], 0);
    o2.mem = Some(libc::O_TRUNC as u64);
    assert_eq!(classify(&e, &f(1), &o2), Action::Detach(0));
    o2.mem = None;
    assert_eq!(classify(&e, &f(1), &o2), Action::Detach(0));
}

/// Tests that map with the process's guard group: one shuts it down, so
/// they take turns (a map racing the shutdown is refused, as it must be).
static GROUP_USERS: Mutex<()> = Mutex::new(());

/// A temp dir holding file `f` of `pages` pages (page `i` filled with
/// `i + first`) plus `tail` bytes, and a Guard mapping of it; `None` (a
/// skip, a failure under `MAPCOPY_REQUIRE_ALL=1`) where Guard is unusable.
fn guarded(
    pages: usize,
    tail: usize,
    first: u8,
) -> Option<(
    tempfile::TempDir,
    std::path::PathBuf,
    Vec<u8>,
    crate::MapCopy,
)> {
    if let Err(why) = check(None) {
        mapcopy_check::fixture::skip_or_fail(format!("guard not usable: {why}")).unwrap();
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let data: Vec<u8> = (0..pages * 4096 + tail)
        .map(|i| (i / 4096) as u8 + first)
        .collect();
    std::fs::write(&path, &data).unwrap();
    let f = std::fs::File::open(&path).unwrap();
    let map = crate::MapOptions::new()
        .strategy(Strategy::Guard)
        .map(&f)
        .unwrap();
    Some((dir, path, data, map))
}

/// The guard-thread failure path: `shutdown` takes every page, then releases
/// the group; a truncation afterwards raises no event (nobody waits for
/// an answer) and the mapping still reads the old bytes, no SIGBUS.
#[test]
fn shutdown_snapshots_everything_then_lets_writers_go() {
    let _turn = lock(&GROUP_USERS);
    let Some((_dir, path, data, map)) = guarded(5, 7, 1) else {
        return;
    };
    let g = lock(&CURRENT).as_ref().unwrap().clone();
    g.shutdown();
    assert!(g.dead.load(Ordering::Acquire));
    let st = std::process::Command::new("timeout")
        .args(["20", "truncate", "-s", "0"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(st.success(), "truncate after shutdown: {st}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    assert!(map[..] == data[..]);
    drop(map);
    // A new mapping gets a new, live group.
    std::fs::write(&path, b"again").unwrap();
    let map = crate::MapOptions::new()
        .strategy(Strategy::Guard)
        .map(std::fs::File::open(&path).unwrap())
        .unwrap();
    let g2 = lock(&CURRENT).as_ref().unwrap().clone();
    assert!(!Arc::ptr_eq(&g, &g2));
    std::fs::write(&path, b"AGAIN!").unwrap();
    assert_eq!(&map[..], b"again");
}

/// `MapCopy` derefs to the address it read at map time, so a detach (before
/// a truncation) and the fork handler's detach must put the anonymous copy
/// over the same range: the snapshot's span and bytes stay where they were.
#[test]
fn detach_and_fork_prepare_keep_the_address() {
    let _turn = lock(&GROUP_USERS);
    let Some((_dir, path, data, map)) = guarded(6, 9, 3) else {
        return;
    };
    let f = std::fs::File::open(&path).unwrap();
    let other = crate::MapOptions::new()
        .strategy(Strategy::Guard)
        .map(&f)
        .unwrap();
    let (at, other_at) = (map.as_ptr(), other.as_ptr());
    // Another process truncates: the guard detaches from page 2 on first.
    let st = std::process::Command::new("timeout")
        .args(["20", "truncate", "-s", "8192"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(st.success(), "truncate: {st}");
    assert!(map.span_unchanged() && other.span_unchanged());
    assert!(map[..] == data[..]);
    // What libc's fork() runs first: every mapping detached completely.
    prepare_fork();
    assert!(map.span_unchanged() && other.span_unchanged());
    assert_eq!((map.as_ptr(), other.as_ptr()), (at, other_at));
    assert!(map[..] == data[..] && other[..] == data[..]);
}

#[test]
fn file_part_rounds_to_pages() {
    assert_eq!(file_part(0, 8192, 5000, 4096), 8192);
    assert_eq!(file_part(0, 16384, 5000, 4096), 8192);
    assert_eq!(file_part(8192, 4096, 5000, 4096), 0);
    assert_eq!(file_part(4096, 4096, 5000, 4096), 4096);
}
