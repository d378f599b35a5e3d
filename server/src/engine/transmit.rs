//! Turning a connection's [`Output`] into send buffers: shared by every engine, so that how a
//! reply becomes bytes on the wire is decided once.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::rc::Rc;

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

/// What [`fill`] produced besides the bytes in the buffer.
#[derive(Debug, Default)]
pub struct Fill {
    /// A file was shorter than promised: send what is in the buffer, then close.
    pub truncated: bool,
    /// With nothing buffered, a large file range is at the front: stream it zero-copy.
    pub stream: Option<FileRange>,
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
                        result.stream = Some(FileRange { file, offset, len });
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
        assert_eq!(f.stream.map(|s| s.len), Some(big.len() as u64));

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
