//! Fixtures: files with recognisable contents, loop-mounted filesystem
//! images, and the one rule for tests that cannot run here.
//!
//! ```no_run
//! use mapcopy_check::fixture::{FsKind, LoopMount, TestFile, skip_or_fail};
//! # fn main() -> Result<(), String> {
//! let file = TestFile::new(3 * 4096 + 1).map_err(|e| e.to_string())?;
//! assert_eq!(std::fs::read(file.path()).unwrap().len(), 3 * 4096 + 1);
//! match LoopMount::new(FsKind::Xfs) {
//!     Ok(mnt) => { /* make files under mnt.path(); unmounted on drop */ }
//!     Err(why) => { skip_or_fail(&why)?; } // skip, or fail with MAPCOPY_REQUIRE_ALL=1
//! }
//! # Ok(()) }
//! ```

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::pattern;

/// Environment variable that turns every skip into a failure (set in CI).
pub const REQUIRE_ALL_ENV: &str = "MAPCOPY_REQUIRE_ALL";

/// Is `MAPCOPY_REQUIRE_ALL=1` set?
pub fn require_all() -> bool {
    std::env::var(REQUIRE_ALL_ENV).is_ok_and(|v| v == "1")
}

/// The one rule for a test that lacks something it needs: prints why it
/// skips and returns `Ok(reason)` — or, with `MAPCOPY_REQUIRE_ALL=1`,
/// returns `Err` (the test must fail).
///
/// ```
/// // SAFETY-free env access in a doc test: single-threaded here.
/// # unsafe { std::env::remove_var("MAPCOPY_REQUIRE_ALL") };
/// let r = mapcopy_check::fixture::skip_or_fail("needs xfs");
/// assert_eq!(r, Ok("needs xfs".to_string()));
/// ```
pub fn skip_or_fail(reason: impl fmt::Display) -> Result<String, String> {
    if require_all() {
        Err(format!(
            "{REQUIRE_ALL_ENV}=1 but this test would be skipped: {reason}"
        ))
    } else {
        eprintln!("skipped: {reason}");
        Ok(reason.to_string())
    }
}

/// A file in its own temporary directory (removed on drop), filled with a
/// [`pattern`] generation.
#[derive(Debug)]
pub struct TestFile {
    dir: TempDir,
    path: PathBuf,
}

impl TestFile {
    /// A file of `size` bytes of generation 0 in a new temp directory under
    /// the system temp dir.
    pub fn new(size: usize) -> io::Result<TestFile> {
        Self::new_in(&std::env::temp_dir(), size, 0)
    }

    /// A file of `size` bytes of generation `generation` in a new directory
    /// under `parent`.
    pub fn new_in(parent: &Path, size: usize, generation: u32) -> io::Result<TestFile> {
        let dir = tempfile::Builder::new()
            .prefix("mapcopy-")
            .tempdir_in(parent)?;
        let path = dir.path().join("file");
        std::fs::write(&path, pattern::bytes(generation, 0, size))?;
        Ok(TestFile { dir, path })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its directory (removed with it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Opens it read-only.
    pub fn open(&self) -> io::Result<File> {
        File::open(&self.path)
    }

    /// Its contents now.
    pub fn contents(&self) -> io::Result<Vec<u8>> {
        std::fs::read(&self.path)
    }

    /// Lets every user read the file and search its directory (for tests
    /// that run parts as an unprivileged user).
    pub fn share(&self) -> io::Result<()> {
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o755))?;
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o644))
    }
}

/// A filesystem type a [`LoopMount`] can make.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FsKind {
    /// `mkfs.ext4`
    Ext4,
    /// `mkfs.xfs -m reflink=1`
    Xfs,
    /// `mkfs.btrfs`
    Btrfs,
}

impl FsKind {
    /// Lower-case name, as the kernel calls it.
    pub fn name(self) -> &'static str {
        match self {
            FsKind::Ext4 => "ext4",
            FsKind::Xfs => "xfs",
            FsKind::Btrfs => "btrfs",
        }
    }

    fn mkfs(self) -> (&'static str, &'static [&'static str]) {
        match self {
            FsKind::Ext4 => ("mkfs.ext4", &["-q", "-F"]),
            FsKind::Xfs => ("mkfs.xfs", &["-q", "-f", "-m", "reflink=1"]),
            FsKind::Btrfs => ("mkfs.btrfs", &["-q", "-f"]),
        }
    }
}

impl fmt::Display for FsKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Name of the filesystem `path` lives on (`ext4`, `xfs`, `btrfs`,
/// `tmpfs`, `erofs`, `squashfs`, or the magic number in hex).
pub fn fs_name(path: &Path) -> io::Result<String> {
    let st = rustix::fs::statfs(path)?;
    Ok(match st.f_type as u64 {
        0xEF53 => "ext4".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x0102_1994 => "tmpfs".into(),
        // BCACHEFS_SUPER_MAGIC, EROFS_SUPER_MAGIC_V1, SQUASHFS_MAGIC
        // (include/uapi/linux/magic.h).
        0xCA45_1A4E => "bcachefs".into(),
        0xE0F5_E1E2 => "erofs".into(),
        0x7371_7368 => "squashfs".into(),
        m => format!("fs 0x{m:x}"),
    })
}

/// A fresh filesystem image, attached to a loop device and mounted under a
/// temporary directory. Dropping it (also while unwinding from a panic)
/// unmounts, detaches the loop device and removes the image.
#[derive(Debug)]
pub struct LoopMount {
    kind: FsKind,
    dir: Option<TempDir>,
    mnt: PathBuf,
    device: Option<String>,
    mounted: bool,
}

/// Image size: above the 300 MB minimum of recent mkfs.xfs. Sparse, so it
/// costs only what is written.
const IMAGE_SIZE: u64 = 320 << 20;

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "{:?} {:?} failed ({}): {}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn have(tool: &str) -> bool {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(tool).exists())
        || std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()))
}

impl LoopMount {
    /// Makes, attaches and mounts a `kind` image. `Err` says why it cannot
    /// (not root, a tool missing, a command failed); pass it to
    /// [`skip_or_fail`].
    pub fn new(kind: FsKind) -> Result<LoopMount, String> {
        Self::new_in(&std::env::temp_dir(), kind)
    }

    /// Like [`LoopMount::new`], with the image and mount point under
    /// `parent`.
    pub fn new_in(parent: &Path, kind: FsKind) -> Result<LoopMount, String> {
        if !rustix::process::geteuid().is_root() {
            return Err(format!("mounting a {kind} loop image needs root"));
        }
        let (mkfs, args) = kind.mkfs();
        for tool in [mkfs, "losetup", "mount", "umount"] {
            if !have(tool) {
                return Err(format!(
                    "{tool} is not installed (needed for a {kind} loop image)"
                ));
            }
        }
        let dir = tempfile::Builder::new()
            // The pid tells whose image a leftover is (after a kill -9).
            .prefix(&format!("mapcopy-{kind}-pid{}-", std::process::id()))
            .tempdir_in(parent)
            .map_err(|e| format!("temp dir: {e}"))?;
        let image = dir.path().join("image");
        let mnt = dir.path().join("mnt");
        let mut m = LoopMount {
            kind,
            mnt: mnt.clone(),
            dir: Some(dir),
            device: None,
            mounted: false,
        };
        File::create(&image)
            .and_then(|f| f.set_len(IMAGE_SIZE))
            .map_err(|e| format!("creating {}: {e}", image.display()))?;
        std::fs::create_dir(&mnt).map_err(|e| format!("creating {}: {e}", mnt.display()))?;
        run(Command::new(mkfs).args(args).arg(&image))?;
        let dev = run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image))?;
        m.device = Some(dev.clone());
        run(Command::new("mount").arg(&dev).arg(&mnt))?;
        m.mounted = true;
        // Like /tmp: anyone may create files (the unprivileged cases).
        std::fs::set_permissions(&mnt, std::fs::Permissions::from_mode(0o1777))
            .map_err(|e| format!("chmod {}: {e}", mnt.display()))?;
        Ok(m)
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// The filesystem type.
    pub fn kind(&self) -> FsKind {
        self.kind
    }

    /// The loop device (`/dev/loopN`).
    pub fn device(&self) -> Option<&str> {
        self.device.as_deref()
    }

    /// The image file behind the loop device.
    pub fn image(&self) -> PathBuf {
        self.mnt.with_file_name("image")
    }

    /// Unmounts (the loop device stays attached), so that the image can be
    /// changed behind the filesystem's back; [`LoopMount::mount`] mounts it
    /// again.
    pub fn unmount(&mut self) -> Result<(), String> {
        if self.mounted {
            umount_patiently(&self.mnt)?;
            self.mounted = false;
        }
        Ok(())
    }

    /// Mounts the filesystem again after [`LoopMount::unmount`].
    pub fn mount(&mut self) -> Result<(), String> {
        if !self.mounted {
            let dev = self.device.clone().ok_or("no loop device")?;
            run(Command::new("mount").arg(&dev).arg(&self.mnt))?;
            self.mounted = true;
        }
        Ok(())
    }

    /// Overwrites, in the (unmounted) image, the first occurrence of
    /// `marker` and the `len` bytes from it with `fill`: corrupts a file's
    /// data under the filesystem so that reading it fails (btrfs checksums
    /// data: reads of a corrupted block get `EIO`). Returns the image
    /// offset, or `Err` if the marker is not found or the fs is mounted.
    pub fn corrupt(&self, marker: &[u8], len: usize, fill: u8) -> Result<u64, String> {
        if self.mounted {
            return Err("unmount before corrupting the image".into());
        }
        corrupt_image(&self.image(), marker, len, fill)
    }
}

/// Overwrites the first occurrence of `marker` in the image file `image`
/// (not mounted) and the `len` bytes from it with `fill`; returns the
/// offset. Holes are skipped (images are sparse).
fn corrupt_image(image: &Path, marker: &[u8], len: usize, fill: u8) -> Result<u64, String> {
    use std::os::unix::fs::FileExt;
    let img = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .map_err(|e| format!("opening the image: {e}"))?;
    let size = img.metadata().map_err(|e| e.to_string())?.len();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < size {
        // Skip holes: the image is sparse.
        pos = match rustix::fs::seek(&img, rustix::fs::SeekFrom::Data(pos)) {
            Ok(p) => p,
            Err(_) => break,
        };
        let n = img.read_at(&mut buf, pos).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        let hay = &buf[..n];
        let mut i = 0;
        while let Some(j) = hay[i..].iter().position(|&b| b == marker[0]) {
            let at = i + j;
            if hay.len() - at < marker.len() {
                break;
            }
            if &hay[at..at + marker.len()] == marker {
                let off = pos + at as u64;
                img.write_all_at(&vec![fill; len], off)
                    .and_then(|()| img.sync_all())
                    .map_err(|e| format!("writing the image: {e}"))?;
                return Ok(off);
            }
            i = at + 1;
        }
        // Overlap chunks by the marker length so a match across them is found.
        pos += (n - marker.len().min(n) + 1) as u64;
    }
    Err("marker not found in the image".into())
}

/// `umount`, retried for up to 5 s: a straggling child (a writer that was
/// just killed, a re-executed trial exiting) may still hold a file open for
/// a moment, and the filesystem is then busy.
fn umount_patiently(mnt: &Path) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..50 {
        match run(Command::new("umount").arg(mnt)) {
            Ok(_) => return Ok(()),
            Err(e) => last = e,
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Err(last)
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        if self.mounted && umount_patiently(&self.mnt).is_err() {
            eprintln!(
                "warning: umount {} failed; detaching lazily",
                self.mnt.display()
            );
            let _ = run(Command::new("umount").arg("-l").arg(&self.mnt));
        }
        if let Some(dev) = self.device.take()
            && let Err(e) = run(Command::new("losetup").arg("-d").arg(&dev))
        {
            eprintln!("warning: {e}");
        }
        drop(self.dir.take());
    }
}

/// Mounts `fstype` from `source` on `target` with `options` (root only).
fn mount(fstype: &str, source: &Path, target: &Path, options: &str) -> Result<(), String> {
    let mut cmd = Command::new("mount");
    cmd.args(["-t", fstype]);
    if !options.is_empty() {
        cmd.args(["-o", options]);
    }
    run(cmd.arg(source).arg(target)).map(drop)
}

/// Unmounts `mnt`, lazily if it stays busy (a drop must not fail).
fn umount_or_detach(mnt: &Path) {
    if let Err(e) = umount_patiently(mnt) {
        eprintln!("warning: umount {}: {e}; detaching lazily", mnt.display());
        let _ = run(Command::new("umount").arg("-l").arg(mnt));
    }
}

/// What a mount fixture needs before it starts: root and the tools.
fn need_root_and(what: &str, tools: &[&str]) -> Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Err(format!("mounting {what} needs root"));
    }
    match tools.iter().find(|t| !have(t)) {
        Some(t) => Err(format!("{t} is not installed (needed for {what})")),
        None => Ok(()),
    }
}

/// A temporary directory with mounts stacked in it, unmounted in reverse
/// order (then removed) on drop, also while unwinding from a panic.
#[derive(Debug)]
struct Mounts {
    dir: Option<TempDir>,
    mounted: Vec<PathBuf>,
    /// A directory elsewhere, removed after the unmounts.
    layers: Option<TempDir>,
}

impl Mounts {
    fn new(kind: &str) -> Result<Mounts, String> {
        let dir = tempfile::Builder::new()
            // The pid tells whose mount a leftover is (after a kill -9).
            .prefix(&format!("mapcopy-{kind}-pid{}-", std::process::id()))
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        Ok(Mounts {
            dir: Some(dir),
            mounted: Vec::new(),
            layers: None,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir
            .as_ref()
            .expect("present until drop")
            .path()
            .join(name)
    }

    fn mkdir(&self, path: &Path) -> Result<(), String> {
        std::fs::create_dir_all(path).map_err(|e| format!("creating {}: {e}", path.display()))
    }

    fn mount(
        &mut self,
        fstype: &str,
        source: &Path,
        target: &Path,
        opts: &str,
    ) -> Result<(), String> {
        self.mkdir(target)?;
        mount(fstype, source, target, opts)?;
        self.mounted.push(target.to_path_buf());
        Ok(())
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        while let Some(m) = self.mounted.pop() {
            umount_or_detach(&m);
        }
        drop(self.layers.take());
        drop(self.dir.take());
    }
}

/// A fresh tmpfs mounted under a temporary directory (root only);
/// unmounted and removed on drop.
#[derive(Debug)]
pub struct Tmpfs {
    _mounts: Mounts,
    mnt: PathBuf,
}

impl Tmpfs {
    /// Mounts a 256 MiB tmpfs. `Err` says why it cannot (pass it to
    /// [`skip_or_fail`]).
    pub fn new() -> Result<Tmpfs, String> {
        need_root_and("a tmpfs", &["mount", "umount"])?;
        let mut mounts = Mounts::new("tmpfs")?;
        let mnt = mounts.path("mnt");
        mounts.mount("tmpfs", Path::new("tmpfs"), &mnt, "size=256m,mode=1777")?;
        Ok(Tmpfs {
            _mounts: mounts,
            mnt,
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mnt
    }
}

/// An overlay mount (what Docker and Podman run containers on) whose lower,
/// upper and work directories are on a tmpfs of its own (so it works
/// whatever the temporary directory's filesystem is, an overlay included).
/// Root only; unmounted and removed on drop.
///
/// A file that exists only in [`Overlay::lower`] is read from the lower
/// layer until something writes it through the overlay (copy-up); one in
/// [`Overlay::upper`] is the overlay file's real file. Writing either
/// directly is the writer the overlay file cannot see.
#[derive(Debug)]
pub struct Overlay {
    _mounts: Mounts,
    base: PathBuf,
}

impl Overlay {
    /// Makes the layers, lets `populate(lower, upper)` create files in them
    /// (before the mount: the overlay caches what it has looked up), and
    /// mounts the overlay. `Err` says why it cannot.
    pub fn new(populate: impl FnOnce(&Path, &Path) -> io::Result<()>) -> Result<Overlay, String> {
        Self::new_in(None, populate)
    }

    /// Like [`Overlay::new`], with the layers in a new directory under
    /// `parent` (on its filesystem) instead of on a tmpfs of their own.
    pub fn new_in(
        parent: Option<&Path>,
        populate: impl FnOnce(&Path, &Path) -> io::Result<()>,
    ) -> Result<Overlay, String> {
        need_root_and("an overlay", &["mount", "umount"])?;
        let mut mounts = Mounts::new("overlay")?;
        let base = match parent {
            Some(p) => {
                let d = tempfile::Builder::new()
                    .prefix("mapcopy-layers-")
                    .tempdir_in(p)
                    .map_err(|e| format!("temp dir in {}: {e}", p.display()))?;
                mounts.layers = Some(d);
                mounts
                    .layers
                    .as_ref()
                    .expect("just set")
                    .path()
                    .to_path_buf()
            }
            None => {
                let b = mounts.path("layers");
                mounts.mount("tmpfs", Path::new("tmpfs"), &b, "size=256m,mode=0755")?;
                b
            }
        };
        let o = |d: &str| base.join(d);
        for d in ["lower", "upper", "work"] {
            mounts.mkdir(&o(d))?;
        }
        populate(&o("lower"), &o("upper")).map_err(|e| format!("filling the layers: {e}"))?;
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            o("lower").display(),
            o("upper").display(),
            o("work").display()
        );
        mounts.mount("overlay", Path::new("overlay"), &o("merged"), &opts)?;
        Ok(Overlay {
            _mounts: mounts,
            base,
        })
    }

    /// The overlay mount point (the container's view).
    pub fn merged(&self) -> PathBuf {
        self.base.join("merged")
    }

    /// The lower layer (read-only to the overlay; writable directly).
    pub fn lower(&self) -> PathBuf {
        self.base.join("lower")
    }

    /// The upper layer (where the overlay writes).
    pub fn upper(&self) -> PathBuf {
        self.base.join("upper")
    }
}

/// A FUSE mirror of a directory (`bindfs SOURCE MOUNTPOINT`): every file in
/// [`FuseMirror::source`] appears under [`FuseMirror::path`], served by the
/// bindfs process. Writing the source directly is a writer the FUSE file
/// cannot see, as another client of a network filesystem would be. Root
/// only; unmounted and removed on drop.
#[derive(Debug)]
pub struct FuseMirror {
    mounts: Mounts,
}

impl FuseMirror {
    /// Makes the source directory, lets `populate(source)` create files in
    /// it, and mounts the mirror. `Err` says why it cannot.
    pub fn new(populate: impl FnOnce(&Path) -> io::Result<()>) -> Result<FuseMirror, String> {
        need_root_and("a FUSE mirror", &["bindfs", "umount"])?;
        if !Path::new("/dev/fuse").exists() {
            return Err("/dev/fuse is missing (needed for a FUSE mirror)".into());
        }
        let mut mounts = Mounts::new("fuse")?;
        let (src, mnt) = (mounts.path("source"), mounts.path("mnt"));
        mounts.mkdir(&src)?;
        mounts.mkdir(&mnt)?;
        populate(&src).map_err(|e| format!("filling {}: {e}", src.display()))?;
        run(Command::new("bindfs").arg(&src).arg(&mnt))?;
        mounts.mounted.push(mnt);
        Ok(FuseMirror { mounts })
    }

    /// The directory the mirror serves.
    pub fn source(&self) -> PathBuf {
        self.mounts.path("source")
    }

    /// The FUSE mount point.
    pub fn path(&self) -> PathBuf {
        self.mounts.path("mnt")
    }
}

/// An ext4 loop image made with `mkfs.ext4 -O verity` (4 KiB blocks, the
/// Merkle tree block size `fsverity enable` picks), mounted read-write
/// under a temporary directory (root only); files made in it can have
/// fs-verity enabled where the kernel has it (`/sys/fs/ext4/features/verity`).
/// Unmounted, its loop device released and the image removed on drop.
#[derive(Debug)]
pub struct VerityExt4 {
    mounts: Mounts,
}

impl VerityExt4 {
    /// Makes and mounts the image; the mount point and the directory above
    /// it are searchable by every user (for unprivileged readers). `Err`
    /// says why it cannot (not root; `mkfs.ext4` or `fsverity`, which
    /// [`enable_verity`] runs, missing; a command failed): pass it to
    /// [`skip_or_fail`].
    pub fn new() -> Result<VerityExt4, String> {
        need_root_and(
            "an ext4 image with the verity feature",
            &["mkfs.ext4", "fsverity", "mount", "umount"],
        )?;
        let mut mounts = Mounts::new("verity")?;
        let (img, mnt) = (mounts.path("image"), mounts.path("mnt"));
        File::create(&img)
            .and_then(|f| f.set_len(64 << 20))
            .map_err(|e| format!("creating {}: {e}", img.display()))?;
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096", "-O", "verity"])
            .arg(&img))?;
        std::fs::set_permissions(mounts.path(""), std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod: {e}"))?;
        mounts.mount("ext4", &img, &mnt, "loop")?;
        std::fs::set_permissions(&mnt, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod {}: {e}", mnt.display()))?;
        Ok(VerityExt4 { mounts })
    }

    /// The mount point.
    pub fn path(&self) -> PathBuf {
        self.mounts.path("mnt")
    }

    /// Unmounts (nothing may hold a file open), overwrites the first
    /// occurrence of `marker` in the image and the `len` bytes from it with
    /// `fill` (as [`LoopMount::corrupt`]), and mounts the image again: the
    /// page cache starts empty, so a file's changed block is read from the
    /// image. Returns the image offset.
    pub fn corrupt(&mut self, marker: &[u8], len: usize, fill: u8) -> Result<u64, String> {
        let mnt = self.path();
        umount_patiently(&mnt)?;
        self.mounts.mounted.retain(|m| *m != mnt);
        let img = self.mounts.path("image");
        let off = corrupt_image(&img, marker, len, fill)?;
        self.mounts.mount("ext4", &img, &mnt, "loop")?;
        Ok(off)
    }
}

/// Does this kernel offer fs-verity on ext4 (`CONFIG_FS_VERITY`: ext4 lists
/// `verity` in `/sys/fs/ext4/features`)?
pub fn kernel_has_ext4_verity() -> bool {
    Path::new("/sys/fs/ext4/features/verity").exists()
}

/// Enables fs-verity on the file at `path` with `fsverity enable` (Debian
/// `fsverity`; SHA-256, 4 KiB blocks). The file must not be open for
/// writing anywhere. `Err` carries the tool's message (the kernel's errno
/// as `strerror` words: "Operation not supported" from a kernel without
/// fs-verity).
pub fn enable_verity(path: &Path) -> Result<(), String> {
    if !have("fsverity") {
        return Err("fsverity is not installed (Debian package fsverity)".into());
    }
    run(Command::new("fsverity").arg("enable").arg(path)).map(drop)
}

/// A filesystem with no write support, for immutable files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOnlyKind {
    /// erofs, made by `mkfs.erofs` (Debian `erofs-utils`).
    Erofs,
    /// squashfs, made by `mksquashfs` (Debian `squashfs-tools`).
    Squashfs,
}

impl ReadOnlyKind {
    /// Both kinds.
    pub const ALL: [ReadOnlyKind; 2] = [ReadOnlyKind::Erofs, ReadOnlyKind::Squashfs];

    /// The filesystem type, as `mount -t` and statfs names it.
    pub fn name(self) -> &'static str {
        match self {
            ReadOnlyKind::Erofs => "erofs",
            ReadOnlyKind::Squashfs => "squashfs",
        }
    }
}

impl fmt::Display for ReadOnlyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An erofs or squashfs image built from a directory and loop-mounted
/// (root only); unmounted, its loop device released and the image removed
/// on drop.
#[derive(Debug)]
pub struct ReadOnlyImage {
    mounts: Mounts,
    kind: ReadOnlyKind,
}

impl ReadOnlyImage {
    /// Makes a source directory, lets `populate(source)` create files in
    /// it (world-readable: the image keeps the modes), builds the image and
    /// mounts it. `Err` says why it cannot (pass it to [`skip_or_fail`]).
    pub fn new(
        kind: ReadOnlyKind,
        populate: impl FnOnce(&Path) -> io::Result<()>,
    ) -> Result<ReadOnlyImage, String> {
        let tool = match kind {
            ReadOnlyKind::Erofs => "mkfs.erofs",
            ReadOnlyKind::Squashfs => "mksquashfs",
        };
        need_root_and(&format!("an {kind} image"), &[tool, "mount", "umount"])?;
        let mut mounts = Mounts::new(kind.name())?;
        let (src, img, mnt) = (
            mounts.path("source"),
            mounts.path("image"),
            mounts.path("mnt"),
        );
        mounts.mkdir(&src)?;
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod {}: {e}", src.display()))?;
        populate(&src).map_err(|e| format!("filling {}: {e}", src.display()))?;
        let mut cmd = Command::new(tool);
        match kind {
            ReadOnlyKind::Erofs => cmd.arg("--quiet").arg(&img).arg(&src),
            ReadOnlyKind::Squashfs => cmd.arg(&src).arg(&img).args(["-noappend", "-quiet"]),
        };
        run(&mut cmd)?;
        // The mount point must be reachable by an unprivileged reader too.
        std::fs::set_permissions(mounts.path(""), std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod: {e}"))?;
        mounts.mount(kind.name(), &img, &mnt, "loop,ro")?;
        Ok(ReadOnlyImage { mounts, kind })
    }

    /// The mount point.
    pub fn path(&self) -> PathBuf {
        self.mounts.path("mnt")
    }

    /// The image file under the mount.
    pub fn image(&self) -> PathBuf {
        self.mounts.path("image")
    }

    /// Which filesystem it is.
    pub fn kind(&self) -> ReadOnlyKind {
        self.kind
    }
}
