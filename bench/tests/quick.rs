//! The evaluation suite's smoke run: `bench --quick` completes, every call it made succeeded,
//! and it wrote its tables, figure and summary. No speed is asserted: its numbers belong in
//! BENCHMARKS.md, not in a test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nap_harness::Proc;

/// The nap binaries the bench runs, from beside it (target/<profile>/): `cargo test` at the
/// workspace root builds them, as nap's own tests need them.
fn nap_binaries_beside(bench: &Path) {
    let dir = bench.parent().expect("target/<profile>");
    for name in ["nap-index", "nap-peer"] {
        let bin = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
        assert!(
            bin.is_file(),
            "{} is missing: run `cargo test` at the workspace root, which builds it \
             (with -p nap-bench alone, run `cargo build -p nap --bins` first)",
            bin.display()
        );
    }
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
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_bench"));
    nap_binaries_beside(&bench);
    let out = tempfile::tempdir().unwrap();
    let mut command = Command::new(&bench);
    // Without CARGO in its environment the bench does not try to build the binaries (they
    // are built already, and the build directory belongs to this cargo run).
    command
        .args(["--quick", "--out"])
        .arg(out.path())
        .env_remove("CARGO")
        .env_remove("CARGO_MANIFEST_DIR");
    // Killed on drop if the test fails or times out.
    let mut run = Proc::start("bench --quick", &mut command);
    run.close_stdin();
    let status = run.wait_exit_within(Duration::from_secs(600));
    let (stdout, stderr) = (run.stdout_lines().join("\n"), run.stderr_text());
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
