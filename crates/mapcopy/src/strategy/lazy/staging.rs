//! Staging buffers: where file bytes are read before they are moved or
//! copied into a mapping.

use super::*;

pub(super) struct Staging {
    pub(super) region: Region,
    pub(super) pid: Pid,
}

thread_local! {
    static STAGING: RefCell<Option<Staging>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's 2 MiB-aligned staging chunk.
pub(super) fn with_staging<R>(f: impl FnOnce(&mut Region) -> R) -> R {
    STAGING.with(|cell| {
        let mut cell = cell.borrow_mut();
        let pid = rustix::process::getpid();
        if cell.as_ref().is_some_and(|s| s.pid != pid) {
            // Inherited over fork() from a thread of the parent: the memory
            // was MADV_DONTFORK and is not ours; forget it without unmapping.
            std::mem::forget(cell.take());
        }
        if cell.is_none() {
            let region =
                Region::anonymous(CHUNK, ProtFlags::READ | ProtFlags::WRITE, false, HUGE_PAGE)
                    .unwrap_or_else(|e| {
                        fatal_msg(&format!("allocating a staging buffer failed: {e}"))
                    });
            let _ = region.advise(0, CHUNK, Advice::Hugepage);
            let _ = region.advise(0, CHUNK, Advice::DontFork);
            *cell = Some(Staging { region, pid });
        }
        f(&mut cell.as_mut().expect("staging set").region)
    })
}
