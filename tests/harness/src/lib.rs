//! The process harness nap's integration tests and its benchmarks share.
//!
//! Both run the real `nap-index` and `nap-peer` binaries on 127.0.0.1 and must never leave
//! one behind, whether a test fails or a bench panics: every process is a [`Proc`], killed
//! when its handle is dropped, with its output collected for the failure message. Around it:
//! free ports, an index or a primary–shadow pair started and waited for until it serves,
//! waits that poll until a deadline (never a fixed sleep taken as proof), HTTP calls with
//! every phase bounded in time, and SHA-256 as the protocol writes it.
//!
//! It does not depend on the `nap` crate (whose tests depend on it): it speaks nap's HTTP
//! API as JSON (`serde_json::Value`) and knows the binaries only by the lines they print.
//! Helpers that only tests or only benches need stay in their own crates.

mod hostile;
mod http;
mod limits;
mod nodes;
mod process;

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub use hostile::{Stall, WITHHELD};
pub use http::{
    agent, agent_with, api_agent, call, get, get_json, post, post_json, raw_status, Answer,
};
pub use limits::{limit_open_files, memory_kib};
pub use nodes::{
    addrs, free_port, index_command, primary_args, shadow_args, start_index, start_pair,
    start_peer, start_primary, start_shadow, wait_in_sync, Addrs, IndexProc, PeerProc,
    INDEX_LISTENING, PEER_SERVING,
};
pub use process::{Fleet, Proc, ProcId};

/// The default bound of every wait: generous, as CI machines are small and may be busy.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Calls `check` every `every` until it gives a value; panics saying `what` after `deadline`.
pub fn poll<T>(
    what: &str,
    every: Duration,
    deadline: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            started.elapsed() < deadline,
            "timed out waiting until {what}"
        );
        std::thread::sleep(every);
    }
}

/// `poll` every 50 ms up to `DEADLINE`.
pub fn poll_until<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    poll(what, Duration::from_millis(50), DEADLINE, check)
}

/// SHA-256 of `bytes`, as the protocol writes it (64 lowercase hex digits).
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_hex_is_lowercase_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    /// Whether `pid` is still a process (not reaped); a reused pid would say yes.
    fn exists(pid: u32) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    }

    #[test]
    fn a_proc_collects_its_output_and_is_killed_on_drop() {
        let script = "echo out; echo err >&2; printf partial >&2; exec sleep 60";
        let mut proc = Proc::spawn("sh", "sh", &["-c", script], &[]);
        assert_eq!(proc.wait_stdout("out"), "out");
        assert_eq!(proc.wait_stderr(|l| l == "err"), "err");
        poll_until("the partial line is written", || {
            proc.stderr_text().ends_with("partial").then_some(())
        });
        assert_eq!(proc.stderr_lines(), ["err"], "only complete lines");
        assert!(proc.try_wait().is_none());
        let pid = proc.pid();
        drop(proc);
        assert!(!exists(pid));
    }

    #[test]
    fn a_fleet_kills_its_stopped_processes_and_removes_its_folder() {
        let mut fleet = Fleet::new("nap-harness-test-");
        let root = fleet.root().to_path_buf();
        let mut sleep = std::process::Command::new("sleep");
        sleep.arg("60");
        let id = fleet.start("sleep", &mut sleep);
        fleet.signal(id, "STOP");
        assert!(fleet.proc(id).wait_stopped(DEADLINE));
        let pid = fleet.pid(id);
        drop(fleet);
        assert!(!exists(pid));
        assert!(!root.exists());
    }

    #[test]
    fn wait_exit_reads_stdout_to_the_end() {
        let mut proc = Proc::spawn("seq", "seq", &["1", "5000"], &[]);
        assert!(proc.wait_exit().success());
        assert_eq!(proc.stdout_lines().len(), 5000);
    }
}
