//! `Strategy::Immutable`: files the kernel lets nobody change, mapped with
//! no copy and nothing kept. Each kind of immutable file is made here and
//! each test also shows that the kernel refuses a would-be writer:
//!
//! * a memfd sealed with `F_SEAL_WRITE | F_SEAL_SHRINK` (as root and as
//!   `nobody`), every modification kind of the contract suite attempted by
//!   another process and refused; a memfd sealed with
//!   `F_SEAL_FUTURE_WRITE` only, refused — with the store through an older
//!   writable `MAP_SHARED` mapping that shows why (the control: a plain
//!   `MAP_PRIVATE` mapping sees it);
//! * files on erofs and squashfs loop images (root makes them; the files
//!   are mapped as root and as `nobody`), every modification kind refused
//!   with `EROFS`;
//! * files with fs-verity enabled (`fsverity enable`, Debian `fsverity`) on
//!   an ext4 loop image made with `mkfs.ext4 -O verity` (`verity/files`):
//!   the control first — the same file before fs-verity is enabled is
//!   refused, naming why — then, enabled (recognised from `statx`'s
//!   `STATX_ATTR_VERITY`), mapped by Auto with Immutable as root and as
//!   `nobody`, and every modification kind (with those that make a file
//!   next to it: the directory is writable) refused by the kernel with
//!   `EPERM`; and a verity file with a block changed in the image under
//!   the filesystem (`verity/corrupted-block`): that block fails to read
//!   (`EIO`), Immutable with `populate(true)` refuses to map it, the
//!   other pages read as written. These need a kernel with
//!   `CONFIG_FS_VERITY` (ext4 then lists `/sys/fs/ext4/features/verity`);
//!   on one without it the trial is `verity/not-on-this-kernel` instead,
//!   which shows that the kernel will not enable fs-verity (`EOPNOTSUPP`)
//!   and that Immutable refuses the file. `kernel/vm-contract.sh` runs the
//!   `verity/` trials in the VM (whose kernel has fs-verity) and fails
//!   unless `verity/files` is among those that passed;
//! * files that are not immutable (a file on the temp dir's filesystem, the
//!   same file through a read-only bind mount): refused, naming why.
//!
//! Zero-copy is checked in `/proc/self/smaps`: the mapping's pages are the
//! file's (no anonymous memory) after every byte was read.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use libtest_mimic::{Arguments, Failed, Trial};
use mapcopy::{ErrorKind, MapCopy, MapOptions, Strategy};
use mapcopy_check::fixture::{self, ReadOnlyImage, ReadOnlyKind, VerityExt4};
use mapcopy_check::modify::{ApplyError, Kind, Modification};
use mapcopy_check::privilege;
use rustix::fs::SealFlags;

type Outcome = Result<(), Failed>;

/// Entry point: map the file at the path given with Auto, print the
/// strategy and a checksum, exit (the unprivileged reader of an image).
const READER: &str = "immutable-reader";

fn page() -> usize {
    rustix::param::page_size()
}

fn fail<T>(msg: impl std::fmt::Display) -> Result<T, Failed> {
    Err(Failed::from(msg.to_string()))
}

fn skip(why: impl std::fmt::Display) -> Outcome {
    fixture::skip_or_fail(why).map(drop).map_err(Failed::from)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 7 + i / 4096) % 251) as u8 ^ seed)
        .collect()
}

/// A memfd holding `data`, sealed with `seals` (and, unless `seals` holds
/// `F_SEAL_SEAL`, left open to more seals).
fn memfd(data: &[u8], seals: SealFlags) -> Result<File, Failed> {
    let fd = rustix::fs::memfd_create(
        "mapcopy-immutable",
        rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
    )
    .map_err(|e| format!("memfd_create: {e}"))?;
    let file = File::from(fd);
    file.write_all_at(data, 0)
        .map_err(|e| format!("filling the memfd: {e}"))?;
    if !seals.is_empty() {
        rustix::fs::fcntl_add_seals(&file, seals).map_err(|e| format!("F_ADD_SEALS: {e}"))?;
    }
    Ok(file)
}

/// The fds this process has open.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// The threads this process runs.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// `(Rss, Anonymous)` in kB of the mapping that holds `addr`, from
/// `/proc/self/smaps`.
fn smaps_of(addr: usize) -> Result<(u64, u64), Failed> {
    let text = std::fs::read_to_string("/proc/self/smaps")
        .map_err(|e| format!("reading /proc/self/smaps: {e}"))?;
    let mut inside = false;
    let (mut rss, mut anon) = (None, None);
    for line in text.lines() {
        let head = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = head.split_once('-')
            && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            if inside {
                break;
            }
            inside = a <= addr && addr < b;
            continue;
        }
        if !inside {
            continue;
        }
        let kb = |l: &str| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        };
        if line.starts_with("Rss:") {
            rss = kb(line);
        } else if line.starts_with("Anonymous:") {
            anon = kb(line);
        }
    }
    match (rss, anon) {
        (Some(r), Some(a)) => Ok((r, a)),
        _ => fail(format!("no mapping at {addr:#x} in /proc/self/smaps")),
    }
}

/// Maps `file` with Auto, checks it picked Immutable, that the bytes are
/// `want`, and that the mapping copies nothing and keeps no fd or thread.
fn auto_maps_zero_copy(file: &File, want: &[u8]) -> Outcome {
    let (fds, threads_before) = (open_fds(), threads());
    let map = MapCopy::map(file).map_err(|e| format!("map: {e}"))?;
    if map.strategy() != Strategy::Immutable {
        return fail(format!("Auto picked {}, not immutable", map.strategy()));
    }
    if open_fds() != fds || threads() != threads_before {
        return fail(format!(
            "the mapping keeps something: fds {fds} -> {}, threads {threads_before} -> {}",
            open_fds(),
            threads()
        ));
    }
    if map[..] != want[..] {
        return fail("the mapping's bytes differ from the file's");
    }
    if !want.is_empty() {
        let (rss, anon) = smaps_of(map.as_ptr() as usize)?;
        if anon != 0 || rss == 0 {
            return fail(format!(
                "not the file's pages after a full read: Rss {rss} kB, Anonymous {anon} kB"
            ));
        }
        eprintln!(
            "{} bytes mapped: Rss {rss} kB, Anonymous {anon} kB",
            want.len()
        );
    }
    let fd_path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    let probe = mapcopy::probe(Some(&fd_path));
    match probe
        .strategies
        .iter()
        .find(|e| e.strategy == Strategy::Immutable)
    {
        Some(e) if e.usable.is_ok() => {}
        other => return fail(format!("probe does not show immutable usable: {other:?}")),
    }
    Ok(())
}

/// Every modification kind, attempted on `path` by another process: each
/// must be refused, except those in `allowed` (the caller then checks
/// that nothing changed).
/// Returns the refusals, for the log.
///
/// Unless `siblings`, the kinds whose writer first makes a file next to
/// `path` (a source to copy or clone from, a second link) are left out:
/// next to a memfd or in a read-only filesystem that file cannot be made,
/// which would prove nothing. [`opened_for_writing`] covers them. In a
/// writable directory (a verity file's) they run too.
fn writers_refused(
    path: &Path,
    size: u64,
    allowed: &[Kind],
    siblings: bool,
) -> Result<Vec<String>, Failed> {
    let mut refused = Vec::new();
    let needs_sibling = [
        Kind::CopyFileRange,
        Kind::CloneRange,
        Kind::HardLink,
        Kind::Cp,
    ];
    for &kind in Kind::ALL
        .iter()
        .filter(|k| siblings || !needs_sibling.contains(k))
    {
        let (off, len) = match kind {
            Kind::FtruncateShrink | Kind::TruncatePath => (size / 2, 0),
            Kind::FtruncateGrow => (size + 3 * page() as u64, 0),
            _ if kind.needs_alignment() => (0, page() as u64),
            _ => (1, 100),
        };
        let m = Modification::new(kind, off, len, 9);
        match m.apply(path) {
            Ok(()) if allowed.contains(&kind) => refused.push(format!("{kind}: allowed")),
            Ok(()) => return fail(format!("{kind} on {} was not refused", path.display())),
            Err(ApplyError::Failed(why)) | Err(ApplyError::Unsupported(why)) => {
                refused.push(format!("{kind}: {why}"))
            }
        }
    }
    Ok(refused)
}

/// What `copy_file_range` (what `cp` and the clone and copy kinds do)
/// into `path` gets: the file opened for writing, then bytes copied into it
/// from a temporary file. `Ok` with the refusal, `Err` if it went through.
fn opened_for_writing(path: &Path) -> Result<String, Failed> {
    let target = match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) => return Ok(format!("open for writing: {e}")),
    };
    let mut src = tempfile::tempfile().map_err(|e| format!("tempfile: {e}"))?;
    std::io::Write::write_all(&mut src, &[0x5a; 100]).map_err(|e| format!("write: {e}"))?;
    let (mut from, mut to) = (0u64, 0u64);
    match rustix::fs::copy_file_range(&src, Some(&mut from), &target, Some(&mut to), 100) {
        Ok(0) => Ok("copy_file_range copied nothing".into()),
        Ok(n) => fail(format!(
            "copy_file_range wrote {n} bytes into {}",
            path.display()
        )),
        Err(e) => Ok(format!("copy_file_range: {e}")),
    }
}

// ---------------------------------------------------------------------------
// memfd

fn memfd_sealed_case() -> Outcome {
    let data = pattern(5 * page() + 123, 1);
    let file = memfd(
        &data,
        SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW,
    )?;
    auto_maps_zero_copy(&file, &data)?;
    let map = MapOptions::new()
        .strategy(Strategy::Immutable)
        .map(&file)
        .map_err(|e| format!("map: {e}"))?;
    // Another process tries every modification through /proc/PID/fd/N.
    let path = PathBuf::from(format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        file.as_raw_fd()
    ));
    let mut refused = writers_refused(&path, data.len() as u64, &[], false)?;
    refused.push(opened_for_writing(&path)?);
    eprintln!("{}", refused.join("\n"));
    if map[..] != data[..] {
        return fail("the mapping changed");
    }
    // map_mut: private stores.
    let mut m = MapOptions::new()
        .strategy(Strategy::Immutable)
        .map_mut(&file)
        .map_err(|e| format!("map_mut: {e}"))?;
    m[7] ^= 0xff;
    let mut now = vec![0; data.len()];
    file.read_exact_at(&mut now, 0)
        .map_err(|e| format!("pread: {e}"))?;
    if now != data || m[7] != data[7] ^ 0xff {
        return fail("map_mut stores reached the memfd, or were lost");
    }
    // The file descriptor may go: the mapping needs none.
    drop(file);
    if map[..] != data[..] {
        return fail("the mapping changed after the memfd's fd was closed");
    }
    Ok(())
}

fn memfd_grow_case() -> Outcome {
    // F_SEAL_GROW is not needed: growing adds zeros past the size mapped.
    let data = pattern(2 * page() + 5, 2);
    let file = memfd(&data, SealFlags::WRITE | SealFlags::SHRINK)?;
    let map = MapCopy::map(&file).map_err(|e| format!("map: {e}"))?;
    if map.strategy() != Strategy::Immutable {
        return fail(format!("Auto picked {}", map.strategy()));
    }
    file.set_len(10 * page() as u64)
        .map_err(|e| format!("growing the memfd: {e}"))?;
    if map.len() != data.len() || map[..] != data[..] {
        return fail("growing the memfd changed the mapping");
    }
    if file.set_len(page() as u64).is_ok() {
        return fail("F_SEAL_SHRINK did not stop a shrink");
    }
    for (i, &b) in map.iter().enumerate() {
        if b != data[i] {
            return fail(format!("byte {i} changed"));
        }
    }
    Ok(())
}

fn memfd_sizes_case() -> Outcome {
    let p = page();
    for size in [0, 1, p - 1, p, p + 1, 3 * p + 1] {
        let data = pattern(size, 3);
        let file = memfd(&data, SealFlags::WRITE | SealFlags::SHRINK)?;
        let whole = MapOptions::new()
            .strategy(Strategy::Immutable)
            .map(&file)
            .map_err(|e| format!("size {size}: {e}"))?;
        if whole[..] != data[..] {
            return fail(format!("size {size}: bytes differ"));
        }
        for (off, len) in [(0, size / 2), (size / 3, size - size / 3), (size, 0)] {
            let sub = MapOptions::new()
                .strategy(Strategy::Immutable)
                .offset(off as u64)
                .len(len)
                .map(&file)
                .map_err(|e| format!("size {size} offset {off} len {len}: {e}"))?;
            if sub[..] != data[off..off + len] {
                return fail(format!("size {size} offset {off} len {len}: bytes differ"));
            }
        }
        // Past the end: refused as for every strategy.
        let e = MapOptions::new()
            .strategy(Strategy::Immutable)
            .offset(size as u64 + 1)
            .map(&file);
        if e.is_ok() {
            return fail(format!("size {size}: an offset past the end was accepted"));
        }
    }
    Ok(())
}

fn memfd_fork_case() -> Outcome {
    let data = pattern(4 * page() + 9, 4);
    let file = memfd(&data, SealFlags::WRITE | SealFlags::SHRINK)?;
    let map = MapCopy::map(&file).map_err(|e| format!("map: {e}"))?;
    drop(file);
    // SAFETY: the child only reads memory and calls _exit (async-signal
    // safe); the test harness runs this trial on one thread when forking
    // matters little: the child touches no lock.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let same = map[..] == data[..];
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(if same { 0 } else { 1 }) };
    }
    if pid < 0 {
        return fail(format!("fork: {}", std::io::Error::last_os_error()));
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
        return fail(format!("waitpid: {}", std::io::Error::last_os_error()));
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return fail(format!("the child saw other bytes (status {status:#x})"));
    }
    Ok(())
}

fn memfd_partial_seals_case() -> Outcome {
    let data = pattern(page() + 1, 5);
    for (seals, missing) in [
        (SealFlags::WRITE, "F_SEAL_SHRINK"),
        (SealFlags::SHRINK, "F_SEAL_WRITE"),
        (SealFlags::empty(), ""),
    ] {
        let file = memfd(&data, seals)?;
        let e = MapOptions::new()
            .strategy(Strategy::Immutable)
            .map(&file)
            .err()
            .ok_or_else(|| format!("seals {seals:?} were accepted"))?;
        if e.kind() != ErrorKind::Unsupported || !e.to_string().contains(missing) {
            return fail(format!("seals {seals:?}: {e}"));
        }
        // Auto falls through to a strategy that copies.
        let map = MapCopy::map(&file).map_err(|e| format!("map: {e}"))?;
        if map.strategy() == Strategy::Immutable || map[..] != data[..] {
            return fail(format!("seals {seals:?}: Auto picked {}", map.strategy()));
        }
    }
    Ok(())
}

/// `F_SEAL_FUTURE_WRITE` is refused: a writable shared mapping made before
/// the seal still stores into the memfd. The control, a `MAP_PRIVATE`
/// mapping of it, shows the store; `F_SEAL_WRITE` is refused by the kernel
/// while that shared mapping exists.
fn memfd_future_write_case() -> Outcome {
    let data = pattern(2 * page(), 6);
    let file = memfd(&data, SealFlags::empty())?;
    // SAFETY: a fresh shared writable mapping of our own memfd, written
    // with a volatile store below and unmapped at the end.
    let shared = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            page(),
            rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
            rustix::mm::MapFlags::SHARED,
            &file,
            0,
        )
    }
    .map_err(|e| format!("mmap MAP_SHARED: {e}"))?
    .cast::<u8>();
    let result = (|| {
        match rustix::fs::fcntl_add_seals(&file, SealFlags::WRITE) {
            Err(rustix::io::Errno::BUSY) => {}
            other => return fail(format!("F_SEAL_WRITE with a writable mapping: {other:?}")),
        }
        rustix::fs::fcntl_add_seals(&file, SealFlags::FUTURE_WRITE | SealFlags::SHRINK)
            .map_err(|e| format!("F_ADD_SEALS: {e}"))?;
        let e = MapOptions::new()
            .strategy(Strategy::Immutable)
            .map(&file)
            .err()
            .ok_or("F_SEAL_FUTURE_WRITE was accepted")?;
        if !e.to_string().contains("F_SEAL_FUTURE_WRITE is not enough") {
            return fail(format!("the refusal does not say why: {e}"));
        }
        let map = MapCopy::map(&file).map_err(|e| format!("map: {e}"))?;
        // SAFETY: the control: a private read-only mapping of the memfd,
        // read with volatile loads (its bytes change), unmapped below.
        let control = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                page(),
                rustix::mm::ProtFlags::READ,
                rustix::mm::MapFlags::PRIVATE,
                &file,
                0,
            )
        }
        .map_err(|e| format!("control mmap: {e}"))?
        .cast::<u8>();
        // SAFETY: inside both live mappings; the store goes to the memfd.
        let (before, after) = unsafe {
            let before = control.add(3).read_volatile();
            shared.add(3).write_volatile(!data[3]);
            (before, control.add(3).read_volatile())
        };
        // SAFETY: unmaps the control mapping made above.
        unsafe { rustix::mm::munmap(control.cast(), page()) }
            .map_err(|e| format!("munmap: {e}"))?;
        if before != data[3] || after != !data[3] {
            return fail(format!(
                "the control did not see the store after F_SEAL_FUTURE_WRITE ({before:#x} -> {after:#x})"
            ));
        }
        if map[3] != data[3] {
            return fail(format!("Auto's {} mapping changed", map.strategy()));
        }
        Ok(())
    })();
    // SAFETY: unmaps the shared mapping made above; nothing refers to it.
    let _ = unsafe { rustix::mm::munmap(shared.cast(), page()) };
    result
}

// ---------------------------------------------------------------------------
// erofs and squashfs

const IMAGE_FILES: [(&str, usize); 3] =
    [("empty", 0), ("small", 3 * 4096 + 1), ("big", 2 << 20 | 5)];

fn image_case(kind: ReadOnlyKind) -> Outcome {
    let img = match ReadOnlyImage::new(kind, |src| {
        for (i, (name, size)) in IMAGE_FILES.iter().enumerate() {
            std::fs::write(src.join(name), pattern(*size, i as u8))?;
        }
        Ok(())
    }) {
        Ok(i) => i,
        Err(why) => return skip(why),
    };
    let fs = fixture::fs_name(&img.path()).map_err(|e| format!("statfs: {e}"))?;
    if fs != kind.name() {
        return fail(format!("the mount is {fs}, not {kind}"));
    }
    for (i, (name, size)) in IMAGE_FILES.iter().enumerate() {
        let path = img.path().join(name);
        let data = pattern(*size, i as u8);
        let file = File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
        auto_maps_zero_copy(&file, &data)?;
        let map = MapCopy::map(&file).map_err(|e| format!("map: {e}"))?;
        let mut refused = writers_refused(&path, *size as u64, &[], false)?;
        refused.push(opened_for_writing(&path)?);
        eprintln!("{kind}/{name}: refused:\n{}", refused.join("\n"));
        if map[..] != data[..] {
            return fail(format!("{name}: the mapping changed"));
        }
        nobody_maps(&path, &data)?;
    }
    drop(img);
    Ok(())
}

/// An unprivileged reader (re-executed as `nobody`) maps the file at
/// `path` with Auto: it must pick Immutable and see `data`.
fn nobody_maps(path: &Path, data: &[u8]) -> Outcome {
    let mut cmd = match privilege::child_as_nobody(READER, &[path]) {
        Ok(c) => c,
        Err(why) => return skip(format!("cannot run as nobody: {why}")),
    };
    let out = cmd
        .output()
        .map_err(|e| format!("running the reader as nobody: {e}"))?;
    let want = format!("immutable {}", checksum(data));
    let got = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || got.trim() != want {
        return fail(format!(
            "as nobody, {}: {} {got:?} (want {want:?}): {}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

fn checksum(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn reader_main(path: &Path) -> i32 {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("open {}: {e}", path.display());
            return 1;
        }
    };
    match MapCopy::map(&file) {
        Ok(m) => {
            println!("{} {}", m.strategy(), checksum(&m));
            0
        }
        Err(e) => {
            eprintln!("map: {e}");
            1
        }
    }
}

// ---------------------------------------------------------------------------
// fs-verity (ext4)

/// Files on an ext4 image made with `-O verity`. The control first: before
/// `fsverity enable` each file is refused (any process allowed to may
/// write it). Then, with fs-verity enabled, Auto maps it with Immutable,
/// zero-copy, as root and as `nobody`, and every modification kind (those
/// that make a file next to it too: the directory is writable) is refused
/// by the kernel with `EPERM`, and so is a plain open for writing.
fn verity_case() -> Outcome {
    let fs = match VerityExt4::new() {
        Ok(f) => f,
        Err(why) => return skip(why),
    };
    let on = fixture::fs_name(&fs.path()).map_err(|e| format!("statfs: {e}"))?;
    if on != "ext4" {
        return fail(format!("the mount is {on}, not ext4"));
    }
    for (i, (name, size)) in IMAGE_FILES.iter().enumerate() {
        let path = fs.path().join(name);
        let data = pattern(*size, i as u8);
        std::fs::write(&path, &data).map_err(|e| format!("writing {name}: {e}"))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| format!("chmod {name}: {e}"))?;
        // The control: the same file before fs-verity is enabled.
        {
            let file = File::open(&path).map_err(|e| format!("open {name}: {e}"))?;
            let e = MapOptions::new()
                .strategy(Strategy::Immutable)
                .map(&file)
                .err()
                .ok_or_else(|| format!("{name}: accepted before fs-verity was enabled"))?;
            if e.kind() != ErrorKind::Unsupported || !e.to_string().contains("can be written") {
                return fail(format!("{name} before fs-verity: refusal: {e}"));
            }
            let map = MapCopy::map(&file).map_err(|e| format!("map: {e}"))?;
            if map.strategy() == Strategy::Immutable || map[..] != data[..] {
                return fail(format!(
                    "{name} before fs-verity: Auto picked {}",
                    map.strategy()
                ));
            }
            eprintln!(
                "verity/{name} before fs-verity: Immutable refused ({e}); Auto picked {}",
                map.strategy()
            );
        }
        // Nothing holds it open now (fs-verity refuses a file open for
        // writing anywhere).
        fixture::enable_verity(&path).map_err(|e| format!("{name}: {e}"))?;
        let file = File::open(&path).map_err(|e| format!("open {name}: {e}"))?;
        auto_maps_zero_copy(&file, &data)?;
        let map = MapCopy::map(&file).map_err(|e| format!("map: {e}"))?;
        let mut refused = writers_refused(&path, *size as u64, &[], true)?;
        refused.push(opened_for_writing(&path)?);
        eprintln!("verity/{name}: refused:\n{}", refused.join("\n"));
        // fs-verity's refusal: EPERM for an open for writing and for a
        // truncation (not a refusal for want of support).
        if let Some(r) = refused
            .iter()
            .find(|r| !r.contains("Operation not permitted"))
        {
            return fail(format!(
                "{name}: a refusal that is not fs-verity's EPERM: {r}"
            ));
        }
        let mut now = vec![0; data.len()];
        file.read_exact_at(&mut now, 0)
            .map_err(|e| format!("pread: {e}"))?;
        if map[..] != data[..] || now != data {
            return fail(format!("{name}: the file or its mapping changed"));
        }
        nobody_maps(&path, &data)?;
    }
    drop(fs);
    Ok(())
}

/// A verity file whose page 2 was changed in the image under the
/// filesystem (unmounted, overwritten, mounted again): fs-verity refuses
/// the changed block (`EIO`) and never hands it out. Immutable with
/// `populate(true)` fails to map, as `probe` documents; without it, it maps
/// and the intact pages read as written.
fn verity_corrupt_case() -> Outcome {
    let mut fs = match VerityExt4::new() {
        Ok(f) => f,
        Err(why) => return skip(why),
    };
    let p = page();
    let path = fs.path().join("corrupt");
    let marker = b"mapcopy: the fs-verity block that is changed under the filesystem";
    let mut data = pattern(4 * p, 7);
    data[2 * p..2 * p + marker.len()].copy_from_slice(marker);
    std::fs::write(&path, &data).map_err(|e| format!("writing the file: {e}"))?;
    fixture::enable_verity(&path).map_err(Failed::from)?;
    let off = fs
        .corrupt(marker, marker.len(), b'X')
        .map_err(Failed::from)?;
    eprintln!("changed {} bytes at image offset {off}", marker.len());
    let file = File::open(&path).map_err(|e| format!("open: {e}"))?;
    // The control: the changed block cannot be read; the others can.
    let mut buf = vec![0u8; p];
    match file.read_exact_at(&mut buf, 2 * p as u64) {
        Err(e) if e.raw_os_error() == Some(libc::EIO) => eprintln!("pread of page 2: {e}"),
        Err(e) => return fail(format!("pread of the changed page: {e}, not EIO")),
        Ok(()) if buf[..marker.len()] == marker[..] => {
            return fail("the block was not changed in the image");
        }
        Ok(()) => return fail("fs-verity let the changed page be read"),
    }
    file.read_exact_at(&mut buf, 0)
        .map_err(|e| format!("pread of page 0: {e}"))?;
    if buf[..] != data[..p] {
        return fail("page 0 reads other bytes");
    }
    let e = MapOptions::new()
        .strategy(Strategy::Immutable)
        .populate(true)
        .map(&file)
        .err()
        .ok_or("populate(true) mapped a file with a block that fails verification")?;
    if e.kind() != ErrorKind::Io {
        return fail(format!("populate(true): {e}"));
    }
    eprintln!("populate(true): {e}");
    let map = MapOptions::new()
        .strategy(Strategy::Immutable)
        .map(&file)
        .map_err(|e| format!("map: {e}"))?;
    if map[..p] != data[..p] || map[3 * p..] != data[3 * p..] {
        return fail("the intact pages read other bytes through the mapping");
    }
    drop(map);
    drop(file);
    drop(fs);
    Ok(())
}

/// This kernel has no fs-verity (no `/sys/fs/ext4/features/verity`): an
/// ext4 image made with `-O verity` mounts, but the kernel will not enable
/// fs-verity on a file in it (`EOPNOTSUPP`), and Immutable refuses the
/// file, naming why. `verity/files` runs where the kernel has fs-verity
/// (the VM of `kernel/vm-contract.sh`).
fn verity_absent_case() -> Outcome {
    if fixture::kernel_has_ext4_verity() {
        return fail("this kernel has fs-verity on ext4: verity/files is the trial here");
    }
    let fs = match VerityExt4::new() {
        Ok(f) => f,
        Err(why) => return skip(why),
    };
    let path = fs.path().join("small");
    let data = pattern(IMAGE_FILES[1].1, 1);
    std::fs::write(&path, &data).map_err(|e| format!("writing the file: {e}"))?;
    match fixture::enable_verity(&path) {
        Ok(()) => {
            return fail(
                "fsverity enable succeeded on a kernel without /sys/fs/ext4/features/verity",
            );
        }
        Err(e) if e.contains("Operation not supported") || e.contains("Inappropriate ioctl") => {
            eprintln!("this kernel has no fs-verity: {e}");
        }
        Err(e) => {
            return fail(format!(
                "fsverity enable failed, but not as on a kernel without fs-verity: {e}"
            ));
        }
    }
    let file = File::open(&path).map_err(|e| format!("open: {e}"))?;
    let e = MapOptions::new()
        .strategy(Strategy::Immutable)
        .map(&file)
        .err()
        .ok_or("the file was accepted though fs-verity could not be enabled")?;
    if e.kind() != ErrorKind::Unsupported || !e.to_string().contains("can be written") {
        return fail(format!("refusal: {e}"));
    }
    eprintln!("Immutable refused the file: {e}");
    drop(file);
    drop(fs);
    Ok(())
}

// ---------------------------------------------------------------------------
// Files that are not immutable

fn not_immutable_case() -> Outcome {
    let f = fixture::TestFile::new(2 * page() + 3).map_err(|e| format!("test file: {e}"))?;
    let file = f.open().map_err(|e| format!("open: {e}"))?;
    let e = MapOptions::new()
        .strategy(Strategy::Immutable)
        .map(&file)
        .err()
        .ok_or("a writable file was accepted")?;
    if e.kind() != ErrorKind::Unsupported || !e.to_string().contains("can be written") {
        return fail(format!("refusal: {e}"));
    }
    let map = MapCopy::map(&file).map_err(|e| format!("map: {e}"))?;
    if map.strategy() == Strategy::Immutable {
        return fail("Auto picked immutable for a writable file");
    }
    // A read-only bind mount does not make the file immutable.
    if !privilege::is_root() {
        return skip("a read-only bind mount needs root");
    }
    let mnt = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let run = |args: &[&std::ffi::OsStr]| -> Outcome {
        let out = Command::new("mount")
            .args(args)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            fail(format!(
                "mount {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    run(&[
        "--bind".as_ref(),
        "-o".as_ref(),
        "ro".as_ref(),
        f.dir().as_os_str(),
        mnt.path().as_os_str(),
    ])?;
    let result = (|| {
        let name = f.path().file_name().ok_or("no file name")?;
        let ro = File::open(mnt.path().join(name)).map_err(|e| format!("open: {e}"))?;
        let e = MapOptions::new()
            .strategy(Strategy::Immutable)
            .map(ro.as_fd())
            .err()
            .ok_or("a file on a read-only bind mount was accepted")?;
        if e.kind() != ErrorKind::Unsupported {
            return fail(format!("refusal: {e}"));
        }
        Ok(())
    })();
    let _ = Command::new("umount").arg(mnt.path()).status();
    result
}

fn trials() -> Vec<Trial> {
    let mut t = vec![
        Trial::test("memfd/sealed", memfd_sealed_case),
        Trial::test("memfd/grow", memfd_grow_case),
        Trial::test("memfd/sizes", memfd_sizes_case),
        Trial::test("memfd/fork", memfd_fork_case),
        Trial::test("memfd/partial-seals", memfd_partial_seals_case),
        Trial::test("memfd/future-write", memfd_future_write_case),
        Trial::test("not-immutable", not_immutable_case),
    ];
    for kind in ReadOnlyKind::ALL {
        t.push(Trial::test(format!("{kind}/files"), move || {
            image_case(kind)
        }));
    }
    // The real fs-verity trial where the kernel has it; here, a check that
    // it has not (as contract.rs does for Strategy::Kernel without
    // MAP_COPY).
    if fixture::kernel_has_ext4_verity() {
        t.push(Trial::test("verity/files", verity_case));
        t.push(Trial::test("verity/corrupted-block", verity_corrupt_case));
    } else {
        t.push(Trial::test("verity/not-on-this-kernel", verity_absent_case));
    }
    // The memfd cases need no privilege: run them as nobody too.
    for inner in ["memfd/sealed", "memfd/grow", "memfd/partial-seals"] {
        t.push(Trial::test(format!("nobody/{inner}"), move || {
            nobody(inner)
        }));
    }
    t
}

fn nobody(inner: &str) -> Outcome {
    let mut cmd = match privilege::trial(inner, true) {
        Ok(c) => c,
        Err(why) => return skip(format!("cannot run as nobody: {why}")),
    };
    let out = cmd
        .output()
        .map_err(|e| format!("running {inner} as nobody: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && stdout.contains("1 passed") {
        Ok(())
    } else {
        fail(format!(
            "as nobody, {inner} ended with {}:\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn main() {
    mapcopy_check::child::dispatch_with(&[(READER, |args| match args {
        [path] => reader_main(Path::new(path)),
        _ => 2,
    })]);
    let mut args = Arguments::from_args();
    // One at a time: the zero-copy check counts this process's fds and
    // threads around a map, which parallel trials would change.
    args.test_threads = Some(1);
    libtest_mimic::run(&args, trials()).exit();
}
