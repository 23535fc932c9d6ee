//! Socket set-up shared by the index and the peers' file servers, and the wall clock.
//!
//! Why a hand-built listener: `std::net::TcpListener::bind` listens with a backlog of 128, and
//! a burst of a few hundred peers connecting at once overflows it (clients then retry only
//! after about a second). We listen with a larger backlog.
//!
//! What we must not do: put a receive timeout on the listening socket. Accepted sockets would
//! inherit it (bounding idle keep-alive connections), but on Linux `accept` honours it too and
//! returns `EAGAIN` after the timeout, which ends tiny_http 0.12's accept thread for good: an
//! index idle for that long would stop accepting. Connection hygiene is therefore the client's
//! job: every nap client sends `Connection: close` (see `peer::client`).

use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// Starts a tiny_http server on `addr`; returns it with the address actually bound.
pub fn http_server(addr: &str) -> io::Result<(tiny_http::Server, SocketAddr)> {
    let listener = bind_listener(addr)?;
    let local = listener.local_addr()?;
    let server = tiny_http::Server::from_listener(listener, None)
        .map_err(|e| io::Error::other(e.to_string()))?;
    Ok((server, local))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

/// `n` random bytes from the OS, as lowercase hex: peer ids, tokens, temp names.
pub fn random_hex(n: usize) -> io::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(crate::index::state::hex(&buf))
}
