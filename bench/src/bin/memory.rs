//! What a file name costs `nap-index` in memory, and whether the memory comes back.
//!
//!     cargo run --release -p nap-bench --bin memory -- [--names 400000] [--batch 20000]
//!         [--retention 2] [--baseline PATH]
//!
//! One peer registers `--names` distinct names (one register, then heartbeats adding
//! `--batch` names each, as a peer with a big folder reports it) to a `nap-index` with a data
//! directory, then leaves (unregister). The index's resident memory (RSS, and its peak) is
//! read from /proc after start, after the registration, after the leave, after the leave and
//! the retention period (histories of names nobody holds are forgotten), and after a restart
//! on the same data directory (SIGTERM, start again: snapshot plus journal replay).
//!
//! It runs this branch's binary twice, with its per-peer limits raised to `--names` (the same
//! work as the older build is given) and with its default limits (one peer holds at most
//! `--max-files-per-peer` names); and with `--baseline`, an older `nap-index` (built from
//! another commit) first, given no new flag: it keeps every history, so its "retention" row is
//! taken after the same wait. Linux only (/proc).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use argh::FromArgs;
use nap::protocol::FileMeta;
use nap_bench::support::{self, memory_kib, post_json, DEADLINE};
use nap_harness::{get_json, IndexProc};
use serde_json::{json, Value};

/// RSS of nap-index holding many names, after they leave, and after a restart.
#[derive(FromArgs)]
struct Args {
    /// distinct names one peer registers (default 400000)
    #[argh(option, default = "400_000")]
    names: usize,
    /// names per request (default 20000: about 2.6 MB of JSON, under --max-body)
    #[argh(option, default = "20_000")]
    batch: usize,
    /// seconds of --history-retention given to this branch's index (default 2)
    #[argh(option, default = "2.0")]
    retention: f64,
    /// an older nap-index binary to measure first, the same way (without the new flags)
    #[argh(option)]
    baseline: Option<PathBuf>,
}

/// The RSS figures of one run, in KiB.
#[derive(Default)]
struct Run {
    label: String,
    held: u64,
    start: u64,
    registered: u64,
    peak: u64,
    left: u64,
    forgotten: u64,
    restarted: u64,
    restart_peak: u64,
    register_secs: f64,
    restart_secs: f64,
}

/// A name like a music collection's: a few tokens shared by many names and one of its own.
fn name(i: usize) -> String {
    format!("Artist {:04} - Track {i:07}.mp3", i % 5_000)
}

fn file(i: usize) -> FileMeta {
    support::first_version(&name(i))
}

/// RSS once it stops moving (the index may still be freeing or trimming): two readings a
/// quarter second apart within 1 MiB, or whatever it is after 10 s.
fn settled_rss(pid: u32) -> u64 {
    let started = Instant::now();
    let mut last = memory_kib(pid).map_or(0, |m| m.0);
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let now = memory_kib(pid).map_or(0, |m| m.0);
        if now.abs_diff(last) < 1024 || started.elapsed() > Duration::from_secs(10) {
            return now;
        }
        last = now;
    }
}

fn start(bin: &Path, dir: &Path, flags: &[String]) -> IndexProc {
    let mut args = vec!["--data-dir".to_string(), dir.display().to_string()];
    args.extend_from_slice(flags);
    let mut index = nap_harness::start_index(bin, "index", "127.0.0.1:0", &args, &[]);
    index.wait_ready("primary");
    index
}

fn status(url: &str) -> Value {
    get_json(&format!("{url}/status")).unwrap_or(Value::Null)
}

/// One run: register, leave, wait out the retention, restart; RSS after each.
fn measure(label: &str, bin: &Path, flags: &[String], args: &Args) -> Run {
    let dir = tempfile::tempdir().expect("a temporary data directory");
    let mut run = Run {
        label: label.to_string(),
        ..Run::default()
    };
    let index = start(bin, dir.path(), flags);
    let pid = index.proc.pid();
    run.start = settled_rss(pid);
    let url = index.url.clone();
    let began = Instant::now();
    let first: Vec<FileMeta> = (0..args.batch.min(args.names)).map(file).collect();
    let registered: Value = post_json(
        &format!("{url}/register"),
        &json!({"addr": "127.0.0.1:9999", "files": first}),
    )
    .expect("the register is answered");
    let (peer_id, token) = (registered["peer_id"].clone(), registered["token"].clone());
    let mut at = args.batch;
    while at < args.names {
        let added: Vec<FileMeta> = (at..(at + args.batch).min(args.names)).map(file).collect();
        let answer: Value = post_json(
            &format!("{url}/heartbeat"),
            &json!({"peer_id": peer_id, "token": token, "added": added}),
        )
        .expect("a heartbeat is answered");
        // Past its limits the index refuses names one by one; the peer goes on regardless.
        drop(answer);
        at += args.batch;
    }
    run.register_secs = began.elapsed().as_secs_f64();
    run.held = status(&url)["files"].as_u64().unwrap_or(0);
    run.registered = settled_rss(pid);
    run.peak = memory_kib(pid).map_or(0, |m| m.1);
    let _: Value = post_json(
        &format!("{url}/unregister"),
        &json!({"peer_id": peer_id, "token": token}),
    )
    .expect("the unregister is answered");
    run.left = settled_rss(pid);
    // This branch's index reports its histories and forgets them after the retention; an
    // older one has no such count and is given the same time.
    let wait = Duration::from_secs_f64(args.retention) + Duration::from_secs(1);
    if status(&url).get("histories").is_some() {
        support::poll(
            "the histories are forgotten",
            Duration::from_millis(100),
            DEADLINE,
            || (status(&url)["histories"].as_u64() == Some(0)).then_some(()),
        );
    } else {
        std::thread::sleep(wait);
    }
    run.forgotten = settled_rss(pid);
    index.proc.signal("TERM");
    let mut proc = index.proc;
    assert!(proc.wait_exit().success(), "the index stopped cleanly");
    let began = Instant::now();
    let again = start(bin, dir.path(), flags);
    run.restart_secs = began.elapsed().as_secs_f64();
    let pid = again.proc.pid();
    run.restarted = settled_rss(pid);
    run.restart_peak = memory_kib(pid).map_or(0, |m| m.1);
    run
}

fn mb(kib: u64) -> String {
    format!("{:.0}", kib as f64 / 1024.0)
}

fn row(r: &Run) -> String {
    let per_name = (r.registered.saturating_sub(r.start) * 1024)
        .checked_div(r.held)
        .unwrap_or(0);
    format!(
        "| {} | {} | {} MB | {} MB ({}) | {} B | {} MB | {} MB | {} MB ({}) | {:.1} | {:.2} |",
        r.label,
        r.held,
        mb(r.start),
        mb(r.registered),
        mb(r.peak),
        per_name,
        mb(r.left),
        mb(r.forgotten),
        mb(r.restarted),
        mb(r.restart_peak),
        r.register_secs,
        r.restart_secs,
    )
}

fn main() {
    let args: Args = argh::from_env();
    let current = support::binary("nap-index", "memory");
    let names = args.names.to_string();
    let retention = args.retention.to_string();
    println!(
        "one peer registers {} names ({} per request), leaves; retention {} s",
        args.names, args.batch, args.retention
    );
    println!(
        "| build | names held | RSS start | RSS registered (peak) | per name | after leave | \
         after leave + retention | after restart (peak) | register s | restart s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    if let Some(old) = &args.baseline {
        println!("{}", row(&measure("baseline", old, &[], &args)));
    }
    let raised: Vec<String> = [
        "--max-files-per-peer",
        &names,
        "--new-names-burst",
        &names,
        "--history-retention",
        &retention,
    ]
    .map(String::from)
    .to_vec();
    let run = measure("this branch, limits raised", &current, &raised, &args);
    println!("{}", row(&run));
    let defaults: Vec<String> = ["--history-retention", &retention]
        .map(String::from)
        .to_vec();
    let run = measure("this branch, default limits", &current, &defaults, &args);
    println!("{}", row(&run));
}
