//! What the connection limit costs and does, measured on a real `nap-index`.
//!
//!     cargo run --release -p nap-bench --bin connections -- [--open 0,1000,4000] [--seconds 10]
//!
//! For each count N: a fresh index (in memory, `--idle-timeout 600`, `--max-connections`
//! above N) gets N connections from this process that send nothing. Once the index counts
//! them all (`nap_connections_open`), the CPU time of its warden thread ("conn-warden") and
//! of the whole process are sampled from /proc over `--seconds`: the cost of watching N open
//! connections. Then a fresh index with `--max-connections N/2` gets N such connections: the
//! time from the last one opened until the index has closed the excess.
//! Linux only (the warden reads /proc/self/fd).

use std::io::Read;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use argh::FromArgs;
use nap_bench::support::{self, Fleet, List, ProcId, DEADLINE, SECRET};

/// Cost of the warden with N idle connections open.
#[derive(FromArgs)]
struct Args {
    /// idle connection counts, comma-separated (default 0,1000,4000)
    #[argh(option)]
    open: Option<List<usize>>,
    /// seconds of CPU sampling per count (default 10)
    #[argh(option, default = "10.0")]
    seconds: f64,
}

/// CPU seconds (user + system) of a /proc `stat` file.
fn cpu_seconds(stat: &str) -> Option<f64> {
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// CPU seconds of process `pid` and of its thread named `thread`.
fn cpu(pid: u32, thread: &str) -> (f64, f64) {
    let process = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| cpu_seconds(&s))
        .unwrap_or(0.0);
    let mut warden = 0.0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim() == thread {
                warden += std::fs::read_to_string(task.path().join("stat"))
                    .ok()
                    .and_then(|s| cpu_seconds(&s))
                    .unwrap_or(0.0);
            }
        }
    }
    (process, warden)
}

fn metric(url: &str, name: &str) -> Option<f64> {
    let text = nap_harness::api_agent()
        .get(&format!("{url}/metrics"))
        .call()
        .ok()?
        .into_body()
        .read_to_string()
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn start(fleet: &mut Fleet, bin: &Path, max: usize) -> (ProcId, String) {
    let flags = [
        "--cluster-secret",
        SECRET,
        "--in-memory",
        "--idle-timeout",
        "600",
        "--max-connections",
        &max.to_string(),
    ];
    let mut index = nap_harness::start_index(bin, "index", "127.0.0.1:0", &flags, &[]);
    index.wait_ready("primary");
    let url = index.url.clone();
    (fleet.adopt(index.proc), url)
}

fn open(url: &str, n: usize) -> Vec<TcpStream> {
    let addr = url.trim_start_matches("http://");
    (0..n)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect()
}

fn poll<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    support::poll(what, Duration::from_millis(5), DEADLINE, check)
}

fn main() {
    let args: Args = argh::from_env();
    let counts = args.open.map_or(vec![0, 1000, 4000], |l| l.0);
    let bin = support::binary("nap-index", "connections");
    // This process holds the connections too.
    let room = nap::net::connections::fitting(usize::MAX);
    println!(
        "| idle connections | warden CPU | index CPU | shed N/2 (from last connect to all closed) |"
    );
    println!("|---:|---:|---:|---:|");
    for n in counts {
        assert!(
            n < room,
            "{n} connections do not fit in this process's open-file limit"
        );
        let mut fleet = Fleet::new("nap-connections-");
        let (id, url) = start(&mut fleet, &bin, n + 64);
        let held = open(&url, n);
        poll("the index counts every connection", || {
            (metric(&url, "nap_connections_open")? >= n as f64).then_some(())
        });
        let pid = fleet.pid(id);
        let (p0, w0) = cpu(pid, "conn-warden");
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(args.seconds));
        let (p1, w1) = cpu(pid, "conn-warden");
        let wall = t0.elapsed().as_secs_f64();
        drop(held);
        fleet.kill(id);

        // Shedding: half of them are past the limit.
        let shed = if n >= 2 {
            let (_id, url) = start(&mut fleet, &bin, n / 2);
            let held = open(&url, n);
            let opened = Instant::now();
            poll("the index sheds the excess", || {
                let closed = held
                    .iter()
                    .filter(|s| {
                        let _ = s.set_nonblocking(true);
                        match (&**s).read(&mut [0u8; 1]) {
                            Ok(n) => n == 0,
                            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                        }
                    })
                    .count();
                (closed >= n - n / 2).then_some(())
            });
            format!("{:.0} ms", opened.elapsed().as_secs_f64() * 1000.0)
        } else {
            "-".into()
        };
        println!(
            "| {n} | {:.2}% of a core | {:.2}% of a core | {shed} |",
            100.0 * (w1 - w0) / wall,
            100.0 * (p1 - p0) / wall
        );
    }
}
