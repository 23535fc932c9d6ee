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
//! - Open connections are counted by the warden thread (`warden`), which looks at the
//!   process's own sockets in `/proc/self/fd` (Linux) and shuts down, so that tiny_http's
//!   blocked read or write returns:
//!   - a connection with no request in flight for `idle_timeout`, and at once (after a short
//!     grace) while more than `max` are open, the longest idle first;
//!   - one receiving a head (bytes arrive, no request yet: `TCP_INFO`) for `request_timeout`
//!     or of more than `MAX_HEAD` bytes;
//!   - one whose request is past the deadline its thread set for its body
//!     (`Busy::set_read_deadline`, see `exchange`), or whose unread body was given up (`doom`);
//!   - for each new connection waiting in tiny_http's queue for a thread (DESIGN.md, defect
//!     1), one that holds a thread for nothing: idle, or a body that has stalled.
//!
//!   A request that tiny_http has read but the dispatcher not yet taken looks idle, for
//!   microseconds unless the machine is starved.
//! - The descriptor limit is raised to the hard limit at start (as Go's runtime does), and a
//!   `max` that cannot fit in it is refused at start instead of failing under load.
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::exchange::Call;
use crate::threads::lock;

mod warden;
pub use warden::ListenerId;

/// Descriptors a connection costs inside tiny_http: the stream and its clone.
const FDS_PER_CONNECTION: u64 = 2;
/// Descriptors kept for everything else: logs, snapshots, outgoing connections, downloads.
const FDS_RESERVED: u64 = 256;

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
    /// When the body being read must have moved by (see `exchange::Pace`). Answers need no
    /// such deadline here: the send timeout the listener passes on to accepted sockets ends
    /// a write that blocks, and the writing thread checks the pace between writes.
    reading: Option<Instant>,
    /// When the body being read last moved.
    read_moved: Instant,
    /// To be cut at the warden's next look: a body was left unread, and tiny_http would
    /// otherwise read the rest of it, however long it takes, before the connection ends.
    doomed: bool,
}

impl Activity {
    /// Past a deadline, or doomed: the warden cuts it even with a request in flight.
    fn overdue(&self, now: Instant) -> bool {
        self.doomed || self.reading.is_some_and(|d| d <= now)
    }
}

/// A request as the server took it.
pub enum Taken {
    Placed(Call),
    /// No place was left: to be answered 503.
    Refused(Call),
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

    /// Sets (or with `None` clears) the time by which this request's body must have moved;
    /// past it the warden cuts the connection, even in the middle of a blocked read (nothing
    /// else bounds one: a receive timeout cannot be passed on from the listener).
    pub fn set_read_deadline(&self, deadline: Option<Instant>) {
        self.update(|a| {
            a.reading = deadline;
            a.read_moved = Instant::now();
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
}
