//! Upstream connections to the app server, shared by the engines: opening them (non-blocking
//! connect over TCP or a unix socket), each worker's pool of idle keep-alive connections, and
//! [`Upstreams::pump`], which moves bytes between one upstream socket and the
//! [`Conn`] whose request it carries.
//!
//! Engines differ only in how they learn that a socket is ready: epoll registers it once,
//! edge-triggered; io_uring arms a one-shot poll for what [`Pumped::Wait`] asks. Both keep the
//! `readable`/`writable` hints here, cleared when a call says EAGAIN.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

use super::set_int_option;
use super::transmit::send_copy;
use crate::conn::Conn;
use crate::proxy::{ProxySettings, UpstreamAddr};
use crate::serve::Service;

/// Bytes read from an upstream socket per receive.
pub const UPSTREAM_READ: usize = 64 * 1024;
/// A pooled connection idle longer than this is not reused but closed. App servers close idle
/// keep-alive connections on their own clock (gunicorn's gthread after 2 s, uvicorn after 5 s),
/// and a request sent just as the app closes fails; one with a body cannot be sent again, so
/// it would be a 502. Staying under the shortest common timeout avoids that race; a new
/// connection on loopback costs ~50 µs.
pub const POOL_IDLE_LIMIT: Duration = Duration::from_secs(1);

/// One connection to the app.
#[derive(Debug)]
pub struct Upstream {
    pub fd: OwnedFd,
    /// The client connection slot whose exchange this carries; none while idle in the pool.
    pub owner: Option<usize>,
    /// The connect may still be in progress: nothing has been sent yet.
    connecting: bool,
    /// Taken from the pool: the app may have closed it while it sat idle.
    pub reused: bool,
    pub readable: bool,
    pub writable: bool,
    /// For engines with one-shot polls: which are in flight.
    pub poll_in: bool,
    pub poll_out: bool,
    /// Closed by the worker; the descriptor is released when no poll is in flight.
    pub closing: bool,
    /// When it went back to the pool.
    idle_since: Instant,
}

/// What the upstream needs next.
#[derive(Debug, PartialEq, Eq)]
pub enum Pumped {
    /// Waiting for the socket: arm (or keep) readiness for these.
    Wait { read: bool, write: bool },
    /// The exchange is over: the connection goes back to the pool if `reusable`, else closes.
    Detach { reusable: bool },
    /// A pooled connection turned out closed before the request got an answer: close it and
    /// give the connection's exchange a fresh one.
    Retry,
}

/// A worker's upstream connections: a slab addressed by small ids (the engines' tokens), and
/// the ids of the idle ones.
#[derive(Debug)]
pub struct Upstreams {
    socks: Vec<Option<Upstream>>,
    free: Vec<usize>,
    /// Ids closed during this loop turn, free only after it ([`Upstreams::end_turn`]), so
    /// that an event still in the turn's batch cannot land on a new connection.
    closed: Vec<usize>,
    idle: Vec<usize>,
    addr: UpstreamAddr,
    max_idle: usize,
    scratch: Box<[u8]>,
}

impl Upstreams {
    pub fn new(settings: &ProxySettings) -> Self {
        Upstreams {
            socks: Vec::new(),
            free: Vec::new(),
            closed: Vec::new(),
            idle: Vec::new(),
            addr: settings.upstream.clone(),
            max_idle: settings.max_idle,
            scratch: vec![0; UPSTREAM_READ].into_boxed_slice(),
        }
    }

    pub fn get(&mut self, id: usize) -> Option<&mut Upstream> {
        self.socks.get_mut(id).and_then(Option::as_mut)
    }

    /// An upstream connection for `owner`: an idle pooled one that is still open (unless
    /// `fresh`), else a new one, connecting. Returns its id and whether it is new (the engine
    /// then registers it).
    pub fn acquire(&mut self, owner: usize, fresh: bool) -> io::Result<(usize, bool)> {
        while !fresh && let Some(id) = self.idle.pop() {
            let alive = self.socks[id].as_ref().is_some_and(|u| {
                !u.closing
                    && u.idle_since.elapsed() < POOL_IDLE_LIMIT
                    && still_open(u.fd.as_raw_fd())
            });
            if alive {
                let u = self.socks[id].as_mut().expect("checked above");
                u.owner = Some(owner);
                u.reused = true;
                return Ok((id, false));
            }
            self.close(id);
        }
        let (fd, connecting) = connect(&self.addr)?;
        let up = Upstream {
            fd,
            owner: Some(owner),
            connecting,
            reused: false,
            readable: false,
            // Optimistic: on loopback the handshake is usually over before connect returns, so
            // the request is sent at once; a send that says EAGAIN waits for POLLOUT instead, and
            // one that fails reports the failed connect.
            writable: true,
            poll_in: false,
            poll_out: false,
            closing: false,
            idle_since: Instant::now(),
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.socks[id] = Some(up);
                id
            }
            None => {
                self.socks.push(Some(up));
                self.socks.len() - 1
            }
        };
        Ok((id, true))
    }

    /// Gives the exchange of `conn` (client connection `owner`) an upstream connection, as
    /// [`Upstreams::acquire`] does, and lets the engine `watch` a new socket. A connection that
    /// cannot be opened or watched is the exchange's failure (a 502), reported to `conn`.
    pub fn attach(
        &mut self,
        owner: usize,
        conn: &mut Conn,
        fresh: bool,
        service: &mut Service,
        now: u64,
        watch: impl FnOnce(RawFd, usize) -> io::Result<()>,
    ) -> Option<usize> {
        let what = match self.acquire(owner, fresh) {
            Ok((id, new)) => {
                let fd = self.get(id).map(|u| u.fd.as_raw_fd());
                match fd.filter(|_| new).map(|fd| watch(fd, id)) {
                    None | Some(Ok(())) => return Some(id),
                    Some(Err(e)) => {
                        self.close(id);
                        format!("cannot watch the connection: {e}")
                    }
                }
            }
            Err(e) => format!("cannot connect: {e}"),
        };
        conn.upstream_error(&what, false, service, now);
        conn.take_released();
        None
    }

    /// The exchange on `id` is over: keep it for the next request if it can take one and the
    /// pool has room, else close it.
    pub fn release(&mut self, id: usize, reusable: bool) {
        let pool_has_room = self.idle.len() < self.max_idle;
        match self.get(id) {
            Some(u) if reusable && pool_has_room && !u.closing => {
                u.owner = None;
                u.idle_since = Instant::now();
                self.idle.push(id);
            }
            Some(_) => self.close(id),
            None => {}
        }
    }

    /// Closes `id`: at once when no poll is in flight on it, else once the last one completes
    /// ([`Upstreams::poll_done`]), so that no completion can land on a reused id.
    pub fn close(&mut self, id: usize) {
        self.idle.retain(|&i| i != id);
        let Some(u) = self.get(id) else {
            return;
        };
        u.owner = None;
        if u.poll_in || u.poll_out {
            if !u.closing {
                u.closing = true;
                // Completes the polls in flight.
                // SAFETY: plain syscall on a descriptor this upstream owns.
                unsafe { libc::shutdown(u.fd.as_raw_fd(), libc::SHUT_RDWR) };
            }
            return;
        }
        self.socks[id] = None;
        self.closed.push(id);
    }

    /// The end of an engine loop turn: ids closed in it can be reused.
    pub fn end_turn(&mut self) {
        self.free.append(&mut self.closed);
    }

    /// A one-shot poll on `id` completed (for input when `input`): records readiness, and
    /// finishes a close that waited for it. Returns the owner to drive, if any.
    pub fn poll_done(&mut self, id: usize, input: bool) -> Option<usize> {
        let u = self.get(id)?;
        if input {
            u.poll_in = false;
            u.readable = true;
        } else {
            u.poll_out = false;
            u.writable = true;
        }
        if u.closing {
            if !u.poll_in && !u.poll_out {
                self.socks[id] = None;
                self.closed.push(id);
            }
            return None;
        }
        self.ready(id)
    }

    /// Readiness reported for `id` (hints already set by the caller): the owner to drive, or,
    /// for an idle connection, a check that the app has not closed it.
    pub fn ready(&mut self, id: usize) -> Option<usize> {
        let u = self.get(id)?;
        if let Some(owner) = u.owner {
            return Some(owner);
        }
        // An idle connection has nothing to say: readable means closed (or garbage).
        if u.readable && !still_open(u.fd.as_raw_fd()) {
            self.close(id);
        } else if let Some(u) = self.get(id) {
            u.readable = false;
        }
        None
    }

    /// Moves bytes between upstream `id` and `conn` until the socket would block or the
    /// exchange is over. Returns what comes next, and whether any byte moved.
    pub fn pump(
        &mut self,
        id: usize,
        conn: &mut Conn,
        service: &mut Service,
        now: u64,
    ) -> (Pumped, bool) {
        let Some(u) = self.socks.get_mut(id).and_then(Option::as_mut) else {
            return (Pumped::Detach { reusable: false }, false);
        };
        let fd = u.fd.as_raw_fd();
        let mut moved = false;
        loop {
            let mut progressed = false;
            while u.writable && !conn.upstream_pending().is_empty() {
                match send_copy(fd, conn.upstream_pending()) {
                    Ok(n) => {
                        u.connecting = false;
                        conn.upstream_sent(n, service, now);
                        progressed = true;
                    }
                    Err(libc::EAGAIN) => u.writable = false,
                    Err(libc::EINTR) => {}
                    Err(e) => {
                        let doing = if u.connecting {
                            "cannot connect"
                        } else {
                            "sending the request"
                        };
                        return failed(conn, u.reused, e, doing, service, now);
                    }
                }
            }
            while u.readable && conn.wants_upstream_read() {
                // SAFETY: receives into a live buffer of the given length from our own socket.
                let n = unsafe {
                    libc::recv(
                        fd,
                        self.scratch.as_mut_ptr().cast(),
                        self.scratch.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if n > 0 {
                    conn.upstream_received(&self.scratch[..n as usize], service, now);
                    progressed = true;
                    continue;
                }
                if n == 0 {
                    moved = true;
                    if conn.upstream_closed(u.reused, service, now) {
                        return (Pumped::Retry, moved);
                    }
                    conn.take_released();
                    return (Pumped::Detach { reusable: false }, moved);
                }
                match errno() {
                    libc::EAGAIN => u.readable = false,
                    libc::EINTR => {}
                    e => return failed(conn, u.reused, e, "reading the response", service, now),
                }
            }
            moved |= progressed;
            if let Some(reusable) = conn.take_released() {
                return (Pumped::Detach { reusable }, moved);
            }
            if !progressed {
                break;
            }
        }
        let read = conn.wants_upstream_read() && !u.readable;
        let write = !conn.upstream_pending().is_empty() && !u.writable;
        (Pumped::Wait { read, write }, moved)
    }
}

fn failed(
    conn: &mut Conn,
    reused: bool,
    errno: i32,
    doing: &str,
    service: &mut Service,
    now: u64,
) -> (Pumped, bool) {
    let e = io::Error::from_raw_os_error(errno);
    if conn.upstream_error(&format!("{doing}: {e}"), reused, service, now) {
        return (Pumped::Retry, true);
    }
    conn.take_released();
    (Pumped::Detach { reusable: false }, true)
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Whether an idle connection is still open and silent: a peek that would block.
fn still_open(fd: RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: peeks at most one byte into a live local.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && errno() == libc::EAGAIN
}

/// Starts a non-blocking connection to the app. Returns the socket and whether the connect is
/// still in progress (TCP); a refusal that the kernel knows at once is an error here.
fn connect(addr: &UpstreamAddr) -> io::Result<(OwnedFd, bool)> {
    let (domain, storage, len) = match addr {
        UpstreamAddr::Tcp(sa) => {
            let (storage, len) = super::sockaddr(*sa);
            let domain = if sa.is_ipv4() {
                libc::AF_INET
            } else {
                libc::AF_INET6
            };
            (domain, storage, len)
        }
        UpstreamAddr::Unix(path) => {
            // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
            let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let bytes = path.as_os_str().as_bytes();
            // SAFETY: sockaddr_un fits in sockaddr_storage, which is suitably aligned for it.
            let sun = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_un>()
            };
            if bytes.len() >= sun.sun_path.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "unix socket path too long",
                ));
            }
            sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
            for (dst, &src) in sun.sun_path.iter_mut().zip(bytes) {
                *dst = src as libc::c_char;
            }
            let len =
                (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
            (libc::AF_UNIX, storage, len)
        }
    };
    // SAFETY: socket takes no pointers; the result is checked.
    let raw = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is fresh and owned from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    if domain != libc::AF_UNIX {
        let _ = set_int_option(raw, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
    }
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes for this family.
    let rc = unsafe { libc::connect(raw, (&storage as *const libc::sockaddr_storage).cast(), len) };
    if rc == 0 {
        return Ok((fd, false));
    }
    match errno() {
        libc::EINPROGRESS | libc::EINTR => Ok((fd, true)),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// The peer address of an accepted connection, for X-Forwarded-For.
pub fn peer_ip(fd: RawFd) -> Option<IpAddr> {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: passes a live sockaddr_storage and its exact size.
    let rc = unsafe {
        libc::getpeername(
            fd,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return None;
    }
    match storage.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in for AF_INET.
            let sin = unsafe {
                &*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            Some(IpAddr::from(
                u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 for AF_INET6.
            let sin6 = unsafe {
                &*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4))
        }
        _ => None,
    }
}
