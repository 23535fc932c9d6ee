//! `nap-index`: the central index server.

use std::time::Duration;

use argh::FromArgs;
use nap::index::{IndexConfig, IndexServer, RoleConfig};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// The nap index server: maps file names to the peers that hold them (JSON over HTTP).
#[derive(FromArgs)]
struct Args {
    /// address to listen on, host:port (port 0 picks a free one)
    #[argh(option, default = "String::from(\"127.0.0.1:7070\")")]
    listen: String,
    /// requests worked on at once (each request has a thread of its own for reading and
    /// answering; this bounds the CPU work between)
    #[argh(option, default = "4")]
    workers: usize,
    /// seconds between peer heartbeats (the index tells peers this)
    #[argh(option, default = "5.0")]
    heartbeat_interval: f64,
    /// seconds of silence after which a peer is pruned with its holdings
    #[argh(option, default = "15.0")]
    peer_timeout: f64,
    /// largest request body accepted, in bytes
    #[argh(option, default = "4 * 1024 * 1024")]
    max_body: usize,
    /// longest file name taken, in bytes (1-255)
    #[argh(option, default = "255")]
    max_name_bytes: usize,
    /// most files one register or heartbeat may list
    #[argh(option, default = "100_000")]
    max_files_per_request: usize,
    /// most names one peer may hold (more are refused, file by file, as too_many_files)
    #[argh(option, default = "nap::index::config::DEFAULT_MAX_FILES_PER_PEER")]
    max_files_per_peer: usize,
    /// names new to the index one peer may add per minute once its burst is spent (more
    /// are refused, file by file, as rate_limited, with when to try again)
    #[argh(option, default = "nap::index::config::DEFAULT_NEW_NAMES_PER_MINUTE")]
    new_names_per_minute: usize,
    /// names new to the index one peer may add at once (default: --max-files-per-peer)
    #[argh(option)]
    new_names_burst: Option<usize>,
    /// seconds the history of a name no peer holds is kept before it is forgotten (default
    /// 604800, a week; 0 keeps histories for ever)
    #[argh(option)]
    history_retention: Option<f64>,
    /// most results one search may ask for
    #[argh(option, default = "1000")]
    max_search_results: usize,
    /// most tasks one answer to a peer carries (the rest follow in later answers)
    #[argh(option, default = "64")]
    max_tasks_per_answer: usize,
    /// seconds a write lease lasts unless its holder renews it
    #[argh(option, default = "60.0")]
    lease_ttl: f64,
    /// primary (takes writes, pushes them to its shadows) or shadow (read-only copy)
    #[argh(option, default = "String::from(\"primary\")")]
    role: String,
    /// shadow base URLs to replicate to, comma-separated (primary)
    #[argh(option)]
    shadow: Option<String>,
    /// the primary's base URL (shadow)
    #[argh(option)]
    primary: Option<String>,
    /// secret shared by a primary and its shadows (or env NAP_CLUSTER_SECRET)
    #[argh(option)]
    cluster_secret: Option<String>,
    /// ops kept for shadows that fall behind; beyond that they catch up by snapshot
    #[argh(option, default = "65536")]
    sync_log: usize,
    /// up-to-date copies wanted of every file; 1 turns replication off
    #[argh(option, default = "2")]
    replication_factor: usize,
    /// seconds between runs of the replication planner (it also runs on changes)
    #[argh(option, default = "1.0")]
    plan_interval: f64,
    /// copy tasks in flight per peer, at most
    #[argh(option, default = "4")]
    max_tasks_per_peer: usize,
    /// seconds after which an unfinished copy task goes to another peer
    #[argh(option, default = "60.0")]
    task_timeout: f64,
    /// directory of the op log and snapshots (created if missing)
    #[argh(option, default = "String::from(\"nap-data\")")]
    data_dir: String,
    /// keep everything in memory: a restart loses the index (peers re-register)
    #[argh(switch)]
    in_memory: bool,
    /// when the log reaches the disk: always (before each answer; waiting writes share an
    /// fsync), batch (every 5 ms; a crash loses up to that), never (the OS decides)
    #[argh(option, default = "String::from(\"always\")")]
    fsync: String,
    /// ops logged between snapshots
    #[argh(option, default = "100000")]
    snapshot_every: u64,
    /// most requests in flight, and open connections; every live peer holds one (its long
    /// poll). Default 8192, or what the open-file limit holds
    #[argh(option)]
    max_connections: Option<usize>,
    /// seconds a connection may stay open without a request
    #[argh(option, default = "30.0")]
    idle_timeout: f64,
    /// seconds within which a request's head and body must arrive, and each part of an
    /// answer be read (and 16 KiB/s over each such span); else the connection closes
    #[argh(option, default = "10.0")]
    request_timeout: f64,
}

fn usage(message: &str) -> ! {
    eprintln!("nap-index: {message}");
    std::process::exit(2)
}

fn seconds(flag: &str, value: f64) -> Duration {
    Duration::try_from_secs_f64(value).unwrap_or_else(|_| {
        usage(&format!(
            "--{flag} must be a non-negative number of seconds"
        ))
    })
}

fn main() {
    let args: Args = argh::from_env();
    nap::init_logging(log::LevelFilter::Info);
    let config = IndexConfig {
        listen: args.listen.clone(),
        workers: args.workers,
        heartbeat_interval: seconds("heartbeat-interval", args.heartbeat_interval),
        peer_timeout: seconds("peer-timeout", args.peer_timeout),
        max_body: args.max_body,
        max_name_bytes: args.max_name_bytes,
        max_files_per_request: args.max_files_per_request,
        max_files_per_peer: args.max_files_per_peer,
        new_names_per_minute: args.new_names_per_minute,
        new_names_burst: args.new_names_burst.unwrap_or(args.max_files_per_peer),
        history_retention: match args.history_retention {
            None => Some(nap::index::config::DEFAULT_HISTORY_RETENTION),
            Some(secs) => Some(seconds("history-retention", secs)).filter(|d| !d.is_zero()),
        },
        max_search_results: args.max_search_results,
        max_tasks_per_answer: args.max_tasks_per_answer,
        lease_ttl: seconds("lease-ttl", args.lease_ttl),
        role: RoleConfig::from_flags(&args.role, args.shadow.as_deref(), args.primary.as_deref())
            .unwrap_or_else(|e| usage(&e.to_string())),
        cluster_secret: args
            .cluster_secret
            .clone()
            .or_else(|| std::env::var("NAP_CLUSTER_SECRET").ok())
            .filter(|s| !s.is_empty()),
        sync_log: args.sync_log,
        replication_factor: args.replication_factor,
        plan_interval: seconds("plan-interval", args.plan_interval),
        max_tasks_per_peer: args.max_tasks_per_peer,
        task_timeout: seconds("task-timeout", args.task_timeout),
        data_dir: (!args.in_memory).then(|| std::path::PathBuf::from(&args.data_dir)),
        fsync: args
            .fsync
            .parse()
            .unwrap_or_else(|e: nap::index::journal::UnknownFsync| usage(&e.to_string())),
        snapshot_every: args.snapshot_every,
        max_connections: args.max_connections.unwrap_or_else(|| {
            nap::net::connections::fitting_or_warn(nap::index::DEFAULT_MAX_CONNECTIONS)
        }),
        idle_timeout: seconds("idle-timeout", args.idle_timeout),
        request_timeout: seconds("request-timeout", args.request_timeout),
    };
    if let Err(e) = config.validate() {
        usage(&e.to_string());
    }
    for warning in config.warnings() {
        log::warn!("{warning}");
    }
    // Registered before the start, so a signal that comes during it is taken afterwards.
    let signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("nap-index: cannot handle signals: {e}");
            std::process::exit(1);
        }
    };
    match IndexServer::start(config) {
        Ok(server) => {
            println!("nap-index listening on {}", server.url());
            // Runs until SIGINT or SIGTERM, then stops cleanly: requests in flight finish,
            // the log is written and synced.
            let signal = nap::net::signals(signals).recv().unwrap_or_default();
            log::info!("signal {signal}: stopping");
            server.stop();
            log::info!("stopped");
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("nap-index: cannot start: {e}");
            std::process::exit(1);
        }
    }
}
