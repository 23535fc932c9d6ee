//! What every thread of nap's servers needs: locks that outlive a panicked holder, a pause
//! that a stop ends early, a back-off, and named threads. One home, instead of a copy in each
//! module.
//!
//! Why poison is recovered: a handler panic is caught and answered 500 (see the HTTP edges),
//! and the data behind nap's locks is kept consistent by construction (a panic cannot leave a
//! half-applied op: `IndexState` changes only after every check passed), so one bad request
//! must not make every later lock fail.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

pub fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// Waits `wait`, or less if `stop` closes (or is sent to) meanwhile; true when it did. A
/// thread's loop ends when its owner drops the sending end.
pub fn stopped(stop: &Receiver<()>, wait: Duration) -> bool {
    !matches!(stop.recv_timeout(wait), Err(RecvTimeoutError::Timeout))
}

/// Starts a named thread (names show in logs, `top -H` and panics).
pub fn spawn(
    name: impl Into<String>,
    f: impl FnOnce() + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name.into()).spawn(f)
}

/// Pauses between retries of something that keeps failing: from `min`, doubling up to `max`,
/// back to `min` after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            next: min,
        }
    }

    /// The pause to take now; the one after it is twice as long (up to `max`).
    pub fn pause(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        now
    }

    /// Whether no failure has been counted since the last success: the first failure of a
    /// run is worth a warning, the rest are not.
    pub fn is_fresh(&self) -> bool {
        self.next == self.min
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(350));
        assert!(b.is_fresh());
        assert_eq!(
            [b.pause(), b.pause(), b.pause(), b.pause()],
            [ms(100), ms(200), ms(350), ms(350)]
        );
        assert!(!b.is_fresh());
        b.reset();
        assert_eq!(b.pause(), ms(100));
    }

    #[test]
    fn a_stop_ends_the_pause() {
        let (tx, rx) = crossbeam_channel::bounded::<()>(0);
        assert!(!stopped(&rx, Duration::from_millis(1)));
        drop(tx);
        assert!(stopped(&rx, Duration::from_secs(60)));
    }

    #[test]
    fn a_poisoned_lock_still_opens() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }
}
