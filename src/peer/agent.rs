//! The peer's background threads: the agent registers, heartbeats at the interval the index
//! sets with the file-list changes the scanner queued, registers again whenever the index may
//! have lost track of us, returns to the primary index once it answers again, and hands the
//! copy tasks the index sends to the task worker.

use crate::threads::lock;
use crate::threads::stopped;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::Peer;
use crate::protocol::{FileMeta, Task};

/// Tasks waiting for the worker; beyond this the index hands them out again later.
const TASK_QUEUE: usize = 256;

/// The tasks handed to the worker. The index repeats a task in every answer until it is
/// done, so a task already queued or running is not queued again.
pub struct TaskQueue {
    sender: Sender<Task>,
    pending: Arc<Mutex<HashSet<String>>>,
}

impl TaskQueue {
    /// The queue, and the inbox its one worker reads. The worker holds no sender, so the
    /// inbox closes when the agent (the last sender) stops.
    pub fn new() -> (TaskQueue, TaskInbox) {
        let (sender, receiver) = crossbeam_channel::bounded(TASK_QUEUE);
        let pending: Arc<Mutex<HashSet<String>>> = Arc::default();
        let inbox = TaskInbox {
            receiver,
            pending: pending.clone(),
        };
        (TaskQueue { sender, pending }, inbox)
    }

    fn pending(&self) -> MutexGuard<'_, HashSet<String>> {
        lock(&self.pending)
    }

    /// Queues the tasks not already queued or running; returns how many that was.
    fn offer(&self, new: Vec<Task>) -> usize {
        let mut queued = 0;
        for task in new {
            if !self.pending().insert(task.task_id.clone()) {
                continue;
            }
            match self.sender.try_send(task) {
                Ok(()) => queued += 1,
                Err(TrySendError::Full(t)) => {
                    log::warn!(
                        "task queue full; dropping task {} (the index will hand it out again)",
                        t.task_id
                    );
                    self.pending().remove(&t.task_id);
                }
                Err(TrySendError::Disconnected(_)) => return queued,
            }
        }
        queued
    }
}

/// The worker's end of the task queue.
pub struct TaskInbox {
    receiver: Receiver<Task>,
    pending: Arc<Mutex<HashSet<String>>>,
}

/// How long to wait before retrying when no index answers.
const RETRY: Duration = Duration::from_secs(1);

/// Loops until `stop` is closed.
pub fn run(peer: &Peer, stop: &Receiver<()>, tasks: &TaskQueue) {
    loop {
        // Back to the primary as soon as it answers again (a no-op while it is in use).
        peer.index.probe_primary();
        let wait = if peer.needs_register() {
            if register(peer, tasks) {
                peer.heartbeat_interval()
            } else {
                RETRY
            }
        } else {
            // A long poll: the index answers at once when it has a task for us, else after
            // about one interval; then we go again.
            let interval = peer.heartbeat_interval();
            let sent = peer.clock().elapsed();
            match peer.heartbeat(interval) {
                Ok(response) => {
                    let new_tasks = tasks.offer(response.tasks);
                    // The index takes writes again: settle what it left unanswered.
                    peer.settle_in_doubt();
                    if new_tasks > 0 {
                        Duration::ZERO
                    } else {
                        // Nothing new (a reminder, or an index that did not hold the answer):
                        // keep the interval, so polls never spin.
                        interval.saturating_sub(peer.clock().elapsed().saturating_sub(sent))
                    }
                }
                // The index forgot us (restart, prune): register again right away.
                Err(e) if e.needs_register() => {
                    log::info!("index asks us to register again: {e}");
                    Duration::ZERO
                }
                Err(e) => {
                    log::warn!("heartbeat failed: {e}");
                    peer.heartbeat_interval().min(RETRY)
                }
            }
        };
        if stopped(stop, wait) {
            return;
        }
    }
}

/// The scanner: rescans the shared folder every rescan interval and reports what changed at
/// once. Hashing a large new file takes a while; on its own thread it never delays a
/// heartbeat.
pub fn run_scanner(peer: &Peer, stop: &Receiver<()>) {
    while !stopped(stop, peer.config().rescan_interval) {
        if let Err(e) = peer.report_changes() {
            log::warn!("rescan of {} failed: {e}", peer.store.dir().display());
        }
    }
}

/// Registers the whole file list and queues the tasks that come back; false on failure.
pub fn register(peer: &Peer, tasks: &TaskQueue) -> bool {
    match peer.register() {
        Ok(response) => {
            tasks.offer(response.tasks);
            peer.settle_in_doubt();
            true
        }
        Err(e) => {
            log::warn!("register failed: {e}");
            false
        }
    }
}

/// The task worker: makes each requested copy through the same verified path as `get`, then
/// announces it. One task at a time, so copies never crowd out the user's own downloads.
pub fn run_tasks(peer: &Peer, inbox: &TaskInbox) {
    while let Ok(task) = inbox.receiver.recv() {
        run_task(peer, &task);
        lock(&inbox.pending).remove(&task.task_id);
    }
}

fn run_task(peer: &Peer, task: &Task) {
    let want = FileMeta {
        name: task.file.clone(),
        version: task.version,
        size: task.size,
        sha256: task.sha256.clone(),
    };
    if crate::protocol::validate_file_meta(&want).is_err() {
        log::warn!("ignoring malformed task {}", task.task_id);
        return;
    }
    if peer
        .store
        .get(&want.name)
        .is_some_and(|m| m.version >= want.version)
    {
        log::debug!("task {}: already have {}", task.task_id, want.name);
        return;
    }
    match peer.fetch(&want, &task.sources, &mut |_, _| {}) {
        Ok(fetched) => {
            log::info!(
                "task {}: copied {} v{} from {}",
                task.task_id,
                want.name,
                want.version,
                fetched.source
            );
            if let Some(e) = fetched.announce_error {
                log::warn!("task {}: announce failed: {e}", task.task_id);
            }
        }
        Err(e) => {
            log::warn!("task {}: {} failed: {e}", task.task_id, want.name);
            peer.task_failed(&task.task_id, e.to_string());
            // Say so now, so the copy goes elsewhere without waiting for the long poll; if
            // this fails the report rides on the next heartbeat.
            if let Err(e) = peer.heartbeat(Duration::ZERO) {
                log::debug!("reporting the failed task failed: {e}");
            }
        }
    }
}
