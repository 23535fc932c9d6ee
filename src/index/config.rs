//! How an index is configured: every flag of `nap-index` as a field, the defaults, and the
//! rules a configuration must meet ([`IndexConfig::validate`]), so that a bad flag is refused
//! with a clear message before anything starts, by the binary and by any other caller.

use std::path::PathBuf;
use std::time::Duration;

use super::journal::Fsync;
use super::state::{Limits, Rate};
use crate::protocol::base_url;

/// What this index server is configured to be in a replicated pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleConfig {
    /// Takes writes and pushes its ops to `shadows` (base URLs; may be empty).
    Primary { shadows: Vec<String> },
    /// Read-only copy of `primary`: answers reads, refuses writes with 403.
    Shadow { primary: String },
}

impl RoleConfig {
    /// The role from `--role`, `--shadow` (a comma-separated list) and `--primary`.
    pub fn from_flags(
        role: &str,
        shadow: Option<&str>,
        primary: Option<&str>,
    ) -> Result<RoleConfig, ConfigError> {
        let bad = |why: &str| Err(ConfigError::Role(why.to_string()));
        match (role, shadow, primary) {
            ("primary", shadows, None) => Ok(RoleConfig::Primary {
                shadows: shadows
                    .into_iter()
                    .flat_map(|list| list.split(','))
                    .filter(|s| !s.trim().is_empty())
                    .map(base_url)
                    .collect(),
            }),
            ("shadow", None, Some(primary)) if !primary.trim().is_empty() => {
                Ok(RoleConfig::Shadow {
                    primary: base_url(primary),
                })
            }
            ("primary", _, Some(_)) => bad("--primary is for --role shadow"),
            ("shadow", Some(_), _) => bad("--shadow is for --role primary"),
            ("shadow", _, _) => bad("--role shadow needs --primary URL"),
            (other, _, _) => bad(&format!("--role must be primary or shadow, not {other:?}")),
        }
    }

    /// Whether this index talks to another index (and so needs the cluster secret).
    pub fn is_replicated(&self) -> bool {
        match self {
            RoleConfig::Primary { shadows } => !shadows.is_empty(),
            RoleConfig::Shadow { .. } => true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct IndexConfig {
    /// Address to listen on, `host:port` (port 0 picks a free one).
    pub listen: String,
    /// Threads answering HTTP requests.
    pub workers: usize,
    /// How often peers are told to heartbeat.
    pub heartbeat_interval: Duration,
    /// A peer silent this long is pruned with its holdings.
    pub peer_timeout: Duration,
    /// Largest request body accepted, in bytes.
    pub max_body: usize,
    /// Longest file name taken, in bytes (at most the protocol's 255).
    pub max_name_bytes: usize,
    /// Most files one register or heartbeat may list.
    pub max_files_per_request: usize,
    /// Most names one peer may hold.
    pub max_files_per_peer: usize,
    /// Names new to the index one peer may add per minute, once its burst is used.
    pub new_names_per_minute: usize,
    /// Names new to the index one peer may add at once.
    pub new_names_burst: usize,
    /// How long the history of a name nobody holds is kept; `None`: for ever.
    pub history_retention: Option<Duration>,
    /// Most results one search may ask for.
    pub max_search_results: usize,
    /// Most tasks one answer carries (the rest follow in later ones).
    pub max_tasks_per_answer: usize,
    /// How long a write lease lasts unless renewed.
    pub lease_ttl: Duration,
    pub role: RoleConfig,
    /// Shared by the primary and its shadows; replication requests without it get 401.
    pub cluster_secret: Option<String>,
    /// Ops kept for shadows that are behind; one further behind catches up by snapshot.
    pub sync_log: usize,
    /// Up-to-date copies wanted of every file (1: no replication).
    pub replication_factor: usize,
    /// How often the replication planner runs (it also runs when ops change the picture).
    pub plan_interval: Duration,
    /// Copy tasks in flight per peer, at most.
    pub max_tasks_per_peer: usize,
    /// A copy task not done by then goes to another peer.
    pub task_timeout: Duration,
    /// Where the journal and snapshots live; `None` keeps everything in memory.
    pub data_dir: Option<PathBuf>,
    pub fsync: Fsync,
    /// Ops logged between snapshots (each snapshot lets the journal before it go).
    pub snapshot_every: u64,
    /// Requests in flight (and open connections) at most; each live peer holds one with its
    /// long-poll heartbeat.
    pub max_connections: usize,
    /// A connection without a request for this long is closed.
    pub idle_timeout: Duration,
    /// A request's head, its body and each part of its answer must move within this time
    /// (and move `net::MIN_RATE` over every span of it), or the connection is closed.
    pub request_timeout: Duration,
}

/// Connections taken unless told otherwise (fewer if the open-file limit cannot hold them).
pub const DEFAULT_MAX_CONNECTIONS: usize = 8192;

/// Names one peer may hold unless told otherwise: as many as one request may list, so a
/// peer can always register whatever list the index takes in one go. (The benchmarks' peers
/// hold 20 to 1,000.)
pub const DEFAULT_MAX_FILES_PER_PEER: usize = 100_000;

/// New names a minute per peer, after its burst (which is `--max-files-per-peer` unless told
/// otherwise: a peer can register a whole permitted list of names the index has never seen,
/// say after it lost them). 100 a minute is far more than people create by hand, and refills
/// a whole burst within a day; what it bounds is a peer that churns names (each leaves a
/// history behind for `--history-retention`): at most its burst plus 100 a minute of them.
pub const DEFAULT_NEW_NAMES_PER_MINUTE: usize = 100;

/// How long the history of a name nobody holds is kept unless told otherwise: a week, longer
/// than peers usually stay away, so a peer that comes back with an old copy within it finds
/// the newer version still known (and is told to fetch it).
pub const DEFAULT_HISTORY_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            listen: "127.0.0.1:7070".into(),
            workers: 4,
            heartbeat_interval: Duration::from_secs(5),
            peer_timeout: Duration::from_secs(15),
            max_body: 4 << 20,
            max_name_bytes: crate::protocol::MAX_NAME_LEN,
            max_files_per_request: 100_000,
            max_files_per_peer: DEFAULT_MAX_FILES_PER_PEER,
            new_names_per_minute: DEFAULT_NEW_NAMES_PER_MINUTE,
            new_names_burst: DEFAULT_MAX_FILES_PER_PEER,
            history_retention: Some(DEFAULT_HISTORY_RETENTION),
            max_search_results: crate::protocol::MAX_SEARCH_LIMIT,
            max_tasks_per_answer: 64,
            lease_ttl: Duration::from_secs(60),
            role: RoleConfig::Primary {
                shadows: Vec::new(),
            },
            cluster_secret: None,
            sync_log: 65_536,
            replication_factor: 2,
            plan_interval: Duration::from_secs(1),
            max_tasks_per_peer: 4,
            task_timeout: Duration::from_secs(60),
            data_dir: None,
            fsync: Fsync::Always,
            snapshot_every: 100_000,
            max_connections: crate::net::connections::fitting(DEFAULT_MAX_CONNECTIONS),
            idle_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// A configuration the index cannot run with; the message names the flag and what it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// `--role`, `--shadow` and `--primary` do not fit together.
    Role(String),
    /// Replicating without `--cluster-secret` (or `NAP_CLUSTER_SECRET`).
    NoSecret,
    /// A flag that must be more than zero (its name).
    Zero(&'static str),
    /// `--max-name-bytes` outside 1-255.
    NameBytes(usize),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Role(why) => f.write_str(why),
            ConfigError::NoSecret => f.write_str(
                "replication needs a cluster secret (--cluster-secret or NAP_CLUSTER_SECRET)",
            ),
            ConfigError::Zero(flag) => write!(f, "--{flag} must be more than 0"),
            ConfigError::NameBytes(n) => write!(
                f,
                "--max-name-bytes must be 1-{}, not {n}",
                crate::protocol::MAX_NAME_LEN
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

impl IndexConfig {
    /// Checks the rules a configuration must meet; the first one broken is the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("max-connections", self.max_connections > 0),
            ("idle-timeout", !self.idle_timeout.is_zero()),
            ("request-timeout", !self.request_timeout.is_zero()),
            ("replication-factor", self.replication_factor > 0),
            ("max-tasks-per-peer", self.max_tasks_per_peer > 0),
            ("plan-interval", !self.plan_interval.is_zero()),
            ("task-timeout", !self.task_timeout.is_zero()),
            ("max-files-per-request", self.max_files_per_request > 0),
            ("max-files-per-peer", self.max_files_per_peer > 0),
            ("new-names-per-minute", self.new_names_per_minute > 0),
            ("new-names-burst", self.new_names_burst > 0),
            // `None` keeps histories for ever (the flag's 0); a zero retention would forget
            // every history the moment its last holder left.
            (
                "history-retention",
                self.history_retention.is_none_or(|d| !d.is_zero()),
            ),
            ("max-search-results", self.max_search_results > 0),
            ("max-tasks-per-answer", self.max_tasks_per_answer > 0),
            ("lease-ttl", !self.lease_ttl.is_zero()),
        ];
        if let Some((flag, _)) = positive.iter().find(|(_, ok)| !ok) {
            return Err(ConfigError::Zero(flag));
        }
        if !(1..=crate::protocol::MAX_NAME_LEN).contains(&self.max_name_bytes) {
            return Err(ConfigError::NameBytes(self.max_name_bytes));
        }
        let secret = self.cluster_secret.as_deref().unwrap_or("");
        if self.role.is_replicated() && secret.is_empty() {
            return Err(ConfigError::NoSecret);
        }
        Ok(())
    }

    /// The per-peer limits ops are applied under (carried in each op: see `state::limits`).
    pub fn limits(&self) -> Limits {
        Limits {
            max_files: Some(self.max_files_per_peer as u64),
            new_names: Some(Rate {
                per_minute: self.new_names_per_minute as u64,
                burst: self.new_names_burst as u64,
            }),
        }
    }

    /// What is allowed but probably not meant, for the binary to warn about.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();

        if self.peer_timeout <= self.heartbeat_interval {
            warnings.push(
                "--peer-timeout is not longer than --heartbeat-interval: live peers will be pruned"
                    .to_string(),
            );
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_come_from_the_flags_that_fit_them() {
        assert_eq!(
            RoleConfig::from_flags("primary", Some("a:1, http://b:2/"), None),
            Ok(RoleConfig::Primary {
                shadows: vec!["http://a:1".into(), "http://b:2".into()]
            })
        );
        assert_eq!(
            RoleConfig::from_flags("shadow", None, Some("p:1")),
            Ok(RoleConfig::Shadow {
                primary: "http://p:1".into()
            })
        );
        for (role, shadow, primary) in [
            ("primary", None, Some("p:1")),
            ("shadow", Some("s:1"), Some("p:1")),
            ("shadow", None, None),
            ("leader", None, None),
        ] {
            assert!(RoleConfig::from_flags(role, shadow, primary).is_err());
        }
    }

    #[test]
    fn bad_configurations_are_refused_with_the_flag_named() {
        assert_eq!(IndexConfig::default().validate(), Ok(()));
        let zero_ttl = IndexConfig {
            lease_ttl: Duration::ZERO,
            ..IndexConfig::default()
        };
        assert_eq!(
            zero_ttl.validate().unwrap_err().to_string(),
            "--lease-ttl must be more than 0"
        );
        let long_names = IndexConfig {
            max_name_bytes: 256,
            ..IndexConfig::default()
        };
        assert!(long_names.validate().is_err());
        let secretless = IndexConfig {
            role: RoleConfig::Shadow {
                primary: "http://p:1".into(),
            },
            ..IndexConfig::default()
        };
        assert_eq!(secretless.validate(), Err(ConfigError::NoSecret));
        let quick_prune = IndexConfig {
            peer_timeout: Duration::from_secs(1),
            ..IndexConfig::default()
        };
        assert_eq!(quick_prune.warnings().len(), 1);
    }
}
