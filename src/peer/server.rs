//! The peer's file server: `GET` and `HEAD /files/NAME`, streamed from disk, with single-range
//! `Range` requests so interrupted downloads resume, and `GET /status`. It serves only
//! catalogued regular files directly in the shared folder; it must never read outside it,
//! whatever the name.

use std::io::{Read, Seek, SeekFrom};

use crossbeam_channel::Receiver;
use tiny_http::{Header, Method, Request, Response, StatusCode};

use super::Peer;
use crate::net::{Call, Connections};
use crate::protocol::{self, ErrorBody, ErrorCode};

/// A worker: answers the dispatcher's requests until it stops. Each worker streams one file
/// at a time, so the number of workers is the number of upload slots.
pub fn serve(peer: &Peer, calls: &Receiver<Call>) {
    while let Ok(request) = calls.recv() {
        answer(peer, request);
    }
}

/// Answers a request that found no place (`--max-connections` in flight): 503, at once.
pub fn refuse(request: Request, conns: &Connections) {
    let mut response = error_response(ErrorCode::Overloaded, &conns.refusal());
    if let Some(h) = header("Retry-After", "1") {
        response.add_header(h);
    }
    let _ = request.respond(response);
}

fn header(name: &str, value: &str) -> Option<Header> {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
}

fn error_response(code: ErrorCode, message: &str) -> Response<std::io::Cursor<Vec<u8>>> {
    let body = serde_json::to_string(&ErrorBody::new(code, message)).unwrap_or_default();
    let mut response = Response::from_string(body).with_status_code(code.status());
    if let Some(h) = header("Content-Type", "application/json") {
        response.add_header(h);
    }
    response
}

fn error(request: Call, code: ErrorCode, message: &str) {
    let _ = request.respond(error_response(code, message));
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

fn answer(peer: &Peer, request: Call) {
    let store = &peer.store;
    let head = match request.method() {
        Method::Get => false,
        Method::Head => true,
        _ => {
            return error(
                request,
                ErrorCode::MethodNotAllowed,
                "method not allowed; use GET or HEAD",
            )
        }
    };
    let url = request.url().to_string();
    let path = url.split('?').next().unwrap_or("");
    if path == protocol::PATH_STATUS {
        let body = serde_json::to_string(&peer.status_report()).unwrap_or_default();
        let mut response = Response::from_string(body);
        if let Some(h) = header("Content-Type", "application/json") {
            response.add_header(h);
        }
        let _ = request.respond(response);
        return;
    }
    let Some(raw) = path.strip_prefix(protocol::PATH_FILES) else {
        return error(
            request,
            ErrorCode::NotFound,
            "no such endpoint; files are under /files/NAME",
        );
    };
    let Some(name) = protocol::url_decode(raw, false) else {
        return error(request, ErrorCode::BadRequest, "bad escape in file name");
    };
    if let Err(why) = protocol::validate_file_name(&name) {
        return error(request, ErrorCode::BadRequest, &why.to_string());
    }
    let Some(meta) = store.get(&name) else {
        return error(
            request,
            ErrorCode::NotFound,
            &format!("{name} is not shared here"),
        );
    };
    let (mut file, len) = match store.open_file(&name) {
        Ok(f) => f,
        Err(e) => {
            log::warn!("cannot serve {name}: {e}");
            return error(
                request,
                ErrorCode::NotFound,
                &format!("{name} is not available here"),
            );
        }
    };
    let range_header = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Range"))
        .map(|h| h.value.as_str().to_string());
    let (status, first, count) = match parse_range(range_header.as_deref(), len) {
        ByteRange::Whole => (200, 0, len),
        ByteRange::Part(a, b) => (206, a, b - a + 1),
        ByteRange::Unsatisfiable => {
            let mut response = Response::from_string("").with_status_code(416);
            if let Some(h) = header("Content-Range", &format!("bytes */{len}")) {
                response.add_header(h);
            }
            let _ = request.respond(response);
            return;
        }
    };
    if first > 0 {
        if let Err(e) = file.seek(SeekFrom::Start(first)) {
            return error(
                request,
                ErrorCode::Internal,
                &format!("cannot read {name}: {e}"),
            );
        }
    }
    let mut headers = vec![
        header("Content-Type", "application/octet-stream"),
        header("Accept-Ranges", "bytes"),
        header(protocol::HEADER_VERSION, &meta.version.to_string()),
        header(protocol::HEADER_SHA256, &meta.sha256),
        header("ETag", &format!("\"{}\"", meta.sha256)),
    ];
    if status == 206 {
        headers.push(header(
            "Content-Range",
            &format!("bytes {first}-{}/{len}", first + count - 1),
        ));
    }
    let body: Box<dyn Read + Send> = if head {
        Box::new(std::io::empty())
    } else {
        Box::new(file.take(count))
    };
    let response = Response::new(
        StatusCode(status),
        headers.into_iter().flatten().collect(),
        body,
        Some(count as usize),
        None,
    );
    log::debug!("serving {name} bytes {first}+{count}");
    let running = peer.transfers.upload();
    match request.respond(response) {
        Ok(()) if !head => peer.transfers.uploaded(count),
        Ok(()) => {}
        Err(e) => log::debug!("upload of {name} ended early: {e}"),
    }
    drop(running);
}

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
