//! Replication of files, the primary's side: copies in flight (soft state beside the index
//! state, see `planner`), the planner thread that runs a pass every `--plan-interval` and at
//! once when an op may have changed what is under-replicated, and what each peer is told to
//! do in its register and heartbeat answers. Tasks travel only inside those answers: the
//! index never connects to a peer, which may sit behind NAT. How a waiting heartbeat learns
//! of its tasks is the HTTP edge's business (`http::long_poll`); the planner only says which
//! peers got new ones.

use std::time::Duration;

use crossbeam_channel::Receiver;

use super::metrics::TaskCounts;
use super::planner::{self, PlanConfig};
use super::role::Copies;
use super::Index;
use crate::protocol::{Task, TaskFailure, UnderReplicatedFile};
use crate::threads::lock;

/// The least time between two planning passes, and how many times a pass's own duration the
/// gap after it lasts: under a stream of writes, each of which wakes the planner, passes (each
/// a read-locked walk over the files) must not crowd out the writers.
const MIN_GAP: Duration = Duration::from_millis(5);
const GAP_PER_PASS: u32 = 4;

impl Index {
    fn copies(&self) -> Option<&Copies> {
        self.role().primary().map(|p| &p.copies)
    }

    /// The planner's books: tasks in flight, planned, done, failed, timed out.
    pub fn copy_counts(&self) -> TaskCounts {
        self.copies()
            .map_or_else(TaskCounts::default, |c| c.flight().counts())
    }

    /// Everything `peer_id` should be doing: refresh its stale files, and its copies; at most
    /// `--max-tasks-per-answer` (the copies, at most `--max-tasks-per-peer`, always go).
    pub fn tasks_for(&self, peer_id: &str) -> Vec<Task> {
        let copies = self
            .copies()
            .map_or_else(Vec::new, |c| c.flight().tasks_for(peer_id));
        self.with_refreshes(peer_id, copies)
    }

    /// `tasks_for`, with the copies marked as sent: for the answers a peer acts on (its long
    /// poll, its register).
    pub fn deliver_tasks(&self, peer_id: &str) -> Vec<Task> {
        let copies = self
            .copies()
            .map_or_else(Vec::new, |c| c.flight().deliver(peer_id));
        self.with_refreshes(peer_id, copies)
    }

    /// The refresh tasks of `peer_id` that fit beside `copies`, then the copies. A peer with
    /// more stale files than fit gets the rest once it has fetched these.
    fn with_refreshes(&self, peer_id: &str, copies: Vec<Task>) -> Vec<Task> {
        let mut tasks = planner::refresh_tasks(&self.read(), peer_id);
        tasks.truncate(
            self.config()
                .max_tasks_per_answer
                .saturating_sub(copies.len()),
        );
        tasks.extend(copies);
        tasks
    }

    /// Whether `peer_id` has a copy task it has not been sent: its long poll answers at once.
    pub fn has_new_tasks(&self, peer_id: &str) -> bool {
        self.copies()
            .is_some_and(|c| c.flight().has_unsent(peer_id))
    }

    /// The peer gave up on these copies: the planner gives them to someone else.
    pub fn tasks_failed(&self, peer_id: &str, failed: &[TaskFailure]) {
        let Some(copies) = self.copies() else {
            return;
        };
        let now = self.now();
        let cool_down = self.config().task_timeout.as_millis() as u64;
        let mut any = false;
        for f in failed {
            if copies.flight().failed(peer_id, &f.task_id, now, cool_down) {
                log::warn!("peer {peer_id} failed task {}: {}", f.task_id, f.reason);
                any = true;
            }
        }
        if any {
            copies.replan();
        }
    }

    /// The planner's last count of under-replicated files, and the first `max` of them.
    pub fn under_replicated(&self, max: usize) -> (usize, Vec<UnderReplicatedFile>) {
        match self.copies() {
            Some(c) => {
                let files = lock(&c.under_replicated);
                (files.len(), files.iter().take(max).cloned().collect())
            }
            None => (0, Vec::new()),
        }
    }

    /// One pass of the planner over the state; returns the peers that got new tasks.
    pub fn plan_once(&self) -> Vec<String> {
        let config = self.config();
        let Some(copies) = self.copies() else {
            return Vec::new();
        };
        if config.replication_factor < 2 {
            return Vec::new();
        }
        let plan_config = PlanConfig {
            replication_factor: config.replication_factor,
            max_tasks_per_peer: config.max_tasks_per_peer.max(1),
            task_timeout_ms: config.task_timeout.as_millis() as u64,
            max_files_per_peer: config.max_files_per_peer,
        };
        let now = self.now();
        // Taking the changed names needs the write lock, but only for a swap.
        let touched = self.write().take_touched();
        let plan = {
            let state = self.read();
            let mut flight = copies.flight();
            planner::plan(&state, touched, &mut flight, now, &plan_config)
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
        *lock(&copies.under_replicated) = plan.under_replicated;
        plan.assigned.into_iter().collect()
    }
}

/// The planner thread: plans every `--plan-interval`, and soon after it is woken (never
/// sooner than the gap after the last pass); tells `assigned` of each peer that got tasks.
/// Loops until `stop` closes.
pub fn run(index: &Index, stop: &Receiver<()>, assigned: impl Fn(&str)) {
    let Some(copies) = index.copies() else {
        return;
    };
    let clock = index.clock();
    let interval = index.config().plan_interval;
    let mut next_plan = clock.elapsed();
    let mut gap = MIN_GAP;
    let mut last_plan = clock.elapsed().saturating_sub(gap);
    loop {
        let wait = next_plan.saturating_sub(clock.elapsed());
        crossbeam_channel::select! {
            recv(copies.woken()) -> msg => if msg.is_ok() {
                next_plan = next_plan.min(last_plan + gap);
            },
            recv(stop) -> _ => return,
            default(wait) => {},
        }
        if clock.elapsed() >= next_plan {
            let started = clock.elapsed();
            for peer_id in index.plan_once() {
                assigned(&peer_id);
            }
            last_plan = clock.elapsed();
            gap = (last_plan - started)
                .saturating_mul(GAP_PER_PASS)
                .max(MIN_GAP);
            next_plan = last_plan + interval;
        }
    }
}
