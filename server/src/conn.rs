//! The per-connection state machine every engine drives, without I/O: bytes in, replies out,
//! in order, with keep-alive, pipelining, request-body skipping, proxying and timeouts decided
//! here.
//!
//! An engine calls [`Conn::received`] with whatever the socket gave it, transmits
//! [`Conn::output`] in order, calls [`Conn::resume`] when it has drained the output (parsing
//! may have paused for back-pressure), and closes the socket when [`Conn::should_close`] says
//! so once the output is empty.
//!
//! A request for the app starts an [`Exchange`]; while it lasts, later requests wait (so that
//! replies stay in order) and the engine connects the exchange to an upstream socket through
//! the `upstream_*` methods.

use std::net::IpAddr;

use crate::http::request::{self, BodyFraming, Method, Request, RequestError, Version};
use crate::proxy::exchange::{BodyError, Exchange, Failure};
use crate::serve::reply::{ConnectionHeader, Output};
use crate::serve::{self, Routed, Service};

/// Replies queued before parsing pauses; bounds what a client that pipelines without reading
/// can make the server hold.
pub const MAX_QUEUED_REPLIES: usize = 64;

/// Where a connection is, for its timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for a request with nothing buffered: the keep-alive timeout applies.
    Idle,
    /// Part of a request head has arrived: the header timeout applies.
    ReadingHead,
    /// Replies are being sent.
    Busy,
    /// A request is with the app and nothing is being sent: the upstream timeout applies.
    Upstream,
}

#[derive(Debug, Default)]
pub struct Conn {
    /// Unparsed bytes: a partial head, or requests held back by back-pressure. Empty, and
    /// without an allocation, for an idle keep-alive connection.
    pending: Vec<u8>,
    /// Request-body bytes still to skip before the next request starts.
    skip: u64,
    /// No more requests will be read: the last reply says `Connection: close`.
    closing: bool,
    pub output: Output,
    /// Seconds (coarse clock) when the current phase began, for the engine's timeouts; while
    /// proxying, when anything last moved.
    pub phase_since: u64,
    /// The peer's address, for X-Forwarded-For.
    peer: Option<IpAddr>,
    /// The request with the app, if any.
    proxy: Option<Box<Exchange>>,
    /// An exchange ended since the engine last asked: whether its upstream connection can take
    /// another request.
    released: Option<bool>,
}

impl Conn {
    pub fn new(now: u64, peer: Option<IpAddr>) -> Self {
        Conn {
            phase_since: now,
            peer,
            ..Conn::default()
        }
    }

    /// Takes bytes from the socket and queues the replies to every complete request in them.
    pub fn received(&mut self, data: &[u8], service: &mut Service, now: u64) {
        if self.closing {
            return;
        }
        let was_idle = self.phase() == Phase::Idle;
        if self.pending.is_empty() {
            // Fast path: parse straight from the engine's buffer, copying only a leftover.
            let used = self.process(data, service);
            if used < data.len() && !self.closing {
                self.pending.extend_from_slice(&data[used..]);
            }
        } else {
            self.pending.extend_from_slice(data);
            self.resume(service);
        }
        if was_idle || self.phase() == Phase::Idle {
            self.phase_since = now;
        }
    }

    /// Parses requests held back while the output was full. Engines call this after draining
    /// the output.
    pub fn resume(&mut self, service: &mut Service) {
        if self.pending.is_empty() || self.closing {
            return;
        }
        let mut pending = std::mem::take(&mut self.pending);
        let used = self.process(&pending, service);
        if !self.closing && used < pending.len() {
            pending.drain(..used);
            self.pending = pending;
        }
    }

    /// Whether the engine should keep reading from the socket.
    pub fn wants_input(&self) -> bool {
        !self.closing
            && self.output.queued_replies() < MAX_QUEUED_REPLIES
            && match &self.proxy {
                None => true,
                Some(ex) if ex.body_complete() => self.pending.len() < request::MAX_HEAD,
                Some(ex) => ex.wants_body(),
            }
    }

    /// Whether the connection is to be closed once the output has been sent.
    pub fn should_close(&self) -> bool {
        self.closing
    }

    pub fn phase(&self) -> Phase {
        if !self.output.is_empty() {
            Phase::Busy
        } else if self.proxy.is_some() {
            Phase::Upstream
        } else if self.pending.is_empty() && self.skip == 0 {
            Phase::Idle
        } else {
            Phase::ReadingHead
        }
    }

    /// The engine calls this when the output drains: the keep-alive clock starts again.
    pub fn output_drained(&mut self, service: &mut Service, now: u64) {
        self.resume(service);
        self.phase_since = now;
    }

    /// The peer closed its sending side: answer what is complete, then close. A request body
    /// cut short will never be whole: its exchange is abandoned.
    pub fn peer_closed(&mut self) {
        self.closing = true;
        self.pending = Vec::new();
        if self.proxy.as_ref().is_some_and(|ex| !ex.body_complete()) {
            self.proxy = None;
            self.released = Some(false);
        }
    }

    /// Handles every complete request at the front of `data`; returns the bytes consumed.
    fn process(&mut self, data: &[u8], service: &mut Service) -> usize {
        let mut used = 0;
        while used < data.len() && !self.closing {
            if let Some(ex) = self.proxy.as_mut() {
                // Body bytes go to the app; a following request waits for the exchange.
                if ex.body_complete() {
                    break;
                }
                match ex.take_body(&data[used..]) {
                    Ok(0) => break,
                    Ok(n) => used += n,
                    Err(e) => {
                        self.bad_body(e);
                        break;
                    }
                }
                continue;
            }
            if self.skip > 0 {
                let n = self.skip.min((data.len() - used) as u64);
                self.skip -= n;
                used += n as usize;
                continue;
            }
            if self.output.queued_replies() >= MAX_QUEUED_REPLIES {
                break;
            }
            let mut slots = request::header_slots();
            match request::parse(&data[used..], &mut slots) {
                Ok(Some(req)) => {
                    let head = &data[used..used + req.head_len];
                    used += req.head_len;
                    self.handle(&req, head, service);
                }
                Ok(None) => break,
                Err(e) => {
                    self.refuse(e);
                    break;
                }
            }
        }
        used
    }

    fn handle(&mut self, req: &Request<'_>, head: &[u8], service: &mut Service) {
        // Skipping a chunked body would need a decoder for a body nobody reads: answer, then
        // close, which keeps framing certain.
        let keep_alive = req.keep_alive && req.body != BodyFraming::Chunked;
        match service.respond(req, keep_alive, &mut self.output) {
            Routed::Answered => {
                if let BodyFraming::Length(n) = req.body {
                    self.skip = n;
                }
                if !keep_alive {
                    self.closing = true;
                }
            }
            Routed::Forward => self.forward(req, head, service),
        }
    }

    /// Starts passing `req` to the app, unless its body is too large or its expectation
    /// cannot be met.
    fn forward(&mut self, req: &Request<'_>, head: &[u8], service: &mut Service) {
        let site = std::sync::Arc::clone(service.site());
        let Some(settings) = site.proxy.as_ref() else {
            return;
        };
        let head_only = req.method == Method::Head;
        if let BodyFraming::Length(n) = req.body
            && n > settings.max_body_size
        {
            // Before anything reaches the app, and closing: the body is not worth reading.
            let text = "request body larger than the server accepts";
            serve::error(
                &mut self.output,
                413,
                text,
                ConnectionHeader::Close,
                head_only,
            );
            self.closing = true;
            return;
        }
        if let Some(expect) = req.headers.get("expect") {
            if !expect.eq_ignore_ascii_case(b"100-continue") {
                let text = "unsupported expectation";
                serve::error(
                    &mut self.output,
                    417,
                    text,
                    ConnectionHeader::Close,
                    head_only,
                );
                self.closing = true;
                return;
            }
            // The client waits for this before sending the body; the app never sees Expect.
            if req.body != BodyFraming::None && req.version == Version::Http11 {
                self.output
                    .bytes()
                    .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            }
        }
        self.proxy = Some(Box::new(Exchange::new(
            req,
            head,
            self.peer,
            settings,
            req.keep_alive,
        )));
    }

    /// The request body broke its framing (or its size limit) on the way to the app.
    fn bad_body(&mut self, e: BodyError) {
        let Some(ex) = self.proxy.take() else {
            return;
        };
        self.released = Some(false);
        self.pending = Vec::new();
        self.closing = true;
        if ex.response_started() {
            return;
        }
        let (status, text) = match e {
            BodyError::Chunk(e) => (400, e.reason()),
            BodyError::TooLarge => (413, "request body larger than the server accepts"),
        };
        serve::error(
            &mut self.output,
            status,
            text,
            ConnectionHeader::Close,
            false,
        );
    }

    /// Whether a request is with the app (the engine then owes it an upstream connection).
    pub fn has_exchange(&self) -> bool {
        self.proxy.is_some()
    }

    /// Bytes to send to the app now.
    pub fn upstream_pending(&self) -> &[u8] {
        self.proxy.as_ref().map_or(&[], |ex| ex.upstream_pending())
    }

    /// `n` bytes of [`Conn::upstream_pending`] were sent.
    pub fn upstream_sent(&mut self, n: usize, service: &mut Service, now: u64) {
        let Some(ex) = self.proxy.as_mut() else {
            return;
        };
        ex.upstream_sent(n);
        self.phase_since = now;
        if ex.wants_body() {
            // Room again for the body bytes held back.
            self.resume(service);
        }
    }

    /// Whether to read the app's response now (not while the client is far behind).
    pub fn wants_upstream_read(&self) -> bool {
        self.proxy
            .as_ref()
            .is_some_and(|ex| ex.wants_response(&self.output))
    }

    /// Bytes of the app's response.
    pub fn upstream_received(&mut self, data: &[u8], service: &mut Service, now: u64) {
        let Some(ex) = self.proxy.as_mut() else {
            return;
        };
        self.phase_since = now;
        match ex.received(data, &mut self.output, service) {
            Ok(()) if ex.is_done() => self.end_exchange(service, now),
            Ok(()) => {}
            Err(failure) => self.fail_exchange(failure, service, now),
        }
    }

    /// The app closed the connection cleanly. Returns true when the request should be sent
    /// again on a fresh connection: a pooled connection the app had closed while idle.
    pub fn upstream_closed(&mut self, reused: bool, service: &mut Service, now: u64) -> bool {
        let Some(ex) = self.proxy.as_mut() else {
            return false;
        };
        if reused && ex.can_retry() {
            ex.rewind();
            return true;
        }
        match ex.upstream_closed(&mut self.output) {
            Ok(()) => self.end_exchange(service, now),
            Err(failure) => self.fail_exchange(failure, service, now),
        }
        false
    }

    /// The upstream connection failed (`what` says how, for the log and the 502). Returns
    /// true when the request should be sent again on a fresh connection.
    pub fn upstream_error(
        &mut self,
        what: &str,
        reused: bool,
        service: &mut Service,
        now: u64,
    ) -> bool {
        let Some(ex) = self.proxy.as_mut() else {
            return false;
        };
        if reused && ex.can_retry() {
            ex.rewind();
            return true;
        }
        let failure = if ex.response_started() {
            Failure::Abort(what.to_string())
        } else {
            Failure::BadGateway(what.to_string())
        };
        self.fail_exchange(failure, service, now);
        false
    }

    /// The app made no progress for the upstream timeout.
    pub fn upstream_timed_out(&mut self, service: &mut Service, now: u64) {
        let Some(ex) = self.proxy.as_ref() else {
            return;
        };
        let secs = service.site().proxy.as_ref().map_or(0, |p| p.timeout_secs);
        let what = format!("no progress for {secs} s");
        let failure = if ex.response_started() {
            Failure::Abort(what)
        } else {
            Failure::TimedOut(what)
        };
        self.fail_exchange(failure, service, now);
    }

    /// An exchange ended since the last call: whether its upstream connection can be reused.
    pub fn take_released(&mut self) -> Option<bool> {
        self.released.take()
    }

    fn end_exchange(&mut self, service: &mut Service, now: u64) {
        let Some(ex) = self.proxy.take() else {
            return;
        };
        self.released = Some(ex.upstream_reusable());
        if !ex.client_keep_alive() || !ex.body_complete() {
            // The rest of a body the app did not wait for is not worth reading.
            self.closing = true;
            self.pending = Vec::new();
        }
        self.phase_since = now;
        self.resume(service);
    }

    fn fail_exchange(&mut self, failure: Failure, service: &mut Service, now: u64) {
        let Some(ex) = self.proxy.take() else {
            return;
        };
        self.released = Some(false);
        let upstream = service
            .site()
            .proxy
            .as_ref()
            .map(|p| p.upstream.to_string())
            .unwrap_or_default();
        match failure {
            Failure::BadGateway(ref what) | Failure::TimedOut(ref what) => {
                let timed_out = matches!(failure, Failure::TimedOut(_));
                log!("bypass: upstream {upstream}: {what}");
                let keep_alive = ex.client_keep_alive() && ex.body_complete();
                let (status, text) = if timed_out {
                    (
                        504,
                        format!("gateway timeout: the app at {upstream} did not answer in time"),
                    )
                } else {
                    (
                        502,
                        format!("bad gateway: the app at {upstream} failed: {what}"),
                    )
                };
                let connection = ConnectionHeader::new(ex.client_version(), keep_alive);
                serve::error(
                    &mut self.output,
                    status,
                    &text,
                    connection,
                    ex.head_request(),
                );
                if !keep_alive {
                    self.closing = true;
                    self.pending = Vec::new();
                }
            }
            Failure::Abort(what) => {
                log!("bypass: upstream {upstream}: {what}; closing the client connection");
                self.closing = true;
                self.pending = Vec::new();
            }
        }
        self.phase_since = now;
        self.resume(service);
    }

    /// Answers a request that cannot be parsed, and stops reading: its framing is lost.
    fn refuse(&mut self, e: RequestError) {
        serve::error(
            &mut self.output,
            e.status(),
            e.reason(),
            ConnectionHeader::Close,
            false,
        );
        self.closing = true;
        self.pending = Vec::new();
    }
}
