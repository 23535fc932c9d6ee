//! The evaluation suite's smoke run: `bench --quick` (the example `cargo test` builds beside
//! the binaries) completes, every call it made succeeded, and it wrote its tables, figure
//! and summary. No speed is asserted: its numbers belong in BENCHMARKS.md, not in a test.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the bench if the test fails or times out.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bench_example() -> PathBuf {
    let profile_dir = PathBuf::from(env!("CARGO_BIN_EXE_nap-index"))
        .parent()
        .expect("target/<profile>")
        .to_path_buf();
    let bench = profile_dir
        .join("examples")
        .join(format!("bench{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bench.is_file(),
        "{} is missing: `cargo test` builds it (with --test alone, run `cargo build --examples`)",
        bench.display()
    );
    bench
}

/// Rows of a CSV file as maps from column name to cell (only the last column may hold commas).
fn rows(text: &str) -> Vec<std::collections::HashMap<String, String>> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    lines
        .map(|line| {
            header
                .iter()
                .zip(line.splitn(header.len(), ','))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

#[test]
fn the_quick_benchmark_completes_without_errors() {
    let out = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let file = |name: &str| std::fs::File::create(logs.path().join(name)).unwrap();
    // Without CARGO in its environment the bench does not try to build the binaries (they
    // are built already, and the build directory belongs to this cargo run).
    let child = Command::new(bench_example())
        .args(["--quick", "--out"])
        .arg(out.path())
        .env_remove("CARGO")
        .env_remove("CARGO_MANIFEST_DIR")
        .stdin(Stdio::null())
        .stdout(file("stdout"))
        .stderr(file("stderr"))
        .spawn()
        .expect("start the bench");
    let mut child = KillOnDrop(child);
    let started = Instant::now();
    let deadline = Duration::from_secs(600);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < deadline,
            "bench --quick still running after {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = |name: &str| std::fs::read_to_string(logs.path().join(name)).unwrap_or_default();
    let (stdout, stderr) = (log("stdout"), log("stderr"));
    assert!(
        status.success(),
        "bench --quick failed ({status}):\n{stderr}\n{stdout}"
    );

    let read = |name: &str| {
        std::fs::read_to_string(out.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let sweep = rows(&read("sweep.csv"));
    assert_eq!(sweep.len(), 2, "two steps in --quick");
    for step in &sweep {
        assert_eq!(step["errors"], "0", "{step:?}");
        assert_eq!(step["shadow_in_sync"], "true", "{step:?}");
        assert!(step["mix_ops"].parse::<u64>().unwrap() > 0, "{step:?}");
    }
    let core = rows(&read("core.csv"));
    let keys: Vec<&str> = core.iter().map(|m| m["metric"].as_str()).collect();
    for key in [
        "write",
        "failover_kill",
        "failover_freeze",
        "convergence",
        "search_under_load",
    ] {
        assert!(keys.contains(&key), "{key} missing from core.csv: {keys:?}");
    }
    for metric in &core {
        assert_eq!(metric["errors"], "0", "{metric:?}");
        assert!(metric["samples"].parse::<u64>().unwrap() >= 5, "{metric:?}");
    }
    assert!(read("sweep.svg").starts_with("<svg"));
    assert!(read("summary.md").contains("| peers |"));
    assert!(stdout.contains("Targets (on this run)"), "{stdout}");
}
