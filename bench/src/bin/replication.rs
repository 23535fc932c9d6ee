//! Replication convergence and churn recovery of a replicating `nap-index` (factor R), measured
//! on 127.0.0.1.
//!
//!     cargo run --release -p nap-bench --bin replication -- [--peers N]
//!         [--trials T] [--sizes 1024,1048576] [--heartbeat-interval SECS]
//!         [--churn-peers M] [--files F] [--file-size BYTES] [--peer-timeout SECS]
//!         [--replication-factor R] [--max-tasks-per-peer K] [--count-requests]
//!         [--only convergence|churn]
//!
//! Convergence: a real `nap-index` process (R, `--heartbeat-interval`, the default 1 s plan
//! interval) and N peers running in this process (`PeerNode`, so that the bench can run
//! `Peer::report_changes`, what the scanner runs, itself; their own scanner is set to an
//! hour). Each trial waits a random part of a heartbeat interval, writes a new file into one
//! peer's shared folder and calls that peer's `report_changes()`, then polls
//! `GET /file?name=` every millisecond. The time is split into (a) from the file's appearance
//! to the index listing its first holder: hashing it and one heartbeat that does not wait;
//! and (b) from there to R up-to-date holders: planner
//! wake-up, the task delivered through the other peer's parked heartbeat, a verified download
//! and its announce. (b) is split in turn at the moment `/status` lists the copy in flight
//! (b1: the planner's pass) and the moment the copy is in place in the other peer's folder
//! (b2: delivery, download, verification; b3: the announce). The bench polls `/file` (and
//! `/status` until the copy is assigned) every millisecond, so each split point is good to
//! about a millisecond.
//!
//! Churn: the real `nap-index` and `nap-peer serve --daemon` processes (so that one can be
//! SIGKILLed), `--peer-timeout` short so the prune comes soon. M-1 empty peers start, then a
//! peer with F distinct files of BYTES each joins, and the time until every file has R
//! up-to-date holders is measured (and the copies it took). Then the peer holding the most
//! copies is killed (SIGKILL) and the time until every file is back at R up-to-date holders
//! is measured, split at the prune (the index's peer count drops), with the copies and bytes
//! moved (new files in the survivors' folders, and new holder entries on the index). "All at
//! R" is `/status` showing nothing under-replicated and no copy in flight, confirmed by
//! `GET /file` of every file. The CPU time the index and the peers used in each phase is read
//! from /proc. With `--count-requests` the index logs every request (RUST_LOG=debug), and the
//! heartbeats it answered and the planner passes that assigned copies are counted per phase.
//!
//! The binaries are taken from beside this program (target/<profile>/); run through cargo,
//! it builds them first. Every process is killed and every temporary folder removed when the
//! bench ends, also when it panics.

use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use argh::FromArgs;
use nap::peer::client::IndexClient;
use nap::peer::{PeerConfig, PeerNode};
use nap::protocol::{ErrorCode, StatusResponse};
use nap_bench::support::{self, ms, Fleet, ProcId, Rng};

/// Replication convergence and churn recovery of nap-index with replication factor R.
#[derive(FromArgs)]
struct Args {
    /// replication factor R given to the index
    #[argh(option, default = "2")]
    replication_factor: usize,
    /// the index's --heartbeat-interval, in seconds (both measurements)
    #[argh(option, default = "1.0")]
    heartbeat_interval: f64,
    /// the index's --max-tasks-per-peer (copy tasks in flight per peer)
    #[argh(option, default = "4")]
    max_tasks_per_peer: usize,
    /// peers (in this process) in the convergence measurement
    #[argh(option, default = "5")]
    peers: usize,
    /// new files in the convergence measurement, one per trial, sizes taken in turn
    #[argh(option, default = "20")]
    trials: usize,
    /// file sizes of the convergence trials in bytes, comma-separated
    #[argh(option, default = "String::from(\"1024,1048576\")")]
    sizes: String,
    /// peer processes in the churn measurement
    #[argh(option, default = "4")]
    churn_peers: usize,
    /// files on the joining peer in the churn measurement
    #[argh(option, default = "1000")]
    files: usize,
    /// bytes per file in the churn measurement
    #[argh(option, default = "4096")]
    file_size: usize,
    /// the index's --peer-timeout in the churn measurement, in seconds
    #[argh(option, default = "3.0")]
    peer_timeout: f64,
    /// run the churn index with RUST_LOG=debug and count its heartbeat requests per phase
    #[argh(switch)]
    count_requests: bool,
    /// measure only "convergence" or "churn"
    #[argh(option)]
    only: Option<Part>,
}

#[derive(Clone, Copy, PartialEq)]
enum Part {
    Convergence,
    Churn,
}

impl FromStr for Part {
    type Err = String;

    fn from_str(s: &str) -> Result<Part, String> {
        let parts = [("convergence", Part::Convergence), ("churn", Part::Churn)];
        support::choose("part", s, &parts)
    }
}

/// Bound on every wait for a process or a convergence, so a broken build fails, not hangs.
const DEADLINE: Duration = Duration::from_secs(120);

// ----- processes ----------------------------------------------------------------------------

/// A `nap-index` on a free port, logging at `rust_log` (stderr goes to a log file, shown
/// if the bench fails); returns it and its base URL.
fn start_index(
    fleet: &mut Fleet,
    bin: &Path,
    flags: &[(&str, String)],
    rust_log: &str,
) -> (ProcId, String) {
    // In memory: what is measured is replication, not the disk.
    let mut args = vec!["--in-memory".to_string()];
    for (flag, value) in flags {
        args.push(format!("--{flag}"));
        args.push(value.clone());
    }
    let env = [("RUST_LOG", rust_log)];
    let index = nap_harness::start_index(bin, "index", "127.0.0.1:0", &args, &env);
    let url = index.url.clone();
    (fleet.adopt(index.proc), url)
}

/// A `nap-peer serve --daemon` sharing `dir`; returns it and the address it serves files at.
fn start_peer(
    fleet: &mut Fleet,
    bin: &Path,
    name: &str,
    dir: &Path,
    url: &str,
) -> (ProcId, String) {
    let args: Vec<String> = [
        "serve",
        "--daemon",
        "--dir",
        &dir.display().to_string(),
        "--index",
        url,
    ]
    .map(String::from)
    .to_vec();
    let peer = nap_harness::start_peer(bin, name, &args, &[("RUST_LOG", "info")]);
    (fleet.adopt(peer.proc), peer.addr)
}

/// CPU seconds (user + system) a process has used so far, from /proc (Linux; USER_HZ 100).
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

/// CPU seconds used by `pids` together, or `None` where /proc is not available.
fn cpu_of(fleet: &Fleet, ids: &[ProcId]) -> Option<f64> {
    ids.iter().map(|id| cpu_secs(fleet.pid(*id))).sum()
}

// ----- the index, read as a client ------------------------------------------------------------

fn client(url: &str) -> IndexClient {
    IndexClient::new(vec![url.to_string()], Duration::from_secs(2))
}

fn status(index: &IndexClient) -> StatusResponse {
    index.status().expect("GET /status")
}

/// The addresses of the peers holding the latest version of `name` (none when the index does
/// not know the file).
fn holders(index: &IndexClient, name: &str) -> Vec<String> {
    match index.file_info(name) {
        Ok(info) => {
            let latest = info.versions.last().map_or(0, |v| v.version);
            info.holders
                .into_iter()
                .filter(|h| h.version == latest)
                .map(|h| h.addr)
                .collect()
        }
        Err(e) if e.code() == Some(ErrorCode::NotFound) => Vec::new(),
        Err(e) => panic!("GET /file?name={name}: {e}"),
    }
}

/// Polls `check` every `every` until it gives a value; panics after the deadline.
fn poll<T>(what: &str, every: Duration, check: impl FnMut() -> Option<T>) -> T {
    support::poll(what, every, DEADLINE, check)
}

/// What `GET /file` of every name shows: files below `r` up-to-date holders (or listing
/// `gone`), and the holder entries in all.
fn census(index: &IndexClient, names: &[String], r: usize, gone: Option<&str>) -> (usize, usize) {
    let mut short = 0;
    let mut entries = 0;
    for name in names {
        let listed = holders(index, name);
        entries += listed.len();
        if listed.len() < r || gone.is_some_and(|g| listed.iter().any(|a| a == g)) {
            short += 1;
        }
    }
    (short, entries)
}

// ----- numbers --------------------------------------------------------------------------------

/// "min | median | p90 | max" in ms, a tenth of a ms below 100 ms.
fn spread(ds: Vec<Duration>) -> String {
    support::spread(
        ds,
        &[0.0, 0.5, 0.9, 1.0],
        " | ",
        Duration::from_millis(100),
        1,
    )
}

fn size_name(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} B")
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

// ----- convergence ----------------------------------------------------------------------------

/// Peers running in this process; dropping them (also in a panic) stops them all at once
/// (each stop may wait out a parked heartbeat).
struct Nodes(Vec<PeerNode>);

impl Drop for Nodes {
    fn drop(&mut self) {
        let nodes = std::mem::take(&mut self.0);
        std::thread::scope(|s| {
            for node in nodes {
                s.spawn(move || node.stop());
            }
        });
    }
}

/// One new file, as the poller saw it.
struct Trial {
    size: usize,
    /// Written and rescanned (hashed) by its peer.
    rescanned: Duration,
    /// On the index with its first holder.
    known: Duration,
    /// The copy task assigned (the planner's books show it in flight).
    assigned: Duration,
    /// A verified copy in place in another peer's folder.
    on_disk: Duration,
    /// R up-to-date holders on the index.
    done: Duration,
}

fn convergence(args: &Args, index_bin: &Path) {
    let sizes: Vec<usize> = args
        .sizes
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("--sizes: comma-separated byte counts")
        })
        .collect();
    let r = args.replication_factor;
    assert!(
        r >= 2 && args.peers >= r,
        "need R >= 2 and at least R peers"
    );
    let heartbeat = Duration::from_secs_f64(args.heartbeat_interval);

    let mut fleet = Fleet::new("nap-replication-convergence-");
    let (_index, url) = start_index(
        &mut fleet,
        index_bin,
        &[
            ("replication-factor", r.to_string()),
            ("heartbeat-interval", args.heartbeat_interval.to_string()),
            ("max-tasks-per-peer", args.max_tasks_per_peer.to_string()),
        ],
        "info",
    );
    let index = client(&url);
    let dirs: Vec<PathBuf> = (0..args.peers)
        .map(|i| fleet.root().join(format!("peer{i}")))
        .collect();
    let mut nodes = Nodes(Vec::new());
    for dir in &dirs {
        fs::create_dir_all(dir).expect("a shared folder");
        let node = PeerNode::start(PeerConfig {
            dir: dir.clone(),
            listen: "127.0.0.1:0".into(),
            index: vec![url.clone()],
            // Only the bench rescans: the file appears when it says so.
            rescan_interval: Duration::from_secs(3600),
            ..PeerConfig::default()
        })
        .expect("a peer");
        nodes.0.push(node);
    }
    poll(
        "every peer is registered",
        Duration::from_millis(10),
        || (status(&index).peers == args.peers).then_some(()),
    );

    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let mut rng = Rng::new(seed);
    let mut trials = Vec::new();
    for n in 0..args.trials {
        let size = sizes[n % sizes.len()];
        let origin = n % args.peers;
        let name = format!("new {n:03} of {}.bin", size_name(size));
        let content = rng.bytes(size);
        // Any moment of the origin's heartbeat cycle, like a user saving a file.
        std::thread::sleep(heartbeat.mul_f64((rng.next_u64() % 1000) as f64 / 1000.0));

        let t0 = Instant::now();
        fs::write(dirs[origin].join(&name), &content).expect("writing the new file");
        nodes.0[origin].peer().report_changes().expect("rescan");
        let rescanned = t0.elapsed();
        let (mut known, mut assigned, mut on_disk) = (None, None, None);
        let done = poll(
            &format!("{name} has {r} holders"),
            Duration::from_millis(1),
            || {
                let listed = holders(&index, &name);
                let now = t0.elapsed();
                if !listed.is_empty() {
                    known.get_or_insert(now);
                }
                if known.is_some() && assigned.is_none() {
                    let s = status(&index);
                    let copying = s
                        .under_replicated_files
                        .iter()
                        .any(|u| u.name == name && u.in_flight > 0);
                    if copying {
                        assigned = Some(t0.elapsed());
                    }
                }
                if on_disk.is_none()
                    && dirs
                        .iter()
                        .enumerate()
                        .any(|(i, d)| i != origin && d.join(&name).exists())
                {
                    on_disk = Some(now);
                }
                (listed.len() >= r).then_some(now)
            },
        );
        let known = known.unwrap_or(done);
        let on_disk = on_disk.unwrap_or(done).max(known);
        let trial = Trial {
            size,
            rescanned,
            known,
            assigned: assigned.unwrap_or(on_disk).clamp(known, on_disk),
            on_disk,
            done,
        };
        // The copies hold the same bytes.
        let copies = dirs
            .iter()
            .filter(|d| fs::read(d.join(&name)).is_ok_and(|c| c == content))
            .count();
        assert!(copies >= r, "{name}: {copies} intact copies on disk");
        eprintln!(
            "trial {n:2}: {:>8} on peer {origin}: rescan {:.1} ms, on the index after {:.1} ms, \
             copy assigned +{:.1} ms, on disk +{:.1} ms, {r} holders +{:.1} ms",
            size_name(size),
            ms(trial.rescanned),
            ms(trial.known),
            ms(trial.assigned - trial.known),
            ms(trial.on_disk - trial.known),
            ms(trial.done - trial.known),
        );
        trials.push(trial);
        poll(
            "the planner's books are clear",
            Duration::from_millis(5),
            || {
                let s = status(&index);
                (s.tasks_in_flight == 0 && s.under_replicated == 0).then_some(())
            },
        );
    }
    drop(nodes);
    drop(fleet);

    println!(
        "## convergence: R = {r}, {} peers (in this process), index --heartbeat-interval {} s, \
         --plan-interval 1 s, --max-tasks-per-peer {}, {} trials\n",
        args.peers, args.heartbeat_interval, args.max_tasks_per_peer, args.trials
    );
    println!("| size | trials | from | to | min ms | median ms | p90 ms | max ms |");
    println!("|---|---:|---|---|---:|---:|---:|---:|");
    for size in sizes {
        let of: Vec<&Trial> = trials.iter().filter(|t| t.size == size).collect();
        if of.is_empty() {
            continue;
        }
        let rows: [(&str, &str, Vec<Duration>); 7] = [
            (
                "written",
                "rescanned (hashed)",
                of.iter().map(|t| t.rescanned).collect(),
            ),
            (
                "(a) written",
                "on the index",
                of.iter().map(|t| t.known).collect(),
            ),
            (
                "(b1) on the index",
                "copy task assigned",
                of.iter().map(|t| t.assigned - t.known).collect(),
            ),
            (
                "(b2) assigned",
                "verified copy on disk",
                of.iter().map(|t| t.on_disk - t.assigned).collect(),
            ),
            (
                "(b3) copy on disk",
                "R holders",
                of.iter().map(|t| t.done - t.on_disk).collect(),
            ),
            (
                "(b) on the index",
                "R holders",
                of.iter().map(|t| t.done - t.known).collect(),
            ),
            (
                "total: written",
                "R holders",
                of.iter().map(|t| t.done).collect(),
            ),
        ];
        for (from, to, ds) in rows {
            println!(
                "| {} | {} | {from} | {to} | {} |",
                size_name(size),
                of.len(),
                spread(ds)
            );
        }
    }
    println!();
}

// ----- churn ----------------------------------------------------------------------------------

/// One phase of the churn measurement.
struct Phase {
    name: String,
    took: Duration,
    copies: Option<usize>,
    index_cpu: Option<f64>,
    peers_cpu: Option<f64>,
    /// Heartbeats the index answered, and planner passes that assigned copies.
    heartbeats: Option<[usize; 2]>,
}

/// Files in a shared folder (not counting `.nap/`).
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Heartbeat requests, and planner passes that assigned copies, the index has logged so far
/// (with RUST_LOG=debug).
fn logged(fleet: &Fleet, index: ProcId) -> [usize; 2] {
    let log = fleet.log(index);
    let count = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    [count("POST /heartbeat"), count("copy tasks for")]
}

/// Waits until the index has every file at R up-to-date holders (none of them `gone`): the
/// planner's books clear (nothing under-replicated, no copy in flight), confirmed by `GET
/// /file` of every name. The books are trusted only once they were seen busy or the planner
/// has certainly run since `since` (they may still describe the state before the last op).
/// Returns the time of the status poll that showed them clear.
fn wait_all_at_r(
    index: &IndexClient,
    names: &[String],
    r: usize,
    gone: Option<&str>,
    peers: usize,
    since: Instant,
) -> Instant {
    let mut seen_busy = false;
    let started = Instant::now();
    loop {
        let at = Instant::now();
        let s = status(index);
        let busy = s.under_replicated > 0 || s.tasks_in_flight > 0;
        seen_busy |= busy;
        let fresh = seen_busy || since.elapsed() > Duration::from_secs(3);
        if !busy && fresh && s.peers == peers && s.files >= names.len() {
            let (short, _) = census(index, names, r, gone);
            if short == 0 {
                return at;
            }
            eprintln!("the books were clear but {short} file(s) are below R; polling on");
        }
        assert!(
            started.elapsed() < DEADLINE * 5,
            "the files never all reached R"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn churn(args: &Args, index_bin: &Path, peer_bin: &Path) {
    let r = args.replication_factor;
    let m = args.churn_peers;
    assert!(
        r >= 2 && m > r,
        "need R >= 2 and more than R peers (one is killed)"
    );
    let mut fleet = Fleet::new("nap-replication-churn-");
    let rust_log = if args.count_requests { "debug" } else { "info" };
    let (index_id, url) = start_index(
        &mut fleet,
        index_bin,
        &[
            ("replication-factor", r.to_string()),
            ("heartbeat-interval", args.heartbeat_interval.to_string()),
            ("peer-timeout", args.peer_timeout.to_string()),
            ("max-tasks-per-peer", args.max_tasks_per_peer.to_string()),
        ],
        rust_log,
    );
    let index = client(&url);
    let dirs: Vec<PathBuf> = (0..m)
        .map(|i| fleet.root().join(format!("peer{i}")))
        .collect();
    for dir in &dirs {
        fs::create_dir_all(dir).expect("a shared folder");
    }
    let names: Vec<String> = (0..args.files).map(|i| format!("f{i:05}.bin")).collect();
    let mut rng = Rng::new(42);
    for name in &names {
        fs::write(dirs[0].join(name), rng.bytes(args.file_size)).expect("writing a file");
    }

    // The empty peers first, then the one with the files joins.
    let mut peers: Vec<(ProcId, String)> = Vec::new();
    for (i, dir) in dirs.iter().enumerate().skip(1) {
        peers.push(start_peer(
            &mut fleet,
            peer_bin,
            &format!("peer{i}"),
            dir,
            &url,
        ));
    }
    poll(
        "the empty peers are registered",
        Duration::from_millis(10),
        || (status(&index).peers == m - 1).then_some(()),
    );
    let count = |fleet: &Fleet| args.count_requests.then(|| logged(fleet, index_id));
    let cpu = |fleet: &Fleet, peers: &[(ProcId, String)]| {
        let ids: Vec<ProcId> = peers.iter().map(|p| p.0).collect();
        (cpu_of(fleet, &[index_id]), cpu_of(fleet, &ids))
    };
    let minus = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a - b);
    let minus_n = |a: Option<[usize; 2]>, b: Option<[usize; 2]>| {
        a.zip(b).map(|(a, b)| [a[0] - b[0], a[1] - b[1]])
    };
    let mut phases = Vec::new();

    let (index_cpu0, peers_cpu0) = cpu(&fleet, &peers);
    let hb0 = count(&fleet);
    let t0 = Instant::now();
    let origin = start_peer(&mut fleet, peer_bin, "peer0", &dirs[0], &url);
    let origin_addr = origin.1.clone();
    peers.insert(0, origin);
    let registered = poll(
        "the joining peer's files are on the index",
        Duration::from_millis(5),
        || (status(&index).files >= args.files).then(Instant::now),
    );
    let converged = wait_all_at_r(&index, &names, r, None, m, registered);
    let (index_cpu1, peers_cpu1) = cpu(&fleet, &peers);
    let hb1 = count(&fleet);
    let on_disk: Vec<Vec<String>> = dirs.iter().map(|d| files_in(d)).collect();
    let initial_copies: usize = on_disk.iter().skip(1).map(Vec::len).sum();
    let (_, entries_before) = census(&index, &names, r, None);
    phases.push(Phase {
        name: format!(
            "a peer with {} files joins (spawn) → its files on the index",
            thousands(args.files as u64)
        ),
        took: registered - t0,
        copies: None,
        index_cpu: None,
        peers_cpu: None,
        heartbeats: None,
    });
    phases.push(Phase {
        name: "files on the index → all at R".into(),
        took: converged - registered,
        copies: Some(initial_copies),
        index_cpu: None,
        peers_cpu: None,
        heartbeats: None,
    });
    phases.push(Phase {
        name: "initial convergence in all (spawn → all at R)".into(),
        took: converged - t0,
        copies: Some(initial_copies),
        index_cpu: minus(index_cpu1, index_cpu0),
        peers_cpu: minus(peers_cpu1, peers_cpu0),
        heartbeats: minus_n(hb1, hb0),
    });

    // Let every peer settle into its parked heartbeat, then kill the holder of most copies.
    std::thread::sleep(Duration::from_millis(500));
    let victim = (1..m)
        .max_by_key(|i| on_disk[*i].len())
        .expect("a peer with copies");
    let victim_addr = peers[victim].1.clone();
    let survivors: Vec<(ProcId, String)> = peers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, p)| p.clone())
        .collect();
    let (index_cpu2, peers_cpu2) = cpu(&fleet, &survivors);
    let hb2 = count(&fleet);
    let killed = Instant::now();
    fleet.kill(peers[victim].0);
    let pruned = poll(
        "the killed peer is pruned",
        Duration::from_millis(5),
        || (status(&index).peers == m - 1).then(Instant::now),
    );
    let (index_cpu3, peers_cpu3) = cpu(&fleet, &survivors);
    let hb3 = count(&fleet);
    let recovered = wait_all_at_r(&index, &names, r, Some(&victim_addr), m - 1, pruned);
    let (index_cpu4, peers_cpu4) = cpu(&fleet, &survivors);
    let hb4 = count(&fleet);
    let after: Vec<Vec<String>> = dirs.iter().map(|d| files_in(d)).collect();
    let new_files: usize = (0..m)
        .filter(|i| *i != victim)
        .map(|i| after[i].len() - on_disk[i].len())
        .sum();
    let (_, entries_after) = census(&index, &names, r, Some(&victim_addr));
    let victim_entries = on_disk[victim].len();
    let new_entries = entries_after + victim_entries - entries_before;

    // Every copy in the survivors' folders is the origin's bytes.
    for (i, files) in after.iter().enumerate().skip(1) {
        if i == victim {
            continue;
        }
        for name in files {
            let copy = fs::read(dirs[i].join(name)).expect("a copy");
            let original = fs::read(dirs[0].join(name)).expect("the original");
            assert!(copy == original, "peer{i}/{name} differs from the original");
        }
    }
    assert_eq!(
        new_files, new_entries,
        "new files on disk and new holder entries on the index differ"
    );
    phases.push(Phase {
        name: format!("kill (SIGKILL) → prune (peers {m} → {})", m - 1),
        took: pruned - killed,
        copies: None,
        index_cpu: minus(index_cpu3, index_cpu2),
        peers_cpu: minus(peers_cpu3, peers_cpu2),
        heartbeats: minus_n(hb3, hb2),
    });
    phases.push(Phase {
        name: "prune → all at R again".into(),
        took: recovered - pruned,
        copies: Some(new_files),
        index_cpu: minus(index_cpu4, index_cpu3),
        peers_cpu: minus(peers_cpu4, peers_cpu3),
        heartbeats: minus_n(hb4, hb3),
    });
    phases.push(Phase {
        name: "recovery in all (kill → all at R)".into(),
        took: recovered - killed,
        copies: Some(new_files),
        index_cpu: minus(index_cpu4, index_cpu2),
        peers_cpu: minus(peers_cpu4, peers_cpu2),
        heartbeats: minus_n(hb4, hb2),
    });
    drop(fleet);

    println!(
        "## churn: R = {r}, {m} peer processes, {} files of {} on one of them, index \
         --heartbeat-interval {} s --peer-timeout {} s --plan-interval 1 s \
         --max-tasks-per-peer {}; killed: peer{victim} (held {} copies; origin {origin_addr})\n",
        thousands(args.files as u64),
        size_name(args.file_size),
        args.heartbeat_interval,
        args.peer_timeout,
        args.max_tasks_per_peer,
        on_disk[victim].len(),
    );
    let counting = args.count_requests;
    println!(
        "| phase | s | copies | bytes copied | copies/s | index CPU s | peers CPU s |{}",
        if counting {
            " heartbeats | assigning passes |"
        } else {
            ""
        }
    );
    println!(
        "|---|---:|---:|---:|---:|---:|---:|{}",
        if counting { "---:|---:|" } else { "" }
    );
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    for p in &phases {
        let secs = p.took.as_secs_f64();
        println!(
            "| {} | {secs:.2} | {} | {} | {} | {} | {} |{}",
            p.name,
            p.copies.map_or("-".into(), |c| thousands(c as u64)),
            p.copies
                .map_or("-".into(), |c| thousands((c * args.file_size) as u64)),
            p.copies
                .map_or("-".into(), |c| format!("{:.0}", c as f64 / secs)),
            opt(p.index_cpu),
            opt(p.peers_cpu),
            if counting {
                p.heartbeats.map_or(" - | - |".into(), |[h, passes]| {
                    format!(" {} | {passes} |", thousands(h as u64))
                })
            } else {
                String::new()
            }
        );
    }
    println!(
        "\ncopies counted as new files in the peers' folders; the index's new holder entries \
         agree ({new_entries} after the kill). Every copy was compared with the original."
    );
    println!();
}

fn main() {
    let args: Args = argh::from_env();
    let index_bin = support::binary("nap-index", "replication");
    let peer_bin = support::binary("nap-peer", "replication");
    if args.only != Some(Part::Churn) {
        convergence(&args, &index_bin);
    }
    if args.only != Some(Part::Convergence) {
        churn(&args, &index_bin, &peer_bin);
    }
}
