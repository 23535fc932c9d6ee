//! One request and its answer, with deadlines on both.
//!
//! tiny_http hands over a request once its head is in; its body is read as we read it, with
//! no deadline, and its answer is written through a 1 KiB buffer, head and body apart, with no
//! way to say `Connection: close`. So here:
//! - `Call::read_body` reads the whole body up front, no more than the route's limit, at
//!   the pace `Pace` sets; the warden enforces the same deadline on a read that blocks.
//! - `Call::answer` writes the answer itself (tiny_http's raw writer): head and the start of
//!   the body in one write (no wait for the client's delayed ACK), `Connection: close`
//!   whenever tiny_http will close after it (the client asked, or HTTP/1.0), and the body at
//!   the same pace, so a client that does not read is cut (a write that blocks ends with the
//!   send timeout accepted sockets inherit from the listener).
//! - A request whose body was left unread cannot be answered that way (tiny_http first reads
//!   the rest of the body, however long that takes): it is answered through tiny_http and
//!   its connection is cut right after (`Busy::doom`).

use std::io::{self, Read, Write};
use std::ops::Deref;
use std::time::{Duration, Instant};

use super::connections::{Busy, MIN_RATE};

/// What a body or an answer may take: no gap of `timeout` without a byte moving, and in
/// every `timeout` from the start (a window) at least `timeout` x `MIN_RATE` bytes. Counted
/// per window, not on average since the start: the first window's bytes may only have gone
/// into the kernel's buffers (several MB on loopback) without the client reading any, and on
/// an average they would buy a trickling reader minutes.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    timeout: Duration,
    /// The current window: when it started and what moved in it.
    window: Instant,
    in_window: u64,
    moved_at: Instant,
    /// A window ended short: too slow, for good.
    slow: bool,
}

impl Pace {
    pub fn start(timeout: Duration, now: Instant) -> Pace {
        Pace {
            timeout,
            window: now,
            in_window: 0,
            moved_at: now,
            slow: false,
        }
    }

    /// Bytes each window must move.
    fn needed(&self) -> u64 {
        (self.timeout.as_secs_f64() * MIN_RATE as f64) as u64
    }

    pub fn moved(&mut self, bytes: usize, now: Instant) {
        while !self.slow && now >= self.window + self.timeout {
            self.slow = self.in_window < self.needed();
            self.window += self.timeout;
            self.in_window = 0;
        }
        if bytes > 0 {
            self.in_window += bytes as u64;
            self.moved_at = now;
        }
    }

    /// When the transfer is too slow unless more bytes move.
    pub fn deadline(&self) -> Instant {
        if self.slow {
            return self.window;
        }
        let window_end = self.window + self.timeout;
        let rate = if self.in_window >= self.needed() {
            // This window has done its part; the next must too.
            window_end + self.timeout
        } else {
            window_end
        };
        rate.min(self.moved_at + self.timeout)
    }
}

/// Why a body was not read.
#[derive(Debug)]
pub enum BodyError {
    /// Over the route's limit (declared or sent).
    TooLarge(usize),
    /// Did not arrive in time.
    Slow,
    /// The connection failed, or the body was malformed (bad chunking).
    Broken(io::Error),
}

/// A request together with its place among those in flight: answering (or dropping) it
/// frees the place, wherever that happens (its own thread, the committer, a parked long poll).
pub struct Call {
    request: tiny_http::Request,
    busy: Busy,
    taken: Instant,
    /// The body was read to its end (or there was none): the raw answer path is safe.
    body_done: bool,
}

/// Largest piece written or read at a time, so the deadline moves with the bytes.
const PIECE: usize = 64 * 1024;

impl Call {
    pub fn new(request: tiny_http::Request, busy: Busy) -> Call {
        let body_done = !has_body(&request);
        Call {
            request,
            busy,
            taken: Instant::now(),
            body_done,
        }
    }

    /// When the server took the request.
    pub fn taken(&self) -> Instant {
        self.taken
    }

    /// The server's limits.
    pub fn limits(&self) -> super::Limits {
        self.busy.limits()
    }

    /// The value of header `name`, if sent.
    pub fn header<'a>(&'a self, name: &str) -> Option<&'a str> {
        self.request
            .headers()
            .iter()
            .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// Reads the whole body, at most `limit` bytes, within the request timeout at the
    /// minimum rate. On an error the rest of the body is left unread (the answer then closes
    /// the connection).
    pub fn read_body(&mut self, limit: usize) -> Result<Vec<u8>, BodyError> {
        if self.body_done {
            return Ok(Vec::new());
        }
        if self.request.body_length().is_some_and(|len| len > limit) {
            return Err(BodyError::TooLarge(limit));
        }
        let timeout = self.busy.limits().request_timeout;
        let mut pace = Pace::start(timeout, Instant::now());
        let mut body = Vec::with_capacity(self.request.body_length().unwrap_or(0).min(limit));
        let mut piece = vec![0u8; PIECE.min(limit + 1)];
        let result = loop {
            self.busy.set_read_deadline(Some(pace.deadline()));
            match self.request.as_reader().read(&mut piece) {
                // The end: of the body, or of the connection (cut by the warden past the
                // deadline, or closed by the client) before all of it came.
                Ok(0)
                    if self
                        .request
                        .body_length()
                        .is_some_and(|len| body.len() < len) =>
                {
                    break Err(if Instant::now() >= pace.deadline() {
                        BodyError::Slow
                    } else {
                        BodyError::Broken(io::ErrorKind::UnexpectedEof.into())
                    });
                }
                Ok(0) => break Ok(()),
                Ok(n) => {
                    let now = Instant::now();
                    pace.moved(n, now);
                    if body.len() + n > limit {
                        break Err(BodyError::TooLarge(limit));
                    }
                    body.extend_from_slice(&piece[..n]);
                    if now >= pace.deadline() {
                        break Err(BodyError::Slow);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Cut by the warden past the deadline: the read ends early.
                Err(_) if Instant::now() >= pace.deadline() => break Err(BodyError::Slow),
                Err(e) => break Err(BodyError::Broken(e)),
            }
        };
        self.busy.set_read_deadline(None);
        match result {
            Ok(()) => {
                self.body_done = true;
                Ok(body)
            }
            Err(e) => {
                if matches!(e, BodyError::Slow) {
                    self.busy.count_slow();
                }
                Err(e)
            }
        }
    }

    /// Would tiny_http close the connection after this request? (It decides, from the
    /// request alone.) Then the answer says so.
    fn closes(&self) -> bool {
        let http10 = self.request.http_version() == &tiny_http::HTTPVersion(1, 0);
        match self.header("Connection").map(str::to_ascii_lowercase) {
            Some(v) if v.contains("close") || v.contains("upgrade") => true,
            Some(v) => http10 && !v.contains("keep-alive"),
            None => http10,
        }
    }

    /// Sends `answer`, within the request timeout at the minimum rate. Returns whether all
    /// of it was written.
    pub fn answer(self, answer: Answer) -> io::Result<()> {
        if !self.body_done {
            return self.answer_unread(answer);
        }
        let head_only = self.request.method() == &tiny_http::Method::Head;
        let closes = self.closes();
        let Call { request, busy, .. } = self;
        let mut head = answer.head(closes);
        let timeout = busy.limits().request_timeout;
        let mut pace = Pace::start(timeout, Instant::now());
        // Dropping the request here reads nothing more: its body is done.
        let mut out = request.into_writer();
        let result = (|| {
            let mut body = answer.body;
            if head_only || !answer.status.has_body() {
                return write_paced(&mut out, &head, &mut pace);
            }
            match &mut body {
                Body::Bytes(bytes) => {
                    // Head and body in one write when small: one segment, no ACK to wait for.
                    let first = bytes.len().min(PIECE);
                    head.extend_from_slice(&bytes[..first]);
                    write_paced(&mut out, &head, &mut pace)?;
                    for piece in bytes[first..].chunks(PIECE) {
                        write_paced(&mut out, piece, &mut pace)?;
                    }
                    Ok(())
                }
                Body::Stream { reader, len } => {
                    let mut left = *len;
                    let mut piece = vec![0u8; PIECE];
                    let mut pending = head;
                    while left > 0 {
                        let want = piece.len().min(usize::try_from(left).unwrap_or(PIECE));
                        let n = reader.read(&mut piece[..want])?;
                        if n == 0 {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "the body ended before its length",
                            ));
                        }
                        left -= n as u64;
                        pending.extend_from_slice(&piece[..n]);
                        write_paced(&mut out, &pending, &mut pace)?;
                        pending.clear();
                    }
                    if !pending.is_empty() {
                        write_paced(&mut out, &pending, &mut pace)?;
                    }
                    Ok(())
                }
            }
        })();
        let flushed = result.and_then(|()| out.flush());
        if let Err(e) = &flushed {
            if Instant::now() >= pace.deadline() {
                busy.count_slow();
            }
            // Whatever went out is a broken answer: the connection must not carry another.
            busy.doom();
            log::debug!("answer not sent whole: {e}");
        }
        drop(out);
        drop(busy);
        flushed
    }

    /// The answer to a request whose body is still (partly) unread: through tiny_http, which
    /// writes it and then would read the rest of the body; the warden cuts the connection
    /// first. The answer cannot say `Connection: close` (tiny_http drops that header).
    fn answer_unread(self, answer: Answer) -> io::Result<()> {
        let Call { request, busy, .. } = self;
        busy.doom();
        let body = match answer.body {
            Body::Bytes(bytes) => bytes,
            Body::Stream { .. } => Vec::new(),
        };
        let mut response = tiny_http::Response::from_data(body).with_status_code(answer.status.0);
        for (name, value) in &answer.headers {
            if let Ok(h) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
                response.add_header(h);
            }
        }
        let sent = request.respond(response);
        drop(busy);
        sent
    }
}

impl Deref for Call {
    type Target = tiny_http::Request;
    fn deref(&self) -> &tiny_http::Request {
        &self.request
    }
}

/// Does tiny_http have body bytes for us to read? (Bodies of at most 1 KiB it has read
/// already; reading them cannot block.)
fn has_body(request: &tiny_http::Request) -> bool {
    match request.body_length() {
        Some(len) => len > 0,
        None => request
            .headers()
            .iter()
            .any(|h| h.field.equiv("Transfer-Encoding")),
    }
}

/// Writes `bytes` whole, moving the deadline as they go out.
fn write_paced(out: &mut impl Write, bytes: &[u8], pace: &mut Pace) -> io::Result<()> {
    let mut rest = bytes;
    while !rest.is_empty() {
        match out.write(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                let now = Instant::now();
                pace.moved(n, now);
                rest = &rest[n..];
                if now >= pace.deadline() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client reads the answer too slowly",
                    ));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// An HTTP status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(pub u16);

impl Status {
    fn has_body(self) -> bool {
        !matches!(self.0, 100..=199 | 204 | 304)
    }

    fn reason(self) -> &'static str {
        match self.0 {
            200 => "OK",
            201 => "Created",
            204 => "No Content",
            206 => "Partial Content",
            304 => "Not Modified",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            409 => "Conflict",
            410 => "Gone",
            413 => "Content Too Large",
            416 => "Range Not Satisfiable",
            422 => "Unprocessable Content",
            429 => "Too Many Requests",
            500 => "Internal Server Error",
            503 => "Service Unavailable",
            507 => "Insufficient Storage",
            _ => "",
        }
    }
}

/// The body of an answer: bytes at hand, or a reader of a known length (a file).
pub enum Body {
    Bytes(Vec<u8>),
    Stream {
        reader: Box<dyn Read + Send>,
        len: u64,
    },
}

/// An answer: status, headers (other than those the framing needs) and body.
pub struct Answer {
    pub status: Status,
    pub headers: Vec<(&'static str, String)>,
    pub body: Body,
}

impl Answer {
    pub fn bytes(status: u16, content_type: &str, body: Vec<u8>) -> Answer {
        Answer {
            status: Status(status),
            headers: vec![("Content-Type", content_type.to_string())],
            body: Body::Bytes(body),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Answer {
        self.headers.push((name, value.into()));
        self
    }

    fn len(&self) -> u64 {
        match &self.body {
            Body::Bytes(b) => b.len() as u64,
            Body::Stream { len, .. } => *len,
        }
    }

    /// The status line and headers, framing included.
    fn head(&self, closes: bool) -> Vec<u8> {
        let mut head = Vec::with_capacity(256);
        let _ = write!(
            head,
            "HTTP/1.1 {} {}\r\nServer: nap/{}\r\nDate: {}\r\n",
            self.status.0,
            self.status.reason(),
            env!("CARGO_PKG_VERSION"),
            http_date(std::time::SystemTime::now())
        );
        for (name, value) in &self.headers {
            // A value with a line break would split the head: never sent.
            if !value.contains(['\r', '\n']) {
                let _ = write!(head, "{name}: {value}\r\n");
            }
        }
        if self.status.has_body() {
            let _ = write!(head, "Content-Length: {}\r\n", self.len());
        }
        if closes {
            head.extend_from_slice(b"Connection: close\r\n");
        }
        head.extend_from_slice(b"\r\n");
        head
    }
}

/// `time` as an HTTP date (RFC 9110, IMF-fixdate): `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(time: std::time::SystemTime) -> String {
    let secs = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rest / 3600, rest % 3600 / 60, rest % 60);
    // 1970-01-01 was a Thursday.
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let (year, month, day) = civil_from_days(days as i64);
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(month - 1) as usize];
    format!("{weekday}, {day:02} {month} {year} {h:02}:{m:02}:{s:02} GMT")
}

/// Year, month (1-12) and day of the month of a count of days since 1970-01-01, in the
/// proleptic Gregorian calendar (eras of 400 years, years starting in March).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_imf_fixdate() {
        let at = |secs| std::time::UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(http_date(at(0)), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(at(784_111_777)), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(at(951_782_400)), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(
            http_date(at(1_795_996_800)),
            "Mon, 30 Nov 2026 00:00:00 GMT"
        );
    }

    #[test]
    fn the_pace_allows_a_timeout_between_moves_and_a_minimum_rate_per_window() {
        let t0 = Instant::now();
        let secs = |s: u64| t0 + Duration::from_secs(s);
        let timeout = Duration::from_secs(10);
        let mut pace = Pace::start(timeout, t0);
        assert_eq!(pace.deadline(), secs(10), "nothing moved yet");
        // Fast: the gap rule decides.
        pace.moved(1 << 30, secs(1));
        assert_eq!(pace.deadline(), secs(11));
        // A steady 20 KiB/s goes on for ever.
        let mut steady = Pace::start(timeout, t0);
        for s in 1..=100 {
            steady.moved(20 * 1024, secs(s));
            assert!(steady.deadline() > secs(s), "cut at {s} s");
        }
        // A trickle: a byte a second never earns the window.
        let mut trickle = Pace::start(timeout, t0);
        for s in 1..=9 {
            trickle.moved(1, secs(s));
        }
        assert_eq!(trickle.deadline(), secs(10));
        // A burst into the kernel's buffers, then a trickle: cut at the end of the next
        // window, not minutes later.
        let mut burst = Pace::start(timeout, t0);
        burst.moved(4 << 20, secs(0));
        for s in 1..=25 {
            burst.moved(1, secs(s));
            if secs(s) >= burst.deadline() {
                assert_eq!(s, 20);
                return;
            }
        }
        panic!("the trickle after a burst was never cut");
    }

    #[test]
    fn heads_frame_the_body_and_say_close_when_closing() {
        let answer = Answer::bytes(200, "application/json", b"{}".to_vec());
        let head = String::from_utf8(answer.head(true)).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(head.contains("\r\nContent-Length: 2\r\n"));
        assert!(head.contains("\r\nConnection: close\r\n"));
        assert!(head.ends_with("\r\n\r\n"));
        let empty = Answer::bytes(204, "text/plain", Vec::new())
            .with_header("X-Evil", "a\r\nSet-Cookie: x")
            .head(false);
        let empty = String::from_utf8(empty).unwrap();
        assert!(!empty.contains("Content-Length"), "204 has no body");
        assert!(!empty.contains("Connection"));
        assert!(!empty.contains("Set-Cookie"), "no header splitting");
    }
}
