//! The process harness the benchmark examples share: finding the nap binaries, running them
//! as a `Fleet` that never outlives the bench, and the numbers their tables print.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// `name` from target/<profile>/, where the example runs from examples/ below it; or exit 2
/// saying what to do, since `cargo run --example` builds the example, not the binaries.
pub fn binary(name: &str, example: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the path of this executable");
    let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(file));
    match bin {
        Some(bin) if bin.is_file() => bin,
        other => {
            eprintln!(
                "{example}: {name} not found (looked for {}).\n\
                 Build the binaries first: cargo build --release && \
                 cargo run --release --example {example}",
                other.map_or_else(
                    || format!("target/<profile>/{name}"),
                    |p| p.display().to_string()
                )
            );
            std::process::exit(2);
        }
    }
}

/// One child process, its stderr log, and whether it still runs or is frozen.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    alive: bool,
    stopped: bool,
}

/// A handle to one process of a `Fleet`.
#[derive(Clone, Copy)]
pub struct ProcId(usize);

/// Every process of one measurement, and the temporary folder holding their logs (and
/// whatever else the bench puts there). Dropping it, also while a panic unwinds, resumes the
/// frozen processes, kills every one still running and removes the folder, so nothing
/// outlives the bench; in a panic it shows the end of each log first.
pub struct Fleet {
    root: tempfile::TempDir,
    procs: Vec<Proc>,
}

impl Fleet {
    pub fn new(prefix: &str) -> Fleet {
        Fleet {
            root: tempfile::Builder::new()
                .prefix(prefix)
                .tempdir()
                .expect("a temporary directory"),
            procs: Vec::new(),
        }
    }

    /// The temporary folder, removed with the fleet.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Starts `command` as `name` with stdin closed and stderr in a log file (stdout is the
    /// caller's to set). The log is numbered, as a restarted process keeps its name.
    pub fn start(&mut self, name: &str, command: &mut Command) -> ProcId {
        let log = self.root().join(format!("{name}-{}.log", self.procs.len()));
        let child = command
            .stdin(Stdio::null())
            .stderr(File::create(&log).expect("a log file"))
            .spawn()
            .unwrap_or_else(|e| {
                let bin = Path::new(command.get_program());
                panic!("cannot start {}: {e}", bin.display())
            });
        self.procs.push(Proc {
            name: name.to_string(),
            child,
            log,
            alive: true,
            stopped: false,
        });
        ProcId(self.procs.len() - 1)
    }

    /// The child itself, for its pipes and its exit status.
    pub fn child(&mut self, id: ProcId) -> &mut Child {
        &mut self.procs[id.0].child
    }

    pub fn pid(&self, id: ProcId) -> u32 {
        self.procs[id.0].child.id()
    }

    /// What the process has written to stderr so far.
    pub fn log(&self, id: ProcId) -> String {
        fs::read_to_string(&self.procs[id.0].log).unwrap_or_default()
    }

    /// SIGKILL, as a crash: no clean-up in the process.
    pub fn kill(&mut self, id: ProcId) {
        let proc = &mut self.procs[id.0];
        let _ = proc.child.kill();
        let _ = proc.child.wait();
        proc.alive = false;
    }

    /// Sends signal `name` ("STOP", "CONT") through kill(1), as std sends no signal but
    /// SIGKILL; returns whether it was sent. A stopped process is resumed on drop.
    pub fn signal(&mut self, id: ProcId, name: &str) -> bool {
        let sent = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid(id).to_string())
            .status()
            .is_ok_and(|s| s.success());
        if sent {
            self.procs[id.0].stopped = name == "STOP";
        }
        sent
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for id in (0..self.procs.len()).map(ProcId) {
            if self.procs[id.0].stopped {
                self.signal(id, "CONT");
            }
            if self.procs[id.0].alive {
                self.kill(id);
            }
        }
        if std::thread::panicking() {
            for (n, proc) in self.procs.iter().enumerate() {
                let log = self.log(ProcId(n));
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                eprintln!("--- {} (last lines of its log) ---", proc.name);
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// Nearest-rank percentile of sorted values.
pub fn pct<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The percentiles `at` of `ds` in ms, joined by `sep` ("-" if there are none): with
/// `decimals` below `fine`, where a fraction of a ms still tells something, whole ms above.
pub fn spread(
    mut ds: Vec<Duration>,
    at: &[f64],
    sep: &str,
    fine: Duration,
    decimals: usize,
) -> String {
    if ds.is_empty() {
        return "-".into();
    }
    ds.sort_unstable();
    let show = |d: Duration| {
        if d < fine {
            format!("{:.*}", decimals, ms(d))
        } else {
            format!("{:.0}", ms(d))
        }
    };
    let cells: Vec<String> = at.iter().map(|p| show(pct(&ds, *p))).collect();
    cells.join(sep)
}
