//! Test harness: spawns the real binaries on 127.0.0.1 with ports the OS picks, reads the
//! address each one prints, and kills every process when its handle is dropped (also when a
//! test fails). Waiting is always poll-until-deadline, never a fixed sleep taken as proof.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Generous: CI machines are small and may be busy.
pub const DEADLINE: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Lines {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
    /// The stream ended: the process exited or closed it.
    closed: std::sync::atomic::AtomicBool,
}

/// A child process whose stdout and stderr are collected line by line.
pub struct Proc {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Lines>,
    stderr: Arc<Lines>,
}

fn collect(reader: impl Read + Send + 'static, sink: Arc<Lines>) {
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            sink.lines.lock().unwrap().push(line);
            sink.grew.notify_all();
        }
        let _guard = sink.lines.lock().unwrap();
        sink.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        sink.grew.notify_all();
    });
}

impl Proc {
    pub fn spawn(name: &str, program: &str, args: &[&str], envs: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "info");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let stdout = Arc::new(Lines::default());
        let stderr = Arc::new(Lines::default());
        collect(child.stdout.take().unwrap(), stdout.clone());
        collect(child.stderr.take().unwrap(), stderr.clone());
        Proc {
            name: name.to_string(),
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
        }
    }

    /// Waits for a stdout line containing `needle`, starting at line `from`; returns the line
    /// and its position.
    pub fn wait_stdout_from(
        &self,
        from: usize,
        needle: &str,
        timeout: Duration,
    ) -> (usize, String) {
        let deadline = Instant::now() + timeout;
        let mut lines = self.stdout.lines.lock().unwrap();
        loop {
            if let Some((i, l)) = lines
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, l)| l.contains(needle))
            {
                return (i, l.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let closed = self.stdout.closed.load(std::sync::atomic::Ordering::SeqCst);
            if left.is_zero() || closed {
                drop(lines);
                panic!(
                    "{}: no stdout line with {needle:?} within {timeout:?}{}\n{}",
                    self.name,
                    if closed { " (stdout closed)" } else { "" },
                    self.transcript()
                );
            }
            lines = self.stdout.grew.wait_timeout(lines, left).unwrap().0;
        }
    }

    pub fn wait_stdout(&self, needle: &str) -> String {
        self.wait_stdout_from(0, needle, DEADLINE).1
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lines.lock().unwrap().clone()
    }

    /// Waits for a stderr line `found` accepts (logs are read by a thread of their own, so a
    /// line may land a moment after the event); panics with the transcript after the deadline.
    pub fn wait_stderr(&self, found: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(line) = self.stderr_lines().into_iter().find(|l| found(l)) {
                return line;
            }
            if Instant::now() > deadline {
                panic!("{}: no such stderr line\n{}", self.name, self.transcript());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lines.lock().unwrap().clone()
    }

    /// Everything the process printed, for failure messages.
    pub fn transcript(&self) -> String {
        format!(
            "--- {} stdout ---\n{}\n--- {} stderr ---\n{}",
            self.name,
            self.stdout_lines().join("\n"),
            self.name,
            self.stderr_lines().join("\n")
        )
    }

    /// Sends one line to the process's stdin.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Sends a shell command and waits for a stdout line containing `needle` after it.
    pub fn command(&mut self, line: &str, needle: &str) -> String {
        let from = self.stdout_lines().len();
        self.send(line);
        self.wait_stdout_from(from, needle, DEADLINE).1
    }

    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// Waits for the process to exit by itself; panics after the deadline.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                panic!("{} did not exit\n{}", self.name, self.transcript());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal by name ("STOP", "CONT", ...).
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} {}", self.pid());
    }

    /// SIGKILL: no chance to unregister or clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("{}", self.transcript());
        }
    }
}

pub fn index_bin() -> &'static str {
    env!("CARGO_BIN_EXE_nap-index")
}

pub fn peer_bin() -> &'static str {
    env!("CARGO_BIN_EXE_nap-peer")
}

/// A running index and its base URL.
pub struct IndexProc {
    pub proc: Proc,
    pub url: String,
}

/// Starts `nap-index` on a free port with fast heartbeats; `extra` adds or overrides flags.
pub fn start_index(extra: &[&str]) -> IndexProc {
    start_index_on("127.0.0.1:0", extra)
}

pub fn start_index_on(listen: &str, extra: &[&str]) -> IndexProc {
    let mut args = vec!["--listen", listen];
    // Replication off unless a test asks for it: other tests count holders exactly.
    for (flag, value) in [
        ("--heartbeat-interval", "0.3"),
        ("--peer-timeout", "3"),
        ("--replication-factor", "1"),
    ] {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    // In memory unless a test gives a data directory (never the working directory).
    if !extra.contains(&"--data-dir") {
        args.push("--in-memory");
    }
    args.extend_from_slice(extra);
    let proc = Proc::spawn("index", index_bin(), &args, &[]);
    let line = proc.wait_stdout("listening on");
    let url = line.rsplit(' ').next().unwrap().to_string();
    IndexProc { proc, url }
}

/// A free port on 127.0.0.1 (bound, then released: good enough for a test that starts its
/// server right away).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub const SECRET: &str = "test-cluster-secret";

/// Starts a primary on `port` replicating to `shadow_url`, with the test secret.
pub fn start_primary(port: u16, shadow_url: &str, extra: &[&str]) -> IndexProc {
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["--shadow", shadow_url, "--cluster-secret", SECRET];
    args.extend_from_slice(extra);
    start_index_on(&listen, &args)
}

/// Starts a read-only shadow on `port` following `primary_url`, with the test secret.
pub fn start_shadow(port: u16, primary_url: &str, extra: &[&str]) -> IndexProc {
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "--role",
        "shadow",
        "--primary",
        primary_url,
        "--cluster-secret",
        SECRET,
    ];
    args.extend_from_slice(extra);
    start_index_on(&listen, &args)
}

/// Ports and base URLs for a primary and its shadow.
pub struct Addrs {
    pub pport: u16,
    pub sport: u16,
    pub purl: String,
    pub surl: String,
}

pub fn addrs() -> Addrs {
    let (pport, sport) = (free_port(), free_port());
    Addrs {
        pport,
        sport,
        purl: format!("http://127.0.0.1:{pport}"),
        surl: format!("http://127.0.0.1:{sport}"),
    }
}

/// A shadow and its primary on free ports, with the test secret: (primary, shadow, addresses).
pub fn start_pair(primary_extra: &[&str], shadow_extra: &[&str]) -> (IndexProc, IndexProc, Addrs) {
    let addrs = addrs();
    let shadow = start_shadow(addrs.sport, &addrs.purl, shadow_extra);
    let primary = start_primary(addrs.pport, &addrs.surl, primary_extra);
    (primary, shadow, addrs)
}

/// A running peer, its shared folder and the address it serves files on.
pub struct PeerProc {
    pub proc: Proc,
    pub addr: String,
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
    let proc = Proc::spawn(&name, peer_bin(), &args, envs);
    let line = proc.wait_stdout("nap peer serving");
    // "nap peer serving DIR at ADDR (index: ...)"
    let addr = line
        .split(" at ")
        .last()
        .and_then(|rest| rest.split(' ').next())
        .unwrap()
        .to_string();
    PeerProc { proc, addr }
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

/// Calls `check` until it returns `Some`, or panics with `what` after the deadline.
pub fn poll_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting until {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A plain HTTP answer: status and body text.
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(5)))
        .timeout_recv_response(Some(Duration::from_secs(10)))
        .timeout_recv_body(Some(Duration::from_secs(10)))
        .build()
        .into()
}

pub fn get(url: &str) -> Answer {
    call("GET", url, b"").0
}

pub fn post(url: &str, body: &str) -> Answer {
    call("POST", url, body.as_bytes()).0
}

/// A GET, or a POST of `body` as JSON, with the answer's `Allow` header.
pub fn call(method: &str, url: &str, body: &[u8]) -> (Answer, Option<String>) {
    let agent = agent();
    let sent = match method {
        "GET" => agent.get(url).call(),
        _ => agent
            .post(url)
            .header("Content-Type", "application/json")
            .send(body),
    };
    let response = sent.unwrap_or_else(|e| panic!("{method} {url}: no answer: {e}"));
    let status = response.status().as_u16();
    let allow = response
        .headers()
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let body = response.into_body().read_to_string().unwrap_or_default();
    (Answer { status, body }, allow)
}

/// Sends raw bytes as a request (for paths a client library would normalise) and returns the
/// status code of the answer.
pub fn raw_status(addr: &str, request: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = BufReader::new(stream).read_line(&mut answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
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

pub fn sha256_hex(bytes: &[u8]) -> String {
    nap::hashing::sha256_hex(bytes)
}
