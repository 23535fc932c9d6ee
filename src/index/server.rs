//! A running index server: the [`Index`] core built from its configuration, the HTTP server in
//! front of it, and the threads its role needs, started in order and stopped together.
//!
//! Every role runs the HTTP request threads, the accept keeper, the connection warden, the long-poll
//! keeper, the committer (with `--fsync always`) and the journal keeper (with a data
//! directory). A primary adds the sweeper, the planner and one pusher per shadow; a shadow,
//! the catch-up thread. The clock and the id source are the system's unless given.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::config::{IndexConfig, RoleConfig};
use super::http::{self, Edge};
use super::role::Role;
use super::{copies, shadowing, sweep, Index};
use crate::clock::{SharedClock, SystemClock};
use crate::ids::{OsRandom, SharedIds};
use crate::threads::{spawn, stopped};

/// A running index server: its address, and the handle to stop it.
pub struct IndexServer {
    addr: SocketAddr,
    http: crate::net::HttpServer,
    stop: Sender<()>,
    threads: Vec<JoinHandle<()>>,
    index: Arc<Index>,
}

impl IndexServer {
    /// Checks the configuration, loads the data, binds, then starts the threads; on the
    /// system's clock and randomness.
    pub fn start(config: IndexConfig) -> io::Result<IndexServer> {
        IndexServer::start_with(config, SystemClock::shared(), OsRandom::shared())
    }

    /// `start`, with every decision by time taken from `clock` and every id from `ids`.
    pub fn start_with(
        config: IndexConfig,
        clock: SharedClock,
        ids: SharedIds,
    ) -> io::Result<IndexServer> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let secret = config.cluster_secret.clone().unwrap_or_default();
        // The data is loaded before the port opens: while it loads, clients are refused at
        // once (and fail over) instead of waiting on a connection nobody answers.
        let mut index = Index::new(config.clone(), clock, ids)?;
        if let RoleConfig::Primary { shadows } = &config.role {
            if !shadows.is_empty() && index.read().seq() == 0 {
                if let Some((shadow, snapshot)) = shadowing::recover(shadows, &secret) {
                    ::log::warn!(
                        "recovered the index state at seq {} ({} peers) from shadow {shadow}",
                        snapshot.seq,
                        snapshot.peers.len()
                    );
                    index.recover(snapshot)?;
                }
            }
        }
        let http = crate::net::HttpServer::start(
            &config.listen,
            crate::net::Limits {
                max: config.max_connections,
                idle_timeout: config.idle_timeout,
                request_timeout: config.request_timeout,
            },
        )?;
        let addr = http.addr;
        index.attach_connections(http.conns.clone());
        let index = Arc::new(index);
        let pool = crate::net::Elastic::new("http");
        let edge = Arc::new(Edge::new(index.clone(), pool.clone(), config.workers));
        let (stop, stopping): (Sender<()>, Receiver<()>) = crossbeam_channel::bounded(0);
        let mut threads = Vec::new();

        // Writes are answered by the committer once on disk, so request threads never wait
        // for it.
        let (to_commit, committer) = crossbeam_channel::unbounded();
        let (serving, refusing) = (edge.clone(), index.clone());
        threads.push(http.serve(
            pool,
            move |call| http::serve(&serving, call, &to_commit),
            move |call| http::refuse(&refusing, call),
        )?);
        threads.push(http.spawn_warden(stopping.clone())?);
        // The committer ends with the server (its sender goes with the accepting side).
        if index.acks_wait_for_disk() {
            let edge = edge.clone();
            threads.push(spawn("committer", move || http::commit(&edge, &committer))?);
        }
        {
            let (edge, stopping) = (edge.clone(), stopping.clone());
            threads.push(spawn("long-poll", move || {
                http::long_poll::run(&edge.index, &edge.waiters, &stopping)
            })?);
        }
        if index.journal().is_some() {
            let (index, stopping) = (index.clone(), stopping.clone());
            threads.push(spawn("journal-keeper", move || {
                keep_journal(&index, &stopping)
            })?);
        }
        match index.role() {
            // Only a primary prunes, expires, plans and pushes: a shadow changes by its
            // primary's ops alone.
            Role::Primary(primary) => {
                for (n, link) in primary.links.iter().enumerate() {
                    let Some(backlog) = primary.backlog.clone() else {
                        break;
                    };
                    let (index, link) = (index.clone(), link.clone());
                    let (secret, stopping) = (secret.clone(), stopping.clone());
                    threads.push(spawn(format!("push-{n}"), move || {
                        shadowing::push(&index, &backlog, &link, &secret, &stopping)
                    })?);
                }
                let (index2, stopping2) = (index.clone(), stopping.clone());
                threads.push(spawn("sweeper", move || sweep::run(&index2, &stopping2))?);
                let (edge, stopping) = (edge.clone(), stopping.clone());
                threads.push(spawn("planner", move || {
                    copies::run(&edge.index, &stopping, |peer_id| {
                        edge.waiters.wake(&edge.index, peer_id)
                    })
                })?);
            }
            Role::Shadow(_) => {
                let (index, stopping) = (index.clone(), stopping.clone());
                threads.push(spawn("catch-up", move || {
                    shadowing::catch_up(&index, &secret, &stopping)
                })?);
            }
        }
        ::log::info!(
            "index listening on {addr} as {}",
            match &config.role {
                RoleConfig::Primary { shadows } if shadows.is_empty() => "primary".to_string(),
                RoleConfig::Primary { shadows } => format!("primary of {}", shadows.join(", ")),
                RoleConfig::Shadow { primary } => format!("read-only shadow of {primary}"),
            }
        );
        Ok(IndexServer {
            addr,
            http,
            stop,
            threads,
            index,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL of the API, e.g. `http://127.0.0.1:7070`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the workers and background threads, waits for them, then writes and fsyncs
    /// whatever the journal still holds (with `--fsync batch` or `never`, the last few ms).
    pub fn stop(self) {
        drop(self.stop);
        self.http.stop();
        for t in self.threads {
            let _ = t.join();
        }
        if let Some(journal) = self.index.journal() {
            match journal.sync_all() {
                Ok(()) => ::log::info!(
                    "op log written and synced up to seq {}",
                    self.index.read().seq()
                ),
                Err(e) => ::log::error!("could not sync the op log at stop: {e}"),
            }
        }
    }
}

/// The journal keeper: writes out what no request waits for (sweeps, and everything with
/// `--fsync batch` or `never`) and takes snapshots when due. Loops until `stop` closes, then
/// writes what is left.
fn keep_journal(index: &Index, stop: &Receiver<()>) {
    let every = match index.journal().map(|j| j.fsync()) {
        Some(super::journal::Fsync::Batch) => Duration::from_millis(5),
        _ => Duration::from_millis(50),
    };
    loop {
        let stopping = stopped(stop, every);
        if stopping {
            if let Some(Err(e)) = index.journal().map(|j| j.flush()) {
                ::log::error!("{e}");
            }
            return;
        }
        let started = std::time::Instant::now();
        match index.maintain_journal() {
            Ok(Some(seq)) => ::log::info!(
                "snapshot at seq {seq} written in {:.0} ms",
                started.elapsed().as_secs_f64() * 1000.0
            ),
            Ok(None) => {}
            Err(e) => ::log::error!("{e}"),
        }
    }
}
