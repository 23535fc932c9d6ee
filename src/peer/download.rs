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
    /// Every source failed; one reason per source.
    AllSourcesFailed(Vec<String>),
    /// The verified file could not be put in place (e.g. a newer local copy exists).
    Install(io::Error),
    NoSources,
}

impl std::fmt::Display for DownloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DownloadError::AllSourcesFailed(why) => {
                write!(f, "every holder failed: {}", why.join("; "))
            }
            DownloadError::Install(e) => write!(f, "could not save the file: {e}"),
            DownloadError::NoSources => f.write_str("no peer holds it"),
        }
    }
}

impl std::error::Error for DownloadError {}

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
        let partial = store.partial_path(&want.sha256).ok_or_else(|| {
            DownloadError::AllSourcesFailed(vec!["the index sent a malformed sha256".into()])
        })?;
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
                Err(why) => {
                    log::warn!("download of {} from {source} failed: {why}", want.name);
                    failures.push(format!("{source}: {why}"));
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
    ) -> Result<(), String> {
        let mut have = fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
        if have > want.size {
            have = 0;
        }
        let mut hasher = Sha256::new();
        if have > 0 {
            let mut f = File::open(partial).map_err(|e| format!("partial file: {e}"))?;
            hash_into(&mut hasher, &mut f).map_err(|e| format!("partial file: {e}"))?;
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
            let response = rq.call().map_err(|e| e.to_string())?;
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
                    return Err(format!("it now holds other content (sha256 {sha})"));
                }
            }
            match status {
                206 if have > 0 => {
                    let from = header("Content-Range")
                        .and_then(|v| v.strip_prefix("bytes ").map(str::to_string))
                        .and_then(|v| v.split('-').next().and_then(|a| a.parse::<u64>().ok()));
                    if from != Some(have) {
                        return Err("it answered a different byte range".into());
                    }
                }
                200 => {
                    // A whole body: whatever we had is superseded.
                    have = 0;
                    hasher = Sha256::new();
                }
                other => return Err(format!("HTTP {other}")),
            }
            let mut out = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(have == 0)
                .append(have > 0)
                .open(partial)
                .map_err(|e| format!("partial file: {e}"))?;
            let mut body = response.into_body().into_reader();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match body.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // Keep what arrived: the next attempt resumes after it.
                    Err(e) => return Err(format!("transfer broke off after {have} bytes: {e}")),
                };
                if have + n as u64 > want.size {
                    drop(out);
                    let _ = fs::remove_file(partial);
                    return Err(format!(
                        "it sent more than the {} bytes expected",
                        want.size
                    ));
                }
                out.write_all(&buf[..n])
                    .map_err(|e| format!("writing partial file: {e}"))?;
                hasher.update(&buf[..n]);
                have += n as u64;
                progress(have, want.size);
            }
            out.sync_all()
                .map_err(|e| format!("writing partial file: {e}"))?;
        }
        if have != want.size {
            return Err(format!(
                "transfer ended after {have} of {} bytes",
                want.size
            ));
        }
        let got = hex(&hasher.finalize());
        if got != want.sha256 {
            let _ = fs::remove_file(partial);
            return Err(format!(
                "bad content: sha256 {got}, expected {}",
                want.sha256
            ));
        }
        Ok(())
    }
}
