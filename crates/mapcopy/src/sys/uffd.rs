//! userfaultfd: thin wrappers over the `UFFDIO_*` ioctls.
//!
//! The fd comes from `rustix::mm::userfaultfd` or, where that route is
//! closed, from `/dev/userfaultfd` and its `USERFAULTFD_IOC_NEW` ioctl. The
//! ioctls go through `rustix::ioctl` with the structs from
//! `linux_raw_sys::general`; rustix has no typed wrappers for them and the
//! `userfaultfd` crate's -sys crate runs bindgen (libclang at build time) and
//! pulls an old `nix`, so the few opcodes are
//! spelled here, from `include/uapi/linux/userfaultfd.h`. Two of them
//! (`UFFDIO_MOVE`, `USERFAULTFD_IOC_NEW`) are missing from
//! `linux_raw_sys::ioctl` and are computed with the kernel's `_IOWR`/`_IO`
//! encoding; a unit test checks that encoding against the listed ones.
//!
//! Every fd made here has *no* `UFFD_USER_MODE_ONLY`: faults raised by the
//! kernel itself (a `write(2)` whose source is a missing page) are delivered
//! like user faults, which is what lets such a syscall succeed.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};

use linux_raw_sys::general as g;
use rustix::io::Errno;
use rustix::ioctl::{self, Ioctl, IoctlOutput, Opcode, Updater, opcode};

/// `UFFDIO_API`.
const API: Opcode = linux_raw_sys::ioctl::UFFDIO_API as Opcode;
/// `UFFDIO_REGISTER`.
const REGISTER: Opcode = linux_raw_sys::ioctl::UFFDIO_REGISTER as Opcode;
/// `UFFDIO_UNREGISTER`.
const UNREGISTER: Opcode = linux_raw_sys::ioctl::UFFDIO_UNREGISTER as Opcode;
/// `UFFDIO_WAKE`.
const WAKE: Opcode = linux_raw_sys::ioctl::UFFDIO_WAKE as Opcode;
/// `UFFDIO_COPY`.
const COPY: Opcode = linux_raw_sys::ioctl::UFFDIO_COPY as Opcode;
/// `UFFDIO_MOVE` = `_IOWR(UFFDIO, _UFFDIO_MOVE, struct uffdio_move)` (Linux 6.8).
const MOVE: Opcode = opcode::read_write::<g::uffdio_move>(g::UFFDIO as u8, g::_UFFDIO_MOVE as u8);
/// `USERFAULTFD_IOC_NEW` = `_IO(USERFAULTFD_IOC, 0x00)` on `/dev/userfaultfd` (Linux 6.1).
const IOC_NEW: Opcode = opcode::none(g::USERFAULTFD_IOC as u8, 0x00);

/// `UFFDIO_MOVE_MODE_DONTWAKE` (not in linux-raw-sys 0.12).
pub(crate) const MOVE_MODE_DONTWAKE: u64 = 1 << 0;

/// Size of one `struct uffd_msg` as read from the fd.
const MSG_SIZE: usize = 32;
const _: () = assert!(std::mem::size_of::<g::uffd_msg>() == MSG_SIZE);

/// The path through which this process obtained a userfaultfd that serves
/// kernel-mode faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// The `userfaultfd(2)` syscall without `UFFD_USER_MODE_ONLY` (needs
    /// CAP_SYS_PTRACE or `vm.unprivileged_userfaultfd=1`).
    Syscall,
    /// `open("/dev/userfaultfd")` + `USERFAULTFD_IOC_NEW` (needs access to
    /// the device node).
    DevNode,
}

/// Creates a new, not yet initialized userfaultfd (close-on-exec,
/// non-blocking) through `route`.
pub(crate) fn create(route: Route) -> io::Result<OwnedFd> {
    match route {
        Route::Syscall => {
            let flags =
                rustix::mm::UserfaultfdFlags::CLOEXEC | rustix::mm::UserfaultfdFlags::NONBLOCK;
            // SAFETY: creating the fd changes nothing; the power it gives
            // (blocking faults on registered ranges) is used only through
            // the `unsafe` methods of `Uffd`, whose callers argue for it.
            Ok(unsafe { rustix::mm::userfaultfd(flags) }?)
        }
        Route::DevNode => {
            let dev = rustix::fs::open(
                "/dev/userfaultfd",
                rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )?;
            let flags = (g::O_CLOEXEC | g::O_NONBLOCK) as usize;
            // SAFETY: USERFAULTFD_IOC_NEW takes its flags as an integer
            // argument and returns a new fd, which `NewFd` takes ownership of.
            Ok(unsafe { ioctl::ioctl(&dev, NewFd(flags)) }?)
        }
    }
}

/// Whether this process may have a userfaultfd from the syscall with
/// `UFFD_USER_MODE_ONLY` (faults taken in kernel mode are not delivered, so
/// no mapping of this crate can use it): a throwaway fd, closed at once.
/// For `sys::detect`'s report.
pub(crate) fn try_user_mode_only() -> io::Result<()> {
    let flags = rustix::mm::UserfaultfdFlags::CLOEXEC
        | rustix::mm::UserfaultfdFlags::NONBLOCK
        | rustix::mm::UserfaultfdFlags::from_bits_retain(g::UFFD_USER_MODE_ONLY);
    // SAFETY: creating a userfaultfd has no effect on memory until a range
    // is registered with it; this one is closed unused.
    unsafe { rustix::mm::userfaultfd(flags) }?;
    Ok(())
}

/// `USERFAULTFD_IOC_NEW`: an integer argument in, a new fd out.
struct NewFd(usize);

// SAFETY: the opcode is `_IO(0xAA, 0)` as in the kernel header; the argument
// is the flags integer (no memory is passed), and a non-negative return value
// is a new fd that nobody else owns.
unsafe impl Ioctl for NewFd {
    type Output = OwnedFd;
    const IS_MUTATING: bool = false;
    fn opcode(&self) -> Opcode {
        IOC_NEW
    }
    fn as_ptr(&mut self) -> *mut c_void {
        self.0 as *mut c_void
    }
    unsafe fn output_from_ptr(out: IoctlOutput, _: *mut c_void) -> rustix::io::Result<OwnedFd> {
        // SAFETY: the kernel returned a fresh fd (errors were handled by
        // rustix before this is called).
        Ok(unsafe { OwnedFd::from_raw_fd(out) })
    }
}

/// Result of the `UFFDIO_API` handshake on a fresh fd: the features the
/// kernel offers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Api {
    pub(crate) features: u64,
}

/// An initialized userfaultfd.
#[derive(Debug)]
pub(crate) struct Uffd {
    fd: OwnedFd,
    features: u64,
}

/// A fault the kernel reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Msg {
    /// A thread touched a missing page at `address` (page-aligned unless
    /// `UFFD_FEATURE_EXACT_ADDRESS`); `write` if it was a store.
    PageFault { address: u64, write: bool },
    /// Some other event (this crate enables none); carries the event code.
    Other(u8),
}

/// How far a `UFFDIO_COPY`/`UFFDIO_MOVE` got: `done` bytes from the start,
/// then `err` (None = all of it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Progress {
    pub(crate) done: usize,
    pub(crate) err: Option<Errno>,
}

/// Does the `UFFDIO_API` handshake on `fd` asking for `features`.
fn handshake(fd: &OwnedFd, features: u64) -> io::Result<Api> {
    let mut api = g::uffdio_api {
        api: g::UFFD_API as u64,
        features,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes one `struct uffdio_api`, which
    // `api` is.
    unsafe { ioctl::ioctl(fd, Updater::<API, _>::new(&mut api)) }?;
    Ok(Api {
        features: api.features,
    })
}

/// Creates a throwaway fd through `route` and asks it what the kernel
/// offers (a handshake with no features reports all available ones).
pub(crate) fn available(route: Route) -> io::Result<Api> {
    let fd = create(route)?;
    handshake(&fd, 0)
}

impl Uffd {
    /// A new userfaultfd through `route`, initialized with `features`
    /// (`UFFD_FEATURE_*`, each of which must be offered by [`available`]).
    pub(crate) fn new(route: Route, features: u64) -> io::Result<Uffd> {
        let fd = create(route)?;
        handshake(&fd, features)?;
        Ok(Uffd { fd, features })
    }

    /// Whether `feature` was enabled in the handshake.
    pub(crate) fn has(&self, feature: u64) -> bool {
        self.features & feature == feature
    }

    /// Registers `[start, start + len)` for missing-page faults.
    ///
    /// # Safety
    /// The range (page-aligned) must be anonymous memory that the caller owns
    /// and whose faults it will serve for as long as it stays registered:
    /// any thread touching a missing page there blocks until a `copy`,
    /// `move_pages` or `wake` covers it.
    pub(crate) unsafe fn register_missing(&self, start: usize, len: usize) -> io::Result<()> {
        let mut reg = g::uffdio_register {
            range: g::uffdio_range {
                start: start as u64,
                len: len as u64,
            },
            mode: g::UFFDIO_REGISTER_MODE_MISSING as u64,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes one `uffdio_register`;
        // what registering means for the range is the caller's promise.
        unsafe { ioctl::ioctl(&self.fd, Updater::<REGISTER, _>::new(&mut reg)) }?;
        Ok(())
    }

    /// Unregisters `[start, start + len)`; threads waiting on a fault there
    /// are woken (and retry the fault without userfaultfd).
    ///
    /// # Safety
    /// The range (page-aligned) lies inside ranges the caller registered
    /// with this fd ([`Uffd::register_missing`]) and owns. From here on a
    /// missing page there reads as zeros instead of being served, so the
    /// caller must no longer need it served: the range is about to be
    /// unmapped, or every page of it that anyone may read is present.
    pub(crate) unsafe fn unregister(&self, start: usize, len: usize) -> io::Result<()> {
        let mut range = g::uffdio_range {
            start: start as u64,
            len: len as u64,
        };
        // SAFETY: UFFDIO_UNREGISTER reads one `uffdio_range`. Unregistering
        // never changes memory contents; that the range is the caller's and
        // needs no serving any more is the caller's promise above.
        unsafe { ioctl::ioctl(&self.fd, Updater::<UNREGISTER, _>::new(&mut range)) }?;
        Ok(())
    }

    /// Wakes threads waiting on faults in `[start, start + len)`; they retry
    /// the access (and fault again if the page is still missing).
    ///
    /// # Safety
    /// The range (page-aligned) is memory the caller serves through this
    /// fd: registered with it, or registered until the caller unregistered
    /// it. Waking is part of serving: a woken thread retries its access and
    /// faults again on a page that is still missing, which the caller then
    /// serves. Whoever serves another range decides when its threads wake.
    pub(crate) unsafe fn wake(&self, start: usize, len: usize) -> io::Result<()> {
        let mut range = g::uffdio_range {
            start: start as u64,
            len: len as u64,
        };
        // SAFETY: UFFDIO_WAKE reads one `uffdio_range` and touches no
        // memory; whose range it is, is the caller's promise above.
        unsafe { ioctl::ioctl(&self.fd, Updater::<WAKE, _>::new(&mut range)) }?;
        Ok(())
    }

    /// `UFFDIO_COPY`: atomically fills missing pages of `[dst, dst + len)`
    /// with the bytes at `src`, and wakes waiters on what it filled. It
    /// stops at the first page that is already present, or at an error: the
    /// kernel then reports the bytes done and `EAGAIN` if there were any,
    /// else the error itself (`EEXIST` for a present first page).
    ///
    /// # Safety
    /// `dst` and `len` are page-aligned, inside a range registered with this
    /// fd that the caller serves; `src` is readable for `len` bytes.
    pub(crate) unsafe fn copy(&self, dst: usize, src: *const u8, len: usize) -> Progress {
        let mut arg = g::uffdio_copy {
            dst: dst as u64,
            src: src as u64,
            len: len as u64,
            mode: 0,
            copy: 0,
        };
        // SAFETY: UFFDIO_COPY reads and writes one `uffdio_copy`; the
        // memory it reads and fills is the caller's promise above. It never
        // replaces a present page.
        let res = unsafe { ioctl::ioctl(&self.fd, Updater::<COPY, _>::new(&mut arg)) };
        progress(res, arg.copy, len)
    }

    /// `UFFDIO_MOVE` (needs `UFFD_FEATURE_MOVE`): moves the pages of
    /// `[src, src + len)` to the missing pages `[dst, dst + len)` without
    /// copying (a 2 MiB-aligned transparent huge page stays huge when the
    /// destination's page-middle-directory entry is empty). The source range
    /// becomes empty. Wakes waiters unless `mode` has
    /// [`MOVE_MODE_DONTWAKE`].
    ///
    /// # Safety
    /// As [`Uffd::copy`]; in addition `[src, src + len)` is private anonymous
    /// memory of this process that nobody borrows (its pages disappear), and
    /// both ranges are writable (the kernel refuses otherwise).
    pub(crate) unsafe fn move_pages(
        &self,
        dst: usize,
        src: usize,
        len: usize,
        mode: u64,
    ) -> Progress {
        let mut arg = g::uffdio_move {
            dst: dst as u64,
            src: src as u64,
            len: len as u64,
            mode,
            move_: 0,
        };
        // SAFETY: UFFDIO_MOVE reads and writes one `uffdio_move`; the two
        // ranges are the caller's promise above.
        let res = unsafe { ioctl::ioctl(&self.fd, Updater::<MOVE, _>::new(&mut arg)) };
        progress(res, arg.move_, len)
    }

    /// Reads pending messages into `out` (cleared first) without blocking;
    /// returns how many. `Ok(0)` when none is pending.
    pub(crate) fn read(&self, out: &mut Vec<Msg>, max: usize) -> io::Result<usize> {
        out.clear();
        let mut buf = [0u8; MSG_SIZE * 64];
        let want = max.clamp(1, 64) * MSG_SIZE;
        let n = match rustix::io::read(&self.fd, &mut buf[..want]) {
            Ok(n) => n,
            Err(Errno::AGAIN) | Err(Errno::INTR) => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        for m in buf[..n].chunks_exact(MSG_SIZE) {
            out.push(decode(m));
        }
        Ok(out.len())
    }
}

impl AsFd for Uffd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Decodes one `struct uffd_msg` (packed: event u8 at 0, then for page
/// faults `flags: u64` at 8 and `address: u64` at 16).
fn decode(m: &[u8]) -> Msg {
    let u64_at = |o: usize| u64::from_ne_bytes(m[o..o + 8].try_into().expect("8 bytes"));
    if u32::from(m[0]) == g::UFFD_EVENT_PAGEFAULT {
        Msg::PageFault {
            address: u64_at(16),
            write: u64_at(8) & u64::from(g::UFFD_PAGEFAULT_FLAG_WRITE) != 0,
        }
    } else {
        Msg::Other(m[0])
    }
}

/// Turns an ioctl result and its `copy`/`move` out-field into a
/// [`Progress`]: on error the field holds the bytes done, or `-errno` when
/// nothing was.
fn progress(res: rustix::io::Result<()>, field: i64, len: usize) -> Progress {
    match res {
        Ok(()) => Progress {
            done: len,
            err: None,
        },
        Err(e) => Progress {
            done: usize::try_from(field).unwrap_or(0).min(len),
            err: Some(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computed_opcodes_match_the_kernel_header() {
        // The encoding used for MOVE and IOC_NEW reproduces listed opcodes.
        assert_eq!(
            opcode::read_write::<g::uffdio_copy>(g::UFFDIO as u8, g::_UFFDIO_COPY as u8),
            COPY
        );
        assert_eq!(
            opcode::read_write::<g::uffdio_api>(g::UFFDIO as u8, g::_UFFDIO_API as u8),
            API
        );
        assert_eq!(
            opcode::read::<g::uffdio_range>(g::UFFDIO as u8, g::_UFFDIO_WAKE as u8),
            WAKE
        );
        // Values from the kernel header on x86-64/arm64:
        // UFFDIO_MOVE 0xc028aa05, USERFAULTFD_IOC_NEW 0xaa00.
        assert_eq!(MOVE as u64, 0xc028_aa05);
        assert_eq!(IOC_NEW as u64, 0xaa00);
    }

    #[test]
    fn decodes_page_fault_messages() {
        let mut m = [0u8; MSG_SIZE];
        m[0] = g::UFFD_EVENT_PAGEFAULT as u8;
        m[8..16].copy_from_slice(&u64::from(g::UFFD_PAGEFAULT_FLAG_WRITE).to_ne_bytes());
        m[16..24].copy_from_slice(&0x7000_1000u64.to_ne_bytes());
        assert_eq!(
            decode(&m),
            Msg::PageFault {
                address: 0x7000_1000,
                write: true
            }
        );
        m[0] = g::UFFD_EVENT_FORK as u8;
        assert_eq!(decode(&m), Msg::Other(g::UFFD_EVENT_FORK as u8));
    }

    /// Registers a page, reads the fault message from another thread's
    /// touch, serves it with COPY, and checks EEXIST on a second COPY; over
    /// every route this process can use.
    #[test]
    fn copy_serves_a_fault_and_refuses_to_overwrite() {
        let mut served = 0;
        for route in [Route::Syscall, Route::DevNode] {
            match available(route) {
                Ok(api) => {
                    eprintln!("{route:?}: features {:#x}", api.features);
                    serve_one_fault(route);
                    served += 1;
                }
                Err(e) => eprintln!("{route:?} unusable here: {e}"),
            }
        }
        if served == 0 {
            mapcopy_check::fixture::skip_or_fail("no userfaultfd route serves kernel faults here")
                .unwrap();
        }
    }

    fn serve_one_fault(route: Route) {
        let page = crate::sys::page_size();
        let uffd = Uffd::new(route, 0).unwrap();
        let region =
            crate::sys::mmap::Region::anonymous(2 * page, rustix::mm::ProtFlags::READ, true, page)
                .unwrap();
        let base = region.as_ptr() as usize;
        // SAFETY: we own the region and serve its faults below.
        unsafe { uffd.register_missing(base, 2 * page) }.unwrap();
        let reader = std::thread::spawn(move || {
            // SAFETY: reads a byte of a live mapping that this test serves.
            unsafe { std::ptr::read_volatile((base + page + 5) as *const u8) }
        });
        let mut msgs = Vec::new();
        let fault = loop {
            let mut pfd = [rustix::event::PollFd::new(
                &uffd,
                rustix::event::PollFlags::IN,
            )];
            rustix::event::poll(&mut pfd, None).unwrap();
            if uffd.read(&mut msgs, 8).unwrap() > 0 {
                break msgs[0];
            }
        };
        assert_eq!(
            fault,
            Msg::PageFault {
                address: (base + page) as u64,
                write: false
            }
        );
        let src = vec![7u8; page];
        // SAFETY: registered page of our region; src is one page.
        let p = unsafe { uffd.copy(base + page, src.as_ptr(), page) };
        assert_eq!(
            p,
            Progress {
                done: page,
                err: None
            }
        );
        assert_eq!(reader.join().unwrap(), 7);
        // Present now: a second copy must not overwrite it.
        let other = vec![9u8; page];
        // SAFETY: as above.
        let p = unsafe { uffd.copy(base + page, other.as_ptr(), page) };
        assert_eq!(p.err, Some(Errno::EXIST));
        assert_eq!(p.done, 0);
        // Two pages, first missing, second present: partial progress.
        let two = vec![3u8; 2 * page];
        // SAFETY: as above, two pages of src.
        let p = unsafe { uffd.copy(base, two.as_ptr(), 2 * page) };
        // The kernel reports a partial copy as EAGAIN with the bytes done;
        // the next call then names the obstacle.
        assert_eq!(
            p,
            Progress {
                done: page,
                err: Some(Errno::AGAIN)
            }
        );
        // SAFETY: as above.
        let p = unsafe { uffd.copy(base + page, two.as_ptr(), page) };
        assert_eq!(
            p,
            Progress {
                done: 0,
                err: Some(Errno::EXIST)
            }
        );
        // SAFETY: the region is fully populated now and nothing writes it.
        let bytes = unsafe { region.as_slice(0, 2 * page) };
        assert!(bytes[..page].iter().all(|&b| b == 3));
        assert!(bytes[page..].iter().all(|&b| b == 7));
        // SAFETY: the region is ours, registered above, fully populated and
        // no longer needed; waking (nobody waits) is harmless.
        unsafe { uffd.unregister(base, 2 * page) }.unwrap();
        // SAFETY: our own region, registered with this fd until just now
        // (and still mapped); nobody waits on it, so waking wakes no one.
        unsafe { uffd.wake(base, page) }.unwrap();
    }
}
