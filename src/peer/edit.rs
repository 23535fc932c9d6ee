//! Publishing the next version of a file (`update`): take the file's write lease, bring the
//! local copy to the version the lease is for, let the user edit a working copy while a
//! thread keeps the lease alive, then publish the result with the lease, or give the lease
//! back when nothing changed.
//!
//! The working copy lives in `DIR/.nap/edit/`, so the scanner never sees a half-edited file and
//! the shared copy stays the published version until the index has accepted the next one. An
//! edit that cannot be published (lease lost, index unreachable, refused) is never lost: it is
//! moved to `DIR/.nap/unpublished/` and the user is told where.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use crossbeam_channel::Receiver;

use super::client::ClientError;
use super::download::{DownloadError, Progress};
use super::files::LocalChanges;
use super::{GetError, Peer};
use crate::hashing::sha256_of;
use crate::protocol::{ErrorCode, FileMeta, LeaseIdRequest, LeaseRequest};
use crate::threads::stopped;

pub use super::session::InDoubt;

/// Attempts at publishing when no index answers, and the pause between them.
const PUBLISH_TRIES: u32 = 3;
const PUBLISH_PAUSE: Duration = Duration::from_millis(500);

/// How an edit ended.
#[derive(Debug)]
pub enum EditOutcome {
    /// The content did not change: the lease was given back, nothing published.
    Unchanged { version: u64 },
    /// The index accepted the new version and it is in the shared folder.
    Published { meta: FileMeta },
    /// The editor failed: nothing published, the lease given back, the working copy dropped.
    Abandoned { why: EditorError },
    /// The new content could not be published; it is kept at `kept`.
    NotPublished { why: PublishError, kept: PathBuf },
    /// No index confirmed the publish, but the primary may have applied it (it took the
    /// request and went silent). The edit is kept at `kept`; the agent asks again once the
    /// index answers, and installs the edit if the index has it.
    InDoubt { why: ClientError, kept: PathBuf },
}

/// Why the editing step left nothing to publish.
#[derive(Debug)]
pub enum EditorError {
    /// The editor ran and exited unsuccessfully.
    Exited(ExitStatus),
    /// The editor could not be started.
    NotStarted { editor: String, error: io::Error },
    /// An editor given as a function failed, in its own words.
    Failed(String),
    /// The working copy was replaced by something other than a regular file (never
    /// published: it could be a symlink to anything).
    NotAFile,
    /// The working copy was removed.
    Gone(io::Error),
}

impl std::fmt::Display for EditorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EditorError::Exited(status) => write!(f, "the editor exited with {status}"),
            EditorError::NotStarted { editor, error } => {
                write!(f, "could not start the editor {editor:?}: {error}")
            }
            EditorError::Failed(why) => f.write_str(why),
            EditorError::NotAFile => f.write_str("the working copy is no longer a regular file"),
            EditorError::Gone(e) => write!(f, "the working copy is gone ({e})"),
        }
    }
}

impl std::error::Error for EditorError {}

/// A scripted editor's own message.
impl From<String> for EditorError {
    fn from(why: String) -> Self {
        EditorError::Failed(why)
    }
}

/// Why a lease was lost while the editor was open.
#[derive(Debug)]
pub enum LeaseLost {
    /// The index refused a renewal.
    Ended(ClientError),
    /// No renewal got through before the lease would have run out.
    RanOut(ClientError),
    /// The renewing thread panicked.
    RenewerFailed,
}

impl std::fmt::Display for LeaseLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeaseLost::Ended(e) => write!(f, "the index ended the lease: {e}"),
            LeaseLost::RanOut(e) => {
                write!(f, "the lease ran out while no index could be reached ({e})")
            }
            LeaseLost::RenewerFailed => f.write_str("the lease renewer failed"),
        }
    }
}

impl std::error::Error for LeaseLost {}

/// Why an edit was not published (it is kept aside).
#[derive(Debug)]
pub enum PublishError {
    LeaseLost(LeaseLost),
    /// The new version could not be put in the shared folder ahead of the publish.
    Stage(io::Error),
    /// The index refused the new version.
    Refused(ClientError),
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishError::LeaseLost(e) => write!(f, "{e}"),
            PublishError::Stage(e) => write!(f, "could not put the new version in place: {e}"),
            PublishError::Refused(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for PublishError {}

/// Why an edit could not start; no lease is held afterwards.
#[derive(Debug)]
pub enum EditError {
    NotRegistered,
    /// Another peer is editing the file.
    Busy {
        holder: String,
        remaining_ms: u64,
    },
    /// No version of the file is on the index.
    NotFound(String),
    /// The index knows the file, but no peer online holds its latest version to start from.
    NoHolder {
        name: String,
        version: u64,
    },
    Index(ClientError),
    Fetch(GetError),
    Io(io::Error),
}

impl std::fmt::Display for EditError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EditError::NotRegistered => {
                f.write_str("this peer is not registered with the index yet")
            }
            EditError::Busy {
                holder,
                remaining_ms,
            } => write!(
                f,
                "peer {holder} is editing it (its lease runs another {:.0} s unless renewed)",
                (*remaining_ms as f64 / 1000.0).ceil()
            ),
            EditError::NotFound(name) => write!(
                f,
                "{name} is not on the index; to share a new file, put it in the shared folder"
            ),
            EditError::NoHolder { name, version } => write!(
                f,
                "no peer online holds {name} v{version} to start the edit from; try again later"
            ),
            EditError::Index(e) => write!(f, "{e}"),
            EditError::Fetch(e) => write!(f, "could not fetch the latest version: {e}"),
            EditError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for EditError {}

impl From<io::Error> for EditError {
    fn from(e: io::Error) -> Self {
        EditError::Io(e)
    }
}

/// How long a held lease is known to last, in the clock's monotonic time. A renewal counts
/// from when it was sent, not answered: the index began the new term no earlier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LeaseTerm {
    valid_until: Duration,
}

impl LeaseTerm {
    fn new(now: Duration, ttl: Duration) -> LeaseTerm {
        LeaseTerm {
            valid_until: now.saturating_add(ttl),
        }
    }

    fn renewed(&mut self, sent: Duration, ttl: Duration) {
        self.valid_until = sent.saturating_add(ttl);
    }

    fn ran_out(&self, now: Duration) -> bool {
        now >= self.valid_until
    }
}

/// A held lease that is given back when dropped, unless it was spent by a publish.
struct HeldLease<'p> {
    peer: &'p Peer,
    request: LeaseIdRequest,
    spent: bool,
}

impl Drop for HeldLease<'_> {
    fn drop(&mut self) {
        if self.spent {
            return;
        }
        if let Err(e) = self.peer.index.release_lease(&self.request) {
            log::info!("could not release the lease: {e}");
        }
    }
}

impl Peer {
    /// Edits `name` under its write lease: `editor` is called with the working copy while a
    /// background thread renews the lease. `say` hears what happens along the way (a fetch,
    /// a local copy moved aside, the editor about to open).
    pub fn edit(
        &self,
        name: &str,
        say: &mut dyn FnMut(String),
        progress: Progress<'_>,
        editor: &mut dyn FnMut(&Path) -> Result<(), EditorError>,
    ) -> Result<EditOutcome, EditError> {
        let id = self.identity().ok_or(EditError::NotRegistered)?;
        let work = self
            .store
            .edit_path(name)
            .ok_or_else(|| EditError::NotFound(name.to_string()))?;
        self.rescan()?;
        let lease = match self.index.lease(&LeaseRequest {
            peer_id: id.peer_id.clone(),
            token: id.token.clone(),
            file: name.to_string(),
        }) {
            Ok(lease) => lease,
            Err(ClientError::Api { body, .. }) if body.code == ErrorCode::LeaseHeld => {
                return Err(EditError::Busy {
                    holder: body.holder.unwrap_or_default(),
                    remaining_ms: body.remaining_ms.unwrap_or(0),
                })
            }
            Err(e) if e.code() == Some(ErrorCode::NotFound) => {
                return Err(EditError::NotFound(name.to_string()))
            }
            Err(e) => {
                self.session().call_failed(e.failure());
                return Err(EditError::Index(e));
            }
        };
        let mut held = HeldLease {
            peer: self,
            request: LeaseIdRequest {
                peer_id: id.peer_id.clone(),
                token: id.token.clone(),
                lease_id: lease.lease_id.clone(),
            },
            spent: false,
        };
        let base = FileMeta {
            name: name.to_string(),
            version: lease.version,
            size: lease.size,
            sha256: lease.sha256.clone(),
        };
        let start = self.bring_to(&base, say, progress)?;
        // Copied, not linked: the shared copy stays the published version until the next one
        // is accepted. The shared file is opened the checked way (never through a symlink).
        let mut source = match self.store.path_of(name) {
            Some(shared) if shared == start => self.store.open_file(name)?.0,
            _ => File::open(&start)?,
        };
        io::copy(&mut source, &mut File::create(&work)?)?;
        let ttl = Duration::from_millis(lease.ttl_ms);
        say(format!(
            "Editing {name} v{} (leased for {} s, renewed while the editor is open)",
            base.version,
            (lease.ttl_ms + 500) / 1000
        ));

        let (stop, renewing) = crossbeam_channel::bounded::<()>(0);
        let (edited, lost) = std::thread::scope(|scope| {
            let renewer = scope.spawn(|| self.keep_renewing(&held.request, ttl, &renewing));
            let edited = editor(&work);
            drop(stop);
            let lost = renewer.join().unwrap_or(Some(LeaseLost::RenewerFailed));
            (edited, lost)
        });

        // What comes back must still be a plain file: never publish through a symlink.
        let edited = edited.and_then(|()| match fs::symlink_metadata(&work) {
            Ok(m) if m.file_type().is_file() => Ok(m.len()),
            Ok(_) => Err(EditorError::NotAFile),
            Err(e) => Err(EditorError::Gone(e)),
        });
        let size = match edited {
            Ok(size) => size,
            Err(why) => {
                let _ = fs::remove_file(&work);
                return Ok(EditOutcome::Abandoned { why });
            }
        };
        let sha256 = sha256_of(File::open(&work)?)?;
        if sha256 == base.sha256 {
            fs::remove_file(&work)?;
            return Ok(EditOutcome::Unchanged {
                version: base.version,
            });
        }
        if let Some(lost) = lost {
            let kept = self.store.set_aside(&work, name)?;
            return Ok(EditOutcome::NotPublished {
                why: PublishError::LeaseLost(lost),
                kept,
            });
        }
        let meta = FileMeta {
            name: name.to_string(),
            // Saturating: the index may know a version as high as u64::MAX (a peer may claim
            // any); it then refuses this publish, and the edit is kept aside.
            version: base.version.saturating_add(1),
            size,
            sha256,
        };
        // In place before the index hears of it: holders of the old version are told to fetch
        // the new one the moment the index accepts it, and may ask us first.
        let staged = match self.store.stage(&work, &meta) {
            Ok(staged) => staged,
            Err(e) => {
                let kept = self.store.set_aside(&work, name)?;
                return Ok(EditOutcome::NotPublished {
                    why: PublishError::Stage(e),
                    kept,
                });
            }
        };
        if let Err(e) = self.publish(&meta, &held.request.lease_id) {
            let kept = self.store.undo(staged)?;
            if e.code().is_some() {
                return Ok(EditOutcome::NotPublished {
                    why: PublishError::Refused(e),
                    kept,
                });
            }
            self.session().publish_in_doubt(InDoubt {
                meta,
                lease_id: held.request.lease_id.clone(),
                kept: kept.clone(),
            });
            return Ok(EditOutcome::InDoubt { why: e, kept });
        }
        held.spent = true;
        self.installed(name);
        match self.store.commit(staged) {
            Ok(Some(aside)) => say(format!(
                "{name} changed in the shared folder during the edit; that copy is kept at {}",
                aside.display()
            )),
            Ok(None) => {}
            Err(e) => log::warn!(
                "could not clear the copy {name} v{} replaced: {e}",
                base.version
            ),
        }
        Ok(EditOutcome::Published { meta })
    }

    /// Makes the shared copy of `base.name` exactly `base` and returns the file the working
    /// copy starts from. A local copy the index does not know (edited outside `update`) is
    /// moved aside first; the edit then starts from `base`, fetched, or from that copy when
    /// no peer holds `base` any more.
    fn bring_to(
        &self,
        base: &FileMeta,
        say: &mut dyn FnMut(String),
        progress: Progress<'_>,
    ) -> Result<PathBuf, EditError> {
        let name = &base.name;
        let shared = self
            .store
            .path_of(name)
            .ok_or_else(|| EditError::NotFound(name.clone()))?;
        let local = self.store.get(name);
        if local.as_ref() == Some(base) {
            return Ok(shared);
        }
        let mut kept = None;
        if let Some(local) = local.filter(|l| l.version >= base.version) {
            let path = self.store.set_aside(&shared, name)?;
            self.rescan()?;
            say(format!(
                "your copy of {name} (v{}) has changes the index does not know; \
                 it is kept at {} ",
                local.version,
                path.display()
            ));
            kept = Some(path);
        }
        match self.get(name, progress) {
            Ok(fetched) => say(format!(
                "Fetched {name} v{} from {}, sha256 verified",
                fetched.meta.version, fetched.source
            )),
            Err(GetError::NotFound(_) | GetError::Download(DownloadError::NoSources))
                if kept.is_some() =>
            {
                say(format!(
                    "no peer holds {name} v{}; the edit starts from your copy",
                    base.version
                ));
                return kept.ok_or_else(|| EditError::NotFound(name.clone()));
            }
            Err(GetError::NotFound(_) | GetError::Download(DownloadError::NoSources)) => {
                return Err(EditError::NoHolder {
                    name: name.clone(),
                    version: base.version,
                })
            }
            Err(e) => return Err(EditError::Fetch(e)),
        }
        if self.store.get(name).as_ref() != Some(base) {
            return Err(EditError::Fetch(GetError::NotFound(format!(
                "{name} v{}",
                base.version
            ))));
        }
        Ok(shared)
    }

    /// Renews the lease every third of its TTL until `stop` closes. Returns why the lease was
    /// lost, if it was: the index refused a renewal, or no renewal got through before the
    /// lease would have run out.
    fn keep_renewing(
        &self,
        lease: &LeaseIdRequest,
        ttl: Duration,
        stop: &Receiver<()>,
    ) -> Option<LeaseLost> {
        let every = (ttl / 3).max(Duration::from_millis(50));
        let mut term = LeaseTerm::new(self.clock.elapsed(), ttl);
        while !stopped(stop, every) {
            let sent = self.clock.elapsed();
            match self.index.renew_lease(lease) {
                Ok(renewed) => term.renewed(sent, Duration::from_millis(renewed.ttl_ms)),
                Err(e) if e.code().is_some() => {
                    let lost = LeaseLost::Ended(e);
                    log::warn!("lease {} lost: {lost}", lease.lease_id);
                    return Some(lost);
                }
                Err(e) => {
                    log::warn!("could not renew lease {}: {e}", lease.lease_id);
                    if term.ran_out(self.clock.elapsed()) {
                        let lost = LeaseLost::RanOut(e);
                        log::warn!("lease {} lost: {lost}", lease.lease_id);
                        return Some(lost);
                    }
                }
            }
        }
        None
    }

    /// Settles the publishes no index confirmed: asks again with the same lease. The index
    /// accepts if it applied the first try (the version exists with this content) or if the
    /// lease is still live; it refuses if the lease is gone and the version never landed.
    /// Unanswered ones go back to the session. Called by the agent after an index answered.
    pub(super) fn settle_in_doubt(&self, doubts: Vec<InDoubt>) {
        for doubt in doubts {
            let (name, version) = (&doubt.meta.name, doubt.meta.version);
            match self.announce(&doubt.meta, Some(&doubt.lease_id)) {
                Ok(_) => {
                    let installed =
                        self.store
                            .install(&doubt.kept, &doubt.meta, LocalChanges::SetAside);
                    self.installed(name);
                    match installed {
                        Ok(_) => self.notice(format!(
                            "{name} v{version} was published after all (the index confirmed it \
                             late); it is in the shared folder"
                        )),
                        Err(e) => self.notice(format!(
                            "{name} v{version} was published after all, but could not be put in \
                             place ({e}); it is kept at {}",
                            doubt.kept.display()
                        )),
                    }
                }
                Err(ClientError::Api { body, .. }) => self.notice(format!(
                    "{name} v{version} was not published ({}); your edit is kept at {}",
                    body.error,
                    doubt.kept.display()
                )),
                Err(_) => self.session().still_in_doubt(doubt),
            }
        }
    }

    /// Announces the new version with the lease, retrying a little when no index answers.
    /// A retry after an announce that did land is harmless: the version then exists with
    /// this content, which the index accepts from its holder without a lease.
    fn publish(&self, meta: &FileMeta, lease_id: &str) -> Result<(), ClientError> {
        let mut attempt = 1;
        loop {
            match self.announce(meta, Some(lease_id)) {
                Ok(_) => return Ok(()),
                Err(e @ ClientError::Unavailable(_)) if attempt < PUBLISH_TRIES => {
                    log::warn!("publishing {} v{}: {e}; retrying", meta.name, meta.version);
                    std::thread::sleep(PUBLISH_PAUSE);
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_lasts_from_when_its_renewal_was_sent() {
        let s = Duration::from_secs;
        let mut term = LeaseTerm::new(s(100), s(60));
        assert!(!term.ran_out(s(159)));
        assert!(term.ran_out(s(160)));
        // Sent at 150, answered much later: the new term counts from 150.
        term.renewed(s(150), s(60));
        assert!(!term.ran_out(s(209)));
        assert!(term.ran_out(s(210)));
        assert!(!LeaseTerm::new(s(1), Duration::MAX).ran_out(Duration::MAX - s(1)));
    }

    #[test]
    fn edit_failures_read_as_before() {
        assert_eq!(
            EditorError::from("the tour's editor failed".to_string()).to_string(),
            "the tour's editor failed"
        );
        assert_eq!(
            EditorError::NotAFile.to_string(),
            "the working copy is no longer a regular file"
        );
        let unreachable = ClientError::Unavailable(vec!["a: refused".into()]);
        assert_eq!(
            PublishError::LeaseLost(LeaseLost::RanOut(unreachable)).to_string(),
            "the lease ran out while no index could be reached \
             (no index server answered (a: refused))"
        );
        assert_eq!(
            PublishError::LeaseLost(LeaseLost::RenewerFailed).to_string(),
            "the lease renewer failed"
        );
    }
}
