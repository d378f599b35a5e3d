//! The engine-independent heart of a worker thread: which connection sends
//! which request when, matching responses to requests, timing them, and
//! classifying failures. I/O engines (io_uring, epoll) report events to it and
//! carry out the [`Action`]s it queues; it never touches a socket itself.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use crate::mix::{Cursor, Mix};
use crate::parse::Parser;
use crate::stats::Stats;

/// Everything the worker threads share, read-only, for one run.
pub struct Plan {
    pub mix: Mix,
    pub addr: SocketAddr,
    pub connections: usize,
    pub threads: usize,
    /// Requests in flight per connection (1 = no pipelining).
    pub pipeline: usize,
    pub keepalive: bool,
    pub timeout_ns: u64,
    /// Open loop at this many requests per second; `None` = closed loop.
    pub rate: Option<f64>,
    /// Stop after this many measured requests (`-n`).
    pub requests: Option<u64>,
    pub warmup_ns: u64,
    /// Measured duration after the warmup (`-d`); `None` with `-n` alone.
    pub duration_ns: Option<u64>,
    pub seed: u64,
}

/// The run's clock: nanoseconds since the moment all threads started together.
#[derive(Clone, Copy)]
pub struct Clock(pub Instant);

impl Clock {
    #[inline]
    pub fn now(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

/// What the driver asks its engine to do, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Open a new socket for this connection and connect it.
    Connect(u32),
    /// Send [`Driver::outgoing`] of this connection.
    Send(u32),
    /// Close this connection's socket; later events from it must be ignored.
    Close(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Down,
    Connecting,
    Up,
}

/// A request sent and not yet answered.
#[derive(Clone, Copy)]
struct Pending {
    /// When the request counts as started: the intended send time in open
    /// loop (so queueing behind a stall is measured), the send time otherwise.
    start: u64,
    /// When it actually went out, for `--timeout`.
    sent: u64,
}

/// Where a connection's outgoing bytes live.
#[derive(Clone, Copy)]
enum Out {
    /// One pre-rendered request, sent straight from the mix's arena.
    Mix(usize),
    /// Several requests copied into the connection's own buffer (pipelining).
    Batch,
}

struct Conn {
    phase: Phase,
    pending: VecDeque<Pending>,
    parser: Parser,
    sending: bool,
    out: Out,
    out_off: usize,
    batch: Vec<u8>,
    /// On the free list (entries may be stale; checked when popped).
    listed: bool,
    /// When connecting began, or when to retry after a failure.
    at: u64,
}

/// How an unanswered request is counted when its connection is dropped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lost {
    Timeout,
    Reset,
    ShortBody,
    Parse,
}

/// Open-loop schedule: global request `g` is due at `g / rate` seconds and is
/// sent by thread `g % threads`, so the whole run follows one evenly spaced
/// timetable whatever the thread count (even with a rate below it).
struct Schedule {
    interval_ns: f64,
    thread: u64,
    threads: u64,
    /// This thread's next request, as a local index.
    next: u64,
    /// Global requests scheduled in all (warmup included), for `-n`.
    limit: u64,
}

impl Schedule {
    fn at(&self, g: u64) -> u64 {
        (g as f64 * self.interval_ns) as u64
    }

    /// The next request's global index and intended time.
    fn peek(&self) -> Option<(u64, u64)> {
        let g = self.next * self.threads + self.thread;
        (g < self.limit).then(|| (g, self.at(g)))
    }

    /// How many global requests are due strictly before `t`.
    fn count_before(&self, t: u64) -> u64 {
        let mut g = (t as f64 / self.interval_ns) as u64;
        while g > 0 && self.at(g - 1) >= t {
            g -= 1;
        }
        while self.at(g) < t {
            g += 1;
        }
        g
    }
}

/// One worker thread's state machine.
pub struct Driver<'p> {
    plan: &'p Plan,
    conns: Vec<Conn>,
    free: Vec<u32>,
    down: Vec<u32>,
    /// Queued work for the engine; it drains this after every call.
    pub actions: Vec<Action>,
    cursor: Cursor,
    schedule: Option<Schedule>,
    pub stats: Stats,
    measure_start: u64,
    end: u64,
    /// Closed loop: measured requests this thread may still start.
    quota: u64,
    in_flight: usize,
    /// Start times of the requests [`Driver::dispatch`] is handing out; kept
    /// here because zeroing a fresh array for every connection showed in profiles.
    starts: Box<[u64; 64]>,
    next_check: u64,
    check_every: u64,
    finished: Option<u64>,
}

/// Reconnect delay after a failed connect, so a dead target is not spun on.
const RETRY_NS: u64 = 10_000_000;
/// Longest sleep, so the stop flag and progress are seen promptly.
const MAX_SLEEP_NS: u64 = 50_000_000;

impl<'p> Driver<'p> {
    /// Thread `thread` of the plan, owning `conns` connections.
    pub fn new(plan: &'p Plan, thread: usize, conns: usize) -> Driver<'p> {
        let threads = plan.threads as u64;
        let share = |total: u64| total / threads + u64::from((thread as u64) < total % threads);
        let schedule = plan.rate.map(|rate| {
            let mut s = Schedule {
                interval_ns: 1e9 / rate,
                thread: thread as u64,
                threads,
                next: 0,
                limit: u64::MAX,
            };
            if let Some(n) = plan.requests {
                s.limit = s.count_before(plan.warmup_ns) + n;
            }
            s
        });
        let quota = match (plan.rate, plan.requests) {
            (None, Some(n)) => share(n),
            _ => u64::MAX,
        };
        let depth = plan.pipeline;
        let conns = (0..conns)
            .map(|_| Conn {
                phase: Phase::Down,
                pending: VecDeque::with_capacity(depth),
                parser: Parser::default(),
                sending: false,
                out: Out::Mix(0),
                out_off: 0,
                // Sized once so the kernel never sees this buffer move.
                batch: Vec::with_capacity(if depth > 1 {
                    depth * plan.mix.max_len()
                } else {
                    0
                }),
                listed: false,
                at: 0,
            })
            .collect::<Vec<_>>();
        let n = conns.len();
        Driver {
            plan,
            conns,
            free: Vec::with_capacity(n),
            down: (0..n as u32).collect(),
            actions: Vec::with_capacity(4 * n + 4),
            cursor: Cursor::new(&plan.mix, thread, plan.threads, plan.seed),
            schedule,
            stats: Stats::new(),
            measure_start: plan.warmup_ns,
            end: plan
                .duration_ns
                .map_or(u64::MAX, |d| plan.warmup_ns.saturating_add(d)),
            quota,
            in_flight: 0,
            starts: Box::new([0; 64]),
            next_check: 0,
            check_every: (plan.timeout_ns / 4).clamp(1_000_000, 100_000_000),
            finished: None,
        }
    }

    /// When the thread stopped (run-clock ns), once it has.
    pub fn finished(&self) -> Option<u64> {
        self.finished
    }

    /// Ends the run for this thread now (deadline, `-n` reached, or interrupted).
    pub fn finish(&mut self, now: u64) {
        if self.finished.is_some() {
            return;
        }
        if let Some(s) = &self.schedule {
            // Requests that fell due in the measured window but never left
            // because every connection was busy: the backlog, reported so an
            // overloaded open-loop run cannot look healthy.
            // Due means intended at or before now, and before the end.
            let due = s
                .count_before(now.saturating_add(1).min(self.end))
                .min(s.limit);
            let first = s.count_before(self.measure_start);
            let sent = (s.next * s.threads + s.thread).max(first);
            let mine = |g: u64| (g + s.threads - 1 - s.thread) / s.threads;
            self.stats.unsent = mine(due).saturating_sub(mine(sent));
        }
        self.finished = Some(now.min(self.end));
    }

    /// Called by the engine before it waits: starts connections and sends
    /// whatever is due.
    pub fn poll(&mut self, now: u64) {
        if self.finished.is_some() {
            return;
        }
        if now >= self.end {
            self.finish(now);
            return;
        }
        let exhausted = match &self.schedule {
            Some(s) => s.peek().is_none(),
            None => self.quota == 0,
        };
        if exhausted && self.in_flight == 0 {
            self.finish(now);
            return;
        }
        if now >= self.next_check {
            self.next_check = now + self.check_every;
            self.check_timeouts(now);
        }
        if !self.down.is_empty() {
            self.reconnect(now);
        }
        self.dispatch(now);
    }

    /// The latest time the engine may sleep until.
    pub fn next_wake(&self, now: u64) -> u64 {
        let mut wake = self.end.min(now + MAX_SLEEP_NS).min(self.next_check);
        if let Some(s) = &self.schedule {
            if !self.free.is_empty() {
                if let Some((_, at)) = s.peek() {
                    wake = wake.min(at);
                }
            }
        }
        for &c in &self.down {
            wake = wake.min(self.conns[c as usize].at);
        }
        wake
    }

    /// The bytes still to send on connection `c`, if it is sending.
    #[inline]
    pub fn outgoing(&self, c: u32) -> Option<&[u8]> {
        let conn = &self.conns[c as usize];
        if !conn.sending {
            return None;
        }
        let all = match conn.out {
            Out::Mix(i) => self.plan.mix.request(i),
            Out::Batch => &conn.batch,
        };
        all.get(conn.out_off..)
    }

    pub fn on_connected(&mut self, c: u32) {
        let conn = &mut self.conns[c as usize];
        if conn.phase == Phase::Connecting {
            conn.phase = Phase::Up;
            self.make_free(c);
        }
    }

    pub fn on_connect_failed(&mut self, c: u32, now: u64) {
        if self.conns[c as usize].phase == Phase::Connecting {
            if now >= self.measure_start {
                self.stats.errors.connect += 1;
            }
            self.drop_conn(c, now, Lost::Reset, now + RETRY_NS);
        }
    }

    /// `n` bytes of the outgoing data were sent.
    #[inline]
    pub fn on_sent(&mut self, c: u32, n: usize) {
        let conn = &mut self.conns[c as usize];
        if conn.phase != Phase::Up || !conn.sending {
            return;
        }
        conn.out_off += n;
        let len = match conn.out {
            Out::Mix(i) => self.plan.mix.request(i).len(),
            Out::Batch => conn.batch.len(),
        };
        if conn.out_off < len {
            self.actions.push(Action::Send(c));
        } else {
            conn.sending = false;
            self.make_free(c);
        }
    }

    /// Response bytes arrived on connection `c`.
    #[inline]
    pub fn on_data(&mut self, c: u32, data: &[u8], now: u64) {
        if self.conns[c as usize].phase != Phase::Up {
            return;
        }
        if now >= self.measure_start {
            self.stats.bytes += data.len() as u64;
        }
        let head = self.plan.mix.head();
        let mut rest = data;
        while !rest.is_empty() {
            let conn = &mut self.conns[c as usize];
            if conn.pending.is_empty() {
                // Bytes nobody asked for: the stream can no longer be trusted.
                self.drop_conn(c, now, Lost::Parse, now);
                return;
            }
            match conn.parser.feed(rest, head) {
                Ok((n, done)) => {
                    rest = &rest[n..];
                    if let Some(done) = done {
                        let req = conn.pending.pop_front().expect("checked non-empty");
                        self.in_flight -= 1;
                        if req.start >= self.measure_start {
                            self.stats
                                .response(done.status, now.saturating_sub(req.start));
                        }
                        if done.close || !self.plan.keepalive {
                            self.drop_conn(c, now, Lost::Reset, now);
                            return;
                        }
                        self.make_free(c);
                    }
                }
                Err(_) => {
                    self.drop_conn(c, now, Lost::Parse, now);
                    return;
                }
            }
        }
    }

    /// The server closed connection `c`.
    pub fn on_eof(&mut self, c: u32, now: u64) {
        let conn = &mut self.conns[c as usize];
        if conn.phase != Phase::Up {
            return;
        }
        if let Some(done) = conn.parser.eof() {
            if let Some(req) = conn.pending.pop_front() {
                self.in_flight -= 1;
                if req.start >= self.measure_start {
                    self.stats
                        .response(done.status, now.saturating_sub(req.start));
                }
            }
        }
        let conn = &self.conns[c as usize];
        let lost = if conn.parser.mid_response() {
            Lost::ShortBody
        } else {
            Lost::Reset
        };
        self.drop_conn(c, now, lost, now);
    }

    /// A socket error (reset, broken pipe) on connection `c`.
    pub fn on_error(&mut self, c: u32, now: u64) {
        if self.conns[c as usize].phase == Phase::Up {
            self.drop_conn(c, now, Lost::Reset, now);
        }
    }

    fn make_free(&mut self, c: u32) {
        let conn = &mut self.conns[c as usize];
        if !conn.listed && self.can_take(c) {
            self.conns[c as usize].listed = true;
            self.free.push(c);
        }
    }

    fn can_take(&self, c: u32) -> bool {
        let conn = &self.conns[c as usize];
        conn.phase == Phase::Up
            && !conn.sending
            && if self.schedule.is_some() {
                conn.pending.len() < self.plan.pipeline
            } else {
                // Closed loop sends a connection's next batch once the whole
                // previous one is answered, as wrk does.
                conn.pending.is_empty()
            }
    }

    /// Hands due requests to free connections.
    fn dispatch(&mut self, now: u64) {
        while let Some(&c) = self.free.last() {
            if !self.can_take(c) {
                self.free.pop();
                self.conns[c as usize].listed = false;
                continue;
            }
            let room = self.plan.pipeline - self.conns[c as usize].pending.len();
            let starts = &mut self.starts;
            let mut k = 0;
            match &mut self.schedule {
                Some(s) => {
                    while k < room.min(starts.len()) {
                        match s.peek() {
                            Some((_, at)) if at <= now && at < self.end => {
                                starts[k] = at;
                                s.next += 1;
                                k += 1;
                            }
                            _ => break,
                        }
                    }
                }
                None => {
                    k = room.min(starts.len());
                    if now >= self.measure_start {
                        k = k.min(usize::try_from(self.quota).unwrap_or(usize::MAX));
                        self.quota -= k as u64;
                    }
                    starts[..k].fill(now);
                }
            }
            if k == 0 {
                return;
            }
            self.free.pop();
            self.conns[c as usize].listed = false;
            self.assign(c, k, now);
        }
    }

    /// Hands connection `c` the `k` requests whose start times are in `self.starts`.
    fn assign(&mut self, c: u32, k: usize, now: u64) {
        let starts = &self.starts[..k];
        let mix = &self.plan.mix;
        let conn = &mut self.conns[c as usize];
        if starts.len() == 1 && conn.pending.is_empty() && self.plan.pipeline == 1 {
            conn.out = Out::Mix(mix.pick(&mut self.cursor));
        } else {
            conn.batch.clear();
            for _ in starts {
                conn.batch
                    .extend_from_slice(mix.request(mix.pick(&mut self.cursor)));
            }
            conn.out = Out::Batch;
        }
        for &start in starts {
            conn.pending.push_back(Pending { start, sent: now });
        }
        self.in_flight += starts.len();
        conn.sending = true;
        conn.out_off = 0;
        self.actions.push(Action::Send(c));
    }

    fn reconnect(&mut self, now: u64) {
        let (conns, actions) = (&mut self.conns, &mut self.actions);
        self.down.retain(|&c| {
            let conn = &mut conns[c as usize];
            if conn.at > now {
                return true;
            }
            conn.phase = Phase::Connecting;
            conn.at = now;
            actions.push(Action::Connect(c));
            false
        });
    }

    fn check_timeouts(&mut self, now: u64) {
        let t = self.plan.timeout_ns;
        for c in 0..self.conns.len() as u32 {
            let conn = &self.conns[c as usize];
            match conn.phase {
                Phase::Up if conn.pending.front().is_some_and(|p| p.sent + t <= now) => {
                    self.drop_conn(c, now, Lost::Timeout, now);
                }
                Phase::Connecting if conn.at + t <= now => {
                    if now >= self.measure_start {
                        self.stats.errors.connect += 1;
                    }
                    self.drop_conn(c, now, Lost::Timeout, now + RETRY_NS);
                }
                _ => {}
            }
        }
    }

    /// Closes connection `c`, counts its unanswered requests as failed, and
    /// schedules a new connection at `retry_at`.
    fn drop_conn(&mut self, c: u32, now: u64, first: Lost, retry_at: u64) {
        let measure_start = self.measure_start;
        let conn = &mut self.conns[c as usize];
        let mut kind = first;
        for p in conn.pending.drain(..) {
            if p.start >= measure_start && now >= measure_start {
                let e = &mut self.stats.errors;
                match kind {
                    Lost::Timeout => e.timeout += 1,
                    Lost::Reset => e.reset += 1,
                    Lost::ShortBody => e.short_body += 1,
                    Lost::Parse => e.parse += 1,
                }
            }
            self.in_flight -= 1;
            // Only the request being answered was cut short or unparsable;
            // the ones queued behind it on the connection were simply lost.
            if kind != Lost::Timeout {
                kind = Lost::Reset;
            }
        }
        conn.parser.reset();
        conn.sending = false;
        conn.phase = Phase::Down;
        conn.at = retry_at;
        self.actions.push(Action::Close(c));
        self.down.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mix::Order;
    use crate::render::Template;

    fn plan(rate: Option<f64>, pipeline: usize, requests: Option<u64>) -> Plan {
        let t = Template {
            method: "GET".into(),
            headers: vec![],
            keepalive: true,
        };
        Plan {
            mix: Mix::new(&t, "h", &["/".to_string()], Order::Weighted(vec![1.0]), &[]),
            addr: "127.0.0.1:1".parse().unwrap(),
            connections: 2,
            threads: 1,
            pipeline,
            keepalive: true,
            timeout_ns: 1_000_000_000,
            rate,
            requests,
            warmup_ns: 0,
            duration_ns: Some(10_000_000_000),
            seed: 1,
        }
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

    #[test]
    fn closed_loop_request_response_cycle() {
        let p = plan(None, 1, Some(3));
        let mut d = Driver::new(&p, 0, 2);
        d.poll(0);
        assert_eq!(d.actions, [Action::Connect(0), Action::Connect(1)]);
        d.actions.clear();
        d.on_connected(0);
        d.on_connected(1);
        d.poll(10);
        assert_eq!(d.actions, [Action::Send(1), Action::Send(0)]);
        d.actions.clear();
        assert!(d.outgoing(0).unwrap().starts_with(b"GET / HTTP/1.1\r\n"));
        d.on_sent(0, 4);
        assert_eq!(d.actions, [Action::Send(0)], "partial send continues");
        assert_eq!(d.outgoing(0).unwrap()[0], b'/');
        d.actions.clear();
        d.on_sent(0, 1000);
        d.on_sent(1, 1000);
        d.on_data(0, &OK[..10], 500);
        d.on_data(0, &OK[10..], 1010);
        d.poll(1010);
        assert_eq!(d.actions, [Action::Send(0)], "quota of 3 allows one more");
        d.actions.clear();
        d.on_sent(0, 1000);
        d.on_data(0, OK, 2010);
        d.on_data(1, OK, 3010);
        d.poll(3010);
        assert!(d.actions.is_empty());
        assert_eq!(d.finished(), Some(3010));
        assert_eq!(d.stats.requests, 3);
        assert_eq!(d.stats.status[200], 3);
        assert_eq!(d.stats.hist.max(), 3);
    }

    #[test]
    fn open_loop_latency_counts_from_intended_time() {
        // 1000 req/s: requests due at 0, 1ms, 2ms, ...
        let p = plan(Some(1000.0), 1, None);
        let mut d = Driver::new(&p, 0, 1);
        d.poll(0);
        d.on_connected(0);
        d.actions.clear();
        // The only connection is busy for 5 ms; requests keep falling due.
        d.poll(0);
        d.on_sent(0, 1000);
        d.actions.clear();
        d.poll(4_000_000);
        assert!(d.actions.is_empty(), "busy connection takes nothing");
        d.on_data(0, OK, 5_000_000);
        d.poll(5_000_000);
        d.on_sent(0, 1000);
        // Request due at 1 ms, sent at 5 ms, answered at 5.1 ms: 4.1 ms.
        d.on_data(0, OK, 5_100_000);
        assert_eq!(d.stats.requests, 2);
        assert!(d.stats.hist.equivalent(d.stats.hist.max(), 5000));
        assert!(d.stats.hist.equivalent(d.stats.hist.min(), 4100));
    }

    #[test]
    fn schedule_interleaves_threads_even_below_thread_count() {
        // 1 req/s over 4 threads: thread 2 owns requests 2, 6, 10, ...
        let mut p = plan(Some(1.0), 1, None);
        p.threads = 4;
        let d = Driver::new(&p, 2, 1);
        let s = d.schedule.as_ref().unwrap();
        assert_eq!(s.peek(), Some((2, 2_000_000_000)));
        assert_eq!(s.count_before(2_000_000_001), 3);
        assert_eq!(s.count_before(2_000_000_000), 2);
    }

    #[test]
    fn pipelined_batch_and_failures_are_classified() {
        let p = plan(None, 3, None);
        let mut d = Driver::new(&p, 0, 1);
        d.poll(0);
        d.on_connected(0);
        d.actions.clear();
        d.poll(1);
        let out = d.outgoing(0).unwrap();
        assert_eq!(out.windows(4).filter(|w| w == b"GET ").count(), 3);
        d.on_sent(0, out.len());
        // One full answer, then half a body, then the server goes away.
        d.on_data(0, OK, 2);
        d.on_data(0, &OK[..OK.len() - 1], 3);
        d.on_eof(0, 4);
        assert_eq!(d.stats.requests, 1);
        assert_eq!((d.stats.errors.short_body, d.stats.errors.reset), (1, 1));
        assert_eq!(d.actions.last(), Some(&Action::Close(0)));
        d.actions.clear();
        d.poll(5);
        assert_eq!(d.actions, [Action::Connect(0)], "reconnects");
        // Garbage is a parse error; a silent server times out.
        d.on_connected(0);
        d.actions.clear();
        d.poll(6);
        d.on_data(0, b"NOT HTTP\r\n\r\n", 7);
        assert_eq!(d.stats.errors.parse, 1);
        d.poll(8);
        d.on_connected(0);
        d.poll(9);
        d.poll(2_000_000_000);
        assert_eq!(d.stats.errors.timeout, 3);
    }
}
