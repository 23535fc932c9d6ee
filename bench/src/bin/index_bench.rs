//! Index throughput and latency under concurrent clients, what nap's one-request-per-
//! connection policy costs against keep-alive, the latency of the write path under leases
//! (a lease, then the announce of the next version), and what durability costs.
//!
//!     cargo run --release -p nap-bench --bin index_bench -- [--clients N] [--seconds S]
//!         [--peers P] [--only requests|writes|durability] [--busy-backoff-ms MS]
//!         [--durability-writers 1,10,100] [--fsync-modes always,batch,never]
//!         [--restart-peers 1000] [--restart-files-per-peer 1000]
//!
//! An index runs in this process (its own threads, the real HTTP stack); P peers register 20
//! files each; then, for each operation, N client threads, each with its own HTTP agent and
//! identity, call it in a loop for S seconds. Every figure is measured here, not asserted.
//!
//! The write rows publish new versions (lease, then announce) with nap's `Connection: close`:
//! first each client its own file, then all clients one shared file, where a refused lease is
//! contention by design: it is counted and retried after MS ms, not an error. `GET /file`
//! then checks that every publish added exactly one version.
//!
//! The durability rows (only with `--only durability`: they take minutes and write a few
//! hundred MB to the temporary directory) run an index on a fresh data directory per row. First the
//! disk's own fsync latency (append a record-sized write, `fdatasync`, repeat); then the own-
//! file write row at each `--fsync` mode and writer count, with the `fdatasync`/`fsync` calls
//! of this process counted by `perf stat` when it is installed and allowed (else "-"); then
//! the restart of an index of `--restart-peers` x `--restart-files-per-peer` files: once with
//! everything in the op log (replayed at start) and once with everything in a snapshot,
//! each warm (files in the page cache) and cold (evicted with `dd iflag=nocache`), each checked
//! against `/status` (files, peers, seq and state digest from before the stop), and the
//! start-up split into its parts by calling the same library functions directly; last, the
//! latency of a writer and a `/status` reader while the log keeper snapshots that state.

use std::str::FromStr;
use std::time::{Duration, Instant};

use argh::FromArgs;
use nap::index::journal::{Fsync, Journal};
use nap::index::state::IndexState;
use nap::index::{IndexConfig, IndexServer};
use nap::protocol::{
    self, AnnounceRequest, AnnounceResponse, ErrorBody, FileInfoResponse, FileMeta,
    HeartbeatRequest, LeaseIdRequest, LeaseRequest, LeaseResponse, RegisterRequest,
    RegisterResponse, ReleaseResponse, StatusResponse,
};
use nap_bench::support::{self, first_version, sha_hex, List};
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
    /// measure only "requests" (status, search, heartbeat), "writes" (lease + announce) or
    /// "durability" (fsync modes, restart from a data directory)
    #[argh(option)]
    only: Option<Rows>,
    /// pause before retrying a lease another writer holds, in ms (shared-file row)
    #[argh(option, default = "1")]
    busy_backoff_ms: u64,
    /// writer counts of the durability write rows, comma-separated ("" skips the rows)
    #[argh(option, default = "List(vec![1, 10, 100])")]
    durability_writers: List<usize>,
    /// fsync modes (always, batch, never) of the durability write rows, comma-separated
    #[argh(
        option,
        default = "List(vec![Fsync::Always, Fsync::Batch, Fsync::Never])"
    )]
    fsync_modes: List<Fsync>,
    /// peers registered for the restart measurement (0 skips it)
    #[argh(option, default = "1000")]
    restart_peers: usize,
    /// files each of those peers registers (one POST /register each)
    #[argh(option, default = "1000")]
    restart_files_per_peer: usize,
}

/// The groups of rows, so one group can be measured without the others.
#[derive(Clone, Copy, PartialEq)]
enum Rows {
    Requests,
    Writes,
    Durability,
}

impl FromStr for Rows {
    type Err = String;

    fn from_str(s: &str) -> Result<Rows, String> {
        let rows = [
            ("requests", Rows::Requests),
            ("writes", Rows::Writes),
            ("durability", Rows::Durability),
        ];
        support::choose("rows", s, &rows)
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
    let sha = nap::hashing::sha256_of(format!("{peer}/{file}").as_bytes()).unwrap_or_default();
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

/// The writers' latencies (sorted), publishes and errors, added up.
fn totals(samples: &[WriteSample]) -> (Vec<u64>, usize, usize) {
    let mut latencies: Vec<u64> = samples
        .iter()
        .flat_map(|s| s.latencies_us.iter().copied())
        .collect();
    latencies.sort_unstable();
    let publishes = samples.iter().map(|s| s.publishes).sum();
    let errors = samples.iter().map(|s| s.errors).sum();
    (latencies, publishes, errors)
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
    get_json(&url)
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
        let (latencies, publishes, errors) = totals(&samples);
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
    if args.only == Some(Rows::Durability) {
        durability_rows(&args);
        return;
    }
    let index = IndexServer::start(IndexConfig {
        listen: "127.0.0.1:0".into(),
        workers: args.workers,
        heartbeat_interval: Duration::from_secs(60),
        peer_timeout: Duration::from_secs(3600),
        // The load generator's peers never copy anything: measure the request path alone
        // (the replication program measures replication).
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

/// Bytes appended per fsync by the probe: about one logged lease or announce op.
const PROBE_RECORD: usize = 300;
/// Appends + fdatasyncs the probe times.
const PROBE_SYNCS: usize = 500;

/// Counts the `fdatasync` and `fsync` calls of this process with `perf stat -p`, from
/// `start` until `finish` (nap's log calls `fdatasync` for each group commit). `None` when
/// perf is missing, not allowed or prints no counts.
struct SyncCounter(std::process::Child);

impl SyncCounter {
    fn start() -> Option<SyncCounter> {
        let child = std::process::Command::new("perf")
            .args([
                "stat",
                "-x",
                ",",
                "-e",
                "syscalls:sys_enter_fdatasync,syscalls:sys_enter_fsync",
                "-p",
                &std::process::id().to_string(),
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .ok()?;
        // perf attaches to the threads of the process after it starts: give it the time.
        std::thread::sleep(Duration::from_millis(300));
        Some(SyncCounter(child))
    }

    /// Stops perf (SIGINT makes it print its counts) and adds them up.
    fn finish(self) -> Option<u64> {
        let mut child = self.0;
        let interrupted = std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if !interrupted {
            let _ = child.kill();
        }
        let out = child.wait_with_output().ok()?;
        let text = String::from_utf8_lossy(&out.stderr);
        let counts: Vec<u64> = text
            .lines()
            .filter(|l| l.contains("syscalls:sys_enter_f"))
            .map(|l| l.split(',').next().unwrap_or("").parse::<u64>())
            .collect::<Result<_, _>>()
            .ok()?;
        (counts.len() == 2).then(|| counts.iter().sum())
    }
}

fn fsync_name(mode: Fsync) -> &'static str {
    match mode {
        Fsync::Always => "always",
        Fsync::Batch => "batch",
        Fsync::Never => "never",
    }
}

/// An index keeping its state in `dir`, as the write rows' index is otherwise.
fn durable_config(args: &Args, dir: &std::path::Path, fsync: Fsync, every: u64) -> IndexConfig {
    IndexConfig {
        listen: "127.0.0.1:0".into(),
        workers: args.workers,
        heartbeat_interval: Duration::from_secs(60),
        peer_timeout: Duration::from_secs(3600),
        replication_factor: 1,
        data_dir: Some(dir.to_path_buf()),
        fsync,
        snapshot_every: every,
        ..IndexConfig::default()
    }
}

/// The durability measurements: the disk's fsync latency, the write row per fsync mode and
/// writer count, and the restart of a large index.
fn durability_rows(args: &Args) {
    println!(
        "durability: {} index workers, {} s per write row, cpus: {}, temporary data directories in {}\n",
        args.workers,
        args.seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::env::temp_dir().display()
    );
    let (fsync_ms, counting) = fsync_probe();
    if !args.fsync_modes.0.is_empty() && !args.durability_writers.0.is_empty() {
        println!();
        durability_write_rows(args, fsync_ms, counting);
    }
    if args.restart_peers > 0 {
        println!();
        restart_rows(args);
    }
}

/// Times `PROBE_SYNCS` appends of one record-sized write followed by `fdatasync`, in a file in
/// a temporary directory (where the data directories go). Returns the mean in ms (back to
/// back, that is what bounds the fsyncs per second), and whether perf counted exactly those
/// fdatasyncs (so that its counts in the rows can be trusted).
fn fsync_probe() -> (f64, bool) {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("probe.log"))
        .expect("probe file");
    let record = vec![b'x'; PROBE_RECORD];
    file.write_all(&record).expect("probe write");
    file.sync_data().expect("probe fdatasync");
    let counter = SyncCounter::start();
    let mut latencies: Vec<u64> = Vec::with_capacity(PROBE_SYNCS);
    let t = Instant::now();
    for _ in 0..PROBE_SYNCS {
        let t = Instant::now();
        file.write_all(&record).expect("probe write");
        file.sync_data().expect("probe fdatasync");
        latencies.push(t.elapsed().as_micros() as u64);
    }
    let mean_ms = t.elapsed().as_secs_f64() * 1000.0 / PROBE_SYNCS as f64;
    let counted = counter.and_then(SyncCounter::finish);
    latencies.sort_unstable();
    println!(
        "fsync probe: {PROBE_SYNCS} x (append {PROBE_RECORD} B + fdatasync): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, mean {mean_ms:.2} ms (at most {:.0} fsyncs/s one after another)",
        pct(&latencies, 0.5),
        pct(&latencies, 0.99),
        pct(&latencies, 1.0),
        1000.0 / mean_ms
    );
    let counting = counted == Some(PROBE_SYNCS as u64);
    match counted {
        Some(n) if counting => println!("perf stat counted {n} fdatasync/fsync calls of {PROBE_SYNCS}: the rows' counts are exact"),
        Some(n) => println!("perf stat counted {n} fdatasync/fsync calls of {PROBE_SYNCS}: not trusted, the rows show \"-\""),
        None => println!("perf stat is not available here: the rows show \"-\" for fsyncs"),
    }
    (mean_ms, counting)
}

/// The own-file write row (lease + announce, `Connection: close`) against an index on a fresh
/// data directory, for each fsync mode and writer count.
fn durability_write_rows(args: &Args, fsync_ms: f64, counting: bool) {
    let for_ = Duration::from_secs_f64(args.seconds);
    let backoff = Duration::from_millis(args.busy_backoff_ms);
    println!("| --fsync | writers | publishes/s | p50 ms | p99 ms | max ms | errors | fsyncs/s | ops per fsync |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut notes = Vec::new();
    for &mode in &args.fsync_modes.0 {
        for &writers in &args.durability_writers.0 {
            let dir = tempfile::tempdir().expect("temp dir");
            let config = durable_config(
                args,
                dir.path(),
                mode,
                IndexConfig::default().snapshot_every,
            );
            let index = IndexServer::start(config).expect("start index");
            let url = index.url();
            let identities: Vec<RegisterResponse> = (0..writers)
                .map(|n| register(&url, n, vec![first_version(&own_file(n))]))
                .collect();
            let counter = if counting { SyncCounter::start() } else { None };
            let samples = run_writes(&url, false, &identities, for_, backoff);
            let syncs = counter.and_then(SyncCounter::finish);
            let (latencies, publishes, errors) = totals(&samples);
            // Two ops per publish: the lease and the announce.
            let (per_second, per_sync) = match syncs {
                Some(n) => (
                    format!("{:.0}", n as f64 / args.seconds),
                    if n == 0 {
                        "-".to_string()
                    } else {
                        format!("{:.2}", 2.0 * publishes as f64 / n as f64)
                    },
                ),
                None => ("-".into(), "-".into()),
            };
            println!(
                "| {} | {writers} | {:.0} | {:.2} | {:.2} | {:.1} | {errors} | {per_second} | {per_sync} |",
                fsync_name(mode),
                publishes as f64 / args.seconds,
                pct(&latencies, 0.50),
                pct(&latencies, 0.99),
                pct(&latencies, 1.0),
            );
            let name = format!("{} x {writers}", fsync_name(mode));
            if let Some(e) = samples.iter().find_map(|s| s.first_error.as_ref()) {
                notes.push(format!("{name}: first error: {e}"));
            }
            let check = samples
                .iter()
                .enumerate()
                .map(|(n, s)| check_versions(&url, &own_file(n), s.publishes))
                .sum::<Result<usize, String>>();
            if let Err(e) = check {
                notes.push(format!("{name}: GET /file: MISMATCH: {e}"));
            }
            index.stop();
        }
    }
    println!();
    println!(
        "with --fsync always the committer acknowledges every op that arrived during an fsync \
         with the next one: one writer alone waits {fsync_ms:.2} ms (the probe's mean) per op"
    );
    if notes.is_empty() {
        println!(
            "GET /file after every row: 1 + publishes versions for every file, no lease left: ok"
        );
    }
    for note in notes {
        println!("{note}");
    }
}

/// `GET url` with nap's connection policy, decoded; an error names the URL.
fn get_json<T: DeserializeOwned>(url: &str) -> Result<T, String> {
    let response = agent(Conn::Close)
        .get(url)
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

/// `GET /status`, with the state digest if asked.
fn get_status(url: &str, digest: bool) -> Result<StatusResponse, String> {
    let url = format!("{url}/status{}", if digest { "?digest=1" } else { "" });
    get_json(&url)
}

/// What a data directory holds: snapshot bytes, log bytes, and whether a snapshot is being
/// written (its temporary file exists).
fn dir_bytes(dir: &std::path::Path) -> (u64, u64, bool) {
    let (mut snapshot, mut log, mut writing) = (0, 0, false);
    for entry in std::fs::read_dir(dir).expect("data dir").flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let len = entry.metadata().map_or(0, |m| m.len());
        if name == "snapshot.json" {
            snapshot = len;
        } else if name.ends_with(".tmp") {
            writing = true;
        } else if name.starts_with("log-") {
            log += len;
        }
    }
    (snapshot, log, writing)
}

/// Drops the data directory's files from the page cache (`dd iflag=nocache count=0` asks the
/// kernel to, with posix_fadvise), so the next start reads them from the disk.
fn evict(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir)
        .expect("data dir")
        .flatten()
        .all(|entry| {
            let path = entry.path();
            let synced = std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .is_ok();
            synced
                && std::process::Command::new("dd")
                    .arg(format!("if={}", path.display()))
                    .args(["iflag=nocache", "count=0", "status=none"])
                    .status()
                    .is_ok_and(|s| s.success())
        })
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// What a client polling `GET /status` from the moment of a start saw.
struct Probe {
    /// Attempts refused (nothing listening yet).
    refused: usize,
    /// From the start to the first connection accepted, and to the first answer.
    accepted: Duration,
    answered: Duration,
}

/// Polls `GET /status` at `addr` every millisecond from `t0` until one is answered, waiting
/// as long as it takes once connected.
fn probe_status(addr: std::net::SocketAddr, t0: Instant) -> Probe {
    use std::io::{Read, Write};
    let mut refused = 0;
    loop {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(mut stream) => {
                let accepted = t0.elapsed();
                let _ = stream.set_read_timeout(Some(Duration::from_secs(600)));
                let request = "GET /status HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
                let mut answer = Vec::new();
                if stream.write_all(request.as_bytes()).is_ok()
                    && stream.read_to_end(&mut answer).is_ok()
                    && answer.starts_with(b"HTTP/1.1 200")
                {
                    return Probe {
                        refused,
                        accepted,
                        answered: t0.elapsed(),
                    };
                }
            }
            Err(_) => refused += 1,
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Starts the index on `dir` (no snapshot is taken while it runs) on a port a client polls
/// from the moment of the start, checks the state against `expected`, stops it and prints
/// the row.
fn restart_row(
    args: &Args,
    dir: &std::path::Path,
    what: &str,
    cold: bool,
    expected: &StatusResponse,
) {
    let cache = if cold {
        if !evict(dir) {
            println!("| {what} | - | - | cold | could not evict the page cache (dd) | | | |");
            return;
        }
        "cold"
    } else {
        "warm"
    };
    let (snapshot, log, _) = dir_bytes(dir);
    // A free port, so that the client can knock before the index has bound it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let t = Instant::now();
    let prober = std::thread::spawn(move || probe_status(addr, t));
    let index = IndexServer::start(IndexConfig {
        listen: addr.to_string(),
        ..durable_config(args, dir, Fsync::Always, u64::MAX)
    })
    .expect("restart the index");
    let started = t.elapsed();
    let probe = prober.join().expect("status prober");
    let url = index.url();
    let check = match get_status(&url, true) {
        Ok(s)
            if (s.files, s.peers, s.seq, &s.digest)
                == (expected.files, expected.peers, expected.seq, &expected.digest) =>
        {
            format!(
                "{} files, {} peers, seq {}, same digest: ok",
                s.files, s.peers, s.seq
            )
        }
        Ok(s) => format!(
            "MISMATCH: {} files, {} peers, seq {}, digest {:?}; expected {} files, {} peers, seq {}, digest {:?}",
            s.files, s.peers, s.seq, s.digest, expected.files, expected.peers, expected.seq, expected.digest
        ),
        Err(e) => format!("MISMATCH: {e}"),
    };
    let t = Instant::now();
    index.stop();
    let stopped = t.elapsed();
    println!(
        "| {what} | {:.1} | {:.1} | {cache} | {:.2} | {} refused, accepted at {:.3} s, answered at {:.2} s | {:.2} | {check} |",
        mb(snapshot),
        mb(log),
        started.as_secs_f64(),
        probe.refused,
        probe.accepted.as_secs_f64(),
        probe.answered.as_secs_f64(),
        stopped.as_secs_f64()
    );
}

/// Where a start's time goes: the library calls `Index::new` makes, timed one by one.
struct LoadParts {
    /// Reading the directory's files (warm: from the page cache).
    read: Duration,
    /// SHA-256 over the log segments (each record's checksum is the first 8 bytes of one).
    hash: Duration,
    /// `Journal::open_dir`: read, verify and JSON-parse the snapshot and the log records.
    open: Duration,
    /// `IndexState::restore`: the maps and the search index from the snapshot.
    restore: Duration,
    /// `IndexState::apply` of every logged op.
    replay: Duration,
    /// For comparison, what the log keeper does for a snapshot: `IndexState::snapshot` (the
    /// copy it makes under the state's read lock) and its JSON serialization (outside it).
    copy: Duration,
    serialize: Duration,
    ops: usize,
    files: usize,
}

fn load_parts(dir: &std::path::Path) -> LoadParts {
    let mut log_bytes = Vec::new();
    let t = Instant::now();
    for entry in std::fs::read_dir(dir).expect("data dir").flatten() {
        let bytes = std::fs::read(entry.path()).expect("read data file");
        if entry.file_name().to_string_lossy().starts_with("log-") {
            log_bytes.push(bytes);
        }
    }
    let read = t.elapsed();
    let t = Instant::now();
    for bytes in &log_bytes {
        std::hint::black_box(Sha256::digest(bytes));
    }
    let hash = t.elapsed();
    drop(log_bytes);
    let t = Instant::now();
    let (log, recovered) =
        Journal::open_dir(dir, Fsync::Never, "unused").expect("open the data dir");
    let open = t.elapsed();
    drop(log);
    let nap::index::journal::Recovered {
        epoch,
        snapshot,
        ops,
    } = recovered;
    let t = Instant::now();
    let mut state = match snapshot {
        Some(snapshot) => IndexState::restore(snapshot),
        None => IndexState::default().with_epoch(epoch),
    };
    let restore = t.elapsed();
    let count = ops.len();
    let t = Instant::now();
    for op in ops {
        state.apply(op.op, op.at).expect("logged op applies");
    }
    let replay = t.elapsed();
    let t = Instant::now();
    let snapshot = state.snapshot();
    let copy = t.elapsed();
    let t = Instant::now();
    let bytes = serde_json::to_vec(&snapshot).expect("serialize the snapshot");
    let serialize = t.elapsed();
    std::hint::black_box(bytes.len());
    LoadParts {
        read,
        hash,
        open,
        restore,
        replay,
        copy,
        serialize,
        ops: count,
        files: state.held_file_count(),
    }
}

/// Builds an index of `--restart-peers` x `--restart-files-per-peer` files in a temporary
/// data directory and times its restarts from the log alone and from a snapshot alone.
fn restart_rows(args: &Args) {
    let (peers, per_peer) = (args.restart_peers, args.restart_files_per_peer);
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let clients = args.workers.max(1);
    let t = Instant::now();
    // No snapshot while building: everything stays in the log.
    let index = IndexServer::start(durable_config(args, dir, Fsync::Always, u64::MAX))
        .expect("start index");
    let url = index.url();
    std::thread::scope(|s| {
        for c in 0..clients {
            let url = &url;
            s.spawn(move || {
                for p in (c..peers).step_by(clients) {
                    register(url, p, (0..per_peer).map(|f| meta(p, f)).collect());
                }
            });
        }
    });
    let built = t.elapsed();
    let before = get_status(&url, true).expect("status");
    let t = Instant::now();
    index.stop();
    let stopped = t.elapsed();
    println!(
        "restart: {peers} peers x {per_peer} files registered (POST /register, {clients} client threads, --fsync always) in {:.2} s; \
         /status: {} files, {} peers, seq {}; stop {:.2} s",
        built.as_secs_f64(),
        before.files,
        before.peers,
        before.seq,
        stopped.as_secs_f64()
    );
    let mut parts = Vec::new();
    println!();
    println!("| data dir | snapshot MB | log MB | page cache | start() s | a client polling /status from the start | stop s | /status after |");
    println!("|---|---:|---:|---|---:|---|---:|---|");
    let what = format!("log only ({} ops)", before.seq);
    restart_row(args, dir, &what, false, &before);
    restart_row(args, dir, &what, true, &before);
    parts.push((what, load_parts(dir)));

    // A start with `snapshot_every` 1 snapshots at the log keeper's first tick; once the log
    // before it is gone, the snapshot covers everything.
    let index =
        IndexServer::start(durable_config(args, dir, Fsync::Always, 1)).expect("start index");
    let t = Instant::now();
    let snapshotted = loop {
        let (snapshot, log, writing) = dir_bytes(dir);
        if snapshot > 0 && log == 0 && !writing {
            break Some(t.elapsed());
        }
        if t.elapsed() > Duration::from_secs(600) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    index.stop();
    let what = "snapshot only".to_string();
    restart_row(args, dir, &what, false, &before);
    restart_row(args, dir, &what, true, &before);
    parts.push((what, load_parts(dir)));
    println!();
    match snapshotted {
        Some(d) => println!(
            "the snapshot was on disk, the log before it gone, {:.2} s after start() returned from loading the log with snapshot_every 1 (the log keeper ticks every 50 ms)",
            d.as_secs_f64()
        ),
        None => println!("NO SNAPSHOT covering the log within 600 s"),
    }
    println!();
    println!("| data dir | read files s | SHA-256 of the log s | Journal::open s (read, checksums, JSON) | IndexState::restore s | replay s (ops) | files | then IndexState::snapshot s | its JSON s |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (what, p) in parts {
        println!(
            "| {what} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} ({}) | {} | {:.2} | {:.2} |",
            p.read.as_secs_f64(),
            p.hash.as_secs_f64(),
            p.open.as_secs_f64(),
            p.restore.as_secs_f64(),
            p.replay.as_secs_f64(),
            p.ops,
            p.files,
            p.copy.as_secs_f64(),
            p.serialize.as_secs_f64()
        );
    }
    let peak = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .map(|v| v.trim().to_string())
        });
    if let Some(peak) = peak {
        println!("\npeak resident memory of this process (VmHWM): {peak}");
    }
    println!();
    snapshot_stall(args, dir);
}

/// Requests while the log keeper snapshots a large state: the index on `dir` with
/// `snapshot_every` 1, so that every tick with a new op snapshots, one writer publishing its
/// own file and one client reading `/status`, both back to back, for `STALL_WINDOW`.
fn snapshot_stall(args: &Args, dir: &std::path::Path) {
    const STALL_WINDOW: Duration = Duration::from_secs(15);
    let index =
        IndexServer::start(durable_config(args, dir, Fsync::Always, 1)).expect("start index");
    let url = index.url();
    let writer = register(&url, 0, vec![first_version(&own_file(0))]);
    let snapshot_path = dir.join("snapshot.json");
    let modified = || {
        std::fs::metadata(&snapshot_path)
            .and_then(|m| m.modified())
            .ok()
    };
    let (samples, reads, snapshots) = std::thread::scope(|s| {
        let writes = s.spawn(|| {
            run_writes(
                &url,
                false,
                std::slice::from_ref(&writer),
                STALL_WINDOW,
                Duration::ZERO,
            )
        });
        let reads = s.spawn(|| {
            // A patient reader: the answer's delay is the point, not a timeout.
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .max_idle_connections(0)
                .timeout_global(Some(Duration::from_secs(120)))
                .build()
                .into();
            let mut latencies = Vec::new();
            let start = Instant::now();
            while start.elapsed() < STALL_WINDOW {
                let t = Instant::now();
                let ok = agent
                    .get(&format!("{url}/status"))
                    .header("Connection", "close")
                    .call()
                    .is_ok_and(|r| r.status().as_u16() == 200);
                if ok {
                    latencies.push(t.elapsed().as_micros() as u64);
                }
            }
            latencies
        });
        // Snapshots written: changes of the snapshot file's modification time.
        let mut snapshots = 0;
        let mut last = modified();
        let start = Instant::now();
        while start.elapsed() < STALL_WINDOW {
            std::thread::sleep(Duration::from_millis(5));
            let now = modified();
            if now != last {
                snapshots += 1;
                last = now;
            }
        }
        (
            writes.join().expect("writer"),
            reads.join().expect("reader"),
            snapshots,
        )
    });
    index.stop();
    let mut publishes: Vec<u64> = samples
        .iter()
        .flat_map(|s| s.latencies_us.iter().copied())
        .collect();
    publishes.sort_unstable();
    let mut reads = reads;
    reads.sort_unstable();
    let errors: usize = samples.iter().map(|s| s.errors).sum();
    // One table row: latencies in µs, sorted.
    let row = |client: &str, l: &[u64], errors: usize| {
        let slow = l.iter().filter(|&&us| us > 100_000).count();
        println!(
            "| {client} | {} | {:.2} | {:.2} | {:.1} | {slow} | {errors} |",
            l.len(),
            pct(l, 0.5),
            pct(l, 0.99),
            pct(l, 1.0)
        );
    };
    println!(
        "during snapshots of this state (snapshot_every 1, {:.0} s, {snapshots} snapshots written):",
        STALL_WINDOW.as_secs_f64()
    );
    println!();
    println!("| client | requests | p50 ms | p99 ms | max ms | over 100 ms | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    row("1 writer, lease + announce", &publishes, errors);
    row("1 reader, GET /status", &reads, 0);
    if let Some(e) = samples.iter().find_map(|s| s.first_error.as_ref()) {
        println!("\nwriter: first error: {e}");
    }
}
