//! The shared core of a running index: its state behind one lock, the clock and id source it
//! was handed, its role, and its journal.
//!
//! Every change goes one way. [`step`] applies a command to the state and says what must
//! follow, as a value ([`Effects`]: the record to log and ship, the copy task it completes,
//! the peers to wake, whether to plan again), in the spirit of raft's `Ready`; it is pure, so
//! the simulation drives it directly. [`Index::submit`] is its caller in the server: it
//! brings the clock and the write lock, appends the record to the journal and, on a primary
//! with shadows, to their backlog while the lock still holds (so both are in sequence
//! order), then settles and wakes outside it, and hands the rest (the sequence number to wait
//! for, the peers to wake once it is durable) to its own caller, the HTTP edge.

use std::io;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use super::config::IndexConfig;
use super::disk::{DirDisk, Disk};
use super::journal::{Fsync, Journal};
use super::metrics::{self, Metrics};
use super::role::Role;
use super::state::{
    AppliedOp, Command, ExpireLeases, ForgetHistories, IndexState, Millis, Op, Prune, Snapshot,
    StateError,
};
use crate::clock::SharedClock;
use crate::ids::SharedIds;
use crate::threads::{read, write};

/// What applying one op asks of the world around the state. Nothing in it has happened yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effects {
    /// The op as applied: append it to the journal, then ship it to the shadows, in order.
    pub record: AppliedOp,
    /// The copy task this op completes: a peer announcing the version it was asked to copy.
    pub copy_done: Option<CopyDone>,
    /// Peers that now have a task (stale holders of a new version): answer their waiting
    /// heartbeats, once the op is durable.
    pub wake: Vec<String>,
    /// Holdings changed: the planner should look again.
    pub replan: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyDone {
    pub peer_id: String,
    pub file: String,
    pub version: u64,
}

impl Effects {
    /// What `record`, just applied to `state`, asks for.
    pub fn of(record: AppliedOp, state: &IndexState) -> Effects {
        let (copy_done, wake, replan) = match &record.op {
            Op::Announce(a) => {
                let stale = state
                    .file(&a.file.name)
                    .filter(|entry| entry.latest_version() == a.file.version)
                    .map(|entry| {
                        entry
                            .holders
                            .iter()
                            .filter(|(_, held)| **held < a.file.version)
                            .map(|(id, _)| id.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                let done = CopyDone {
                    peer_id: a.peer_id.clone(),
                    file: a.file.name.clone(),
                    version: a.file.version,
                };
                (Some(done), stale, true)
            }
            Op::Register(_) | Op::Heartbeat(_) | Op::Unregister(_) | Op::Prune(_) => {
                (None, Vec::new(), true)
            }
            // Forgotten histories had no holder: nothing for the planner.
            Op::AcquireLease(_)
            | Op::RenewLease(_)
            | Op::ReleaseLease(_)
            | Op::ExpireLeases(_)
            | Op::ForgetHistories(_) => (None, Vec::new(), false),
        };
        Effects {
            record,
            copy_done,
            wake,
            replan,
        }
    }
}

/// Applies `command` to `state` at `now`: its outcome, and what must follow. No I/O, no
/// clock, no locks: the same commands give the same state and the same effects anywhere.
pub fn step<C: Command>(
    state: &mut IndexState,
    command: C,
    now: Millis,
) -> Result<(C::Outcome, Effects), StateError> {
    let op: Op = command.clone().into();
    let outcome = state.execute(command, now)?;
    let record = AppliedOp {
        seq: state.seq(),
        at: now,
        op,
    };
    Ok((outcome, Effects::of(record, state)))
}

/// Why a change was not made, or not made durable.
#[derive(Debug)]
pub enum SubmitError {
    State(StateError),
    /// The op applied but the journal could not be written: nothing can be promised.
    Storage(String),
}

impl From<StateError> for SubmitError {
    fn from(e: StateError) -> Self {
        SubmitError::State(e)
    }
}

impl std::fmt::Display for SubmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubmitError::State(e) => write!(f, "{e}"),
            SubmitError::Storage(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for SubmitError {}

/// A command applied, not yet known to be durable.
#[derive(Debug)]
pub struct Applied<T> {
    pub outcome: T,
    /// Its sequence number: acknowledge it only after `Index::durable(seq)`.
    pub seq: u64,
    /// Peers whose waiting heartbeats to answer once it is durable.
    pub wake: Vec<String>,
}

/// Names one `ForgetHistories` op forgets at most: each costs about 3 µs (its map entries
/// and its tokens), so one op holds the write lock about 3 ms. (The op that finds a map three
/// quarters empty also shrinks it: tens of ms on a 400,000-name state, once per halving; the
/// unregister that orphaned those names held the lock 450 ms.)
pub const FORGET_PER_OP: usize = 1024;

pub struct Index {
    state: RwLock<IndexState>,
    config: IndexConfig,
    clock: SharedClock,
    ids: SharedIds,
    /// The clock's monotonic reading at start, for uptime.
    started: Duration,
    role: Role,
    /// With a data directory: where every change is written before it is acknowledged.
    journal: Option<Journal>,
    /// Request latencies, recorded by the HTTP edge, for `/metrics`.
    pub metrics: Metrics,
    /// The HTTP server's connection counts (none without a server).
    conns: Option<Arc<crate::net::Connections>>,
}

fn invalid_data(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

impl Index {
    /// The index `config` describes: with a data directory, what it holds; else empty.
    pub fn new(config: IndexConfig, clock: SharedClock, ids: SharedIds) -> io::Result<Index> {
        let disk: Option<Arc<dyn Disk>> = match &config.data_dir {
            Some(dir) => Some(Arc::new(DirDisk::open(dir)?)),
            None => None,
        };
        Index::open(config, clock, ids, disk)
    }

    /// The index whose journal is on `disk` (`None`: in memory). A primary starting empty
    /// begins a new history (a fresh epoch); a shadow takes its primary's. With a journal,
    /// the state is its snapshot and the logged ops replayed after it (known peers get a fresh
    /// peer timeout to show up again).
    pub fn open(
        config: IndexConfig,
        clock: SharedClock,
        ids: SharedIds,
        disk: Option<Arc<dyn Disk>>,
    ) -> io::Result<Index> {
        let role = Role::from_config(&config);
        let epoch = match role {
            Role::Primary(_) => ids.hex(8)?,
            Role::Shadow(_) => String::new(),
        };
        let empty = |epoch: String| IndexState::with_capacity(1024, 16 * 1024).with_epoch(epoch);
        let (state, journal) = match disk {
            None => (empty(epoch), None),
            Some(disk) => {
                let place = disk.describe();
                let (journal, recovered) = Journal::open(disk, config.fsync, &epoch)?;
                let mut state = match recovered.snapshot {
                    Some(snapshot) => IndexState::restore(snapshot),
                    None => empty(recovered.epoch),
                };
                let replayed = recovered.ops.len();
                // A primary's shadows may lack the tail it replays: it goes to them first.
                let backlog = role.primary().and_then(|p| p.backlog.as_ref());
                for op in recovered.ops {
                    let seq = op.seq;
                    if let Some(backlog) = backlog {
                        backlog.push(op.clone());
                    }
                    if let Err(e) = state.apply(op.op, op.at) {
                        return Err(invalid_data(format!(
                            "{place}: logged op {seq} does not apply ({e}); the log is damaged"
                        )));
                    }
                    if state.seq() != seq {
                        return Err(invalid_data(format!(
                            "{place}: logged op {seq} applied as {}",
                            state.seq()
                        )));
                    }
                }
                if state.seq() > 0 {
                    // The recovered ops (all read at once) and whatever the replay built and
                    // dropped again are freed: give the memory back before serving.
                    crate::memory::give_back_freed();
                    state.touch_all(clock.now_ms());
                    ::log::info!(
                        "loaded the index from {place}: seq {} ({replayed} ops replayed), {} peers, {} files",
                        state.seq(),
                        state.peer_count(),
                        state.held_file_count()
                    );
                }
                (state, Some(journal))
            }
        };
        Ok(Index {
            state: RwLock::new(state),
            started: clock.elapsed(),
            config,
            clock,
            ids,
            role,
            journal,
            metrics: Metrics::default(),
            conns: None,
        })
    }

    /// Counts the HTTP server's connections in `/metrics` and on the status page.
    pub fn attach_connections(&mut self, conns: Arc<crate::net::Connections>) {
        self.conns = Some(conns);
    }

    /// Takes over `snapshot`'s state as a primary: the same content under a new epoch (so a
    /// shadow never mixes two primaries' ops), with every peer given a fresh peer timeout.
    pub fn recover(&mut self, snapshot: Snapshot) -> io::Result<()> {
        let mut state = IndexState::restore(Snapshot {
            epoch: self.ids.hex(8)?,
            ..snapshot
        });
        state.touch_all(self.now());
        if let Some(journal) = &self.journal {
            journal.reset(&state.snapshot())?;
        }
        *self.state.get_mut().unwrap_or_else(|e| e.into_inner()) = state;
        Ok(())
    }

    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    pub fn role(&self) -> &Role {
        &self.role
    }

    pub fn is_shadow(&self) -> bool {
        matches!(self.role, Role::Shadow(_))
    }

    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    pub fn ids(&self) -> &SharedIds {
        &self.ids
    }

    /// The index clock, in milliseconds since the epoch.
    pub fn now(&self) -> Millis {
        self.clock.now_ms()
    }

    pub fn config(&self) -> &IndexConfig {
        &self.config
    }

    pub fn uptime(&self) -> Duration {
        self.clock.elapsed().saturating_sub(self.started)
    }

    /// Read access for searches and status; readers wait for at most one op.
    pub fn read(&self) -> RwLockReadGuard<'_, IndexState> {
        read(&self.state)
    }

    pub(super) fn write(&self) -> RwLockWriteGuard<'_, IndexState> {
        write(&self.state)
    }

    /// Applies `command` under the write lock (nothing else is done under it but queueing
    /// its record) and acts on its effects. The answer it allows must wait for
    /// [`durable`](Index::durable)`(seq)`: the HTTP edge hands it to the committer, so that no
    /// worker sits out an fsync.
    pub fn submit<C: Command>(&self, command: C) -> Result<Applied<C::Outcome>, SubmitError> {
        let now = self.now();
        let mut state = self.write();
        let (outcome, effects) = step(&mut state, command, now)?;
        Ok(self.act(state, outcome, effects))
    }

    /// `submit`, then waits until the op is on disk: an answer means it survives a crash.
    pub fn submit_durable<C: Command>(&self, command: C) -> Result<C::Outcome, SubmitError> {
        let applied = self.submit(command)?;
        self.durable(applied.seq)?;
        Ok(applied.outcome)
    }

    /// Carries out `effects` of an op just applied under `state`'s lock: the record is queued
    /// for the journal and the shadows before the lock goes, the rest after.
    fn act<T>(
        &self,
        state: RwLockWriteGuard<'_, IndexState>,
        outcome: T,
        effects: Effects,
    ) -> Applied<T> {
        let Effects {
            record,
            copy_done,
            wake,
            replan,
        } = effects;
        let seq = record.seq;
        self.record(record);
        drop(state);
        if let Some(primary) = self.role.primary() {
            if let Some(done) = copy_done {
                primary
                    .copies
                    .flight()
                    .done(&done.peer_id, &done.file, done.version);
            }
            if replan {
                primary.copies.replan();
            }
        }
        Applied { outcome, seq, wake }
    }

    /// Queues an applied op for the journal and, on a primary with shadows, for them. Called
    /// under the state's write lock, so both queues are in sequence order.
    pub(super) fn record(&self, record: AppliedOp) {
        let backlog = self.role.primary().and_then(|p| p.backlog.as_ref());
        match (&self.journal, backlog) {
            (Some(journal), Some(backlog)) => {
                journal.append(record.clone());
                backlog.push(record);
            }
            (Some(journal), None) => journal.append(record),
            (None, Some(backlog)) => backlog.push(record),
            (None, None) => {}
        }
    }

    /// Whether an acknowledgement has to wait for the disk (`--fsync always`).
    pub fn acks_wait_for_disk(&self) -> bool {
        self.journal
            .as_ref()
            .is_some_and(|j| j.fsync() == Fsync::Always)
    }

    /// Waits until op `seq` is on disk (as `--fsync` promises).
    pub fn durable(&self, seq: u64) -> Result<(), SubmitError> {
        match &self.journal {
            Some(journal) => journal
                .wait_durable(seq)
                .map_err(|e| SubmitError::Storage(e.to_string())),
            None => Ok(()),
        }
    }

    /// A heartbeat that only says "alive": no op, no sequence number (see `shadowing`).
    pub fn touch(&self, peer_id: &str, token_hash: &str) -> Result<(), StateError> {
        let now = self.now();
        self.write().touch(peer_id, token_hash, now)
    }

    /// Counts every peer as alive now (not an op: liveness is not sequenced).
    pub fn touch_all(&self) {
        let now = self.now();
        self.write().touch_all(now);
    }

    /// Removes the peers silent for longer than the peer timeout; returns their ids.
    pub fn prune_silent(&self) -> Vec<String> {
        let now = self.now();
        let timeout = self.config.peer_timeout.as_millis() as u64;
        if self.read().silent_peers(now, timeout).is_empty() {
            return Vec::new();
        }
        // Finding and removing happen under one lock, so a heartbeat cannot slip in between.
        let mut state = self.write();
        let peers = state.silent_peers(now, timeout);
        match step(&mut state, Prune { peers }, now) {
            Ok((pruned, effects)) => self.act(state, pruned, effects).outcome.peers,
            Err(_) => Vec::new(),
        }
    }

    /// Removes the leases that have expired; returns their ids. Expired leases are already
    /// worthless; this keeps the table small and puts expiry in the op stream.
    pub fn expire_leases(&self) -> Vec<String> {
        let now = self.now();
        if self.read().leases().expired(now).is_empty() {
            return Vec::new();
        }
        let mut state = self.write();
        let lease_ids = state.leases().expired(now);
        match step(&mut state, ExpireLeases { lease_ids }, now) {
            Ok((expired, effects)) => self.act(state, expired, effects).outcome.lease_ids,
            Err(_) => Vec::new(),
        }
    }

    /// Forgets the histories of names no peer has held for `--history-retention`, one
    /// bounded op at a time (the write lock is let go between them, so readers and writers
    /// get in), at most `max_ops` ops; returns how many names went.
    pub fn forget_histories(&self, max_ops: usize) -> usize {
        let Some(retention) = self.config.history_retention else {
            return 0;
        };
        let now = self.now();
        // Nothing is due before the index clock has run for a whole retention period.
        let Some(before_ms) = now.checked_sub(retention.as_millis() as u64) else {
            return 0;
        };
        let due = |state: &IndexState| state.oldest_orphan_ms().is_some_and(|t| t <= before_ms);
        let mut forgotten = 0;
        for _ in 0..max_ops {
            if !due(&self.read()) {
                break;
            }
            let mut state = self.write();
            let op = ForgetHistories {
                before_ms,
                max_names: FORGET_PER_OP,
            };
            match step(&mut state, op, now) {
                Ok((outcome, effects)) => {
                    let outcome = self.act(state, outcome, effects).outcome;
                    forgotten += outcome.names;
                    if !outcome.more {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        forgotten
    }

    /// The state as a snapshot; copied under the read lock, serialized by the caller.
    pub fn snapshot(&self) -> Snapshot {
        self.read().snapshot()
    }

    /// The state as a snapshot, once all it holds is on disk: what another index may take
    /// (a crash here must not take back what a shadow was given).
    pub fn durable_snapshot(&self) -> Result<Snapshot, SubmitError> {
        let snapshot = self.snapshot();
        if let Some(journal) = &self.journal {
            let stored = match journal.fsync() {
                Fsync::Always => journal.wait_durable(snapshot.seq),
                Fsync::Batch | Fsync::Never => journal.sync_all(),
            };
            stored.map_err(|e| SubmitError::Storage(e.to_string()))?;
        }
        Ok(snapshot)
    }

    /// Writes out what no request waits for and, once the journal since the last snapshot
    /// weighs `--snapshot-every` and at least as much as the state has files (an op weighs
    /// one, plus one per file it lists or may forget: what replaying it costs; a large state,
    /// whose encoding holds the read lock longest, is snapshotted less often), snapshots the
    /// state and lets the journal before it go. So a journal never costs a restart much more
    /// than the state it rebuilds: after a peer came and went with 400,000 names, and their
    /// histories were forgotten, a restart reads a small snapshot instead of replaying them.
    /// Returns the snapshot's seq.
    pub fn maintain_journal(&self) -> io::Result<Option<u64>> {
        let Some(journal) = &self.journal else {
            return Ok(None);
        };
        journal.flush()?;
        let due = self
            .config
            .snapshot_every
            .max(1)
            .max(self.read().file_count() as u64);
        if journal.since_snapshot() < due {
            return Ok(None);
        }
        let covered = journal.rotate()?;
        // Encoded under the read lock (no copy), written outside it.
        let (json, seq) = {
            let state = self.read();
            (
                state.snapshot_json().map_err(io::Error::other)?,
                state.seq(),
            )
        };
        journal.save_snapshot(&json, seq, covered)?;
        Ok(Some(seq))
    }

    /// The HTTP server's connection counts.
    /// What a request refused for load is told.
    pub fn connections_refusal(&self) -> Option<String> {
        self.conns.as_ref().map(|c| c.refusal())
    }

    pub fn connections(&self) -> Option<crate::net::Counts> {
        self.conns.as_ref().map(|c| c.counts())
    }

    /// Primary: each shadow's progress.
    pub fn shadow_states(&self, seq: u64) -> Vec<crate::protocol::ShadowState> {
        let now = self.clock.elapsed();
        self.role.primary().map_or_else(Vec::new, |p| {
            p.links.iter().map(|l| l.status(seq, now)).collect()
        })
    }

    /// Shadow: time since the primary last pushed.
    pub fn since_last_sync(&self) -> Option<Duration> {
        self.role
            .shadow()
            .and_then(|s| s.since_sync(self.clock.elapsed()))
    }

    /// What `/metrics` reports besides request latencies.
    pub fn metrics_snapshot(&self) -> metrics::Snapshot {
        let (seq, peers, files, histories, leases) = {
            let state = self.read();
            (
                state.seq(),
                state.peer_count(),
                state.held_file_count(),
                state.file_count(),
                state.leases().len(),
            )
        };
        let shadows = self
            .shadow_states(seq)
            .into_iter()
            .map(|s| (s.url, s.lag, s.last_ack_ms_ago.map(|ms| ms as f64 / 1000.0)))
            .collect();
        metrics::Snapshot {
            role: self.role.name(),
            uptime: self.uptime(),
            seq,
            peers,
            files,
            histories,
            leases,
            under_replicated: self.under_replicated(0).0,
            tasks: self.copy_counts(),
            shadows,
            since_sync: self.since_last_sync().map(|d| d.as_secs_f64()),
            fsync: self.journal.as_ref().map(Journal::fsync_times),
            connections: self.connections(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::ManualClock;
    use crate::ids::SeededIds;
    use crate::index::config::RoleConfig;
    use crate::index::shadowing::{SyncRequest, SyncResponse};
    use crate::index::state::tests::meta;
    use crate::index::state::*;

    /// An index of `role` on `clock`, in memory unless `config` says otherwise.
    fn index(config: IndexConfig, clock: &Arc<ManualClock>) -> Index {
        Index::new(config, clock.clone(), SeededIds::shared(1)).unwrap()
    }

    fn shadow_config() -> IndexConfig {
        IndexConfig {
            role: RoleConfig::Shadow {
                primary: "http://primary".into(),
            },
            ..IndexConfig::default()
        }
    }

    fn register(id: &str, files: Vec<crate::protocol::FileMeta>) -> Register {
        Register {
            peer_id: id.into(),
            token_hash: hash_token(id),
            addr: "127.0.0.1:9".into(),
            files,
            limits: Limits::NONE,
        }
    }

    /// Ships what the shadow lacks, as the pusher would.
    fn push(primary: &Index, shadow: &Index) -> SyncResponse {
        let backlog = primary.role().primary().unwrap().backlog.clone().unwrap();
        let push = primary.next_push(&backlog, shadow.read().seq(), true);
        shadow.apply_sync(push).unwrap()
    }

    #[test]
    fn a_shadow_fed_the_op_stream_equals_its_primary_after_every_op() {
        let clock = ManualClock::shared(1_000);
        let config = IndexConfig {
            peer_timeout: Duration::from_millis(500),
            role: RoleConfig::Primary {
                shadows: vec!["http://shadow".into()],
            },
            ..IndexConfig::default()
        };
        let primary = index(config, &clock);
        let shadow = index(shadow_config(), &clock);
        let ops: Vec<Op> = vec![
            register("a", vec![meta("doc", 1, "v1"), meta("x y", 1, "x")]).into(),
            register("b", vec![meta("doc", 1, "v1")]).into(),
            AcquireLease {
                peer_id: "a".into(),
                token_hash: hash_token("a"),
                file: "doc".into(),
                lease_id: "00aa".into(),
                ttl_ms: 100,
            }
            .into(),
            Announce {
                peer_id: "a".into(),
                token_hash: hash_token("a"),
                file: meta("doc", 2, "v2"),
                lease_id: Some("00aa".into()),
                limits: Limits::NONE,
            }
            .into(),
            Heartbeat {
                peer_id: "b".into(),
                token_hash: hash_token("b"),
                added: vec![meta("new", 1, "n")],
                removed: vec!["doc".into()],
                limits: Limits::NONE,
            }
            .into(),
            // Refused on the primary: never shipped, and the shadow still matches.
            register("b", vec![meta("doc", 1, "not v1")]).into(),
            AcquireLease {
                peer_id: "b".into(),
                token_hash: hash_token("b"),
                file: "x y".into(),
                lease_id: "00bb".into(),
                ttl_ms: 100,
            }
            .into(),
        ];
        for op in ops {
            let _ = submit_any(&primary, op);
            clock.advance(Duration::from_millis(10));
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
        clock.advance(Duration::from_millis(1_000));
        assert!(!primary.expire_leases().is_empty());
        assert_eq!(
            primary.prune_silent(),
            vec!["a".to_string(), "b".to_string()]
        );
        assert!(!push(&primary, &shadow).need_snapshot);
        assert_eq!(shadow.read().digest(), primary.read().digest());
        assert_eq!(shadow.read().peer_count(), 0);

        // A shadow that missed ops asks for a snapshot, and equals the primary after it.
        let late = index(shadow_config(), &clock);
        primary.submit(register("c", vec![])).unwrap();
        let backlog = primary.role().primary().unwrap().backlog.clone().unwrap();
        let answer = late
            .apply_sync(SyncRequest {
                epoch: primary.read().epoch().to_string(),
                ops: backlog.after(5, 1000, 1000),
                liveness: Vec::new(),
                head: primary.read().seq(),
            })
            .unwrap();
        assert!(answer.need_snapshot);
        assert_eq!(late.read().seq(), 0, "nothing applied across the gap");
        assert!(late.install_snapshot(primary.snapshot()));
        assert_eq!(late.read().digest(), primary.read().digest());
        assert!(!late.install_snapshot(primary.snapshot()), "not twice");
    }

    #[test]
    fn the_sweep_forgets_histories_after_the_retention_in_bounded_ops_and_shadows_follow() {
        let clock = ManualClock::shared(1_000);
        let tmp = tempfile::tempdir().unwrap();
        let config = IndexConfig {
            history_retention: Some(Duration::from_secs(10)),
            role: RoleConfig::Primary {
                shadows: vec!["http://shadow".into()],
            },
            data_dir: Some(tmp.path().to_path_buf()),
            snapshot_every: 10,
            ..IndexConfig::default()
        };
        let primary = index(config.clone(), &clock);
        let shadow = index(shadow_config(), &clock);
        let n = FORGET_PER_OP * 2 + 1;
        let files = (0..n).map(|i| meta(&format!("f{i}"), 1, "x")).collect();
        primary.submit_durable(register("a", files)).unwrap();
        // A register that big weighs more than the state has files: a snapshot is due.
        assert!(primary.maintain_journal().unwrap().is_some());
        primary
            .submit_durable(Unregister {
                peer_id: "a".into(),
                token_hash: hash_token("a"),
            })
            .unwrap();
        clock.advance(Duration::from_millis(9_999));
        assert_eq!(primary.forget_histories(64), 0, "a millisecond early");
        clock.advance(Duration::from_millis(1));
        let seq = primary.read().seq();
        assert_eq!(
            primary.forget_histories(2),
            2 * FORGET_PER_OP,
            "two ops at most"
        );
        assert_eq!(primary.read().seq(), seq + 2);
        assert_eq!(primary.forget_histories(64), 1);
        assert_eq!(primary.forget_histories(64), 0, "nothing due: no op at all");
        assert_eq!(primary.read().seq(), seq + 3);
        assert_eq!(primary.read().file_count(), 0);
        // Sweeps are shipped once the journal keeper has written them.
        primary.journal().unwrap().sync_all().unwrap();
        assert!(!push(&primary, &shadow).need_snapshot);
        assert_eq!(shadow.read().seq(), primary.read().seq());
        assert_eq!(shadow.read().digest(), primary.read().digest());
        // The forgetting weighs enough for a snapshot too: a restart reads a small state.
        assert!(primary.maintain_journal().unwrap().is_some());
        let digest = primary.read().digest();
        drop(primary);
        let again = index(config, &clock);
        assert_eq!(again.read().digest(), digest);
        assert_eq!(again.read().file_count(), 0);
    }

    #[test]
    fn no_history_is_forgotten_with_retention_off_or_before_the_clock_passed_it() {
        let clock = ManualClock::shared(5_000);
        let keep = IndexConfig {
            history_retention: None,
            ..IndexConfig::default()
        };
        let primary = index(keep, &clock);
        primary
            .submit(register("a", vec![meta("f", 1, "x")]))
            .unwrap();
        primary.submit(register("a", Vec::new())).unwrap();
        clock.advance(Duration::from_secs(365 * 24 * 3600));
        assert_eq!(primary.forget_histories(64), 0);
        assert_eq!(primary.read().file_count(), 1);
        // A clock younger than the retention (a test clock, or one reset) forgets nothing.
        let young = ManualClock::shared(5_000);
        let week = index(IndexConfig::default(), &young);
        week.submit(register("a", vec![meta("f", 1, "x")])).unwrap();
        week.submit(register("a", Vec::new())).unwrap();
        assert_eq!(week.forget_histories(64), 0);
    }

    /// Submits an op of any kind, as the HTTP edge would submit its command.
    fn submit_any(index: &Index, op: Op) -> Result<u64, SubmitError> {
        Ok(match op {
            Op::Register(c) => index.submit(c)?.seq,
            Op::Heartbeat(c) => index.submit(c)?.seq,
            Op::Announce(c) => index.submit(c)?.seq,
            Op::Unregister(c) => index.submit(c)?.seq,
            Op::Prune(c) => index.submit(c)?.seq,
            Op::AcquireLease(c) => index.submit(c)?.seq,
            Op::RenewLease(c) => index.submit(c)?.seq,
            Op::ReleaseLease(c) => index.submit(c)?.seq,
            Op::ExpireLeases(c) => index.submit(c)?.seq,
            Op::ForgetHistories(c) => index.submit(c)?.seq,
        })
    }

    #[test]
    fn an_index_on_a_data_dir_comes_back_as_it_was() {
        let clock = ManualClock::shared(1_000);
        let tmp = tempfile::tempdir().unwrap();
        let config = IndexConfig {
            data_dir: Some(tmp.path().to_path_buf()),
            ..IndexConfig::default()
        };
        let digest = {
            let index = index(config.clone(), &clock);
            index
                .submit_durable(register("a", vec![meta("doc", 1, "v1")]))
                .unwrap();
            index
                .submit_durable(AcquireLease {
                    peer_id: "a".into(),
                    token_hash: hash_token("a"),
                    file: "doc".into(),
                    lease_id: "00cc".into(),
                    ttl_ms: 60_000,
                })
                .unwrap();
            index
                .submit_durable(Announce {
                    peer_id: "a".into(),
                    token_hash: hash_token("a"),
                    file: meta("doc", 2, "v2"),
                    lease_id: Some("00cc".into()),
                    limits: Limits::NONE,
                })
                .unwrap();
            let digest = index.read().digest();
            digest
        };
        let again = index(config, &clock);
        assert_eq!(again.read().digest(), digest);
        assert_eq!(again.read().file("doc").unwrap().latest_version(), 2);
    }

    #[test]
    fn an_answer_carries_at_most_max_tasks_per_answer() {
        let clock = ManualClock::shared(1_000);
        let config = IndexConfig {
            replication_factor: 1,
            max_tasks_per_answer: 2,
            ..IndexConfig::default()
        };
        let index = index(config, &clock);
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
                .submit(AcquireLease {
                    peer_id: "new".into(),
                    token_hash: hash_token("new"),
                    file: file.clone(),
                    lease_id: lease_id.clone(),
                    ttl_ms: 60_000,
                })
                .unwrap();
            let applied = index
                .submit(Announce {
                    peer_id: "new".into(),
                    token_hash: hash_token("new"),
                    file: meta(&file, 2, &format!("{n} v2")),
                    lease_id: Some(lease_id),
                    limits: Limits::NONE,
                })
                .unwrap();
            assert_eq!(applied.wake, vec!["old".to_string()], "the stale holder");
        }
        // Five stale files: two refresh tasks now, the rest once those are fetched.
        let tasks = index.tasks_for("old");
        assert_eq!(tasks.len(), 2, "{tasks:?}");
        assert!(tasks.iter().all(|t| t.version == 2));
        assert_eq!(index.deliver_tasks("old").len(), 2);
    }

    #[test]
    fn step_says_what_must_follow_and_changes_nothing_on_refusal() {
        let mut state = IndexState::default();
        let (_, effects) = step(&mut state, register("a", vec![meta("f", 1, "1")]), 7).unwrap();
        assert_eq!((effects.record.seq, effects.record.at), (1, 7));
        assert!(effects.replan && effects.copy_done.is_none() && effects.wake.is_empty());
        let copy = Announce {
            peer_id: "b".into(),
            token_hash: hash_token("b"),
            file: meta("f", 1, "1"),
            lease_id: None,
            limits: Limits::NONE,
        };
        let digest = state.digest();
        assert!(step(&mut state, copy.clone(), 8).is_err(), "b is unknown");
        assert_eq!(state.digest(), digest);
        step(&mut state, register("b", vec![]), 9).unwrap();
        let (_, effects) = step(&mut state, copy, 10).unwrap();
        assert_eq!(
            effects.copy_done,
            Some(CopyDone {
                peer_id: "b".into(),
                file: "f".into(),
                version: 1
            })
        );
        let lease = AcquireLease {
            peer_id: "b".into(),
            token_hash: hash_token("b"),
            file: "f".into(),
            lease_id: "01".into(),
            ttl_ms: 100,
        };
        let (_, effects) = step(&mut state, lease, 11).unwrap();
        assert!(!effects.replan, "a lease changes no holdings");
    }
}
