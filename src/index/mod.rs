//! The central index server: a deterministic state machine (`state`, with its `lease` table)
//! behind thin edges: HTTP handlers (`http`), the `sweep`er of silent peers and expired
//! leases, and replication to read-only shadows (`sync`). The `planner` turns the state into
//! copy tasks for peers.
//!
//! Every change goes through one place, [`Index::submit`] (or the sweeps beside it), where an
//! op meets the clock and the write lock and, on a primary with shadows, enters the op log in
//! sequence order. A shadow's state changes only by the primary's ops and snapshots.

pub mod dashboard;
pub mod http;
pub mod lease;
pub mod log;
pub mod metrics;
pub mod planner;
pub mod replicate;
pub mod state;
pub mod sweep;
pub mod sync;

use crate::threads::{lock, read, write};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use self::log::{DiskLog, Fsync};
use planner::InFlight;
use replicate::Waiters;
use state::{IndexState, Millis, Op, Outcome, Snapshot, StateError};
use sync::{OpLog, ShadowLink, SyncOp, SyncRequest, SyncResponse};

/// What this index server is in a replicated pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Takes writes and pushes its ops to `shadows` (base URLs; may be empty).
    Primary { shadows: Vec<String> },
    /// Read-only copy of `primary`: answers reads, refuses writes with 403.
    Shadow { primary: String },
}

#[derive(Debug, Clone)]
pub struct IndexConfig {
    /// Address to listen on, `host:port` (port 0 picks a free one).
    pub listen: String,
    /// Threads answering HTTP requests.
    pub workers: usize,
    /// How often peers are told to heartbeat.
    pub heartbeat_interval: Duration,
    /// A peer silent this long is pruned with its holdings.
    pub peer_timeout: Duration,
    /// Largest request body accepted, in bytes.
    pub max_body: usize,
    /// Longest file name taken, in bytes (at most the protocol's 255).
    pub max_name_bytes: usize,
    /// Most files one register or heartbeat may list.
    pub max_files_per_request: usize,
    /// Most results one search may ask for.
    pub max_search_results: usize,
    /// Most tasks one answer carries (the rest follow in later ones).
    pub max_tasks_per_answer: usize,
    /// How long a write lease lasts unless renewed.
    pub lease_ttl: Duration,
    pub role: Role,
    /// Shared by the primary and its shadows; replication requests without it get 401.
    pub cluster_secret: Option<String>,
    /// Ops kept for shadows that are behind; one further behind catches up by snapshot.
    pub sync_log: usize,
    /// Up-to-date copies wanted of every file (1: no replication).
    pub replication_factor: usize,
    /// How often the replication planner runs (it also runs when ops change the picture).
    pub plan_interval: Duration,
    /// Copy tasks in flight per peer, at most.
    pub max_tasks_per_peer: usize,
    /// A copy task not done by then goes to another peer.
    pub task_timeout: Duration,
    /// Where the op log and snapshots live; `None` keeps everything in memory.
    pub data_dir: Option<std::path::PathBuf>,
    pub fsync: Fsync,
    /// Ops logged between snapshots (each snapshot lets the log before it go).
    pub snapshot_every: u64,
    /// Requests in flight (and open connections) at most; each live peer holds one with its
    /// long-poll heartbeat.
    pub max_connections: usize,
    /// A connection without a request for this long is closed.
    pub idle_timeout: Duration,
}

/// Connections taken unless told otherwise (fewer if the open-file limit cannot hold them).
pub const DEFAULT_MAX_CONNECTIONS: usize = 8192;

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            listen: "127.0.0.1:7070".into(),
            workers: 4,
            heartbeat_interval: Duration::from_secs(5),
            peer_timeout: Duration::from_secs(15),
            max_body: 4 << 20,
            max_name_bytes: crate::protocol::MAX_NAME_LEN,
            max_files_per_request: 100_000,
            max_search_results: crate::protocol::MAX_SEARCH_LIMIT,
            max_tasks_per_answer: 64,
            lease_ttl: Duration::from_secs(60),
            role: Role::Primary {
                shadows: Vec::new(),
            },
            cluster_secret: None,
            sync_log: 65_536,
            replication_factor: 2,
            plan_interval: Duration::from_secs(1),
            max_tasks_per_peer: 4,
            task_timeout: Duration::from_secs(60),
            data_dir: None,
            fsync: Fsync::Always,
            snapshot_every: 100_000,
            max_connections: crate::net::connections::fitting(DEFAULT_MAX_CONNECTIONS),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// The shared core of a running index: its state, its configuration, its clock, and its
/// replication bookkeeping.
pub struct Index {
    state: RwLock<IndexState>,
    config: IndexConfig,
    started: Instant,
    clock: fn() -> Millis,
    /// Primary with shadows: the ops they have yet to receive.
    log: Option<Arc<OpLog>>,
    /// Primary: one link per shadow, for `/status`.
    shadows: Vec<Arc<ShadowLink>>,
    /// Shadow: asks the catch-up thread for a snapshot.
    resync: Option<Sender<()>>,
    /// Shadow: when the primary last pushed.
    last_sync: Mutex<Option<Instant>>,
    /// Replication: copies in flight (soft state, beside the index state), the planner's
    /// wake-up, its last list of under-replicated files, and the heartbeats waiting for tasks.
    flight: Mutex<InFlight>,
    plan_wake: Option<Sender<()>>,
    under_replicated: Mutex<Vec<crate::protocol::UnderReplicatedFile>>,
    pub waiters: Waiters,
    /// With `--data-dir`: the op log every change is written to before it is acknowledged.
    disk: Option<DiskLog>,
    /// Request latencies, for `/metrics`.
    pub metrics: metrics::Metrics,
    /// The HTTP server's connection counts (none in unit tests without a server).
    conns: Option<Arc<crate::net::Connections>>,
}

/// Why a change was not made, or not made durable.
#[derive(Debug)]
pub enum SubmitError {
    State(StateError),
    /// The op applied but the log could not be written: nothing can be promised.
    Storage(String),
}

impl From<StateError> for SubmitError {
    fn from(e: StateError) -> Self {
        SubmitError::State(e)
    }
}

fn invalid_data(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

impl Index {
    /// An index with an empty state. A primary starts a new history (a fresh epoch); a shadow
    /// takes its primary's.
    /// With a data directory, the state is what it holds: the snapshot, then the logged ops
    /// replayed after it (peers known from it get a fresh peer timeout to show up again).
    pub fn new(config: IndexConfig, clock: fn() -> Millis) -> io::Result<Self> {
        let epoch = match config.role {
            Role::Primary { .. } => crate::ids::Ids::hex(&crate::ids::OsRandom, 8)?,
            Role::Shadow { .. } => String::new(),
        };
        let empty = |epoch: String| IndexState::with_capacity(1024, 16 * 1024).with_epoch(epoch);
        let (state, disk) = match &config.data_dir {
            None => (empty(epoch), None),
            Some(dir) => {
                let (disk, recovered) = DiskLog::open(dir, config.fsync, &epoch)?;
                let mut state = match recovered.snapshot {
                    Some(snapshot) => IndexState::restore(snapshot),
                    None => empty(recovered.epoch),
                };
                let replayed = recovered.ops.len();
                for op in recovered.ops {
                    let seq = op.seq;
                    if let Err(e) = state.apply(op.op, op.at) {
                        return Err(invalid_data(format!(
                            "{}: logged op {seq} does not apply ({e}); the log is damaged",
                            dir.display()
                        )));
                    }
                    if state.seq() != seq {
                        return Err(invalid_data(format!(
                            "{}: logged op {seq} applied as {}",
                            dir.display(),
                            state.seq()
                        )));
                    }
                }
                if state.seq() > 0 {
                    state.touch_all(clock());
                    ::log::info!(
                        "loaded the index from {}: seq {} ({replayed} ops replayed), {} peers, {} files",
                        dir.display(),
                        state.seq(),
                        state.peer_count(),
                        state.held_file_count()
                    );
                }
                (state, Some(disk))
            }
        };
        Ok(Index {
            state: RwLock::new(state),
            config,
            started: Instant::now(),
            clock,
            log: None,
            shadows: Vec::new(),
            resync: None,
            last_sync: Mutex::new(None),
            flight: Mutex::default(),
            plan_wake: None,
            under_replicated: Mutex::default(),
            waiters: Waiters::default(),
            disk,
            metrics: metrics::Metrics::default(),
            conns: None,
        })
    }

    /// The op log, when there is a data directory.
    pub fn disk(&self) -> Option<&DiskLog> {
        self.disk.as_ref()
    }

    /// Takes over `snapshot`'s state as a primary: the same content under a new epoch (so a
    /// shadow never mixes two primaries' ops), with every peer given a fresh peer timeout.
    fn recover(&mut self, snapshot: Snapshot) -> io::Result<()> {
        let mut state = IndexState::restore(Snapshot {
            epoch: crate::ids::Ids::hex(&crate::ids::OsRandom, 8)?,
            ..snapshot
        });
        state.touch_all((self.clock)());
        if let Some(disk) = &self.disk {
            disk.reset(&state.snapshot())?;
        }
        *self.state.get_mut().unwrap_or_else(|e| e.into_inner()) = state;
        Ok(())
    }

    fn write(&self) -> RwLockWriteGuard<'_, IndexState> {
        write(&self.state)
    }

    /// Applies `op` to `state` (write-locked by the caller) and logs it for the shadows.
    /// Every change may change what is under-replicated, so the planner is woken too; an
    /// announce also settles the copy task it completes.
    fn apply(&self, state: &mut IndexState, op: Op, now: Millis) -> Result<Outcome, StateError> {
        let copied = match &op {
            Op::Announce { peer_id, file, .. } => {
                Some((peer_id.clone(), file.name.clone(), file.version))
            }
            _ => None,
        };
        let outcome = if self.log.is_none() && self.disk.is_none() {
            state.apply(op, now)?
        } else {
            let kept = op.clone();
            let outcome = state.apply(op, now)?;
            let record = SyncOp {
                seq: state.seq(),
                at: now,
                op: kept,
            };
            if let Some(disk) = &self.disk {
                disk.append(record.clone());
            }
            if let Some(log) = &self.log {
                log.push(record);
            }
            outcome
        };
        if let Some((peer_id, file, version)) = copied {
            self.flight().done(&peer_id, &file, version);
        }
        if let Some(wake) = &self.plan_wake {
            let _ = wake.try_send(());
        }
        Ok(outcome)
    }

    /// What `/metrics` reports besides request latencies.
    pub fn metrics_snapshot(&self) -> metrics::Snapshot {
        let (seq, peers, files, leases) = {
            let state = self.read();
            (
                state.seq(),
                state.peer_count(),
                state.held_file_count(),
                state.leases().len(),
            )
        };
        let shadows = self
            .shadow_states(seq)
            .into_iter()
            .map(|s| (s.url, s.lag, s.last_ack_ms_ago.map(|ms| ms as f64 / 1000.0)))
            .collect();
        metrics::Snapshot {
            role: if self.is_shadow() {
                "shadow"
            } else {
                "primary"
            },
            uptime: self.uptime(),
            seq,
            peers,
            files,
            leases,
            under_replicated: self.under_replicated(0).0,
            tasks: self.flight().counts(),
            shadows,
            since_sync: self.since_last_sync().map(|d| d.as_secs_f64()),
            fsync: self.disk.as_ref().map(DiskLog::fsync_times),
            connections: self.connections(),
        }
    }

    /// The HTTP server's connection counts.
    pub fn connections(&self) -> Option<crate::net::Counts> {
        self.conns.as_ref().map(|c| c.counts())
    }

    /// The copy tasks in flight (the planner's books).
    pub fn flight(&self) -> MutexGuard<'_, InFlight> {
        lock(&self.flight)
    }

    /// Everything `peer_id` should be doing: refresh its stale files, and its copies; at most
    /// `--max-tasks-per-answer` (the copies, at most `--max-tasks-per-peer`, always go).
    pub fn tasks_for(&self, peer_id: &str) -> Vec<crate::protocol::Task> {
        let copies = self.flight().tasks_for(peer_id);
        self.with_refreshes(peer_id, copies)
    }

    /// `tasks_for`, with the copies marked as sent: for the answers a peer acts on (its long
    /// poll, its register).
    pub fn deliver_tasks(&self, peer_id: &str) -> Vec<crate::protocol::Task> {
        let copies = self.flight().deliver(peer_id);
        self.with_refreshes(peer_id, copies)
    }

    /// The refresh tasks of `peer_id` that fit beside `copies`, then the copies. A peer with
    /// more stale files than fit gets the rest once it has fetched these.
    fn with_refreshes(
        &self,
        peer_id: &str,
        copies: Vec<crate::protocol::Task>,
    ) -> Vec<crate::protocol::Task> {
        let mut tasks = planner::refresh_tasks(&self.read(), peer_id);
        tasks.truncate(
            self.config
                .max_tasks_per_answer
                .saturating_sub(copies.len()),
        );
        tasks.extend(copies);
        tasks
    }

    /// Whether `peer_id` has a copy task it has not been sent: its long poll answers at once.
    pub fn has_new_tasks(&self, peer_id: &str) -> bool {
        self.flight().has_unsent(peer_id)
    }

    /// The peer gave up on these copies: the planner gives them to someone else.
    pub fn tasks_failed(&self, peer_id: &str, failed: &[crate::protocol::TaskFailure]) {
        let now = (self.clock)();
        let cool_down = self.config.task_timeout.as_millis() as u64;
        let mut any = false;
        for f in failed {
            if self.flight().failed(peer_id, &f.task_id, now, cool_down) {
                ::log::warn!("peer {peer_id} failed task {}: {}", f.task_id, f.reason);
                any = true;
            }
        }
        if let (true, Some(wake)) = (any, &self.plan_wake) {
            let _ = wake.try_send(());
        }
    }

    pub fn set_under_replicated(&self, files: Vec<crate::protocol::UnderReplicatedFile>) {
        *lock(&self.under_replicated) = files;
    }

    /// The planner's last count of under-replicated files, and the first `max` of them.
    pub fn under_replicated(
        &self,
        max: usize,
    ) -> (usize, Vec<crate::protocol::UnderReplicatedFile>) {
        let files = lock(&self.under_replicated);
        (files.len(), files.iter().take(max).cloned().collect())
    }

    /// Applies one op under the write lock (nothing else is done under it), then, with a data
    /// directory, waits until the op is on disk: an answer means the change survives a crash.
    pub fn submit(&self, op: Op) -> Result<Outcome, SubmitError> {
        let (outcome, seq) = self.submit_nowait(op)?;
        self.durable(seq)?;
        Ok(outcome)
    }

    /// Applies one op and returns its outcome and sequence number without waiting for the
    /// disk: the caller must not acknowledge it before `durable(seq)` (the HTTP edge hands
    /// the answer to the committer, so that no worker sits out an fsync).
    pub fn submit_nowait(&self, op: Op) -> Result<(Outcome, u64), SubmitError> {
        let now = (self.clock)();
        let mut state = self.write();
        let outcome = self.apply(&mut state, op, now)?;
        Ok((outcome, state.seq()))
    }

    /// Whether an acknowledgement has to wait for the disk (`--fsync always`).
    pub fn acks_wait_for_disk(&self) -> bool {
        self.disk
            .as_ref()
            .is_some_and(|d| d.fsync() == self::log::Fsync::Always)
    }

    /// Waits until op `seq` is on disk (as `--fsync` promises).
    pub fn durable(&self, seq: u64) -> Result<(), SubmitError> {
        match &self.disk {
            Some(disk) => disk
                .wait_durable(seq)
                .map_err(|e| SubmitError::Storage(e.to_string())),
            None => Ok(()),
        }
    }

    /// A heartbeat that only says "alive": no op, no sequence number (see `sync`).
    pub fn touch(&self, peer_id: &str, token_hash: &str) -> Result<(), StateError> {
        let now = (self.clock)();
        self.write().touch(peer_id, token_hash, now)
    }

    /// Counts every peer as alive now (not an op: liveness is not sequenced).
    pub fn touch_all(&self) {
        let now = (self.clock)();
        self.write().touch_all(now);
    }

    /// Read access for searches and status; readers wait for at most one `apply`.
    pub fn read(&self) -> RwLockReadGuard<'_, IndexState> {
        read(&self.state)
    }

    /// Removes the peers silent for longer than the peer timeout; returns their ids.
    pub fn prune_silent(&self) -> Vec<String> {
        let now = (self.clock)();
        let timeout = self.config.peer_timeout.as_millis() as u64;
        if self.read().silent_peers(now, timeout).is_empty() {
            return Vec::new();
        }
        // Finding and removing happen under one lock, so a heartbeat cannot slip in between.
        let mut state = self.write();
        let silent = state.silent_peers(now, timeout);
        match self.apply(&mut state, Op::Prune { peers: silent }, now) {
            Ok(Outcome::Pruned { peers }) => peers,
            _ => Vec::new(),
        }
    }

    /// Removes the leases that have expired; returns their ids. Expired leases are already
    /// worthless; this keeps the table small and puts expiry in the op stream.
    pub fn expire_leases(&self) -> Vec<String> {
        let now = (self.clock)();
        if self.read().leases().expired(now).is_empty() {
            return Vec::new();
        }
        let mut state = self.write();
        let lease_ids = state.leases().expired(now);
        match self.apply(&mut state, Op::ExpireLeases { lease_ids }, now) {
            Ok(Outcome::LeasesExpired { lease_ids }) => lease_ids,
            _ => Vec::new(),
        }
    }

    /// Shadow: applies the primary's ops that follow on from this state. Anything that does
    /// not follow on (another epoch, a gap, an op that fails here) asks for a snapshot.
    pub fn apply_sync(&self, rq: SyncRequest) -> Result<SyncResponse, SubmitError> {
        let response = self.apply_sync_locked(rq);
        // The primary hears of an op only once it is on this shadow's disk too.
        self.durable(response.seq)?;
        Ok(response)
    }

    fn apply_sync_locked(&self, rq: SyncRequest) -> SyncResponse {
        let mut state = self.write();
        *lock(&self.last_sync) = Some(Instant::now());
        if state.epoch() != rq.epoch {
            if state.seq() == 0 && state.peer_count() == 0 {
                // An empty state is the beginning of every history.
                *state = IndexState::default().with_epoch(rq.epoch);
                if let Some(disk) = &self.disk {
                    if let Err(e) = disk.reset(&state.snapshot()) {
                        ::log::error!("cannot store the primary's epoch: {e}");
                    }
                }
            } else {
                return self.need_snapshot(&state, "the primary's epoch changed");
            }
        }
        for sync in rq.ops {
            if sync.seq <= state.seq() {
                continue; // sent again after a lost answer
            }
            if sync.seq != state.seq() + 1 {
                let why = format!("gap: op {} after {}", sync.seq, state.seq());
                return self.need_snapshot(&state, &why);
            }
            let kept = self.disk.as_ref().map(|_| sync.clone());
            if let Err(e) = state.apply(sync.op, sync.at) {
                let why = format!("op {} does not apply here: {e}", sync.seq);
                ::log::error!("{why}");
                return self.need_snapshot(&state, &why);
            }
            if let (Some(disk), Some(record)) = (&self.disk, kept) {
                disk.append(record);
            }
        }
        state.set_liveness(&rq.liveness);
        SyncResponse {
            seq: state.seq(),
            need_snapshot: false,
        }
    }

    fn need_snapshot(&self, state: &IndexState, why: &str) -> SyncResponse {
        ::log::info!("shadow at seq {} needs a snapshot ({why})", state.seq());
        if let Some(resync) = &self.resync {
            let _ = resync.try_send(());
        }
        SyncResponse {
            seq: state.seq(),
            need_snapshot: true,
        }
    }

    /// Shadow: replaces the state with `snapshot` unless it is older than what is here.
    pub fn install_snapshot(&self, snapshot: Snapshot) -> bool {
        {
            let state = self.read();
            if snapshot.epoch == state.epoch() && snapshot.seq <= state.seq() {
                return false;
            }
        }
        if let Some(disk) = &self.disk {
            if let Err(e) = disk.reset(&snapshot) {
                ::log::error!("cannot store the snapshot: {e}");
                return false;
            }
        }
        // Rebuilding the search index happens outside the lock.
        let restored = IndexState::restore(snapshot);
        let mut state = self.write();
        if restored.epoch() == state.epoch() && restored.seq() <= state.seq() {
            return false;
        }
        *state = restored;
        true
    }

    /// The state as a snapshot; copied under the read lock, serialized by the caller.
    pub fn snapshot(&self) -> Snapshot {
        self.read().snapshot()
    }

    /// The index clock, in milliseconds since the epoch.
    pub fn now(&self) -> Millis {
        (self.clock)()
    }

    pub fn config(&self) -> &IndexConfig {
        &self.config
    }

    pub fn is_shadow(&self) -> bool {
        matches!(self.config.role, Role::Shadow { .. })
    }

    /// Primary: each shadow's progress.
    pub fn shadow_states(&self, seq: u64) -> Vec<crate::protocol::ShadowState> {
        self.shadows.iter().map(|s| s.status(seq)).collect()
    }

    /// Shadow: time since the primary last pushed.
    pub fn since_last_sync(&self) -> Option<Duration> {
        lock(&self.last_sync).map(|t| t.elapsed())
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

/// A running index server: its address, and the handle to stop it.
pub struct IndexServer {
    addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    stop: Sender<()>,
    threads: Vec<JoinHandle<()>>,
    index: Arc<Index>,
    failed: Receiver<()>,
}

fn wall_now() -> Millis {
    crate::clock::Clock::now_ms(&*crate::clock::SystemClock::shared())
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name).spawn(f)
}

impl IndexServer {
    /// Binds, then starts the HTTP workers and, by role, the sweeper and the shadow pushers
    /// (primary) or the catch-up thread (shadow).
    pub fn start(config: IndexConfig) -> io::Result<IndexServer> {
        let replicated = match &config.role {
            Role::Primary { shadows } => !shadows.is_empty(),
            Role::Shadow { .. } => true,
        };
        let secret = config.cluster_secret.clone().unwrap_or_default();
        if replicated && secret.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "replication needs a cluster secret (--cluster-secret or NAP_CLUSTER_SECRET)",
            ));
        }
        // The data is loaded before the port opens: while it loads, clients are refused at
        // once (and fail over) instead of waiting on a connection nobody answers.
        let mut index = Index::new(config.clone(), wall_now)?;
        let http = crate::net::HttpServer::start(
            &config.listen,
            crate::net::Limits {
                max: config.max_connections,
                idle_timeout: config.idle_timeout,
            },
        )?;
        let (server, addr, conns) = (http.server.clone(), http.addr, http.conns.clone());
        index.conns = Some(conns.clone());
        let workers = config.workers.max(1);
        let (stop, stopped): (Sender<()>, Receiver<()>) = crossbeam_channel::bounded(0);

        // The replication pieces are made first: the index holds its ends of them.
        let mut catch_up = None;
        let (plan_wake, plan_woken) = crossbeam_channel::bounded(1);
        if matches!(config.role, Role::Primary { .. }) {
            index.plan_wake = Some(plan_wake);
        }
        match &config.role {
            Role::Primary { shadows } if !shadows.is_empty() => {
                let empty = index.read().seq() == 0;
                let recovered = if empty {
                    sync::recover(shadows, &secret)
                } else {
                    None
                };
                if let Some((shadow, snapshot)) = recovered {
                    ::log::warn!(
                        "recovered the index state at seq {} ({} peers) from shadow {shadow}",
                        snapshot.seq,
                        snapshot.peers.len()
                    );
                    index.recover(snapshot)?;
                }
                index.log = Some(Arc::new(OpLog::new(config.sync_log)));
                index.shadows = shadows
                    .iter()
                    .map(|url| Arc::new(ShadowLink::new(url.trim_end_matches('/').into())))
                    .collect();
            }
            Role::Primary { .. } => {}
            Role::Shadow { primary } => {
                let (wanted, wants) = crossbeam_channel::bounded(1);
                index.resync = Some(wanted);
                catch_up = Some((primary.trim_end_matches('/').to_string(), wants));
            }
        }
        let index = Arc::new(index);

        let mut threads = Vec::new();
        // Writes are answered by the committer once on disk, so workers never wait for it.
        let (to_commit, committer) = crossbeam_channel::unbounded();
        let refusing = index.clone();
        let (dispatcher, calls) =
            http.spawn_dispatcher(move |request, conns| http::refuse(&refusing, request, conns))?;
        threads.push(dispatcher);
        for n in 0..workers {
            let (index, calls, to_commit) = (index.clone(), calls.clone(), to_commit.clone());
            threads.push(spawn(format!("http-{n}"), move || {
                http::serve(&index, &calls, &to_commit)
            })?);
        }
        let (fail, failed) = crossbeam_channel::bounded(1);
        threads.push(http.spawn_warden(stopped.clone(), move || {
            let _ = fail.try_send(());
        })?);
        // The committer ends once every worker (every sender) is gone.
        drop(to_commit);
        if index.acks_wait_for_disk() {
            let index = index.clone();
            threads.push(spawn("committer".into(), move || {
                http::commit(&index, &committer)
            })?);
        }
        if index.disk.is_some() {
            let (index, stopped) = (index.clone(), stopped.clone());
            threads.push(spawn("log-keeper".into(), move || {
                self::log::keep(&index, &stopped)
            })?);
        }
        if let Some(log) = &index.log {
            for (n, link) in index.shadows.iter().enumerate() {
                let (index, log, link) = (index.clone(), log.clone(), link.clone());
                let (secret, stopped) = (secret.clone(), stopped.clone());
                threads.push(spawn(format!("push-{n}"), move || {
                    sync::push(&index, &log, &link, &secret, &stopped)
                })?);
            }
        }
        match catch_up {
            Some((primary, wants)) => {
                let (index, stopped) = (index.clone(), stopped.clone());
                threads.push(spawn("catch-up".into(), move || {
                    sync::catch_up(&index, &primary, &secret, &wants, &stopped)
                })?);
            }
            // Only a primary prunes, expires and plans: a shadow changes by its primary's ops
            // alone.
            None => {
                let (index2, stopped2) = (index.clone(), stopped.clone());
                threads.push(spawn("sweeper".into(), move || {
                    sweep::run(&index2, &stopped2)
                })?);
                let (index, stopped) = (index.clone(), stopped.clone());
                threads.push(spawn("planner".into(), move || {
                    replicate::run(&index, &plan_woken, &stopped)
                })?);
            }
        }
        ::log::info!(
            "index listening on {addr} as {}",
            match &config.role {
                Role::Primary { shadows } if shadows.is_empty() => "primary".to_string(),
                Role::Primary { shadows } => format!("primary of {}", shadows.join(", ")),
                Role::Shadow { primary } => format!("read-only shadow of {primary}"),
            }
        );
        Ok(IndexServer {
            addr,
            server,
            stop,
            threads,
            index,
            failed,
        })
    }

    /// Ready once the server has stopped accepting connections (see `net::connections`):
    /// the process should stop, so its supervisor starts a fresh one.
    pub fn failed(&self) -> &Receiver<()> {
        &self.failed
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL of the API, e.g. `http://127.0.0.1:7070`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the workers and background threads, waits for them, then writes and fsyncs
    /// whatever the log still holds (with `--fsync batch` or `never`, the last few ms).
    pub fn stop(self) {
        drop(self.stop);
        for _ in 0..self.threads.len() {
            self.server.unblock();
        }
        for t in self.threads {
            let _ = t.join();
        }
        if let Some(disk) = self.index.disk() {
            match disk.sync_all() {
                Ok(()) => ::log::info!(
                    "op log written and synced up to seq {}",
                    self.index.read().seq()
                ),
                Err(e) => ::log::error!("could not sync the op log at stop: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::state::{hash_token, tests::meta};
    use super::*;

    static NOW: AtomicU64 = AtomicU64::new(1_000);

    fn clock() -> Millis {
        NOW.load(Ordering::Relaxed)
    }

    fn register(id: &str, files: Vec<crate::protocol::FileMeta>) -> Op {
        Op::Register {
            peer_id: id.into(),
            token_hash: hash_token(id),
            addr: "127.0.0.1:9".into(),
            files,
        }
    }

    /// Ships what the shadow lacks, as the pusher would.
    fn push(primary: &Index, shadow: &Index) -> SyncResponse {
        let log = primary.log.as_ref().unwrap();
        let (epoch, liveness) = {
            let state = primary.read();
            (state.epoch().to_string(), state.liveness())
        };
        let ops = log.after(shadow.read().seq(), 1000, 1000);
        shadow
            .apply_sync(SyncRequest {
                epoch,
                ops,
                liveness,
            })
            .unwrap()
    }

    #[test]
    fn a_shadow_fed_the_op_stream_equals_its_primary_after_every_op() {
        let config = IndexConfig {
            peer_timeout: Duration::from_millis(500),
            ..IndexConfig::default()
        };
        let mut primary = Index::new(config.clone(), clock).unwrap();
        primary.log = Some(Arc::new(OpLog::new(1000)));
        let shadow_config = IndexConfig {
            role: Role::Shadow {
                primary: "http://primary".into(),
            },
            ..config
        };
        let shadow = Index::new(shadow_config, clock).unwrap();
        let ops = vec![
            register("a", vec![meta("doc", 1, "v1"), meta("x y", 1, "x")]),
            register("b", vec![meta("doc", 1, "v1")]),
            Op::AcquireLease {
                peer_id: "a".into(),
                token_hash: hash_token("a"),
                file: "doc".into(),
                lease_id: "00aa".into(),
                ttl_ms: 100,
            },
            Op::Announce {
                peer_id: "a".into(),
                token_hash: hash_token("a"),
                file: meta("doc", 2, "v2"),
                lease_id: Some("00aa".into()),
            },
            Op::Heartbeat {
                peer_id: "b".into(),
                token_hash: hash_token("b"),
                added: vec![meta("new", 1, "n")],
                removed: vec!["doc".into()],
            },
            // Refused on the primary: never shipped, and the shadow still matches.
            register("b", vec![meta("doc", 1, "not v1")]),
            Op::AcquireLease {
                peer_id: "b".into(),
                token_hash: hash_token("b"),
                file: "x y".into(),
                lease_id: "00bb".into(),
                ttl_ms: 100,
            },
        ];
        for op in ops {
            let _ = primary.submit(op);
            NOW.fetch_add(10, Ordering::Relaxed);
            assert!(!push(&primary, &shadow).need_snapshot);
            assert_eq!(shadow.read().seq(), primary.read().seq());
            assert_eq!(shadow.read().digest(), primary.read().digest());
        }
        // A touch is no op, but its liveness reaches the shadow with the next push.
        primary.touch("a", &hash_token("a")).unwrap();
        let seq = primary.read().seq();
        assert!(!push(&primary, &shadow).need_snapshot);
        assert_eq!(shadow.read().seq(), seq, "no op was shipped for it");
        assert_eq!(shadow.read().liveness(), primary.read().liveness());
        // The sweeps are ops too.
        NOW.fetch_add(1_000, Ordering::Relaxed);
        assert!(!primary.expire_leases().is_empty());
        assert_eq!(
            primary.prune_silent(),
            vec!["a".to_string(), "b".to_string()]
        );
        assert!(!push(&primary, &shadow).need_snapshot);
        assert_eq!(shadow.read().digest(), primary.read().digest());
        assert_eq!(shadow.read().peer_count(), 0);

        // A shadow that missed ops asks for a snapshot, and equals the primary after it.
        let late = Index::new(
            IndexConfig {
                role: Role::Shadow {
                    primary: "http://primary".into(),
                },
                ..IndexConfig::default()
            },
            clock,
        )
        .unwrap();
        primary.submit(register("c", vec![])).unwrap();
        let answer = late
            .apply_sync(SyncRequest {
                epoch: primary.read().epoch().to_string(),
                ops: primary.log.as_ref().unwrap().after(5, 1000, 1000),
                liveness: Vec::new(),
            })
            .unwrap();
        assert!(answer.need_snapshot);
        assert_eq!(late.read().seq(), 0, "nothing applied across the gap");
        assert!(late.install_snapshot(primary.snapshot()));
        assert_eq!(late.read().digest(), primary.read().digest());
        assert!(!late.install_snapshot(primary.snapshot()), "not twice");
    }

    #[test]
    fn an_index_on_a_data_dir_comes_back_as_it_was() {
        let tmp = tempfile::tempdir().unwrap();
        let config = IndexConfig {
            data_dir: Some(tmp.path().to_path_buf()),
            ..IndexConfig::default()
        };
        let digest = {
            let index = Index::new(config.clone(), clock).unwrap();
            index
                .submit(register("a", vec![meta("doc", 1, "v1")]))
                .unwrap();
            index
                .submit(Op::AcquireLease {
                    peer_id: "a".into(),
                    token_hash: hash_token("a"),
                    file: "doc".into(),
                    lease_id: "00cc".into(),
                    ttl_ms: 60_000,
                })
                .unwrap();
            index
                .submit(Op::Announce {
                    peer_id: "a".into(),
                    token_hash: hash_token("a"),
                    file: meta("doc", 2, "v2"),
                    lease_id: Some("00cc".into()),
                })
                .unwrap();
            let digest = index.read().digest();
            digest
        };
        let again = Index::new(config, clock).unwrap();
        assert_eq!(again.read().digest(), digest);
        assert_eq!(again.read().file("doc").unwrap().latest_version(), 2);
    }

    #[test]
    fn an_answer_carries_at_most_max_tasks_per_answer() {
        let config = IndexConfig {
            replication_factor: 1,
            max_tasks_per_answer: 2,
            ..IndexConfig::default()
        };
        let index = Index::new(config, clock).unwrap();
        let files = |v: u64| -> Vec<_> {
            (0..5)
                .map(|n| meta(&format!("f{n}"), v, &format!("{n} v{v}")))
                .collect()
        };
        index.submit(register("old", files(1))).unwrap();
        index.submit(register("new", files(1))).unwrap();
        // "new" publishes version 2 of all five (a lease, then the announce, each).
        for n in 0..5 {
            let file = format!("f{n}");
            let lease_id = format!("{n:032x}");
            index
                .submit(Op::AcquireLease {
                    peer_id: "new".into(),
                    token_hash: hash_token("new"),
                    file: file.clone(),
                    lease_id: lease_id.clone(),
                    ttl_ms: 60_000,
                })
                .unwrap();
            index
                .submit(Op::Announce {
                    peer_id: "new".into(),
                    token_hash: hash_token("new"),
                    file: meta(&file, 2, &format!("{n} v2")),
                    lease_id: Some(lease_id),
                })
                .unwrap();
        }
        // Five stale files: two refresh tasks now, the rest once those are fetched.
        let tasks = index.tasks_for("old");
        assert_eq!(tasks.len(), 2, "{tasks:?}");
        assert!(tasks.iter().all(|t| t.version == 2));
        assert_eq!(index.deliver_tasks("old").len(), 2);
    }
}
