//! The HTTP servers' edge (socket set-up, accepting, request threads, deadlines), shared by
//! the index and the peers' file servers, and the HTTP client agent their calls to each other
//! use.
//!
//! tiny_http parses requests; around it:
//! - The listening socket is built here (`bind_listener`): a large backlog (`std`'s 128
//!   overflows under a burst of peers), `TCP_NODELAY` (an answer's last segment must not wait
//!   for the client's delayed ACK, 44 ms on Linux) and a send timeout, both of which Linux
//!   passes on to every accepted socket. No receive timeout: `accept` would honour it too and
//!   end tiny_http's accept thread after that long without a connection.
//! - tiny_http's accept thread ends on the first failed accept (out of descriptors, say), or
//!   panics if the descriptor for its second handle of a connection cannot be had. The server
//!   keeps its own handle on the listening socket, notices (an error from `recv`, or the
//!   descriptor it handed over gone) and starts a new tiny_http server on the same socket, so
//!   connections queue in the backlog meanwhile and none is refused (`keep_accepting`).
//! - Each request runs on a thread of its own (`pool`), its body and its answer bounded in
//!   time (`exchange`), and the warden (`connections`) cuts what overstays.

pub mod connections;
pub mod exchange;
pub mod pool;
mod sockets;

use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

pub use connections::{Busy, Connections, Counts, Limits, MAX_HEAD, MIN_RATE};
pub use exchange::{Answer, Body, BodyError, Call, Status};
pub use pool::{Elastic, Permit, Permits};

use crate::threads::lock;

/// Pending-connection queue length asked of the kernel (it caps it at `somaxconn`).
pub const LISTEN_BACKLOG: i32 = 4096;

/// Binds `addr` (e.g. `127.0.0.1:0`) with a large backlog, `TCP_NODELAY`, and a send timeout
/// of `write_timeout` that accepted sockets inherit.
pub fn bind_listener(addr: &str) -> io::Result<TcpListener> {
    bind_listener_with(addr, None)
}

fn bind_listener_with(addr: &str, write_timeout: Option<Duration>) -> io::Result<TcpListener> {
    let sockaddr: SocketAddr = addr.to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "address resolves to nothing")
    })?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(sockaddr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nodelay(true)?;
    socket.set_write_timeout(write_timeout)?;
    socket.bind(&sockaddr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// An HTTP server: the listening socket, the tiny_http servers accepting on it (a new one
/// whenever one stops), and its connection limits.
pub struct HttpServer {
    /// The address actually bound.
    pub addr: SocketAddr,
    pub conns: Arc<Connections>,
    listener: TcpListener,
    listener_id: connections::ListenerId,
    /// Every tiny_http server started on the listener (to unblock them all at stop).
    servers: Arc<Mutex<Vec<Arc<tiny_http::Server>>>>,
    stopping: Arc<AtomicBool>,
}

/// How often the accepting side is checked for a silent end (tiny_http's thread panicked).
const ACCEPT_CHECK: Duration = Duration::from_millis(100);
/// How often, after accepting failed, the server checks whether it may accept again.
const RESTART_POLL: Duration = Duration::from_millis(20);
/// The longest wait before accepting again after accepting failed.
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);

impl HttpServer {
    /// Binds `addr`, after making sure `limits.max` connections fit in the open-file limit.
    pub fn start(addr: &str, limits: Limits) -> io::Result<HttpServer> {
        if limits.max == 0 || limits.idle_timeout.is_zero() || limits.request_timeout.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the connection limit, the idle timeout and the request timeout must be more \
                 than 0",
            ));
        }
        connections::reserve_descriptors(limits.max)?;
        let listener = bind_listener_with(addr, Some(limits.request_timeout))?;
        Ok(HttpServer {
            addr: listener.local_addr()?,
            conns: Connections::new(limits),
            listener_id: connections::ListenerId::of(&listener)?,
            listener,
            servers: Arc::new(Mutex::new(Vec::new())),
            stopping: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Starts accepting: each request gets its place among those in flight and runs
    /// `handle` on a thread of `pool`; one that finds no place runs `refuse` (to answer 503
    /// at once). Returns the thread that keeps accepting; it ends at `stop`.
    pub fn serve(
        &self,
        pool: Elastic,
        handle: impl Fn(Call) + Send + Sync + 'static,
        refuse: impl Fn(Call) + Send + Sync + 'static,
    ) -> io::Result<JoinHandle<()>> {
        let keeper = Keeper {
            listener: self.listener.try_clone()?,
            conns: self.conns.clone(),
            servers: self.servers.clone(),
            stopping: self.stopping.clone(),
            idle: {
                let limits = self.conns.limits();
                limits.idle_timeout + limits.request_timeout
            },
        };
        let first = keeper.start_server()?;
        let handle = Arc::new(handle);
        let refuse = Arc::new(refuse);
        let dispatch: Dispatch = Arc::new(move |request, conns| {
            let (handle, refuse) = (handle.clone(), refuse.clone());
            let run = match conns.take(request) {
                connections::Taken::Placed(call) => pool.run(move || handle(call)),
                connections::Taken::Refused(call) => pool.run(move || refuse(call)),
            };
            if let Err(e) = run {
                log::warn!("could not start a thread for a request: {e}");
            }
        });
        std::thread::Builder::new()
            .name("accept-keeper".into())
            .spawn(move || keeper.run(first, &dispatch))
    }

    /// Starts the warden thread (see `connections`); it ends when `stop` closes.
    pub fn spawn_warden(&self, stop: Receiver<()>) -> io::Result<JoinHandle<()>> {
        let (conns, listener) = (self.conns.clone(), self.listener_id);
        std::thread::Builder::new()
            .name("conn-warden".into())
            .spawn(move || conns.watch(listener, &stop))
    }

    /// Stops accepting and ends the dispatchers (requests in flight are still answered).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for server in lock(&self.servers).iter() {
            server.unblock();
        }
    }
}

/// What a dispatcher does with each request tiny_http hands over.
type Dispatch = Arc<dyn Fn(tiny_http::Request, &Arc<Connections>) + Send + Sync>;

/// Keeps a tiny_http server accepting on the listener.
struct Keeper {
    listener: TcpListener,
    conns: Arc<Connections>,
    servers: Arc<Mutex<Vec<Arc<tiny_http::Server>>>>,
    stopping: Arc<AtomicBool>,
    /// How long a replaced server's dispatcher goes on after its last request: by then the
    /// warden has closed every connection it had.
    idle: Duration,
}

/// A tiny_http server, and the descriptor of the listening socket it accepts on.
struct Accepting {
    server: Arc<tiny_http::Server>,
    fd: i32,
}

impl Keeper {
    fn start_server(&self) -> io::Result<Accepting> {
        let handle = self.listener.try_clone()?;
        let fd = handle.as_raw_fd();
        let server = tiny_http::Server::from_listener(handle, None)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let server = Arc::new(server);
        let mut servers = lock(&self.servers);
        servers.push(server.clone());
        if self.stopping.load(Ordering::SeqCst) {
            server.unblock();
        }
        Ok(Accepting { server, fd })
    }

    /// Runs a dispatcher per server, and starts a new server whenever the current one stops
    /// accepting, until `stop`.
    fn run(&self, first: Accepting, dispatch: &Dispatch) {
        let mut current = first;
        loop {
            let (ended, accept_ended) = crossbeam_channel::bounded::<()>(1);
            let dispatcher = self.spawn_dispatcher(&current.server, dispatch.clone(), ended);
            if let Err(e) = dispatcher {
                log::error!("could not start a dispatcher: {e}");
            }
            // Wait for this server to stop accepting (or the process to stop).
            loop {
                if self.stopping.load(Ordering::SeqCst) {
                    return;
                }
                match accept_ended.recv_timeout(ACCEPT_CHECK) {
                    Ok(()) => break,
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                        if !still_open(current.fd, &self.listener) {
                            log::error!("the HTTP server stopped accepting without an error");
                            break;
                        }
                    }
                }
            }
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            self.conns.count_accept_restart();
            // Out of descriptors, most likely: accept again once the warden has shed what is
            // over the limit (or after a pause, where no warden runs), not before, or the
            // new accept thread would fail at once.
            let (looks, _) = self.conns.crowding();
            let failed_at = Instant::now();
            loop {
                self.conns.nudge();
                std::thread::sleep(RESTART_POLL);
                if self.stopping.load(Ordering::SeqCst) {
                    return;
                }
                let (now, crowded) = self.conns.crowding();
                let shed = now > looks && !crowded;
                if !shed && failed_at.elapsed() < ACCEPT_PAUSE_MAX {
                    continue;
                }
                match self.start_server() {
                    Ok(next) => {
                        log::warn!("accepting connections again");
                        current = next;
                        break;
                    }
                    Err(e) => log::warn!("could not accept connections again yet: {e}"),
                }
            }
        }
    }

    /// The dispatcher of one server: hands each request over until the server is unblocked
    /// (stop) or, once it no longer accepts, until it has been quiet for `idle`.
    fn spawn_dispatcher(
        &self,
        server: &Arc<tiny_http::Server>,
        dispatch: Dispatch,
        ended: Sender<()>,
    ) -> io::Result<JoinHandle<()>> {
        let (server, conns, servers) = (server.clone(), self.conns.clone(), self.servers.clone());
        let (stopping, idle) = (self.stopping.clone(), self.idle);
        std::thread::Builder::new()
            .name("dispatch".into())
            .spawn(move || {
                let mut accepting = true;
                let mut last = Instant::now();
                loop {
                    let wait = if accepting { ACCEPT_CHECK } else { idle };
                    match server.recv_timeout(wait) {
                        Ok(Some(request)) => {
                            last = Instant::now();
                            dispatch(request, &conns);
                        }
                        // Unblocked, or nothing for a while.
                        Ok(None) => {
                            if stopping.load(Ordering::SeqCst) {
                                break;
                            }
                            if !accepting && last.elapsed() >= idle {
                                break;
                            }
                        }
                        Err(e) => {
                            if accepting {
                                log::error!("accepting a connection failed: {e}");
                                accepting = false;
                                let _ = ended.try_send(());
                            }
                        }
                    }
                }
                // A retired server is forgotten (what it still holds goes with it).
                lock(&servers).retain(|s| !Arc::ptr_eq(s, &server));
            })
    }
}

/// Is descriptor `fd` still the listening socket? (tiny_http's accept thread owns its
/// handle; if that thread ends without a word, the handle is closed.)
fn still_open(fd: i32, listener: &TcpListener) -> bool {
    use std::os::unix::fs::MetadataExt;
    // Where /proc cannot tell, only an error from tiny_http says it ended.
    if !std::path::Path::new("/proc/self/fd").is_dir() {
        return true;
    }
    let link = match std::fs::read_link(format!("/proc/self/fd/{fd}")) {
        Ok(link) => link,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return false,
        Err(_) => return true,
    };
    let ours = std::fs::metadata(format!("/proc/self/fd/{}", listener.as_raw_fd()))
        .map(|m| m.ino())
        .ok();
    match ours {
        Some(ino) => link.to_string_lossy() == format!("socket:[{ino}]"),
        None => true,
    }
}

/// The signals `signals` catches, as a channel (so a main thread can wait for them and for
/// something else at once).
pub fn signals(mut signals: signal_hook::iterator::Signals) -> Receiver<i32> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let watching = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if tx.send(signal).is_err() {
                    return;
                }
            }
        });
    if let Err(e) = watching {
        log::error!("cannot watch for signals: {e}");
    }
    rx
}

/// An HTTP client agent with per-phase timeouts, for calls between nap's processes (peers to
/// the index, the index to its shadows): `connect` for the connection, `answer` for each
/// phase after it. ureq's global and per-call timeouts start a resolver thread per request,
/// so they are left unset; no connection is kept for reuse (see `peer::client`).
pub fn http_agent(connect: Duration, answer: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(connect))
        .timeout_send_request(Some(answer))
        .timeout_send_body(Some(answer))
        .timeout_recv_response(Some(answer))
        .timeout_recv_body(Some(answer))
        .max_idle_connections(0)
        .user_agent(concat!("nap/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}
