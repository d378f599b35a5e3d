//! I/O engines: each owns one thread's sockets, carries out the driver's
//! actions and reports socket events back to it. io_uring is the fast path;
//! epoll is the fallback where io_uring is missing or forbidden.

pub mod bufring;
pub mod epoll;
pub mod uring;

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64};

/// Which engine to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// io_uring when the kernel supports what we need, epoll otherwise.
    Auto,
    Uring,
    Epoll,
}

/// What the main thread and the workers share while running.
pub struct Control {
    /// Set to make every worker stop at its next wakeup (Ctrl-C, or a failed thread).
    pub stop: AtomicBool,
    /// Per thread: responses completed so far, for the progress line.
    pub progress: Vec<Padded>,
}

/// A counter alone on its cache line, so threads updating neighbours do not
/// slow each other down.
#[repr(align(64))]
#[derive(Default)]
pub struct Padded(pub AtomicU64);

impl Control {
    pub fn new(threads: usize) -> Control {
        Control {
            stop: AtomicBool::new(false),
            progress: (0..threads).map(|_| Padded::default()).collect(),
        }
    }
}

/// `addr` as the C structure `connect(2)` takes.
pub fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// A non-blocking TCP socket with Nagle off (requests must leave at once).
pub fn tcp_socket(addr: &SocketAddr) -> io::Result<RawFd> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscall with constant arguments.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let one: libc::c_int = 1;
    // SAFETY: fd is our socket; the option value points at a live c_int.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    Ok(fd)
}

/// Closes a socket so any operation still pending on it finishes: shutdown
/// first, because io_uring holds its own reference and `close` alone would
/// leave an armed receive waiting forever.
pub fn close_socket(fd: RawFd) {
    // SAFETY: fd is a socket this engine opened and has not closed yet.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
        libc::close(fd);
    }
}
