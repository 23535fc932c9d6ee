//! A deterministic simulation of the whole index, in the manner of TigerBeetle's VOPR.
//!
//! From one seed, a primary and its shadow (the real `Index`, routes and handlers, journal,
//! backlog and shadow code, each on an in-memory disk, all on one manual clock, in one
//! process, no sockets or threads) are driven through random peers' requests (registering,
//! heartbeating, leasing, publishing, copying what the planner asks, leaving, guessing
//! tokens), time passing (prunes, lease expiry, histories nobody holds forgotten after their
//! retention), journal upkeep (flushes, snapshots), pushes
//! to the shadow that are lost, repeated, reordered and delayed, snapshot catch-up, and
//! crashes of either node: a process crash, or a power failure in the middle of a write,
//! after which only what was synced is left (the torn write included). After every step the
//! invariants are checked:
//! - every acknowledged write is in the primary's state after any restart, and the restarted
//!   state is exactly the one the primary had at that sequence number;
//! - the shadow's state equals the primary's at the same sequence number (and the shadow is
//!   never ahead of the primary's history), also across the shadow's restarts;
//! - one content per (file, version) ever acknowledged, until its history is forgotten; a
//!   file's versions never skip one;
//! - holdings, the held-file count, the orphaned histories and the lease table agree with each
//!   other (one lease per file, of a known peer, on a known file);
//! - no peer holds more names than `--max-files-per-peer` (half the seeds run with limits so
//!   tight that refusals are common: a cap of 2-4 names, bursts of 1-3 new names).
//!
//! `cargo test --release --test simulation` runs `NAP_SIM_SEEDS` seeds (default 40), starting
//! at `NAP_SIM_BASE` (default 0: the same seeds every run; give another base to explore).
//! A failure prints its seed and the steps before it; `NAP_SIM_SEED=S` replays exactly that
//! run (and prints every step with `NAP_SIM_TRACE=1`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use nap::clock::ManualClock;
use nap::hashing::sha256_hex;
use nap::ids::{splitmix64, SeededIds};
use nap::index::disk::{Disk, MemDisk};
use nap::index::http::{route, Request};
use nap::index::journal::Fsync;
use nap::index::shadowing::{SyncRequest, SyncResponse};
use nap::index::state::{IndexState, Snapshot};
use nap::index::{Index, IndexConfig, RoleConfig};
use nap::protocol::{
    ErrorCode, HeartbeatResponse, LeaseResponse, RegisterResponse, Rejected, Task,
};

const SECRET: &str = "simulated";
/// Steps per seed.
const STEPS: usize = 400;
/// File names the peers share (few, so that they collide).
const NAMES: [&str; 5] = ["a.txt", "b c.mp3", "d", "e.txt", "f f"];
/// Trace lines kept for a failure report.
const TRACE: usize = 40;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        splitmix64(&mut self.0)
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True `percent` times in a hundred.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn hex(&mut self) -> String {
        format!("{:016x}", self.next())
    }
}

/// One index process: its disk outlives it; the index is `None` while it is down.
struct Node {
    config: IndexConfig,
    disk: Arc<MemDisk>,
    index: Option<Index>,
    /// Seeds the id source of each start.
    starts: u64,
    seed: u64,
}

impl Node {
    fn start(&mut self, clock: &Arc<ManualClock>) -> Result<(), String> {
        self.starts += 1;
        let ids = SeededIds::shared(self.seed ^ self.starts.wrapping_mul(0x9e37));
        let index = Index::open(
            self.config.clone(),
            clock.clone(),
            ids,
            Some(self.disk.clone() as Arc<dyn Disk>),
        )
        .map_err(|e| format!("restart failed: {e}"))?;
        self.index = Some(index);
        Ok(())
    }

    fn up(&self) -> Option<&Index> {
        self.index.as_ref()
    }
}

/// A simulated peer, as the index knows it (or not).
#[derive(Clone, Default)]
struct Peer {
    id: String,
    token: String,
    addr: String,
    /// name -> (version, sha256, size) of what it says it holds.
    files: BTreeMap<String, (u64, String, u64)>,
    /// The lease it holds: (file, lease id, the version it is for).
    lease: Option<(String, String, u64)>,
}

/// A request sent and applied but not yet acknowledged: its answer waits for the disk.
struct Pending {
    seq: u64,
    /// The (file, version, sha256) it publishes, if it is a publish.
    publishes: Option<(String, u64, String)>,
}

struct Sim {
    seed: u64,
    rng: Rng,
    clock: Arc<ManualClock>,
    primary: Node,
    shadow: Node,
    peers: Vec<Peer>,
    /// Pushes on the wire, oldest first.
    wire: VecDeque<SyncRequest>,
    /// How far the shadow acknowledged, as the pusher of the running primary knows it.
    pushed: u64,
    /// The highest seq the shadow ever acknowledged (what it must keep).
    shadow_acked: u64,
    /// The shadow asked for a snapshot.
    wants_snapshot: bool,
    /// The primary's state digest at every seq of its history.
    history: BTreeMap<u64, String>,
    pending: Vec<Pending>,
    acked_seq: u64,
    acked_contents: BTreeMap<(String, u64), String>,
    /// The latest version of each file on the primary, since its last start.
    latest: BTreeMap<String, u64>,
    trace: VecDeque<String>,
    verbose: bool,
    /// The wire loses, repeats and reorders pushes (off while settling at the end).
    faults: bool,
    /// Counts of what happened, for the summary.
    stats: BTreeMap<&'static str, u64>,
}

/// What a step found wrong.
type Check = Result<(), String>;

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng(seed);
        let clock = ManualClock::shared(1_700_000_000_000);
        let fsync = if rng.chance(75) {
            Fsync::Always
        } else {
            Fsync::Batch
        };
        let tight = rng.chance(50);
        let base = IndexConfig {
            peer_timeout: Duration::from_secs(3),
            heartbeat_interval: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(2),
            task_timeout: Duration::from_secs(5),
            cluster_secret: Some(SECRET.into()),
            sync_log: 8 + rng.below(64) as usize,
            snapshot_every: 5 + rng.below(40),
            fsync,
            history_retention: Some(Duration::from_millis(1_000 + rng.below(8_000))),
            max_files_per_peer: if tight {
                2 + rng.below(3) as usize
            } else {
                100
            },
            new_names_burst: if tight {
                1 + rng.below(3) as usize
            } else {
                100
            },
            new_names_per_minute: 30 + rng.below(120) as usize,
            ..IndexConfig::default()
        };
        let node = |role, seed| Node {
            config: IndexConfig {
                role,
                ..base.clone()
            },
            disk: Arc::new(MemDisk::new()),
            index: None,
            starts: 0,
            seed,
        };
        let primary = node(
            RoleConfig::Primary {
                shadows: vec!["http://shadow".into()],
            },
            seed ^ 1,
        );
        let shadow = node(
            RoleConfig::Shadow {
                primary: "http://primary".into(),
            },
            seed ^ 2,
        );
        Sim {
            seed,
            rng,
            clock,
            primary,
            shadow,
            peers: Vec::new(),
            wire: VecDeque::new(),
            pushed: 0,
            shadow_acked: 0,
            wants_snapshot: false,
            history: BTreeMap::new(),
            pending: Vec::new(),
            acked_seq: 0,
            acked_contents: BTreeMap::new(),
            latest: BTreeMap::new(),
            trace: VecDeque::new(),
            verbose: std::env::var_os("NAP_SIM_TRACE").is_some(),
            faults: true,
            stats: BTreeMap::new(),
        }
    }

    fn say(&mut self, line: String) {
        if self.verbose {
            eprintln!("[{}] {line}", self.seed);
        }
        self.trace.push_back(line);
        if self.trace.len() > TRACE {
            self.trace.pop_front();
        }
    }

    fn count(&mut self, what: &'static str) {
        *self.stats.entry(what).or_default() += 1;
    }

    /// Files an answer refused for a per-peer limit, counted by kind.
    fn count_refusals(&mut self, rejected: &[Rejected]) {
        for r in rejected {
            match r.code {
                ErrorCode::TooManyFiles => self.count("files over the cap"),
                ErrorCode::RateLimited => self.count("new names too fast"),
                _ => {}
            }
        }
    }

    fn run(&mut self) -> Check {
        self.primary.start(&self.clock)?;
        self.shadow.start(&self.clock)?;
        self.note_primary()?;
        for step in 0..STEPS {
            let roll = self.rng.below(100);
            match roll {
                0..=39 => self.client_request()?,
                40..=47 => self.acknowledge()?,
                48..=55 => self.pass_time(),
                56..=59 => self.sweep()?,
                60..=63 => self.keep_journal()?,
                64..=71 => self.push(),
                72..=81 => self.deliver()?,
                82..=84 => self.catch_up(),
                85..=88 => self.plan()?,
                89..=91 => self.crash_primary()?,
                92..=94 => self.crash_shadow()?,
                _ => self.restart()?,
            }
            self.check()
                .map_err(|e| format!("after step {step}: {e}"))?;
        }
        // Let everything settle: the shadow must end up equal to the primary.
        self.settle()
    }

    /// Brings both nodes up, acknowledges what is pending, and pushes until the shadow has
    /// everything: liveness aside, the two must then be equal.
    fn settle(&mut self) -> Check {
        if self.primary.index.is_none() || self.shadow.index.is_none() {
            self.restart()?;
            self.restart()?;
        }
        self.acknowledge_all()?;
        self.wire.clear();
        self.faults = false;
        if let Some(primary) = self.primary.up() {
            primary
                .journal()
                .map(|j| j.sync_all())
                .transpose()
                .map_err(|e| e.to_string())?;
        }
        for _ in 0..64 {
            self.catch_up();
            self.push();
            self.deliver()?;
            let (p, s) = (self.primary.up(), self.shadow.up());
            if let (Some(p), Some(s)) = (p, s) {
                if p.read().seq() == s.read().seq() && p.read().epoch() == s.read().epoch() {
                    return self.check();
                }
            }
        }
        Err("the shadow never caught up with the primary".into())
    }

    // ---- clients ----------------------------------------------------------------------

    /// One request of a random peer to the primary, through the real routes.
    fn client_request(&mut self) -> Check {
        if self.primary.index.is_none() {
            return Ok(());
        }
        if self.peers.is_empty() || self.rng.chance(8) {
            return self.register_new();
        }
        let i = self.rng.below(self.peers.len() as u64) as usize;
        match self.rng.below(10) {
            0 => self.reregister(i),
            1 | 2 => self.heartbeat(i),
            3 | 4 => self.take_lease(i),
            5 | 6 => self.publish(i),
            7 => self.copy(i),
            8 => self.renew_or_release(i),
            _ if self.rng.chance(50) => self.leave(i),
            _ => self.guess_token(i),
        }
    }

    /// Sends `body` to `path` on the primary; `Some((status, body, seq))` when it answered.
    fn send(&mut self, path: &str, body: &serde_json::Value) -> Option<(u16, String, u64)> {
        let primary = self.primary.up()?;
        let bytes = serde_json::to_vec(body).ok()?;
        let reply = route(primary, &Request::post(path, &bytes));
        Some((reply.status, reply.body, reply.after))
    }

    /// After a request applied op `seq`: record the history, and acknowledge it now or
    /// leave its answer waiting for the disk.
    fn applied(&mut self, seq: u64, publishes: Option<(String, u64, String)>) -> Check {
        if seq == 0 {
            return Ok(());
        }
        self.note_primary()?;
        self.pending.push(Pending { seq, publishes });
        if self.rng.chance(70) {
            self.acknowledge_all()?;
        }
        Ok(())
    }

    /// A random file claim: what the index has (most of the time), or something else.
    fn claim(&mut self) -> (String, u64, String, u64) {
        let name = self.rng.pick(&NAMES).to_string();
        let known = self.primary.up().and_then(|p| p.read().latest_meta(&name));
        match known {
            Some(meta) if self.rng.chance(80) => (name, meta.version, meta.sha256, meta.size),
            Some(meta) => {
                // Stale, next (needs a lease: refused), or conflicting content.
                let version = meta.version + self.rng.below(3);
                let version = version.saturating_sub(self.rng.below(2)).max(1);
                let content = format!("{name}/{version}/{}", self.rng.below(4));
                (
                    name,
                    version,
                    sha256_hex(content.as_bytes()),
                    content.len() as u64,
                )
            }
            None => {
                let content = format!("{name}/1/{}", self.rng.below(3));
                (
                    name,
                    1,
                    sha256_hex(content.as_bytes()),
                    content.len() as u64,
                )
            }
        }
    }

    fn file_list(&mut self) -> BTreeMap<String, (u64, String, u64)> {
        let mut files = BTreeMap::new();
        for _ in 0..self.rng.below(4) {
            let (name, version, sha, size) = self.claim();
            files.insert(name, (version, sha, size));
        }
        files
    }

    fn entries(files: &BTreeMap<String, (u64, String, u64)>) -> Vec<serde_json::Value> {
        files
            .iter()
            .map(|(name, (version, sha, size))| {
                serde_json::json!({"name": name, "version": version, "size": size, "sha256": sha})
            })
            .collect()
    }

    fn register_new(&mut self) -> Check {
        let files = self.file_list();
        let addr = format!("10.0.0.{}:9000", self.peers.len() + 1);
        let body = serde_json::json!({"addr": addr, "files": Self::entries(&files)});
        let Some((status, text, seq)) = self.send("/register", &body) else {
            return Ok(());
        };
        self.say(format!("register new at {addr}: {status}"));
        if status != 200 {
            return Err(format!(
                "a new peer's register was refused: {status} {text}"
            ));
        }
        let answer: RegisterResponse =
            serde_json::from_str(&text).map_err(|e| format!("register answer: {e}"))?;
        self.count_refusals(&answer.rejected);
        self.peers.push(Peer {
            id: answer.peer_id,
            token: answer.token,
            addr,
            files,
            lease: None,
        });
        self.count("registers");
        self.applied(seq, None)
    }

    fn reregister(&mut self, i: usize) -> Check {
        let files = self.file_list();
        let peer = &self.peers[i];
        let body = serde_json::json!({"addr": peer.addr, "files": Self::entries(&files),
            "peer_id": peer.id, "token": peer.token});
        let Some((status, text, seq)) = self.send("/register", &body) else {
            return Ok(());
        };
        self.say(format!("register {}: {status}", self.peers[i].id));
        if let Ok(answer) = serde_json::from_str::<RegisterResponse>(&text) {
            self.count_refusals(&answer.rejected);
        }
        self.peers[i].files = files;
        self.applied(seq, None)
    }

    fn heartbeat(&mut self, i: usize) -> Check {
        let mut added = BTreeMap::new();
        if self.rng.chance(50) {
            let (name, version, sha, size) = self.claim();
            added.insert(name, (version, sha, size));
        }
        let removed: Vec<String> = match self.rng.chance(30) {
            true => self.peers[i].files.keys().take(1).cloned().collect(),
            false => Vec::new(),
        };
        let failed: Vec<serde_json::Value> = if self.rng.chance(10) {
            vec![
                serde_json::json!({"task_id": format!("copy:{}:v1:{}", NAMES[0], self.peers[i].id),
                "reason": "every holder failed"}),
            ]
        } else {
            Vec::new()
        };
        let removed: Vec<String> = removed
            .into_iter()
            .filter(|n| !added.contains_key(n))
            .collect();
        let peer = &self.peers[i];
        let body = serde_json::json!({"peer_id": peer.id, "token": peer.token,
            "added": Self::entries(&added), "removed": removed, "failed": failed});
        let Some((status, text, seq)) = self.send("/heartbeat", &body) else {
            return Ok(());
        };
        if let Ok(answer) = serde_json::from_str::<HeartbeatResponse>(&text) {
            self.count_refusals(&answer.rejected);
        }
        self.say(format!(
            "heartbeat {} +{} -{}: {status}",
            self.peers[i].id,
            added.len(),
            removed.len()
        ));
        if status == 404 {
            self.peers[i].files.clear();
        }
        let peer = &mut self.peers[i];
        for name in &removed {
            peer.files.remove(name);
        }
        peer.files.extend(added);
        self.applied(seq, None)
    }

    fn take_lease(&mut self, i: usize) -> Check {
        let name = self.rng.pick(&NAMES).to_string();
        let peer = &self.peers[i];
        let body = serde_json::json!({"peer_id": peer.id, "token": peer.token, "file": name});
        let Some((status, text, seq)) = self.send("/lease", &body) else {
            return Ok(());
        };
        self.say(format!("lease {name} by {}: {status}", self.peers[i].id));
        if status == 200 {
            let lease: LeaseResponse =
                serde_json::from_str(&text).map_err(|e| format!("lease answer: {e}"))?;
            self.peers[i].lease = Some((name, lease.lease_id, lease.version));
            self.count("leases");
        }
        self.applied(seq, None)
    }

    /// Publishes the next version of the leased file (or tries to, with a stale lease, or
    /// none at all).
    fn publish(&mut self, i: usize) -> Check {
        let (name, lease_id, base) = match self.peers[i].lease.clone() {
            Some(lease) if self.rng.chance(90) => lease,
            _ => {
                let name = self.rng.pick(&NAMES).to_string();
                let base = self.latest.get(&name).copied().unwrap_or(0);
                (name, self.rng.hex(), base)
            }
        };
        let version = base + 1;
        // Whether this peer holds the file's live lease under this id, as the index sees it.
        let now = self.clock_ms();
        let (leased, latest_before) = match self.primary.up() {
            Some(p) => {
                let state = p.read();
                let live = state
                    .leases()
                    .live(&name, now)
                    .is_some_and(|l| l.peer_id == self.peers[i].id && l.lease_id == lease_id);
                (live, state.file(&name).map(|e| e.latest_version()))
            }
            None => (false, None),
        };
        let content = format!(
            "{name}/{version}/by {}/{}",
            self.peers[i].id,
            self.rng.hex()
        );
        let sha = sha256_hex(content.as_bytes());
        let peer = &self.peers[i];
        let body = serde_json::json!({"peer_id": peer.id, "token": peer.token, "file": name,
            "version": version, "size": content.len(), "sha256": sha, "lease_id": lease_id});
        let mut body = body;
        if !leased && self.rng.chance(30) {
            // No lease at all, not even a wrong one.
            body.as_object_mut().map(|b| b.remove("lease_id"));
        }
        let Some((status, _, seq)) = self.send("/announce", &body) else {
            return Ok(());
        };
        self.say(format!(
            "publish {name} v{version} by {}: {status}",
            self.peers[i].id
        ));
        if status == 200 {
            // A new version of a file the index knows takes its publisher's live lease.
            if latest_before.is_some_and(|latest| latest + 1 == version) && !leased {
                return Err(format!("{name} v{version} was published without its lease"));
            }
            self.count("publishes");
            let peer = &mut self.peers[i];
            peer.lease = None;
            peer.files
                .insert(name.clone(), (version, sha.clone(), content.len() as u64));
            return self.applied(seq, Some((name, version, sha)));
        }
        self.applied(seq, None)
    }

    /// Announces a copy of a file's latest version, as a peer does after a download.
    fn copy(&mut self, i: usize) -> Check {
        let name = self.rng.pick(&NAMES).to_string();
        let Some(meta) = self.primary.up().and_then(|p| p.read().latest_meta(&name)) else {
            return Ok(());
        };
        self.announce_copy(i, &name, meta.version, &meta.sha256, meta.size)
    }

    fn announce_copy(&mut self, i: usize, name: &str, version: u64, sha: &str, size: u64) -> Check {
        let peer = &self.peers[i];
        let body = serde_json::json!({"peer_id": peer.id, "token": peer.token, "file": name,
            "version": version, "size": size, "sha256": sha});
        let Some((status, _, seq)) = self.send("/announce", &body) else {
            return Ok(());
        };
        self.say(format!(
            "copy {name} v{version} to {}: {status}",
            self.peers[i].id
        ));
        if status == 200 {
            self.peers[i]
                .files
                .insert(name.to_string(), (version, sha.to_string(), size));
        }
        self.applied(seq, None)
    }

    fn renew_or_release(&mut self, i: usize) -> Check {
        let Some((file, lease_id, _)) = self.peers[i].lease.clone() else {
            return Ok(());
        };
        let release = self.rng.chance(40);
        let path = if release {
            "/lease/release"
        } else {
            "/lease/renew"
        };
        let peer = &self.peers[i];
        let body =
            serde_json::json!({"peer_id": peer.id, "token": peer.token, "lease_id": lease_id});
        let Some((status, _, seq)) = self.send(path, &body) else {
            return Ok(());
        };
        self.say(format!("{path} {file} by {}: {status}", self.peers[i].id));
        if release || status != 200 {
            self.peers[i].lease = None;
        }
        self.applied(seq, None)
    }

    fn leave(&mut self, i: usize) -> Check {
        let peer = self.peers.remove(i);
        let body = serde_json::json!({"peer_id": peer.id, "token": peer.token});
        let Some((status, _, seq)) = self.send("/unregister", &body) else {
            return Ok(());
        };
        self.say(format!("unregister {}: {status}", peer.id));
        self.applied(seq, None)
    }

    /// A stranger with a peer's id and a wrong token: refused, and nothing changes.
    fn guess_token(&mut self, i: usize) -> Check {
        let peer = self.peers[i].clone();
        let known = self
            .primary
            .up()
            .is_some_and(|p| p.read().peer(&peer.id).is_some());
        if !known {
            return Ok(());
        }
        let before = self
            .primary
            .up()
            .map(|p| (p.read().seq(), p.read().digest()));
        for (path, body) in [
            (
                "/register",
                serde_json::json!({"addr": "10.9.9.9:1", "files": [], "peer_id": peer.id, "token": "guess"}),
            ),
            (
                "/unregister",
                serde_json::json!({"peer_id": peer.id, "token": "guess"}),
            ),
        ] {
            if let Some((status, _, _)) = self.send(path, &body) {
                if status != 401 {
                    return Err(format!("{path} with a wrong token answered {status}"));
                }
            }
        }
        let after = self
            .primary
            .up()
            .map(|p| (p.read().seq(), p.read().digest()));
        if before != after {
            return Err("a request with a wrong token changed the state".into());
        }
        Ok(())
    }

    /// Waits for the disk for the answers still pending: they are acknowledged if it holds
    /// them, and fail (503) if it cannot.
    fn acknowledge(&mut self) -> Check {
        if self.rng.chance(10) && !self.pending.is_empty() {
            // The power fails in the middle of the write that would acknowledge them.
            let keep = self.rng.below(200) as usize;
            self.primary.disk.fail_next_append(keep);
            self.say(format!(
                "power fails while writing the primary's log (keeps {keep} bytes)"
            ));
            let answered = self.acknowledge_all();
            return answered.and_then(|()| self.crash(true, true));
        }
        self.acknowledge_all()
    }

    fn acknowledge_all(&mut self) -> Check {
        let Some(primary) = self.primary.up() else {
            return Ok(());
        };
        let pending = std::mem::take(&mut self.pending);
        let Some(last) = pending.iter().map(|p| p.seq).max() else {
            return Ok(());
        };
        let stored = primary.durable(last);
        // With --fsync always an answer waits for the disk; with batch it does not, and a
        // crash may take what was answered (the documented price of batch).
        let waits = primary.acks_wait_for_disk();
        match stored {
            Ok(()) if waits => {
                self.acked_seq = self.acked_seq.max(last);
                for p in pending {
                    if let Some(key) = p.publishes {
                        self.acked_contents.insert((key.0, key.1), key.2);
                    }
                }
            }
            Ok(()) => {}
            Err(e) => self.say(format!("answers fail with 503: {e}")),
        }
        Ok(())
    }

    // ---- time and the primary's background work ---------------------------------------

    fn clock_ms(&self) -> u64 {
        use nap::clock::Clock;
        self.clock.now_ms()
    }

    fn pass_time(&mut self) {
        let ms = if self.rng.chance(10) {
            2_000 + self.rng.below(5_000)
        } else {
            self.rng.below(600)
        };
        self.clock.advance(Duration::from_millis(ms));
        self.say(format!("{ms} ms pass"));
    }

    /// The sweeper: silent peers and expired leases go, each sweep an op of its own.
    fn sweep(&mut self) -> Check {
        let pruned = match self.primary.up() {
            Some(primary) => primary.prune_silent(),
            None => return Ok(()),
        };
        self.note_primary()?;
        let expired = self
            .primary
            .up()
            .map_or_else(Vec::new, Index::expire_leases);
        self.note_primary()?;
        // One op at a time, as many as are due, each state noted (the shadow may stop at any
        // of them).
        let mut forgotten = Vec::new();
        while let Some(primary) = self.primary.up() {
            let before: BTreeSet<String> = primary.read().file_names().map(String::from).collect();
            let seq = primary.read().seq();
            primary.forget_histories(1);
            if primary.read().seq() == seq {
                break;
            }
            let after: BTreeSet<String> = primary.read().file_names().map(String::from).collect();
            forgotten.extend(before.difference(&after).cloned());
            self.note_primary()?;
        }
        // A forgotten name is new again: what was acknowledged of its old history may go,
        // and its versions start over.
        for name in &forgotten {
            self.acked_contents.retain(|(n, _), _| n != name);
            self.latest.remove(name);
            self.count("histories forgotten");
        }
        self.say(format!(
            "sweep: {} pruned, {} leases expired, {} histories forgotten",
            pruned.len(),
            expired.len(),
            forgotten.len()
        ));
        if !pruned.is_empty() {
            self.peers.retain(|p| !pruned.contains(&p.id));
            self.count("prunes");
        }
        Ok(())
    }

    fn keep_journal(&mut self) -> Check {
        for node in [&self.primary, &self.shadow] {
            if let Some(index) = node.up() {
                match index.maintain_journal() {
                    Ok(Some(seq)) => {
                        *self.stats.entry("snapshots").or_default() += 1;
                        if self.verbose {
                            eprintln!("[{}] snapshot at {seq}", self.seed);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => return Err(format!("journal upkeep failed: {e}")),
                }
            }
        }
        Ok(())
    }

    /// A planning pass, and one peer doing the copies it was given.
    fn plan(&mut self) -> Check {
        let Some(primary) = self.primary.up() else {
            return Ok(());
        };
        let assigned = primary.plan_once();
        let Some(peer_id) = assigned.first().cloned() else {
            return Ok(());
        };
        let tasks: Vec<Task> = primary.deliver_tasks(&peer_id);
        let Some(i) = self.peers.iter().position(|p| p.id == peer_id) else {
            return Ok(());
        };
        self.say(format!("{peer_id} is given {} task(s)", tasks.len()));
        for task in tasks.into_iter().filter(|t| t.task_id.starts_with("copy:")) {
            self.count("copies");
            self.announce_copy(i, &task.file, task.version, &task.sha256, task.size)?;
        }
        Ok(())
    }

    // ---- the wire between primary and shadow ------------------------------------------

    /// The pusher: the next batch of what the shadow lacks goes on the wire.
    fn push(&mut self) {
        let Some(primary) = self.primary.up() else {
            return;
        };
        let Some(backlog) = primary.role().primary().and_then(|p| p.backlog.clone()) else {
            return;
        };
        let with_liveness = self.rng.chance(30);
        let request = primary.next_push(&backlog, self.pushed, with_liveness);
        let behind = request.ops.is_empty() && self.pushed < request.head;
        if request.ops.is_empty() && !with_liveness && !behind {
            return;
        }
        let line = format!("push {} op(s) after {}", request.ops.len(), self.pushed);
        self.wire.push_back(request);
        self.say(line);
    }

    /// A push arrives (perhaps not the oldest), or is lost, or arrives twice; the answer
    /// may be lost on its way back.
    fn deliver(&mut self) -> Check {
        if self.wire.is_empty() {
            return Ok(());
        }
        let faults = self.faults;
        let at = if !faults || self.rng.chance(80) {
            0
        } else {
            self.rng.below(self.wire.len() as u64) as usize
        };
        let Some(request) = (if faults && self.rng.chance(10) {
            self.wire.get(at).cloned()
        } else {
            self.wire.remove(at)
        }) else {
            return Ok(());
        };
        if faults && self.rng.chance(10) {
            self.say("a push is lost".into());
            self.count("lost pushes");
            return Ok(());
        }
        let Some(shadow) = self.shadow.up() else {
            return Ok(());
        };
        let body = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
        let reply = route(shadow, &Request::post("/sync", &body).with_secret(SECRET));
        if reply.status != 200 {
            self.say(format!("the shadow answers the push {}", reply.status));
            return Ok(());
        }
        let answer: SyncResponse =
            serde_json::from_str(&reply.body).map_err(|e| format!("sync answer: {e}"))?;
        self.shadow_acked = self.shadow_acked.max(answer.seq);
        if answer.need_snapshot {
            self.wants_snapshot = true;
        }
        if faults && self.rng.chance(10) {
            self.say("the shadow's answer is lost".into());
            return Ok(());
        }
        self.say(format!(
            "the shadow takes {} op(s): at {}{}",
            request.ops.len(),
            answer.seq,
            if answer.need_snapshot {
                ", wants a snapshot"
            } else {
                ""
            }
        ));
        self.pushed = answer.seq;
        Ok(())
    }

    /// The shadow's catch-up: a snapshot from the primary.
    fn catch_up(&mut self) {
        if !self.wants_snapshot {
            return;
        }
        let (Some(primary), Some(shadow)) = (self.primary.up(), self.shadow.up()) else {
            return;
        };
        let reply = route(primary, &Request::get("/snapshot").with_secret(SECRET));
        let Ok(snapshot) = serde_json::from_str::<Snapshot>(&reply.body) else {
            return;
        };
        let seq = snapshot.seq;
        let installed = shadow.install_snapshot(snapshot);
        self.wants_snapshot = false;
        self.count("snapshot catch-ups");
        self.say(format!(
            "the shadow catches up by snapshot at {seq}: {installed}"
        ));
    }

    // ---- crashes ----------------------------------------------------------------------

    fn crash_primary(&mut self) -> Check {
        let power = self.rng.chance(50);
        self.crash(true, power)
    }

    fn crash_shadow(&mut self) -> Check {
        if self.rng.chance(30) && self.shadow.index.is_some() {
            // The power fails while the shadow writes what it was pushed.
            let keep = self.rng.below(200) as usize;
            self.shadow.disk.fail_next_append(keep);
            self.say(format!(
                "the shadow's disk is armed to fail (keeps {keep} bytes)"
            ));
            self.push();
            self.deliver()?;
            return self.crash(false, true);
        }
        let power = self.rng.chance(50);
        self.crash(false, power)
    }

    /// Kills a node. A process crash leaves everything it wrote; a power failure only what
    /// was synced (and of the rest, a prefix: a torn write).
    fn crash(&mut self, primary: bool, power: bool) -> Check {
        let node = if primary {
            &mut self.primary
        } else {
            &mut self.shadow
        };
        if node.index.take().is_none() {
            return Ok(());
        }
        let rng = &mut self.rng;
        node.disk.crash(|_, unsynced| {
            if power {
                rng.below(unsynced as u64 + 1) as usize
            } else {
                unsynced
            }
        });
        if primary {
            // Requests in flight die with it: never acknowledged.
            self.pending.clear();
            self.pushed = 0;
            self.count("primary crashes");
        } else {
            self.count("shadow crashes");
        }
        let what = if primary { "primary" } else { "shadow" };
        let how = if power { "power failure" } else { "crash" };
        self.say(format!("the {what} goes down ({how})"));
        Ok(())
    }

    fn restart(&mut self) -> Check {
        if self.primary.index.is_none() {
            self.primary.start(&self.clock)?;
            let (seq, digest) = {
                let primary = self.primary.up().ok_or("not started")?;
                let state = primary.read();
                (state.seq(), state.digest())
            };
            self.say(format!("the primary restarts at {seq}"));
            if seq < self.acked_seq {
                return Err(format!(
                    "the primary restarted at seq {seq}, but seq {} was acknowledged",
                    self.acked_seq
                ));
            }
            match self.history.get(&seq) {
                Some(known) if *known == digest => {}
                Some(_) => {
                    return Err(format!(
                        "the primary restarted at seq {seq} with a state it never had"
                    ))
                }
                None => {
                    return Err(format!(
                        "the primary restarted at seq {seq}, past its history"
                    ))
                }
            }
            // What was above it was never on disk: those seqs will be used again, and a
            // name it never stored may start again at any version (a peer may hold it).
            self.history.split_off(&(seq + 1));
            self.latest.clear();
            return Ok(());
        }
        if self.shadow.index.is_none() {
            self.shadow.start(&self.clock)?;
            let seq = self.shadow.up().map_or(0, |s| s.read().seq());
            self.say(format!("the shadow restarts at {seq}"));
            // Only with --fsync always does the shadow answer after its disk has the ops.
            let waits = self.shadow.up().is_some_and(Index::acks_wait_for_disk);
            if waits && seq < self.shadow_acked && self.same_epoch() {
                return Err(format!(
                    "the shadow restarted at seq {seq}, but it had acknowledged {}",
                    self.shadow_acked
                ));
            }
            self.shadow_acked = seq;
        }
        Ok(())
    }

    fn same_epoch(&self) -> bool {
        match (self.primary.up(), self.shadow.up()) {
            (Some(p), Some(s)) => p.read().epoch() == s.read().epoch(),
            _ => true,
        }
    }

    // ---- invariants -------------------------------------------------------------------

    /// Records the primary's state at its current seq; a seq seen before with another state
    /// is a fork.
    fn note_primary(&mut self) -> Check {
        let seq = match self.primary.up() {
            Some(p) => p.read().seq(),
            None => return Ok(()),
        };
        self.note_at(seq)
    }

    fn note_at(&mut self, seq: u64) -> Check {
        let Some(primary) = self.primary.up() else {
            return Ok(());
        };
        let state = primary.read();
        if state.seq() != seq {
            return Ok(());
        }
        let digest = state.digest();
        drop(state);
        match self.history.get(&seq) {
            Some(known) if *known != digest => {
                Err(format!("the primary holds two states at seq {seq}"))
            }
            Some(_) => Ok(()),
            None => {
                self.history.insert(seq, digest);
                Ok(())
            }
        }
    }

    fn check(&mut self) -> Check {
        if let Some(primary) = self.primary.up() {
            let state = primary.read();
            check_state(&state, self.primary.config.max_files_per_peer)
                .map_err(|e| format!("primary: {e}"))?;
            let seq = state.seq();
            if self.history.get(&seq) != Some(&state.digest()) {
                return Err(format!(
                    "the primary's state at seq {seq} is not the one recorded"
                ));
            }
            if seq < self.acked_seq {
                return Err(format!(
                    "the primary is at {seq}, below acknowledged {}",
                    self.acked_seq
                ));
            }
            for ((name, version), sha) in &self.acked_contents {
                let held = state.file(name).and_then(|e| e.versions.get(version));
                if !held.is_some_and(|v| v.sha256.is(sha)) {
                    return Err(format!("acknowledged {name} v{version} is gone or changed"));
                }
            }
            for name in state.file_names() {
                let latest = state.file(name).map_or(0, |e| e.latest_version());
                if let Some(before) = self.latest.get(name) {
                    if latest > before + 1 {
                        return Err(format!("{name} went from v{before} to v{latest}"));
                    }
                }
            }
            let latest: Vec<(String, u64)> = state
                .file_names()
                .map(|n| {
                    (
                        n.to_string(),
                        state.file(n).map_or(0, |e| e.latest_version()),
                    )
                })
                .collect();
            drop(state);
            self.latest.extend(latest);
        }
        if let Some(shadow) = self.shadow.up() {
            let state = shadow.read();
            check_state(&state, self.primary.config.max_files_per_peer)
                .map_err(|e| format!("shadow: {e}"))?;
            let primary_epoch = self.primary.up().map(|p| p.read().epoch().to_string());
            let same = primary_epoch.as_deref().is_none_or(|e| e == state.epoch());
            if !state.epoch().is_empty() && same {
                let seq = state.seq();
                match self.history.get(&seq) {
                    Some(digest) if *digest == state.digest() => {}
                    Some(_) => {
                        return Err(format!("the shadow forked from the primary at seq {seq}"))
                    }
                    None if self.primary.index.is_some() => {
                        return Err(format!(
                            "the shadow is at seq {seq}, past the primary's history"
                        ))
                    }
                    None => {}
                }
            }
        }
        Ok(())
    }
}

/// Everything derived in a state agrees with what it is derived from, and no peer holds more
/// than `max_files` names.
fn check_state(state: &IndexState, max_files: usize) -> Check {
    let mut held = 0;
    let mut orphans = 0;
    for name in state.file_names() {
        let entry = state.file(name).ok_or("a listed file is missing")?;
        if !entry.holders.is_empty() {
            held += 1;
        } else {
            orphans += 1;
        }
        if entry.holders.is_empty() != entry.orphaned_ms.is_some() {
            return Err(format!("{name}: holders and orphan time disagree"));
        }
        if let (Some(since), Some(oldest)) = (entry.orphaned_ms, state.oldest_orphan_ms()) {
            if since < oldest {
                return Err(format!("{name} is an orphan older than the oldest listed"));
            }
        }
        if entry.versions.is_empty() {
            return Err(format!("{name} has no version"));
        }
        for (peer_id, version) in &entry.holders {
            let peer = state
                .peer(peer_id)
                .ok_or(format!("{name} is held by unknown {peer_id}"))?;
            if !peer.files.contains(name) {
                return Err(format!("{peer_id} holds {name} but does not list it"));
            }
            if !entry.versions.contains_key(version) {
                return Err(format!("{peer_id} holds {name} v{version}, unknown"));
            }
        }
    }
    if held != state.held_file_count() {
        return Err(format!(
            "{held} files are held, the count says {}",
            state.held_file_count()
        ));
    }
    if orphans != state.orphan_count() {
        return Err(format!(
            "{orphans} histories are unheld, {} listed as orphans",
            state.orphan_count()
        ));
    }
    for peer_id in state.peer_ids() {
        let peer = state.peer(peer_id).ok_or("a listed peer is missing")?;
        if peer.files.len() > max_files {
            return Err(format!(
                "{peer_id} holds {} names, over the cap of {max_files}",
                peer.files.len()
            ));
        }
        for name in &peer.files {
            let holds = state
                .file(name)
                .is_some_and(|e| e.holders.contains_key(peer_id));
            if !holds {
                return Err(format!("{peer_id} lists {name} but is not its holder"));
            }
        }
    }
    let mut ids = BTreeSet::new();
    for (file, lease) in state.leases().canonical() {
        if lease.file != file || state.file(file).is_none() {
            return Err(format!("a lease on {file} that is not a known file"));
        }
        if state.peer(&lease.peer_id).is_none() {
            return Err(format!("the lease on {file} belongs to a peer gone"));
        }
        if !ids.insert(lease.lease_id.clone()) {
            return Err(format!("lease id {} is used twice", lease.lease_id));
        }
    }
    Ok(())
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name} must be a whole number, not {value:?}"),
    }
}

/// Runs one seed; on failure, says how to replay it.
fn simulate(seed: u64) -> BTreeMap<&'static str, u64> {
    let mut sim = Sim::new(seed);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.run()));
    let failure = match outcome {
        Ok(Ok(())) => return sim.stats,
        Ok(Err(e)) => e,
        Err(panic) => panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into()),
    };
    let steps: Vec<String> = sim.trace.iter().cloned().collect();
    panic!(
        "simulation seed {seed} failed: {failure}\nlast steps:\n  {}\nreplay: \
         NAP_SIM_SEED={seed} NAP_SIM_TRACE=1 cargo test --release --test simulation",
        steps.join("\n  ")
    );
}

#[test]
fn seeded_runs_keep_every_invariant() {
    let seeds: Vec<u64> = match env_number("NAP_SIM_SEED") {
        Some(seed) => vec![seed],
        None => {
            let base = env_number("NAP_SIM_BASE").unwrap_or(0);
            let count = env_number("NAP_SIM_SEEDS").unwrap_or(40);
            (base..base + count).collect()
        }
    };
    let mut totals: BTreeMap<&'static str, u64> = BTreeMap::new();
    for seed in &seeds {
        for (what, n) in simulate(*seed) {
            *totals.entry(what).or_default() += n;
        }
    }
    eprintln!(
        "simulated {} seed(s) of {STEPS} steps: {totals:?}",
        seeds.len()
    );
    // A simulation that never reached its faults would prove nothing.
    if seeds.len() >= 20 {
        for what in [
            "publishes",
            "primary crashes",
            "shadow crashes",
            "snapshot catch-ups",
            "lost pushes",
            "snapshots",
            "copies",
            "prunes",
            "histories forgotten",
            "files over the cap",
            "new names too fast",
        ] {
            assert!(
                totals.get(what).copied().unwrap_or(0) > 0,
                "no {what} in {} seeds",
                seeds.len()
            );
        }
    }
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let mut one = Sim::new(7);
    let mut two = Sim::new(7);
    one.run().unwrap();
    two.run().unwrap();
    assert_eq!(one.trace, two.trace);
    assert_eq!(one.history, two.history);
}
