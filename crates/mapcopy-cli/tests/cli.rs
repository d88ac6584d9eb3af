//! Runs the `mapcopy` binary: `demo` must show the control breaking the
//! contract and Eager keeping it; `probe` must print text and valid JSON,
//! as root and as an unprivileged user.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_mapcopy");
const NOBODY: &str = "65534";

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run mapcopy");
    eprintln!(
        "$ {cmd:?}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Skips (returns false) when the test needs something the machine lacks;
/// with `MAPCOPY_REQUIRE_ALL=1` a skip is a failure.
fn require(ok: bool, what: &str) -> bool {
    if !ok && let Err(e) = mapcopy_check::fixture::skip_or_fail(format!("needs {what}")) {
        panic!("{e}");
    }
    ok
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn has_setpriv() -> bool {
    Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The cells of the table row that starts with `name`.
fn row<'a>(stdout: &'a str, name: &str) -> Vec<&'a str> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no row {name:?} in:\n{stdout}"));
    // Cells start with "kept", "VIOLATED" or "SIGBUS" and are separated by
    // at least two spaces.
    let mut cells = Vec::new();
    let mut rest = line;
    while let Some(i) = ["kept", "VIOLATED", "SIGBUS"]
        .iter()
        .filter_map(|w| rest.find(w))
        .min()
    {
        let tail = &rest[i..];
        let end = tail.find("  ").unwrap_or(tail.len());
        let cell = tail[..end].trim();
        cells.push(cell);
        rest = &tail[cell.len()..];
    }
    cells
}

#[test]
fn demo_shows_control_broken_and_eager_kept() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(Command::new(BIN)
        .args(["demo", "--size", "256K", "--dir"])
        .arg(dir.path()));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "demo failed: {:?}", out.status);

    let control = row(&stdout, "MAP_PRIVATE");
    assert_eq!(control.len(), 5, "{control:?}");
    // pwrite over a touched page, O_APPEND after shrink, O_TRUNC rewrite
    // change pages already read; truncation faults.
    assert!(control[0].contains("VIOLATED"), "{control:?}");
    assert!(control[2].contains("VIOLATED"), "{control:?}");
    assert!(control[3].contains("SIGBUS"), "{control:?}");
    assert!(control[4].contains("VIOLATED"), "{control:?}");
    // Untouched pages may follow the file (S1): MAP_PRIVATE is allowed that.
    assert_eq!(control[1], "kept, new");

    let eager = row(&stdout, "eager");
    assert_eq!(eager.len(), 5, "{eager:?}");
    for cell in &eager {
        assert!(cell.starts_with("kept"), "{eager:?}");
    }
    // Eager copied everything at map time: even untouched pages are old.
    assert_eq!(eager[1], "kept, old");
    assert_eq!(eager[3], "kept, old");
    // Every copy strategy the machine offers kept the contract everywhere.
    let table: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("----"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    assert!(table.len() >= 2, "{stdout}");
    for line in table.iter().filter(|l| !l.starts_with("MAP_PRIVATE")) {
        let name = line.split_whitespace().next().unwrap();
        let cells = row(&stdout, name);
        assert_eq!(cells.len(), 5, "{line}");
        assert!(cells.iter().all(|c| c.starts_with("kept")), "{line}");
    }
    // The temporary file is gone.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn demo_rejects_bad_sizes() {
    let out = run(Command::new(BIN).args(["demo", "--size", "4K"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("too small"));
    let out = run(Command::new(BIN).args(["demo", "--size", "lots"]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a size"));
}

/// Runs `bin probe` (text and JSON) on `file` and without a file, through
/// `wrap` (e.g. setpriv), checks both forms agree, and returns the JSON of
/// the probe of `file`.
fn probe_both(bin: &Path, wrap: &[&str], file: &Path) -> serde_json::Value {
    let cmd = |args: &[&str], path: Option<&Path>| {
        let mut c = match wrap.split_first() {
            Some((prog, rest)) => {
                let mut c = Command::new(prog);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        c.arg("probe").args(args);
        if let Some(p) = path {
            c.arg(p);
        }
        c
    };
    let mut json_of_file = None;
    for path in [Some(file), None] {
        let text = run(&mut cmd(&[], path));
        assert!(text.status.success());
        let text = String::from_utf8(text.stdout).unwrap();
        let json = run(&mut cmd(&["--json"], path));
        assert!(json.status.success());
        let v: serde_json::Value =
            serde_json::from_slice(&json.stdout).expect("probe --json prints valid JSON");

        let strategies = v["strategies"].as_array().unwrap();
        let names: Vec<&str> = strategies
            .iter()
            .map(|s| s["strategy"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "immutable",
                "kernel",
                "lease",
                "reflink",
                "guard",
                "lazy",
                "eager"
            ]
        );
        for s in strategies {
            let name = s["strategy"].as_str().unwrap();
            let usable = s["usable"].as_bool().unwrap();
            let why = s[if usable { "how" } else { "reason" }].as_str().unwrap();
            assert!(!why.is_empty());
            // What it lacks beyond the contract: Eager never has per-page
            // atomicity against a concurrent write().
            let lacks = s["lacks"].as_array().unwrap();
            if name == "eager" {
                assert!(
                    lacks
                        .iter()
                        .any(|l| l.as_str().unwrap().contains("atomicity"))
                );
                if usable {
                    assert!(text.contains("lacks: per-page atomicity"), "{text}");
                }
            }
            // The text form says the same (up to figures that change from
            // run to run, like the memory available).
            let stable = &why[..why.find(|c: char| c.is_ascii_digit()).unwrap_or(why.len())];
            assert!(
                text.lines().any(|l| l.contains(name) && l.contains(stable)),
                "{name}: {stable:?} not in\n{text}"
            );
        }
        // Auto picks the first usable strategy, and the text says so.
        // Without a file, Immutable is "usable for immutable files": a fact
        // of each file, so Auto's pick for no file in particular passes it.
        let first_usable = strategies
            .iter()
            .filter(|s| path.is_some() || s["strategy"] != "immutable")
            .find(|s| s["usable"] == true)
            .map(|s| s["strategy"].as_str().unwrap());
        assert_eq!(v["auto"].as_str(), first_usable);
        assert!(text.contains(&format!("auto picks: {}", first_usable.unwrap())));
        let topics: Vec<&str> = v["facts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["topic"].as_str().unwrap())
            .collect();
        assert_eq!(
            topics,
            [
                "capabilities",
                "userfaultfd",
                "filesystem",
                "reflink",
                "lease",
                "fanotify"
            ]
        );
        if path.is_some() {
            assert_eq!(v["path"].as_str(), Some(file.to_str().unwrap()));
            assert!(v["filesystem"]["name"].is_string());
            json_of_file = Some(v);
        } else {
            assert!(v["path"].is_null());
        }
    }
    json_of_file.unwrap()
}

fn fact<'a>(v: &'a serde_json::Value, topic: &str) -> &'a serde_json::Value {
    v["facts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["topic"] == topic)
        .unwrap()
}

fn reason<'a>(v: &'a serde_json::Value, strategy: &str) -> &'a str {
    let s = v["strategies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["strategy"] == strategy)
        .unwrap();
    s["reason"].as_str().or(s["how"].as_str()).unwrap()
}

/// A file owned by this user that anyone may read, in a directory anyone
/// may enter.
fn shared_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("probe-me");
    std::fs::write(&path, vec![1u8; 10_000]).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    (dir, path)
}

#[test]
fn probe_as_root() {
    if !require(is_root(), "root") {
        return;
    }
    let (_dir, path) = shared_file();
    let v = probe_both(Path::new(BIN), &[], &path);
    let caps = fact(&v, "capabilities")["finding"].as_str().unwrap();
    assert!(caps.contains("CAP_SYS_ADMIN held"), "{caps}");
    // Root owns the file and holds CAP_LEASE: the lease is taken.
    assert_eq!(fact(&v, "lease")["available"], true);
    assert!(reason(&v, "lease").contains("no writer has the file open"));
    // userfaultfd for kernel faults needs no sysctl as root.
    assert_eq!(fact(&v, "userfaultfd")["available"], true);
    assert!(v["auto"].is_string());
}

#[test]
fn probe_as_nobody() {
    if !require(is_root() && has_setpriv(), "root and setpriv (util-linux)") {
        return;
    }
    let (dir, path) = shared_file();
    // The build tree may sit where nobody cannot enter (/root): run a copy.
    let bin = dir.path().join("mapcopy");
    std::fs::copy(BIN, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let wrap = [
        "setpriv",
        "--reuid",
        NOBODY,
        "--regid",
        NOBODY,
        "--clear-groups",
    ];
    let v = probe_both(&bin, &wrap, &path);
    let caps = fact(&v, "capabilities")["finding"].as_str().unwrap();
    assert!(caps.contains("CAP_SYS_ADMIN not held"), "{caps}");
    assert!(caps.contains("euid 65534"), "{caps}");
    // fanotify pre-content needs CAP_SYS_ADMIN; the lease needs ownership.
    assert_eq!(fact(&v, "fanotify")["available"], false);
    assert!(reason(&v, "guard").contains("CAP_SYS_ADMIN"));
    assert_eq!(fact(&v, "lease")["available"], false);
    assert!(reason(&v, "lease").contains("owner"));
    // Eager needs nothing: an unprivileged user can always map.
    assert!(v["auto"].is_string());
    let eager = v["strategies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["strategy"] == "eager")
        .unwrap();
    assert_eq!(eager["usable"], true);
}

#[test]
fn probe_of_a_directory_fails_clearly() {
    let out = run(Command::new(BIN).args(["probe", "/"]));
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("directory"), "{stdout}");
}

#[test]
fn probe_on_overlayfs_names_it() {
    if !require(is_root(), "root") {
        return;
    }
    let o = mapcopy_check::fixture::Overlay::new(|_, upper| {
        std::fs::write(upper.join("f"), vec![7u8; 10_000])
    });
    let o = match o {
        Ok(o) => o,
        Err(why) => {
            require(false, &format!("an overlay mount ({why})"));
            return;
        }
    };
    let path = o.merged().join("f");
    let out = run(Command::new(BIN).arg("probe").arg(&path));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("(overlayfs)"), "{text}");
    assert!(text.contains("auto picks: eager"), "{text}");
    let out = run(Command::new(BIN).args(["probe", "--json"]).arg(&path));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["filesystem"]["name"], "overlayfs");
    let fs = fact(&v, "filesystem");
    assert_eq!(fs["available"], false);
    assert!(
        fs["finding"]
            .as_str()
            .unwrap()
            .contains("upper or lower layer can be written directly"),
        "{fs}"
    );
    for s in ["guard", "lease", "reflink"] {
        let why = reason(&v, s);
        assert!(
            why.starts_with("overlayfs (") && why.contains("Eager"),
            "{s}: {why}"
        );
    }
    assert_eq!(v["auto"], "eager");
}
