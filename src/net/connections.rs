//! The connection limit of an HTTP server, kept from outside tiny_http.
//!
//! tiny_http 0.12 owns `accept` and gives every connection two file descriptors and a thread
//! for as long as it stays open, with no hook to count or refuse one and no read timeout. Left
//! alone, a client that opens connections and sends nothing holds them forever; and once the
//! process runs out of descriptors, `accept` (or the stream's clone) fails inside tiny_http,
//! whose accept thread ends: the server stops listening for good while the process lives on.
//!
//! So the server counts for itself:
//! - Requests in flight are counted exactly as the dispatcher takes them from tiny_http
//!   (`Connections::take`), waiting for a worker included. One past `max` is answered 503
//!   at once. Every live nap peer holds one (its long-poll heartbeat), so `max` is also how
//!   many peers can be connected at a time.
//! - Open connections are counted by the warden thread, which looks at the process's own
//!   sockets in `/proc/self/fd` (Linux). A connection with no request in flight is idle; the
//!   warden shuts it down once idle for `idle_timeout` (which also ends clients that trickle a
//!   request head), and at once (after a short grace) while more than `max` are open, the
//!   longest idle first. A connection with a request in flight is never cut (one whose
//!   request tiny_http has read but the dispatcher not yet taken looks idle, for
//!   microseconds unless the machine is starved).
//! - The descriptor limit is raised to the hard limit at start (as Go's runtime does), and a
//!   `max` that cannot fit in it is refused at start instead of failing under load.
//! - If the accept thread ends anyway, the warden notices that the listening socket is gone
//!   and reports it, so the process can stop and be restarted rather than sit deaf.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

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

/// How many connections a server takes, and for how long an idle one stays open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max: usize,
    pub idle_timeout: Duration,
}

/// Counters of what the limit did, for metrics and status pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Connections open for over a look (100 ms) at the warden's last look (0 where it
    /// cannot look).
    pub open: usize,
    pub in_flight: usize,
    pub max: usize,
    /// Requests answered 503 because `max` were in flight.
    pub refused: u64,
    /// Connections shut down after `idle_timeout` without a request.
    pub closed_idle: u64,
    /// Idle connections shut down to get back under `max`.
    pub closed_over_limit: u64,
}

/// Requests in flight and the last time each peer address had one, shared by the workers
/// and the warden.
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
}

#[derive(Clone, Copy)]
struct Activity {
    requests: u32,
    last: Instant,
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
            }
        }
    }
}

/// A request together with its place among those in flight: answering (or dropping) it
/// frees the place, wherever that happens (a worker, the committer, a parked long poll).
pub struct Call {
    request: tiny_http::Request,
    _busy: Busy,
    taken: Instant,
}

impl Call {
    pub fn new(request: tiny_http::Request, busy: Busy) -> Call {
        Call {
            request,
            _busy: busy,
            taken: Instant::now(),
        }
    }

    /// When the server took the request (its wait for a worker included in what follows).
    pub fn taken(&self) -> Instant {
        self.taken
    }

    /// Sends the answer; the place is freed once it is written.
    pub fn respond<R: io::Read>(self, response: tiny_http::Response<R>) -> io::Result<()> {
        self.request.respond(response)
    }
}

impl Deref for Call {
    type Target = tiny_http::Request;
    fn deref(&self) -> &tiny_http::Request {
        &self.request
    }
}

impl DerefMut for Call {
    fn deref_mut(&mut self) -> &mut tiny_http::Request {
        &mut self.request
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
        let peer = peer.filter(|_| self.tracking.load(Ordering::Relaxed));
        if let Some(peer) = peer {
            let mut activity = lock(&self.activity);
            let a = activity.entry(peer).or_insert(Activity {
                requests: 0,
                last: Instant::now(),
            });
            a.requests += 1;
            a.last = Instant::now();
        }
        Some(Busy {
            conns: self.clone(),
            peer,
        })
    }

    /// Takes a place for `request`: the request with its place, or `None` once it has been
    /// handed to `refuse` (to be answered 503) because no place is left.
    pub fn take(
        self: &Arc<Self>,
        request: tiny_http::Request,
        refuse: impl FnOnce(tiny_http::Request, &Connections),
    ) -> Option<Call> {
        match self.begin(request.remote_addr().copied()) {
            Some(busy) => Some(Call::new(request, busy)),
            None => {
                refuse(request, self);
                None
            }
        }
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
        }
    }

    /// The warden: looks at the sockets every 100 ms (less often when a look takes long)
    /// until `stop` closes; calls `on_lost` (once) if the listening socket disappears.
    pub fn watch(&self, listener: ListenerId, stop: &Receiver<()>, on_lost: impl FnOnce()) {
        let Some(mut warden) = Warden::new(listener) else {
            log::info!("open connections are not counted on this system (no /proc/self/fd)");
            let _ = stop.recv();
            return;
        };
        let mut on_lost = Some(on_lost);
        let mut pause = SCAN_EVERY;
        loop {
            match stop.recv_timeout(pause) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            let started = Instant::now();
            let looked = warden.look(self);
            // Over the limit, the next look comes soon whatever it costs: the excess is
            // holding descriptors.
            pause = if warden.over_limit {
                SCAN_EVERY
            } else {
                SCAN_EVERY.max(started.elapsed() * PAUSE_PER_LOOK)
            };
            match looked {
                Ok(true) => warden.missing = false,
                // Gone in two looks in a row (one might have raced the descriptor table).
                Ok(false) => {
                    if std::mem::replace(&mut warden.missing, true) {
                        if let Some(report) = on_lost.take() {
                            log::error!(
                                "the HTTP server stopped accepting connections (its listening socket is gone)"
                            );
                            report();
                        }
                    }
                }
                Err(e) => {
                    if !warden.failing {
                        log::warn!("could not look at open connections: {e}");
                    }
                    warden.failing = true;
                    continue;
                }
            }
            warden.failing = false;
        }
    }
}

/// What the warden knows of the sockets it has seen.
struct Warden {
    port: u16,
    listener_ino: u64,
    /// Our connections open for more than a look, by socket inode: the peer's address and
    /// when first seen.
    ours: HashMap<u64, Seen>,
    /// Other sockets (outgoing connections, other listeners), so they are inspected once.
    others: HashSet<u64>,
    /// Sockets seen once and not yet inspected (when first seen, and a descriptor): most
    /// connections end within one look, and are never inspected at all.
    fresh: HashMap<u64, (Instant, i32)>,
    /// Descriptors held in reserve: when the process has none left (a flood of connections),
    /// these are let go so the warden can still look (one to list, one to inspect).
    spare: Vec<std::fs::File>,
    /// The last look failed (said once, not every 100 ms).
    failing: bool,
    /// The last look left more connections open than the limit (counting fresh ones).
    over_limit: bool,
    /// The last look did not find the listening socket.
    missing: bool,
}

/// Opens the reserve descriptors the warden lets go of when the process runs out.
fn spares() -> Vec<std::fs::File> {
    (0..2)
        .filter_map(|_| std::fs::File::open("/dev/null").ok())
        .collect()
}

struct Seen {
    peer: SocketAddr,
    first: Instant,
    fd: i32,
    /// Shut down by the warden, not yet closed by tiny_http: no longer counted.
    closing: bool,
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
        if !std::path::Path::new("/proc/self/fd").is_dir() {
            return None;
        }
        Some(Warden {
            port: listener.port,
            listener_ino: listener.ino,
            ours: HashMap::new(),
            others: HashSet::new(),
            fresh: HashMap::new(),
            spare: spares(),
            failing: false,
            over_limit: false,
            missing: false,
        })
    }

    /// One look: counts the open connections, shuts down those idle too long (or too many).
    /// False when the listening socket is gone.
    fn look(&mut self, conns: &Connections) -> io::Result<bool> {
        let mut listening = false;
        let mut live: HashMap<u64, i32> = HashMap::new();
        let mut others_live = HashSet::new();
        let mut fresh = HashMap::new();
        let listing = match std::fs::read_dir("/proc/self/fd") {
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) && !self.spare.is_empty() => {
                self.spare.clear();
                std::fs::read_dir("/proc/self/fd")?
            }
            other => other?,
        };
        for entry in listing {
            let Ok(entry) = entry else { continue };
            let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Some(ino) = std::fs::read_link(entry.path())
                .ok()
                .and_then(|target| socket_inode(&target.to_string_lossy()))
            else {
                continue;
            };
            if ino == self.listener_ino {
                listening = true;
            } else if self.ours.contains_key(&ino) {
                // tiny_http holds two descriptors per connection: keep the first seen.
                live.entry(ino).or_insert(fd);
            } else if self.others.contains(&ino) {
                others_live.insert(ino);
            } else if let Some((first, _)) = self.fresh.get(&ino) {
                // Open since the last look: worth a look at what it is.
                match inspect(fd, ino, self.port) {
                    Ok(Some(peer)) => {
                        let seen = Seen {
                            peer,
                            first: *first,
                            fd,
                            closing: false,
                        };
                        self.ours.insert(ino, seen);
                        live.insert(ino, fd);
                    }
                    Ok(None) => {
                        others_live.insert(ino);
                    }
                    // Could not tell (no descriptor to spare): ask again next look.
                    Err(_) => {
                        fresh.insert(ino, (*first, fd));
                    }
                }
            } else {
                fresh.entry(ino).or_insert((Instant::now(), fd));
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
        activity.retain(|peer, a| a.requests > 0 || peers.contains(peer));
        let mut idle: Vec<(Instant, u64)> = Vec::new();
        for (ino, seen) in self.ours.iter().filter(|(_, s)| !s.closing) {
            // The end of its last request, unless the entry is older than the connection
            // (left by an earlier one from the same address).
            let since = match activity.get(&seen.peer) {
                Some(a) if a.requests > 0 => continue,
                Some(a) => a.last.max(seen.first),
                None => seen.first,
            };
            idle.push((since, *ino));
        }
        idle.sort();
        let mut open = self.ours.values().filter(|s| !s.closing).count();
        let timeout = conns.limits.idle_timeout;
        for (since, ino) in idle {
            let idle_for = now.saturating_duration_since(since);
            let reason = if idle_for >= timeout {
                &conns.closed_idle
            } else if open > conns.limits.max && idle_for >= GRACE.min(timeout) {
                &conns.closed_over_limit
            } else {
                continue;
            };
            let Some(seen) = self.ours.get_mut(&ino) else {
                continue;
            };
            if shut_down(seen.fd, ino) {
                log::debug!(
                    "closed connection from {} after {} ms idle",
                    seen.peer,
                    idle_for.as_millis()
                );
                reason.fetch_add(1, Ordering::Relaxed);
                open -= 1;
                seen.closing = true;
            }
        }
        drop(activity);
        conns.open.store(open, Ordering::Relaxed);
        self.over_limit = open + self.fresh.len() > conns.limits.max;
        if self.spare.is_empty() {
            self.spare = spares();
        }
        Ok(listening)
    }
}

/// The inode of a `/proc/self/fd` link target `socket:[N]`.
fn socket_inode(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// A private copy of descriptor `fd`, if it still is socket `ino`. Working on a copy means a
/// descriptor closed and reused meanwhile is never touched: the copy is checked first.
fn own_copy(fd: i32, ino: u64) -> io::Result<Option<std::fs::File>> {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    // SAFETY: fcntl only reads the number `fd`; if its owner closed it meanwhile the call
    // fails (EBADF) or copies whatever now has that number, which the checks below reject.
    let copied = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if copied < 0 {
        let e = io::Error::last_os_error();
        // Gone: not an error. Anything else (no descriptor left): try again next look.
        return match e.raw_os_error() {
            Some(libc::EBADF) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: `copied` is a new descriptor that nothing else owns.
    let copy = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(copied) });
    let meta = copy.metadata()?;
    Ok((meta.file_type().is_socket() && meta.ino() == ino).then_some(copy))
}

/// The peer's address, if `fd` is a connection accepted on `port`; an error when that
/// cannot be told now.
fn inspect(fd: i32, ino: u64, port: u16) -> io::Result<Option<SocketAddr>> {
    let Some(copy) = own_copy(fd, ino)? else {
        return Ok(None);
    };
    let socket = socket2::SockRef::from(&copy);
    let Some(local) = socket.local_addr()?.as_socket() else {
        return Ok(None);
    };
    if local.port() != port {
        return Ok(None);
    }
    // A listening socket has no peer.
    Ok(socket.peer_addr().ok().and_then(|peer| peer.as_socket()))
}

/// Shuts connection `ino` down: tiny_http's reader sees the end and closes it. True if done.
fn shut_down(fd: i32, ino: u64) -> bool {
    let Ok(Some(copy)) = own_copy(fd, ino) else {
        return false;
    };
    socket2::SockRef::from(&copy)
        .shutdown(std::net::Shutdown::Both)
        .is_ok()
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
    fn socket_links_are_read() {
        assert_eq!(socket_inode("socket:[12345]"), Some(12345));
        assert_eq!(socket_inode("pipe:[12345]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
        assert_eq!(socket_inode("socket:[x]"), None);
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
        });
        let mut warden = Warden::new(ListenerId::of(&listener).unwrap()).expect("linux");
        let idle_client = std::net::TcpStream::connect(addr).unwrap();
        let busy_client = std::net::TcpStream::connect(addr).unwrap();
        let (idle_server, _) = listener.accept().unwrap();
        let (busy_server, _) = listener.accept().unwrap();
        let busy = c.begin(Some(busy_client.local_addr().unwrap())).unwrap();
        // Counted from their second look on.
        assert!(warden.look(&c).unwrap());
        assert_eq!(c.counts().open, 0);
        assert!(warden.look(&c).unwrap());
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
}
