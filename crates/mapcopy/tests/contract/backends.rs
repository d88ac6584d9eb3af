//! Backends: the strategies, and the control (a plain MAP_PRIVATE mapping).

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Backend {
    Copy(Strategy),
    /// Plain MAP_PRIVATE, read-only: what memmap2's `map_copy_read_only`
    /// gives. Breaks the contract; the checker must say so.
    Control,
}

impl Backend {
    pub(super) fn name(self) -> String {
        match self {
            Backend::Copy(s) => s.name().into(),
            Backend::Control => "control".into(),
        }
    }
}

/// A plain `MAP_PRIVATE` read-only file mapping (the control).
pub(super) struct Control {
    pub(super) ptr: *mut u8,
    pub(super) map_len: usize,
    pub(super) head: usize,
    pub(super) len: usize,
}

impl Control {
    pub(super) fn new(file: &File, off: u64, len: usize) -> std::io::Result<Control> {
        let p = page() as u64;
        let aligned = off & !(p - 1);
        let head = (off - aligned) as usize;
        let map_len = (head + len).div_ceil(page()) * page();
        if map_len == 0 {
            return Ok(Control {
                ptr: std::ptr::null_mut(),
                map_len,
                head,
                len,
            });
        }
        // SAFETY: a new read-only mapping at an address the kernel picks; it
        // aliases nothing. Reading it may raise SIGBUS after a truncation,
        // which is why control trials run in a child process; its contents
        // may change under us, which is why it is only read through raw
        // pointers with volatile loads, never as a `&[u8]`.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                map_len,
                rustix::mm::ProtFlags::READ,
                rustix::mm::MapFlags::PRIVATE,
                file,
                aligned,
            )
        }?;
        Ok(Control {
            ptr: ptr.cast(),
            map_len,
            head,
            len,
        })
    }
}

impl Source for Control {
    fn len(&self) -> usize {
        self.len
    }
    fn read(&self, start: usize, out: &mut [u8]) -> Result<(), String> {
        assert!(start + out.len() <= self.len);
        for (i, o) in out.iter_mut().enumerate() {
            // SAFETY: in bounds of the live mapping (asserted above).
            *o = unsafe { self.ptr.add(self.head + start + i).read_volatile() };
        }
        Ok(())
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        if self.map_len > 0 {
            // SAFETY: the mapping made in `new`, unmapped once.
            let _ = unsafe { rustix::mm::munmap(self.ptr.cast(), self.map_len) };
        }
    }
}

pub(super) enum Mapped {
    Copy(MapCopy),
    Control(Control),
}

impl Mapped {
    pub(super) fn source(&self) -> &dyn Source {
        match self {
            Mapped::Copy(m) => m,
            Mapped::Control(c) => c,
        }
    }
}

pub(super) fn map_with(
    backend: Backend,
    file: &File,
    off: u64,
    len: Option<usize>,
    populate: bool,
) -> Result<Mapped, Result<mapcopy::Error, String>> {
    match backend {
        Backend::Copy(s) => {
            let mut o = mapcopy_check::options(s);
            o.offset(off).populate(populate);
            if let Some(l) = len {
                o.len(l);
            }
            o.map(file).map(Mapped::Copy).map_err(Ok)
        }
        Backend::Control => {
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            let len = len.unwrap_or((size - off) as usize);
            Control::new(file, off, len)
                .map(Mapped::Control)
                .map_err(|e| Err(format!("control mmap failed: {e}")))
        }
    }
}

/// Is strategy `s` usable for files in `dir`? `Err` is the probe's reason.
///
/// The file is made by this process, whose other trials fork children at
/// any moment: a child forked while the file's writing fd was open holds
/// that open file until it execs, and a lease is refused meanwhile. Under
/// load that can outlast the strategy's own patience, so a refusal for a
/// writer is asked again for up to 3 s before it counts.
pub(super) fn usable_in(s: Strategy, dir: &Path) -> Result<(), String> {
    let f = TestFile::new_in(dir, 3 * page() + 1, 0).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let p = mapcopy::probe(Some(f.path()));
        let e = p
            .strategies
            .iter()
            .find(|e| e.strategy == s)
            .ok_or_else(|| format!("probe does not list {s}"))?;
        match &e.usable {
            Err(why) if why.contains("open for writing") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            u => return u.clone().map(|_| ()),
        }
    }
}

/// On a kernel without `MAP_COPY`, `Strategy::Kernel` refuses (`map` and
/// `map_mut`) with `Unsupported` naming the kernel, and Auto maps with
/// another strategy.
pub(super) fn kernel_refused_case(dir: &Path) -> Outcome {
    let f = TestFile::new_in(dir, 3 * page() + 1, 0).map_err(io("test file"))?;
    let file = f.open().map_err(io("open"))?;
    for writable in [false, true] {
        let o = mapcopy_check::options(Strategy::Kernel);
        let r = if writable {
            o.map_mut(&file).map(drop)
        } else {
            o.map(&file).map(drop)
        };
        match r {
            Err(e)
                if e.kind() == ErrorKind::Unsupported && e.to_string().contains("no MAP_COPY") => {}
            Err(e) => return fail(format!("map_mut={writable}: not the kernel's refusal: {e}")),
            Ok(()) => return fail(format!("map_mut={writable}: mapped without MAP_COPY")),
        }
    }
    let auto = MapCopy::map(&file).map_err(io("Auto"))?;
    if auto.strategy() == Strategy::Kernel {
        return fail("Auto picked kernel without MAP_COPY");
    }
    Ok(Completion::Completed)
}

/// `Strategy::Immutable` refuses a writable file in `dir` (read-only
/// `map` and `map_mut`), with `Unsupported`, and `probe` says so too.
pub(super) fn immutable_refuses_case(dir: &Path) -> Outcome {
    let f = TestFile::new_in(dir, 3 * page() + 1, 0).map_err(io("test file"))?;
    let file = f.open().map_err(io("open"))?;
    for writable in [false, true] {
        let o = mapcopy_check::options(Strategy::Immutable);
        let r = if writable {
            o.map_mut(&file).map(drop)
        } else {
            o.map(&file).map(drop)
        };
        match r {
            Err(e) if e.kind() == ErrorKind::Unsupported => {}
            Err(e) => return fail(format!("map_mut={writable}: not Unsupported: {e}")),
            Ok(()) => return fail(format!("map_mut={writable}: a writable file was mapped")),
        }
    }
    match usable_in(Strategy::Immutable, dir) {
        Err(why) if why.contains("can be written") => Ok(Completion::Completed),
        other => fail(format!("probe: {other:?}")),
    }
}

/// Does strategy `s` offer `map_mut` for files in `dir`? A strategy may
/// refuse writable mappings altogether (`Unsupported`, with the reason);
/// then every `map_mut` must refuse, and the read-only cases still run.
pub(super) fn offers_map_mut(s: Strategy, dir: &Path) -> Result<(), String> {
    let f = TestFile::new_in(dir, 3 * page() + 1, 0).map_err(|e| e.to_string())?;
    let file = f.open().map_err(|e| e.to_string())?;
    match mapcopy_check::options(s).map_mut(&file) {
        Err(e) if e.kind() == ErrorKind::Unsupported => Err(e.to_string()),
        _ => Ok(()),
    }
}

/// Runs `cmd` to completion, or kills it after `secs` (a hang must fail
/// one trial, not the suite). Returns its status, stdout and stderr.
pub(super) fn run_bounded(
    mut cmd: std::process::Command,
    secs: u64,
) -> Result<(std::process::ExitStatus, String, String), Failed> {
    use std::process::Stdio;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io("starting the child"))?;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(st) = child.try_wait().map_err(io("wait"))? {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    match status {
        Some(st) => Ok((st, out, err)),
        None => fail(format!(
            "the child hung for {secs} s and was killed:\n{out}\n{err}"
        )),
    }
}

pub(super) fn not_implemented(reason: &str) -> bool {
    reason.contains("not implemented yet")
}
