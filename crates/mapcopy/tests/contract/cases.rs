//! Other cases, per strategy: sizes, threads, many mappings, kernel access, map_mut, read errors.

use super::*;

pub(super) fn check_bytes(got: &[u8], want: &[u8], what: &str) -> Result<(), Failed> {
    if got.len() != want.len() {
        return fail(format!("{what}: {} bytes, want {}", got.len(), want.len()));
    }
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        return fail(format!(
            "{what}: first difference at byte {i}: got [{}] want [{}]",
            pattern::describe(&got[i..(i + 64).min(got.len())], i as u64),
            pattern::describe(&want[i..(i + 64).min(want.len())], i as u64)
        ));
    }
    Ok(())
}

/// `content[off .. off + len]`, zero past its end.
pub(super) fn slice_zero_ext(content: &[u8], off: usize, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    if off < content.len() {
        let n = (content.len() - off).min(len);
        v[..n].copy_from_slice(&content[off..off + n]);
    }
    v
}

pub(super) fn size_case(s: Strategy, dir: &Path, size: usize) -> Outcome {
    if let Err(why) = usable_in(s, dir) {
        return skip(format!("{s} is not usable here: {why}"));
    }
    let p = page();
    let tf = TestFile::new_in(dir, size, 0).map_err(io("test file"))?;
    let content = tf.contents().map_err(io("read"))?;
    let file = tf.open().map_err(io("open"))?;
    let mut_refused = offers_map_mut(s, dir);
    let mut ranges: Vec<(usize, Option<usize>)> =
        vec![(0, None), (size, Some(0)), (0, Some(size + p + 3))];
    if size > 0 {
        ranges.extend([
            (0, Some(size)),
            (1, Some(size - 1)),
            (size / 2, Some(size - size / 2)),
            (size - 1, Some(1)),
            (size / 3, Some(2 * p)),
        ]);
    }
    if size > 4095 {
        ranges.push((4095, Some(2)));
    }
    if size > 4098 {
        ranges.push((4097, Some(size - 4098)));
    }
    for (off, len) in ranges {
        let mut o = mapcopy_check::options(s);
        o.offset(off as u64);
        if let Some(l) = len {
            o.len(l);
        }
        let want = slice_zero_ext(&content, off, len.unwrap_or(size - off));
        let what = format!("size {size}, offset {off}, len {len:?}");
        let m = o.map(&file).map_err(io(&what))?;
        if m.strategy() != s {
            return fail(format!("{what}: mapped by {}, asked for {s}", m.strategy()));
        }
        let mut got = vec![0u8; m.len()];
        Source::read(&m, 0, &mut got).map_err(Failed::from)?;
        check_bytes(&got, &want, &what)?;
        // Same through map_mut (or the strategy's refusal of writable
        // mappings, the same every time).
        match (o.map_mut(&file), &mut_refused) {
            (Ok(mm), Ok(())) => check_bytes(&mm, &want, &format!("{what} (map_mut)"))?,
            (Err(e), Err(_)) if e.kind() == ErrorKind::Unsupported => {}
            (r, refused) => {
                return fail(format!(
                    "{what} (map_mut): got {:?}, but map_mut of a plain file gave {refused:?}",
                    r.map(|m| m.len())
                ));
            }
        }
    }
    // And the whole file against a modification.
    if size > 0 {
        let script = Script {
            size,
            off: 0,
            len: None,
            populate: false,
            steps: vec![
                Step::Touch(vec![0]),
                Step::Modify(Modification::new(Kind::Pwrite, 0, (size + p) as u64, 1)),
                Step::TouchAll,
                Step::Modify(Modification::new(Kind::FtruncateShrink, 0, 0, 0)),
                Step::TouchAll,
            ],
        };
        return script_outcome(run_script(Backend::Copy(s), dir, &script));
    }
    Ok(Completion::Completed)
}

/// Several mappings of one file, made at different versions of it; each
/// keeps its own snapshot.
pub(super) fn many_mappings_case(s: Strategy, dir: &Path) -> Outcome {
    if let Err(why) = usable_in(s, dir) {
        return skip(format!("{s} is not usable here: {why}"));
    }
    let p = page();
    let tf = TestFile::new_in(dir, 3 * p + 1, 0).map_err(io("test file"))?;
    let file = tf.open().map_err(io("open"))?;
    let mut maps = Vec::new();
    let mut content = tf.contents().map_err(io("read"))?;
    for g in 1..=3u32 {
        let m = mapcopy_check::options(s).map(&file).map_err(io("map"))?;
        let mut c = Checker::new(p, 0, m.len(), content.clone());
        c.touch(&m, [(g as u64 - 1) % 4]).map_err(Failed::from)?;
        maps.push((m, c));
        content = Modification::new(Kind::Pwrite, 0, 4 * p as u64, g)
            .apply_checked(tf.path(), &content)
            .map_err(io("pwrite"))?;
        for (m, c) in &mut maps {
            c.push_state(content.clone());
            c.touch(m, [(g as u64) % 4]).map_err(Failed::from)?;
        }
    }
    for (m, c) in &mut maps {
        c.touch_all(m).map_err(Failed::from)?;
    }
    Ok(Completion::Completed)
}

/// Mappings made and dropped in quick succession, alternating between two
/// files with different contents (a new mapping may land at the address of
/// the one just dropped, while its fault-around or prefetch is still in
/// flight), while another thread keeps reading a third, long-lived mapping.
pub(super) fn churn_case(s: Strategy, dir: &Path) -> Outcome {
    if let Err(why) = usable_in(s, dir) {
        return skip(format!("{s} is not usable here: {why}"));
    }
    let p = page();
    let size = (4 << 20) + 3 * p + 17;
    let files = [
        TestFile::new_in(dir, size, 0).map_err(io("test file"))?,
        TestFile::new_in(dir, size, 5).map_err(io("test file"))?,
    ];
    let contents = [
        files[0].contents().map_err(io("read"))?,
        files[1].contents().map_err(io("read"))?,
    ];
    let opened = [
        files[0].open().map_err(io("open"))?,
        files[1].open().map_err(io("open"))?,
    ];
    let steady_file = TestFile::new_in(dir, size, 9).map_err(io("test file"))?;
    let steady_content = steady_file.contents().map_err(io("read"))?;
    let steady = mapcopy_check::options(s)
        .map(&steady_file.open().map_err(io("open"))?)
        .map_err(io("map"))?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let pages = size.div_ceil(p) as u64;
    std::thread::scope(|sc| -> Result<(), Failed> {
        let reader = sc.spawn(|| -> Result<usize, String> {
            let mut c = Checker::new(p, 0, steady.len(), steady_content.clone());
            let mut rounds = 0;
            let mut pg = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                c.touch(&steady, [pg])
                    .map_err(|v| format!("steady mapping: {v}"))?;
                pg = (pg * 7 + 13) % pages;
                rounds += 1;
            }
            Ok(rounds)
        });
        let mut x: u64 = 12345;
        let r = (|| -> Result<(), Failed> {
            for i in 0..60 {
                let which = i % 2;
                let m = mapcopy_check::options(s)
                    .map(&opened[which])
                    .map_err(io("map"))?;
                let mut c = Checker::new(p, 0, m.len(), contents[which].clone());
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let first = (x >> 33) % pages;
                let touch: Vec<u64> = if i % 5 == 0 {
                    (0..pages).collect()
                } else {
                    vec![first, (first + 1) % pages, (first + 600) % pages]
                };
                c.touch(&m, touch)
                    .map_err(|v| Failed::from(format!("iteration {i}, file {which}: {v}")))?;
                drop(m);
            }
            Ok(())
        })();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let rounds = reader
            .join()
            .expect("reader thread")
            .map_err(Failed::from)?;
        eprintln!("steady reader checked {rounds} page reads during the churn");
        r
    })?;
    Ok(Completion::Completed)
}

/// 8 threads race on first touch: over one mapping, or over three mappings
/// of the same file at different offsets (one handler serving several).
pub(super) fn threads_case(s: Strategy, dir: &Path, multi: bool) -> Outcome {
    if let Err(why) = usable_in(s, dir) {
        return skip(format!("{s} is not usable here: {why}"));
    }
    let p = page();
    // More than a huge page, so fault-around windows collide too.
    let size = 600 * p + 123;
    let tf = TestFile::new_in(dir, size, 0).map_err(io("test file"))?;
    let initial = tf.contents().map_err(io("read"))?;
    let file = tf.open().map_err(io("open"))?;
    let offsets: &[u64] = if multi {
        &[0, 5 * p as u64 + 7, (1 << 20) + 3]
    } else {
        &[0]
    };
    let mut maps = Vec::new();
    for &off in offsets {
        let m = mapcopy_check::options(s)
            .offset(off)
            .map(&file)
            .map_err(io("map"))?;
        let c = Checker::new(p, off, m.len(), initial.clone());
        maps.push((m, c));
    }
    // Another process changes every page before anyone touched one.
    let new = Modification::new(Kind::Pwrite, 0, size as u64 + 1, 1)
        .apply_checked(tf.path(), &initial)
        .map_err(io("pwrite"))?;
    for (_, c) in &mut maps {
        c.push_state(new.clone());
    }
    const THREADS: usize = 8;
    let barrier = Barrier::new(THREADS);
    // seen[thread][mapping][page index]
    let seen: Vec<Vec<Vec<Vec<u8>>>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..THREADS)
            .map(|t| {
                let (maps, barrier) = (&maps, &barrier);
                sc.spawn(move || {
                    let mut out: Vec<Vec<Vec<u8>>> = maps
                        .iter()
                        .map(|(_, c)| vec![Vec::new(); c.pages().count()])
                        .collect();
                    barrier.wait();
                    // Each thread walks the pages from a different start, in
                    // alternating directions, so first touches collide.
                    for mi in 0..maps.len() {
                        let mi = (mi + t) % maps.len();
                        let (map, c) = &maps[mi];
                        let pages: Vec<u64> = c.pages().collect();
                        let n = pages.len();
                        for k in 0..n {
                            let i = if t % 2 == 0 {
                                (k + t) % n
                            } else {
                                (n * 2 - k - t) % n
                            };
                            let r = c.mapped(pages[i]);
                            let mut buf = vec![0u8; r.len()];
                            Source::read(map, r.start, &mut buf).expect("read");
                            out[mi][i] = buf;
                        }
                    }
                    out
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("reader thread"))
            .collect()
    });
    for (mi, (_, c)) in maps.iter_mut().enumerate() {
        let pages: Vec<u64> = c.pages().collect();
        for (i, &pg) in pages.iter().enumerate() {
            for t in 1..THREADS {
                if seen[t][mi][i] != seen[0][mi][i] {
                    return fail(format!(
                        "mapping {mi}: threads 0 and {t} saw different bytes in page {pg}: [{}] vs [{}]",
                        pattern::describe(&seen[0][mi][i], pg * p as u64),
                        pattern::describe(&seen[t][mi][i], pg * p as u64)
                    ));
                }
            }
            c.observe(pg, seen[0][mi][i].clone())
                .map_err(|v| Failed::from(format!("mapping {mi}: {v}")))?;
        }
    }
    let newer = Modification::new(Kind::Pwrite, 0, size as u64 + 1, 2)
        .apply_checked(tf.path(), &new)
        .map_err(io("pwrite"))?;
    for (mi, (m, c)) in maps.iter_mut().enumerate() {
        c.push_state(newer.clone());
        c.touch_all(m)
            .map_err(|v| Failed::from(format!("mapping {mi}: {v}")))?;
    }
    Ok(Completion::Completed)
}

pub(super) fn kernel_access_case(s: Strategy, dir: &Path) -> Outcome {
    if let Err(why) = usable_in(s, dir) {
        return skip(format!("{s} is not usable here: {why}"));
    }
    let p = page();
    let size = 3 * p + 1;
    let tf = TestFile::new_in(dir, size, 0).map_err(io("test file"))?;
    let old = tf.contents().map_err(io("read"))?;
    let file = tf.open().map_err(io("open"))?;
    // 1. Straight from a fresh mapping into a file (write(2) reads it in
    //    kernel mode).
    let map = mapcopy_check::options(s).map(&file).map_err(io("map"))?;
    let out_path = tf.dir().join("out");
    let mut out = File::create(&out_path).map_err(io("create"))?;
    out.write_all(&map)
        .map_err(io("write(2) from an untouched mapping to a file"))?;
    drop(out);
    check_bytes(
        &std::fs::read(&out_path).map_err(io("read"))?,
        &old,
        "file written from the mapping",
    )?;
    // 2. A new mapping, the file modified, then write(2) into a pipe.
    let map = mapcopy_check::options(s).map(&file).map_err(io("map"))?;
    let mut checker = Checker::new(p, 0, map.len(), old);
    let new = Modification::new(Kind::Pwrite, 0, 4 * p as u64, 1)
        .apply_checked(tf.path(), checker.current())
        .map_err(io("pwrite"))?;
    checker.push_state(new);
    let (rd, wr) = rustix::pipe::pipe().map_err(io("pipe"))?;
    let mut wr = File::from(wr);
    wr.write_all(&map)
        .map_err(io("write(2) from an untouched mapping to a pipe"))?;
    drop(wr);
    let mut got = Vec::new();
    File::from(rd)
        .read_to_end(&mut got)
        .map_err(io("read pipe"))?;
    if got.len() != map.len() {
        return fail(format!("pipe got {} bytes of {}", got.len(), map.len()));
    }
    checker.observe_all(&got).map_err(Failed::from)?;
    // Reading through the mapping now must agree with what the kernel saw.
    checker.touch_all(&map).map_err(Failed::from)?;
    Ok(Completion::Completed)
}

/// Does page `pg` as read (`got`) equal some state's page with
/// `overlay` stored over it at `at` (the owner's private stores)?
pub(super) fn state_with_overlay(
    c: &Checker,
    pg: u64,
    got: &[u8],
    at: usize,
    overlay: &[u8],
) -> Result<(), Failed> {
    for s in 0..c.states().len() {
        let mut exp = c.expected(s, pg);
        exp[at..at + overlay.len()].copy_from_slice(overlay);
        if exp == got {
            return Ok(());
        }
    }
    fail(format!(
        "page {pg} after a private store at {at}..{}: [{}] is no file state with the store applied",
        at + overlay.len(),
        pattern::describe(got, pg * page() as u64)
    ))
}

/// A large writable mapping: sequential reads (lazy strategies start
/// filling ahead), private stores scattered over untouched pages, the file
/// rewritten twice by another process. Every page must be a file state with
/// exactly the owner's stores on top, and stay so.
pub(super) fn map_mut_large_case(s: Strategy, dir: &Path) -> Outcome {
    if let Err(why) = usable_in(s, dir) {
        return skip(format!("{s} is not usable here: {why}"));
    }
    if let Err(why) = offers_map_mut(s, dir) {
        // Documented by the strategy, not a lack of this machine.
        return Ok(Completion::ignored_with(format!(
            "{s} offers no map_mut: {why}"
        )));
    }
    let p = page();
    let size = (6 << 20) + 123;
    let tf = TestFile::new_in(dir, size, 0).map_err(io("test file"))?;
    let old = tf.contents().map_err(io("read"))?;
    let file = tf.open().map_err(io("open"))?;
    let mut map = mapcopy_check::options(s)
        .map_mut(&file)
        .map_err(io("map_mut"))?;
    let mut c = Checker::new(p, 0, map.len(), old.clone());
    c.touch(&map, 0..32).map_err(Failed::from)?;
    let pages = c.pages().end;
    // Stores into every 37th page, at a page-dependent spot.
    let stored: Vec<(u64, usize)> = (40..pages)
        .step_by(37)
        .map(|pg| (pg, (pg as usize * 13) % c.mapped(pg).len()))
        .collect();
    for &(pg, at) in &stored {
        map[c.mapped(pg).start + at] = 0xA5;
    }
    let new = Modification::new(Kind::Pwrite, 0, size as u64, 1)
        .apply_checked(tf.path(), &old)
        .map_err(io("pwrite"))?;
    c.push_state(new.clone());
    let mut first: Vec<Vec<u8>> = Vec::new();
    for pg in 0..pages {
        let r = c.mapped(pg);
        let got = map[r.clone()].to_vec();
        match stored.iter().find(|(q, _)| *q == pg) {
            Some(&(_, at)) => state_with_overlay(&c, pg, &got, at, &[0xA5])?,
            None => c.observe(pg, got.clone()).map_err(Failed::from)?,
        }
        first.push(got);
    }
    let newer = Modification::new(Kind::Pwrite, 0, size as u64, 2)
        .apply_checked(tf.path(), &new)
        .map_err(io("pwrite"))?;
    for pg in 0..pages {
        let r = c.mapped(pg);
        if map[r] != first[pg as usize][..] {
            return fail(format!("page {pg} changed after it was read"));
        }
    }
    drop(map);
    check_bytes(
        &std::fs::read(tf.path()).map_err(io("read"))?,
        &newer,
        "file at the end",
    )?;
    Ok(Completion::Completed)
}

pub(super) fn vm_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|st| {
            st.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// A 64 GiB sparse file, more than this machine's memory: a strategy maps
/// it without allocating it (touching a few pages costs a few pages), or
/// refuses with `Unsupported`/`Io` — never an OOM kill, never `InvalidInput`.
pub(super) fn huge_sparse_case(s: Strategy, dir: &Path) -> Outcome {
    if let Err(why) = usable_in(s, dir) {
        return skip(format!("{s} is not usable here: {why}"));
    }
    let p = page() as u64;
    let gib = 1u64 << 30;
    let size = 64 * gib;
    let tf = TestFile::new_in(dir, 0, 0).map_err(io("test file"))?;
    let spots = [0, 32 * gib, size - 5000];
    {
        use std::os::unix::fs::FileExt;
        let f = OpenOptions::new()
            .write(true)
            .open(tf.path())
            .map_err(io("open"))?;
        f.set_len(size).map_err(io("ftruncate 64 GiB"))?;
        for &at in &spots {
            f.write_all_at(&pattern::bytes(0, at, p as usize), at)
                .map_err(io("pwrite"))?;
        }
    }
    let file = tf.open().map_err(io("open"))?;
    let rss0 = vm_rss();
    let map = match mapcopy_check::options(s).map(&file) {
        Ok(m) => m,
        Err(e) if matches!(e.kind(), ErrorKind::Unsupported | ErrorKind::Io) => {
            eprintln!("{s} refuses a 64 GiB file ({:?}): {e}", e.kind());
            return Ok(Completion::Completed);
        }
        Err(e) => return fail(format!("64 GiB sparse file: {:?} {e}", e.kind())),
    };
    if map.len() as u64 != size {
        return fail(format!("mapped {} bytes of {size}", map.len()));
    }
    let read = |at: u64, n: usize| -> Result<Vec<u8>, Failed> {
        let mut b = vec![0u8; n];
        Source::read(&map, at as usize, &mut b).map_err(Failed::from)?;
        Ok(b)
    };
    for &at in &spots {
        let want = slice_zero_ext(
            &pattern::bytes(0, at, p as usize),
            0,
            (size - at).min(p) as usize,
        );
        check_bytes(&read(at, want.len())?, &want, &format!("data at {at}"))?;
    }
    check_bytes(
        &read(gib, p as usize)?,
        &vec![0; p as usize],
        "hole at 1 GiB",
    )?;
    // Another process writes into a touched page and shrinks the file.
    let m1 = Modification::new(Kind::Pwrite, 32 * gib, 3 * p, 1);
    m1.apply(tf.path()).map_err(io("pwrite"))?;
    Modification::new(Kind::FtruncateShrink, 33 * gib, 0, 0)
        .apply(tf.path())
        .map_err(io("ftruncate"))?;
    let want = pattern::bytes(0, 32 * gib, p as usize);
    check_bytes(
        &read(32 * gib, p as usize)?,
        &want,
        "touched page after pwrite",
    )?;
    let tail = read(size - 5000, 5000)?;
    // 4096 bytes of data, then the hole up to the old end.
    let want_tail = slice_zero_ext(&pattern::bytes(0, size - 5000, p as usize), 0, 5000);
    check_bytes(&tail, &want_tail, "touched last page after the truncation")?;
    // Untouched: the old bytes (a hole, zeros) or the new ones.
    let next = read(32 * gib + p, p as usize)?;
    if next != vec![0; p as usize] && next != pattern::bytes(1, 32 * gib + p, p as usize) {
        return fail(format!(
            "untouched page at 32 GiB + 1 page holds [{}]",
            pattern::describe(&next, 32 * gib + p)
        ));
    }
    check_bytes(
        &read(40 * gib, p as usize)?,
        &vec![0; p as usize],
        "past the new end",
    )?;
    let grown = vm_rss().saturating_sub(rss0);
    // Other trials run in this process too; a 64 GiB allocation would show.
    if grown > gib {
        return fail(format!(
            "resident memory grew by {grown} bytes for a few touched pages"
        ));
    }
    eprintln!("{s}: 64 GiB sparse file mapped; resident memory grew by {grown} bytes");
    Ok(Completion::Completed)
}

/// One file mapped by every usable strategy at once, in one process (they
/// share the per-process watcher thread), then modified by another
/// process. Runs in a child: a deadlock between strategies must fail this
/// trial, not hang the suite.
pub(super) fn mixed_case(name: &str, dir: &Path) -> Outcome {
    if !privilege::in_trial(name) {
        let mut cmd = privilege::trial(name, false).map_err(Failed::from)?;
        cmd.env(MOUNTS_ENV, "");
        let (status, out, err) = run_bounded(cmd, 60)?;
        return if status.success() && out.contains("1 passed") {
            eprintln!("{}", err.trim());
            Ok(Completion::Completed)
        } else {
            fail(format!("{status}:\n{out}\n{err}"))
        };
    }
    let p = page();
    let size = (3 << 20) + 5;
    let tf = TestFile::new_in(dir, size, 0).map_err(io("test file"))?;
    let old = tf.contents().map_err(io("read"))?;
    let pr = mapcopy::probe(Some(tf.path()));
    let mut maps = Vec::new();
    for e in pr.strategies.iter().filter(|e| e.usable.is_ok()) {
        // Each user opens the file itself, after the others have mapped it
        // (a file opened after a fanotify mark exists raises its events).
        let file = tf.open().map_err(io("open"))?;
        let m = mapcopy_check::options(e.strategy)
            .map(&file)
            .map_err(io(e.strategy.name()))?;
        let mut c = Checker::new(p, 0, m.len(), old.clone());
        eprintln!("mapped with {}; touching pages 0 and 600", e.strategy);
        c.touch(&m, [0, 600])
            .map_err(|v| Failed::from(format!("{}: {v}", e.strategy)))?;
        maps.push((e.strategy, m, c));
    }
    let mut state = old;
    for m in [
        Modification::new(Kind::Pwrite, 0, size as u64, 1),
        Modification::new(Kind::FtruncateShrink, 1 << 20, 0, 0),
    ] {
        eprintln!("{m}");
        state = m
            .apply_checked(tf.path(), &state)
            .map_err(io("modification"))?;
        for (s, map, c) in &mut maps {
            c.push_state(state.clone());
            eprintln!("reading every page through the {s} mapping");
            c.touch_all(map)
                .map_err(|v| Failed::from(format!("{s}: {v}")))?;
        }
    }
    let names: Vec<&str> = maps.iter().map(|(s, _, _)| s.name()).collect();
    eprintln!("one file mapped at once by {names:?}: all kept the contract");
    Ok(Completion::Completed)
}

/// Env var naming the file a re-executed read-error trial maps.
pub(super) const FILE_ENV: &str = "MAPCOPY_CONTRACT_FILE";

/// What a strategy documents for a file whose data cannot be read (`EIO`).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum OnReadError {
    /// `map` returns an `Io` error.
    MapFails,
    /// `map` succeeds; the access that needs the bad block aborts the
    /// process with a message (a faulting thread can be given no error).
    AbortOnTouch,
    /// `map` succeeds; touching the unreadable page raises SIGBUS, as in
    /// any file mapping (the zero-copy strategies map the file or a clone).
    SigbusOnTouch,
    /// Not documented: any of the above.
    Either,
}

pub(super) fn on_read_error(s: Strategy, populate: bool) -> OnReadError {
    match (s, populate) {
        (Strategy::Eager, _) | (Strategy::Lazy | Strategy::Guard, true) => OnReadError::MapFails,
        (Strategy::Lazy, false) => OnReadError::AbortOnTouch,
        (Strategy::Lease | Strategy::Reflink | Strategy::Kernel | Strategy::Immutable, true) => {
            OnReadError::MapFails
        }
        (
            Strategy::Lease
            | Strategy::Reflink
            | Strategy::Guard
            | Strategy::Kernel
            | Strategy::Immutable,
            false,
        ) => OnReadError::SigbusOnTouch,
        _ => OnReadError::Either,
    }
}

/// A file whose page 16 cannot be read: btrfs with that block's data
/// corrupted in the image, so the checksum fails and reads get `EIO`. The
/// strategy must fail as it documents — never hand out wrong bytes, never
/// hang. Runs in a child (an abort must not kill the suite).
pub(super) fn read_error_case(name: &str, s: Strategy, populate: bool) -> Outcome {
    let p = page();
    let size = 64 * p;
    if privilege::in_trial(name) {
        let path = std::env::var(FILE_ENV).map_err(io("file to map"))?;
        let want = pattern::bytes(0, 0, size);
        let file = File::open(&path).map_err(io("open"))?;
        match mapcopy_check::options(s).populate(populate).map(&file) {
            Err(e) => println!("MAP-ERR {:?}: {e}", e.kind()),
            Ok(m) => {
                for i in 0..size / p {
                    let mut got = vec![0u8; p];
                    Source::read(&m, i * p, &mut got).map_err(Failed::from)?;
                    if got == want[i * p..(i + 1) * p] {
                        println!("PAGE {i} ok");
                    } else {
                        println!(
                            "WRONG page {i}: [{}]",
                            pattern::describe(&got, (i * p) as u64)
                        );
                    }
                }
                println!("DONE");
            }
        }
        return Ok(Completion::Completed);
    }
    let mut mnt = match LoopMount::new(FsKind::Btrfs) {
        Ok(m) => m,
        Err(why) => return skip(why),
    };
    if let Err(why) = usable_in(s, mnt.path()) {
        return skip(format!("{s} is not usable on btrfs: {why}"));
    }
    let path = mnt.path().join("file");
    std::fs::write(&path, pattern::bytes(0, 0, size)).map_err(io("write"))?;
    File::open(&path)
        .and_then(|f| f.sync_all())
        .map_err(io("fsync"))?;
    mnt.unmount().map_err(Failed::from)?;
    mnt.corrupt(&pattern::bytes(0, 16 * p as u64, 32), p, b'X')
        .map_err(Failed::from)?;
    mnt.mount().map_err(Failed::from)?;
    let mut cmd = privilege::trial(name, false).map_err(Failed::from)?;
    cmd.env(FILE_ENV, &path);
    let (status, out, err) = run_bounded(cmd, 60)?;
    // (libtest prints "test NAME ... " before the trial's first line)
    let pages_ok = out.matches("PAGE ").count();
    let map_err = out
        .find("MAP-ERR ")
        .map(|i| out[i..].lines().next().unwrap_or_default());
    let all = format!("{status}\n{out}\n{err}");
    if out.contains("WRONG") {
        return fail(format!(
            "wrong bytes handed out for an unreadable file:\n{all}"
        ));
    }
    if out.contains("DONE") {
        return fail(format!(
            "every page read fine although page 16 is unreadable:\n{all}"
        ));
    }
    let aborted = status.signal() == Some(libc::SIGABRT) && !err.trim().is_empty();
    let map_failed = status.success() && map_err.is_some_and(|l| l.starts_with("MAP-ERR Io"));
    let sigbus = status.signal() == Some(libc::SIGBUS);
    let ok = match on_read_error(s, populate) {
        OnReadError::MapFails => map_failed,
        OnReadError::AbortOnTouch => aborted,
        OnReadError::SigbusOnTouch => sigbus,
        OnReadError::Either => map_failed || aborted,
    };
    if !ok {
        return fail(format!(
            "{s} documents {:?} for a read error, but: {all}",
            on_read_error(s, populate)
        ));
    }
    let last = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    eprintln!(
        "{s}: {} after {pages_ok} good pages; {}",
        if aborted {
            "aborted"
        } else if sigbus {
            "SIGBUS on touch"
        } else {
            "map failed"
        },
        map_err.unwrap_or(last)
    );
    Ok(Completion::Completed)
}

pub(super) fn map_mut_case(s: Strategy, dir: &Path) -> Outcome {
    if let Err(why) = usable_in(s, dir) {
        return skip(format!("{s} is not usable here: {why}"));
    }
    if let Err(why) = offers_map_mut(s, dir) {
        // Documented by the strategy, not a lack of this machine.
        return Ok(Completion::ignored_with(format!(
            "{s} offers no map_mut: {why}"
        )));
    }
    let p = page();
    let size = 4 * p + 1;
    let tf = TestFile::new_in(dir, size, 0).map_err(io("test file"))?;
    let old = tf.contents().map_err(io("read"))?;
    let file = tf.open().map_err(io("open"))?;
    let mut map = mapcopy_check::options(s)
        .map_mut(&file)
        .map_err(io("map_mut"))?;
    if map.strategy() != s {
        return fail(format!("mapped by {}", map.strategy()));
    }
    let mut c = Checker::new(p, 0, map.len(), old.clone());
    c.touch(&map, [0]).map_err(Failed::from)?;
    // Another process rewrites everything.
    let new = Modification::new(Kind::Pwrite, 0, 5 * p as u64, 1)
        .apply_checked(tf.path(), &old)
        .map_err(io("pwrite"))?;
    c.push_state(new);
    // A store into an untouched page (a write fault on a missing page).
    map[p + 5] = 0xA5;
    state_with_overlay(&c, 1, &map[p..2 * p], 5, &[0xA5])?;
    // The kernel stores into an untouched page: read(2) into it.
    let other = tf.dir().join("other");
    let seven = pattern::bytes(7, 0, 200);
    std::fs::write(&other, &seven).map_err(io("write other"))?;
    let n = File::open(&other)
        .and_then(|mut f| f.read(&mut map[2 * p + 100..2 * p + 300]))
        .map_err(io("read(2) into an untouched page of the mapping"))?;
    if n != 200 {
        return fail(format!("read(2) into the mapping read {n} bytes, want 200"));
    }
    state_with_overlay(&c, 2, &map[2 * p..3 * p], 100, &seven)?;
    // The pattern is ASCII: 0xA5 never occurs in the file unless a store leaked.
    map.fill(0xA5);
    let leaked = |what: &str| -> Result<(), Failed> {
        let now = std::fs::read(tf.path()).map_err(io("read"))?;
        if let Some(i) = now.iter().position(|&b| b == 0xA5) {
            return fail(format!(
                "{what}: a private store reached the file at byte {i}"
            ));
        }
        Ok(())
    };
    leaked("after the stores")?;
    check_bytes(
        &std::fs::read(tf.path()).map_err(io("read"))?,
        c.current(),
        "file after private stores",
    )?;
    let newer = Modification::new(Kind::Pwrite, 0, 5 * p as u64, 2)
        .apply_checked(tf.path(), c.current())
        .map_err(io("pwrite"))?;
    if let Some(i) = map.iter().position(|&b| b != 0xA5) {
        return fail(format!(
            "own store at byte {i} lost after another process wrote the file"
        ));
    }
    drop(map);
    leaked("after dropping the mapping")?;
    check_bytes(
        &std::fs::read(tf.path()).map_err(io("read"))?,
        &newer,
        "file at the end",
    )?;
    Ok(Completion::Completed)
}
