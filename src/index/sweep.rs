//! The sweeper: a background thread that removes peers silent for longer than the peer
//! timeout (with their holdings and leases) and leases past their expiry. It decides nothing
//! itself: `Index::prune_silent` and `Index::expire_leases` find what is due and apply one op.

use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::Index;

/// Loops until `stop` is closed. Checks a few times per peer timeout and lease TTL, so a dead
/// peer or an expired lease is gone at most about a quarter of its timeout after it was due.
/// (An expired lease is refused on use at once; the sweep only tidies.)
pub fn run(index: &Index, stop: &Receiver<()>) {
    let config = index.config();
    let tick = (config.peer_timeout.min(config.lease_ttl) / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        match stop.recv_timeout(tick) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let pruned = index.prune_silent();
        if !pruned.is_empty() {
            log::info!(
                "pruned {} silent peer(s): {}",
                pruned.len(),
                pruned.join(", ")
            );
        }
        let expired = index.expire_leases();
        if !expired.is_empty() {
            log::info!("{} lease(s) expired", expired.len());
        }
    }
}
