//! The file descriptors live mappings keep open, and how many they may.
//!
//! What each strategy keeps, and why the kernel needs it:
//!
//! * `Guard`: one fd per guarded *inode* (however many mappings of it):
//!   the fanotify mark is removed through it when the inode's last mapping
//!   goes, and later mappings of the inode prove with a read lease on it
//!   that no writer holds the file open. The fanotify group is one per
//!   process.
//! * `Lease`: one fd per mapping: a lease belongs to an open file
//!   description and ends when it is closed. (The directory a break
//!   clones into is looked up again at the break, not held open.)
//! * `Lazy`: one fd per mapping, which the fault handler reads pages from
//!   (the caller may close theirs); the userfaultfd is one per process.
//! * `Reflink`, `Eager`: none (a clone lives on in its mapping alone).
//!
//! So that a program keeping thousands of mappings never runs out of fds
//! for its own files because of them, [`crate::Strategy::Auto`] uses a
//! strategy that keeps an fd only while the fds kept for live mappings are
//! under half the soft `RLIMIT_NOFILE` ([`room`]), and falls back to one
//! that keeps none when they are not, or when the kernel refuses an fd
//! (`EMFILE`, `ENFILE`). A named strategy maps until the kernel refuses,
//! and then says what to do ([`HINT`]).

use std::sync::atomic::{AtomicUsize, Ordering};

use rustix::process::{Resource, getrlimit};

static KEPT: AtomicUsize = AtomicUsize::new(0);

/// One fd kept open for a live mapping: counted while this lives.
#[derive(Debug)]
pub(crate) struct Kept(());

impl Kept {
    pub(crate) fn new() -> Kept {
        KEPT.fetch_add(1, Ordering::Relaxed);
        Kept(())
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        KEPT.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Fds kept open for live mappings now.
pub(crate) fn kept() -> usize {
    KEPT.load(Ordering::Relaxed)
}

/// Is there room for one more kept fd: fewer than half the soft
/// `RLIMIT_NOFILE` kept? (One `getrlimit`: the limit can change.)
pub(crate) fn room() -> bool {
    let soft = getrlimit(Resource::Nofile).current;
    soft.is_none_or(|soft| (kept() as u64) < soft / 2)
}

/// Is `errno` the kernel running out of fds (this process's or the
/// system's)?
pub(crate) fn is_exhausted(errno: i32) -> bool {
    errno == libc::EMFILE || errno == libc::ENFILE
}

/// What a named strategy's error says when fds ran out.
pub(crate) const HINT: &str = "this process is out of file descriptors (live Guard, Lease and Lazy \
     mappings keep one each, Guard one per file): raise the soft RLIMIT_NOFILE (`ulimit -n`, \
     setrlimit; often 1024 by default) or map with Strategy::Auto, which falls back to strategies \
     that keep none, or Strategy::Eager";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_counts_while_alive() {
        let before = kept();
        let a = Kept::new();
        let b = Kept::new();
        assert!(kept() >= before + 2);
        drop((a, b));
        assert!(is_exhausted(libc::EMFILE) && is_exhausted(libc::ENFILE));
        assert!(!is_exhausted(libc::EAGAIN));
    }
}
