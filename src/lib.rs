//! nap: a Napster-style hybrid peer-to-peer file-sharing system.
//!
//! A central index (`index`) maps file names to the peers holding them; peers (`peer`) register
//! their shared folder, search the index and download directly from each other, verifying every
//! byte against the SHA-256 the index records. `protocol` holds the wire types both sides share.

pub mod clock;
pub mod hashing;
pub mod ids;
pub mod index;
pub mod memory;
pub mod net;
pub mod peer;
pub mod protocol;
pub mod threads;

/// Logs to stderr at `default`, or at the level `RUST_LOG` names.
pub fn init_logging(default: log::LevelFilter) {
    let _ = simple_logger::SimpleLogger::new()
        .with_level(default)
        .env()
        .init();
}
