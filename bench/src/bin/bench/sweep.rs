//! The scalability sweep: N simulated peers against a fresh primary/shadow pair per step,
//! each peer a thread with its own client (its own HTTP agent, identity and random
//! choices; nothing shared across peers but the clock and the start line).
//!
//! A step has three phases of the same length, each with all N peers calling back to back
//! (or with `--think-ms` between calls):
//! 1. the mix: register once with 20 files, then cycles of one heartbeat and four searches,
//!    with a publish (lease, then the announce of the next version) every fifth cycle;
//! 2. searches only;
//! 3. the ceiling: `GET /health`, which the index answers without reading its state, so
//!    what it costs is the HTTP stack's (and the load generator's) own.

use std::path::Path;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use nap::peer::client::{ClientError, IndexClient};
use nap::protocol::{
    AnnounceRequest, FileMeta, HeartbeatRequest, LeaseRequest, RegisterRequest, Task,
};

use crate::stats::Lat;
use crate::support::{self, Fleet, Rng};
use crate::Settings;

/// Operation kinds of the mix, in table order.
pub const MIX: [&str; 4] = ["register", "heartbeat", "search", "publish"];
const REGISTER: usize = 0;
const HEARTBEAT: usize = 1;
const SEARCH: usize = 2;
const PUBLISH: usize = 3;

/// Files each simulated peer registers.
const FILES: usize = 20;
/// Searches per heartbeat, and heartbeats per publish, in the mix.
const SEARCHES_PER_CYCLE: usize = 4;
const CYCLES_PER_PUBLISH: usize = 5;
/// Error messages kept per step, to say what went wrong.
const KEPT_ERRORS: usize = 5;

/// One operation kind's record in one phase.
#[derive(Default, Clone)]
pub struct Tally {
    /// Latency of every completed call, in or after the window.
    pub lat: Lat,
    /// Calls answered successfully within the window (throughput counts these).
    pub done: usize,
    pub errors: usize,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.lat.merge(other.lat);
        self.done += other.done;
        self.errors += other.errors;
    }
}

/// What one phase of one step measured, summed over its peers.
#[derive(Default, Clone)]
pub struct Phase {
    /// By operation kind: `MIX` in the mix, a single entry otherwise.
    pub ops: Vec<Tally>,
    /// HTTP requests sent (a publish is two).
    pub requests: usize,
    /// Calls the failover client ended up sending to the shadow.
    pub failovers: usize,
    pub error_samples: Vec<String>,
    /// The window's length in seconds.
    pub window: f64,
}

impl Phase {
    fn new(kinds: usize, window: f64) -> Phase {
        Phase {
            ops: vec![Tally::default(); kinds],
            window,
            ..Phase::default()
        }
    }

    fn merge(&mut self, other: Phase) {
        for (mine, theirs) in self.ops.iter_mut().zip(other.ops) {
            mine.merge(theirs);
        }
        self.requests += other.requests;
        self.failovers += other.failovers;
        for e in other.error_samples {
            if self.error_samples.len() < KEPT_ERRORS {
                self.error_samples.push(e);
            }
        }
    }

    pub fn done(&self) -> usize {
        self.ops.iter().map(|t| t.done).sum()
    }

    pub fn errors(&self) -> usize {
        self.ops.iter().map(|t| t.errors).sum()
    }

    /// Successful operations per second of the window.
    pub fn per_s(&self) -> f64 {
        self.done() as f64 / self.window
    }

    /// Errors as a fraction of all calls completed.
    pub fn error_rate(&self) -> f64 {
        let calls: usize = self.ops.iter().map(|t| t.lat.len()).sum();
        if calls == 0 {
            0.0
        } else {
            self.errors() as f64 / calls as f64
        }
    }

    /// Calls completed in the window and the requests per second.
    pub fn requests_per_s(&self) -> f64 {
        self.requests as f64 / self.window
    }
}

/// One step of the sweep.
pub struct Step {
    pub peers: usize,
    pub mix: Phase,
    pub search: Phase,
    pub ceiling: Phase,
    /// The primary's resident memory after the mix, and its peak, in MiB.
    pub rss_mib: f64,
    pub peak_mib: f64,
    /// Files and seq of the primary after the mix.
    pub files: usize,
    pub seq: u64,
    /// Whether the shadow reached the primary's seq and state digest after the step.
    pub shadow_in_sync: bool,
}

impl Step {
    pub fn errors(&self) -> usize {
        self.mix.errors() + self.search.errors() + self.ceiling.errors()
    }
}

pub fn run(settings: &Settings, index_bin: &Path) -> Vec<Step> {
    let mut steps = Vec::new();
    for &peers in &settings.peers {
        let step = run_step(settings, index_bin, peers);
        let m = &step.mix;
        eprintln!(
            "  {peers:>5} peers: mix {:>7.0} ops/s, search {:>7.0}/s, ceiling {:>7.0}/s, \
             errors {}, index {:.0} MiB",
            m.per_s(),
            step.search.per_s(),
            step.ceiling.per_s(),
            step.errors(),
            step.rss_mib,
        );
        for e in m
            .error_samples
            .iter()
            .chain(&step.search.error_samples)
            .chain(&step.ceiling.error_samples)
        {
            eprintln!("      error: {e}");
        }
        steps.push(step);
    }
    steps
}

/// A fresh pair (each step starts from an empty index, unlike the seed's runs, which kept
/// one server across steps), the three phases, then the memory and the shadow check.
fn run_step(settings: &Settings, index_bin: &Path, peers: usize) -> Step {
    let mut fleet = Fleet::new("nap-bench-sweep-");
    let pair = support::start_pair(&mut fleet, index_bin, &settings.index_flags());
    let urls = vec![pair.purl.clone(), pair.surl.clone()];

    let mix = phase(settings, &urls, peers, MIX.len(), mix_peer);
    let (rss, peak) = support::memory_kib(fleet.pid(pair.primary)).unwrap_or((0, 0));
    let after_mix = IndexClient::new(vec![pair.purl.clone()], settings.timeout)
        .status()
        .ok();
    let search = phase(settings, &urls, peers, 1, search_peer);
    let ceiling = phase(settings, &urls, peers, 1, health_peer);
    let shadow_in_sync = support::wait_in_sync(&pair.purl, &pair.surl);
    Step {
        peers,
        mix,
        search,
        ceiling,
        rss_mib: rss as f64 / 1024.0,
        peak_mib: peak as f64 / 1024.0,
        files: after_mix.as_ref().map_or(0, |s| s.files),
        seq: after_mix.map_or(0, |s| s.seq),
        shadow_in_sync,
    }
}

/// What a simulated peer's loop gets: its number, its client and the phase's clock.
struct Run<'a> {
    n: usize,
    peers: usize,
    client: IndexClient,
    primary: &'a str,
    until: Instant,
    think: Duration,
    /// Draws the pauses, so that peers do not fall into step.
    rng: Rng,
    tally: Phase,
}

impl Run<'_> {
    /// Times one call of kind `kind` made of `requests` HTTP requests, and books it.
    fn timed<T>(
        &mut self,
        kind: usize,
        requests: usize,
        call: impl FnOnce(&IndexClient) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let started = Instant::now();
        let result = call(&self.client);
        let ended = Instant::now();
        let tally = &mut self.tally.ops[kind];
        tally.lat.push(ended - started);
        self.tally.requests += requests;
        match &result {
            Ok(_) if ended <= self.until => tally.done += 1,
            Ok(_) => {}
            Err(e) => {
                tally.errors += 1;
                if self.tally.error_samples.len() < KEPT_ERRORS {
                    self.tally
                        .error_samples
                        .push(format!("peer {}: {e}", self.n));
                }
            }
        }
        // A call that had to go to the shadow is a failover; come back as nap's agent does.
        if self.client.current() != self.primary {
            self.tally.failovers += 1;
            self.tally.requests += 1;
            self.client.probe_primary();
        }
        self.pause(0.5);
        result
    }

    /// Sleeps between `from` and 2 - `from` times the think time, drawn uniformly: with one
    /// fixed pause, peers that started together would call together, in bursts.
    fn pause(&mut self, from: f64) {
        if !self.think.is_zero() {
            let spread = (2.0 - 2.0 * from) * self.rng.below(1_000_001) as f64 / 1e6;
            std::thread::sleep(self.think.mul_f64(from + spread));
        }
    }

    fn running(&self) -> bool {
        Instant::now() < self.until
    }
}

/// Runs `peers` threads of `body` from one start line for the settings' duration. They are
/// spawned by a thread that first lowers its own priority by `--generator-nice`, so they
/// inherit it and the load generator, sharing the index's cores, does not outweigh the index
/// by its thread count alone.
fn phase(
    settings: &Settings,
    urls: &[String],
    peers: usize,
    kinds: usize,
    body: fn(&mut Run),
) -> Phase {
    let length = settings.seconds;
    let spawner = || {
        lower_priority(settings.generator_nice);
        let start = Barrier::new(peers + 1);
        let mut total = Phase::new(kinds, length.as_secs_f64());
        std::thread::scope(|s| {
            let start = &start;
            let handles: Vec<_> = (0..peers)
                .map(|n| {
                    std::thread::Builder::new()
                        .stack_size(512 * 1024)
                        .spawn_scoped(s, move || {
                            let client = IndexClient::new(urls.to_vec(), settings.timeout);
                            start.wait();
                            let mut run = Run {
                                n,
                                peers,
                                client,
                                primary: &urls[0],
                                until: Instant::now() + length,
                                think: settings.think,
                                rng: Rng::new(n as u64 + 1_000_003),
                                tally: Phase::new(kinds, length.as_secs_f64()),
                            };
                            // A random start (0 to 2 think times), then pauses of 0.5 to
                            // 1.5 think times.
                            run.pause(0.0);
                            body(&mut run);
                            run.tally
                        })
                        .expect("a thread for a simulated peer")
                })
                .collect();
            start.wait();
            for handle in handles {
                total.merge(handle.join().expect("a simulated peer panicked"));
            }
        });
        total
    };
    std::thread::scope(|s| {
        s.spawn(spawner)
            .join()
            .expect("the load generator panicked")
    })
}

/// Lowers the calling thread's scheduling priority (Linux: nice is per thread, and threads
/// it spawns inherit it) with renice(1); says so once if it cannot.
fn lower_priority(nice: u32) {
    if nice == 0 {
        return;
    }
    // "/proc/thread-self" links to "PID/task/TID".
    let tid = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|link| link.file_name().map(|n| n.to_string_lossy().into_owned()));
    let lowered = tid.is_some_and(|tid| {
        std::process::Command::new("renice")
            .args(["-n", &nice.to_string(), "-p", &tid])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    static WARNED: std::sync::Once = std::sync::Once::new();
    if !lowered {
        WARNED.call_once(|| {
            eprintln!("  (cannot renice the load generator; it runs at the index's priority)")
        });
    }
}

/// Peers 2g and 2g+1 both hold group g's files from the start, so every file begins with
/// two holders, the default replication factor, and the planner has nothing to do until a
/// publish.
fn group_file(group: usize, k: usize) -> String {
    format!("g{group:04} track {k:02}.mp3")
}

fn sha_of(text: &str) -> String {
    nap::hashing::sha256_of(text.as_bytes()).unwrap_or_default()
}

pub fn version_meta(name: &str, version: u64) -> FileMeta {
    FileMeta {
        name: name.to_string(),
        version,
        size: 4_000_000 + version,
        sha256: sha_of(&format!("{name} v{version}")),
    }
}

/// A copy the index asked for, reported as made in the next heartbeat. The simulated peer
/// moves no bytes (file data never goes through the index), but the index's side of the
/// replication loop (plan, hand out, settle on the report) runs for real.
fn copied(task: &Task) -> FileMeta {
    FileMeta {
        name: task.file.clone(),
        version: task.version,
        size: task.size,
        sha256: task.sha256.clone(),
    }
}

/// Adds the copies `tasks` ask for to those to report, one entry per name (the newest).
fn queue_copies(pending: &mut Vec<FileMeta>, tasks: &[Task]) {
    for copy in tasks.iter().map(copied) {
        match pending.iter_mut().find(|p| p.name == copy.name) {
            Some(p) if p.version < copy.version => *p = copy,
            Some(_) => {}
            None => pending.push(copy),
        }
    }
}

/// One peer of the mix.
fn mix_peer(run: &mut Run) {
    let group = run.n / 2;
    let groups = run.peers.div_ceil(2);
    let files: Vec<FileMeta> = (0..FILES)
        .map(|k| version_meta(&group_file(group, k), 1))
        .collect();
    let register = RegisterRequest {
        addr: format!("127.0.0.1:{}", 20_000 + run.n),
        files,
        peer_id: None,
        token: None,
    };
    let mut pending: Vec<FileMeta> = Vec::new();
    let (peer_id, token) = loop {
        if let Ok(answer) = run.timed(REGISTER, 1, |c| c.register(&register)) {
            queue_copies(&mut pending, &answer.tasks);
            break (answer.peer_id, answer.token);
        }
        if !run.running() {
            return;
        }
    };
    // The two peers of a group publish different halves of its files: no lease contention.
    let mine: Vec<usize> = (0..FILES).filter(|k| k % 2 == run.n % 2).collect();
    let mut rng = Rng::new(run.n as u64 + 1);
    let mut cycle = 0usize;
    while run.running() {
        let heartbeat = HeartbeatRequest {
            peer_id: peer_id.clone(),
            token: token.clone(),
            added: std::mem::take(&mut pending),
            removed: Vec::new(),
            failed: Vec::new(),
            wait_ms: None,
        };
        match run.timed(HEARTBEAT, 1, |c| c.heartbeat(&heartbeat)) {
            Ok(answer) => queue_copies(&mut pending, &answer.tasks),
            Err(_) => pending = heartbeat.added,
        }
        for _ in 0..SEARCHES_PER_CYCLE {
            let query = format!("g{:04} {:02}", rng.below(groups), rng.below(FILES));
            let _ = run.timed(SEARCH, 1, |c| c.search(&query, 20));
        }
        if cycle % CYCLES_PER_PUBLISH == CYCLES_PER_PUBLISH - 1 {
            let file = group_file(group, mine[(cycle / CYCLES_PER_PUBLISH) % mine.len()]);
            let _ = run.timed(PUBLISH, 2, |c| publish(c, &peer_id, &token, &file));
        }
        cycle += 1;
    }
}

/// Publishes the next version of `file`: a lease, then the announce that spends it. Returns
/// the version published.
pub fn publish(
    c: &IndexClient,
    peer_id: &str,
    token: &str,
    file: &str,
) -> Result<u64, ClientError> {
    let lease = c.lease(&LeaseRequest {
        peer_id: peer_id.into(),
        token: token.into(),
        file: file.into(),
    })?;
    let next = version_meta(file, lease.version + 1);
    c.announce(&AnnounceRequest {
        peer_id: peer_id.into(),
        token: token.into(),
        file: next.name,
        version: next.version,
        size: next.size,
        sha256: next.sha256,
        lease_id: Some(lease.lease_id),
    })
    .map(|answer| answer.version)
}

/// One peer searching back to back, for the files the mix registered.
fn search_peer(run: &mut Run) {
    let groups = run.peers.div_ceil(2);
    let mut rng = Rng::new(run.n as u64 + 7);
    while run.running() {
        let query = format!("g{:04} {:02}", rng.below(groups), rng.below(FILES));
        let _ = run.timed(0, 1, |c| c.search(&query, 20));
    }
}

/// One peer calling the trivial endpoint back to back.
fn health_peer(run: &mut Run) {
    while run.running() {
        let _ = run.timed(0, 1, IndexClient::health);
    }
}
