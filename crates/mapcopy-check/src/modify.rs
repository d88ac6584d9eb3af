//! Every way another process can change a file (the contract's S2 in the `mapcopy` crate docs), each applied
//! from a separate process, with a naive model of what the file holds
//! afterwards.
//!
//! A [`Modification`] names a [`Kind`], a range and a *generation*: the
//! bytes it writes are [`crate::pattern`] bytes of that generation at the
//! same file offsets, so whatever a mapping shows can be traced back to the
//! version it came from. [`Modification::model`] computes the file's new
//! contents from the old ones (the oracle's "new bytes");
//! [`Writer::apply_checked`] runs the modification in a child process and
//! then verifies that the file really holds what the model says.
//!
//! A [`Writer`] is spawned before the mapping is made and told to apply
//! later: only [`Kind::SharedBefore`] touches the file before that (it maps
//! the file `MAP_SHARED` at once and stores through that mapping when told).
//!
//! ```no_run
//! use mapcopy_check::modify::{Kind, Modification};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # mapcopy_check::child::dispatch();
//! let path = std::path::Path::new("/tmp/some-file");
//! let old = std::fs::read(path)?;
//! let m = Modification::new(Kind::Pwrite, 100, 5000, 1);
//! match m.apply_checked(path, &old) {
//!     Ok(new) => assert_eq!(std::fs::read(path)?, new),
//!     Err(mapcopy_check::modify::ApplyError::Unsupported(why)) => eprintln!("skip: {why}"),
//!     Err(e) => return Err(e.into()),
//! }
//! # Ok(()) }
//! ```
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, IoSlice, Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::str::FromStr;

use rustix::fs::FallocateFlags;
use rustix::mm::{MapFlags, ProtFlags};

use crate::{child, pattern};

/// The child entry point name (see [`crate::child`]).
pub const ENTRY: &str = "modify";

macro_rules! kinds {
    ($($(#[$doc:meta])* $v:ident = $name:literal,)*) => {
        /// A way to modify a file.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Kind { $($(#[$doc])* $v,)* }
        impl Kind {
            /// Every kind, in a stable order.
            pub const ALL: &'static [Kind] = &[$(Kind::$v,)*];
            /// Short name (used in test names and child arguments).
            pub fn name(self) -> &'static str {
                match self { $(Kind::$v => $name,)* }
            }
        }
        impl FromStr for Kind {
            type Err = String;
            fn from_str(s: &str) -> Result<Kind, String> {
                match s { $($name => Ok(Kind::$v),)* _ => Err(format!("unknown modification kind {s:?}")) }
            }
        }
    };
}

kinds! {
    /// `lseek` + `write(2)` of `len` bytes at `offset`.
    Write = "write",
    /// `pwrite(2)` of `len` bytes at `offset`.
    Pwrite = "pwrite",
    /// `lseek` + `writev(2)` (three iovecs) of `len` bytes at `offset`.
    Writev = "writev",
    /// `write(2)` of `len` bytes on an `O_APPEND` descriptor (at the end).
    Append = "append",
    /// `ftruncate(2)` to the smaller size `offset`.
    FtruncateShrink = "ftruncate-shrink",
    /// `ftruncate(2)` to the larger size `offset`.
    FtruncateGrow = "ftruncate-grow",
    /// `truncate(2)` by path to size `offset`.
    TruncatePath = "truncate-path",
    /// `open(O_TRUNC)`, then write `len` bytes from offset 0.
    OpenTrunc = "open-trunc",
    /// `fallocate(PUNCH_HOLE | KEEP_SIZE)` over `offset .. offset + len`.
    PunchHole = "punch-hole",
    /// `fallocate(ZERO_RANGE)` over `offset .. offset + len`.
    ZeroRange = "zero-range",
    /// `fallocate(COLLAPSE_RANGE)`: removes `offset .. offset + len`
    /// (block aligned), the rest moves down.
    CollapseRange = "collapse-range",
    /// `fallocate(INSERT_RANGE)`: inserts a hole of `len` bytes at `offset`
    /// (block aligned), the rest moves up.
    InsertRange = "insert-range",
    /// `copy_file_range(2)` of `len` bytes at `offset` from another file.
    CopyFileRange = "copy-file-range",
    /// `ioctl(FICLONERANGE)` of `len` bytes at `offset` from another file on
    /// the same filesystem (block aligned; xfs, btrfs).
    CloneRange = "clone-range",
    /// `pwrite(2)` on an `O_DIRECT` descriptor (page aligned).
    ODirect = "o-direct",
    /// An io_uring `IORING_OP_WRITE` of `len` bytes at `offset`.
    IoUring = "io-uring",
    /// A store through a `MAP_SHARED` mapping the writer made *before* the
    /// copy mapping (the writer holds the file open from the start).
    SharedBefore = "shared-before",
    /// A store through a `MAP_SHARED` mapping the writer makes after.
    SharedAfter = "shared-after",
    /// `pwrite(2)` through a second hard link to the file.
    HardLink = "hard-link",
    /// `cp OTHER FILE`: replaces the contents with `len` bytes.
    Cp = "cp",
    /// `sh -c 'printf %s ... > FILE'`: replaces the contents with `len` bytes.
    ShellRedirect = "shell-redirect",
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Kind {
    /// Does the kind need `offset`/`len` aligned to the filesystem block
    /// (4096 here)?
    pub fn needs_alignment(self) -> bool {
        matches!(
            self,
            Kind::CollapseRange | Kind::InsertRange | Kind::CloneRange | Kind::ODirect
        )
    }

    /// Does the writer hold the file open (writable) already when the copy
    /// mapping is made? Strategies that need no writer at map time may
    /// refuse such a mapping with `Unsupported`.
    pub fn open_before_map(self) -> bool {
        matches!(self, Kind::SharedBefore)
    }
}

/// One modification: what, where, and which generation's bytes it writes.
///
/// For the truncations `offset` is the new size and `len` is unused; for
/// `Append`, `OpenTrunc`, `Cp` and `ShellRedirect` only `len` is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Modification {
    /// What to do.
    pub kind: Kind,
    /// Where (or the new size, for truncations).
    pub offset: u64,
    /// How many bytes.
    pub len: u64,
    /// Generation of the pattern bytes it writes.
    pub generation: u32,
}

/// Why a modification did not happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyError {
    /// This filesystem or kernel does not offer the operation (for example
    /// `EOPNOTSUPP` for a clone on ext4). Not a failure of the test subject.
    Unsupported(String),
    /// The operation failed, or the file does not hold what the model says.
    Failed(String),
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApplyError::Unsupported(why) => write!(f, "unsupported here: {why}"),
            ApplyError::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

impl std::error::Error for ApplyError {}

impl Modification {
    /// A modification of `kind` at `offset` for `len` bytes writing
    /// generation `generation`.
    pub fn new(kind: Kind, offset: u64, len: u64, generation: u32) -> Modification {
        Modification {
            kind,
            offset,
            len,
            generation,
        }
    }

    /// The file's contents after this modification, given `old` (the naive
    /// model).
    pub fn model(&self, old: &[u8]) -> Vec<u8> {
        let (off, len, g) = (self.offset as usize, self.len as usize, self.generation);
        let mut new = old.to_vec();
        let write_at = |new: &mut Vec<u8>, at: usize| {
            if new.len() < at + len {
                new.resize(at + len, 0);
            }
            pattern::fill(g, at as u64, &mut new[at..at + len]);
        };
        match self.kind {
            Kind::Write
            | Kind::Pwrite
            | Kind::Writev
            | Kind::CopyFileRange
            | Kind::CloneRange
            | Kind::ODirect
            | Kind::IoUring
            | Kind::SharedBefore
            | Kind::SharedAfter
            | Kind::HardLink => write_at(&mut new, off),
            Kind::Append => write_at(&mut new, old.len()),
            Kind::FtruncateShrink | Kind::FtruncateGrow | Kind::TruncatePath => new.resize(off, 0),
            Kind::OpenTrunc | Kind::Cp | Kind::ShellRedirect => new = pattern::bytes(g, 0, len),
            Kind::PunchHole => {
                let end = (off + len).min(new.len());
                if off < end {
                    new[off..end].fill(0);
                }
            }
            Kind::ZeroRange => {
                if new.len() < off + len {
                    new.resize(off + len, 0);
                }
                new[off..off + len].fill(0);
            }
            Kind::CollapseRange => {
                new.drain(off..off + len);
            }
            Kind::InsertRange => {
                new.splice(off..off, std::iter::repeat_n(0u8, len));
            }
        }
        new
    }

    /// Does the modification from *this* process (the contract covers the
    /// mapping process's own writes too), then checks that the file holds
    /// `self.model(old)` and returns that. `SharedBefore` maps at once here.
    pub fn apply_here(&self, path: &Path, old: &[u8]) -> Result<Vec<u8>, ApplyError> {
        perform(self, path, None).map_err(|e| match e {
            ChildError::Unsupported(w) => ApplyError::Unsupported(w),
            ChildError::Failed(w) => ApplyError::Failed(w),
        })?;
        verify(self, path, old)
    }

    /// Runs the modification on `path` in a child process.
    pub fn apply(&self, path: &Path) -> Result<(), ApplyError> {
        Writer::spawn(self, path)?.apply()
    }

    /// Runs the modification on `path` in a child process, then checks that
    /// the file holds `self.model(old)`, and returns that.
    pub fn apply_checked(&self, path: &Path, old: &[u8]) -> Result<Vec<u8>, ApplyError> {
        Writer::spawn(self, path)?.apply_checked(old)
    }

    fn to_args(self, path: &Path) -> Vec<String> {
        vec![
            self.kind.name().to_string(),
            self.offset.to_string(),
            self.len.to_string(),
            self.generation.to_string(),
            path.to_string_lossy().into_owned(),
        ]
    }

    fn from_args(args: &[String]) -> Result<(Modification, PathBuf), String> {
        let [kind, offset, len, generation, path] = args else {
            return Err(format!("expected KIND OFFSET LEN GEN PATH, got {args:?}"));
        };
        let num = |s: &String| s.parse::<u64>().map_err(|e| format!("{s:?}: {e}"));
        Ok((
            Modification {
                kind: kind.parse()?,
                offset: num(offset)?,
                len: num(len)?,
                generation: generation
                    .parse()
                    .map_err(|e| format!("{generation:?}: {e}"))?,
            },
            PathBuf::from(path),
        ))
    }
}

impl fmt::Display for Modification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} offset={} len={} gen={}",
            self.kind, self.offset, self.len, self.generation
        )
    }
}

/// A writer process, started and ready, waiting to be told to apply its
/// modification.
#[derive(Debug)]
pub struct Writer {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    m: Modification,
    path: PathBuf,
}

impl Writer {
    /// Starts the writer process for `m` on `path` and waits until it is
    /// ready (for [`Kind::SharedBefore`]: has the file mapped).
    pub fn spawn(m: &Modification, path: &Path) -> Result<Writer, ApplyError> {
        Self::spawn_with(child::command(ENTRY, &m.to_args(path)), m, path)
    }

    /// Like [`Writer::spawn`], with a command made by the caller (for
    /// example wrapped in `setpriv`) that must run the [`ENTRY`] child.
    pub fn spawn_with(
        mut cmd: Command,
        m: &Modification,
        path: &Path,
    ) -> Result<Writer, ApplyError> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| ApplyError::Failed(format!("spawning the writer process: {e}")))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        let mut w = Writer {
            child,
            stdin: Some(stdin),
            stdout,
            m: *m,
            path: path.to_path_buf(),
        };
        if line.trim() != "ready" {
            return Err(w.finish(line));
        }
        Ok(w)
    }

    /// Tells the writer to apply its modification and waits for it.
    pub fn apply(mut self) -> Result<(), ApplyError> {
        let stdin = self.stdin.as_mut().expect("stdin open until finish");
        if let Err(e) = writeln!(stdin, "go").and_then(|()| stdin.flush()) {
            return Err(ApplyError::Failed(format!("telling the writer to go: {e}")));
        }
        let mut line = String::new();
        let _ = self.stdout.read_line(&mut line);
        match self.finish(line) {
            ApplyError::Failed(m) if m.is_empty() => Ok(()),
            e => Err(e),
        }
    }

    /// [`Writer::apply`], then checks the file holds the model's contents
    /// and returns them.
    pub fn apply_checked(self, old: &[u8]) -> Result<Vec<u8>, ApplyError> {
        let (m, path) = (self.m, self.path.clone());
        self.apply()?;
        verify(&m, &path, old)
    }

    /// Waits for the child; an empty `Failed` means success.
    fn finish(&mut self, line: String) -> ApplyError {
        // Closing stdin tells a writer that was never told to go to quit.
        drop(self.stdin.take());
        let mut err = String::new();
        if let Some(e) = self.child.stderr.as_mut() {
            let _ = e.read_to_string(&mut err);
        }
        let status = self.child.wait();
        let line = line.trim();
        match status {
            Ok(s) if s.success() && line == "ok" => ApplyError::Failed(String::new()),
            Ok(s) if s.code() == Some(UNSUPPORTED_EXIT) => ApplyError::Unsupported(
                line.strip_prefix("unsupported: ")
                    .unwrap_or(line)
                    .to_string(),
            ),
            Ok(s) => ApplyError::Failed(format!(
                "writer process for {} on {} exited with {s}: {} {}",
                self.m,
                self.path.display(),
                line,
                err.trim()
            )),
            Err(e) => ApplyError::Failed(format!("waiting for the writer process: {e}")),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const UNSUPPORTED_EXIT: i32 = 3;

/// An error in the child: unsupported (by errno) or a failure.
enum ChildError {
    Unsupported(String),
    Failed(String),
}

fn classify(what: &str, e: io::Error) -> ChildError {
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::ENOTTY) | Some(libc::EXDEV) => {
            ChildError::Unsupported(format!("{what}: {e}"))
        }
        _ => ChildError::Failed(format!("{what}: {e}")),
    }
}

fn failed(what: &str) -> impl FnOnce(io::Error) -> ChildError + '_ {
    move |e| classify(what, e)
}

/// Child entry point: `KIND OFFSET LEN GEN PATH`. Prints `ready`, waits for
/// a line on stdin, applies, prints `ok` (exit 0) or `unsupported: why`
/// (exit 3); other failures exit 1 with a message on stderr.
pub fn child_main(args: &[String]) -> i32 {
    let (m, path) = match Modification::from_args(args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("modify: {e}");
            return 2;
        }
    };
    let result = run_child(&m, &path);
    match result {
        Ok(()) => {
            println!("ok");
            0
        }
        Err(ChildError::Unsupported(why)) => {
            println!("unsupported: {why}");
            UNSUPPORTED_EXIT
        }
        Err(ChildError::Failed(why)) => {
            eprintln!("modify {m} on {}: {why}", path.display());
            1
        }
    }
}

/// A `MAP_SHARED` writable mapping of a whole file, unmapped on drop.
struct Shared {
    ptr: *mut u8,
    len: usize,
}

impl Shared {
    fn new(file: &File) -> Result<Shared, ChildError> {
        let len = file.metadata().map_err(failed("fstat"))?.len() as usize;
        if len == 0 {
            return Err(ChildError::Failed(
                "cannot map an empty file MAP_SHARED".into(),
            ));
        }
        // SAFETY: a fresh mapping at an address the kernel picks; it aliases
        // no Rust object. The file may shrink while mapped; the stores below
        // stay inside the length the file had, and the test that drives this
        // writer does not shrink the file in between.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                file,
                0,
            )
        }
        .map_err(|e| classify("mmap MAP_SHARED", e.into()))?;
        Ok(Shared {
            ptr: ptr.cast(),
            len,
        })
    }

    fn store(&self, offset: usize, data: &[u8]) -> Result<(), ChildError> {
        if offset + data.len() > self.len {
            return Err(ChildError::Failed(format!(
                "store {}..{} past the shared mapping's {} bytes",
                offset,
                offset + data.len(),
                self.len
            )));
        }
        for (i, &b) in data.iter().enumerate() {
            // SAFETY: in bounds (checked above) of a live writable mapping;
            // volatile because other processes observe it.
            unsafe { self.ptr.add(offset + i).write_volatile(b) };
        }
        Ok(())
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        let _ = unsafe { rustix::mm::munmap(self.ptr.cast(), self.len) };
    }
}

fn sibling(path: &Path, what: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{what}-{}", std::process::id()));
    path.with_file_name(name)
}

/// Writes a source file next to `path` holding generation `g` over
/// `0 .. end`.
fn source_file(path: &Path, g: u32, end: u64) -> Result<(PathBuf, File), ChildError> {
    let src = sibling(path, "src");
    std::fs::write(&src, pattern::bytes(g, 0, end as usize))
        .map_err(failed("writing the source file"))?;
    let f = File::open(&src).map_err(failed("opening the source file"))?;
    Ok((src, f))
}

fn open_rw(path: &Path) -> Result<File, ChildError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(failed("open O_RDWR"))
}

fn run_child(m: &Modification, path: &Path) -> Result<(), ChildError> {
    // Preparation: only SharedBefore touches the file before "go".
    let before = match m.kind {
        Kind::SharedBefore => Some(Shared::new(&open_rw(path)?)?),
        _ => None,
    };
    println!("ready");
    io::stdout().flush().map_err(failed("stdout"))?;
    let mut line = String::new();
    io::stdin().read_line(&mut line).map_err(failed("stdin"))?;
    if line.trim() != "go" {
        return Err(ChildError::Failed(format!("expected \"go\", got {line:?}")));
    }
    perform(m, path, before.as_ref())?;
    drop(before);
    Ok(())
}

/// Does the modification, in this process. `before` is the shared mapping
/// a `SharedBefore` writer made earlier (without one it maps now).
fn perform(m: &Modification, path: &Path, before: Option<&Shared>) -> Result<(), ChildError> {
    let (off, len, g) = (m.offset, m.len as usize, m.generation);
    let data = || pattern::bytes(g, off, len);
    match m.kind {
        Kind::Write => {
            let mut f = open_rw(path)?;
            f.seek(SeekFrom::Start(off)).map_err(failed("lseek"))?;
            f.write_all(&data()).map_err(failed("write"))?;
        }
        Kind::Pwrite => open_rw(path)?
            .write_all_at(&data(), off)
            .map_err(failed("pwrite"))?,
        Kind::Writev => {
            let mut f = open_rw(path)?;
            f.seek(SeekFrom::Start(off)).map_err(failed("lseek"))?;
            let d = data();
            let (a, rest) = d.split_at(d.len() / 3);
            let (b, c) = rest.split_at(rest.len() / 2);
            let n = rustix::io::writev(&f, &[IoSlice::new(a), IoSlice::new(b), IoSlice::new(c)])
                .map_err(|e| classify("writev", e.into()))?;
            // A short writev is legal; finish with plain writes.
            f.write_all(&d[n..])
                .map_err(failed("write (rest of writev)"))?;
        }
        Kind::Append => {
            let mut f = OpenOptions::new()
                .append(true)
                .open(path)
                .map_err(failed("open O_APPEND"))?;
            let end = f.metadata().map_err(failed("fstat"))?.len();
            f.write_all(&pattern::bytes(g, end, len))
                .map_err(failed("write O_APPEND"))?;
        }
        Kind::FtruncateShrink | Kind::FtruncateGrow => {
            open_rw(path)?.set_len(off).map_err(failed("ftruncate"))?
        }
        Kind::TruncatePath => {
            // std and rustix have no path-based truncate(2); libc does.
            let c = CString::new(path.as_os_str().as_bytes())
                .map_err(|e| ChildError::Failed(e.to_string()))?;
            // SAFETY: a valid NUL-terminated path; plain syscall.
            if unsafe { libc::truncate(c.as_ptr(), off as libc::off_t) } != 0 {
                return Err(classify("truncate", io::Error::last_os_error()));
            }
        }
        Kind::OpenTrunc => {
            let mut f = OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(path)
                .map_err(failed("open O_TRUNC"))?;
            f.write_all(&pattern::bytes(g, 0, len))
                .map_err(failed("write"))?;
        }
        Kind::PunchHole | Kind::ZeroRange | Kind::CollapseRange | Kind::InsertRange => {
            let flags = match m.kind {
                Kind::PunchHole => FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                Kind::ZeroRange => FallocateFlags::ZERO_RANGE,
                Kind::CollapseRange => FallocateFlags::COLLAPSE_RANGE,
                _ => FallocateFlags::INSERT_RANGE,
            };
            rustix::fs::fallocate(open_rw(path)?, flags, off, m.len)
                .map_err(|e| classify(&format!("fallocate {flags:?}"), e.into()))?;
        }
        Kind::CopyFileRange => {
            let (src, s) = source_file(path, g, off + m.len)?;
            let f = open_rw(path)?;
            let (mut from, mut to) = (off, off);
            let mut left = len;
            let r = (|| {
                while left > 0 {
                    let n =
                        rustix::fs::copy_file_range(&s, Some(&mut from), &f, Some(&mut to), left)
                            .map_err(|e| classify("copy_file_range", e.into()))?;
                    if n == 0 {
                        return Err(ChildError::Failed("copy_file_range copied 0 bytes".into()));
                    }
                    left -= n;
                }
                Ok(())
            })();
            let _ = std::fs::remove_file(src);
            r?;
        }
        Kind::CloneRange => {
            let (src, s) = source_file(path, g, off + m.len)?;
            let f = open_rw(path)?;
            let arg = libc::file_clone_range {
                src_fd: std::os::fd::AsRawFd::as_raw_fd(&s.as_fd()) as i64,
                src_offset: off,
                src_length: m.len,
                dest_offset: off,
            };
            // rustix wraps FICLONE (whole file) but not FICLONERANGE.
            // SAFETY: FICLONERANGE takes a pointer to a file_clone_range that
            // lives across the call; both fds are open.
            let rc = unsafe {
                libc::ioctl(
                    std::os::fd::AsRawFd::as_raw_fd(&f),
                    libc::FICLONERANGE,
                    &arg,
                )
            };
            let r = if rc != 0 {
                Err(classify("ioctl FICLONERANGE", io::Error::last_os_error()))
            } else {
                Ok(())
            };
            let _ = std::fs::remove_file(src);
            r?;
        }
        Kind::ODirect => {
            let f = match OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
            {
                Ok(f) => f,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    return Err(ChildError::Unsupported(format!("open O_DIRECT: {e}")));
                }
                Err(e) => return Err(classify("open O_DIRECT", e)),
            };
            // O_DIRECT needs an aligned buffer.
            let mut buf = vec![0u8; len + 4096];
            let skew = buf.as_ptr().align_offset(4096);
            let aligned = &mut buf[skew..skew + len];
            pattern::fill(g, off, aligned);
            f.write_all_at(aligned, off)
                .map_err(failed("pwrite O_DIRECT"))?;
        }
        Kind::IoUring => io_uring_write(&open_rw(path)?, &data(), off)?,
        Kind::SharedBefore => match before {
            Some(b) => b.store(off as usize, &data())?,
            None => Shared::new(&open_rw(path)?)?.store(off as usize, &data())?,
        },
        Kind::SharedAfter => Shared::new(&open_rw(path)?)?.store(off as usize, &data())?,
        Kind::HardLink => {
            let link = sibling(path, "link");
            std::fs::hard_link(path, &link).map_err(failed("link"))?;
            let r = OpenOptions::new()
                .write(true)
                .open(&link)
                .and_then(|f| f.write_all_at(&data(), off))
                .map_err(failed("pwrite through the second link"));
            let _ = std::fs::remove_file(&link);
            r?;
        }
        Kind::Cp => {
            let (src, s) = source_file(path, g, m.len)?;
            drop(s);
            let st = Command::new("cp").arg(&src).arg(path).status();
            let _ = std::fs::remove_file(&src);
            match st {
                Ok(s) if s.success() => {}
                Ok(s) => return Err(ChildError::Failed(format!("cp exited with {s}"))),
                Err(e) => return Err(ChildError::Unsupported(format!("running cp: {e}"))),
            }
        }
        Kind::ShellRedirect => {
            let content = String::from_utf8(pattern::bytes(g, 0, len)).expect("ASCII pattern");
            let st = Command::new("sh")
                .arg("-c")
                .arg(r#"printf '%s' "$1" > "$2""#)
                .arg("sh")
                .arg(content)
                .arg(path)
                .status();
            match st {
                Ok(s) if s.success() => {}
                Ok(s) => return Err(ChildError::Failed(format!("sh exited with {s}"))),
                Err(e) => return Err(ChildError::Unsupported(format!("running sh: {e}"))),
            }
        }
    }
    Ok(())
}

fn io_uring_write(f: &File, data: &[u8], off: u64) -> Result<(), ChildError> {
    use io_uring::{IoUring, opcode, types};
    let mut ring = IoUring::new(4).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOSYS) | Some(libc::EPERM) => {
            ChildError::Unsupported(format!("io_uring_setup: {e}"))
        }
        _ => ChildError::Failed(format!("io_uring_setup: {e}")),
    })?;
    let fd = types::Fd(std::os::fd::AsRawFd::as_raw_fd(f));
    let mut done = 0usize;
    while done < data.len() {
        let rest = &data[done..];
        let entry = opcode::Write::new(fd, rest.as_ptr(), rest.len() as u32)
            .offset(off + done as u64)
            .build();
        // SAFETY: the buffer `rest` and the fd outlive the submission: we
        // wait for its completion before touching either again.
        unsafe { ring.submission().push(&entry) }
            .map_err(|e| ChildError::Failed(format!("io_uring push: {e}")))?;
        ring.submit_and_wait(1)
            .map_err(|e| ChildError::Failed(format!("io_uring_enter: {e}")))?;
        let cqe = ring
            .completion()
            .next()
            .ok_or_else(|| ChildError::Failed("io_uring: no completion".into()))?;
        let res = cqe.result();
        if res < 0 {
            return Err(classify(
                "io_uring write",
                io::Error::from_raw_os_error(-res),
            ));
        }
        if res == 0 {
            return Err(ChildError::Failed("io_uring write wrote 0 bytes".into()));
        }
        done += res as usize;
    }
    Ok(())
}

/// Checks that `path` holds what `m.model(old)` says, and returns that.
fn verify(m: &Modification, path: &Path, old: &[u8]) -> Result<Vec<u8>, ApplyError> {
    let want = m.model(old);
    let got = std::fs::read(path)
        .map_err(|e| ApplyError::Failed(format!("reading {} back: {e}", path.display())))?;
    if got != want {
        let first = got.iter().zip(&want).position(|(a, b)| a != b);
        return Err(ApplyError::Failed(format!(
            "after {m} the file holds {} bytes, the model says {} (first difference at {first:?}): \
             file [{}] model [{}]",
            got.len(),
            want.len(),
            pattern::describe(&got, 0),
            pattern::describe(&want, 0)
        )));
    }
    Ok(want)
}
