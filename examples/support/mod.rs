//! The process harness the benchmark examples share: finding the nap binaries, running them
//! as a `Fleet` that never outlives the bench, and the numbers their tables print.

// Each example compiles this module on its own and uses part of it.
#![allow(dead_code)]

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::Duration;

use nap::protocol::StatusResponse;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// `name` from target/<profile>/, where the example runs from examples/ below it. Run by
/// `cargo run` (which builds the example, not the binaries), it first builds the binaries
/// with the example's own profile, so a bench never measures stale ones; else it exits 2
/// saying what to do when they are missing.
pub fn binary(name: &str, example: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the path of this executable");
    let profile_dir = exe.parent().and_then(Path::parent);
    if let Some(dir) = profile_dir {
        build_binaries_once(dir, example);
    }
    let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    let bin = profile_dir.map(|dir| dir.join(file));
    match bin {
        Some(bin) if bin.is_file() => bin,
        other => {
            eprintln!(
                "{example}: {name} not found (looked for {}).\n\
                 Build the binaries first: cargo build --release && \
                 cargo run --release --example {example}",
                other.map_or_else(
                    || format!("target/<profile>/{name}"),
                    |p| p.display().to_string()
                )
            );
            std::process::exit(2);
        }
    }
}

/// `cargo build --bins` with the profile of `profile_dir` (target/<profile>), once per
/// process, when cargo started this example (it sets `CARGO` and `CARGO_MANIFEST_DIR`).
fn build_binaries_once(profile_dir: &Path, example: &str) {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let (Some(cargo), Some(manifest)) = (
            std::env::var_os("CARGO"),
            std::env::var_os("CARGO_MANIFEST_DIR"),
        ) else {
            return;
        };
        let mut command = Command::new(cargo);
        command
            .args(["build", "--bins", "--quiet", "--manifest-path"])
            .arg(Path::new(&manifest).join("Cargo.toml"));
        match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => {}
            Some("release") => {
                command.arg("--release");
            }
            Some(other) => {
                command.args(["--profile", other]);
            }
        }
        let built = command.status().is_ok_and(|s| s.success());
        if !built {
            eprintln!("{example}: building the nap binaries failed (see above)");
            std::process::exit(2);
        }
    });
}

/// Waits until every thread of `pid` is stopped (state T in /proc), since a SIGSTOP takes
/// effect as each thread is next scheduled, not when kill(2) returns; false if that does
/// not happen within `DEADLINE` (or /proc cannot tell).
pub fn wait_stopped(pid: u32) -> bool {
    let started = std::time::Instant::now();
    let state = |stat: String| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_string))
    };
    while started.elapsed() < DEADLINE {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        let all_stopped = tasks.flatten().all(|task| {
            fs::read_to_string(task.path().join("stat"))
                .ok()
                .and_then(state)
                .is_some_and(|s| s == "T" || s == "t")
        });
        if all_stopped {
            return true;
        }
        std::thread::yield_now();
    }
    false
}

/// Resident and peak resident memory of process `pid`, in KiB, from /proc (Linux).
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |key: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// One child process, its stderr log, and whether it still runs or is frozen.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    alive: bool,
    stopped: bool,
}

/// A handle to one process of a `Fleet`.
#[derive(Clone, Copy)]
pub struct ProcId(usize);

/// Every process of one measurement, and the temporary folder holding their logs (and
/// whatever else the bench puts there). Dropping it, also while a panic unwinds, resumes the
/// frozen processes, kills every one still running and removes the folder, so nothing
/// outlives the bench; in a panic it shows the end of each log first.
pub struct Fleet {
    root: tempfile::TempDir,
    procs: Vec<Proc>,
}

impl Fleet {
    pub fn new(prefix: &str) -> Fleet {
        Fleet {
            root: tempfile::Builder::new()
                .prefix(prefix)
                .tempdir()
                .expect("a temporary directory"),
            procs: Vec::new(),
        }
    }

    /// The temporary folder, removed with the fleet.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Starts `command` as `name` with stdin closed and stderr in a log file (stdout is the
    /// caller's to set). The log is numbered, as a restarted process keeps its name.
    pub fn start(&mut self, name: &str, command: &mut Command) -> ProcId {
        let log = self.root().join(format!("{name}-{}.log", self.procs.len()));
        let child = command
            .stdin(Stdio::null())
            .stderr(File::create(&log).expect("a log file"))
            .spawn()
            .unwrap_or_else(|e| {
                let bin = Path::new(command.get_program());
                panic!("cannot start {}: {e}", bin.display())
            });
        self.procs.push(Proc {
            name: name.to_string(),
            child,
            log,
            alive: true,
            stopped: false,
        });
        ProcId(self.procs.len() - 1)
    }

    /// The child itself, for its pipes and its exit status.
    pub fn child(&mut self, id: ProcId) -> &mut Child {
        &mut self.procs[id.0].child
    }

    pub fn pid(&self, id: ProcId) -> u32 {
        self.procs[id.0].child.id()
    }

    /// What the process has written to stderr so far.
    pub fn log(&self, id: ProcId) -> String {
        fs::read_to_string(&self.procs[id.0].log).unwrap_or_default()
    }

    /// SIGKILL, as a crash: no clean-up in the process.
    pub fn kill(&mut self, id: ProcId) {
        let proc = &mut self.procs[id.0];
        let _ = proc.child.kill();
        let _ = proc.child.wait();
        proc.alive = false;
    }

    /// Sends signal `name` ("STOP", "CONT") through kill(1), as std sends no signal but
    /// SIGKILL; returns whether it was sent. A stopped process is resumed on drop.
    pub fn signal(&mut self, id: ProcId, name: &str) -> bool {
        let sent = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid(id).to_string())
            .status()
            .is_ok_and(|s| s.success());
        if sent {
            self.procs[id.0].stopped = name == "STOP";
        }
        sent
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for id in (0..self.procs.len()).map(ProcId) {
            if self.procs[id.0].stopped {
                self.signal(id, "CONT");
            }
            if self.procs[id.0].alive {
                self.kill(id);
            }
        }
        if std::thread::panicking() {
            for (n, proc) in self.procs.iter().enumerate() {
                let log = self.log(ProcId(n));
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                eprintln!("--- {} (last lines of its log) ---", proc.name);
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// A small xorshift generator for file contents, pauses and the load's choices (no
/// dependency needed), seeded per user so that runs repeat and threads share nothing.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number below `n` (any, for n = 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(n);
        out
    }
}

/// A comma-separated list of values (counts, `--fsync` modes); empty items are skipped.
pub struct List<T>(pub Vec<T>);

impl<T: FromStr> FromStr for List<T>
where
    T::Err: std::fmt::Display,
{
    type Err = String;

    fn from_str(s: &str) -> Result<List<T>, String> {
        s.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| item.parse().map_err(|e| format!("{item:?}: {e}")))
            .collect::<Result<_, _>>()
            .map(List)
    }
}

/// Nearest-rank percentile of sorted values.
pub fn pct<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The percentiles `at` of `ds` in ms, joined by `sep` ("-" if there are none): with
/// `decimals` below `fine`, where a fraction of a ms still tells something, whole ms above.
pub fn spread(
    mut ds: Vec<Duration>,
    at: &[f64],
    sep: &str,
    fine: Duration,
    decimals: usize,
) -> String {
    if ds.is_empty() {
        return "-".into();
    }
    ds.sort_unstable();
    let show = |d: Duration| {
        if d < fine {
            format!("{:.*}", decimals, ms(d))
        } else {
            format!("{:.0}", ms(d))
        }
    };
    let cells: Vec<String> = at.iter().map(|p| show(pct(&ds, *p))).collect();
    cells.join(sep)
}

/// Shared by every primary and shadow a bench starts.
pub const SECRET: &str = "nap-bench-secret";

/// Two distinct free ports on 127.0.0.1 (bound, then released for the indexes to take).
pub fn free_ports() -> (u16, u16) {
    let port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port on 127.0.0.1")
            .port()
    };
    loop {
        let (a, b) = (port(), port());
        if a != b {
            return (a, b);
        }
    }
}

/// A running primary/shadow pair: both handles, the primary's port, both base URLs.
pub struct Pair {
    pub primary: ProcId,
    pub shadow: ProcId,
    pub pport: u16,
    pub purl: String,
    pub surl: String,
}

/// `nap-index` on 127.0.0.1:`port` with the bench secret, `role` flags and `extra` flags;
/// stdout is dropped, stderr goes to the fleet's log.
pub fn start_index(
    fleet: &mut Fleet,
    bin: &Path,
    name: &str,
    port: u16,
    role: &[&str],
    extra: &[String],
) -> ProcId {
    let mut command = Command::new(bin);
    command
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--cluster-secret", SECRET])
        .args(role)
        .args(extra)
        .stdout(Stdio::null());
    fleet.start(name, &mut command)
}

/// A primary on `port` replicating to `shadow`.
pub fn start_primary(
    fleet: &mut Fleet,
    bin: &Path,
    port: u16,
    shadow: &str,
    extra: &[String],
) -> ProcId {
    start_index(fleet, bin, "primary", port, &["--shadow", shadow], extra)
}

/// A read-only shadow on `port` following `primary`.
pub fn start_shadow(
    fleet: &mut Fleet,
    bin: &Path,
    port: u16,
    primary: &str,
    extra: &[String],
) -> ProcId {
    let role = ["--role", "shadow", "--primary", primary];
    start_index(fleet, bin, "shadow", port, &role, extra)
}

/// A shadow and its primary on free ports, both answering. `extra` goes to both; each gets
/// a data directory of its own in the fleet's folder unless `extra` says `--in-memory`.
pub fn start_pair(fleet: &mut Fleet, bin: &Path, extra: &[String]) -> Pair {
    let (pport, sport) = free_ports();
    let purl = format!("http://127.0.0.1:{pport}");
    let surl = format!("http://127.0.0.1:{sport}");
    let with_dir = |name: &str| {
        let mut args = extra.to_vec();
        if !extra.iter().any(|a| a == "--in-memory") {
            let dir = fleet.root().join(format!("{name}-{pport}"));
            args.extend(["--data-dir".into(), dir.display().to_string()]);
        }
        args
    };
    let (pextra, sextra) = (with_dir("primary"), with_dir("shadow"));
    let shadow = start_shadow(fleet, bin, sport, &purl, &sextra);
    let primary = start_primary(fleet, bin, pport, &surl, &pextra);
    wait_ready(fleet, shadow, &surl, "shadow");
    wait_ready(fleet, primary, &purl, "primary");
    Pair {
        primary,
        shadow,
        pport,
        purl,
        surl,
    }
}

/// SHA-256 of `content`, as the protocol writes it (64 lowercase hex digits).
pub fn sha_hex(content: &str) -> String {
    nap::hashing::sha256_hex(content.as_bytes())
}

/// Version 1 of `name`, its content the name itself: whoever registers it holds the same
/// file, so registrations never conflict.
pub fn first_version(name: &str) -> nap::protocol::FileMeta {
    nap::protocol::FileMeta {
        name: name.to_string(),
        version: 1,
        size: name.len() as u64,
        sha256: sha_hex(name),
    }
}

/// The value named `s` among `choices` (an `--only` flag's parts), or an error naming them.
pub fn choose<T: Copy>(what: &str, s: &str, choices: &[(&str, T)]) -> Result<T, String> {
    if let Some((_, value)) = choices.iter().find(|(name, _)| *name == s) {
        return Ok(*value);
    }
    let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
    let list = match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.join(""),
    };
    Err(format!("unknown {what} {s:?}: use {list}"))
}

/// Bound on every wait for a process or a convergence, so a broken build fails, not hangs.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Calls `check` every `every` until it gives a value; panics saying `what` after `deadline`.
pub fn poll<T>(
    what: &str,
    every: Duration,
    deadline: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let started = std::time::Instant::now();
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

/// Waits until the process started as `role` answers `/health` at `url` in that role.
pub fn wait_ready(fleet: &mut Fleet, pid: ProcId, url: &str, role: &str) {
    let client = nap::peer::client::IndexClient::new(vec![url.into()], Duration::from_secs(1));
    let started = std::time::Instant::now();
    loop {
        if let Ok(health) = client.health() {
            assert_eq!(health.role, role, "{url} answers as {}", health.role);
            return;
        }
        if let Ok(Some(exit)) = fleet.child(pid).try_wait() {
            panic!("{role} exited at start-up ({exit}): {}", fleet.log(pid));
        }
        assert!(started.elapsed() < DEADLINE, "{url} never answered");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until the shadow has acknowledged everything the primary has applied, then returns
/// whether both report the same sequence number and state digest.
pub fn wait_in_sync(purl: &str, surl: &str) -> bool {
    let client =
        |url: &str| nap::peer::client::IndexClient::new(vec![url.into()], Duration::from_secs(10));
    let primary = client(purl);
    let started = std::time::Instant::now();
    while started.elapsed() < DEADLINE {
        let acked = primary.status().ok().is_some_and(|s| {
            s.shadows
                .first()
                .is_some_and(|sh| sh.lag == 0 && sh.acked_seq == s.seq)
        });
        if acked {
            let digest = |url: &str| {
                get_json::<StatusResponse>(&format!("{url}/status?digest=1"))
                    .ok()
                    .map(|s| (s.epoch, s.seq, s.digest))
            };
            let (p, s) = (digest(purl), digest(surl));
            if p.is_some() && p == s {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// An HTTP agent like nap's own: one request per connection, bounded phases.
pub fn agent() -> ureq::Agent {
    nap::net::http_agent(Duration::from_secs(1), Duration::from_secs(5))
}

/// Reads a 200 answer as JSON; anything else is an error with the status and body.
pub fn answer<T: DeserializeOwned>(
    url: &str,
    sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<T, String> {
    let response = sent.map_err(|e| format!("{url}: {e}"))?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    if status != 200 {
        let text = body.read_to_string().unwrap_or_default();
        return Err(format!("{url}: HTTP {status}: {}", text.trim()));
    }
    body.read_json().map_err(|e| format!("{url}: {e}"))
}

pub fn get_json<T: DeserializeOwned>(url: &str) -> Result<T, String> {
    answer(url, agent().get(url).header("Connection", "close").call())
}

pub fn post_json<B: Serialize, T: DeserializeOwned>(url: &str, body: &B) -> Result<T, String> {
    let sent = agent()
        .post(url)
        .header("Connection", "close")
        .send_json(body);
    answer(url, sent)
}
