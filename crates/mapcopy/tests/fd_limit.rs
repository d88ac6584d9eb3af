//! No fd ceiling: 10,000 live `Auto` mappings of 10,000 files under a soft
//! `RLIMIT_NOFILE` of 1024, in a child process that lowers its own soft
//! limit (the hard limit stays as the system set it). Every mapping holds
//! its file's bytes; the process can still open files afterwards; a named
//! strategy that keeps fds, once they are gone, says what to do.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use mapcopy::{Consistency, MapOptions, Strategy};
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

const FILES: usize = 10_000;
const SOFT: u64 = 1024;
/// The entry point that maps every file of a directory.
const CHILD: &str = "fd-limit-child";

fn child_main(args: &[String]) -> i32 {
    let Some(dir) = args.first() else {
        eprintln!("fd_limit child: needs a directory");
        return 2;
    };
    match child(Path::new(dir)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("fd_limit child: {e}");
            1
        }
    }
}

fn contents(i: usize) -> Vec<u8> {
    let len = 1 + (i * 7919) % 20_000;
    (0..len)
        .map(|k| (k as u8) ^ (i as u8) ^ (i >> 8) as u8)
        .collect()
}

fn main() {
    mapcopy_check::child::dispatch_with(&[(CHILD, child_main)]);
    let tmp = tempfile::Builder::new()
        .prefix("mapcopy-fd-limit-")
        .tempdir()
        .expect("temp dir");
    for i in 0..FILES {
        std::fs::write(tmp.path().join(format!("{i:05}")), contents(i)).expect("write");
    }
    let out = mapcopy_check::child::command(CHILD, &[tmp.path()])
        .output()
        .expect("spawn child");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "child failed: {}", out.status);
    println!("fd_limit: ok");
}

fn child(dir: &Path) -> Result<(), String> {
    let hard = getrlimit(Resource::Nofile).maximum;
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(SOFT),
            maximum: hard,
        },
    )
    .map_err(|e| format!("setrlimit: {e}"))?;
    let mut maps = Vec::with_capacity(FILES);
    let mut picked: BTreeMap<Strategy, usize> = BTreeMap::new();
    for i in 0..FILES {
        let path = dir.join(format!("{i:05}"));
        let file = File::open(&path).map_err(|e| format!("open file {i}: {e}"))?;
        let m = MapOptions::new()
            .map(&file)
            .map_err(|e| format!("Auto mapping {i} of {FILES}: {e}"))?;
        *picked.entry(m.strategy()).or_default() += 1;
        maps.push(m);
    }
    for (i, m) in maps.iter().enumerate() {
        if m[..] != contents(i)[..] {
            return Err(format!(
                "mapping {i} ({}) holds the wrong bytes",
                m.strategy()
            ));
        }
    }
    println!("{FILES} live Auto mappings under a soft RLIMIT_NOFILE of {SOFT}: {picked:?}");
    // The program itself can still open files.
    let extra: Vec<File> = (0..16)
        .map(|i| File::open(dir.join(format!("{i:05}"))))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("opening files with the mappings live: {e}"))?;
    drop(extra);

    // Use up the fds (on /dev/null: opening a guarded file would make the
    // guard thread need an fd for the event), then ask the strategies that
    // keep one per mapping to map a file that Auto mapped with Eager (so no
    // fd of it is kept yet).
    let probe = mapcopy::probe(None);
    let last = FILES - 1;
    let probe_file = File::open(dir.join(format!("{last:05}"))).map_err(|e| e.to_string())?;
    if maps[last].strategy() == Strategy::Guard {
        return Err("the last file was guarded: the fd fallback never happened".into());
    }
    let mut hog = Vec::new();
    while let Ok(f) = File::open("/dev/null") {
        hog.push(f);
    }
    for s in [Strategy::Guard, Strategy::Lease, Strategy::Lazy] {
        let usable = probe
            .strategies
            .iter()
            .any(|e| e.strategy == s && e.usable.is_ok());
        if !usable {
            continue;
        }
        match mapcopy_check::options(s)
            .consistency(Consistency::PerPage)
            .map(&probe_file)
        {
            Ok(m) => {
                return Err(format!(
                    "{s} mapped with no fd left ({} kept)",
                    m.strategy()
                ));
            }
            Err(e) if e.to_string().contains("RLIMIT_NOFILE") => {
                println!("{s} with no fd left: {:?}: {e}", e.kind());
            }
            Err(e) => return Err(format!("{s}'s error does not say what to do: {e}")),
        }
    }
    // Auto still maps (a strategy that needs no fd).
    let m = MapOptions::new()
        .map(&probe_file)
        .map_err(|e| format!("Auto with no fd left: {e}"))?;
    if m[..] != contents(last)[..] {
        return Err("Auto with no fd left: wrong bytes".into());
    }
    drop(hog);
    Ok(())
}
