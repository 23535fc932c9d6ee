//! nap's two binaries as processes: an index (alone, or a primary and its read-only shadow)
//! and a peer, each started and waited for until it prints where it serves. The binaries'
//! paths come from the caller: tests have cargo's `CARGO_BIN_EXE_*`, benches find them
//! beside themselves.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::http::get_json;
use crate::process::Proc;
use crate::DEADLINE;

/// What `nap-index` prints on stdout once it serves: "nap-index listening on URL".
pub const INDEX_LISTENING: &str = "listening on";

/// What `nap-peer serve` prints on stdout once it serves:
/// "nap peer serving DIR at ADDR (index: URL[, URL...])".
pub const PEER_SERVING: &str = "nap peer serving";

/// A free port on 127.0.0.1 (bound, then released: good enough for a server started right
/// away).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

/// Ports and base URLs for a primary and its shadow, both on 127.0.0.1.
#[derive(Clone, Debug)]
pub struct Addrs {
    pub pport: u16,
    pub sport: u16,
    pub purl: String,
    pub surl: String,
}

/// Two distinct free ports for a primary and its shadow.
pub fn addrs() -> Addrs {
    let (pport, sport) = loop {
        let (a, b) = (free_port(), free_port());
        if a != b {
            break (a, b);
        }
    };
    Addrs {
        pport,
        sport,
        purl: format!("http://127.0.0.1:{pport}"),
        surl: format!("http://127.0.0.1:{sport}"),
    }
}

/// A running index and its base URL.
pub struct IndexProc {
    pub proc: Proc,
    pub url: String,
}

impl IndexProc {
    /// Waits until the index answers `GET /health` as `role` ("primary" or "shadow"). Panics
    /// if it answers as the other, exits, or is silent for `DEADLINE`.
    pub fn wait_ready(&mut self, role: &str) {
        let health = format!("{}/health", self.url);
        let started = Instant::now();
        loop {
            if let Ok(answer) = get_json::<Value>(&health) {
                assert_eq!(answer["role"], role, "{} answers as {}", self.url, answer);
                return;
            }
            if let Some(exit) = self.proc.try_wait() {
                panic!("{} exited at start-up ({exit})", self.proc.name);
            }
            assert!(started.elapsed() < DEADLINE, "{health} never answered");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The command line of `nap-index` at `bin` listening on `listen`, with `args`.
pub fn index_command<S: AsRef<OsStr>>(bin: &Path, listen: &str, args: &[S]) -> Command {
    let mut command = Command::new(bin);
    command.args(["--listen", listen]).args(args);
    command
}

/// The flags of a primary replicating to `shadow_url`.
pub fn primary_args(shadow_url: &str, secret: &str) -> Vec<String> {
    ["--shadow", shadow_url, "--cluster-secret", secret]
        .map(String::from)
        .to_vec()
}

/// The flags of a read-only shadow following `primary_url`.
pub fn shadow_args(primary_url: &str, secret: &str) -> Vec<String> {
    let flags = ["--role", "shadow", "--primary", primary_url];
    flags
        .into_iter()
        .chain(["--cluster-secret", secret])
        .map(String::from)
        .collect()
}

/// Starts `command` (a `nap-index`) as `name` and waits until it prints its address.
fn start_listening(name: &str, mut command: Command, envs: &[(&str, &str)]) -> IndexProc {
    command.envs(envs.iter().copied());
    let proc = Proc::start(name, &mut command);
    let line = proc.wait_stdout(INDEX_LISTENING);
    let url = line
        .rsplit(' ')
        .next()
        .filter(|url| url.starts_with("http://"))
        .unwrap_or_else(|| panic!("{name}: unexpected line {line:?}"))
        .to_string();
    IndexProc { proc, url }
}

/// `nap-index` at `bin` as `name` on `listen` (port 0: one the OS picks) with `args` and
/// `envs`, once it has printed the address it listens on.
pub fn start_index<S: AsRef<OsStr>>(
    bin: &Path,
    name: &str,
    listen: &str,
    args: &[S],
    envs: &[(&str, &str)],
) -> IndexProc {
    start_listening(name, index_command(bin, listen, args), envs)
}

/// A primary on 127.0.0.1:`port` replicating to `shadow_url`, sharing `secret`.
pub fn start_primary<S: AsRef<OsStr>>(
    bin: &Path,
    port: u16,
    shadow_url: &str,
    secret: &str,
    args: &[S],
    envs: &[(&str, &str)],
) -> IndexProc {
    let listen = format!("127.0.0.1:{port}");
    let mut command = index_command(bin, &listen, &primary_args(shadow_url, secret));
    command.args(args);
    start_listening("primary", command, envs)
}

/// A read-only shadow on 127.0.0.1:`port` following `primary_url`, sharing `secret`.
pub fn start_shadow<S: AsRef<OsStr>>(
    bin: &Path,
    port: u16,
    primary_url: &str,
    secret: &str,
    args: &[S],
    envs: &[(&str, &str)],
) -> IndexProc {
    let listen = format!("127.0.0.1:{port}");
    let mut command = index_command(bin, &listen, &shadow_args(primary_url, secret));
    command.args(args);
    start_listening("shadow", command, envs)
}

/// A shadow, then its primary, on the ports of `addrs`, both answering in their roles:
/// (primary, shadow).
pub fn start_pair<S: AsRef<OsStr>>(
    bin: &Path,
    addrs: &Addrs,
    secret: &str,
    primary_args: &[S],
    shadow_args: &[S],
    envs: &[(&str, &str)],
) -> (IndexProc, IndexProc) {
    let mut shadow = start_shadow(bin, addrs.sport, &addrs.purl, secret, shadow_args, envs);
    let mut primary = start_primary(bin, addrs.pport, &addrs.surl, secret, primary_args, envs);
    shadow.wait_ready("shadow");
    primary.wait_ready("primary");
    (primary, shadow)
}

/// Waits until the shadow at `surl` has acknowledged everything the primary at `purl` has
/// applied, then returns whether both report the same epoch, sequence number and state
/// digest; false if that does not happen within `timeout`.
pub fn wait_in_sync(purl: &str, surl: &str, timeout: Duration) -> bool {
    let status = |url: &str, query: &str| get_json::<Value>(&format!("{url}/status{query}")).ok();
    let started = Instant::now();
    while started.elapsed() < timeout {
        let acked = status(purl, "").is_some_and(|s| {
            let shadow = &s["shadows"][0];
            shadow["lag"] == 0 && shadow["acked_seq"] == s["seq"]
        });
        if acked {
            let state = |url: &str| {
                status(url, "?digest=1")
                    .map(|s| (s["epoch"].clone(), s["seq"].clone(), s["digest"].clone()))
            };
            let (p, s) = (state(purl), state(surl));
            if p.is_some() && p == s {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// A running peer and the address it serves files on.
pub struct PeerProc {
    pub proc: Proc,
    pub addr: String,
}

/// `nap-peer` at `bin` with `args` (`serve ...`) and `envs` as `name`, once it has printed
/// the address it serves files on.
pub fn start_peer<S: AsRef<OsStr>>(
    bin: &Path,
    name: &str,
    args: &[S],
    envs: &[(&str, &str)],
) -> PeerProc {
    let mut command = Command::new(bin);
    command.args(args).envs(envs.iter().copied());
    let proc = Proc::start(name, &mut command);
    let line = proc.wait_stdout(PEER_SERVING);
    let addr = line
        .rsplit_once(" (index: ")
        .and_then(|(head, _)| head.rsplit_once(" at "))
        .map(|(_, addr)| addr.to_string())
        .unwrap_or_else(|| panic!("{name}: unexpected line {line:?}"));
    PeerProc { proc, addr }
}
