//! Search at scale: what a keyword search costs against an exact-name one, and what searches
//! cost the writers.
//!
//!     cargo run --release -p nap-bench --bin search_bench -- [--files 100000,1000000]
//!         [--files-per-peer 1000] [--clients 8] [--seconds 5] [--workers 4]
//!         [--old-index PATH] [--only state|http]
//!
//! The files are "KIND NNN of peer P side S.mp3", `--files-per-peer` per peer (NNN counts
//! them): KIND is `track` for even NNN and `demo` for odd ones, S is `a` for the first half of
//! a peer's files and `b` for the rest. Every file has `mp3`, `of`, `peer` and `side`; half
//! have `track` and half `demo` (never both), half `a` and half `b`; `NNN` is one per peer.
//!
//! **State** (this build only): the index state in this process, filled by applying one
//! register op per peer, then each kind of query alone in a loop. A search holds the state's
//! read lock for about this long (plus turning its results into JSON, outside the lock), and
//! a write waits for the searches in flight. Then the time to rebuild the search index from
//! a snapshot (`IndexState::restore`).
//!
//! **HTTP**: for each `nap-index` binary, this build's and with `--old-index` another one
//! (e.g. built from an older commit), and for each file count: the binary started in memory,
//! the files registered over HTTP, then, each for `--seconds`: exact-name searches (a random
//! held name each) and broad keyword searches (`mp3`: every file), each from `--clients`
//! threads with nap's `Connection: close`; one client registering a new peer with 20 files,
//! back to back, alone; and the same while the clients run broad searches. Every figure is
//! measured here; nothing is asserted.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use argh::FromArgs;
use nap::index::state::{hash_token, IndexState, Op, Register};
use nap::protocol::{self, FileMeta, RegisterRequest, SearchResponse};
use nap_bench::support::{self, List, Rng};

/// Search benchmark.
#[derive(FromArgs)]
struct Args {
    /// file counts to measure, comma-separated
    #[argh(option, default = "List(vec![100_000, 1_000_000])")]
    files: List<usize>,
    /// files each registered peer holds
    #[argh(option, default = "1000")]
    files_per_peer: usize,
    /// concurrent search clients
    #[argh(option, default = "8")]
    clients: usize,
    /// seconds per HTTP measurement
    #[argh(option, default = "5.0")]
    seconds: f64,
    /// index worker threads
    #[argh(option, default = "4")]
    workers: usize,
    /// another nap-index binary to measure the same way, side by side
    #[argh(option)]
    old_index: Option<PathBuf>,
    /// measure only "state" (in this process) or "http" (index binaries)
    #[argh(option)]
    only: Option<Part>,
}

#[derive(Clone, Copy, PartialEq)]
enum Part {
    State,
    Http,
}

impl FromStr for Part {
    type Err = String;

    fn from_str(s: &str) -> Result<Part, String> {
        support::choose("part", s, &[("state", Part::State), ("http", Part::Http)])
    }
}

fn file_name(peer: usize, file: usize, per_peer: usize) -> String {
    let kind = if file.is_multiple_of(2) {
        "track"
    } else {
        "demo"
    };
    let side = if file < per_peer / 2 { "a" } else { "b" };
    format!("{kind} {file:03} of peer {peer} side {side}.mp3")
}

fn file_meta(name: String, n: usize) -> FileMeta {
    FileMeta {
        sha256: support::sha_hex(&name),
        name,
        version: 1,
        size: 1000 + n as u64,
    }
}

fn peer_files(peer: usize, per_peer: usize) -> Vec<FileMeta> {
    (0..per_peer)
        .map(|f| file_meta(file_name(peer, f, per_peer), f))
        .collect()
}

fn main() {
    let args: Args = argh::from_env();
    nap::init_logging(log::LevelFilter::Warn);
    println!(
        "search_bench: files {:?}, {} per peer, {} clients, {} s per row, {} index workers, cpus: {}",
        args.files.0,
        args.files_per_peer,
        args.clients,
        args.seconds,
        args.workers,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if args.only != Some(Part::Http) {
        for &files in &args.files.0 {
            state_rows(&args, files);
        }
    }
    if args.only != Some(Part::State) {
        let mut builds = vec![(
            "this build".to_string(),
            support::binary("nap-index", "search_bench"),
        )];
        if let Some(old) = &args.old_index {
            builds.push(("old".to_string(), old.clone()));
        }
        http_rows(&args, &builds);
    }
}

// ---------------------------------------------------------------------------------------
// State

/// Times `search` over and over for about `for_` (at least `min` times): per-call µs, sorted.
fn time_calls(for_: Duration, min: usize, mut search: impl FnMut(usize)) -> Vec<f64> {
    let mut times = Vec::new();
    let start = Instant::now();
    let mut i = 0;
    while i < min || start.elapsed() < for_ {
        let t = Instant::now();
        search(i);
        times.push(t.elapsed().as_secs_f64() * 1e6);
        i += 1;
    }
    times.sort_by(f64::total_cmp);
    times
}

fn state_rows(args: &Args, files: usize) {
    let per_peer = args.files_per_peer.max(1);
    let peers = files.div_ceil(per_peer);
    let mut state = IndexState::with_capacity(peers, files);
    let mut apply_us = Vec::with_capacity(peers);
    let t = Instant::now();
    for p in 0..peers {
        let op = Op::Register(Register {
            peer_id: format!("peer{p}"),
            token_hash: hash_token(&format!("token{p}")),
            addr: format!("127.0.0.1:{}", 10_000 + p % 50_000),
            files: peer_files(p, per_peer),
            limits: nap::index::state::Limits::NONE,
        });
        let t = Instant::now();
        state.apply(op, 0).expect("register applies");
        apply_us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let built = t.elapsed();
    apply_us.sort_by(f64::total_cmp);
    println!(
        "\n### State: {} files ({peers} peers x {per_peer}), in this process\n",
        state.held_file_count()
    );
    println!(
        "built by {peers} register ops in {:.2} s; one register of {per_peer} new files: mean {:.1} ms, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        built.as_secs_f64(),
        apply_us.iter().sum::<f64>() / apply_us.len().max(1) as f64 / 1000.0,
        support::pct(&apply_us, 0.5) / 1000.0,
        support::pct(&apply_us, 0.99) / 1000.0,
        apply_us.last().copied().unwrap_or(0.0) / 1000.0
    );
    println!();
    println!("| query | what it is | matches | listed | µs mean | µs p99 | µs max |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    let mut rng = Rng::new(7);
    let exact_names: Vec<String> = (0..1000)
        .map(|_| file_name(rng.below(peers), rng.below(per_peer), per_peer))
        .collect();
    let exact = |i: usize| exact_names[i % exact_names.len()].clone();
    let rows: Vec<(String, &str)> = vec![
        (exact(0), "exact name (a random one each call)"),
        ("mp3".into(), "one token, every file"),
        ("peer mp3".into(), "two tokens, every file"),
        ("track".into(), "one token, half the files"),
        ("042".into(), "one token, one file per peer"),
        ("042 mp3".into(), "a small token and a broad one"),
        (
            "track demo".into(),
            "two tokens of half the files each, no match",
        ),
        (
            "side b track".into(),
            "the worst case: the driver `b` (half the files) ranks its `demo` files before \
             all the matches, so the walk runs out of budget and the matches are taken from \
             the bitmaps",
        ),
        ("nothing".into(), "an unknown token"),
    ];
    let for_ = Duration::from_millis(500);
    for (n, (query, what)) in rows.iter().enumerate() {
        let found: SearchResponse = state.search_counted(query, 50);
        let times = time_calls(for_, 20, |i| {
            let q = if n == 0 { exact(i) } else { query.clone() };
            std::hint::black_box(state.search_counted(&q, 50));
        });
        let total = if found.total_exact {
            found.total.to_string()
        } else {
            format!("at least {}", found.total)
        };
        let shown = if n == 0 { "(random)" } else { query.as_str() };
        println!(
            "| `{shown}` | {what} | {total} | {} | {:.1} | {:.1} | {:.1} |",
            found.results.len(),
            times.iter().sum::<f64>() / times.len() as f64,
            support::pct(&times, 0.99),
            times.last().copied().unwrap_or(0.0)
        );
    }
    let snapshot = state.snapshot();
    drop(state);
    let t = Instant::now();
    let restored = IndexState::restore(snapshot);
    println!(
        "\nrestore from a snapshot (maps and search index rebuilt): {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    drop(restored);
    println!("freeing the state: {:.2} s", t.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------
// HTTP

/// A client agent with nap's one request per connection and timeouts long enough for an old
/// index's slowest searches (seconds each, queued behind each other).
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_idle_connections(0)
        .timeout_connect(Some(Duration::from_secs(5)))
        .timeout_send_request(Some(Duration::from_secs(60)))
        .timeout_recv_response(Some(Duration::from_secs(300)))
        .timeout_recv_body(Some(Duration::from_secs(300)))
        .build()
        .into()
}

fn get(agent: &ureq::Agent, url: &str) -> Result<Vec<u8>, String> {
    let response = agent
        .get(url)
        .header("Connection", "close")
        .call()
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()
        .map_err(|e| e.to_string())?;
    if status == 200 {
        Ok(body)
    } else {
        Err(format!("status {status}"))
    }
}

fn register(
    agent: &ureq::Agent,
    url: &str,
    addr: String,
    files: Vec<FileMeta>,
) -> Result<(), String> {
    let rq = RegisterRequest {
        addr,
        files,
        peer_id: None,
        token: None,
    };
    let response = agent
        .post(&format!("{url}{}", protocol::PATH_REGISTER))
        .header("Connection", "close")
        .send_json(&rq)
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let _ = response.into_body().read_to_vec();
    if status == 200 {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

/// What a group of client threads saw: calls finished, errors, latencies (ms, sorted), and
/// the wall time from start until the last call finished.
struct Sample {
    calls: usize,
    errors: usize,
    latencies: Vec<f64>,
    elapsed: Duration,
    first_error: Option<String>,
}

impl Sample {
    fn row(&self, build: &str, files: usize, what: &str, clients: usize) {
        println!(
            "| {build} | {files} | {what} | {clients} | {:.1} | {:.2} | {:.2} | {:.1} | {} |",
            self.calls as f64 / self.elapsed.as_secs_f64(),
            support::pct(&self.latencies, 0.5),
            support::pct(&self.latencies, 0.99),
            self.latencies.last().copied().unwrap_or(0.0),
            self.errors
        );
    }
}

/// Runs `call(client, i)` back to back in `clients` threads for `for_` (a call under way at
/// the end finishes and counts).
fn run_clients(
    clients: usize,
    for_: Duration,
    call: impl Fn(&ureq::Agent, usize, usize) -> Result<(), String> + Sync,
) -> Sample {
    let start = Instant::now();
    let results: Vec<(usize, Vec<f64>, Option<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let call = &call;
                s.spawn(move || {
                    let agent = agent();
                    let mut latencies = Vec::new();
                    let mut errors = 0;
                    let mut first = None;
                    let mut i = 0;
                    while start.elapsed() < for_ {
                        let t = Instant::now();
                        if let Err(e) = call(&agent, c, i) {
                            errors += 1;
                            first.get_or_insert(e);
                        }
                        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                        i += 1;
                    }
                    (errors, latencies, first)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let elapsed = start.elapsed();
    let mut sample = Sample {
        calls: 0,
        errors: 0,
        latencies: Vec::new(),
        elapsed,
        first_error: None,
    };
    for (errors, latencies, first) in results {
        sample.calls += latencies.len();
        sample.errors += errors;
        sample.latencies.extend(latencies);
        if sample.first_error.is_none() {
            sample.first_error = first;
        }
    }
    sample.latencies.sort_by(f64::total_cmp);
    sample
}

fn http_rows(args: &Args, builds: &[(String, PathBuf)]) {
    let for_ = Duration::from_secs_f64(args.seconds);
    let per_peer = args.files_per_peer.max(1);
    println!("\n### HTTP: nap-index binaries, searches and registers over loopback\n");
    for (build, bin) in builds {
        println!("{build}: {}", bin.display());
    }
    println!();
    println!("| index | files | operation | clients | ops/s | p50 ms | p99 ms | max ms | errors |");
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|");
    let mut notes = Vec::new();
    for &files in &args.files.0 {
        for (build, bin) in builds {
            let peers = files.div_ceil(per_peer);
            let workers = args.workers.to_string();
            let index = nap_harness::start_index(
                bin,
                "nap-index",
                "127.0.0.1:0",
                &[
                    "--in-memory",
                    "--replication-factor",
                    "1",
                    "--peer-timeout",
                    "36000",
                    "--heartbeat-interval",
                    "3600",
                    "--workers",
                    &workers,
                ],
                &[("RUST_LOG", "warn")],
            );
            let url = index.url.clone();
            let t = Instant::now();
            let loaders = 4;
            std::thread::scope(|s| {
                for c in 0..loaders {
                    let url = &url;
                    s.spawn(move || {
                        let agent = agent();
                        for p in (c..peers).step_by(loaders) {
                            let addr = format!("127.0.0.1:{}", 10_000 + p % 50_000);
                            register(&agent, url, addr, peer_files(p, per_peer))
                                .unwrap_or_else(|e| panic!("register peer {p}: {e}"));
                        }
                    });
                }
            });
            let loaded = t.elapsed();
            let memory = support::memory_kib(index.proc.pid());
            let broad: SearchResponse = serde_json::from_slice(
                &get(&agent(), &format!("{url}/search?q=mp3&limit=50"))
                    .unwrap_or_else(|e| panic!("search: {e}")),
            )
            .unwrap_or_else(|e| panic!("search answer: {e}"));
            notes.push(format!(
                "{build}, {files} files: registered in {:.1} s ({peers} registers, {loaders} clients); index RSS {}; `mp3` answers {} results, total {} ({})",
                loaded.as_secs_f64(),
                memory.map_or("-".to_string(), |(rss, _)| format!("{} MiB", rss / 1024)),
                broad.results.len(),
                broad.total,
                if broad.total_exact { "exact" } else { "not given or a lower bound" },
            ));
            let exact_url = |rng: &mut Rng| {
                let name = file_name(rng.below(peers), rng.below(per_peer), per_peer);
                format!("{url}/search?q={}&limit=50", protocol::url_encode(&name))
            };
            let broad_url = format!("{url}/search?q=mp3&limit=50");
            let exact = run_clients(args.clients, for_, |agent, c, i| {
                let mut rng = Rng::new((c * 1_000_003 + i) as u64);
                get(agent, &exact_url(&mut rng)).map(|_| ())
            });
            exact.row(build, files, "search, exact name", args.clients);
            let keyword = run_clients(args.clients, for_, |agent, _, _| {
                get(agent, &broad_url).map(|_| ())
            });
            keyword.row(build, files, "search `mp3` (every file)", args.clients);
            notes.push(format!(
                "{build}, {files} files: broad keyword / exact-name throughput = {:.2}",
                (keyword.calls as f64 / keyword.elapsed.as_secs_f64())
                    / (exact.calls as f64 / exact.elapsed.as_secs_f64())
            ));
            // New peers with 20 new files each (names of their own, so each register adds
            // 20 names, as a peer joining does).
            let registers = std::sync::atomic::AtomicUsize::new(0);
            let register_call = |agent: &ureq::Agent| {
                let n = registers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let files = (0..20)
                    .map(|f| file_meta(format!("joiner {n} song {f:02}.mp3"), f))
                    .collect();
                register(
                    agent,
                    &url,
                    format!("127.0.0.2:{}", 10_000 + n % 50_000),
                    files,
                )
            };
            let alone = run_clients(1, for_, |agent, _, _| register_call(agent));
            alone.row(build, files, "register 20 files, alone", 1);
            let (during, searches) = std::thread::scope(|s| {
                let searches = s.spawn(|| {
                    run_clients(args.clients, for_, |agent, _, _| {
                        get(agent, &broad_url).map(|_| ())
                    })
                });
                // Let the searches start first, so that every register meets them.
                std::thread::sleep(Duration::from_millis(100));
                let during = run_clients(1, for_ - Duration::from_millis(200), |agent, _, _| {
                    register_call(agent)
                });
                (during, searches.join().expect("search clients"))
            });
            during.row(build, files, "register 20 files, during `mp3` searches", 1);
            searches.row(
                build,
                files,
                "search `mp3`, beside the register",
                args.clients,
            );
            for (what, sample) in [
                ("exact", &exact),
                ("keyword", &keyword),
                ("register alone", &alone),
                ("register during searches", &during),
                ("searches beside the register", &searches),
            ] {
                if let Some(e) = &sample.first_error {
                    notes.push(format!("{build}, {files} files, {what}: first error: {e}"));
                }
            }
            drop(index);
        }
    }
    println!();
    for note in notes {
        println!("- {note}");
    }
}
