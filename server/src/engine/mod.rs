//! The engine contract: what an I/O engine must do, written once, so that engines sit side by
//! side over one HTTP core.
//!
//! An engine runs one worker per thread. Each worker is given its own listening sockets
//! (SO_REUSEPORT, so the kernel spreads connections over workers without a shared accept
//! lock), a [`Service`](crate::serve::Service) built on its own thread, and the shared
//! [`Shutdown`] signal. For every connection the engine must:
//!
//! 1. create a [`Conn`](crate::conn::Conn) and feed it every byte received, in order, through
//!    `Conn::received` (a received length of 0 is `Conn::peer_closed`);
//! 2. transmit `Conn::output` strictly in order using [`transmit::fill`]; a
//!    [`transmit::Fill::stream`] range may be sent by any zero-copy means, but a file that
//!    yields fewer bytes than promised ([`transmit::Fill::truncated`], or a short zero-copy
//!    transfer) ends the connection right after what was already sent;
//! 3. stop reading while `Conn::wants_input` is false, and call `Conn::output_drained` each time
//!    the output has been fully sent;
//! 4. when `Conn::should_close` and the output is sent, half-close (shutdown SHUT_WR), discard
//!    input until the peer closes or [`LINGER_SECS`] pass, then close — so that a reply is not
//!    destroyed by a reset when the client had sent more;
//! 5. enforce the timeouts on `Conn::phase`: `ReadingHead` longer than the header timeout and
//!    `Idle` longer than the keep-alive timeout close the connection, as does a reply that makes
//!    no send progress for the send timeout (a connection is busy while any of its output, the
//!    engine's own send buffer included, is unsent);
//! 6. on [`Shutdown`]: stop accepting, close idle connections, let the others finish their
//!    output and their exchanges with the app (no further requests are read), and return when
//!    none are left or the shutdown timeout has passed;
//! 7. with an upstream configured ([`upstream::Upstreams`]): when `Conn::needs_upstream`, give
//!    the connection an upstream connection (pooled or new) and run [`upstream::Upstreams::pump`]
//!    whenever either socket makes progress or becomes ready, until it says `Detach` (back to
//!    the pool or closed) or `Retry` (close it, take a fresh one); close an upstream connection
//!    whose client connection closes; and, when `Phase::Upstream` outlives the upstream
//!    timeout, call `Conn::upstream_timed_out` instead of closing the client connection.
//!
//! Engines never parse HTTP, choose statuses or open files; that is the core's job.

pub mod epoll;
pub mod transmit;
pub mod upstream;
pub mod uring;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::conn::Phase;
use crate::serve::Site;

/// Seconds a closing connection keeps draining input after its last reply.
pub const LINGER_SECS: u64 = 2;

/// What a worker gets to run with.
pub struct Worker {
    pub index: usize,
    pub listeners: Vec<TcpListener>,
    pub site: Arc<Site>,
    pub timeouts: Timeouts,
    pub shutdown: Arc<Shutdown>,
}

#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub header_secs: u64,
    pub keepalive_secs: u64,
    pub send_secs: u64,
    /// How long a proxied request may make no progress (`--upstream-timeout`).
    pub upstream_secs: u64,
    pub shutdown: Duration,
}

impl Timeouts {
    /// Whether an open connection has been inactive too long for its phase (item 5 of the
    /// contract). Engines pass `Phase::Busy` while any output, their own send buffer included,
    /// is unsent. Whole seconds of a coarse clock: a timeout fires once strictly more than its
    /// value has passed, so it never cuts a connection early.
    pub fn expired(&self, phase: Phase, phase_since: u64, last_progress: u64, now: u64) -> bool {
        match phase {
            Phase::Idle => now.saturating_sub(phase_since) > self.keepalive_secs,
            Phase::ReadingHead => now.saturating_sub(phase_since) > self.header_secs,
            Phase::Busy => now.saturating_sub(last_progress) > self.send_secs,
            // Not the connection's to close: the engine lets the core answer 504 (or end an
            // exchange that had started to answer).
            Phase::Upstream => now.saturating_sub(phase_since) > self.upstream_secs,
        }
    }
}

/// An I/O engine.
pub trait Engine {
    /// The name shown in the start-up log.
    const NAME: &'static str;

    /// Checks that this engine can run on this machine, with what it needs; the error says why
    /// not, in one line.
    fn probe() -> Result<(), String>;

    /// Runs one worker until shutdown.
    fn run(worker: Worker) -> io::Result<()>;
}

/// The stop signal every worker watches: a flag, and an eventfd that becomes readable (and
/// stays so) when the flag is set, for engines that sleep in the kernel.
#[derive(Debug)]
pub struct Shutdown {
    requested: AtomicBool,
    event: OwnedFd,
}

impl Shutdown {
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes no pointers; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        Ok(Shutdown {
            requested: AtomicBool::new(false),
            event: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn request(&self) {
        self.requested.store(true, Ordering::Release);
        let one = 1u64;
        // SAFETY: writes 8 bytes from a live u64 to our own eventfd. Nobody reads it, so it stays
        // readable for every worker polling it; a failure (counter overflow) is impossible here.
        unsafe { libc::write(self.event.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// The descriptor that becomes readable on shutdown.
    pub fn event_fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }
}

/// Opens `workers` listening sockets on each address, all bound to the same port with
/// SO_REUSEPORT; with port 0 the first socket picks the port and the rest follow it.
/// Returns the sockets grouped per worker and the addresses actually bound.
pub fn bind_listeners(
    addrs: &[SocketAddr],
    workers: usize,
) -> Result<(Vec<Vec<TcpListener>>, Vec<SocketAddr>), String> {
    let mut per_worker: Vec<Vec<TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for &addr in addrs {
        let mut actual = addr;
        for group in per_worker.iter_mut() {
            let listener =
                reuseport_listener(actual).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            actual = listener
                .local_addr()
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            group.push(listener);
        }
        bound.push(actual);
    }
    Ok((per_worker, bound))
}

fn reuseport_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket takes no pointers; the result is checked.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is fresh and owned from here on; dropping the OwnedFd closes it on error.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    set_int_option(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    set_int_option(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    if addr.is_ipv6() {
        set_int_option(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    let (storage, len) = sockaddr(addr);
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes for this address family.
    if unsafe { libc::bind(fd, (&storage as *const libc::sockaddr_storage).cast(), len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: plain syscall on our own socket.
    if unsafe { libc::listen(fd, 4096) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TcpListener::from(socket))
}

pub fn set_int_option(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: passes a pointer to a live i32 and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage, which is suitably aligned for it.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            (
                storage,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
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
            // SAFETY: sockaddr_in6 fits in sockaddr_storage, which is suitably aligned for it.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            (
                storage,
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_fire_strictly_after_their_value_per_phase() {
        let t = Timeouts {
            header_secs: 2,
            keepalive_secs: 5,
            send_secs: 9,
            upstream_secs: 30,
            shutdown: Duration::from_secs(1),
        };
        assert!(!t.expired(Phase::ReadingHead, 10, 0, 12));
        assert!(t.expired(Phase::ReadingHead, 10, 0, 13));
        assert!(!t.expired(Phase::Idle, 10, 0, 15));
        assert!(t.expired(Phase::Idle, 10, 0, 16));
        // A busy connection is judged by its send progress, not by when its phase began.
        assert!(!t.expired(Phase::Busy, 0, 10, 19));
        assert!(t.expired(Phase::Busy, 0, 10, 20));
    }
}
