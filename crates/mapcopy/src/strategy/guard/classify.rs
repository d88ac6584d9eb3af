//! Classification of a fanotify event: what the task behind it is about
//! to do to the file (read, write a range, truncate, map shared) and so
//! what to copy or detach before allowing it.

use super::*;

/// What to do before allowing an event: nothing, copy these file ranges
/// (`[start, end)`, `end` may be `u64::MAX` = to the end of every mapping),
/// or (`Detach`) move everything from this offset on out of the file
/// mapping: the file may get shorter (a truncation unmaps even private
/// copies), or later stores will raise no events (a shared writable mmap).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Action {
    Allow,
    Copy(Vec<(u64, u64)>),
    Detach(u64),
}

/// Where classification looks up the writer (a trait so tests can fake it).
pub(super) trait Lookup {
    fn syscall(&self, tid: i32) -> Option<Syscall>;
    fn fdinfo(&self, tid: i32, fd: u64) -> Option<FdInfo>;
    fn read_u64(&self, tid: i32, addr: u64) -> Option<u64>;
}

/// The real thing: `/proc`.
pub(super) struct Proc;

impl Lookup for Proc {
    fn syscall(&self, tid: i32) -> Option<Syscall> {
        proc_pid::syscall(tid)
    }
    fn fdinfo(&self, tid: i32, fd: u64) -> Option<FdInfo> {
        proc_pid::fdinfo(tid, fd)
    }
    fn read_u64(&self, tid: i32, addr: u64) -> Option<u64> {
        proc_pid::read_u64(tid, addr)
    }
}

/// Decides what event `ev` on inode `ino` (current size `size`) needs.
/// `file` gives the inode number and current size of the file (`fstat` of
/// the event's fd; `None` if that fails), asked only when needed.
pub(super) fn classify(
    ev: &Event,
    file: &dyn Fn() -> Option<(u64, u64)>,
    look: &dyn Lookup,
) -> Action {
    // `None` also for an io_uring worker or a kernel thread, whose syscall
    // line is not the request it runs (see `proc_pid::syscall`).
    let sc = look.syscall(ev.pid);
    if ev.mask & libc::FAN_OPEN_PERM != 0 {
        return classify_open(ev.pid, sc, look);
    }
    if ev.mask & FAN_PRE_ACCESS == 0 {
        // Not something we asked for; be safe.
        return Action::Detach(0);
    }
    let (start, count) = ev.range.unwrap_or((0, u64::MAX));
    let end = start.saturating_add(count);
    // Unknown: covers a write at the range, an append (at or after the
    // position) and a truncation to a size in the range.
    let unknown = Action::Detach(start);
    let Some(sc) = sc else { return unknown };
    let a = sc.args;
    let ours = |fd: u64| {
        let theirs = look.fdinfo(ev.pid, fd).map(|i| i.ino);
        match (theirs, file()) {
            (Some(t), Some((ino, _))) => t == ino,
            _ => true,
        }
    };
    // The range, and the page holding the end of the file: an O_APPEND
    // write (or pwrite on an O_APPEND fd, which appends too) lands there
    // although the event names the file position. Copying that page always
    // is cheaper than reading the fd's flags from /proc.
    let write = || match file() {
        Some((_, size)) => Action::Copy(vec![(start, end), (size.saturating_sub(1), size)]),
        None => unknown.clone(),
    };
    match sc.nr {
        libc::SYS_read
        | libc::SYS_pread64
        | libc::SYS_readv
        | libc::SYS_preadv
        | libc::SYS_preadv2
        | libc::SYS_readahead
        | libc::SYS_execve
        | libc::SYS_execveat => Action::Allow,
        // Data flows from in to out; only the out side writes.
        libc::SYS_sendfile => copy_if(ours(a[0]), (start, end)),
        libc::SYS_splice | libc::SYS_copy_file_range => copy_if(ours(a[2]), (start, end)),
        libc::SYS_write
        | libc::SYS_pwrite64
        | libc::SYS_writev
        | libc::SYS_pwritev
        | libc::SYS_pwritev2 => write(),
        libc::SYS_fallocate => {
            let mode = a[1] as i32;
            if mode & (libc::FALLOC_FL_COLLAPSE_RANGE | libc::FALLOC_FL_INSERT_RANGE) != 0 {
                // Shifts everything after the offset.
                Action::Detach(start.min(a[2]))
            } else {
                Action::Copy(vec![(start, end)])
            }
        }
        libc::SYS_ftruncate | libc::SYS_truncate => Action::Detach(start.min(a[1])),
        libc::SYS_mmap => {
            let shared = a[3] as i32 & libc::MAP_SHARED != 0;
            let writable = look.fdinfo(ev.pid, a[4]).is_none_or(|i| i.writable());
            if shared && writable {
                // Its stores will raise nothing: take everything now.
                Action::Detach(0)
            } else {
                Action::Allow
            }
        }
        libc::SYS_ioctl => {
            let req = a[1] as u32;
            if req == linux_raw_sys::ioctl::FICLONE || req == linux_raw_sys::ioctl::FICLONERANGE {
                // The ioctl's fd is the destination.
                if ours(a[0]) {
                    Action::Detach(start)
                } else {
                    Action::Allow
                }
            } else if req == linux_raw_sys::ioctl::FIDEDUPERANGE {
                Action::Copy(vec![(start, end)])
            } else {
                unknown
            }
        }
        _ => unknown,
    }
}

pub(super) fn copy_if(cond: bool, range: (u64, u64)) -> Action {
    if cond {
        Action::Copy(vec![range])
    } else {
        Action::Allow
    }
}

/// `FAN_OPEN_PERM`: only `O_TRUNC` changes data at open time; every later
/// access through the new fd raises its own pre-content events.
pub(super) fn classify_open(tid: i32, sc: Option<Syscall>, look: &dyn Lookup) -> Action {
    let Some(sc) = sc else {
        return Action::Detach(0);
    };
    let flags: Option<u64> = match sc.nr {
        #[cfg(target_arch = "x86_64")]
        libc::SYS_open => Some(sc.args[1]),
        #[cfg(target_arch = "x86_64")]
        libc::SYS_creat => Some(libc::O_TRUNC as u64),
        libc::SYS_openat => Some(sc.args[2]),
        libc::SYS_open_by_handle_at => Some(sc.args[2]),
        // struct open_how { __u64 flags; ... }
        libc::SYS_openat2 => look.read_u64(tid, sc.args[2]),
        libc::SYS_execve | libc::SYS_execveat => Some(0),
        _ => None,
    };
    match flags {
        Some(f) if f as i32 & libc::O_TRUNC == 0 => Action::Allow,
        _ => Action::Detach(0),
    }
}
