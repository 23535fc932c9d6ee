//! The index and the peers' file servers stay responsive whatever clients do, against real
//! processes and raw sockets: clients whose request body never comes (chunked without an
//! end, a `Content-Length` withheld), heads trickled a byte a second, downloaders that never
//! read, a flood of idle sockets past the open-file limit; and the two things a
//! well-behaved keep-alive client meets (an answer over 1 KiB held for a delayed ACK,
//! `Connection: close` not echoed).
//!
//! The contract: with `--request-timeout SECS`, a request head and body must arrive within
//! that time plus their size at a minimum rate, else 408 or a close; a reader of an answer or
//! a file is cut after a bounded time at a minimum rate; no number of stalled clients below
//! `--max-connections` delays `/health`, `/search` or a peer's heartbeat, on a primary or its
//! shadow, and no peer is pruned because the index could not hear it; running out of
//! descriptors never ends the process; keep-alive answers of any size are as fast as closed
//! ones, and `Connection: close` is answered with `Connection: close`, then a close.
//!
//! Every well-behaved call is timed against `PROMPT`; every hostile connection against the
//! time the contract gives it plus `CUT_MARGIN`. Stalls run longer than `--peer-timeout`.
//! The stall tests collect every failure and report them together, so one run shows each way
//! the servers fall.
//!
//! Limits and connection counts already covered by `limits.rs` (503 past the limit, idle
//! connections shed) are not repeated here.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;

/// `--request-timeout` of every server started here.
const REQUEST_TIMEOUT_SECS: &str = "2";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The least rate (bytes/s) the servers hold a client to: a transfer of n bytes may take
/// `REQUEST_TIMEOUT + n / MIN_RATE` before it is cut.
const MIN_RATE: u64 = nap::net::MIN_RATE;
/// Slack on top of what the contract gives a hostile connection before it must be cut
/// (thread scheduling on a loaded two-core machine, the servers' own timer granularity).
const CUT_MARGIN: Duration = Duration::from_secs(3);
/// How soon a well-behaved call must be answered, whatever the hostile clients do.
const PROMPT: Duration = Duration::from_secs(1);
/// HTTP workers of the index: the stalls use twice as many connections.
const WORKERS: &str = "4";
const STALLED: usize = 8;
/// `--peer-timeout` of the pairs; every stall lasts longer, so a peer the index cannot hear
/// for the whole stall would be pruned.
const PEER_TIMEOUT_SECS: &str = "3";
const STALL: Duration = Duration::from_secs(5);
/// The file the real peer of the stall tests shares, which every probe search must find.
const PROBE_FILE: &str = "hostile-probe.txt";

fn host(url: &str) -> &str {
    url.trim_start_matches("http://")
}

/// How long the contract lets a transfer of `bytes` take before the server must have cut it.
fn cut_bound(bytes: u64) -> Duration {
    REQUEST_TIMEOUT + Duration::from_secs_f64(bytes as f64 / MIN_RATE as f64) + CUT_MARGIN
}

/// `--request-timeout 2` for a binary that has the flag. One that does not yet is run with
/// its defaults, so the tests show how it falls rather than that it refused a flag.
fn request_timeout(bin: &str, subcommand: &[&str]) -> Vec<&'static str> {
    static INDEX: OnceLock<bool> = OnceLock::new();
    static PEER: OnceLock<bool> = OnceLock::new();
    let cell = if subcommand.is_empty() { &INDEX } else { &PEER };
    let has = *cell.get_or_init(|| {
        let help = Command::new(bin).args(subcommand).arg("--help").output();
        let has = help
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("--request-timeout"));
        if !has {
            eprintln!("note: {bin} has no --request-timeout; running it with its defaults");
        }
        has
    });
    if has {
        vec!["--request-timeout", REQUEST_TIMEOUT_SECS]
    } else {
        Vec::new()
    }
}

fn index_timeout_flags() -> Vec<&'static str> {
    request_timeout(index_bin(), &[])
}

fn peer_timeout_flags() -> Vec<&'static str> {
    request_timeout(peer_bin(), &["serve"])
}

// ---------------------------------------------------------------------------------------
// HTTP on raw sockets: what a client library would hide (when an answer came, whether the
// connection stayed open, what the server said about it).

/// One HTTP answer as read off a socket.
#[derive(Debug)]
struct Reply {
    status: u16,
    /// (lower-cased name, value)
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Result<serde_json::Value, String> {
        serde_json::from_slice(&self.body).map_err(|e| {
            format!(
                "answer {} is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// A request as bytes, with `Connection: close` if `close`.
fn request(method: &str, path: &str, body: Option<&str>, close: bool) -> String {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    if close {
        text.push_str("Connection: close\r\n");
    }
    if let Some(body) = body {
        text.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    text.push_str("\r\n");
    text.push_str(body.unwrap_or(""));
    text
}

/// Reads more of `stream` into `buf`, waiting until `deadline` at most.
fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) -> Result<(), String> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err("no complete answer in time".into());
    }
    stream.set_read_timeout(Some(left)).unwrap();
    let mut chunk = [0u8; 64 * 1024];
    match stream.read(&mut chunk) {
        Ok(0) => Err("the connection was closed without a complete answer".into()),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            Err("no complete answer in time".into())
        }
        Err(e) => Err(format!("reading the answer failed: {e}")),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads one answer from `stream` by `deadline`: the head, then a `Content-Length` body (or,
/// without one, everything up to the close; none for a `HEAD`). Bytes past the answer stay
/// in `buf`, for the next answer on a kept-alive connection.
fn read_reply(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
    head_only: bool,
) -> Result<Reply, String> {
    let head_end = loop {
        if let Some(at) = find(buf, b"\r\n\r\n") {
            break at + 4;
        }
        fill(stream, buf, deadline)?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end - 4]).into_owned();
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default().to_string();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let end = match length {
        _ if head_only => head_end,
        Some(n) => {
            while buf.len() < head_end + n {
                fill(stream, buf, deadline)?;
            }
            head_end + n
        }
        None => {
            if headers.iter().any(|(k, _)| k == "transfer-encoding") {
                return Err(format!("a chunked answer, not read here: {head}"));
            }
            loop {
                match fill(stream, buf, deadline) {
                    Ok(()) => {}
                    Err(_) => break buf.len(),
                }
            }
        }
    };
    let body = buf[head_end..end].to_vec();
    buf.drain(..end);
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// Sends `request` on a connection of its own and reads the answer, all within `within`:
/// the answer and how long it took.
fn ask(addr: &str, request: &str, within: Duration) -> Result<(Reply, Duration), String> {
    let started = Instant::now();
    let sockaddr: SocketAddr = addr.parse().unwrap();
    let mut stream = TcpStream::connect_timeout(&sockaddr, within)
        .map_err(|e| format!("cannot connect: {e}"))?;
    stream.set_write_timeout(Some(within)).unwrap();
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let head_only = request.starts_with("HEAD ");
    let reply = read_reply(&mut stream, &mut Vec::new(), started + within, head_only)
        .map_err(|e| format!("{e} (after {:.2} s)", started.elapsed().as_secs_f64()))?;
    Ok((reply, started.elapsed()))
}

/// True once the other side has ended `stream` (its end, or a reset), waiting up to `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut sink = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Well-behaved calls, timed.

/// What the probes saw: how many calls, and each that was late, refused or wrong.
#[derive(Default)]
struct Probes {
    calls: usize,
    failures: Vec<String>,
    slowest: Duration,
}

impl Probes {
    /// Sends `request` to `addr` as `what`; it must be answered within `PROMPT` and pass
    /// `check`.
    fn call(
        &mut self,
        what: &str,
        addr: &str,
        request: &str,
        check: impl FnOnce(&Reply) -> Result<(), String>,
    ) {
        self.calls += 1;
        match ask(addr, request, PROMPT) {
            Ok((reply, took)) => {
                self.slowest = self.slowest.max(took);
                if let Err(e) = check(&reply) {
                    self.failures.push(format!("{what}: {e}"));
                }
            }
            Err(e) => self
                .failures
                .push(format!("{what}: not answered within {PROMPT:?}: {e}")),
        }
    }

    fn ok_status(reply: &Reply) -> Result<(), String> {
        if reply.status == 200 {
            Ok(())
        } else {
            Err(format!(
                "answered {}: {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            ))
        }
    }

    /// `/health` and a search on `addr`, whose results must list `holder` for `PROBE_FILE`.
    fn reads(&mut self, role: &str, addr: &str, holder: &str) {
        self.call(
            &format!("GET /health on the {role}"),
            addr,
            &request("GET", "/health", None, true),
            Probes::ok_status,
        );
        let path = format!("/search?q={PROBE_FILE}");
        self.call(
            &format!("GET {path} on the {role}"),
            addr,
            &request("GET", &path, None, true),
            |reply| {
                Probes::ok_status(reply)?;
                let holders = holders_in(&reply.json()?, PROBE_FILE);
                if holders.iter().any(|h| h == holder) {
                    Ok(())
                } else {
                    Err(format!(
                        "the peer {holder} is not listed (holders: {holders:?})"
                    ))
                }
            },
        );
    }

    /// The failures, the first few in full.
    fn report(&self, into: &mut Vec<String>) {
        const SHOWN: usize = 8;
        into.extend(self.failures.iter().take(SHOWN).cloned());
        if self.failures.len() > SHOWN {
            into.push(format!(
                "... {} more failed probes of {}",
                self.failures.len() - SHOWN,
                self.calls
            ));
        }
    }
}

/// The up-to-date holders of exactly `name` in a search answer.
fn holders_in(answer: &serde_json::Value, name: &str) -> Vec<String> {
    answer["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["name"] == name)
        .flat_map(|r| r["holders"].as_array().cloned().unwrap_or_default())
        .filter_map(|h| h["addr"].as_str().map(String::from))
        .collect()
}

fn heartbeat_body(id: &Id) -> String {
    serde_json::json!({"peer_id": id.peer_id, "token": id.token}).to_string()
}

// ---------------------------------------------------------------------------------------
// Stalled requests against a primary, its shadow and a real peer.

use nap_harness::{Stall, WITHHELD};

/// How long the contract lets one connection stalled this way live.
fn stall_bound(stall: Stall) -> Duration {
    match stall {
        Stall::Withheld => cut_bound(WITHHELD),
        Stall::Chunked | Stall::Trickle => cut_bound(0),
    }
}

/// How one stalled connection ended.
struct Ended {
    addr: String,
    /// From connecting until the server ended it, or until the test gave up.
    held: Duration,
    /// What the server sent first, if anything (its status line).
    answer: Option<String>,
    /// False when the connection outlived its bound.
    cut: bool,
}

/// Keeps one stalled connection to `addr` open until `until`: whenever the server ends one,
/// the next is opened. The last one opened is followed to its end, or to its bound.
fn stall_connections(stall: Stall, addr: &str, until: Instant) -> Vec<Ended> {
    let bound = stall_bound(stall);
    let mut ended = Vec::new();
    while Instant::now() < until {
        let started = Instant::now();
        let Ok(mut stream) = TcpStream::connect(addr) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        stream.set_nodelay(true).unwrap();
        let opening = stall.opening();
        let _ = stream.write_all(&opening);
        // A trickle sends its next byte once `sent` seconds have passed.
        let mut sent = opening.len() as u64;
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        let cut = loop {
            let held = started.elapsed();
            if held > bound {
                break false;
            }
            match stream.read(&mut chunk) {
                Ok(0) => break true,
                Ok(n) => {
                    got.extend_from_slice(&chunk[..n]);
                    if got.starts_with(b"HTTP/1.1 408") || got.starts_with(b"HTTP/1.0 408") {
                        break true;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break true,
            }
            if stall == Stall::Trickle && held >= Duration::from_secs(sent) {
                if stream.write_all(&[Stall::trickled(sent as usize)]).is_err() {
                    break true;
                }
                sent += 1;
            }
        };
        let answer = (!got.is_empty()).then(|| {
            let text = String::from_utf8_lossy(&got);
            text.lines().next().unwrap_or_default().to_string()
        });
        ended.push(Ended {
            addr: addr.to_string(),
            held: started.elapsed(),
            answer,
            cut,
        });
        // A server that ends such requests at once is not to be hammered with new ones.
        std::thread::sleep(Duration::from_millis(100));
    }
    ended
}

/// `STALLED` connections stall their requests as `stall` on the primary and as many on the
/// shadow, for longer than the peer timeout, while a real peer heartbeats through the
/// primary. Meanwhile `/health` and a search on both, and a heartbeat on the primary, must
/// each be answered within `PROMPT`; the peer must never be pruned; and every stalled
/// connection must end (408 or a close) within what the contract gives it.
fn stalled_clients_leave_the_pair_responsive(stall: Stall) {
    let mut flags = vec![
        "--workers",
        WORKERS,
        "--peer-timeout",
        PEER_TIMEOUT_SECS,
        "--heartbeat-interval",
        "0.3",
    ];
    flags.extend(index_timeout_flags());
    let (primary, _shadow, addrs) = start_pair(&flags, &flags);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(PROBE_FILE), b"a file to find").unwrap();
    let servers = format!("{},{}", addrs.purl, addrs.surl);
    let peer = start_peer(dir.path(), &servers, true, &peer_timeout_flags());
    for url in [&addrs.purl, &addrs.surl] {
        poll_until("both indexes list the peer", || {
            holders(url, PROBE_FILE).contains(&peer.addr).then_some(())
        });
    }
    // A second peer, played by the test, whose heartbeats are timed.
    let me = identity(&addrs.purl, free_port(), vec![]);
    let (p, s) = (host(&addrs.purl), host(&addrs.surl));

    let until = Instant::now() + STALL;
    let (probes, ended) = std::thread::scope(|scope| {
        let hostile: Vec<_> = [p, s]
            .into_iter()
            .flat_map(|addr| std::iter::repeat_n(addr, STALLED))
            .map(|addr| scope.spawn(move || stall_connections(stall, addr, until)))
            .collect();
        // Let the stalls take hold before the first probe.
        std::thread::sleep(Duration::from_millis(300));
        let mut probes = Probes::default();
        let heartbeat = request("POST", "/heartbeat", Some(&heartbeat_body(&me)), true);
        while Instant::now() < until {
            let round = Instant::now();
            probes.reads("primary", p, &peer.addr);
            probes.call(
                "POST /heartbeat on the primary",
                p,
                &heartbeat,
                Probes::ok_status,
            );
            probes.reads("shadow", s, &peer.addr);
            std::thread::sleep(Duration::from_millis(200).saturating_sub(round.elapsed()));
        }
        let ended: Vec<Ended> = hostile
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        (probes, ended)
    });

    let mut failures = Vec::new();
    probes.report(&mut failures);
    let held: Vec<&Ended> = ended.iter().filter(|e| !e.cut).collect();
    for e in held.iter().take(6) {
        failures.push(format!(
            "a {stall:?} connection to {} was still open after {:.1} s (bound {:.1} s){}",
            e.addr,
            e.held.as_secs_f64(),
            stall_bound(stall).as_secs_f64(),
            e.answer
                .as_ref()
                .map(|a| format!(", after an answer {a:?}"))
                .unwrap_or_default()
        ));
    }
    if held.len() > 6 {
        failures.push(format!("... {} more such connections", held.len() - 6));
    }
    let pruned = primary
        .proc
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("pruned"))
        .collect::<Vec<_>>();
    if !pruned.is_empty() {
        failures.push(format!("the primary pruned peers: {pruned:?}"));
    }
    if let Some(line) = peer
        .proc
        .stderr_lines()
        .into_iter()
        .find(|l| l.contains("register again"))
    {
        failures.push(format!("the peer was forgotten by the index: {line}"));
    }
    let longest = ended.iter().map(|e| e.held).max().unwrap_or_default();
    let answers: std::collections::BTreeSet<&str> =
        ended.iter().filter_map(|e| e.answer.as_deref()).collect();
    assert!(
        failures.is_empty(),
        "{stall:?} stalls, {STALLED} connections each on the primary and the shadow \
         (--workers {WORKERS}) for {STALL:?}: {} of {} probes failed (slowest answered {:?}); \
         {} stalled connections opened, {} ended in time, longest held {:.1} s; \
         answers seen: {answers:?}\n{}",
        probes.failures.len(),
        probes.calls,
        probes.slowest,
        ended.len(),
        ended.len() - held.len(),
        longest.as_secs_f64(),
        failures.join("\n")
    );
}

#[test]
fn chunked_bodies_that_never_end_leave_the_pair_responsive() {
    stalled_clients_leave_the_pair_responsive(Stall::Chunked);
}

#[test]
fn withheld_bodies_leave_the_pair_responsive() {
    stalled_clients_leave_the_pair_responsive(Stall::Withheld);
}

#[test]
fn heads_trickled_a_byte_a_second_are_cut_and_leave_the_pair_responsive() {
    stalled_clients_leave_the_pair_responsive(Stall::Trickle);
}

// ---------------------------------------------------------------------------------------
// Readers that never read, on a peer's file server.

/// A file bigger than what the kernel can buffer for one connection (the largest send and
/// receive buffers, `tcp_wmem`'s and `tcp_rmem`'s maxima, with room to spare; 64 MiB at
/// least), so a reader that never reads holds its upload until the server cuts it.
fn unbufferable_size() -> u64 {
    let max_of = |file: &str| {
        std::fs::read_to_string(file)
            .ok()
            .and_then(|s| s.split_whitespace().nth(2)?.parse::<u64>().ok())
            .unwrap_or(4 << 20)
    };
    let buffers = max_of("/proc/sys/net/ipv4/tcp_wmem") + max_of("/proc/sys/net/ipv4/tcp_rmem");
    (2 * buffers).max(64 << 20)
}

/// A download that reads nothing: it sends the request and leaves the answer in the kernel.
struct SlowReader {
    stream: TcpStream,
    asked: Instant,
    /// When bytes first waited for it: a worker (an upload slot) was serving it.
    served: Option<Instant>,
}

impl SlowReader {
    fn start(addr: &str, path: &str) -> SlowReader {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        // A small receive window: what the kernel takes for it is the server's send buffer.
        socket.set_recv_buffer_size(16 * 1024).unwrap();
        let sockaddr: SocketAddr = addr.parse().unwrap();
        socket.connect(&sockaddr.into()).unwrap();
        let mut stream: TcpStream = socket.into();
        // HTTP/1.0: the body comes as it is (tiny_http chunks large HTTP/1.1 answers), with
        // its length, and the connection closes after it.
        write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        SlowReader {
            stream,
            asked: Instant::now(),
            served: None,
        }
    }

    /// Looks without reading: Some(true) once bytes wait, Some(false) if the server ended
    /// the connection before sending any, None while nothing came.
    fn peek(&self) -> Option<bool> {
        self.stream.set_nonblocking(true).unwrap();
        let mut one = [0u8; 1];
        let seen = match self.stream.peek(&mut one) {
            Ok(0) => Some(false),
            Ok(_) => Some(true),
            Err(e) if e.kind() == ErrorKind::WouldBlock => None,
            Err(_) => Some(false),
        };
        self.stream.set_nonblocking(false).unwrap();
        seen
    }

    /// Whether the server still has its end of this connection open, without reading (which
    /// would let the server go on): a server that cuts a download closes its socket, which
    /// then lingers in FIN-WAIT with the unsent bytes, or is gone after a reset. From
    /// /proc/net/tcp (Linux); None where it cannot be read.
    fn open_at_server(&self) -> Option<bool> {
        let ours = self.stream.local_addr().ok()?.port();
        let theirs = self.stream.peer_addr().ok()?.port();
        let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
        let port = |addr: &str| {
            addr.rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
        };
        // Fields: sl, local address, remote address, state (01: established), ...
        Some(table.lines().skip(1).any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 3
                && port(fields[1]) == Some(theirs)
                && port(fields[2]) == Some(ours)
                && fields[3] == "01"
        }))
    }

    /// Reads all that comes now, quickly: whether the body arrived short of its length (the
    /// server cut the download) and how much of it came. An answer other than the file (503:
    /// every slot stayed busy) counts as cut: the reader was let go without the file.
    fn drain(&mut self) -> (bool, u64, u64) {
        let mut buf = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let head_end = loop {
            if let Some(at) = find(&buf, b"\r\n\r\n") {
                break at + 4;
            }
            if fill(&mut self.stream, &mut buf, deadline).is_err() {
                return (true, 0, 0);
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 200") && !head.starts_with("http/1.0 200") {
            return (true, 0, 0);
        }
        let length: u64 = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut got = (buf.len() - head_end) as u64;
        let mut chunk = vec![0u8; 256 * 1024];
        self.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        while got < length && Instant::now() < deadline {
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n as u64,
            }
        }
        (got < length, got, length)
    }
}

#[test]
fn readers_that_never_read_are_cut_and_free_the_upload_slots() {
    let index = start_index(&[]);
    let dir = tempfile::tempdir().unwrap();
    let size = unbufferable_size();
    let content: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let sha = sha256_hex(&content);
    std::fs::write(dir.path().join("big.bin"), &content).unwrap();
    drop(content);
    let mut flags = vec!["--upload-slots", "2"];
    flags.extend(peer_timeout_flags());
    let mut peer = start_peer(dir.path(), &index.url, true, &flags);
    let head = request("HEAD", "/files/big.bin", None, true);
    poll_until("the peer serves big.bin", || {
        ask(&peer.addr, &head, Duration::from_secs(5))
            .ok()
            .filter(|(r, _)| r.status == 200)
    });

    // Four readers that never read, for two upload slots: two are served, two wait.
    let started = Instant::now();
    let mut slow: Vec<SlowReader> = (0..4)
        .map(|_| SlowReader::start(&peer.addr, "/files/big.bin"))
        .collect();
    poll_until("two slow readers hold the upload slots", || {
        (slow.iter().filter(|s| s.peek() == Some(true)).count() >= 2).then_some(())
    });

    // Another download, by a client that reads, and retries when told every slot is busy
    // (as a client of a busy peer does, or tries another holder). A reader that never reads
    // stops moving once the kernel's buffers are full (well within a second on loopback), and
    // must be cut within the request timeout of that.
    let bound = REQUEST_TIMEOUT + Duration::from_secs(1) + CUT_MARGIN;
    let (tx, downloaded) = mpsc::channel();
    let addr = peer.addr.clone();
    let patience = 2 * bound + Duration::from_secs(10);
    std::thread::spawn(move || {
        let asked = Instant::now();
        let agent = nap_harness::agent_with(Duration::from_secs(5), patience);
        let result = loop {
            let result = agent
                .get(&format!("http://{addr}/files/big.bin"))
                .call()
                .map_err(|e| e.to_string())
                .and_then(|r| {
                    let status = r.status().as_u16();
                    let mut body = Vec::new();
                    r.into_body()
                        .into_reader()
                        .read_to_end(&mut body)
                        .map_err(|e| e.to_string())?;
                    Ok((status, body))
                });
            match result {
                Ok((503, _)) if asked.elapsed() < patience => {
                    std::thread::sleep(Duration::from_secs(1))
                }
                other => break other,
            }
        };
        let _ = tx.send((result, asked.elapsed()));
    });

    // Each slow reader must be cut within the bound of the file from when it was served
    // (one still waiting for a slot may be refused or closed instead); the other download
    // must complete, at worst after both pairs of slow readers were cut.
    let mut verdicts: Vec<Option<String>> = vec![None; slow.len()];
    let mut download = None;
    let give_up = started + patience;
    while verdicts.iter().any(Option::is_none) || download.is_none() {
        if let Some(exit) = peer.proc.try_wait() {
            panic!("the peer exited ({exit})");
        }
        if let Ok(done) = downloaded.try_recv() {
            download = Some(done);
        }
        for (i, reader) in slow.iter_mut().enumerate() {
            if verdicts[i].is_some() {
                continue;
            }
            if reader.served.is_none() && reader.peek() == Some(true) {
                reader.served = Some(Instant::now());
            }
            if reader.open_at_server() == Some(false) || reader.peek() == Some(false) {
                // Cut (or closed before it was served): what was sent before is still
                // readable, and ends short.
                let (cut, got, length) = reader.drain();
                assert!(
                    cut,
                    "slow reader {i} was closed by the server after the whole file"
                );
                verdicts[i] = Some(format!(
                    "cut {:.1} s after asking, {} after being served, having been sent {got} \
                     of {length} B",
                    reader.asked.elapsed().as_secs_f64(),
                    reader.served.map_or("never".into(), |at| format!(
                        "{:.1} s",
                        at.elapsed().as_secs_f64()
                    ))
                ));
                continue;
            }
            let Some(served) = reader.served else {
                continue;
            };
            if served.elapsed() < bound {
                continue;
            }
            let (cut, got, length) = reader.drain();
            assert!(
                cut,
                "slow reader {i}, served for {:.1} s without reading, was never cut (bound \
                 {:.1} s: --request-timeout {REQUEST_TIMEOUT_SECS} + {size} B at {MIN_RATE} \
                 B/s + {CUT_MARGIN:?}): reading now, it got the whole file ({got} of {length} \
                 B). The other download {}.",
                served.elapsed().as_secs_f64(),
                bound.as_secs_f64(),
                match &download {
                    Some((_, took)) => format!("ended after {took:?}"),
                    None => format!(
                        "had not completed after {:.1} s",
                        started.elapsed().as_secs_f64()
                    ),
                }
            );
            verdicts[i] = Some(format!("cut after {got} of {length} B"));
        }
        assert!(
            Instant::now() < give_up,
            "after {patience:?}: slow readers {verdicts:?}, the other download {}",
            if download.is_some() {
                "done"
            } else {
                "not done"
            }
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (result, took) = download.unwrap();
    let (status, body) = result.unwrap_or_else(|e| panic!("the other download failed: {e}"));
    assert_eq!(status, 200);
    assert_eq!(body.len() as u64, size, "the other download was cut short");
    assert_eq!(sha256_hex(&body), sha, "the other download is corrupt");
    assert!(
        took < 2 * bound,
        "the other download took {took:?} (slow readers: {verdicts:?})"
    );
    eprintln!("the other download took {took:?}; slow readers: {verdicts:#?}");
}

// ---------------------------------------------------------------------------------------
// A flood of idle sockets past the open-file limit.

/// The open-file limit the flooded index runs with, and its connection limit (which must fit
/// in it, two descriptors a connection and 256 kept for the rest).
const FLOOD_FILES: u64 = 600;
const FLOOD_MAX_CONNECTIONS: &str = "100";

/// Panics, with the end of its log, if the flooded index has exited.
fn alive(index: &mut Proc, when: &str) {
    if let Some(exit) = index.try_wait() {
        let said = index.stderr_lines();
        let tail = &said[said.len().saturating_sub(6)..];
        panic!(
            "nap-index (open-file limit {FLOOD_FILES}, --max-connections \
             {FLOOD_MAX_CONNECTIONS}) exited {when} ({exit}); its last words:\n{}",
            tail.join("\n")
        );
    }
}

#[test]
fn a_flood_of_idle_sockets_is_shed_and_the_index_serves_on() {
    // This process holds the flood: as many sockets as it may, up to 3,000.
    let ours = nap::net::connections::raise_open_files().unwrap();
    let flood = ours.saturating_sub(1024).min(3000) as usize;
    if flood < 2 * FLOOD_FILES as usize {
        eprintln!(
            "skipped: this process may open {ours} files; the flood needs over {}",
            2 * FLOOD_FILES + 1024
        );
        return;
    }
    let mut args = vec!["--in-memory", "--max-connections", FLOOD_MAX_CONNECTIONS];
    args.extend(index_timeout_flags());
    let mut command = nap_harness::index_command(Path::new(index_bin()), "127.0.0.1:0", &args);
    command.env("RUST_LOG", "info");
    nap_harness::limit_open_files(&mut command, FLOOD_FILES);
    let mut index = Proc::start("index", &mut command);
    let line = index.wait_stdout(nap_harness::INDEX_LISTENING);
    let url = line.rsplit(' ').next().unwrap().to_string();
    let addr = host(&url).to_string();
    let sockaddr: SocketAddr = addr.parse().unwrap();
    assert_eq!(
        ask(&addr, &request("GET", "/health", None, true), DEADLINE)
            .unwrap()
            .0
            .status,
        200
    );

    // Idle sockets as fast as they open, until one fails or the flood is complete.
    let opened = Instant::now();
    let mut held = Vec::with_capacity(flood);
    let mut stopped_by = None;
    while held.len() < flood {
        match TcpStream::connect_timeout(&sockaddr, Duration::from_secs(2)) {
            Ok(stream) => held.push(stream),
            Err(e) => {
                stopped_by = Some(e);
                break;
            }
        }
    }
    let when = format!(
        "under a flood of {} idle sockets opened in {:.1} s{}",
        held.len(),
        opened.elapsed().as_secs_f64(),
        stopped_by
            .map(|e| format!(" (the next connect failed: {e})"))
            .unwrap_or_default()
    );
    alive(&mut index, &when);

    // Once the flood is shed, the index answers promptly, the flood still held open.
    let health = request("GET", "/health", None, true);
    nap_harness::poll(
        "the index answers /health within a second",
        Duration::from_millis(100),
        DEADLINE,
        || {
            alive(&mut index, &when);
            ask(&addr, &health, PROMPT)
                .ok()
                .filter(|(r, _)| r.status == 200)
        },
    );
    let (reply, _) = ask(
        &addr,
        &request("GET", "/search?q=anything", None, true),
        PROMPT,
    )
    .unwrap_or_else(|e| panic!("a search {when}, once /health was answered: {e}"));
    assert_eq!(reply.status, 200, "{reply:?}");
    let register =
        serde_json::json!({"addr": "127.0.0.1:9", "files": [file_entry("f.txt", 1, "f")]})
            .to_string();
    let (reply, _) = ask(
        &addr,
        &request("POST", "/register", Some(&register), true),
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("a register {when}: {e}"));
    assert_eq!(reply.status, 200, "{reply:?}");
    let answer = reply.json().unwrap();
    let id = Id {
        peer_id: answer["peer_id"].as_str().unwrap().into(),
        token: answer["token"].as_str().unwrap().into(),
    };
    let (reply, _) = ask(
        &addr,
        &request("POST", "/heartbeat", Some(&heartbeat_body(&id)), true),
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("a heartbeat {when}: {e}"));
    assert_eq!(reply.status, 200, "{reply:?}");
    alive(&mut index, &when);

    drop(held);
    let (reply, _) = ask(&addr, &health, PROMPT)
        .unwrap_or_else(|e| panic!("/health after the flood closed: {e}"));
    assert_eq!(reply.status, 200);
    alive(&mut index, "after the flood closed");
}

// ---------------------------------------------------------------------------------------
// Keep-alive clients.

/// `rounds` requests for `path` on one kept-alive connection to `addr`, after one to warm
/// up; each answer must be over 1 KiB. Returns each round's time, sorted.
fn keep_alive_latencies(addr: &str, path: &str, rounds: usize) -> Vec<Duration> {
    let mut stream = TcpStream::connect(addr).unwrap();
    // Nothing on this side waits to fill a segment.
    stream.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    let get = request("GET", path, None, false);
    let mut took = Vec::new();
    for round in 0..=rounds {
        let sent = Instant::now();
        stream.write_all(get.as_bytes()).unwrap();
        let reply = read_reply(&mut stream, &mut buf, sent + DEADLINE, false)
            .unwrap_or_else(|e| panic!("request {round} on a kept-alive connection: {e}"));
        let elapsed = sent.elapsed();
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(
            reply.body.len() > 1024,
            "an answer of {} B",
            reply.body.len()
        );
        assert_ne!(
            reply.header("connection").map(str::to_ascii_lowercase),
            Some("close".into()),
            "the server closes kept-alive connections"
        );
        if round > 0 {
            took.push(elapsed);
        }
    }
    took.sort_unstable();
    took
}

/// The median of sorted `took` must be well under a delayed ACK (40 ms or more on Linux).
/// A server that still holds the last segment back can pass by luck: Linux stops delaying
/// those ACKs on loopback after some 10-15 s of back-to-back exchanges, for a while (seen
/// with the connections bench, `--only keepalive`); twenty requests on a fresh connection
/// stay well inside that, and every run here saw 44 ms on the code without TCP_NODELAY.
fn assert_prompt_median(what: &str, took: &[Duration]) {
    let median = took[took.len() / 2];
    let shown: Vec<String> = took
        .iter()
        .map(|d| format!("{:.1}", d.as_secs_f64() * 1000.0))
        .collect();
    assert!(
        median < Duration::from_millis(20),
        "{what}: median {:.1} ms on a kept-alive connection (a delayed ACK is 40+ ms); \
         sorted ms: {}",
        median.as_secs_f64() * 1000.0,
        shown.join(" ")
    );
}

#[test]
fn keep_alive_answers_over_1_kib_come_without_a_delayed_ack_from_the_index() {
    let index = start_index(&index_timeout_flags());
    let files = (0..40)
        .map(|n| file_entry(&format!("keepalive-{n:02}.dat"), 1, &format!("content {n}")))
        .collect();
    identity(&index.url, 9300, files);
    let took = keep_alive_latencies(host(&index.url), "/search?q=keepalive&limit=50", 20);
    assert_prompt_median("GET /search (40 results) from the index", &took);
}

#[test]
fn keep_alive_answers_over_1_kib_come_without_a_delayed_ack_from_a_peer() {
    let index = start_index(&[]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ka.bin"), vec![b'k'; 16 * 1024]).unwrap();
    let peer = start_peer(dir.path(), &index.url, true, &peer_timeout_flags());
    let head = request("HEAD", "/files/ka.bin", None, true);
    poll_until("the peer serves ka.bin", || {
        ask(&peer.addr, &head, Duration::from_secs(5))
            .ok()
            .filter(|(r, _)| r.status == 200)
    });
    let took = keep_alive_latencies(&peer.addr, "/files/ka.bin", 20);
    assert_prompt_median("GET /files/ka.bin (16 KiB) from a peer", &took);
}

/// A request saying `Connection: close` is answered saying it too, then the connection ends.
fn assert_close_echoed(what: &str, addr: &str, path: &str) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(request("GET", path, None, true).as_bytes())
        .unwrap();
    let mut buf = Vec::new();
    let reply = read_reply(&mut stream, &mut buf, Instant::now() + DEADLINE, false)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(reply.status, 200, "{what}: {reply:?}");
    let connection = reply.header("connection").map(str::to_ascii_lowercase);
    let closed = buf.is_empty() && closed_within(&mut stream, Duration::from_secs(5));
    assert!(
        connection.as_deref() == Some("close") && closed,
        "{what} with Connection: close: answered with Connection: {connection:?} (headers \
         {:?}); connection {} within 5 s",
        reply.headers,
        if closed { "closed" } else { "not closed" }
    );
}

#[test]
fn connection_close_is_echoed_then_the_connection_closed() {
    let index = start_index(&index_timeout_flags());
    assert_close_echoed("GET /health from the index", host(&index.url), "/health");
    assert_close_echoed(
        "GET /search from the index",
        host(&index.url),
        "/search?q=nothing",
    );
    let dir = tempfile::tempdir().unwrap();
    let peer = start_peer(dir.path(), &index.url, true, &peer_timeout_flags());
    assert_close_echoed("GET /status from a peer", &peer.addr, "/status");
}

// ---------------------------------------------------------------------------------------
// Many keep-alive clients connecting at once (DESIGN.md, defect 1: tiny_http's pool can
// queue a new connection for a thread that is busy with a kept-alive one).

/// Sends `path` on `stream` (kept alive) and reads the answer, within `within`.
fn ask_on(stream: &mut TcpStream, path: &str, within: Duration) -> Result<Reply, String> {
    stream
        .write_all(request("GET", path, None, false).as_bytes())
        .map_err(|e| format!("cannot send: {e}"))?;
    read_reply(stream, &mut Vec::new(), Instant::now() + within, false)
}

#[test]
fn keep_alive_clients_connecting_at_once_are_each_answered_promptly() {
    let index = start_index(&index_timeout_flags());
    let addr = host(&index.url).to_string();
    let clients = 64;
    let barrier = std::sync::Barrier::new(clients);
    let late: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|n| {
                let (addr, barrier) = (&addr, &barrier);
                s.spawn(move || -> Option<String> {
                    barrier.wait();
                    let started = Instant::now();
                    let mut stream = match TcpStream::connect(addr) {
                        Ok(s) => s,
                        Err(e) => return Some(format!("client {n}: cannot connect: {e}")),
                    };
                    if let Err(e) = ask_on(&mut stream, "/health", PROMPT) {
                        return Some(format!(
                            "client {n}: first answer: {e} after {:?}",
                            started.elapsed()
                        ));
                    }
                    // Its connection kept open and idle while the others are served; then a
                    // second request on it, or, if the server closed it meanwhile (it may
                    // close an idle connection to serve waiting ones), on a new one.
                    std::thread::sleep(Duration::from_millis(500));
                    let again = ask_on(&mut stream, "/health", PROMPT).or_else(|_| {
                        let mut fresh =
                            TcpStream::connect(addr).map_err(|e| format!("reconnect: {e}"))?;
                        ask_on(&mut fresh, "/health", PROMPT)
                    });
                    again
                        .err()
                        .map(|e| format!("client {n}: second answer: {e}"))
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(
        late.is_empty(),
        "{} of {clients}:\n{}",
        late.len(),
        late.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// A request head that never ends, sent as fast as the server takes it.

/// The most the index's memory may grow by while one client sends a head without end (the
/// warden cuts within a look; tiny_http holds what it read by then).
const HEAD_MEMORY_BOUND_KIB: u64 = 128 * 1024;

fn peak_rss_kib(pid: u32) -> u64 {
    nap_harness::memory_kib(pid).map_or(0, |(_, peak)| peak)
}

#[test]
fn a_head_without_end_is_cut_and_bounds_the_index_memory() {
    let index = start_index(&index_timeout_flags());
    let addr = host(&index.url).to_string();
    let pid = index.proc.pid();
    let before = peak_rss_kib(pid);
    let mut stream = TcpStream::connect(&addr).unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        .unwrap();
    // Up to 1 GiB, as fast as the index takes it: the cut must come long before.
    let piece = vec![b'a'; 1 << 20];
    let mut sent: u64 = 0;
    let started = Instant::now();
    while sent < 1 << 30 && started.elapsed() < DEADLINE {
        match stream.write(&piece) {
            Ok(n) if n > 0 => sent += n as u64,
            _ => break,
        }
    }
    assert!(
        sent < 1 << 30,
        "the index took 1 GiB of one request head without cutting it"
    );
    // It answers others at once, and its memory grew by a bounded amount.
    let (reply, _) = ask(&addr, &request("GET", "/health", None, true), PROMPT)
        .unwrap_or_else(|e| panic!("/health after the huge head: {e}"));
    assert_eq!(reply.status, 200);
    let grew = peak_rss_kib(pid).saturating_sub(before);
    assert!(
        grew < HEAD_MEMORY_BOUND_KIB,
        "the index's peak memory grew by {grew} KiB for one head ({} MiB sent)",
        sent >> 20
    );
}
