//! The io_uring engine: one ring per worker thread (SINGLE_ISSUER, DEFER_TASKRUN where the
//! kernel has them), multishot accept on the worker's own SO_REUSEPORT listeners, multishot
//! receives into a provided buffer ring, and every submission of one loop turn sent to the
//! kernel in a single `io_uring_enter`.

pub mod bufring;

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{IoUring, cqueue, opcode, squeue, types};

use super::transmit::{self, SEND_CHUNK};
use super::upstream::{self, Pumped, Upstreams};
use super::{Engine, LINGER_SECS, Shutdown, Timeouts, Worker, set_int_option};
use crate::conn::{Conn, Phase};
use crate::http::date;
use crate::serve::Service;
use crate::serve::reply::Segment;
use bufring::BufRing;

pub struct Uring;

const RING_ENTRIES: u32 = 1024;
const BUF_GROUP: u16 = 0;
/// Receive buffers: a request head almost always fits in one; 512 of them per worker is 2 MiB,
/// shared by all the worker's connections instead of a buffer per connection.
const RECV_BUF_SIZE: u32 = 4096;
const RECV_BUFS: u16 = 512;
/// Send buffers kept for reuse, so that a busy worker does not allocate per reply while an idle
/// connection holds none.
const POOLED_SEND_BUFS: usize = 256;
/// File ranges longer than this go out with sendfile(2) (page cache to socket, no copy through
/// user space); shorter ones are read into the send buffer and coalesce with their head into
/// one send. Measured on a 23 KB file against copying: sendfile costs ~25% less CPU per request;
/// below a few KB the extra system calls outweigh the copy.
const SENDFILE_ABOVE: u64 = 8 * 1024;
/// Most bytes one connection sends by sendfile before the worker turns to others.
const SENDFILE_TURN: u64 = 1 << 20;

/// What a completion is for: the top byte of `user_data`; the rest is the connection slot or
/// listener index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Op {
    Accept = 1,
    Recv = 2,
    Send = 3,
    Timer = 4,
    Shutdown = 5,
    Cancel = 6,
    /// The socket became writable again during a sendfile stream.
    Writable = 7,
    /// An upstream connection (the index is its id) became readable, or writable.
    UpRead = 8,
    UpWrite = 9,
}

/// Rounds of upstream and client work one connection gets per completion.
const PROXY_ROUNDS: usize = 8;

fn user_data(op: Op, index: usize) -> u64 {
    (op as u64) << 56 | index as u64
}

fn decode(user_data: u64) -> (u8, usize) {
    (
        (user_data >> 56) as u8,
        (user_data & ((1 << 56) - 1)) as usize,
    )
}

impl Engine for Uring {
    const NAME: &'static str = "uring";

    fn probe() -> Result<(), String> {
        let ring = IoUring::new(8).map_err(|e| format!("io_uring_setup failed: {e}"))?;
        let mut probe = io_uring::Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|e| format!("io_uring probe failed: {e}"))?;
        for (code, name) in [
            (opcode::AcceptMulti::CODE, "accept"),
            (opcode::RecvMulti::CODE, "recv"),
            (opcode::Send::CODE, "send"),
            (opcode::Timeout::CODE, "timeout"),
            (opcode::PollAdd::CODE, "poll_add"),
            (opcode::AsyncCancel::CODE, "async_cancel"),
        ] {
            if !probe.is_supported(code) {
                return Err(format!("io_uring lacks the {name} operation"));
            }
        }
        // Multishot receive with provided buffer rings came with Linux 6.0.
        let release = kernel_release();
        if release < (6, 0) {
            return Err(format!(
                "Linux {}.{} is older than 6.0, which multishot receive needs",
                release.0, release.1
            ));
        }
        BufRing::new(&ring, 8, 64, BUF_GROUP)
            .map_err(|e| format!("io_uring buffer ring registration failed: {e}"))?;
        Ok(())
    }

    fn run(worker: Worker) -> io::Result<()> {
        UringWorker::new(worker)?.run()
    }
}

fn kernel_release() -> (u32, u32) {
    // SAFETY: utsname is plain data; uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: passes a pointer to a live utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return (0, 0);
    }
    // SAFETY: uname NUL-terminates `release`.
    let release = unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) }.to_string_lossy();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok());
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Open,
    /// Output sent and write side shut: draining input until EOF or the linger time is over.
    Lingering {
        since: u64,
    },
    /// Shut down both ways; the descriptor is closed once no operation is in flight.
    Closing,
}

struct Connection {
    fd: RawFd,
    conn: Conn,
    state: State,
    /// The bytes being sent: `send_buf[sent..]` is still owed. The kernel reads from this buffer
    /// while a send is in flight, so it is not touched then.
    send_buf: Vec<u8>,
    sent: usize,
    /// Operations the kernel still holds for this connection; the slot and descriptor are
    /// released only at zero, so no completion can land on a reused slot.
    inflight: u32,
    recv_armed: bool,
    send_in_flight: bool,
    cancel_sent: bool,
    truncated: bool,
    peer_eof: bool,
    last_progress: u64,
    /// A large file range being sent with sendfile.
    stream: Option<transmit::Stream>,
    /// The upstream connection carrying this connection's request to the app.
    upstream: Option<usize>,
    /// The next upstream must be a new connection (a pooled one failed).
    fresh_upstream: bool,
}

struct UringWorker {
    ring: IoUring,
    bufs: BufRing,
    conns: Vec<Option<Connection>>,
    free_slots: Vec<usize>,
    live: usize,
    listeners: Vec<TcpListener>,
    accepting: bool,
    service: Service,
    /// Connections to the app, when there is one.
    upstreams: Option<Upstreams>,
    timeouts: Timeouts,
    shutdown: std::sync::Arc<Shutdown>,
    shutdown_deadline: Option<u64>,
    timer: types::Timespec,
    send_pool: Vec<Vec<u8>>,
    completions: Vec<(u64, i32, u32)>,
    now: u64,
}

fn build_ring() -> io::Result<IoUring> {
    // DEFER_TASKRUN runs completion work only when this thread enters the kernel to wait,
    // instead of interrupting it; it requires SINGLE_ISSUER (Linux 6.1). Older kernels get a
    // plain ring.
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_submit_all()
        .setup_cqsize(RING_ENTRIES * 4)
        .build(RING_ENTRIES)
        .or_else(|_| {
            IoUring::builder()
                .setup_cqsize(RING_ENTRIES * 4)
                .build(RING_ENTRIES)
        })
}

impl UringWorker {
    fn new(worker: Worker) -> io::Result<Self> {
        let ring = build_ring()?;
        let bufs = BufRing::new(&ring, RECV_BUFS, RECV_BUF_SIZE, BUF_GROUP)?;
        Ok(UringWorker {
            ring,
            bufs,
            conns: Vec::new(),
            free_slots: Vec::new(),
            live: 0,
            listeners: worker.listeners,
            accepting: true,
            upstreams: worker.site.proxy.as_ref().map(Upstreams::new),
            service: Service::new(worker.site),
            timeouts: worker.timeouts,
            shutdown: worker.shutdown,
            shutdown_deadline: None,
            timer: types::Timespec::new().sec(1),
            send_pool: Vec::new(),
            completions: Vec::with_capacity(RING_ENTRIES as usize * 4),
            now: date::now_secs(),
        })
    }

    fn run(mut self) -> io::Result<()> {
        for i in 0..self.listeners.len() {
            self.arm_accept(i);
        }
        self.arm_timer();
        let poll = opcode::PollAdd::new(types::Fd(self.shutdown.event_fd()), libc::POLLIN as u32)
            .build()
            .user_data(user_data(Op::Shutdown, 0));
        self.push(poll);
        if self.shutdown.is_requested() {
            self.begin_shutdown();
        }

        loop {
            if self.shutdown_deadline.is_some() && self.live == 0 {
                return Ok(());
            }
            self.bufs.publish();
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e)
                    if e.raw_os_error() == Some(libc::EINTR)
                        || e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => return Err(e),
            }
            self.completions.clear();
            self.completions.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            self.now = date::now_secs();
            let completions = std::mem::take(&mut self.completions);
            for &(data, result, flags) in &completions {
                self.complete(data, result, flags);
            }
            self.completions = completions;
            if let Some(ups) = self.upstreams.as_mut() {
                ups.end_turn();
            }
        }
    }

    fn complete(&mut self, data: u64, result: i32, flags: u32) {
        let (op, index) = decode(data);
        match op {
            x if x == Op::Accept as u8 => self.on_accept(index, result, flags),
            x if x == Op::Recv as u8 => self.on_recv(index, result, flags),
            x if x == Op::Send as u8 => self.on_send(index, result),
            x if x == Op::Writable as u8 => self.on_send(index, 0),
            x if x == Op::UpRead as u8 || x == Op::UpWrite as u8 => {
                let owner = self
                    .upstreams
                    .as_mut()
                    .and_then(|ups| ups.poll_done(index, x == Op::UpRead as u8));
                match owner {
                    Some(slot) => self.drive_proxy(slot),
                    None => self.watch_idle(index),
                }
            }
            x if x == Op::Timer as u8 => {
                if !cqueue::more(flags) {
                    self.arm_timer();
                }
                self.sweep();
            }
            x if x == Op::Shutdown as u8 => self.begin_shutdown(),
            _ => {}
        }
    }

    /// Queues a submission; if the queue is full, hands what is queued to the kernel first.
    fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: every buffer or timespec an entry points to is owned by this worker and
            // outlives the operation: receive buffers live in `bufs`, send buffers in their
            // connection (untouched while the send is in flight), the timespec in `self`.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            self.bufs.publish();
            if let Err(e) = self.ring.submit() {
                log!("bypass: io_uring submit failed: {e}");
            }
        }
    }

    fn arm_accept(&mut self, i: usize) {
        let entry = opcode::AcceptMulti::new(types::Fd(self.listeners[i].as_raw_fd()))
            .flags(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)
            .build()
            .user_data(user_data(Op::Accept, i));
        self.push(entry);
    }

    fn arm_timer(&mut self) {
        let entry = opcode::Timeout::new(&self.timer as *const types::Timespec)
            .count(0)
            .flags(types::TimeoutFlags::MULTISHOT)
            .build()
            .user_data(user_data(Op::Timer, 0));
        self.push(entry);
    }

    fn on_accept(&mut self, listener: usize, result: i32, flags: u32) {
        if !cqueue::more(flags) && self.accepting {
            self.arm_accept(listener);
        }
        if result < 0 {
            match -result {
                libc::ECANCELED | libc::EINVAL => {}
                libc::EMFILE | libc::ENFILE => log!("bypass: accept: out of file descriptors"),
                _ => {}
            }
            return;
        }
        let fd = result;
        if self.shutdown_deadline.is_some() {
            // SAFETY: `fd` was just accepted and is owned by nobody else.
            unsafe { libc::close(fd) };
            return;
        }
        // Replies are written whole, so Nagle would only delay the last segment of each.
        let _ = set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
        // Only a proxy needs the peer's address (X-Forwarded-For).
        let peer = self
            .upstreams
            .is_some()
            .then(|| upstream::peer_ip(fd))
            .flatten();
        let connection = Connection {
            fd,
            conn: Conn::new(self.now, peer),
            upstream: None,
            fresh_upstream: false,
            state: State::Open,
            send_buf: Vec::new(),
            sent: 0,
            inflight: 0,
            recv_armed: false,
            send_in_flight: false,
            cancel_sent: false,
            truncated: false,
            peer_eof: false,
            last_progress: self.now,
            stream: None,
        };
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.conns[slot] = Some(connection);
                slot
            }
            None => {
                self.conns.push(Some(connection));
                self.conns.len() - 1
            }
        };
        self.live += 1;
        self.arm_recv(slot);
    }

    fn arm_recv(&mut self, slot: usize) {
        let Some(c) = self.conns[slot].as_mut() else {
            return;
        };
        if c.recv_armed || c.state == State::Closing {
            return;
        }
        c.recv_armed = true;
        c.cancel_sent = false;
        c.inflight += 1;
        let entry = opcode::RecvMulti::new(types::Fd(c.fd), BUF_GROUP)
            .build()
            .user_data(user_data(Op::Recv, slot));
        self.push(entry);
    }

    fn on_recv(&mut self, slot: usize, result: i32, flags: u32) {
        let Some(c) = self.conns[slot].as_mut() else {
            return;
        };
        if !cqueue::more(flags) {
            c.recv_armed = false;
            c.inflight -= 1;
        }
        if result > 0 {
            let Some(bid) = cqueue::buffer_select(flags) else {
                self.close_now(slot);
                return;
            };
            if c.state == State::Open {
                let data = &self.bufs.buffer(bid)[..result as usize];
                c.conn.received(data, &mut self.service, self.now);
            }
            self.bufs.recycle(bid);
            self.after_input(slot);
            self.drive_proxy(slot);
        } else if result == 0 {
            c.peer_eof = true;
            match c.state {
                State::Open => {
                    c.conn.peer_closed();
                    self.after_input(slot);
                    self.drive_proxy(slot);
                }
                _ => self.close_now(slot),
            }
        } else if result == -libc::ENOBUFS || result == -libc::ECANCELED {
            // Out of receive buffers (they come back within this loop turn) or paused for
            // back-pressure: re-arm if input is wanted.
            self.after_input(slot);
        } else {
            self.close_now(slot);
        }
        self.release_if_done(slot);
    }

    /// After new input: send what it produced, and keep reading or pause.
    fn after_input(&mut self, slot: usize) {
        let Some(c) = self.conns[slot].as_mut() else {
            return;
        };
        match c.state {
            State::Open => {
                let wants = c.conn.wants_input() && !c.peer_eof;
                if !wants && c.recv_armed && !c.cancel_sent {
                    c.cancel_sent = true;
                    let entry = opcode::AsyncCancel::new(user_data(Op::Recv, slot))
                        .build()
                        .user_data(user_data(Op::Cancel, slot));
                    self.push(entry);
                }
                self.start_send(slot);
                if let Some(c) = self.conns[slot].as_ref()
                    && c.state == State::Open
                    && c.conn.wants_input()
                    && !c.peer_eof
                {
                    self.arm_recv(slot);
                }
            }
            State::Lingering { .. } => self.arm_recv(slot),
            State::Closing => {}
        }
    }

    /// Sends the next piece of output, if no send is in flight.
    fn start_send(&mut self, slot: usize) {
        loop {
            let Some(c) = self.conns[slot].as_mut() else {
                return;
            };
            if c.send_in_flight || c.state != State::Open {
                return;
            }
            if c.stream.is_some() {
                match stream_file(c) {
                    Streamed::Done => continue,
                    Streamed::Blocked => {
                        let entry = opcode::PollAdd::new(types::Fd(c.fd), libc::POLLOUT as u32)
                            .build()
                            .user_data(user_data(Op::Writable, slot));
                        c.send_in_flight = true;
                        c.inflight += 1;
                        c.last_progress = self.now;
                        self.push(entry);
                        return;
                    }
                    Streamed::Truncated => {
                        c.truncated = true;
                        c.conn.output.clear();
                        self.begin_linger(slot);
                        return;
                    }
                    Streamed::Failed => {
                        self.close_now(slot);
                        return;
                    }
                }
            }
            if c.sent < c.send_buf.len() {
                // A head whose body follows by sendfile: send it now with MSG_MORE so that head
                // and first body bytes leave in one segment.
                if matches!(c.conn.output.front(), Some(Segment::File { len, by_reference: true, .. }) if *len > SENDFILE_ABOVE)
                {
                    let pending = &c.send_buf[c.sent..];
                    // SAFETY: sends from a live buffer of the given length on our own socket.
                    let n = unsafe {
                        libc::send(
                            c.fd,
                            pending.as_ptr().cast(),
                            pending.len(),
                            libc::MSG_MORE | libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                        )
                    };
                    if n > 0 {
                        c.sent += n as usize;
                        c.last_progress = self.now;
                        continue;
                    }
                }
                let pending = &c.send_buf[c.sent..];
                let entry =
                    opcode::Send::new(types::Fd(c.fd), pending.as_ptr(), pending.len() as u32)
                        .flags(libc::MSG_NOSIGNAL)
                        .build()
                        .user_data(user_data(Op::Send, slot));
                c.send_in_flight = true;
                c.inflight += 1;
                c.last_progress = self.now;
                self.push(entry);
                return;
            }
            if c.send_buf.capacity() == 0 {
                if c.conn.output.is_empty() {
                    // Nothing to send and nothing owed: only a connection that must close
                    // has anything left to do.
                    if c.conn.should_close() {
                        self.begin_linger(slot);
                    }
                    return;
                }
                c.send_buf = self
                    .send_pool
                    .pop()
                    .unwrap_or_else(|| Vec::with_capacity(SEND_CHUNK));
            }
            c.send_buf.clear();
            c.sent = 0;
            let fill = transmit::fill(&mut c.conn.output, &mut c.send_buf, Some(SENDFILE_ABOVE));
            c.truncated |= fill.truncated;
            if fill.stream.is_some() {
                c.stream = fill.stream;
                continue;
            }
            if !c.send_buf.is_empty() {
                continue;
            }
            // Output drained.
            let buf = std::mem::take(&mut c.send_buf);
            if self.send_pool.len() < POOLED_SEND_BUFS && buf.capacity() >= SEND_CHUNK {
                self.send_pool.push(buf);
            }
            let c = self.conns[slot].as_mut().expect("slot is live");
            if c.truncated || c.conn.should_close() {
                self.begin_linger(slot);
                return;
            }
            c.conn.output_drained(&mut self.service, self.now);
            if c.conn.output.is_empty() {
                if c.conn.wants_input() && !c.peer_eof {
                    self.arm_recv(slot);
                }
                return;
            }
        }
    }

    /// A send or a writability poll completed.
    fn on_send(&mut self, slot: usize, result: i32) {
        let Some(c) = self.conns[slot].as_mut() else {
            return;
        };
        c.inflight -= 1;
        c.send_in_flight = false;
        if result < 0 {
            self.close_now(slot);
        } else if c.state == State::Open {
            c.sent += result as usize;
            c.last_progress = self.now;
            self.start_send(slot);
            self.drive_proxy(slot);
        }
        self.release_if_done(slot);
    }

    /// Moves the connection's exchange with the app along, alternating with the client side
    /// (the app's bytes are client output; sending may release request-body back-pressure).
    fn drive_proxy(&mut self, slot: usize) {
        if self.upstreams.is_none() {
            return;
        }
        for _ in 0..PROXY_ROUNDS {
            if !self.pump(slot) {
                return;
            }
            self.after_input(slot);
        }
    }

    /// One round of upstream work: an upstream connection for the exchange if it has none,
    /// bytes both ways, and polls armed for what it waits on. Returns whether anything moved.
    fn pump(&mut self, slot: usize) -> bool {
        let mut moved = false;
        loop {
            let Some(ups) = self.upstreams.as_mut() else {
                return moved;
            };
            let Some(c) = self.conns[slot].as_mut() else {
                return moved;
            };
            let id = match c.upstream {
                Some(id) => id,
                None if !c.conn.needs_upstream() || c.state != State::Open => return moved,
                None => {
                    // Readiness comes from one-shot polls armed after each pump: nothing to
                    // register.
                    let fresh = std::mem::take(&mut c.fresh_upstream);
                    let (service, now) = (&mut self.service, self.now);
                    match ups.attach(slot, &mut c.conn, fresh, service, now, |_, _| Ok(())) {
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
            let (pumped, m) = ups.pump(id, &mut c.conn, &mut self.service, self.now);
            moved |= m;
            match pumped {
                Pumped::Wait { read, write } => {
                    self.arm_upstream(id, read, write);
                    return moved;
                }
                Pumped::Detach { reusable } => {
                    c.upstream = None;
                    ups.release(id, reusable);
                    self.watch_idle(id);
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

    /// Arms one-shot polls on an upstream connection for what it waits on.
    fn arm_upstream(&mut self, id: usize, read: bool, write: bool) {
        let Some(u) = self.upstreams.as_mut().and_then(|ups| ups.get(id)) else {
            return;
        };
        let fd = u.fd.as_raw_fd();
        let mut entries = Vec::new();
        if read && !u.poll_in {
            u.poll_in = true;
            entries.push(
                opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
                    .build()
                    .user_data(user_data(Op::UpRead, id)),
            );
        }
        if write && !u.poll_out {
            u.poll_out = true;
            entries.push(
                opcode::PollAdd::new(types::Fd(fd), libc::POLLOUT as u32)
                    .build()
                    .user_data(user_data(Op::UpWrite, id)),
            );
        }
        for entry in entries {
            self.push(entry);
        }
    }

    /// Keeps a poll armed on an idle pooled upstream connection, so that the app closing it is
    /// noticed (and the connection closed) while it waits.
    fn watch_idle(&mut self, id: usize) {
        let idle = self
            .upstreams
            .as_mut()
            .and_then(|ups| ups.get(id))
            .is_some_and(|u| u.owner.is_none() && !u.closing);
        if idle {
            self.arm_upstream(id, true, false);
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

    /// Half-closes after the last reply and drains input for a while (RFC 9112 §9.6), so that
    /// unread pipelined bytes do not turn into a reset that destroys the reply in flight.
    fn begin_linger(&mut self, slot: usize) {
        let Some(c) = self.conns[slot].as_mut() else {
            return;
        };
        if c.peer_eof {
            self.close_now(slot);
            return;
        }
        // SAFETY: plain syscall on a descriptor this connection owns.
        unsafe { libc::shutdown(c.fd, libc::SHUT_WR) };
        c.state = State::Lingering { since: self.now };
        c.conn.output.clear();
        self.arm_recv(slot);
    }

    fn close_now(&mut self, slot: usize) {
        self.drop_upstream(slot);
        let Some(c) = self.conns[slot].as_mut() else {
            return;
        };
        if c.state == State::Closing {
            return;
        }
        c.state = State::Closing;
        c.conn.output.clear();
        // Shutting the socket down completes the operations the kernel holds for it (a
        // multishot receive ends with 0, a send fails), after which the slot is released.
        // SAFETY: plain syscall on a descriptor this connection owns.
        unsafe { libc::shutdown(c.fd, libc::SHUT_RDWR) };
        if c.recv_armed && !c.cancel_sent {
            c.cancel_sent = true;
            let entry = opcode::AsyncCancel::new(user_data(Op::Recv, slot))
                .build()
                .user_data(user_data(Op::Cancel, slot));
            self.push(entry);
        }
        self.release_if_done(slot);
    }

    fn release_if_done(&mut self, slot: usize) {
        let Some(c) = self.conns[slot].as_ref() else {
            return;
        };
        if c.state != State::Closing || c.inflight > 0 {
            return;
        }
        let c = self.conns[slot].take().expect("checked above");
        // SAFETY: the kernel holds no operation on `fd` any more, and the descriptor is ours.
        unsafe { libc::close(c.fd) };
        if c.send_buf.capacity() >= SEND_CHUNK && self.send_pool.len() < POOLED_SEND_BUFS {
            let mut buf = c.send_buf;
            buf.clear();
            self.send_pool.push(buf);
        }
        self.free_slots.push(slot);
        self.live -= 1;
    }

    /// Once a second: timeouts, and the shutdown deadline.
    fn sweep(&mut self) {
        let now = self.now;
        let past_deadline = self.shutdown_deadline.is_some_and(|d| now >= d);
        for slot in 0..self.conns.len() {
            let Some(c) = self.conns[slot].as_ref() else {
                continue;
            };
            // While any output is unsent, the engine's own buffer included, it is busy.
            let phase = if c.send_in_flight || c.stream.is_some() || c.sent < c.send_buf.len() {
                Phase::Busy
            } else {
                c.conn.phase()
            };
            let expired = past_deadline
                || match c.state {
                    State::Open => {
                        self.timeouts
                            .expired(phase, c.conn.phase_since, c.last_progress, now)
                    }
                    State::Lingering { since } => now.saturating_sub(since) > LINGER_SECS,
                    State::Closing => false,
                };
            let proxying = c.state == State::Open && phase == Phase::Upstream;
            if expired && !past_deadline && proxying {
                // The app is too slow: the core answers 504 (or ends a started response).
                if let Some(c) = self.conns[slot].as_mut() {
                    c.conn.upstream_timed_out(&mut self.service, now);
                    c.conn.take_released();
                }
                self.drop_upstream(slot);
                self.after_input(slot);
                self.drive_proxy(slot);
            } else if expired {
                self.close_now(slot);
            }
        }
    }

    fn begin_shutdown(&mut self) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        self.shutdown_deadline = Some(self.now + self.timeouts.shutdown.as_secs().max(1));
        self.accepting = false;
        for i in 0..self.listeners.len() {
            let entry = opcode::AsyncCancel::new(user_data(Op::Accept, i))
                .build()
                .user_data(user_data(Op::Cancel, usize::MAX >> 8));
            self.push(entry);
        }
        for slot in 0..self.conns.len() {
            let Some(c) = self.conns[slot].as_mut() else {
                continue;
            };
            if c.state != State::Open {
                continue;
            }
            if matches!(c.conn.phase(), Phase::Busy | Phase::Upstream) || c.send_in_flight {
                // Finish the replies owed, read no further requests.
                c.conn.peer_closed();
                self.drive_proxy(slot);
            } else {
                self.close_now(slot);
            }
        }
    }
}

/// How far a sendfile turn got.
enum Streamed {
    /// The range is sent.
    Done,
    /// The socket is full, or this connection had its turn: wait for POLLOUT.
    Blocked,
    /// The file ended early: it was truncated after its head was sent.
    Truncated,
    Failed,
}

/// Sends as much of the connection's stream as the socket takes, up to one turn.
fn stream_file(c: &mut Connection) -> Streamed {
    let Some(stream) = c.stream.as_mut() else {
        return Streamed::Done;
    };
    let mut this_turn = 0u64;
    while !stream.is_empty() {
        if this_turn >= SENDFILE_TURN {
            return Streamed::Blocked;
        }
        match stream.send(c.fd, SENDFILE_TURN as usize) {
            Ok(0) => return Streamed::Truncated,
            Ok(n) => this_turn += n as u64,
            Err(libc::EAGAIN) => return Streamed::Blocked,
            Err(libc::EINTR) => {}
            Err(_) => return Streamed::Failed,
        }
    }
    c.stream = None;
    Streamed::Done
}
