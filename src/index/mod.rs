//! The central index server: a deterministic state machine (`state`, with its `lease` table)
//! at the centre, and thin edges around it.
//!
//! - `core`: the [`Index`] that holds the state, the clock and id source it is handed, its
//!   `role` and its `journal`; `step` applies an op and returns its effects as a value.
//! - `http`: the HTTP edge (routing, handlers, acknowledgement after the disk, long polls).
//! - `journal` on a `disk`: the op stream made durable, with snapshots.
//! - `shadowing` with the primary's `backlog`: the op stream shipped to read-only shadows.
//! - `copies`, around the pure `planner`: copy tasks for peers, so every file keeps R copies.
//! - `sweep`: silent peers and expired leases, removed by ops.
//! - `metrics` and `dashboard`: what the index shows about itself.
//! - `config` and `server`: how an index is configured, started and stopped.
//!
//! Every change goes through one place, `Index::submit` (or the sweeps beside it), where an op
//! meets the clock and the write lock. A shadow's state changes only by its primary's ops and
//! snapshots.

pub mod backlog;
pub mod config;
pub mod copies;
pub mod core;
pub mod dashboard;
pub mod disk;
pub mod http;
pub mod journal;
pub mod lease;
pub mod metrics;
pub mod planner;
pub mod role;
pub mod server;
pub mod shadowing;
pub mod state;
pub mod sweep;

pub use self::config::{ConfigError, IndexConfig, RoleConfig, DEFAULT_MAX_CONNECTIONS};
pub use self::core::{step, Applied, Effects, Index, SubmitError};
pub use self::role::Role;
pub use self::server::IndexServer;
