//! Fault injection, against every strategy `mapcopy::probe` finds usable:
//!
//! * EIO from the device under the file: the loop device under a mounted
//!   ext4 is shrunk (`losetup -c` after truncating its backing file) so the
//!   file's data blocks lie past the end of the device and every read of
//!   them fails with EIO in the block layer. (Device-mapper `error`/`flakey`
//!   targets would do the same, but this kernel has no device-mapper:
//!   `/dev/mapper/control` does not answer.) The map call fails with
//!   `ErrorKind::Io`, or the strategy follows its documented policy (a loud
//!   abort of the mapping process) — never a silent zero page. `Eager` must
//!   fail with `Io`.
//! * ENOSPC: mapping a file on a full filesystem either works (and holds the
//!   file's bytes) or fails with a clear error.
//! * The mapping process SIGKILLed while a writer waits on it: the writer
//!   proceeds within 1 s.
//! * 1000 mappings of one file, and mappings of 1000 files.
//! * A low RLIMIT_NOFILE: a clear error (or success), never a panic.
//!
//! Tests that need root, loop devices or dmsetup print why they skip; with
//! `MAPCOPY_REQUIRE_ALL=1` a skip is a failure. Own harness: the children
//! are this binary re-executed (`mapcopy_check::child` entry points).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};

mod common;
use common::{skip, usable_for};
use mapcopy::{ErrorKind, Strategy};
use mapcopy_check::fixture::FsKind;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

fn child(kind: &str, args: &[&str]) -> Command {
    mapcopy_check::child::command(kind, args)
}

/// Drops the file's clean pages from the page cache, so reads go to disk.
fn evict(f: &File) {
    let _ = f.sync_all();
    let _ = rustix::fs::fadvise(f, 0, None, rustix::fs::Advice::DontNeed);
}

// ---------------------------------------------------------------- EIO

fn eio(fstype: FsKind) -> Result<(), Failed> {
    let fs = match common::mount(fstype) {
        Ok(fs) => fs,
        Err(why) => return skip(&why),
    };
    // A filler first pushes the data file's blocks well past the metadata.
    fs::write(fs.path().join("filler"), vec![1u8; 8 << 20])?;
    let path = fs.path().join("data");
    let want = pattern(1 << 20, 7);
    fs::write(&path, &want)?;
    // Hold the file open so its inode stays cached: only data reads fail.
    let f = File::open(&path)?;
    rustix::fs::syncfs(&f)?;
    evict(&f);
    // Which strategies to try, decided while the file still reads.
    let (strategies, others) = usable_for(&path);
    for (s, why) in others {
        eprintln!("{s} not tried on {fstype}: {why}");
    }
    if strategies.is_empty() {
        return Err("no strategy is usable for the file (Eager always should be)".into());
    }
    let at = common::physical_start(&path)?;
    if at < (4 << 20) {
        return Err(
            format!("data file starts at {at}, too close to the metadata to cut there").into(),
        );
    }
    // Cut inside the file: its first 256 KiB stay readable, the rest fails
    // (a strategy must not take the failure for the end of the file).
    common::fail_io_from(&fs, at + (256 << 10))?;
    evict(&f);
    // Precondition: the data really comes from the failing device now.
    let mut probe = vec![0u8; 4096];
    match f.read_at(&mut probe, 512 * 1024) {
        Err(e) if e.raw_os_error() == Some(libc::EIO) => {}
        other => {
            return Err(format!("precondition: a read should fail with EIO, got {other:?}").into());
        }
    }
    match f.read_at(&mut probe, 0) {
        Ok(4096) if probe[..] == want[..4096] => eprintln!("the file's first 256 KiB still read"),
        Ok(_) => return Err("the head of the file reads wrong bytes".into()),
        // xfs shuts itself down soon after its log device fails.
        Err(e) => eprintln!("the whole file fails now ({e}): the filesystem shut down"),
    }
    evict(&f);
    let mut failures = Vec::new();
    for s in strategies {
        for populate in [false, true] {
            // The child maps the fd we hold (as its stdin): opening by name
            // again may itself fail once the filesystem sees I/O errors.
            let how = if populate { "populate" } else { "lazy" };
            let out = child("eio", &[path.to_str().unwrap(), s.name(), how])
                .stdin(Stdio::from(f.try_clone()?))
                .stderr(Stdio::piped())
                .output()?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            eprintln!(
                "{s} ({how}): status {}, stdout {stdout:?}, stderr {:?}",
                out.status,
                stderr.trim()
            );
            let line = stdout.lines().last().unwrap_or("");
            let signal = out.status.signal();
            let ok = match (s, line) {
                (_, "MAPERR Io") => true,
                // A refusal hands out no bytes either (Reflink cannot make
                // its clone on a failing filesystem); only Eager must say Io.
                (_, "MAPERR Unsupported") if s != Strategy::Eager => true,
                // With populate(true) every strategy reads everything in
                // the map call: the error must come back from it. Eager
                // always reads at map time.
                _ if populate || s == Strategy::Eager => false,
                (_, l) if l.starts_with("READ") => false,
                // Lazy's documented policy: abort with a message naming
                // the error.
                (Strategy::Lazy, _) => {
                    signal == Some(libc::SIGABRT) && stderr.contains("Input/output error")
                }
                // The zero-copy strategies' documented policy (Lease, Guard
                // map the file, Reflink a clone): the page cannot be read,
                // SIGBUS, as with any mapping of the file.
                (_, _) => signal == Some(libc::SIGBUS),
            };
            if !ok {
                failures.push(format!("{s} ({how}): {line:?} (status {})", out.status));
            }
        }
    }
    if !failures.is_empty() {
        return Err(format!("EIO not reported as an error: {failures:?}").into());
    }
    Ok(())
}

fn child_eio(args: &[String]) -> i32 {
    let s = args[1].parse::<Strategy>().unwrap();
    let populate = args[2] == "populate";
    let f = File::from(std::io::stdin().as_fd().try_clone_to_owned().unwrap());
    evict(&f);
    match mapcopy_check::options(s).populate(populate).map(&f) {
        Err(e) => {
            eprintln!("{e}");
            println!("MAPERR {:?}", e.kind());
        }
        Ok(m) => {
            println!("MAPPED");
            let _ = std::io::stdout().flush();
            let want = pattern(1 << 20, 7);
            if m[..] == want[..] {
                println!("READOK");
            } else {
                let bad = m.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
                println!("READBAD at {bad}");
            }
        }
    }
    0
}

// ---------------------------------------------------------------- ENOSPC

fn enospc(fstype: FsKind) -> Result<(), Failed> {
    let fs = match common::mount(fstype) {
        Ok(fs) => fs,
        Err(why) => return skip(&why),
    };
    let path = fs.path().join("data");
    let want = pattern(4 << 20, 3);
    fs::write(&path, &want)?;
    // Fill the filesystem.
    let mut filler = File::create(fs.path().join("filler"))?;
    let block = vec![0x55u8; 1 << 20];
    loop {
        match filler.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => return Err(e.into()),
        }
    }
    let _ = filler.sync_all();
    // Small files too, until even inodes/blocks for them run out.
    for i in 0..10_000 {
        if fs::write(fs.path().join(format!("f{i}")), b"x").is_err() {
            break;
        }
    }
    let f = File::open(&path)?;
    let (strategies, others) = usable_for(&path);
    for (s, why) in others {
        eprintln!("{s} not tried on {fstype}: {why}");
    }
    let mut failures = Vec::new();
    for s in strategies {
        match mapcopy_check::options(s).map(&f) {
            Ok(m) => {
                eprintln!("{s}: mapped on a full filesystem");
                if m[..] != want[..] {
                    failures.push(format!("{s}: mapped but does not hold the file's bytes"));
                }
            }
            Err(e) => {
                eprintln!("{s}: {:?}: {e}", e.kind());
                if !matches!(e.kind(), ErrorKind::Io | ErrorKind::Unsupported)
                    || e.to_string().is_empty()
                {
                    failures.push(format!("{s}: unexpected error {:?}: {e}", e.kind()));
                }
            }
        }
    }
    if !failures.is_empty() {
        return Err(failures.join("; ").into());
    }
    Ok(())
}

// ---------------------------------------------------------------- SIGKILL

fn sigkill_mapper() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("data");
    fs::write(&path, pattern(1 << 20, 1))?;
    let mut failures = Vec::new();
    for s in usable_for(&path).0 {
        let mut c = child("hold", &[path.to_str().unwrap(), s.name()])
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = [0u8; 7];
        c.stdout.take().unwrap().read_exact(&mut line)?;
        if &line != b"MAPPED\n" {
            let _ = c.kill();
            failures.push(format!(
                "{s}: child did not map: {:?}",
                String::from_utf8_lossy(&line)
            ));
            continue;
        }
        // Freeze the mapper so it cannot answer anything (a lease break, a
        // permission event), then a writer in another process opens the
        // file, writes and closes; it may have to wait for the mapper.
        let pid = rustix::process::Pid::from_raw(c.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::STOP);
        let mut w = child("write", &[path.to_str().unwrap()])
            .stdout(Stdio::piped())
            .spawn()?;
        std::thread::sleep(Duration::from_millis(200));
        let waited = w.try_wait()?.is_none();
        let killed_at = Instant::now();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        let _ = c.wait();
        let mut done = None;
        while killed_at.elapsed() < Duration::from_secs(5) {
            if let Some(st) = w.try_wait()? {
                done = Some((st, killed_at.elapsed()));
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        match done {
            Some((st, after)) if st.success() && after <= Duration::from_secs(1) => {
                eprintln!(
                    "{s}: writer {} the frozen mapper; done {after:?} after it was killed",
                    if waited {
                        "waited on"
                    } else {
                        "did not wait for"
                    }
                )
            }
            Some((st, after)) => failures.push(format!(
                "{s}: writer finished {st} only {after:?} after the kill"
            )),
            None => {
                let _ = w.kill();
                failures.push(format!(
                    "{s}: writer still waiting 5 s after the mapper was killed"
                ));
            }
        }
    }
    if !failures.is_empty() {
        return Err(failures.join("; ").into());
    }
    Ok(())
}

fn child_hold(args: &[String]) -> i32 {
    let (path, s) = (&args[0], args[1].parse::<Strategy>().unwrap());
    let f = File::open(path).unwrap();
    let m = match mapcopy_check::options(s).map(&f) {
        Ok(m) => m,
        Err(e) => {
            println!("ERROR {e}");
            return 1;
        }
    };
    // Touch a few pages so lazy strategies have state in flight.
    let sum: u64 = m.iter().step_by(4096 * 16).map(|&b| b as u64).sum();
    println!("MAPPED");
    let _ = std::io::stdout().flush();
    std::thread::sleep(Duration::from_secs(60));
    std::hint::black_box(sum) as i32
}

fn child_write(args: &[String]) -> i32 {
    let f = OpenOptions::new().write(true).open(&args[0]).unwrap();
    f.write_all_at(&pattern(8192, 9), 4096).unwrap();
    0
}

// ---------------------------------------------------------------- many

fn many_mappings_of_one_file() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("data");
    let want = pattern(64 << 10, 5);
    fs::write(&path, &want)?;
    for s in usable_for(&path).0 {
        let f = File::open(&path)?;
        let mut maps = Vec::with_capacity(1000);
        for i in 0..1000 {
            match mapcopy_check::options(s).map(&f) {
                Ok(m) => maps.push(m),
                Err(e) => return Err(format!("{s}: mapping #{i} of one file failed: {e}").into()),
            }
        }
        // Read each once (a lazy strategy snapshots a page at its first
        // access), then another process rewrites part of the file: every
        // mapping keeps the bytes it showed.
        for (i, m) in maps.iter().enumerate() {
            if m[..] != want[..] {
                return Err(format!("{s}: mapping #{i} does not hold the file's bytes").into());
            }
        }
        let st = child("write", &[path.to_str().unwrap()]).status()?;
        assert!(st.success());
        for (i, m) in maps.iter().enumerate() {
            if m[..] != want[..] {
                return Err(format!("{s}: mapping #{i} changed or is wrong").into());
            }
        }
        fs::write(&path, &want)?;
        eprintln!("{s}: 1000 mappings of one file hold");
    }
    Ok(())
}

fn mappings_of_1000_files() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    for i in 0..1000 {
        fs::write(dir.path().join(format!("f{i}")), pattern(8192, i as u8))?;
    }
    for s in usable_for(&dir.path().join("f0")).0 {
        let mut maps = Vec::with_capacity(1000);
        let mut errors = Vec::new();
        for i in 0..1000 {
            let f = File::open(dir.path().join(format!("f{i}")))?;
            match mapcopy_check::options(s).map(&f) {
                Ok(m) => maps.push((i, m)),
                Err(e) if matches!(e.kind(), ErrorKind::Io | ErrorKind::Unsupported) => {
                    errors.push(e.to_string())
                }
                Err(e) => {
                    return Err(format!("{s}: file {i}: unexpected {:?}: {e}", e.kind()).into());
                }
            }
        }
        for (i, m) in &maps {
            if m[..] != pattern(8192, *i as u8)[..] {
                return Err(format!("{s}: mapping of file {i} is wrong").into());
            }
        }
        eprintln!(
            "{s}: {} of 1000 files mapped, {} clear errors {:?}",
            maps.len(),
            errors.len(),
            errors.first()
        );
        // Eager needs nothing per mapping but memory: all must map.
        if s == Strategy::Eager && maps.len() != 1000 {
            return Err(format!(
                "eager mapped only {} of 1000 files: {:?}",
                maps.len(),
                errors.first()
            )
            .into());
        }
        if maps.is_empty() {
            return Err(format!("{s}: no file mapped at all: {:?}", errors.first()).into());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- RLIMIT_NOFILE

fn low_nofile() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("data");
    fs::write(&path, pattern(256 << 10, 11))?;
    let mut failures = Vec::new();
    for s in usable_for(&path).0 {
        let out = child("nofile", &[path.to_str().unwrap(), s.name()]).output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprintln!("{s}: status {}, {}", out.status, stdout.trim());
        let mut lines = stdout.lines();
        let first = lines.next().unwrap_or("");
        let after = lines.next().unwrap_or("");
        let ok = out.status.success()
            && (first == "OK"
                || first.starts_with("ERR Io ")
                || first.starts_with("ERR Unsupported "))
            && after == "AFTER OK";
        if !ok {
            failures.push(format!(
                "{s}: status {} output {stdout:?} stderr {:?}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    if !failures.is_empty() {
        return Err(failures.join("; ").into());
    }
    Ok(())
}

fn child_nofile(args: &[String]) -> i32 {
    let (path, s) = (&args[0], args[1].parse::<Strategy>().unwrap());
    let f = File::open(path).unwrap();
    // No new file descriptor can be made: the limit is the highest fd in use + 1.
    let highest = fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap();
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(highest + 1),
            maximum: lim.maximum,
        },
    )
    .unwrap();
    // Fill every free slot below the limit.
    let mut hold = Vec::new();
    while let Ok(f) = File::open("/dev/null") {
        hold.push(f);
    }
    assert!(File::open(path).is_err(), "the limit should forbid new fds");
    match mapcopy_check::options(s).map(&f) {
        Ok(m) => {
            if m[..] != pattern(256 << 10, 11)[..] {
                println!("WRONG BYTES");
                return 1;
            }
            println!("OK");
        }
        Err(e) => println!("ERR {:?} {e}", e.kind()),
    }
    // With descriptors to spare again, the strategy must work: a refusal
    // for lack of fds is not remembered as if it were a lack of privileges.
    // Give back both the descriptors and the old limit: with the limit at
    // "highest fd in use + 1" only the slots `hold` had are free, which may
    // be a single one when the inherited fds are contiguous.
    drop(hold);
    rustix::process::setrlimit(rustix::process::Resource::Nofile, lim).unwrap();
    match mapcopy_check::options(s).map(&f) {
        Ok(m) if m[..] == pattern(256 << 10, 11)[..] => println!("AFTER OK"),
        Ok(_) => println!("AFTER WRONG BYTES"),
        Err(e) => println!("AFTER ERR {:?} {e}", e.kind()),
    }
    0
}

fn main() {
    mapcopy_check::child::dispatch_with(&[
        ("eio", child_eio),
        ("hold", child_hold),
        ("write", child_write),
        ("nofile", child_nofile),
    ]);
    let mut args = Arguments::from_args();
    // Loop devices and dm names are global: one at a time.
    args.test_threads = Some(1);
    let trials = vec![
        Trial::test("eio_from_device_is_an_error_not_zeros_ext4", || {
            eio(FsKind::Ext4)
        }),
        Trial::test("eio_from_device_is_an_error_not_zeros_xfs", || {
            eio(FsKind::Xfs)
        }),
        Trial::test("eio_from_device_is_an_error_not_zeros_btrfs", || {
            eio(FsKind::Btrfs)
        }),
        Trial::test("enospc_full_filesystem_ext4", || enospc(FsKind::Ext4)),
        Trial::test("enospc_full_filesystem_xfs", || enospc(FsKind::Xfs)),
        Trial::test("enospc_full_filesystem_btrfs", || enospc(FsKind::Btrfs)),
        Trial::test("sigkilled_mapper_does_not_block_writer", sigkill_mapper),
        Trial::test("thousand_mappings_of_one_file", many_mappings_of_one_file),
        Trial::test("mappings_of_thousand_files", mappings_of_1000_files),
        Trial::test("low_rlimit_nofile_is_a_clear_error", low_nofile),
    ];
    libtest_mimic::run(&args, trials).exit();
}
