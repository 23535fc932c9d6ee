//! What one peer may hold, and how fast it may bring the index names it has never seen.
//!
//! The limits are decided inside the state machine, not at the edge: whether a file breaks
//! them depends on the state (how many names the peer holds, whether the index knows the
//! name, how much of its allowance the peer has used), and only `apply` sees the state as the
//! op finds it, under the write lock. An edge that checked under the read lock and then
//! submitted would race with the peer's own other requests (two heartbeats at once could
//! both fit under a cap only one of them fits under), and would have to trim the file list
//! before the op is built, so what the log says the peer sent would not be what it sent.
//!
//! To keep `apply` a function of the op and the state alone, the limits it enforces travel
//! in the op ([`Limits`], set by the primary from its flags when it builds the op) and time
//! is the op's `at`: a shadow, or a replay after a restart with other flags, takes exactly the
//! decisions the primary took, and a change of flags applies from the next op on. A peer's
//! allowance ([`Allowance`]) is part of the sequenced state (snapshot and digest) for the same
//! reason. Ops logged before limits existed read as `Limits::NONE`, which is how they were
//! applied.
//!
//! The allowance is a token bucket over names *new to the index*: they are what leaves a
//! history behind, which outlives its holders for `--history-retention`. Names the index
//! already knows (copies, a re-register after a restart) cost nothing but the holding,
//! which the cap on names per peer bounds.

use serde::{Deserialize, Serialize};

use crate::clock::Millis;

/// Allowance is counted in sixty-thousandths of a name, so that a rate of N names a minute
/// adds exactly N units every millisecond: refills are never rounded away, however often a
/// peer asks.
const UNITS_PER_NAME: u64 = 60_000;

/// The per-peer limits an op is applied under, as the primary's flags set them when it
/// applied the op. The default (what ops logged before limits existed read as) is none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Most names one peer may hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_files: Option<u64>,
    /// How fast one peer may add names new to the index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_names: Option<Rate>,
}

impl Limits {
    /// No limit at all.
    pub const NONE: Limits = Limits {
        max_files: None,
        new_names: None,
    };

    pub fn is_none(&self) -> bool {
        *self == Limits::NONE
    }
}

/// A rate with a burst: `burst` names at once, then `per_minute` a minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    pub per_minute: u64,
    pub burst: u64,
}

/// What a peer has used of its allowance of new names: its credit at `at_ms`. A peer
/// without one (`None` in [`super::Peer`]) has its whole burst: every new peer, and every
/// peer whose credit filled up again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allowance {
    /// In sixty-thousandths of a name.
    pub credit: u64,
    pub at_ms: Millis,
}

/// A peer's allowance while one op spends it.
pub(super) struct Spending {
    rate: Rate,
    credit: u64,
    at_ms: Millis,
    spent: bool,
}

impl Spending {
    /// The allowance `saved` (`None`: full) grown by what `rate` adds up to `now`. A clock
    /// that went back adds nothing (and takes nothing away).
    pub(super) fn start(saved: Option<Allowance>, rate: Rate, now: Millis) -> Spending {
        let full = rate.burst.saturating_mul(UNITS_PER_NAME);
        let (credit, at_ms) = match saved {
            None => (full, now),
            Some(a) => {
                let grown = now.saturating_sub(a.at_ms).saturating_mul(rate.per_minute);
                (a.credit.saturating_add(grown).min(full), a.at_ms.max(now))
            }
        };
        Spending {
            rate,
            credit,
            at_ms,
            spent: false,
        }
    }

    /// Takes one name's worth, or says when one will be there.
    pub(super) fn take(&mut self) -> Result<(), Limit> {
        if self.credit >= UNITS_PER_NAME {
            self.credit -= UNITS_PER_NAME;
            self.spent = true;
            return Ok(());
        }
        let missing = UNITS_PER_NAME - self.credit;
        Err(Limit::NewNames {
            per_minute: self.rate.per_minute,
            burst: self.rate.burst,
            retry_after_ms: missing.div_ceil(self.rate.per_minute.max(1)),
        })
    }

    /// What to keep in the peer: unchanged if nothing was spent, nothing if it is full.
    pub(super) fn finish(self, saved: Option<Allowance>) -> Option<Allowance> {
        if !self.spent {
            return saved;
        }
        let full = self.rate.burst.saturating_mul(UNITS_PER_NAME);
        (self.credit < full).then_some(Allowance {
            credit: self.credit,
            at_ms: self.at_ms,
        })
    }
}

/// A per-peer limit a file would break; the file is refused, the rest of its list still
/// counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limit {
    /// The peer holds `max` names already (`--max-files-per-peer`).
    Files { max: u64 },
    /// The peer brought new names faster than `burst` at once and `per_minute` after; the
    /// next one is taken in `retry_after_ms`.
    NewNames {
        per_minute: u64,
        burst: u64,
        retry_after_ms: u64,
    },
}

impl Limit {
    /// When asking again can succeed, if waiting is the remedy.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Limit::Files { .. } => None,
            Limit::NewNames { retry_after_ms, .. } => Some(*retry_after_ms),
        }
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::Files { max } => write!(
                f,
                "this peer already holds {max} names, the most this index takes from one peer \
                 (--max-files-per-peer): share fewer files, or stop sharing some first"
            ),
            Limit::NewNames {
                per_minute,
                burst,
                retry_after_ms,
            } => write!(
                f,
                "this peer brings names new to the index faster than it takes them ({burst} at \
                 once, then {per_minute} a minute: --new-names-burst, --new-names-per-minute); \
                 report this one again in {:.1} s",
                *retry_after_ms as f64 / 1000.0
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Rate = Rate {
        per_minute: 60,
        burst: 3,
    };

    /// Names taken one after another at `now` from `saved`, until one is refused.
    fn take_all(saved: Option<Allowance>, now: Millis) -> (u64, Option<Allowance>, Limit) {
        let mut spending = Spending::start(saved, RATE, now);
        let mut taken = 0;
        let refused = loop {
            match spending.take() {
                Ok(()) => taken += 1,
                Err(limit) => break limit,
            }
        };
        (taken, spending.finish(saved), refused)
    }

    #[test]
    fn a_burst_then_the_rate_with_nothing_rounded_away() {
        let (taken, saved, refused) = take_all(None, 1_000);
        assert_eq!(taken, 3);
        assert_eq!(
            saved,
            Some(Allowance {
                credit: 0,
                at_ms: 1_000
            })
        );
        assert_eq!(refused.retry_after_ms(), Some(1_000), "one a second");
        // 999 ms later there is not quite a name; asking every ms adds up all the same.
        let mut saved = saved;
        for now in 1_001..2_000 {
            let mut spending = Spending::start(saved, RATE, now);
            assert!(spending.take().is_err(), "at {now}");
            saved = spending.finish(saved);
        }
        assert_eq!(take_all(saved, 2_000).0, 1);
        // A clock that went back neither adds nor takes away.
        assert_eq!(take_all(saved, 500).0, 0);
        // Long after, the burst again, and a full allowance is not kept at all.
        let mut spending = Spending::start(saved, RATE, 60_000);
        assert!(spending.take().is_ok());
        assert_eq!(
            spending.finish(saved),
            Some(Allowance {
                credit: 2 * UNITS_PER_NAME,
                at_ms: 60_000
            })
        );
        let untouched = Spending::start(saved, RATE, 60_000);
        assert_eq!(
            untouched.finish(saved),
            saved,
            "nothing spent, nothing changes"
        );
    }

    #[test]
    fn huge_rates_and_times_saturate_instead_of_overflowing() {
        let rate = Rate {
            per_minute: u64::MAX,
            burst: u64::MAX,
        };
        let saved = Some(Allowance {
            credit: 0,
            at_ms: 0,
        });
        let mut spending = Spending::start(saved, rate, u64::MAX);
        assert!(spending.take().is_ok());
        let zero = Rate {
            per_minute: 0,
            burst: 0,
        };
        let mut spending = Spending::start(None, zero, 5);
        assert!(
            spending.take().is_err(),
            "a zero rate refuses, never divides by zero"
        );
    }
}
