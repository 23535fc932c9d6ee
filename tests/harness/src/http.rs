//! HTTP calls to nap's servers, every phase bounded in time: plain answers (status and body)
//! for tests that look at refusals, decoded JSON for callers that want the value, and raw
//! requests for paths a client library would normalise.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A plain HTTP answer: status and body text.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    /// The body as JSON; panics, showing it, if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// An agent that bounds the connection by `connect` and every phase after it by `answer`
/// (ureq's global and per-call timeouts would start a resolver thread per request), reads
/// every status as an answer, not an error, and keeps no connection for reuse.
pub fn agent_with(connect: Duration, answer: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(connect))
        .timeout_send_request(Some(answer))
        .timeout_send_body(Some(answer))
        .timeout_recv_response(Some(answer))
        .timeout_recv_body(Some(answer))
        .max_idle_connections(0)
        .build()
        .into()
}

/// The agent of `call`, `get` and `post`: patient (5 s to connect, 10 s per phase), for
/// servers on a busy machine.
pub fn agent() -> ureq::Agent {
    agent_with(Duration::from_secs(5), Duration::from_secs(10))
}

/// The agent of `get_json` and `post_json`, bounded as nap's own processes bound their calls
/// to each other (1 s to connect, 5 s per phase).
pub fn api_agent() -> ureq::Agent {
    agent_with(Duration::from_secs(1), Duration::from_secs(5))
}

pub fn get(url: &str) -> Answer {
    call("GET", url, b"").0
}

pub fn post(url: &str, body: &str) -> Answer {
    call("POST", url, body.as_bytes()).0
}

/// A GET, or a POST of `body` as JSON, with the answer's `Allow` header; panics if no
/// answer came.
pub fn call(method: &str, url: &str, body: &[u8]) -> (Answer, Option<String>) {
    let agent = agent();
    let sent = match method {
        "GET" => agent.get(url).call(),
        _ => agent
            .post(url)
            .header("Content-Type", "application/json")
            .send(body),
    };
    let response = sent.unwrap_or_else(|e| panic!("{method} {url}: no answer: {e}"));
    let status = response.status().as_u16();
    let allow = response
        .headers()
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let body = response.into_body().read_to_string().unwrap_or_default();
    (Answer { status, body }, allow)
}

/// Reads a 200 answer as JSON; anything else is an error with the status and body.
fn decode<T: DeserializeOwned>(
    url: &str,
    sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<T, String> {
    let response = sent.map_err(|e| format!("{url}: {e}"))?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    if status != 200 {
        let text = body.read_to_string().unwrap_or_default();
        return Err(format!("{url}: HTTP {status}: {}", text.trim()));
    }
    body.read_json().map_err(|e| format!("{url}: {e}"))
}

/// `GET url` on a connection of its own (`Connection: close`, as nap's peers call the
/// index), decoded from a 200 answer.
pub fn get_json<T: DeserializeOwned>(url: &str) -> Result<T, String> {
    let sent = api_agent().get(url).header("Connection", "close").call();
    decode(url, sent)
}

/// `POST url` of `body` as JSON on a connection of its own, decoded from a 200 answer.
pub fn post_json<B: Serialize, T: DeserializeOwned>(url: &str, body: &B) -> Result<T, String> {
    let sent = api_agent()
        .post(url)
        .header("Connection", "close")
        .send_json(body);
    decode(url, sent)
}

/// Sends raw bytes as a request (for paths a client library would normalise) and returns the
/// status code of the answer.
pub fn raw_status(addr: &str, request: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = BufReader::new(stream).read_line(&mut answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}
