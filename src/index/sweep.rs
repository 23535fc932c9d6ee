//! The sweeper: a background thread that removes peers silent for longer than the peer
//! timeout (with their holdings and leases), leases past their expiry, and the histories of
//! names no peer has held for `--history-retention`. After the index itself stood still, it
//! forgives the silence it caused. It decides nothing itself: `Index::prune_silent`,
//! `Index::expire_leases` and `Index::forget_histories` find what is due and apply ops.

use std::time::Duration;

use crossbeam_channel::Receiver;

use super::Index;
use crate::threads::stopped;

/// Most `ForgetHistories` ops per tick (each of up to `FORGET_PER_OP` names): a backlog of
/// due histories goes at some 65,000 names a tick (about 0.2 s of work), without the sweeper
/// falling behind on prunes.
const FORGET_OPS_PER_TICK: usize = 64;

/// Forgetting at least this many names in a tick is worth handing the memory back.
const GIVE_BACK_AFTER: usize = 1_000;

/// Loops until `stop` is closed. Checks a few times per peer timeout and lease TTL, so a dead
/// peer or an expired lease is gone at most about a quarter of its timeout after it was due.
/// (An expired lease is refused on use at once; the sweep only tidies.)
pub fn run(index: &Index, stop: &Receiver<()>) {
    let config = index.config();
    let clock = index.clock();
    let tick = (config.peer_timeout.min(config.lease_ttl) / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut last = clock.elapsed();
    while !stopped(stop, tick) {
        // If this thread woke far later than asked, the whole index stood still (stopped,
        // swapped out, a VM paused): the peers were not silent, we were not listening. They
        // get a fresh timeout instead of being pruned for our stall.
        let now = clock.elapsed();
        let slept = now.saturating_sub(last);
        last = now;
        if slept > tick + config.peer_timeout / 2 {
            log::warn!(
                "the index stood still for {:.1} s; giving every peer a fresh timeout",
                slept.as_secs_f64()
            );
            index.touch_all();
            continue;
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
        let forgotten = index.forget_histories(FORGET_OPS_PER_TICK);
        if forgotten > 0 {
            log::info!(
                "forgot the histories of {forgotten} name(s) no peer has held for \
                 --history-retention"
            );
        }
        if forgotten >= GIVE_BACK_AFTER {
            crate::memory::give_back_freed();
        }
    }
}
