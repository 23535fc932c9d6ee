//! A peer: shares a folder (`files`), serves it to other peers (`server`), keeps the index
//! informed (`agent`, through `client`, deciding by `session`), fetches files from other peers
//! with verification (`download`), publishes new versions under a lease (`edit`), and offers
//! an interactive shell (`shell`).
//!
//! [`Peer`] is the state the shell, the agent and the server share: it feeds what happens to
//! the one [`session::Session`] and never decides on its own whether the index must hear the
//! whole file list again. [`PeerNode`] starts and stops the threads around it. Nothing here
//! may use the index's code: the peer knows the index only through `protocol`.

pub mod agent;
pub mod client;
pub mod config;
pub mod download;
pub mod edit;
pub mod files;
pub mod server;
pub mod session;
pub mod shell;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;

use client::{ClientError, IndexClient};
use download::{DownloadError, Downloader, Progress};
use files::LocalStore;
use session::Session;

pub use config::{ConfigError, PeerConfig, DEFAULT_MAX_CONNECTIONS};
pub use files::Identity;

use crate::clock::SharedClock;
use crate::protocol::{
    AnnounceRequest, AnnounceResponse, FileMeta, HeartbeatRequest, HeartbeatResponse,
    RegisterRequest, RegisterResponse, SearchResult, TaskFailure, UnregisterRequest,
};
use crate::threads::{lock, spawn};

/// What `Peer::get` did.
#[derive(Debug)]
pub struct Fetched {
    pub meta: FileMeta,
    pub source: String,
    /// Set when the download succeeded but telling the index failed (it is retried later).
    pub announce_error: Option<ClientError>,
}

#[derive(Debug)]
pub enum GetError {
    NotFound(String),
    AlreadyCurrent { local: u64, latest: u64 },
    Index(ClientError),
    Download(DownloadError),
}

impl std::fmt::Display for GetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GetError::NotFound(name) => write!(f, "{name} is not on the index"),
            GetError::AlreadyCurrent { local, latest } => write!(
                f,
                "you already have v{local} (the latest on the index is v{latest})"
            ),
            GetError::Index(e) => write!(f, "{e}"),
            GetError::Download(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for GetError {}

pub struct Peer {
    pub store: LocalStore,
    pub index: IndexClient,
    pub downloader: Downloader,
    config: PeerConfig,
    /// The address other peers download from.
    addr: String,
    /// Where every decision by time takes its time from.
    clock: SharedClock,
    /// What the index knows of us and still has to hear; decides when to register.
    session: Mutex<Session>,
    /// Uploads and downloads, running and done, for `status`.
    pub transfers: Transfers,
}

/// Counts of the peer's transfers (only counters: no lock on the data path).
#[derive(Default)]
pub struct Transfers {
    uploads_active: AtomicU64,
    uploads_total: AtomicU64,
    bytes_served: AtomicU64,
    downloads_active: AtomicU64,
    downloads_total: AtomicU64,
}

/// Counts one transfer as running until dropped.
pub struct Running<'a>(&'a AtomicU64);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Transfers {
    pub fn upload(&self) -> Running<'_> {
        self.uploads_active.fetch_add(1, Ordering::Relaxed);
        Running(&self.uploads_active)
    }

    pub fn uploaded(&self, bytes: u64) {
        self.uploads_total.fetch_add(1, Ordering::Relaxed);
        self.bytes_served.fetch_add(bytes, Ordering::Relaxed);
    }

    fn download(&self) -> Running<'_> {
        self.downloads_active.fetch_add(1, Ordering::Relaxed);
        Running(&self.downloads_active)
    }

    fn downloaded(&self) {
        self.downloads_total.fetch_add(1, Ordering::Relaxed);
    }
}

impl Peer {
    pub fn new(config: PeerConfig, addr: String, clock: SharedClock) -> io::Result<Peer> {
        let store = LocalStore::open(&config.dir)?;
        let session = Session::new(addr.clone(), store.load_identity());
        Ok(Peer {
            store,
            index: IndexClient::new(config.index.clone(), config.index_timeout),
            downloader: Downloader::new(config.index_timeout.max(Duration::from_secs(5))),
            addr,
            clock,
            session: Mutex::new(session),
            transfers: Transfers::default(),
            config,
        })
    }

    /// What the peer's `GET /status` and the shell's `status` say.
    pub fn status_report(&self) -> crate::protocol::PeerStatusResponse {
        let t = &self.transfers;
        let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
        crate::protocol::PeerStatusResponse {
            peer_id: self.identity().map(|i| i.peer_id),
            addr: self.addr.clone(),
            dir: self.store.dir().display().to_string(),
            files: self.store.list().len(),
            index_servers: self.index.servers().to_vec(),
            index_in_use: self.index.current().to_string(),
            uploads_active: count(&t.uploads_active),
            uploads_total: count(&t.uploads_total),
            bytes_served: count(&t.bytes_served),
            downloads_active: count(&t.downloads_active),
            downloads_total: count(&t.downloads_total),
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn config(&self) -> &PeerConfig {
        &self.config
    }

    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// The session, locked. Never held across a call to the index or the disk: take what is
    /// needed in one statement, then call.
    fn session(&self) -> MutexGuard<'_, Session> {
        lock(&self.session)
    }

    pub fn identity(&self) -> Option<Identity> {
        self.session().identity().cloned()
    }

    pub fn take_notices(&self) -> Vec<String> {
        self.session().take_notices()
    }

    fn notice(&self, text: String) {
        self.session().notice(text);
    }

    /// Rescans the shared folder and queues what changed for the next heartbeat.
    /// Returns whether anything changed.
    pub fn rescan(&self) -> io::Result<bool> {
        let changes = self.store.rescan()?;
        Ok(self.session().rescanned(changes))
    }

    /// Rescans and, if anything changed, tells the index at once in a heartbeat that does not
    /// wait (the agent's own is usually held by the index as a long poll). On failure the
    /// changes are not lost: the agent registers the whole list instead.
    pub fn report_changes(&self) -> io::Result<()> {
        if self.rescan()? {
            self.report("reporting changes");
        }
        Ok(())
    }

    /// Sends what the session has to report now, if it says one can go.
    fn report(&self, what: &str) {
        let report = self.session().report();
        if let Some(rq) = report {
            if let Err(e) = self.send_heartbeat(rq) {
                log::debug!("{what} failed: {e}");
            }
        }
    }

    /// Sends a register the session built and tells it the outcome; saves a new identity.
    fn send_register(&self, rq: RegisterRequest) -> Result<RegisterResponse, ClientError> {
        match self.index.register(&rq) {
            Ok(answer) => {
                let fresh = self.session().register_answered(&rq, &answer);
                if let Some(fresh) = fresh {
                    if let Err(e) = self.store.save_identity(&fresh) {
                        log::warn!("could not save the peer identity: {e}");
                    }
                }
                Ok(answer)
            }
            Err(e) => {
                if self.session().register_failed(&rq, e.failure()) {
                    log::warn!("the index refuses our identity ({e}); asking for a new one");
                }
                Err(e)
            }
        }
    }

    /// Sends a heartbeat the session built and tells it the outcome.
    fn send_heartbeat(&self, rq: HeartbeatRequest) -> Result<HeartbeatResponse, ClientError> {
        match self.index.heartbeat(&rq) {
            Ok(answer) => {
                self.session().heartbeat_answered(&rq, &answer);
                Ok(answer)
            }
            Err(e) => {
                self.session().heartbeat_failed(rq, e.failure());
                Err(e)
            }
        }
    }

    /// A task we could not carry out. The index hears of it at once, so the copy goes
    /// elsewhere without waiting for the long poll; if that fails, with the next heartbeat.
    pub fn task_failed(&self, task_id: &str, reason: String) {
        self.session().task_failed(TaskFailure {
            task_id: task_id.to_string(),
            reason,
        });
        self.report("reporting the failed task");
    }

    /// Tells the index we hold `meta`. Publishing a new version takes the file's `lease_id`.
    pub fn announce(
        &self,
        meta: &FileMeta,
        lease_id: Option<&str>,
    ) -> Result<AnnounceResponse, ClientError> {
        // No identity means a register is due already.
        let Some(id) = self.identity() else {
            return Err(ClientError::Unavailable(vec!["not registered yet".into()]));
        };
        let rq = AnnounceRequest {
            peer_id: id.peer_id,
            token: id.token,
            file: meta.name.clone(),
            version: meta.version,
            size: meta.size,
            sha256: meta.sha256.clone(),
            lease_id: lease_id.map(String::from),
        };
        self.index
            .announce(&rq)
            .inspect_err(|e| self.session().announce_failed(e.failure()))
    }

    /// Looks up the exact name on the index.
    pub fn lookup(&self, name: &str) -> Result<Option<SearchResult>, ClientError> {
        let found = self.index.search(name, 1)?;
        Ok(found.results.into_iter().find(|r| r.name == name))
    }

    /// Downloads the latest version of `name` from its holders, verified, then announces it.
    pub fn get(&self, name: &str, progress: Progress<'_>) -> Result<Fetched, GetError> {
        let found = self
            .lookup(name)
            .map_err(GetError::Index)?
            .ok_or_else(|| GetError::NotFound(name.to_string()))?;
        if let Some(local) = self.store.get(name) {
            if local.version >= found.version {
                return Err(GetError::AlreadyCurrent {
                    local: local.version,
                    latest: found.version,
                });
            }
        }
        let want = FileMeta {
            name: found.name.clone(),
            version: found.version,
            size: found.size,
            sha256: found.sha256.clone(),
        };
        let sources: Vec<String> = found
            .holders
            .iter()
            .map(|h| h.addr.clone())
            .filter(|a| *a != self.addr)
            .collect();
        self.fetch(&want, &sources, progress)
            .map_err(GetError::Download)
    }

    /// Downloads `want` from the first of `sources` that delivers it intact, puts it in place
    /// and tells the index. What `get` and the copy tasks share.
    pub fn fetch(
        &self,
        want: &FileMeta,
        sources: &[String],
        progress: Progress<'_>,
    ) -> Result<Fetched, DownloadError> {
        let running = self.transfers.download();
        let source = self
            .downloader
            .fetch(&self.store, want, sources, progress)?;
        drop(running);
        self.transfers.downloaded();
        self.installed(&want.name);
        let announce_error = self.announce(want, None).err();
        Ok(Fetched {
            meta: want.clone(),
            source,
            announce_error,
        })
    }

    /// A file was put in place by us, not found by a rescan (see `Session::installed`).
    fn installed(&self, name: &str) {
        self.session().installed(name);
    }

    /// Leaves the index gracefully: our holdings disappear from it at once.
    pub fn unregister(&self) -> Result<(), ClientError> {
        let Some(id) = self.identity() else {
            return Ok(());
        };
        self.index
            .unregister(&UnregisterRequest {
                peer_id: id.peer_id,
                token: id.token,
            })
            .map(|_| ())
    }
}

/// A running peer: file server, agent and task worker around a shared [`Peer`].
pub struct PeerNode {
    peer: Arc<Peer>,
    http: crate::net::HttpServer,
    stop: Sender<()>,
    threads: Vec<JoinHandle<()>>,
}

impl PeerNode {
    /// Starts a peer on the system clock.
    pub fn start(config: PeerConfig) -> io::Result<PeerNode> {
        PeerNode::start_with_clock(config, crate::clock::SystemClock::shared())
    }

    /// Starts a peer that takes every decision by time from `clock`.
    pub fn start_with_clock(config: PeerConfig, clock: SharedClock) -> io::Result<PeerNode> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let http = crate::net::HttpServer::start(
            &config.listen,
            crate::net::Limits {
                max: config.max_connections,
                idle_timeout: config.idle_timeout,
                request_timeout: config.request_timeout,
            },
        )?;
        let bound = http.addr;
        let addr = config
            .advertise
            .clone()
            .unwrap_or_else(|| bound.to_string());
        let slots = config.upload_slots.max(1);
        let peer = Arc::new(Peer::new(config, addr, clock)?);
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let mut threads = Vec::new();
        let uploads = crate::net::Permits::new(slots);
        let (serving, conns) = (peer.clone(), http.conns.clone());
        threads.push(http.serve(
            crate::net::Elastic::new("files"),
            move |call| server::serve(&serving, call, &uploads),
            move |call| server::refuse(call, &conns.refusal()),
        )?);
        threads.push(http.spawn_warden(stopped.clone())?);
        let (tasks, inbox) = agent::TaskQueue::new();
        let worker = peer.clone();
        threads.push(spawn("tasks", move || agent::run_tasks(&worker, &inbox))?);
        // Scan and register before returning, so a shell started right after can announce
        // at once; if no index answers, the agent keeps trying.
        peer.rescan()?;
        agent::round(&peer, &tasks);
        let (scanner, scanner_stop) = (peer.clone(), stopped.clone());
        threads.push(spawn("scanner", move || {
            agent::run_scanner(&scanner, &scanner_stop)
        })?);
        let agent = peer.clone();
        threads.push(spawn("agent", move || {
            agent::run(&agent, &stopped, &tasks)
        })?);
        log::info!(
            "peer serving {} at {}",
            peer.store.dir().display(),
            peer.addr()
        );
        Ok(PeerNode {
            peer,
            http,
            stop,
            threads,
        })
    }

    pub fn peer(&self) -> &Arc<Peer> {
        &self.peer
    }

    /// Leaves the index and stops every thread.
    pub fn stop(self) {
        if let Err(e) = self.peer.unregister() {
            log::warn!("could not unregister: {e}");
        }
        drop(self.stop);
        self.http.stop();
        for t in self.threads {
            let _ = t.join();
        }
    }
}
