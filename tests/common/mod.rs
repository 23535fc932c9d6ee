//! What the integration tests add to the shared process harness (`nap-harness`, also used by
//! the benchmarks): cargo's paths to the binaries, an index with the tests' defaults (fast
//! heartbeats, no replication, in memory), peers logging at info, editors for `update`,
//! a holder serving corrupted bytes, and the API calls the tests repeat.

// Every test file compiles this module on its own and uses part of it.
#![allow(dead_code, unused_imports)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub use nap_harness::{
    addrs, agent, call, free_port, get, poll_until, post, raw_status, sha256_hex, Addrs, Answer,
    IndexProc, PeerProc, Proc, DEADLINE,
};

pub fn index_bin() -> &'static str {
    env!("CARGO_BIN_EXE_nap-index")
}

pub fn peer_bin() -> &'static str {
    env!("CARGO_BIN_EXE_nap-peer")
}

/// The binaries log at info, whatever the environment of `cargo test` says.
const INFO: &[(&str, &str)] = &[("RUST_LOG", "info")];

/// `extra` with the tests' defaults for what it does not set: fast heartbeats, replication
/// off (tests count holders exactly) and the state in memory (never the working directory).
fn with_defaults<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = Vec::new();
    for (flag, value) in [
        ("--heartbeat-interval", "0.3"),
        ("--peer-timeout", "3"),
        ("--replication-factor", "1"),
    ] {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    if !extra.contains(&"--data-dir") {
        args.push("--in-memory");
    }
    args.extend_from_slice(extra);
    args
}

/// Starts `nap-index` on a free port with the tests' defaults; `extra` adds or overrides flags.
pub fn start_index(extra: &[&str]) -> IndexProc {
    start_index_on("127.0.0.1:0", extra)
}

pub fn start_index_on(listen: &str, extra: &[&str]) -> IndexProc {
    let bin = Path::new(index_bin());
    nap_harness::start_index(bin, "index", listen, &with_defaults(extra), INFO)
}

pub const SECRET: &str = "test-cluster-secret";

/// Starts a primary on `port` replicating to `shadow_url`, with the test secret.
pub fn start_primary(port: u16, shadow_url: &str, extra: &[&str]) -> IndexProc {
    let bin = Path::new(index_bin());
    let args = with_defaults(extra);
    nap_harness::start_primary(bin, port, shadow_url, SECRET, &args, INFO)
}

/// Starts a read-only shadow on `port` following `primary_url`, with the test secret.
pub fn start_shadow(port: u16, primary_url: &str, extra: &[&str]) -> IndexProc {
    let bin = Path::new(index_bin());
    let args = with_defaults(extra);
    nap_harness::start_shadow(bin, port, primary_url, SECRET, &args, INFO)
}

/// A shadow and its primary on free ports, with the test secret: (primary, shadow, addresses).
pub fn start_pair(primary_extra: &[&str], shadow_extra: &[&str]) -> (IndexProc, IndexProc, Addrs) {
    let addrs = addrs();
    let (pargs, sargs) = (with_defaults(primary_extra), with_defaults(shadow_extra));
    let bin = Path::new(index_bin());
    let (primary, shadow) = nap_harness::start_pair(bin, &addrs, SECRET, &pargs, &sargs, INFO);
    (primary, shadow, addrs)
}

/// Starts `nap-peer serve` on a free port; `daemon` runs it without the shell.
pub fn start_peer(dir: &Path, index: &str, daemon: bool, extra: &[&str]) -> PeerProc {
    start_peer_env(dir, index, daemon, extra, &[])
}

pub fn start_peer_env(
    dir: &Path,
    index: &str,
    daemon: bool,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> PeerProc {
    let dir = dir.to_str().unwrap();
    let mut args = vec![
        "serve",
        "--dir",
        dir,
        "--listen",
        "127.0.0.1:0",
        "--index",
        index,
    ];
    if daemon {
        args.push("--daemon");
    }
    args.extend_from_slice(extra);
    let name = format!(
        "peer {}",
        Path::new(dir).file_name().unwrap().to_string_lossy()
    );
    let envs: Vec<(&str, &str)> = INFO.iter().chain(envs).copied().collect();
    nap_harness::start_peer(Path::new(peer_bin()), &name, &args, &envs)
}

/// Writes an executable shell script `name` with `body` into `dir`; returns its path.
pub fn script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path.to_str().unwrap().to_string()
}

/// An `$EDITOR` (in `dir`) that appends `line` to the file it is given.
pub fn appending_editor(dir: &Path, line: &str) -> String {
    script(dir, "append.sh", &format!("echo '{line}' >> \"$1\"\n"))
}

/// Starts a peer with the shell, whose `update` runs `editor`.
pub fn start_editing_peer(dir: &Path, index: &str, editor: &str, extra: &[&str]) -> PeerProc {
    start_peer_env(
        dir,
        index,
        false,
        extra,
        &[("EDITOR", editor), ("VISUAL", "")],
    )
}

/// An editor that appends a line, then waits until `release` exists (or a minute passes),
/// so the test decides when the edit ends.
pub fn waiting_editor(dir: &std::path::Path, release: &std::path::Path) -> String {
    script(
        dir,
        "slow-editor.sh",
        &format!(
            "echo 'edited' >> \"$1\"\necho \"editor open on $1\"\n\
             i=0\nwhile [ ! -e '{}' ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n",
            release.display()
        ),
    )
}

/// Creates the release file when dropped, so the editor script ends even if the test fails.
pub struct ReleaseOnDrop(pub std::path::PathBuf);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, b"");
    }
}

/// A file server that answers every request with `len` bytes of 'X' (a holder serving
/// corrupted content). Returns its address and a count of the requests it served.
pub fn corrupt_server(len: usize) -> (String, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            while reader.read_line(&mut head).is_ok_and(|n| n > 2) {}
            count.fetch_add(1, Ordering::SeqCst);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
            );
            let _ = stream.write_all(&vec![b'X'; len]);
        }
    });
    (addr, served)
}

/// A peer identity made by registering over HTTP (no peer process behind it).
pub struct Id {
    pub peer_id: String,
    pub token: String,
}

/// One file entry as a peer reports it, for `content`.
pub fn file_entry(name: &str, version: u64, content: &str) -> serde_json::Value {
    serde_json::json!({"name": name, "version": version, "size": content.len(),
                       "sha256": sha256_hex(content.as_bytes())})
}

/// Registers a new identity at `127.0.0.1:port` holding `files`; none may be refused.
pub fn identity(url: &str, port: u16, files: Vec<serde_json::Value>) -> Id {
    let answer = post(
        &format!("{url}/register"),
        &serde_json::json!({"addr": format!("127.0.0.1:{port}"), "files": files}).to_string(),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    let body = answer.json();
    assert!(body["rejected"].as_array().unwrap().is_empty(), "{body}");
    Id {
        peer_id: body["peer_id"].as_str().unwrap().into(),
        token: body["token"].as_str().unwrap().into(),
    }
}

/// `POST /lease` for `file` as `id`.
pub fn lease(url: &str, id: &Id, file: &str) -> Answer {
    post(
        &format!("{url}/lease"),
        &serde_json::json!({"peer_id": id.peer_id, "token": id.token, "file": file}).to_string(),
    )
}

/// The search results for `q` as JSON values.
pub fn search(index: &str, q: &str) -> Vec<serde_json::Value> {
    let url = format!("{index}/search?q={}", nap::protocol::url_encode(q));
    let answer = get(&url);
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()["results"].as_array().unwrap().clone()
}

/// Addresses of the up-to-date holders of exactly `name`.
pub fn holders(index: &str, name: &str) -> Vec<String> {
    search(index, name)
        .into_iter()
        .find(|r| r["name"] == name)
        .map(|r| {
            r["holders"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["addr"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}
