//! Turning a connection's [`Output`] into send buffers: shared by every engine, so that how a
//! reply becomes bytes on the wire is decided once.

use std::cell::RefCell;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;

use crate::cache::arena::Pinned;
use crate::serve::reply::{Output, Segment};

/// How many bytes one send carries at most. Small enough to keep one connection from
/// monopolising a worker, large enough to amortise the system call.
pub const SEND_CHUNK: usize = 64 * 1024;

/// A file range that an engine should send without copying it through user space.
#[derive(Debug)]
pub struct FileRange {
    pub file: Rc<File>,
    pub offset: u64,
    pub len: u64,
}

/// Output an engine sends by reference, a piece at a time, after what is buffered.
#[derive(Debug)]
pub enum Stream {
    /// By sendfile(2).
    File(FileRange),
    /// By vmsplice(2) and splice(2) ([`send_pinned`]).
    Pinned(Pinned),
}

impl Stream {
    pub fn len(&self) -> u64 {
        match self {
            Stream::File(range) => range.len,
            Stream::Pinned(bytes) => bytes.len() as u64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends at most `max` bytes to the non-blocking `socket` and moves past what was sent.
    /// `Ok(0)` only when a file ended before its range did (it was truncated); errors are
    /// errno values (EAGAIN: the socket is full).
    pub fn send(&mut self, socket: RawFd, max: usize) -> Result<usize, i32> {
        match self {
            Stream::File(range) => {
                let count = range.len.min(max as u64) as usize;
                let Ok(mut off) = libc::off_t::try_from(range.offset) else {
                    return Err(libc::EINVAL);
                };
                // SAFETY: passes a pointer to a live off_t, which sendfile updates; both
                // descriptors are open for the duration of the call.
                let n = unsafe { libc::sendfile(socket, range.file.as_raw_fd(), &mut off, count) };
                if n < 0 {
                    return Err(errno());
                }
                range.offset += n as u64;
                range.len -= n as u64;
                Ok(n as usize)
            }
            Stream::Pinned(bytes) => {
                let count = bytes.len().min(max);
                let n = send_pinned(socket, &bytes.bytes()[..count])?;
                bytes.advance(n);
                Ok(n)
            }
        }
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// A pipe for [`send_pinned`] and a sink to empty it into.
struct SplicePipe {
    read: OwnedFd,
    write: OwnedFd,
    sink: OwnedFd,
}

impl SplicePipe {
    fn open() -> Option<SplicePipe> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes; the result is checked.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return None;
        }
        // SAFETY: both descriptors were just created and are owned by nothing else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // Room for a whole frame (a 64 KiB body and its head) in one vmsplice. Refused beyond
        // the per-user pipe limits, which only costs more calls per frame.
        // SAFETY: F_SETPIPE_SZ on our own pipe; failure is harmless.
        unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES) };
        // SAFETY: a NUL-terminated path; the result is checked.
        let sink = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        if sink < 0 {
            return None;
        }
        // SAFETY: just opened, owned by nothing else.
        let sink = unsafe { OwnedFd::from_raw_fd(sink) };
        Some(SplicePipe { read, write, sink })
    }

    /// Empties `n` bytes the socket did not take; false if the pipe cannot be trusted empty.
    fn discard(&self, mut n: usize) -> bool {
        while n > 0 {
            // SAFETY: splices between descriptors we own; no user memory is involved.
            let d = unsafe { splice(self.read.as_raw_fd(), self.sink.as_raw_fd(), n, 0) };
            if d <= 0 {
                return false;
            }
            n -= d as usize;
        }
        true
    }
}

/// Pipe size asked for: 80 KiB is the largest frame (64 KiB of body and a head), rounded up.
const PIPE_BYTES: libc::c_int = 128 << 10;

thread_local! {
    /// One pipe per thread, as the kernel keeps one per task for sendfile: it is empty
    /// between calls of [`send_pinned`]. `None` once it could not be made (then sends copy).
    static SPLICE_PIPE: RefCell<Option<Option<SplicePipe>>> = const { RefCell::new(None) };
}

/// Sends `bytes` to the non-blocking `socket` by reference: vmsplice(2) hands their pages to
/// this thread's pipe, splice(2) moves them to the socket, and what the socket did not take is
/// emptied out of the pipe (to be sent again later, by the caller). Returns the bytes the
/// socket took, or an errno (EAGAIN: it took none).
///
/// `bytes` must never be written again while the kernel may hold its pages: a [`Pinned`]
/// frame. Ordinary heap memory is not that (the allocator reuses it). Without a pipe the
/// bytes are copied by send(2).
pub fn send_pinned(socket: RawFd, bytes: &[u8]) -> Result<usize, i32> {
    SPLICE_PIPE.with_borrow_mut(|slot| {
        let pipe = slot.get_or_insert_with(SplicePipe::open);
        let Some(p) = pipe.as_ref() else {
            return send_copy(socket, bytes);
        };
        let mut sent = 0;
        while sent < bytes.len() {
            let iov = libc::iovec {
                iov_base: bytes[sent..].as_ptr() as *mut libc::c_void,
                iov_len: bytes.len() - sent,
            };
            // SAFETY: `iov` describes live memory that the caller promises is never written
            // again while pages of it may be in the pipe or on the socket.
            let queued = unsafe { vmsplice(p.write.as_raw_fd(), &iov, libc::SPLICE_F_NONBLOCK) };
            if queued < 0 && errno() == libc::EINTR {
                // A signal, not a broken pipe: the pipe is still empty and good.
                continue;
            }
            if queued <= 0 {
                // Nothing queued: the pipe is empty and unusable; copy instead.
                *pipe = None;
                return if sent > 0 {
                    Ok(sent)
                } else {
                    send_copy(socket, bytes)
                };
            }
            let queued = queued as usize;
            // SAFETY: splices from our pipe to the caller's socket; no user memory involved.
            let n = unsafe { splice(p.read.as_raw_fd(), socket, queued, libc::SPLICE_F_NONBLOCK) };
            let taken = n.max(0) as usize;
            sent += taken;
            if taken < queued {
                let error = errno();
                if !p.discard(queued - taken) {
                    *pipe = None;
                }
                return match (sent, n) {
                    (0, n) if n < 0 => Err(error),
                    (0, _) => Err(libc::EAGAIN),
                    _ => Ok(sent),
                };
            }
        }
        Ok(sent)
    })
}

// vmsplice(2) and splice(2) by number: glibc's wrappers are cancellation points, and entering
// and leaving asynchronous-cancel mode around each call measured ~1% of the server's CPU on a
// 23 KB hit. Nothing here uses thread cancellation.

/// vmsplice(2) of one iovec. Safety: as for the system call; `iov` must describe memory the
/// kernel may keep references to (see [`send_pinned`]).
unsafe fn vmsplice(pipe: RawFd, iov: &libc::iovec, flags: libc::c_uint) -> isize {
    // SAFETY: the caller's promise; the arguments have the types the system call takes.
    unsafe {
        libc::syscall(
            libc::SYS_vmsplice,
            pipe,
            iov as *const libc::iovec,
            1usize,
            flags,
        ) as isize
    }
}

/// splice(2) of `len` bytes from the pipe `from` to `to`, at their current positions.
/// Safety: as for the system call; both must be open descriptors.
unsafe fn splice(from: RawFd, to: RawFd, len: usize, flags: libc::c_uint) -> isize {
    // SAFETY: the caller's promise; null offsets mean the descriptors' own positions.
    unsafe {
        libc::syscall(
            libc::SYS_splice,
            from,
            std::ptr::null_mut::<libc::loff_t>(),
            to,
            std::ptr::null_mut::<libc::loff_t>(),
            len,
            flags,
        ) as isize
    }
}

/// One non-blocking send(2) of `bytes`, without SIGPIPE: the bytes taken, or the errno.
pub(crate) fn send_copy(socket: RawFd, bytes: &[u8]) -> Result<usize, i32> {
    // SAFETY: `bytes` is live memory of `bytes.len()` bytes; send only reads it.
    let n = unsafe {
        libc::send(
            socket,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 { Err(errno()) } else { Ok(n as usize) }
}

/// What [`fill`] produced besides the bytes in the buffer.
#[derive(Debug, Default)]
pub struct Fill {
    /// A file was shorter than promised: send what is in the buffer, then close.
    pub truncated: bool,
    /// With nothing buffered, a large range sent by reference is at the front: stream it.
    pub stream: Option<Stream>,
}

/// Moves output into `buf` until it holds [`SEND_CHUNK`] bytes: byte segments and cached bodies
/// are copied, file ranges read with `pread` (from the page cache, for the hot set). When `zero_copy_above` is
/// set, a by-reference file range longer than that at the front of an empty buffer is handed back as
/// [`Fill::stream`] instead, for the engine's zero-copy path.
pub fn fill(output: &mut Output, buf: &mut Vec<u8>, zero_copy_above: Option<u64>) -> Fill {
    let mut result = Fill::default();
    while buf.len() < SEND_CHUNK {
        let Some(front) = output.front() else { break };
        match front {
            Segment::Bytes(bytes) => {
                if !buf.is_empty() && buf.len() + bytes.len() > SEND_CHUNK {
                    break;
                }
                let Some(Segment::Bytes(bytes)) = output.pop_front() else {
                    unreachable!()
                };
                if buf.is_empty() && buf.capacity() < bytes.capacity() {
                    *buf = bytes;
                } else {
                    buf.extend_from_slice(&bytes);
                }
            }
            Segment::Shared { .. } => {
                let Some(Segment::Shared { bytes, offset, len }) = output.pop_front() else {
                    unreachable!()
                };
                let take = len.min(SEND_CHUNK - buf.len());
                buf.extend_from_slice(&bytes[offset..offset + take]);
                if take < len {
                    output.push_front(Segment::Shared {
                        bytes,
                        offset: offset + take,
                        len: len - take,
                    });
                }
            }
            Segment::Pinned(bytes) => {
                if let Some(limit) = zero_copy_above
                    && bytes.len() as u64 > limit
                {
                    if buf.is_empty() {
                        let Some(Segment::Pinned(bytes)) = output.pop_front() else {
                            unreachable!()
                        };
                        result.stream = Some(Stream::Pinned(bytes));
                    }
                    break;
                }
                let Some(Segment::Pinned(mut bytes)) = output.pop_front() else {
                    unreachable!()
                };
                let take = bytes.len().min(SEND_CHUNK - buf.len());
                buf.extend_from_slice(&bytes.bytes()[..take]);
                bytes.advance(take);
                if !bytes.is_empty() {
                    output.push_front(Segment::Pinned(bytes));
                }
            }
            Segment::File {
                len, by_reference, ..
            } => {
                let len = *len;
                if let Some(limit) = zero_copy_above
                    && *by_reference
                    && len > limit
                {
                    if buf.is_empty() {
                        let Some(Segment::File {
                            file, offset, len, ..
                        }) = output.pop_front()
                        else {
                            unreachable!()
                        };
                        result.stream = Some(Stream::File(FileRange { file, offset, len }));
                    }
                    break;
                }
                let Some(Segment::File {
                    file,
                    offset,
                    len,
                    by_reference,
                }) = output.pop_front()
                else {
                    unreachable!()
                };
                let want = len.min((SEND_CHUNK - buf.len()) as u64) as usize;
                let got = read_at(&file, offset, want, buf);
                if got < want {
                    result.truncated = true;
                    output.clear();
                    break;
                }
                if (got as u64) < len {
                    output.push_front(Segment::File {
                        file,
                        offset: offset + got as u64,
                        len: len - got as u64,
                        by_reference,
                    });
                }
            }
        }
    }
    result
}

/// Appends up to `want` bytes of `file` at `offset` to `buf`; fewer only at end of file (or on
/// an I/O error, which the caller treats the same way: the body cannot be completed).
fn read_at(file: &File, offset: u64, want: usize, buf: &mut Vec<u8>) -> usize {
    buf.reserve(want);
    let mut got = 0;
    while got < want {
        let spare = &mut buf.spare_capacity_mut()[..want - got];
        // SAFETY: `spare` is writable memory of `spare.len()` bytes owned by `buf`; pread writes
        // at most that many bytes into it, and we only mark as initialised what it wrote.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                spare.len(),
                (offset + got as u64) as libc::off_t,
            )
        };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            break;
        }
        // SAFETY: pread initialised `n` bytes of the spare capacity.
        unsafe { buf.set_len(buf.len() + n as usize) };
        got += n as usize;
    }
    got
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> Rc<File> {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        Rc::new(f)
    }

    #[test]
    fn coalesces_heads_and_small_bodies() {
        let file = file_with(b"0123456789");
        let mut out = Output::default();
        out.bytes().extend_from_slice(b"HEAD1 ");
        out.push_file(&file, 2, 3, true);
        out.end_reply();
        out.bytes().extend_from_slice(b" HEAD2 ");
        out.push_file(&file, 0, 10, true);
        out.end_reply();
        let mut buf = Vec::new();
        let f = fill(&mut out, &mut buf, Some(1 << 20));
        assert_eq!(buf, b"HEAD1 234 HEAD2 0123456789");
        assert!(!f.truncated && f.stream.is_none() && out.is_empty());
    }

    #[test]
    fn large_files_are_chunked_or_streamed() {
        let big = vec![7u8; SEND_CHUNK * 2 + 5];
        let file = file_with(&big);
        let mut out = Output::default();
        out.bytes().extend_from_slice(b"H");
        out.push_file(&file, 0, big.len() as u64, true);
        let mut buf = Vec::new();
        fill(&mut out, &mut buf, None);
        assert_eq!(buf.len(), SEND_CHUNK);
        buf.clear();
        fill(&mut out, &mut buf, None);
        assert_eq!(buf.len(), SEND_CHUNK);
        buf.clear();
        fill(&mut out, &mut buf, None);
        assert_eq!(buf.len(), 6);
        assert!(out.is_empty());

        let mut out = Output::default();
        out.bytes().extend_from_slice(b"H");
        out.push_file(&file, 0, big.len() as u64, true);
        let mut buf = Vec::new();
        let f = fill(&mut out, &mut buf, Some(1000));
        assert_eq!(buf, b"H");
        assert!(f.stream.is_none());
        buf.clear();
        let f = fill(&mut out, &mut buf, Some(1000));
        assert_eq!(f.stream.map(|s| s.len()), Some(big.len() as u64));

        // Files that may change in place are always copied.
        let mut out = Output::default();
        out.push_file(&file, 0, big.len() as u64, false);
        let mut buf = Vec::new();
        let f = fill(&mut out, &mut buf, Some(1000));
        assert!(f.stream.is_none());
        assert_eq!(buf.len(), SEND_CHUNK);
    }

    #[test]
    fn shared_bodies_are_copied_and_chunked() {
        let body: Rc<[u8]> = Rc::from(vec![9u8; SEND_CHUNK + 10]);
        let mut out = Output::default();
        out.bytes().extend_from_slice(b"H1");
        out.push_shared(&body, 0, 3);
        out.bytes().extend_from_slice(b"H2");
        out.push_shared(&body, 5, body.len() - 5);
        let mut buf = Vec::new();
        fill(&mut out, &mut buf, Some(1000));
        assert_eq!(buf.len(), SEND_CHUNK);
        assert_eq!(&buf[..7], b"H1\x09\x09\x09H2");
        buf.clear();
        fill(&mut out, &mut buf, Some(1000));
        assert_eq!(buf.len(), 2 + 3 + 2 + SEND_CHUNK + 5 - SEND_CHUNK);
        assert!(out.is_empty());
    }

    /// A frame of `len` patterned bytes in an arena of its own.
    fn pinned(len: usize, seed: u8) -> Pinned {
        let mut arena = crate::cache::arena::Arena::new(crate::cache::arena::CHUNK as u64);
        arena
            .store(crate::http::date::current(), len, |b| {
                for (i, x) in b.iter_mut().enumerate() {
                    *x = (i % 251) as u8 ^ seed;
                }
                Ok(())
            })
            .unwrap()
    }

    /// Bytes in this thread's splice pipe; `None` if it is not in use (sends would copy).
    fn pipe_bytes() -> Option<usize> {
        SPLICE_PIPE.with_borrow(|slot| {
            let pipe = slot.as_ref()?.as_ref()?;
            let mut n: libc::c_int = 0;
            // SAFETY: FIONREAD on our own pipe writes one c_int.
            let rc = unsafe { libc::ioctl(pipe.read.as_raw_fd(), libc::FIONREAD, &mut n) };
            assert_eq!(rc, 0);
            Some(n as usize)
        })
    }

    #[test]
    fn pinned_streams_survive_a_full_socket_and_leave_the_pipe_empty() {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        // Small buffers on both sides, so that the frame cannot fit in them whatever the
        // host's autotuning limits are.
        for (fd, option) in [
            (client.as_raw_fd(), libc::SO_RCVBUF),
            (server.as_raw_fd(), libc::SO_SNDBUF),
        ] {
            crate::engine::set_int_option(fd, libc::SOL_SOCKET, option, 64 << 10).unwrap();
        }
        let frame = pinned(1 << 20, 0);
        let mut stream = Stream::Pinned(frame.clone());
        // The peer reads nothing yet: the socket fills and the send stops part-way.
        let mut sent = 0;
        let error = loop {
            assert!(
                !stream.is_empty(),
                "the whole frame fit in the socket buffers"
            );
            match stream.send(server.as_raw_fd(), 64 << 10) {
                Ok(n) => sent += n,
                Err(e) => break e,
            }
        };
        assert_eq!(error, libc::EAGAIN);
        assert_eq!(pipe_bytes(), Some(0), "after a full socket");
        assert!(sent > 0 && sent < frame.len(), "sent {sent}");
        assert_eq!(stream.len(), (frame.len() - sent) as u64);
        // Read while sending the rest; then a second frame: nothing left over in the pipe
        // may come out ahead of or inside it.
        let second = pinned(100_000, 0x5a);
        let mut reader = client.try_clone().unwrap();
        let want = frame.len() + second.len();
        let collect = std::thread::spawn(move || {
            let mut got = vec![0u8; want];
            reader.read_exact(&mut got).unwrap();
            got
        });
        for mut s in [stream, Stream::Pinned(second.clone())] {
            while !s.is_empty() {
                match s.send(server.as_raw_fd(), 64 << 10) {
                    Ok(n) => assert!(n > 0),
                    Err(libc::EAGAIN) => std::thread::yield_now(),
                    Err(e) => panic!("send failed: errno {e}"),
                }
                // Still sending by reference, and nothing left behind in the pipe.
                assert_eq!(pipe_bytes(), Some(0));
            }
        }
        let got = collect.join().unwrap();
        assert!(got[..frame.len()] == *frame.bytes(), "first frame differs");
        assert!(
            got[frame.len()..] == *second.bytes(),
            "second frame differs"
        );
    }

    #[test]
    fn pinned_segments_are_streamed_when_large_and_copied_when_small() {
        let big = pinned(20_000, 1);
        let mut out = Output::default();
        out.bytes().extend_from_slice(b"H");
        out.push_pinned(big.slice(0, 10));
        out.push_pinned(big.clone());
        let mut buf = Vec::new();
        let f = fill(&mut out, &mut buf, Some(8192));
        assert_eq!(buf[1..], big.bytes()[..10]);
        assert!(f.stream.is_none());
        buf.clear();
        let f = fill(&mut out, &mut buf, Some(8192));
        assert!(buf.is_empty());
        assert!(matches!(f.stream, Some(Stream::Pinned(ref p)) if p.len() == big.len()));
        // Without zero-copy, copied like any other bytes.
        let mut out = Output::default();
        out.push_pinned(big.clone());
        let f = fill(&mut out, &mut buf, None);
        assert!(f.stream.is_none());
        assert_eq!(buf, big.bytes());
    }

    #[test]
    fn a_truncated_file_is_reported() {
        let file = file_with(b"short");
        let mut out = Output::default();
        out.bytes().extend_from_slice(b"H");
        out.push_file(&file, 0, 100, true);
        out.bytes().extend_from_slice(b"NEXT");
        let mut buf = Vec::new();
        let f = fill(&mut out, &mut buf, None);
        assert!(f.truncated);
        assert_eq!(buf, b"Hshort");
        assert!(out.is_empty());
    }
}
