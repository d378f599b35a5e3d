//! The epoll engine: the portable fallback. Level-triggered readiness, one
//! `read`/`write` per ready socket, nanosecond waits with `epoll_pwait2`
//! where the kernel has it.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

use super::{Control, close_socket, tcp_socket};
use crate::driver::{Action, Clock, Driver, Plan};

const READ_BUF: usize = 64 * 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Connected; only reads are interesting.
    Read,
    /// Waiting for a non-blocking connect to finish.
    Connect,
    /// A send stopped short; waiting for room in the socket buffer.
    Write,
}

pub struct Epoll {
    ep: RawFd,
    fds: Vec<RawFd>,
    waits: Vec<Wait>,
    target: std::net::SocketAddr,
    buf: Vec<u8>,
    events: Vec<libc::epoll_event>,
    /// `epoll_pwait2` exists (Linux 5.11); otherwise millisecond waits.
    fine_timeouts: bool,
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: closing the epoll descriptor this engine created.
        unsafe { libc::close(self.ep) };
    }
}

impl Epoll {
    pub fn new(plan: &Plan, conns: usize) -> io::Result<Epoll> {
        // SAFETY: plain syscall.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll {
            ep,
            fds: vec![-1; conns],
            waits: vec![Wait::Read; conns],
            target: plan.addr,
            buf: vec![0; READ_BUF],
            events: vec![libc::epoll_event { events: 0, u64: 0 }; conns.max(1)],
            fine_timeouts: true,
        })
    }

    pub fn run(
        &mut self,
        driver: &mut Driver<'_>,
        clock: Clock,
        control: &Control,
        thread: usize,
    ) -> io::Result<()> {
        let mut now = clock.now();
        loop {
            if control.stop.load(Ordering::Relaxed) {
                driver.finish(now);
            }
            driver.poll(now);
            if driver.finished().is_some() {
                break;
            }
            self.apply(driver, now);
            let wait = driver.next_wake(now).saturating_sub(now);
            let n = self.wait(wait)?;
            now = clock.now();
            for i in 0..n {
                let ev = self.events[i];
                self.event(driver, ev.u64 as u32, ev.events, now);
            }
            // Events may have queued more sends; they go out on the next turn.
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

    fn wait(&mut self, wait_ns: u64) -> io::Result<usize> {
        let max = self.events.len() as libc::c_int;
        let ptr = self.events.as_mut_ptr();
        let n = if self.fine_timeouts {
            let ts = libc::timespec {
                tv_sec: (wait_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (wait_ns % 1_000_000_000) as libc::c_long,
            };
            // SAFETY: `events` has room for `max` entries; ts is a live timespec.
            let n = unsafe { libc::epoll_pwait2(self.ep, ptr, max, &ts, std::ptr::null()) };
            if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
                self.fine_timeouts = false;
                return Ok(0);
            }
            n
        } else {
            // Round up, so we never wake before a request is due.
            let ms = wait_ns.div_ceil(1_000_000).min(i32::MAX as u64) as libc::c_int;
            // SAFETY: `events` has room for `max` entries.
            unsafe { libc::epoll_wait(self.ep, ptr, max, ms) }
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::EINTR) {
                Ok(0)
            } else {
                Err(e)
            };
        }
        Ok(n as usize)
    }

    fn ctl(&self, op: libc::c_int, c: u32, events: u32) {
        let mut ev = libc::epoll_event {
            events,
            u64: u64::from(c),
        };
        // SAFETY: fd is an open socket of ours; ev is a live epoll_event.
        unsafe { libc::epoll_ctl(self.ep, op, self.fds[c as usize], &mut ev) };
    }

    fn apply(&mut self, driver: &mut Driver<'_>, now: u64) {
        let mut i = 0;
        while i < driver.actions.len() {
            let action = driver.actions[i];
            i += 1;
            match action {
                Action::Send(c) => self.send(driver, c, now),
                Action::Connect(c) => self.connect(driver, c, now),
                Action::Close(c) => {
                    let fd = std::mem::replace(&mut self.fds[c as usize], -1);
                    if fd >= 0 {
                        // Closing also removes it from the epoll set.
                        close_socket(fd);
                    }
                }
            }
        }
        driver.actions.clear();
    }

    fn connect(&mut self, driver: &mut Driver<'_>, c: u32, now: u64) {
        let Ok(fd) = tcp_socket(&self.target) else {
            driver.on_connect_failed(c, now);
            return;
        };
        self.fds[c as usize] = fd;
        let (addr, len) = super::sockaddr(&self.target);
        // SAFETY: fd is our socket; addr is a valid sockaddr of `len` bytes.
        let r = unsafe { libc::connect(fd, (&addr as *const libc::sockaddr_storage).cast(), len) };
        if r == 0 {
            self.waits[c as usize] = Wait::Read;
            self.ctl(libc::EPOLL_CTL_ADD, c, libc::EPOLLIN as u32);
            driver.on_connected(c);
        } else if io::Error::last_os_error().raw_os_error() == Some(libc::EINPROGRESS) {
            self.waits[c as usize] = Wait::Connect;
            self.ctl(libc::EPOLL_CTL_ADD, c, libc::EPOLLOUT as u32);
        } else {
            driver.on_connect_failed(c, now);
        }
    }

    fn send(&mut self, driver: &mut Driver<'_>, c: u32, now: u64) {
        let fd = self.fds[c as usize];
        while let Some(out) = driver.outgoing(c) {
            if out.is_empty() || fd < 0 {
                return;
            }
            // SAFETY: out is a live slice; fd our socket.
            let n = unsafe { libc::send(fd, out.as_ptr().cast(), out.len(), libc::MSG_NOSIGNAL) };
            if n >= 0 {
                driver.on_sent(c, n as usize);
                // A partial send queues another Send action; keep going here instead.
                if driver.actions.last() == Some(&Action::Send(c)) {
                    driver.actions.pop();
                    continue;
                }
                return;
            }
            if io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN) {
                self.waits[c as usize] = Wait::Write;
                self.ctl(
                    libc::EPOLL_CTL_MOD,
                    c,
                    (libc::EPOLLIN | libc::EPOLLOUT) as u32,
                );
            } else {
                driver.on_error(c, now);
            }
            return;
        }
    }

    fn event(&mut self, driver: &mut Driver<'_>, c: u32, events: u32, now: u64) {
        let fd = self.fds[c as usize];
        if fd < 0 {
            return;
        }
        match self.waits[c as usize] {
            Wait::Connect => {
                let mut err: libc::c_int = 0;
                let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                // SAFETY: fd is our socket; err/len are live and sized for SO_ERROR.
                unsafe {
                    libc::getsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        libc::SO_ERROR,
                        (&mut err as *mut libc::c_int).cast(),
                        &mut len,
                    )
                };
                if err == 0 {
                    self.waits[c as usize] = Wait::Read;
                    self.ctl(libc::EPOLL_CTL_MOD, c, libc::EPOLLIN as u32);
                    driver.on_connected(c);
                } else {
                    driver.on_connect_failed(c, now);
                }
                return;
            }
            Wait::Write if events & libc::EPOLLOUT as u32 != 0 => {
                self.waits[c as usize] = Wait::Read;
                self.ctl(libc::EPOLL_CTL_MOD, c, libc::EPOLLIN as u32);
                self.send(driver, c, now);
            }
            _ => {}
        }
        if events & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 == 0 {
            return;
        }
        loop {
            // SAFETY: buf is a live buffer of buf.len() bytes; fd our socket.
            let n = unsafe { libc::read(fd, self.buf.as_mut_ptr().cast(), self.buf.len()) };
            if n > 0 {
                driver.on_data(c, &self.buf[..n as usize], now);
                // A full buffer may mean more is waiting; otherwise let epoll say so.
                if (n as usize) < self.buf.len() || self.fds[c as usize] != fd {
                    return;
                }
            } else if n == 0 {
                driver.on_eof(c, now);
                return;
            } else {
                if io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN) {
                    driver.on_error(c, now);
                }
                return;
            }
        }
    }
}
