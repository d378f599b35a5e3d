//! The epoll engine: the fallback for machines where io_uring is refused (Docker's default
//! seccomp profile, managed runtimes, `kernel.io_uring_disabled`). It drives the same sans-IO
//! core as the io_uring engine, under the contract written in [`super`]; only the way bytes
//! move differs.
//!
//! One worker per thread, each with its own epoll instance, its own SO_REUSEPORT listeners
//! (accepted with `accept4` until EAGAIN) and one receive buffer shared by all its connections,
//! so an idle keep-alive connection holds no buffer at all.
//!
//! Readiness is **edge-triggered**, and each connection is registered once, for input and
//! output, when it is accepted. The engine keeps its own `readable`/`writable` flags, set by
//! events and cleared when a call says EAGAIN. With level-triggered epoll, pausing input for
//! back-pressure or waiting for output space would need an `epoll_ctl` per change (or spin on
//! a socket that stays readable); edge-triggered needs none, so a keep-alive request costs one
//! `epoll_wait` share, one `recv` and one `send`. The price is that a connection that stops
//! before EAGAIN (its turn's budget is spent) gets no new edge: it goes on a ready list and is
//! driven again after the others, which is also what keeps one fast client from starving them.
//!
//! Bodies: files up to [`ZERO_COPY_ABOVE`] are read into the send buffer behind their head, so
//! that a small reply is one `send` and pipelined replies coalesce. Larger ranges go out with
//! `sendfile(2)`, at most [`SENDFILE_CAP`] bytes a call; the head before them is sent with
//! `MSG_MORE`, so that, although TCP_NODELAY is on, it leaves in the same segment as the first
//! body bytes.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::transmit::{self, FileRange, SEND_CHUNK, Stream};
use super::upstream::{self, Pumped, Upstreams};
use super::{Engine, LINGER_SECS, Shutdown, Timeouts, Worker, set_int_option};
use crate::conn::{Conn, Phase};
use crate::http::date;
use crate::serve::Service;
use crate::serve::reply::Segment;

pub struct Epoll;

/// Events taken from the kernel per `epoll_wait`.
const MAX_EVENTS: usize = 256;
/// The worker's receive buffer. A request head almost always fits many times over; a larger
/// buffer only helps clients that pipeline or send bodies, and costs one allocation per worker.
const RECV_SCRATCH: usize = 64 * 1024;
/// File ranges longer than this are sent with sendfile; shorter ones are copied behind their
/// head (see the module doc). The same threshold as the io_uring engine's and the content
/// cache's (`cache::MEMFD_ABOVE`), so a body is either a heap copy or a file sent by sendfile.
/// Sending the head with MSG_MORE and the body with sendfile costs the same two system calls as
/// pread and send, minus two copies of the body: measured on the ~23 KB file (one worker, 32
/// connections) 11.9 µs of server CPU per request against 14.4 µs copying. Below a few KiB the
/// copies cost little, and copying keeps pipelined small replies in one send.
pub const ZERO_COPY_ABOVE: u64 = 8 * 1024;
/// Most bytes one sendfile call may move; also what one connection may send per turn before
/// the others get theirs.
pub const SENDFILE_CAP: usize = 512 * 1024;
/// Receives one connection may do per turn (each up to [`RECV_SCRATCH`] bytes): bounds the time
/// spent on a client that streams a request body we are only skipping.
const READS_PER_TURN: u32 = 16;
/// Send buffers kept for reuse, as in the io_uring engine.
const POOLED_SEND_BUFS: usize = 256;

/// `epoll_event.u64` of a listener is this bit plus its index, of the shutdown eventfd the bit
/// below, of an upstream connection the next bit plus its id; any other value is a connection
/// slot.
const LISTENER_TOKEN: u64 = 1 << 63;
const SHUTDOWN_TOKEN: u64 = 1 << 62;
const UPSTREAM_TOKEN: u64 = 1 << 61;
/// Rounds of client and upstream work one connection gets per turn before the others.
const PROXY_ROUNDS: usize = 8;

impl Engine for Epoll {
    const NAME: &'static str = "epoll";

    fn probe() -> Result<(), String> {
        // epoll and sendfile are in every kernel this server can run on; what can still refuse
        // is a sandbox, and it would refuse epoll_create1 first.
        Poller::new()
            .map(drop)
            .map_err(|e| format!("epoll_create1 failed: {e}"))
    }

    fn run(worker: Worker) -> io::Result<()> {
        EpollWorker::new(worker)?.run()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    Conn(usize),
    Listener(usize),
    Upstream(usize),
    Shutdown,
}

fn decode(token: u64) -> Token {
    if token & LISTENER_TOKEN != 0 {
        Token::Listener((token & !LISTENER_TOKEN) as usize)
    } else if token == SHUTDOWN_TOKEN {
        Token::Shutdown
    } else if token & UPSTREAM_TOKEN != 0 {
        Token::Upstream((token & !UPSTREAM_TOKEN) as usize)
    } else {
        Token::Conn(token as usize)
    }
}

/// The last OS error number, for matching on.
fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// An epoll instance.
struct Poller {
    fd: OwnedFd,
}

impl Poller {
    fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 takes no pointers; the result is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        Ok(Poller {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    fn add(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: token };
        // SAFETY: passes a pointer to a live epoll_event; both descriptors are open.
        if unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stops watching `fd` (closing a descriptor does that by itself; this is for those that
    /// stay open).
    fn delete(&self, fd: RawFd) {
        // SAFETY: EPOLL_CTL_DEL ignores the event pointer (null is allowed since Linux 2.6.9).
        unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        };
    }

    fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        // SAFETY: the kernel writes at most `events.len()` entries into `events`, which is live,
        // writable memory of that many epoll_event values.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                timeout_ms,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

fn recv(fd: RawFd, buf: &mut [u8]) -> Result<usize, i32> {
    // SAFETY: `buf` is live, writable memory of `buf.len()` bytes; recv writes at most that.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 { Err(errno()) } else { Ok(n as usize) }
}

fn send(fd: RawFd, buf: &[u8], more: bool) -> Result<usize, i32> {
    let flags = libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
    // SAFETY: `buf` is live memory of `buf.len()` bytes; send only reads it.
    let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), flags) };
    if n < 0 { Err(errno()) } else { Ok(n as usize) }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Open,
    /// Output sent and write side shut: draining input until EOF or the linger time is over.
    Lingering {
        since: u64,
    },
}

/// What the worker does with a connection after driving it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// Nothing to do until its next event.
    Wait,
    /// Work left but its turn is over: drive it again after the others.
    Yield,
    /// Close it now.
    Close,
}

/// How far a flush got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flush {
    /// Everything owed is sent.
    Drained,
    /// The socket is full; an EPOLLOUT edge will come.
    Blocked,
    /// This turn's byte budget is spent.
    Yield,
    /// The connection went into the lingering close.
    Linger,
    Close,
}

/// What one connection may still do in this turn.
struct Budget {
    reads: u32,
    bytes: usize,
}

impl Budget {
    fn new() -> Self {
        Budget {
            reads: READS_PER_TURN,
            bytes: SENDFILE_CAP,
        }
    }
}

/// The worker's state that connections use while they are driven.
struct Ctx {
    service: Service,
    /// The receive buffer every connection of the worker reads into.
    scratch: Box<[u8]>,
    send_pool: Vec<Vec<u8>>,
    /// The coarse clock, in seconds, read once per loop turn.
    now: u64,
}

impl Ctx {
    fn send_buf(&mut self) -> Vec<u8> {
        self.send_pool
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(SEND_CHUNK))
    }

    fn recycle(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() >= SEND_CHUNK && self.send_pool.len() < POOLED_SEND_BUFS {
            buf.clear();
            self.send_pool.push(buf);
        }
    }
}

struct Connection {
    fd: OwnedFd,
    conn: Conn,
    state: State,
    /// Bytes filled from the output: `send_buf[sent..]` is still owed. Empty, without an
    /// allocation, whenever nothing is owed.
    send_buf: Vec<u8>,
    sent: usize,
    /// A file range being sent with sendfile; goes out after `send_buf`.
    stream: Option<Stream>,
    /// Something was filled since the last `Conn::output_drained`.
    had_output: bool,
    /// A file turned out shorter than promised: close after what is owed.
    truncated: bool,
    /// Cleared if sendfile refuses this connection's files (EINVAL: a file system without it),
    /// after which files are copied like small ones.
    zero_copy: bool,
    /// Readiness as the engine knows it (edge-triggered: see the module doc).
    readable: bool,
    writable: bool,
    /// The peer's FIN or a hang-up was reported: read to the end, a short read does not mean
    /// that the socket is drained of it.
    rdhup: bool,
    peer_eof: bool,
    /// On the worker's ready list.
    queued: bool,
    last_progress: u64,
    /// The upstream connection carrying this connection's request to the app.
    upstream: Option<usize>,
    /// The next upstream must be a new connection (a pooled one failed).
    fresh_upstream: bool,
}

impl Connection {
    fn new(fd: OwnedFd, now: u64, peer: Option<std::net::IpAddr>) -> Self {
        Connection {
            fd,
            conn: Conn::new(now, peer),
            upstream: None,
            fresh_upstream: false,
            state: State::Open,
            send_buf: Vec::new(),
            sent: 0,
            stream: None,
            had_output: false,
            truncated: false,
            zero_copy: true,
            readable: false,
            writable: true,
            rdhup: false,
            peer_eof: false,
            queued: false,
            last_progress: now,
        }
    }

    /// Bytes already taken from the output are still to be sent.
    fn owes(&self) -> bool {
        self.sent < self.send_buf.len() || self.stream.is_some()
    }

    /// The phase for the timeouts. While bytes taken from the output are still owed the
    /// connection is busy, even if the output itself is empty.
    fn phase(&self) -> Phase {
        if self.owes() {
            Phase::Busy
        } else {
            self.conn.phase()
        }
    }

    fn wants_read(&self) -> bool {
        self.state == State::Open && self.readable && !self.peer_eof && self.conn.wants_input()
    }

    /// Applies an epoll event's readiness.
    fn ready(&mut self, events: u32) {
        if events & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP) as u32 != 0 {
            self.readable = true;
        }
        if events & (libc::EPOLLRDHUP | libc::EPOLLHUP) as u32 != 0 {
            self.rdhup = true;
        }
        if events & (libc::EPOLLOUT | libc::EPOLLHUP) as u32 != 0 {
            self.writable = true;
        }
    }

    /// Reads what is wanted and available, and sends what is owed, until the connection has to
    /// wait for the socket or its turn is over.
    fn drive(&mut self, cx: &mut Ctx) -> Next {
        let mut budget = Budget::new();
        loop {
            if let State::Lingering { .. } = self.state {
                return self.drain_lingering(cx, &mut budget);
            }
            while self.wants_read() && budget.reads > 0 {
                budget.reads -= 1;
                if !self.read_once(cx) {
                    return Next::Close;
                }
            }
            match self.flush(cx, &mut budget) {
                Flush::Drained | Flush::Blocked => {}
                Flush::Linger => continue,
                Flush::Yield => return Next::Yield,
                Flush::Close => return Next::Close,
            }
            // Sending may have resumed parsing (back-pressure released), so input may be
            // wanted again.
            if !self.wants_read() {
                return Next::Wait;
            }
            if budget.reads == 0 {
                return Next::Yield;
            }
        }
    }

    /// One receive into the worker's buffer, fed to the core. False: close the connection.
    fn read_once(&mut self, cx: &mut Ctx) -> bool {
        match recv(self.fd.as_raw_fd(), &mut cx.scratch) {
            Ok(0) => {
                self.readable = false;
                self.peer_eof = true;
                self.conn.peer_closed();
                true
            }
            Ok(n) => {
                // A short read took everything the socket held, and data arriving later raises
                // a new edge: skip the receive that would only say EAGAIN. Not after a FIN was
                // reported, which a short read can leave behind.
                if n < cx.scratch.len() && !self.rdhup {
                    self.readable = false;
                }
                self.conn
                    .received(&cx.scratch[..n], &mut cx.service, cx.now);
                true
            }
            Err(libc::EAGAIN) => {
                self.readable = false;
                true
            }
            Err(libc::EINTR) => true,
            Err(_) => false,
        }
    }

    /// Sends what is owed, refilling from the output, until it is all sent, the socket is full
    /// or the budget is spent.
    fn flush(&mut self, cx: &mut Ctx, budget: &mut Budget) -> Flush {
        loop {
            if let Some(stream) = self.stream.as_mut() {
                if !self.writable {
                    return Flush::Blocked;
                }
                if budget.bytes == 0 {
                    return Flush::Yield;
                }
                match stream.send(self.fd.as_raw_fd(), budget.bytes) {
                    Ok(0) => {
                        // The file is shorter than the length promised in the head: end the
                        // connection after what was sent, so the body never looks complete.
                        self.stream = None;
                        self.truncated = true;
                        self.conn.output.clear();
                    }
                    Ok(n) => {
                        budget.bytes -= n;
                        self.last_progress = cx.now;
                        if stream.is_empty() {
                            self.stream = None;
                        }
                        // A short transfer usually means the socket is full, but it can also be
                        // a file cut short: the next call tells which (EAGAIN or 0).
                    }
                    Err(libc::EAGAIN) => {
                        self.writable = false;
                        return Flush::Blocked;
                    }
                    Err(libc::EINTR) => {}
                    Err(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => {
                        // This cannot be sent by reference: send it, and the rest of this
                        // connection's output, through the buffer instead. An error means that
                        // nothing was transferred, so the range is intact.
                        match self.stream.take() {
                            Some(Stream::File(FileRange { file, offset, len })) => {
                                self.conn.output.push_front(Segment::File {
                                    file,
                                    offset,
                                    len,
                                    by_reference: true,
                                });
                            }
                            Some(Stream::Pinned(bytes)) => {
                                self.conn.output.push_front(Segment::Pinned(bytes));
                            }
                            None => {}
                        }
                        self.zero_copy = false;
                    }
                    Err(_) => return Flush::Close,
                }
                continue;
            }
            if self.sent < self.send_buf.len() {
                if !self.writable {
                    return Flush::Blocked;
                }
                if budget.bytes == 0 {
                    return Flush::Yield;
                }
                // A head followed by a sendfile body: hold it back so that it leaves together
                // with the first body bytes (TCP_NODELAY would push it alone).
                let more = self.zero_copy && self.big_file_next();
                match send(self.fd.as_raw_fd(), &self.send_buf[self.sent..], more) {
                    Ok(n) => {
                        self.sent += n;
                        budget.bytes = budget.bytes.saturating_sub(n);
                        self.last_progress = cx.now;
                    }
                    Err(libc::EAGAIN) => {
                        self.writable = false;
                        return Flush::Blocked;
                    }
                    Err(libc::EINTR) => {}
                    Err(_) => return Flush::Close,
                }
                continue;
            }
            // Everything filled so far is sent.
            if self.truncated {
                return self.begin_linger(cx);
            }
            if self.conn.output.is_empty() {
                cx.recycle(std::mem::take(&mut self.send_buf));
                self.sent = 0;
                if self.conn.should_close() {
                    return self.begin_linger(cx);
                }
                if !self.had_output {
                    return Flush::Drained;
                }
                self.had_output = false;
                self.conn.output_drained(&mut cx.service, cx.now);
                if self.conn.output.is_empty() {
                    return Flush::Drained;
                }
            }
            if self.send_buf.capacity() == 0 {
                self.send_buf = cx.send_buf();
            }
            self.send_buf.clear();
            self.sent = 0;
            let zero_copy_above = self.zero_copy.then_some(ZERO_COPY_ABOVE);
            let fill = transmit::fill(&mut self.conn.output, &mut self.send_buf, zero_copy_above);
            self.truncated |= fill.truncated;
            self.stream = fill.stream;
            self.had_output = true;
            self.last_progress = cx.now;
        }
    }

    /// The output goes on with a range that [`transmit::fill`] will hand over for sendfile.
    fn big_file_next(&self) -> bool {
        matches!(
            self.conn.output.front(),
            Some(Segment::File { len, by_reference: true, .. }) if *len > ZERO_COPY_ABOVE
        )
    }

    /// Half-closes after the last reply and drains input for a while (RFC 9112 §9.6), so that
    /// unread pipelined bytes do not turn into a reset that destroys the reply in flight.
    fn begin_linger(&mut self, cx: &mut Ctx) -> Flush {
        if self.peer_eof {
            return Flush::Close;
        }
        // SAFETY: plain syscall on a descriptor this connection owns.
        unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_WR) };
        self.state = State::Lingering { since: cx.now };
        self.conn.output.clear();
        self.stream = None;
        cx.recycle(std::mem::take(&mut self.send_buf));
        self.sent = 0;
        Flush::Linger
    }

    fn drain_lingering(&mut self, cx: &mut Ctx, budget: &mut Budget) -> Next {
        while self.readable {
            if budget.reads == 0 {
                return Next::Yield;
            }
            budget.reads -= 1;
            match recv(self.fd.as_raw_fd(), &mut cx.scratch) {
                Ok(0) => return Next::Close,
                Ok(n) => {
                    if n < cx.scratch.len() && !self.rdhup {
                        self.readable = false;
                    }
                }
                Err(libc::EAGAIN) => self.readable = false,
                Err(libc::EINTR) => {}
                Err(_) => return Next::Close,
            }
        }
        Next::Wait
    }
}

struct EpollWorker {
    poller: Poller,
    events: Box<[libc::epoll_event]>,
    listeners: Vec<TcpListener>,
    accepting: bool,
    /// Accepting stopped on an error (out of descriptors, memory): try again at the next sweep,
    /// since an edge-triggered listener says nothing more about connections already queued.
    accept_retry: bool,
    conns: Vec<Option<Connection>>,
    free_slots: Vec<usize>,
    /// Slots closed during this loop turn. They become free only after it, so that an event
    /// still in this turn's batch for the old connection cannot land on a new one.
    released: Vec<usize>,
    live: usize,
    /// Connections that yielded with work left, driven again next turn; and this turn's list.
    ready: Vec<usize>,
    ready_now: Vec<usize>,
    cx: Ctx,
    /// Connections to the app, when there is one.
    upstreams: Option<Upstreams>,
    timeouts: Timeouts,
    shutdown: Arc<Shutdown>,
    shutdown_deadline: Option<u64>,
    next_sweep: Instant,
}

impl EpollWorker {
    fn new(worker: Worker) -> io::Result<Self> {
        let poller = Poller::new()?;
        let upstreams = worker.site.proxy.as_ref().map(Upstreams::new);
        Ok(EpollWorker {
            upstreams,
            poller,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS].into_boxed_slice(),
            listeners: worker.listeners,
            accepting: true,
            accept_retry: false,
            conns: Vec::new(),
            free_slots: Vec::new(),
            released: Vec::new(),
            live: 0,
            ready: Vec::new(),
            ready_now: Vec::new(),
            cx: Ctx {
                service: Service::new(worker.site),
                scratch: vec![0; RECV_SCRATCH].into_boxed_slice(),
                send_pool: Vec::new(),
                now: date::now_secs(),
            },
            timeouts: worker.timeouts,
            shutdown: worker.shutdown,
            shutdown_deadline: None,
            next_sweep: Instant::now() + Duration::from_secs(1),
        })
    }

    fn run(mut self) -> io::Result<()> {
        for (i, listener) in self.listeners.iter().enumerate() {
            // Edge-triggered too: every edge is followed by accepting until EAGAIN.
            self.poller.add(
                listener.as_raw_fd(),
                (libc::EPOLLIN | libc::EPOLLET) as u32,
                LISTENER_TOKEN | i as u64,
            )?;
        }
        // Level-triggered, and never read: once set it reports on every wait until removed.
        self.poller.add(
            self.shutdown.event_fd(),
            libc::EPOLLIN as u32,
            SHUTDOWN_TOKEN,
        )?;
        if self.shutdown.is_requested() {
            self.begin_shutdown();
        }

        loop {
            if self.shutdown_deadline.is_some() && self.live == 0 {
                return Ok(());
            }
            let timeout_ms = if self.ready.is_empty() {
                let left = self.next_sweep.saturating_duration_since(Instant::now());
                left.as_micros().div_ceil(1000).min(1000) as i32
            } else {
                0
            };
            let n = match self.poller.wait(&mut self.events, timeout_ms) {
                Ok(n) => n,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => 0,
                Err(e) => return Err(e),
            };
            self.cx.now = date::now_secs();
            for i in 0..n {
                // Copied out: the struct is packed on some targets.
                let libc::epoll_event { events, u64: token } = self.events[i];
                match decode(token) {
                    Token::Conn(slot) => self.on_event(slot, events),
                    Token::Listener(i) => self.accept(i),
                    Token::Upstream(id) => self.on_upstream_event(id, events),
                    Token::Shutdown => self.begin_shutdown(),
                }
            }
            std::mem::swap(&mut self.ready, &mut self.ready_now);
            for i in 0..self.ready_now.len() {
                let slot = self.ready_now[i];
                if let Some(c) = self.conns[slot].as_mut()
                    && c.queued
                {
                    c.queued = false;
                    self.drive(slot);
                }
            }
            self.ready_now.clear();
            if Instant::now() >= self.next_sweep {
                self.next_sweep = Instant::now() + Duration::from_secs(1);
                self.sweep();
            }
            self.free_slots.append(&mut self.released);
            if let Some(ups) = self.upstreams.as_mut() {
                ups.end_turn();
            }
        }
    }

    fn on_upstream_event(&mut self, id: usize, events: u32) {
        let Some(ups) = self.upstreams.as_mut() else {
            return;
        };
        let Some(u) = ups.get(id) else {
            return;
        };
        // An error or hang-up is reported by the next call in either direction.
        let failed = (libc::EPOLLERR | libc::EPOLLHUP) as u32;
        if events & ((libc::EPOLLIN | libc::EPOLLRDHUP) as u32 | failed) != 0 {
            u.readable = true;
        }
        if events & (libc::EPOLLOUT as u32 | failed) != 0 {
            u.writable = true;
        }
        if let Some(owner) = ups.ready(id) {
            self.drive(owner);
        }
    }

    /// Moves the connection's exchange with the app along: an upstream connection for it if
    /// it has none, then bytes both ways. Returns whether anything moved.
    fn pump(&mut self, slot: usize) -> bool {
        let Some(ups) = self.upstreams.as_mut() else {
            return false;
        };
        let mut moved = false;
        loop {
            let Some(c) = self.conns[slot].as_mut() else {
                return moved;
            };
            let id = match c.upstream {
                Some(id) => id,
                None if !c.conn.needs_upstream() || c.state != State::Open => return moved,
                None => {
                    let poller = &self.poller;
                    let watch = |fd, id: usize| {
                        let events =
                            libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET;
                        poller.add(fd, events as u32, UPSTREAM_TOKEN | id as u64)
                    };
                    let fresh = std::mem::take(&mut c.fresh_upstream);
                    let (service, now) = (&mut self.cx.service, self.cx.now);
                    match ups.attach(slot, &mut c.conn, fresh, service, now, watch) {
                        Some(id) => {
                            c.upstream = Some(id);
                            id
                        }
                        None => {
                            moved = true;
                            continue;
                        }
                    }
                }
            };
            let (pumped, m) = ups.pump(id, &mut c.conn, &mut self.cx.service, self.cx.now);
            moved |= m;
            match pumped {
                // Edge-triggered: the socket's next edge drives the owner again.
                Pumped::Wait { .. } => return moved,
                Pumped::Detach { reusable } => {
                    c.upstream = None;
                    ups.release(id, reusable);
                    moved = true;
                }
                Pumped::Retry => {
                    c.upstream = None;
                    c.fresh_upstream = true;
                    ups.close(id);
                    moved = true;
                }
            }
        }
    }

    /// Ends the connection's exchange with the app, if it has an upstream connection.
    fn drop_upstream(&mut self, slot: usize) {
        if let Some(c) = self.conns[slot].as_mut()
            && let Some(id) = c.upstream.take()
            && let Some(ups) = self.upstreams.as_mut()
        {
            ups.close(id);
        }
    }

    fn on_event(&mut self, slot: usize, events: u32) {
        let Some(c) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if events & libc::EPOLLERR as u32 != 0 {
            // Reset or failed: nothing more can be delivered.
            self.close(slot);
            return;
        }
        c.ready(events);
        self.drive(slot);
    }

    fn drive(&mut self, slot: usize) {
        // Client work can feed the app (a request body) and the app's bytes give the client
        // output, so the two alternate until neither moves, for a bounded number of rounds.
        let mut next = Next::Yield;
        for _ in 0..PROXY_ROUNDS {
            let Some(c) = self.conns[slot].as_mut() else {
                return;
            };
            next = c.drive(&mut self.cx);
            if next == Next::Close {
                self.close(slot);
                return;
            }
            if !self.pump(slot) {
                break;
            }
            next = Next::Yield;
        }
        let Some(c) = self.conns[slot].as_mut() else {
            return;
        };
        if next == Next::Yield && !c.queued {
            c.queued = true;
            self.ready.push(slot);
        }
    }

    fn accept(&mut self, i: usize) {
        while self.accepting {
            // SAFETY: accept4 with null address pointers writes nothing; the result is checked.
            let fd = unsafe {
                libc::accept4(
                    self.listeners[i].as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                match errno() {
                    libc::EAGAIN => {}
                    // The connection died in the backlog, or a signal: take the next one.
                    libc::EINTR | libc::ECONNABORTED | libc::EPROTO => continue,
                    e => {
                        if !self.accept_retry && matches!(e, libc::EMFILE | libc::ENFILE) {
                            log!("bypass: accept: out of file descriptors; retrying every second");
                        }
                        self.accept_retry = true;
                    }
                }
                return;
            }
            // SAFETY: `fd` was just accepted and is owned by nobody else.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // Replies are written whole, so Nagle would only delay the last segment of each.
            let _ = set_int_option(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
            let slot = self.free_slots.pop().unwrap_or(self.conns.len());
            let events = libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET;
            if self
                .poller
                .add(fd.as_raw_fd(), events as u32, slot as u64)
                .is_err()
            {
                // Dropping `fd` closes the connection; the slot stays free.
                if slot < self.conns.len() {
                    self.free_slots.push(slot);
                }
                continue;
            }
            // Only a proxy needs the peer's address (X-Forwarded-For).
            let peer = self
                .upstreams
                .is_some()
                .then(|| upstream::peer_ip(fd.as_raw_fd()))
                .flatten();
            let connection = Connection::new(fd, self.cx.now, peer);
            if slot == self.conns.len() {
                self.conns.push(Some(connection));
            } else {
                self.conns[slot] = Some(connection);
            }
            self.live += 1;
        }
    }

    fn close(&mut self, slot: usize) {
        self.drop_upstream(slot);
        if let Some(c) = self.conns[slot].take() {
            // Dropping the descriptor closes it, which also takes it out of the epoll set.
            self.cx.recycle(c.send_buf);
            self.live -= 1;
            self.released.push(slot);
        }
    }

    /// Once a second: timeouts, the shutdown deadline, and accepting again after an error.
    fn sweep(&mut self) {
        if self.accept_retry && self.accepting {
            self.accept_retry = false;
            for i in 0..self.listeners.len() {
                self.accept(i);
            }
        }
        let now = self.cx.now;
        let past_deadline = self.shutdown_deadline.is_some_and(|d| now >= d);
        for slot in 0..self.conns.len() {
            let Some(c) = self.conns[slot].as_mut() else {
                continue;
            };
            let expired = past_deadline
                || match c.state {
                    State::Open => {
                        self.timeouts
                            .expired(c.phase(), c.conn.phase_since, c.last_progress, now)
                    }
                    State::Lingering { since } => now.saturating_sub(since) > LINGER_SECS,
                };
            if expired && !past_deadline && c.phase() == Phase::Upstream {
                // The app is too slow: the core answers 504 (or ends a started response).
                c.conn.upstream_timed_out(&mut self.cx.service, now);
                c.conn.take_released();
                self.drop_upstream(slot);
                self.drive(slot);
            } else if expired {
                self.close(slot);
            }
        }
    }

    fn begin_shutdown(&mut self) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        self.shutdown_deadline = Some(self.cx.now + self.timeouts.shutdown.as_secs().max(1));
        self.accepting = false;
        // The eventfd stays readable: stop watching it, or every wait would return at once.
        self.poller.delete(self.shutdown.event_fd());
        for listener in &self.listeners {
            self.poller.delete(listener.as_raw_fd());
        }
        for slot in 0..self.conns.len() {
            let Some(c) = self.conns[slot].as_mut() else {
                continue;
            };
            if c.state != State::Open {
                continue;
            }
            if matches!(c.phase(), Phase::Busy | Phase::Upstream) {
                // Finish the replies owed, read no further requests.
                c.conn.peer_closed();
                self.drive(slot);
            } else {
                self.close(slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, Command};
    use std::io::{Read, Write};
    use std::net::{TcpStream, ToSocketAddrs};
    use std::path::Path;
    use std::rc::Rc;

    #[test]
    fn tokens_round_trip() {
        assert_eq!(decode(0), Token::Conn(0));
        assert_eq!(decode(12345), Token::Conn(12345));
        assert_eq!(decode(LISTENER_TOKEN | 3), Token::Listener(3));
        assert_eq!(decode(SHUTDOWN_TOKEN), Token::Shutdown);
    }

    fn service_for(dir: &Path) -> Service {
        let args = [
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--media".into(),
            format!("/m/={}", dir.display()),
        ];
        let Ok(Command::Serve(config)) = config::parse(args.map(std::ffi::OsString::from)) else {
            panic!("test config does not parse");
        };
        Service::new(Arc::new(crate::serve::Site::new(&config).unwrap()))
    }

    fn ctx(dir: &Path) -> Ctx {
        Ctx {
            service: service_for(dir),
            scratch: vec![0; RECV_SCRATCH].into_boxed_slice(),
            send_pool: Vec::new(),
            now: date::now_secs(),
        }
    }

    /// A connected pair: the server side as a non-blocking Connection, the client side.
    fn pair() -> (Connection, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        (
            Connection::new(OwnedFd::from(server), date::now_secs(), None),
            client,
        )
    }

    /// Drives `c` as the worker would, until it waits or closes.
    fn settle(c: &mut Connection, cx: &mut Ctx) -> Next {
        loop {
            c.ready((libc::EPOLLIN | libc::EPOLLOUT) as u32);
            match c.drive(cx) {
                Next::Yield => continue,
                other => return other,
            }
        }
    }

    #[test]
    fn a_file_shorter_than_promised_ends_the_connection_after_what_was_sent() {
        let dir = tempfile::tempdir().unwrap();
        let mut cx = ctx(dir.path());
        let (mut c, mut client) = pair();
        let mut file = tempfile::tempfile().unwrap();
        let real = vec![b'x'; ZERO_COPY_ABOVE as usize * 2];
        file.write_all(&real).unwrap();
        let file = Rc::new(file);
        // Promise twice what the file holds, so the body goes out with sendfile and runs dry.
        c.conn.output.bytes().extend_from_slice(b"HEAD\r\n\r\n");
        c.conn
            .output
            .push_file(&file, 0, real.len() as u64 * 2, true);
        c.conn.output.end_reply();
        c.conn.output.bytes().extend_from_slice(b"NEXT REPLY");
        c.conn.output.end_reply();
        let next = settle(&mut c, &mut cx);
        assert_eq!(next, Next::Wait, "lingering, waiting for the peer");
        assert!(matches!(c.state, State::Lingering { .. }));
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        let mut want = b"HEAD\r\n\r\n".to_vec();
        want.extend_from_slice(&real);
        assert_eq!(got.len(), want.len());
        assert!(got == want, "the head and the real bytes, then EOF");
        // The client closes too: the lingering connection is done.
        drop(client);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(settle(&mut c, &mut cx), Next::Close);
    }

    #[test]
    fn a_small_file_shorter_than_promised_ends_the_connection_too() {
        let dir = tempfile::tempdir().unwrap();
        let mut cx = ctx(dir.path());
        let (mut c, mut client) = pair();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"short").unwrap();
        let file = Rc::new(file);
        c.conn.output.bytes().extend_from_slice(b"H:");
        c.conn.output.push_file(&file, 0, 100, true);
        c.conn.output.end_reply();
        settle(&mut c, &mut cx);
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"H:short");
    }

    #[test]
    fn big_bodies_are_streamed_and_yield_between_caps() {
        let dir = tempfile::tempdir().unwrap();
        let body: Vec<u8> = (0..SENDFILE_CAP * 3 + 7).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("big.bin"), &body).unwrap();
        let mut cx = ctx(dir.path());
        let (mut c, mut client) = pair();
        client
            .write_all(b"GET /m/big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            client.read_to_end(&mut got).unwrap();
            got
        });
        let mut yields = 0;
        loop {
            c.ready((libc::EPOLLIN | libc::EPOLLOUT) as u32);
            match c.drive(&mut cx) {
                Next::Yield => yields += 1,
                Next::Wait if matches!(c.state, State::Lingering { .. }) => break,
                Next::Wait => std::thread::sleep(Duration::from_millis(1)),
                Next::Close => break,
            }
        }
        // The reader finishes when the peer's FIN arrives; close our side to let it.
        drop(c);
        let got = reader.join().unwrap();
        let split = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&got[..split]);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(got[split..] == body[..], "body intact");
        assert!(yields >= 3, "one turn moves at most SENDFILE_CAP bytes");
    }

    #[test]
    fn a_worker_serves_pipelined_requests_and_stops_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let small = b"small body\n".to_vec();
        let big: Vec<u8> = (0..300_000).map(|i| (i % 253) as u8).collect();
        std::fs::write(dir.path().join("small.txt"), &small).unwrap();
        std::fs::write(dir.path().join("big.jpg"), &big).unwrap();
        let site = {
            let args = [
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--media".into(),
                format!("/m/={}", dir.path().display()),
            ];
            let Ok(Command::Serve(config)) = config::parse(args.map(std::ffi::OsString::from))
            else {
                panic!("test config does not parse");
            };
            Arc::new(crate::serve::Site::new(&config).unwrap())
        };
        let addr = "127.0.0.1:0".to_socket_addrs().unwrap().collect::<Vec<_>>();
        let (mut listeners, bound) = super::super::bind_listeners(&addr, 1).unwrap();
        let shutdown = Arc::new(Shutdown::new().unwrap());
        let worker = Worker {
            index: 0,
            listeners: listeners.remove(0),
            site,
            timeouts: Timeouts {
                header_secs: 10,
                keepalive_secs: 10,
                send_secs: 60,
                upstream_secs: 60,
                shutdown: Duration::from_secs(2),
            },
            shutdown: Arc::clone(&shutdown),
        };
        let handle = std::thread::spawn(move || Epoll::run(worker));

        let mut client = TcpStream::connect(bound[0]).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut requests = Vec::new();
        for path in ["small.txt", "big.jpg", "small.txt", "big.jpg"] {
            requests
                .extend_from_slice(format!("GET /m/{path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        }
        requests.extend_from_slice(
            b"GET /m/small.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        client.write_all(&requests).unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        let mut rest = &got[..];
        for want in [&small, &big, &small, &big, &small] {
            let split = rest.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            let head = String::from_utf8_lossy(&rest[..split]).to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            assert!(
                head.contains(&format!("content-length: {}\r\n", want.len())),
                "{head}"
            );
            assert!(rest[split..split + want.len()] == want[..]);
            rest = &rest[split + want.len()..];
        }
        assert!(rest.is_empty());
        drop(client);

        // An idle keep-alive connection is closed by shutdown, and the worker returns.
        let mut idle = TcpStream::connect(bound[0]).unwrap();
        idle.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        idle.write_all(b"GET /m/small.txt HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 4096];
        assert!(idle.read(&mut buf).unwrap() > 0);
        shutdown.request();
        handle.join().unwrap().unwrap();
        let mut tail = Vec::new();
        let _ = idle.read_to_end(&mut tail);
    }
}
