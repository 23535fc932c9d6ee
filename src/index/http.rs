//! The index's HTTP edge: parse and validate a request, build an op, submit it, render the
//! outcome. It owns the mapping of errors to status codes and must not hold the state lock
//! while reading a body or writing a response.

use std::io::Read;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tiny_http::{Header, Method, Request, Response};

use super::state::{hash_token, Op, Outcome, StateError};
use super::Index;
use crate::protocol::{
    self, AnnounceRequest, AnnounceResponse, ErrorBody, FileMeta, HeartbeatRequest,
    HeartbeatResponse, RegisterRequest, RegisterResponse, SearchResponse, StatusResponse,
    UnregisterRequest,
};

/// Everything a handler can answer instead of a success.
#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    BadToken(String),
    UnknownPeer(String),
    NotFound(String),
    MethodNotAllowed(&'static str),
    Conflict(String),
    TooLarge(usize),
    Internal(String),
}

impl ApiError {
    fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::BadToken(_) => 401,
            ApiError::UnknownPeer(_) | ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::Conflict(_) => 409,
            ApiError::TooLarge(_) => 413,
            ApiError::Internal(_) => 500,
        }
    }

    fn body(&self) -> ErrorBody {
        let error = match self {
            ApiError::BadRequest(m)
            | ApiError::BadToken(m)
            | ApiError::UnknownPeer(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::Internal(m) => m.clone(),
            ApiError::MethodNotAllowed(allowed) => format!("method not allowed; use {allowed}"),
            ApiError::TooLarge(max) => format!("request body is larger than {max} bytes"),
        };
        ErrorBody {
            error,
            reregister: matches!(self, ApiError::UnknownPeer(_)),
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
        }
    }
}

/// A rendered answer: status and JSON body.
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    fn json<T: Serialize>(status: u16, value: &T) -> Reply {
        match serde_json::to_string(value) {
            Ok(body) => Reply { status, body },
            Err(e) => Reply::error(&ApiError::Internal(format!("cannot encode answer: {e}"))),
        }
    }

    fn error(e: &ApiError) -> Reply {
        let body = serde_json::to_string(&e.body())
            .unwrap_or_else(|_| r#"{"error":"internal error"}"#.to_string());
        Reply {
            status: e.status(),
            body,
        }
    }
}

/// A worker: answers requests until the server is unblocked.
pub fn serve(index: &Index, server: &tiny_http::Server) {
    loop {
        let mut request = match server.recv() {
            Ok(rq) => rq,
            Err(e) => {
                log::debug!("worker stops: {e}");
                return;
            }
        };
        let reply = handle(index, &mut request);
        log::debug!("{} {} -> {}", request.method(), request.url(), reply.status);
        respond(request, reply);
    }
}

pub fn respond(request: Request, reply: Reply) {
    let content_type = Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
        .expect("static header is valid");
    let response = Response::from_string(reply.body)
        .with_status_code(reply.status)
        .with_header(content_type);
    if let Err(e) = request.respond(response) {
        log::debug!("could not send answer: {e}");
    }
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
        protocol::PATH_REGISTER => {
            expect(Method::Post, "POST")?;
            register(index, read_json(index, request)?)
        }
        protocol::PATH_HEARTBEAT => {
            expect(Method::Post, "POST")?;
            heartbeat(index, read_json(index, request)?)
        }
        protocol::PATH_ANNOUNCE => {
            expect(Method::Post, "POST")?;
            announce(index, read_json(index, request)?)
        }
        protocol::PATH_UNREGISTER => {
            expect(Method::Post, "POST")?;
            unregister(index, read_json(index, request)?)
        }
        protocol::PATH_SEARCH => {
            expect(Method::Get, "GET")?;
            search(index, query)
        }
        protocol::PATH_STATUS => {
            expect(Method::Get, "GET")?;
            Ok(status(index))
        }
        _ => Err(ApiError::NotFound(format!("no such endpoint: {path}"))),
    }
}

/// Reads at most `max_body` bytes and decodes them; never buffers more than the limit.
fn read_json<T: DeserializeOwned>(index: &Index, request: &mut Request) -> Result<T, ApiError> {
    let max = index.config().max_body;
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

fn validate_files(files: &[FileMeta]) -> Result<(), ApiError> {
    let mut seen = std::collections::HashSet::with_capacity(files.len());
    for f in files {
        protocol::validate_file_meta(f).map_err(ApiError::BadRequest)?;
        if !seen.insert(f.name.as_str()) {
            return Err(ApiError::BadRequest(format!("{} is listed twice", f.name)));
        }
    }
    Ok(())
}

fn validate_names(names: &[String]) -> Result<(), ApiError> {
    for name in names {
        protocol::validate_file_name(name)
            .map_err(|e| ApiError::BadRequest(format!("{name:?}: {e}")))?;
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
    validate_files(&rq.files)?;
    let (peer_id, token) = match (rq.peer_id, rq.token) {
        (Some(id), Some(token)) => (id, token),
        (None, None) => {
            let fresh = |n| {
                crate::net::random_hex(n)
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
    let outcome = index.submit(Op::Register {
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
    Ok(Reply::json(
        200,
        &RegisterResponse {
            peer_id,
            token,
            heartbeat_interval_ms: index.config().heartbeat_interval.as_millis() as u64,
            tasks: Vec::new(),
            rejected,
        },
    ))
}

fn heartbeat(index: &Index, rq: HeartbeatRequest) -> Result<Reply, ApiError> {
    let token_hash = credentials(&rq.peer_id, &rq.token)?;
    validate_files(&rq.added)?;
    validate_names(&rq.removed)?;
    let outcome = index.submit(Op::Heartbeat {
        peer_id: rq.peer_id,
        token_hash,
        added: rq.added,
        removed: rq.removed,
    })?;
    let Outcome::HeartbeatAccepted { rejected } = outcome else {
        return Err(ApiError::Internal(format!("heartbeat gave {outcome:?}")));
    };
    Ok(Reply::json(
        200,
        &HeartbeatResponse {
            tasks: Vec::new(),
            rejected,
        },
    ))
}

fn announce(index: &Index, rq: AnnounceRequest) -> Result<Reply, ApiError> {
    let token_hash = credentials(&rq.peer_id, &rq.token)?;
    let file = FileMeta {
        name: rq.file,
        version: rq.version,
        size: rq.size,
        sha256: rq.sha256,
    };
    protocol::validate_file_meta(&file).map_err(ApiError::BadRequest)?;
    let (name, version) = (file.name.clone(), file.version);
    let outcome = index.submit(Op::Announce {
        peer_id: rq.peer_id,
        token_hash,
        file,
    })?;
    let Outcome::Announced { latest_version } = outcome else {
        return Err(ApiError::Internal(format!("announce gave {outcome:?}")));
    };
    Ok(Reply::json(
        200,
        &AnnounceResponse {
            file: name,
            version,
            latest_version,
        },
    ))
}

fn unregister(index: &Index, rq: UnregisterRequest) -> Result<Reply, ApiError> {
    let token_hash = credentials(&rq.peer_id, &rq.token)?;
    let peer_id = rq.peer_id.clone();
    index.submit(Op::Unregister {
        peer_id: rq.peer_id,
        token_hash,
    })?;
    log::info!("peer {peer_id} unregistered");
    Ok(Reply::json(200, &serde_json::json!({ "ok": true })))
}

fn search(index: &Index, query: &str) -> Result<Reply, ApiError> {
    let mut text = None;
    let mut limit = protocol::DEFAULT_SEARCH_LIMIT;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = protocol::url_decode(value, true)
            .ok_or_else(|| ApiError::BadRequest(format!("bad escape in query parameter {key}")))?;
        match key {
            "q" => text = Some(value),
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .map_err(|_| ApiError::BadRequest("limit must be a whole number".into()))?
                    .min(protocol::MAX_SEARCH_LIMIT);
            }
            _ => {}
        }
    }
    let text = text.ok_or_else(|| ApiError::BadRequest("missing query parameter q".into()))?;
    let results = index.read().search(&text, limit);
    Ok(Reply::json(200, &SearchResponse { results }))
}

fn status(index: &Index) -> Reply {
    let (peers, files, seq) = {
        let state = index.read();
        (state.peer_count(), state.held_file_count(), state.seq())
    };
    let config = index.config();
    Reply::json(
        200,
        &StatusResponse {
            role: "primary".into(),
            peers,
            files,
            seq,
            uptime_ms: index.uptime().as_millis() as u64,
            heartbeat_interval_ms: config.heartbeat_interval.as_millis() as u64,
            peer_timeout_ms: config.peer_timeout.as_millis() as u64,
        },
    )
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
