//! The primary's backlog for its shadows: the recent applied ops, in sequence order, that the
//! pushers send on (see `shadowing`). Bounded by weight (an op weighs one, plus one per file
//! it lists, so a few huge registers cannot hold much memory): when full, the oldest ops go,
//! and a shadow that still needed them catches up by snapshot. Not the journal: nothing here
//! is durable.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::state::{AppliedOp, Op};
use crate::threads::lock;

pub struct Backlog {
    ops: Mutex<Kept>,
    grew: Condvar,
    capacity: usize,
}

#[derive(Default)]
struct Kept {
    ops: VecDeque<AppliedOp>,
    weight: usize,
}

fn weight(op: &Op) -> usize {
    op.weight()
}

impl Backlog {
    pub fn new(capacity: usize) -> Backlog {
        Backlog {
            ops: Mutex::new(Kept::default()),
            grew: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Kept> {
        lock(&self.ops)
    }

    /// Appends the op just applied. Called under the state's write lock, so the backlog is
    /// in sequence order.
    pub fn push(&self, op: AppliedOp) {
        let mut kept = self.lock();
        kept.weight += weight(&op.op);
        kept.ops.push_back(op);
        while kept.weight > self.capacity && kept.ops.len() > 1 {
            if let Some(old) = kept.ops.pop_front() {
                kept.weight -= weight(&old.op);
            }
        }
        self.grew.notify_all();
    }

    /// Up to `max` ops after `seq`, oldest first, stopping once `max_weight` is reached (but
    /// never before the first op). If ops after `seq` have already been dropped the batch
    /// starts at the oldest kept, and the shadow will see the gap.
    pub fn after(&self, seq: u64, max: usize, max_weight: usize) -> Vec<AppliedOp> {
        let kept = self.lock();
        let start = kept.ops.partition_point(|o| o.seq <= seq);
        let mut total = 0;
        kept.ops
            .range(start..)
            .take(max)
            .take_while(|o| {
                let fits = total == 0 || total < max_weight;
                total += weight(&o.op);
                fits
            })
            .cloned()
            .collect()
    }

    /// The seq of the newest op kept (0: none).
    pub fn last_seq(&self) -> u64 {
        self.lock().ops.back().map_or(0, |o| o.seq)
    }

    /// Waits until an op after `seq` is in the backlog, or `timeout` passes.
    pub fn wait_after(&self, seq: u64, timeout: Duration) {
        let kept = self.lock();
        let _ = self.grew.wait_timeout_while(kept, timeout, |kept| {
            kept.ops.back().is_none_or(|o| o.seq <= seq)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::state::Prune;
    use std::time::Instant;

    fn op(seq: u64) -> AppliedOp {
        AppliedOp {
            seq,
            at: seq,
            op: Op::Prune(Prune { peers: vec![] }),
        }
    }

    #[test]
    fn the_backlog_is_bounded_and_batches_follow_on() {
        let log = Backlog::new(3);
        for seq in 1..=5 {
            log.push(op(seq));
        }
        let seqs = |ops: Vec<AppliedOp>| ops.into_iter().map(|o| o.seq).collect::<Vec<_>>();
        // 1 and 2 fell out: a shadow at 0 gets 3.. and sees the gap.
        assert_eq!(seqs(log.after(0, 10, 100)), vec![3, 4, 5]);
        assert_eq!(seqs(log.after(3, 10, 100)), vec![4, 5]);
        assert_eq!(seqs(log.after(3, 1, 100)), vec![4]);
        assert_eq!(
            seqs(log.after(0, 10, 2)),
            vec![3, 4],
            "weight bounds a batch"
        );
        assert_eq!(seqs(log.after(0, 10, 0)), vec![3], "but never to nothing");
        assert!(log.after(5, 10, 100).is_empty());
        let t = Instant::now();
        log.wait_after(4, Duration::from_secs(5));
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "op 5 is already there"
        );
    }
}
