//! The peer's background threads, the I/O around the session: the agent asks the session for
//! the next call (a register or a long-polled heartbeat), makes it, reports the outcome, and
//! waits as long as the session says; it returns to the primary index once it answers again
//! and hands the copy tasks the index sends to the task worker. The scanner rescans the
//! folder and reports what changed at once. None of them decides whether to register or how
//! long to wait: that is the session's (`session`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::session::{Round, RoundEnd};
use super::Peer;
use crate::protocol::{FileMeta, Task};
use crate::threads::{lock, stopped};

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

/// Loops until `stop` is closed.
pub fn run(peer: &Peer, stop: &Receiver<()>, tasks: &TaskQueue) {
    loop {
        // Back to the primary as soon as it answers again (a no-op while it is in use).
        peer.index.probe_primary();
        if stopped(stop, round(peer, tasks)) {
            return;
        }
    }
}

/// One round of the agent: the call the session asks for, its outcome reported back, the
/// in-doubt publishes settled if an index answered. Returns how long to wait for the next.
pub fn round(peer: &Peer, tasks: &TaskQueue) -> Duration {
    let sent = peer.clock().elapsed();
    let round = peer.session().next_round(sent, || peer.store.list());
    let ended = match round {
        Round::Register(rq) => match peer.send_register(rq) {
            Ok(answer) => {
                tasks.offer(answer.tasks);
                RoundEnd::Registered
            }
            Err(e) => {
                log::warn!("register failed: {e}");
                RoundEnd::RegisterFailed
            }
        },
        Round::Heartbeat(rq) => match peer.send_heartbeat(rq) {
            Ok(answer) => RoundEnd::Answered {
                new_tasks: tasks.offer(answer.tasks),
            },
            Err(e) => {
                if e.needs_register() {
                    log::info!("index asks us to register again: {e}");
                } else {
                    log::warn!("heartbeat failed: {e}");
                }
                RoundEnd::HeartbeatFailed(e.failure())
            }
        },
    };
    let next = peer.session().round_ended(ended, peer.clock().elapsed());
    if !next.settle.is_empty() {
        // The index takes writes again: settle what it left unanswered.
        peer.settle_in_doubt(next.settle);
    }
    next.wait
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
        }
    }
}
