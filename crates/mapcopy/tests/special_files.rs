//! Files that are not plain files on a disk filesystem, each with its
//! tested outcome (the README's "Which filesystems" says the same):
//!
//! * a memfd without seals: its creator holds it open for writing, so no
//!   lease can be had and Guard cannot arm; Auto copies (Eager; Lazy under
//!   per-page) and the mapping keeps its bytes when the memfd is written
//!   and truncated;
//! * a file on hugetlbfs: no strategy is shown there, so Auto copies
//!   (Eager), and stores through a `MAP_SHARED` mapping of the file or its
//!   truncation do not reach the mapping;
//! * block and character devices: `InvalidInput` (no stable contents to
//!   snapshot), with a message that says what to do instead.
//!
//! (tmpfs is in `tests/filesystems.rs`.) Cases that need root (hugetlbfs,
//! a block device) say why they skip — and fail under
//! `MAPCOPY_REQUIRE_ALL=1`.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use mapcopy::{Consistency, ErrorKind, MapCopy, MapOptions, Strategy};

fn skip(why: &str) {
    match mapcopy_check::fixture::skip_or_fail(why) {
        Ok(_) => {}
        Err(e) => panic!("{e}"),
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

#[test]
fn unsealed_memfd_is_copied_and_kept() {
    let fd = rustix::fs::memfd_create("mapcopy-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let file = File::from(fd);
    let data = pattern(3 * 4096 + 5, 1);
    file.write_all_at(&data, 0).unwrap();
    // The strategies that need no writer refuse, saying why.
    for s in [Strategy::Lease, Strategy::Guard, Strategy::Reflink] {
        let e = MapOptions::new().strategy(s).map(&file).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{s}: {e}");
    }
    let map = MapCopy::map(&file).unwrap();
    assert_eq!(map.strategy(), Strategy::Eager, "point-in-time on a memfd");
    let per_page = MapOptions::new()
        .consistency(Consistency::PerPage)
        .map(file.as_fd())
        .unwrap();
    assert!(per_page[..] == data[..]); // every page read now
    eprintln!(
        "memfd: auto maps with {} (per-page: {})",
        map.strategy(),
        per_page.strategy()
    );
    // The control: a plain MAP_PRIVATE mapping of the memfd.
    // SAFETY: a fresh private mapping of our own memfd, read only through
    // volatile loads below (its bytes change under it), then unmapped.
    let control = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            4096,
            rustix::mm::ProtFlags::READ,
            rustix::mm::MapFlags::PRIVATE,
            &file,
            0,
        )
    }
    .unwrap()
    .cast::<u8>();
    // SAFETY: inside the live control mapping (the memfd is not shrunk yet).
    let before = unsafe { control.add(7).read_volatile() };
    file.write_all_at(&pattern(data.len(), 2), 0).unwrap();
    // SAFETY: as above.
    let after = unsafe { control.add(7).read_volatile() };
    assert_ne!(before, after, "the control must see the write");
    // SAFETY: unmapping the control mapping made above.
    unsafe { rustix::mm::munmap(control.cast(), 4096) }.unwrap();
    file.set_len(0).unwrap();
    assert!(
        map[..] == data[..],
        "written and truncated memfd changed the mapping"
    );
    assert!(per_page[..] == data[..]);
}

/// `nr_hugepages` raised for the test and put back.
struct HugePages(Option<String>);

impl HugePages {
    fn at_least(n: u64) -> Result<HugePages, String> {
        let path = "/proc/sys/vm/nr_hugepages";
        let old = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        if old.trim().parse::<u64>().unwrap_or(0) >= n {
            return Ok(HugePages(None));
        }
        std::fs::write(path, n.to_string()).map_err(|e| format!("raising {path}: {e}"))?;
        Ok(HugePages(Some(old)))
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        if let Some(old) = self.0.take() {
            let _ = std::fs::write("/proc/sys/vm/nr_hugepages", old.trim());
        }
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[test]
fn hugetlbfs_file_is_copied_and_kept() {
    const HUGE: usize = 2 << 20;
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("huge");
    std::fs::create_dir(&mnt).unwrap();
    let pages = match HugePages::at_least(4) {
        Ok(p) => p,
        Err(why) => return skip(&format!("hugetlbfs needs huge pages: {why}")),
    };
    if let Err(why) = run(Command::new("mount")
        .args(["-t", "hugetlbfs", "none"])
        .arg(&mnt))
    {
        return skip(&format!("cannot mount hugetlbfs: {why}"));
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&mnt);
    let path = mnt.join("f");
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    file.set_len(HUGE as u64).unwrap();
    // hugetlbfs has no write(2): fill it through a shared mapping.
    let data = pattern(HUGE, 3);
    let store = |bytes: &[u8]| {
        // SAFETY: a fresh shared mapping of our own hugetlbfs file, written
        // through a raw pointer only, then unmapped; nothing borrows it.
        unsafe {
            let p = rustix::mm::mmap(
                std::ptr::null_mut(),
                HUGE,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                &file,
                0,
            )
            .expect("MAP_SHARED of the hugetlbfs file");
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), p.cast::<u8>(), HUGE);
            rustix::mm::munmap(p, HUGE).unwrap();
        }
    };
    store(&data);
    let ro = File::open(&path).unwrap();
    for s in [Strategy::Lease, Strategy::Guard, Strategy::Reflink] {
        let e = MapOptions::new().strategy(s).map(&ro).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{s}: {e}");
        assert!(e.to_string().contains("hugetlbfs"), "{s}: {e}");
    }
    let map = match MapCopy::map(&ro) {
        Ok(m) => m,
        Err(e) => panic!("Auto on hugetlbfs: {e}"),
    };
    assert_eq!(map.strategy(), Strategy::Eager);
    assert!(map[..] == data[..]);
    store(&pattern(HUGE, 4));
    assert!(map[..] == data[..], "a shared store changed the mapping");
    file.set_len(0).unwrap();
    assert!(map[..] == data[..], "truncation changed the mapping");
    drop(map);
    drop(pages);
}

#[test]
fn devices_are_invalid_input() {
    let mut checked = 0;
    for dev in ["/dev/zero", "/dev/urandom"] {
        let f = File::open(dev).unwrap();
        let e = MapCopy::map(&f).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{dev}: {e}");
        assert!(e.to_string().contains("character device"), "{dev}: {e}");
        checked += 1;
    }
    // A block device: the first disk this machine has.
    let block = std::fs::read_dir("/sys/block")
        .ok()
        .and_then(|d| d.filter_map(Result::ok).map(|e| e.file_name()).min())
        .map(|n| Path::new("/dev").join(n));
    match block.as_deref().map(File::open) {
        Some(Ok(f)) => {
            let e = MapCopy::map(&f).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{block:?}: {e}");
            assert!(e.to_string().contains("block device"), "{block:?}: {e}");
            checked += 1;
        }
        Some(Err(e)) => skip(&format!("cannot open {block:?}: {e}")),
        None => skip("no block device in /sys/block"),
    }
    assert!(checked >= 2);
    std::io::stderr().flush().unwrap();
}
