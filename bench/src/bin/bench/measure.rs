//! The core metrics, each repeated: write latency, failover recovery (killed and frozen
//! primary) and replication convergence with real `nap-peer` processes and real bytes.
//! (Search latency under load comes from the sweep.)

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nap::peer::client::IndexClient;
use nap::protocol::RegisterRequest;

use crate::stats::Lat;
use crate::support::{self, Fleet, Rng, DEADLINE};
use crate::sweep::{publish, version_meta};
use crate::Settings;

/// One core metric: its samples and what went wrong while taking them.
pub struct Metric {
    /// Short key for the CSV files.
    pub key: &'static str,
    /// What is timed, from where to where.
    pub name: String,
    /// The seed's published figure for the same metric, in ms, if it has one.
    pub seed_ms: Option<f64>,
    pub lat: Lat,
    /// Calls that failed (or read nothing) while the metric was taken.
    pub errors: usize,
}

pub fn run(settings: &Settings, index_bin: &Path, peer_bin: &Path) -> Vec<Metric> {
    let mut metrics = vec![write_latency(settings, index_bin)];
    report(&metrics[0]);
    for fault in [Fault::Kill, Fault::Freeze] {
        let metric = failover(settings, index_bin, fault);
        report(&metric);
        metrics.push(metric);
    }
    for metric in convergence(settings, index_bin, peer_bin) {
        report(&metric);
        metrics.push(metric);
    }
    metrics
}

fn report(metric: &Metric) {
    let s = metric.lat.summary();
    eprintln!(
        "  {}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples, {} errors)",
        metric.name, s.p50, s.p99, s.max, s.n, metric.errors
    );
}

fn register(client: &IndexClient, name: &str) -> (String, String) {
    let answer = client
        .register(&RegisterRequest {
            addr: "127.0.0.1:9".into(),
            files: vec![version_meta(name, 1)],
            peer_id: None,
            token: None,
        })
        .unwrap_or_else(|e| panic!("register: {e}"));
    (answer.peer_id, answer.token)
}

/// One writer on a quiet pair publishing new versions of its file one after another: a lease,
/// then the announce of the next version, each on its own connection, each acknowledged only
/// once on disk (the index's default `--fsync always`).
fn write_latency(settings: &Settings, bin: &Path) -> Metric {
    let mut fleet = Fleet::new("nap-bench-write-");
    let pair = support::start_pair(&mut fleet, bin, &settings.index_flags());
    let client = IndexClient::new(vec![pair.purl, pair.surl], settings.timeout);
    let file = "write latency.txt";
    let (peer_id, token) = register(&client, file);
    const WARM_UP: usize = 5;
    let mut lat = Lat::default();
    let mut errors = 0;
    for n in 0..WARM_UP + settings.write_samples() {
        let started = Instant::now();
        let published = publish(&client, &peer_id, &token, file);
        if n >= WARM_UP {
            lat.push(started.elapsed());
        }
        if let Err(e) = published {
            errors += 1;
            eprintln!("  publish failed: {e}");
        }
    }
    // Every acknowledged publish is one version in the history, in order.
    let versions = client.file_info(file).map_or(0, |info| info.versions.len());
    let expected = 1 + WARM_UP + settings.write_samples() - errors;
    if versions != expected {
        eprintln!("  history has {versions} versions, expected {expected}");
        errors += 1;
    }
    Metric {
        key: "write",
        name: format!(
            "write latency (lease + announce{})",
            if settings.in_memory {
                ", in memory"
            } else {
                ", each fsync'd"
            }
        ),
        seed_ms: Some(8.80),
        lat,
        errors,
    }
}

#[derive(Clone, Copy)]
enum Fault {
    /// SIGKILL: the port refuses connections at once.
    Kill,
    /// SIGSTOP: the kernel still accepts connections; nobody answers.
    Freeze,
}

/// Per trial, a fresh pair and a peer's failover client (primary, then shadow) that has just
/// read from the primary; the primary is killed or frozen, and the client reads again until
/// a read succeeds. Timed from just before the signal to that read's answer. (A frozen
/// primary is read from only once /proc shows all its threads stopped: kill(2) returns before
/// they are.)
fn failover(settings: &Settings, bin: &Path, fault: Fault) -> Metric {
    let file = "failover probe.txt";
    let mut lat = Lat::default();
    let mut errors = 0;
    for _ in 0..settings.samples {
        let mut fleet = Fleet::new("nap-bench-failover-");
        let pair = support::start_pair(&mut fleet, bin, &settings.index_flags());
        let client = IndexClient::new(vec![pair.purl.clone(), pair.surl.clone()], settings.timeout);
        register(&client, file);
        assert!(
            support::wait_in_sync(&pair.purl, &pair.surl),
            "the shadow did not catch up"
        );
        let read = || {
            client
                .search(file, 5)
                .is_ok_and(|answer| !answer.results.is_empty())
        };
        assert!(read(), "the primary does not find {file:?}");
        let started = Instant::now();
        match fault {
            Fault::Kill => fleet.kill(pair.primary),
            Fault::Freeze => {
                fleet.signal(pair.primary, "STOP");
                assert!(
                    fleet.proc(pair.primary).wait_stopped(DEADLINE),
                    "still running"
                );
            }
        }
        while !read() {
            errors += 1;
            assert!(
                started.elapsed() < DEADLINE,
                "no read succeeded after the fault"
            );
        }
        lat.push(started.elapsed());
        assert_eq!(client.current(), pair.surl, "the read came from the shadow");
    }
    let (key, name) = match fault {
        Fault::Kill => (
            "failover_kill",
            "failover recovery, primary killed (SIGKILL)",
        ),
        Fault::Freeze => (
            "failover_freeze",
            "failover recovery, primary frozen (SIGSTOP)",
        ),
    };
    Metric {
        key,
        name: name.into(),
        seed_ms: matches!(fault, Fault::Kill).then_some(9.59),
        lat,
        errors,
    }
}

/// Real `nap-peer` processes (three, R = 2): per trial a new file of `--convergence-size`
/// random bytes is renamed into one peer's folder; then the index's `GET /file` and the other
/// peers' folders are polled until R copies with the right SHA-256 are on disk. Three
/// metrics: file appears → index lists it (the peer's rescan: its `--rescan-interval` is
/// 50 ms here, 10 s by default), index lists it → R verified copies on disk, and the total.
fn convergence(settings: &Settings, index_bin: &Path, peer_bin: &Path) -> Vec<Metric> {
    const PEERS: usize = 3;
    const R: usize = 2;
    let mut fleet = Fleet::new("nap-bench-convergence-");
    let pair = support::start_pair(&mut fleet, index_bin, &settings.index_flags());
    let urls = format!("{},{}", pair.purl, pair.surl);
    let dirs: Vec<PathBuf> = (0..PEERS)
        .map(|n| fleet.root().join(format!("peer-{n}")))
        .collect();
    let staging = fleet.root().join("staging");
    for dir in dirs.iter().chain([&staging]) {
        fs::create_dir_all(dir).expect("a peer folder");
    }
    for (n, dir) in dirs.iter().enumerate() {
        let mut command = Command::new(peer_bin);
        command
            .args(["serve", "--daemon", "--listen", "127.0.0.1:0"])
            .arg("--dir")
            .arg(dir)
            .args(["--index", &urls, "--rescan-interval", "0.05"]);
        fleet.start(&format!("peer-{n}"), &mut command);
    }
    let client = IndexClient::new(vec![pair.purl.clone()], settings.timeout);
    poll("the peers to register", || {
        client.status().ok().filter(|s| s.peers == PEERS)
    });

    let size = settings.convergence_bytes;
    let mut rng = Rng::new(42);
    let (mut learn, mut copy, mut total) = (Lat::default(), Lat::default(), Lat::default());
    let mut errors = 0;
    for trial in 0..settings.samples {
        let name = format!("convergence {trial:03}.bin");
        let content = rng.bytes(size);
        let sha = nap::hashing::sha256_of(&content[..]).expect("hashing memory");
        let source = trial % PEERS;
        fs::write(staging.join(&name), &content).expect("a staged file");

        let appeared = Instant::now();
        fs::rename(staging.join(&name), dirs[source].join(&name)).expect("the new file");
        let mut listed = None;
        let mut verified = [false; PEERS];
        verified[source] = true;
        let done = loop {
            let now = Instant::now();
            if listed.is_none()
                && client
                    .file_info(&name)
                    .is_ok_and(|info| !info.holders.is_empty())
            {
                listed = Some(now);
            }
            for (n, dir) in dirs.iter().enumerate() {
                if verified[n] {
                    continue;
                }
                let path = dir.join(&name);
                // The peer installs a copy by renaming it into place: present means complete.
                if fs::metadata(&path).is_ok_and(|m| m.len() == size as u64) {
                    let on_disk = fs::File::open(&path).and_then(nap::hashing::sha256_of);
                    if on_disk.is_ok_and(|s| s == sha) {
                        verified[n] = true;
                    } else {
                        errors += 1;
                        eprintln!("  a copy of {name} in peer-{n} does not match its hash");
                    }
                }
            }
            if verified.iter().filter(|v| **v).count() >= R {
                break Instant::now();
            }
            assert!(
                appeared.elapsed() < DEADLINE,
                "{name}: no {R} verified copies"
            );
            std::thread::sleep(Duration::from_micros(200));
        };
        let listed = listed.unwrap_or(done);
        learn.push(listed - appeared);
        copy.push(done - listed);
        total.push(done - appeared);
        // The index settles the copy (its announce) before the next trial starts.
        poll("the index to list R holders", || {
            client
                .file_info(&name)
                .ok()
                .filter(|info| info.holders.len() >= R)
        });
    }
    let mib = size as f64 / (1 << 20) as f64;
    vec![
        Metric {
            key: "convergence",
            name: format!(
                "replication convergence: index lists it → R=2 verified copies ({mib} MiB)"
            ),
            seed_ms: Some(14.53),
            lat: copy,
            errors,
        },
        Metric {
            key: "convergence_total",
            name: format!(
                "replication convergence: file appears → R=2 verified copies ({mib} MiB)"
            ),
            seed_ms: None,
            lat: total,
            errors: 0,
        },
        Metric {
            key: "convergence_scan",
            name: "file appears → index lists it (rescan every 50 ms)".into(),
            seed_ms: None,
            lat: learn,
            errors: 0,
        },
    ]
}

/// Polls `check` every millisecond until it gives a value, or panics after `DEADLINE`.
fn poll<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    support::poll(what, Duration::from_millis(1), DEADLINE, check)
}
