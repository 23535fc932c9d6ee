//! What the connection limit costs and does, and what a kept-alive connection saves, measured
//! on a real `nap-index`.
//!
//!     cargo run --release -p nap-bench --bin connections -- [--open 0,1000,4000] [--seconds 10]
//!         [--requests 2000] [--answer-bytes 10240] [--only warden|keepalive|hostile]
//!
//! Warden: for each count N, a fresh index (in memory, `--idle-timeout 600`,
//! `--max-connections` above N) gets N connections from this process that send nothing. Once
//! the index counts them all (`nap_connections_open`), the CPU time of its warden thread
//! ("conn-warden") and of the whole process are sampled from /proc over `--seconds`: the cost
//! of watching N open connections. Then a fresh index with `--max-connections N/2` gets N such
//! connections: the time from the last one opened until the index has closed the excess.
//! Linux only (the warden reads /proc/self/fd).
//!
//! Keep-alive: one peer registered with enough files that a search for them answers about
//! `--answer-bytes`; `--requests` such searches on one kept-alive connection, and as many on a
//! new connection each (`Connection: close`, as nap's own clients call, the connect timed
//! too), in interleaved blocks of 100 so both see the same machine. Each is timed from the
//! first byte sent to the last byte of the answer read, on raw sockets (no client library's
//! own costs; `TCP_NODELAY` on this side, so only the server can hold a segment back). An
//! answer whose last segment waited for the client's delayed ACK takes 40 ms or more; the
//! last column counts them. Linux stops delaying those ACKs after some 10-15 s of such
//! back-to-back exchanges (seen on this machine: every answer waited 44 ms until then, and
//! none after), so the percentiles depend on `--requests`; that column does less.
//!
//! Hostile clients (`--only hostile`): how the index under test holds up against clients
//! that stall or flood it, measured only with flags every build of `nap-index` has (no
//! `--request-timeout`: a build with it runs with its default), so that an older build can be
//! measured by the same program. Each measurement starts a fresh index (in memory) and gives
//! up after a stated bound; an index that exits or stops answering is reported as such, not a
//! panic.
//!
//! 1. Stalled bodies: `--workers 4`; 8 connections send a `POST /register` head with
//!    `Transfer-Encoding: chunked` and a first chunk that never ends, 8 more one with
//!    `Content-Length: 100000` and no body (any the index ends is opened again, so 16 stall
//!    throughout). From 250 ms later, for 10 s, every 100 ms a `GET /health` on a connection
//!    of its own (`Connection: close`) is timed, from connecting to the last byte of the
//!    answer, and given up after 1 s. Percentiles are over every probe asked, one not
//!    answered counting as slower than any ("unanswered").
//! 2. Huge head: one client sends `GET /health HTTP/1.1`, `Host`, and a header `X-Big: ` then
//!    up to 300 MiB of `a`, as fast as the index takes them, until a write fails (the index
//!    reset the connection) or blocks for 5 s (it stopped reading), or 30 s have passed; then
//!    what the index did with its end (closed, answered, or still open). "Took" is what the
//!    index's side acknowledged (`TCP_INFO` of this side's socket), whether the index read it
//!    or its kernel held it until the close; "kept taking" runs to the end of the last write
//!    that did not wait for the 5 s. The index's peak resident memory (VmHWM) is read before,
//!    and once it has not grown for 500 ms (5 s at most); then whether the index answers
//!    `/health` within 1 s.
//! 3. Descriptor flood: the index runs with an open-file limit of 600 (soft and hard) and
//!    `--max-connections 100`; this process opens up to 3,000 idle sockets to it as fast as it
//!    can (connects bounded at 2 s; it stops at the first that fails, or after 30 s) and keeps
//!    them open, then tries `GET /health` (1 s each) every 100 ms until one is answered, the
//!    index exits, or 30 s have passed: the time from the last socket opened to the end of
//!    the first answer.
//!
//!     cargo run --release -p nap-bench --bin connections -- --only hostile
//!
//! To measure another build, put its `nap-index` beside a copy of this executable
//! (target/release/connections) and run that copy directly, not through cargo (which would
//! rebuild and use this tree's binaries):
//!
//!     cp old/target/release/nap-index target/release/connections /tmp/old/
//!     /tmp/old/connections --only hostile

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use argh::FromArgs;
use nap::protocol::{RegisterRequest, RegisterResponse};
use nap_bench::support::{self, Fleet, List, ProcId, DEADLINE, SECRET};

/// Cost of the warden with N idle connections open; keep-alive against a connection per
/// request; the index against stalled bodies, a huge head and a flood of descriptors.
#[derive(FromArgs)]
struct Args {
    /// idle connection counts, comma-separated (default 0,1000,4000)
    #[argh(option)]
    open: Option<List<usize>>,
    /// seconds of CPU sampling per count (default 10)
    #[argh(option, default = "10.0")]
    seconds: f64,
    /// requests timed per kind of connection in the keep-alive measurement
    #[argh(option, default = "2000")]
    requests: usize,
    /// size of the answer the keep-alive measurement asks for, about, in bytes
    #[argh(option, default = "10240")]
    answer_bytes: usize,
    /// measure only "warden", "keepalive" or "hostile"
    #[argh(option)]
    only: Option<Part>,
}

#[derive(Clone, Copy, PartialEq)]
enum Part {
    Warden,
    KeepAlive,
    Hostile,
}

impl FromStr for Part {
    type Err = String;

    fn from_str(s: &str) -> Result<Part, String> {
        support::choose(
            "part",
            s,
            &[
                ("warden", Part::Warden),
                ("keepalive", Part::KeepAlive),
                ("hostile", Part::Hostile),
            ],
        )
    }
}

/// CPU seconds (user + system) of a /proc `stat` file.
fn cpu_seconds(stat: &str) -> Option<f64> {
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// CPU seconds of process `pid` and of its thread named `thread`.
fn cpu(pid: u32, thread: &str) -> (f64, f64) {
    let process = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| cpu_seconds(&s))
        .unwrap_or(0.0);
    let mut warden = 0.0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim() == thread {
                warden += std::fs::read_to_string(task.path().join("stat"))
                    .ok()
                    .and_then(|s| cpu_seconds(&s))
                    .unwrap_or(0.0);
            }
        }
    }
    (process, warden)
}

fn metric(url: &str, name: &str) -> Option<f64> {
    let text = nap_harness::api_agent()
        .get(&format!("{url}/metrics"))
        .call()
        .ok()?
        .into_body()
        .read_to_string()
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn start(fleet: &mut Fleet, bin: &Path, max: usize) -> (ProcId, String) {
    let flags = [
        "--cluster-secret",
        SECRET,
        "--in-memory",
        "--idle-timeout",
        "600",
        "--max-connections",
        &max.to_string(),
    ];
    let mut index = nap_harness::start_index(bin, "index", "127.0.0.1:0", &flags, &[]);
    index.wait_ready("primary");
    let url = index.url.clone();
    (fleet.adopt(index.proc), url)
}

fn open(url: &str, n: usize) -> Vec<TcpStream> {
    let addr = url.trim_start_matches("http://");
    (0..n)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect()
}

fn poll<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    support::poll(what, Duration::from_millis(5), DEADLINE, check)
}

fn main() {
    let args: Args = argh::from_env();
    let bin = support::binary("nap-index", "connections");
    let runs = |part| args.only.is_none_or(|only| only == part);
    if runs(Part::Warden) {
        warden(&args, &bin);
    }
    if runs(Part::KeepAlive) {
        keep_alive(&bin, args.requests, args.answer_bytes);
    }
    if runs(Part::Hostile) {
        hostile::run(&bin);
    }
}

/// The warden's cost with N idle connections open, and how fast it sheds N/2 past the limit.
fn warden(args: &Args, bin: &Path) {
    let counts = args
        .open
        .as_ref()
        .map_or(vec![0, 1000, 4000], |l| l.0.clone());
    // This process holds the connections too.
    let room = nap::net::connections::fitting(usize::MAX);
    println!(
        "| idle connections | warden CPU | index CPU | shed N/2 (from last connect to all closed) |"
    );
    println!("|---:|---:|---:|---:|");
    for n in counts {
        assert!(
            n < room,
            "{n} connections do not fit in this process's open-file limit"
        );
        let mut fleet = Fleet::new("nap-connections-");
        let (id, url) = start(&mut fleet, bin, n + 64);
        let held = open(&url, n);
        poll("the index counts every connection", || {
            (metric(&url, "nap_connections_open")? >= n as f64).then_some(())
        });
        let pid = fleet.pid(id);
        let (p0, w0) = cpu(pid, "conn-warden");
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(args.seconds));
        let (p1, w1) = cpu(pid, "conn-warden");
        let wall = t0.elapsed().as_secs_f64();
        drop(held);
        fleet.kill(id);

        // Shedding: half of them are past the limit.
        let shed = if n >= 2 {
            let (_id, url) = start(&mut fleet, bin, n / 2);
            let held = open(&url, n);
            let opened = Instant::now();
            poll("the index sheds the excess", || {
                let closed = held
                    .iter()
                    .filter(|s| {
                        let _ = s.set_nonblocking(true);
                        match (&**s).read(&mut [0u8; 1]) {
                            Ok(n) => n == 0,
                            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                        }
                    })
                    .count();
                (closed >= n - n / 2).then_some(())
            });
            format!("{:.0} ms", opened.elapsed().as_secs_f64() * 1000.0)
        } else {
            "-".into()
        };
        println!(
            "| {n} | {:.2}% of a core | {:.2}% of a core | {shed} |",
            100.0 * (w1 - w0) / wall,
            100.0 * (p1 - p0) / wall
        );
    }
}

/// Requests timed per block of one kind, the kinds taking turns.
const BLOCK: usize = 100;

/// Keep-alive against a new connection per request, for a search answered with about
/// `bytes`: p50, p99 and the mean of each, side by side.
fn keep_alive(bin: &Path, requests: usize, bytes: usize) {
    let mut fleet = Fleet::new("nap-keepalive-");
    let (_id, url) = start(&mut fleet, bin, 256);
    let addr = url.trim_start_matches("http://").to_string();
    // One peer holding the files the search finds (more than any answer here needs).
    let files = (0..2000)
        .map(|n| support::first_version(&format!("keepalive-{n:04}.bin")))
        .collect();
    let rq = RegisterRequest {
        addr: "127.0.0.1:9".into(),
        files,
        peer_id: None,
        token: None,
    };
    let registered: RegisterResponse =
        support::post_json(&format!("{url}/register"), &rq).expect("register");
    assert!(registered.rejected.is_empty(), "files were refused");
    // As many results as make about `bytes`, from the size of a sample answer.
    let sample = answer_length(&addr, &search_path(100));
    let limit = (bytes * 100).div_ceil(sample.max(1)).clamp(1, 1000);
    let path = search_path(limit);
    let size = answer_length(&addr, &path);

    let keep_get = request(&path, false);
    let close_get = request(&path, true);
    let mut kept = TcpStream::connect(&addr).expect("connect");
    kept.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    // Warm up both paths (the connection, the server's threads).
    for _ in 0..BLOCK {
        exchange(&mut kept, &keep_get, &mut buf);
        fresh(&addr, &close_get);
    }
    let (mut alive, mut new) = (Vec::with_capacity(requests), Vec::with_capacity(requests));
    while alive.len() < requests || new.len() < requests {
        for _ in 0..BLOCK.min(requests - alive.len()) {
            let sent = Instant::now();
            exchange(&mut kept, &keep_get, &mut buf);
            alive.push(sent.elapsed());
        }
        for _ in 0..BLOCK.min(requests - new.len()) {
            let sent = Instant::now();
            fresh(&addr, &close_get);
            new.push(sent.elapsed());
        }
    }
    let mean = |ds: &[Duration]| support::ms(ds.iter().sum::<Duration>() / ds.len() as u32);
    let delayed = |ds: &[Duration]| {
        let over = ds
            .iter()
            .filter(|d| **d >= Duration::from_millis(40))
            .count();
        100.0 * over as f64 / ds.len() as f64
    };
    let fine = Duration::from_millis(10);
    println!();
    println!(
        "GET {path}: {size} B answered (head and body), {requests} requests of each kind, \
         interleaved in blocks of {BLOCK}"
    );
    println!();
    println!("| connection | p50 ms | p99 ms | mean ms | answers taking 40 ms or more |");
    println!("|---|---:|---:|---:|---:|");
    let row = |name: &str, ds: Vec<Duration>| {
        let (m, late) = (mean(&ds), delayed(&ds));
        let cells = support::spread(ds, &[0.5, 0.99], " | ", fine, 2);
        println!("| {name} | {cells} | {m:.2} | {late:.1}% |");
    };
    row("kept alive (one for all)", alive);
    row("new per request (Connection: close)", new);
}

fn search_path(limit: usize) -> String {
    format!("/search?q=keepalive&limit={limit}")
}

fn request(path: &str, close: bool) -> Vec<u8> {
    let connection = if close { "Connection: close\r\n" } else { "" };
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{connection}\r\n").into_bytes()
}

/// The length of the answer (head and body) to one `GET path` on a connection of its own.
fn answer_length(addr: &str, path: &str) -> usize {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let (status, len) = exchange(&mut stream, &request(path, true), &mut Vec::new());
    assert_eq!(status, 200, "GET {path}");
    len
}

/// One request on a new connection that the server closes after answering.
fn fresh(addr: &str, request: &[u8]) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    exchange(&mut stream, request, &mut buf);
}

/// Sends `request` and reads its answer (a `Content-Length` body); bytes past it stay in
/// `buf`. Returns the status and the answer's length, head included.
fn exchange(stream: &mut TcpStream, request: &[u8], buf: &mut Vec<u8>) -> (u16, usize) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).expect("send the request");
    let mut chunk = [0u8; 64 * 1024];
    let mut more = |buf: &mut Vec<u8>| {
        let n = stream.read(&mut chunk).expect("read the answer");
        assert!(n > 0, "the connection closed before the answer");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        more(buf);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let body: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a Content-Length (answers under 32 KiB are not chunked)");
    while buf.len() < head_end + body {
        more(buf);
    }
    buf.drain(..head_end + body);
    (status, head_end + body)
}

/// Clients that stall or flood the index (`--only hostile`; see the module's doc).
mod hostile {
    use std::io::{ErrorKind, Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::path::Path;
    use std::process::Command;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use nap_bench::support::{self, Fleet, ProcId, SECRET};

    /// The bound on each wait of a measurement (start-up, a flood, the first answer, a huge
    /// head's transfer).
    const GIVE_UP: Duration = Duration::from_secs(30);
    /// How long a `/health` probe waits for its whole answer.
    const PROBE_WAIT: Duration = Duration::from_secs(1);
    /// The pace of the probes.
    const PROBE_EVERY: Duration = Duration::from_millis(100);

    /// Stalled bodies: `--workers`, connections of each kind, how long the probes run.
    const STALL_WORKERS: &str = "4";
    const STALLED_EACH: usize = 8;
    const STALL_PROBING: Duration = Duration::from_secs(10);
    /// From opening the stalls to the first probe, so they are in place.
    const STALL_SETTLE: Duration = Duration::from_millis(250);

    /// Huge head: the most sent, the longest a write may block.
    const HEAD_BYTES: u64 = 300 << 20;
    const HEAD_WRITE_WAIT: Duration = Duration::from_secs(5);

    /// Descriptor flood: the index's open-file limit, its `--max-connections`, the sockets
    /// opened, and the bound on each connect.
    const FLOOD_FILES: u64 = 600;
    const FLOOD_MAX_CONNECTIONS: &str = "100";
    const FLOOD_SOCKETS: usize = 3000;
    const FLOOD_CONNECT_WAIT: Duration = Duration::from_secs(2);

    pub fn run(bin: &Path) {
        let has_timeout = Command::new(bin)
            .arg("--help")
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("--request-timeout"));
        println!();
        println!(
            "Hostile clients against {} ({}; not passed, so its default)",
            bin.display(),
            if has_timeout {
                "it has --request-timeout"
            } else {
                "it has no --request-timeout"
            }
        );
        stalled_bodies(bin);
        huge_head(bin);
        descriptor_flood(bin);
    }

    /// `nap-index` at `bin` on a free port, in memory, with `extra` flags (only flags that
    /// builds before the hostile-client work have too).
    fn command(bin: &Path, extra: &[&str]) -> Command {
        let mut flags = vec!["--in-memory", "--cluster-secret", SECRET];
        flags.extend_from_slice(extra);
        nap_harness::index_command(bin, "127.0.0.1:0", &flags)
    }

    /// Starts `command` in `fleet` and waits until it listens and answers `/health`: its id
    /// and address, or why not (it exited, or did not get that far within `GIVE_UP`).
    fn launch(fleet: &mut Fleet, mut command: Command) -> Result<(ProcId, SocketAddr), String> {
        let id = fleet.start("index", &mut command);
        let started = Instant::now();
        let addr = loop {
            let lines = fleet.proc(id).stdout_lines();
            let line = lines
                .iter()
                .find(|l| l.contains(nap_harness::INDEX_LISTENING));
            if let Some(addr) = line
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|url| url.trim_start_matches("http://").parse().ok())
            {
                break addr;
            }
            if let Some(exit) = fleet.proc_mut(id).try_wait() {
                return Err(format!("at start-up: {}", exited(fleet, id, exit)));
            }
            if started.elapsed() > GIVE_UP {
                return Err(format!("not listening after {} s", GIVE_UP.as_secs()));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        while health(&addr, PROBE_WAIT).is_err() {
            if let Some(exit) = fleet.proc_mut(id).try_wait() {
                return Err(format!("at start-up: {}", exited(fleet, id, exit)));
            }
            if started.elapsed() > GIVE_UP {
                return Err(format!(
                    "no answer to /health within {} s",
                    GIVE_UP.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok((id, addr))
    }

    /// "alive", or how the process ended.
    fn state(fleet: &mut Fleet, id: ProcId) -> String {
        match fleet.proc_mut(id).try_wait() {
            None => "alive".into(),
            Some(exit) => exited(fleet, id, exit),
        }
    }

    /// "exited (status)", with the last error the process logged (else its last line).
    fn exited(fleet: &Fleet, id: ProcId, exit: std::process::ExitStatus) -> String {
        let log = fleet.log(id);
        let mut lines = log.lines().rev().filter(|l| !l.trim().is_empty());
        let last = lines
            .clone()
            .find(|l| l.starts_with("ERROR"))
            .or_else(|| lines.next());
        match last {
            Some(line) => format!("exited ({exit}): {}", line.trim().replace('|', "/")),
            None => format!("exited ({exit})"),
        }
    }

    /// A row whose measurement could not start: `why`, then `cells` dashes.
    fn failed_row(first: &str, why: &str, cells: usize) {
        println!("| {first} | {why} |{}", " - |".repeat(cells));
    }

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|w| w == needle)
    }

    /// `GET /health` with `Connection: close` on a connection of its own, all within
    /// `within`: the time from connecting to the last byte of a 200 answer, or why there was
    /// none.
    fn health(addr: &SocketAddr, within: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        let deadline = started + within;
        let late = || format!("no answer within {} s", within.as_secs_f64());
        let mut stream = TcpStream::connect_timeout(addr, within).map_err(|e| match e.kind() {
            ErrorKind::TimedOut | ErrorKind::WouldBlock => late(),
            _ => format!("connect failed ({})", e.kind()),
        })?;
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(within));
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .map_err(|e| format!("send failed ({})", e.kind()))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            // The answer is whole once its head and `Content-Length` body have arrived (or,
            // without a length, at the close).
            let head = find(&buf, b"\r\n\r\n").map(|end| {
                let text = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let status = text.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok());
                let length = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                (end + 4, status, length)
            });
            let answered = |status: Option<u16>| match status {
                Some(200) => Ok(started.elapsed()),
                other => Err(format!("answered {other:?}")),
            };
            if let Some((end, status, Some(length))) = head {
                if buf.len() >= end + length {
                    return answered(status);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(late());
            }
            let _ = stream.set_read_timeout(Some(left));
            match stream.read(&mut chunk) {
                Ok(0) => {
                    return match head {
                        Some((_, status, None)) => answered(status),
                        _ => Err("closed without an answer".into()),
                    }
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(late())
                }
                Err(e) => return Err(format!("read failed ({})", e.kind())),
            }
        }
    }

    /// Counts of each distinct reason, most frequent first: "90 × no answer within 1 s".
    fn tally(reasons: &[String]) -> String {
        let mut counts: Vec<(usize, &str)> = Vec::new();
        for reason in reasons {
            match counts.iter_mut().find(|(_, r)| *r == reason.as_str()) {
                Some((n, _)) => *n += 1,
                None => counts.push((1, reason)),
            }
        }
        counts.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
        let parts: Vec<String> = counts.iter().map(|(n, r)| format!("{n} × {r}")).collect();
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join(", ")
        }
    }

    // -----------------------------------------------------------------------------------
    // 1. Stalled bodies

    use nap_harness::Stall;

    /// A new connection stalling this way, if one can be opened.
    fn open(stall: Stall, addr: &SocketAddr) -> Option<TcpStream> {
        let mut stream = TcpStream::connect_timeout(addr, PROBE_WAIT).ok()?;
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(PROBE_WAIT));
        stream.write_all(&stall.opening()).ok()?;
        stream.set_nonblocking(true).ok()?;
        Some(stream)
    }

    /// True if the index has ended `stream` (closed it, reset it, or answered: a 408 is
    /// followed by a close).
    fn ended(stream: &TcpStream) -> bool {
        let mut got = [0u8; 256];
        match (&*stream).read(&mut got) {
            Ok(n) => n == 0 || got[..n].starts_with(b"HTTP/"),
            Err(e) => e.kind() != ErrorKind::WouldBlock,
        }
    }

    /// Keeps a connection of each of `stalls` stalled on `addr` until `stop`: every 50 ms,
    /// one the index has ended (counted in `cut`) is opened again.
    fn keep_stalling(
        addr: &SocketAddr,
        stalls: Vec<(Stall, Option<TcpStream>)>,
        stop: &AtomicBool,
        cut: &AtomicUsize,
    ) {
        let mut stalls = stalls;
        while !stop.load(Ordering::Relaxed) {
            for (stall, stream) in stalls.iter_mut() {
                if stream.as_ref().is_none_or(ended) {
                    if stream.take().is_some() {
                        cut.fetch_add(1, Ordering::Relaxed);
                    }
                    *stream = open(*stall, addr);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stalled_bodies(bin: &Path) {
        println!();
        println!(
            "| {STALLED_EACH} chunked + {STALLED_EACH} withheld bodies, --workers \
             {STALL_WORKERS}: /health every {} ms for {} s | answered within {} s / asked | \
             p50 ms | p99 ms | max ms | unanswered because | stalls the index ended | index |",
            PROBE_EVERY.as_millis(),
            STALL_PROBING.as_secs(),
            PROBE_WAIT.as_secs()
        );
        println!("|---|---:|---:|---:|---:|---|---:|---|");
        let first = "stalled bodies";
        let mut fleet = Fleet::new("nap-hostile-");
        let (id, addr) = match launch(&mut fleet, command(bin, &["--workers", STALL_WORKERS])) {
            Ok(started) => started,
            Err(why) => return failed_row(first, &why, 6),
        };
        let stalls: Vec<(Stall, Option<TcpStream>)> = [Stall::Chunked, Stall::Withheld]
            .into_iter()
            .flat_map(|stall| std::iter::repeat_n(stall, STALLED_EACH))
            .map(|stall| (stall, open(stall, &addr)))
            .collect();
        let opened = stalls.iter().filter(|(_, s)| s.is_some()).count();
        std::thread::sleep(STALL_SETTLE);
        let (stop, cut) = (AtomicBool::new(false), AtomicUsize::new(0));
        let asked = (STALL_PROBING.as_millis() / PROBE_EVERY.as_millis()) as u32;
        let results: Vec<Result<Duration, String>> = std::thread::scope(|scope| {
            scope.spawn(|| keep_stalling(&addr, stalls, &stop, &cut));
            let start = Instant::now();
            let probes: Vec<_> = (0..asked)
                .map(|i| {
                    scope.spawn(move || {
                        let at = start + PROBE_EVERY * i;
                        std::thread::sleep(at.saturating_duration_since(Instant::now()));
                        health(&addr, PROBE_WAIT)
                    })
                })
                .collect();
            let results = probes
                .into_iter()
                .map(|p| p.join().unwrap_or_else(|_| Err("probe panicked".into())))
                .collect();
            stop.store(true, Ordering::Relaxed);
            results
        });
        let index = state(&mut fleet, id);
        let mut times: Vec<Duration> = results.iter().filter_map(|r| r.clone().ok()).collect();
        let reasons: Vec<String> = results.iter().filter_map(|r| r.clone().err()).collect();
        times.sort_unstable();
        // Nearest rank over every probe asked, the unanswered ranked after every answer.
        let at = |p: f64| {
            let rank = ((results.len() as f64 * p).ceil() as usize).clamp(1, results.len());
            times.get(rank - 1).map_or("unanswered".to_string(), |d| {
                format!("{:.1}", support::ms(*d))
            })
        };
        let cut = cut.load(Ordering::Relaxed);
        let opened_note = if opened < 2 * STALLED_EACH {
            format!(" ({opened} of {} opened at first)", 2 * STALLED_EACH)
        } else {
            String::new()
        };
        println!(
            "| {first}{opened_note} | {} / {} | {} | {} | {} | {} | {cut} | {index} |",
            times.len(),
            results.len(),
            at(0.5),
            at(0.99),
            at(1.0),
            tally(&reasons)
        );
    }

    // -----------------------------------------------------------------------------------
    // 2. Huge head

    fn mib(bytes: u64) -> f64 {
        bytes as f64 / (1u64 << 20) as f64
    }

    /// Peak resident memory (VmHWM) of `pid` in MiB, or "-".
    fn peak(pid: u32) -> String {
        support::memory_kib(pid)
            .map_or("-".into(), |(_, hwm)| format!("{:.0}", hwm as f64 / 1024.0))
    }

    /// What the other side has acknowledged of what `stream` sent (Linux's `TCP_INFO`): the
    /// bytes the index's kernel took, whether or not the index read them.
    fn bytes_acked(stream: &TcpStream) -> Option<u64> {
        use std::os::fd::AsRawFd;
        // SAFETY: tcp_info is plain data; zeroed is a valid value.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `info`, which we own.
        let done = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        let filled = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_acked) + 8;
        (done == 0 && len as usize >= filled).then_some(info.tcpi_bytes_acked)
    }

    /// What the index has done with its end of `stream`, as seen within 200 ms.
    fn far_end(stream: &mut TcpStream) -> String {
        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
        let mut got = [0u8; 256];
        match stream.read(&mut got) {
            Ok(0) => "closed (FIN)".into(),
            Ok(n) => {
                let text = String::from_utf8_lossy(&got[..n]);
                format!("answered {:?}", text.lines().next().unwrap_or_default())
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                "open".into()
            }
            Err(e) => format!("closed ({})", e.kind()),
        }
    }

    fn huge_head(bin: &Path) {
        println!();
        println!(
            "| huge head: X-Big of up to {} MiB | MiB the index took | sending ended by | s it \
             kept taking | index's end | index peak RSS before, MiB | after, MiB | index \
             afterwards |",
            HEAD_BYTES >> 20
        );
        println!("|---|---:|---|---:|---|---:|---:|---|");
        let first = "one header line, as fast as taken";
        let mut fleet = Fleet::new("nap-hostile-");
        let (id, addr) = match launch(&mut fleet, command(bin, &[])) {
            Ok(started) => started,
            Err(why) => return failed_row(first, &why, 6),
        };
        let pid = fleet.pid(id);
        let before = peak(pid);
        let started = Instant::now();
        let mut stream = match TcpStream::connect_timeout(&addr, HEAD_WRITE_WAIT) {
            Ok(stream) => stream,
            Err(e) => return failed_row(first, &format!("connect failed ({})", e.kind()), 6),
        };
        let _ = stream.set_write_timeout(Some(HEAD_WRITE_WAIT));
        let mut pending = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
        let filler = vec![b'a'; 1 << 20];
        let total = HEAD_BYTES + pending.len() as u64;
        let mut sent = 0u64;
        // Until the end of the last write that did not wait for the timeout.
        let mut taking = Duration::ZERO;
        let ended = loop {
            if sent >= total {
                break "all sent".to_string();
            }
            if started.elapsed() > GIVE_UP {
                break format!("{} s passed", GIVE_UP.as_secs());
            }
            let piece = if pending.is_empty() {
                &filler[..filler.len().min((total - sent) as usize)]
            } else {
                &pending[..]
            };
            let writing = Instant::now();
            match stream.write(piece) {
                Ok(0) => break "a write took nothing".to_string(),
                Ok(n) => {
                    sent += n as u64;
                    pending.drain(..n.min(pending.len()));
                    // A write cut short by the timeout returns what it got before it.
                    if writing.elapsed() < HEAD_WRITE_WAIT {
                        taking = started.elapsed();
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break format!("a write blocked {} s", HEAD_WRITE_WAIT.as_secs())
                }
                Err(e) => break format!("a write failed ({})", e.kind()),
            }
        };
        let end = far_end(&mut stream);
        // Held (unless the index has closed it) until the index's peak memory has not grown
        // for 500 ms, 5 s at most.
        let mut last = support::memory_kib(pid);
        let (settling, mut steady) = (Instant::now(), Instant::now());
        while steady.elapsed() < Duration::from_millis(500)
            && settling.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(50));
            let now = support::memory_kib(pid);
            if now.map(|m| m.1) != last.map(|m| m.1) {
                steady = Instant::now();
            }
            last = now;
        }
        let after = peak(pid);
        // Whatever is still in this side's send buffer was not taken.
        let taken = bytes_acked(&stream).map_or(sent, |acked| acked.min(sent));
        drop(stream);
        let index = match fleet.proc_mut(id).try_wait() {
            Some(exit) => exited(&fleet, id, exit),
            None => match health(&addr, PROBE_WAIT) {
                Ok(d) => format!("alive, /health in {:.1} ms", support::ms(d)),
                Err(e) => format!("alive, /health: {e}"),
            },
        };
        println!(
            "| {first} | {:.1} | {ended} | {:.1} | {end} | {before} | {after} | {index} |",
            mib(taken),
            taking.as_secs_f64()
        );
    }

    // -----------------------------------------------------------------------------------
    // 3. Descriptor flood

    fn descriptor_flood(bin: &Path) {
        println!();
        println!(
            "| flood: open-file limit {FLOOD_FILES}, --max-connections {FLOOD_MAX_CONNECTIONS} \
             | idle sockets opened | opening stopped by | index after the flood | first /health \
             answer, s after the flood | index at the end |"
        );
        println!("|---|---:|---|---|---:|---|");
        // This process holds the flood (and its probes).
        let ours = nap::net::connections::raise_open_files().unwrap_or(1024);
        let flood = FLOOD_SOCKETS.min(ours.saturating_sub(256) as usize);
        let first = format!("up to {flood} idle sockets");
        let mut fleet = Fleet::new("nap-hostile-");
        let mut command = command(bin, &["--max-connections", FLOOD_MAX_CONNECTIONS]);
        nap_harness::limit_open_files(&mut command, FLOOD_FILES);
        let (id, addr) = match launch(&mut fleet, command) {
            Ok(started) => started,
            Err(why) => return failed_row(&first, &why, 4),
        };
        let opening = Instant::now();
        let mut held = Vec::with_capacity(flood);
        let stopped = loop {
            if held.len() >= flood {
                break "-".to_string();
            }
            if opening.elapsed() > GIVE_UP {
                break format!("{} s passed", GIVE_UP.as_secs());
            }
            match TcpStream::connect_timeout(&addr, FLOOD_CONNECT_WAIT) {
                Ok(stream) => held.push(stream),
                Err(e) => break format!("a connect failed ({})", e.kind()),
            }
        };
        let flooded = Instant::now();
        let opened = format!(
            "{} in {:.1} s",
            held.len(),
            (flooded - opening).as_secs_f64()
        );
        let after_flood = state(&mut fleet, id);
        let answer = loop {
            if fleet.proc_mut(id).try_wait().is_some() {
                break "none (exited)".to_string();
            }
            let asked = Instant::now();
            if health(&addr, PROBE_WAIT).is_ok() {
                break format!("{:.1}", flooded.elapsed().as_secs_f64());
            }
            if flooded.elapsed() > GIVE_UP {
                break format!("no answer in {} s", GIVE_UP.as_secs());
            }
            std::thread::sleep(PROBE_EVERY.saturating_sub(asked.elapsed()));
        };
        let at_end = state(&mut fleet, id);
        drop(held);
        println!("| {first} | {opened} | {stopped} | {after_flood} | {answer} | {at_end} |");
    }
}
