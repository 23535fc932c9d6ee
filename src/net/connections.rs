//! The connection limit of an HTTP server, and the deadlines of its requests, kept from
//! outside tiny_http.
//!
//! tiny_http 0.12 owns `accept` and gives every connection two file descriptors and a thread
//! for as long as it stays open, with no hook to count or refuse one, no read timeout and no
//! limit on a request head. Left alone, a client that opens connections and sends nothing, or
//! sends a head for ever, holds them forever.
//!
//! So the server counts for itself:
//! - Requests in flight are counted exactly as the dispatcher takes them from tiny_http
//!   (`Connections::take`). One past `max` is answered 503 at once. Every live nap peer
//!   holds one (its long-poll heartbeat), so `max` is also how many peers can be connected.
//! - Open connections are counted by the warden thread, which looks at the process's own
//!   sockets in `/proc/self/fd` (Linux) and shuts down, so that tiny_http's blocked read or
//!   write returns:
//!   - a connection with no request in flight for `idle_timeout`, and at once (after a short
//!     grace) while more than `max` are open, the longest idle first;
//!   - one receiving a head (bytes arrive, no request yet: `TCP_INFO`) for `request_timeout`
//!     or of more than `MAX_HEAD` bytes;
//!   - one whose request is past the deadline its thread set for its body or its answer
//!     (`Busy::set_deadline`, see `exchange`), or whose unread body was given up (`doom`).
//!
//!   A request that tiny_http has read but the dispatcher not yet taken looks idle, for
//!   microseconds unless the machine is starved.
//! - The descriptor limit is raised to the hard limit at start (as Go's runtime does), and a
//!   `max` that cannot fit in it is refused at start instead of failing under load.
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::exchange::Call;
use super::sockets::{self, FdDir, Slot};
use crate::threads::lock;

/// Descriptors a connection costs inside tiny_http: the stream and its clone.
const FDS_PER_CONNECTION: u64 = 2;
/// Descriptors kept for everything else: logs, snapshots, outgoing connections, downloads.
const FDS_RESERVED: u64 = 256;
/// How often the warden looks at the sockets, at most.
const SCAN_EVERY: Duration = Duration::from_millis(100);
/// A look costs a few microseconds per open descriptor; the pause after one is this many
/// times as long, so the warden takes at most about 2% of a core however many are open.
const PAUSE_PER_LOOK: u32 = 50;
/// While over the limit, a connection idle this long may be shut down: a request may be on
/// its way on a younger one.
const GRACE: Duration = Duration::from_millis(250);
/// A new connection that has sent bytes but not had a request taken for this long is taken
/// to wait in tiny_http's queue for a thread (see `Warden::look`).
const STUCK: Duration = Duration::from_millis(150);

/// How many connections a server takes, for how long an idle one stays open, and how long a
/// request and its answer may take (see `exchange`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max: usize,
    pub idle_timeout: Duration,
    /// A request's head, its body, and each part of its answer must move within this time,
    /// and move `MIN_RATE` over every span of it (see `exchange::Pace`).
    pub request_timeout: Duration,
}

/// The slowest a body or an answer may move over a span of `request_timeout`: 16 KiB/s, a
/// slow mobile link. Below it, a client holds a thread and a connection for
/// nothing.
pub const MIN_RATE: u64 = 16 * 1024;

/// The largest request head taken. Heads are read by tiny_http, which sets no limit, so the
/// warden enforces this one from outside: a connection found receiving more than this without
/// a request is cut at its next look.
pub const MAX_HEAD: u64 = 64 * 1024;

/// Counters of what the limit did, for metrics and status pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Connections open at the warden's last look (0 where it cannot look).
    pub open: usize,
    pub in_flight: usize,
    pub max: usize,
    /// Requests answered 503 because `max` were in flight.
    pub refused: u64,
    /// Connections shut down after `idle_timeout` without a request.
    pub closed_idle: u64,
    /// Idle connections shut down to get back under `max`.
    pub closed_over_limit: u64,
    /// Connections shut down because a head, a body or an answer was too slow or too large.
    pub closed_slow: u64,
    /// Times the server had to start accepting again (out of descriptors, say).
    pub accept_restarts: u64,
}

/// Requests in flight and the last time each peer address had one, shared by the request
/// threads and the warden.
pub struct Connections {
    limits: Limits,
    in_flight: AtomicUsize,
    activity: Mutex<HashMap<SocketAddr, Activity>>,
    /// Where a warden can run (Linux): only it prunes `activity`, so without one nothing is
    /// kept.
    tracking: AtomicBool,
    open: AtomicUsize,
    refused: AtomicU64,
    closed_idle: AtomicU64,
    closed_over_limit: AtomicU64,
    closed_slow: AtomicU64,
    accept_restarts: AtomicU64,
    /// Looks the warden has taken, and whether the last one found more connections open
    /// (or just opened) than `max`: accepting again waits for the warden to shed them.
    looks: AtomicU64,
    crowded: AtomicBool,
    /// Asks the warden to look now rather than after its pause.
    nudge: (crossbeam_channel::Sender<()>, Receiver<()>),
}

#[derive(Clone, Copy)]
struct Activity {
    requests: u32,
    last: Instant,
    /// When the body being read must have moved by (see `exchange::Pace`).
    reading: Option<Instant>,
    /// When the body being read last moved.
    read_moved: Instant,
    /// When the answer being written must have moved by.
    writing: Option<Instant>,
    /// To be cut at the warden's next look: a body was left unread, and tiny_http would
    /// otherwise read the rest of it, however long it takes, before the connection ends.
    doomed: bool,
}

impl Activity {
    /// Past a deadline, or doomed: the warden cuts it even with a request in flight.
    fn overdue(&self, now: Instant) -> bool {
        self.doomed
            || self.reading.is_some_and(|d| d <= now)
            || self.writing.is_some_and(|d| d <= now)
    }
}

/// A request as the server took it.
pub enum Taken {
    Placed(Call),
    /// No place was left: to be answered 503.
    Refused(Call),
}

/// Which way a request's bytes move, for the deadline the warden enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Reading,
    Writing,
}

/// A request's place among those in flight; freed when dropped.
pub struct Busy {
    conns: Arc<Connections>,
    peer: Option<SocketAddr>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.conns.in_flight.fetch_sub(1, Ordering::AcqRel);
        if let Some(peer) = self.peer {
            let mut activity = lock(&self.conns.activity);
            if let Some(a) = activity.get_mut(&peer) {
                a.requests = a.requests.saturating_sub(1);
                a.last = Instant::now();
                if a.requests == 0 {
                    a.reading = None;
                    a.writing = None;
                    a.doomed = false;
                }
            }
        }
    }
}

impl Busy {
    /// The server's limits.
    pub fn limits(&self) -> Limits {
        self.conns.limits
    }

    /// Sets (or with `None` clears) the time by which this request's bytes must have moved
    /// `direction`; past it the warden cuts the connection, even in the middle of a blocked
    /// read or write.
    pub fn set_deadline(&self, direction: Direction, deadline: Option<Instant>) {
        self.update(|a| match direction {
            Direction::Reading => {
                a.reading = deadline;
                a.read_moved = Instant::now();
            }
            Direction::Writing => a.writing = deadline,
        });
    }

    /// Has the warden cut this request's connection at its next look.
    pub fn doom(&self) {
        self.update(|a| a.doomed = true);
    }

    /// Counts a connection given up for being too slow by the request's own thread.
    pub fn count_slow(&self) {
        self.conns.closed_slow.fetch_add(1, Ordering::Relaxed);
    }

    fn update(&self, change: impl FnOnce(&mut Activity)) {
        if let Some(peer) = self.peer {
            if let Some(a) = lock(&self.conns.activity).get_mut(&peer) {
                change(a);
            }
        }
    }
}

impl Connections {
    pub fn new(limits: Limits) -> Arc<Connections> {
        Arc::new(Connections {
            limits,
            in_flight: AtomicUsize::new(0),
            activity: Mutex::new(HashMap::new()),
            // Where a warden can run, it will: what happens before it starts counts too.
            tracking: AtomicBool::new(std::path::Path::new("/proc/self/fd").is_dir()),
            open: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            closed_idle: AtomicU64::new(0),
            closed_over_limit: AtomicU64::new(0),
            closed_slow: AtomicU64::new(0),
            accept_restarts: AtomicU64::new(0),
            looks: AtomicU64::new(0),
            crowded: AtomicBool::new(false),
            nudge: crossbeam_channel::bounded(1),
        })
    }

    /// Takes a place for a request from `peer`, or `None` when `max` are in flight (answer
    /// it 503).
    pub fn begin(self: &Arc<Self>, peer: Option<SocketAddr>) -> Option<Busy> {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if before >= self.limits.max {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Busy {
            conns: self.clone(),
            peer: self.track(peer),
        })
    }

    /// Counts one more request in flight from `peer` (where a warden runs); the address
    /// kept, if any.
    fn track(&self, peer: Option<SocketAddr>) -> Option<SocketAddr> {
        let peer = peer.filter(|_| self.tracking.load(Ordering::Relaxed))?;
        let mut activity = lock(&self.activity);
        let a = activity.entry(peer).or_insert(Activity {
            requests: 0,
            last: Instant::now(),
            reading: None,
            read_moved: Instant::now(),
            writing: None,
            doomed: false,
        });
        a.requests += 1;
        a.last = Instant::now();
        Some(peer)
    }

    /// Takes a place for `request`, or finds none left (it is then answered 503 at once). A
    /// refused request is counted in flight too while it is answered, past `max`, so the
    /// warden can cut it if its client does not read.
    pub fn take(self: &Arc<Self>, request: tiny_http::Request) -> Taken {
        let peer = request.remote_addr().copied();
        match self.begin(peer) {
            Some(busy) => Taken::Placed(Call::new(request, busy)),
            None => {
                self.in_flight.fetch_add(1, Ordering::AcqRel);
                self.track(peer);
                let busy = Busy {
                    conns: self.clone(),
                    peer: peer.filter(|_| self.tracking.load(Ordering::Relaxed)),
                };
                Taken::Refused(Call::new(request, busy))
            }
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The error a refused request gets.
    pub fn refusal(&self) -> String {
        format!(
            "too many connections: this server takes {} requests at a time; retry later",
            self.limits.max
        )
    }

    pub fn counts(&self) -> Counts {
        Counts {
            open: self.open.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            max: self.limits.max,
            refused: self.refused.load(Ordering::Relaxed),
            closed_idle: self.closed_idle.load(Ordering::Relaxed),
            closed_over_limit: self.closed_over_limit.load(Ordering::Relaxed),
            closed_slow: self.closed_slow.load(Ordering::Relaxed),
            accept_restarts: self.accept_restarts.load(Ordering::Relaxed),
        }
    }

    /// The warden: looks at the sockets every 100 ms (less often when a look takes long)
    /// until `stop` closes.
    pub fn watch(&self, listener: ListenerId, stop: &Receiver<()>) {
        let Some(mut warden) = Warden::new(listener) else {
            log::info!("open connections are not counted on this system (no /proc/self/fd)");
            let _ = stop.recv();
            return;
        };
        let mut pause = SCAN_EVERY;
        loop {
            crossbeam_channel::select! {
                recv(stop) -> _ => return,
                recv(self.nudge.1) -> _ => {}
                default(pause) => {}
            }
            let started = Instant::now();
            let looked = warden.look(self);
            // Over the limit, or with connections waiting for a thread, the next look comes
            // soon whatever it costs: the excess holds descriptors; the waiting, a client.
            pause = if warden.over_limit || warden.waiting {
                SCAN_EVERY
            } else {
                SCAN_EVERY.max(started.elapsed() * PAUSE_PER_LOOK)
            };
            match looked {
                Ok(()) => warden.failing = false,
                Err(e) => {
                    if !warden.failing {
                        log::warn!("could not look at open connections: {e}");
                    }
                    warden.failing = true;
                }
            }
        }
    }

    /// Counts a restart of accepting (see `HttpServer`).
    pub(crate) fn count_accept_restart(&self) {
        self.accept_restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// Has the warden look now (accepting failed: connections must be shed).
    pub(crate) fn nudge(&self) {
        let _ = self.nudge.0.try_send(());
    }

    /// The warden's looks so far, and whether the last found more connections than `max`.
    pub(crate) fn crowding(&self) -> (u64, bool) {
        (
            self.looks.load(Ordering::Acquire),
            self.crowded.load(Ordering::Acquire),
        )
    }
}

/// What the warden knows of the sockets it has seen.
struct Warden {
    /// Opened at start, so that a look needs no new descriptor (see `sockets`).
    dir: FdDir,
    slot: Slot,
    port: u16,
    listener_ino: u64,
    /// Our connections, by socket inode: the peer's address and when first seen.
    ours: HashMap<u64, Seen>,
    /// Other sockets (outgoing connections, other listeners), so they are inspected once.
    others: HashSet<u64>,
    /// Sockets that could not be inspected when seen (when first seen, and a descriptor):
    /// asked about again at the next look.
    fresh: HashMap<u64, (Instant, i32)>,
    /// The last look failed (said once, not every 100 ms).
    failing: bool,
    /// The last look left more connections open than the limit (counting fresh ones).
    over_limit: bool,
    /// The last look found connections waiting in tiny_http's queue.
    waiting: bool,
    /// When the last look began.
    last_look: Instant,
}

struct Seen {
    peer: SocketAddr,
    first: Instant,
    fd: i32,
    /// Shut down by the warden, not yet closed by tiny_http: no longer counted.
    closing: bool,
    /// While it has no request in flight: what it had received when that began.
    quiet: Option<Quiet>,
}

/// A connection without a request: since when, the bytes it had received then, and when
/// more were first seen arriving (a head on its way).
struct Quiet {
    since: Instant,
    bytes: u64,
    head_from: Option<Instant>,
}

/// A listening socket as the warden knows it: its port and inode.
#[derive(Clone, Copy, Debug)]
pub struct ListenerId {
    port: u16,
    ino: u64,
}

impl ListenerId {
    pub fn of(listener: &std::net::TcpListener) -> io::Result<ListenerId> {
        use std::os::unix::fs::MetadataExt;
        let port = listener.local_addr()?.port();
        let copy = std::fs::File::from(std::os::fd::OwnedFd::from(listener.try_clone()?));
        Ok(ListenerId {
            port,
            ino: copy.metadata()?.ino(),
        })
    }
}

impl Warden {
    fn new(listener: ListenerId) -> Option<Warden> {
        let (dir, slot) = match (FdDir::open(), Slot::open()) {
            (Ok(dir), Ok(slot)) => (dir, slot),
            _ => return None,
        };
        Some(Warden {
            dir,
            slot,
            port: listener.port,
            listener_ino: listener.ino,
            ours: HashMap::new(),
            others: HashSet::new(),
            fresh: HashMap::new(),
            failing: false,
            over_limit: false,
            waiting: false,
            last_look: Instant::now(),
        })
    }

    /// One look: counts the open connections, shuts down those idle too long (or too many)
    /// and those whose request is overdue.
    fn look(&mut self, conns: &Connections) -> io::Result<()> {
        let began = Instant::now();
        let mut live: HashMap<u64, i32> = HashMap::new();
        let mut others_live = HashSet::new();
        let mut fresh = HashMap::new();
        for fd in self.dir.list() {
            let Some(ino) = sockets::socket_inode(fd) else {
                continue;
            };
            if ino == self.listener_ino {
                continue;
            } else if self.ours.contains_key(&ino) {
                // tiny_http holds two descriptors per connection: keep the first seen.
                live.entry(ino).or_insert(fd);
            } else if self.others.contains(&ino) {
                others_live.insert(ino);
            } else {
                // New since the last look (or not told apart then): inspected at once, so a
                // head too large is seen within one look of the connection's start.
                let first = self.fresh.get(&ino).map_or_else(Instant::now, |(f, _)| *f);
                match inspect(&mut self.slot, fd, ino, self.port) {
                    Ok(Some(peer)) => {
                        let seen = Seen {
                            peer,
                            first,
                            fd,
                            closing: false,
                            quiet: None,
                        };
                        self.ours.insert(ino, seen);
                        live.insert(ino, fd);
                    }
                    Ok(None) => {
                        others_live.insert(ino);
                    }
                    // Could not tell now: ask again next look.
                    Err(_) => {
                        fresh.insert(ino, (first, fd));
                    }
                }
            }
        }
        self.fresh = fresh;
        self.ours.retain(|ino, _| live.contains_key(ino));
        for (ino, fd) in &live {
            if let Some(seen) = self.ours.get_mut(ino) {
                seen.fd = *fd;
            }
        }
        self.others = others_live;

        // Idle: no request in flight. Since when: the end of its last request, or its accept.
        let now = Instant::now();
        // The activity lock is held from the check to the shutdown: a request that begins
        // meanwhile waits, so a connection found idle is still idle when it is shut down.
        let mut activity = lock(&conns.activity);
        let peers: HashSet<SocketAddr> = self.ours.values().map(|s| s.peer).collect();
        // An address not among ours may be a connection not yet inspected (opened since the
        // last look): its entry stays until the look after.
        let since_last_look = self.last_look;
        activity
            .retain(|peer, a| a.requests > 0 || peers.contains(peer) || a.last >= since_last_look);
        self.last_look = began;
        let mut idle: Vec<(Instant, u64)> = Vec::new();
        // Cut: (connection, why, counter).
        let mut cuts: Vec<(u64, &str, &AtomicU64)> = Vec::new();
        // New connections that have sent something and never had a request taken, and
        // requests whose body has not moved for a while (since when, which).
        let mut stuck = 0;
        let mut stalled: Vec<(Instant, u64)> = Vec::new();
        let head_timeout = conns.limits.request_timeout;
        for (ino, seen) in self.ours.iter_mut().filter(|(_, s)| !s.closing) {
            // The end of its last request, unless the entry is older than the connection
            // (left by an earlier one from the same address).
            let since = match activity.get(&seen.peer) {
                Some(a) if a.requests > 0 => {
                    seen.quiet = None;
                    if a.overdue(now) {
                        cuts.push((*ino, "too slow", &conns.closed_slow));
                    } else if a.reading.is_some()
                        && now.saturating_duration_since(a.read_moved) >= STUCK
                    {
                        stalled.push((a.read_moved, *ino));
                    }
                    continue;
                }
                Some(a) => a.last.max(seen.first),
                None => seen.first,
            };
            // Bytes arriving on a connection with no request: a head being sent. It must be
            // whole within the request timeout and no larger than MAX_HEAD.
            let received = self
                .slot
                .with(seen.fd, *ino, sockets::received_bytes)
                .ok()
                .flatten()
                .flatten();
            if !activity.contains_key(&seen.peer)
                && received.is_some_and(|b| b > 0)
                && now.saturating_duration_since(seen.first) >= STUCK
            {
                stuck += 1;
            }
            if let Some(bytes) = received {
                if seen.quiet.as_ref().is_none_or(|q| q.since != since) {
                    // A new quiet spell. On a connection that never had a request, every byte
                    // it has received is head (so one sending a huge head is cut at once).
                    let first = !activity.contains_key(&seen.peer);
                    seen.quiet = Some(Quiet {
                        since,
                        bytes: if first { 0 } else { bytes },
                        head_from: (first && bytes > 0).then_some(seen.first),
                    });
                }
                if let Some(q) = seen.quiet.as_mut() {
                    let sent = bytes.saturating_sub(q.bytes);
                    if sent > 0 {
                        let from = *q.head_from.get_or_insert(now);
                        if sent > MAX_HEAD {
                            cuts.push((*ino, "head too large", &conns.closed_slow));
                            continue;
                        }
                        if now.saturating_duration_since(from) >= head_timeout {
                            cuts.push((*ino, "head too slow", &conns.closed_slow));
                            continue;
                        }
                    }
                }
            }
            idle.push((since, *ino));
        }
        idle.sort();
        // tiny_http's pool can queue a new connection for a thread that is not free (DESIGN.md,
        // defect 1): it then waits until some connection of that pool ends. Those that
        // hold a thread for nothing are ended for it: idle ones (longest first), then
        // requests whose body has stalled (longest first), one for each connection waiting.
        if stuck > 0 {
            stalled.sort();
            let idle_first = idle.iter().map(|(_, ino)| (*ino, &conns.closed_idle));
            let stalled_next = stalled.iter().map(|(_, ino)| (*ino, &conns.closed_slow));
            let mut freed = 0;
            for (ino, counter) in idle_first.chain(stalled_next) {
                if freed >= stuck {
                    break;
                }
                // Not one of those waiting (they have no request yet, but sent one).
                let waiting = self.ours.get(&ino).is_some_and(|s| {
                    !activity.contains_key(&s.peer)
                        && s.quiet
                            .as_ref()
                            .is_some_and(|q| q.head_from.is_some() || q.bytes > 0)
                });
                if !waiting && !cuts.iter().any(|(c, _, _)| *c == ino) {
                    cuts.push((ino, "holding a thread others wait for", counter));
                    freed += 1;
                }
            }
        }
        let mut open = self.ours.values().filter(|s| !s.closing).count();
        // The longest idle first, until back under the limit.
        let mut left = open.saturating_sub(cuts.len());
        let timeout = conns.limits.idle_timeout;
        for (since, ino) in idle {
            let idle_for = now.saturating_duration_since(since);
            if idle_for >= timeout {
                cuts.push((ino, "idle", &conns.closed_idle));
                left = left.saturating_sub(1);
            } else if left > conns.limits.max && idle_for >= GRACE.min(timeout) {
                cuts.push((ino, "idle over the limit", &conns.closed_over_limit));
                left -= 1;
            }
        }
        for (ino, why, counter) in cuts {
            let Some(seen) = self.ours.get_mut(&ino).filter(|s| !s.closing) else {
                continue;
            };
            if self.slot.with(seen.fd, ino, sockets::shut_down).ok() == Some(Some(true)) {
                log::debug!("closed connection from {}: {why}", seen.peer);
                counter.fetch_add(1, Ordering::Relaxed);
                open -= 1;
                seen.closing = true;
            }
        }
        drop(activity);
        conns.open.store(open, Ordering::Relaxed);
        self.over_limit = open + self.fresh.len() > conns.limits.max;
        self.waiting = stuck > 0;
        conns.crowded.store(self.over_limit, Ordering::Release);
        conns.looks.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}

/// The peer's address, if `fd` is a connection accepted on `port`; an error when that
/// cannot be told now.
fn inspect(slot: &mut Slot, fd: i32, ino: u64, port: u16) -> io::Result<Option<SocketAddr>> {
    let addresses = slot.with(fd, ino, sockets::addresses)?.transpose()?;
    Ok(match addresses {
        // A listening socket has no peer.
        Some((Some(local), peer)) if local.port() == port => peer,
        _ => None,
    })
}

/// Raises the soft limit on open files to the hard limit and checks that `max` connections
/// fit in it. The error says what to change.
pub fn reserve_descriptors(max: usize) -> io::Result<()> {
    let limit = raise_open_files()?;
    let needed = needed_descriptors(max);
    if needed > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{max} connections need about {needed} open files, but this process may open \
                 {limit} (ulimit -Hn, or LimitNOFILE= under systemd): take fewer connections \
                 (at most {}) or raise the limit",
                fitting_connections(limit)
            ),
        ));
    }
    Ok(())
}

/// `wanted`, or as many connections as fit in the open-file limit if that is fewer.
pub fn fitting(wanted: usize) -> usize {
    match raise_open_files() {
        Ok(limit) => wanted.min(fitting_connections(limit)).max(1),
        Err(_) => wanted,
    }
}

/// `fitting(wanted)`, with a warning when the open-file limit makes it fewer.
pub fn fitting_or_warn(wanted: usize) -> usize {
    let max = fitting(wanted);
    if max < wanted {
        log::warn!(
            "taking {max} connections, not {wanted}: the open-file limit holds no more \
             (raise ulimit -Hn or LimitNOFILE=, or set --max-connections)"
        );
    }
    max
}

fn needed_descriptors(max: usize) -> u64 {
    (max as u64)
        .saturating_mul(FDS_PER_CONNECTION)
        .saturating_add(FDS_RESERVED)
}

fn fitting_connections(limit: u64) -> usize {
    // Half the room: the rest absorbs a burst of connections the warden has yet to shed.
    usize::try_from(limit.saturating_sub(FDS_RESERVED) / (2 * FDS_PER_CONNECTION))
        .unwrap_or(usize::MAX)
}

/// Sets the soft open-file limit to the hard one; returns the limit now in force.
// `rlim_t` is u64 here but narrower on some 32-bit targets.
#[allow(clippy::unnecessary_cast)]
pub fn raise_open_files() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; no other memory is touched.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut target = lim.rlim_max;
    if target == libc::RLIM_INFINITY {
        // Linux refuses a soft limit above fs.nr_open.
        target = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20);
    }
    if lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < target {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(target as u64);
        }
        log::debug!(
            "could not raise the open-file limit: {}",
            io::Error::last_os_error()
        );
    }
    Ok(lim.rlim_cur as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conns(max: usize) -> Arc<Connections> {
        Connections::new(Limits {
            max,
            idle_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
        })
    }

    #[test]
    fn requests_past_the_limit_are_refused_and_places_come_back() {
        let c = conns(2);
        let a = c.begin(None).expect("first");
        let b = c.begin(None).expect("second");
        assert!(c.begin(None).is_none(), "third is refused");
        assert_eq!(c.counts().refused, 1);
        assert_eq!(c.counts().in_flight, 2);
        drop(a);
        let again = c.begin(None).expect("a place came back");
        drop((b, again));
        assert_eq!(c.counts().in_flight, 0);
    }

    #[test]
    fn activity_tracks_requests_per_peer() {
        let c = conns(10);
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        c.tracking.store(false, Ordering::Relaxed);
        let _untracked = c.begin(Some(peer)).unwrap();
        assert!(lock(&c.activity).is_empty(), "no warden, nothing kept");
        c.tracking.store(true, Ordering::Relaxed);
        let one = c.begin(Some(peer)).unwrap();
        let two = c.begin(Some(peer)).unwrap();
        assert_eq!(lock(&c.activity)[&peer].requests, 2);
        drop(one);
        assert_eq!(lock(&c.activity)[&peer].requests, 1);
        drop(two);
        assert_eq!(lock(&c.activity)[&peer].requests, 0);
    }

    #[test]
    fn descriptor_arithmetic() {
        assert_eq!(needed_descriptors(100), 456);
        assert_eq!(fitting_connections(656), 100, "half the room is left free");
        assert_eq!(fitting_connections(10), 0);
        assert_eq!(needed_descriptors(usize::MAX), u64::MAX);
    }

    /// The warden counts a server's connections, closes idle ones, leaves busy ones.
    #[test]
    fn the_warden_closes_idle_connections_and_keeps_busy_ones() {
        use std::io::Read;
        let listener = crate::net::bind_listener("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let c = Connections::new(Limits {
            max: 10,
            idle_timeout: Duration::from_millis(300),
            request_timeout: Duration::from_secs(10),
        });
        let mut warden = Warden::new(ListenerId::of(&listener).unwrap()).expect("linux");
        let idle_client = std::net::TcpStream::connect(addr).unwrap();
        let busy_client = std::net::TcpStream::connect(addr).unwrap();
        let (idle_server, _) = listener.accept().unwrap();
        let (busy_server, _) = listener.accept().unwrap();
        let busy = c.begin(Some(busy_client.local_addr().unwrap())).unwrap();
        // Counted from the first look that sees them.
        warden.look(&c).unwrap();
        assert_eq!(c.counts().open, 2);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 1];
        idle_client
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        loop {
            assert!(Instant::now() < deadline, "idle connection never closed");
            warden.look(&c).unwrap();
            // The server's side was shut down: the client reads the end.
            if let Ok(0) = (&idle_client).read(&mut buf) {
                break;
            }
        }
        assert_eq!(c.counts().closed_idle, 1);
        assert_eq!(c.counts().open, 1, "the busy one is still counted");
        // Once its owner closes it, it is gone; nothing else is closed.
        drop(idle_server);
        warden.look(&c).unwrap();
        assert_eq!(c.counts().open, 1);
        assert_eq!(c.counts().closed_idle, 1);
        busy_client
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        assert!(
            (&busy_client).read(&mut buf).is_err(),
            "the busy one is still open"
        );
        drop((busy, busy_server));
    }

    /// Reads from `client` until the server's side ends it, within 20 s of looks.
    fn wait_cut(warden: &mut Warden, c: &Connections, client: &std::net::TcpStream) {
        use std::io::Read;
        client
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 1];
        loop {
            assert!(Instant::now() < deadline, "the connection was never cut");
            warden.look(c).unwrap();
            if let Ok(0) = (&*client).read(&mut buf) {
                return;
            }
        }
    }

    /// A request past its deadline is cut with its request in flight; so is one doomed;
    /// a head that grows past MAX_HEAD is cut without any request.
    #[test]
    fn the_warden_cuts_overdue_requests_and_oversized_heads() {
        use std::io::Write;
        let listener = crate::net::bind_listener("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let c = Connections::new(Limits {
            max: 10,
            idle_timeout: Duration::from_secs(600),
            request_timeout: Duration::from_secs(600),
        });
        let mut warden = Warden::new(ListenerId::of(&listener).unwrap()).expect("linux");
        let slow = std::net::TcpStream::connect(addr).unwrap();
        let doomed = std::net::TcpStream::connect(addr).unwrap();
        let mut heady = std::net::TcpStream::connect(addr).unwrap();
        let on_time = std::net::TcpStream::connect(addr).unwrap();
        let _accepted: Vec<_> = (0..4).map(|_| listener.accept().unwrap()).collect();
        let busy_slow = c.begin(Some(slow.local_addr().unwrap())).unwrap();
        let busy_doomed = c.begin(Some(doomed.local_addr().unwrap())).unwrap();
        let busy_on_time = c.begin(Some(on_time.local_addr().unwrap())).unwrap();
        busy_on_time.set_deadline(
            Direction::Writing,
            Some(Instant::now() + Duration::from_secs(600)),
        );
        warden.look(&c).unwrap();
        warden.look(&c).unwrap();
        assert_eq!(c.counts().open, 4);

        busy_slow.set_deadline(Direction::Reading, Some(Instant::now()));
        wait_cut(&mut warden, &c, &slow);
        assert_eq!(c.counts().closed_slow, 1);

        busy_doomed.doom();
        wait_cut(&mut warden, &c, &doomed);
        assert_eq!(c.counts().closed_slow, 2);

        heady
            .write_all(&vec![b'a'; MAX_HEAD as usize + 4096])
            .unwrap();
        wait_cut(&mut warden, &c, &heady);
        assert_eq!(c.counts().closed_slow, 3);
        assert_eq!(c.counts().closed_idle, 0);
        assert_eq!(c.counts().open, 1, "the request on time is left alone");
        drop((busy_slow, busy_doomed, busy_on_time));
    }
}
