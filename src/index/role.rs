//! What an index is in a replicated pair, and what each role owns. A role is built whole from
//! the configuration; changing it (a shadow promoted, a primary fenced) is replacing this one
//! value, so nothing can be half primary and half shadow.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::backlog::Backlog;
use super::config::{IndexConfig, RoleConfig};
use super::planner::InFlight;
use crate::protocol::{ShadowState, UnderReplicatedFile};
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

/// The primary's replication books.
pub struct Copies {
    flight: Mutex<InFlight>,
    /// The files below R after the planner's last pass.
    pub(super) under_replicated: Mutex<Vec<UnderReplicatedFile>>,
    /// Wakes the planner (a pass soon, not at the next interval).
    wake: Sender<()>,
    woken: Receiver<()>,
}

impl Default for Copies {
    fn default() -> Copies {
        let (wake, woken) = crossbeam_channel::bounded(1);
        Copies {
            flight: Mutex::default(),
            under_replicated: Mutex::default(),
            wake,
            woken,
        }
    }
}

impl Copies {
    /// The copy tasks in flight (the planner's books).
    pub fn flight(&self) -> MutexGuard<'_, InFlight> {
        lock(&self.flight)
    }

    /// Asks for a planning pass soon.
    pub fn replan(&self) {
        let _ = self.wake.try_send(());
    }

    /// Ready when a pass is asked for (for the planner thread).
    pub fn woken(&self) -> &Receiver<()> {
        &self.woken
    }
}

/// The primary's link to one shadow: where it is and how far it got.
pub struct ShadowLink {
    pub url: String,
    /// Its progress, and when it last acknowledged (the index clock's monotonic time).
    state: Mutex<(ShadowState, Option<Duration>)>,
}

impl ShadowLink {
    pub fn new(url: String) -> ShadowLink {
        ShadowLink {
            state: Mutex::new((
                ShadowState {
                    url: url.clone(),
                    ..ShadowState::default()
                },
                None,
            )),
            url,
        }
    }

    /// Its progress against the primary's `primary_seq`, at monotonic time `now`.
    pub fn status(&self, primary_seq: u64, now: Duration) -> ShadowState {
        let state = lock(&self.state);
        let mut status = state.0.clone();
        status.lag = primary_seq.saturating_sub(status.acked_seq);
        status.last_ack_ms_ago = state.1.map(|t| now.saturating_sub(t).as_millis() as u64);
        status
    }

    /// The shadow acknowledged `seq` at monotonic time `now`.
    pub(super) fn acked(&self, seq: u64, now: Duration) {
        let mut state = lock(&self.state);
        state.0.acked_seq = seq;
        state.0.error = None;
        state.1 = Some(now);
    }

    /// A push failed; `/status` shows why until the next one gets through.
    pub(super) fn failed(&self, why: &dyn std::fmt::Display) {
        lock(&self.state).0.error = Some(why.to_string());
    }
}
