//! SHA-256 in lowercase hex, as nap writes it everywhere: file contents, token hashes, state
//! digests. One home, so the index and the peers always spell a hash the same way.

use std::io::{self, Read};

use sha2::{Digest, Sha256};

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
}
