//! What the benchmark programs share beyond the process harness they share with the tests
//! (`nap-harness`: processes, fleets, pairs, polls, HTTP): finding the nap binaries, built
//! fresh with the bench's own profile; the benches' primary/shadow pair; and the numbers
//! their tables print.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::Duration;

pub use nap_harness::{get_json, memory_kib, poll, post_json, Fleet, ProcId};

/// `name` (`nap-index` or `nap-peer`) from target/<profile>/, where the bench programs are
/// built too. Run by `cargo run` (which builds the bench and the nap library, not nap's
/// binaries), it first builds the binaries with the bench's own profile, so a bench never
/// measures stale ones; else it exits 2 saying what to do when they are missing. `bench`
/// names the program for its messages.
pub fn binary(name: &str, bench: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the path of this executable");
    let profile_dir = exe.parent();
    if let Some(dir) = profile_dir {
        build_binaries_once(dir, bench);
    }
    let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    let bin = profile_dir.map(|dir| dir.join(file));
    match bin {
        Some(bin) if bin.is_file() => bin,
        other => {
            eprintln!(
                "{bench}: {name} not found (looked for {}).\n\
                 Build the binaries first: cargo build --release && \
                 cargo run --release -p nap-bench --bin {bench}",
                other.map_or_else(
                    || format!("target/<profile>/{name}"),
                    |p| p.display().to_string()
                )
            );
            std::process::exit(2);
        }
    }
}

/// `cargo build -p nap --bins` with the profile of `profile_dir` (target/<profile>), once
/// per process, when cargo started this program (it sets `CARGO` and `CARGO_MANIFEST_DIR`,
/// here bench/, whose workspace holds nap).
fn build_binaries_once(profile_dir: &Path, bench: &str) {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let (Some(cargo), Some(manifest)) = (
            std::env::var_os("CARGO"),
            std::env::var_os("CARGO_MANIFEST_DIR"),
        ) else {
            return;
        };
        let mut command = Command::new(cargo);
        command
            .args(["build", "-p", "nap", "--bins", "--quiet", "--manifest-path"])
            .arg(Path::new(&manifest).join("Cargo.toml"));
        match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => {}
            Some("release") => {
                command.arg("--release");
            }
            Some(other) => {
                command.args(["--profile", other]);
            }
        }
        let built = command.status().is_ok_and(|s| s.success());
        if !built {
            eprintln!("{bench}: building the nap binaries failed (see above)");
            std::process::exit(2);
        }
    });
}

/// A small xorshift generator for file contents, pauses and the load's choices (no
/// dependency needed), seeded per user so that runs repeat and threads share nothing.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number below `n` (any, for n = 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(n);
        out
    }
}

/// A comma-separated list of values (counts, `--fsync` modes); empty items are skipped.
pub struct List<T>(pub Vec<T>);

impl<T: FromStr> FromStr for List<T>
where
    T::Err: std::fmt::Display,
{
    type Err = String;

    fn from_str(s: &str) -> Result<List<T>, String> {
        s.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| item.parse().map_err(|e| format!("{item:?}: {e}")))
            .collect::<Result<_, _>>()
            .map(List)
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

/// Shared by every primary and shadow a bench starts.
pub const SECRET: &str = "nap-bench-secret";

/// Bound on every wait for a process or a convergence, so a broken build fails, not hangs.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A running primary/shadow pair: both handles, the primary's port, both base URLs.
pub struct Pair {
    pub primary: ProcId,
    pub shadow: ProcId,
    pub pport: u16,
    pub purl: String,
    pub surl: String,
}

/// A shadow and its primary on free ports, both answering, in `fleet`. `extra` goes to both;
/// each gets a data directory of its own in the fleet's folder unless `extra` says
/// `--in-memory`.
pub fn start_pair(fleet: &mut Fleet, bin: &Path, extra: &[String]) -> Pair {
    let addrs = nap_harness::addrs();
    let with_dir = |name: &str| {
        let mut args = extra.to_vec();
        if !extra.iter().any(|a| a == "--in-memory") {
            let dir = fleet.root().join(format!("{name}-{}", addrs.pport));
            args.extend(["--data-dir".into(), dir.display().to_string()]);
        }
        args
    };
    let (pextra, sextra) = (with_dir("primary"), with_dir("shadow"));
    let (primary, shadow) = nap_harness::start_pair(bin, &addrs, SECRET, &pextra, &sextra, &[]);
    Pair {
        shadow: fleet.adopt(shadow.proc),
        primary: fleet.adopt(primary.proc),
        pport: addrs.pport,
        purl: addrs.purl,
        surl: addrs.surl,
    }
}

/// A primary on `port` replicating to `shadow`, started without waiting for it (a restart
/// whose return is what gets measured).
pub fn start_primary(
    fleet: &mut Fleet,
    bin: &Path,
    port: u16,
    shadow: &str,
    extra: &[String],
) -> ProcId {
    let listen = format!("127.0.0.1:{port}");
    let mut command =
        nap_harness::index_command(bin, &listen, &nap_harness::primary_args(shadow, SECRET));
    command.args(extra);
    fleet.start("primary", &mut command)
}

/// Waits until the shadow has acknowledged everything the primary has applied, then returns
/// whether both report the same sequence number and state digest.
pub fn wait_in_sync(purl: &str, surl: &str) -> bool {
    nap_harness::wait_in_sync(purl, surl, DEADLINE)
}

/// SHA-256 of `content`, as the protocol writes it (64 lowercase hex digits).
pub fn sha_hex(content: &str) -> String {
    nap_harness::sha256_hex(content.as_bytes())
}

/// Version 1 of `name`, its content the name itself: whoever registers it holds the same
/// file, so registrations never conflict.
pub fn first_version(name: &str) -> nap::protocol::FileMeta {
    nap::protocol::FileMeta {
        name: name.to_string(),
        version: 1,
        size: name.len() as u64,
        sha256: sha_hex(name),
    }
}

/// The value named `s` among `choices` (an `--only` flag's parts), or an error naming them.
pub fn choose<T: Copy>(what: &str, s: &str, choices: &[(&str, T)]) -> Result<T, String> {
    if let Some((_, value)) = choices.iter().find(|(name, _)| *name == s) {
        return Ok(*value);
    }
    let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
    let list = match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.join(""),
    };
    Err(format!("unknown {what} {s:?}: use {list}"))
}
