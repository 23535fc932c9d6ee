//! The warden's view of the process's own sockets (Linux), which must work when the process
//! has no descriptor left: that is when a flood of connections most needs shedding, and every
//! descriptor freed would be taken by the next `accept` before the warden could use it.
//!
//! So the warden opens what it needs once, at start: the directory `/proc/self/fd`, read
//! again from its start at every look (`FdDir`), and a descriptor number of its own onto which
//! it copies the socket it looks at (`Slot`: `dup3` over a number already held needs no new
//! one). Working on a copy also means a descriptor closed and reused meanwhile is never
//! touched: the copy is checked to be the socket expected first.

use std::ffi::CStr;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// `/proc/self/fd`, open for the warden's whole life.
pub struct FdDir {
    dir: std::ptr::NonNull<libc::DIR>,
}

// SAFETY: the DIR stream is used only by the thread that owns the FdDir (it is moved to the
// warden's thread, never shared).
unsafe impl Send for FdDir {}

impl FdDir {
    pub fn open() -> io::Result<FdDir> {
        // SAFETY: the path is a valid NUL-terminated string; opendir returns null on failure.
        let dir = unsafe { libc::opendir(c"/proc/self/fd".as_ptr()) };
        std::ptr::NonNull::new(dir)
            .map(|dir| FdDir { dir })
            .ok_or_else(io::Error::last_os_error)
    }

    /// Every descriptor number open now (the directory's own included).
    pub fn list(&mut self) -> Vec<i32> {
        let mut fds = Vec::new();
        // SAFETY: `dir` is a live DIR stream this thread owns; readdir's entries are read
        // before the next call, as it requires.
        unsafe {
            libc::rewinddir(self.dir.as_ptr());
            loop {
                let entry = libc::readdir(self.dir.as_ptr());
                if entry.is_null() {
                    break;
                }
                let name = CStr::from_ptr((*entry).d_name.as_ptr());
                if let Some(fd) = name.to_str().ok().and_then(|s| s.parse().ok()) {
                    fds.push(fd);
                }
            }
        }
        fds
    }
}

impl Drop for FdDir {
    fn drop(&mut self) {
        // SAFETY: the stream was opened by opendir and is closed once, here.
        unsafe { libc::closedir(self.dir.as_ptr()) };
    }
}

/// The socket inode a descriptor is, if it is a socket (from its `/proc/self/fd` link; no
/// descriptor needed).
pub fn socket_inode(fd: i32) -> Option<u64> {
    let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
    parse_socket_link(&target.to_string_lossy())
}

/// The inode of a link target `socket:[N]`.
pub fn parse_socket_link(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// A descriptor number the warden holds (on `/dev/null` while unused), onto which it copies
/// one socket at a time.
pub struct Slot {
    slot: OwnedFd,
    idle: OwnedFd,
}

impl Slot {
    pub fn open() -> io::Result<Slot> {
        let idle = OwnedFd::from(std::fs::File::open("/dev/null")?);
        let slot = idle.try_clone()?;
        Ok(Slot { slot, idle })
    }

    /// Runs `f` on a copy of descriptor `fd` if it still is socket `ino`; `None` if it is
    /// not (closed, or another file now).
    pub fn with<T>(
        &mut self,
        fd: i32,
        ino: u64,
        f: impl FnOnce(BorrowedFd<'_>) -> T,
    ) -> io::Result<Option<T>> {
        // SAFETY: dup3 only reads the number `fd` (if its owner closed it meanwhile the call
        // fails with EBADF, or copies whatever now has that number, which the check below
        // rejects) and replaces our own `slot`, which nothing else uses.
        if unsafe { libc::dup3(fd, self.slot.as_raw_fd(), libc::O_CLOEXEC) } < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EBADF) => Ok(None),
                _ => Err(e),
            };
        }
        // SAFETY: stat is plain data; fstat writes into the one we own.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `slot` is a descriptor we hold.
        let result = if unsafe { libc::fstat(self.slot.as_raw_fd(), &mut stat) } != 0 {
            Err(io::Error::last_os_error())
        } else if stat.st_mode & libc::S_IFMT == libc::S_IFSOCK && stat.st_ino as u64 == ino {
            Ok(Some(f(self.slot.as_fd())))
        } else {
            Ok(None)
        };
        self.release();
        result
    }

    /// Lets go of the socket copied in (its owner's close must not wait for us).
    fn release(&mut self) {
        // SAFETY: both numbers are ours; the slot goes back to being /dev/null.
        unsafe {
            libc::dup3(
                self.idle.as_raw_fd(),
                self.slot.as_raw_fd(),
                libc::O_CLOEXEC,
            )
        };
    }
}

/// The local and peer addresses of a socket (`None` for the peer of a listening socket).
pub fn addresses(socket: BorrowedFd<'_>) -> io::Result<(Option<SocketAddr>, Option<SocketAddr>)> {
    let s = socket2::SockRef::from(&socket);
    let local = s.local_addr()?.as_socket();
    Ok((local, s.peer_addr().ok().and_then(|p| p.as_socket())))
}

/// The bytes a connection has received so far (Linux's `TCP_INFO`), if it can be told.
pub fn received_bytes(socket: BorrowedFd<'_>) -> Option<u64> {
    // SAFETY: tcp_info is plain data; zeroed is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which we own.
    let done = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    // Kernels before 4.1 do not fill in the count: then heads are bounded by time alone.
    let filled = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_received) + 8;
    (done == 0 && len as usize >= filled).then_some(info.tcpi_bytes_received)
}

/// Shuts a connection down both ways: tiny_http's reader sees the end and closes it.
pub fn shut_down(socket: BorrowedFd<'_>) -> bool {
    socket2::SockRef::from(&socket)
        .shutdown(std::net::Shutdown::Both)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_links_are_read() {
        assert_eq!(parse_socket_link("socket:[12345]"), Some(12345));
        assert_eq!(parse_socket_link("pipe:[12345]"), None);
        assert_eq!(parse_socket_link("/dev/null"), None);
        assert_eq!(parse_socket_link("socket:[x]"), None);
    }

    #[test]
    fn the_slot_copies_only_the_socket_expected() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = listener.as_raw_fd();
        let ino = socket_inode(fd).expect("a socket");
        let mut slot = Slot::open().unwrap();
        let local = slot
            .with(fd, ino, |s| addresses(s).unwrap().0)
            .unwrap()
            .flatten();
        assert_eq!(local, Some(listener.local_addr().unwrap()));
        assert_eq!(
            slot.with(fd, ino + 1, |_| ()).unwrap(),
            None,
            "another inode"
        );
        let mut dir = FdDir::open().unwrap();
        assert!(dir.list().contains(&fd));
        drop(listener);
        assert_eq!(slot.with(fd, ino, |_| ()).unwrap(), None, "closed");
        assert!(!dir.list().contains(&fd));
    }
}
