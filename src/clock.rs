//! Time, handed in. Nothing in nap that decides by time reads a clock of its own: the index's
//! state machine takes `now` as an argument, and everything around it (sweeper, planner loop,
//! shadow pushers, long polls, the peer's session) asks the one [`Clock`] its owner passed
//! in. The servers run on [`SystemClock`]; tests and the simulation run on a [`ManualClock`]
//! that moves only when they say so.
//!
//! Measuring how long something took (latency histograms, fsync times) is not deciding by
//! time and keeps using `std::time::Instant`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

/// Where time comes from.
pub trait Clock: Send + Sync {
    /// Wall-clock time: what ops carry, and what lease expiries and peer timeouts are
    /// measured in (a shadow compares them with its primary's).
    fn now_ms(&self) -> Millis;
    /// Monotonic time since the clock began: for deadlines and pauses, which must not jump
    /// when someone sets the wall clock.
    fn elapsed(&self) -> Duration;
}

/// A clock shared by the threads of one server.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's clocks.
pub struct SystemClock {
    started: Instant,
}

impl SystemClock {
    pub fn shared() -> SharedClock {
        Arc::new(SystemClock {
            started: Instant::now(),
        })
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis() as Millis
    }

    fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// A clock that moves only when told to: both readings advance together.
#[derive(Debug)]
pub struct ManualClock {
    wall_ms: AtomicU64,
    /// Monotonic time in microseconds.
    mono_us: AtomicU64,
}

impl ManualClock {
    /// A clock whose wall reading starts at `wall_ms` and whose monotonic one starts at 0.
    pub fn new(wall_ms: Millis) -> ManualClock {
        ManualClock {
            wall_ms: AtomicU64::new(wall_ms),
            mono_us: AtomicU64::new(0),
        }
    }

    pub fn shared(wall_ms: Millis) -> Arc<ManualClock> {
        Arc::new(ManualClock::new(wall_ms))
    }

    /// Moves both readings forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.wall_ms
            .fetch_add(by.as_millis() as u64, Ordering::SeqCst);
        self.mono_us
            .fetch_add(by.as_micros() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> Millis {
        self.wall_ms.load(Ordering::SeqCst)
    }

    fn elapsed(&self) -> Duration {
        Duration::from_micros(self.mono_us.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(1_000);
        assert_eq!((clock.now_ms(), clock.elapsed()), (1_000, Duration::ZERO));
        clock.advance(Duration::from_millis(250));
        assert_eq!(clock.now_ms(), 1_250);
        assert_eq!(clock.elapsed(), Duration::from_millis(250));
    }

    #[test]
    fn the_system_clock_is_monotonic_and_near_the_wall() {
        let clock = SystemClock::shared();
        let (a, b) = (clock.elapsed(), clock.elapsed());
        assert!(b >= a);
        assert!(clock.now_ms() > 1_600_000_000_000, "after 2020");
    }
}
