//! nap's evaluation suite: the seed's measurements, taken with real processes, written as
//! CSV tables, an SVG figure and a markdown summary.
//!
//!     cargo run --release -p nap-bench --bin bench -- [--quick] [--out DIR]
//!
//! It builds and starts the real `nap-index` binaries (a primary and its shadow, fresh for
//! every measurement) and, for convergence, real `nap-peer` processes; the simulated peers
//! are threads of this process, each with its own failover client (its own HTTP agent and
//! identity), speaking the HTTP API as nap's peers do (one request per connection).
//!
//! Core metrics (`--samples` each, write latency ten times as many): write latency (lease +
//! announce), failover recovery for a killed and for a frozen primary, replication
//! convergence of a new file to R = 2 verified copies on disk, and search latency under
//! load (from the sweep). The sweep: for each peer count, a fresh pair, then three phases
//! of `--seconds` each: the mix, searches only, and `GET /health` as the ceiling of the
//! HTTP stack on this machine (see sweep.rs).
//!
//! Output in `--out` (default target/bench): core.csv, core_samples.csv, sweep.csv,
//! sweep_ops.csv, sweep.svg, summary.md (also printed). Exits 1 if any call failed.
//! Nothing here asserts a speed.

mod measure;
mod plot;
mod report;
mod stats;
mod sweep;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use argh::FromArgs;
use nap_bench::support::{self, List};

/// nap's evaluation suite: core metrics and a scalability sweep against real processes.
#[derive(FromArgs)]
struct Args {
    /// a smoke run: two sweep steps of 1.5 s, five samples per metric (under a minute)
    #[argh(switch)]
    quick: bool,
    /// directory for the CSV tables, the SVG figure and the summary
    #[argh(option, default = "PathBuf::from(\"target/bench\")")]
    out: PathBuf,
    /// peer counts of the sweep, comma-separated (default 10,20,50,100,200,500,1000)
    #[argh(option)]
    peers: Option<List<usize>>,
    /// seconds per phase of each sweep step (default 5)
    #[argh(option)]
    seconds: Option<f64>,
    /// samples per core metric (default 20)
    #[argh(option)]
    samples: Option<usize>,
    /// pause of each simulated peer after each call, ms (default 0: back to back)
    #[argh(option, default = "0")]
    think_ms: u64,
    /// niceness of the simulated peers' threads (default 0: the index's own priority)
    #[argh(option, default = "0")]
    generator_nice: u32,
    /// index worker threads
    #[argh(option, default = "4")]
    workers: usize,
    /// seconds a peer's client waits per phase of a call before it tries the next server
    /// (nap-peer's --index-timeout)
    #[argh(option, default = "2.0")]
    index_timeout: f64,
    /// size of each new file in the convergence metric, KiB
    #[argh(option, default = "1024")]
    convergence_kib: usize,
    /// run the indexes with --in-memory instead of a data directory with fsync'd log
    #[argh(switch)]
    in_memory: bool,
    /// measure only "core" or "sweep"
    #[argh(option)]
    only: Option<Part>,
}

#[derive(Clone, Copy, PartialEq)]
enum Part {
    Core,
    Sweep,
}

impl FromStr for Part {
    type Err = String;

    fn from_str(s: &str) -> Result<Part, String> {
        support::choose("part", s, &[("core", Part::Core), ("sweep", Part::Sweep)])
    }
}

/// What every measurement runs with.
pub struct Settings {
    pub quick: bool,
    pub peers: Vec<usize>,
    pub seconds: Duration,
    pub samples: usize,
    pub think: Duration,
    pub generator_nice: u32,
    pub workers: usize,
    pub timeout: Duration,
    pub convergence_bytes: usize,
    pub in_memory: bool,
}

impl Settings {
    fn from(args: &Args) -> Settings {
        let (peers, seconds, samples) = if args.quick {
            (vec![10, 100], 1.5, 5)
        } else {
            (vec![10, 20, 50, 100, 200, 500, 1000], 5.0, 20)
        };
        Settings {
            quick: args.quick,
            peers: args.peers.as_ref().map_or(peers, |l| l.0.clone()),
            seconds: Duration::from_secs_f64(args.seconds.unwrap_or(seconds).max(0.1)),
            samples: args.samples.unwrap_or(samples).max(1),
            think: Duration::from_millis(args.think_ms),
            generator_nice: args.generator_nice.min(19),
            workers: args.workers.max(1),
            timeout: Duration::from_secs_f64(args.index_timeout.max(0.01)),
            convergence_bytes: args.convergence_kib.max(1) * 1024,
            in_memory: args.in_memory,
        }
    }

    /// Flags of every index started here, besides its role. Peers are never pruned while a
    /// step runs (the search and ceiling phases send no heartbeats).
    pub fn index_flags(&self) -> Vec<String> {
        let mut flags: Vec<String> = ["--workers", &self.workers.to_string()]
            .map(String::from)
            .to_vec();
        flags.extend(["--peer-timeout".into(), "600".into()]);
        if self.in_memory {
            flags.push("--in-memory".into());
        }
        flags
    }

    /// Publishes are cheap: ten times as many samples.
    pub fn write_samples(&self) -> usize {
        self.samples * 10
    }
}

fn main() {
    nap::init_logging(log::LevelFilter::Error);
    let args: Args = argh::from_env();
    let settings = Settings::from(&args);
    let index_bin = support::binary("nap-index", "bench");
    let peer_bin = support::binary("nap-peer", "bench");
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        eprintln!("bench: cannot create {}: {e}", args.out.display());
        std::process::exit(2);
    }

    let core = if args.only != Some(Part::Sweep) {
        eprintln!("core metrics:");
        measure::run(&settings, &index_bin, &peer_bin)
    } else {
        Vec::new()
    };
    let steps = if args.only != Some(Part::Core) {
        eprintln!(
            "scalability sweep ({:.1} s per phase):",
            settings.seconds.as_secs_f64()
        );
        sweep::run(&settings, &index_bin)
    } else {
        Vec::new()
    };

    let errors = match report::write(&args.out, &settings, &core, &steps) {
        Ok(errors) => errors,
        Err(e) => {
            eprintln!("bench: writing the results to {}: {e}", args.out.display());
            std::process::exit(2);
        }
    };
    if errors > 0 {
        eprintln!("bench: {errors} calls failed (see above)");
        std::process::exit(1);
    }
}
