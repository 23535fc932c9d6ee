//! The index as a deterministic state machine: ops (`op`) applied one at a time, each by
//! its own method (`apply`), are the only way its content changes. It owns peers, their
//! holdings, every file's version history, the write leases and the search index (`search`).
//! It must not do I/O, read a clock or draw random numbers: time comes in as an argument and
//! randomness (peer ids, tokens, lease ids) is decided at the edge and carried in the op, so
//! that the same ops applied in the same order give the same state anywhere.

mod apply;
pub mod limits;
pub mod op;
mod search;
#[cfg(test)]
pub(crate) mod tests;
pub mod vec_map;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::lease::{Lease, LeaseTable};
pub use crate::clock::Millis;
use crate::hashing::{hex, sha256_hex, Sha256Hex};
use crate::protocol::FileMeta;
pub use limits::{Allowance, Limit, Limits, Rate};
pub use op::*;
pub use search::tokenize;
use search::SearchIndex;
pub use vec_map::VecMap;

/// One version of a file as the index first learned it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub size: u64,
    pub sha256: Sha256Hex,
    pub created_ms: Millis,
}

/// A file's version history and who holds which version. Kept after the last holder leaves,
/// so a stale copy can never come back as "latest", until no peer has held the name for
/// `--history-retention` (see [`ForgetHistories`]); then the name is forgotten entirely.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FileEntry {
    pub versions: VecMap<u64, VersionInfo>,
    /// peer id -> the version that peer holds.
    pub holders: VecMap<String, u64>,
    /// Since when no peer holds the name (the `at` of the op its last holder left by); set
    /// exactly while `holders` is empty. Snapshots written before it existed read it back
    /// from the latest version's time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orphaned_ms: Option<Millis>,
}

impl FileEntry {
    pub fn latest(&self) -> Option<(u64, &VersionInfo)> {
        self.versions.last().map(|(v, i)| (*v, i))
    }

    pub fn latest_version(&self) -> u64 {
        self.latest().map_or(0, |(v, _)| v)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Peer {
    pub addr: String,
    pub token_hash: String,
    /// Liveness: set by the peer's ops and by `touch`. Not part of the sequenced state (a
    /// heartbeat that only says "alive" is not an op), so it is left out of the digest.
    pub last_seen_ms: Millis,
    pub files: BTreeSet<String>,
    /// What the peer has used of its allowance of names new to the index (see `limits`);
    /// `None`: none of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowance: Option<Allowance>,
}

/// The whole sequenced state, for a shadow to start from. Derived indexes (search tokens,
/// counts) are rebuilt on restore.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    /// Which history this is: a primary draws a new epoch each time it starts empty.
    pub epoch: String,
    pub seq: u64,
    pub peers: BTreeMap<String, Peer>,
    pub files: BTreeMap<String, FileEntry>,
    pub leases: Vec<Lease>,
}

#[derive(Debug, Default)]
pub struct IndexState {
    /// Names the history this state belongs to; ops of another epoch do not apply to it.
    epoch: String,
    seq: u64,
    peers: HashMap<String, Peer>,
    files: HashMap<String, FileEntry>,
    /// Held names by token, in rank order: derived from `files`, rebuilt on restore.
    search: SearchIndex,
    /// Names with at least one holder, kept up to date so `/status` never counts.
    held_files: usize,
    /// The names no peer holds, by the time their last holder left (`FileEntry::orphaned_ms`):
    /// the sweeper finds what is due for forgetting without looking at every file.
    orphans: BTreeSet<(Millis, String)>,
    leases: LeaseTable,
    /// Names whose holders or versions changed since the planner last took them.
    touched: Touched,
}

/// Most names `Touched` lists before it gives up and says "all" (a shadow, where no planner
/// takes them, stays at "all" and so records nothing).
const MAX_TOUCHED: usize = 65_536;

/// The names whose holders or latest version changed since the planner last looked, so a
/// pass re-examines those instead of every file. Bookkeeping for the planner, outside the
/// state's meaning: not in its snapshot or digest.
#[derive(Debug, Default)]
pub enum Touched {
    /// Look at every file (a new or restored state, or too many changes to list).
    #[default]
    All,
    Names(HashSet<String>),
}

impl Touched {
    fn mark(&mut self, name: &str) {
        if let Touched::Names(names) = self {
            if names.len() >= MAX_TOUCHED {
                *self = Touched::All;
            } else if !names.contains(name) {
                names.insert(name.to_string());
            }
        }
    }
}

/// Capacity a map keeps however empty it gets (what `Index::open` starts with): a map that
/// emptied and fills again does not grow from nothing under the write lock.
const MIN_CAPACITY: usize = 16 * 1024;

/// Hands back most of a map's room once it is three quarters empty (histories forgotten):
/// maps never shrink by themselves, and 400,000 forgotten names would keep ~40 MB of empty
/// buckets in each. Halving at a quarter full keeps the rehashing to O(1) per removal,
/// amortized.
pub(super) fn shrink_if_sparse<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > MIN_CAPACITY && map.len() < map.capacity() / 4 {
        map.shrink_to((map.len() * 2).max(MIN_CAPACITY));
    }
}

/// The form in which a peer's secret token is kept: the index never stores the token itself.
pub fn hash_token(token: &str) -> String {
    sha256_hex(token.as_bytes())
}

impl IndexState {
    /// An empty state with room for `peers` peers and `files` names, so the maps do not
    /// rehash under the write lock while the index warms up.
    pub fn with_capacity(peers: usize, files: usize) -> Self {
        IndexState {
            epoch: String::new(),
            seq: 0,
            peers: HashMap::with_capacity(peers),
            files: HashMap::with_capacity(files),
            search: SearchIndex::with_capacity(files),
            held_files: 0,
            orphans: BTreeSet::new(),
            leases: LeaseTable::default(),
            touched: Touched::All,
        }
    }

    /// Sequence number of the last op that changed the state.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Starts a new history: only for an empty state (a primary that starts from nothing).
    pub fn with_epoch(mut self, epoch: String) -> Self {
        self.epoch = epoch;
        self
    }

    /// Records that `peer_id` is alive at `now`, checking its token. Liveness is not a
    /// sequenced change: it is shipped to shadows in batches (`set_liveness`).
    pub fn touch(
        &mut self,
        peer_id: &str,
        token_hash: &str,
        now: Millis,
    ) -> Result<(), StateError> {
        let peer = self.authed_peer(peer_id, token_hash)?;
        peer.last_seen_ms = peer.last_seen_ms.max(now);
        Ok(())
    }

    /// Counts every peer as seen at `now`: after a restart, peers get a full peer timeout to
    /// show they are alive before they are pruned.
    pub fn touch_all(&mut self, now: Millis) {
        for peer in self.peers.values_mut() {
            peer.last_seen_ms = peer.last_seen_ms.max(now);
        }
    }

    /// Every peer's last sign of life, sorted by id.
    pub fn liveness(&self) -> Vec<(String, Millis)> {
        let mut seen: Vec<(String, Millis)> = self
            .peers
            .iter()
            .map(|(id, p)| (id.clone(), p.last_seen_ms))
            .collect();
        seen.sort();
        seen
    }

    /// Takes the primary's view of liveness; unknown peers are ignored and no time goes back.
    pub fn set_liveness(&mut self, seen: &[(String, Millis)]) {
        for (id, at) in seen {
            if let Some(peer) = self.peers.get_mut(id) {
                peer.last_seen_ms = peer.last_seen_ms.max(*at);
            }
        }
    }

    /// The snapshot as JSON, written straight from the state (no copy of it is made, so a
    /// caller holding the read lock holds it only as long as the encoding takes). Reads back
    /// as a [`Snapshot`].
    pub fn snapshot_json(&self) -> serde_json::Result<Vec<u8>> {
        #[derive(Serialize)]
        struct View<'a> {
            epoch: &'a str,
            seq: u64,
            peers: &'a HashMap<String, Peer>,
            files: &'a HashMap<String, FileEntry>,
            leases: Vec<&'a Lease>,
        }
        serde_json::to_vec(&View {
            epoch: &self.epoch,
            seq: self.seq,
            peers: &self.peers,
            files: &self.files,
            leases: self.leases.canonical().into_values().collect(),
        })
    }

    /// Every name with a history, held or not.
    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// Histories of names no peer holds: kept for `--history-retention`.
    pub fn orphan_count(&self) -> usize {
        self.orphans.len()
    }

    /// Since when the longest-unheld name has been without a holder.
    pub fn oldest_orphan_ms(&self) -> Option<Millis> {
        self.orphans.first().map(|(at, _)| *at)
    }

    /// A copy of the sequenced state (and liveness) to ship to a shadow.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            epoch: self.epoch.clone(),
            seq: self.seq,
            peers: self
                .peers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            files: self
                .files
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            leases: self.leases.canonical().into_values().cloned().collect(),
        }
    }

    /// The state a snapshot describes, with its search index and counts rebuilt.
    pub fn restore(snapshot: Snapshot) -> IndexState {
        let mut state = IndexState::with_capacity(snapshot.peers.len(), snapshot.files.len());
        state.epoch = snapshot.epoch;
        state.seq = snapshot.seq;
        state.peers = snapshot.peers.into_iter().collect();
        for (name, mut entry) in snapshot.files {
            if entry.holders.is_empty() {
                // A snapshot from before orphan times were kept: the latest version's time
                // is the last the name is known to have been held (and the same everywhere).
                let since = entry
                    .orphaned_ms
                    .or_else(|| entry.latest().map(|(_, info)| info.created_ms))
                    .unwrap_or(0);
                entry.orphaned_ms = Some(since);
                state.orphans.insert((since, name.clone()));
            } else {
                entry.orphaned_ms = None;
                state.held_files += 1;
            }
            state.files.insert(name, entry);
        }
        state.search = SearchIndex::rebuild(state.files.iter());
        state.leases = LeaseTable::from_leases(snapshot.leases);
        state
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Names that at least one live peer holds.
    pub fn held_file_count(&self) -> usize {
        self.held_files
    }

    pub fn peer(&self, peer_id: &str) -> Option<&Peer> {
        self.peers.get(peer_id)
    }

    pub fn file(&self, name: &str) -> Option<&FileEntry> {
        self.files.get(name)
    }

    /// `name` as the state's own key, with its entry (so a caller can hold the name as long
    /// as the state).
    pub fn file_named(&self, name: &str) -> Option<(&str, &FileEntry)> {
        self.files
            .get_key_value(name)
            .map(|(name, entry)| (name.as_str(), entry))
    }

    /// The names changed since the last call (see `Touched`); from now on changes are listed.
    pub fn take_touched(&mut self) -> Touched {
        std::mem::replace(&mut self.touched, Touched::Names(HashSet::new()))
    }

    /// Every known file name, in no particular order.
    pub fn file_names(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    /// Every registered peer id, in no particular order.
    pub fn peer_ids(&self) -> impl Iterator<Item = &str> {
        self.peers.keys().map(String::as_str)
    }

    pub fn leases(&self) -> &LeaseTable {
        &self.leases
    }

    /// The latest version of `name` as a peer would hold it.
    pub fn latest_meta(&self, name: &str) -> Option<FileMeta> {
        let (version, info) = self.files.get(name)?.latest()?;
        Some(FileMeta {
            name: name.to_string(),
            version,
            size: info.size,
            sha256: info.sha256.to_string(),
        })
    }

    /// Applies one op of any kind (replaying a log, following a primary). On `Err` nothing
    /// changed; on `Ok` the sequence number went up by one.
    pub fn apply(&mut self, op: Op, now: Millis) -> Result<Outcome, StateError> {
        let outcome = op.apply_to(self, now)?;
        self.seq += 1;
        Ok(outcome)
    }

    /// Applies one command and returns its own outcome. On `Err` nothing changed; on `Ok` the
    /// sequence number went up by one.
    pub fn execute<C: Command>(
        &mut self,
        command: C,
        now: Millis,
    ) -> Result<C::Outcome, StateError> {
        let outcome = command.apply_to(self, now)?;
        self.seq += 1;
        Ok(outcome)
    }

    /// Peers whose last sign of life is older than `timeout_ms` at `now`.
    pub fn silent_peers(&self, now: Millis, timeout_ms: u64) -> Vec<String> {
        let mut ids: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| now.saturating_sub(p.last_seen_ms) > timeout_ms)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// A SHA-256 over the whole sequenced state in a canonical order: equal digests mean
    /// equal states (liveness aside).
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.seq.to_be_bytes());
        h.update(self.epoch.as_bytes());
        let mut peer_ids: Vec<&String> = self.peers.keys().collect();
        peer_ids.sort();
        for id in peer_ids {
            let p = &self.peers[id];
            // Liveness is left out: it is not sequenced (see `touch`).
            let line = serde_json::to_string(&(id, &p.addr, &p.token_hash, &p.files, &p.allowance))
                .unwrap_or_default();
            h.update(line.as_bytes());
        }
        let mut names: Vec<&String> = self.files.keys().collect();
        names.sort();
        for name in names {
            let line = serde_json::to_string(&(name, &self.files[name])).unwrap_or_default();
            h.update(line.as_bytes());
        }
        let leases = serde_json::to_string(&self.leases.canonical()).unwrap_or_default();
        h.update(leases.as_bytes());
        hex(&h.finalize())
    }
}
