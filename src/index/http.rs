//! The index's HTTP edge: parse and validate a request, build an op, submit it, render the
//! outcome. It owns the mapping of errors to status codes and must not hold the state lock
//! while reading a body or writing a response.

use std::io::Read;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tiny_http::{Header, Method, Request, Response};

use crate::net::{Call, Connections};

use super::lease::{Lease, LeaseError};
use super::state::{hash_token, Op, Outcome, StateError};
use super::sync::{self, SyncRequest};
use super::{dashboard, metrics, replicate, Index, Role, SubmitError};
use crate::protocol::{
    self, AnnounceRequest, AnnounceResponse, ErrorBody, ErrorCode, FileInfoResponse, FileMeta,
    HeartbeatRequest, HeartbeatResponse, HolderVersion, LeaseIdRequest, LeaseInfo, LeaseRequest,
    LeaseResponse, RegisterRequest, RegisterResponse, Rejected, ReleaseResponse, SearchResponse,
    StatusResponse, UnregisterRequest, VersionEntry,
};

/// Everything a handler can answer instead of a success.
#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    BadToken(String),
    Forbidden(String),
    UnknownPeer(String),
    NotFound(String),
    MethodNotAllowed(&'static str),
    Conflict(String),
    /// A write sent to a read-only shadow; names the primary.
    ReadOnly {
        primary: String,
    },
    /// Someone else holds the lease: the answer says who and for how long.
    LeaseHeld {
        message: String,
        holder: String,
        remaining_ms: u64,
    },
    TooLarge(usize),
    /// A list longer than this index takes in one request.
    TooMany(String),
    /// The index cannot do this now (its log cannot be written).
    Unavailable(String),
    /// As many requests as the index takes are in flight: try again in a moment.
    Overloaded(String),
    Internal(String),
}

impl ApiError {
    fn code(&self) -> ErrorCode {
        match self {
            ApiError::BadRequest(_) => ErrorCode::BadRequest,
            ApiError::BadToken(_) => ErrorCode::BadToken,
            ApiError::Forbidden(_) => ErrorCode::Forbidden,
            ApiError::ReadOnly { .. } => ErrorCode::ReadOnly,
            ApiError::UnknownPeer(_) => ErrorCode::UnknownPeer,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::MethodNotAllowed(_) => ErrorCode::MethodNotAllowed,
            ApiError::Conflict(_) => ErrorCode::Conflict,
            ApiError::LeaseHeld { .. } => ErrorCode::LeaseHeld,
            ApiError::TooLarge(_) => ErrorCode::TooLarge,
            ApiError::TooMany(_) => ErrorCode::TooMany,
            ApiError::Unavailable(_) => ErrorCode::Unavailable,
            ApiError::Overloaded(_) => ErrorCode::Overloaded,
            ApiError::Internal(_) => ErrorCode::Internal,
        }
    }

    fn status(&self) -> u16 {
        self.code().status()
    }

    fn body(&self) -> ErrorBody {
        let error = match self {
            ApiError::BadRequest(m)
            | ApiError::BadToken(m)
            | ApiError::Forbidden(m)
            | ApiError::UnknownPeer(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::LeaseHeld { message: m, .. }
            | ApiError::Unavailable(m)
            | ApiError::Overloaded(m)
            | ApiError::TooMany(m)
            | ApiError::Internal(m) => m.clone(),
            ApiError::MethodNotAllowed(allowed) => format!("method not allowed; use {allowed}"),
            ApiError::TooLarge(max) => format!("request body is larger than {max} bytes"),
            ApiError::ReadOnly { .. } => "read-only shadow".to_string(),
        };
        let mut body = ErrorBody::new(self.code(), error);
        if let ApiError::LeaseHeld {
            holder,
            remaining_ms,
            ..
        } = self
        {
            body.holder = Some(holder.clone());
            body.remaining_ms = Some(*remaining_ms);
        }
        if let ApiError::ReadOnly { primary } = self {
            body.primary = Some(primary.clone());
        }
        body
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::State(e) => e.into(),
            SubmitError::Storage(why) => ApiError::Unavailable(why),
        }
    }
}

impl From<StateError> for ApiError {
    fn from(e: StateError) -> Self {
        let message = e.to_string();
        match e {
            StateError::UnknownPeer(_) => ApiError::UnknownPeer(message),
            StateError::BadToken(_) => ApiError::BadToken(message),
            StateError::Conflict(_) => ApiError::Conflict(message),
            StateError::NoSuchFile(_) => ApiError::NotFound(message),
            StateError::Lease(LeaseError::Held {
                holder,
                remaining_ms,
                ..
            }) => ApiError::LeaseHeld {
                message,
                holder,
                remaining_ms,
            },
            StateError::Lease(LeaseError::NotYours { .. }) => ApiError::Forbidden(message),
            StateError::Lease(_) => ApiError::Conflict(message),
        }
    }
}

const JSON: &str = "application/json";
const HTML: &str = "text/html; charset=utf-8";
/// Prometheus' text exposition format.
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A rendered answer: status and JSON body.
pub struct Reply {
    pub status: u16,
    pub body: String,
    /// Set on a heartbeat with nothing to say yet: hold the request for a task (long poll).
    park: Option<Park>,
    /// The op this answer acknowledges (0: none): it is sent only once that op is on disk.
    after: u64,
    /// Peers whose waiting heartbeats to answer once this answer is sent.
    wake: Vec<String>,
    content_type: &'static str,
    /// With a 405: the methods the endpoint takes (RFC 9110 asks for an `Allow` header).
    allow: Option<&'static str>,
    /// With a 503 for load: seconds after which to try again (`Retry-After`).
    retry_after: Option<u32>,
    /// The endpoint, and when a worker took the request: for `/metrics`.
    endpoint: &'static str,
    started: Option<Instant>,
}

/// A heartbeat to hold until its peer has a task, or the wait is over.
struct Park {
    peer_id: String,
    wait: Duration,
    rejected: Vec<Rejected>,
}

impl Reply {
    /// An answer of `status` with `body` of type `content_type`, nothing else to do.
    fn new(status: u16, body: String, content_type: &'static str) -> Reply {
        Reply {
            status,
            body,
            park: None,
            after: 0,
            wake: Vec::new(),
            content_type,
            allow: None,
            retry_after: None,
            endpoint: "other",
            started: None,
        }
    }

    pub(crate) fn json<T: Serialize>(status: u16, value: &T) -> Reply {
        match serde_json::to_string(value) {
            Ok(body) => Reply::new(status, body, JSON),
            Err(e) => Reply::error(&ApiError::Internal(format!("cannot encode answer: {e}"))),
        }
    }

    fn error(e: &ApiError) -> Reply {
        let body = serde_json::to_string(&e.body())
            .unwrap_or_else(|_| r#"{"error":"internal error"}"#.to_string());
        Reply {
            allow: match e {
                ApiError::MethodNotAllowed(allowed) => Some(*allowed),
                _ => None,
            },
            retry_after: matches!(e, ApiError::Overloaded(_)).then_some(1),
            ..Reply::new(e.status(), body, JSON)
        }
    }

    /// The error answer that replaces this one (its op could not be stored).
    fn failed(self, e: &ApiError) -> Reply {
        Reply {
            endpoint: self.endpoint,
            started: self.started,
            ..Reply::error(e)
        }
    }

    /// Holds this answer until op `seq` is on disk.
    fn after(mut self, seq: u64) -> Reply {
        self.after = seq;
        self
    }
}

/// An answer waiting for its op to reach the disk.
pub struct Pending {
    request: Call,
    reply: Reply,
}

/// Answers a request that found no place (`--max-connections` in flight): 503, at once.
pub fn refuse(index: &Index, request: Request, conns: &Connections) {
    let started = Instant::now();
    let mut reply = Reply::error(&ApiError::Overloaded(conns.refusal()));
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
pub fn serve(index: &Index, calls: &Receiver<Call>, to_commit: &Sender<Pending>) {
    let waits = index.acks_wait_for_disk();
    while let Ok(mut request) = calls.recv() {
        let started = request.taken();
        // A bug must cost one answer, not a worker: a panic is answered 500 and logged.
        let handled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handle(index, &mut request)));
        let mut reply = handled.unwrap_or_else(|_| {
            log::error!(
                "{} {}: the handler panicked",
                request.method(),
                request.url()
            );
            Reply::error(&ApiError::Internal("internal error".into()))
        });
        reply.endpoint = endpoint(request.url());
        reply.started = Some(started);
        log::debug!("{} {} -> {}", request.method(), request.url(), reply.status);
        if reply.after == 0 || !waits {
            finish(index, request, reply);
        } else if let Err(unsent) = to_commit.send(Pending { request, reply }) {
            // No committer (it ended with the server): wait here.
            let Pending { request, reply } = unsent.into_inner();
            commit_one(index, request, reply);
        }
    }
    log::debug!("worker stops");
}

/// The committer: waits until the ops of the queued answers are on disk, all of them with
/// one write and fsync, then sends them. While it waits, the next group queues up, so one
/// fsync acknowledges as many writes as arrived meanwhile, whatever the number of workers.
pub fn commit(index: &Index, pending: &Receiver<Pending>) {
    while let Ok(first) = pending.recv() {
        let mut group = vec![first];
        group.extend(pending.try_iter());
        let last = group.iter().map(|p| p.reply.after).max().unwrap_or(0);
        let stored = index.durable(last).map_err(ApiError::from);
        for Pending { request, reply } in group {
            match &stored {
                Ok(()) => finish(index, request, reply),
                Err(e) => finish(index, request, reply.failed(e)),
            }
        }
    }
}

fn commit_one(index: &Index, request: Call, reply: Reply) {
    match index.durable(reply.after) {
        Ok(()) => finish(index, request, reply),
        Err(e) => {
            let e = ApiError::from(e);
            finish(index, request, reply.failed(&e))
        }
    }
}

/// Sends the answer, or parks a long poll with the planner's waiters; then wakes the peers
/// the answer names.
fn finish(index: &Index, request: Call, mut reply: Reply) {
    if let Some(started) = reply.started {
        index
            .metrics
            .request(reply.endpoint, reply.status, started.elapsed());
    }
    let wake = std::mem::take(&mut reply.wake);
    match reply.park.take() {
        Some(park) => index
            .waiters
            .park(index, park.peer_id, request, park.wait, park.rejected),
        None => respond(request, reply),
    }
    for peer_id in wake {
        index.waiters.wake(index, &peer_id);
    }
}

pub fn respond(request: Call, reply: Reply) {
    if let Err(e) = request.respond(response(reply)) {
        log::debug!("could not send answer: {e}");
    }
}

fn response(reply: Reply) -> Response<std::io::Cursor<Vec<u8>>> {
    let content_type = Header::from_bytes(&b"Content-Type"[..], reply.content_type.as_bytes())
        .expect("static header is valid");
    let mut response = Response::from_string(reply.body)
        .with_status_code(reply.status)
        .with_header(content_type);
    if let Some(allow) = reply
        .allow
        .and_then(|a| Header::from_bytes(&b"Allow"[..], a.as_bytes()).ok())
    {
        response.add_header(allow);
    }
    if let Some(header) = reply
        .retry_after
        .and_then(|s| Header::from_bytes(&b"Retry-After"[..], s.to_string().as_bytes()).ok())
    {
        response.add_header(header);
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

/// Routes one request and turns every failure into its status and `{"error": ...}`.
pub fn handle(index: &Index, request: &mut Request) -> Reply {
    match route(index, request) {
        Ok(reply) => reply,
        Err(e) => {
            if let ApiError::Internal(m) = &e {
                log::error!("{} {}: {m}", request.method(), request.url());
            }
            Reply::error(&e)
        }
    }
}

fn route(index: &Index, request: &mut Request) -> Result<Reply, ApiError> {
    let url = request.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let method = request.method().clone();
    let expect = |wanted: Method, allowed: &'static str| {
        if method == wanted {
            Ok(())
        } else {
            Err(ApiError::MethodNotAllowed(allowed))
        }
    };
    match path {
        protocol::PATH_REGISTER => register(index, write_body(index, request)?),
        protocol::PATH_HEARTBEAT => heartbeat(index, write_body(index, request)?),
        protocol::PATH_ANNOUNCE => announce(index, write_body(index, request)?),
        protocol::PATH_UNREGISTER => unregister(index, write_body(index, request)?),
        protocol::PATH_LEASE => lease(index, write_body(index, request)?),
        protocol::PATH_LEASE_RENEW => renew_lease(index, write_body(index, request)?),
        protocol::PATH_LEASE_RELEASE => release_lease(index, write_body(index, request)?),
        protocol::PATH_SEARCH => {
            expect(Method::Get, "GET")?;
            search(index, query)
        }
        protocol::PATH_FILE => {
            expect(Method::Get, "GET")?;
            file_info(index, query)
        }
        protocol::PATH_STATUS => {
            expect(Method::Get, "GET")?;
            status(index, query)
        }
        protocol::PATH_DASHBOARD => {
            expect(Method::Get, "GET")?;
            Ok(Reply::new(200, dashboard::render(index), HTML))
        }
        protocol::PATH_METRICS => {
            expect(Method::Get, "GET")?;
            let body = metrics::render(&index.metrics, &index.metrics_snapshot());
            Ok(Reply::new(200, body, PROMETHEUS))
        }
        protocol::PATH_HEALTH => {
            expect(Method::Get, "GET")?;
            let role = if index.is_shadow() {
                "shadow"
            } else {
                "primary"
            };
            Ok(Reply::json(
                200,
                &protocol::HealthResponse {
                    ok: true,
                    role: role.into(),
                },
            ))
        }
        protocol::PATH_SYNC => {
            expect(Method::Post, "POST")?;
            check_secret(index, request)?;
            if !index.is_shadow() {
                return Err(ApiError::Forbidden(
                    "this index is a primary; only a shadow takes /sync".into(),
                ));
            }
            // A batch carries up to a thousand ops, each up to --max-body.
            let limit = index
                .config()
                .max_body
                .saturating_mul(4)
                .saturating_add(1 << 20);
            let rq: SyncRequest = read_json_limited(request, limit)?;
            Ok(Reply::json(200, &index.apply_sync(rq)?))
        }
        protocol::PATH_SNAPSHOT => {
            expect(Method::Get, "GET")?;
            check_secret(index, request)?;
            Ok(Reply::json(200, &index.snapshot()))
        }
        _ => Err(ApiError::NotFound(format!("no such endpoint: {path}"))),
    }
}

/// The body of a write: POST only, and never on a shadow, whose state changes by its
/// primary's ops alone.
fn write_body<T: DeserializeOwned>(index: &Index, request: &mut Request) -> Result<T, ApiError> {
    if *request.method() != Method::Post {
        return Err(ApiError::MethodNotAllowed("POST"));
    }
    if let Role::Shadow { primary } = &index.config().role {
        return Err(ApiError::ReadOnly {
            primary: primary.clone(),
        });
    }
    read_json_limited(request, index.config().max_body)
}

/// Replication endpoints take only requests carrying the cluster secret.
fn check_secret(index: &Index, request: &Request) -> Result<(), ApiError> {
    let configured = index.config().cluster_secret.as_deref().unwrap_or("");
    let sent = request
        .headers()
        .iter()
        .find(|h| h.field.equiv(sync::HEADER_SECRET))
        .map(|h| h.value.as_str())
        .unwrap_or("");
    // Compared as hashes, so the comparison's time says nothing about the secret.
    if !configured.is_empty() && hash_token(sent) == hash_token(configured) {
        Ok(())
    } else {
        Err(ApiError::BadToken(format!(
            "replication needs the cluster secret in {}",
            sync::HEADER_SECRET
        )))
    }
}

/// Reads at most `max` bytes and decodes them; never buffers more than the limit.
fn read_json_limited<T: DeserializeOwned>(
    request: &mut Request,
    max: usize,
) -> Result<T, ApiError> {
    if request.body_length().is_some_and(|len| len > max) {
        return Err(ApiError::TooLarge(max));
    }
    let mut body = Vec::new();
    request
        .as_reader()
        .take(max as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::BadRequest(format!("could not read request body: {e}")))?;
    if body.len() > max {
        return Err(ApiError::TooLarge(max));
    }
    serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("bad JSON: {e}")))
}

/// Peer ids are chosen by the index, but a restarted index re-learns them from peers.
fn validate_peer_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(
            "peer_id must be 1-64 characters of A-Z, a-z, 0-9, '-' or '_'".into(),
        ))
    }
}

/// `host:port` with a real port and nothing that could smuggle a path or header.
fn validate_addr(addr: &str) -> Result<(), ApiError> {
    let bad = |why: &str| Err(ApiError::BadRequest(format!("addr {addr:?}: {why}")));
    if addr.is_empty() || addr.len() > 255 {
        return bad("must be host:port, at most 255 bytes");
    }
    if addr
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '/' | '\\' | '?' | '#' | '@'))
    {
        return bad("contains a character not allowed in host:port");
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => match port.parse::<u16>() {
            Ok(p) if p > 0 => Ok(()),
            _ => bad("port must be 1-65535"),
        },
        _ => bad("must be host:port"),
    }
}

/// The file-name rule, and this index's `--max-name-bytes`.
fn validate_name(index: &Index, name: &str) -> Result<(), ApiError> {
    protocol::validate_file_name(name)
        .map_err(|e| ApiError::BadRequest(format!("file {name:?}: {e}")))?;
    let max = index.config().max_name_bytes;
    if name.len() > max {
        return Err(ApiError::BadRequest(format!(
            "file name is {} bytes long; this index takes at most {max} (--max-name-bytes)",
            name.len()
        )));
    }
    Ok(())
}

/// A file list of a register or heartbeat: at most `--max-files-per-request` entries.
fn validate_count(index: &Index, count: usize) -> Result<(), ApiError> {
    let max = index.config().max_files_per_request;
    if count > max {
        return Err(ApiError::TooMany(format!(
            "{count} files listed; this index takes at most {max} per request \
             (--max-files-per-request): send the rest in heartbeats"
        )));
    }
    Ok(())
}

fn validate_files(index: &Index, files: &[FileMeta]) -> Result<(), ApiError> {
    validate_count(index, files.len())?;
    let mut seen = std::collections::HashSet::with_capacity(files.len());
    for f in files {
        validate_name(index, &f.name)?;
        protocol::validate_file_meta(f).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        if !seen.insert(f.name.as_str()) {
            return Err(ApiError::BadRequest(format!("{} is listed twice", f.name)));
        }
    }
    Ok(())
}

fn validate_names(index: &Index, names: &[String]) -> Result<(), ApiError> {
    validate_count(index, names.len())?;
    for name in names {
        validate_name(index, name)?;
    }
    Ok(())
}

fn credentials(peer_id: &str, token: &str) -> Result<String, ApiError> {
    validate_peer_id(peer_id)?;
    if token.is_empty() || token.len() > 256 {
        return Err(ApiError::BadRequest("token must be 1-256 bytes".into()));
    }
    Ok(hash_token(token))
}

fn register(index: &Index, rq: RegisterRequest) -> Result<Reply, ApiError> {
    validate_addr(&rq.addr)?;
    validate_files(index, &rq.files)?;
    let (peer_id, token) = match (rq.peer_id, rq.token) {
        (Some(id), Some(token)) => (id, token),
        (None, None) => {
            let fresh = |n| {
                crate::ids::Ids::hex(&crate::ids::OsRandom, n)
                    .map_err(|e| ApiError::Internal(format!("no randomness for ids: {e}")))
            };
            (fresh(8)?, fresh(16)?)
        }
        (Some(id), None) => {
            return Err(ApiError::BadToken(format!(
                "peer_id {id} given without its token; send both, or neither for a new identity"
            )))
        }
        (None, Some(_)) => {
            return Err(ApiError::BadRequest(
                "token given without peer_id; send both, or neither for a new identity".into(),
            ))
        }
    };
    let token_hash = credentials(&peer_id, &token)?;
    let addr = rq.addr.clone();
    let (outcome, seq) = index.submit_nowait(Op::Register {
        peer_id: peer_id.clone(),
        token_hash,
        addr: rq.addr,
        files: rq.files,
    })?;
    let Outcome::Registered { new_peer, rejected } = outcome else {
        return Err(ApiError::Internal(format!("register gave {outcome:?}")));
    };
    log::info!(
        "{} peer {peer_id} at {addr}{}",
        if new_peer {
            "registered"
        } else {
            "re-registered"
        },
        if rejected.is_empty() {
            String::new()
        } else {
            format!(" ({} file(s) rejected)", rejected.len())
        }
    );
    let tasks = index.deliver_tasks(&peer_id);
    Ok(Reply::json(
        200,
        &RegisterResponse {
            peer_id,
            token,
            heartbeat_interval_ms: index.config().heartbeat_interval.as_millis() as u64,
            tasks,
            rejected,
        },
    )
    .after(seq))
}

fn heartbeat(index: &Index, rq: HeartbeatRequest) -> Result<Reply, ApiError> {
    let token_hash = credentials(&rq.peer_id, &rq.token)?;
    validate_count(index, rq.added.len() + rq.removed.len())?;
    validate_files(index, &rq.added)?;
    validate_names(index, &rq.removed)?;
    if rq.failed.len() > 1024 {
        return Err(ApiError::BadRequest(
            "more than 1024 failed tasks reported".into(),
        ));
    }
    let peer_id = rq.peer_id.clone();
    let wait = Duration::from_millis(rq.wait_ms.unwrap_or(0)).min(replicate::MAX_WAIT);
    let failed = rq.failed;
    let (rejected, seq) = if rq.added.is_empty() && rq.removed.is_empty() {
        // "Still alive" is not a change of the index: no op (see `sync`).
        index.touch(&rq.peer_id, &token_hash)?;
        (Vec::new(), 0)
    } else {
        let (outcome, seq) = index.submit_nowait(Op::Heartbeat {
            peer_id: rq.peer_id,
            token_hash,
            added: rq.added,
            removed: rq.removed,
        })?;
        let Outcome::HeartbeatAccepted { rejected } = outcome else {
            return Err(ApiError::Internal(format!("heartbeat gave {outcome:?}")));
        };
        (rejected, seq)
    };
    // Reported only once the peer is known to be who it says (the op or touch checked it).
    index.tasks_failed(&peer_id, &failed);
    if wait.is_zero() {
        // A report, not a poll: the tasks go along for information, the poll delivers them.
        let tasks = index.tasks_for(&peer_id);
        return Ok(Reply::json(200, &HeartbeatResponse { tasks, rejected }).after(seq));
    }
    if index.has_new_tasks(&peer_id) {
        let tasks = index.deliver_tasks(&peer_id);
        return Ok(Reply::json(200, &HeartbeatResponse { tasks, rejected }).after(seq));
    }
    // Nothing new: hold the poll until there is, or its wait is over (then it carries the
    // tasks already sent again, as a reminder).
    let mut reply = Reply::json(200, &HeartbeatResponse::default()).after(seq);
    reply.park = Some(Park {
        peer_id,
        wait,
        rejected,
    });
    Ok(reply)
}

fn announce(index: &Index, rq: AnnounceRequest) -> Result<Reply, ApiError> {
    let token_hash = credentials(&rq.peer_id, &rq.token)?;
    let file = FileMeta {
        name: rq.file,
        version: rq.version,
        size: rq.size,
        sha256: rq.sha256,
    };
    validate_name(index, &file.name)?;
    protocol::validate_file_meta(&file).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if let Some(id) = &rq.lease_id {
        validate_lease_id(id)?;
    }
    let (name, version) = (file.name.clone(), file.version);
    let (outcome, seq) = index.submit_nowait(Op::Announce {
        peer_id: rq.peer_id,
        token_hash,
        file,
        lease_id: rq.lease_id,
    })?;
    let Outcome::Announced { latest_version } = outcome else {
        return Err(ApiError::Internal(format!("announce gave {outcome:?}")));
    };
    // Holders of an older version now have a refresh task: their waiting heartbeats are
    // answered with the announce (once it is on disk), not at the end of their wait.
    let stale: Vec<String> = if version == latest_version {
        index.read().file(&name).map_or(Vec::new(), |e| {
            e.holders
                .iter()
                .filter(|(_, v)| **v < version)
                .map(|(id, _)| id.clone())
                .collect()
        })
    } else {
        Vec::new()
    };
    let mut reply = Reply::json(
        200,
        &AnnounceResponse {
            file: name,
            version,
            latest_version,
        },
    )
    .after(seq);
    reply.wake = stale;
    Ok(reply)
}

fn unregister(index: &Index, rq: UnregisterRequest) -> Result<Reply, ApiError> {
    let token_hash = credentials(&rq.peer_id, &rq.token)?;
    let peer_id = rq.peer_id.clone();
    let (_, seq) = index.submit_nowait(Op::Unregister {
        peer_id: rq.peer_id,
        token_hash,
    })?;
    log::info!("peer {peer_id} unregistered");
    Ok(Reply::json(200, &serde_json::json!({ "ok": true })).after(seq))
}

/// The decoded `key=value` pairs of a query string.
fn query_params(query: &str) -> Result<Vec<(&str, String)>, ApiError> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            protocol::url_decode(value, true)
                .map(|value| (key, value))
                .ok_or_else(|| ApiError::BadRequest(format!("bad escape in query parameter {key}")))
        })
        .collect()
}

/// Lease ids are random hex drawn here; anything else cannot be one.
fn validate_lease_id(id: &str) -> Result<(), ApiError> {
    if !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(
            "lease_id must be 1-64 hex digits".into(),
        ))
    }
}

fn lease_reply(index: &Index, lease: &Lease, latest: FileMeta) -> Reply {
    Reply::json(
        200,
        &LeaseResponse {
            lease_id: lease.lease_id.clone(),
            file: lease.file.clone(),
            ttl_ms: lease.remaining_ms(index.now()),
            version: latest.version,
            size: latest.size,
            sha256: latest.sha256,
        },
    )
}

fn lease(index: &Index, rq: LeaseRequest) -> Result<Reply, ApiError> {
    let token_hash = credentials(&rq.peer_id, &rq.token)?;
    validate_name(index, &rq.file)?;
    let lease_id = crate::ids::Ids::hex(&crate::ids::OsRandom, 16)
        .map_err(|e| ApiError::Internal(format!("no randomness for lease ids: {e}")))?;
    let (outcome, seq) = index.submit_nowait(Op::AcquireLease {
        peer_id: rq.peer_id,
        token_hash,
        file: rq.file,
        lease_id,
        ttl_ms: index.config().lease_ttl.as_millis() as u64,
    })?;
    let Outcome::Leased { lease, latest } = outcome else {
        return Err(ApiError::Internal(format!("lease gave {outcome:?}")));
    };
    log::info!(
        "peer {} leased {} (v{}) for {:?}",
        lease.peer_id,
        lease.file,
        latest.version,
        index.config().lease_ttl
    );
    Ok(lease_reply(index, &lease, latest).after(seq))
}

fn renew_lease(index: &Index, rq: LeaseIdRequest) -> Result<Reply, ApiError> {
    let token_hash = credentials(&rq.peer_id, &rq.token)?;
    validate_lease_id(&rq.lease_id)?;
    let (outcome, seq) = index.submit_nowait(Op::RenewLease {
        peer_id: rq.peer_id,
        token_hash,
        lease_id: rq.lease_id,
        ttl_ms: index.config().lease_ttl.as_millis() as u64,
    })?;
    let Outcome::Leased { lease, latest } = outcome else {
        return Err(ApiError::Internal(format!("renew gave {outcome:?}")));
    };
    Ok(lease_reply(index, &lease, latest).after(seq))
}

fn release_lease(index: &Index, rq: LeaseIdRequest) -> Result<Reply, ApiError> {
    let token_hash = credentials(&rq.peer_id, &rq.token)?;
    validate_lease_id(&rq.lease_id)?;
    let peer_id = rq.peer_id.clone();
    let (outcome, seq) = index.submit_nowait(Op::ReleaseLease {
        peer_id: rq.peer_id,
        token_hash,
        lease_id: rq.lease_id,
    })?;
    let Outcome::LeaseReleased { file } = outcome else {
        return Err(ApiError::Internal(format!("release gave {outcome:?}")));
    };
    log::info!("peer {peer_id} released its lease on {file}");
    Ok(Reply::json(
        200,
        &ReleaseResponse {
            released: true,
            file,
        },
    )
    .after(seq))
}

fn file_info(index: &Index, query: &str) -> Result<Reply, ApiError> {
    let name = query_params(query)?
        .into_iter()
        .find(|(key, _)| *key == "name")
        .map(|(_, value)| value)
        .ok_or_else(|| ApiError::BadRequest("missing query parameter name".into()))?;
    validate_name(index, &name)?;
    let now = index.now();
    let state = index.read();
    let entry = state
        .file(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no version of {name} is known")))?;
    let info = FileInfoResponse {
        name: name.clone(),
        versions: entry
            .versions
            .iter()
            .map(|(v, i)| VersionEntry {
                version: *v,
                size: i.size,
                sha256: i.sha256.clone(),
                created_ms: i.created_ms,
            })
            .collect(),
        holders: entry
            .holders
            .iter()
            .filter_map(|(id, version)| {
                state.peer(id).map(|p| HolderVersion {
                    peer_id: id.clone(),
                    addr: p.addr.clone(),
                    version: *version,
                })
            })
            .collect(),
        lease: state.leases().live(&name, now).map(|l| LeaseInfo {
            holder: l.peer_id.clone(),
            remaining_ms: l.remaining_ms(now),
        }),
    };
    drop(state);
    Ok(Reply::json(200, &info))
}

fn search(index: &Index, query: &str) -> Result<Reply, ApiError> {
    let mut text = None;
    let max = index.config().max_search_results;
    let mut limit = protocol::DEFAULT_SEARCH_LIMIT.min(max);
    for (key, value) in query_params(query)? {
        match key {
            "q" => text = Some(value),
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .map_err(|_| ApiError::BadRequest("limit must be a whole number".into()))?;
                if limit > max {
                    return Err(ApiError::BadRequest(format!(
                        "limit {limit} is more than this index answers: at most {max} \
                         (--max-search-results)"
                    )));
                }
            }
            _ => {}
        }
    }
    let text = text.ok_or_else(|| ApiError::BadRequest("missing query parameter q".into()))?;
    let results = index.read().search(&text, limit);
    Ok(Reply::json(200, &SearchResponse { results }))
}

/// `GET /status`; with `?digest=1` also the state digest (it costs a pass over the state).
fn status(index: &Index, query: &str) -> Result<Reply, ApiError> {
    let with_digest = query_params(query)?
        .iter()
        .any(|(key, value)| *key == "digest" && matches!(value.as_str(), "1" | "true"));
    let (peers, files, seq, leases, epoch, digest) = {
        let state = index.read();
        (
            state.peer_count(),
            state.held_file_count(),
            state.seq(),
            state.leases().len(),
            state.epoch().to_string(),
            with_digest.then(|| state.digest()),
        )
    };
    let config = index.config();
    let (under_replicated, under_replicated_files) = index.under_replicated(100);
    let (role, primary) = match &config.role {
        Role::Primary { .. } => ("primary", None),
        Role::Shadow { primary } => ("shadow", Some(primary.clone())),
    };
    Ok(Reply::json(
        200,
        &StatusResponse {
            role: role.into(),
            epoch,
            primary,
            last_sync_ms_ago: index.since_last_sync().map(|d| d.as_millis() as u64),
            replication_factor: config.replication_factor,
            tasks_in_flight: index.flight().len(),
            under_replicated,
            under_replicated_files,
            shadows: index.shadow_states(seq),
            peers,
            files,
            seq,
            uptime_ms: index.uptime().as_millis() as u64,
            heartbeat_interval_ms: config.heartbeat_interval.as_millis() as u64,
            peer_timeout_ms: config.peer_timeout.as_millis() as u64,
            leases,
            lease_ttl_ms: config.lease_ttl.as_millis() as u64,
            digest,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked() {
        for good in ["127.0.0.1:9001", "peer.example:80", "[::1]:7070"] {
            assert!(validate_addr(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "127.0.0.1",
            ":80",
            "host:0",
            "host:99999",
            "a b:80",
            "h/x:80",
            "user@h:80",
        ] {
            assert!(validate_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn peer_ids_are_checked() {
        assert!(validate_peer_id("abc-DEF_123").is_ok());
        assert!(validate_peer_id("").is_err());
        assert!(validate_peer_id("../x").is_err());
        assert!(validate_peer_id(&"a".repeat(65)).is_err());
    }
}
