//! What the connection limit costs and does, and what a kept-alive connection saves, measured
//! on a real `nap-index`.
//!
//!     cargo run --release -p nap-bench --bin connections -- [--open 0,1000,4000] [--seconds 10]
//!         [--requests 2000] [--answer-bytes 10240] [--only warden|keepalive]
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

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use argh::FromArgs;
use nap::protocol::{RegisterRequest, RegisterResponse};
use nap_bench::support::{self, Fleet, List, ProcId, DEADLINE, SECRET};

/// Cost of the warden with N idle connections open; keep-alive against a connection per
/// request.
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
    /// measure only "warden" or "keepalive"
    #[argh(option)]
    only: Option<Part>,
}

#[derive(Clone, Copy, PartialEq)]
enum Part {
    Warden,
    KeepAlive,
}

impl FromStr for Part {
    type Err = String;

    fn from_str(s: &str) -> Result<Part, String> {
        support::choose(
            "part",
            s,
            &[("warden", Part::Warden), ("keepalive", Part::KeepAlive)],
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
    if args.only != Some(Part::KeepAlive) {
        warden(&args, &bin);
    }
    if args.only != Some(Part::Warden) {
        keep_alive(&bin, args.requests, args.answer_bytes);
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
