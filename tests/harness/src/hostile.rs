//! Requests that stall the way clients nap did not write can: what the hostile-client tests
//! and the hostile part of the connections bench send.

/// How a hostile client stalls its request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stall {
    /// A chunked body: one chunk, then nothing (no end chunk).
    Chunked,
    /// `Content-Length: WITHHELD`, and none of it.
    Withheld,
    /// A head sent one byte at a time (`trickled`), never finished.
    Trickle,
}

/// The body length a `Withheld` request announces.
pub const WITHHELD: u64 = 100_000;

impl Stall {
    /// What is sent at once on connecting (of a trickle, its first byte).
    pub fn opening(self) -> Vec<u8> {
        let head =
            "POST /register HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n";
        match self {
            Stall::Chunked => {
                let part = r#"{"addr": "127.0.0.1:1", "files": ["#;
                format!(
                    "{head}Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{part}\r\n",
                    part.len()
                )
                .into_bytes()
            }
            Stall::Withheld => format!("{head}Content-Length: {WITHHELD}\r\n\r\n").into_bytes(),
            Stall::Trickle => vec![Stall::trickled(0)],
        }
    }

    /// Byte `n` of a trickled head: a request line and headers that never end.
    pub fn trickled(n: usize) -> u8 {
        const START: &[u8] = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Trickle: ";
        START.get(n).copied().unwrap_or(b'a')
    }
}
