//! fanotify pre-content groups and marks.
//!
//! `libc` has `fanotify_init`, `fanotify_mark` and the event/response
//! structs; `rustix` has none of fanotify, and `nix`'s (not a dependency)
//! does not parse the info records, where a pre-content event carries its
//! file range. So the two calls are wrapped here, over `libc`; reading
//! events and writing responses are plain `read`/`write` through `rustix`.
//! What neither has yet (Linux 6.14 additions) is defined here once, from
//! `include/uapi/linux/fanotify.h`: [`FAN_PRE_ACCESS`],
//! [`FAN_EVENT_INFO_TYPE_RANGE`] and [`FanotifyEventInfoRange`].
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use rustix::io::Errno;

use super::cvt;

/// `FAN_PRE_ACCESS` from `include/uapi/linux/fanotify.h` (Linux 6.14):
/// "Pre-content access hook", raised before read, write, truncate, mmap
/// and friends touch a range of a marked file.
pub(crate) const FAN_PRE_ACCESS: u64 = 0x0010_0000;

/// `FAN_EVENT_INFO_TYPE_RANGE` from `include/uapi/linux/fanotify.h`: the
/// info record that carries the file range of a pre-content event.
pub(crate) const FAN_EVENT_INFO_TYPE_RANGE: u8 = 6;

/// `FAN_ERRNO_SHIFT` from `include/uapi/linux/fanotify.h`: a deny response
/// may carry an errno in its top 8 bits (`FAN_DENY_ERRNO(err)`), allowed for
/// pre-content events only.
const FAN_ERRNO_SHIFT: u32 = 24;

/// `struct fanotify_event_info_range` from `include/uapi/linux/fanotify.h`:
///
/// ```c
/// struct fanotify_event_info_range {
///     struct fanotify_event_info_header hdr;
///     __u32 pad;
///     __u64 offset;
///     __u64 count;
/// };
/// ```
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct FanotifyEventInfoRange {
    pub(crate) hdr: libc::fanotify_event_info_header,
    pub(crate) pad: u32,
    pub(crate) offset: u64,
    pub(crate) count: u64,
}

/// A fanotify group (the listener's fd).
#[derive(Debug)]
pub(crate) struct Group {
    fd: OwnedFd,
}

/// `fanotify_init` flags a [`Group`] may add to the ones every group here
/// has: `FAN_CLASS_PRE_CONTENT` (permission events before content access),
/// `FAN_CLOEXEC` and `FAN_NONBLOCK` ([`Group::read_events`] relies on an
/// empty queue not blocking). Only flags that keep the event format
/// [`Group::read_events`] parses can be named; combine them with `|`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct InitFlags(libc::c_uint);

impl InitFlags {
    /// No flag beyond those every group has.
    pub(crate) const fn empty() -> InitFlags {
        InitFlags(0)
    }

    /// `FAN_REPORT_TID`: an event's `pid` is the thread id of the task that
    /// caused it, not its process id.
    pub(crate) const REPORT_TID: InitFlags = InitFlags(libc::FAN_REPORT_TID);
    /// `FAN_UNLIMITED_QUEUE`: events are never dropped for a full queue.
    pub(crate) const UNLIMITED_QUEUE: InitFlags = InitFlags(libc::FAN_UNLIMITED_QUEUE);
    /// `FAN_UNLIMITED_MARKS`: no limit on the group's marks.
    pub(crate) const UNLIMITED_MARKS: InitFlags = InitFlags(libc::FAN_UNLIMITED_MARKS);

    /// Both sets of flags (`|`, usable in a `const`).
    pub(crate) const fn union(self, other: InitFlags) -> InitFlags {
        InitFlags(self.0 | other.0)
    }
}

impl std::ops::BitOr for InitFlags {
    type Output = InitFlags;
    fn bitor(self, other: InitFlags) -> InitFlags {
        self.union(other)
    }
}

/// The flags every group is made with (see [`InitFlags`]).
const BASE_INIT_FLAGS: libc::c_uint =
    libc::FAN_CLASS_PRE_CONTENT | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK;

/// Flags of the fd delivered with each event: read-only (opened by the
/// kernel without notification, so reading it cannot raise events),
/// large-file, close-on-exec.
const EVENT_F_FLAGS: libc::c_uint = (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as _;

/// One event read from a [`Group`].
#[derive(Debug)]
pub(crate) struct Event {
    /// Event bits (`FAN_PRE_ACCESS`, `FAN_OPEN_PERM`, ...).
    pub(crate) mask: u64,
    /// A read-only fd of the file, opened without notification; `None` for
    /// `FAN_NOFD` (queue overflow).
    pub(crate) fd: Option<OwnedFd>,
    /// Thread id (with `FAN_REPORT_TID`) of the task that caused it.
    pub(crate) pid: i32,
    /// The `(offset, count)` of a pre-content event's range record.
    pub(crate) range: Option<(u64, u64)>,
}

/// How to answer a permission event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Response {
    Allow,
    /// Deny with this errno (pre-content events), or plain `EPERM`.
    Deny(i32),
}

impl Group {
    /// `fanotify_init`: a pre-content, close-on-exec, non-blocking group
    /// with `flags` added, whose events carry read-only fds.
    pub(crate) fn new(flags: InitFlags) -> io::Result<Group> {
        // SAFETY: fanotify_init takes two integers and returns a new fd or -1;
        // it touches no memory of ours.
        let fd = cvt(unsafe { libc::fanotify_init(BASE_INIT_FLAGS | flags.0, EVENT_F_FLAGS) })?;
        Ok(Group {
            // SAFETY: `fd` was just returned by the kernel and is owned by
            // nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Adds (or with `remove`, removes) the inode mark `mask` on the inode
    /// `file` refers to.
    pub(crate) fn mark_inode(
        &self,
        file: BorrowedFd<'_>,
        mask: u64,
        remove: bool,
    ) -> io::Result<()> {
        let op = if remove {
            libc::FAN_MARK_REMOVE
        } else {
            libc::FAN_MARK_ADD
        };
        // SAFETY: a null pathname with a valid dirfd marks the fd's own inode
        // (fanotify_mark(2)); no memory is passed.
        cvt(unsafe {
            libc::fanotify_mark(
                self.fd.as_raw_fd(),
                op | libc::FAN_MARK_INODE,
                mask,
                file.as_raw_fd(),
                std::ptr::null::<libc::c_char>(),
            )
        })?;
        Ok(())
    }

    /// Reads every queued event (the group is non-blocking: an empty queue
    /// gives an empty vector). Event fds are owned by the returned events.
    pub(crate) fn read_events(&self, buf: &mut [u8]) -> io::Result<Vec<Event>> {
        let n = match rustix::io::read(&self.fd, &mut *buf) {
            Ok(n) => n,
            Err(Errno::AGAIN | Errno::INTR) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        // SAFETY: `buf[..n]` is what the kernel just returned from this
        // group's fd: every event fd in it was installed for this read and
        // is known to nobody else.
        Ok(unsafe { parse_events(&buf[..n]) })
    }

    /// Answers the permission event whose fd is `fd` (an [`Event`]'s).
    pub(crate) fn respond(&self, fd: BorrowedFd<'_>, response: Response) -> io::Result<()> {
        let response = match response {
            Response::Allow => libc::FAN_ALLOW,
            Response::Deny(0) => libc::FAN_DENY,
            Response::Deny(errno) => libc::FAN_DENY | ((errno as u32 & 0xff) << FAN_ERRNO_SHIFT),
        };
        // `struct fanotify_response { __s32 fd; __u32 response; }`, in the
        // byte order of this machine.
        const SIZE: usize = std::mem::size_of::<libc::fanotify_response>();
        const _: () =
            assert!(SIZE == 8 && std::mem::offset_of!(libc::fanotify_response, response) == 4);
        let mut r = [0u8; SIZE];
        r[..4].copy_from_slice(&fd.as_raw_fd().to_ne_bytes());
        r[4..].copy_from_slice(&response.to_ne_bytes());
        rustix::io::write(&self.fd, &r)?;
        Ok(())
    }

    /// Replaces the group's fd with a duplicate of `devnull` under the same
    /// number, so the `Group` goes on owning a valid fd (closed on drop) and
    /// this process's reference to the group is released: once no process
    /// holds it, the kernel allows every pending event and drops the marks.
    pub(crate) fn detach(&self, devnull: BorrowedFd<'_>) {
        // SAFETY: the number is our own `OwnedFd`'s, which keeps owning
        // whatever it refers to afterwards; `devnull` is live for the call.
        unsafe { Group::detach_raw(self.fd.as_raw_fd(), devnull.as_raw_fd()) }
    }

    /// [`Group::detach`] by fd numbers, for where no `Group` can be
    /// reached: async-signal-safe (`dup3` only, no lock), so it may run in
    /// a `pthread_atfork` child handler.
    ///
    /// # Safety
    /// `group_fd` is the number of a `Group`'s fd in this process (or of a
    /// fd nobody uses any more): `dup3` makes it refer to `/dev/null`, which
    /// would silently change what any other owner of that number reads and
    /// writes. `devnull` is an open fd of `/dev/null`.
    pub(crate) unsafe fn detach_raw(group_fd: RawFd, devnull: RawFd) {
        // SAFETY: dup3 only changes this process's fd table and takes no
        // memory; which number it replaces is the caller's promise above.
        unsafe {
            libc::dup3(devnull, group_fd, libc::O_CLOEXEC);
        }
    }
}

impl AsFd for Group {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Splits a buffer of `struct fanotify_event_metadata` records (each
/// followed by info records) into [`Event`]s, taking ownership of their fds.
///
/// # Safety
/// Every non-negative `fd` field in `data` is an open fd of this process
/// that nobody else owns (as in a buffer just read from a group): each
/// becomes an `OwnedFd`, closed when its event is dropped.
unsafe fn parse_events(data: &[u8]) -> Vec<Event> {
    let meta_len = std::mem::size_of::<libc::fanotify_event_metadata>();
    let mut out = Vec::new();
    let mut off = 0;
    while off + meta_len <= data.len() {
        // SAFETY: at least `meta_len` bytes remain; read_unaligned copies
        // them into a plain-old-data struct whatever their alignment.
        let m: libc::fanotify_event_metadata =
            unsafe { std::ptr::read_unaligned(data[off..].as_ptr().cast()) };
        let len = m.event_len as usize;
        if len < meta_len || off + len > data.len() {
            break;
        }
        let fd = (m.fd >= 0).then(|| {
            // SAFETY: an unowned open fd (the caller's promise); each event
            // is parsed once, so ownership is taken once.
            unsafe { OwnedFd::from_raw_fd(m.fd) }
        });
        let mut range = None;
        let mut info = off + m.metadata_len as usize;
        let hdr_len = std::mem::size_of::<libc::fanotify_event_info_header>();
        while info + hdr_len <= off + len {
            // SAFETY: `hdr_len` bytes remain inside this event.
            let hdr: libc::fanotify_event_info_header =
                unsafe { std::ptr::read_unaligned(data[info..].as_ptr().cast()) };
            let ilen = hdr.len as usize;
            if ilen < hdr_len || info + ilen > off + len {
                break;
            }
            if hdr.info_type == FAN_EVENT_INFO_TYPE_RANGE
                && ilen >= std::mem::size_of::<FanotifyEventInfoRange>()
            {
                // SAFETY: the record is at least as long as the struct.
                let r: FanotifyEventInfoRange =
                    unsafe { std::ptr::read_unaligned(data[info..].as_ptr().cast()) };
                range = Some((r.offset, r.count));
            }
            info += ilen;
        }
        out.push(Event {
            mask: m.mask,
            fd,
            pid: m.pid,
            range,
        });
        off += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_record_layout_matches_the_header() {
        // 4-byte header + 4-byte pad + two u64 = 24 bytes, as in the UAPI.
        assert_eq!(std::mem::size_of::<FanotifyEventInfoRange>(), 24);
        assert_eq!(std::mem::offset_of!(FanotifyEventInfoRange, offset), 8);
    }

    #[test]
    fn parses_an_event_with_a_range_record() {
        let meta_len = std::mem::size_of::<libc::fanotify_event_metadata>();
        let mut buf = vec![0u8; meta_len + 24];
        let m = libc::fanotify_event_metadata {
            event_len: (meta_len + 24) as u32,
            vers: 3,
            reserved: 0,
            metadata_len: meta_len as u16,
            mask: FAN_PRE_ACCESS,
            fd: -1,
            pid: 42,
        };
        let r = FanotifyEventInfoRange {
            hdr: libc::fanotify_event_info_header {
                info_type: FAN_EVENT_INFO_TYPE_RANGE,
                pad: 0,
                len: 24,
            },
            pad: 0,
            offset: 8192,
            count: 4096,
        };
        // SAFETY: both are plain structs written into a buffer large enough.
        unsafe {
            std::ptr::write_unaligned(buf.as_mut_ptr().cast(), m);
            std::ptr::write_unaligned(buf[meta_len..].as_mut_ptr().cast(), r);
        }
        // SAFETY: the only fd field is -1 (FAN_NOFD): no fd is taken.
        let ev = unsafe { parse_events(&buf) };
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].mask, FAN_PRE_ACCESS);
        assert_eq!(ev[0].pid, 42);
        assert!(ev[0].fd.is_none());
        assert_eq!(ev[0].range, Some((8192, 4096)));
    }
}
