//! Index throughput and latency under concurrent clients, and what nap's one-request-per-
//! connection policy costs against keep-alive.
//!
//!     cargo run --release --example bench -- [--clients N] [--seconds S] [--peers P]
//!
//! An index runs in this process (its own threads, the real HTTP stack); P peers register 20
//! files each; then, for each operation, N client threads, each with its own HTTP agent and
//! identity, call it in a loop for S seconds. Every figure is measured here, not asserted.

use std::time::{Duration, Instant};

use argh::FromArgs;
use nap::index::{IndexConfig, IndexServer};
use nap::protocol::{FileMeta, HeartbeatRequest, RegisterRequest, RegisterResponse};
use serde_json::json;

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

fn register(url: &str, peer: usize) -> RegisterResponse {
    let rq = RegisterRequest {
        addr: format!("127.0.0.1:{}", 10_000 + peer % 50_000),
        files: (0..20).map(|f| meta(peer, f)).collect(),
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
        ..IndexConfig::default()
    })
    .expect("start index");
    let url = index.url();
    let t = Instant::now();
    let peers: Vec<RegisterResponse> = (0..args.peers).map(|p| register(&url, p)).collect();
    println!(
        "registered {} peers x 20 files in {:.2} s (one client, sequential)",
        args.peers,
        t.elapsed().as_secs_f64()
    );
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
            let s = run(&url, op, conn, args.clients, for_, &peers);
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
    index.stop();
}
