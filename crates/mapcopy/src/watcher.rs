//! The per-process watcher: one thread that waits on every kernel fd the
//! strategies need served (userfaultfds, fanotify groups, lease-break
//! signal fds) and calls the owning strategy when one is readable.
//!
//! Strategies register a [`Source`] with [`register`] and keep the returned
//! [`Registration`]; dropping it stops delivery. Sources never reach into
//! each other; they only share this thread.
//!
//! Failure policy: a `ready` that panics is caught; the watcher then calls
//! [`Source::shutdown`] on *every* source (each makes its mappings safe
//! without the thread — snapshot what is guarded, release leases, or abort
//! the process loudly if it cannot) and exits. The next registration starts
//! a new watcher thread. A watcher is per process: after `fork()` the child
//! gets its own on first use.
//!
//! The watcher thread blocks every asynchronous signal except the
//! lease-break signal (`sys::signal`), so the application's process-directed
//! signals go to its own threads.

use std::collections::HashMap;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::event::{EventfdFlags, eventfd};

/// Something with a pollable fd that the watcher serves.
pub(crate) trait Source: Send + Sync + 'static {
    /// The fd to wait on (readable = work to do). It must stay open while
    /// the source is registered.
    fn fd(&self) -> BorrowedFd<'_>;
    /// Called on the watcher thread when `fd` is readable. Must not block
    /// on anything that needs the watcher thread itself.
    fn ready(&self);
    /// The watcher is going away because a source failed: make every
    /// mapping of this source safe without it (or abort with a message).
    fn shutdown(&self);
    /// Short name for messages.
    fn name(&self) -> &'static str;
}

/// Keeps a source registered; dropping it unregisters.
pub(crate) struct Registration {
    watcher: Arc<Watcher>,
    id: u64,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("id", &self.id)
            .finish()
    }
}

struct Watcher {
    epoll: OwnedFd,
    /// Written to wake the thread (unused id 0 in epoll data).
    wake: OwnedFd,
    sources: Mutex<HashMap<u64, Arc<dyn Source>>>,
    /// Serializes callbacks with unregistration: `Registration::drop`
    /// takes it, so once drop returns no `ready` of that source is running.
    serving: Mutex<()>,
    next_id: AtomicU64,
    pid: rustix::process::Pid,
    thread: thread::ThreadId,
    /// Kernel thread id of the watcher thread (for signals aimed at it).
    tid: rustix::thread::Pid,
}

static CURRENT: Mutex<Option<Arc<Watcher>>> = Mutex::new(None);

/// How long a thread that serves kernel events (the guard thread, the Lazy
/// fault handler) keeps polling for the next one after serving one, instead
/// of going back to sleep. The next event of a writer loop or a random
/// reader usually comes within this, and waking a sleeping thread costs
/// more than serving the event: on a VM whose idle vCPUs halt at once, a
/// wakeup crosses the hypervisor. `examples/guard_cost` (another process's
/// guarded `pread`) and `examples/lazy_random` (random Lazy first touches)
/// measure what polling saves, `tools/floors` the bare kernel round trips,
/// sleeping and polling; the README gives the figures.
pub(crate) const POLL_AFTER_EVENT: Duration = Duration::from_micros(60);

/// Calls `serve` (which handles what is pending and returns how many events
/// it handled) until nothing has come for [`POLL_AFTER_EVENT`], or until
/// `turn` has passed in all. Between empty polls it yields rather than
/// spins, so a thread it just woke that shares this vCPU runs at once.
pub(crate) fn serve_polling(turn: Option<Duration>, mut serve: impl FnMut() -> usize) {
    let start = Instant::now();
    let mut last = start;
    loop {
        let served = serve();
        let now = Instant::now();
        if served > 0 {
            last = now;
        } else if now.duration_since(last) >= POLL_AFTER_EVENT {
            return;
        } else {
            thread::yield_now();
        }
        if turn.is_some_and(|t| now.duration_since(start) >= t) {
            return;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Registers `source` with this process's watcher, starting the thread if
/// there is none.
pub(crate) fn register(source: Arc<dyn Source>) -> io::Result<Registration> {
    let watcher = current()?;
    let id = watcher.next_id.fetch_add(1, Ordering::Relaxed);
    lock(&watcher.sources).insert(id, source.clone());
    if let Err(e) = epoll::add(
        &watcher.epoll,
        source.fd(),
        EventData::new_u64(id),
        EventFlags::IN,
    ) {
        lock(&watcher.sources).remove(&id);
        return Err(e.into());
    }
    Ok(Registration { watcher, id })
}

fn current() -> io::Result<Arc<Watcher>> {
    let mut cur = lock(&CURRENT);
    let pid = rustix::process::getpid();
    if let Some(w) = cur.as_ref().filter(|w| w.pid == pid) {
        return Ok(w.clone());
    }
    let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    let wake = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
    epoll::add(&epoll, &wake, EventData::new_u64(0), EventFlags::IN)?;
    let (tx, rx) = std::sync::mpsc::channel();
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let handle = thread::Builder::new()
        .name("mapcopy-watcher".into())
        .spawn(move || {
            crate::sys::signal::watcher_thread_mask();
            let _ = tid_tx.send(rustix::thread::gettid());
            let w: Arc<Watcher> = rx.recv().expect("watcher setup");
            run(w);
        })?;
    let tid = tid_rx
        .recv()
        .map_err(|_| io::Error::other("watcher thread died at start"))?;
    let w = Arc::new(Watcher {
        epoll,
        wake,
        sources: Mutex::new(HashMap::new()),
        serving: Mutex::new(()),
        next_id: AtomicU64::new(1),
        pid,
        thread: handle.thread().id(),
        tid,
    });
    tx.send(w.clone()).expect("watcher thread alive");
    *cur = Some(w.clone());
    Ok(w)
}

fn run(w: Arc<Watcher>) {
    let mut events = Vec::with_capacity(64);
    loop {
        events.clear();
        match epoll::wait(&w.epoll, rustix::buffer::spare_capacity(&mut events), None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return fail(&w, &format!("epoll_wait failed: {e}")),
        }
        for ev in &events {
            let id = ev.data.u64();
            if id == 0 {
                let mut buf = [0u8; 8];
                let _ = rustix::io::read(&w.wake, &mut buf);
                continue;
            }
            let _serving = lock(&w.serving);
            let Some(src) = lock(&w.sources).get(&id).cloned() else {
                continue;
            };
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| src.ready())) {
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                drop(_serving);
                return fail(&w, &format!("{} handler panicked: {msg}", src.name()));
            }
        }
    }
}

/// The watcher cannot go on: let every source make itself safe, then leave.
fn fail(w: &Arc<Watcher>, why: &str) {
    eprintln!("mapcopy: watcher thread failing ({why}); making every mapping safe without it");
    {
        let mut cur = lock(&CURRENT);
        if cur.as_ref().is_some_and(|c| Arc::ptr_eq(c, w)) {
            *cur = None;
        }
    }
    let sources: Vec<_> = lock(&w.sources).values().cloned().collect();
    for s in sources {
        if catch_unwind(AssertUnwindSafe(|| s.shutdown())).is_err() {
            eprintln!(
                "mapcopy: {} could not be made safe without the watcher; aborting",
                s.name()
            );
            std::process::abort();
        }
    }
}

impl Registration {
    /// Kernel thread id of the watcher thread serving this registration:
    /// notifications sent to it (`F_SETOWN_EX`) interrupt nobody else. Its
    /// signal mask blocks every asynchronous signal but the lease-break one.
    pub(crate) fn thread_tid(&self) -> rustix::thread::Pid {
        self.watcher.tid
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if rustix::process::getpid() != self.watcher.pid {
            // A forked child dropping its copy of a parent's registration:
            // the epoll instance is shared with the parent, so deleting the
            // fd here would stop the parent's watcher from serving it.
            return;
        }
        let src = lock(&self.watcher.sources).remove(&self.id);
        if let Some(src) = src {
            let _ = epoll::delete(&self.watcher.epoll, src.fd());
        }
        // Wait out a callback in progress (unless we are that callback).
        if self.watcher.thread != thread::current().id() {
            drop(lock(&self.watcher.serving));
        }
        let _ = rustix::io::write(&self.watcher.wake, &1u64.to_ne_bytes());
    }
}
