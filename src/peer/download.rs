//! Verified downloads from other peers. Bytes stream into `DIR/.nap/partial/<sha256>` while
//! being hashed; only a file whose size and SHA-256 match what the index recorded is moved
//! into the shared folder. A source that fails or sends bad bytes is skipped for the next; an
//! interrupted transfer resumes with a `Range` request.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::files::{LocalChanges, LocalStore};
use crate::hashing::{hash_into, hex};
use crate::protocol::{self, FileMeta};

/// Called with (bytes so far, total) while a download runs.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

#[derive(Debug)]
pub enum DownloadError {
    /// Every source failed; why, source by source.
    AllSourcesFailed(Vec<SourceFailure>),
    /// The index (or a task) named content by something that is not a SHA-256.
    MalformedSha256,
    /// The verified file could not be put in place (e.g. a newer local copy exists).
    Install(io::Error),
    NoSources,
}

impl std::fmt::Display for DownloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DownloadError::AllSourcesFailed(why) => {
                f.write_str("every holder failed: ")?;
                for (n, failure) in why.iter().enumerate() {
                    let sep = if n == 0 { "" } else { "; " };
                    write!(f, "{sep}{failure}")?;
                }
                Ok(())
            }
            DownloadError::MalformedSha256 => {
                f.write_str("every holder failed: the index sent a malformed sha256")
            }
            DownloadError::Install(e) => write!(f, "could not save the file: {e}"),
            DownloadError::NoSources => f.write_str("no peer holds it"),
        }
    }
}

impl std::error::Error for DownloadError {}

/// One source that did not deliver.
#[derive(Debug)]
pub struct SourceFailure {
    /// The peer's `host:port`.
    pub source: String,
    pub error: SourceError,
}

impl std::fmt::Display for SourceFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.source, self.error)
    }
}

/// Why one attempt from one source failed. What another peer sent is a claim: each of these
/// is that claim not holding, or our disk failing under it.
#[derive(Debug)]
pub enum SourceError {
    /// The partial file could not be opened or read back.
    Partial(io::Error),
    /// The partial file could not be written.
    WritePartial(io::Error),
    /// The request failed (connection, timeout, malformed answer).
    Request(ureq::Error),
    /// The source now serves other content under the name (its sha256).
    OtherContent(String),
    /// A resumed download got bytes from another offset than asked.
    OtherRange,
    /// An answer other than 200 or 206.
    Status(u16),
    /// The body stopped after `after` bytes in all (kept for the next attempt).
    BrokeOff { after: u64, error: io::Error },
    /// More bytes than the index recorded.
    TooLong { expected: u64 },
    /// Fewer bytes than the index recorded.
    Short { got: u64, expected: u64 },
    /// The bytes do not hash to what the index recorded.
    BadContent { got: String, expected: String },
}

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceError::Partial(e) => write!(f, "partial file: {e}"),
            SourceError::WritePartial(e) => write!(f, "writing partial file: {e}"),
            SourceError::Request(e) => write!(f, "{e}"),
            SourceError::OtherContent(sha) => {
                write!(f, "it now holds other content (sha256 {sha})")
            }
            SourceError::OtherRange => f.write_str("it answered a different byte range"),
            SourceError::Status(status) => write!(f, "HTTP {status}"),
            SourceError::BrokeOff { after, error } => {
                write!(f, "transfer broke off after {after} bytes: {error}")
            }
            SourceError::TooLong { expected } => {
                write!(f, "it sent more than the {expected} bytes expected")
            }
            SourceError::Short { got, expected } => {
                write!(f, "transfer ended after {got} of {expected} bytes")
            }
            SourceError::BadContent { got, expected } => {
                write!(f, "bad content: sha256 {got}, expected {expected}")
            }
        }
    }
}

impl std::error::Error for SourceError {}

pub struct Downloader {
    agent: ureq::Agent,
}

impl Downloader {
    /// `timeout` bounds connecting and each wait for data, not a whole transfer.
    pub fn new(timeout: Duration) -> Downloader {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(timeout))
            .timeout_send_request(Some(timeout))
            .timeout_recv_response(Some(timeout))
            .timeout_per_read(Some(timeout))
            .max_idle_connections(0)
            .build()
            .into();
        Downloader { agent }
    }

    /// Fetches `want` from the first source that delivers it intact and installs it in
    /// `store`. Returns the source used.
    pub fn fetch(
        &self,
        store: &LocalStore,
        want: &FileMeta,
        sources: &[String],
        progress: Progress<'_>,
    ) -> Result<String, DownloadError> {
        if sources.is_empty() {
            return Err(DownloadError::NoSources);
        }
        let partial = store
            .partial_path(&want.sha256)
            .ok_or(DownloadError::MalformedSha256)?;
        let mut failures = Vec::new();
        for source in sources {
            match self.fetch_from(source, want, &partial, progress) {
                Ok(()) => {
                    return match store.install(&partial, want, LocalChanges::Refuse) {
                        Ok(_) => Ok(source.clone()),
                        Err(e) => {
                            let _ = fs::remove_file(&partial);
                            Err(DownloadError::Install(e))
                        }
                    };
                }
                Err(error) => {
                    log::warn!("download of {} from {source} failed: {error}", want.name);
                    failures.push(SourceFailure {
                        source: source.clone(),
                        error,
                    });
                }
            }
        }
        Err(DownloadError::AllSourcesFailed(failures))
    }

    /// One attempt from one source, resuming whatever `partial` already holds. On a hash or
    /// size mismatch the partial file is deleted: we cannot tell which bytes were bad.
    fn fetch_from(
        &self,
        source: &str,
        want: &FileMeta,
        partial: &Path,
        progress: Progress<'_>,
    ) -> Result<(), SourceError> {
        let mut have = fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
        if have > want.size {
            have = 0;
        }
        let mut hasher = Sha256::new();
        if have > 0 {
            let mut f = File::open(partial).map_err(SourceError::Partial)?;
            hash_into(&mut hasher, &mut f).map_err(SourceError::Partial)?;
        }
        let complete = have == want.size;
        if !complete {
            let url = format!(
                "http://{source}{}{}",
                protocol::PATH_FILES,
                protocol::url_encode(&want.name)
            );
            let mut rq = self.agent.get(&url).header("Connection", "close");
            if have > 0 {
                rq = rq.header("Range", &format!("bytes={have}-"));
            }
            let response = rq.call().map_err(SourceError::Request)?;
            let status = response.status().as_u16();
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            if let Some(sha) = header(protocol::HEADER_SHA256) {
                if sha != want.sha256 {
                    return Err(SourceError::OtherContent(sha));
                }
            }
            match status {
                206 if have > 0 => {
                    let from = header("Content-Range")
                        .and_then(|v| v.strip_prefix("bytes ").map(str::to_string))
                        .and_then(|v| v.split('-').next().and_then(|a| a.parse::<u64>().ok()));
                    if from != Some(have) {
                        return Err(SourceError::OtherRange);
                    }
                }
                200 => {
                    // A whole body: whatever we had is superseded.
                    have = 0;
                    hasher = Sha256::new();
                }
                other => return Err(SourceError::Status(other)),
            }
            let mut out = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(have == 0)
                .append(have > 0)
                .open(partial)
                .map_err(SourceError::Partial)?;
            let mut body = response.into_body().into_reader();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match body.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // Keep what arrived: the next attempt resumes after it.
                    Err(error) => return Err(SourceError::BrokeOff { after: have, error }),
                };
                if have + n as u64 > want.size {
                    drop(out);
                    let _ = fs::remove_file(partial);
                    return Err(SourceError::TooLong {
                        expected: want.size,
                    });
                }
                out.write_all(&buf[..n])
                    .map_err(SourceError::WritePartial)?;
                hasher.update(&buf[..n]);
                have += n as u64;
                progress(have, want.size);
            }
            out.sync_all().map_err(SourceError::WritePartial)?;
        }
        if have != want.size {
            return Err(SourceError::Short {
                got: have,
                expected: want.size,
            });
        }
        let got = hex(&hasher.finalize());
        if got != want.sha256 {
            let _ = fs::remove_file(partial);
            return Err(SourceError::BadContent {
                got,
                expected: want.sha256.clone(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_is_told_source_by_source_in_the_words_the_shell_prints() {
        let failed = DownloadError::AllSourcesFailed(vec![
            SourceFailure {
                source: "10.0.0.2:9001".into(),
                error: SourceError::BadContent {
                    got: "b".repeat(4),
                    expected: "a".repeat(4),
                },
            },
            SourceFailure {
                source: "10.0.0.3:9001".into(),
                error: SourceError::Short {
                    got: 3,
                    expected: 10,
                },
            },
        ]);
        assert_eq!(
            failed.to_string(),
            "every holder failed: 10.0.0.2:9001: bad content: sha256 bbbb, expected aaaa; \
             10.0.0.3:9001: transfer ended after 3 of 10 bytes"
        );
        assert_eq!(
            DownloadError::MalformedSha256.to_string(),
            "every holder failed: the index sent a malformed sha256"
        );
        assert_eq!(
            SourceError::TooLong { expected: 5 }.to_string(),
            "it sent more than the 5 bytes expected"
        );
        assert_eq!(SourceError::Status(404).to_string(), "HTTP 404");
    }

    #[test]
    fn a_malformed_sha256_is_refused_before_any_source_is_asked() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LocalStore::open(tmp.path()).unwrap();
        let want = FileMeta {
            name: "doc".into(),
            version: 1,
            size: 1,
            sha256: "../../etc/passwd".into(),
        };
        let sources = ["127.0.0.1:1".to_string()];
        let got =
            Downloader::new(Duration::from_secs(1)).fetch(&store, &want, &sources, &mut |_, _| {});
        assert!(
            matches!(got, Err(DownloadError::MalformedSha256)),
            "{got:?}"
        );
    }
}
