//! Is a file on a local filesystem the real file of an overlay?
//!
//! A file in an overlay's upper layer (on ext4, say) can be written and
//! truncated *through the overlay* (a container writing a file the host
//! maps). The overlay opens the real file as an internal backing file,
//! which raises no `FAN_OPEN_PERM`, and its truncation (`ovl_setattr`)
//! raises no pre-content event on the real inode: a Guard mapping of the
//! real file faulted with SIGBUS after such a truncation. A lease sees
//! every write that opens the file through the overlay (the backing file's
//! open for writing breaks it), but not `truncate(2)` by path through the
//! overlay (`ovl_setattr` truncates the real file with `notify_change`,
//! which breaks only delegations): a Lease mapping faulted too. Both
//! refuse such a file (`tests/filesystems.rs`, `overlay-layer/*`). Files
//! only in a lower layer are never written through the overlay (it copies
//! them up first).
//!
//! The upper layers are those of the overlay mounts in this process's
//! mount namespace (`upperdir=` in `/proc/self/mountinfo`); an overlay
//! mounted in another namespace (a rootless container's) is not seen. The
//! table is read once and again only when the kernel says the mount table
//! changed (`poll` on the open `mountinfo` reports `POLLPRI`), so the
//! check costs one `poll` per call, and only for a file on a filesystem
//! that holds an upper layer, a walk of its path (`stat` per ancestor).

use std::fs::File;
use std::io::{Read, Seek};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use rustix::event::{PollFd, PollFlags};

/// An upper layer: its directory and its (dev, ino).
#[derive(Clone, Debug)]
struct Upper {
    dir: PathBuf,
    mount: PathBuf,
    dev: u64,
    ino: u64,
}

struct Table {
    mountinfo: File,
    uppers: Vec<Upper>,
}

static TABLE: Mutex<Option<Table>> = Mutex::new(None);

/// `\NNN` octal escapes of mountinfo fields (space, tab, newline, `\`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `(mount point, upperdir)` of every overlay mount in `mountinfo` text.
fn parse(mountinfo: &str) -> Vec<(PathBuf, PathBuf)> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((head, tail)) = line.split_once(" - ") else {
            continue;
        };
        let mut t = tail.split(' ');
        if t.next() != Some("overlay") {
            continue;
        }
        let _source = t.next();
        let Some(opts) = t.next() else { continue };
        let Some(mnt) = head.split(' ').nth(4) else {
            continue;
        };
        // Options are comma-separated; overlay escapes a comma in a path
        // with a backslash.
        let mut opt = String::new();
        let mut chars = opts.chars().peekable();
        let mut all = Vec::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' if chars.peek() == Some(&',') => {
                    opt.push(',');
                    chars.next();
                }
                ',' => all.push(std::mem::take(&mut opt)),
                c => opt.push(c),
            }
        }
        all.push(opt);
        if let Some(up) = all.iter().find_map(|o| o.strip_prefix("upperdir=")) {
            out.push((PathBuf::from(unescape(mnt)), PathBuf::from(unescape(up))));
        }
    }
    out
}

fn read_table(f: &mut File) -> Vec<Upper> {
    let mut text = String::new();
    if f.rewind()
        .and_then(|()| f.read_to_string(&mut text))
        .is_err()
    {
        return Vec::new();
    }
    parse(&text)
        .into_iter()
        .filter_map(|(mount, dir)| {
            let m = std::fs::metadata(&dir).ok()?;
            Some(Upper {
                dir,
                mount,
                dev: m.dev(),
                ino: m.ino(),
            })
        })
        .collect()
}

/// The upper layers on device `dev`, from the cached table (re-read if
/// the mount table changed since). `None` if the table cannot be read.
fn uppers_on(dev: u64) -> Option<Vec<Upper>> {
    let mut guard = TABLE.lock().unwrap_or_else(PoisonError::into_inner);
    if guard.is_none() {
        let mut mountinfo = File::open("/proc/self/mountinfo").ok()?;
        let uppers = read_table(&mut mountinfo);
        *guard = Some(Table { mountinfo, uppers });
    }
    let t = guard.as_mut().expect("set above");
    let mut fds = [PollFd::new(&t.mountinfo, PollFlags::PRI)];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    if rustix::event::poll(&mut fds, Some(&zero)).is_ok()
        && fds[0].revents().intersects(PollFlags::PRI | PollFlags::ERR)
    {
        t.uppers = read_table(&mut t.mountinfo);
    }
    Some(t.uppers.iter().filter(|u| u.dev == dev).cloned().collect())
}

/// How a write through the overlay escapes a strategy, for [`refusal`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum Escape {
    /// fanotify: the overlay writes through an internal backing file.
    Guard,
    /// Leases: `truncate(2)` by path through the overlay breaks none.
    Lease,
}

/// If the open `file` (on device `dev`) lies in the upper layer of an
/// overlay mounted in this namespace, why the strategy cannot see writes
/// through that overlay. Costs one `poll` unless `dev` holds an upper
/// layer.
pub(crate) fn refusal(file: &File, dev: u64, who: Escape) -> Option<String> {
    if uppers_on(dev).is_none_or(|u| u.is_empty()) {
        return None;
    }
    let path = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(file)
    ))
    .ok()?;
    let (mount, upper) = upper_layer_of(&path, dev)?;
    let how = match who {
        Escape::Guard => {
            "writes and truncations through the overlay raise no fanotify event on it (the \
             overlay writes it through an internal backing file)"
        }
        Escape::Lease => {
            "truncate(2) by path through the overlay breaks no lease on it (the overlay \
             truncates it with notify_change, which breaks only delegations)"
        }
    };
    Some(format!(
        "the file is in the upper layer ({}) of the overlay mounted at {}: {how}; Reflink \
         (where the filesystem clones), Eager and Lazy keep the contract",
        upper.display(),
        mount.display()
    ))
}

/// If `path` (on device `dev`) lies in the upper layer of an overlay
/// mounted in this namespace: that overlay's mount point and upper dir.
pub(crate) fn upper_layer_of(path: &Path, dev: u64) -> Option<(PathBuf, PathBuf)> {
    let uppers = uppers_on(dev)?;
    if uppers.is_empty() {
        return None;
    }
    let mut p = path.parent();
    while let Some(dir) = p {
        if let Ok(m) = std::fs::metadata(dir)
            && let Some(u) = uppers.iter().find(|u| u.dev == m.dev() && u.ino == m.ino())
        {
            return Some((u.mount.clone(), u.dir.clone()));
        }
        p = dir.parent();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_overlay_lines() {
        let text = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
99 22 0:50 / /var/lib/docker/overlay2/x/merged rw,relatime - overlay overlay rw,lowerdir=/l1:/l2,upperdir=/var/lib/docker/overlay2/x/diff,workdir=/w
100 22 0:51 / /with\\040space rw - overlay overlay rw,lowerdir=/l,upperdir=/u\\040p\\,q,workdir=/w
101 22 0:52 / /ro rw - overlay overlay ro,lowerdir=/a:/b
";
        let got = parse(text);
        assert_eq!(
            got,
            vec![
                (
                    PathBuf::from("/var/lib/docker/overlay2/x/merged"),
                    PathBuf::from("/var/lib/docker/overlay2/x/diff")
                ),
                (PathBuf::from("/with space"), PathBuf::from("/u p,q")),
            ]
        );
        assert_eq!(unescape("a\\134b\\011"), "a\\b\t");
        assert_eq!(unescape("end\\04"), "end\\04");
    }
}
