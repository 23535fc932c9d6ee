//! Routing: a request as plain values (method, path, query, the cluster secret, body) in, a
//! [`Reply`] out. No sockets here, so every endpoint can be driven in process, in a test or a
//! simulation, exactly as the server drives it.

use serde::de::DeserializeOwned;

use super::reply::{ApiError, Reply, HTML, PROMETHEUS};
use super::{reads, writes};
use crate::index::shadowing::SyncRequest;
use crate::index::state::hash_token;
use crate::index::{dashboard, metrics, Index};
use crate::protocol::{self, ErrorCode};

/// One request, as the edge read it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    pub path: &'a str,
    /// What follows the `?`, undecoded ("" for none).
    pub query: &'a str,
    /// The cluster-secret header, if sent.
    pub secret: Option<&'a str>,
    pub body: &'a [u8],
}

impl<'a> Request<'a> {
    /// A request of `method` for `url` (a path with an optional query), no body, no secret.
    pub fn new(method: &'a str, url: &'a str) -> Request<'a> {
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        Request {
            method,
            path,
            query,
            secret: None,
            body: &[],
        }
    }

    pub fn get(url: &'a str) -> Request<'a> {
        Request::new("GET", url)
    }

    pub fn post(url: &'a str, body: &'a [u8]) -> Request<'a> {
        Request {
            body,
            ..Request::new("POST", url)
        }
    }

    pub fn with_secret(self, secret: &'a str) -> Request<'a> {
        Request {
            secret: Some(secret),
            ..self
        }
    }
}

/// The write endpoints: POST only, and never on a shadow.
const WRITES: [&str; 7] = [
    protocol::PATH_REGISTER,
    protocol::PATH_HEARTBEAT,
    protocol::PATH_ANNOUNCE,
    protocol::PATH_UNREGISTER,
    protocol::PATH_LEASE,
    protocol::PATH_LEASE_RENEW,
    protocol::PATH_LEASE_RELEASE,
];

/// How much body the route for `rq` reads: `None` when it answers without reading one (a GET,
/// an unknown path, a write a shadow refuses, a replication request without the secret), so
/// the edge never reads a body only to refuse it.
pub fn body_limit(index: &Index, rq: &Request) -> Option<usize> {
    if rq.method != "POST" {
        return None;
    }
    let max_body = index.config().max_body;
    if WRITES.contains(&rq.path) {
        return (!index.is_shadow()).then_some(max_body);
    }
    if rq.path == protocol::PATH_SYNC && index.is_shadow() && check_secret(index, rq).is_ok() {
        return Some(sync_limit(max_body));
    }
    None
}

/// A `/sync` batch carries up to a thousand ops, each up to `--max-body`.
fn sync_limit(max_body: usize) -> usize {
    max_body.saturating_mul(4).saturating_add(1 << 20)
}

/// Answers one request; every failure becomes its status and `{"error", "code", ...}`.
pub fn route(index: &Index, rq: &Request) -> Reply {
    match dispatch(index, rq) {
        Ok(reply) => reply,
        Err(e) => {
            if e.code == ErrorCode::Internal {
                log::error!("{} {}: {}", rq.method, rq.path, e.message);
            }
            Reply::error(&e)
        }
    }
}

fn dispatch(index: &Index, rq: &Request) -> Result<Reply, ApiError> {
    let get = || {
        if rq.method == "GET" {
            Ok(())
        } else {
            Err(ApiError::method_not_allowed("GET"))
        }
    };
    match rq.path {
        protocol::PATH_REGISTER => writes::register(index, write_body(index, rq)?),
        protocol::PATH_HEARTBEAT => writes::heartbeat(index, write_body(index, rq)?),
        protocol::PATH_ANNOUNCE => writes::announce(index, write_body(index, rq)?),
        protocol::PATH_UNREGISTER => writes::unregister(index, write_body(index, rq)?),
        protocol::PATH_LEASE => writes::lease(index, write_body(index, rq)?),
        protocol::PATH_LEASE_RENEW => writes::renew_lease(index, write_body(index, rq)?),
        protocol::PATH_LEASE_RELEASE => writes::release_lease(index, write_body(index, rq)?),
        protocol::PATH_SEARCH => get().and_then(|()| reads::search(index, rq.query)),
        protocol::PATH_FILE => get().and_then(|()| reads::file_info(index, rq.query)),
        protocol::PATH_STATUS => get().and_then(|()| reads::status(index, rq.query)),
        protocol::PATH_HEALTH => get().map(|()| reads::health(index)),
        protocol::PATH_DASHBOARD => {
            get()?;
            Ok(Reply::new(200, dashboard::render(index), HTML))
        }
        protocol::PATH_METRICS => {
            get()?;
            let body = metrics::render(&index.metrics, &index.metrics_snapshot());
            Ok(Reply::new(200, body, PROMETHEUS))
        }
        protocol::PATH_SYNC => {
            if rq.method != "POST" {
                return Err(ApiError::method_not_allowed("POST"));
            }
            check_secret(index, rq)?;
            if !index.is_shadow() {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    "this index is a primary; only a shadow takes /sync",
                ));
            }
            let sync: SyncRequest = json_body(rq.body, sync_limit(index.config().max_body))?;
            Ok(Reply::json(200, &index.apply_sync(sync)?))
        }
        protocol::PATH_SNAPSHOT => {
            get()?;
            check_secret(index, rq)?;
            Ok(Reply::json(200, &index.durable_snapshot()?))
        }
        other => Err(ApiError::not_found(format!("no such endpoint: {other}"))),
    }
}

/// The body of a write: POST only, and never on a shadow, whose state changes by its
/// primary's ops alone.
fn write_body<T: DeserializeOwned>(index: &Index, rq: &Request) -> Result<T, ApiError> {
    if rq.method != "POST" {
        return Err(ApiError::method_not_allowed("POST"));
    }
    if let Some(shadow) = index.role().shadow() {
        return Err(ApiError::read_only(&shadow.primary));
    }
    json_body(rq.body, index.config().max_body)
}

fn json_body<T: DeserializeOwned>(body: &[u8], max: usize) -> Result<T, ApiError> {
    if body.len() > max {
        return Err(ApiError::too_large(max));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("bad JSON: {e}")))
}

/// Replication endpoints take only requests carrying the cluster secret.
fn check_secret(index: &Index, rq: &Request) -> Result<(), ApiError> {
    let configured = index.config().cluster_secret.as_deref().unwrap_or("");
    let sent = rq.secret.unwrap_or("");
    // Compared as hashes, so the comparison's time says nothing about the secret.
    if !configured.is_empty() && hash_token(sent) == hash_token(configured) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::BadToken,
            format!(
                "replication needs the cluster secret in {}",
                crate::index::shadowing::HEADER_SECRET
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::ids::SeededIds;
    use crate::index::config::{IndexConfig, RoleConfig};
    use crate::protocol::{ErrorBody, LeaseResponse, RegisterResponse};

    fn index(role: RoleConfig) -> Index {
        let config = IndexConfig {
            role,
            cluster_secret: Some("s3cret".into()),
            ..IndexConfig::default()
        };
        Index::new(config, ManualClock::shared(1_000), SeededIds::shared(9)).unwrap()
    }

    fn primary() -> Index {
        index(RoleConfig::Primary { shadows: vec![] })
    }

    fn error(reply: &Reply) -> ErrorBody {
        serde_json::from_str(&reply.body).unwrap()
    }

    fn register(index: &Index, files: &str) -> RegisterResponse {
        let body = format!(r#"{{"addr":"127.0.0.1:9001","files":[{files}]}}"#);
        let reply = route(index, &Request::post("/register", body.as_bytes()));
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert!(reply.after > 0, "a register is acknowledged after the disk");
        serde_json::from_str(&reply.body).unwrap()
    }

    const DOC: &str = r#"{"name":"doc","version":1,"size":2,"sha256":"0000000000000000000000000000000000000000000000000000000000000000"}"#;

    #[test]
    fn requests_are_answered_in_process_as_over_a_socket() {
        let index = primary();
        let me = register(&index, DOC);
        assert_eq!(me.peer_id.len(), 16, "ids come from the id source");
        let found = route(&index, &Request::get("/search?q=doc"));
        assert_eq!(found.status, 200);
        assert!(found.body.contains(r#""name":"doc""#), "{}", found.body);

        // A heartbeat with nothing new and a wait is parked, not answered.
        let beat = format!(
            r#"{{"peer_id":"{}","token":"{}","wait_ms":5000}}"#,
            me.peer_id, me.token
        );
        let parked = route(&index, &Request::post("/heartbeat", beat.as_bytes()));
        let park = parked.park.expect("a long poll");
        assert_eq!(
            (park.peer_id, park.wait.as_millis()),
            (me.peer_id.clone(), 5000)
        );

        // One lease at a time: the second asker hears who holds it.
        let other = register(&index, "");
        let ask = |id: &RegisterResponse| {
            let body = format!(
                r#"{{"peer_id":"{}","token":"{}","file":"doc"}}"#,
                id.peer_id, id.token
            );
            route(&index, &Request::post("/lease", body.as_bytes()))
        };
        let granted: LeaseResponse = serde_json::from_str(&ask(&me).body).unwrap();
        assert_eq!(granted.version, 1);
        let refused = ask(&other);
        assert_eq!(refused.status, 409);
        let body = error(&refused);
        assert_eq!(body.code, ErrorCode::LeaseHeld);
        assert_eq!(body.holder.as_deref(), Some(me.peer_id.as_str()));
    }

    #[test]
    fn refusals_carry_their_code() {
        let index = primary();
        let cases: [(Request, u16, ErrorCode); 6] = [
            (
                Request::post("/register", b"{not json"),
                400,
                ErrorCode::BadRequest,
            ),
            (Request::get("/register"), 405, ErrorCode::MethodNotAllowed),
            (Request::get("/nowhere"), 404, ErrorCode::NotFound),
            (
                Request::post("/heartbeat", br#"{"peer_id":"ghost","token":"t"}"#),
                404,
                ErrorCode::UnknownPeer,
            ),
            (Request::get("/snapshot"), 401, ErrorCode::BadToken),
            (
                Request::post("/sync", b"{}").with_secret("s3cret"),
                403,
                ErrorCode::Forbidden,
            ),
        ];
        for (rq, status, code) in cases {
            let reply = route(&index, &rq);
            assert_eq!((reply.status, error(&reply).code), (status, code), "{rq:?}");
        }
        assert_eq!(
            route(&index, &Request::get("/register")).allow,
            Some("POST")
        );
        let big = vec![b' '; index.config().max_body + 1];
        let reply = route(&index, &Request::post("/register", &big));
        assert_eq!(error(&reply).code, ErrorCode::TooLarge);
    }

    #[test]
    fn a_shadow_refuses_writes_unread_and_names_its_primary() {
        let shadow = index(RoleConfig::Shadow {
            primary: "http://p:1".into(),
        });
        let write = Request::post("/register", b"whatever");
        assert_eq!(body_limit(&shadow, &write), None, "the body is never read");
        let reply = route(&shadow, &write);
        let body = error(&reply);
        assert_eq!((reply.status, body.code), (403, ErrorCode::ReadOnly));
        assert_eq!(body.primary.as_deref(), Some("http://p:1"));
        let sync = Request::post("/sync", b"").with_secret("s3cret");
        assert!(body_limit(&shadow, &sync).is_some());
        assert_eq!(body_limit(&shadow, &Request::post("/sync", b"")), None);
        assert_eq!(body_limit(&primary(), &write), Some(4 << 20));
    }
}
