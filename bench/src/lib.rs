//! nap's benchmark programs (src/bin/; what they measured is in BENCHMARKS.md):
//!
//! - `bench`: the evaluation suite, the seed's measurements with real processes;
//! - `index_bench`: an index in this process, its connection policy, contention, fsync;
//! - `failover`: failover recovery and shadow lag in depth;
//! - `replication`: replication convergence and churn in depth;
//! - `connections`: what the connection limit costs, how fast it sheds, hostile clients.
//!
//! Run one with `cargo run --release -p nap-bench --bin NAME -- [FLAGS]`; each builds the nap
//! binaries it runs with its own profile first. This library is what they share besides
//! the process harness (`nap-harness`), which they share with nap's integration tests.

pub mod support;
