//! What the core hands an engine to transmit: an ordered queue of byte strings and file
//! ranges, plus small helpers for replies without a file.

use std::collections::VecDeque;
use std::fs::File;
use std::rc::Rc;

use crate::cache::arena::Pinned;
use crate::http::request::Version;
use crate::http::response::Head;

/// One piece of output, sent strictly in queue order.
#[derive(Debug)]
pub enum Segment {
    Bytes(Vec<u8>),
    /// `len` bytes of `file` from `offset`. If the file turns out shorter (truncated since it
    /// was opened), the engine must close the connection rather than send anything after it:
    /// a body shorter than its Content-Length must never look complete.
    ///
    /// `by_reference`: the file is not rewritten in place while served (a static mount after
    /// collectstatic), so engines may send it by reference (sendfile). Otherwise (uploads) the
    /// bytes must be copied when read: pages queued by reference change under the socket when
    /// the file is truncated or rewritten in place, and the client would get bytes the file
    /// never held together.
    File {
        file: Rc<File>,
        offset: u64,
        len: u64,
        by_reference: bool,
    },
    /// `len` bytes from `offset` of a cached body: shared, immutable, copied into the send
    /// buffer when sent (so pipelined hits coalesce into one send).
    Shared {
        bytes: Rc<[u8]>,
        offset: usize,
        len: usize,
    },
    /// Bytes that are never written again while the kernel may hold their pages (a cached
    /// entry's frame, see [`crate::cache::arena`]): engines may send them by reference.
    Pinned(Pinned),
}

/// The responses a connection owes its client, in order.
#[derive(Debug, Default)]
pub struct Output {
    segments: VecDeque<Segment>,
    /// Responses fully queued but not yet fully sent: back-pressure for pipelining.
    replies: usize,
}

impl Output {
    /// A buffer to render the next head into: the tail of the queue when it is bytes, so that
    /// pipelined heads and small replies coalesce into one send.
    pub fn bytes(&mut self) -> &mut Vec<u8> {
        if !matches!(self.segments.back(), Some(Segment::Bytes(_))) {
            self.segments
                .push_back(Segment::Bytes(Vec::with_capacity(512)));
        }
        match self.segments.back_mut() {
            Some(Segment::Bytes(b)) => b,
            _ => unreachable!("a bytes segment was just pushed"),
        }
    }

    pub fn push_file(&mut self, file: &Rc<File>, offset: u64, len: u64, by_reference: bool) {
        if len > 0 {
            self.segments.push_back(Segment::File {
                file: Rc::clone(file),
                offset,
                len,
                by_reference,
            });
        }
    }

    pub fn push_shared(&mut self, bytes: &Rc<[u8]>, offset: usize, len: usize) {
        if len > 0 {
            self.segments.push_back(Segment::Shared {
                bytes: Rc::clone(bytes),
                offset,
                len,
            });
        }
    }

    pub fn push_pinned(&mut self, bytes: Pinned) {
        if !bytes.is_empty() {
            self.segments.push_back(Segment::Pinned(bytes));
        }
    }

    /// Marks the end of one reply.
    pub fn end_reply(&mut self) {
        self.replies += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Bytes queued as byte segments (a proxied response waiting for the client): what the
    /// proxy's back-pressure looks at. Short queues only, so counting is cheap.
    pub fn buffered_bytes(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Bytes(b) => b.len(),
                _ => 0,
            })
            .sum()
    }

    /// Replies queued and not yet fully handed to the engine.
    pub fn queued_replies(&self) -> usize {
        self.replies
    }

    pub fn front(&self) -> Option<&Segment> {
        self.segments.front()
    }

    pub fn pop_front(&mut self) -> Option<Segment> {
        let seg = self.segments.pop_front();
        if self.segments.is_empty() {
            self.replies = 0;
        }
        seg
    }

    pub fn push_front(&mut self, seg: Segment) {
        self.segments.push_front(seg);
    }

    pub fn clear(&mut self) {
        self.segments.clear();
        self.replies = 0;
    }
}

/// What the `Connection` field of a response says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionHeader {
    /// HTTP/1.1 staying open: nothing to say.
    Default,
    /// HTTP/1.0 staying open: say so, or the client assumes close.
    KeepAlive,
    Close,
}

impl ConnectionHeader {
    pub fn new(version: Version, keep_alive: bool) -> Self {
        match (keep_alive, version) {
            (false, _) => ConnectionHeader::Close,
            (true, Version::Http11) => ConnectionHeader::Default,
            (true, Version::Http10) => ConnectionHeader::KeepAlive,
        }
    }

    pub fn write(self, head: &mut Head<'_>) {
        match self {
            ConnectionHeader::Default => {}
            ConnectionHeader::KeepAlive => {
                head.field("Connection", "keep-alive");
            }
            ConnectionHeader::Close => {
                head.field("Connection", "close");
            }
        }
    }
}

/// A reply with a short plain-text body (errors, 404s). `extra` fields go before the body.
/// It is sandboxed like media responses: it may answer for an untrusted mount, and a text
/// error page loses nothing by it.
pub fn simple(
    out: &mut Vec<u8>,
    status: u16,
    text: &str,
    extra: &[(&str, &str)],
    connection: ConnectionHeader,
    head_only: bool,
) {
    let mut head = Head::start(out, status);
    head.field("Content-Type", "text/plain; charset=utf-8")
        .field_u64("Content-Length", text.len() as u64 + 1);
    for (name, value) in extra {
        head.field(name, value);
    }
    head.field("X-Content-Type-Options", "nosniff")
        .field("Content-Security-Policy", "sandbox");
    connection.write(&mut head);
    head.finish();
    if !head_only {
        out.extend_from_slice(text.as_bytes());
        out.push(b'\n');
    }
}
