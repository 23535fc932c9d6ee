//! One method per op: what each command does to the state. Each checks everything before it
//! changes anything, so a refused op leaves the state as it was. The sequence number is
//! counted by the caller ([`IndexState::execute`]).

use std::collections::{BTreeSet, HashSet};

use super::limits::{Limit, Limits, Spending};
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
            limits,
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
                        allowance: None,
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
            self.drop_holding(&peer_id, &name, now);
        }
        let refused = self.add_holdings(&peer_id, files, limits, now);
        Ok(Registered { new_peer, refused })
    }

    pub(super) fn heartbeat(
        &mut self,
        op: Heartbeat,
        now: Millis,
    ) -> Result<HeartbeatAccepted, StateError> {
        let peer = self.authed_peer(&op.peer_id, &op.token_hash)?;
        peer.last_seen_ms = now;
        // Removals first: a peer at its cap that swaps files makes room before it adds.
        for name in op.removed {
            self.drop_holding(&op.peer_id, &name, now);
        }
        let refused = self.add_holdings(&op.peer_id, op.added, op.limits, now);
        Ok(HeartbeatAccepted { refused })
    }

    pub(super) fn announce(&mut self, op: Announce, now: Millis) -> Result<Announced, StateError> {
        let Announce {
            peer_id,
            token_hash,
            file,
            lease_id,
            limits,
        } = op;
        self.authed_peer(&peer_id, &token_hash)?;
        let name = file.name.clone();
        // Everything is checked before anything changes: the lease is spent, and the
        // allowance used, only once the holding is sure to be recorded.
        let spend_lease = match self.check_holding(&file).map_err(StateError::Conflict)? {
            Claim::Known => None,
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
                Some(lease_id)
            }
        };
        let mut spending = self.start_spending(&peer_id, limits, now);
        self.within_limits(&peer_id, &name, limits, spending.as_mut())
            .map_err(StateError::Limit)?;
        // The lease is spent: the next version needs a new one.
        if let Some(lease_id) = spend_lease {
            self.leases.remove(&lease_id);
        }
        self.finish_spending(&peer_id, spending);
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
        now: Millis,
    ) -> Result<Unregistered, StateError> {
        self.authed_peer(&op.peer_id, &op.token_hash)?;
        self.remove_peer(&op.peer_id, now);
        Ok(Unregistered)
    }

    pub(super) fn prune(&mut self, op: Prune, now: Millis) -> Result<Pruned, StateError> {
        let peers = op
            .peers
            .into_iter()
            .filter(|id| self.remove_peer(id, now))
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

    pub(super) fn forget_histories(
        &mut self,
        op: ForgetHistories,
        now: Millis,
    ) -> Result<HistoriesForgotten, StateError> {
        let (mut names, mut kept) = (0, 0);
        while names + kept < op.max_names {
            match self.orphans.first() {
                Some((since, _)) if *since <= op.before_ms => {}
                _ => break,
            }
            let Some((_, name)) = self.orphans.pop_first() else {
                break;
            };
            let Some(entry) = self.files.get_mut(&name) else {
                continue;
            };
            if !entry.holders.is_empty() {
                // Not an orphan after all (cannot happen: `release` and `add_holding` keep
                // the two in step); it is simply no longer listed.
                entry.orphaned_ms = None;
                continue;
            }
            if self.leases.names(&name) {
                entry.orphaned_ms = Some(now);
                self.orphans.insert((now, name));
                kept += 1;
                continue;
            }
            // The search index lists held names only: it dropped this one when its last
            // holder left.
            self.files.remove(&name);
            names += 1;
        }
        super::shrink_if_sparse(&mut self.files);
        let more = self
            .orphans
            .first()
            .is_some_and(|(since, _)| *since <= op.before_ms);
        Ok(HistoriesForgotten { names, kept, more })
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
    fn add_holdings(
        &mut self,
        peer_id: &str,
        files: Vec<FileMeta>,
        limits: Limits,
        now: Millis,
    ) -> Vec<Refusal> {
        let mut refused = Vec::new();
        let mut spending = self.start_spending(peer_id, limits, now);
        for file in files {
            let claim = self.check_holding(&file).and_then(|claim| match claim {
                Claim::Known => Ok(()),
                Claim::Next => Err(Conflict::LeaseRequired {
                    name: file.name.clone(),
                    version: file.version,
                    in_list: true,
                }),
            });
            let verdict = claim.map_err(Refused::Conflict).and_then(|()| {
                self.within_limits(peer_id, &file.name, limits, spending.as_mut())
                    .map_err(Refused::Limit)
            });
            match verdict {
                Ok(()) => self.add_holding(peer_id, file, now),
                Err(why) => {
                    // The peer no longer counts as a holder of a name it could not record.
                    self.drop_holding(peer_id, &file.name, now);
                    refused.push(Refusal {
                        name: file.name,
                        why,
                    });
                }
            }
        }
        self.finish_spending(peer_id, spending);
        refused
    }

    /// `peer_id`'s allowance of new names, ready to spend under `limits` at `now`.
    fn start_spending(&self, peer_id: &str, limits: Limits, now: Millis) -> Option<Spending> {
        let rate = limits.new_names?;
        let saved = self.peers.get(peer_id)?.allowance;
        Some(Spending::start(saved, rate, now))
    }

    fn finish_spending(&mut self, peer_id: &str, spending: Option<Spending>) {
        if let (Some(spending), Some(peer)) = (spending, self.peers.get_mut(peer_id)) {
            peer.allowance = spending.finish(peer.allowance);
        }
    }

    /// Whether `peer_id` may take up `name` under `limits`: a name it holds already costs
    /// nothing; another must fit under the cap, and one new to the index takes one name of
    /// its allowance (from `spending`).
    fn within_limits(
        &self,
        peer_id: &str,
        name: &str,
        limits: Limits,
        spending: Option<&mut Spending>,
    ) -> Result<(), Limit> {
        let Some(peer) = self.peers.get(peer_id) else {
            return Ok(());
        };
        if peer.files.contains(name) {
            return Ok(());
        }
        if let Some(max) = limits.max_files {
            if peer.files.len() as u64 >= max {
                return Err(Limit::Files { max });
            }
        }
        match spending {
            Some(spending) if !self.files.contains_key(name) => spending.take(),
            _ => Ok(()),
        }
    }

    /// Whether a peer may claim `file`: one content per (name, version), and no version gaps.
    /// A name new to the index starts its history at whatever version the peer holds: v1
    /// for a new file, or a later one when the index lost its history in a restart.
    fn check_holding(&self, file: &FileMeta) -> Result<Claim, Conflict> {
        let Some(entry) = self.files.get(&file.name) else {
            return Ok(Claim::Known);
        };
        if let Some(known) = entry.versions.get(&file.version) {
            if !known.sha256.is(&file.sha256) || known.size != file.size {
                return Err(Conflict::OtherContent {
                    name: file.name.clone(),
                    version: file.version,
                    sha256: known.sha256.to_string(),
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

    /// Records a holding already checked by `check_holding` (and `within_limits`).
    fn add_holding(&mut self, peer_id: &str, file: FileMeta, now: Millis) {
        let entry = self.files.entry(file.name.clone()).or_default();
        entry
            .versions
            .get_or_insert_with(file.version, || VersionInfo {
                size: file.size,
                sha256: file.sha256.into(),
                created_ms: now,
            });
        if entry.holders.is_empty() {
            self.held_files += 1;
            // Held again: no longer on its way to being forgotten.
            if let Some(since) = entry.orphaned_ms.take() {
                self.orphans.remove(&(since, file.name.clone()));
            }
        }
        let before = entry.holders.insert(peer_id.to_string(), file.version);
        self.search
            .holding_changed(&file.name, entry, before, Some(file.version));
        self.touched.mark(&file.name);
        if let Some(peer) = self.peers.get_mut(peer_id) {
            peer.files.insert(file.name);
        }
    }

    fn drop_holding(&mut self, peer_id: &str, name: &str, now: Millis) {
        self.release(peer_id, name, now);
        if let Some(peer) = self.peers.get_mut(peer_id) {
            peer.files.remove(name);
        }
    }

    /// Removes `peer_id` from the holders of `name`, keeping the held-file count true; the
    /// last holder leaving at `now` starts the history's retention.
    fn release(&mut self, peer_id: &str, name: &str, now: Millis) {
        if let Some(entry) = self.files.get_mut(name) {
            if let Some(before) = entry.holders.remove(peer_id) {
                if entry.holders.is_empty() {
                    self.held_files -= 1;
                    entry.orphaned_ms = Some(now);
                    self.orphans.insert((now, name.to_string()));
                }
                self.search.holding_changed(name, entry, Some(before), None);
                self.touched.mark(name);
            }
        }
    }

    /// Removes a peer and its holdings at `now`; false when it was not there.
    fn remove_peer(&mut self, peer_id: &str, now: Millis) -> bool {
        let Some(peer) = self.peers.remove(peer_id) else {
            return false;
        };
        for name in &peer.files {
            self.release(peer_id, name, now);
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
