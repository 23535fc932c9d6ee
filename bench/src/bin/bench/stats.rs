//! Latency samples and their summaries.

use std::time::Duration;

use crate::support::pct;

/// Latencies in microseconds (a u32 holds over an hour), kept whole so that percentiles
/// are exact rather than bucketed.
#[derive(Default, Clone)]
pub struct Lat(Vec<u32>);

impl Lat {
    pub fn push(&mut self, d: Duration) {
        self.0
            .push(u32::try_from(d.as_micros()).unwrap_or(u32::MAX));
    }

    pub fn merge(&mut self, other: Lat) {
        self.0.extend(other.0);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn summary(&self) -> Summary {
        let mut us = self.0.clone();
        us.sort_unstable();
        let ms = |v: u32| f64::from(v) / 1000.0;
        let n = us.len();
        let mean = if n == 0 {
            0.0
        } else {
            us.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64 / 1000.0
        };
        Summary {
            n,
            mean,
            p50: ms(pct(&us, 0.50)),
            p99: ms(pct(&us, 0.99)),
            max: ms(us.last().copied().unwrap_or(0)),
        }
    }

    /// Every sample in ms, in the order taken.
    pub fn samples_ms(&self) -> impl Iterator<Item = f64> + '_ {
        self.0.iter().map(|&v| f64::from(v) / 1000.0)
    }
}

impl FromIterator<Duration> for Lat {
    fn from_iter<I: IntoIterator<Item = Duration>>(iter: I) -> Lat {
        let mut lat = Lat::default();
        for d in iter {
            lat.push(d);
        }
        lat
    }
}

/// Count, mean and percentiles in ms (nearest rank; 0 when there are no samples).
#[derive(Clone, Copy, Default)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// A latency in ms for a table: two decimals below 10 ms, one below 100, whole above.
pub fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}
