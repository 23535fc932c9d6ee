//! The index's HTTP edge. Each request runs on a thread of its own (see `net::pool`): it
//! reads the body (never past the route's limit, within `--request-timeout`), takes one of
//! `--workers` permits to route it (`routes`, with the handlers in `writes` and `reads`,
//! their input rules in `validate`, their answers and errors in `reply`), gives the permit
//! back and sends the answer; or hands it to the committer when it acknowledges an op not yet
//! on disk (`ack`), or parks it as a long poll (`long_poll`). A client that sends or reads
//! slowly so holds only its own thread. Nothing holds the state lock while reading a body or
//! writing an answer.
mod ack;
pub mod long_poll;
mod reads;
pub mod reply;
pub mod routes;
pub mod validate;
mod writes;

use std::sync::Arc;

use crossbeam_channel::Sender;

pub use ack::{commit, Pending};
pub use long_poll::Waiters;
pub use reply::{ApiError, Reply};
pub use routes::{body_limit, route, Request};

use crate::index::Index;
use crate::net::{Answer, BodyError, Call, Elastic, Permits};
use crate::protocol::{self, ErrorCode};

/// Body bytes read (and dropped) from a request to a route that takes none: a client may
/// send a small one with a GET; anything larger is refused.
const IGNORED_BODY: usize = 64 * 1024;

/// What the request threads, the committer and the long-poll keeper share.
pub struct Edge {
    pub index: Arc<Index>,
    pub waiters: Waiters,
    /// Where answers sent from other threads (the committer, the long-poll keeper) are
    /// written, so none of those threads waits on a client.
    pool: Elastic,
    /// One per `--workers`: held while a request is routed, never while it reads or writes.
    permits: Permits,
}

impl Edge {
    pub fn new(index: Arc<Index>, pool: Elastic, workers: usize) -> Edge {
        Edge {
            index,
            waiters: Waiters::new(pool.clone()),
            pool,
            permits: Permits::new(workers),
        }
    }

    /// Sends `reply` from a thread of the pool (this thread must not wait on a client).
    pub fn send_later(&self, call: Call, reply: Reply) {
        send_later(&self.pool, call, reply);
    }
}

/// Sends `reply` from a thread of `pool`, or here if no thread can be had.
pub fn send_later(pool: &Elastic, call: Call, reply: Reply) {
    let job = std::sync::Arc::new(std::sync::Mutex::new(Some((call, reply))));
    let taken = job.clone();
    let started = pool.run(move || {
        if let Some((call, reply)) = crate::threads::lock(&taken).take() {
            respond(call, reply);
        }
    });
    if started.is_err() {
        if let Some((call, reply)) = crate::threads::lock(&job).take() {
            respond(call, reply);
        }
    }
}

/// Answers a request that found no place (`--max-connections` in flight): 503, at once.
pub fn refuse(index: &Index, call: Call) {
    let mut reply = Reply::error(&ApiError::new(
        ErrorCode::Overloaded,
        index
            .connections_refusal()
            .unwrap_or_else(|| "too many connections; retry later".into()),
    ));
    reply.endpoint = endpoint(call.url());
    index
        .metrics
        .request(reply.endpoint, reply.status, call.taken().elapsed());
    log::debug!("{} {} -> refused", call.method(), call.url());
    respond(call, reply);
}

/// Serves one request on this thread. An answer that acknowledges an op goes to the
/// committer when acknowledgements wait for the disk.
pub fn serve(edge: &Edge, mut call: Call, to_commit: &Sender<Pending>) {
    let started = call.taken();
    let mut reply = match read(&edge.index, &mut call) {
        Ok((head, body)) => {
            let permit = edge.permits.acquire();
            // A bug must cost one answer, not more: a panic is answered 500 and logged.
            let routed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                route(
                    &edge.index,
                    &Request {
                        method: &head.method,
                        path: &head.path,
                        query: &head.query,
                        secret: head.secret.as_deref(),
                        body: &body,
                    },
                )
            }));
            drop(permit);
            routed.unwrap_or_else(|_| {
                log::error!("{} {}: the handler panicked", call.method(), call.url());
                Reply::error(&ApiError::internal("internal error"))
            })
        }
        Err(e) => Reply::error(&e),
    };
    reply.endpoint = endpoint(call.url());
    reply.started = Some(started);
    log::debug!("{} {} -> {}", call.method(), call.url(), reply.status);
    if reply.after == 0 || !edge.index.acks_wait_for_disk() {
        ack::finish(edge, call, reply, ack::From::RequestThread);
    } else if let Err(unsent) = to_commit.send(Pending {
        request: call,
        reply,
    }) {
        // No committer (it ended with the server): wait here.
        let Pending { request, reply } = unsent.into_inner();
        ack::commit_one(edge, request, reply);
    }
}

/// A request's head, as plain values.
struct Head {
    method: String,
    path: String,
    query: String,
    secret: Option<String>,
}

/// Reads the request's head and the body its route takes.
fn read(index: &Index, call: &mut Call) -> Result<(Head, Vec<u8>), ApiError> {
    let url = call.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let head = Head {
        method: call.method().as_str().to_string(),
        path: path.to_string(),
        query: query.to_string(),
        secret: call
            .header(crate::index::shadowing::HEADER_SECRET)
            .map(str::to_string),
    };
    let probe = Request {
        method: &head.method,
        path: &head.path,
        query: &head.query,
        secret: head.secret.as_deref(),
        body: &[],
    };
    let limit = body_limit(index, &probe);
    let body = call
        .read_body(limit.unwrap_or(IGNORED_BODY))
        .map_err(|e| match e {
            BodyError::TooLarge(max) => ApiError::too_large(max),
            BodyError::Slow => ApiError::new(
                ErrorCode::TimedOut,
                "the request body did not arrive within --request-timeout at the minimum \
                 rate; send it faster",
            ),
            BodyError::Broken(e) => {
                ApiError::bad_request(format!("could not read request body: {e}"))
            }
        })?;
    Ok((head, if limit.is_some() { body } else { Vec::new() }))
}

/// Writes the answer on this thread.
pub fn respond(call: Call, reply: Reply) {
    let mut answer = Answer::bytes(reply.status, reply.content_type, reply.body.into_bytes());
    if let Some(allow) = reply.allow {
        answer = answer.with_header("Allow", allow);
    }
    if let Some(after) = reply.retry_after {
        answer = answer.with_header("Retry-After", after.to_string());
    }
    if let Err(e) = call.answer(answer) {
        log::debug!("could not send answer: {e}");
    }
}

/// The endpoint a URL names, as a metrics label: one of the API's paths, or "other" (so
/// made-up paths cannot grow the metrics).
fn endpoint(url: &str) -> &'static str {
    let path = url.split_once('?').map_or(url, |(path, _)| path);
    protocol::INDEX_PATHS
        .into_iter()
        .find(|known| *known == path)
        .unwrap_or("other")
}
