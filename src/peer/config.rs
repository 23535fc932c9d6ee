//! The peer's settings, and the checks that turn a bad setting into a message saying what to
//! do. `nap-peer` only maps its flags here; it must not judge them itself, so every way of
//! starting a peer refuses the same settings with the same words.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// The shared folder.
    pub dir: PathBuf,
    /// Where the file server listens (`host:port`; port 0 picks a free one).
    pub listen: String,
    /// The `host:port` other peers should use, when it differs from the bound address
    /// (listening on 0.0.0.0, NAT).
    pub advertise: Option<String>,
    /// Index servers in order of preference.
    pub index: Vec<String>,
    /// Bound on each phase of an index call; the connect phase gets a quarter.
    pub index_timeout: Duration,
    /// How often the shared folder is rescanned for added, changed and removed files.
    pub rescan_interval: Duration,
    /// Concurrent uploads to other peers.
    pub upload_slots: usize,
    /// Requests in flight (and open connections) the file server takes at most.
    pub max_connections: usize,
    /// A connection to the file server without a request for this long is closed.
    pub idle_timeout: Duration,
    /// A request's head and each part of an answer (a file) must move within this time, and
    /// move `net::MIN_RATE` over every span of it, or the connection is closed and its upload
    /// slot freed. Also the longest a download waits for a free slot.
    pub request_timeout: Duration,
}

/// Connections the file server takes unless told otherwise (fewer if the open-file limit
/// cannot hold them).
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

impl Default for PeerConfig {
    fn default() -> Self {
        PeerConfig {
            dir: PathBuf::from("."),
            listen: "127.0.0.1:0".into(),
            advertise: None,
            index: vec!["http://127.0.0.1:7070".into()],
            index_timeout: Duration::from_secs(2),
            rescan_interval: Duration::from_secs(10),
            upload_slots: 4,
            max_connections: crate::net::connections::fitting(DEFAULT_MAX_CONNECTIONS),
            idle_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// A setting the peer cannot run with. Messages name the flag, as the user typed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// No index server to talk to.
    NoIndex,
    /// A number of seconds that is negative, not a number, or too large (the flag's name).
    Seconds(&'static str),
    /// Every index call would time out before it started.
    ZeroIndexTimeout,
    /// The scanner would rescan without pause, hashing in a busy loop.
    ZeroRescanInterval,
    /// The file server would refuse every connection, or close each at once.
    ZeroConnectionLimit,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::NoIndex => f.write_str("--index needs at least one index server URL"),
            ConfigError::Seconds(flag) => {
                write!(f, "--{flag} must be a non-negative number of seconds")
            }
            ConfigError::ZeroIndexTimeout => f.write_str(
                "--index-timeout must be more than 0 seconds (2 is the default; it bounds each \
                 phase of an index call)",
            ),
            ConfigError::ZeroRescanInterval => f.write_str(
                "--rescan-interval must be more than 0 seconds (10 is the default; a short one \
                 such as 0.2 reports changes sooner)",
            ),
            ConfigError::ZeroConnectionLimit => f.write_str(
                "--max-connections, --idle-timeout and --request-timeout must be more than 0",
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

impl PeerConfig {
    /// Refuses settings the peer cannot run with, saying which and what to do.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.index.iter().any(|s| !s.trim().is_empty()) {
            return Err(ConfigError::NoIndex);
        }
        if self.index_timeout.is_zero() {
            return Err(ConfigError::ZeroIndexTimeout);
        }
        if self.rescan_interval.is_zero() {
            return Err(ConfigError::ZeroRescanInterval);
        }
        if self.max_connections == 0
            || self.idle_timeout.is_zero()
            || self.request_timeout.is_zero()
        {
            return Err(ConfigError::ZeroConnectionLimit);
        }
        Ok(())
    }
}

/// A flag's number of seconds as a duration; `flag` names it in the error.
pub fn seconds(flag: &'static str, value: f64) -> Result<Duration, ConfigError> {
    Duration::try_from_secs_f64(value).map_err(|_| ConfigError::Seconds(flag))
}

/// The index servers of a comma-separated list, in order; at least one.
pub fn index_list(list: &str) -> Result<Vec<String>, ConfigError> {
    let servers: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if servers.is_empty() {
        return Err(ConfigError::NoIndex);
    }
    Ok(servers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> PeerConfig {
        PeerConfig {
            max_connections: 8,
            ..PeerConfig::default()
        }
    }

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(valid().validate(), Ok(()));
    }

    #[test]
    fn settings_the_peer_cannot_run_with_are_refused_by_name() {
        let cases = [
            (
                PeerConfig {
                    index: vec![" ".into()],
                    ..valid()
                },
                ConfigError::NoIndex,
            ),
            (
                PeerConfig {
                    index_timeout: Duration::ZERO,
                    ..valid()
                },
                ConfigError::ZeroIndexTimeout,
            ),
            (
                PeerConfig {
                    rescan_interval: Duration::ZERO,
                    ..valid()
                },
                ConfigError::ZeroRescanInterval,
            ),
            (
                PeerConfig {
                    max_connections: 0,
                    ..valid()
                },
                ConfigError::ZeroConnectionLimit,
            ),
            (
                PeerConfig {
                    idle_timeout: Duration::ZERO,
                    ..valid()
                },
                ConfigError::ZeroConnectionLimit,
            ),
        ];
        for (config, error) in cases {
            assert_eq!(config.validate(), Err(error));
        }
        assert!(ConfigError::ZeroRescanInterval
            .to_string()
            .starts_with("--rescan-interval must be more than 0"));
    }

    #[test]
    fn flags_are_read_or_refused_with_their_name() {
        assert_eq!(
            seconds("idle-timeout", 1.5),
            Ok(Duration::from_millis(1500))
        );
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            let e = seconds("idle-timeout", bad).unwrap_err();
            assert_eq!(
                e.to_string(),
                "--idle-timeout must be a non-negative number of seconds"
            );
        }
        assert_eq!(
            index_list(" a , ,b ").unwrap(),
            vec!["a".to_string(), "b".to_string()]
        );
        assert_eq!(index_list(" , "), Err(ConfigError::NoIndex));
        assert_eq!(
            ConfigError::NoIndex.to_string(),
            "--index needs at least one index server URL"
        );
    }
}
