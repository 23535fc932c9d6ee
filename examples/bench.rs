//! Index throughput and latency under concurrent clients, what nap's one-request-per-
//! connection policy costs against keep-alive, and the latency of the write path under
//! leases (a lease, then the announce of the next version).
//!
//!     cargo run --release --example bench -- [--clients N] [--seconds S] [--peers P]
//!         [--only requests|writes] [--busy-backoff-ms MS]
//!
//! An index runs in this process (its own threads, the real HTTP stack); P peers register 20
//! files each; then, for each operation, N client threads, each with its own HTTP agent and
//! identity, call it in a loop for S seconds. Every figure is measured here, not asserted.
//!
//! The write rows publish new versions (lease, then announce) with nap's `Connection: close`:
//! first each client its own file, then all clients one shared file, where a refused lease is
//! contention by design: it is counted and retried after MS ms, not an error. `GET /file`
//! then checks that every publish added exactly one version.

use std::str::FromStr;
use std::time::{Duration, Instant};

use argh::FromArgs;
use nap::index::{IndexConfig, IndexServer};
use nap::protocol::{
    self, AnnounceRequest, AnnounceResponse, ErrorBody, FileInfoResponse, FileMeta,
    HeartbeatRequest, LeaseIdRequest, LeaseRequest, LeaseResponse, RegisterRequest,
    RegisterResponse, ReleaseResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

/// Index load benchmark.
#[derive(FromArgs)]
struct Args {
    /// concurrent client threads
    #[argh(option, default = "32")]
    clients: usize,
    /// seconds per measurement
    #[argh(option, default = "3.0")]
    seconds: f64,
    /// registered peers (20 files each) before measuring
    #[argh(option, default = "1000")]
    peers: usize,
    /// index worker threads
    #[argh(option, default = "4")]
    workers: usize,
    /// measure only "requests" (status, search, heartbeat) or "writes" (lease + announce)
    #[argh(option)]
    only: Option<Rows>,
    /// pause before retrying a lease another writer holds, in ms (shared-file row)
    #[argh(option, default = "1")]
    busy_backoff_ms: u64,
}

/// The two groups of rows, so one group can be measured without the other.
#[derive(Clone, Copy, PartialEq)]
enum Rows {
    Requests,
    Writes,
}

impl FromStr for Rows {
    type Err = String;

    fn from_str(s: &str) -> Result<Rows, String> {
        match s {
            "requests" => Ok(Rows::Requests),
            "writes" => Ok(Rows::Writes),
            _ => Err(format!("unknown rows {s:?}: use requests or writes")),
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Conn {
    Close,
    KeepAlive,
}

#[derive(Clone, Copy)]
enum Operation {
    Status,
    Search,
    Heartbeat,
}

fn agent(conn: Conn) -> ureq::Agent {
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(2)))
        .timeout_recv_response(Some(Duration::from_secs(5)))
        .timeout_recv_body(Some(Duration::from_secs(5)));
    if conn == Conn::Close {
        config = config.max_idle_connections(0);
    }
    config.build().into()
}

fn meta(peer: usize, file: usize) -> FileMeta {
    let sha = nap::peer::files::sha256_of(format!("{peer}/{file}").as_bytes()).unwrap_or_default();
    FileMeta {
        name: format!("track {file:02} of peer {peer}.mp3"),
        version: 1,
        size: 1000 + file as u64,
        sha256: sha,
    }
}

fn register(url: &str, peer: usize, files: Vec<FileMeta>) -> RegisterResponse {
    let rq = RegisterRequest {
        addr: format!("127.0.0.1:{}", 10_000 + peer % 50_000),
        files,
        peer_id: None,
        token: None,
    };
    agent(Conn::Close)
        .post(&format!("{url}/register"))
        .header("Connection", "close")
        .send_json(&rq)
        .expect("register")
        .into_body()
        .read_json()
        .expect("register answer")
}

struct Sample {
    ops: usize,
    errors: usize,
    latencies_us: Vec<u64>,
}

fn run(
    url: &str,
    op: Operation,
    conn: Conn,
    clients: usize,
    for_: Duration,
    peers: &[RegisterResponse],
) -> Sample {
    let results: Vec<Sample> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|n| {
                let identity = &peers[n % peers.len()];
                s.spawn(move || {
                    let agent = agent(conn);
                    let mut sample = Sample {
                        ops: 0,
                        errors: 0,
                        latencies_us: Vec::new(),
                    };
                    let start = Instant::now();
                    let mut i = 0usize;
                    while start.elapsed() < for_ {
                        i += 1;
                        let t = Instant::now();
                        let mut rq = match op {
                            Operation::Status => {
                                agent.get(&format!("{url}/status")).force_send_body()
                            }
                            Operation::Search => agent
                                .get(&format!(
                                    "{url}/search?q=track+{:02}+peer+{}",
                                    i % 20,
                                    (n * 31 + i) % peers.len()
                                ))
                                .force_send_body(),
                            Operation::Heartbeat => agent.post(&format!("{url}/heartbeat")),
                        };
                        if conn == Conn::Close {
                            rq = rq.header("Connection", "close");
                        }
                        let result = match op {
                            Operation::Heartbeat => rq.send_json(HeartbeatRequest {
                                peer_id: identity.peer_id.clone(),
                                token: identity.token.clone(),
                                added: vec![],
                                removed: vec![],
                                failed: vec![],
                                wait_ms: None,
                            }),
                            _ => rq.send_empty(),
                        };
                        let ok = match result {
                            Ok(r) => {
                                r.status().as_u16() == 200 && r.into_body().read_to_vec().is_ok()
                            }
                            Err(_) => false,
                        };
                        sample.latencies_us.push(t.elapsed().as_micros() as u64);
                        sample.ops += 1;
                        if !ok {
                            sample.errors += 1;
                        }
                    }
                    sample
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let mut all = Sample {
        ops: 0,
        errors: 0,
        latencies_us: Vec::new(),
    };
    for r in results {
        all.ops += r.ops;
        all.errors += r.errors;
        all.latencies_us.extend(r.latencies_us);
    }
    all.latencies_us.sort_unstable();
    all
}

/// The file every writer publishes in the shared-file row.
const SHARED_FILE: &str = "bench shared.txt";

fn own_file(client: usize) -> String {
    format!("bench own {client:03}.txt")
}

fn sha_hex(content: &str) -> String {
    format!("{:x}", Sha256::digest(content.as_bytes()))
}

/// Version 1 of `name`, the same content whoever registers it, so writers never conflict.
fn first_version(name: &str) -> FileMeta {
    FileMeta {
        name: name.to_string(),
        version: 1,
        size: name.len() as u64,
        sha256: sha_hex(name),
    }
}

/// Why one publish did not happen.
enum WriteError {
    /// 409 on the lease: another peer holds it. Expected on a shared file, and harmless.
    Busy(String),
    Failed(String),
}

/// POSTs `body` with nap's `Connection: close` and decodes a 200 answer.
fn post<T: Serialize, R: DeserializeOwned>(
    agent: &ureq::Agent,
    url: &str,
    body: &T,
) -> Result<R, WriteError> {
    let failed = |e: String| WriteError::Failed(format!("{url}: {e}"));
    let response = agent
        .post(url)
        .header("Connection", "close")
        .send_json(body)
        .map_err(|e| failed(e.to_string()))?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    if status == 200 {
        return body.read_json().map_err(|e| failed(e.to_string()));
    }
    let text = body.read_to_string().unwrap_or_default();
    match serde_json::from_str::<ErrorBody>(&text) {
        // Only a refused lease names a holder; other 409s are real conflicts.
        Ok(e) if status == 409 && e.holder.is_some() => Err(WriteError::Busy(e.error)),
        _ => Err(failed(format!("{status} {text}"))),
    }
}

/// Publishes the version after the latest of `file` as `writer`: a lease, then the announce
/// that spends it. A lease left behind by a failed announce is released, since on the shared
/// file it would lock every other writer out for the whole lease TTL.
fn publish(
    agent: &ureq::Agent,
    url: &str,
    writer: &RegisterResponse,
    file: &str,
    sha256: &str,
) -> Result<(), WriteError> {
    let lease: LeaseResponse = post(
        agent,
        &format!("{url}{}", protocol::PATH_LEASE),
        &LeaseRequest {
            peer_id: writer.peer_id.clone(),
            token: writer.token.clone(),
            file: file.to_string(),
        },
    )?;
    let announced = post::<_, AnnounceResponse>(
        agent,
        &format!("{url}{}", protocol::PATH_ANNOUNCE),
        &AnnounceRequest {
            peer_id: writer.peer_id.clone(),
            token: writer.token.clone(),
            file: file.to_string(),
            version: lease.version + 1,
            size: 64,
            sha256: sha256.to_string(),
            lease_id: Some(lease.lease_id.clone()),
        },
    );
    if announced.is_err() {
        // Best effort: the announce's error is the one worth reporting.
        let _ = post::<_, ReleaseResponse>(
            agent,
            &format!("{url}{}", protocol::PATH_LEASE_RELEASE),
            &LeaseIdRequest {
                peer_id: writer.peer_id.clone(),
                token: writer.token.clone(),
                lease_id: lease.lease_id,
            },
        );
    }
    announced.map(|_| ())
}

/// What one writer thread saw. Latencies are of successful publishes only, from the first
/// lease attempt to the announce's answer.
#[derive(Default)]
struct WriteSample {
    publishes: usize,
    errors: usize,
    /// Leases refused because another writer held the file (retried, not errors).
    busy: usize,
    latencies_us: Vec<u64>,
    first_error: Option<String>,
}

/// Each of `writers` publishes new versions in a loop for `for_`: of its own file, or all of
/// them of `SHARED_FILE`. Returns one sample per writer, in order.
fn run_writes(
    url: &str,
    shared: bool,
    writers: &[RegisterResponse],
    for_: Duration,
    backoff: Duration,
) -> Vec<WriteSample> {
    std::thread::scope(|s| {
        let handles: Vec<_> = writers
            .iter()
            .enumerate()
            .map(|(n, writer)| {
                s.spawn(move || {
                    let agent = agent(Conn::Close);
                    let file = if shared {
                        SHARED_FILE.to_string()
                    } else {
                        own_file(n)
                    };
                    let mut sample = WriteSample::default();
                    let start = Instant::now();
                    let mut i = 0usize;
                    'publishing: while start.elapsed() < for_ {
                        i += 1;
                        let sha256 = sha_hex(&format!("{file}/{n}/{i}"));
                        let t = Instant::now();
                        loop {
                            let error = match publish(&agent, url, writer, &file, &sha256) {
                                Ok(()) => {
                                    sample.latencies_us.push(t.elapsed().as_micros() as u64);
                                    sample.publishes += 1;
                                    break;
                                }
                                Err(WriteError::Busy(_)) if shared => {
                                    sample.busy += 1;
                                    if start.elapsed() >= for_ {
                                        break 'publishing;
                                    }
                                    std::thread::sleep(backoff);
                                    continue;
                                }
                                Err(WriteError::Busy(e) | WriteError::Failed(e)) => e,
                            };
                            sample.errors += 1;
                            sample.first_error.get_or_insert(error);
                            break;
                        }
                    }
                    sample
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("writer thread"))
            .collect()
    })
}

/// The history of `name` as `GET /file` reports it, to check the publishes against.
fn file_info(url: &str, name: &str) -> Result<FileInfoResponse, String> {
    let url = format!(
        "{url}{}?name={}",
        protocol::PATH_FILE,
        protocol::url_encode(name)
    );
    let response = agent(Conn::Close)
        .get(&url)
        .header("Connection", "close")
        .call()
        .map_err(|e| format!("{url}: {e}"))?;
    if response.status().as_u16() != 200 {
        return Err(format!("{url}: status {}", response.status()));
    }
    response
        .into_body()
        .read_json()
        .map_err(|e| format!("{url}: {e}"))
}

/// Every publish must have added exactly one version, and every lease must have been spent.
fn check_versions(url: &str, name: &str, publishes: usize) -> Result<usize, String> {
    let info = file_info(url, name)?;
    if info.versions.len() != 1 + publishes {
        return Err(format!(
            "{name}: {} versions, expected 1 + {publishes} publishes",
            info.versions.len()
        ));
    }
    if let Some(lease) = info.lease {
        return Err(format!("{name}: still leased by {}", lease.holder));
    }
    Ok(info.versions.len())
}

/// Measures both write rows and prints them, then the checks and any first error.
fn write_rows(url: &str, args: &Args, writers: &[RegisterResponse]) {
    let for_ = Duration::from_secs_f64(args.seconds);
    let backoff = Duration::from_millis(args.busy_backoff_ms);
    println!(
        "| operation | connection | publishes/s | p50 ms | p99 ms | max ms | errors | lease busy |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    let mut notes = Vec::new();
    for (shared, name) in [
        (false, "lease + announce, own file"),
        (true, "lease + announce, one shared file"),
    ] {
        let samples = run_writes(url, shared, writers, for_, backoff);
        let mut latencies: Vec<u64> = samples
            .iter()
            .flat_map(|s| s.latencies_us.iter().copied())
            .collect();
        latencies.sort_unstable();
        let publishes: usize = samples.iter().map(|s| s.publishes).sum();
        let errors: usize = samples.iter().map(|s| s.errors).sum();
        println!(
            "| {name} | close (nap) | {:.0} | {:.2} | {:.2} | {:.1} | {errors} | {} |",
            publishes as f64 / args.seconds,
            pct(&latencies, 0.50),
            pct(&latencies, 0.99),
            pct(&latencies, 1.0),
            samples.iter().map(|s| s.busy).sum::<usize>()
        );
        if let Some(e) = samples.iter().find_map(|s| s.first_error.as_ref()) {
            notes.push(format!("{name}: first error: {e}"));
        }
        let check = if shared {
            check_versions(url, SHARED_FILE, publishes)
                .map(|v| format!("{v} versions = 1 + {publishes} publishes"))
        } else {
            samples
                .iter()
                .enumerate()
                .map(|(n, s)| check_versions(url, &own_file(n), s.publishes))
                .sum::<Result<usize, String>>()
                .map(|v| {
                    format!(
                        "{v} versions over {} files = {} + {publishes} publishes",
                        samples.len(),
                        samples.len()
                    )
                })
        };
        notes.push(match check {
            Ok(ok) => format!("{name}: GET /file: {ok}: ok"),
            Err(e) => format!("{name}: GET /file: MISMATCH: {e}"),
        });
    }
    println!();
    for note in notes {
        println!("{note}");
    }
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

fn main() {
    let args: Args = argh::from_env();
    nap::init_logging(log::LevelFilter::Warn);
    let index = IndexServer::start(IndexConfig {
        listen: "127.0.0.1:0".into(),
        workers: args.workers,
        heartbeat_interval: Duration::from_secs(60),
        peer_timeout: Duration::from_secs(3600),
        // The load generator's peers never copy anything: measure the request path alone
        // (examples/replication.rs measures replication).
        replication_factor: 1,
        ..IndexConfig::default()
    })
    .expect("start index");
    let url = index.url();
    let t = Instant::now();
    let peers: Vec<RegisterResponse> = (0..args.peers)
        .map(|p| register(&url, p, (0..20).map(|f| meta(p, f)).collect()))
        .collect();
    println!(
        "registered {} peers x 20 files in {:.2} s (one client, sequential)",
        args.peers,
        t.elapsed().as_secs_f64()
    );
    let wants = |rows| args.only.is_none() || args.only == Some(rows);
    // One writer per client thread, each with its own file; all hold the shared file's v1.
    let writers: Vec<RegisterResponse> = if wants(Rows::Writes) {
        (0..args.clients)
            .map(|n| {
                let files = vec![first_version(&own_file(n)), first_version(SHARED_FILE)];
                register(&url, args.peers + n, files)
            })
            .collect()
    } else {
        Vec::new()
    };
    let status: serde_json::Value = agent(Conn::Close)
        .get(&format!("{url}/status"))
        .call()
        .expect("status")
        .into_body()
        .read_json()
        .expect("status answer");
    println!(
        "index: {}",
        json!({"peers": status["peers"], "files": status["files"]})
    );
    println!(
        "\n{} clients, {} s each, {} index workers, cpus: {}\n",
        args.clients,
        args.seconds,
        args.workers,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if wants(Rows::Requests) {
        request_rows(&url, &args, &peers);
        println!();
    }
    if wants(Rows::Writes) {
        write_rows(&url, &args, &writers);
    }
    index.stop();
}

/// The one-request rows: each operation with nap's connection policy and with keep-alive.
fn request_rows(url: &str, args: &Args, peers: &[RegisterResponse]) {
    println!("| operation | connection | ops/s | p50 ms | p99 ms | max ms | errors |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    let for_ = Duration::from_secs_f64(args.seconds);
    for (op, name) in [
        (Operation::Status, "GET /status"),
        (Operation::Search, "GET /search"),
        (Operation::Heartbeat, "POST /heartbeat"),
    ] {
        for (conn, cname) in [
            (Conn::Close, "close (nap)"),
            (Conn::KeepAlive, "keep-alive"),
        ] {
            let s = run(url, op, conn, args.clients, for_, peers);
            println!(
                "| {name} | {cname} | {:.0} | {:.2} | {:.2} | {:.1} | {} |",
                s.ops as f64 / args.seconds,
                pct(&s.latencies_us, 0.50),
                pct(&s.latencies_us, 0.99),
                pct(&s.latencies_us, 1.0),
                s.errors
            );
        }
    }
}
