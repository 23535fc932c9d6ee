//! The long poll: a heartbeat that finds no task for its peer and asks to wait is parked
//! here, and the worker goes back to serving, so waiting peers hold no worker thread. A
//! parked request is answered as soon as its peer gets a task (the planner names the peer,
//! or an announce made its copy stale), or with no task when its wait is over.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crossbeam_channel::Receiver;

use super::reply::Reply;
use crate::index::Index;
use crate::net::{Call, Elastic};
use crate::protocol::{HeartbeatResponse, Rejected};
use crate::threads::{lock, stopped};

/// The longest a heartbeat is held, whatever the peer asks.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// How often parked requests are checked for the end of their wait.
const TICK: Duration = Duration::from_millis(50);

struct Parked {
    request: Call,
    /// When its wait is over, on the index clock's monotonic time.
    until: Duration,
    /// What the heartbeat itself was answered (files the index refused), sent with the tasks.
    rejected: Vec<Rejected>,
}

/// Heartbeats waiting for a task, one per peer.
pub struct Waiters {
    parked: Mutex<HashMap<String, Parked>>,
    /// Answers are written from its threads: whoever wakes a heartbeat (the planner, a
    /// request, the keeper) must not wait on that peer's connection.
    pool: Elastic,
}

impl Waiters {
    pub fn new(pool: Elastic) -> Waiters {
        Waiters {
            parked: Mutex::new(HashMap::new()),
            pool,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Parked>> {
        lock(&self.parked)
    }

    /// Holds `request` until a task for `peer_id` appears or `wait` is over. A request of the
    /// same peer already waiting is answered now (its client has given up or sent anew).
    pub fn park(
        &self,
        index: &Index,
        peer_id: String,
        request: Call,
        wait: Duration,
        rejected: Vec<Rejected>,
    ) {
        let parked = Parked {
            request,
            until: index.clock().elapsed() + wait.min(MAX_WAIT),
            rejected,
        };
        let older = self.lock().insert(peer_id.clone(), parked);
        if let Some(older) = older {
            self.answer(index, &peer_id, older);
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
            self.answer(index, peer_id, parked);
        }
    }

    /// Answers the heartbeats whose wait is over (all of them when `all`).
    fn expire(&self, index: &Index, all: bool) {
        let now = index.clock().elapsed();
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
            self.answer(index, &peer_id, parked);
        }
    }

    fn answer(&self, index: &Index, peer_id: &str, parked: Parked) {
        let reply = Reply::json(
            200,
            &HeartbeatResponse {
                tasks: index.deliver_tasks(peer_id),
                rejected: parked.rejected,
            },
        );
        super::send_later(&self.pool, parked.request, reply);
    }
}

/// The long-poll keeper: answers waiting heartbeats as their wait ends; when `stop` closes,
/// answers every one still waiting and returns.
pub fn run(index: &Index, waiters: &Waiters, stop: &Receiver<()>) {
    while !stopped(stop, TICK) {
        waiters.expire(index, false);
    }
    waiters.expire(index, true);
}
