//! Wire types shared by the index and the peers: request and response bodies, API paths, the
//! error body, and the file-name rule both sides enforce. Nothing here does I/O.

use serde::{Deserialize, Serialize};

pub const PATH_REGISTER: &str = "/register";
pub const PATH_HEARTBEAT: &str = "/heartbeat";
pub const PATH_ANNOUNCE: &str = "/announce";
pub const PATH_UNREGISTER: &str = "/unregister";
pub const PATH_SEARCH: &str = "/search";
pub const PATH_STATUS: &str = "/status";
/// Liveness and role only, answered without touching the index state: for health checks,
/// and as the cheapest request the HTTP stack can serve.
pub const PATH_HEALTH: &str = "/health";
/// The index's status page, for people (HTML).
pub const PATH_DASHBOARD: &str = "/";
/// The index's numbers in Prometheus' text format.
pub const PATH_METRICS: &str = "/metrics";

/// Every path the index answers: the routes of `index::http`, the endpoint labels of
/// `/metrics`, and what docs/openapi.yaml must list (tests/openapi.rs checks both ways).
pub const INDEX_PATHS: [&str; 15] = [
    PATH_DASHBOARD,
    PATH_REGISTER,
    PATH_HEARTBEAT,
    PATH_ANNOUNCE,
    PATH_UNREGISTER,
    PATH_LEASE,
    PATH_LEASE_RENEW,
    PATH_LEASE_RELEASE,
    PATH_SEARCH,
    PATH_FILE,
    PATH_STATUS,
    PATH_HEALTH,
    PATH_METRICS,
    PATH_SYNC,
    PATH_SNAPSHOT,
];
pub const PATH_LEASE: &str = "/lease";
pub const PATH_LEASE_RENEW: &str = "/lease/renew";
pub const PATH_LEASE_RELEASE: &str = "/lease/release";
/// `GET /file?name=NAME`: one file's version history, holders and lease.
pub const PATH_FILE: &str = "/file";
/// Replication between index servers (shared secret required).
pub const PATH_SYNC: &str = "/sync";
pub const PATH_SNAPSHOT: &str = "/snapshot";
/// Peers serve their files under this prefix: `GET /files/NAME`.
pub const PATH_FILES: &str = "/files/";

/// Longest file name accepted anywhere, in bytes (the common file-system limit).
pub const MAX_NAME_LEN: usize = 255;
/// Default and largest result count of `/search`.
pub const DEFAULT_SEARCH_LIMIT: usize = 50;
pub const MAX_SEARCH_LIMIT: usize = 1000;

/// Response headers a peer's file server sets so a downloader can check what it got.
pub const HEADER_VERSION: &str = "X-Nap-Version";
pub const HEADER_SHA256: &str = "X-Nap-Sha256";

/// One version of one file, as a peer holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    pub name: String,
    pub version: u64,
    pub size: u64,
    /// Lowercase hex SHA-256 of the whole content.
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// Where other peers reach this peer's file server, `host:port`.
    pub addr: String,
    #[serde(default)]
    pub files: Vec<FileMeta>,
    #[serde(default)]
    pub peer_id: Option<String>,
    #[serde(default)]
    pub token: Option<String>,
}

/// A file the index refused to record for a peer, and why (e.g. same name and version as
/// another peer's copy, different content).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    pub name: String,
    pub reason: String,
    /// The status this file alone would have got: 409 (a conflict with the index's history,
    /// or the peer's cap of names), or 429 (new names too fast).
    #[serde(default = "conflict_status")]
    pub status: u16,
    /// What kind of refusal, for programs: `conflict`, `version_gap`, `lease_required`,
    /// `too_many_files` or `rate_limited`.
    #[serde(default)]
    pub code: ErrorCode,
    /// With `rate_limited`: report the file again after this many milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

fn conflict_status() -> u16 {
    409
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub peer_id: String,
    pub token: String,
    pub heartbeat_interval_ms: u64,
    #[serde(default)]
    pub tasks: Vec<Task>,
    #[serde(default)]
    pub rejected: Vec<Rejected>,
}

/// A copy the index asks a peer to make: fetch `file` at `version` from one of `sources`,
/// verify it against `sha256` and `size`, then announce it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub task_id: String,
    pub file: String,
    pub version: u64,
    pub sha256: String,
    pub size: u64,
    pub sources: Vec<String>,
}

/// Liveness plus the changes of the peer's file list since its last report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    pub peer_id: String,
    pub token: String,
    #[serde(default)]
    pub added: Vec<FileMeta>,
    #[serde(default)]
    pub removed: Vec<String>,
    /// Copy tasks the peer could not carry out since its last report.
    #[serde(default)]
    pub failed: Vec<TaskFailure>,
    /// Long poll: when there is no task for the peer, the index may hold the answer this
    /// long (capped by the index) and answers as soon as a task appears.
    #[serde(default)]
    pub wait_ms: Option<u64>,
}

/// A task the peer gave up on, and why (every source failed, verification failed, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFailure {
    pub task_id: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    #[serde(default)]
    pub tasks: Vec<Task>,
    #[serde(default)]
    pub rejected: Vec<Rejected>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AnnounceRequest {
    pub peer_id: String,
    pub token: String,
    pub file: String,
    pub version: u64,
    pub size: u64,
    pub sha256: String,
    #[serde(default)]
    pub lease_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AnnounceResponse {
    pub file: String,
    pub version: u64,
    /// The newest version the index knows of this file after the announce.
    pub latest_version: u64,
}

/// Asks for the write lease on `file`: the right to publish its next version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseRequest {
    pub peer_id: String,
    pub token: String,
    pub file: String,
}

/// Names a lease the peer holds, to renew or release it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseIdRequest {
    pub peer_id: String,
    pub token: String,
    pub lease_id: String,
}

/// A lease granted or renewed. `version`, `size` and `sha256` describe the file's latest
/// version: the next publish must be `version + 1`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseResponse {
    pub lease_id: String,
    pub file: String,
    /// Time left on the lease, in milliseconds.
    pub ttl_ms: u64,
    pub version: u64,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseResponse {
    pub released: bool,
    pub file: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionEntry {
    pub version: u64,
    pub size: u64,
    pub sha256: String,
    /// When the index first learned this version (index clock, ms since the epoch).
    pub created_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HolderVersion {
    pub peer_id: String,
    pub addr: String,
    pub version: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub holder: String,
    pub remaining_ms: u64,
}

/// Answer of `GET /file?name=NAME`: everything the index knows of one file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileInfoResponse {
    pub name: String,
    /// Every known version, oldest first.
    pub versions: Vec<VersionEntry>,
    pub holders: Vec<HolderVersion>,
    /// The live write lease, if someone is editing the file.
    #[serde(default)]
    pub lease: Option<LeaseInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnregisterRequest {
    pub peer_id: String,
    pub token: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub peer_id: String,
    pub addr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchResult {
    pub name: String,
    /// The latest version; `holders` hold exactly this version.
    pub version: u64,
    pub size: u64,
    pub sha256: String,
    pub holders: Vec<Holder>,
    /// Peers still holding an older version (not a source for the latest).
    #[serde(default)]
    pub stale_holders: Vec<Holder>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchResponse {
    pub results: Vec<SearchResult>,
    /// How many files match the query in all, listed or not: exact when `total_exact`, else
    /// a lower bound (the index stopped counting at its scan budget). An index older than
    /// these fields sends neither, which reads as "at least 0": true, and says nothing.
    #[serde(default)]
    pub total: u64,
    #[serde(default)]
    pub total_exact: bool,
}

/// Answer of a peer's `GET /status` (on its file server): who it is, which index it uses,
/// and what it is moving.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatusResponse {
    /// `None` until the peer has registered.
    pub peer_id: Option<String>,
    pub addr: String,
    pub dir: String,
    /// Files in the shared folder's catalog.
    pub files: usize,
    pub index_servers: Vec<String>,
    /// The index server calls go to first: the one that last answered.
    pub index_in_use: String,
    pub uploads_active: u64,
    /// Uploads answered in full since start, and their bytes.
    pub uploads_total: u64,
    pub bytes_served: u64,
    pub downloads_active: u64,
    /// Verified downloads put in place since start.
    pub downloads_total: u64,
}

/// The answer of `GET /health`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthResponse {
    pub ok: bool,
    /// "primary" or "shadow".
    pub role: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusResponse {
    pub role: String,
    pub peers: usize,
    pub files: usize,
    /// Names with a version history, held or not; those nobody holds are forgotten after
    /// `history_retention_ms`.
    #[serde(default)]
    pub histories: usize,
    /// 0: histories are kept for ever.
    #[serde(default)]
    pub history_retention_ms: u64,
    /// Sequence number of the last op applied to the index state.
    pub seq: u64,
    pub uptime_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub peer_timeout_ms: u64,
    /// Leases not yet swept (live, or expired moments ago).
    #[serde(default)]
    pub leases: usize,
    #[serde(default)]
    pub lease_ttl_ms: u64,
    /// The history the state belongs to (new each time a primary starts empty).
    #[serde(default)]
    pub epoch: String,
    /// On a shadow: its primary, and how long ago the primary last pushed to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_ms_ago: Option<u64>,
    /// On a primary: each shadow's acknowledged sequence number and lag.
    #[serde(default)]
    pub shadows: Vec<ShadowState>,
    /// With `?digest=1`: a hash of the whole sequenced state; equal at equal `seq` on a
    /// primary and its shadows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Replication (primary): the target copy count, copy tasks in flight, and the files
    /// whose latest version has fewer up-to-date holders than that (the first 100 listed).
    #[serde(default)]
    pub replication_factor: usize,
    #[serde(default)]
    pub tasks_in_flight: usize,
    #[serde(default)]
    pub under_replicated: usize,
    #[serde(default)]
    pub under_replicated_files: Vec<UnderReplicatedFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnderReplicatedFile {
    pub name: String,
    pub version: u64,
    /// Up-to-date holders now.
    pub holders: usize,
    /// Copies being made.
    pub in_flight: usize,
}

/// One shadow as its primary sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShadowState {
    pub url: String,
    pub acked_seq: u64,
    /// Ops the shadow is behind.
    pub lag: u64,
    #[serde(default)]
    pub last_ack_ms_ago: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What went wrong, for programs: every error answer of the index and of the peers' file
/// servers carries one (`code` in [`ErrorBody`]), so a client decides by it, not by the
/// status number (two 403s, a shadow's and a bad lease's, mean different things) nor by the
/// message, which is for people. A code this version does not know reads as `unknown`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or breaks an input rule (400).
    BadRequest,
    /// Wrong token for the peer id, or no cluster secret (401).
    BadToken,
    /// Not allowed here, e.g. `/sync` sent to a primary (403).
    Forbidden,
    /// A write sent to a read-only shadow; `primary` says where to go (403).
    ReadOnly,
    /// The index does not know this peer (any more): register again (404).
    UnknownPeer,
    /// No such file, version or endpoint (404).
    NotFound,
    /// The endpoint takes other methods; `Allow` lists them (405).
    MethodNotAllowed,
    /// The claim contradicts the index's history: other content under a known version (409).
    Conflict,
    /// A version that skips versions after the latest known (409).
    VersionGap,
    /// A new version published without a lease (409).
    LeaseRequired,
    /// Another peer holds the file's lease; `holder` and `remaining_ms` say who and how
    /// long (409).
    LeaseHeld,
    /// No such lease: never granted, released, used, or expired and swept (409).
    LeaseUnknown,
    /// The lease ran out (409).
    LeaseExpired,
    /// The lease is for another file (409).
    LeaseOtherFile,
    /// The lease belongs to another peer (403).
    LeaseNotYours,
    /// The request's body did not arrive within `--request-timeout` at the minimum rate
    /// (408); the connection is closed.
    TimedOut,
    /// The peer holds as many names as the index takes from one peer
    /// (`--max-files-per-peer`); it must stop sharing some before it adds others (409).
    TooManyFiles,
    /// The peer brings names new to the index faster than it takes them; `retry_after_ms`
    /// says when to report the file again (429).
    RateLimited,
    /// The body is larger than the server takes (413).
    TooLarge,
    /// A list is longer than the server takes in one request (413).
    TooMany,
    /// The range asked of a file cannot be served (416).
    RangeNotSatisfiable,
    /// The server cannot do this now, e.g. its log cannot be written (503).
    Unavailable,
    /// As many requests as the server takes are in flight; try again after `Retry-After` (503).
    Overloaded,
    /// A bug on the server's side (500).
    Internal,
    /// A code from a newer version, or an answer that was not nap's.
    #[default]
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The HTTP status an answer with this code carries.
    pub fn status(self) -> u16 {
        use ErrorCode::*;
        match self {
            BadRequest => 400,
            BadToken => 401,
            Forbidden | ReadOnly | LeaseNotYours => 403,
            UnknownPeer | NotFound => 404,
            MethodNotAllowed => 405,
            TimedOut => 408,
            Conflict | VersionGap | LeaseRequired | LeaseHeld | LeaseUnknown | LeaseExpired
            | LeaseOtherFile | TooManyFiles => 409,
            TooLarge | TooMany => 413,
            RateLimited => 429,
            RangeNotSatisfiable => 416,
            Unavailable | Overloaded => 503,
            Internal | Unknown => 500,
        }
    }
}

/// Body of every error answer from the index and the peers' file servers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong and what to do, for people.
    pub error: String,
    #[serde(default)]
    pub code: ErrorCode,
    /// Set on answers to a peer the index does not know: the peer must register again
    /// (the same as `code` `unknown_peer`; kept for clients older than `code`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reregister: bool,
    /// On a refused lease: the peer holding it, and how long it still runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_ms: Option<u64>,
    /// On a write sent to a read-only shadow: where the primary is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// On `rate_limited`: try again after this many milliseconds (`Retry-After` rounds it
    /// up to whole seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, error: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error: error.into(),
            code,
            reregister: code == ErrorCode::UnknownPeer,
            holder: None,
            remaining_ms: None,
            primary: None,
            retry_after_ms: None,
        }
    }
}

/// `http://host:port` from what a user typed: spaces and trailing slashes go, a missing
/// scheme is taken to be `http://`. Every base URL nap is given goes through here.
pub fn base_url(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    }
}

/// Why a file name breaks the rule both sides share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadName {
    Empty,
    /// Longer than the limit (its length in bytes, the limit).
    TooLong(usize, usize),
    Slash,
    Backslash,
    Control,
    LeadingDot,
}

impl std::fmt::Display for BadName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadName::Empty => f.write_str("file name is empty"),
            BadName::TooLong(len, max) => {
                write!(f, "file name is {len} bytes long; the limit is {max}")
            }
            BadName::Slash => f.write_str("file name contains '/'"),
            BadName::Backslash => f.write_str("file name contains '\\'"),
            BadName::Control => {
                f.write_str("file name contains a control character (NUL, newline, ...)")
            }
            BadName::LeadingDot => f.write_str("file name starts with '.'"),
        }
    }
}

impl std::error::Error for BadName {}

/// Why a file entry sent by a peer cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadMeta {
    Name(BadName),
    /// The sha256 is not 64 lowercase hex digits (the file's name).
    Sha256(String),
    /// Version 0 (the file's name): versions start at 1.
    VersionZero(String),
}

impl std::fmt::Display for BadMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadMeta::Name(e) => write!(f, "{e}"),
            BadMeta::Sha256(name) => write!(f, "{name}: {BAD_SHA256}"),
            BadMeta::VersionZero(name) => write!(f, "{name}: versions start at 1"),
        }
    }
}

impl std::error::Error for BadMeta {}

const BAD_SHA256: &str = "sha256 must be 64 lowercase hex digits";

/// Checks a file name against the rule both sides share: one plain path component that
/// cannot escape a directory or hide from a listing.
pub fn validate_file_name(name: &str) -> Result<(), BadName> {
    if name.is_empty() {
        return Err(BadName::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(BadName::TooLong(name.len(), MAX_NAME_LEN));
    }
    if name.contains('/') {
        return Err(BadName::Slash);
    }
    if name.contains('\\') {
        return Err(BadName::Backslash);
    }
    if name.chars().any(char::is_control) {
        return Err(BadName::Control);
    }
    if name.starts_with('.') {
        // Covers "." and "..", and keeps the peer's private `.nap` folder unreachable.
        return Err(BadName::LeadingDot);
    }
    Ok(())
}

/// Whether `s` looks like a SHA-256 digest in lowercase hex.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks a whole file entry as sent by a peer.
pub fn validate_file_meta(meta: &FileMeta) -> Result<(), BadMeta> {
    validate_file_name(&meta.name).map_err(BadMeta::Name)?;
    if !is_sha256(&meta.sha256) {
        return Err(BadMeta::Sha256(meta.name.clone()));
    }
    if meta.version == 0 {
        return Err(BadMeta::VersionZero(meta.name.clone()));
    }
    Ok(())
}

/// Percent-encodes a file name for use as one URL path segment or query value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes (and `+` as space when `plus_is_space`, for query strings).
/// `None` when an escape is malformed or the result is not UTF-8.
pub fn url_decode(s: &str, plus_is_space: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "../etc/passwd",
            "a/b",
            "a\\b",
            "nul\0byte",
            "new\nline",
            ".nap",
            ".hidden",
        ] {
            assert!(validate_file_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_file_name(&"x".repeat(MAX_NAME_LEN + 1)).is_err());
        for good in ["doc.txt", "My Song - 01.mp3", "a..b", "ünïcödé.txt"] {
            assert!(validate_file_name(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn url_coding_round_trips() {
        for s in ["doc.txt", "a b+c%d", "ünï/..\\", "?&="] {
            assert_eq!(url_decode(&url_encode(s), false).as_deref(), Some(s));
        }
        assert_eq!(url_decode("a+b", true).as_deref(), Some("a b"));
        assert_eq!(url_decode("%zz", false), None);
        assert_eq!(url_decode("%4", false), None);
        assert_eq!(url_decode("%ff", false), None);
    }

    #[test]
    fn sha_shape_is_checked() {
        assert!(is_sha256(&"a".repeat(64)));
        assert!(!is_sha256(&"A".repeat(64)));
        assert!(!is_sha256("abc"));
    }

    #[test]
    fn error_codes_read_back_and_unknown_ones_do_not_fail() {
        let body = ErrorBody::new(ErrorCode::UnknownPeer, "who?");
        let json = serde_json::to_string(&body).unwrap();
        assert!(json.contains(r#""code":"unknown_peer""#), "{json}");
        assert!(json.contains(r#""reregister":true"#), "{json}");
        let back: ErrorBody = serde_json::from_str(&json).unwrap();
        assert_eq!(back.code, ErrorCode::UnknownPeer);
        let newer: ErrorBody =
            serde_json::from_str(r#"{"error":"x","code":"from_the_future"}"#).unwrap();
        assert_eq!(newer.code, ErrorCode::Unknown);
        let older: ErrorBody = serde_json::from_str(r#"{"error":"x"}"#).unwrap();
        assert_eq!(older.code, ErrorCode::Unknown);
        assert_eq!(ErrorCode::LeaseHeld.status(), 409);
    }

    #[test]
    fn base_urls_are_normalised() {
        assert_eq!(base_url(" 127.0.0.1:7070/ "), "http://127.0.0.1:7070");
        assert_eq!(base_url("https://x:1//"), "https://x:1");
    }
}
