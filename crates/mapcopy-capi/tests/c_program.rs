//! The C test program (`tests/c/test_mapcopy.c`) built against the
//! installed library — through `pkg-config` and the shared library, and
//! statically against `libmapcopy.a` — and run on the temp dir's
//! filesystem: a mapping keeps its bytes while another process rewrites
//! and truncates the file, plain `MAP_PRIVATE` is caught changing, and
//! every error comes back as its code.
//!
//! `cargo test` does not build a crate's cdylib and staticlib, so this test
//! needs `cargo build -p mapcopy-capi` (or `cargo build --workspace`) first;
//! without it the test says so (and fails under `MAPCOPY_REQUIRE_ALL=1`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn target_dir() -> PathBuf {
    // .../target/debug/deps/c_program-HASH -> .../target/debug
    let exe = std::env::current_exe().expect("test executable");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{text}",
        out.status
    );
    text
}

#[test]
fn c_program_against_the_installed_library() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = target_dir();
    let lib = target.join("libmapcopy.a");
    let fresh = |p: &Path| {
        let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        match (m(p), m(&here.join("src/lib.rs"))) {
            (Some(l), Some(s)) => l >= s,
            _ => false,
        }
    };
    if !fresh(&lib) || !fresh(&target.join("libmapcopy.so")) {
        let why = format!(
            "{} is missing or older than src/lib.rs: run `cargo build -p mapcopy-capi` \
             (or `cargo build --workspace`) before `cargo test`",
            lib.display()
        );
        match mapcopy_check::fixture::skip_or_fail(&why) {
            Ok(r) => {
                eprintln!("skipped: {r}");
                return;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let profile = target.file_name().unwrap().to_str().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("prefix");
    let mut install = Command::new(here.join("install.sh"));
    install
        .arg(&prefix)
        .arg(&profile)
        .env("CARGO_TARGET_DIR", target.parent().unwrap());
    print!("{}", run(&mut install));
    let pc = |args: &[&str]| -> Vec<String> {
        run(Command::new("pkg-config")
            .args(args)
            .arg("mapcopy")
            .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig")))
        .split_whitespace()
        .map(str::to_string)
        .collect()
    };
    let src = here.join("tests/c/test_mapcopy.c");
    let strict = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1"];
    // Shared, through pkg-config.
    let shared = tmp.path().join("test_shared");
    run(Command::new("cc")
        .args(strict)
        .args(pc(&["--cflags"]))
        .arg(&src)
        .args(pc(&["--libs"]))
        .arg(format!("-Wl,-rpath,{}", prefix.join("lib").display()))
        .arg("-o")
        .arg(&shared));
    // Static: the archive and the libraries pkg-config lists as private.
    let stat = tmp.path().join("test_static");
    let private: Vec<String> = pc(&["--static", "--libs"])
        .into_iter()
        .filter(|a| a != "-lmapcopy" && !a.starts_with("-L"))
        .collect();
    run(Command::new("cc")
        .args(strict)
        .args(pc(&["--cflags"]))
        .arg(&src)
        .arg(prefix.join("lib/libmapcopy.a"))
        .args(private)
        .arg("-o")
        .arg(&stat));
    let dir = tempfile::tempdir().unwrap();
    for exe in [&shared, &stat] {
        let text = run(Command::new(exe).arg(dir.path()));
        print!("{}: {text}", exe.display());
        assert!(text.contains("all C ABI checks passed"), "{text}");
        assert!(text.contains("auto     held"), "{text}");
    }
}
