//! The ceiling: a null responder on the same I/O engine as bypass. It answers every complete
//! request head (everything up to an empty line) with one pre-built response and does nothing
//! else: no parsing, no file system, no HTTP semantics. What it costs per request is the floor
//! that the kernel and loopback put under any server on this machine.
//!
//! It has the shape of bypass's io_uring engine (`server/src/engine/uring.rs`): one thread, one
//! ring with SINGLE_ISSUER and DEFER_TASKRUN where the kernel has them, multishot accept,
//! multishot receives into a provided buffer ring, and one `io_uring_enter` per loop turn.
//! Small answers go out with io_uring sends (pipelined ones batched into one); larger ones the
//! way bypass sends them, never copied (copying would make the floor higher than the servers
//! standing on it): up to bypass's largest framed reply by reference from huge-page memory
//! ([`send_pinned`], as bypass sends a hot cached reply), beyond that by sendfile(2) from a memfd
//! (as bypass and nginx send large files); both non-blocking, re-armed by a POLLOUT poll.

use std::fs::File;
use std::io::{self, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

use io_uring::{IoUring, cqueue, opcode, squeue, types};

use bypass::cache::arena::{self, Arena, Pinned};
use bypass::cache::{FRAMED_MAX, MEMFD_ABOVE};
use bypass::engine::transmit::send_pinned;
use bypass::engine::uring::bufring::BufRing;
use bypass::http::date;

const RING_ENTRIES: u32 = 1024;
const BUF_GROUP: u16 = 0;
const RECV_BUF_SIZE: u32 = 4096;
const RECV_BUFS: u16 = 512;
/// Pipelined answers are copied into one buffer of up to this many bytes and sent together.
const BATCH_BYTES: usize = 64 * 1024;
/// Responses larger than this are sent by reference, as bypass sends cached bodies above
/// [`MEMFD_ABOVE`]: on a 23 KB answer one sendfile costs less server CPU than one send copying
/// it (~7.5 against ~9.3 µs per request, 32 connections), and vmsplice from huge-page memory
/// less again (~0.9x of sendfile).
const BY_REFERENCE_ABOVE: usize = MEMFD_ABOVE as usize;
/// Largest response sent by vmsplice: bypass's largest framed reply (a body of
/// [`FRAMED_MAX`] and its head). Larger ones go by sendfile from a memfd, as bypass sends
/// large files.
const PINNED_MAX: usize = FRAMED_MAX as usize + 4096;
/// Most bytes one connection sends by sendfile before the others get a turn (as bypass does).
const SENDFILE_TURN: usize = 1 << 20;

#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Op {
    Accept = 1,
    Recv = 2,
    Send = 3,
    /// The socket became writable again during a sendfile.
    Writable = 4,
}

fn user_data(op: Op, slot: usize) -> u64 {
    (op as u64) << 56 | slot as u64
}

/// Counts the request heads completed in a byte stream, across receive boundaries.
#[derive(Debug, Default, Clone, Copy)]
pub struct HeadCounter {
    /// How much of `\r\n\r\n` the stream currently ends with (0 to 3).
    matched: u8,
}

impl HeadCounter {
    /// Feeds received bytes; returns how many heads they completed.
    pub fn feed(&mut self, data: &[u8]) -> u64 {
        let mut heads = 0;
        let mut m = self.matched;
        for &b in data {
            let want = if m % 2 == 0 { b'\r' } else { b'\n' };
            m = if b == want {
                m + 1
            } else if b == b'\r' {
                1
            } else {
                0
            };
            if m == 4 {
                heads += 1;
                m = 0;
            }
        }
        self.matched = m;
        heads
    }
}

struct Conn {
    fd: RawFd,
    heads: HeadCounter,
    /// Responses owed and not yet started.
    owed: u64,
    /// Small responses: several copies being sent, `batch[sent..]` still owed.
    batch: Vec<u8>,
    /// Large responses: how far into the memfd the current copy is.
    offset: usize,
    sent: usize,
    sending: bool,
    recv_armed: bool,
    done: bool,
}

/// Where a response sent by reference lives.
enum Large {
    /// Huge-page memory that is never written again, for vmsplice.
    Pinned(Pinned),
    /// A memfd, for sendfile.
    File(File),
}

struct Server {
    ring: IoUring,
    bufs: BufRing,
    listener: TcpListener,
    response: Box<[u8]>,
    /// Larger responses: the same bytes, sent by reference from here or from the file.
    large: Option<Large>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
}

/// Serves `response` to every request on `listener`, forever.
pub fn serve(listener: TcpListener, response: Vec<u8>) -> io::Result<()> {
    assert!(!response.is_empty(), "the response must not be empty");
    let ring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(RING_ENTRIES * 4)
        .build(RING_ENTRIES)
        .or_else(|_| {
            IoUring::builder()
                .setup_cqsize(RING_ENTRIES * 4)
                .build(RING_ENTRIES)
        })?;
    let bufs = BufRing::new(&ring, RECV_BUFS, RECV_BUF_SIZE, BUF_GROUP)?;
    let large = if response.len() <= BY_REFERENCE_ABOVE {
        None
    } else if response.len() <= PINNED_MAX {
        // The frame keeps its chunk mapped for as long as the server lives.
        let frame = Arena::new(arena::CHUNK as u64).store(date::current(), response.len(), |buf| {
            buf.copy_from_slice(&response);
            Ok(())
        });
        Some(Large::Pinned(frame.ok_or_else(|| {
            io::Error::other("cannot map memory for the response")
        })?))
    } else {
        // SAFETY: a NUL-terminated name and valid flags; the result is checked.
        let fd = unsafe { libc::memfd_create(c"bypass-bench-null".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let mut f = unsafe { File::from_raw_fd(fd) };
        f.write_all(&response)?;
        Some(Large::File(f))
    };
    let mut server = Server {
        ring,
        bufs,
        listener,
        large,
        response: response.into_boxed_slice(),
        conns: Vec::new(),
        free: Vec::new(),
    };
    server.arm_accept();
    let mut completions = Vec::with_capacity(RING_ENTRIES as usize * 4);
    loop {
        server.bufs.publish();
        match server.ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
            Err(e) => return Err(e),
        }
        completions.clear();
        completions.extend(
            server
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for &(data, result, flags) in &completions {
            let slot = (data & ((1 << 56) - 1)) as usize;
            match (data >> 56) as u8 {
                x if x == Op::Accept as u8 => server.on_accept(result, flags),
                x if x == Op::Recv as u8 => server.on_recv(slot, result, flags),
                x if x == Op::Send as u8 => server.on_send(slot, result),
                x if x == Op::Writable as u8 => server.on_writable(slot, result),
                _ => {}
            }
        }
    }
}

impl Server {
    fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: every buffer an entry points to outlives its operation: receive buffers
            // live in `bufs`, send buffers in their connection (untouched while `sending`) or
            // in `response`, which lives as long as the server.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            self.bufs.publish();
            if let Err(e) = self.ring.submit() {
                eprintln!("bypass-bench null: io_uring submit failed: {e}");
            }
        }
    }

    fn arm_accept(&mut self) {
        let entry = opcode::AcceptMulti::new(types::Fd(self.listener.as_raw_fd()))
            .flags(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)
            .build()
            .user_data(user_data(Op::Accept, 0));
        self.push(entry);
    }

    fn arm_recv(&mut self, slot: usize) {
        let Some(c) = self.conns[slot].as_mut() else {
            return;
        };
        if c.recv_armed || c.done {
            return;
        }
        c.recv_armed = true;
        let entry = opcode::RecvMulti::new(types::Fd(c.fd), BUF_GROUP)
            .build()
            .user_data(user_data(Op::Recv, slot));
        self.push(entry);
    }

    fn on_accept(&mut self, result: i32, flags: u32) {
        if !cqueue::more(flags) {
            self.arm_accept();
        }
        if result < 0 {
            return;
        }
        let fd = result;
        let one: libc::c_int = 1;
        // SAFETY: setsockopt on a socket we own, with a live c_int of the right size. Nagle
        // would delay the last segment of each answer.
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        let conn = Conn {
            fd,
            heads: HeadCounter::default(),
            owed: 0,
            batch: Vec::new(),
            offset: 0,
            sent: 0,
            sending: false,
            recv_armed: false,
            done: false,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.conns[slot] = Some(conn);
                slot
            }
            None => {
                self.conns.push(Some(conn));
                self.conns.len() - 1
            }
        };
        self.arm_recv(slot);
    }

    fn on_recv(&mut self, slot: usize, result: i32, flags: u32) {
        let Some(c) = self.conns[slot].as_mut() else {
            return;
        };
        if !cqueue::more(flags) {
            c.recv_armed = false;
        }
        if result > 0 {
            if let Some(bid) = cqueue::buffer_select(flags) {
                c.owed += c.heads.feed(&self.bufs.buffer(bid)[..result as usize]);
                self.bufs.recycle(bid);
            }
        } else if result != -libc::ENOBUFS {
            // End of input or an error: nothing more will be asked.
            c.done = true;
        }
        self.start_send(slot);
        self.arm_recv(slot);
        self.release_if_done(slot);
    }

    fn start_send(&mut self, slot: usize) {
        if self.large.is_some() {
            return self.stream(slot);
        }
        let Some(c) = self.conns[slot].as_mut() else {
            return;
        };
        if c.sending || c.done {
            return;
        }
        let len = self.response.len();
        if c.sent == c.batch.len() {
            if c.owed == 0 {
                return;
            }
            let copies = c.owed.min((BATCH_BYTES / len).max(1) as u64);
            c.owed -= copies;
            c.batch.clear();
            c.sent = 0;
            for _ in 0..copies {
                c.batch.extend_from_slice(&self.response);
            }
        }
        let pending = &c.batch[c.sent..];
        c.sending = true;
        let entry = opcode::Send::new(types::Fd(c.fd), pending.as_ptr(), pending.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data(Op::Send, slot));
        self.push(entry);
    }

    /// Large answers: sent by reference until the socket is full, the connection had its
    /// turn, or nothing is owed; then wait for POLLOUT.
    fn stream(&mut self, slot: usize) {
        let len = self.response.len();
        let large = self.large.as_ref().expect("large answers are kept apart");
        let Some(c) = self.conns[slot].as_mut() else {
            return;
        };
        if c.sending || c.done {
            return;
        }
        let mut this_turn = 0;
        loop {
            if c.offset == 0 {
                if c.owed == 0 {
                    return;
                }
                c.owed -= 1;
            }
            if this_turn >= SENDFILE_TURN {
                break;
            }
            let want = (len - c.offset).min(SENDFILE_TURN);
            let sent = match large {
                Large::Pinned(frame) => {
                    send_pinned(c.fd, &frame.bytes()[c.offset..c.offset + want])
                }
                Large::File(file) => {
                    let mut off = c.offset as libc::off_t;
                    // SAFETY: both descriptors are open (the memfd lives as long as the server,
                    // the socket until `release_if_done`); `off` is a live off_t that sendfile
                    // updates.
                    let n = unsafe { libc::sendfile(c.fd, file.as_raw_fd(), &mut off, want) };
                    if n < 0 {
                        Err(io::Error::last_os_error()
                            .raw_os_error()
                            .unwrap_or(libc::EIO))
                    } else {
                        Ok(n as usize)
                    }
                }
            };
            match sent {
                Ok(n) if n > 0 => {
                    c.offset = (c.offset + n) % len;
                    this_turn += n;
                }
                Err(libc::EAGAIN) => break,
                Err(libc::EINTR) => {}
                _ => {
                    c.done = true;
                    return;
                }
            }
        }
        // The current copy is not finished (or the next one is owed): wait until writable.
        if c.offset == 0 {
            c.owed += 1;
        }
        c.sending = true;
        let entry = opcode::PollAdd::new(types::Fd(c.fd), libc::POLLOUT as u32)
            .build()
            .user_data(user_data(Op::Writable, slot));
        self.push(entry);
    }

    fn on_writable(&mut self, slot: usize, result: i32) {
        let Some(c) = self.conns[slot].as_mut() else {
            return;
        };
        c.sending = false;
        if result < 0 {
            c.done = true;
        }
        self.stream(slot);
        self.release_if_done(slot);
    }

    fn on_send(&mut self, slot: usize, result: i32) {
        let Some(c) = self.conns[slot].as_mut() else {
            return;
        };
        c.sending = false;
        if result < 0 {
            c.done = true;
        } else {
            c.sent += result as usize;
        }
        self.start_send(slot);
        self.release_if_done(slot);
    }

    /// Closes a finished connection once the kernel holds nothing of it.
    fn release_if_done(&mut self, slot: usize) {
        let Some(c) = self.conns[slot].as_ref() else {
            return;
        };
        if !c.done {
            return;
        }
        if c.recv_armed {
            // Ends the multishot receive; its last completion comes back here.
            // SAFETY: plain syscall on a descriptor this connection owns.
            unsafe { libc::shutdown(c.fd, libc::SHUT_RDWR) };
            return;
        }
        if c.sending {
            return;
        }
        let c = self.conns[slot].take().expect("checked above");
        // SAFETY: no operation on `fd` is in flight any more, and the descriptor is ours.
        unsafe { libc::close(c.fd) };
        self.free.push(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_heads_across_receive_boundaries() {
        let mut h = HeadCounter::default();
        assert_eq!(h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), 1);
        assert_eq!(h.feed(b"GET / HTTP/1.1\r\n\r\nGET /a HTTP/1.1\r\n\r"), 1);
        assert_eq!(h.feed(b"\n"), 1);
        assert_eq!(h.feed(b"GET / HTTP/1.1\r\nA: b\r\r\n\r\n"), 1);
        assert_eq!(h.feed(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n"), 2);
        assert_eq!(h.feed(b"\r\n\r"), 0);
        assert_eq!(h.feed(b"x\r\n"), 0);
        assert_eq!(h.feed(b"\r\n"), 1);
    }

    #[test]
    fn answers_pipelined_requests_in_full() {
        use std::io::{Read, Write};
        if io_uring::IoUring::new(2).is_err() {
            eprintln!("io_uring unavailable here: skipped");
            return;
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let body = vec![b'x'; 100_000];
        let mut response = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
        response.extend_from_slice(&body);
        let want = response.len();
        std::thread::spawn(move || serve(listener, response));
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        let mut got = vec![0u8; want * 2];
        s.read_exact(&mut got).unwrap();
        assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert!(got[want..].starts_with(b"HTTP/1.1 200 OK\r\n"));
    }
}
