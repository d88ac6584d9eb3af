//! Auto and probe, as root and as nobody.

use super::*;

/// Can this process use userfaultfd for kernel-mode faults, judged from
/// the machine's settings rather than the library's probe?
pub(super) fn uffd_allowed_by_facts() -> (bool, String) {
    if privilege::is_root() {
        return (true, "running as root".into());
    }
    let sysctl = std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
        .unwrap_or_default()
        .trim()
        .to_string();
    if sysctl == "1" {
        return (true, "vm.unprivileged_userfaultfd=1".into());
    }
    let dev = rustix::fs::access(
        "/dev/userfaultfd",
        rustix::fs::Access::READ_OK | rustix::fs::Access::WRITE_OK,
    );
    if dev.is_ok() {
        return (true, "/dev/userfaultfd is accessible".into());
    }
    (
        false,
        format!(
            "uid {}, vm.unprivileged_userfaultfd={sysctl:?}, /dev/userfaultfd: {dev:?}",
            rustix::process::geteuid().as_raw()
        ),
    )
}

pub(super) fn auto_probe_case() -> Outcome {
    let p = page();
    let tf = TestFile::new(3 * p + 1).map_err(io("test file"))?;
    let content = tf.contents().map_err(io("read"))?;
    let pr = mapcopy::probe(Some(tf.path()));
    eprintln!("as uid {}:\n{pr}", rustix::process::geteuid().as_raw());
    let order: Vec<Strategy> = pr.strategies.iter().map(|e| e.strategy).collect();
    if order != Strategy::ALL {
        return fail(format!("probe lists {order:?}, want {:?}", Strategy::ALL));
    }
    let first_usable = pr
        .strategies
        .iter()
        .find(|e| e.usable.is_ok())
        .map(|e| e.strategy);
    if pr.auto.as_ref().ok().copied() != first_usable {
        return fail(format!(
            "auto picks {:?}, first usable is {first_usable:?}",
            pr.auto
        ));
    }
    let eager = pr
        .strategies
        .iter()
        .find(|e| e.strategy == Strategy::Eager)
        .expect("eager");
    if let Err(why) = &eager.usable {
        return fail(format!("Eager needs nothing but says {why}"));
    }
    // Lazy against the facts of this process.
    let lazy = pr
        .strategies
        .iter()
        .find(|e| e.strategy == Strategy::Lazy)
        .expect("lazy");
    let (allowed, facts) = uffd_allowed_by_facts();
    match &lazy.usable {
        Err(why) if not_implemented(why) => eprintln!("lazy: {why}"),
        Ok(how) if allowed => eprintln!("lazy usable ({how}); facts: {facts}"),
        Err(why) if !allowed => eprintln!("lazy not usable ({why}); facts: {facts}"),
        u => {
            return fail(format!(
                "lazy probe says {u:?} but the facts say allowed={allowed}: {facts}"
            ));
        }
    }
    if allowed && lazy.usable.is_ok() {
        // Nothing before Lazy in Auto's order may be skipped for no reason:
        // Auto picks Lazy or an earlier usable strategy.
        let pick = pr.auto.clone().map_err(Failed::from)?;
        let li = Strategy::ALL.iter().position(|&s| s == Strategy::Lazy);
        let pi = Strategy::ALL.iter().position(|&s| s == pick);
        if pi > li {
            return fail(format!("auto picks {pick} although lazy is usable"));
        }
    }
    if !allowed && pr.auto == Ok(Strategy::Lazy) {
        return fail("auto picks lazy although userfaultfd is not usable here");
    }
    // Auto maps with exactly what probe said.
    let m = MapCopy::open(tf.path()).map_err(io("MapCopy::open"))?;
    if Ok(m.strategy()) != pr.auto {
        return fail(format!(
            "MapCopy::open used {}, probe said {:?}",
            m.strategy(),
            pr.auto
        ));
    }
    check_bytes(&m, &content, "auto mapping")?;
    drop(m);
    // Named strategies: usable ones map, the others refuse with the reason.
    let file = tf.open().map_err(io("open"))?;
    for e in &pr.strategies {
        let r = mapcopy_check::options(e.strategy).map(&file);
        match (&e.usable, r) {
            (Ok(_), Ok(m)) if m.strategy() == e.strategy => {
                check_bytes(&m, &content, e.strategy.name())?
            }
            (Err(why), Err(err)) if err.kind() == ErrorKind::Unsupported => {
                let msg = err.to_string();
                if !msg.contains(e.strategy.name()) || !msg.contains(why.as_str()) {
                    return fail(format!(
                        "{}: error {msg:?} does not name the strategy and the reason {why:?}",
                        e.strategy
                    ));
                }
            }
            (u, r) => {
                return fail(format!(
                    "{}: probe says {u:?}, map gave {:?}",
                    e.strategy,
                    r.map(|m| m.strategy())
                ));
            }
        }
    }
    // A strategy that keeps only per-page refuses the default
    // (point-in-time), saying so; probe's consistency is the one it keeps.
    for e in &pr.strategies {
        if e.consistency != Consistency::PointInTime && e.strategy.keeps(Consistency::PointInTime)
            || e.consistency == Consistency::PointInTime
                && !e.strategy.keeps(Consistency::PointInTime)
        {
            return fail(format!(
                "{}: probe says it keeps {}",
                e.strategy, e.consistency
            ));
        }
        if e.consistency == Consistency::PerPage && e.usable.is_ok() {
            match MapOptions::new().strategy(e.strategy).map(&file) {
                Err(err)
                    if err.kind() == ErrorKind::Unsupported
                        && err.to_string().contains("PerPage") => {}
                r => {
                    return fail(format!(
                        "{} under point-in-time: {:?}, not a refusal naming Consistency::PerPage",
                        e.strategy,
                        r.map(|m| m.strategy())
                    ));
                }
            }
        }
    }
    // probe(None) agrees on process-wide answers.
    let none = mapcopy::probe(None);
    if none.auto.is_err() {
        return fail(format!("probe(None) has no pick: {:?}", none.auto));
    }
    let lazy_none = none
        .strategies
        .iter()
        .find(|e| e.strategy == Strategy::Lazy)
        .expect("lazy");
    if lazy_none.usable.is_ok() != lazy.usable.is_ok() {
        return fail(format!(
            "lazy: probe(None) {:?} vs probe(file) {:?}",
            lazy_none.usable, lazy.usable
        ));
    }
    Ok(Completion::Completed)
}

/// Re-runs trial `inner` as nobody and reports its outcome.
pub(super) fn nobody_trial(inner: &str) -> Outcome {
    let mut cmd = match privilege::trial(inner, true) {
        Ok(c) => c,
        Err(why) => return skip(format!("cannot run as nobody: {why}")),
    };
    let out = cmd.output().map_err(io("running the trial as nobody"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() && stdout.contains("1 passed") {
        eprintln!("{stderr}");
        Ok(Completion::Completed)
    } else if out.status.success() && stdout.contains("1 ignored") {
        skip(format!("as nobody: {}", stderr.trim()))
    } else {
        fail(format!(
            "as nobody, {inner} ended with {}:\n{stdout}\n{stderr}",
            out.status
        ))
    }
}
