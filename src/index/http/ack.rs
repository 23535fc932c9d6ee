//! Acknowledgement only of what is durable: an answer that acknowledges an op is sent once
//! that op is on disk. With `--fsync always` the workers hand such answers to the committer,
//! which waits for the disk once for a whole group of them, so no worker sits out an fsync.
//! Then the answer goes out (or is parked, for a long poll) and the peers it names are woken.

use crossbeam_channel::Receiver;

use super::reply::{ApiError, Reply};
use super::{respond, Edge};
use crate::net::Call;

/// Which thread sends an answer: the request's own writes it; any other hands it to the pool,
/// so the committer never waits on a client that reads slowly.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum From {
    RequestThread,
    Elsewhere,
}

/// An answer waiting for its op to reach the disk.
pub struct Pending {
    pub request: Call,
    pub reply: Reply,
}

/// The committer: waits until the ops of the queued answers are on disk, all of them with
/// one write and fsync, then sends them. While it waits, the next group queues up, so one
/// fsync acknowledges as many writes as arrived meanwhile, whatever the number of workers.
pub fn commit(edge: &Edge, pending: &Receiver<Pending>) {
    while let Ok(first) = pending.recv() {
        let mut group = vec![first];
        group.extend(pending.try_iter());
        let last = group.iter().map(|p| p.reply.after).max().unwrap_or(0);
        let stored = edge.index.durable(last).map_err(ApiError::from);
        for Pending { request, reply } in group {
            match &stored {
                Ok(()) => finish(edge, request, reply, From::Elsewhere),
                Err(e) => finish(edge, request, reply.failed(e), From::Elsewhere),
            }
        }
    }
}

/// Waits for this one answer's op here (when there is no committer to hand it to).
pub fn commit_one(edge: &Edge, request: Call, reply: Reply) {
    match edge.index.durable(reply.after) {
        Ok(()) => finish(edge, request, reply, From::RequestThread),
        Err(e) => finish(
            edge,
            request,
            reply.failed(&ApiError::from(e)),
            From::RequestThread,
        ),
    }
}

/// Sends the answer, or parks a long poll; then wakes the peers the answer names.
pub fn finish(edge: &Edge, request: Call, mut reply: Reply, from: From) {
    let index = &edge.index;
    if let Some(started) = reply.started {
        index
            .metrics
            .request(reply.endpoint, reply.status, started.elapsed());
    }
    let wake = std::mem::take(&mut reply.wake);
    match reply.park.take() {
        Some(park) => edge
            .waiters
            .park(index, park.peer_id, request, park.wait, park.rejected),
        None if from == From::RequestThread => respond(request, reply),
        None => edge.send_later(request, reply),
    }
    for peer_id in wake {
        edge.waiters.wake(index, &peer_id);
    }
}
