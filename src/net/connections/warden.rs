//! The warden: the thread that looks at the server's own sockets every 100 ms or so and
//! shuts down those that hold a place, a thread or memory for nothing (see the module above
//! for the rules; `sockets` for how it looks without needing a descriptor).

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::{Connections, MAX_HEAD};
use crate::net::sockets::{self, FdDir, Slot};
use crate::threads::lock;

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

impl Connections {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::connections::Limits;

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
        busy_on_time.set_read_deadline(Some(Instant::now() + Duration::from_secs(600)));
        warden.look(&c).unwrap();
        warden.look(&c).unwrap();
        assert_eq!(c.counts().open, 4);

        busy_slow.set_read_deadline(Some(Instant::now()));
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
