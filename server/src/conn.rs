//! The per-connection state machine every engine drives, without I/O: bytes in, replies out,
//! in order, with keep-alive, pipelining, request-body skipping and timeouts decided here.
//!
//! An engine calls [`Conn::received`] with whatever the socket gave it, transmits
//! [`Conn::output`] in order, calls [`Conn::resume`] when it has drained the output (parsing
//! may have paused for back-pressure), and closes the socket when [`Conn::should_close`] says
//! so once the output is empty.

use crate::http::request::{self, BodyFraming, Request, RequestError};
use crate::serve::reply::{ConnectionHeader, Output};
use crate::serve::{self, Service};

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
    /// Seconds (coarse clock) when the current phase began, for the engine's timeouts.
    pub phase_since: u64,
}

impl Conn {
    pub fn new(now: u64) -> Self {
        Conn {
            phase_since: now,
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
        !self.closing && self.output.queued_replies() < MAX_QUEUED_REPLIES
    }

    /// Whether the connection is to be closed once the output has been sent.
    pub fn should_close(&self) -> bool {
        self.closing
    }

    pub fn phase(&self) -> Phase {
        if !self.output.is_empty() {
            Phase::Busy
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

    /// The peer closed its sending side: answer what is complete, then close.
    pub fn peer_closed(&mut self) {
        self.closing = true;
        self.pending = Vec::new();
    }

    /// Handles every complete request at the front of `data`; returns the bytes consumed.
    fn process(&mut self, data: &[u8], service: &mut Service) -> usize {
        let mut used = 0;
        while used < data.len() && !self.closing {
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
                    used += req.head_len;
                    self.handle(&req, service);
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

    fn handle(&mut self, req: &Request<'_>, service: &mut Service) {
        let mut keep_alive = req.keep_alive;
        match req.body {
            BodyFraming::None => {}
            BodyFraming::Length(n) => self.skip = n,
            // Skipping a chunked body would need a decoder for a body nobody reads: answer,
            // then close, which keeps framing certain.
            BodyFraming::Chunked => keep_alive = false,
        }
        service.respond(req, keep_alive, &mut self.output);
        if !keep_alive {
            self.closing = true;
        }
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
