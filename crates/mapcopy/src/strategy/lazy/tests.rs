//! Tests of the `Lazy` strategy's internals.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::sync::Barrier;

use super::*;
use crate::{ErrorKind, MapOptions};

/// Whether Lazy works here; prints why not (and fails under
/// MAPCOPY_REQUIRE_ALL=1).
fn usable() -> bool {
    match check(None) {
        Ok(_) => true,
        Err(why) => {
            mapcopy_check::fixture::skip_or_fail(format!("lazy strategy unusable: {why}")).unwrap();
            false
        }
    }
}

/// Deterministic bytes that differ from page to page and within pages.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64).wrapping_mul(0x9E37_79B1) >> 7) as u8 ^ (i >> 12) as u8 ^ seed)
        .collect()
}

fn file_with(data: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(data).unwrap();
    f.flush().unwrap();
    f
}

fn lazy() -> MapOptions {
    let mut o = MapOptions::new();
    o.strategy(Strategy::Lazy)
        .consistency(crate::Consistency::PerPage);
    o
}

fn sh(script: &str) {
    let st = Command::new("sh").arg("-c").arg(script).status().unwrap();
    assert!(st.success(), "`{script}` failed: {st}");
}

const PAGE: usize = 4096;

/// Where [`FailAt`] fails: EIO at this file offset.
static FAIL_READ_AT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(u64::MAX);

/// A source that reads the file, except that it fails with EIO at
/// [`FAIL_READ_AT`].
struct FailAt;

impl ReadAt for FailAt {
    fn read_at(&self, file: &File, buf: &mut [u8], at: u64) -> Result<usize, (u64, Errno)> {
        let fail = FAIL_READ_AT.load(Ordering::Relaxed);
        if (at..at + buf.len() as u64).contains(&fail) {
            return Err((fail, Errno::IO));
        }
        Pread.read_at(file, buf, at)
    }
}

/// Runs this test binary's test `name` in a child process with
/// `MAPCOPY_LAZY_CHILD=role`, killing it after 60 s.
fn run_child(name: &str, role: &str) -> (std::process::ExitStatus, String) {
    use std::os::unix::process::ExitStatusExt;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env("MAPCOPY_LAZY_CHILD", role)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("child {role} hung (killed after 20 s)");
        }
        thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    eprintln!("child {role}: {status:?} (signal {:?})", status.signal());
    (status, err)
}

fn child_role() -> Option<String> {
    std::env::var("MAPCOPY_LAZY_CHILD").ok()
}

#[test]
fn read_error_aborts_loudly() {
    if child_role().as_deref() == Some("eio") {
        assert!(
            set_source(&FailAt),
            "a mapping read before the source was set"
        );
        let data = pattern(5 * PAGE, 10);
        let f = file_with(&data);
        let file = File::open(f.path()).unwrap();
        let map = lazy().map(&file).unwrap();
        assert_eq!(map[0], data[0]);
        FAIL_READ_AT.store(4 * PAGE as u64 + 100, Ordering::Relaxed);
        // Page 4 is no neighbour of the pages filled so far.
        let v = std::hint::black_box(map[4 * PAGE]);
        eprintln!("child read {v} instead of aborting");
        std::process::exit(7);
    }
    if child_role().is_some() || !usable() {
        return;
    }
    use std::os::unix::process::ExitStatusExt;
    let (status, err) = run_child("strategy::lazy::tests::read_error_aborts_loudly", "eio");
    eprintln!("child stderr: {err}");
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}: {err}");
    assert!(err.contains("at offset 16484"), "{err}");
    assert!(err.contains("errno 5"), "{err}");
    assert!(err.contains("aborting the process"), "{err}");
}

#[test]
fn read_error_while_populating_is_an_io_error() {
    if child_role().as_deref() == Some("populate-eio") {
        assert!(
            set_source(&FailAt),
            "a mapping read before the source was set"
        );
        let data = pattern(8 * CHUNK, 12);
        let f = file_with(&data);
        let file = File::open(f.path()).unwrap();
        // In the caller's half, then in the prefetch thread's half.
        for at in [CHUNK as u64 + 5, 7 * CHUNK as u64 + 5] {
            FAIL_READ_AT.store(at, Ordering::Relaxed);
            let e = lazy().populate(true).map(&file).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Io, "{e}");
            assert!(e.to_string().contains(&format!("at offset {at}")), "{e}");
        }
        FAIL_READ_AT.store(u64::MAX, Ordering::Relaxed);
        assert!(lazy().populate(true).map(&file).unwrap()[..] == data[..]);
        std::process::exit(0);
    }
    if child_role().is_some() || !usable() {
        return;
    }
    let (status, err) = run_child(
        "strategy::lazy::tests::read_error_while_populating_is_an_io_error",
        "populate-eio",
    );
    assert!(status.success(), "{status:?}: {err}");
}

/// Source for the test below: always readable, panics when served.
struct Panicker(rustix::fd::OwnedFd);

impl Source for Panicker {
    fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
    fn ready(&self) {
        panic!("test source fails on purpose");
    }
    fn shutdown(&self) {}
    fn name(&self) -> &'static str {
        "panicker"
    }
}

#[test]
fn faults_are_served_after_the_watcher_fails() {
    if child_role().as_deref() == Some("watcher") {
        let data = pattern(3 * CHUNK + 9, 11);
        let f = file_with(&data);
        let file = File::open(f.path()).unwrap();
        let map = lazy().map(&file).unwrap();
        assert_eq!(map[0], data[0]);
        let fd = rustix::event::eventfd(1, rustix::event::EventfdFlags::CLOEXEC).unwrap();
        let _reg = watcher::register(Arc::new(Panicker(fd))).unwrap();
        thread::sleep(std::time::Duration::from_millis(200));
        assert!(map[..] == data[..]);
        std::process::exit(0);
    }
    if child_role().is_some() || !usable() {
        return;
    }
    let (status, err) = run_child(
        "strategy::lazy::tests::faults_are_served_after_the_watcher_fails",
        "watcher",
    );
    assert!(status.success(), "{status:?}: {err}");
    assert!(err.contains("watcher thread failing"), "{err}");
}

#[test]
fn contents_equal_the_file() {
    if child_role().is_some() || !usable() {
        return;
    }
    contents_equal_the_file_body();
}

/// Everything above and the racing threads, with fills by UFFDIO_COPY
/// only (as on Linux < 6.8), in a child process.
#[test]
fn copy_only_fills() {
    if child_role().as_deref() == Some("nomove") {
        // This process's server, made before any mapping: copies only.
        server_with(false).unwrap();
        assert!(!server().unwrap().can_move);
        contents_equal_the_file_body();
        eight_threads_body();
        std::process::exit(0);
    }
    if child_role().is_some() || !usable() {
        return;
    }
    let (status, err) = run_child("strategy::lazy::tests::copy_only_fills", "nomove");
    assert!(status.success(), "{status:?}: {err}");
}

fn contents_equal_the_file_body() {
    for size in [1, 4095, 4096, 4097, 3 * PAGE + 1, 5 * CHUNK + 123] {
        let data = pattern(size, 1);
        let f = file_with(&data);
        let file = File::open(f.path()).unwrap();
        for populate in [false, true] {
            let map = lazy().populate(populate).map(&file).unwrap();
            assert_eq!(map.strategy(), Strategy::Lazy);
            assert_eq!(map.len(), size);
            assert!(map[..] == data[..], "size {size} populate {populate}");
            let mm = lazy().populate(populate).map_mut(&file).unwrap();
            assert!(mm[..] == data[..], "mut size {size} populate {populate}");
        }
        // Unaligned offsets and sub-ranges, read backwards so that the
        // first fault is not at the start.
        for (off, len) in [
            (1, size - 1),
            (size / 3, size / 2),
            (size - 1, 1),
            (4097, 5000),
        ] {
            if off + len > size || len == 0 {
                continue;
            }
            let map = lazy().offset(off as u64).len(len).map(&file).unwrap();
            let mut sum = 0u64;
            for i in (0..len).rev().step_by(PAGE) {
                sum += u64::from(map[i]);
            }
            assert!(sum > 0 || len < 16);
            assert!(
                map[..] == data[off..off + len],
                "size {size} off {off} len {len}"
            );
        }
        // A range reaching past the end: zeros there.
        let map = lazy().len(size + 2 * PAGE).map(&file).unwrap();
        assert!(map[..size] == data[..]);
        assert!(map[size..].iter().all(|&b| b == 0));
    }
}

#[test]
fn pages_read_before_writes_by_another_process_keep_their_bytes() {
    if !usable() {
        return;
    }
    let size = 2 * CHUNK;
    let data = pattern(size, 2);
    let f = file_with(&data);
    let path = f.path().display().to_string();
    let file = File::open(f.path()).unwrap();
    let map = lazy().map(&file).unwrap();
    // Touch page 0 and page 100 (fault-around may fill a few neighbours).
    assert_eq!(map[10], data[10]);
    assert_eq!(map[100 * PAGE + 3], data[100 * PAGE + 3]);
    // Another process overwrites both pages and one untouched page.
    for p in [0, 100, 300] {
        sh(&format!(
            "head -c {PAGE} /dev/zero | tr '\\0' 'X' | dd of='{path}' bs={PAGE} seek={p} conv=notrunc status=none"
        ));
    }
    assert!(map[..PAGE] == data[..PAGE], "page 0 changed after pwrite");
    assert!(map[100 * PAGE..101 * PAGE] == data[100 * PAGE..101 * PAGE]);
    // Page 300 was first touched after the write: Lazy snapshots at
    // first access, so it holds the new bytes (S1 allows old or new).
    assert!(map[300 * PAGE..301 * PAGE].iter().all(|&b| b == b'X'));
    // Shrink to 8 KiB: touched pages keep their bytes, untouched ones
    // read as zero, and nothing faults (S3).
    sh(&format!("truncate -s 8192 '{path}'"));
    assert!(map[..PAGE] == data[..PAGE]);
    assert!(map[300 * PAGE..301 * PAGE].iter().all(|&b| b == b'X'));
    assert!(map[200 * PAGE..201 * PAGE].iter().all(|&b| b == 0));
    assert!(map[size - PAGE..].iter().all(|&b| b == 0));
    // Regrow with other bytes: still nothing changes.
    sh(&format!(
        "head -c {size} /dev/zero | tr '\\0' 'Y' > '{path}'"
    ));
    assert!(map[..PAGE] == data[..PAGE]);
    assert!(map[200 * PAGE..201 * PAGE].iter().all(|&b| b == 0));
    assert!(map[400 * PAGE..401 * PAGE].iter().all(|&b| b == b'Y'));
}

#[test]
fn populate_snapshots_everything_at_map_time() {
    if !usable() {
        return;
    }
    let data = pattern(3 * CHUNK + 5, 3);
    let f = file_with(&data);
    let file = File::open(f.path()).unwrap();
    let map = lazy().populate(true).map(&file).unwrap();
    sh(&format!("truncate -s 0 '{}'", f.path().display()));
    assert!(map[..] == data[..]);
}

#[test]
fn o_direct_file_descriptors_work() {
    if !usable() {
        return;
    }
    use std::os::unix::fs::OpenOptionsExt;
    let data = pattern(3 * CHUNK + 3 * PAGE + 17, 13);
    let f = file_with(&data);
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(f.path())
    {
        Ok(file) => file,
        Err(e) => {
            eprintln!(
                "skipped: O_DIRECT not supported for {}: {e}",
                f.path().display()
            );
            return;
        }
    };
    let map = lazy().map(&file).unwrap();
    assert!(map[..] == data[..]);
    let map = lazy().offset(5).populate(true).map(&file).unwrap();
    assert!(map[..] == data[5..]);
}

#[test]
fn map_mut_stores_stay_private() {
    if !usable() {
        return;
    }
    let data = pattern(CHUNK + 3 * PAGE, 4);
    let f = file_with(&data);
    let file = File::open(f.path()).unwrap();
    let mut map = lazy().map_mut(&file).unwrap();
    // First touch is a store (write fault), then a read elsewhere.
    map[CHUNK + 5] = !data[CHUNK + 5];
    map[7] = !data[7];
    assert_eq!(map[CHUNK + 5], !data[CHUNK + 5]);
    assert_eq!(map[CHUNK + 6], data[CHUNK + 6]);
    assert_eq!(map[8], data[8]);
    assert_eq!(std::fs::read(f.path()).unwrap(), data);
}

#[test]
fn eight_threads_racing_on_first_touch() {
    if child_role().is_some() || !usable() {
        return;
    }
    eight_threads_body();
}

fn eight_threads_body() {
    let size = 6 * CHUNK + 77;
    let data = pattern(size, 5);
    let f = file_with(&data);
    let file = File::open(f.path()).unwrap();
    for round in 0..5 {
        let map = lazy().map(&file).unwrap();
        let barrier = Barrier::new(8);
        thread::scope(|s| {
            for t in 0..8usize {
                let (map, data, barrier) = (&map, &data, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    // Half the threads go forwards, half backwards, all
                    // starting on the same pages.
                    let pages = size.div_ceil(PAGE);
                    for k in 0..pages {
                        let p = if t % 2 == 0 { k } else { pages - 1 - k };
                        let i = (p * PAGE + t * 8).min(size - 1);
                        assert_eq!(map[i], data[i], "round {round} thread {t} byte {i}");
                    }
                });
            }
        });
        assert!(map[..] == data[..]);
    }
}

#[test]
fn kernel_reads_untouched_pages() {
    if !usable() {
        return;
    }
    let size = 3 * CHUNK + 1234;
    let data = pattern(size, 6);
    let f = file_with(&data);
    let file = File::open(f.path()).unwrap();
    let map = lazy().offset(3).map(&file).unwrap();
    // write(2) with an untouched source: the kernel faults on it.
    let mut out = tempfile::tempfile().unwrap();
    out.write_all(&map).unwrap();
    let mut back = vec![0u8; size - 3];
    out.read_exact_at(&mut back, 0).unwrap();
    assert!(back == data[3..]);
    // And through a pipe, from another fresh mapping.
    let map = lazy().map(&file).unwrap();
    let (r, w) = rustix::pipe::pipe().unwrap();
    let reader = thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match rustix::io::read(&r, &mut buf) {
                Ok(0) => break got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => panic!("{e}"),
            }
        }
    });
    let mut done = 0;
    while done < map.len() {
        done += rustix::io::write(&w, &map[done..]).unwrap();
    }
    drop(w);
    assert!(reader.join().unwrap() == data);
}

fn vm_rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let l = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    l[6..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// Bytes of `[addr, addr + len)` resident in memory, from mincore(2).
fn resident_bytes(addr: usize, len: usize) -> u64 {
    let mut vec = vec![0u8; len.div_ceil(PAGE)];
    // SAFETY: the range is a live mapping of the caller; `vec` has one
    // byte per page.
    let rc = unsafe { libc::mincore(addr as *mut libc::c_void, len, vec.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    vec.iter().filter(|&&v| v & 1 != 0).count() as u64 * PAGE as u64
}

/// A field of /proc/self/smaps in bytes, summed over the VMAs inside
/// `[addr, addr + len)`.
fn smaps_field(addr: usize, len: usize, field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    let mut rss = 0;
    for l in s.lines() {
        if let Some((range, _)) = l.split_once(' ').filter(|(r, _)| r.contains('-'))
            && let Some((a, b)) = range.split_once('-')
            && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            inside = a < addr + len && b > addr;
            continue;
        }
        if inside && l.starts_with(field) {
            rss += l[field.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap()
                * 1024;
        }
    }
    rss
}

/// VMAs of this process inside `[addr, addr + len)`, with their
/// permissions.
fn vmas(addr: usize, len: usize) -> Vec<String> {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| {
            let (a, b) = l.split_once(' ').unwrap().0.split_once('-').unwrap();
            let a = usize::from_str_radix(a, 16).unwrap();
            let b = usize::from_str_radix(b, 16).unwrap();
            a < addr + len && b > addr
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn read_only_after_huge_page_fills() {
    if !usable() {
        return;
    }
    let data = pattern(40 * CHUNK, 14);
    let f = file_with(&data);
    let file = File::open(f.path()).unwrap();
    let map = lazy().map(&file).unwrap();
    assert!(map[..] == data[..]);
    // Chunks opened for UFFDIO_MOVE are closed again right after the
    // move (a prefetched chunk the reader already passed may still be
    // on its way); VMAs are per range, and an adjacent mapping of
    // another test with the same flags may be merged into them.
    // On a loaded 2-core machine the prefetch thread can be descheduled
    // for a while mid-move: allow it 10 s.
    let mut v = Vec::new();
    for _ in 0..250 {
        v = vmas(map.as_ptr() as usize, map.len());
        if v.iter().all(|l| l.contains(" r--p ")) {
            break;
        }
        thread::sleep(std::time::Duration::from_millis(40));
    }
    let huge = smaps_field(map.as_ptr() as usize, map.len(), "AnonHugePages:");
    eprintln!("{v:#?}, AnonHugePages {huge} (these VMAs)");
    assert!(
        !v.is_empty() && v.iter().all(|l| l.contains(" r--p ")),
        "{v:#?}"
    );
    assert!(v.len() <= 2, "{v:#?}");
}

#[test]
fn sparse_64_gib_file_costs_only_touched_pages() {
    if !usable() {
        return;
    }
    let size: u64 = 64 << 30;
    let f = tempfile::NamedTempFile::new().unwrap();
    let file = f.as_file();
    file.set_len(size).unwrap();
    let marks = [0u64, 12345 * 4096 + 7, 32 << 30, size - 9];
    for (k, &m) in marks.iter().enumerate() {
        file.write_all_at(format!("mark{k}").as_bytes(), m.min(size - 5))
            .unwrap();
    }
    let before = vm_rss();
    let map = lazy().map(file).unwrap();
    assert_eq!(map.len() as u64, size);
    for (k, &m) in marks.iter().enumerate() {
        let m = m.min(size - 5) as usize;
        assert_eq!(&map[m..m + 5], format!("mark{k}").as_bytes());
    }
    assert_eq!(map[(48 << 30) + 5], 0);
    let resident = resident_bytes(map.as_ptr() as usize, map.len());
    let grew = vm_rss().saturating_sub(before);
    // VmRSS is the whole test process (other tests run meanwhile), so it
    // is only printed; mincore(2) counts this mapping's pages exactly.
    eprintln!(
        "64 GiB sparse mapping: {resident} bytes resident (mincore), process VmRSS grew {grew} bytes"
    );
    assert!(resident >= 4 * 4096, "mincore saw {resident} bytes");
    assert!(resident < (16 << 20), "{resident} bytes resident");
}

#[test]
fn drop_with_prefetch_and_stale_faults_in_flight() {
    if !usable() {
        return;
    }
    let size = 24 * CHUNK;
    let a = pattern(size, 7);
    let b = pattern(size, 8);
    let fa = file_with(&a);
    let fb = file_with(&b);
    let (file_a, file_b) = (
        File::open(fa.path()).unwrap(),
        File::open(fb.path()).unwrap(),
    );
    for round in 0..20 {
        // A sequential start sets the prefetcher going; drop at once.
        let map = lazy().map(&file_a).unwrap();
        let addr = map.as_ptr() as usize;
        let mut sum = 0u64;
        for i in (0..4 * CHUNK).step_by(PAGE) {
            sum += u64::from(map[i]);
        }
        // Eight threads on the same few pages leave stale messages.
        let barrier = Barrier::new(8);
        thread::scope(|s| {
            for t in 0..8 {
                let (map, barrier) = (&map, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    std::hint::black_box(map[10 * CHUNK + (t % 2) * PAGE]);
                });
            }
        });
        drop(map);
        // New mappings, likely at the same address, must hold their own
        // file's bytes whatever old messages and jobs still arrive.
        let map = lazy().map(&file_b).unwrap();
        let reused = map.as_ptr() as usize == addr;
        assert!(
            map[..] == b[..],
            "round {round} (address reused: {reused}) sum {sum}"
        );
    }
}

/// Threads mapping, reading (sequential, backwards, random, in
/// parallel) and dropping mappings of different files at once, so that
/// addresses are reused while stale messages and prefetch jobs are in
/// flight; every byte read must be its own file's.
#[test]
fn concurrent_maps_reads_and_drops() {
    if !usable() {
        return;
    }
    let sizes = [7 * CHUNK + 5, 3 * CHUNK, 12 * PAGE + 1];
    let datas: Vec<Vec<u8>> = (0..3).map(|k| pattern(sizes[k], 20 + k as u8)).collect();
    let files: Vec<_> = datas.iter().map(|d| file_with(d)).collect();
    let opened: Vec<File> = files
        .iter()
        .map(|f| File::open(f.path()).unwrap())
        .collect();
    thread::scope(|s| {
        for t in 0..4u64 {
            let (datas, opened) = (&datas, &opened);
            s.spawn(move || {
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ t;
                let mut rnd = move || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as usize
                };
                for round in 0..40 {
                    let k = rnd() % 3;
                    let data = &datas[k];
                    let off = rnd() % (data.len() / 2);
                    let len = 1 + rnd() % (data.len() - off);
                    let mut o = lazy();
                    o.offset(off as u64).len(len).populate(rnd() % 8 == 0);
                    let map: Box<dyn std::ops::Deref<Target = [u8]>> = if rnd() % 2 == 0 {
                        Box::new(o.map(&opened[k]).unwrap())
                    } else {
                        Box::new(o.map_mut(&opened[k]).unwrap())
                    };
                    let want = &data[off..off + len];
                    match rnd() % 3 {
                        0 => assert!(map[..] == want[..], "t{t} r{round}"),
                        1 => {
                            for i in (0..len).rev().step_by(PAGE / 2) {
                                assert_eq!(map[i], want[i], "t{t} r{round} i{i}");
                            }
                        }
                        _ => {
                            for _ in 0..64 {
                                let i = rnd() % len;
                                assert_eq!(map[i], want[i], "t{t} r{round} i{i}");
                            }
                        }
                    }
                    // Sometimes drop half-way through a sequential
                    // read (prefetch in flight).
                    if rnd() % 2 == 0 {
                        drop(map);
                    } else {
                        let upto = len.min(3 * CHUNK);
                        assert!(map[..upto] == want[..upto]);
                    }
                }
            });
        }
    });
}

/// Forks with libc's fork (handlers run) or a raw clone (none run); the
/// child reads the byte at `p` and exits with 3 for a zero, 4 for
/// `want`, 5 for anything else. Returns the wait status.
fn fork_and_read(raw: bool, p: usize, want: u8) -> i32 {
    let pid = if raw {
        // SAFETY: a fork-like clone (no CLONE_VM) in a test; the child
        // only reads memory and calls _exit.
        let r =
            unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_long, 0, 0, 0, 0) };
        r as libc::pid_t
    } else {
        // SAFETY: fork in a test; the child reads memory (served by
        // its own fault server) and exits.
        unsafe { libc::fork() }
    };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: reads the mapping's address in the child (unmapped
        // there if the handlers did not run: MADV_DONTFORK).
        let v = unsafe { std::ptr::read_volatile(p as *const u8) };
        let code = if v == want {
            4
        } else if v == 0 {
            3
        } else {
            5
        };
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    status
}

/// A child made by libc's fork() reads the file's bytes where the
/// parent never read (its own server fills them) and the parent's
/// where it did; one made without the fork handlers faults instead of
/// reading the zeros of an unserved range.
#[test]
fn forked_child_reads_the_file_and_never_zeros() {
    if !usable() {
        return;
    }
    let data = pattern(3 * PAGE, 9);
    let f = file_with(&data);
    let file = File::open(f.path()).unwrap();
    let map = lazy().map(&file).unwrap();
    assert_eq!(map[1], data[1]); // page 0 present in the parent
    let base = map.as_ptr() as usize;
    for raw in [true, false, true] {
        let status = fork_and_read(raw, base + 2 * PAGE + 1, data[2 * PAGE + 1]);
        assert!(
            libc::WIFSIGNALED(status) == raw
                && (!raw || libc::WTERMSIG(status) == libc::SIGSEGV)
                && (raw || libc::WEXITSTATUS(status) == 4),
            "raw clone {raw}: status {status:#x} (exit 3 = read zeros, 4 = read data)"
        );
    }
    for off in [1usize, PAGE + 1, 2 * PAGE + 1] {
        let status = fork_and_read(false, base + off, data[off]);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 4,
            "fork, offset {off}: status {status:#x} (exit 3 = read zeros, 4 = read data)"
        );
    }
    assert!(map[..] == data[..]);
    // The fork handlers served the same range: nothing moved.
    assert!(map.span_unchanged());
    assert_eq!(map.as_ptr() as usize, base);
}

/// A forked child that maps with Lazy itself (getting its own server
/// and watcher) and exits must not unhook the parent's userfaultfd from
/// the parent's watcher (the epoll instance is shared across fork).
#[test]
fn a_forked_child_using_lazy_leaves_the_parent_served() {
    if child_role().as_deref() == Some("fork-lazy") {
        let data = pattern(6 * CHUNK, 15);
        let f = file_with(&data);
        let file = File::open(f.path()).unwrap();
        // The server exists, with no mapping holding it.
        assert!(lazy().map(&file).unwrap()[..] == data[..]);
        // SAFETY: this process runs one test thread plus the crate's
        // idle helper threads, which hold no lock at this point.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ok = lazy()
                .map(&file)
                .map(|m| m[..] == data[..])
                .unwrap_or(false);
            // SAFETY: _exit ends the child without unwinding.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{status:#x}"
        );
        // A new mapping must still be served (a hang here is killed by
        // the parent test).
        assert!(lazy().map(&file).unwrap()[..] == data[..]);
        std::process::exit(0);
    }
    if child_role().is_some() || !usable() {
        return;
    }
    let (status, err) = run_child(
        "strategy::lazy::tests::a_forked_child_using_lazy_leaves_the_parent_served",
        "fork-lazy",
    );
    assert!(status.success(), "{status:?}: {err}");
}

/// Counts `ready` calls; readable while its eventfd holds a count.
struct Counter(rustix::fd::OwnedFd, std::sync::atomic::AtomicUsize);

impl Source for Counter {
    fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
    fn ready(&self) {
        let mut b = [0u8; 8];
        let _ = rustix::io::read(&self.0, &mut b);
        self.1.fetch_add(1, Ordering::SeqCst);
    }
    fn shutdown(&self) {}
    fn name(&self) -> &'static str {
        "counter"
    }
}

/// The watcher's epoll instance is shared with a forked child: a
/// registration the child drops must not unregister the parent's source.
#[test]
fn registrations_dropped_in_a_forked_child_stay_registered_in_the_parent() {
    if child_role().as_deref() == Some("fork-reg") {
        let fd = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .unwrap();
        let counter = Arc::new(Counter(fd, Default::default()));
        let reg = watcher::register(counter.clone()).unwrap();
        // SAFETY: one test thread and an idle watcher thread that holds
        // no lock between events.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            drop(reg);
            // SAFETY: _exit ends the child without unwinding.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        rustix::io::write(&counter.0, &1u64.to_ne_bytes()).unwrap();
        for _ in 0..200 {
            if counter.1.load(Ordering::SeqCst) > 0 {
                drop(reg);
                std::process::exit(0);
            }
            thread::sleep(std::time::Duration::from_millis(10));
        }
        eprintln!("the parent's source was not served after the child dropped its copy");
        std::process::exit(1);
    }
    if child_role().is_some() {
        return;
    }
    let (status, err) = run_child(
        "strategy::lazy::tests::registrations_dropped_in_a_forked_child_stay_registered_in_the_parent",
        "fork-reg",
    );
    assert!(status.success(), "{status:?}: {err}");
}

/// Run as root and as nobody: `setpriv --reuid=65534 --regid=65534
/// --clear-groups <test binary> check_follows_privileges`.
#[test]
fn check_follows_privileges() {
    let root = rustix::process::geteuid().is_root();
    let sysctl_on = unprivileged_sysctl().as_deref() == Some("1");
    let dev_ok = rustix::fs::access(
        "/dev/userfaultfd",
        rustix::fs::Access::READ_OK | rustix::fs::Access::WRITE_OK,
    )
    .is_ok();
    let expect_ok = root || sysctl_on || dev_ok;
    let res = check(None);
    eprintln!("root {root}, sysctl {sysctl_on}, /dev/userfaultfd {dev_ok}: {res:?}");
    let f = file_with(b"abc");
    let file = File::open(f.path()).unwrap();
    let mapped = lazy().map(&file);
    if expect_ok {
        let found = res.unwrap();
        assert!(found.contains("userfaultfd"), "{found}");
        assert_eq!(&mapped.unwrap()[..], b"abc");
    } else {
        let why = res.unwrap_err();
        assert!(
            why.contains("EPERM") && why.contains("vm.unprivileged_userfaultfd is 0"),
            "{why}"
        );
        assert!(why.contains("/dev/userfaultfd cannot be used"), "{why}");
        assert!(
            why.contains("sysctl vm.unprivileged_userfaultfd=1"),
            "{why}"
        );
        let e = mapped.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.to_string().contains("kernel-mode faults"), "{e}");
    }
}
