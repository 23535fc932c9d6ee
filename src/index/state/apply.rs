//! One method per op: what each command does to the state. Each checks everything before it
//! changes anything, so a refused op leaves the state as it was. The sequence number is
//! counted by the caller ([`IndexState::execute`]).

use std::collections::{BTreeSet, HashSet};

use super::op::*;
use super::{FileEntry, IndexState, Peer, VersionInfo};
use crate::clock::Millis;
use crate::index::lease::LeaseError;
use crate::protocol::FileMeta;

/// How a claimed holding relates to a file's history.
enum Claim {
    /// The version is known, with this content; or the name is new to the index.
    Known,
    /// The version right after the latest: someone is publishing, which takes a lease.
    Next,
}

impl IndexState {
    pub(super) fn register(&mut self, op: Register, now: Millis) -> Result<Registered, StateError> {
        let Register {
            peer_id,
            token_hash,
            addr,
            files,
        } = op;
        let new_peer = match self.peers.get_mut(&peer_id) {
            Some(peer) => {
                check_token(&peer_id, peer, &token_hash)?;
                peer.addr = addr;
                peer.last_seen_ms = now;
                false
            }
            None => {
                self.peers.insert(
                    peer_id.clone(),
                    Peer {
                        addr,
                        token_hash,
                        last_seen_ms: now,
                        files: BTreeSet::new(),
                    },
                );
                true
            }
        };
        // The list replaces what the peer held before.
        let listed: HashSet<&str> = files.iter().map(|f| f.name.as_str()).collect();
        let dropped: Vec<String> = self.peers[&peer_id]
            .files
            .iter()
            .filter(|name| !listed.contains(name.as_str()))
            .cloned()
            .collect();
        for name in dropped {
            self.drop_holding(&peer_id, &name);
        }
        let refused = self.add_holdings(&peer_id, files, now);
        Ok(Registered { new_peer, refused })
    }

    pub(super) fn heartbeat(
        &mut self,
        op: Heartbeat,
        now: Millis,
    ) -> Result<HeartbeatAccepted, StateError> {
        let peer = self.authed_peer(&op.peer_id, &op.token_hash)?;
        peer.last_seen_ms = now;
        for name in op.removed {
            self.drop_holding(&op.peer_id, &name);
        }
        let refused = self.add_holdings(&op.peer_id, op.added, now);
        Ok(HeartbeatAccepted { refused })
    }

    pub(super) fn announce(&mut self, op: Announce, now: Millis) -> Result<Announced, StateError> {
        let Announce {
            peer_id,
            token_hash,
            file,
            lease_id,
        } = op;
        self.authed_peer(&peer_id, &token_hash)?;
        let name = file.name.clone();
        match self.check_holding(&file).map_err(StateError::Conflict)? {
            Claim::Known => {}
            Claim::Next => {
                let lease_id = lease_id.ok_or_else(|| {
                    StateError::Conflict(Conflict::LeaseRequired {
                        name: name.clone(),
                        version: file.version,
                        in_list: false,
                    })
                })?;
                let lease = self
                    .leases
                    .check(&lease_id, &peer_id, now)
                    .map_err(StateError::Lease)?;
                if lease.file != name {
                    return Err(StateError::Lease(LeaseError::OtherFile {
                        leased: lease.file.clone(),
                    }));
                }
                // The lease is spent: the next version needs a new one.
                self.leases.remove(&lease_id);
            }
        }
        self.add_holding(&peer_id, file, now);
        if let Some(peer) = self.peers.get_mut(&peer_id) {
            peer.last_seen_ms = now;
        }
        let latest_version = self.files.get(&name).map_or(0, FileEntry::latest_version);
        Ok(Announced { latest_version })
    }

    pub(super) fn unregister(
        &mut self,
        op: Unregister,
        _now: Millis,
    ) -> Result<Unregistered, StateError> {
        self.authed_peer(&op.peer_id, &op.token_hash)?;
        self.remove_peer(&op.peer_id);
        Ok(Unregistered)
    }

    pub(super) fn prune(&mut self, op: Prune, _now: Millis) -> Result<Pruned, StateError> {
        let peers = op
            .peers
            .into_iter()
            .filter(|id| self.remove_peer(id))
            .collect();
        Ok(Pruned { peers })
    }

    pub(super) fn acquire_lease(
        &mut self,
        op: AcquireLease,
        now: Millis,
    ) -> Result<Leased, StateError> {
        self.authed_peer(&op.peer_id, &op.token_hash)?;
        let latest = self
            .latest_meta(&op.file)
            .ok_or_else(|| StateError::NoSuchFile(op.file.clone()))?;
        let lease = self
            .leases
            .grant(
                &op.file,
                &op.peer_id,
                op.lease_id,
                now.saturating_add(op.ttl_ms),
                now,
            )
            .map_err(StateError::Lease)?
            .clone();
        Ok(Leased { lease, latest })
    }

    pub(super) fn renew_lease(
        &mut self,
        op: RenewLease,
        now: Millis,
    ) -> Result<Leased, StateError> {
        self.authed_peer(&op.peer_id, &op.token_hash)?;
        let lease = self
            .leases
            .renew(
                &op.lease_id,
                &op.peer_id,
                now.saturating_add(op.ttl_ms),
                now,
            )
            .map_err(StateError::Lease)?
            .clone();
        let latest = self
            .latest_meta(&lease.file)
            .ok_or_else(|| StateError::NoSuchFile(lease.file.clone()))?;
        Ok(Leased { lease, latest })
    }

    pub(super) fn release_lease(
        &mut self,
        op: ReleaseLease,
        now: Millis,
    ) -> Result<LeaseReleased, StateError> {
        self.authed_peer(&op.peer_id, &op.token_hash)?;
        let lease = self
            .leases
            .release(&op.lease_id, &op.peer_id, now)
            .map_err(StateError::Lease)?;
        Ok(LeaseReleased { file: lease.file })
    }

    pub(super) fn expire_leases(
        &mut self,
        op: ExpireLeases,
        now: Millis,
    ) -> Result<LeasesExpired, StateError> {
        let expired = self.leases.expired(now);
        let lease_ids = op
            .lease_ids
            .into_iter()
            .filter(|id| expired.binary_search(id).is_ok())
            .filter(|id| self.leases.remove(id).is_some())
            .collect();
        Ok(LeasesExpired { lease_ids })
    }

    /// The peer `peer_id`, if `token_hash` is its token's hash.
    pub(super) fn authed_peer(
        &mut self,
        peer_id: &str,
        token_hash: &str,
    ) -> Result<&mut Peer, StateError> {
        let peer = self
            .peers
            .get_mut(peer_id)
            .ok_or_else(|| StateError::UnknownPeer(peer_id.to_string()))?;
        check_token(peer_id, peer, token_hash)?;
        Ok(peer)
    }

    /// Records what can be recorded and lists the rest; one bad file does not sink the batch.
    fn add_holdings(&mut self, peer_id: &str, files: Vec<FileMeta>, now: Millis) -> Vec<Refusal> {
        let mut refused = Vec::new();
        for file in files {
            let claim = self.check_holding(&file).and_then(|claim| match claim {
                Claim::Known => Ok(()),
                Claim::Next => Err(Conflict::LeaseRequired {
                    name: file.name.clone(),
                    version: file.version,
                    in_list: true,
                }),
            });
            match claim {
                Ok(()) => self.add_holding(peer_id, file, now),
                Err(why) => {
                    // The peer no longer counts as a holder of a name it could not record.
                    self.drop_holding(peer_id, &file.name);
                    refused.push(Refusal {
                        name: file.name,
                        why,
                    });
                }
            }
        }
        refused
    }

    /// Whether a peer may claim `file`: one content per (name, version), and no version gaps.
    /// A name new to the index starts its history at whatever version the peer holds: v1
    /// for a new file, or a later one when the index lost its history in a restart.
    fn check_holding(&self, file: &FileMeta) -> Result<Claim, Conflict> {
        let Some(entry) = self.files.get(&file.name) else {
            return Ok(Claim::Known);
        };
        if let Some(known) = entry.versions.get(&file.version) {
            if known.sha256 != file.sha256 || known.size != file.size {
                return Err(Conflict::OtherContent {
                    name: file.name.clone(),
                    version: file.version,
                    sha256: known.sha256.clone(),
                });
            }
            return Ok(Claim::Known);
        }
        let latest = entry.latest_version();
        if latest.checked_add(1) == Some(file.version) {
            Ok(Claim::Next)
        } else if file.version > latest {
            Err(Conflict::VersionGap {
                name: file.name.clone(),
                version: file.version,
                latest,
            })
        } else {
            // Older than the latest and unknown: history from before an index restart. The
            // holder is stale either way and will be told to fetch the latest.
            Ok(Claim::Known)
        }
    }

    /// Records a holding already checked by `check_holding`.
    fn add_holding(&mut self, peer_id: &str, file: FileMeta, now: Millis) {
        let entry = self.files.entry(file.name.clone()).or_default();
        entry
            .versions
            .entry(file.version)
            .or_insert_with(|| VersionInfo {
                size: file.size,
                sha256: file.sha256,
                created_ms: now,
            });
        if entry.holders.is_empty() {
            self.held_files += 1;
        }
        let before = entry.holders.insert(peer_id.to_string(), file.version);
        self.search
            .holding_changed(&file.name, entry, before, Some(file.version));
        self.touched.mark(&file.name);
        if let Some(peer) = self.peers.get_mut(peer_id) {
            peer.files.insert(file.name);
        }
    }

    fn drop_holding(&mut self, peer_id: &str, name: &str) {
        self.release(peer_id, name);
        if let Some(peer) = self.peers.get_mut(peer_id) {
            peer.files.remove(name);
        }
    }

    /// Removes `peer_id` from the holders of `name`, keeping the held-file count true.
    fn release(&mut self, peer_id: &str, name: &str) {
        if let Some(entry) = self.files.get_mut(name) {
            if let Some(before) = entry.holders.remove(peer_id) {
                if entry.holders.is_empty() {
                    self.held_files -= 1;
                }
                self.search.holding_changed(name, entry, Some(before), None);
                self.touched.mark(name);
            }
        }
    }

    /// Removes a peer and its holdings; false when it was not there.
    fn remove_peer(&mut self, peer_id: &str) -> bool {
        let Some(peer) = self.peers.remove(peer_id) else {
            return false;
        };
        for name in &peer.files {
            self.release(peer_id, name);
        }
        // A peer that left cannot publish: its leases free their files now.
        for lease_id in self.leases.held_by(peer_id) {
            self.leases.remove(&lease_id);
        }
        true
    }
}

fn check_token(peer_id: &str, peer: &Peer, token_hash: &str) -> Result<(), StateError> {
    // Compare without an early exit, so timing does not tell how much of a guess was right.
    let a = peer.token_hash.as_bytes();
    let b = token_hash.as_bytes();
    let same = a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
    if same {
        Ok(())
    } else {
        Err(StateError::BadToken(peer_id.to_string()))
    }
}
