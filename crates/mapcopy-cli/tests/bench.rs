//! `mapcopy bench` end to end on tiny files (a hidden size flag keeps it
//! fast): the outputs exist, results.json parses and holds exactly one
//! record per method × workload × size, every measured strategy read the
//! same bytes as MAP_PRIVATE, and the writer-cost control shows the writer
//! really ran in another process. No timing is asserted.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const STRATEGIES: [&str; 5] = ["lease", "guard", "reflink", "lazy", "eager"];

/// Runs `cmd`, killing it if it takes longer than `limit` (a strategy that
/// left a writer or a fault hanging must fail the test, not stall CI).
fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mapcopy bench");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        stdout.read_to_end(&mut v).map(|_| v)
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        stderr.read_to_end(&mut v).map(|_| v)
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for mapcopy bench") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mapcopy bench did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap().expect("read stdout"),
        stderr: err_reader.join().unwrap().expect("read stderr"),
    }
}

#[test]
fn bench_quick_writes_a_complete_report() {
    let out = tempfile::tempdir().expect("temp dir");
    let mut run = Command::new(env!("CARGO_BIN_EXE_mapcopy"));
    run.args([
        "bench",
        "--quick",
        "--sizes",
        "1M,2M",
        "--random-size",
        "8M",
        "--reps",
        "2",
        "--writes",
        "32",
        "--out",
    ])
    .arg(out.path());
    let run = output_within(&mut run, Duration::from_secs(600));
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "mapcopy bench failed: {}\n{stdout}\n{stderr}",
        run.status
    );
    assert!(
        stdout.contains("QUICK RUN"),
        "quick run not announced:\n{stdout}"
    );
    assert!(stdout.contains("goals:"), "no goals section:\n{stdout}");
    assert!(
        stderr.contains("bench: done"),
        "no progress on stderr:\n{stderr}"
    );

    for f in [
        "report.md",
        "results.json",
        "first.svg",
        "scan.svg",
        "random.svg",
        "threads.svg",
        "writer.svg",
    ] {
        let text =
            std::fs::read_to_string(out.path().join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        if f.ends_with(".svg") {
            assert!(
                text.starts_with("<svg ") && text.trim_end().ends_with("</svg>"),
                "{f} is not an SVG"
            );
        }
    }
    let report = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(
        report.contains("![scan](scan.svg)"),
        "report.md does not show the plots"
    );

    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json")).unwrap())
            .expect("results.json is valid JSON");
    assert_eq!(json["quick"], Value::Bool(true));

    let methods: Vec<&str> = json["methods"]
        .as_array()
        .expect("methods")
        .iter()
        .map(|m| m.as_str().expect("method name"))
        .collect();
    for b in ["map_private", "fs_read", "thp_copy", "eager"] {
        assert!(methods.contains(&b), "{b} missing from {methods:?}");
    }
    // Every strategy is either measured or skipped with a reason.
    let skipped: Vec<&str> = json["skipped"]
        .as_array()
        .expect("skipped")
        .iter()
        .map(|s| {
            assert!(!s["reason"].as_str().expect("reason").is_empty());
            s["strategy"].as_str().expect("strategy")
        })
        .collect();
    for s in STRATEGIES {
        assert!(
            methods.contains(&s) != skipped.contains(&s),
            "{s} must be measured or skipped, exactly one: {methods:?} / {skipped:?}"
        );
    }

    // Exactly one record per method × workload × size.
    let mut expected = BTreeMap::new();
    for w in json["workloads"].as_array().expect("workloads") {
        let name = w["workload"].as_str().expect("workload name");
        for size in w["sizes"].as_array().expect("sizes") {
            for m in &methods {
                expected.insert((m.to_string(), name.to_string(), size.as_u64().unwrap()), 0);
            }
        }
    }
    assert_eq!(expected.len(), methods.len() * (4 * 2 + 1));
    let records = json["records"].as_array().expect("records");
    for r in records {
        let key = (
            r["strategy"].as_str().expect("strategy").to_string(),
            r["workload"].as_str().expect("workload").to_string(),
            r["size_bytes"].as_u64().expect("size_bytes"),
        );
        *expected
            .get_mut(&key)
            .unwrap_or_else(|| panic!("unexpected record {key:?}")) += 1;
        // A failed measurement (including bytes that differ from
        // MAP_PRIVATE's) is a bug in a strategy the probe called usable.
        assert!(r["error"].is_null(), "{key:?} failed: {}", r["error"]);
        let (min, med, max) = (
            r["min_s"].as_f64().expect("min_s"),
            r["median_s"].as_f64().expect("median_s"),
            r["max_s"].as_f64().expect("max_s"),
        );
        assert!(
            0.0 < min && min <= med && med <= max,
            "{key:?}: {min} {med} {max}"
        );
        for k in [
            "ratio_to_map_private",
            "ratio_to_fs_read",
            "ratio_to_thp_copy",
        ] {
            assert!(r[k].as_f64().expect(k) > 0.0, "{key:?}: {k}");
        }
        assert!(r["private_bytes"].is_i64(), "{key:?}: private_bytes");
        if key.0 == "map_private" {
            assert_eq!(r["ratio_to_map_private"].as_f64(), Some(1.0));
        }
    }
    for (key, n) in &expected {
        assert_eq!(*n, 1, "{key:?} has {n} records");
    }

    // Writer cost: the control (a plain MAP_PRIVATE mapping) must see the
    // other process's write; every strategy must keep its page 0.
    let writer = json["writer_cost"].as_array().expect("writer_cost");
    let row = |name: &str| {
        writer
            .iter()
            .find(|w| w["mapping"] == name)
            .unwrap_or_else(|| panic!("no writer row {name}"))
    };
    assert!(row("none")["us_per_write_median"].as_f64().expect("µs") > 0.0);
    assert!(row("none")["us_per_rewrite_median"].as_f64().expect("µs") > 0.0);
    assert_eq!(
        row("map_private")["page0_kept"],
        Value::Bool(false),
        "the writer's pwrite did not show through MAP_PRIVATE: did it run?"
    );
    for s in STRATEGIES.iter().filter(|s| methods.contains(s)) {
        let r = row(s);
        assert!(r["error"].is_null(), "writer with {s}: {}", r["error"]);
        assert_eq!(
            r["page0_kept"],
            Value::Bool(true),
            "{s} let a writer change page 0"
        );
    }

    // Truncation and full rewrite by another process: the control sees the
    // rewrite; every strategy keeps its bytes through both.
    let file = json["file_cost"].as_array().expect("file_cost");
    let frow = |name: &str| {
        file.iter()
            .find(|w| w["mapping"] == name)
            .unwrap_or_else(|| panic!("no file-cost row {name}"))
    };
    assert!(frow("none")["truncate_ms_median"].as_f64().expect("ms") > 0.0);
    assert_eq!(frow("map_private")["rewrite_copy_kept"], Value::Bool(false));
    for s in STRATEGIES.iter().filter(|s| methods.contains(s)) {
        let r = frow(s);
        assert!(r["error"].is_null(), "file cost with {s}: {}", r["error"]);
        assert_eq!(r["truncate_page0_kept"], Value::Bool(true), "{s}");
        assert_eq!(r["rewrite_copy_kept"], Value::Bool(true), "{s}");
    }

    // Immutable on a sealed memfd, against MAP_PRIVATE of it.
    let imm = &json["immutable"];
    assert!(imm["error"].is_null(), "{}", imm["error"]);
    let imm_rows = imm["records"].as_array().expect("immutable records");
    let methods_imm: Vec<&str> = imm_rows
        .iter()
        .map(|r| r["method"].as_str().expect("method"))
        .collect();
    assert_eq!(methods_imm, ["MAP_PRIVATE", "immutable", "auto"]);
    for r in imm_rows {
        assert!(r["error"].is_null(), "{}", r["error"]);
        assert!(r["us_median"].as_f64().expect("µs") > 0.0);
    }

    let goals = json["goals"].as_array().expect("goals");
    assert_eq!(goals.len(), 22);
    for g in goals {
        assert!(g["met"].is_boolean() || g["met"].is_null());
        assert!(!g["detail"].as_str().expect("detail").is_empty());
    }
}

#[test]
fn bench_rejects_bad_sizes() {
    let run = Command::new(env!("CARGO_BIN_EXE_mapcopy"))
        .args(["bench", "--sizes", "1000"])
        .output()
        .expect("run mapcopy bench");
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("multiple of 4 KiB"));
}
