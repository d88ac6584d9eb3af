//! The reader process: maps the file with a strategy (or, as the control,
//! with plain `MAP_PRIVATE`), touches pages in a seeded random order with
//! random pauses, logs what each page held at first touch and when, then
//! re-reads them later and logs any page that changed.
//!
//! A strategy's mapping is the whole file in half the cycles; otherwise a
//! page-aligned sub-range that may reach past the end of the file (bytes
//! there must read as zero, or as data written before the first touch); a
//! quarter of the mappings ask for `populate(true)`.
//!
//! Log lines (one cycle = one mapping):
//! `M <cycle> <t_map> <len> <offset>` mapped; `E <t> <kind> <message>` the map call
//! failed; `T <page> <t_touch> <runs>` first touch; `D <page> <t> <runs>` a
//! re-read differed from the first read (S2); `U <cycle>` unmapped.
#![allow(unsafe_code)]

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::time::Duration;

use super::op::Rng;
use super::stamp::{CHUNK, PAGE, Runs};
use super::{Args, Target, now};

/// Everything a reader process needs, passed as `key=value` arguments.
#[derive(Clone, Debug)]
pub struct ReaderConfig {
    /// The file.
    pub file: PathBuf,
    /// How to map it.
    pub target: Target,
    /// Seed of this reader's touch orders and pauses.
    pub seed: u64,
    /// Where to write the log.
    pub log: PathBuf,
    /// Stop after the cycle in which this file appears.
    pub stop: PathBuf,
    /// CLOCK_MONOTONIC ns after which to stop regardless.
    pub deadline: u64,
    /// Stop after this many cycles (0: no limit).
    pub cycles: u64,
    /// Largest file size: sub-range mappings may reach past the end up to
    /// here.
    pub max: u64,
}

impl ReaderConfig {
    /// As child-process arguments.
    pub fn to_args(&self) -> Vec<String> {
        vec![
            format!("file={}", self.file.display()),
            format!("target={}", self.target.name()),
            format!("seed={}", self.seed),
            format!("log={}", self.log.display()),
            format!("stop={}", self.stop.display()),
            format!("deadline={}", self.deadline),
            format!("cycles={}", self.cycles),
            format!("max={}", self.max),
        ]
    }

    fn from_args(a: &Args) -> Result<ReaderConfig, String> {
        Ok(ReaderConfig {
            file: a.path("file")?,
            target: Target::parse(&a.get("target")?).map_err(|e| e.to_string())?,
            seed: a.num("seed")?,
            log: a.path("log")?,
            stop: a.path("stop")?,
            deadline: a.num("deadline")?,
            cycles: a.num("cycles")?,
            max: a.num("max")?,
        })
    }
}

/// Entry point of the reader child process.
pub fn child_main(args: &[String]) -> i32 {
    let cfg = match Args::parse(args).and_then(|a| ReaderConfig::from_args(&a)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("torture reader: {e}");
            return 2;
        }
    };
    match run(&cfg) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("torture reader: {e}");
            1
        }
    }
}

/// A mapping the reader can read pages from.
trait View {
    fn len(&self) -> usize;
    /// Copies `out.len()` bytes from offset `off`, really reading the
    /// memory each time (no cached earlier read).
    fn read(&self, off: usize, out: &mut [u8]);
}

impl View for mapcopy::MapCopy {
    fn len(&self) -> usize {
        self.as_ref().len()
    }
    fn read(&self, off: usize, out: &mut [u8]) {
        // black_box hides where the slice comes from, so the compiler cannot
        // reuse an earlier read of the same bytes: a re-read really reads.
        let s: &[u8] = std::hint::black_box(self.as_ref());
        out.copy_from_slice(&s[off..off + out.len()]);
    }
}

/// The control: a plain read-only `MAP_PRIVATE` mapping of the file, which
/// keeps none of the contract (it shows later writes and raises SIGBUS
/// past a shrunken end). The torture run must catch it.
struct Private {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Private {
    fn new(f: &File) -> io::Result<Private> {
        let len = f.metadata()?.len() as usize;
        if len == 0 {
            return Ok(Private {
                ptr: std::ptr::null_mut(),
                len,
            });
        }
        // SAFETY: a fresh read-only private mapping at an address the kernel
        // picks, so no existing memory is affected. Its contents may change
        // under us (that is what the control demonstrates), so no Rust
        // reference to it is ever made: it is read only through raw-pointer
        // volatile reads in `read`, and unmapped in Drop. A read past a
        // shrunken end raises SIGBUS, which kills this child process: the
        // parent reports it as an S3 violation.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ,
                rustix::mm::MapFlags::PRIVATE,
                f,
                0,
            )?
        };
        Ok(Private { ptr, len })
    }
}

impl View for Private {
    fn len(&self) -> usize {
        self.len
    }
    fn read(&self, off: usize, out: &mut [u8]) {
        assert!(off + out.len() <= self.len);
        let base = self.ptr as *const u8;
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: off + i < len, inside the live mapping; a volatile read
            // of a u8 through a raw pointer makes no aliasing claim, so bytes
            // changing between reads are not undefined behaviour.
            *b = unsafe { std::ptr::read_volatile(base.add(off + i)) };
        }
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: unmaps exactly the mapping made in `new`, which no
            // reference outlives.
            let _ = unsafe { rustix::mm::munmap(self.ptr, self.len) };
        }
    }
}

/// The S1 control: the bytes of the file when the reader started, served
/// again for every mapping.
#[derive(Clone)]
struct Stale(std::sync::Arc<Vec<u8>>);

impl View for Stale {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn read(&self, off: usize, out: &mut [u8]) {
        out.copy_from_slice(&self.0[off..off + out.len()]);
    }
}

/// Which part of the file to map and how.
struct Shape {
    offset: u64,
    len: Option<usize>,
    populate: bool,
}

fn map(
    target: &Target,
    f: &File,
    stale: &mut Option<Stale>,
    shape: &Shape,
) -> Result<Box<dyn View>, (String, String)> {
    match target {
        Target::StaleCopy => {
            if stale.is_none() {
                let mut v = Vec::new();
                io::Read::read_to_end(&mut &*f, &mut v)
                    .map_err(|e| ("io".to_string(), e.to_string()))?;
                *stale = Some(Stale(std::sync::Arc::new(v)));
            }
            Ok(Box::new(stale.clone().unwrap()))
        }
        Target::Private => Private::new(f)
            .map(|p| Box::new(p) as Box<dyn View>)
            .map_err(|e| ("io".to_string(), e.to_string())),
        Target::Strategy(s) => {
            let mut o = crate::options(*s);
            o.offset(shape.offset).populate(shape.populate);
            if let Some(len) = shape.len {
                o.len(len);
            }
            o.map(f)
                .map(|m| Box::new(m) as Box<dyn View>)
                .map_err(|e| (format!("{:?}", e.kind()).to_lowercase(), e.to_string()))
        }
    }
}

fn run(cfg: &ReaderConfig) -> io::Result<()> {
    let mut log = BufWriter::new(File::create(&cfg.log)?);
    let mut rng = Rng::new(cfg.seed);
    let mut cycle = 0u64;
    let mut buf = vec![0u8; PAGE];
    let mut stale = None;
    while now() < cfg.deadline && (cfg.cycles == 0 || cycle < cfg.cycles) {
        if cfg.stop.exists() {
            break;
        }
        cycle += 1;
        let f = File::open(&cfg.file)?;
        let mut shape = Shape {
            offset: 0,
            len: None,
            populate: false,
        };
        if let Target::Strategy(_) = cfg.target {
            if rng.chance(1, 2) {
                let size = f.metadata()?.len();
                shape.offset = rng.below(size / PAGE as u64 + 1) * PAGE as u64;
                let room = cfg.max.saturating_sub(shape.offset) / CHUNK as u64;
                shape.len = Some((rng.range(0, room) * CHUNK as u64) as usize);
            }
            shape.populate = rng.chance(1, 4);
        }
        let t_map = now();
        let view = match map(&cfg.target, &f, &mut stale, &shape) {
            Ok(v) => v,
            Err((kind, msg)) => {
                writeln!(log, "E {t_map} {kind} {}", msg.replace('\n', " "))?;
                log.flush()?;
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
        };
        drop(f);
        let len = view.len();
        writeln!(log, "M {cycle} {t_map} {len} {}", shape.offset)?;
        let first_page = (shape.offset / PAGE as u64) as usize;
        log.flush()?;
        let npages = len.div_ceil(PAGE);
        let mut order: Vec<usize> = (0..npages).collect();
        rng.shuffle(&mut order);
        let k = if rng.chance(1, 2) {
            npages
        } else {
            rng.range(0, npages as u64) as usize
        };
        let pause = rng.chance(1, 2);
        let mut first: Vec<(usize, Vec<u8>)> = Vec::with_capacity(k);
        for &p in &order[..k] {
            if pause && rng.chance(1, 4) {
                std::thread::sleep(Duration::from_micros(rng.below(300)));
            }
            let off = p * PAGE;
            let n = PAGE.min(len - off);
            view.read(off, &mut buf[..n]);
            let t = now();
            writeln!(log, "T {} {t} {}", first_page + p, Runs::decode(&buf[..n]))?;
            first.push((p, buf[..n].to_vec()));
        }
        log.flush()?;
        std::thread::sleep(Duration::from_micros(rng.below(3000)));
        for (p, bytes) in &first {
            let n = bytes.len();
            view.read(p * PAGE, &mut buf[..n]);
            if buf[..n] != bytes[..] {
                writeln!(
                    log,
                    "D {} {} {}",
                    first_page + p,
                    now(),
                    Runs::decode(&buf[..n])
                )?;
            }
        }
        drop(view);
        writeln!(log, "U {cycle}")?;
        log.flush()?;
    }
    log.flush()
}
