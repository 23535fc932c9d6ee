//! The replication edge: a thread that runs the planner every `--plan-interval` and at once
//! when an op may have changed what is under-replicated, and the long poll that carries its
//! tasks to peers within milliseconds.
//!
//! Tasks travel only inside register and heartbeat answers (the index never connects to a
//! peer, which may sit behind NAT). A heartbeat that finds no task for its peer and asks to
//! wait is parked here: the HTTP worker hands the request over and goes back to serving, so
//! waiting peers hold no worker thread. A parked request is answered as soon as the planner
//! gives its peer a task, or with no task when its wait is over.

use crate::threads::lock;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::http::{respond, Reply};
use super::planner::{self, PlanConfig};
use super::Index;
use crate::protocol::{HeartbeatResponse, Rejected};

/// The longest a heartbeat is held, whatever the peer asks.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// How often parked requests are checked for the end of their wait.
const TICK: Duration = Duration::from_millis(50);

/// The least time between two planning passes, and how many times a pass's own duration the
/// gap after it lasts: under a stream of writes, each of which wakes the planner, passes (each
/// a read-locked walk over the files) must not crowd out the writers.
const MIN_GAP: Duration = Duration::from_millis(5);
const GAP_PER_PASS: u32 = 4;

struct Parked {
    request: crate::net::Call,
    until: Instant,
    /// What the heartbeat itself was answered (files the index refused), sent with the tasks.
    rejected: Vec<Rejected>,
}

/// Heartbeats waiting for a task, one per peer.
#[derive(Default)]
pub struct Waiters {
    parked: Mutex<HashMap<String, Parked>>,
}

impl Waiters {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Parked>> {
        lock(&self.parked)
    }

    /// Holds `request` until a task for `peer_id` appears or `wait` is over. A request of the
    /// same peer already waiting is answered now (its client has given up or sent anew).
    pub fn park(
        &self,
        index: &Index,
        peer_id: String,
        request: crate::net::Call,
        wait: Duration,
        rejected: Vec<Rejected>,
    ) {
        let parked = Parked {
            request,
            until: Instant::now() + wait.min(MAX_WAIT),
            rejected,
        };
        let older = self.lock().insert(peer_id.clone(), parked);
        if let Some(older) = older {
            answer(index, &peer_id, older);
        }
        // A task planned between the handler's look and the parking must not wait.
        if index.has_new_tasks(&peer_id) {
            self.wake(index, &peer_id);
        }
    }

    /// Answers `peer_id`'s waiting heartbeat, if any, with its tasks.
    pub fn wake(&self, index: &Index, peer_id: &str) {
        let parked = self.lock().remove(peer_id);
        if let Some(parked) = parked {
            answer(index, peer_id, parked);
        }
    }

    /// Answers the heartbeats whose wait is over (all of them when `all`).
    fn expire(&self, index: &Index, all: bool) {
        let now = Instant::now();
        let due: Vec<(String, Parked)> = {
            let mut parked = self.lock();
            let ids: Vec<String> = parked
                .iter()
                .filter(|(_, p)| all || p.until <= now)
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| parked.remove(&id).map(|p| (id, p)))
                .collect()
        };
        for (peer_id, parked) in due {
            answer(index, &peer_id, parked);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

fn answer(index: &Index, peer_id: &str, parked: Parked) {
    let reply = Reply::json(
        200,
        &HeartbeatResponse {
            tasks: index.deliver_tasks(peer_id),
            rejected: parked.rejected,
        },
    );
    respond(parked.request, reply);
}

/// The planner thread: plans every `plan_interval`, and at once when woken; answers waiting
/// heartbeats as their tasks appear or their wait ends. Loops until `stop` closes, then
/// answers every waiting heartbeat.
pub fn run(index: &Index, wake: &Receiver<()>, stop: &Receiver<()>) {
    let config = index.config();
    let plan_config = PlanConfig {
        replication_factor: config.replication_factor,
        max_tasks_per_peer: config.max_tasks_per_peer.max(1),
        task_timeout_ms: config.task_timeout.as_millis() as u64,
    };
    let mut next_plan = Instant::now();
    let mut gap = MIN_GAP;
    let mut last_plan = Instant::now() - gap;
    loop {
        let wait = next_plan
            .saturating_duration_since(Instant::now())
            .min(TICK);
        crossbeam_channel::select! {
            recv(wake) -> msg => if msg.is_ok() {
                // Soon, but not sooner than the gap after the last pass.
                next_plan = next_plan.min(last_plan + gap);
            },
            recv(stop) -> _ => {
                index.waiters.expire(index, true);
                return;
            },
            default(wait) => {},
        }
        if Instant::now() >= next_plan {
            let started = Instant::now();
            plan_once(index, &plan_config);
            last_plan = Instant::now();
            gap = (last_plan - started)
                .saturating_mul(GAP_PER_PASS)
                .max(MIN_GAP);
            next_plan = last_plan + config.plan_interval;
        }
        index.waiters.expire(index, false);
    }
}

/// One pass of the planner over the state, then the waiting heartbeats of the peers that got
/// tasks are answered.
fn plan_once(index: &Index, config: &PlanConfig) {
    if config.replication_factor < 2 {
        return;
    }
    let now = index.now();
    // Taking the changed names needs the write lock, but only for a swap.
    let touched = index.write().take_touched();
    let plan = {
        let state = index.read();
        let mut flight = index.flight();
        planner::plan(&state, touched, &mut flight, now, config)
    };
    for late in &plan.timed_out {
        log::warn!(
            "copy task {} on peer {} timed out; reassigning",
            late.task.task_id,
            late.peer_id
        );
    }
    if !plan.assigned.is_empty() {
        log::debug!("copy tasks for {} peer(s)", plan.assigned.len());
    }
    index.set_under_replicated(plan.under_replicated);
    for peer_id in &plan.assigned {
        index.waiters.wake(index, peer_id);
    }
}
