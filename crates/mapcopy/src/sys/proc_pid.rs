//! What `/proc/TID` tells about a task blocked in a fanotify permission
//! event: the syscall it is in (`/proc/TID/syscall`), how one of its fds was
//! opened (`/proc/TID/fdinfo/FD`), and a few bytes of its memory
//! (`/proc/TID/mem`, for `openat2`'s `struct open_how`).
//!
//! The `Guard` strategy uses these to tell a read from a write: the event
//! itself does not say. Every function returns `None` when the task is gone
//! or the file is unreadable; the caller then treats the access as a write.

use std::fs;
use std::os::unix::fs::FileExt;

/// Reads a small `/proc` file (up to 4 KiB) with one `open`, `read`s into
/// a stack buffer and `close`: a third cheaper than `fs::read_to_string`
/// (no `fstat`, no heap growth), which matters at one read per event.
fn read_small(path: &str) -> Option<String> {
    use rustix::fs::{Mode, OFlags, open};
    let fd = open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()?;
    let mut buf = [0u8; 4096];
    let mut n = 0;
    while n < buf.len() {
        match rustix::io::read(&fd, &mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return None,
        }
    }
    String::from_utf8(buf[..n].to_vec()).ok()
}

/// The syscall a task is blocked in, from `/proc/TID/syscall`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Syscall {
    /// Syscall number (`libc::SYS_*` of this architecture).
    pub(crate) nr: i64,
    /// Its six arguments.
    pub(crate) args: [u64; 6],
}

/// Reads `/proc/TID/syscall`. `None` if the task is gone, not in a syscall
/// (`running`, or `-1 ...`), has no user context whose syscall line could
/// be trusted (a kernel thread or an io_uring worker), or the file cannot
/// be read.
pub(crate) fn syscall(tid: i32) -> Option<Syscall> {
    if tid <= 0 {
        return None;
    }
    let path = format!("/proc/{tid}/syscall");
    // A task that has just queued a permission event may not be asleep
    // yet: the kernel then says `running` (it reads the registers of
    // sleeping tasks only). It is about to sleep until we answer, so wait
    // for that, a bounded while.
    let start = std::time::Instant::now();
    loop {
        let text = read_small(&path)?;
        if !text.starts_with("running") {
            return parse_syscall(&text);
        }
        if start.elapsed() > std::time::Duration::from_millis(50) {
            return None;
        }
        std::thread::yield_now();
    }
}

fn parse_syscall(text: &str) -> Option<Syscall> {
    let hex = |s: &str| u64::from_str_radix(s.strip_prefix("0x")?, 16).ok();
    let mut it = text.split_ascii_whitespace();
    let nr: i64 = it.next()?.parse().ok()?;
    if nr < 0 {
        return None;
    }
    let mut args = [0u64; 6];
    for a in &mut args {
        *a = hex(it.next()?)?;
    }
    // Then the user stack pointer and program counter. Both are 0 only for
    // a task without user context of its own, whose syscall line is not
    // what it is doing: a kernel thread shows `0` (read) with zero
    // arguments, and an io_uring worker (`iou-wrk-*`, `iou-sqp-*`) shows
    // the syscall its process was in when the worker was made, because
    // `copy_thread()` copies the creator's registers and zeroes just these
    // two. Neither may be trusted to be a read.
    let (sp, pc) = (hex(it.next()?)?, hex(it.next()?)?);
    if sp == 0 && pc == 0 {
        return None;
    }
    Some(Syscall { nr, args })
}

/// The parts of `/proc/TID/fdinfo/FD` the guard needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FdInfo {
    /// `f_flags` of the open file (`O_ACCMODE`, `O_APPEND`, `O_DIRECT`, ...).
    pub(crate) flags: i32,
    /// Inode number of the file.
    pub(crate) ino: u64,
}

impl FdInfo {
    /// Opened for writing (`O_WRONLY` or `O_RDWR`).
    pub(crate) fn writable(&self) -> bool {
        self.flags & libc::O_ACCMODE != libc::O_RDONLY
    }
}

/// Reads `/proc/TID/fdinfo/FD`; `None` if it cannot.
pub(crate) fn fdinfo(tid: i32, fd: u64) -> Option<FdInfo> {
    if tid <= 0 || fd > i32::MAX as u64 {
        return None;
    }
    let text = read_small(&format!("/proc/{tid}/fdinfo/{fd}"))?;
    parse_fdinfo(&text)
}

fn parse_fdinfo(text: &str) -> Option<FdInfo> {
    let mut flags = None;
    let mut ino = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("flags:") {
            flags = i32::from_str_radix(v.trim(), 8).ok();
        } else if let Some(v) = line.strip_prefix("ino:") {
            ino = v.trim().parse().ok();
        }
    }
    Some(FdInfo {
        flags: flags?,
        ino: ino?,
    })
}

/// Reads a `u64` at address `addr` of task `tid` (`/proc/TID/mem`).
pub(crate) fn read_u64(tid: i32, addr: u64) -> Option<u64> {
    if tid <= 0 {
        return None;
    }
    let f = fs::File::open(format!("/proc/{tid}/mem")).ok()?;
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, addr).ok()?;
    Some(u64::from_ne_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_syscall_lines() {
        let s = parse_syscall("18 0x3 0x7ffd 0x1000 0x2000 0x0 0x0 0x7ffc 0x7f00\n").unwrap();
        assert_eq!(s.nr, 18);
        assert_eq!(s.args, [3, 0x7ffd, 0x1000, 0x2000, 0, 0]);
        assert_eq!(parse_syscall("running\n"), None);
        assert_eq!(parse_syscall("-1 0x7ffc 0x7f00\n"), None);
        assert_eq!(parse_syscall(""), None);
    }

    #[test]
    fn kernel_threads_and_io_workers_have_no_syscall() {
        // kthreadd, and an io_uring worker made during io_uring_enter (426).
        assert_eq!(parse_syscall("0 0x0 0x0 0x0 0x0 0x0 0x0 0x0 0x0\n"), None);
        assert_eq!(
            parse_syscall("426 0x5 0x1 0x0 0x0 0x0 0x80 0x0 0x0\n"),
            None
        );
        // A live kernel thread: kthreadd is always pid 2.
        assert_eq!(syscall(2), None);
    }

    #[test]
    fn parses_fdinfo() {
        let i = parse_fdinfo("pos:\t0\nflags:\t02102002\nmnt_id:\t31\nino:\t1234\n").unwrap();
        assert_eq!(i.ino, 1234);
        assert!(i.writable());
        assert_ne!(i.flags & libc::O_APPEND, 0);
        let r = parse_fdinfo("pos:\t0\nflags:\t02100000\nmnt_id:\t31\nino:\t7\n").unwrap();
        assert!(!r.writable());
        assert_eq!(parse_fdinfo("pos:\t0\n"), None);
    }

    #[test]
    fn reads_own_syscall_and_fdinfo() {
        // A thread of this process blocked in read(2) on a pipe.
        let (rx, tx) = rustix::pipe::pipe().unwrap();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let rfd = {
            use std::os::fd::AsRawFd;
            rx.as_raw_fd()
        };
        let t = std::thread::spawn(move || {
            tid_tx
                .send(rustix::thread::gettid().as_raw_nonzero().get())
                .unwrap();
            let mut b = [0u8; 1];
            rustix::io::read(&rx, &mut b).unwrap();
        });
        let tid = tid_rx.recv().unwrap();
        let mut seen = None;
        for _ in 0..200 {
            seen = syscall(tid).filter(|s| s.nr == libc::SYS_read);
            if seen.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let s = seen.expect("the thread shows up blocked in read");
        assert_eq!(s.args[0], rfd as u64);
        let info = fdinfo(tid, s.args[0]).unwrap();
        assert!(!info.writable());
        rustix::io::write(&tx, b"x").unwrap();
        t.join().unwrap();
        assert_eq!(syscall(-1), None);
    }
}
