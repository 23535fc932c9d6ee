//! A peer: shares a folder (`files`), serves it to other peers (`server`), keeps the index
//! informed (`agent`, through `client`), fetches files from other peers with verification
//! (`download`), and offers an interactive shell (`shell`).
//!
//! [`Peer`] is the state the shell, the agent and the server share; [`PeerNode`] starts and
//! stops the threads around it.

pub mod agent;
pub mod client;
pub mod config;
pub mod download;
pub mod edit;
pub mod files;
pub mod server;
pub mod shell;

use crate::threads::lock;
use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use client::{ClientError, IndexClient};
use download::{DownloadError, Downloader, Progress};
use files::{Changes, Identity, LocalStore};

pub use config::{ConfigError, PeerConfig, DEFAULT_MAX_CONNECTIONS};

use crate::clock::SharedClock;
use crate::protocol::{
    AnnounceRequest, AnnounceResponse, ErrorCode, FileMeta, HeartbeatRequest, HeartbeatResponse,
    RegisterRequest, RegisterResponse, SearchResult, TaskFailure, UnregisterRequest,
};

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
    identity: Mutex<Option<Identity>>,
    heartbeat_interval_ms: AtomicU64,
    /// Set when the index may have missed a change: the agent then registers the whole list.
    needs_register: AtomicBool,
    /// Things the user should hear about (files the index refused); the shell prints them.
    notices: Mutex<Vec<String>>,
    /// File-list changes found by rescans and not yet reported: name -> new meta, or `None`
    /// for a removal. Later findings replace earlier ones.
    pending: Mutex<BTreeMap<String, Option<FileMeta>>>,
    /// Publishes no index confirmed or refused (see `edit`).
    in_doubt: Mutex<Vec<edit::InDoubt>>,
    /// Tasks given up on since the last heartbeat.
    failed_tasks: Mutex<Vec<TaskFailure>>,
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
        let identity = store.load_identity();
        Ok(Peer {
            store,
            index: IndexClient::new(config.index.clone(), config.index_timeout),
            downloader: Downloader::new(config.index_timeout.max(Duration::from_secs(5))),
            addr,
            clock,
            identity: Mutex::new(identity),
            heartbeat_interval_ms: AtomicU64::new(1000),
            needs_register: AtomicBool::new(true),
            notices: Mutex::new(Vec::new()),
            pending: Mutex::new(BTreeMap::new()),
            in_doubt: Mutex::new(Vec::new()),
            failed_tasks: Mutex::new(Vec::new()),
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

    pub fn identity(&self) -> Option<Identity> {
        lock(&self.identity).clone()
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms.load(Ordering::Relaxed))
    }

    pub fn needs_register(&self) -> bool {
        self.needs_register.load(Ordering::Relaxed)
    }

    /// Makes the agent register the whole file list on its next round.
    fn request_register(&self) {
        self.needs_register.store(true, Ordering::Relaxed);
    }

    pub fn take_notices(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.notices))
    }

    fn notice(&self, text: String) {
        log::warn!("{text}");
        lock(&self.notices).push(text);
    }

    fn note_rejected(&self, rejected: &[crate::protocol::Rejected]) {
        for r in rejected {
            self.notice(format!("the index refused {}: {}", r.name, r.reason));
        }
    }

    /// Rescans the shared folder and queues what changed for the next heartbeat.
    /// Returns whether anything changed.
    pub fn rescan(&self) -> io::Result<bool> {
        let changes = self.store.rescan()?;
        let changed = !changes.is_empty();
        let mut pending = lock(&self.pending);
        for meta in changes.added {
            pending.insert(meta.name.clone(), Some(meta));
        }
        for name in changes.removed {
            pending.insert(name, None);
        }
        Ok(changed)
    }

    /// Rescans and, if anything changed, tells the index at once in a heartbeat that does not
    /// wait (the agent's own is usually held by the index as a long poll). On failure the
    /// changes are not lost: the agent registers the whole list instead.
    pub fn report_changes(&self) -> io::Result<()> {
        if self.rescan()? && !self.needs_register() {
            if let Err(e) = self.heartbeat(Duration::ZERO) {
                log::debug!("reporting changes failed: {e}");
            }
        }
        Ok(())
    }

    fn take_pending(&self) -> Changes {
        let pending = std::mem::take(&mut *lock(&self.pending));
        let mut changes = Changes::default();
        for (name, meta) in pending {
            match meta {
                Some(meta) => changes.added.push(meta),
                None => changes.removed.push(name),
            }
        }
        changes
    }

    /// Registers the whole file list, keeping the identity the index hands out (or confirms).
    pub fn register(&self) -> Result<RegisterResponse, ClientError> {
        // The full list supersedes whatever was queued before it was read.
        self.take_pending();
        let identity = self.identity();
        let rq = RegisterRequest {
            addr: self.addr.clone(),
            files: self.store.list(),
            peer_id: identity.as_ref().map(|i| i.peer_id.clone()),
            token: identity.as_ref().map(|i| i.token.clone()),
        };
        let response = match self.index.register(&rq) {
            Ok(r) => r,
            Err(e) => {
                self.request_register();
                if e.code() == Some(ErrorCode::BadToken) && identity.is_some() {
                    // Another peer holds our id (a copied folder?): ask for a new identity.
                    log::warn!("the index refuses our identity ({e}); asking for a new one");
                    *lock(&self.identity) = None;
                }
                return Err(e);
            }
        };
        let fresh = Identity {
            peer_id: response.peer_id.clone(),
            token: response.token.clone(),
        };
        if identity.as_ref() != Some(&fresh) {
            if let Err(e) = self.store.save_identity(&fresh) {
                log::warn!("could not save the peer identity: {e}");
            }
            *lock(&self.identity) = Some(fresh);
        }
        self.heartbeat_interval_ms
            .store(response.heartbeat_interval_ms.max(50), Ordering::Relaxed);
        self.needs_register.store(false, Ordering::Relaxed);
        self.note_rejected(&response.rejected);
        Ok(response)
    }

    /// Tells the index we are alive, with the queued changes of the file list. When the
    /// report may have been lost, the next agent round registers the whole list instead.
    /// `wait` lets the index hold the answer until it has a task for us (long poll).
    pub fn heartbeat(&self, wait: Duration) -> Result<HeartbeatResponse, ClientError> {
        let Some(id) = self.identity() else {
            self.request_register();
            return Err(ClientError::Unavailable(vec!["not registered yet".into()]));
        };
        let changes = self.take_pending();
        let had_changes = !changes.is_empty();
        let failed = std::mem::take(&mut *lock(&self.failed_tasks));
        let rq = HeartbeatRequest {
            peer_id: id.peer_id,
            token: id.token,
            added: changes.added,
            removed: changes.removed,
            failed,
            wait_ms: (!wait.is_zero()).then_some(wait.as_millis() as u64),
        };
        match self.index.heartbeat(&rq) {
            Ok(response) => {
                self.note_rejected(&response.rejected);
                Ok(response)
            }
            Err(e) => {
                if had_changes || e.needs_register() {
                    self.request_register();
                }
                // Told again next time.
                lock(&self.failed_tasks).extend(rq.failed);
                Err(e)
            }
        }
    }

    /// A task we could not carry out; the next heartbeat tells the index, which gives it to
    /// another peer.
    pub fn task_failed(&self, task_id: &str, reason: String) {
        lock(&self.failed_tasks).push(TaskFailure {
            task_id: task_id.to_string(),
            reason,
        });
    }

    /// Tells the index we hold `meta`. Publishing a new version takes the file's `lease_id`.
    pub fn announce(
        &self,
        meta: &FileMeta,
        lease_id: Option<&str>,
    ) -> Result<AnnounceResponse, ClientError> {
        let Some(id) = self.identity() else {
            self.request_register();
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
        self.index.announce(&rq).inspect_err(|e| {
            // When the index may have missed it, a full register tells it again. (A refusal
            // is an answer: the index's record of us is as it was.)
            if !matches!(e, ClientError::Api { .. }) || e.needs_register() {
                self.request_register();
            }
        })
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

    /// A file was put in place by us, not found by a rescan: whatever a rescan queued for
    /// it before (e.g. its removal, when a local copy was set aside) no longer holds, and the
    /// announce that follows reports it.
    fn installed(&self, name: &str) {
        lock(&self.pending).remove(name);
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
    server: Arc<tiny_http::Server>,
    stop: Sender<()>,
    threads: Vec<JoinHandle<()>>,
    failed: Receiver<()>,
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
            },
        )?;
        let (server, bound) = (http.server.clone(), http.addr);
        let addr = config
            .advertise
            .clone()
            .unwrap_or_else(|| bound.to_string());
        let slots = config.upload_slots.max(1);
        let peer = Arc::new(Peer::new(config, addr, clock)?);
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let mut threads = Vec::new();
        let (dispatcher, calls) = http.spawn_dispatcher(server::refuse)?;
        threads.push(dispatcher);
        for n in 0..slots {
            let (peer, calls) = (peer.clone(), calls.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("upload-{n}"))
                    .spawn(move || server::serve(&peer, &calls))?,
            );
        }
        let (fail, failed) = crossbeam_channel::bounded(1);
        threads.push(http.spawn_warden(stopped.clone(), move || {
            let _ = fail.try_send(());
        })?);
        let (tasks, inbox) = agent::TaskQueue::new();
        {
            let peer = peer.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("tasks".into())
                    .spawn(move || agent::run_tasks(&peer, &inbox))?,
            );
        }
        // Scan and register before returning, so a shell started right after can announce
        // at once; if no index answers, the agent keeps trying.
        peer.rescan()?;
        agent::register(&peer, &tasks);
        {
            let (peer, stopped) = (peer.clone(), stopped.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("scanner".into())
                    .spawn(move || agent::run_scanner(&peer, &stopped))?,
            );
        }
        {
            let peer = peer.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("agent".into())
                    .spawn(move || agent::run(&peer, &stopped, &tasks))?,
            );
        }
        log::info!(
            "peer serving {} at {}",
            peer.store.dir().display(),
            peer.addr()
        );
        Ok(PeerNode {
            peer,
            server,
            stop,
            threads,
            failed,
        })
    }

    pub fn peer(&self) -> &Arc<Peer> {
        &self.peer
    }

    /// Ready once the file server has stopped accepting connections (see
    /// `net::connections`): the process should stop, so its supervisor starts a fresh one.
    pub fn failed(&self) -> &Receiver<()> {
        &self.failed
    }

    /// Leaves the index and stops every thread.
    pub fn stop(self) {
        if let Err(e) = self.peer.unregister() {
            log::warn!("could not unregister: {e}");
        }
        drop(self.stop);
        for _ in 0..self.threads.len() {
            self.server.unblock();
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}
