//! The lease-break signal: which one, its handler, and the pipe that carries
//! each break from the handler to the watcher thread.
//!
//! A library must not take over signals the application uses, so:
//!
//! * the signal is a realtime one (they queue, and carry `si_fd`), by default
//!   `SIGRTMIN+11`, or the one named by the environment variable
//!   [`SIGNAL_ENV`] (`MAPCOPY_LEASE_SIGNAL=RTMIN+5`, `RTMAX-2` or a number
//!   in `SIGRTMIN..=SIGRTMAX`), read once per process;
//! * the handler is installed only if the signal's disposition is still the
//!   default (`SIG_DFL`), checked with `sigaction` first and again on the
//!   swap; if the application installed a handler (or `SIG_IGN`), we do
//!   *not* replace or chain it: the `Lease` strategy is `Unsupported`, and
//!   the reason names the signal and the variable to pick another one.
//!   (Chaining would make our correctness depend on the application's
//!   handler passing our breaks on.)
//! * once installed, it stays installed for the life of the process (a
//!   handler can run at any time; removing it could kill the process with a
//!   late signal's default action).
//!
//! The handler is async-signal-safe: it reads `si_fd` from the siginfo and
//! `write`s those 4 bytes to a non-blocking pipe, saving and restoring
//! `errno`. The watcher thread reads the pipe (`Breaks::drain`). If the pipe
//! is full, the handler sets an overflow flag and the reader rescans every
//! lease. Notifications are sent to the watcher thread alone (`F_SETOWN_EX`),
//! so application threads never see `EINTR` from them.
#![allow(unsafe_code)]

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use super::cvt;

/// Environment variable that picks the lease-break signal.
pub(crate) const SIGNAL_ENV: &str = "MAPCOPY_LEASE_SIGNAL";

/// Default: `SIGRTMIN + DEFAULT_OFFSET`. Low realtime numbers are the ones
/// applications and runtimes grab first (`SIGRTMIN` for POSIX timers, the
/// next few for thread libraries); the top ones are popular too.
const DEFAULT_OFFSET: i32 = 11;

/// Write end of the current process's break pipe, read by the handler.
static PIPE_W: AtomicI32 = AtomicI32::new(-1);
/// Set by the handler when the pipe was full: some break was not recorded.
static OVERFLOW: AtomicBool = AtomicBool::new(false);

/// The configured signal number, or why the configuration is unusable.
pub(crate) fn lease_signal() -> Result<i32, String> {
    static SIG: OnceLock<Result<i32, String>> = OnceLock::new();
    SIG.get_or_init(|| match std::env::var(SIGNAL_ENV) {
        Ok(v) => parse_signal(&v),
        Err(_) => Ok(libc::SIGRTMIN() + DEFAULT_OFFSET),
    })
    .clone()
}

fn parse_signal(v: &str) -> Result<i32, String> {
    let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    let s = v.trim().trim_start_matches("SIG");
    let n = if let Some(rest) = s.strip_prefix("RTMIN") {
        rest.strip_prefix('+')
            .map_or(if rest.is_empty() { Some(0) } else { None }, |k| {
                k.parse::<i32>().ok()
            })
            .map(|k| min + k)
    } else if let Some(rest) = s.strip_prefix("RTMAX") {
        rest.strip_prefix('-')
            .map_or(if rest.is_empty() { Some(0) } else { None }, |k| {
                k.parse::<i32>().ok()
            })
            .map(|k| max - k)
    } else {
        s.parse::<i32>().ok()
    };
    match n {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "{SIGNAL_ENV}={v:?} is not a realtime signal (RTMIN+n, RTMAX-n or a number in {min}..={max})"
        )),
    }
}

/// `SIGRTMIN+11 (signal 45)`.
pub(crate) fn describe(sig: i32) -> String {
    let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    if (min..=max).contains(&sig) && sig - min <= max - sig {
        format!("SIGRTMIN+{} (signal {sig})", sig - min)
    } else if (min..=max).contains(&sig) {
        format!("SIGRTMAX-{} (signal {sig})", max - sig)
    } else {
        format!("signal {sig}")
    }
}

/// What the signal's disposition is now: ours, the default, or someone
/// else's.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Disposition {
    Ours,
    Default,
    Foreign,
}

fn query(sig: i32) -> io::Result<Disposition> {
    let mut old = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: a null new action only reads the current one into `old`,
    // a properly sized, writable sigaction.
    cvt(unsafe { libc::sigaction(sig, std::ptr::null(), old.as_mut_ptr()) })?;
    // SAFETY: sigaction succeeded and filled it.
    let old = unsafe { old.assume_init() };
    Ok(classify(&old))
}

fn classify(act: &libc::sigaction) -> Disposition {
    if act.sa_sigaction == libc::SIG_DFL {
        Disposition::Default
    } else if act.sa_sigaction == on_break as *const () as usize {
        Disposition::Ours
    } else {
        Disposition::Foreign
    }
}

/// Whether the handler is or could be installed, without installing it.
pub(crate) fn status() -> Result<String, String> {
    let sig = lease_signal()?;
    match query(sig) {
        Ok(Disposition::Ours) => Ok(format!("lease breaks arrive as {}", describe(sig))),
        Ok(Disposition::Default) => Ok(format!(
            "lease breaks will arrive as {} (free; {SIGNAL_ENV} picks another)",
            describe(sig)
        )),
        Ok(Disposition::Foreign) => Err(foreign(sig)),
        Err(e) => Err(format!("cannot inspect {}: {e}", describe(sig))),
    }
}

fn foreign(sig: i32) -> String {
    format!(
        "the application has its own handler for {} (the lease-break signal); mapcopy does not \
         replace it: set {SIGNAL_ENV} to a free realtime signal (e.g. RTMIN+12)",
        describe(sig)
    )
}

/// The receiving end of the lease-break pipe for this process.
#[derive(Debug)]
pub(crate) struct Breaks {
    read: OwnedFd,
    pid: rustix::process::Pid,
}

impl Breaks {
    /// The fd the watcher waits on.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.read.as_fd()
    }

    /// Everything the handler recorded since the last call: the `si_fd`s of
    /// the breaks (`-1` for a signal that carried none), and whether some
    /// were lost (then every lease must be checked).
    pub(crate) fn drain(&self) -> (Vec<RawFd>, bool) {
        let mut fds = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match rustix::io::read(&self.read, &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    // Pipe writes of 4 bytes are atomic, so reads return
                    // whole records.
                    fds.extend(
                        buf[..n - n % 4]
                            .chunks_exact(4)
                            .map(|c| i32::from_ne_bytes(c.try_into().unwrap())),
                    );
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => break,
            }
        }
        (fds, OVERFLOW.swap(false, Ordering::AcqRel))
    }
}

static STATE: Mutex<Option<std::sync::Arc<Breaks>>> = Mutex::new(None);

/// Installs the handler if the signal is free (or ours already) and returns
/// the signal and this process's break pipe. `Err` is the user-facing
/// reason Lease cannot be used.
pub(crate) fn install() -> Result<(i32, std::sync::Arc<Breaks>), String> {
    let sig = lease_signal()?;
    let mut st = STATE.lock().unwrap_or_else(PoisonError::into_inner);
    let pid = rustix::process::getpid();
    let breaks = match st.as_ref().filter(|b| b.pid == pid) {
        Some(b) => b.clone(),
        None => {
            let b = std::sync::Arc::new(
                new_pipe(pid).map_err(|e| format!("cannot create the lease-break pipe: {e}"))?,
            );
            *st = Some(b.clone());
            b
        }
    };
    match query(sig).map_err(|e| format!("cannot inspect {}: {e}", describe(sig)))? {
        Disposition::Ours => return Ok((sig, breaks)),
        Disposition::Foreign => return Err(foreign(sig)),
        Disposition::Default => {}
    }
    // SAFETY: an all-zero sigaction is a valid value (empty mask, no flags);
    // the fields we need are set below.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = on_break as *const () as usize;
    act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    let mut old = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: `act` is a valid sigaction whose handler is an
    // `extern "C" fn(c_int, *mut siginfo_t, *mut c_void)` as SA_SIGINFO
    // requires, and async-signal-safe (see `on_break`); `old` is writable.
    cvt(unsafe { libc::sigaction(sig, &act, old.as_mut_ptr()) })
        .map_err(|e| format!("cannot install the handler for {}: {e}", describe(sig)))?;
    // SAFETY: filled by the successful sigaction.
    let old = unsafe { old.assume_init() };
    if classify(&old) == Disposition::Foreign {
        // The application installed its handler between our query and our
        // swap: put it back and stay out of its way.
        // SAFETY: restores the exact action the kernel just returned.
        unsafe { libc::sigaction(sig, &old, std::ptr::null_mut()) };
        return Err(foreign(sig));
    }
    Ok((sig, breaks))
}

/// A new non-blocking pipe whose write end sits at the fd number the handler
/// uses (the old number is reused with `dup3` after `fork()`, so a handler
/// running concurrently always writes to a valid pipe, never to a closed or
/// reused fd).
fn new_pipe(pid: rustix::process::Pid) -> io::Result<Breaks> {
    use rustix::pipe::{PipeFlags, pipe_with};
    let (r, w) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    let cur = PIPE_W.load(Ordering::Acquire);
    if cur >= 0 {
        // Inherited from the parent: repoint that number at our pipe.
        // SAFETY: `cur` is the write end we created in this process image
        // before fork and never close; dup3 atomically replaces it.
        let mut target = unsafe { OwnedFd::from_raw_fd(cur) };
        let res = rustix::io::dup3(&w, &mut target, rustix::io::DupFlags::CLOEXEC);
        std::mem::forget(target);
        res?;
    } else {
        PIPE_W.store(w.as_raw_fd(), Ordering::Release);
        std::mem::forget(w);
    }
    Ok(Breaks { read: r, pid })
}

/// The signal handler: records `si_fd` in the pipe. Only async-signal-safe
/// operations: atomics, `write(2)`, `errno`.
extern "C" fn on_break(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: __errno_location returns this thread's errno slot; the
    // handler must leave errno as it found it.
    let saved = unsafe { *libc::__errno_location() };
    let mut fd: i32 = -1;
    if !info.is_null() {
        // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers;
        // glibc's siginfo_t has the kernel's layout, which linux-raw-sys
        // describes. A positive si_code means the kernel sent it (POLL_MSG
        // for a lease break), and then the _sigpoll member is the live one.
        unsafe {
            let ki = &*(info as *const linux_raw_sys::general::siginfo);
            let base = &ki.__bindgen_anon_1.__bindgen_anon_1;
            if base.si_code > 0 {
                fd = base._sifields._sigpoll._fd;
            }
        }
    }
    let w = PIPE_W.load(Ordering::Acquire);
    if w >= 0 {
        // SAFETY: `w` is our pipe's write end (never closed, see new_pipe);
        // writes 4 bytes from a live local.
        let n = unsafe { libc::write(w, (&fd as *const i32).cast(), 4) };
        if n != 4 {
            OVERFLOW.store(true, Ordering::Release);
        }
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved };
}

/// For the watcher thread, first thing: block every asynchronous signal
/// (so the application's process-directed signals go to its own threads,
/// not to ours), except the lease-break signal, which must get through even
/// if the thread that started the watcher had it blocked.
pub(crate) fn watcher_thread_mask() {
    // SAFETY: sigset_t values are plain bit sets initialized by sigfillset/
    // sigemptyset before use; pthread_sigmask only changes this thread.
    unsafe {
        let mut block = MaybeUninit::<libc::sigset_t>::zeroed();
        libc::sigfillset(block.as_mut_ptr());
        for s in [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGFPE,
            libc::SIGILL,
            libc::SIGTRAP,
            libc::SIGSYS,
            libc::SIGABRT,
        ] {
            libc::sigdelset(block.as_mut_ptr(), s);
        }
        if let Ok(sig) = lease_signal() {
            libc::sigdelset(block.as_mut_ptr(), sig);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, block.as_ptr(), std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_signal_names() {
        let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
        assert_eq!(parse_signal("RTMIN+3"), Ok(min + 3));
        assert_eq!(parse_signal("SIGRTMIN"), Ok(min));
        assert_eq!(parse_signal("RTMAX-2"), Ok(max - 2));
        assert_eq!(parse_signal(&max.to_string()), Ok(max));
        assert!(parse_signal("SIGUSR1").is_err());
        assert!(parse_signal("10").is_err());
        assert!(parse_signal("RTMIN+99").is_err());
        assert!(parse_signal("RTMIN3").is_err());
        assert_eq!(
            describe(min + 11),
            format!("SIGRTMIN+11 (signal {})", min + 11)
        );
    }
}
