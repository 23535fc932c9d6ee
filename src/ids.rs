//! Randomness, handed in: peer ids, tokens, lease ids and epochs are drawn from one [`Ids`]
//! source that the server's owner passes in (the state machine never draws; the edge draws
//! and carries the value in the op). Servers draw from the operating system; tests and the
//! simulation from a seeded source, so that a seed replays the same ids.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use crate::hashing::hex;

/// Where random ids come from.
pub trait Ids: Send + Sync {
    /// `bytes` random bytes as lowercase hex.
    fn hex(&self, bytes: usize) -> io::Result<String>;
}

pub type SharedIds = Arc<dyn Ids>;

/// The operating system's randomness (`/dev/urandom`).
pub struct OsRandom;

impl OsRandom {
    pub fn shared() -> SharedIds {
        Arc::new(OsRandom)
    }
}

impl Ids for OsRandom {
    fn hex(&self, bytes: usize) -> io::Result<String> {
        let mut buf = vec![0u8; bytes];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
        Ok(hex(&buf))
    }
}

/// A deterministic source: the same seed gives the same ids (splitmix64). Not for secrets.
pub struct SeededIds {
    state: Mutex<u64>,
}

impl SeededIds {
    pub fn new(seed: u64) -> SeededIds {
        SeededIds {
            state: Mutex::new(seed),
        }
    }

    pub fn shared(seed: u64) -> SharedIds {
        Arc::new(SeededIds::new(seed))
    }
}

/// One step of splitmix64: a well-mixed 64-bit value from a counter.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Ids for SeededIds {
    fn hex(&self, bytes: usize) -> io::Result<String> {
        let mut state = crate::threads::lock(&self.state);
        let mut buf = Vec::with_capacity(bytes + 8);
        while buf.len() < bytes {
            buf.extend_from_slice(&splitmix64(&mut state).to_le_bytes());
        }
        buf.truncate(bytes);
        Ok(hex(&buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_ids_replay_and_os_ids_differ() {
        let (a, b) = (SeededIds::new(7), SeededIds::new(7));
        let first = a.hex(8).unwrap();
        assert_eq!(first.len(), 16);
        assert_eq!(first, b.hex(8).unwrap());
        assert_ne!(a.hex(8).unwrap(), first, "a new id each time");
        assert_eq!(a.hex(13).unwrap().len(), 26);
        let os = OsRandom;
        assert_ne!(os.hex(16).unwrap(), os.hex(16).unwrap());
    }
}
