//! The index's HTTP edge. A worker takes a request from the dispatcher, reads it into plain
//! values (reading a body only where the route will read one, never past its limit), routes
//! it (`routes`, with the handlers in `writes` and `reads`, their input rules in `validate`,
//! their answers and errors in `reply`), and sends the answer, or hands it to the committer
//! when it acknowledges an op not yet on disk (`ack`), or parks it as a long poll
//! (`long_poll`). It must not hold the state lock while reading a body or writing a response.

mod ack;
pub mod long_poll;
mod reads;
pub mod reply;
pub mod routes;
pub mod validate;
mod writes;

use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use tiny_http::{Header, Response};

pub use ack::{commit, Pending};
pub use long_poll::Waiters;
pub use reply::{ApiError, Reply};
pub use routes::{body_limit, route, Request};

use crate::index::Index;
use crate::net::{Call, Connections};
use crate::protocol::{self, ErrorCode};

/// What the workers, the committer and the long-poll keeper share.
pub struct Edge {
    pub index: Arc<Index>,
    pub waiters: Waiters,
}

impl Edge {
    pub fn new(index: Arc<Index>) -> Edge {
        Edge {
            index,
            waiters: Waiters::default(),
        }
    }
}

/// Answers a request that found no place (`--max-connections` in flight): 503, at once.
pub fn refuse(index: &Index, request: tiny_http::Request, conns: &Connections) {
    let started = Instant::now();
    let mut reply = Reply::error(&ApiError::new(ErrorCode::Overloaded, conns.refusal()));
    reply.endpoint = endpoint(request.url());
    index
        .metrics
        .request(reply.endpoint, reply.status, started.elapsed());
    log::debug!("{} {} -> refused", request.method(), request.url());
    if let Err(e) = request.respond(response(reply)) {
        log::debug!("could not send answer: {e}");
    }
}

/// A worker: answers the dispatcher's requests until it stops. An answer that acknowledges
/// an op goes to the committer when acknowledgements wait for the disk.
pub fn serve(edge: &Edge, calls: &Receiver<Call>, to_commit: &Sender<Pending>) {
    let waits = edge.index.acks_wait_for_disk();
    while let Ok(mut request) = calls.recv() {
        let started = request.taken();
        // A bug must cost one answer, not a worker: a panic is answered 500 and logged.
        let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            handle(&edge.index, &mut request)
        }));
        let mut reply = handled.unwrap_or_else(|_| {
            log::error!(
                "{} {}: the handler panicked",
                request.method(),
                request.url()
            );
            Reply::error(&ApiError::internal("internal error"))
        });
        reply.endpoint = endpoint(request.url());
        reply.started = Some(started);
        log::debug!("{} {} -> {}", request.method(), request.url(), reply.status);
        if reply.after == 0 || !waits {
            ack::finish(edge, request, reply);
        } else if let Err(unsent) = to_commit.send(Pending { request, reply }) {
            // No committer (it ended with the server): wait here.
            let Pending { request, reply } = unsent.into_inner();
            ack::commit_one(edge, request, reply);
        }
    }
    log::debug!("worker stops");
}

/// Reads `request` into plain values and routes it.
fn handle(index: &Index, request: &mut Call) -> Reply {
    let url = request.url().to_string();
    let method = request.method().as_str().to_string();
    let secret = request
        .headers()
        .iter()
        .find(|h| h.field.equiv(crate::index::shadowing::HEADER_SECRET))
        .map(|h| h.value.as_str().to_string());
    let head = Request {
        secret: secret.as_deref(),
        ..Request::new(&method, &url)
    };
    let body = match body_limit(index, &head) {
        None => Vec::new(),
        Some(limit) => match read_body(request, limit) {
            Ok(body) => body,
            Err(e) => return Reply::error(&e),
        },
    };
    route(
        index,
        &Request {
            body: &body,
            ..head
        },
    )
}

/// Reads at most `max` bytes of body; never buffers more than the limit.
fn read_body(request: &mut Call, max: usize) -> Result<Vec<u8>, ApiError> {
    if request.body_length().is_some_and(|len| len > max) {
        return Err(ApiError::too_large(max));
    }
    let mut body = Vec::new();
    request
        .as_reader()
        .take(max as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::bad_request(format!("could not read request body: {e}")))?;
    if body.len() > max {
        return Err(ApiError::too_large(max));
    }
    Ok(body)
}

pub fn respond(request: Call, reply: Reply) {
    if let Err(e) = request.respond(response(reply)) {
        log::debug!("could not send answer: {e}");
    }
}

fn response(reply: Reply) -> Response<std::io::Cursor<Vec<u8>>> {
    let mut response = Response::from_string(reply.body).with_status_code(reply.status);
    let headers = [
        ("Content-Type", Some(reply.content_type.to_string())),
        ("Allow", reply.allow.map(str::to_string)),
        ("Retry-After", reply.retry_after.map(|s| s.to_string())),
    ];
    for (name, value) in headers {
        if let Some(header) =
            value.and_then(|v| Header::from_bytes(name.as_bytes(), v.as_bytes()).ok())
        {
            response.add_header(header);
        }
    }
    response
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
