//! The pruner: a background thread that removes peers silent for longer than the peer
//! timeout, with their holdings. It decides nothing itself: `Index::prune_silent` finds the
//! silent peers and applies one `Prune` op.

use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::Index;

/// Loops until `stop` is closed. Checks a few times per peer timeout, so a dead peer is gone
/// at most about a quarter timeout after it became prunable.
pub fn run(index: &Index, stop: &Receiver<()>) {
    let tick =
        (index.config().peer_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
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
    }
}
