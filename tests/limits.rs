//! The connection limits of the index and of a peer's file server, against real processes:
//! requests past `--max-connections` get a clear 503, idle connections are closed (and never
//! one with a request in flight), a limit that cannot fit in the open-file limit is refused at
//! start, and an index that stops accepting exits 1 instead of sitting deaf.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn host(url: &str) -> &str {
    url.trim_start_matches("http://")
}

type Raw = (u16, Vec<(String, String)>, String);

/// A raw GET: the status, the headers (lower-cased names) and the body; `None` if the
/// connection ended without an answer (a server too busy to read the request in time closes
/// it as idle).
fn try_get(addr: &str, path: &str) -> Option<Raw> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some((status, headers, body.to_string()))
}

/// Polls `path` until it is answered `status`; returns that answer.
fn get_until(what: &str, addr: &str, path: &str, status: u16) -> Raw {
    poll_until(what, || {
        try_get(addr, path).filter(|answer| answer.0 == status)
    })
}

/// True once the other side has closed `stream` (read gives the end, or a reset).
fn closed_by_server(stream: &TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut buf = [0u8; 64];
    match (&*stream).read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// The value of an unlabelled metric, or of one sample line's exact labels.
fn metric(url: &str, sample: &str) -> f64 {
    let text = get(&format!("{url}/metrics")).body;
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {sample} in\n{text}"))
}

/// A long-poll heartbeat of `id` that the index holds for about `wait_ms`.
fn long_poll(url: &str, id: &Id, wait_ms: u64) -> Answer {
    post(
        &format!("{url}/heartbeat"),
        &serde_json::json!({"peer_id": id.peer_id, "token": id.token, "wait_ms": wait_ms})
            .to_string(),
    )
}

/// `long_poll`, sent again while it is refused for want of a place (the test's own probes
/// take places too) or its connection ends unanswered.
fn long_poll_placed(url: &str, id: &Id, wait_ms: u64) -> Answer {
    let body = serde_json::json!({"peer_id": id.peer_id, "token": id.token, "wait_ms": wait_ms});
    poll_until("a long poll gets a place", || {
        let response = agent()
            .post(&format!("{url}/heartbeat"))
            .header("Content-Type", "application/json")
            .send(body.to_string().as_bytes())
            .ok()?;
        let status = response.status().as_u16();
        let body = response.into_body().read_to_string().ok()?;
        (status != 503).then_some(Answer { status, body })
    })
}

#[test]
fn requests_past_the_limit_get_a_clear_503_and_places_come_back() {
    let index = start_index(&["--max-connections", "2"]);
    let url = index.url.clone();
    let ids: Vec<Id> = (0..2).map(|n| identity(&url, 9000 + n, vec![])).collect();
    std::thread::scope(|s| {
        // Two peers waiting on long polls take both places.
        let polls: Vec<_> = ids
            .iter()
            .map(|id| s.spawn(|| long_poll_placed(&url, id, 8_000)))
            .collect();
        let (_, headers, body) = get_until("both places are taken", host(&url), "/health", 503);
        let error: serde_json::Value = serde_json::from_str(&body).unwrap();
        let message = error["error"].as_str().unwrap();
        assert!(message.contains("too many connections"), "{message}");
        assert!(
            headers.contains(&("retry-after".to_string(), "1".to_string())),
            "{headers:?}"
        );
        for poll in polls {
            assert_eq!(
                poll.join().unwrap().status,
                200,
                "the long polls are answered"
            );
        }
    });
    // The places came back.
    get_until("the index answers again", host(&url), "/health", 200);
    assert!(metric(&url, "nap_requests_refused_total") >= 1.0);
    assert_eq!(metric(&url, "nap_connections_max"), 2.0);
}

#[test]
fn idle_connections_are_closed_but_never_one_with_a_request_in_flight() {
    let index = start_index(&["--idle-timeout", "3"]);
    let url = index.url.clone();
    let id = identity(&url, 9100, vec![]);
    // One connection sends nothing; one trickles half a request head and stops.
    let silent = TcpStream::connect(host(&url)).unwrap();
    let mut trickle = TcpStream::connect(host(&url)).unwrap();
    trickle.write_all(b"GET /hea").unwrap();
    std::thread::scope(|s| {
        // A long poll well past the idle timeout must not be cut.
        let poll = s.spawn(|| {
            let sent = Instant::now();
            (long_poll(&url, &id, 5_000), sent.elapsed())
        });
        poll_until("the silent connection is closed", || {
            closed_by_server(&silent).then_some(())
        });
        poll_until("the trickling connection is closed", || {
            closed_by_server(&trickle).then_some(())
        });
        let (answer, held) = poll.join().unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert!(held >= Duration::from_secs(3), "held only {held:?}");
    });
    assert!(metric(&url, "nap_connections_closed_total{reason=\"idle\"}") >= 2.0);
}

#[test]
fn idle_connections_past_the_limit_are_shed_and_requests_still_served() {
    let index = start_index(&["--max-connections", "4", "--idle-timeout", "600"]);
    let url = index.url.clone();
    let idle: Vec<TcpStream> = (0..12)
        .map(|_| TcpStream::connect(host(&url)).unwrap())
        .collect();
    let closed = |idle: &[TcpStream]| idle.iter().filter(|s| closed_by_server(s)).count();
    poll_until("the connections past the limit are closed", || {
        (closed(&idle) >= 8).then_some(())
    });
    // The index counts the 4 left, and leaves them be.
    poll_until("the index counts 4 open", || {
        (metric(&url, "nap_connections_open") == 4.0).then_some(())
    });
    assert_eq!(closed(&idle), 8);
    assert_eq!(get(&format!("{url}/health")).status, 200);
    assert_eq!(
        metric(&url, "nap_connections_closed_total{reason=\"over_limit\"}"),
        8.0
    );
}

/// `nap-index` (in memory, on a free port) with `flags`, allowed `files` open files.
fn index_with_open_files(files: u32, flags: &str) -> Proc {
    let command = format!(
        "ulimit -n {files} && exec {} --listen 127.0.0.1:0 --in-memory {flags}",
        index_bin()
    );
    Proc::spawn("index", "sh", &["-c", &command], &[])
}

/// The fd-limit tests need a hard open-file limit of at least 1024 (`ulimit -n 600` must be
/// allowed, and this process holds hundreds of connections); below that they say so and pass.
fn enough_open_files() -> bool {
    let enough = nap::net::connections::raise_open_files().unwrap() >= 1024;
    if !enough {
        eprintln!("skipped: this machine's hard open-file limit is below 1024");
    }
    enough
}

#[test]
fn a_limit_the_open_file_limit_cannot_hold_is_refused_at_start() {
    if !enough_open_files() {
        return;
    }
    let mut index = index_with_open_files(512, "--max-connections 10000");
    assert_eq!(index.wait_exit().code(), Some(1));
    // Read to the end of its stderr (the exit can come before the last line is collected).
    let said = index.wait_stderr(|l| l.contains("connections need about"));
    assert!(
        said.contains("10000 connections need about") && said.contains("open files"),
        "{said}"
    );

    // Without the flag, the index takes what fits and says so.
    let index = index_with_open_files(512, "");
    index.wait_stdout("listening on");
    index.wait_stderr(|l| l.contains("taking 64 connections, not 8192"));
}

#[test]
fn an_index_out_of_descriptors_keeps_serving() {
    if !enough_open_files() {
        return;
    }
    // 170 connections fit in 600 descriptors; a flood of idle ones the warden has yet to
    // shed does not: accepting fails (tiny_http's accept thread ends), and the index must
    // start accepting again on the same socket once connections are shed.
    let mut index = index_with_open_files(600, "--max-connections 170");
    // This process holds many connections of its own: as many as it may, up to 800 (about
    // 120 past what the index can hold).
    let limit = nap::net::connections::raise_open_files().unwrap();
    let most = usize::try_from(limit)
        .unwrap_or(usize::MAX)
        .saturating_sub(64)
        .min(800);
    let line = index.wait_stdout("listening on");
    let addr = line.rsplit("http://").next().unwrap().to_string();
    let url = format!("http://{addr}");
    let deadline = Instant::now() + DEADLINE;
    let mut held = Vec::new();
    // Flood until the index has had to start accepting again, three times; between floods,
    // let go of the connections and ask (it answers).
    for round in 0.. {
        assert!(
            round < 1000 && Instant::now() < deadline,
            "accepting never failed"
        );
        assert!(index.try_wait().is_none(), "the index exited");
        for _ in 0..most {
            match TcpStream::connect(&addr) {
                Ok(stream) => held.push(stream),
                Err(_) => break,
            }
        }
        held.clear();
        if metric(&url, "nap_accept_restarts_total") >= 3.0 {
            break;
        }
    }
    assert!(index.try_wait().is_none(), "the index exited");
    assert_eq!(get(&format!("{url}/health")).status, 200);
    let said = index.stderr_lines().join("\n");
    assert!(said.contains("accepting connections again"), "{said}");
}

#[test]
fn a_peer_file_server_refuses_past_its_limit_and_sheds_only_idle_connections() {
    let index = start_index(&[]);
    let dir = tempfile::tempdir().unwrap();
    // Big enough that a client that reads nothing holds its download (and its slot).
    std::fs::write(dir.path().join("big.bin"), vec![7u8; 64 << 20]).unwrap();
    let peer = start_peer(
        dir.path(),
        &index.url,
        true,
        // A long request timeout: the downloads that do not read keep their places for the
        // whole test (their cut is tests/hostile.rs's business).
        &[
            "--max-connections",
            "2",
            "--upload-slots",
            "1",
            "--request-timeout",
            "120",
        ],
    );
    get_until("the file is catalogued", &peer.addr, "/files/big.bin", 200);
    let mut stalled = TcpStream::connect(&peer.addr).unwrap();
    write!(
        stalled,
        // HTTP/1.0: the body comes as it is, not chunked.
        "GET /files/big.bin HTTP/1.0\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    // Its head arrives: it has the one place, and its body is waiting for us to read.
    stalled
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stalled.read(&mut chunk).unwrap();
        assert!(n > 0, "the download ended early");
        answer.extend_from_slice(&chunk[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    assert!(
        answer.windows(17).any(|w| w == b"Connection: close"),
        "an HTTP/1.0 client is told the connection closes"
    );
    // A second download takes the second place and waits for the one upload slot; then a
    // request for the status (which needs no slot) is refused at once: no place is left.
    let mut waiting = TcpStream::connect(&peer.addr).unwrap();
    write!(waiting, "GET /files/big.bin HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let refusal = poll_until("a request is refused", || {
        let mut s = TcpStream::connect(&peer.addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        write!(s, "GET /status HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).ok()?;
        answer.starts_with("HTTP/1.1 503").then_some(answer)
    });
    assert!(refusal.contains("too many connections"), "{refusal}");
    assert!(refusal.contains("Retry-After: 1"), "{refusal}");
    // Over the limit, an idle connection is shut down; the waiting download and the stalled
    // one are in flight and are not.
    let idle = TcpStream::connect(&peer.addr).unwrap();
    poll_until("the idle connection is closed", || {
        closed_by_server(&idle).then_some(())
    });
    // Now read the rest: all of it arrives, then the waiting download gets the slot.
    stalled.read_to_end(&mut answer).unwrap();
    let body_at = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(answer.len() - body_at, 64 << 20, "the download was cut");
    waiting
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut second = Vec::new();
    waiting.read_to_end(&mut second).unwrap();
    assert!(
        second.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        &second[..second.len().min(200)]
    );
    get_until("the place comes back", &peer.addr, "/status", 200);
}
