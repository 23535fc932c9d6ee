//! SHA-256 in lowercase hex, as nap writes it everywhere: file contents, token hashes, state
//! digests. One home, so the index and the peers always spell a hash the same way.

use std::io::{self, Read};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// A SHA-256 as the index keeps one per version: its 32 bytes, where the hex in a `String`
/// takes 64 bytes of heap and a separate allocation (80 bytes with the allocator's own).
/// It reads and writes as the lowercase hex the protocol uses, so snapshots and digests are
/// unchanged. Anything else (the edge refuses it, but a state takes whatever its log holds)
/// is kept as the text it was, never altered or lost: two values are equal exactly when
/// their texts are.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Sha256Hex {
    Bytes([u8; 32]),
    Text(Box<str>),
}

impl Sha256Hex {
    /// `text` as bytes if it is 64 lowercase hex digits, else as it is.
    pub fn parse(text: &str) -> Sha256Hex {
        let mut bytes = [0u8; 32];
        let digits = text.as_bytes();
        let value = |d: u8| match d {
            b'0'..=b'9' => Some(d - b'0'),
            b'a'..=b'f' => Some(d - b'a' + 10),
            _ => None,
        };
        if digits.len() == 64 {
            let parsed = bytes
                .iter_mut()
                .zip(digits.chunks_exact(2))
                .all(|(b, pair)| match (value(pair[0]), value(pair[1])) {
                    (Some(hi), Some(lo)) => {
                        *b = hi << 4 | lo;
                        true
                    }
                    _ => false,
                });
            if parsed {
                return Sha256Hex::Bytes(bytes);
            }
        }
        Sha256Hex::Text(text.into())
    }

    /// Whether this is the hash `text` spells.
    pub fn is(&self, text: &str) -> bool {
        *self == Sha256Hex::parse(text)
    }
}

impl std::fmt::Display for Sha256Hex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sha256Hex::Bytes(bytes) => bytes.iter().try_for_each(|b| write!(f, "{b:02x}")),
            Sha256Hex::Text(text) => f.write_str(text),
        }
    }
}

impl std::fmt::Debug for Sha256Hex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

impl From<String> for Sha256Hex {
    fn from(text: String) -> Sha256Hex {
        match Sha256Hex::parse(&text) {
            Sha256Hex::Text(_) => Sha256Hex::Text(text.into_boxed_str()),
            bytes => bytes,
        }
    }
}

impl Serialize for Sha256Hex {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sha256Hex {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Sha256Hex::from)
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The SHA-256 of `bytes`, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The SHA-256 of everything `reader` yields, in hex.
pub fn sha256_of(mut reader: impl Read) -> io::Result<String> {
    let mut hasher = Sha256::new();
    hash_into(&mut hasher, &mut reader)?;
    Ok(hex(&hasher.finalize()))
}

/// Feeds everything `reader` yields into `hasher`, 64 KiB at a time.
pub fn hash_into(hasher: &mut Sha256, reader: &mut impl Read) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(sha256_hex(b""), empty);
        assert_eq!(sha256_of(&b""[..]).unwrap(), empty);
        assert_eq!(sha256_of(&b"abc"[..]).unwrap(), sha256_hex(b"abc"));
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
    }

    #[test]
    fn a_kept_hash_reads_and_writes_as_the_text_it_came_as() {
        let text = sha256_hex(b"abc");
        let kept = Sha256Hex::from(text.clone());
        assert!(matches!(kept, Sha256Hex::Bytes(_)));
        assert_eq!(kept.to_string(), text);
        assert!(kept.is(&text));
        let json = serde_json::to_string(&kept).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<Sha256Hex>(&json).unwrap(), kept);
        // Upper case, short, or not hex: kept as it came, and equal only to itself.
        for odd in [
            text.to_uppercase(),
            "abc".to_string(),
            "g".repeat(64),
            String::new(),
        ] {
            let kept = Sha256Hex::from(odd.clone());
            assert_eq!(kept.to_string(), odd);
            assert!(kept.is(&odd));
            assert!(!kept.is(&text));
        }
        assert!(std::mem::size_of::<Sha256Hex>() <= 40);
    }
}
