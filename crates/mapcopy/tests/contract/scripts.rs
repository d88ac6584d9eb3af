//! Scripts: map, read some pages, modify from another process, check with the oracle.

use super::*;

#[derive(Clone, Debug)]
pub(super) enum Step {
    Touch(Vec<u64>),
    TouchAll,
    Modify(Modification),
    /// The same, done by the mapping process itself.
    SelfModify(Modification),
}

#[derive(Clone, Debug)]
pub(super) struct Script {
    pub(super) size: usize,
    pub(super) off: u64,
    pub(super) len: Option<usize>,
    pub(super) populate: bool,
    pub(super) steps: Vec<Step>,
}

/// How a script run ended, short of a failure.
pub(super) enum Ran {
    Done,
    /// The strategy refused the mapping with `Unsupported` while a writer
    /// held the file open (allowed: it said so before mapping).
    Refused(String),
    /// A modification is not available on this filesystem.
    Unsupported(String),
}

#[derive(Debug)]
pub(super) enum ScriptError {
    Violation(usize, Violation),
    Other(String),
}

impl std::fmt::Display for ScriptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScriptError::Violation(step, v) => write!(f, "at step {step}: {v}"),
            ScriptError::Other(s) => f.write_str(s),
        }
    }
}

pub(super) fn run_script(
    backend: Backend,
    dir: &Path,
    script: &Script,
) -> Result<Ran, ScriptError> {
    let other = |e: String| ScriptError::Other(e);
    let tf = TestFile::new_in(dir, script.size, 0).map_err(|e| other(format!("test file: {e}")))?;
    let path = tf.path().to_path_buf();
    // Writers whose mapping must exist before ours start now.
    let mut early: Vec<Option<Writer>> = Vec::new();
    for s in &script.steps {
        early.push(match s {
            Step::Modify(m) if m.kind.open_before_map() => match Writer::spawn(m, &path) {
                Ok(w) => Some(w),
                Err(ApplyError::Unsupported(w)) => return Ok(Ran::Unsupported(w)),
                Err(e) => return Err(other(format!("starting the writer for {m}: {e}"))),
            },
            _ => None,
        });
    }
    let holds_open = early.iter().any(Option::is_some);
    let initial = tf.contents().map_err(|e| other(e.to_string()))?;
    let file = tf.open().map_err(|e| other(e.to_string()))?;
    let mapped = match map_with(backend, &file, script.off, script.len, script.populate) {
        Ok(m) => m,
        Err(Ok(e)) if holds_open && e.kind() == ErrorKind::Unsupported => {
            return Ok(Ran::Refused(e.to_string()));
        }
        Err(Ok(e)) => return Err(other(format!("mapping failed: {e}"))),
        Err(Err(e)) => return Err(other(e)),
    };
    let src = mapped.source();
    let len = src.len();
    let expect_len = script
        .len
        .unwrap_or(script.size.saturating_sub(script.off as usize));
    if len != expect_len {
        return Err(other(format!(
            "mapping has {len} bytes, asked for {expect_len}"
        )));
    }
    let mut checker = Checker::new(page(), script.off, len, initial);
    if script.populate {
        checker.snapshotted_at_map();
    }
    for (i, step) in script.steps.iter().enumerate() {
        eprintln!("step {i}: {step:?}");
        let r = match step {
            Step::Touch(pages) => checker.touch(src, pages.iter().copied()),
            Step::TouchAll => checker.touch_all(src),
            Step::Modify(m) | Step::SelfModify(m) => {
                let old = checker.current().to_vec();
                let res = match early[i].take() {
                    Some(w) => w.apply_checked(&old),
                    None if matches!(step, Step::SelfModify(_)) => m.apply_here(&path, &old),
                    None => m.apply_checked(&path, &old),
                };
                match res {
                    Ok(new) => {
                        checker.push_state(new);
                        Ok(())
                    }
                    Err(ApplyError::Unsupported(why)) => {
                        return Ok(Ran::Unsupported(format!("{m}: {why}")));
                    }
                    Err(e) => return Err(other(format!("modification {m}: {e}"))),
                }
            }
        };
        r.map_err(|v| ScriptError::Violation(i, v))?;
    }
    drop(mapped);
    // Which version each page showed when first read (old = state 0).
    let mut counts = vec![0usize; checker.states().len()];
    for pg in checker.pages() {
        if let Some(st) = checker.seen_state(pg) {
            counts[st] += 1;
        }
    }
    eprintln!("pages by the file state they showed when first read: {counts:?}");
    Ok(Ran::Done)
}

/// What a plain MAP_PRIVATE mapping would show when running `script`: the
/// first step at which the checker must flag it, and the violation.
pub(super) fn predict_control(script: &Script) -> Option<(usize, Violation)> {
    let mut state = pattern::bytes(0, 0, script.size);
    let len = script
        .len
        .unwrap_or(script.size.saturating_sub(script.off as usize));
    let mut checker = Checker::new(page(), script.off, len, state.clone());
    for (i, step) in script.steps.iter().enumerate() {
        let src = FollowsFile {
            file: &state,
            off: script.off,
            len,
            page: page(),
        };
        let r = match step {
            Step::Touch(p) => checker.touch(&src, p.iter().copied()),
            Step::TouchAll => checker.touch_all(&src),
            Step::Modify(m) | Step::SelfModify(m) => {
                state = m.model(&state);
                checker.push_state(state.clone());
                Ok(())
            }
        };
        if let Err(v) = r {
            return Some((i, v));
        }
    }
    None
}

pub(super) fn script_outcome(r: Result<Ran, ScriptError>) -> Outcome {
    match r {
        Ok(Ran::Done) => Ok(Completion::Completed),
        Ok(Ran::Refused(why)) => {
            eprintln!("refused before mapping (allowed, a writer held the file open): {why}");
            Ok(Completion::Completed)
        }
        Ok(Ran::Unsupported(why)) => skip(format!("modification not available here: {why}")),
        Err(e) => fail(e),
    }
}

// The standard script for one modification kind.
/// The standard script for one modification kind. With `base` > 0 the
/// file has `base` more bytes in front and everything happens that far in
/// (a huge-page boundary away from the only page read at the start), so
/// lazy strategies meet the modification on pages they have not filled.
pub(super) fn modify_script(kind: Kind, base: u64) -> Script {
    let p = page() as u64;
    let g = 1;
    let shift = match kind {
        Kind::Append | Kind::OpenTrunc | Kind::Cp | Kind::ShellRedirect => 0,
        _ => base,
    };
    let m = |off: u64, len: u64| Modification::new(kind, off + shift, len, g);
    let m1 = match kind {
        Kind::Write => m(p - 10, 2 * p + 20),
        Kind::Pwrite => m(100, 3 * p),
        Kind::Writev => m(2 * p + 7, p + 50),
        Kind::Append => m(0, 5000),
        Kind::FtruncateShrink => m(2 * p + 100, 0),
        Kind::FtruncateGrow => m(7 * p + 5, 0),
        Kind::TruncatePath => m(p + 1, 0),
        Kind::OpenTrunc => m(0, 2 * p + 300),
        Kind::PunchHole => m(p / 2, 2 * p),
        Kind::ZeroRange => m(2 * p + 10, p),
        Kind::CollapseRange => m(p, p),
        Kind::InsertRange => m(2 * p, p),
        Kind::CopyFileRange => m(50, 3 * p),
        Kind::CloneRange => m(p, 2 * p),
        Kind::ODirect => m(p, 2 * p),
        Kind::IoUring => m(300, 2 * p),
        Kind::SharedBefore => m(100, 3 * p),
        Kind::SharedAfter => m(2 * p + 100, 2 * p),
        Kind::HardLink => m(10, 4 * p),
        Kind::Cp => m(0, 3 * p + 17),
        Kind::ShellRedirect => m(0, 2 * p + 9),
    };
    let b = base / p;
    Script {
        // 4 pages and a partial fifth; the mapping covers the fifth whole,
        // so the zeros past the end (and an append into them) are checked.
        size: (base + 4 * p + 1000) as usize,
        off: 0,
        len: Some((base + 5 * p) as usize),
        populate: false,
        steps: vec![
            Step::Touch(if base == 0 {
                vec![0, 2, 4]
            } else {
                vec![0, b + 2, b + 4]
            }),
            Step::Modify(m1),
            Step::TouchAll,
            // Pages first read after the modification must not change either.
            Step::Modify(Modification::new(Kind::Pwrite, 0, base + 5 * p, 2)),
            Step::TouchAll,
        ],
    }
}

pub(super) fn truncate_zero_regrow(read_between: bool) -> Script {
    let p = page() as u64;
    let mut steps = vec![
        Step::Touch(vec![0]),
        Step::Modify(Modification::new(Kind::FtruncateShrink, 0, 0, 0)),
    ];
    if read_between {
        steps.push(Step::TouchAll);
    }
    steps.extend([
        Step::Modify(Modification::new(Kind::Pwrite, 0, 4 * p, 1)),
        Step::TouchAll,
        Step::Modify(Modification::new(Kind::Pwrite, 0, 4 * p, 2)),
        Step::TouchAll,
    ]);
    Script {
        size: 3 * p as usize + 1,
        off: 0,
        len: Some(4 * p as usize),
        populate: false,
        steps,
    }
}

/// A mapping of an unaligned sub-range (partial first and last pages),
/// modified inside and around it, then shrunk into its middle.
pub(super) fn unaligned_subrange_script() -> Script {
    let p = page() as u64;
    Script {
        size: 4 * p as usize + 1000,
        off: p + 123,
        len: Some(2 * p as usize + 5),
        populate: false,
        steps: vec![
            Step::Touch(vec![1]),
            Step::Modify(Modification::new(Kind::Pwrite, 50, 4 * p, 1)),
            Step::Touch(vec![2]),
            Step::Modify(Modification::new(Kind::FtruncateShrink, 2 * p + 50, 0, 0)),
            Step::TouchAll,
            Step::Modify(Modification::new(Kind::Pwrite, 0, 5 * p, 2)),
            Step::TouchAll,
        ],
    }
}

/// A file of a bit more than two huge pages, read sequentially (so lazy
/// strategies grow their fault-around window) or in a seeded random order,
/// with modifications in between.
pub(super) fn large_script(random: bool) -> Script {
    let p = page() as u64;
    let mib = 1u64 << 20;
    let size = 4 * mib + 3 * p + 17;
    let pages = size.div_ceil(p);
    let steps = if !random {
        vec![
            Step::Touch((0..64).collect()),
            Step::Modify(Modification::new(Kind::Pwrite, mib + 100, 2 * mib, 1)),
            Step::Touch((64..700).collect()),
            Step::Modify(Modification::new(
                Kind::FtruncateShrink,
                3 * mib + 100,
                0,
                0,
            )),
            Step::TouchAll,
            Step::Modify(Modification::new(Kind::Pwrite, 0, size, 2)),
            Step::TouchAll,
        ]
    } else {
        // A small LCG: deterministic, no dependency.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move |n: u64| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % n
        };
        let mut touch = || Step::Touch((0..40).map(|_| next(pages)).collect());
        let (t1, t2, t3) = (touch(), touch(), touch());
        vec![
            t1,
            Step::Modify(Modification::new(
                Kind::Pwrite,
                3 * mib / 2 + 77,
                mib + 5,
                1,
            )),
            t2,
            Step::Modify(Modification::new(Kind::PunchHole, mib, mib / 2, 0)),
            t3,
            Step::Modify(Modification::new(Kind::Append, 0, 10_000, 2)),
            Step::TouchAll,
            Step::Modify(Modification::new(Kind::Pwrite, 0, size, 3)),
            Step::TouchAll,
        ]
    };
    Script {
        size: size as usize,
        off: 0,
        len: None,
        populate: false,
        steps,
    }
}

/// An unaligned sub-range of a large file that starts and ends inside huge
/// pages and inside base pages.
pub(super) fn large_unaligned_script() -> Script {
    let p = page() as u64;
    let mib = 1u64 << 20;
    let off = mib + 3 * p + 77;
    let len = 3 * mib + 5;
    let first = off / p;
    let last = (off + len - 1) / p;
    Script {
        size: (5 * mib) as usize,
        off,
        len: Some(len as usize),
        populate: false,
        steps: vec![
            Step::Touch(vec![first, first + 1, last]),
            Step::Modify(Modification::new(Kind::Pwrite, off - 50, 2 * mib, 1)),
            Step::Touch((first + 2..first + 300).collect()),
            Step::Modify(Modification::new(Kind::FtruncateShrink, 3 * mib + 9, 0, 0)),
            Step::TouchAll,
            Step::Modify(Modification::new(Kind::Pwrite, 0, 5 * mib, 2)),
            Step::TouchAll,
        ],
    }
}

/// The mapping process itself writes and truncates the file (strategies
/// that watch writers must not deadlock on or miss their own process).
pub(super) fn self_write_script() -> Script {
    let p = page() as u64;
    Script {
        size: 4 * p as usize + 1000,
        off: 0,
        len: Some(5 * p as usize),
        populate: false,
        steps: vec![
            Step::Touch(vec![0, 2]),
            Step::SelfModify(Modification::new(Kind::Pwrite, 100, 3 * p, 1)),
            Step::Touch(vec![1]),
            Step::SelfModify(Modification::new(Kind::FtruncateShrink, p + 5, 0, 0)),
            Step::TouchAll,
            Step::SelfModify(Modification::new(Kind::OpenTrunc, 0, 5 * p, 2)),
            Step::TouchAll,
        ],
    }
}

/// Writes only to pages nobody has read yet: S1 lets every page show the
/// new bytes, so even plain MAP_PRIVATE keeps the contract here — the
/// control must pass this one (the checker has no false positives).
pub(super) fn untouched_write_script() -> Script {
    let p = page() as u64;
    Script {
        size: 4 * p as usize + 1000,
        off: 0,
        len: None,
        populate: false,
        steps: vec![
            Step::Touch(vec![0]),
            Step::Modify(Modification::new(Kind::Pwrite, 2 * p + 10, p, 1)),
            Step::TouchAll,
        ],
    }
}

pub(super) fn populate_script() -> Script {
    let p = page() as u64;
    Script {
        size: 3 * p as usize + 1,
        off: 0,
        len: None,
        populate: true,
        steps: vec![
            Step::Modify(Modification::new(Kind::Pwrite, 0, 4 * p, 1)),
            Step::TouchAll,
            Step::Modify(Modification::new(Kind::FtruncateShrink, 0, 0, 0)),
            Step::TouchAll,
        ],
    }
}

/// Runs `script` with a strategy, after checking the strategy is usable.
pub(super) fn strategy_script(s: Strategy, dir: &Path, script: &Script) -> Outcome {
    if let Err(why) = usable_in(s, dir) {
        return skip(format!("{s} is not usable here: {why}"));
    }
    script_outcome(run_script(Backend::Copy(s), dir, script))
}

/// A control trial: re-runs itself in a child (a SIGBUS must not kill the
/// suite), and checks that the checker flagged the control exactly where
/// the model of a MAP_PRIVATE mapping says it breaks the contract.
pub(super) fn control_trial(name: &str, dir: &Path, script: &Script, mounts: &str) -> Outcome {
    if privilege::in_trial(name) {
        // The inner run: check the control like any strategy.
        return script_outcome(run_script(Backend::Control, dir, script));
    }
    let predicted = predict_control(script);
    let mut cmd = privilege::trial(name, false).map_err(Failed::from)?;
    cmd.env(MOUNTS_ENV, mounts);
    let (status, stdout, stderr) = run_bounded(cmd, 60)?;
    let all = format!("{stdout}\n{stderr}");
    if stdout.contains("1 ignored") {
        return skip(format!("control run skipped: {}", all.trim()));
    }
    // The last step the child started.
    let last_step = stderr
        .lines()
        .filter_map(|l| {
            l.strip_prefix("step ")?
                .split(':')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .next_back();
    match (&predicted, status.signal(), status.success()) {
        (None, None, true) if stdout.contains("1 passed") => {
            eprintln!("control kept the contract here, as predicted");
            Ok(Completion::Completed)
        }
        (Some((step, v)), Some(libc::SIGBUS), _) if v.message.contains("SIGBUS") => {
            if last_step == Some(*step) {
                eprintln!("control faulted with SIGBUS at step {step}, as predicted");
                Ok(Completion::Completed)
            } else {
                fail(format!(
                    "control faulted with SIGBUS at step {last_step:?}, predicted at step {step}: {all}"
                ))
            }
        }
        (Some((step, v)), None, false) if !v.message.contains("SIGBUS") => {
            let want = format!("at step {step}: VIOLATION at file page {}", v.page);
            if all.contains(&want) {
                eprintln!("checker flagged the control as predicted: {v}");
                Ok(Completion::Completed)
            } else {
                fail(format!(
                    "control failed, but not as predicted ({want}: {v}):\n{all}"
                ))
            }
        }
        _ => fail(format!(
            "prediction {:?} but the control run ended with {} :\n{all}",
            predicted.as_ref().map(|(s, v)| format!("step {s}: {v}")),
            status
        )),
    }
}

/// A kind this filesystem lacks must come back as `Unsupported`, not as a
/// failure, and leave the file as it was.
pub(super) fn unsupported_case(dir: &Path, kind: Kind) -> Outcome {
    let p = page() as u64;
    let tf = TestFile::new_in(dir, 4 * p as usize, 0).map_err(io("test file"))?;
    let old = tf.contents().map_err(io("read"))?;
    match Modification::new(kind, p, p, 1).apply_checked(tf.path(), &old) {
        Err(ApplyError::Unsupported(why)) => {
            eprintln!("{kind}: unsupported, as expected: {why}");
            check_bytes(&tf.contents().map_err(io("read"))?, &old, "file after")?;
            Ok(Completion::Completed)
        }
        other => fail(format!("{kind}: want Unsupported, got {other:?}")),
    }
}
