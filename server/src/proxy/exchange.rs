//! One proxied request/response round trip, without I/O: the request head and body on their
//! way to the app (with back-pressure), and the app's response reframed into the client's
//! output as it arrives — or replaced by a file for X-Accel-Redirect.

use std::fs::File;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::FileExt;

use super::ProxySettings;
use super::chunked::{self, ChunkError, ChunkedDecoder};
use super::head::{self, ClientFraming, ClientSide, UpstreamFraming, UpstreamHead};
use crate::http::request::{self, BodyFraming, Method, Request};
use crate::serve::Service;
use crate::serve::reply::Output;

/// Request bytes buffered for the app before the client is read no further.
pub const UPSTREAM_BUFFER: usize = 256 * 1024;
/// Response bytes queued for the client before the app is read no further.
pub const CLIENT_BACKLOG: usize = 256 * 1024;

/// Why an exchange could not be completed.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// Nothing of the response has reached the client: answer 502 with this text.
    BadGateway(String),
    /// Nothing of the response has arrived in time: answer 504.
    TimedOut(String),
    /// Part of the response is queued for the client: the connection must be closed after it,
    /// so that the client sees a response that is visibly incomplete.
    Abort(String),
}

/// What is wrong with a request body on its way to the app.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyError {
    Chunk(ChunkError),
    /// A chunked body grew past `--max-body-size`.
    TooLarge,
    /// A chunked body could not be spooled to a temporary file.
    Spool,
}

/// A chunked request body being collected in an unnamed temporary file, so that the app gets
/// it with a Content-Length: Django (like WSGI apps generally) reads no body without one, and
/// nginx buffers such bodies for the same reason. On disk, not in memory: a 100 MB chunked
/// upload costs no RAM.
#[derive(Debug)]
struct Spool {
    file: File,
    len: u64,
    /// Bytes already copied into the buffer for the app.
    sent: u64,
    peer: Option<IpAddr>,
    trusted: bool,
}

impl Spool {
    fn new(peer: Option<IpAddr>, trusted: bool) -> io::Result<Spool> {
        Ok(Spool {
            file: temporary_file()?,
            len: 0,
            sent: 0,
            peer,
            trusted,
        })
    }
}

/// An unnamed file in the temporary directory: it disappears with its descriptor.
fn temporary_file() -> io::Result<File> {
    use std::os::unix::ffi::OsStrExt;
    let dir = std::env::temp_dir();
    let mut path = dir.as_os_str().as_bytes().to_vec();
    path.push(0);
    // SAFETY: `path` is NUL-terminated and outlives the call; the result is checked.
    let fd = unsafe {
        libc::open(
            path.as_ptr().cast(),
            libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
            0o600,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("creating a temporary file in {}: {e}", dir.display()),
        ));
    }
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    Ok(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

#[derive(Debug)]
enum RequestBody {
    Done,
    Length(u64),
    Chunked(ChunkedDecoder),
}

#[derive(Debug)]
enum Response {
    Head,
    Body {
        framing: UpstreamFraming,
        remaining: u64,
        decoder: ChunkedDecoder,
        client: ClientFraming,
    },
    Done,
}

#[derive(Debug)]
pub struct Exchange {
    /// The client's request head, kept for an X-Accel-Redirect, which answers it from a file
    /// (with its Range and conditional fields).
    request_head: Vec<u8>,
    client: ClientSide,
    to_upstream: Vec<u8>,
    sent: usize,
    body: RequestBody,
    body_received: u64,
    max_body: u64,
    /// The request is still whole in `to_upstream` (it has no body): it can be sent again on a
    /// fresh connection if a pooled one turns out to be closed.
    replayable: bool,
    response: Response,
    /// Any byte of a response has arrived.
    response_started: bool,
    head_buf: Vec<u8>,
    upstream_reusable: bool,
    /// A chunked body on its way to a temporary file; the head goes out when it is complete.
    spool: Option<Spool>,
}

impl Exchange {
    /// Starts an exchange for `req`, whose head is `head` (the bytes it was parsed from).
    pub fn new(
        req: &Request<'_>,
        head: &[u8],
        peer: Option<IpAddr>,
        settings: &ProxySettings,
        keep_alive: bool,
    ) -> Exchange {
        let mut to_upstream = Vec::with_capacity(head.len() + 128);
        let trusted = settings.trusts(peer);
        let mut spool = None;
        if req.body == BodyFraming::Chunked {
            match Spool::new(peer, trusted) {
                Ok(s) => spool = Some(s),
                // Without a file, the body streams chunked (fine for apps that read it).
                Err(e) => log!("bypass: cannot spool a chunked request body: {e}"),
            }
        }
        if spool.is_none() {
            head::forward_request(req, req.body, peer, trusted, &mut to_upstream);
        }
        let body = match req.body {
            BodyFraming::None => RequestBody::Done,
            BodyFraming::Length(n) => RequestBody::Length(n),
            BodyFraming::Chunked => RequestBody::Chunked(ChunkedDecoder::default()),
        };
        Exchange {
            request_head: head.to_vec(),
            client: ClientSide {
                version: req.version,
                keep_alive,
                head_request: req.method == Method::Head,
            },
            to_upstream,
            sent: 0,
            replayable: matches!(body, RequestBody::Done),
            body,
            body_received: 0,
            max_body: settings.max_body_size,
            response: Response::Head,
            response_started: false,
            head_buf: Vec::new(),
            upstream_reusable: false,
            spool,
        }
    }

    /// Takes request-body bytes from the front of `data` while there is room for them;
    /// returns how many were taken.
    pub fn take_body(&mut self, data: &[u8]) -> Result<usize, BodyError> {
        let mut used = 0;
        while used < data.len() && self.to_upstream.len() - self.sent < UPSTREAM_BUFFER {
            // Never more than the buffer has room for: a fast client must not fill memory.
            let room = UPSTREAM_BUFFER - (self.to_upstream.len() - self.sent);
            let end = data.len().min(used + room);
            match &mut self.body {
                RequestBody::Done => break,
                RequestBody::Length(remaining) => {
                    let n = (end - used).min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    self.to_upstream.extend_from_slice(&data[used..used + n]);
                    *remaining -= n as u64;
                    used += n;
                    if *remaining == 0 {
                        self.body = RequestBody::Done;
                    }
                }
                RequestBody::Chunked(decoder) => {
                    // A spooled body goes to disk, which needs no back-pressure.
                    let end = if self.spool.is_some() {
                        data.len()
                    } else {
                        end
                    };
                    let step = decoder.step(&data[used..end]).map_err(BodyError::Chunk)?;
                    let piece = &data[used..end][step.data];
                    self.body_received += piece.len() as u64;
                    if self.body_received > self.max_body {
                        return Err(BodyError::TooLarge);
                    }
                    match self.spool.as_mut() {
                        Some(spool) => {
                            spool.file.write_all(piece).map_err(|e| {
                                log!("bypass: spooling a chunked request body: {e}");
                                BodyError::Spool
                            })?;
                            spool.len += piece.len() as u64;
                        }
                        None => chunked::encode_chunk(piece, &mut self.to_upstream),
                    }
                    used += step.used;
                    if decoder.is_done() {
                        self.body = RequestBody::Done;
                        if self.spool.is_some() {
                            self.unspool()?;
                        } else {
                            self.to_upstream.extend_from_slice(chunked::LAST_CHUNK);
                        }
                    } else if step.used == 0 {
                        break;
                    }
                }
            }
        }
        Ok(used)
    }

    /// The spooled body is complete: the head goes out with its length, then the body.
    fn unspool(&mut self) -> Result<(), BodyError> {
        let Some(spool) = self.spool.as_ref() else {
            return Ok(());
        };
        let mut slots = request::header_slots();
        let Ok(Some(req)) = request::parse(&self.request_head, &mut slots) else {
            return Err(BodyError::Spool);
        };
        let framing = if spool.len == 0 {
            BodyFraming::None
        } else {
            BodyFraming::Length(spool.len)
        };
        head::forward_request(
            &req,
            framing,
            spool.peer,
            spool.trusted,
            &mut self.to_upstream,
        );
        self.refill();
        Ok(())
    }

    /// Copies the next part of a complete spooled body into the buffer for the app.
    fn refill(&mut self) {
        let Some(spool) = self.spool.as_mut() else {
            return;
        };
        if !matches!(self.body, RequestBody::Done) {
            return;
        }
        while spool.sent < spool.len && self.to_upstream.len() - self.sent < UPSTREAM_BUFFER {
            let want = (spool.len - spool.sent).min(64 * 1024) as usize;
            let start = self.to_upstream.len();
            self.to_upstream.resize(start + want, 0);
            match spool
                .file
                .read_at(&mut self.to_upstream[start..], spool.sent)
            {
                Ok(n) if n > 0 => {
                    self.to_upstream.truncate(start + n);
                    spool.sent += n as u64;
                }
                // Our own unnamed file cannot shrink; should the disk fail, the app gets a
                // body shorter than its Content-Length and sees the request as incomplete.
                _ => {
                    self.to_upstream.truncate(start);
                    log!("bypass: reading back a spooled request body failed");
                    spool.sent = spool.len;
                }
            }
        }
    }

    /// The whole request body has been taken from the client.
    pub fn body_complete(&self) -> bool {
        matches!(self.body, RequestBody::Done)
    }

    /// More request body is expected and there is room for it.
    pub fn wants_body(&self) -> bool {
        !self.body_complete()
            && (self.spool.is_some() || self.to_upstream.len() - self.sent < UPSTREAM_BUFFER)
    }

    /// Bytes waiting to be sent to the app.
    pub fn upstream_pending(&self) -> &[u8] {
        &self.to_upstream[self.sent..]
    }

    pub fn upstream_sent(&mut self, n: usize) {
        self.sent += n;
        if self.sent == self.to_upstream.len() && !self.replayable {
            self.to_upstream.clear();
            self.sent = 0;
        }
        self.refill();
    }

    /// Whether a failure of the upstream connection may be retried on a fresh one: nothing of
    /// a response has arrived, and the request (which has no body) can be sent again whole.
    pub fn can_retry(&self) -> bool {
        self.replayable && !self.response_started
    }

    /// Starts over on a fresh connection (see [`Exchange::can_retry`]).
    pub fn rewind(&mut self) {
        self.sent = 0;
        self.head_buf.clear();
        self.response = Response::Head;
    }

    pub fn response_started(&self) -> bool {
        self.response_started
    }

    /// The response has been completely received (and queued for the client).
    pub fn is_done(&self) -> bool {
        matches!(self.response, Response::Done)
    }

    /// The app's connection can take another request once this exchange is done.
    pub fn upstream_reusable(&self) -> bool {
        self.upstream_reusable
            && self.body_complete()
            && self.upstream_pending().is_empty()
            && self.spool.as_ref().is_none_or(|s| s.sent == s.len)
    }

    pub fn client_version(&self) -> crate::http::request::Version {
        self.client.version
    }

    pub fn head_request(&self) -> bool {
        self.client.head_request
    }

    /// The client connection can take another request once this exchange is done.
    pub fn client_keep_alive(&self) -> bool {
        self.client.keep_alive
    }

    /// Whether to read more of the response now: not while the client is far behind.
    pub fn wants_response(&self, out: &Output) -> bool {
        !self.is_done() && out.buffered_bytes() < CLIENT_BACKLOG
    }

    /// Takes bytes of the app's response, queueing what the client gets in `out`.
    pub fn received(
        &mut self,
        mut data: &[u8],
        out: &mut Output,
        service: &mut Service,
    ) -> Result<(), Failure> {
        if data.is_empty() {
            return Ok(());
        }
        self.response_started = true;
        if matches!(self.response, Response::Head) {
            self.head_buf.extend_from_slice(data);
            data = &[];
            let mut rendered = Vec::new();
            loop {
                let parsed = head::parse_response(&self.head_buf, self.client, &mut rendered)
                    .map_err(|why| Failure::BadGateway(format!("invalid response: {why}")))?;
                match parsed {
                    None => return Ok(()),
                    Some(UpstreamHead::Interim { head_len }) => {
                        self.head_buf.drain(..head_len);
                        if self.head_buf.is_empty() {
                            return Ok(());
                        }
                    }
                    Some(UpstreamHead::Final(h)) => {
                        let leftover = self.head_buf.split_off(h.head_len);
                        self.head_buf = Vec::new();
                        self.upstream_reusable = h.reusable;
                        self.client.keep_alive = h.client_keep_alive;
                        match &h.accel {
                            Some(accel) => {
                                self.serve_accel(accel, out, service);
                                // The app's body is not read: django-sendfile2 declares the
                                // file's length and sends nothing, so waiting for it would
                                // stall. The connection is dropped instead, as nginx does.
                                self.upstream_reusable = false;
                                self.response = Response::Done;
                                return Ok(());
                            }
                            None => out.bytes().extend_from_slice(&rendered),
                        }
                        self.response = Response::Body {
                            framing: h.framing,
                            remaining: match h.framing {
                                UpstreamFraming::Length(n) => n,
                                _ => 0,
                            },
                            decoder: ChunkedDecoder::default(),
                            client: h.client_framing,
                        };
                        if h.framing == UpstreamFraming::None {
                            self.finish_body(out);
                        } else {
                            self.body_data(&leftover, out)?;
                        }
                        break;
                    }
                }
            }
        }
        self.body_data(data, out)
    }

    /// The app closed its side cleanly (a reset is a failure, reported by the engine).
    pub fn upstream_closed(&mut self, out: &mut Output) -> Result<(), Failure> {
        self.upstream_reusable = false;
        match &self.response {
            Response::Head => Err(Failure::BadGateway(
                if self.head_buf.is_empty() {
                    "closed the connection without responding"
                } else {
                    "closed the connection in the middle of the response head"
                }
                .into(),
            )),
            Response::Body {
                framing: UpstreamFraming::UntilClose,
                ..
            } => {
                self.finish_body(out);
                Ok(())
            }
            Response::Body { .. } => Err(Failure::Abort(
                "closed the connection in the middle of the response body".into(),
            )),
            Response::Done => Ok(()),
        }
    }

    fn body_data(&mut self, mut data: &[u8], out: &mut Output) -> Result<(), Failure> {
        while !data.is_empty() {
            let Response::Body {
                framing,
                remaining,
                decoder,
                client,
            } = &mut self.response
            else {
                // Bytes after the end of the response: the app's framing is not to be trusted
                // for another request.
                self.upstream_reusable = false;
                return Ok(());
            };
            let (piece, used, done) = match framing {
                UpstreamFraming::Length(_) => {
                    let n = data
                        .len()
                        .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    *remaining -= n as u64;
                    (&data[..n], n, *remaining == 0)
                }
                UpstreamFraming::Chunked => {
                    let step = decoder.step(data).map_err(|e| {
                        Failure::Abort(format!("invalid chunked response body: {}", e.reason()))
                    })?;
                    (&data[step.data], step.used, decoder.is_done())
                }
                UpstreamFraming::UntilClose => (data, data.len(), false),
                UpstreamFraming::None => (&data[..0], 0, true),
            };
            match client {
                ClientFraming::Chunked => chunked::encode_chunk(piece, out.bytes()),
                _ => out.bytes().extend_from_slice(piece),
            }
            data = &data[used..];
            if done {
                self.finish_body(out);
            } else if used == 0 {
                break;
            }
        }
        Ok(())
    }

    fn finish_body(&mut self, out: &mut Output) {
        if let Response::Body { client, .. } = self.response {
            if client == ClientFraming::Chunked {
                out.bytes().extend_from_slice(chunked::LAST_CHUNK);
            }
            out.end_reply();
        }
        self.response = Response::Done;
    }

    /// Answers the client's request from the file the app named, keeping the app's fields.
    fn serve_accel(&self, accel: &head::Accel, out: &mut Output, service: &mut Service) {
        let mut slots = request::header_slots();
        match request::parse(&self.request_head, &mut slots) {
            Ok(Some(mut req)) => {
                // As nginx does: the internal redirect is a GET (a HEAD stays a HEAD).
                if req.method != Method::Head {
                    req.method = Method::Get;
                    req.method_name = "GET";
                }
                service.respond_accel(&req, accel, self.client.keep_alive, out);
            }
            // The head parsed once already; it cannot fail now.
            _ => crate::serve::error(
                out,
                500,
                "internal server error",
                crate::serve::reply::ConnectionHeader::Close,
                false,
            ),
        }
    }
}
