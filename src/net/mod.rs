//! Socket set-up shared by the index and the peers' file servers, and the HTTP client agent
//! their calls to each other use.
//!
//! Why a hand-built listener: `std::net::TcpListener::bind` listens with a backlog of 128, and
//! a burst of a few hundred peers connecting at once overflows it (clients then retry only
//! after about a second). We listen with a larger backlog.
//!
//! What we must not do: put a receive timeout on the listening socket. Accepted sockets would
//! inherit it (bounding idle keep-alive connections), but on Linux `accept` honours it too and
//! returns `EAGAIN` after the timeout, which ends tiny_http 0.12's accept thread for good: an
//! index idle for that long would stop accepting. Every nap client sends `Connection: close`
//! (see `peer::client`); other clients' idle connections are closed by the warden
//! (`connections`).

pub mod connections;

use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Receiver;

pub use connections::{Busy, Call, Connections, Counts, Limits};

/// Pending-connection queue length asked of the kernel (it caps it at `somaxconn`).
pub const LISTEN_BACKLOG: i32 = 4096;

/// Binds `addr` (e.g. `127.0.0.1:0`) with a large backlog.
pub fn bind_listener(addr: &str) -> io::Result<TcpListener> {
    let sockaddr: SocketAddr = addr.to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "address resolves to nothing")
    })?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(sockaddr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&sockaddr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// A tiny_http server with its connection limit.
pub struct HttpServer {
    pub server: Arc<tiny_http::Server>,
    /// The address actually bound.
    pub addr: SocketAddr,
    pub conns: Arc<Connections>,
    listener: connections::ListenerId,
}

impl HttpServer {
    /// Binds `addr` and starts tiny_http on it, after making sure `limits.max` connections
    /// fit in the open-file limit.
    pub fn start(addr: &str, limits: Limits) -> io::Result<HttpServer> {
        if limits.max == 0 || limits.idle_timeout.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the connection limit and the idle timeout must be more than 0",
            ));
        }
        connections::reserve_descriptors(limits.max)?;
        let listener = bind_listener(addr)?;
        let local = listener.local_addr()?;
        let id = connections::ListenerId::of(&listener)?;
        let server = tiny_http::Server::from_listener(listener, None)
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(HttpServer {
            server: Arc::new(server),
            addr: local,
            conns: Connections::new(limits),
            listener: id,
        })
    }

    /// Starts the dispatcher: the one thread that takes requests from tiny_http, gives each a
    /// place among those in flight (or hands it to `refuse` when none is left) and queues it
    /// for the workers. So a request waiting for a worker (an upload slot, say) already counts
    /// as in flight, and the warden never takes it for idle. It ends when the server is
    /// unblocked; the workers' channel closes after the last queued request.
    pub fn spawn_dispatcher(
        &self,
        refuse: impl Fn(tiny_http::Request, &Connections) + Send + 'static,
    ) -> io::Result<(JoinHandle<()>, Receiver<Call>)> {
        let (to_workers, calls) = crossbeam_channel::unbounded();
        let (server, conns) = (self.server.clone(), self.conns.clone());
        let handle = std::thread::Builder::new()
            .name("dispatch".into())
            .spawn(move || {
                while let Ok(request) = server.recv() {
                    if let Some(call) = conns.take(request, &refuse) {
                        if to_workers.send(call).is_err() {
                            return;
                        }
                    }
                }
            })?;
        Ok((handle, calls))
    }

    /// Starts the warden thread (see `connections`); it ends when `stop` closes, and calls
    /// `on_lost` if the server stops accepting.
    pub fn spawn_warden(
        &self,
        stop: Receiver<()>,
        on_lost: impl FnOnce() + Send + 'static,
    ) -> io::Result<JoinHandle<()>> {
        let (conns, listener) = (self.conns.clone(), self.listener);
        std::thread::Builder::new()
            .name("conn-warden".into())
            .spawn(move || conns.watch(listener, &stop, on_lost))
    }
}

/// The signals `signals` catches, as a channel (so a main thread can wait for them and for
/// something else at once).
pub fn signals(mut signals: signal_hook::iterator::Signals) -> Receiver<i32> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if tx.send(signal).is_err() {
                return;
            }
        }
    });
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
