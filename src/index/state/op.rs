//! The vocabulary of the state machine: every change is an [`Op`], one typed command per kind,
//! each with its own typed outcome; a refused op says why in a [`StateError`]. Nothing here
//! knows HTTP: the edges map errors to answers.

use serde::{Deserialize, Serialize};

use super::limits::{Limit, Limits};
use super::IndexState;
use crate::clock::Millis;
use crate::index::lease::{Lease, LeaseError};
use crate::protocol::FileMeta;

/// A peer joins or rejoins with its whole file list; its previous holdings are replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    pub peer_id: String,
    pub token_hash: String,
    pub addr: String,
    pub files: Vec<FileMeta>,
    /// What the peer may hold (see `limits`); none in ops logged before there were limits.
    #[serde(default, skip_serializing_if = "Limits::is_none")]
    pub limits: Limits,
}

/// Liveness plus the changes of the peer's file list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub peer_id: String,
    pub token_hash: String,
    pub added: Vec<FileMeta>,
    pub removed: Vec<String>,
    #[serde(default, skip_serializing_if = "Limits::is_none")]
    pub limits: Limits,
}

/// "I now hold this file at this version." A version after the latest needs the peer's live
/// lease on the file, and uses it up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    pub peer_id: String,
    pub token_hash: String,
    pub file: FileMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<String>,
    #[serde(default, skip_serializing_if = "Limits::is_none")]
    pub limits: Limits,
}

/// A graceful leave: the peer and its holdings go away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unregister {
    pub peer_id: String,
    pub token_hash: String,
}

/// Peers found silent for too long; they go as if they had unregistered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prune {
    pub peers: Vec<String>,
}

/// Asks for the right to publish the next version of `file` for `ttl_ms`. `lease_id` is drawn
/// at the edge; a peer that already holds the lease keeps its old id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcquireLease {
    pub peer_id: String,
    pub token_hash: String,
    pub file: String,
    pub lease_id: String,
    pub ttl_ms: u64,
}

/// Extends a live lease to `ttl_ms` from now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewLease {
    pub peer_id: String,
    pub token_hash: String,
    pub lease_id: String,
    pub ttl_ms: u64,
}

/// Gives a lease back without publishing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseLease {
    pub peer_id: String,
    pub token_hash: String,
    pub lease_id: String,
}

/// Leases found expired by the sweeper; those still expired at `now` are removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpireLeases {
    pub lease_ids: Vec<String>,
}

/// Forgets the histories of names no peer has held since `before_ms` (or earlier), oldest
/// first and at most `max_names` of them, so that one op does bounded work under the write
/// lock; the sweeper applies as many as are due. A history whose name has a lease is kept a
/// while longer (its time starts again at the op's `at`): someone means to publish it.
///
/// The op names a time, not the names: what is forgotten follows from the state, the same on
/// the primary, its shadows and a replay, and the op stays a few bytes however many go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgetHistories {
    pub before_ms: Millis,
    pub max_names: usize,
}

/// Everything that can change the index, as it is logged and shipped to shadows (JSON with
/// an `op` tag and the command's fields beside it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    Register(Register),
    Heartbeat(Heartbeat),
    Announce(Announce),
    Unregister(Unregister),
    Prune(Prune),
    AcquireLease(AcquireLease),
    RenewLease(RenewLease),
    ReleaseLease(ReleaseLease),
    ExpireLeases(ExpireLeases),
    ForgetHistories(ForgetHistories),
}

impl Op {
    /// About how much work the op is, to apply or to ship: one, plus one per file it lists
    /// (or may forget). What bounds the shadows' backlog and what the journal counts towards
    /// a snapshot.
    pub fn weight(&self) -> usize {
        1 + match self {
            Op::Register(r) => r.files.len(),
            Op::Heartbeat(h) => h.added.len() + h.removed.len(),
            Op::Prune(p) => p.peers.len(),
            Op::ExpireLeases(e) => e.lease_ids.len(),
            // Counted up to a bound: the primary's ops forget at most `FORGET_PER_OP`, and
            // a number read from a damaged log must not overflow a sum.
            Op::ForgetHistories(f) => f.max_names.min(1 << 16),
            _ => 0,
        }
    }
}

/// One op as applied: its sequence number and the primary's clock when it applied. The
/// record format of the journal on disk and of the stream to shadows alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedOp {
    pub seq: u64,
    pub at: Millis,
    pub op: Op,
}

/// A command the state machine runs, with the outcome its caller gets back.
pub trait Command: Clone + Into<Op> {
    type Outcome;

    /// Applies the command to `state` at `now`. On `Err` nothing changed. (Called through
    /// [`IndexState::execute`], which also counts the sequence number.)
    fn apply_to(self, state: &mut IndexState, now: Millis) -> Result<Self::Outcome, StateError>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// False when an existing peer registered again.
    pub new_peer: bool,
    pub refused: Vec<Refusal>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatAccepted {
    pub refused: Vec<Refusal>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announced {
    /// The newest version of the file after the announce.
    pub latest_version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unregistered;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pruned {
    pub peers: Vec<String>,
}

/// A lease granted or renewed, with the file's latest version as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leased {
    pub lease: Lease,
    pub latest: FileMeta,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseReleased {
    pub file: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeasesExpired {
    pub lease_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoriesForgotten {
    /// Names forgotten by this op.
    pub names: usize,
    /// Histories kept because their name has a lease (their time starts again).
    pub kept: usize,
    /// More histories are due at `before_ms`: apply another.
    pub more: bool,
}

/// What any op did, for callers that apply ops of every kind (replay, shadows, tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Registered(Registered),
    HeartbeatAccepted(HeartbeatAccepted),
    Announced(Announced),
    Unregistered(Unregistered),
    Pruned(Pruned),
    Leased(Leased),
    LeaseReleased(LeaseReleased),
    LeasesExpired(LeasesExpired),
    HistoriesForgotten(HistoriesForgotten),
}

/// A file of a register or heartbeat the index could not record for the peer (the rest of
/// the list still counts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub name: String,
    pub why: Refused,
}

/// Why a file of a list was not recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// It contradicts the file's history.
    Conflict(Conflict),
    /// It would break a per-peer limit.
    Limit(Limit),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Conflict(why) => write!(f, "{why}"),
            Refused::Limit(why) => write!(f, "{why}"),
        }
    }
}

/// How a claimed holding contradicts a file's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conflict {
    /// The version is known with other content.
    OtherContent {
        name: String,
        version: u64,
        sha256: String,
    },
    /// The version skips versions after the latest known.
    VersionGap {
        name: String,
        version: u64,
        latest: u64,
    },
    /// The version right after the latest: publishing it needs a lease. `in_list` when the
    /// claim came in a file list (register, heartbeat) rather than an announce.
    LeaseRequired {
        name: String,
        version: u64,
        in_list: bool,
    },
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Conflict::OtherContent {
                name,
                version,
                sha256,
            } => write!(
                f,
                "{name} v{version} already exists with other content (sha256 {sha256}); \
                 fetch that version or publish a new one"
            ),
            Conflict::VersionGap {
                name,
                version,
                latest,
            } => write!(
                f,
                "{name} v{version} skips versions: the latest known is v{latest}"
            ),
            Conflict::LeaseRequired {
                name,
                version,
                in_list: true,
            } => write!(
                f,
                "v{version} of {name} is newer than the index's v{}: publishing a new version \
                 needs a lease (use `update {name}`)",
                version - 1
            ),
            Conflict::LeaseRequired {
                name,
                version,
                in_list: false,
            } => write!(
                f,
                "{name} v{version} would be a new version: publishing it needs a lease"
            ),
        }
    }
}

/// Why an op was refused. A refused op changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateError {
    /// The peer id is unknown (never registered, pruned, or the index restarted).
    UnknownPeer(String),
    /// The token does not belong to the peer id.
    BadToken(String),
    /// The op contradicts what the index already holds.
    Conflict(Conflict),
    /// No version of this file is known.
    NoSuchFile(String),
    /// A lease could not be granted or used.
    Lease(LeaseError),
    /// A per-peer limit (an announce of a name the peer does not hold yet).
    Limit(Limit),
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateError::UnknownPeer(id) => write!(f, "unknown peer {id}; register again"),
            StateError::BadToken(id) => write!(f, "wrong token for peer {id}"),
            StateError::Conflict(why) => write!(f, "{why}"),
            StateError::NoSuchFile(name) => write!(f, "no version of {name} is known"),
            StateError::Lease(e) => write!(f, "{e}"),
            StateError::Limit(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StateError {}

/// Wires each command to its `IndexState` method and to its place in `Op` and `Outcome`.
macro_rules! commands {
    ($($command:ident => $method:ident -> $outcome:ident),* $(,)?) => {
        $(
            impl From<$command> for Op {
                fn from(command: $command) -> Op {
                    Op::$command(command)
                }
            }

            impl Command for $command {
                type Outcome = $outcome;

                fn apply_to(
                    self,
                    state: &mut IndexState,
                    now: Millis,
                ) -> Result<$outcome, StateError> {
                    state.$method(self, now)
                }
            }
        )*

        impl Op {
            /// Applies whichever command this is (see [`IndexState::apply`]).
            pub(super) fn apply_to(
                self,
                state: &mut IndexState,
                now: Millis,
            ) -> Result<Outcome, StateError> {
                match self {
                    $(Op::$command(command) => state.$method(command, now).map(Outcome::$outcome),)*
                }
            }
        }
    };
}

commands! {
    Register => register -> Registered,
    Heartbeat => heartbeat -> HeartbeatAccepted,
    Announce => announce -> Announced,
    Unregister => unregister -> Unregistered,
    Prune => prune -> Pruned,
    AcquireLease => acquire_lease -> Leased,
    RenewLease => renew_lease -> Leased,
    ReleaseLease => release_lease -> LeaseReleased,
    ExpireLeases => expire_leases -> LeasesExpired,
    ForgetHistories => forget_histories -> HistoriesForgotten,
}
