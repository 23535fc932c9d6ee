//! `nap-index`: the central index server.

use std::time::Duration;

use argh::FromArgs;
use nap::index::{IndexConfig, IndexServer};

/// The nap index server: maps file names to the peers that hold them (JSON over HTTP).
#[derive(FromArgs)]
struct Args {
    /// address to listen on, host:port (port 0 picks a free one)
    #[argh(option, default = "String::from(\"127.0.0.1:7070\")")]
    listen: String,
    /// threads answering HTTP requests
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
    /// seconds a write lease lasts unless its holder renews it
    #[argh(option, default = "60.0")]
    lease_ttl: f64,
}

fn seconds(flag: &str, value: f64) -> Duration {
    Duration::try_from_secs_f64(value).unwrap_or_else(|_| {
        eprintln!("nap-index: --{flag} must be a non-negative number of seconds");
        std::process::exit(2)
    })
}

fn main() {
    let args: Args = argh::from_env();
    nap::init_logging(log::LevelFilter::Info);
    let config = IndexConfig {
        listen: args.listen,
        workers: args.workers,
        heartbeat_interval: seconds("heartbeat-interval", args.heartbeat_interval),
        peer_timeout: seconds("peer-timeout", args.peer_timeout),
        max_body: args.max_body,
        lease_ttl: seconds("lease-ttl", args.lease_ttl),
    };
    if config.lease_ttl.is_zero() {
        eprintln!("nap-index: --lease-ttl must be more than 0");
        std::process::exit(2);
    }
    if config.peer_timeout <= config.heartbeat_interval {
        log::warn!(
            "--peer-timeout is not longer than --heartbeat-interval: live peers will be pruned"
        );
    }
    match IndexServer::start(config) {
        Ok(server) => {
            println!("nap-index listening on {}", server.url());
            server.wait();
        }
        Err(e) => {
            eprintln!("nap-index: cannot start: {e}");
            std::process::exit(1);
        }
    }
}
