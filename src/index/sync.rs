//! Primary–shadow replication, the edge that ships the op stream.
//!
//! On the primary every applied op is appended, under the state's write lock, to a bounded
//! in-memory log with its sequence number and the time it was applied at. One pusher thread
//! per shadow sends what the shadow has not acknowledged in batches (`POST /sync`), with
//! retry and backoff; no client request waits for a shadow, and the log's bound caps what a
//! dead shadow can cost. A shadow applies the ops through the same `IndexState::apply`, so at
//! each sequence number its state equals the primary's.
//!
//! A shadow that cannot continue from what it is sent (it started late, restarted, missed ops
//! that fell out of the log, or the primary restarted with a new epoch) answers
//! `need_snapshot` and its catch-up thread pulls `GET /snapshot` from the primary, then takes
//! the stream up from the snapshot's sequence number.
//!
//! Liveness is not an op: a heartbeat that only says "alive" touches the primary's state
//! without a sequence number, and each push carries the primary's liveness table at most once
//! per heartbeat interval.

use crate::threads::lock;
use crate::threads::stopped;
use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use serde::{Deserialize, Serialize};

use super::state::{Millis, Op, Snapshot};
use super::Index;
use crate::protocol::ShadowState;

/// Header carrying the shared secret on replication requests.
pub const HEADER_SECRET: &str = "X-Nap-Cluster-Secret";

/// Most ops in one `/sync` request, and most weight (about one per file listed): a batch stays
/// a few MiB, well under what a shadow accepts.
const BATCH: usize = 1024;
const BATCH_WEIGHT: usize = 16 * 1024;
/// Pause after a failed push, doubling up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One applied op, as shipped: its sequence number and the primary's clock when it applied.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncOp {
    pub seq: u64,
    pub at: Millis,
    pub op: Op,
}

/// `POST /sync` (primary to shadow).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncRequest {
    pub epoch: String,
    /// Consecutive ops, oldest first.
    pub ops: Vec<SyncOp>,
    /// The primary's liveness table, when due.
    #[serde(default)]
    pub liveness: Vec<(String, Millis)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncResponse {
    /// The shadow's sequence number after the request: the primary continues after it.
    pub seq: u64,
    /// The ops did not follow on from the shadow's state; it is fetching a snapshot.
    pub need_snapshot: bool,
}

/// The recent ops, for the pushers. Bounded by weight (an op weighs one, plus one per file
/// it lists, so a few huge registers cannot hold much memory): when full, the oldest ops go,
/// and a shadow that still needed them catches up by snapshot.
pub struct OpLog {
    ops: Mutex<Kept>,
    grew: Condvar,
    capacity: usize,
}

#[derive(Default)]
struct Kept {
    ops: VecDeque<SyncOp>,
    weight: usize,
}

fn weight(op: &Op) -> usize {
    1 + match op {
        Op::Register { files, .. } => files.len(),
        Op::Heartbeat { added, removed, .. } => added.len() + removed.len(),
        Op::Prune { peers } => peers.len(),
        Op::ExpireLeases { lease_ids } => lease_ids.len(),
        _ => 0,
    }
}

impl OpLog {
    pub fn new(capacity: usize) -> OpLog {
        OpLog {
            ops: Mutex::new(Kept::default()),
            grew: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Kept> {
        lock(&self.ops)
    }

    /// Appends the op just applied. Called under the state's write lock, so the log is in
    /// sequence order.
    pub fn push(&self, op: SyncOp) {
        let mut kept = self.lock();
        kept.weight += weight(&op.op);
        kept.ops.push_back(op);
        while kept.weight > self.capacity && kept.ops.len() > 1 {
            if let Some(old) = kept.ops.pop_front() {
                kept.weight -= weight(&old.op);
            }
        }
        self.grew.notify_all();
    }

    /// Up to `max` ops after `seq`, oldest first, stopping once `max_weight` is reached (but
    /// never before the first op). If ops after `seq` have already been dropped the batch
    /// starts at the oldest kept, and the shadow will see the gap.
    pub fn after(&self, seq: u64, max: usize, max_weight: usize) -> Vec<SyncOp> {
        let kept = self.lock();
        let start = kept.ops.partition_point(|o| o.seq <= seq);
        let mut total = 0;
        kept.ops
            .range(start..)
            .take(max)
            .take_while(|o| {
                let fits = total == 0 || total < max_weight;
                total += weight(&o.op);
                fits
            })
            .cloned()
            .collect()
    }

    /// Waits until an op after `seq` is in the log, or `timeout` passes.
    pub fn wait_after(&self, seq: u64, timeout: Duration) {
        let kept = self.lock();
        let _ = self.grew.wait_timeout_while(kept, timeout, |kept| {
            kept.ops.back().is_none_or(|o| o.seq <= seq)
        });
    }
}

/// The primary's link to one shadow: where it is and how far it got.
pub struct ShadowLink {
    pub url: String,
    state: Mutex<(ShadowState, Option<Instant>)>,
}

impl ShadowLink {
    pub fn new(url: String) -> ShadowLink {
        ShadowLink {
            state: Mutex::new((
                ShadowState {
                    url: url.clone(),
                    ..ShadowState::default()
                },
                None,
            )),
            url,
        }
    }

    pub fn status(&self, primary_seq: u64) -> ShadowState {
        let state = lock(&self.state);
        let mut status = state.0.clone();
        status.lag = primary_seq.saturating_sub(status.acked_seq);
        status.last_ack_ms_ago = state.1.map(|t| t.elapsed().as_millis() as u64);
        status
    }

    fn record(&self, outcome: Result<u64, String>) {
        let mut state = lock(&self.state);
        match outcome {
            Ok(seq) => {
                state.0.acked_seq = seq;
                state.0.error = None;
                state.1 = Some(Instant::now());
            }
            Err(e) => state.0.error = Some(e),
        }
    }
}

/// An HTTP agent for replication: one request per connection (see BENCHMARKS.md), bounded
/// phases, and large bodies allowed (snapshots).
fn agent(timeout: Duration) -> ureq::Agent {
    crate::net::http_agent(timeout / 4, timeout)
}

/// The pusher for one shadow: loops until `stop` closes.
pub fn push(index: &Index, log: &OpLog, link: &ShadowLink, secret: &str, stop: &Receiver<()>) {
    let agent = agent(Duration::from_secs(5));
    let url = format!("{}{}", link.url, crate::protocol::PATH_SYNC);
    let liveness_every = index
        .config()
        .heartbeat_interval
        .max(Duration::from_millis(100));
    let mut acked = 0u64;
    let mut liveness_sent: Option<Instant> = None;
    let mut backoff = MIN_BACKOFF;
    loop {
        if stopped(stop, Duration::ZERO) {
            return;
        }
        let ops = log.after(acked, BATCH, BATCH_WEIGHT);
        let liveness_due = liveness_sent.is_none_or(|t| t.elapsed() >= liveness_every);
        if ops.is_empty() && !liveness_due {
            log.wait_after(acked, liveness_every.min(Duration::from_millis(250)));
            continue;
        }
        let (epoch, liveness) = {
            let state = index.read();
            let liveness = if liveness_due {
                state.liveness()
            } else {
                Vec::new()
            };
            (state.epoch().to_string(), liveness)
        };
        let request = SyncRequest {
            epoch,
            ops,
            liveness,
        };
        let sent = agent
            .post(&url)
            .header("Connection", "close")
            .header(HEADER_SECRET, secret)
            .send_json(&request)
            .map_err(|e| e.to_string())
            .and_then(|response| {
                let status = response.status().as_u16();
                let mut body = response.into_body();
                if status != 200 {
                    let text = body.read_to_string().unwrap_or_default();
                    return Err(format!("HTTP {status}: {}", text.trim()));
                }
                body.read_json::<SyncResponse>().map_err(|e| e.to_string())
            });
        match sent {
            Ok(answer) => {
                link.record(Ok(answer.seq));
                if acked != answer.seq || answer.need_snapshot {
                    log::debug!("shadow {} at seq {}", link.url, answer.seq);
                }
                acked = answer.seq;
                if liveness_due {
                    liveness_sent = Some(Instant::now());
                }
                backoff = MIN_BACKOFF;
                // A shadow fetching a snapshot cannot take ops yet: give it a moment.
                if answer.need_snapshot && stopped(stop, MIN_BACKOFF) {
                    return;
                }
            }
            Err(e) => {
                // Loud once, then quiet while the shadow stays away.
                if backoff == MIN_BACKOFF {
                    log::warn!("push to shadow {} failed: {e}; retrying", link.url);
                } else {
                    log::debug!("push to shadow {} failed: {e}", link.url);
                }
                link.record(Err(e));
                if stopped(stop, backoff) {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// The shadow's catch-up thread: pulls a snapshot from the primary at start and whenever the
/// op stream cannot be continued, retrying with backoff until it gets one.
pub fn catch_up(
    index: &Index,
    primary: &str,
    secret: &str,
    wanted: &Receiver<()>,
    stop: &Receiver<()>,
) {
    let agent = agent(Duration::from_secs(10));
    let url = format!("{primary}{}", crate::protocol::PATH_SNAPSHOT);
    loop {
        let mut backoff = MIN_BACKOFF;
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
                    if stopped(stop, backoff) {
                        return;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        crossbeam_channel::select! {
            recv(wanted) -> msg => if msg.is_err() { return },
            recv(stop) -> _ => return,
        }
    }
}

fn fetch_snapshot(agent: &ureq::Agent, url: &str, secret: &str) -> Result<Snapshot, String> {
    let response = agent
        .get(url)
        .header("Connection", "close")
        .header(HEADER_SECRET, secret)
        .call()
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    if status != 200 {
        let text = body.read_to_string().unwrap_or_default();
        return Err(format!("HTTP {status}: {}", text.trim()));
    }
    body.with_config()
        .limit(u64::MAX)
        .read_json::<Snapshot>()
        .map_err(|e| e.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn op(seq: u64) -> SyncOp {
        SyncOp {
            seq,
            at: seq,
            op: Op::Prune { peers: vec![] },
        }
    }

    #[test]
    fn the_log_is_bounded_and_batches_follow_on() {
        let log = OpLog::new(3);
        for seq in 1..=5 {
            log.push(op(seq));
        }
        let seqs = |ops: Vec<SyncOp>| ops.into_iter().map(|o| o.seq).collect::<Vec<_>>();
        // 1 and 2 fell out: a shadow at 0 gets 3.. and sees the gap.
        assert_eq!(seqs(log.after(0, 10, 100)), vec![3, 4, 5]);
        assert_eq!(seqs(log.after(3, 10, 100)), vec![4, 5]);
        assert_eq!(seqs(log.after(3, 1, 100)), vec![4]);
        assert_eq!(
            seqs(log.after(0, 10, 2)),
            vec![3, 4],
            "weight bounds a batch"
        );
        assert_eq!(seqs(log.after(0, 10, 0)), vec![3], "but never to nothing");
        assert!(log.after(5, 10, 100).is_empty());
        let t = Instant::now();
        log.wait_after(4, Duration::from_secs(5));
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "op 5 is already there"
        );
    }
}
