//! Primary–shadow replication: the op stream from a primary to its read-only shadows.
//!
//! On the primary every applied op goes, under the state's write lock, into the bounded
//! `backlog`. One pusher thread per shadow sends what the shadow has not acknowledged in
//! batches (`POST /sync`), with retry and back-off, and only ops already on the primary's
//! disk (persist before you send); no client request waits for a shadow, and the backlog's
//! bound caps what a dead shadow can cost. A shadow applies the ops through the same
//! `IndexState::apply`, so at each sequence number its state equals the primary's.
//!
//! A shadow that cannot continue from what it is sent (it started late, restarted, missed ops
//! that fell out of the backlog, or the primary restarted with a new epoch) answers
//! `need_snapshot` and its catch-up thread pulls `GET /snapshot` from the primary, then takes
//! the stream up from the snapshot's sequence number.
//!
//! Liveness is not an op: a heartbeat that only says "alive" touches the primary's state
//! without a sequence number, and each push carries the primary's liveness table at most once
//! per heartbeat interval.

use std::time::Duration;

use crossbeam_channel::Receiver;
use serde::{Deserialize, Serialize};

use super::backlog::Backlog;
use super::core::SubmitError;
use super::role::ShadowLink;
use super::state::{AppliedOp, IndexState, Snapshot};
use super::Index;
use crate::clock::Millis;
use crate::threads::{stopped, Backoff};

/// Header carrying the shared secret on replication requests.
pub const HEADER_SECRET: &str = "X-Nap-Cluster-Secret";

/// Most ops in one `/sync` request, and most weight (about one per file listed): a batch stays
/// a few MiB, well under what a shadow accepts.
const BATCH: usize = 1024;
const BATCH_WEIGHT: usize = 16 * 1024;
/// Pause after a failed push or snapshot, doubling up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// `POST /sync` (primary to shadow).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncRequest {
    pub epoch: String,
    /// Consecutive ops, oldest first.
    pub ops: Vec<AppliedOp>,
    /// The primary's liveness table, when due.
    #[serde(default)]
    pub liveness: Vec<(String, Millis)>,
    /// The primary's newest op a shadow may have (on its disk). A shadow below it that is
    /// sent no op at all cannot catch up by the stream (the primary restarted, or its backlog
    /// lost what the shadow lacks) and takes a snapshot.
    #[serde(default)]
    pub head: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncResponse {
    /// The shadow's sequence number after the request: the primary continues after it.
    pub seq: u64,
    /// The ops did not follow on from the shadow's state; it is fetching a snapshot.
    pub need_snapshot: bool,
}

/// Why a call to another index failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkError {
    /// No answer: connection refused, timed out, cut off.
    Transport(String),
    /// An answer other than 200, with the start of its body.
    Status { status: u16, body: String },
    /// A 200 whose body could not be read as what was asked for.
    Unreadable(String),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Transport(e) | LinkError::Unreadable(e) => f.write_str(e),
            LinkError::Status { status, body } => write!(f, "HTTP {status}: {body}"),
        }
    }
}

impl std::error::Error for LinkError {}

/// An HTTP agent for replication: one request per connection (see BENCHMARKS.md), bounded
/// phases, and large bodies allowed (snapshots).
fn agent(timeout: Duration) -> ureq::Agent {
    crate::net::http_agent(timeout / 4, timeout)
}

/// The body of an answer, read as JSON of type `T` when it is a 200.
fn answer<T: serde::de::DeserializeOwned>(
    sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<T, LinkError> {
    let response = sent.map_err(|e| LinkError::Transport(e.to_string()))?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    if status != 200 {
        let text = body.read_to_string().unwrap_or_default();
        return Err(LinkError::Status {
            status,
            body: text.trim().chars().take(200).collect(),
        });
    }
    body.with_config()
        .limit(u64::MAX)
        .read_json::<T>()
        .map_err(|e| LinkError::Unreadable(e.to_string()))
}

/// The pusher for one shadow: loops until `stop` closes.
pub fn push(
    index: &Index,
    backlog: &Backlog,
    link: &ShadowLink,
    secret: &str,
    stop: &Receiver<()>,
) {
    let agent = agent(Duration::from_secs(5));
    let clock = index.clock();
    let url = format!("{}{}", link.url, crate::protocol::PATH_SYNC);
    let liveness_every = index
        .config()
        .heartbeat_interval
        .max(Duration::from_millis(100));
    let mut acked = 0u64;
    let mut liveness_sent: Option<Duration> = None;
    let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
    loop {
        if stopped(stop, Duration::ZERO) {
            return;
        }
        let liveness_due =
            liveness_sent.is_none_or(|t| clock.elapsed().saturating_sub(t) >= liveness_every);
        let request = index.next_push(backlog, acked, liveness_due);
        // Nothing to send after `acked` though the primary has more on disk: the shadow
        // must hear it, to take a snapshot.
        let behind = request.ops.is_empty() && acked < request.head;
        if request.ops.is_empty() && !liveness_due && !behind {
            let wait = liveness_every.min(Duration::from_millis(250));
            match index.journal() {
                // Ops are there but not yet on disk: wait for the disk, not for more ops.
                Some(journal) if backlog.last_seq() > acked => {
                    journal.wait_durable_past(acked, wait)
                }
                _ => backlog.wait_after(acked, wait),
            }
            continue;
        }
        let sent = answer::<SyncResponse>(
            agent
                .post(&url)
                .header("Connection", "close")
                .header(HEADER_SECRET, secret)
                .send_json(&request),
        );
        match sent {
            Ok(answer) => {
                link.acked(answer.seq, clock.elapsed());
                if acked != answer.seq || answer.need_snapshot {
                    log::debug!("shadow {} at seq {}", link.url, answer.seq);
                }
                acked = answer.seq;
                if liveness_due {
                    liveness_sent = Some(clock.elapsed());
                }
                backoff.reset();
                // A shadow fetching a snapshot cannot take ops yet: give it a moment.
                if answer.need_snapshot && stopped(stop, MIN_BACKOFF) {
                    return;
                }
            }
            Err(e) => {
                // Loud once, then quiet while the shadow stays away.
                if backoff.is_fresh() {
                    log::warn!("push to shadow {} failed: {e}; retrying", link.url);
                } else {
                    log::debug!("push to shadow {} failed: {e}", link.url);
                }
                link.failed(&e);
                if stopped(stop, backoff.pause()) {
                    return;
                }
            }
        }
    }
}

/// The shadow's catch-up thread: pulls a snapshot from the primary at start and whenever the
/// op stream cannot be continued, retrying with back-off until it gets one.
pub fn catch_up(index: &Index, secret: &str, stop: &Receiver<()>) {
    let Some(shadow) = index.role().shadow() else {
        return;
    };
    let agent = agent(Duration::from_secs(10));
    let primary = &shadow.primary;
    let url = format!("{primary}{}", crate::protocol::PATH_SNAPSHOT);
    loop {
        let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
        loop {
            match fetch_snapshot(&agent, &url, secret) {
                Ok(snapshot) => {
                    let seq = snapshot.seq;
                    if index.install_snapshot(snapshot) {
                        log::info!("shadow installed a snapshot at seq {seq} from {primary}");
                    }
                    break;
                }
                Err(e) => {
                    log::warn!("snapshot from {primary} failed: {e}; retrying");
                    if stopped(stop, backoff.pause()) {
                        return;
                    }
                }
            }
        }
        crossbeam_channel::select! {
            recv(shadow.snapshot_wanted()) -> msg => if msg.is_err() { return },
            recv(stop) -> _ => return,
        }
    }
}

fn fetch_snapshot(agent: &ureq::Agent, url: &str, secret: &str) -> Result<Snapshot, LinkError> {
    answer(
        agent
            .get(url)
            .header("Connection", "close")
            .header(HEADER_SECRET, secret)
            .call(),
    )
}

/// A primary starting empty asks its shadows for their state: after a crash they hold all it
/// had, up to the last push. Returns the most advanced snapshot and the shadow it came from.
pub fn recover(shadows: &[String], secret: &str) -> Option<(String, Snapshot)> {
    let agent = agent(Duration::from_secs(2));
    shadows
        .iter()
        .filter_map(|shadow| {
            let url = format!("{shadow}{}", crate::protocol::PATH_SNAPSHOT);
            match fetch_snapshot(&agent, &url, secret) {
                Ok(snapshot) if !snapshot.epoch.is_empty() => Some((shadow.clone(), snapshot)),
                Ok(_) => None,
                Err(e) => {
                    log::info!("no state to recover from shadow {shadow}: {e}");
                    None
                }
            }
        })
        .max_by_key(|(_, snapshot)| snapshot.seq)
}

impl Index {
    /// The next push to a shadow that has everything up to `acked`: the ops after it, in
    /// order, but only those on the primary's disk (an op a crash could still take from the
    /// primary must not reach a shadow, or the two would hold different ops under one
    /// sequence number once the primary restarts and reuses it), and the liveness table when
    /// `liveness` says so.
    pub fn next_push(&self, backlog: &Backlog, acked: u64, liveness: bool) -> SyncRequest {
        // The head first, then the ops: every op up to the head went into the backlog before
        // it reached the disk, so a batch with none of them means the backlog lost them.
        let head = self.shippable_head();
        let mut ops = backlog.after(acked, BATCH, BATCH_WEIGHT);
        ops.retain(|op| op.seq <= head);
        let state = self.read();
        SyncRequest {
            epoch: state.epoch().to_string(),
            ops,
            liveness: if liveness {
                state.liveness()
            } else {
                Vec::new()
            },
            head,
        }
    }

    /// The newest op a shadow may have: the newest on this primary's disk (all of them,
    /// without a disk).
    pub fn shippable_head(&self) -> u64 {
        let seq = self.read().seq();
        self.journal().map_or(seq, |j| j.durable_seq().min(seq))
    }
}

/// The shadow's side: taking the primary's pushes and snapshots.
impl Index {
    /// Applies the primary's ops that follow on from this state, and waits until they are on
    /// this shadow's disk (the primary hears of an op only once it is durable here too).
    /// Anything that does not follow on (another epoch, a gap, an op that fails here) asks for
    /// a snapshot.
    pub fn apply_sync(&self, rq: SyncRequest) -> Result<SyncResponse, SubmitError> {
        let response = self.apply_sync_locked(rq);
        self.durable(response.seq)?;
        Ok(response)
    }

    fn apply_sync_locked(&self, rq: SyncRequest) -> SyncResponse {
        let Some(shadow) = self.role().shadow() else {
            return SyncResponse {
                seq: self.read().seq(),
                need_snapshot: false,
            };
        };
        let mut state = self.write();
        shadow.synced_at(self.clock().elapsed());
        if state.epoch() != rq.epoch {
            if state.seq() == 0 && state.peer_count() == 0 {
                // An empty state is the beginning of every history.
                *state = IndexState::default().with_epoch(rq.epoch);
                if let Some(journal) = self.journal() {
                    if let Err(e) = journal.reset(&state.snapshot()) {
                        log::error!("cannot store the primary's epoch: {e}");
                    }
                }
            } else {
                return need_snapshot(shadow, &state, "the primary's epoch changed");
            }
        }
        if rq.ops.is_empty() && rq.head > state.seq() {
            let why = format!(
                "the primary is at {} and sent nothing after {}",
                rq.head,
                state.seq()
            );
            return need_snapshot(shadow, &state, &why);
        }
        for sync in rq.ops {
            if sync.seq <= state.seq() {
                continue; // sent again after a lost answer
            }
            if sync.seq != state.seq() + 1 {
                let why = format!("gap: op {} after {}", sync.seq, state.seq());
                return need_snapshot(shadow, &state, &why);
            }
            let kept = self.journal().map(|_| sync.clone());
            if let Err(e) = state.apply(sync.op, sync.at) {
                let why = format!("op {} does not apply here: {e}", sync.seq);
                log::error!("{why}");
                return need_snapshot(shadow, &state, &why);
            }
            // A shadow's only effect of an op is its record: it plans nothing, wakes no one.
            if let Some(record) = kept {
                self.record(record);
            }
        }
        state.set_liveness(&rq.liveness);
        SyncResponse {
            seq: state.seq(),
            need_snapshot: false,
        }
    }

    /// Replaces the state with `snapshot` unless it is older than what is here.
    pub fn install_snapshot(&self, snapshot: Snapshot) -> bool {
        {
            let state = self.read();
            if snapshot.epoch == state.epoch() && snapshot.seq <= state.seq() {
                return false;
            }
        }
        if let Some(journal) = self.journal() {
            if let Err(e) = journal.reset(&snapshot) {
                log::error!("cannot store the snapshot: {e}");
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
}

fn need_snapshot(shadow: &super::role::Shadow, state: &IndexState, why: &str) -> SyncResponse {
    log::info!("shadow at seq {} needs a snapshot ({why})", state.seq());
    shadow.want_snapshot();
    SyncResponse {
        seq: state.seq(),
        need_snapshot: true,
    }
}
