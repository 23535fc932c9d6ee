//! Failover and replication lag of a primary/shadow pair, measured with real `nap-index`
//! processes on 127.0.0.1.
//!
//!     cargo run --release -p nap-bench --bin failover -- [--trials N]
//!         [--seconds S] [--writers W] [--index-timeout SECS] [--only failover|lag]
//!
//! Failover: a client searches back to back through nap's own failover client
//! (`IndexClient`, primary first, then the shadow, with nap-peer's 2 s index timeout). The
//! primary is then killed (SIGKILL) or frozen (SIGSTOP), and the time from the signal to the
//! first search answered by the shadow is the recovery time. Then the primary comes back
//! (restarted on its port, or SIGCONT) and `probe_primary`, called every 100 ms (nap-peer's
//! agent calls it once per heartbeat loop), measures how long the client takes to return to
//! it. Each trial uses a fresh pair.
//!
//! Lag: W writers publish new versions of their own files (lease + announce) as fast as they
//! can, while the primary's `/status` is sampled every 50 ms for the shadow's lag in ops, and
//! a probe publishes a version every 100 ms and times how long until the shadow's `GET /file`
//! shows it. After the writes stop, the shadow must converge: equal seq, epoch and digest.
//!
//! The binaries are taken from beside this program (target/<profile>/); run through cargo,
//! it builds them first.

use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use argh::FromArgs;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use nap::peer::client::IndexClient;
use nap::protocol::{
    self, AnnounceRequest, AnnounceResponse, FileInfoResponse, FileMeta, LeaseRequest,
    LeaseResponse, RegisterRequest, RegisterResponse, StatusResponse,
};
use nap_bench::support::{
    self, first_version, get_json, ms, pct, post_json, sha_hex, start_pair, start_primary, Fleet,
    Pair, DEADLINE,
};

/// Failover recovery time and shadow lag of a nap-index primary/shadow pair.
#[derive(FromArgs)]
struct Args {
    /// trials per failover scenario, each with a fresh primary/shadow pair
    #[argh(option, default = "5")]
    trials: usize,
    /// seconds of writes in the lag measurement
    #[argh(option, default = "10.0")]
    seconds: f64,
    /// writer threads in the lag measurement
    #[argh(option, default = "8")]
    writers: usize,
    /// the failover client's timeout per phase, in seconds (nap-peer's --index-timeout)
    #[argh(option, default = "2.0")]
    index_timeout: f64,
    /// measure only "failover" or "lag"
    #[argh(option)]
    only: Option<Part>,
}

#[derive(Clone, Copy, PartialEq)]
enum Part {
    Failover,
    Lag,
}

impl FromStr for Part {
    type Err = String;

    fn from_str(s: &str) -> Result<Part, String> {
        support::choose(
            "part",
            s,
            &[("failover", Part::Failover), ("lag", Part::Lag)],
        )
    }
}

/// Flags of every index here: no peer is pruned while a trial runs (they never heartbeat),
/// and the state stays in memory (a restarted primary recovers from its shadow; what is
/// measured is failover, not the disk).
fn common_args() -> Vec<String> {
    ["--peer-timeout", "3600", "--in-memory"]
        .map(String::from)
        .to_vec()
}

fn register(url: &str, port: u16, files: Vec<FileMeta>) -> RegisterResponse {
    let rq = RegisterRequest {
        addr: format!("127.0.0.1:{port}"),
        files,
        peer_id: None,
        token: None,
    };
    post_json(&format!("{url}{}", protocol::PATH_REGISTER), &rq).expect("register")
}

/// Publishes the next version of `file` as `peer`: a lease, then the announce that spends it.
/// Returns the version published.
fn publish(url: &str, peer: &RegisterResponse, file: &str, n: u64) -> Result<u64, String> {
    let lease: LeaseResponse = post_json(
        &format!("{url}{}", protocol::PATH_LEASE),
        &LeaseRequest {
            peer_id: peer.peer_id.clone(),
            token: peer.token.clone(),
            file: file.to_string(),
        },
    )?;
    let version = lease.version + 1;
    let _: AnnounceResponse = post_json(
        &format!("{url}{}", protocol::PATH_ANNOUNCE),
        &AnnounceRequest {
            peer_id: peer.peer_id.clone(),
            token: peer.token.clone(),
            file: file.to_string(),
            version,
            size: 64,
            sha256: sha_hex(&format!("{file}/{n}")),
            lease_id: Some(lease.lease_id),
        },
    )?;
    Ok(version)
}

fn status(url: &str) -> Result<StatusResponse, String> {
    get_json(&format!("{url}{}?digest=1", protocol::PATH_STATUS))
}

/// Waits until the shadow holds the primary's state (same epoch, seq and digest); returns
/// the seq.
fn wait_converged(primary: &str, shadow: &str) -> u64 {
    let started = Instant::now();
    loop {
        if let (Ok(p), Ok(s)) = (status(primary), status(shadow)) {
            if (&p.epoch, p.seq, &p.digest) == (&s.epoch, s.seq, &s.digest) {
                return p.seq;
            }
        }
        assert!(started.elapsed() < DEADLINE, "the shadow did not converge");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until the shadow reports the primary's seq, with plain `/status` (the digest costs
/// a pass over the whole state, which would be timed too); returns how long it took.
fn wait_caught_up(primary: &str, shadow: &str) -> Duration {
    let started = Instant::now();
    let seq = |url: &str| get_json::<StatusResponse>(&format!("{url}{}", protocol::PATH_STATUS));
    loop {
        if let (Ok(p), Ok(s)) = (seq(primary), seq(shadow)) {
            if p.seq == s.seq {
                return started.elapsed();
            }
        }
        assert!(started.elapsed() < DEADLINE, "the shadow did not catch up");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn file_info(url: &str, name: &str) -> Result<FileInfoResponse, String> {
    get_json(&format!(
        "{url}{}?name={}",
        protocol::PATH_FILE,
        protocol::url_encode(name)
    ))
}

/// "min / median / max" of durations in ms, two decimals below 10 ms, where a failover
/// that only reconnects lands.
fn spread(ds: Vec<Duration>) -> String {
    support::spread(ds, &[0.0, 0.5, 1.0], " / ", Duration::from_millis(10), 2)
}

// ----- failover -------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    /// SIGKILL: the port refuses connections at once.
    Kill,
    /// SIGSTOP: the kernel still accepts connections, nobody answers.
    Freeze,
}

/// One search by the failover client, as the searching thread saw it.
struct Searched {
    done: Instant,
    took: Duration,
    ok: bool,
    on_shadow: bool,
    results: usize,
}

/// What one failover trial measured.
struct Trial {
    /// Signal to the first search answered by the shadow.
    recovery: Duration,
    /// The search that was running across the fault (the one that paid for it).
    slowest: Duration,
    searches: usize,
    failed: usize,
    /// Successful searches before the primary returned that found nothing: the shadow
    /// answering without the state it should have.
    empty: usize,
    /// Primary back (restart spawned, or SIGCONT) to `probe_primary` moving back.
    back: Option<Duration>,
    first_error: Option<String>,
}

/// Files the failover trials search for: 4 peers of 5 files each.
fn seed(url: &str) {
    for peer in 0..4u16 {
        let files = (0..5)
            .map(|f| first_version(&format!("song {peer}-{f}.mp3")))
            .collect();
        register(url, 9000 + peer, files);
    }
}

/// Searches back to back through `client` until `stop`, reporting every search.
fn search_loop(
    client: &IndexClient,
    shadow: &str,
    stop: &AtomicBool,
    events: crossbeam_channel::Sender<Event>,
) {
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let result = client.search("song", 50);
        let searched = Searched {
            done: Instant::now(),
            took: t.elapsed(),
            ok: result.is_ok(),
            on_shadow: client.current() == shadow,
            results: result.as_ref().map_or(0, |r| r.results.len()),
        };
        if events
            .send((searched, result.err().map(|e| e.to_string())))
            .is_err()
        {
            return;
        }
    }
}

/// What the searching thread reports: one search, and why it failed if it did.
type Event = (Searched, Option<String>);

/// The next search the searching thread reports.
fn next(events: &Receiver<Event>) -> Event {
    match events.recv_timeout(DEADLINE) {
        Ok(event) => event,
        Err(RecvTimeoutError::Timeout) => panic!("no search finished within {DEADLINE:?}"),
        Err(RecvTimeoutError::Disconnected) => panic!("the searching thread ended"),
    }
}

impl Trial {
    /// Adds one search to the counts. An empty answer counts while the data is on both
    /// servers, not after a killed primary came back empty.
    fn count(&mut self, (s, error): Event, counts_empty: bool) -> Searched {
        self.searches += 1;
        self.slowest = self.slowest.max(s.took);
        if !s.ok {
            self.failed += 1;
            self.first_error = self.first_error.take().or(error);
        } else if s.results == 0 && counts_empty {
            self.empty += 1;
        }
        s
    }
}

fn failover_trial(bin: &Path, fault: Fault, timeout: Duration) -> Trial {
    let mut fleet = Fleet::new("nap-failover-");
    let Pair {
        primary,
        pport,
        purl,
        surl,
        ..
    } = start_pair(&mut fleet, bin, &common_args());
    seed(&purl);
    wait_converged(&purl, &surl);

    let client = Arc::new(IndexClient::new(vec![purl.clone(), surl.clone()], timeout));
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, events) = crossbeam_channel::unbounded();
    let searcher = {
        let (client, stop, surl) = (client.clone(), stop.clone(), surl.clone());
        std::thread::spawn(move || search_loop(&client, &surl, &stop, tx))
    };
    let mut trial = Trial {
        recovery: Duration::ZERO,
        slowest: Duration::ZERO,
        searches: 0,
        failed: 0,
        empty: 0,
        back: None,
        first_error: None,
    };

    // Warm up on the primary, so the fault hits a client in its steady state.
    let warming = Instant::now();
    let mut on_primary = 0;
    while on_primary < 50 {
        let s = trial.count(next(&events), true);
        on_primary += usize::from(s.ok && !s.on_shadow);
        assert!(
            warming.elapsed() < DEADLINE,
            "no steady searches on the primary: {:?}",
            trial.first_error
        );
    }
    // T0 is taken as the signal is sent (for SIGSTOP that includes starting kill(1), about
    // a millisecond), so a search the primary still answered after T0 counts against it.
    let t0 = Instant::now();
    match fault {
        Fault::Kill => fleet.kill(primary),
        // A fault that was not delivered would be measured as none: the signal panics then.
        Fault::Freeze => fleet.signal(primary, "STOP"),
    }
    loop {
        let s = trial.count(next(&events), true);
        if s.ok && s.on_shadow && s.done > t0 {
            trial.recovery = s.done - t0;
            break;
        }
        assert!(
            t0.elapsed() < DEADLINE,
            "the shadow never answered: {:?}",
            trial.first_error
        );
    }
    // The client stays on the shadow: keep searching a little to see that it does.
    let settled = Instant::now();
    while settled.elapsed() < Duration::from_millis(300) {
        trial.count(next(&events), true);
    }

    // The primary returns; the client's agent-style probe brings it back.
    let back_from = Instant::now();
    match fault {
        Fault::Kill => {
            // It comes back empty (a new epoch): searches then find nothing, by design.
            start_primary(&mut fleet, bin, pport, &surl, &common_args());
        }
        Fault::Freeze => fleet.signal(primary, "CONT"),
    }
    while back_from.elapsed() < DEADLINE {
        if client.probe_primary() {
            trial.back = Some(back_from.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    searcher.join().expect("the searching thread");
    for event in events.try_iter() {
        let before_return = event.0.done < back_from;
        trial.count(event, before_return);
    }
    drop(fleet);
    trial
}

fn failover(bin: &Path, args: &Args) {
    let timeout = Duration::from_secs_f64(args.index_timeout);
    println!(
        "## failover: {} trials per scenario, IndexClient timeout {:?} (connect {:?})\n",
        args.trials,
        timeout,
        timeout / 4
    );
    println!(
        "| primary | recovery ms min / median / max | slowest search ms | searches | failed \
         | empty | back to primary ms min / median / max |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (fault, name) in [
        (Fault::Kill, "killed (SIGKILL)"),
        (Fault::Freeze, "frozen (SIGSTOP)"),
    ] {
        let trials: Vec<Trial> = (0..args.trials)
            .map(|_| failover_trial(bin, fault, timeout))
            .collect();
        let back: Vec<Duration> = trials.iter().filter_map(|t| t.back).collect();
        println!(
            "| {name} | {} | {:.0} | {} | {} | {} | {}{} |",
            spread(trials.iter().map(|t| t.recovery).collect()),
            ms(trials.iter().map(|t| t.slowest).max().unwrap_or_default()),
            trials.iter().map(|t| t.searches).sum::<usize>(),
            trials.iter().map(|t| t.failed).sum::<usize>(),
            trials.iter().map(|t| t.empty).sum::<usize>(),
            spread(back.clone()),
            if back.len() < trials.len() {
                format!(" ({} never)", trials.len() - back.len())
            } else {
                String::new()
            }
        );
        if let Some(e) = trials.iter().find_map(|t| t.first_error.as_ref()) {
            eprintln!("{name}: first failed search: {e}");
        }
        let each: Vec<String> = trials
            .iter()
            .map(|t| format!("{:.1}", ms(t.recovery)))
            .collect();
        eprintln!("{name}: recovery per trial (ms): {}", each.join(", "));
    }
    println!();
}

// ----- lag --------------------------------------------------------------------------------

/// What one writer thread did.
#[derive(Default)]
struct Writes {
    publishes: u64,
    errors: u64,
    first_error: Option<String>,
}

/// The file writer `n` publishes.
fn load_file(n: usize) -> String {
    format!("load {n:03}.txt")
}

const PROBE: &str = "probe";

/// Publishes `file` as fast as possible until `until`.
fn write_loop(url: &str, peer: &RegisterResponse, file: &str, until: Instant) -> Writes {
    let mut w = Writes::default();
    while Instant::now() < until {
        match publish(url, peer, file, w.publishes + w.errors) {
            Ok(_) => w.publishes += 1,
            Err(e) => {
                w.errors += 1;
                w.first_error.get_or_insert(e);
            }
        }
    }
    w
}

/// Samples the primary's view of the shadow's lag (ops) every 50 ms until `until`.
fn sample_lag(primary: &str, until: Instant) -> Vec<u64> {
    let url = format!("{primary}{}", protocol::PATH_STATUS);
    let mut lags = Vec::new();
    let mut next = Instant::now();
    while next < until {
        if let Ok(s) = get_json::<StatusResponse>(&url) {
            lags.extend(s.shadows.first().map(|sh| sh.lag));
        }
        next += Duration::from_millis(50);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    lags
}

/// What the visibility probe measured.
#[derive(Default)]
struct Probes {
    /// Announce answered on the primary to the version readable on the shadow.
    delays: Vec<Duration>,
    published: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Every 100 ms until `until`: publishes the next version of the probe file on the primary,
/// then reads the shadow's `GET /file` (every ms) until it shows that version.
fn probe_loop(primary: &str, shadow: &str, peer: &RegisterResponse, until: Instant) -> Probes {
    let mut p = Probes::default();
    let mut next = Instant::now();
    while next < until {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        next += Duration::from_millis(100);
        let version = match publish(primary, peer, PROBE, p.published) {
            Ok(v) => v,
            Err(e) => {
                p.errors += 1;
                p.first_error.get_or_insert(e);
                continue;
            }
        };
        p.published += 1;
        let committed = Instant::now();
        loop {
            let seen = file_info(shadow, PROBE)
                .ok()
                .and_then(|f| f.versions.last().map(|v| v.version));
            if seen.is_some_and(|v| v >= version) {
                p.delays.push(committed.elapsed());
                break;
            }
            if committed.elapsed() > DEADLINE {
                p.errors += 1;
                p.first_error
                    .get_or_insert(format!("v{version} not on the shadow in {DEADLINE:?}"));
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    p
}

fn lag(bin: &Path, args: &Args) {
    let mut fleet = Fleet::new("nap-failover-");
    let Pair { purl, surl, .. } = start_pair(&mut fleet, bin, &common_args());
    let writers: Vec<RegisterResponse> = (0..args.writers)
        .map(|n| register(&purl, 10_000 + n as u16, vec![first_version(&load_file(n))]))
        .collect();
    let prober = register(&purl, 9999, vec![first_version(PROBE)]);
    let seq_before = wait_converged(&purl, &surl);

    let for_ = Duration::from_secs_f64(args.seconds);
    let started = Instant::now();
    let until = started + for_;
    let (writes, lags, probes) = std::thread::scope(|s| {
        let handles: Vec<_> = writers
            .iter()
            .enumerate()
            .map(|(n, w)| {
                let purl = &purl;
                s.spawn(move || write_loop(purl, w, &load_file(n), until))
            })
            .collect();
        let sampler = s.spawn(|| sample_lag(&purl, until));
        let probe = s.spawn(|| probe_loop(&purl, &surl, &prober, until));
        let writes: Vec<Writes> = handles
            .into_iter()
            .map(|h| h.join().expect("writer thread"))
            .collect();
        (
            writes,
            sampler.join().expect("sampler thread"),
            probe.join().expect("probe thread"),
        )
    });
    let elapsed = started.elapsed();
    let caught_up = wait_caught_up(&purl, &surl);
    let seq_after = wait_converged(&purl, &surl);

    // Every publish the writers saw answered must be in the shadow's history.
    let mut mismatches = Vec::new();
    for (n, w) in writes.iter().enumerate() {
        let versions = file_info(&surl, &load_file(n)).map(|f| f.versions.len() as u64);
        if versions != Ok(1 + w.publishes) {
            mismatches.push(format!(
                "{}: {versions:?}, expected {}",
                load_file(n),
                1 + w.publishes
            ));
        }
    }
    let probe_versions = file_info(&surl, PROBE).map(|f| f.versions.len() as u64);
    if probe_versions != Ok(1 + probes.published) {
        mismatches.push(format!(
            "{PROBE}: {probe_versions:?}, expected {}",
            1 + probes.published
        ));
    }

    let publishes: u64 = writes.iter().map(|w| w.publishes).sum();
    let errors: u64 = writes.iter().map(|w| w.errors).sum::<u64>() + probes.errors;
    let secs = elapsed.as_secs_f64();
    let mut lags = lags;
    lags.sort_unstable();
    let mut delays = probes.delays.clone();
    delays.sort_unstable();
    println!(
        "## shadow lag: {} writers (lease + announce, own file each) for {:.1} s, \
         lag sampled every 50 ms, a probe publish every 100 ms\n",
        args.writers, secs
    );
    println!(
        "| publishes/s | ops/s | lag ops p50 / p99 / max | samples | visible on shadow ms \
         p50 / p99 / max | probes | errors | shadow at the primary's seq after writes stop |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {:.0} | {:.0} | {} / {} / {} | {} | {:.1} / {:.1} / {:.1} | {} | {errors} | {:.1} ms (seq {}, same digest) |",
        (publishes + probes.published) as f64 / secs,
        (seq_after - seq_before) as f64 / secs,
        pct(&lags, 0.5),
        pct(&lags, 0.99),
        lags.last().copied().unwrap_or(0),
        lags.len(),
        ms(pct(&delays, 0.5)),
        ms(pct(&delays, 0.99)),
        ms(delays.last().copied().unwrap_or_default()),
        delays.len(),
        ms(caught_up),
        seq_after,
    );
    println!();
    if let Some(e) = writes
        .iter()
        .find_map(|w| w.first_error.as_ref())
        .or(probes.first_error.as_ref())
    {
        eprintln!("first error: {e}");
    }
    if mismatches.is_empty() {
        println!(
            "shadow GET /file: every file has 1 + its publishes versions ({} files)",
            writes.len() + 1
        );
    } else {
        println!("shadow GET /file: MISMATCH: {}", mismatches.join("; "));
    }
    drop(fleet);
}

fn main() {
    let args: Args = argh::from_env();
    // The client's own "now in use" warnings are what is measured, not news.
    nap::init_logging(log::LevelFilter::Error);
    let bin = support::binary("nap-index", "failover");
    println!(
        "nap-index: {}; cpus: {}\n",
        bin.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if args.only != Some(Part::Lag) {
        failover(&bin, &args);
    }
    if args.only != Some(Part::Failover) {
        lag(&bin, &args);
    }
}
