//! The io_uring engine: one ring per thread, every socket operation an SQE,
//! one `io_uring_enter` per loop turn that both submits and waits. Responses
//! arrive through one multishot receive per connection into provided buffers,
//! so a request costs one send SQE and one receive CQE, and the clock is read
//! once per batch of completions.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

use io_uring::{IoUring, cqueue, opcode, squeue, types};

use super::bufring::BufRing;
use super::{Control, close_socket, sockaddr, tcp_socket};
use crate::driver::{Action, Clock, Driver, Plan};

const OP_CONNECT: u64 = 1;
const OP_SEND: u64 = 2;
const OP_RECV: u64 = 3;
const OP_TICK: u64 = 4;
/// Period of the multishot timeout that wakes the loop when nothing else does.
const TICK_NS: u64 = 10_000_000;
const BGID: u16 = 0;
/// Receive buffer size: a typical static file's response fits in a few.
const BUF_SIZE: usize = 32 * 1024;

/// user_data: connection generation (32 bits) | connection (24) | operation (8).
/// The generation changes whenever a connection's socket is replaced, so
/// completions from an old socket are recognised and ignored.
#[inline]
fn user_data(conn: u32, generation: u32, op: u64) -> u64 {
    (u64::from(generation) << 32) | (u64::from(conn) << 8) | op
}

pub struct Uring {
    // Field order matters: the ring must be torn down before the buffers it writes into.
    ring: IoUring,
    bufs: BufRing,
    fds: Vec<RawFd>,
    generations: Vec<u32>,
    target: std::net::SocketAddr,
    addr: libc::sockaddr_storage,
    addr_len: libc::socklen_t,
    /// Connections whose multishot receive must be (re)armed: (conn, generation).
    rearm: Vec<(u32, u32)>,
    /// A multishot timeout ticks every TICK_NS, so long waits need no timer
    /// of their own (arming one on every wait costs more than the tick).
    tick: bool,
    tick_ts: types::Timespec,
}

impl Uring {
    /// Sets up a ring for `conns` connections, or fails if the kernel lacks
    /// what this engine relies on (deferred task running: Linux 6.1, which
    /// also has multishot receive and buffer rings).
    pub fn new(plan: &Plan, conns: usize) -> io::Result<Uring> {
        // Per loop turn at most a send, a receive and a connect per connection.
        let entries = (3 * conns as u32 + 8).next_power_of_two().max(64);
        let ring = IoUring::builder()
            // Completions are only processed when we ask for them, on this
            // thread: no interrupts of the loop, no task-work IPIs.
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(entries * 4)
            .build(entries)?;
        let nbufs = (conns * 4).next_power_of_two().clamp(64, 32768) as u16;
        let bufs = BufRing::new(&ring.submitter(), nbufs, BUF_SIZE, BGID)?;
        // Sockets are used through the ring's file table (slot = connection),
        // which spares a file lookup and reference count on every operation.
        ring.submitter().register_files_sparse(conns as u32)?;
        let (addr, addr_len) = sockaddr(&plan.addr);
        Ok(Uring {
            ring,
            bufs,
            fds: vec![-1; conns],
            generations: vec![0; conns],
            target: plan.addr,
            addr,
            addr_len,
            rearm: Vec::with_capacity(conns),
            tick: true,
            tick_ts: types::Timespec::new().nsec(TICK_NS as u32),
        })
    }

    /// Runs the driver until it finishes or `control.stop` is set.
    pub fn run(
        &mut self,
        driver: &mut Driver<'_>,
        clock: Clock,
        control: &Control,
        thread: usize,
    ) -> io::Result<()> {
        // Saves a file-table lookup on every enter; optional.
        let _ = self.ring.submitter().register_ring_fd();
        let tick = opcode::Timeout::new(&self.tick_ts)
            .flags(types::TimeoutFlags::MULTISHOT)
            .build()
            .user_data(OP_TICK);
        self.push(&tick)?;
        let mut now = clock.now();
        loop {
            if control.stop.load(Ordering::Relaxed) {
                driver.finish(now);
            }
            driver.poll(now);
            if driver.finished().is_some() {
                break;
            }
            self.apply(driver, now)?;
            let wait = driver.next_wake(now).saturating_sub(now);
            let result = if self.tick && wait > TICK_NS {
                self.ring.submitter().submit_and_wait(1)
            } else {
                let ts = types::Timespec::new()
                    .sec(wait / 1_000_000_000)
                    .nsec((wait % 1_000_000_000) as u32);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            };
            match result {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                    ) => {}
                Err(e) => return Err(e),
            }
            now = clock.now();
            self.reap(driver, now);
            control.progress[thread]
                .0
                .store(driver.stats.requests, Ordering::Relaxed);
        }
        for fd in self.fds.iter_mut().filter(|fd| **fd >= 0) {
            close_socket(*fd);
            *fd = -1;
        }
        Ok(())
    }

    fn push(&mut self, sqe: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every buffer an SQE points at outlives the operation:
            // request bytes live in the plan or the driver's never-resized
            // batch buffers, the address in `self`, receive buffers in `bufs`.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                return Ok(());
            }
            // Queue full: hand what we have to the kernel and retry.
            self.ring.submit()?;
        }
    }

    /// Turns the driver's queued actions into SQEs.
    fn apply(&mut self, driver: &mut Driver<'_>, now: u64) -> io::Result<()> {
        let mut i = 0;
        // Actions may be appended while applying (a failed socket call), so index.
        while i < driver.actions.len() {
            let action = driver.actions[i];
            i += 1;
            match action {
                Action::Send(c) => {
                    let Some(out) = driver.outgoing(c) else {
                        continue;
                    };
                    let (ptr, len) = (out.as_ptr(), out.len() as u32);
                    let ud = user_data(c, self.generations[c as usize], OP_SEND);
                    let sqe = opcode::Send::new(types::Fixed(c), ptr, len)
                        .flags(libc::MSG_NOSIGNAL)
                        .build()
                        .user_data(ud);
                    self.push(&sqe)?;
                }
                Action::Connect(c) => {
                    let ci = c as usize;
                    match tcp_socket(&self.target) {
                        Ok(fd) => {
                            // Replacing the slot also drops the previous socket's last reference.
                            if self
                                .ring
                                .submitter()
                                .register_files_update(c, &[fd])
                                .is_err()
                            {
                                close_socket(fd);
                                driver.on_connect_failed(c, now);
                                continue;
                            }
                            self.fds[ci] = fd;
                            self.generations[ci] = self.generations[ci].wrapping_add(1);
                            let ud = user_data(c, self.generations[ci], OP_CONNECT);
                            let sqe = opcode::Connect::new(
                                types::Fixed(c),
                                (&self.addr as *const libc::sockaddr_storage).cast(),
                                self.addr_len,
                            )
                            .build()
                            .user_data(ud);
                            self.push(&sqe)?;
                        }
                        Err(_) => driver.on_connect_failed(c, now),
                    }
                }
                Action::Close(c) => {
                    let ci = c as usize;
                    if self.fds[ci] >= 0 {
                        close_socket(self.fds[ci]);
                        self.fds[ci] = -1;
                        self.generations[ci] = self.generations[ci].wrapping_add(1);
                    }
                }
            }
        }
        driver.actions.clear();
        let mut rearm = std::mem::take(&mut self.rearm);
        for &(c, generation) in &rearm {
            let ci = c as usize;
            if self.generations[ci] == generation && self.fds[ci] >= 0 {
                let sqe = opcode::RecvMulti::new(types::Fixed(c), BGID)
                    .build()
                    .user_data(user_data(c, generation, OP_RECV));
                self.push(&sqe)?;
            }
        }
        rearm.clear();
        self.rearm = rearm;
        Ok(())
    }

    /// Hands every completion to the driver.
    fn reap(&mut self, driver: &mut Driver<'_>, now: u64) {
        let Uring {
            ring,
            bufs,
            generations,
            rearm,
            tick,
            ..
        } = self;
        for cqe in ring.completion() {
            let ud = cqe.user_data();
            let (generation, c, op) =
                ((ud >> 32) as u32, ((ud >> 8) & 0xff_ffff) as u32, ud & 0xff);
            let res = cqe.result();
            let flags = cqe.flags();
            if ud == OP_TICK {
                // -ETIME is a tick; anything else means multishot timeouts
                // are unsupported (before Linux 6.4): use timed waits instead.
                if res != -libc::ETIME {
                    *tick = false;
                }
                continue;
            }
            let bid = cqueue::buffer_select(flags);
            if generations[c as usize] != generation {
                // From a socket already replaced; only its buffer matters.
                if let Some(bid) = bid {
                    bufs.recycle(bid);
                }
                continue;
            }
            match op {
                OP_RECV => {
                    if let Some(bid) = bid {
                        if res > 0 {
                            driver.on_data(c, bufs.get(bid, res as usize), now);
                        }
                        bufs.recycle(bid);
                    }
                    if res == 0 {
                        driver.on_eof(c, now);
                    } else if res < 0 && res != -libc::ENOBUFS {
                        driver.on_error(c, now);
                    } else if !cqueue::more(flags) {
                        // Multishot ended (out of buffers, or the kernel's
                        // choice); arm it again unless the driver closed it.
                        rearm.push((c, generation));
                    }
                }
                OP_SEND if res >= 0 => driver.on_sent(c, res as usize),
                OP_SEND => driver.on_error(c, now),
                OP_CONNECT if res >= 0 => {
                    driver.on_connected(c);
                    rearm.push((c, generation));
                }
                OP_CONNECT => driver.on_connect_failed(c, now),
                _ => {}
            }
        }
        bufs.publish();
    }
}
