//! The peer's file server: `GET` and `HEAD /files/NAME`, streamed from disk, with single-range
//! `Range` requests so interrupted downloads resume, and `GET /status`. It serves only
//! catalogued regular files directly in the shared folder; it must never read outside it,
//! whatever the name.

use std::io::{Read, Seek, SeekFrom};

use super::Peer;
use crate::net::{Answer, Body, Call, Permits, Status};
use crate::protocol::{self, ErrorBody, ErrorCode};

/// Serves one request on this thread (each request has its own, see `net::pool`). Only the
/// body of a file takes one of the `slots` (`--upload-slots`), so `/status` and errors are
/// answered whatever the uploads do, and a client that reads slowly frees its slot when the
/// server gives up on it (`--request-timeout`, at the minimum rate).
pub fn serve(peer: &Peer, call: Call, slots: &Permits) {
    answer(peer, call, slots);
}

/// Answers a request that found no place (`--max-connections` in flight): 503, at once.
pub fn refuse(call: Call, refusal: &str) {
    let answer = error_answer(ErrorCode::Overloaded, refusal).with_header("Retry-After", "1");
    let _ = call.answer(answer);
}

fn error_answer(code: ErrorCode, message: &str) -> Answer {
    let body = serde_json::to_vec(&ErrorBody::new(code, message)).unwrap_or_default();
    Answer::bytes(code.status(), "application/json", body)
}

fn error(call: Call, code: ErrorCode, message: &str) {
    let _ = call.answer(error_answer(code, message));
}

/// A parsed `Range` header: the first and last byte wanted, both inclusive.
#[derive(Debug, PartialEq, Eq)]
pub enum ByteRange {
    Whole,
    Part(u64, u64),
    Unsatisfiable,
}

/// Understands `bytes=A-`, `bytes=A-B` and `bytes=-N` for a file of `len` bytes. Anything
/// else (several ranges, other units) is answered with the whole file, as RFC 9110 allows.
pub fn parse_range(value: Option<&str>, len: u64) -> ByteRange {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return ByteRange::Whole;
    };
    if spec.contains(',') {
        return ByteRange::Whole;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return ByteRange::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let parsed = match (first.is_empty(), last.is_empty()) {
        (false, true) => first
            .parse::<u64>()
            .ok()
            .map(|a| (a, len.saturating_sub(1))),
        (false, false) => match (first.parse::<u64>(), last.parse::<u64>()) {
            (Ok(a), Ok(b)) if a <= b => Some((a, b.min(len.saturating_sub(1)))),
            _ => None,
        },
        (true, false) => last
            .parse::<u64>()
            .ok()
            .and_then(|n| (n > 0).then(|| (len.saturating_sub(n), len.saturating_sub(1)))),
        (true, true) => None,
    };
    match parsed {
        Some((a, b)) if a < len && a <= b => ByteRange::Part(a, b),
        Some(_) => ByteRange::Unsatisfiable,
        None => ByteRange::Whole,
    }
}

fn answer(peer: &Peer, mut call: Call, slots: &Permits) {
    let store = &peer.store;
    // Requests to a file server carry no body; a small one is read and dropped.
    if call.read_body(IGNORED_BODY).is_err() {
        return error(
            call,
            ErrorCode::BadRequest,
            "requests to a file server carry no body",
        );
    }
    let head = match call.method() {
        tiny_http::Method::Get => false,
        tiny_http::Method::Head => true,
        _ => {
            return error(
                call,
                ErrorCode::MethodNotAllowed,
                "method not allowed; use GET or HEAD",
            )
        }
    };
    let url = call.url().to_string();
    let path = url.split('?').next().unwrap_or("");
    if path == protocol::PATH_STATUS {
        let body = serde_json::to_vec(&peer.status_report()).unwrap_or_default();
        let _ = call.answer(Answer::bytes(200, "application/json", body));
        return;
    }
    let Some(raw) = path.strip_prefix(protocol::PATH_FILES) else {
        return error(
            call,
            ErrorCode::NotFound,
            "no such endpoint; files are under /files/NAME",
        );
    };
    let Some(name) = protocol::url_decode(raw, false) else {
        return error(call, ErrorCode::BadRequest, "bad escape in file name");
    };
    if let Err(why) = protocol::validate_file_name(&name) {
        return error(call, ErrorCode::BadRequest, &why.to_string());
    }
    let Some(meta) = store.get(&name) else {
        return error(
            call,
            ErrorCode::NotFound,
            &format!("{name} is not shared here"),
        );
    };
    let (mut file, len) = match store.open_file(&name) {
        Ok(f) => f,
        Err(e) => {
            log::warn!("cannot serve {name}: {e}");
            return error(
                call,
                ErrorCode::NotFound,
                &format!("{name} is not available here"),
            );
        }
    };
    let (status, first, count) = match parse_range(call.header("Range"), len) {
        ByteRange::Whole => (200, 0, len),
        ByteRange::Part(a, b) => (206, a, b - a + 1),
        ByteRange::Unsatisfiable => {
            let answer = error_answer(
                ErrorCode::RangeNotSatisfiable,
                &format!("{name} has {len} bytes"),
            )
            .with_header("Content-Range", format!("bytes */{len}"));
            let _ = call.answer(answer);
            return;
        }
    };
    if first > 0 {
        if let Err(e) = file.seek(SeekFrom::Start(first)) {
            return error(
                call,
                ErrorCode::Internal,
                &format!("cannot read {name}: {e}"),
            );
        }
    }
    let wait = call.limits().request_timeout;
    let Some(slot) = slots.acquire_within(wait) else {
        let answer = error_answer(
            ErrorCode::Overloaded,
            "every upload slot is busy; retry later or ask another holder",
        )
        .with_header("Retry-After", "1");
        let _ = call.answer(answer);
        return;
    };
    let mut answer = Answer {
        status: Status(status),
        headers: vec![
            ("Content-Type", "application/octet-stream".into()),
            ("Accept-Ranges", "bytes".into()),
            (protocol::HEADER_VERSION, meta.version.to_string()),
            (protocol::HEADER_SHA256, meta.sha256.clone()),
            ("ETag", format!("\"{}\"", meta.sha256)),
        ],
        body: Body::Stream {
            reader: Box::new(file.take(count)),
            len: count,
        },
    };
    if status == 206 {
        answer = answer.with_header(
            "Content-Range",
            format!("bytes {first}-{}/{len}", first + count - 1),
        );
    }
    log::debug!("serving {name} bytes {first}+{count}");
    let running = peer.transfers.upload();
    match call.answer(answer) {
        Ok(()) if !head => peer.transfers.uploaded(count),
        Ok(()) => {}
        Err(e) => log::debug!("upload of {name} ended early: {e}"),
    }
    drop((running, slot));
}

/// Body bytes a file server reads (and drops) from a request: none is expected.
const IGNORED_BODY: usize = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use ByteRange::*;
        assert_eq!(parse_range(None, 10), Whole);
        assert_eq!(parse_range(Some("bytes=0-"), 10), Part(0, 9));
        assert_eq!(parse_range(Some("bytes=4-"), 10), Part(4, 9));
        assert_eq!(parse_range(Some("bytes=2-5"), 10), Part(2, 5));
        assert_eq!(parse_range(Some("bytes=2-50"), 10), Part(2, 9));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Part(7, 9));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=5-2"), 10), Whole);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), Whole);
        assert_eq!(parse_range(Some("items=0-1"), 10), Whole);
        assert_eq!(parse_range(Some("bytes=x-"), 10), Whole);
    }
}
