//! The index as a deterministic state machine: `IndexState::apply(op, now)` is the only way
//! its content changes. It owns peers, their holdings, every file's version history, the write
//! leases and the search index. It must not do I/O, read a clock or draw random numbers: time comes in as an
//! argument and randomness (peer ids, tokens) is decided at the edge and carried in the op, so
//! that the same ops applied in the same order give the same state anywhere.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::lease::{Lease, LeaseError, LeaseTable};
use crate::hashing::{hex, sha256_hex};
use crate::protocol::{FileMeta, Holder, Rejected, SearchResult};

/// Milliseconds since the Unix epoch, as handed in by the caller.
pub type Millis = u64;

/// Everything that can change the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// A peer joins or rejoins with its whole file list; its previous holdings are replaced.
    Register {
        peer_id: String,
        token_hash: String,
        addr: String,
        files: Vec<FileMeta>,
    },
    /// Liveness plus the changes of the peer's file list.
    Heartbeat {
        peer_id: String,
        token_hash: String,
        added: Vec<FileMeta>,
        removed: Vec<String>,
    },
    /// "I now hold this file at this version." A version after the latest needs the peer's
    /// live lease on the file, and uses it up.
    Announce {
        peer_id: String,
        token_hash: String,
        file: FileMeta,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease_id: Option<String>,
    },
    /// A graceful leave: the peer and its holdings go away.
    Unregister { peer_id: String, token_hash: String },
    /// Peers found silent for too long; they go as if they had unregistered.
    Prune { peers: Vec<String> },
    /// Asks for the right to publish the next version of `file` for `ttl_ms`. `lease_id` is
    /// drawn at the edge; a peer that already holds the lease keeps its old id.
    AcquireLease {
        peer_id: String,
        token_hash: String,
        file: String,
        lease_id: String,
        ttl_ms: u64,
    },
    /// Extends a live lease to `ttl_ms` from now.
    RenewLease {
        peer_id: String,
        token_hash: String,
        lease_id: String,
        ttl_ms: u64,
    },
    /// Gives a lease back without publishing.
    ReleaseLease {
        peer_id: String,
        token_hash: String,
        lease_id: String,
    },
    /// Leases found expired by the sweeper; those still expired at `now` are removed.
    ExpireLeases { lease_ids: Vec<String> },
}

/// What a successful `apply` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Registered {
        /// False when an existing peer registered again.
        new_peer: bool,
        rejected: Vec<Rejected>,
    },
    HeartbeatAccepted {
        rejected: Vec<Rejected>,
    },
    Announced {
        latest_version: u64,
    },
    Unregistered,
    Pruned {
        peers: Vec<String>,
    },
    /// A lease granted or renewed, with the file's latest version as it stands.
    Leased {
        lease: Lease,
        latest: FileMeta,
    },
    LeaseReleased {
        file: String,
    },
    LeasesExpired {
        lease_ids: Vec<String>,
    },
}

/// Why an op was refused. A refused op changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateError {
    /// The peer id is unknown (never registered, pruned, or the index restarted).
    UnknownPeer(String),
    /// The token does not belong to the peer id.
    BadToken(String),
    /// The op contradicts what the index already holds (e.g. other content under one version).
    Conflict(String),
    /// No version of this file is known.
    NoSuchFile(String),
    /// A lease could not be granted or used.
    Lease(LeaseError),
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateError::UnknownPeer(id) => write!(f, "unknown peer {id}; register again"),
            StateError::BadToken(id) => write!(f, "wrong token for peer {id}"),
            StateError::Conflict(why) => f.write_str(why),
            StateError::NoSuchFile(name) => write!(f, "no version of {name} is known"),
            StateError::Lease(e) => write!(f, "{e}"),
        }
    }
}

/// One version of a file as the index first learned it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub size: u64,
    pub sha256: String,
    pub created_ms: Millis,
}

/// A file's version history and who holds which version. Kept after the last holder leaves,
/// so a stale copy can never come back as "latest".
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FileEntry {
    pub versions: BTreeMap<u64, VersionInfo>,
    /// peer id -> the version that peer holds.
    pub holders: BTreeMap<String, u64>,
}

impl FileEntry {
    pub fn latest(&self) -> Option<(u64, &VersionInfo)> {
        self.versions.iter().next_back().map(|(v, i)| (*v, i))
    }

    pub fn latest_version(&self) -> u64 {
        self.latest().map_or(0, |(v, _)| v)
    }
}

/// How a claimed holding relates to a file's history.
enum Claim {
    /// The version is known, with this content; or the name is new to the index.
    Known,
    /// The version right after the latest: someone is publishing, which takes a lease.
    Next,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Peer {
    pub addr: String,
    pub token_hash: String,
    /// Liveness: set by the peer's ops and by `touch`. Not part of the sequenced state (a
    /// heartbeat that only says "alive" is not an op), so it is left out of the digest.
    pub last_seen_ms: Millis,
    pub files: BTreeSet<String>,
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
    /// Lowercase name token -> names containing it; keyword search never scans all files.
    tokens: HashMap<String, HashSet<String>>,
    /// Names with at least one holder, kept up to date so `/status` never counts.
    held_files: usize,
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

/// Splits a name or query into lowercase alphanumeric tokens ("My_Song-01.mp3" ->
/// ["my", "song", "01", "mp3"]).
pub fn tokenize(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
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
            tokens: HashMap::with_capacity(files),
            held_files: 0,
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
        for (name, entry) in snapshot.files {
            for token in tokenize(&name) {
                state.tokens.entry(token).or_default().insert(name.clone());
            }
            if !entry.holders.is_empty() {
                state.held_files += 1;
            }
            state.files.insert(name, entry);
        }
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
            sha256: info.sha256.clone(),
        })
    }

    /// Applies one op. On `Err` nothing changed; on `Ok` the sequence number went up by one.
    pub fn apply(&mut self, op: Op, now: Millis) -> Result<Outcome, StateError> {
        let outcome = match op {
            Op::Register {
                peer_id,
                token_hash,
                addr,
                files,
            } => {
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
                let rejected = self.add_holdings(&peer_id, files, now);
                Outcome::Registered { new_peer, rejected }
            }
            Op::Heartbeat {
                peer_id,
                token_hash,
                added,
                removed,
            } => {
                let peer = self.authed_peer(&peer_id, &token_hash)?;
                peer.last_seen_ms = now;
                for name in removed {
                    self.drop_holding(&peer_id, &name);
                }
                let rejected = self.add_holdings(&peer_id, added, now);
                Outcome::HeartbeatAccepted { rejected }
            }
            Op::Announce {
                peer_id,
                token_hash,
                file,
                lease_id,
            } => {
                self.authed_peer(&peer_id, &token_hash)?;
                let name = file.name.clone();
                match self.check_holding(&file).map_err(StateError::Conflict)? {
                    Claim::Known => {}
                    Claim::Next => {
                        let lease_id = lease_id.ok_or_else(|| {
                            StateError::Conflict(format!(
                                "{name} v{} would be a new version: publishing it needs a lease",
                                file.version
                            ))
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
                Outcome::Announced { latest_version }
            }
            Op::Unregister {
                peer_id,
                token_hash,
            } => {
                self.authed_peer(&peer_id, &token_hash)?;
                self.remove_peer(&peer_id);
                Outcome::Unregistered
            }
            Op::Prune { peers } => {
                let peers: Vec<String> = peers
                    .into_iter()
                    .filter(|id| self.remove_peer(id))
                    .collect();
                Outcome::Pruned { peers }
            }
            Op::AcquireLease {
                peer_id,
                token_hash,
                file,
                lease_id,
                ttl_ms,
            } => {
                self.authed_peer(&peer_id, &token_hash)?;
                let latest = self
                    .latest_meta(&file)
                    .ok_or_else(|| StateError::NoSuchFile(file.clone()))?;
                let lease = self
                    .leases
                    .grant(&file, &peer_id, lease_id, now.saturating_add(ttl_ms), now)
                    .map_err(StateError::Lease)?
                    .clone();
                Outcome::Leased { lease, latest }
            }
            Op::RenewLease {
                peer_id,
                token_hash,
                lease_id,
                ttl_ms,
            } => {
                self.authed_peer(&peer_id, &token_hash)?;
                let lease = self
                    .leases
                    .renew(&lease_id, &peer_id, now.saturating_add(ttl_ms), now)
                    .map_err(StateError::Lease)?
                    .clone();
                let latest = self
                    .latest_meta(&lease.file)
                    .ok_or_else(|| StateError::NoSuchFile(lease.file.clone()))?;
                Outcome::Leased { lease, latest }
            }
            Op::ReleaseLease {
                peer_id,
                token_hash,
                lease_id,
            } => {
                self.authed_peer(&peer_id, &token_hash)?;
                let lease = self
                    .leases
                    .release(&lease_id, &peer_id, now)
                    .map_err(StateError::Lease)?;
                Outcome::LeaseReleased { file: lease.file }
            }
            Op::ExpireLeases { lease_ids } => {
                let expired = self.leases.expired(now);
                let lease_ids: Vec<String> = lease_ids
                    .into_iter()
                    .filter(|id| expired.binary_search(id).is_ok())
                    .filter(|id| self.leases.remove(id).is_some())
                    .collect();
                Outcome::LeasesExpired { lease_ids }
            }
        };
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

    /// Exact name first, then names containing every token of `query`, most holders first.
    /// Only files that some peer holds are listed.
    pub fn search(&self, query: &str, limit: usize) -> Vec<SearchResult> {
        let mut results = Vec::new();
        if limit == 0 {
            return results;
        }
        if let Some(r) = self.result_for(query) {
            results.push(r);
        }
        let query_tokens: BTreeSet<String> = tokenize(query).collect();
        let mut postings: Vec<&HashSet<String>> = Vec::with_capacity(query_tokens.len());
        for token in &query_tokens {
            match self.tokens.get(token) {
                Some(names) => postings.push(names),
                None => return results,
            }
        }
        postings.sort_by_key(|p| p.len());
        let Some((smallest, rest)) = postings.split_first() else {
            return results;
        };
        let mut matches: Vec<SearchResult> = smallest
            .iter()
            .filter(|name| name.as_str() != query)
            .filter(|name| rest.iter().all(|p| p.contains(*name)))
            .filter_map(|name| self.result_for(name))
            .collect();
        matches.sort_by(|a, b| {
            b.holders
                .len()
                .cmp(&a.holders.len())
                .then_with(|| a.name.cmp(&b.name))
        });
        results.extend(matches);
        results.truncate(limit);
        results
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
            let line =
                serde_json::to_string(&(id, &p.addr, &p.token_hash, &p.files)).unwrap_or_default();
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

    fn result_for(&self, name: &str) -> Option<SearchResult> {
        let entry = self.files.get(name)?;
        if entry.holders.is_empty() {
            return None;
        }
        let (version, info) = entry.latest()?;
        let mut holders = Vec::new();
        let mut stale_holders = Vec::new();
        for (peer_id, held) in &entry.holders {
            let Some(peer) = self.peers.get(peer_id) else {
                continue;
            };
            let holder = Holder {
                peer_id: peer_id.clone(),
                addr: peer.addr.clone(),
            };
            if *held == version {
                holders.push(holder);
            } else {
                stale_holders.push(holder);
            }
        }
        Some(SearchResult {
            name: name.to_string(),
            version,
            size: info.size,
            sha256: info.sha256.clone(),
            holders,
            stale_holders,
        })
    }

    fn authed_peer(&mut self, peer_id: &str, token_hash: &str) -> Result<&mut Peer, StateError> {
        let peer = self
            .peers
            .get_mut(peer_id)
            .ok_or_else(|| StateError::UnknownPeer(peer_id.to_string()))?;
        check_token(peer_id, peer, token_hash)?;
        Ok(peer)
    }

    /// Records what can be recorded and lists the rest; one bad file does not sink the batch.
    fn add_holdings(&mut self, peer_id: &str, files: Vec<FileMeta>, now: Millis) -> Vec<Rejected> {
        let mut rejected = Vec::new();
        for file in files {
            let claim = self.check_holding(&file).and_then(|claim| match claim {
                Claim::Known => Ok(()),
                Claim::Next => Err(format!(
                    "v{} of {} is newer than the index's v{}: publishing a new version \
                     needs a lease (use `update {}`)",
                    file.version,
                    file.name,
                    file.version - 1,
                    file.name
                )),
            });
            match claim {
                Ok(()) => self.add_holding(peer_id, file, now),
                Err(reason) => {
                    // The peer no longer counts as a holder of a name it could not record.
                    self.drop_holding(peer_id, &file.name);
                    rejected.push(Rejected {
                        name: file.name,
                        reason,
                        status: 409,
                        code: crate::protocol::ErrorCode::Conflict,
                    });
                }
            }
        }
        rejected
    }

    /// Whether a peer may claim `file`: one content per (name, version), and no version gaps.
    /// A name new to the index starts its history at whatever version the peer holds: v1
    /// for a new file, or a later one when the index lost its history in a restart.
    fn check_holding(&self, file: &FileMeta) -> Result<Claim, String> {
        let Some(entry) = self.files.get(&file.name) else {
            return Ok(Claim::Known);
        };
        if let Some(known) = entry.versions.get(&file.version) {
            if known.sha256 != file.sha256 || known.size != file.size {
                return Err(format!(
                    "{} v{} already exists with other content (sha256 {}); \
                     fetch that version or publish a new one",
                    file.name, file.version, known.sha256
                ));
            }
            return Ok(Claim::Known);
        }
        let latest = entry.latest_version();
        if latest.checked_add(1) == Some(file.version) {
            Ok(Claim::Next)
        } else if file.version > latest {
            Err(format!(
                "{} v{} skips versions: the latest known is v{latest}",
                file.name, file.version
            ))
        } else {
            // Older than the latest and unknown: history from before an index restart. The
            // holder is stale either way and will be told to fetch the latest.
            Ok(Claim::Known)
        }
    }

    /// Records a holding already checked by `check_holding`.
    fn add_holding(&mut self, peer_id: &str, file: FileMeta, now: Millis) {
        let entry = match self.files.get_mut(&file.name) {
            Some(entry) => entry,
            None => {
                for token in tokenize(&file.name) {
                    self.tokens
                        .entry(token)
                        .or_default()
                        .insert(file.name.clone());
                }
                self.files.entry(file.name.clone()).or_default()
            }
        };
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
        entry.holders.insert(peer_id.to_string(), file.version);
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
            if entry.holders.remove(peer_id).is_some() {
                if entry.holders.is_empty() {
                    self.held_files -= 1;
                }
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A file entry for `content`, as a peer would report it.
    pub(crate) fn meta(name: &str, version: u64, content: &str) -> FileMeta {
        FileMeta {
            name: name.into(),
            version,
            size: content.len() as u64,
            sha256: sha256_hex(content.as_bytes()),
        }
    }

    fn register(id: &str, files: Vec<FileMeta>) -> Op {
        Op::Register {
            peer_id: id.into(),
            token_hash: hash_token(&format!("tok-{id}")),
            addr: format!("127.0.0.1:{}", 9000 + id.len()),
            files,
        }
    }

    fn announce(id: &str, file: FileMeta, lease_id: Option<&str>) -> Op {
        Op::Announce {
            peer_id: id.into(),
            token_hash: hash_token(&format!("tok-{id}")),
            file,
            lease_id: lease_id.map(String::from),
        }
    }

    fn lease(id: &str, file: &str, lease_id: &str, ttl_ms: u64) -> Op {
        Op::AcquireLease {
            peer_id: id.into(),
            token_hash: hash_token(&format!("tok-{id}")),
            file: file.into(),
            lease_id: lease_id.into(),
            ttl_ms,
        }
    }

    fn heartbeat(id: &str, added: Vec<FileMeta>, removed: Vec<&str>) -> Op {
        Op::Heartbeat {
            peer_id: id.into(),
            token_hash: hash_token(&format!("tok-{id}")),
            added,
            removed: removed.into_iter().map(String::from).collect(),
        }
    }

    #[test]
    fn register_then_search_finds_holders() {
        let mut s = IndexState::default();
        s.apply(register("a", vec![meta("doc.txt", 1, "hello")]), 10)
            .unwrap();
        s.apply(register("bb", vec![meta("doc.txt", 1, "hello")]), 11)
            .unwrap();
        let r = s.search("doc.txt", 10);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].version, 1);
        assert_eq!(r[0].holders.len(), 2);
        assert_eq!(s.seq(), 2);
        assert_eq!(s.peer_count(), 2);
    }

    #[test]
    fn keyword_search_uses_tokens_and_puts_exact_first() {
        let mut s = IndexState::default();
        s.apply(
            register(
                "a",
                vec![
                    meta("Beatles - Help.mp3", 1, "x"),
                    meta("help", 1, "y"),
                    meta("help me.txt", 1, "z"),
                    meta("unrelated.mp3", 1, "w"),
                ],
            ),
            0,
        )
        .unwrap();
        let names: Vec<String> = s.search("help", 10).into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["help", "Beatles - Help.mp3", "help me.txt"]);
        let names: Vec<String> = s
            .search("HELP mp3", 10)
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, ["Beatles - Help.mp3"]);
        assert!(s.search("nothing", 10).is_empty());
        assert_eq!(s.search("help", 2).len(), 2);
        assert!(s.search("", 10).is_empty());
    }

    #[test]
    fn same_version_with_other_content_is_rejected() {
        let mut s = IndexState::default();
        s.apply(register("a", vec![meta("doc.txt", 1, "hello")]), 0)
            .unwrap();
        let out = s
            .apply(register("b", vec![meta("doc.txt", 1, "evil")]), 0)
            .unwrap();
        let Outcome::Registered { rejected, .. } = out else {
            panic!("{out:?}")
        };
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].name, "doc.txt");
        let r = s.search("doc.txt", 10);
        assert_eq!(r[0].holders.len(), 1);
        assert_eq!(r[0].sha256, meta("doc.txt", 1, "hello").sha256);

        let err = s
            .apply(
                Op::Announce {
                    peer_id: "b".into(),
                    token_hash: hash_token("tok-b"),
                    file: meta("doc.txt", 1, "evil"),
                    lease_id: None,
                },
                0,
            )
            .unwrap_err();
        assert!(matches!(err, StateError::Conflict(_)));
    }

    #[test]
    fn new_version_makes_old_holders_stale_and_gaps_are_refused() {
        let mut s = IndexState::default();
        s.apply(register("a", vec![meta("doc.txt", 1, "v1")]), 0)
            .unwrap();
        s.apply(register("b", vec![meta("doc.txt", 1, "v1")]), 0)
            .unwrap();
        s.apply(lease("a", "doc.txt", "L1", 1_000), 1).unwrap();
        s.apply(announce("a", meta("doc.txt", 2, "v2"), Some("L1")), 1)
            .unwrap();
        let r = &s.search("doc.txt", 10)[0];
        assert_eq!(r.version, 2);
        assert_eq!(r.holders.len(), 1);
        assert_eq!(r.holders[0].peer_id, "a");
        assert_eq!(r.stale_holders[0].peer_id, "b");

        let err = s
            .apply(
                Op::Announce {
                    peer_id: "b".into(),
                    token_hash: hash_token("tok-b"),
                    file: meta("doc.txt", 4, "v4"),
                    lease_id: None,
                },
                2,
            )
            .unwrap_err();
        assert!(matches!(err, StateError::Conflict(ref m) if m.contains("skips")));
    }

    #[test]
    fn wrong_token_and_unknown_peer_change_nothing() {
        let mut s = IndexState::default();
        s.apply(register("a", vec![meta("doc.txt", 1, "v1")]), 0)
            .unwrap();
        let before = s.digest();
        let hijack = Op::Register {
            peer_id: "a".into(),
            token_hash: hash_token("guess"),
            addr: "127.0.0.1:1".into(),
            files: vec![],
        };
        assert!(matches!(s.apply(hijack, 1), Err(StateError::BadToken(_))));
        assert!(matches!(
            s.apply(heartbeat("zz", vec![], vec![]), 1),
            Err(StateError::UnknownPeer(_))
        ));
        let unreg = Op::Unregister {
            peer_id: "a".into(),
            token_hash: hash_token("nope"),
        };
        assert!(matches!(s.apply(unreg, 1), Err(StateError::BadToken(_))));
        assert_eq!(s.digest(), before);
    }

    #[test]
    fn heartbeat_reports_additions_and_removals() {
        let mut s = IndexState::default();
        s.apply(register("a", vec![meta("one", 1, "1")]), 0)
            .unwrap();
        s.apply(heartbeat("a", vec![meta("two", 1, "2")], vec!["one"]), 5)
            .unwrap();
        assert!(s.search("one", 10).is_empty());
        assert_eq!(s.search("two", 10).len(), 1);
        assert_eq!(s.peer("a").unwrap().last_seen_ms, 5);
        // The history of "one" survives its last holder.
        assert!(s.file("one").is_some());
    }

    #[test]
    fn reregister_replaces_the_file_list() {
        let mut s = IndexState::default();
        s.apply(
            register("a", vec![meta("one", 1, "1"), meta("two", 1, "2")]),
            0,
        )
        .unwrap();
        s.apply(register("a", vec![meta("two", 1, "2")]), 1)
            .unwrap();
        assert!(s.search("one", 10).is_empty());
        assert_eq!(s.peer("a").unwrap().files.len(), 1);
    }

    #[test]
    fn prune_and_unregister_remove_holdings() {
        let mut s = IndexState::default();
        s.apply(register("a", vec![meta("f", 1, "1")]), 0).unwrap();
        s.apply(register("bb", vec![meta("f", 1, "1")]), 0).unwrap();
        s.apply(heartbeat("bb", vec![], vec![]), 5_000).unwrap();
        assert_eq!(s.silent_peers(6_000, 3_000), vec!["a".to_string()]);
        let out = s
            .apply(
                Op::Prune {
                    peers: s.silent_peers(6_000, 3_000),
                },
                6_000,
            )
            .unwrap();
        assert_eq!(
            out,
            Outcome::Pruned {
                peers: vec!["a".into()]
            }
        );
        assert_eq!(s.search("f", 10)[0].holders.len(), 1);
        assert_eq!(s.held_file_count(), 1);
        s.apply(
            Op::Unregister {
                peer_id: "bb".into(),
                token_hash: hash_token("tok-bb"),
            },
            7_000,
        )
        .unwrap();
        assert!(s.search("f", 10).is_empty());
        assert_eq!(s.peer_count(), 0);
        assert_eq!(s.held_file_count(), 0);
    }

    #[test]
    fn a_new_version_needs_the_publishers_live_lease_and_uses_it_up() {
        let mut s = IndexState::default();
        s.apply(register("a", vec![meta("doc", 1, "v1")]), 0)
            .unwrap();
        s.apply(register("b", vec![meta("doc", 1, "v1")]), 0)
            .unwrap();

        // Without a lease: neither a heartbeat nor an announce may publish v2.
        let out = s
            .apply(heartbeat("a", vec![meta("doc", 2, "x")], vec![]), 1)
            .unwrap();
        let Outcome::HeartbeatAccepted { rejected } = out else {
            panic!("{out:?}")
        };
        assert!(rejected[0].reason.contains("lease"), "{rejected:?}");
        let err = s
            .apply(announce("a", meta("doc", 2, "x"), None), 1)
            .unwrap_err();
        assert!(matches!(err, StateError::Conflict(ref m) if m.contains("lease")));
        assert_eq!(s.file("doc").unwrap().latest_version(), 1);

        // One lease at a time; the loser learns who holds it and for how long.
        let out = s.apply(lease("a", "doc", "La", 1_000), 10).unwrap();
        let Outcome::Leased {
            lease: granted,
            latest,
        } = out
        else {
            panic!("{out:?}")
        };
        assert_eq!((granted.lease_id.as_str(), latest.version), ("La", 1));
        assert_eq!(
            s.apply(lease("b", "doc", "Lb", 1_000), 110),
            Err(StateError::Lease(LeaseError::Held {
                file: "doc".into(),
                holder: "a".into(),
                remaining_ms: 900
            }))
        );
        // Someone else's lease, or no such file.
        assert_eq!(
            s.apply(announce("b", meta("doc", 2, "y"), Some("La")), 120),
            Err(StateError::Lease(LeaseError::NotYours {
                holder: "a".into()
            }))
        );
        assert!(matches!(
            s.apply(lease("b", "nothing", "Lb", 1_000), 120),
            Err(StateError::NoSuchFile(_))
        ));

        s.apply(announce("a", meta("doc", 2, "x"), Some("La")), 200)
            .unwrap();
        assert_eq!(s.file("doc").unwrap().latest_version(), 2);
        assert!(s.leases().is_empty(), "a publish spends the lease");
        assert_eq!(
            s.apply(announce("a", meta("doc", 3, "z"), Some("La")), 210),
            Err(StateError::Lease(LeaseError::Unknown))
        );
        // The file is free again; b is stale now, and can copy v2 without a lease.
        s.apply(lease("b", "doc", "Lb", 1_000), 220).unwrap();
        s.apply(announce("b", meta("doc", 2, "x"), None), 230)
            .unwrap();
        assert_eq!(s.search("doc", 1)[0].holders.len(), 2);
        // A retried publish of what is now an existing version is accepted as a copy.
        s.apply(announce("a", meta("doc", 2, "x"), Some("La")), 240)
            .unwrap();
    }

    #[test]
    fn expired_leases_are_worthless_and_swept() {
        let mut s = IndexState::default();
        s.apply(register("a", vec![meta("doc", 1, "v1")]), 0)
            .unwrap();
        s.apply(register("b", vec![]), 0).unwrap();
        s.apply(lease("a", "doc", "La", 100), 0).unwrap();
        s.apply(
            Op::RenewLease {
                peer_id: "a".into(),
                token_hash: hash_token("tok-a"),
                lease_id: "La".into(),
                ttl_ms: 100,
            },
            50,
        )
        .unwrap();
        assert!(s.leases().expired(149).is_empty());
        assert_eq!(
            s.apply(announce("a", meta("doc", 2, "x"), Some("La")), 160),
            Err(StateError::Lease(LeaseError::Expired { ago_ms: 10 }))
        );
        // Expired means free, even before the sweeper comes by.
        let before = s.leases().expired(160);
        assert_eq!(before, vec!["La".to_string()]);
        s.apply(lease("b", "doc", "Lb", 100), 170).unwrap();
        // The sweeper removes only what is still expired when its op applies.
        let out = s
            .apply(
                Op::ExpireLeases {
                    lease_ids: vec!["La".into(), "Lb".into()],
                },
                180,
            )
            .unwrap();
        assert_eq!(
            out,
            Outcome::LeasesExpired {
                lease_ids: Vec::new()
            }
        );
        assert_eq!(s.leases().len(), 1);
        s.apply(
            Op::ExpireLeases {
                lease_ids: s.leases().expired(300),
            },
            300,
        )
        .unwrap();
        assert!(s.leases().is_empty());
        assert_eq!(
            s.apply(announce("b", meta("doc", 2, "x"), Some("Lb")), 300),
            Err(StateError::Lease(LeaseError::Unknown))
        );
    }

    #[test]
    fn a_lease_is_for_one_file_and_goes_with_its_peer() {
        let mut s = IndexState::default();
        s.apply(
            register("a", vec![meta("one", 1, "1"), meta("two", 1, "2")]),
            0,
        )
        .unwrap();
        s.apply(lease("a", "one", "L1", 1_000), 0).unwrap();
        assert_eq!(
            s.apply(announce("a", meta("two", 2, "x"), Some("L1")), 1),
            Err(StateError::Lease(LeaseError::OtherFile {
                leased: "one".into()
            }))
        );
        s.apply(
            Op::Prune {
                peers: vec!["a".into()],
            },
            2,
        )
        .unwrap();
        assert!(
            s.leases().is_empty(),
            "a pruned peer's lease frees its file"
        );
    }

    #[test]
    fn interleaved_publishers_never_lose_or_duplicate_a_version() {
        let mut seed = 7u64;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let peers: Vec<String> = (0..20).map(|i| format!("p{i}")).collect();
        let mut s = IndexState::default();
        s.apply(register("p0", vec![meta("f", 1, "0")]), 0).unwrap();
        for p in &peers[1..] {
            s.apply(register(p, vec![]), 0).unwrap();
        }
        // Each peer: take the lease, then later publish what it believes is the next version.
        let mut plans: Vec<Option<(String, u64)>> = vec![None; peers.len()];
        let mut published = Vec::new();
        for step in 1..4_000u64 {
            let i = next(peers.len() as u64) as usize;
            let id = &peers[i];
            match plans[i].take() {
                None => {
                    let lease_id = format!("L{step}");
                    if let Ok(Outcome::Leased { lease, latest }) =
                        s.apply(lease(id, "f", &lease_id, 50), step)
                    {
                        plans[i] = Some((lease.lease_id, latest.version + 1));
                    }
                }
                Some((lease_id, version)) => {
                    let content = format!("{id}@{step}");
                    let file = meta("f", version, &content);
                    if s.apply(announce(id, file.clone(), Some(&lease_id)), step)
                        .is_ok()
                    {
                        published.push(file);
                    }
                }
            }
            if step % 97 == 0 {
                let expired = s.leases().expired(step);
                s.apply(Op::ExpireLeases { lease_ids: expired }, step)
                    .unwrap();
            }
        }
        assert!(published.len() > 50, "only {} publishes", published.len());
        let entry = s.file("f").unwrap();
        assert_eq!(entry.latest_version(), published.len() as u64 + 1);
        let versions: Vec<u64> = entry.versions.keys().copied().collect();
        assert_eq!(
            versions,
            (1..=published.len() as u64 + 1).collect::<Vec<_>>()
        );
        for file in &published {
            assert_eq!(entry.versions[&file.version].sha256, file.sha256);
        }
    }

    #[test]
    fn a_restored_snapshot_equals_the_original_and_liveness_is_not_sequenced() {
        let mut one = IndexState::default().with_epoch("e1".into());
        one.apply(
            register("a", vec![meta("x y", 1, "1"), meta("z", 1, "2")]),
            1,
        )
        .unwrap();
        one.apply(register("bb", vec![meta("x y", 1, "1")]), 2)
            .unwrap();
        one.apply(lease("a", "z", "L1", 100), 3).unwrap();
        let (seq, digest) = (one.seq(), one.digest());
        one.touch("bb", &hash_token("tok-bb"), 50).unwrap();
        assert_eq!((one.seq(), one.digest()), (seq, digest.clone()));
        assert!(one.touch("bb", &hash_token("guess"), 60).is_err());

        let json = serde_json::to_string(&one.snapshot()).unwrap();
        let mut two = IndexState::restore(serde_json::from_str(&json).unwrap());
        let direct = one.snapshot_json().unwrap();
        let three = IndexState::restore(serde_json::from_slice(&direct).unwrap());
        assert_eq!(
            three.digest(),
            digest,
            "the direct encoding reads back the same"
        );
        assert_eq!(two.digest(), digest);
        assert_eq!(two.epoch(), "e1");
        assert_eq!(two.search("x", 10), one.search("x", 10));
        assert_eq!(two.held_file_count(), one.held_file_count());
        assert_eq!(two.peer("bb").unwrap().last_seen_ms, 50);
        check_invariants(&two);
        // Both go on the same way from there.
        for (op, now) in [
            (announce("a", meta("z", 2, "3"), Some("L1")), 60),
            (heartbeat("bb", vec![], vec!["x y"]), 61),
        ] {
            one.apply(op.clone(), now).unwrap();
            two.apply(op, now).unwrap();
        }
        assert_eq!(one.digest(), two.digest());
        let mut three = IndexState::default();
        three.set_liveness(&one.liveness());
        assert_eq!(
            three.peer_count(),
            0,
            "liveness of unknown peers is ignored"
        );
    }

    /// Everything derived must agree with what it is derived from.
    fn check_invariants(s: &IndexState) {
        let held = s.files.values().filter(|f| !f.holders.is_empty()).count();
        assert_eq!(s.held_file_count(), held);
        for (id, peer) in &s.peers {
            for name in &peer.files {
                assert!(s.files[name].holders.contains_key(id), "{id} lists {name}");
            }
        }
        for (name, entry) in &s.files {
            for (id, version) in &entry.holders {
                assert!(s.peers[id].files.contains(name), "{name} lists {id}");
                assert!(entry.versions.contains_key(version));
            }
            for token in tokenize(name) {
                assert!(s.tokens[&token].contains(name));
            }
        }
        for (file, lease) in s.leases().canonical() {
            assert_eq!(file, lease.file);
            assert!(s.files.contains_key(file), "lease on unknown {file}");
            assert!(s.peers.contains_key(&lease.peer_id), "lease of a peer gone");
        }
    }

    #[test]
    fn random_op_sequences_keep_the_invariants() {
        // A small deterministic generator: the same sequence on every run.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut s = IndexState::default();
        let peers = ["a", "bb", "ccc", "dddd"];
        let names = ["x", "y z", "Z.mp3", "w"];
        for step in 0..5_000u64 {
            let id = peers[next(4) as usize];
            let name = names[next(4) as usize];
            let file = meta(name, 1 + next(3), &format!("{name}{}", next(2)));
            let op = match next(9) {
                0 => register(id, vec![file]),
                1 => heartbeat(id, vec![file], vec![]),
                2 => heartbeat(id, vec![], vec![name]),
                3 => announce(id, file, Some(&format!("L{}", next(4)))),
                6 => lease(id, name, &format!("L{}", next(4)), next(20)),
                7 => Op::ReleaseLease {
                    peer_id: id.into(),
                    token_hash: hash_token(&format!("tok-{id}")),
                    lease_id: format!("L{}", next(4)),
                },
                4 => Op::Unregister {
                    peer_id: id.into(),
                    token_hash: hash_token(&format!("tok-{id}")),
                },
                5 => Op::Prune {
                    peers: s.silent_peers(step, next(50)),
                },
                _ => Op::ExpireLeases {
                    lease_ids: s.leases().expired(step),
                },
            };
            let before = s.seq();
            match s.apply(op, step) {
                Ok(_) => assert_eq!(s.seq(), before + 1),
                Err(_) => assert_eq!(s.seq(), before),
            }
            check_invariants(&s);
        }
        assert!(s.seq() > 1_000, "most ops should apply");
    }

    #[test]
    fn replaying_the_same_ops_gives_the_same_digest() {
        let ops = vec![
            (
                register("a", vec![meta("x", 1, "1"), meta("y z", 1, "2")]),
                1,
            ),
            (register("b", vec![meta("x", 1, "1")]), 2),
            (lease("a", "x", "L1", 10), 3),
            (announce("a", meta("x", 2, "3"), Some("L1")), 3),
            (heartbeat("a", vec![], vec!["y z"]), 3),
            (
                Op::Prune {
                    peers: vec!["b".into()],
                },
                4,
            ),
        ];
        let mut one = IndexState::default();
        let mut two = IndexState::with_capacity(100, 100);
        for (op, now) in &ops {
            one.apply(op.clone(), *now).unwrap();
        }
        let mut digests = vec![];
        for (op, now) in ops {
            two.apply(op, now).unwrap();
            digests.push(two.digest());
        }
        assert_eq!(one.digest(), two.digest());
        digests.dedup();
        assert_eq!(digests.len(), 6, "every op changes the digest");
    }
}
