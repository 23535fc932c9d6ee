//! The central index server: a deterministic state machine (`state`, with its `lease` table)
//! behind thin edges: HTTP handlers (`http`) and the `sweep`er of silent peers and expired
//! leases. The `planner` turns the state into copy tasks for peers.
//!
//! Every change goes through [`Index::submit`], the one place where an op meets the clock and
//! the write lock; the edges that come later (shadow sync, the disk log) hang off it too.

pub mod http;
pub mod lease;
pub mod planner;
pub mod state;
pub mod sweep;

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use state::{IndexState, Millis, Op, Outcome, StateError};

#[derive(Debug, Clone)]
pub struct IndexConfig {
    /// Address to listen on, `host:port` (port 0 picks a free one).
    pub listen: String,
    /// Threads answering HTTP requests.
    pub workers: usize,
    /// How often peers are told to heartbeat.
    pub heartbeat_interval: Duration,
    /// A peer silent this long is pruned with its holdings.
    pub peer_timeout: Duration,
    /// Largest request body accepted, in bytes.
    pub max_body: usize,
    /// How long a write lease lasts unless renewed.
    pub lease_ttl: Duration,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            listen: "127.0.0.1:7070".into(),
            workers: 4,
            heartbeat_interval: Duration::from_secs(5),
            peer_timeout: Duration::from_secs(15),
            max_body: 4 << 20,
            lease_ttl: Duration::from_secs(60),
        }
    }
}

/// The shared core of a running index: its state, its configuration and its clock.
pub struct Index {
    state: RwLock<IndexState>,
    config: IndexConfig,
    started: Instant,
    clock: fn() -> Millis,
}

impl Index {
    pub fn new(config: IndexConfig, clock: fn() -> Millis) -> Self {
        Index {
            state: RwLock::new(IndexState::with_capacity(1024, 16 * 1024)),
            config,
            started: Instant::now(),
            clock,
        }
    }

    /// Applies one op under the write lock. Nothing else is done under it.
    pub fn submit(&self, op: Op) -> Result<Outcome, StateError> {
        let now = (self.clock)();
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.apply(op, now)
    }

    /// Read access for searches and status; readers wait for at most one `apply`.
    pub fn read(&self) -> RwLockReadGuard<'_, IndexState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes the peers silent for longer than the peer timeout; returns their ids.
    pub fn prune_silent(&self) -> Vec<String> {
        let now = (self.clock)();
        let timeout = self.config.peer_timeout.as_millis() as u64;
        // Finding and removing happen under one lock, so a heartbeat cannot slip in between.
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let silent = state.silent_peers(now, timeout);
        if silent.is_empty() {
            return silent;
        }
        match state.apply(Op::Prune { peers: silent }, now) {
            Ok(Outcome::Pruned { peers }) => peers,
            _ => Vec::new(),
        }
    }

    /// Removes the leases that have expired; returns their ids. Expired leases are already
    /// worthless; this keeps the table small and puts expiry in the op stream.
    pub fn expire_leases(&self) -> Vec<String> {
        let now = (self.clock)();
        if self.read().leases().expired(now).is_empty() {
            return Vec::new();
        }
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let lease_ids = state.leases().expired(now);
        match state.apply(Op::ExpireLeases { lease_ids }, now) {
            Ok(Outcome::LeasesExpired { lease_ids }) => lease_ids,
            _ => Vec::new(),
        }
    }

    /// The index clock, in milliseconds since the epoch.
    pub fn now(&self) -> Millis {
        (self.clock)()
    }

    pub fn config(&self) -> &IndexConfig {
        &self.config
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

/// A running index server: its address, and the handle to stop it.
pub struct IndexServer {
    addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    stop: Sender<()>,
    threads: Vec<JoinHandle<()>>,
}

impl IndexServer {
    /// Binds, then starts the HTTP workers and the sweeper.
    pub fn start(config: IndexConfig) -> io::Result<IndexServer> {
        let (server, addr) = crate::net::http_server(&config.listen)?;
        let server = Arc::new(server);
        let workers = config.workers.max(1);
        let index = Arc::new(Index::new(config, crate::net::now_ms));
        let (stop, stopped): (Sender<()>, Receiver<()>) = crossbeam_channel::bounded(0);
        let mut threads = Vec::new();
        for n in 0..workers {
            let (index, server) = (index.clone(), server.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("http-{n}"))
                    .spawn(move || http::serve(&index, &server))?,
            );
        }
        threads.push(
            std::thread::Builder::new()
                .name("sweeper".into())
                .spawn(move || sweep::run(&index, &stopped))?,
        );
        log::info!("index listening on {addr}");
        Ok(IndexServer {
            addr,
            server,
            stop,
            threads,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL of the API, e.g. `http://127.0.0.1:7070`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the workers and the sweeper and waits for them.
    pub fn stop(self) {
        drop(self.stop);
        for _ in 0..self.threads.len() {
            self.server.unblock();
        }
        for t in self.threads {
            let _ = t.join();
        }
    }

    /// Runs until the process is killed.
    pub fn wait(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}
