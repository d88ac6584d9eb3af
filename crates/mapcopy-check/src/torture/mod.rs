//! The oracle: seeded random writers race seeded random readers, and a
//! checker proves S1–S3 from what the readers saw.
//!
//! * [`stamp`]: every 64-byte chunk the writers write names its page and
//!   version, so any page read back tells where it came from, or that it is
//!   torn.
//! * [`op`]: the writers' operations (every modification kind of the
//!   contract), their generator and log format.
//! * [`writer`] and [`reader`]: the child processes (started with
//!   [`crate::child::command`]).
//! * [`model`]: the reference model and the checker.
//!
//! A run ([`run`]) is a sequence of rounds. In each round `W` writer
//! processes apply ops to one file, one op at a time under a shared lock,
//! each op logged with its `CLOCK_MONOTONIC` start and end, while `R` reader
//! processes map the file over and over, touch pages in random order with
//! random pauses, and re-read them. At the end of the round the parent
//! replays the op log into the model, checks the file's bytes against the
//! model (so the model is known exact), and judges every page every reader
//! saw:
//!
//! * **S1** (`stale`): the page held content the file did not have at any
//!   instant of `[T_map, T_first_touch]` (a mix of before and after a
//!   `MAP_SHARED` store running then is content the file had: such stores
//!   are not atomic for the file itself);
//! * **torn**: a mix of contents the file had in that window (reported
//!   apart; a strategy whose probe entry says it lacks per-page atomicity
//!   against a concurrent `write()` — `Eager` and `Lazy` today — is not
//!   failed by it);
//! * **S2** (`changed`): a re-read differed from the first read;
//! * **S3** (`signal`): a reader was killed by a signal (SIGBUS);
//! * `model`: the file disagrees with the model (a bug in the oracle or the
//!   filesystem), `hang`: a process had to be killed.
//!
//! ```no_run
//! use mapcopy_check::torture::{Config, Target, run};
//! mapcopy_check::child::dispatch();
//! let dir = tempfile::tempdir().unwrap();
//! let mut cfg = Config::new(Target::Private, dir.path());
//! cfg.ops = Some(10_000);
//! let stats = run(&cfg, &mut |_| {}).unwrap();
//! assert!(stats.violations() > 0, "plain MAP_PRIVATE must be caught");
//! ```

pub mod model;
pub mod op;
pub mod reader;
pub mod stamp;
pub mod writer;

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use mapcopy::Strategy;

use self::model::{Model, Timelines, Verdict};
use self::op::{Kind, Logged, Rng};
use self::stamp::{PAGE, Runs};

/// CLOCK_MONOTONIC in nanoseconds: the one clock all processes share.
pub fn now() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// What the readers map with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A mapcopy strategy.
    Strategy(Strategy),
    /// Plain `MAP_PRIVATE`: the control, which must fail (S2, S3).
    Private,
    /// A second control, for S1: one copy of the file read when the reader
    /// starts, handed out again for every later mapping (a snapshot older
    /// than `T_map`). Must fail with S1 (`stale`) violations.
    StaleCopy,
}

impl Target {
    /// `eager`, `lazy`, ..., or `private`.
    pub fn name(&self) -> &'static str {
        match self {
            Target::Strategy(s) => s.name(),
            Target::Private => "private",
            Target::StaleCopy => "stale-copy",
        }
    }

    /// Parses [`Target::name`].
    pub fn parse(s: &str) -> Result<Target, mapcopy::Error> {
        if s == "private" {
            return Ok(Target::Private);
        }
        if s == "stale-copy" {
            return Ok(Target::StaleCopy);
        }
        s.parse().map(Target::Strategy)
    }

    /// Whether the target documents that a page copied while a `write()`
    /// runs may be torn (a property a strategy may lack, as `mapcopy::probe` lists). Torn
    /// pages are reported for every target but fail only the others.
    /// Read from what `mapcopy::probe` says the strategy lacks, so it stays
    /// in step with the library's documentation.
    pub fn documents_torn(&self) -> bool {
        let Target::Strategy(s) = self else {
            return false;
        };
        mapcopy::probe(None)
            .strategies
            .iter()
            .filter(|p| p.strategy == *s)
            .flat_map(|p| p.lacks.iter())
            .any(|l| l.starts_with("per-page atomicity against a concurrent write()"))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `key=value` arguments of the child processes.
pub(crate) struct Args(BTreeMap<String, String>);

impl Args {
    pub(crate) fn parse(args: &[String]) -> Result<Args, String> {
        let mut m = BTreeMap::new();
        for a in args {
            let (k, v) = a
                .split_once('=')
                .ok_or_else(|| format!("bad argument {a:?}"))?;
            m.insert(k.to_string(), v.to_string());
        }
        Ok(Args(m))
    }
    pub(crate) fn get(&self, k: &str) -> Result<String, String> {
        self.0
            .get(k)
            .cloned()
            .ok_or_else(|| format!("missing argument {k}"))
    }
    pub(crate) fn num(&self, k: &str) -> Result<u64, String> {
        self.get(k)?
            .parse()
            .map_err(|e| format!("argument {k}: {e}"))
    }
    pub(crate) fn path(&self, k: &str) -> Result<PathBuf, String> {
        self.get(k).map(PathBuf::from)
    }
    pub(crate) fn opt_path(&self, k: &str) -> Option<PathBuf> {
        self.0.get(k).map(PathBuf::from)
    }
}

/// A torture run's settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// What the readers map with.
    pub target: Target,
    /// Directory for the file and the logs (the filesystem under test).
    pub dir: PathBuf,
    /// Stop after this long ...
    pub seconds: Option<f64>,
    /// ... or after this many writer ops (whichever comes first; with
    /// neither, 10 s).
    pub ops: Option<u64>,
    /// Master seed: every writer's and reader's stream derives from it.
    pub seed: u64,
    /// Writer processes.
    pub writers: u32,
    /// Reader processes.
    pub readers: u32,
    /// Largest file size, in pages.
    pub max_pages: u64,
    /// Length of a round.
    pub round: Duration,
    /// Writer ops per round at most (all writers together).
    pub round_ops: u64,
    /// Kinds the writers may use; `None`: every kind this filesystem
    /// supports ([`supported_kinds`]).
    pub kinds: Option<u32>,
    /// Where to write the replay file on the first violation.
    pub replay_out: Option<PathBuf>,
    /// Stop at the end of the first round with a violation.
    pub stop_on_violation: bool,
    /// Writers pause with the file closed after a quarter of their ops, up
    /// to this many microseconds (0: never), so strategies that refuse to
    /// map while a writer holds the file open get to map.
    pub writer_idle_us: u64,
}

impl Config {
    /// Defaults: 2 writers, 2 readers, files up to 64 pages, seed 1.
    pub fn new(target: Target, dir: &Path) -> Config {
        Config {
            target,
            dir: dir.to_path_buf(),
            seconds: None,
            ops: None,
            seed: 1,
            writers: 2,
            readers: 2,
            max_pages: 64,
            round: Duration::from_millis(1000),
            round_ops: 50_000,
            kinds: None,
            replay_out: None,
            stop_on_violation: false,
            writer_idle_us: 1000,
        }
    }
}

/// What a run found.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Rounds run.
    pub rounds: u64,
    /// Writer ops applied (failed ones included).
    pub ops: u64,
    /// Ops per kind.
    pub ops_by_kind: BTreeMap<&'static str, u64>,
    /// Time spent inside ops per kind (ns, summed over ops).
    pub op_ns_by_kind: BTreeMap<&'static str, u64>,
    /// Writer ops that failed (`-errno`), per kind and errno.
    pub op_errors: BTreeMap<String, u64>,
    /// Mappings made by readers.
    pub maps: u64,
    /// Map calls that failed, per error kind.
    pub map_errors: BTreeMap<String, u64>,
    /// Pages judged at first touch.
    pub pages: u64,
    /// S1 violations: a page held content the file did not have in its window.
    pub stale: u64,
    /// Torn pages.
    pub torn: u64,
    /// Pages seen mid-way through a store through a `MAP_SHARED` mapping
    /// (a state the file really had; legal, counted for information).
    pub mid_store: u64,
    /// S2 violations: a re-read differed.
    pub changed: u64,
    /// S3 violations: a reader killed by a signal.
    pub signals: u64,
    /// The file disagreed with the model, or a log was inconsistent.
    pub model: u64,
    /// Processes killed because they did not finish.
    pub hangs: u64,
    /// Whether torn pages count as failures for this target.
    pub torn_counts: bool,
    /// Up to ten violation descriptions.
    pub examples: Vec<String>,
    /// Up to three descriptions of torn pages the target documents (not
    /// violations).
    pub torn_examples: Vec<String>,
    /// Time from the start of the run to the end of the first round that
    /// showed a violation (when the checker reported it).
    pub first_violation_after: Option<Duration>,
    /// Time from the start of the run to the first violating event itself
    /// (the reader's touch, re-read or last event before its death).
    pub first_violation_event: Option<Duration>,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Replay file written, if any.
    pub replay: Option<PathBuf>,
    /// Kinds the filesystem did not allow, with the reason.
    pub skipped_kinds: Vec<(Kind, String)>,
}

impl Stats {
    /// Violations that fail this target: S1 + S2 + S3 + model + hangs, plus
    /// torn pages unless the target documents them.
    pub fn violations(&self) -> u64 {
        self.stale
            + self.changed
            + self.signals
            + self.model
            + self.hangs
            + if self.torn_counts { self.torn } else { 0 }
    }

    fn example(&mut self, s: String) {
        if self.examples.len() < 10 {
            self.examples.push(s);
        }
    }
}

/// Which op kinds the filesystem under `dir` supports, by trying each on a
/// scratch file; the others come back with the reason.
pub fn supported_kinds(dir: &Path) -> io::Result<(u32, Vec<(Kind, String)>)> {
    use rustix::fs::FallocateFlags as F;
    let path = dir.join(".torture-probe");
    let mut mask = Kind::all_mask();
    let mut skipped = Vec::new();
    let fresh = || -> io::Result<File> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        f.write_all_at(&vec![1u8; 4 * PAGE], 0)?;
        Ok(f)
    };
    let p = PAGE as u64;
    type Try<'a> = Box<dyn Fn(&File) -> io::Result<()> + 'a>;
    let tries: [(Kind, Try<'_>); 6] = [
        (
            Kind::Punch,
            Box::new(|f| {
                Ok(rustix::fs::fallocate(
                    f,
                    F::PUNCH_HOLE | F::KEEP_SIZE,
                    p,
                    p,
                )?)
            }),
        ),
        (
            Kind::ZeroRange,
            Box::new(|f| {
                Ok(rustix::fs::fallocate(
                    f,
                    F::ZERO_RANGE | F::KEEP_SIZE,
                    p,
                    p,
                )?)
            }),
        ),
        (
            Kind::Collapse,
            Box::new(|f| Ok(rustix::fs::fallocate(f, F::COLLAPSE_RANGE, p, p)?)),
        ),
        (
            Kind::Insert,
            Box::new(|f| Ok(rustix::fs::fallocate(f, F::INSERT_RANGE, p, p)?)),
        ),
        (
            Kind::CloneRange,
            Box::new(|f| writer::clone_range(f, 0, p, 2 * p)),
        ),
        (
            Kind::Direct,
            Box::new(|_| {
                use std::os::unix::fs::OpenOptionsExt;
                let f = OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(&path)?;
                let mut raw = vec![0u8; 2 * PAGE];
                let skew = raw.as_ptr().align_offset(PAGE);
                f.write_all_at(&raw[skew..skew + PAGE], 0)?;
                raw[0] = 0;
                Ok(())
            }),
        ),
    ];
    for (kind, t) in tries {
        if let Err(e) = fresh().and_then(|f| t(&f)) {
            mask &= !kind.bit();
            skipped.push((kind, e.to_string()));
        }
    }
    if let Err(e) = io_uring::IoUring::new(2) {
        mask &= !Kind::Uring.bit();
        skipped.push((Kind::Uring, e.to_string()));
    }
    let _ = fs::remove_file(&path);
    Ok((mask, skipped))
}

/// Op kinds `target` documents it does not survive, from what
/// `mapcopy::probe` says it lacks, with the documented reason.
pub fn documented_gaps(target: Target) -> Vec<(Kind, String)> {
    let Target::Strategy(s) = target else {
        return Vec::new();
    };
    let gaps = [("open(O_RDONLY|O_TRUNC)", Kind::RdOnlyTrunc)];
    let mut out = Vec::new();
    for p in mapcopy::probe(None)
        .strategies
        .iter()
        .filter(|p| p.strategy == s)
    {
        for lack in &p.lacks {
            for (prefix, kind) in gaps {
                if lack.starts_with(prefix) {
                    out.push((kind, format!("{s} documents it lacks this: {lack}")));
                }
            }
        }
    }
    out
}

/// Progress of a run, reported once per round.
#[derive(Clone, Debug)]
pub struct Progress<'a> {
    /// The target.
    pub target: Target,
    /// Totals so far.
    pub stats: &'a Stats,
    /// Fraction done, 0..=1.
    pub done: f64,
}

struct Paths {
    file: PathBuf,
    link: PathBuf,
    lock: PathBuf,
    stop: PathBuf,
    logs: PathBuf,
}

impl Paths {
    fn new(dir: &Path, target: Target) -> io::Result<Paths> {
        let base = dir.join(format!("torture-{}-{}", target.name(), std::process::id()));
        fs::create_dir_all(&base)?;
        Ok(Paths {
            file: base.join("file"),
            link: base.join("link"),
            lock: base.join("lock"),
            stop: base.join("stop"),
            logs: base,
        })
    }
}

/// Writes `model`'s bytes to `path` (replacing it, keeping its inode so the
/// hard link stays valid).
fn restore(path: &Path, model: &Model) -> io::Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let mut buf = vec![0u8; model.size as usize];
    for (p, chunk) in buf.chunks_mut(PAGE).enumerate() {
        stamp::render(&model.pages[p], chunk);
    }
    f.write_all_at(&buf, 0)?;
    Ok(())
}

fn wait_until(child: &mut Child, deadline: Instant) -> io::Result<Option<ExitStatus>> {
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(Some(st));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn read_lines(path: &Path) -> Vec<String> {
    File::open(path)
        .map(|f| BufReader::new(f).lines().map_while(Result::ok).collect())
        .unwrap_or_default()
}

/// One reader's first touches, for judging and for replay.
struct ReaderLog {
    seed: u64,
    lines: Vec<String>,
    status: Option<ExitStatus>,
}

/// Judges the reader logs of one round against the timelines. Returns the
/// time of the earliest violation seen (for cutting the replay log).
fn judge(
    stats: &mut Stats,
    tl: &Timelines,
    ops: &[Logged],
    readers: &[ReaderLog],
) -> (Option<(u64, u64)>, Option<u64>) {
    let mut first: Option<(u64, u64)> = None; // (replay cut time, reader seed)
    let mut event: Option<u64> = None; // earliest violating event seen
    let documented_torn = !stats.torn_counts;
    let note = |t: u64, seed: u64, first: &mut Option<(u64, u64)>| {
        if first.is_none_or(|(ft, _)| t < ft) {
            *first = Some((t, seed));
        }
    };
    for r in readers {
        let mut t_map = 0u64;
        let mut last_t = 0u64;
        for line in &r.lines {
            let mut it = line.splitn(4, ' ');
            let tag = it.next().unwrap_or("");
            let a = it.next().unwrap_or("");
            let b = it.next().unwrap_or("");
            let c = it.next().unwrap_or("");
            match tag {
                "M" => {
                    stats.maps += 1;
                    t_map = b.parse().unwrap_or(0);
                    last_t = t_map;
                }
                "E" => {
                    // Group by message with the numbers taken out.
                    let mut key = format!("{b}: ");
                    let mut in_num = false;
                    for ch in c.chars() {
                        if ch.is_ascii_digit() {
                            if !in_num {
                                key.push('N');
                            }
                            in_num = true;
                        } else {
                            key.push(ch);
                            in_num = false;
                        }
                    }
                    *stats.map_errors.entry(key).or_default() += 1;
                }
                "T" => {
                    let (Ok(p), Ok(t), Some(seen)) =
                        (a.parse::<usize>(), b.parse::<u64>(), Runs::parse(c))
                    else {
                        stats.model += 1;
                        stats.example(format!("unreadable reader log line {line:?}"));
                        continue;
                    };
                    last_t = t;
                    stats.pages += 1;
                    let (v, cands) = tl.judge(p, t_map, t, &seen);
                    match v {
                        Verdict::Ok => {}
                        Verdict::MidStore => stats.mid_store += 1,
                        Verdict::Torn | Verdict::Stale => {
                            let torn = v == Verdict::Torn;
                            if torn {
                                stats.torn += 1;
                            } else {
                                stats.stale += 1;
                            }
                            if !torn || !documented_torn {
                                note(t, r.seed, &mut first);
                            }
                            let cands: Vec<String> = cands.iter().map(|c| c.to_string()).collect();
                            let during: Vec<String> = ops
                                .iter()
                                .filter(|l| l.end >= t_map && l.start <= t)
                                .take(6)
                                .map(|l| l.to_string())
                                .collect();
                            let text = format!(
                                "{} page {p}: mapped at {t_map}, first touched at {t}, saw {seen}; \
                                 the file held one of [{}] in that window; ops then: [{}]",
                                if torn { "torn" } else { "S1 stale" },
                                cands.join(" | "),
                                during.join("; ")
                            );
                            if torn && documented_torn {
                                if stats.torn_examples.len() < 3 {
                                    stats.torn_examples.push(text);
                                }
                            } else {
                                stats.example(text);
                            }
                        }
                    }
                }
                "D" => {
                    stats.changed += 1;
                    let t = b.parse().unwrap_or(last_t);
                    note(t, r.seed, &mut first);
                    stats.example(format!(
                        "S2 page {a} changed after it was read (mapped at {t_map}): now {c}"
                    ));
                }
                _ => {}
            }
        }
        match r.status {
            Some(st) if st.signal().is_some() => {
                stats.signals += 1;
                // When it died is unknown (after its last event): keep every
                // op of the round in the replay.
                note(u64::MAX, r.seed, &mut first);
                event = Some(event.map_or(last_t, |e| e.min(last_t)));
                stats.example(format!(
                    "S3 reader killed by signal {} (last event at {last_t})",
                    st.signal().unwrap()
                ));
            }
            Some(st) if !st.success() => {
                stats.model += 1;
                stats.example(format!("reader failed: {st}"));
            }
            None => {
                stats.hangs += 1;
                note(u64::MAX, r.seed, &mut first);
                event = Some(event.map_or(last_t, |e| e.min(last_t)));
                stats.example("reader did not finish; killed".into());
            }
            _ => {}
        }
    }
    if let Some((t, _)) = first.filter(|(t, _)| *t != u64::MAX) {
        event = Some(event.map_or(t, |e| e.min(t)));
    }
    (first, event)
}

/// Runs the torture for `cfg.target`, calling `progress` after each round.
pub fn run(cfg: &Config, progress: &mut dyn FnMut(Progress<'_>)) -> Result<Stats, String> {
    let started = Instant::now();
    let started_ns = now();
    let mut stats = Stats {
        torn_counts: !cfg.target.documents_torn(),
        ..Stats::default()
    };
    let paths =
        Paths::new(&cfg.dir, cfg.target).map_err(|e| format!("cannot create work dir: {e}"))?;
    let result = run_rounds(cfg, &paths, &mut stats, (started, started_ns), progress);
    let _ = fs::remove_dir_all(&paths.logs);
    stats.elapsed = started.elapsed();
    result.map(|()| stats)
}

fn run_rounds(
    cfg: &Config,
    paths: &Paths,
    stats: &mut Stats,
    (started, started_ns): (Instant, u64),
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<(), String> {
    let io = |what: &str| {
        let what = what.to_string();
        move |e: io::Error| format!("{what}: {e}")
    };
    let (mask, skipped) = match cfg.kinds {
        Some(m) => (m, Vec::new()),
        None => supported_kinds(&paths.logs).map_err(io("probing op kinds"))?,
    };
    stats.skipped_kinds = skipped;
    // A modification a strategy documents it cannot survive (its probe
    // entry's `lacks`) is left out for it, and said so.
    // (Not when the caller chose the kinds.)
    let mut mask = mask;
    let gaps = if cfg.kinds.is_some() {
        Vec::new()
    } else {
        documented_gaps(cfg.target)
    };
    for (kind, why) in gaps {
        if mask & kind.bit() != 0 {
            mask &= !kind.bit();
            stats.skipped_kinds.push((kind, why));
        }
    }
    let max = cfg.max_pages.max(4) * PAGE as u64;
    let mut rng = Rng::new(cfg.seed);
    let init_size = rng.range(1, max / PAGE as u64 / 2) * PAGE as u64;
    let mut model = Model::new(init_size, max, 1);
    restore(&paths.file, &model).map_err(io("writing the file"))?;
    let _ = fs::remove_file(&paths.link);
    fs::hard_link(&paths.file, &paths.link).map_err(io("linking the file"))?;
    File::create(&paths.lock).map_err(io("lock file"))?;
    let time_limit = match (cfg.seconds, cfg.ops) {
        (Some(s), _) => Some(Duration::from_secs_f64(s)),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    let mut round = 0u32;
    loop {
        let elapsed = started.elapsed();
        let ops_left = cfg.ops.map(|n| n.saturating_sub(stats.ops));
        if ops_left == Some(0) || time_limit.is_some_and(|t| elapsed >= t) {
            break;
        }
        round += 1;
        let round_len = match time_limit {
            Some(t) => cfg.round.min(t - elapsed).max(Duration::from_millis(50)),
            None => cfg.round,
        };
        let round_ops = ops_left.unwrap_or(u64::MAX).min(cfg.round_ops);
        let initial = model.clone();
        let _ = fs::remove_file(&paths.stop);
        let deadline = now() + round_len.as_nanos() as u64;
        let per_writer = round_ops.div_ceil(cfg.writers as u64);
        let mut writers = Vec::new();
        for w in 0..cfg.writers {
            let wc = writer::WriterConfig {
                file: paths.file.clone(),
                link: paths.link.clone(),
                lock: paths.lock.clone(),
                log: paths.logs.join(format!("w{w}.log")),
                stop: paths.stop.clone(),
                seed: stamp::mix(cfg.seed ^ stamp::mix(((round as u64) << 16) | w as u64)),
                id: w + 1,
                round,
                ops: per_writer,
                deadline,
                kinds: mask,
                max,
                script: None,
                idle_us: cfg.writer_idle_us,
            };
            let child = crate::child::command("torture-writer", &wc.to_args())
                .spawn()
                .map_err(io("starting a writer"))?;
            writers.push((wc, child));
        }
        let mut readers = Vec::new();
        for r in 0..cfg.readers {
            let rc = reader::ReaderConfig {
                file: paths.file.clone(),
                target: cfg.target,
                seed: stamp::mix(cfg.seed ^ stamp::mix(((round as u64) << 16) | 0x8000 | r as u64)),
                log: paths.logs.join(format!("r{r}.log")),
                stop: paths.stop.clone(),
                deadline: deadline + 30_000_000_000,
                cycles: 0,
                max,
            };
            let child = crate::child::command("torture-reader", &rc.to_args())
                .spawn()
                .map_err(io("starting a reader"))?;
            readers.push((rc, child));
        }
        let mut ops: Vec<Logged> = Vec::new();
        let writer_deadline = Instant::now() + round_len + Duration::from_secs(30);
        for (wc, mut child) in writers {
            let st = wait_until(&mut child, writer_deadline).map_err(io("waiting for a writer"))?;
            match st {
                None => {
                    stats.hangs += 1;
                    stats.example(format!("writer {} did not finish; killed", wc.id));
                }
                Some(st) if !st.success() => {
                    stats.model += 1;
                    stats.example(format!("writer {} failed: {st}", wc.id));
                }
                _ => {}
            }
            for line in read_lines(&wc.log) {
                match Logged::parse(&line) {
                    Some(l) => ops.push(l),
                    None => {
                        stats.model += 1;
                        stats.example(format!("unreadable writer log line {line:?}"));
                    }
                }
            }
        }
        File::create(&paths.stop).map_err(io("stop file"))?;
        let reader_deadline = Instant::now() + Duration::from_secs(20);
        let mut rlogs = Vec::new();
        for (rc, mut child) in readers {
            let status =
                wait_until(&mut child, reader_deadline).map_err(io("waiting for a reader"))?;
            rlogs.push(ReaderLog {
                seed: rc.seed,
                lines: read_lines(&rc.log),
                status,
            });
        }
        ops.sort_by_key(|l| l.start);
        stats.rounds += 1;
        stats.ops += ops.len() as u64;
        for l in &ops {
            *stats.ops_by_kind.entry(l.op.kind.name()).or_default() += 1;
            *stats.op_ns_by_kind.entry(l.op.kind.name()).or_default() += l.end - l.start;
            if l.result < 0 {
                *stats
                    .op_errors
                    .entry(format!("{} errno {}", l.op.kind.name(), -l.result))
                    .or_default() += 1;
            }
        }
        let before = stats.violations();
        let (first, event) = match Timelines::build(&mut model, &ops) {
            Err(e) => {
                stats.model += 1;
                stats.example(format!("op log inconsistent: {e}"));
                (None, None)
            }
            Ok(tl) => {
                let bytes = fs::read(&paths.file).map_err(io("reading the file back"))?;
                if let Some(d) = model.diff(&bytes) {
                    stats.model += 1;
                    stats.example(format!("round {round}: file differs from the model: {d}"));
                }
                judge(stats, &tl, &ops, &rlogs)
            }
        };
        // Carry on from the file's real state even if the model diverged.
        if stats.violations() > before {
            if stats.first_violation_after.is_none() {
                stats.first_violation_after = Some(started.elapsed());
                stats.first_violation_event =
                    event.map(|t| Duration::from_nanos(t.saturating_sub(started_ns)));
            }
            if let (Some(out), None, Some((t, seed))) = (&cfg.replay_out, &stats.replay, first) {
                let cut: Vec<&Logged> = ops.iter().filter(|l| l.start <= t).collect();
                match write_replay(out, cfg, round, seed, &initial, &cut, &stats.examples) {
                    Ok(()) => stats.replay = Some(out.clone()),
                    Err(e) => stats.example(format!("could not write replay file: {e}")),
                }
            }
        }
        let done = match (time_limit, cfg.ops) {
            (Some(t), Some(n)) => {
                (started.elapsed().as_secs_f64() / t.as_secs_f64()).max(stats.ops as f64 / n as f64)
            }
            (Some(t), None) => started.elapsed().as_secs_f64() / t.as_secs_f64(),
            (None, Some(n)) => stats.ops as f64 / n as f64,
            (None, None) => 1.0,
        };
        progress(Progress {
            target: cfg.target,
            stats,
            done: done.min(1.0),
        });
        if cfg.stop_on_violation && stats.violations() > 0 {
            break;
        }
        if model
            .diff(&fs::read(&paths.file).map_err(io("reading the file back"))?)
            .is_some()
        {
            // Resynchronize: rewrite the file from the model.
            restore(&paths.file, &model).map_err(io("rewriting the file"))?;
        }
    }
    Ok(())
}

const REPLAY_MAGIC: &str = "mapcopy-torture-replay 1";

fn write_replay(
    out: &Path,
    cfg: &Config,
    round: u32,
    reader_seed: u64,
    initial: &Model,
    ops: &[&Logged],
    examples: &[String],
) -> io::Result<()> {
    let mut f = io::BufWriter::new(File::create(out)?);
    writeln!(f, "{REPLAY_MAGIC}")?;
    writeln!(f, "# seed {} round {round}", cfg.seed)?;
    for e in examples {
        writeln!(f, "# {e}")?;
    }
    writeln!(f, "target {}", cfg.target.name())?;
    writeln!(f, "reader-seed {reader_seed}")?;
    writeln!(f, "max {}", initial.max())?;
    writeln!(f, "size {}", initial.size)?;
    for (p, r) in initial.pages.iter().enumerate() {
        if (p as u64) * (PAGE as u64) < initial.size {
            writeln!(f, "page {p} {r}")?;
        }
    }
    for l in ops {
        writeln!(f, "{l}")?;
    }
    f.flush()
}

/// A parsed replay file.
#[derive(Clone, Debug)]
pub struct Replay {
    /// What the reader mapped with.
    pub target: Target,
    /// Seed of the reader that saw the violation.
    pub reader_seed: u64,
    /// The file at the start of the round.
    pub initial: Model,
    /// The writers' ops up to the violation, in order.
    pub ops: Vec<Logged>,
}

impl Replay {
    /// Reads a file written by a run with [`Config::replay_out`].
    pub fn load(path: &Path) -> Result<Replay, String> {
        let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut lines = text.lines();
        if lines.next() != Some(REPLAY_MAGIC) {
            return Err(format!("{} is not a torture replay file", path.display()));
        }
        let (mut target, mut seed, mut max, mut size) = (None, None, None, None);
        let mut pages = Vec::new();
        let mut ops = Vec::new();
        for line in lines {
            let bad = || format!("bad replay line {line:?}");
            let (tag, rest) = line.split_once(' ').unwrap_or((line, ""));
            match tag {
                "#" | "" => {}
                "target" => target = Some(Target::parse(rest).map_err(|e| e.to_string())?),
                "reader-seed" => seed = Some(rest.parse().map_err(|_| bad())?),
                "max" => max = Some(rest.parse::<u64>().map_err(|_| bad())?),
                "size" => size = Some(rest.parse::<u64>().map_err(|_| bad())?),
                "page" => {
                    let (p, r) = rest.split_once(' ').ok_or_else(bad)?;
                    pages.push((
                        p.parse::<usize>().map_err(|_| bad())?,
                        Runs::parse(r).ok_or_else(bad)?,
                    ));
                }
                "op" => ops.push(Logged::parse(line).ok_or_else(bad)?),
                _ => return Err(bad()),
            }
        }
        let (Some(target), Some(reader_seed), Some(max), Some(size)) = (target, seed, max, size)
        else {
            return Err("replay file lacks target, reader-seed, max or size".into());
        };
        let mut initial = Model::new(0, max, 1);
        initial.size = size;
        for (p, r) in pages {
            *initial.pages.get_mut(p).ok_or("page past max")? = r;
        }
        Ok(Replay {
            target,
            reader_seed,
            initial,
            ops,
        })
    }
}

/// Replays `replay` up to `attempts` times (the same initial file, the same
/// ops in the same order and spacing, the reader with the same seed) in
/// `dir`; returns the stats of the first attempt that shows a violation, or
/// of the last attempt.
pub fn replay(replay: &Replay, dir: &Path, attempts: u32) -> Result<(u32, Stats), String> {
    let target = replay.target;
    let paths = Paths::new(dir, target).map_err(|e| format!("cannot create work dir: {e}"))?;
    let result = (|| {
        let io = |e: io::Error| e.to_string();
        let mut last = Stats::default();
        for attempt in 1..=attempts.max(1) {
            let mut stats = Stats {
                torn_counts: !target.documents_torn(),
                ..Stats::default()
            };
            let mut model = replay.initial.clone();
            let _ = fs::remove_file(&paths.file);
            let _ = fs::remove_file(&paths.link);
            restore(&paths.file, &model).map_err(io)?;
            fs::hard_link(&paths.file, &paths.link).map_err(io)?;
            File::create(&paths.lock).map_err(io)?;
            let _ = fs::remove_file(&paths.stop);
            let script = paths.logs.join("script.log");
            let mut s = String::new();
            for l in &replay.ops {
                s.push_str(&format!("{l}\n"));
            }
            fs::write(&script, s).map_err(io)?;
            let span = match (replay.ops.first(), replay.ops.last()) {
                (Some(a), Some(b)) => b.end - a.start,
                _ => 0,
            };
            let deadline = now() + span + 60_000_000_000;
            let wc = writer::WriterConfig {
                file: paths.file.clone(),
                link: paths.link.clone(),
                lock: paths.lock.clone(),
                log: paths.logs.join("w.log"),
                stop: paths.stop.clone(),
                seed: 0,
                id: 1,
                round: 0,
                ops: u64::MAX,
                deadline,
                kinds: 0,
                max: replay.initial.max(),
                script: Some(script),
                idle_us: 0,
            };
            let rc = reader::ReaderConfig {
                file: paths.file.clone(),
                target,
                seed: replay.reader_seed,
                log: paths.logs.join("r.log"),
                stop: paths.stop.clone(),
                deadline,
                cycles: 0,
                max: replay.initial.max(),
            };
            let mut r = crate::child::command("torture-reader", &rc.to_args())
                .spawn()
                .map_err(io)?;
            let mut w = crate::child::command("torture-writer", &wc.to_args())
                .spawn()
                .map_err(io)?;
            let wst = wait_until(
                &mut w,
                Instant::now() + Duration::from_nanos(span) + Duration::from_secs(60),
            )
            .map_err(io)?;
            if wst.is_none_or(|s| !s.success()) {
                stats.model += 1;
                stats.example(format!("replay writer failed: {wst:?}"));
            }
            File::create(&paths.stop).map_err(io)?;
            let status =
                wait_until(&mut r, Instant::now() + Duration::from_secs(20)).map_err(io)?;
            let mut ops: Vec<Logged> = read_lines(&wc.log)
                .iter()
                .filter_map(|l| Logged::parse(l))
                .collect();
            ops.sort_by_key(|l| l.start);
            stats.ops = ops.len() as u64;
            stats.rounds = 1;
            match Timelines::build(&mut model, &ops) {
                Err(e) => {
                    stats.model += 1;
                    stats.example(format!("op log inconsistent: {e}"));
                }
                Ok(tl) => {
                    let logs = [ReaderLog {
                        seed: rc.seed,
                        lines: read_lines(&rc.log),
                        status,
                    }];
                    judge(&mut stats, &tl, &ops, &logs);
                }
            }
            if stats.violations() > 0 {
                return Ok((attempt, stats));
            }
            last = stats;
        }
        Ok((attempts, last))
    })();
    let _ = fs::remove_dir_all(&paths.logs);
    result
}
