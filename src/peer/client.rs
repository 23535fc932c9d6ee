//! The peer's client of the index: JSON calls with failover over the ordered server list given
//! by `--index` (the primary first, then its shadows). A connection error, a timeout or a 5xx
//! moves the same request to the next server at once; so does a shadow's read-only refusal of
//! a write. Any other 4xx is an answer and is returned as such.
//!
//! The client sticks to the server that last answered, so that while the primary is down (or
//! frozen, which costs a full timeout per try) reads go straight to a shadow; `probe_primary`,
//! called from the agent's loop, moves it back once the primary answers again.
//!
//! Every request goes out with `Connection: close`. tiny_http 0.12 keeps a pool thread on each
//! keep-alive connection for the connection's whole life, and under a burst of new connections
//! it can queue one behind threads that never come free; one request per connection means a
//! pool thread is back within one request, so no nap client can be stalled that way.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::session::Failure;
use crate::protocol::{
    self, AnnounceRequest, AnnounceResponse, ErrorBody, ErrorCode, FileInfoResponse,
    HealthResponse, HeartbeatRequest, HeartbeatResponse, LeaseIdRequest, LeaseRequest,
    LeaseResponse, RegisterRequest, RegisterResponse, ReleaseResponse, SearchResponse,
    StatusResponse, UnregisterRequest,
};

/// Largest JSON answer read from the index.
const MAX_ANSWER: u64 = 64 << 20;

#[derive(Debug)]
pub enum ClientError {
    /// No server answered; one line per server tried.
    Unavailable(Vec<String>),
    /// A server answered with a 4xx.
    Api { status: u16, body: ErrorBody },
    /// A server answered 2xx with something we could not read.
    BadAnswer(String),
    /// Only read-only shadows answered a write: the primary is down.
    ReadOnly,
}

impl ClientError {
    /// What the index's refusal says, for decisions; `None` when no index answered with one.
    /// An index older than codes only flags a peer it does not know (`reregister`).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { body, .. } if body.code == ErrorCode::Unknown && body.reregister => {
                Some(ErrorCode::UnknownPeer)
            }
            ClientError::Api { body, .. } => Some(body.code),
            _ => None,
        }
    }

    /// The index does not know this peer (any more): register again.
    pub fn needs_register(&self) -> bool {
        self.code() == Some(ErrorCode::UnknownPeer)
    }

    /// Whether an index refused (and so changed nothing), or none answered for sure. A
    /// write only shadows refused may still have reached a primary that went silent.
    pub fn failure(&self) -> Failure {
        self.code().map_or(Failure::Unanswered, Failure::Refused)
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Unavailable(tries) => {
                write!(f, "no index server answered ({})", tries.join("; "))
            }
            ClientError::Api { status, body } => write!(f, "{} (HTTP {status})", body.error),
            ClientError::BadAnswer(why) => write!(f, "unreadable answer from the index: {why}"),
            ClientError::ReadOnly => {
                f.write_str("index is read-only while the primary is down; try again later")
            }
        }
    }
}

impl std::error::Error for ClientError {}

pub struct IndexClient {
    servers: Vec<String>,
    agent: ureq::Agent,
    /// Bound on each phase of a call (the connect phase gets a quarter).
    timeout: Duration,
    /// The server tried first: the one that last answered.
    current: AtomicUsize,
}

impl IndexClient {
    /// `servers` are base URLs in order of preference (`http://host:port`); `timeout` bounds
    /// each phase of a call, the connect phase gets a quarter of it.
    pub fn new(servers: Vec<String>, timeout: Duration) -> IndexClient {
        let servers = servers
            .iter()
            .filter(|s| !s.trim().trim_end_matches('/').is_empty())
            .map(|s| protocol::base_url(s))
            .collect();
        IndexClient {
            servers,
            agent: crate::net::http_agent(timeout / 4, timeout),
            timeout,
            current: AtomicUsize::new(0),
        }
    }

    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// The server requests go to first.
    pub fn current(&self) -> &str {
        self.servers
            .get(self.current.load(Ordering::Relaxed))
            .map_or("", String::as_str)
    }

    /// While a later server is in use, asks the first (the primary) for its status and moves
    /// back to it when it answers as a primary. Returns whether it moved.
    pub fn probe_primary(&self) -> bool {
        if self.current.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let Some(primary) = self.servers.first() else {
            return false;
        };
        let url = format!("{primary}{}", protocol::PATH_STATUS);
        let answered = self
            .agent
            .get(&url)
            .header("Connection", "close")
            .call()
            .ok()
            .filter(|r| r.status().as_u16() == 200)
            .and_then(|r| r.into_body().read_json::<StatusResponse>().ok());
        if answered.is_some_and(|s| s.role == "primary") {
            log::info!("the primary {primary} answers again; using it");
            self.current.store(0, Ordering::Relaxed);
            return true;
        }
        false
    }

    pub fn register(&self, rq: &RegisterRequest) -> Result<RegisterResponse, ClientError> {
        self.post(protocol::PATH_REGISTER, rq)
    }

    /// A heartbeat; with `rq.wait_ms` set the index may hold it that long (long poll), so the
    /// answer is awaited that much longer.
    pub fn heartbeat(&self, rq: &HeartbeatRequest) -> Result<HeartbeatResponse, ClientError> {
        let wait = Duration::from_millis(rq.wait_ms.unwrap_or(0));
        self.call(protocol::PATH_HEARTBEAT, Some(rq), wait)
    }

    pub fn announce(&self, rq: &AnnounceRequest) -> Result<AnnounceResponse, ClientError> {
        self.post(protocol::PATH_ANNOUNCE, rq)
    }

    pub fn unregister(&self, rq: &UnregisterRequest) -> Result<serde_json::Value, ClientError> {
        self.post(protocol::PATH_UNREGISTER, rq)
    }

    pub fn lease(&self, rq: &LeaseRequest) -> Result<LeaseResponse, ClientError> {
        self.post(protocol::PATH_LEASE, rq)
    }

    pub fn renew_lease(&self, rq: &LeaseIdRequest) -> Result<LeaseResponse, ClientError> {
        self.post(protocol::PATH_LEASE_RENEW, rq)
    }

    pub fn release_lease(&self, rq: &LeaseIdRequest) -> Result<ReleaseResponse, ClientError> {
        self.post(protocol::PATH_LEASE_RELEASE, rq)
    }

    /// One file's history, holders and lease.
    pub fn file_info(&self, name: &str) -> Result<FileInfoResponse, ClientError> {
        let path = format!(
            "{}?name={}",
            protocol::PATH_FILE,
            protocol::url_encode(name)
        );
        self.call(&path, None::<&()>, Duration::ZERO)
    }

    pub fn search(&self, text: &str, limit: usize) -> Result<SearchResponse, ClientError> {
        let path = format!(
            "{}?q={}&limit={limit}",
            protocol::PATH_SEARCH,
            protocol::url_encode(text)
        );
        self.call(&path, None::<&()>, Duration::ZERO)
    }

    /// Liveness and role, without the index reading its state.
    pub fn health(&self) -> Result<HealthResponse, ClientError> {
        self.call(protocol::PATH_HEALTH, None::<&()>, Duration::ZERO)
    }

    pub fn status(&self) -> Result<StatusResponse, ClientError> {
        self.call(protocol::PATH_STATUS, None::<&()>, Duration::ZERO)
    }

    fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call(path, Some(body), Duration::ZERO)
    }

    /// Sends the request to each server in turn, starting with the current one, until one
    /// answers (2xx, or a 4xx other than a shadow's read-only refusal). `hold` is how long
    /// the server may hold the answer on purpose (a long poll), added to the answer timeout.
    fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&B>,
        hold: Duration,
    ) -> Result<T, ClientError> {
        let mut tries = Vec::new();
        let mut read_only = false;
        let first = self.current.load(Ordering::Relaxed);
        let n = self.servers.len();
        for i in (0..n).map(|k| (first + k) % n) {
            let server = &self.servers[i];
            let url = format!("{server}{path}");
            let answer_within = self.timeout + hold;
            let sent = match body {
                Some(b) => self
                    .agent
                    .post(&url)
                    .config()
                    .timeout_recv_response(Some(answer_within))
                    .build()
                    .header("Connection", "close")
                    .send_json(b),
                None => self.agent.get(&url).header("Connection", "close").call(),
            };
            let response = match sent {
                Ok(r) => r,
                Err(e) => {
                    log::debug!("{url}: {e}");
                    tries.push(format!("{server}: {e}"));
                    continue;
                }
            };
            let status = response.status().as_u16();
            let bytes = match response
                .into_body()
                .with_config()
                .limit(MAX_ANSWER)
                .read_to_vec()
            {
                Ok(b) => b,
                Err(e) => {
                    tries.push(format!("{server}: answer cut off: {e}"));
                    continue;
                }
            };
            if status >= 500 {
                tries.push(format!("{server}: HTTP {status}"));
                continue;
            }
            if status >= 400 {
                let body: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                    ErrorBody::new(
                        ErrorCode::Unknown,
                        String::from_utf8_lossy(&bytes)
                            .chars()
                            .take(200)
                            .collect::<String>(),
                    )
                });
                // (An index older than codes names its primary only in this refusal.)
                let shadow = body.code == ErrorCode::ReadOnly
                    || (body.code == ErrorCode::Unknown && body.primary.is_some());
                if shadow {
                    // A shadow: fine for reads, not for this write. Try the others.
                    read_only = true;
                    tries.push(format!("{server}: read-only shadow"));
                    continue;
                }
                self.use_server(i);
                return Err(ClientError::Api { status, body });
            }
            self.use_server(i);
            return serde_json::from_slice(&bytes)
                .map_err(|e| ClientError::BadAnswer(format!("{server}{path}: {e}")));
        }
        if read_only {
            return Err(ClientError::ReadOnly);
        }
        Err(ClientError::Unavailable(tries))
    }

    fn use_server(&self, i: usize) {
        let before = self.current.swap(i, Ordering::Relaxed);
        if before != i {
            log::warn!("index server now in use: {}", self.servers[i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread::JoinHandle;

    /// A server answering every request with one status and body, until dropped.
    struct Canned {
        server: Arc<tiny_http::Server>,
        url: String,
        thread: Option<JoinHandle<()>>,
    }

    impl Canned {
        fn new(status: u16, body: &str) -> Canned {
            let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
            let url = format!("http://{}", server.server_addr().to_ip().unwrap());
            let (answering, body) = (server.clone(), body.to_string());
            let thread = std::thread::spawn(move || {
                while let Ok(request) = answering.recv() {
                    let response =
                        tiny_http::Response::from_string(body.clone()).with_status_code(status);
                    let _ = request.respond(response);
                }
            });
            Canned {
                server,
                url,
                thread: Some(thread),
            }
        }
    }

    impl Drop for Canned {
        fn drop(&mut self) {
            self.server.unblock();
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn client(servers: &[&Canned]) -> IndexClient {
        let urls = servers.iter().map(|s| s.url.clone()).collect();
        IndexClient::new(urls, Duration::from_secs(5))
    }

    fn register() -> RegisterRequest {
        RegisterRequest {
            addr: "127.0.0.1:1".into(),
            files: Vec::new(),
            peer_id: None,
            token: None,
        }
    }

    const REGISTERED: &str = r#"{"peer_id":"p","token":"t","heartbeat_interval_ms":1000}"#;

    #[test]
    fn a_write_a_shadow_refuses_goes_to_the_next_server() {
        let read_only = ErrorBody {
            primary: Some("http://primary".into()),
            ..ErrorBody::new(ErrorCode::ReadOnly, "read-only shadow")
        };
        let shadow = Canned::new(403, &serde_json::to_string(&read_only).unwrap());
        // An index older than codes names its primary only in this refusal.
        let old_shadow = Canned::new(403, r#"{"error":"read-only","primary":"http://p"}"#);
        let writable = Canned::new(200, REGISTERED);
        let c = client(&[&shadow, &old_shadow, &writable]);
        let answer = c.register(&register()).unwrap();
        assert_eq!(answer.peer_id, "p");
        assert_eq!(
            c.current(),
            writable.url,
            "it sticks to the one that answered"
        );

        match client(&[&shadow]).register(&register()) {
            Err(e @ ClientError::ReadOnly) => assert_eq!(e.failure(), Failure::Unanswered),
            other => panic!("expected a read-only refusal, got {other:?}"),
        }
    }

    #[test]
    fn any_other_refusal_is_an_answer_even_with_the_same_status() {
        let not_yours = Canned::new(
            403,
            &serde_json::to_string(&ErrorBody::new(ErrorCode::LeaseNotYours, "not yours")).unwrap(),
        );
        let writable = Canned::new(200, REGISTERED);
        let c = client(&[&not_yours, &writable]);
        match c.register(&register()) {
            Err(e @ ClientError::Api { status: 403, .. }) => {
                assert_eq!(e.code(), Some(ErrorCode::LeaseNotYours));
                assert_eq!(e.failure(), Failure::Refused(ErrorCode::LeaseNotYours));
            }
            other => panic!("expected the refusal itself, got {other:?}"),
        }
        assert_eq!(c.current(), not_yours.url);
    }

    #[test]
    fn codes_decide_not_statuses() {
        let api = |body: ErrorBody| ClientError::Api { status: 404, body };
        let forgot = api(ErrorBody::new(ErrorCode::UnknownPeer, "unknown peer"));
        assert!(forgot.needs_register());
        assert_eq!(forgot.failure(), Failure::Refused(ErrorCode::UnknownPeer));
        let missing = api(ErrorBody::new(ErrorCode::NotFound, "no such file"));
        assert!(!missing.needs_register());
        // An index older than codes flags an unknown peer only.
        let old: ErrorBody =
            serde_json::from_str(r#"{"error":"unknown peer","reregister":true}"#).unwrap();
        assert_eq!(api(old).code(), Some(ErrorCode::UnknownPeer));
        let unavailable = ClientError::Unavailable(vec!["a: refused".into()]);
        assert_eq!(unavailable.code(), None);
        assert_eq!(unavailable.failure(), Failure::Unanswered);
        assert_eq!(
            ClientError::BadAnswer("x".into()).failure(),
            Failure::Unanswered,
            "a 2xx we could not read may have been applied"
        );
    }
}
