//! What a handler answers: a [`Reply`] (status, body, and what must happen around sending
//! it), or an [`ApiError`], which carries a machine-readable code and a message for people.
//! Errors of the layers below (the state machine's, the journal's) become answers here, once.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::index::core::SubmitError;
use crate::index::lease::LeaseError;
use crate::index::state::{Conflict, Limit, Refusal, Refused, StateError};
use crate::protocol::{ErrorBody, ErrorCode, Rejected};

pub const JSON: &str = "application/json";
pub const HTML: &str = "text/html; charset=utf-8";
/// Prometheus' text exposition format.
pub const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A rendered answer.
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub content_type: &'static str,
    /// Set on a heartbeat with nothing to say yet: hold the request for a task (long poll).
    pub park: Option<Park>,
    /// The op this answer acknowledges (0: none): it is sent only once that op is on disk.
    pub after: u64,
    /// Peers whose waiting heartbeats to answer once this answer is sent.
    pub wake: Vec<String>,
    /// With a 405: the methods the endpoint takes (RFC 9110 asks for an `Allow` header).
    pub allow: Option<&'static str>,
    /// With a 503 for load: seconds after which to try again (`Retry-After`).
    pub retry_after: Option<u32>,
    /// The endpoint, and when the server took the request: for `/metrics`.
    pub endpoint: &'static str,
    pub started: Option<Instant>,
}

/// A heartbeat to hold until its peer has a task, or the wait is over.
pub struct Park {
    pub peer_id: String,
    pub wait: Duration,
    /// What the heartbeat itself was answered (files the index refused), sent with the tasks.
    pub rejected: Vec<Rejected>,
}

impl Reply {
    /// An answer of `status` with `body` of type `content_type`, nothing else to do.
    pub fn new(status: u16, body: String, content_type: &'static str) -> Reply {
        Reply {
            status,
            body,
            content_type,
            park: None,
            after: 0,
            wake: Vec::new(),
            allow: None,
            retry_after: None,
            endpoint: "other",
            started: None,
        }
    }

    pub fn json<T: Serialize>(status: u16, value: &T) -> Reply {
        match serde_json::to_string(value) {
            Ok(body) => Reply::new(status, body, JSON),
            Err(e) => Reply::error(&ApiError::internal(format!("cannot encode answer: {e}"))),
        }
    }

    pub fn error(e: &ApiError) -> Reply {
        let body = serde_json::to_string(&e.body())
            .unwrap_or_else(|_| r#"{"error":"internal error","code":"internal"}"#.to_string());
        let retry_after = match (e.code, e.retry_after_ms) {
            (ErrorCode::Overloaded, _) => Some(1),
            // Whole seconds, rounded up: a client that waits that long is not refused again.
            (_, Some(ms)) => Some(u32::try_from(ms.div_ceil(1000)).unwrap_or(u32::MAX)),
            _ => None,
        };
        Reply {
            allow: e.allow,
            retry_after,
            ..Reply::new(e.code.status(), body, JSON)
        }
    }

    /// The error answer that replaces this one (its op could not be stored).
    pub fn failed(self, e: &ApiError) -> Reply {
        Reply {
            endpoint: self.endpoint,
            started: self.started,
            ..Reply::error(e)
        }
    }

    /// Holds this answer until op `seq` is on disk, then wakes `wake`.
    pub fn after(mut self, seq: u64, wake: Vec<String>) -> Reply {
        self.after = seq;
        self.wake = wake;
        self
    }
}

/// Everything a handler can answer instead of a success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// With `lease_held`: who holds the lease, and for how long still.
    holder: Option<(String, u64)>,
    /// With `read_only`: the primary to send writes to.
    primary: Option<String>,
    /// With `method_not_allowed`: the methods the endpoint takes.
    allow: Option<&'static str>,
    /// With `rate_limited`: when to try again.
    retry_after_ms: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            holder: None,
            primary: None,
            allow: None,
            retry_after_ms: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::BadRequest, message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Internal, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::NotFound, message)
    }

    pub fn method_not_allowed(allow: &'static str) -> ApiError {
        ApiError {
            allow: Some(allow),
            ..ApiError::new(
                ErrorCode::MethodNotAllowed,
                format!("method not allowed; use {allow}"),
            )
        }
    }

    /// A write sent to a read-only shadow; names the primary.
    pub fn read_only(primary: &str) -> ApiError {
        ApiError {
            primary: Some(primary.to_string()),
            ..ApiError::new(ErrorCode::ReadOnly, "read-only shadow")
        }
    }

    pub fn too_large(max: usize) -> ApiError {
        ApiError::new(
            ErrorCode::TooLarge,
            format!("request body is larger than {max} bytes"),
        )
    }

    fn body(&self) -> ErrorBody {
        let mut body = ErrorBody::new(self.code, self.message.clone());
        if let Some((holder, remaining_ms)) = &self.holder {
            body.holder = Some(holder.clone());
            body.remaining_ms = Some(*remaining_ms);
        }
        body.primary = self.primary.clone();
        body.retry_after_ms = self.retry_after_ms;
        body
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::State(e) => e.into(),
            SubmitError::Storage(why) => ApiError::new(ErrorCode::Unavailable, why),
        }
    }
}

/// The code for a claim that contradicts the index's history.
pub fn conflict_code(conflict: &Conflict) -> ErrorCode {
    match conflict {
        Conflict::OtherContent { .. } => ErrorCode::Conflict,
        Conflict::VersionGap { .. } => ErrorCode::VersionGap,
        Conflict::LeaseRequired { .. } => ErrorCode::LeaseRequired,
    }
}

/// The code for a file refused by a per-peer limit.
pub fn limit_code(limit: &Limit) -> ErrorCode {
    match limit {
        Limit::Files { .. } => ErrorCode::TooManyFiles,
        Limit::NewNames { .. } => ErrorCode::RateLimited,
    }
}

impl From<StateError> for ApiError {
    fn from(e: StateError) -> Self {
        let message = e.to_string();
        let code = match &e {
            StateError::UnknownPeer(_) => ErrorCode::UnknownPeer,
            StateError::BadToken(_) => ErrorCode::BadToken,
            StateError::Conflict(conflict) => conflict_code(conflict),
            StateError::NoSuchFile(_) => ErrorCode::NotFound,
            StateError::Lease(LeaseError::Held { .. }) => ErrorCode::LeaseHeld,
            StateError::Lease(LeaseError::NotYours { .. }) => ErrorCode::LeaseNotYours,
            StateError::Lease(LeaseError::Unknown) => ErrorCode::LeaseUnknown,
            StateError::Lease(LeaseError::Expired { .. }) => ErrorCode::LeaseExpired,
            StateError::Lease(LeaseError::OtherFile { .. }) => ErrorCode::LeaseOtherFile,
            StateError::Lease(LeaseError::IdTaken) => ErrorCode::Conflict,
            StateError::Limit(limit) => limit_code(limit),
        };
        let retry_after_ms = match &e {
            StateError::Limit(limit) => limit.retry_after_ms(),
            _ => None,
        };
        let holder = match e {
            StateError::Lease(LeaseError::Held {
                holder,
                remaining_ms,
                ..
            }) => Some((holder, remaining_ms)),
            _ => None,
        };
        ApiError {
            holder,
            retry_after_ms,
            ..ApiError::new(code, message)
        }
    }
}

/// A file of a list the index did not record, as the peer is told.
pub fn rejected(refusals: Vec<Refusal>) -> Vec<Rejected> {
    refusals
        .into_iter()
        .map(|r| {
            let (code, retry_after_ms) = match &r.why {
                Refused::Conflict(conflict) => (conflict_code(conflict), None),
                Refused::Limit(limit) => (limit_code(limit), limit.retry_after_ms()),
            };
            Rejected {
                name: r.name,
                reason: r.why.to_string(),
                status: code.status(),
                code,
                retry_after_ms,
            }
        })
        .collect()
}
