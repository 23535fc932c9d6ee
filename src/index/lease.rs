//! Write leases: at most one peer at a time may publish the next version of a file. The table
//! is part of the index state and, like it, does no I/O and reads no clock: every question
//! comes with `now`, and lease ids are drawn at the edge and handed in.
//!
//! A lease past its expiry is worthless at once, whether or not the sweeper has removed it
//! yet; once removed, its id is unknown, and ids are random, so it can never match again.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::clock::Millis;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub lease_id: String,
    pub file: String,
    pub peer_id: String,
    pub expires_ms: Millis,
}

impl Lease {
    pub fn remaining_ms(&self, now: Millis) -> u64 {
        self.expires_ms.saturating_sub(now)
    }

    fn is_live(&self, now: Millis) -> bool {
        now < self.expires_ms
    }
}

/// Why a lease could not be granted or used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseError {
    /// Another peer holds a live lease on the file.
    Held {
        file: String,
        holder: String,
        remaining_ms: u64,
    },
    /// No lease has this id: never granted, released, used, or expired and swept.
    Unknown,
    /// The lease ran out `ago_ms` ago.
    Expired { ago_ms: u64 },
    /// The lease belongs to another peer.
    NotYours { holder: String },
    /// The lease is for another file than the one being published.
    OtherFile { leased: String },
    /// The id drawn for a new lease is taken (ids are random, so this means a broken edge).
    IdTaken,
}

impl std::fmt::Display for LeaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeaseError::Held {
                file,
                holder,
                remaining_ms,
            } => write!(
                f,
                "{file} is leased by peer {holder} for another {:.1} s",
                *remaining_ms as f64 / 1000.0
            ),
            LeaseError::Unknown => {
                f.write_str("unknown lease (released, used or expired); take a new one")
            }
            LeaseError::Expired { ago_ms } => write!(
                f,
                "lease expired {:.1} s ago; take a new one",
                *ago_ms as f64 / 1000.0
            ),
            LeaseError::NotYours { holder } => write!(f, "this lease belongs to peer {holder}"),
            LeaseError::OtherFile { leased } => write!(f, "this lease is for {leased}"),
            LeaseError::IdTaken => f.write_str("lease id already in use; ask again"),
        }
    }
}

/// The live (and not yet swept) leases, by file and by id.
#[derive(Debug, Default)]
pub struct LeaseTable {
    by_file: HashMap<String, Lease>,
    /// lease id -> file
    by_id: HashMap<String, String>,
}

impl LeaseTable {
    /// The table holding `leases` (as `canonical` listed them).
    pub fn from_leases(leases: Vec<Lease>) -> LeaseTable {
        let mut table = LeaseTable::default();
        for lease in leases {
            table
                .by_id
                .insert(lease.lease_id.clone(), lease.file.clone());
            table.by_file.insert(lease.file.clone(), lease);
        }
        table
    }

    pub fn len(&self) -> usize {
        self.by_file.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_file.is_empty()
    }

    /// Whether any lease names `file`, live or expired and not yet swept.
    pub fn names(&self, file: &str) -> bool {
        self.by_file.contains_key(file)
    }

    /// The live lease on `file`, if any.
    pub fn live(&self, file: &str, now: Millis) -> Option<&Lease> {
        self.by_file.get(file).filter(|l| l.is_live(now))
    }

    /// Grants `file` to `peer_id` until `expires_ms`. A peer asking again for a file it
    /// already holds keeps its lease id and gets the new expiry, so a retried request cannot
    /// strand the first id.
    pub fn grant(
        &mut self,
        file: &str,
        peer_id: &str,
        lease_id: String,
        expires_ms: Millis,
        now: Millis,
    ) -> Result<&Lease, LeaseError> {
        if let Some(current) = self.live(file, now) {
            if current.peer_id != peer_id {
                return Err(LeaseError::Held {
                    file: file.to_string(),
                    holder: current.peer_id.clone(),
                    remaining_ms: current.remaining_ms(now),
                });
            }
            let lease = self.by_file.get_mut(file).ok_or(LeaseError::Unknown)?;
            lease.expires_ms = lease.expires_ms.max(expires_ms);
            return Ok(lease);
        }
        if self.by_id.contains_key(&lease_id) {
            return Err(LeaseError::IdTaken);
        }
        // Whatever was there has expired: it goes, with its id.
        if let Some(old) = self.by_file.remove(file) {
            self.by_id.remove(&old.lease_id);
        }
        self.by_id.insert(lease_id.clone(), file.to_string());
        let lease = self.by_file.entry(file.to_string()).or_insert(Lease {
            lease_id,
            file: file.to_string(),
            peer_id: peer_id.to_string(),
            expires_ms,
        });
        Ok(lease)
    }

    /// The live lease `lease_id`, if it belongs to `peer_id`.
    pub fn check(&self, lease_id: &str, peer_id: &str, now: Millis) -> Result<&Lease, LeaseError> {
        let lease = self
            .by_id
            .get(lease_id)
            .and_then(|file| self.by_file.get(file))
            .ok_or(LeaseError::Unknown)?;
        if lease.peer_id != peer_id {
            return Err(LeaseError::NotYours {
                holder: lease.peer_id.clone(),
            });
        }
        if !lease.is_live(now) {
            return Err(LeaseError::Expired {
                ago_ms: now - lease.expires_ms,
            });
        }
        Ok(lease)
    }

    /// Pushes the expiry of a live lease of `peer_id` out to `expires_ms`.
    pub fn renew(
        &mut self,
        lease_id: &str,
        peer_id: &str,
        expires_ms: Millis,
        now: Millis,
    ) -> Result<&Lease, LeaseError> {
        let file = self.check(lease_id, peer_id, now)?.file.clone();
        let lease = self.by_file.get_mut(&file).ok_or(LeaseError::Unknown)?;
        lease.expires_ms = lease.expires_ms.max(expires_ms);
        Ok(lease)
    }

    /// Ends a live lease of `peer_id`.
    pub fn release(
        &mut self,
        lease_id: &str,
        peer_id: &str,
        now: Millis,
    ) -> Result<Lease, LeaseError> {
        self.check(lease_id, peer_id, now)?;
        self.remove(lease_id).ok_or(LeaseError::Unknown)
    }

    /// Removes a lease whatever its state; the peer that held it is gone, or it expired.
    pub fn remove(&mut self, lease_id: &str) -> Option<Lease> {
        let file = self.by_id.remove(lease_id)?;
        self.by_file.remove(&file)
    }

    /// Ids of the leases expired at `now`, sorted so that the op built from them is the same
    /// on every replica.
    pub fn expired(&self, now: Millis) -> Vec<String> {
        let mut ids: Vec<String> = self
            .by_file
            .values()
            .filter(|l| !l.is_live(now))
            .map(|l| l.lease_id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Ids of every lease `peer_id` holds, sorted.
    pub fn held_by(&self, peer_id: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .by_file
            .values()
            .filter(|l| l.peer_id == peer_id)
            .map(|l| l.lease_id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Every lease in a canonical order, for the state digest.
    pub fn canonical(&self) -> BTreeMap<&str, &Lease> {
        self.by_file.iter().map(|(f, l)| (f.as_str(), l)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_until_expiry() {
        let mut t = LeaseTable::default();
        let l = t.grant("f", "a", "L1".into(), 100, 0).unwrap().clone();
        assert_eq!(l.lease_id, "L1");
        assert_eq!(
            t.grant("f", "b", "L2".into(), 150, 50),
            Err(LeaseError::Held {
                file: "f".into(),
                holder: "a".into(),
                remaining_ms: 50
            })
        );
        // The holder asking again keeps its id and gets the later expiry.
        let again = t.grant("f", "a", "L3".into(), 160, 60).unwrap();
        assert_eq!((again.lease_id.as_str(), again.expires_ms), ("L1", 160));
        // At expiry the file is free, and the old id is gone with the old lease.
        let b = t.grant("f", "b", "L4".into(), 300, 160).unwrap();
        assert_eq!(b.peer_id, "b");
        assert_eq!(t.check("L1", "a", 160), Err(LeaseError::Unknown));
        assert_eq!(t.len(), 1);
        assert_eq!(
            t.grant("g", "a", "L4".into(), 300, 160),
            Err(LeaseError::IdTaken)
        );
    }

    #[test]
    fn only_the_holder_renews_or_releases_and_expired_ids_stay_dead() {
        let mut t = LeaseTable::default();
        t.grant("f", "a", "L1".into(), 100, 0).unwrap();
        assert_eq!(
            t.renew("L1", "b", 200, 10),
            Err(LeaseError::NotYours { holder: "a".into() })
        );
        assert_eq!(t.renew("L1", "a", 200, 10).unwrap().expires_ms, 200);
        assert_eq!(
            t.release("L1", "a", 250),
            Err(LeaseError::Expired { ago_ms: 50 })
        );
        assert_eq!(
            t.renew("L1", "a", 400, 250),
            Err(LeaseError::Expired { ago_ms: 50 })
        );
        assert_eq!(t.expired(250), vec!["L1".to_string()]);
        assert!(t.remove("L1").is_some());
        assert_eq!(t.check("L1", "a", 250), Err(LeaseError::Unknown));
        assert!(t.is_empty());

        t.grant("g", "a", "L2".into(), 100, 0).unwrap();
        assert_eq!(t.release("L2", "a", 5).unwrap().file, "g");
        assert_eq!(t.release("L2", "a", 5), Err(LeaseError::Unknown));
    }
}
