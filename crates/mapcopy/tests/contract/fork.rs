//! `fork()` under every strategy: a child reads exactly the parent's
//! snapshot, for its whole life (also after the parent unmaps and its own
//! parent exits, across nested forks), and a fork from a process whose
//! threads are faulting pages while another process writes the file keeps
//! it. Plain `MAP_PRIVATE` fails `case` (the control runs the same
//! modification in `modify/pwrite`: the child would see the new bytes).
//!
//! For `Lazy` the child's untouched pages come from its own fault server
//! (per-page: the file as of the child's first access).

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use libtest_mimic::{Completion, Failed};
use mapcopy::{Consistency, Strategy};
use mapcopy_check::fixture::TestFile;
use mapcopy_check::modify::{Kind, Modification, Writer};
use mapcopy_check::oracle::{Checker, Source};
use mapcopy_check::pattern;

use super::{Outcome, check_bytes, fail, io, page, skip, usable_in};

/// How long a child may take before it counts as hung.
const CHILD_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits for `pid` (our child) up to [`CHILD_TIMEOUT`]; kills it then.
fn wait_child(pid: libc::pid_t, what: &str) -> Result<i32, Failed> {
    let mut status = 0;
    let deadline = Instant::now() + CHILD_TIMEOUT;
    loop {
        // SAFETY: polling our own child.
        let w = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if w == pid {
            return Ok(status);
        }
        if w < 0 {
            return fail(format!("waitpid: {}", std::io::Error::last_os_error()));
        }
        if Instant::now() > deadline {
            // SAFETY: killing and reaping our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return fail(format!("{what} hung for {CHILD_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn describe(status: i32) -> String {
    if libc::WIFSIGNALED(status) {
        format!("was killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("exited with {}", libc::WEXITSTATUS(status))
    }
}

/// Leaves a forked child at once, without running destructors of state
/// shared with the parent.
fn exit_child(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and ends only this process.
    unsafe { libc::_exit(code) }
}

fn fork() -> Result<libc::pid_t, Failed> {
    // SAFETY: the callers' children only read memory and pipes, compare,
    // write a pipe and call _exit (or fork once more, the same way).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return fail(format!("fork: {}", std::io::Error::last_os_error()));
    }
    Ok(pid)
}

/// FNV-1a over `bytes`: what a child reports of its view.
fn digest(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Reads `buf.len()` bytes from `fd`, waiting at most [`CHILD_TIMEOUT`].
/// `Ok(false)`: end of file first (the writer died).
fn read_timeout(fd: &std::os::fd::OwnedFd, buf: &mut [u8]) -> Result<bool, Failed> {
    use rustix::event::{PollFd, PollFlags, poll};
    let deadline = Instant::now() + CHILD_TIMEOUT;
    let mut got = 0;
    while got < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return fail(format!(
                "no answer from a forked process in {CHILD_TIMEOUT:?}"
            ));
        }
        let ts = rustix::fs::Timespec {
            tv_sec: left.as_secs() as _,
            tv_nsec: left.subsec_nanos() as _,
        };
        let mut fds = [PollFd::new(fd, PollFlags::IN)];
        match poll(&mut fds, Some(&ts)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return fail(format!("poll: {e}")),
        }
        match rustix::io::read(fd, &mut buf[got..]) {
            Ok(0) => return Ok(false),
            Ok(n) => got += n,
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {}
            Err(e) => return fail(format!("read: {e}")),
        }
    }
    Ok(true)
}

/// A test file of `size` bytes mapped with `s`, page 0 read (and checked)
/// by the parent: the file, its contents and the mapping.
fn mapped_page0_read(
    s: Strategy,
    dir: &Path,
    size: usize,
) -> Result<(TestFile, Vec<u8>, mapcopy::MapCopy), Failed> {
    let p = page();
    let tf = TestFile::new_in(dir, size, 0).map_err(io("test file"))?;
    let old = tf.contents().map_err(io("read"))?;
    let file = tf.open().map_err(io("open"))?;
    let map = mapcopy_check::options(s).map(&file).map_err(io("map"))?;
    let mut first = vec![0u8; p];
    Source::read(&map, 0, &mut first).map_err(Failed::from)?;
    check_bytes(&first, &old[..p], "page 0 before fork")?;
    Ok((tf, old, map))
}

/// A child forked after page 0 was read, the file rewritten after the fork:
/// the child reads the snapshot (point-in-time: the map's instant on every
/// page), and so does the parent.
pub(super) fn case(s: Strategy, dir: &Path) -> Outcome {
    if let Err(why) = usable_in(s, dir) {
        return skip(format!("{s} is not usable here: {why}"));
    }
    let p = page();
    let size = 3 * p + 1;
    let (tf, old, map) = mapped_page0_read(s, dir, size)?;
    let m = Modification::new(Kind::Pwrite, 0, 4 * p as u64, 1);
    let new = m.model(&old);
    // Candidates per page for the child, computed before fork (the child
    // must not allocate).
    let point_in_time = s.keeps(mapcopy::Consistency::PointInTime);
    let olds: Vec<&[u8]> = old.chunks(p).collect();
    let news: Vec<&[u8]> = new[..size].chunks(p).collect();
    let (rd, wr) = rustix::pipe::pipe().map_err(io("pipe"))?;
    let writer = Writer::spawn(&m, tf.path()).map_err(io("writer"))?;
    // SAFETY: the child only reads a pipe, compares memory and calls
    // _exit: no allocation, no locks (async-signal-safe in practice).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return fail(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        let mut b = [0u8; 1];
        // SAFETY: reading one byte into a stack buffer from our pipe.
        unsafe { libc::read(rd.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
        let bytes: &[u8] = &map;
        let mut code = 0;
        for (i, chunk) in bytes.chunks(p).enumerate() {
            // Point-in-time: every page is the parent's instant (the map);
            // per-page: an untouched page may be the new version.
            let ok = chunk == olds[i] || (i != 0 && !point_in_time && chunk == news[i]);
            if !ok {
                code = 10 + i as i32;
                break;
            }
        }
        // SAFETY: leaving the child at once, without running destructors
        // of state shared with the parent.
        unsafe { libc::_exit(code) };
    }
    drop(rd);
    // Modify the file after the fork, before the child reads.
    let r = writer.apply_checked(&old);
    let _ = rustix::io::write(&wr, b"g");
    let status = wait_child(pid, "the forked child")?;
    r.map_err(io("modification"))?;
    let got = describe(status);
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        return fail(format!(
            "a forked child must read the snapshot, but it {got} (exit 10+i: page i held neither the snapshot nor, if untouched, the new bytes)"
        ));
    }
    // The parent's mapping is intact.
    let mut checker = Checker::new(p, 0, map.len(), old);
    checker.touch(&map, [0]).map_err(Failed::from)?;
    checker.push_state(new);
    checker.touch_all(&map).map_err(Failed::from)?;
    Ok(Completion::Completed)
}

/// The parent forks a child that forks a grandchild and exits; the parent
/// then drops its mapping, and another process rewrites and truncates the
/// file. The grandchild — alone with the mapping now — must read the
/// parent's snapshot (point-in-time: the map's instant on every page).
pub(super) fn nested_case(s: Strategy, dir: &Path) -> Outcome {
    if let Err(why) = usable_in(s, dir) {
        return skip(format!("{s} is not usable here: {why}"));
    }
    let p = page();
    let size = 3 * p + 1;
    let (tf, old, map) = mapped_page0_read(s, dir, size)?;
    let point_in_time = s.keeps(Consistency::PointInTime);
    let rewrite = Modification::new(Kind::Pwrite, 0, 4 * p as u64, 1);
    let v1 = rewrite.model(&old);
    let shrink = Modification::new(Kind::FtruncateShrink, p as u64, 0, 2);
    let olds: Vec<&[u8]> = old.chunks(p).collect();
    let v1s: Vec<&[u8]> = v1[..size].chunks(p).collect();
    let (go_r, go_w) = rustix::pipe::pipe().map_err(io("pipe"))?;
    let (rep_r, rep_w) = rustix::pipe::pipe().map_err(io("pipe"))?;
    let pid = fork()?;
    if pid == 0 {
        // Only the first parent writes `go` and reads `rep`: if it gives up
        // early, the grandchild must see the end of `go`, not wait forever.
        // SAFETY: closing this process's copies of two pipe ends it owns.
        unsafe {
            libc::close(go_w.as_raw_fd());
            libc::close(rep_r.as_raw_fd());
        }
        // The child: fork the grandchild and leave.
        // SAFETY: see `fork`.
        let g = unsafe { libc::fork() };
        if g != 0 {
            exit_child(if g < 0 { 2 } else { 0 });
        }
        let mut b = [0u8; 1];
        // SAFETY: one byte into a stack buffer from our pipe.
        unsafe { libc::read(go_r.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
        let bytes: &[u8] = &map;
        let mut code = 0u8;
        for (i, chunk) in bytes.chunks(p).enumerate() {
            // Per-page: an untouched page may be a later version, or zeros
            // past a later end.
            let later =
                !point_in_time && i != 0 && (chunk == v1s[i] || chunk.iter().all(|&x| x == 0));
            if !(chunk == olds[i] || later) {
                code = 10 + i as u8;
                break;
            }
        }
        // SAFETY: one byte from the stack into our pipe.
        unsafe { libc::write(rep_w.as_raw_fd(), [code].as_ptr().cast(), 1) };
        exit_child(0);
    }
    drop(rep_w);
    let status = wait_child(pid, "the forked child")?;
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        return fail(format!("the child {}", describe(status)));
    }
    // The grandchild's parent is gone; now the first parent lets go too.
    drop(map);
    let v1 = rewrite
        .apply_checked(tf.path(), &old)
        .map_err(io("rewrite"))?;
    shrink
        .apply_checked(tf.path(), &v1)
        .map_err(io("truncate"))?;
    rustix::io::write(&go_w, b"g").map_err(io("pipe write"))?;
    let mut code = [0u8; 1];
    if !read_timeout(&rep_r, &mut code)? {
        return fail(
            "the grandchild died without answering (a SIGSEGV or SIGBUS touching the mapping)",
        );
    }
    match code[0] {
        0 => Ok(Completion::Completed),
        c => fail(format!(
            "the grandchild read page {} as neither the snapshot{}",
            c - 10,
            if point_in_time {
                ""
            } else {
                " nor, untouched, a later version"
            }
        )),
    }
}

/// Four threads read random pages (faults and guard events in flight)
/// while a writer process keeps rewriting pages of the file, and the main
/// thread forks five times: each child's view must be the parent's view
/// (same digest) and, under point-in-time, the map's instant.
pub(super) fn threads_case(s: Strategy, dir: &Path) -> Outcome {
    if let Err(why) = usable_in(s, dir) {
        return skip(format!("{s} is not usable here: {why}"));
    }
    let p = page();
    let pages = 32;
    let size = pages * p;
    let tf = TestFile::new_in(dir, size, 0).map_err(io("test file"))?;
    let old = tf.contents().map_err(io("read"))?;
    let file = tf.open().map_err(io("open"))?;
    let map = mapcopy_check::options(s).map(&file).map_err(io("map"))?;
    let point_in_time = s.keeps(Consistency::PointInTime);
    let stop = AtomicBool::new(false);
    let writes = AtomicU32::new(0);
    let result = std::thread::scope(|sc| -> Result<(), Failed> {
        let (stop, writes, map, path) = (&stop, &writes, &map, tf.path());
        let writer = sc.spawn(move || -> Result<(), String> {
            let mut generation = 1;
            while !stop.load(Ordering::Relaxed) {
                let at = (generation as usize * 7 % pages * p) as u64;
                let m = Modification::new(Kind::Pwrite, at, p as u64, generation);
                Writer::spawn(&m, path)
                    .and_then(Writer::apply)
                    .map_err(|e| format!("writer: {e}"))?;
                writes.fetch_add(1, Ordering::Relaxed);
                generation += 1;
            }
            Ok(())
        });
        let readers: Vec<_> = (0..4u64)
            .map(|t| {
                sc.spawn(move || {
                    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ t;
                    let mut sum = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        sum = sum.wrapping_add(u64::from(map[(x as usize) % size]));
                    }
                    sum
                })
            })
            .collect();
        let r = (|| -> Result<(), Failed> {
            for round in 0..5 {
                std::thread::sleep(Duration::from_millis(20));
                let (rep_r, rep_w) = rustix::pipe::pipe().map_err(io("pipe"))?;
                let pid = fork()?;
                if pid == 0 {
                    let d = digest(map);
                    let ok = !point_in_time || map[..] == old[..];
                    let mut msg = d.to_le_bytes().to_vec();
                    msg.push(u8::from(ok));
                    // SAFETY: writing our own buffer into our pipe.
                    unsafe { libc::write(rep_w.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
                    exit_child(0);
                }
                drop(rep_w);
                let mut msg = [0u8; 9];
                let answered = read_timeout(&rep_r, &mut msg)?;
                let status = wait_child(pid, "a forked child")?;
                if !answered {
                    return fail(format!("fork {round}: the child {}", describe(status)));
                }
                let ours = digest(map);
                if msg[..8] != ours.to_le_bytes() {
                    return fail(format!(
                        "fork {round}: the child's view differs from the parent's"
                    ));
                }
                if msg[8] != 1 {
                    return fail(format!(
                        "fork {round}: the child's view is not the map's instant"
                    ));
                }
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            let _ = r.join();
        }
        let w = writer
            .join()
            .map_err(|_| Failed::from("the writer thread panicked"))?;
        r?;
        w.map_err(Failed::from)
    });
    result?;
    if writes.load(Ordering::Relaxed) == 0 {
        return fail("the writer made no write during the forks");
    }
    // The parent's own view: point-in-time, the map's instant; per-page,
    // each page one version.
    let mut checker = Checker::new(p, 0, map.len(), old.clone());
    if point_in_time {
        checker.observe_all(&map).map_err(Failed::from)?;
    } else {
        for (i, chunk) in map.chunks(p).enumerate() {
            if pattern::identify(chunk, (i * p) as u64, u32::MAX).is_none() {
                return fail(format!(
                    "page {i} mixes versions: {}",
                    pattern::describe(chunk, (i * p) as u64)
                ));
            }
        }
    }
    Ok(Completion::Completed)
}
