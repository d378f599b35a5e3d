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
        // While proxying, a request body arriving is progress too.
        if was_idle || self.proxy.is_some() || self.phase() == Phase::Idle {
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

    /// Whether the connection is to be closed once the output has been sent. Not while a
    /// request is with the app: its answer is still to come.
    pub fn should_close(&self) -> bool {
        self.closing && self.proxy.is_none()
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
            BodyError::Spool => (500, "cannot buffer the request body"),
        };
        serve::error(
            &mut self.output,
            status,
            text,
            ConnectionHeader::Close,
            false,
        );
    }

    /// Whether a request is with the app (see [`Conn::needs_upstream`] for when it needs a
    /// connection to it).
    pub fn has_exchange(&self) -> bool {
        self.proxy.is_some()
    }

    /// Whether the exchange needs an upstream connection now: once it has bytes for the app
    /// (a spooled body is collected first, so that a pooled connection does not sit idle, and
    /// maybe closed by the app, while the client uploads).
    pub fn needs_upstream(&self) -> bool {
        self.proxy
            .as_ref()
            .is_some_and(|ex| !ex.upstream_pending().is_empty())
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
        if !ex.body_complete() && !ex.response_started() {
            // The client stopped sending its body: its fault, not the app's.
            log!("bypass: a client sent no more of its request body for {secs} s");
            self.proxy = None;
            self.released = Some(false);
            let text = "request body not received in time";
            serve::error(&mut self.output, 408, text, ConnectionHeader::Close, false);
            self.closing = true;
            self.pending = Vec::new();
            self.phase_since = now;
            return;
        }
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

#[cfg(test)]
mod tests {
    //! The proxy's behaviour on one connection, with no sockets: client bytes in, the bytes the
    //! app would get out, the app's bytes in, the client's bytes out.

    use super::*;
    use crate::config::{self, Command};
    use crate::engine::transmit;
    use std::sync::Arc;

    struct Rig {
        conn: Conn,
        service: Service,
        _dir: tempfile::TempDir,
    }

    impl Rig {
        fn new(extra: &[&str]) -> Rig {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("static")).unwrap();
            std::fs::write(dir.path().join("static/app.css"), "body{}").unwrap();
            let mut args = vec![
                "--upstream".to_string(),
                "127.0.0.1:9".to_string(),
                "--static".to_string(),
                format!("/static/={}", dir.path().join("static").display()),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            let Ok(Command::Serve(config)) = config::parse(args.into_iter().map(Into::into)) else {
                panic!("test config does not parse");
            };
            let site = Arc::new(crate::serve::Site::new(&config).unwrap());
            Rig {
                conn: Conn::new(0, Some("192.0.2.1".parse().unwrap())),
                service: Service::new(site),
                _dir: dir,
            }
        }

        fn client(&mut self, bytes: &[u8]) {
            self.conn.received(bytes, &mut self.service, 0);
        }

        /// What the app would receive now.
        fn app_gets(&mut self) -> String {
            let data = self.conn.upstream_pending().to_vec();
            self.conn.upstream_sent(data.len(), &mut self.service, 0);
            String::from_utf8_lossy(&data).into_owned()
        }

        fn app(&mut self, bytes: &[u8]) {
            self.conn.upstream_received(bytes, &mut self.service, 0);
        }

        /// What the client would receive now.
        fn client_gets(&mut self) -> String {
            let mut all = Vec::new();
            loop {
                let mut buf = Vec::new();
                let fill = transmit::fill(&mut self.conn.output, &mut buf, None);
                assert!(!fill.truncated);
                if buf.is_empty() {
                    break;
                }
                all.extend_from_slice(&buf);
            }
            self.conn.output_drained(&mut self.service, 0);
            String::from_utf8_lossy(&all).into_owned()
        }
    }

    #[test]
    fn pipelined_static_and_proxied_requests_are_answered_in_order() {
        let mut r = Rig::new(&[]);
        r.client(
            b"GET /static/app.css HTTP/1.1\r\nHost: h\r\n\r\n\
              GET /one HTTP/1.1\r\nHost: h\r\n\r\n\
              GET /static/app.css HTTP/1.1\r\nHost: h\r\n\r\n\
              GET /two HTTP/1.1\r\nHost: h\r\n\r\n",
        );
        assert!(r.app_gets().starts_with("GET /one HTTP/1.1\r\n"));
        // The second static reply waits behind the first proxied one.
        let first = r.client_gets();
        assert_eq!(first.matches("HTTP/1.1 200").count(), 1);
        assert!(first.ends_with("body{}"));
        r.app(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none");
        assert_eq!(r.conn.take_released(), Some(true));
        assert!(r.app_gets().starts_with("GET /two HTTP/1.1\r\n"));
        r.app(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\ntwo\r\n0\r\n\r\n");
        let rest = r.client_gets();
        let one = rest.find("one").unwrap();
        let css = rest.find("body{}").unwrap();
        let two = rest.find("3\r\ntwo\r\n0\r\n\r\n").unwrap();
        assert!(one < css && css < two, "{rest}");
        assert!(!r.conn.has_exchange() && !r.conn.should_close());
    }

    #[test]
    fn request_bodies_stream_with_back_pressure() {
        let mut r = Rig::new(&[]);
        let body = vec![b'x'; 600 * 1024];
        r.client(
            format!(
                "POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        r.client(&body);
        // The app has not read anything yet: the rest waits, and input pauses.
        assert!(!r.conn.wants_input());
        let mut got = 0;
        loop {
            let sent = r.app_gets();
            if sent.is_empty() {
                break;
            }
            got += sent.len();
        }
        let head_len = got - body.len();
        assert!(head_len > 0 && head_len < 300, "{got}");
        assert!(r.conn.wants_input());
        r.app(b"HTTP/1.1 204 No Content\r\n\r\n");
        assert!(r.client_gets().starts_with("HTTP/1.1 204 No Content\r\n"));
        assert_eq!(r.conn.take_released(), Some(true));
    }

    #[test]
    fn chunked_bodies_are_checked_and_spooled() {
        // The app gets the body with a Content-Length (Django reads no chunked body), only
        // once it is complete.
        let mut r = Rig::new(&[]);
        r.client(
            b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n",
        );
        assert_eq!(r.app_gets(), "");
        r.client(b"6\r\n world\r\n0\r\nTrailer: x\r\n\r\n");
        let sent = r.app_gets();
        assert!(
            sent.starts_with("POST /c HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n"),
            "{sent}"
        );
        assert!(
            sent.ends_with("\r\n\r\nhello world") && !sent.contains("chunked"),
            "{sent}"
        );

        let big = vec![b'z'; 700 * 1024];
        let mut r = Rig::new(&[]);
        r.client(b"PUT /big HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n");
        r.client(format!("{:x}\r\n", big.len()).as_bytes());
        r.client(&big);
        r.client(b"\r\n0\r\n\r\n");
        let mut sent = Vec::new();
        loop {
            let part = r.conn.upstream_pending().to_vec();
            if part.is_empty() {
                break;
            }
            assert!(part.len() <= crate::proxy::exchange::UPSTREAM_BUFFER + 1024);
            sent.extend_from_slice(&part);
            r.conn.upstream_sent(part.len(), &mut r.service, 0);
        }
        assert!(sent.ends_with(&big));
        assert!(String::from_utf8_lossy(&sent[..300]).contains("Content-Length: 716800\r\n"));

        let mut r = Rig::new(&[]);
        r.client(b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n");
        let reply = r.client_gets();
        assert!(reply.starts_with("HTTP/1.1 400 ") && reply.contains("chunk size overflows"));
        assert!(r.conn.should_close());
        assert_eq!(r.conn.take_released(), Some(false));
    }

    #[test]
    fn oversized_bodies_and_odd_expectations_never_reach_the_app() {
        let mut r = Rig::new(&["--max-body-size", "1K"]);
        r.client(
            b"POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 1025\r\nExpect: 100-continue\r\n\r\n",
        );
        assert!(r.client_gets().starts_with("HTTP/1.1 413 "));
        assert!(!r.conn.has_exchange() && r.conn.should_close());

        let mut r = Rig::new(&["--max-body-size", "1K"]);
        r.client(b"POST /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n401\r\n");
        r.client(&[b'a'; 1025]);
        assert!(r.client_gets().starts_with("HTTP/1.1 413 "));

        let mut r = Rig::new(&[]);
        r.client(
            b"POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n",
        );
        assert_eq!(r.client_gets(), "HTTP/1.1 100 Continue\r\n\r\n");
        assert!(!r.app_gets().contains("Expect"));

        let mut r = Rig::new(&[]);
        r.client(b"GET / HTTP/1.1\r\nHost: h\r\nExpect: teapot\r\n\r\n");
        assert!(r.client_gets().starts_with("HTTP/1.1 417 "));
        assert!(!r.conn.has_exchange());
    }

    #[test]
    fn the_app_failing_gives_502_before_the_response_and_a_close_after() {
        let mut r = Rig::new(&[]);
        r.client(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n");
        assert!(
            !r.conn
                .upstream_error("connection refused", false, &mut r.service, 0)
        );
        let reply = r.client_gets();
        assert!(reply.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{reply}");
        assert!(reply.contains("127.0.0.1:9") && reply.contains("connection refused"));
        assert!(!r.conn.should_close(), "the client connection stays usable");

        r.client(b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n");
        r.app_gets();
        r.app(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf");
        assert!(!r.conn.upstream_error("reset", false, &mut r.service, 0));
        let reply = r.client_gets();
        assert!(reply.ends_with("Content-Length: 10\r\n\r\nhalf"), "{reply}");
        assert!(r.conn.should_close());
    }

    #[test]
    fn a_closed_pooled_connection_is_retried_once_for_bodiless_requests() {
        let mut r = Rig::new(&[]);
        r.client(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n");
        let first = r.app_gets();
        assert!(r.conn.upstream_closed(true, &mut r.service, 0), "retry");
        assert_eq!(r.app_gets(), first, "the same request again");
        assert!(!r.conn.upstream_closed(false, &mut r.service, 0));
        assert!(r.client_gets().starts_with("HTTP/1.1 502 "));

        let mut r = Rig::new(&[]);
        r.client(b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx");
        r.app_gets();
        assert!(
            !r.conn.upstream_closed(true, &mut r.service, 0),
            "a body is not replayed"
        );
    }

    #[test]
    fn a_timeout_is_504_and_internal_mounts_are_not_reachable() {
        let mut r = Rig::new(&[]);
        r.client(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(r.conn.phase(), Phase::Upstream);
        r.conn.upstream_timed_out(&mut r.service, 0);
        assert!(
            r.client_gets()
                .starts_with("HTTP/1.1 504 Gateway Timeout\r\n")
        );

        // A client that stops sending its body is the client's failure.
        let mut r = Rig::new(&[]);
        r.client(b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc");
        r.conn.upstream_timed_out(&mut r.service, 0);
        assert!(
            r.client_gets()
                .starts_with("HTTP/1.1 408 Request Timeout\r\n")
        );
        assert!(r.conn.should_close());
        assert_eq!(r.conn.take_released(), Some(false));

        let mut r = Rig::new(&[]);
        r.client(b"GET /static/missing.css HTTP/1.1\r\nHost: h\r\n\r\n");
        assert!(r.client_gets().starts_with("HTTP/1.1 404 "));
        assert!(!r.conn.has_exchange(), "static 404s never reach the app");
    }

    #[test]
    fn responses_split_anywhere_reach_the_client_the_same() {
        let responses: [&[u8]; 3] = [
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-A: b\r\n\r\nhello world",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n6\r\n world\r\n0\r\nT: x\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        ];
        for whole in responses {
            // The body as the client decodes it (chunk boundaries may differ).
            let body_of = |reply: &str| {
                let at = reply.find("\r\n\r\n").unwrap() + 4;
                let (head, wire) = (&reply[..at], &reply.as_bytes()[at..]);
                if !head.contains("Transfer-Encoding: chunked") {
                    return wire.to_vec();
                }
                let mut decoder = crate::proxy::chunked::ChunkedDecoder::default();
                let (mut body, mut rest) = (Vec::new(), wire);
                while !decoder.is_done() {
                    let step = decoder.step(rest).unwrap();
                    body.extend_from_slice(&rest[step.data]);
                    rest = &rest[step.used..];
                }
                assert!(rest.is_empty());
                body
            };
            let mut r = Rig::new(&[]);
            r.client(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n");
            r.app_gets();
            r.app(whole);
            let expected = body_of(&r.client_gets());
            assert_eq!(r.conn.take_released(), Some(true));
            for cut in 1..whole.len() {
                let mut r = Rig::new(&[]);
                r.client(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n");
                r.app_gets();
                r.app(&whole[..cut]);
                r.app(&whole[cut..]);
                assert_eq!(body_of(&r.client_gets()), expected, "cut at {cut}");
                assert_eq!(r.conn.take_released(), Some(true), "cut at {cut}");
            }
        }
    }

    #[test]
    fn interim_responses_are_dropped_and_http10_gets_a_close_delimited_body() {
        let mut r = Rig::new(&[]);
        r.client(b"GET /a HTTP/1.0\r\n\r\n");
        r.app_gets();
        r.app(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        r.app(b"2\r\nhi\r\n0\r\n\r\n");
        let reply = r.client_gets();
        assert!(
            reply.starts_with("HTTP/1.1 200 OK\r\n")
                && reply.ends_with("Connection: close\r\n\r\nhi"),
            "{reply}"
        );
        assert!(r.conn.should_close());
    }
}
