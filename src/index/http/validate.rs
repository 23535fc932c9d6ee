//! The index's input rules, checked before anything reaches the state machine: peer ids,
//! tokens, addresses, file names and lists against this index's limits, lease ids, query
//! strings. docs/openapi.yaml states the same rules.

use std::collections::HashSet;

use super::reply::ApiError;
use crate::index::config::IndexConfig;
use crate::index::state::hash_token;
use crate::protocol::{self, ErrorCode, FileMeta};

/// Peer ids are chosen by the index, but a restarted index re-learns them from peers.
pub fn peer_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "peer_id must be 1-64 characters of A-Z, a-z, 0-9, '-' or '_'",
        ))
    }
}

/// The peer id checked and the token's hash, as ops carry it.
pub fn credentials(peer: &str, token: &str) -> Result<String, ApiError> {
    peer_id(peer)?;
    // Tokens are issued as hex; any visible ASCII is taken (a JSON schema can say that,
    // where it cannot count UTF-8 bytes).
    if token.is_empty() || token.len() > 256 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::bad_request(
            "token must be 1-256 visible ASCII characters",
        ));
    }
    Ok(hash_token(token))
}

/// `host:port` with a real port and nothing that could smuggle a path or header.
pub fn addr(addr: &str) -> Result<(), ApiError> {
    let bad = |why: &str| Err(ApiError::bad_request(format!("addr {addr:?}: {why}")));
    if addr.is_empty() || addr.len() > 255 {
        return bad("must be host:port, at most 255 bytes");
    }
    if addr
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '/' | '\\' | '?' | '#' | '@'))
    {
        return bad("contains a character not allowed in host:port");
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => match port.parse::<u16>() {
            Ok(p) if p > 0 => Ok(()),
            _ => bad("port must be 1-65535"),
        },
        _ => bad("must be host:port"),
    }
}

/// The file-name rule, and this index's `--max-name-bytes`.
pub fn name(config: &IndexConfig, name: &str) -> Result<(), ApiError> {
    protocol::validate_file_name(name)
        .map_err(|e| ApiError::bad_request(format!("file {name:?}: {e}")))?;
    let max = config.max_name_bytes;
    if name.len() > max {
        return Err(ApiError::bad_request(format!(
            "file name is {} bytes long; this index takes at most {max} (--max-name-bytes)",
            name.len()
        )));
    }
    Ok(())
}

/// A file list of a register or heartbeat: at most `--max-files-per-request` entries.
pub fn count(config: &IndexConfig, count: usize) -> Result<(), ApiError> {
    let max = config.max_files_per_request;
    if count > max {
        return Err(ApiError::new(
            ErrorCode::TooMany,
            format!(
                "{count} files listed; this index takes at most {max} per request \
                 (--max-files-per-request): send the rest in heartbeats"
            ),
        ));
    }
    Ok(())
}

/// One file entry: its name, sha256 and version.
pub fn file(config: &IndexConfig, file: &FileMeta) -> Result<(), ApiError> {
    name(config, &file.name)?;
    protocol::validate_file_meta(file).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// A whole file list: counted, each entry checked, no name twice.
pub fn files(config: &IndexConfig, files: &[FileMeta]) -> Result<(), ApiError> {
    count(config, files.len())?;
    let mut seen = HashSet::with_capacity(files.len());
    for f in files {
        file(config, f)?;
        if !seen.insert(f.name.as_str()) {
            return Err(ApiError::bad_request(format!("{} is listed twice", f.name)));
        }
    }
    Ok(())
}

pub fn names(config: &IndexConfig, names: &[String]) -> Result<(), ApiError> {
    count(config, names.len())?;
    for n in names {
        name(config, n)?;
    }
    Ok(())
}

/// Lease ids are random hex drawn here; anything else cannot be one.
pub fn lease_id(id: &str) -> Result<(), ApiError> {
    if !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(ApiError::bad_request("lease_id must be 1-64 hex digits"))
    }
}

/// The decoded `key=value` pairs of a query string.
pub fn query_params(query: &str) -> Result<Vec<(&str, String)>, ApiError> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            protocol::url_decode(value, true)
                .map(|value| (key, value))
                .ok_or_else(|| {
                    ApiError::bad_request(format!("bad escape in query parameter {key}"))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked() {
        for good in ["127.0.0.1:9001", "peer.example:80", "[::1]:7070"] {
            assert!(addr(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "127.0.0.1",
            ":80",
            "host:0",
            "host:99999",
            "a b:80",
            "h/x:80",
            "user@h:80",
        ] {
            assert!(addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn peer_ids_are_checked() {
        assert!(peer_id("abc-DEF_123").is_ok());
        assert!(peer_id("").is_err());
        assert!(peer_id("../x").is_err());
        assert!(peer_id(&"a".repeat(65)).is_err());
    }
}
