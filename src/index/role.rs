//! What an index is in a replicated pair, and what each role owns. A role is built whole from
//! the configuration; changing it (a shadow promoted, a primary fenced) is replacing this one
//! value, so nothing can be half primary and half shadow.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::backlog::Backlog;
use super::config::{IndexConfig, RoleConfig};
use super::copies::Copies;
use super::shadowing::ShadowLink;
use crate::threads::lock;

// One per index: the size of the larger variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Role {
    Primary(Primary),
    Shadow(Shadow),
}

/// A primary takes writes, plans copies, and ships its ops to its shadows.
pub struct Primary {
    /// One link per shadow, for pushes and `/status` (none: no shadows).
    pub links: Vec<Arc<ShadowLink>>,
    /// The ops the shadows have yet to receive; only with shadows.
    pub backlog: Option<Arc<Backlog>>,
    /// Replication: copies in flight and the planner's last picture.
    pub copies: Copies,
}

/// A shadow follows its primary's op stream and refuses writes.
pub struct Shadow {
    /// The primary's base URL (writes are sent there; snapshots come from there).
    pub primary: String,
    /// Asks the catch-up thread for a snapshot (the stream cannot be continued).
    resync: Sender<()>,
    resync_wanted: Receiver<()>,
    /// When the primary last pushed, on the index clock's monotonic time.
    last_sync: Mutex<Option<Duration>>,
}

impl Role {
    pub fn from_config(config: &IndexConfig) -> Role {
        match &config.role {
            RoleConfig::Primary { shadows } => {
                let links = shadows
                    .iter()
                    .map(|url| Arc::new(ShadowLink::new(url.clone())))
                    .collect();
                Role::Primary(Primary {
                    links,
                    backlog: (!shadows.is_empty()).then(|| Arc::new(Backlog::new(config.sync_log))),
                    copies: Copies::default(),
                })
            }
            RoleConfig::Shadow { primary } => {
                let (resync, resync_wanted) = crossbeam_channel::bounded(1);
                Role::Shadow(Shadow {
                    primary: primary.clone(),
                    resync,
                    resync_wanted,
                    last_sync: Mutex::new(None),
                })
            }
        }
    }

    /// "primary" or "shadow", as `/status`, `/health` and the metrics say it.
    pub fn name(&self) -> &'static str {
        match self {
            Role::Primary(_) => "primary",
            Role::Shadow(_) => "shadow",
        }
    }

    pub fn primary(&self) -> Option<&Primary> {
        match self {
            Role::Primary(p) => Some(p),
            Role::Shadow(_) => None,
        }
    }

    pub fn shadow(&self) -> Option<&Shadow> {
        match self {
            Role::Shadow(s) => Some(s),
            Role::Primary(_) => None,
        }
    }
}

impl Shadow {
    /// Asks for a snapshot; a request already waiting is enough.
    pub fn want_snapshot(&self) {
        let _ = self.resync.try_send(());
    }

    /// Ready when a snapshot is wanted (for the catch-up thread).
    pub fn snapshot_wanted(&self) -> &Receiver<()> {
        &self.resync_wanted
    }

    pub fn synced_at(&self, now: Duration) {
        *lock(&self.last_sync) = Some(now);
    }

    /// Time since the primary last pushed, at `now`.
    pub fn since_sync(&self, now: Duration) -> Option<Duration> {
        lock(&self.last_sync).map(|t| now.saturating_sub(t))
    }
}
