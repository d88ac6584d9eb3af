//! The writer process: applies seeded random ops (or a replay script) to
//! the file, one at a time under an exclusive `flock` shared by all writers,
//! and logs each with its CLOCK_MONOTONIC interval.
//!
//! Each op opens the file anew (through the file's name or its second hard
//! link) and closes it when done, the way independent programs would:
//! strategies that watch opens (leases, fanotify) see every op.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufWriter, IoSlice, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;

use rustix::fs::{FallocateFlags, FlockOperation};

use super::op::{Kind, Logged, Op, Rng, generate};
use super::stamp::{self, PAGE};
use super::{Args, now};

/// Everything a writer process needs, passed as `key=value` arguments.
#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// The file.
    pub file: PathBuf,
    /// Its second hard link.
    pub link: PathBuf,
    /// Lock file serializing the writers.
    pub lock: PathBuf,
    /// Where to write the op log.
    pub log: PathBuf,
    /// Stop as soon as this file exists.
    pub stop: PathBuf,
    /// Seed of this writer's op stream.
    pub seed: u64,
    /// Writer number (part of every version it writes).
    pub id: u32,
    /// Round number (part of every version it writes).
    pub round: u32,
    /// Ops to run at most.
    pub ops: u64,
    /// CLOCK_MONOTONIC ns after which to stop.
    pub deadline: u64,
    /// Kinds to draw from.
    pub kinds: u32,
    /// Maximum file size.
    pub max: u64,
    /// Replay: run the ops in this log, in order, instead of random ones.
    pub script: Option<PathBuf>,
    /// After a quarter of the ops, pause up to this many microseconds with
    /// the file closed.
    pub idle_us: u64,
}

impl WriterConfig {
    /// As child-process arguments.
    pub fn to_args(&self) -> Vec<String> {
        let mut v = vec![
            format!("file={}", self.file.display()),
            format!("link={}", self.link.display()),
            format!("lock={}", self.lock.display()),
            format!("log={}", self.log.display()),
            format!("stop={}", self.stop.display()),
            format!("seed={}", self.seed),
            format!("id={}", self.id),
            format!("round={}", self.round),
            format!("ops={}", self.ops),
            format!("deadline={}", self.deadline),
            format!("kinds={}", self.kinds),
            format!("max={}", self.max),
            format!("idle_us={}", self.idle_us),
        ];
        if let Some(s) = &self.script {
            v.push(format!("script={}", s.display()));
        }
        v
    }

    fn from_args(a: &Args) -> Result<WriterConfig, String> {
        Ok(WriterConfig {
            file: a.path("file")?,
            link: a.path("link")?,
            lock: a.path("lock")?,
            log: a.path("log")?,
            stop: a.path("stop")?,
            seed: a.num("seed")?,
            id: a.num("id")? as u32,
            round: a.num("round")? as u32,
            ops: a.num("ops")?,
            deadline: a.num("deadline")?,
            kinds: a.num("kinds")? as u32,
            max: a.num("max")?,
            script: a.opt_path("script"),
            idle_us: a.num("idle_us")?,
        })
    }
}

/// Entry point of the writer child process.
pub fn child_main(args: &[String]) -> i32 {
    let cfg = match Args::parse(args).and_then(|a| WriterConfig::from_args(&a)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("torture writer: {e}");
            return 2;
        }
    };
    match run(&cfg) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("torture writer {}: {e}", cfg.id);
            1
        }
    }
}

fn run(cfg: &WriterConfig) -> io::Result<()> {
    let lock = File::open(&cfg.lock)?;
    let mut log = BufWriter::new(File::create(&cfg.log)?);
    let mut ex = Executor::new(cfg);
    if let Some(script) = &cfg.script {
        // Replay: same ops, same order, same spacing in time.
        let ops: Vec<Logged> = io::BufReader::new(File::open(script)?)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| Logged::parse(&l))
            .collect();
        let base = now();
        let t0 = ops.first().map_or(0, |l| l.start);
        for l in ops {
            let due = base + (l.start - t0);
            // Sleep while far from the due time, spin the last 200 us.
            loop {
                let left = due.saturating_sub(now());
                if left == 0 {
                    break;
                }
                if left > 200_000 {
                    std::thread::sleep(std::time::Duration::from_nanos(left - 150_000));
                } else {
                    std::hint::spin_loop();
                }
            }
            let rec = ex.locked(&lock, |_size| Some(l.op.clone()))?;
            if let Some(rec) = rec {
                writeln!(log, "{rec}")?;
            }
        }
        return log.flush();
    }
    let mut rng = Rng::new(cfg.seed);
    let mut counter: u64 = 0;
    let mut done = 0;
    while done < cfg.ops && now() < cfg.deadline {
        if done % 32 == 0 && cfg.stop.exists() {
            break;
        }
        counter += 1;
        let version = ((cfg.round as u64) << 32) | ((cfg.id as u64) << 24) | counter;
        let max = cfg.max;
        let kinds = cfg.kinds;
        let rec = ex.locked(&lock, |size| {
            (0..50).find_map(|_| generate(&mut rng, kinds, size, max, version))
        })?;
        if let Some(rec) = rec {
            writeln!(log, "{rec}")?;
            done += 1;
        }
        // Now and then leave the file closed for a moment: strategies that
        // refuse to map while a writer holds the file open (Lease, Guard)
        // get their chance, and their writers then have to wait on them.
        if cfg.idle_us > 0 && rng.chance(1, 4) {
            std::thread::sleep(std::time::Duration::from_micros(rng.below(cfg.idle_us)));
        }
    }
    log.flush()
}

/// Runs ops against the file.
struct Executor {
    file: PathBuf,
    link: PathBuf,
    id: u32,
    uring: Option<io_uring::IoUring>,
}

fn errno(e: &io::Error) -> i64 {
    -(e.raw_os_error().unwrap_or(libc::EIO) as i64)
}

impl Executor {
    fn new(cfg: &WriterConfig) -> Executor {
        Executor {
            file: cfg.file.clone(),
            link: cfg.link.clone(),
            id: cfg.id,
            uring: None,
        }
    }

    /// Takes the writers' lock, reads the size, asks `pick` for an op, runs
    /// it and returns its log record.
    fn locked(
        &mut self,
        lock: &File,
        pick: impl FnOnce(u64) -> Option<Op>,
    ) -> io::Result<Option<Logged>> {
        rustix::fs::flock(lock, FlockOperation::LockExclusive)?;
        let out = (|| {
            let size = std::fs::metadata(&self.file)?.len();
            let Some(op) = pick(size) else {
                return Ok(None);
            };
            let start = now();
            let result = match self.exec(&op, size) {
                Ok(n) => n as i64,
                Err(e) => errno(&e),
            };
            let end = now();
            Ok(Some(Logged {
                op,
                size_before: size,
                start,
                end,
                result,
                writer: self.id,
            }))
        })();
        rustix::fs::flock(lock, FlockOperation::Unlock)?;
        out
    }

    fn open(&self, op: &Op, o: &mut OpenOptions) -> io::Result<File> {
        o.open(if op.link { &self.link } else { &self.file })
    }

    /// Runs `op` on a file of `size` bytes; returns the byte count the model
    /// needs (written or copied).
    fn exec(&mut self, op: &Op, size: u64) -> io::Result<u64> {
        let data = |off: u64, len: u64| {
            let mut b = vec![0u8; len as usize];
            stamp::fill(&mut b, off, op.version);
            b
        };
        let w = || {
            let mut o = OpenOptions::new();
            o.write(true);
            o
        };
        match op.kind {
            Kind::Write => {
                let mut f = self.open(op, &mut w())?;
                f.seek(SeekFrom::Start(op.off))?;
                f.write_all(&data(op.off, op.len))?;
                Ok(op.len)
            }
            Kind::Pwrite => {
                let f = self.open(op, &mut w())?;
                f.write_all_at(&data(op.off, op.len), op.off)?;
                Ok(op.len)
            }
            Kind::Writev => {
                let mut f = self.open(op, &mut w())?;
                f.seek(SeekFrom::Start(op.off))?;
                let buf = data(op.off, op.len);
                // Cut into up to four pieces at chunk boundaries.
                let mut rng = Rng::new(op.src);
                let chunks = buf.len() / stamp::CHUNK;
                let mut cuts: Vec<usize> = (0..rng.below(4))
                    .map(|_| rng.below(chunks as u64 + 1) as usize * stamp::CHUNK)
                    .collect();
                cuts.push(0);
                cuts.push(buf.len());
                cuts.sort_unstable();
                cuts.dedup();
                let mut slices: Vec<IoSlice<'_>> = cuts
                    .windows(2)
                    .map(|w| IoSlice::new(&buf[w[0]..w[1]]))
                    .collect();
                let mut bufs = &mut slices[..];
                while !bufs.is_empty() {
                    let n = f.write_vectored(bufs)?;
                    if n == 0 {
                        return Err(io::ErrorKind::WriteZero.into());
                    }
                    IoSlice::advance_slices(&mut bufs, n);
                }
                Ok(op.len)
            }
            Kind::Append => {
                let mut f = self.open(op, OpenOptions::new().append(true))?;
                f.write_all(&data(size, op.len))?;
                Ok(op.len)
            }
            Kind::Truncate => {
                self.open(op, &mut w())?.set_len(op.len)?;
                Ok(0)
            }
            Kind::OTrunc => {
                let mut f = self.open(op, w().truncate(true))?;
                f.write_all(&data(0, op.len))?;
                Ok(op.len)
            }
            Kind::RdOnlyTrunc => {
                // std refuses .truncate(true) without write access; the flag
                // itself is what this op is about.
                drop(self.open(
                    op,
                    OpenOptions::new().read(true).custom_flags(libc::O_TRUNC),
                )?);
                let mut f = self.open(op, &mut w())?;
                f.write_all(&data(0, op.len))?;
                Ok(op.len)
            }
            Kind::Punch | Kind::ZeroRange | Kind::Collapse | Kind::Insert => {
                let mode = match op.kind {
                    Kind::Punch => FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                    Kind::ZeroRange => FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE,
                    Kind::Collapse => FallocateFlags::COLLAPSE_RANGE,
                    _ => FallocateFlags::INSERT_RANGE,
                };
                let f = self.open(op, &mut w())?;
                rustix::fs::fallocate(&f, mode, op.off, op.len)?;
                Ok(op.len)
            }
            Kind::CopyRange => {
                let f = self.open(op, OpenOptions::new().read(true).write(true))?;
                let (mut src, mut dst, mut done) = (op.src, op.off, 0u64);
                while done < op.len {
                    let n = rustix::fs::copy_file_range(
                        &f,
                        Some(&mut src),
                        &f,
                        Some(&mut dst),
                        (op.len - done) as usize,
                    )?;
                    if n == 0 {
                        break;
                    }
                    done += n as u64;
                }
                Ok(done)
            }
            Kind::CloneRange => {
                let f = self.open(op, OpenOptions::new().read(true).write(true))?;
                clone_range(&f, op.src, op.len, op.off)?;
                Ok(op.len)
            }
            Kind::Direct => {
                let f = self.open(op, w().custom_flags(libc::O_DIRECT))?;
                // O_DIRECT needs an aligned buffer: over-allocate and offset.
                let mut raw = vec![0u8; op.len as usize + PAGE];
                let skew = raw.as_ptr().align_offset(PAGE);
                let buf = &mut raw[skew..skew + op.len as usize];
                stamp::fill(buf, op.off, op.version);
                f.write_all_at(buf, op.off)?;
                Ok(op.len)
            }
            Kind::Uring => {
                let f = self.open(op, &mut w())?;
                let buf = data(op.off, op.len);
                self.uring_write(&f, &buf, op.off)?;
                Ok(op.len)
            }
            Kind::MmapStore => {
                let f = self.open(op, OpenOptions::new().read(true).write(true))?;
                let map_off = op.off / PAGE as u64 * PAGE as u64;
                let map_len = (op.off + op.len - map_off) as usize;
                let buf = data(op.off, op.len);
                // SAFETY: a fresh shared mapping of a range inside the file
                // (the generator keeps off + len <= size, and every other
                // writer is shut out by the lock, so the file cannot shrink
                // under it); nothing else in this process uses the address
                // range; it is unmapped below.
                unsafe {
                    let p = rustix::mm::mmap(
                        std::ptr::null_mut(),
                        map_len,
                        rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                        rustix::mm::MapFlags::SHARED,
                        &f,
                        map_off,
                    )?;
                    let dst = (p as *mut u8).add((op.off - map_off) as usize);
                    std::ptr::copy_nonoverlapping(buf.as_ptr(), dst, buf.len());
                    rustix::mm::munmap(p, map_len)?;
                }
                Ok(op.len)
            }
        }
    }

    fn uring_write(&mut self, f: &File, buf: &[u8], off: u64) -> io::Result<()> {
        if self.uring.is_none() {
            self.uring = Some(io_uring::IoUring::new(4)?);
        }
        let ring = self.uring.as_mut().unwrap();
        let mut done = 0usize;
        while done < buf.len() {
            let rest = &buf[done..];
            let sqe = io_uring::opcode::Write::new(
                io_uring::types::Fd(f.as_raw_fd()),
                rest.as_ptr(),
                rest.len() as u32,
            )
            .offset(off + done as u64)
            .build();
            // SAFETY: the buffer and the fd outlive the operation: we wait
            // for its completion before returning or touching either.
            unsafe { ring.submission().push(&sqe) }
                .map_err(|_| io::Error::other("io_uring queue full"))?;
            ring.submit_and_wait(1)?;
            let cqe = ring
                .completion()
                .next()
                .ok_or_else(|| io::Error::other("io_uring: no completion"))?;
            match cqe.result() {
                r if r < 0 => return Err(io::Error::from_raw_os_error(-r)),
                0 => return Err(io::ErrorKind::WriteZero.into()),
                r => done += r as usize,
            }
        }
        Ok(())
    }
}

/// `ioctl(dst, FICLONERANGE, {src_fd, src_offset, src_length, dest_offset})`.
/// rustix wraps only `FICLONE`, so this one goes through libc.
pub fn clone_range(f: &File, src: u64, len: u64, dst: u64) -> io::Result<()> {
    let arg = libc::file_clone_range {
        src_fd: f.as_raw_fd() as i64,
        src_offset: src,
        src_length: len,
        dest_offset: dst,
    };
    // SAFETY: FICLONERANGE reads one `file_clone_range` through the pointer,
    // which points to a live, initialized struct for the duration of the call.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::FICLONERANGE, &arg) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
