//! What one worker thread measured: a latency histogram, byte and status
//! counts, errors by kind. Threads never share these; they are merged once at
//! the end.

use hdrhistogram::Histogram;

/// Latencies are recorded in microseconds, from 1 us to one hour, at 3
/// significant digits (0.1% resolution).
pub const HIST_MAX_US: u64 = 3_600_000_000;

/// Failures, by what went wrong.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Errors {
    /// A connection could not be established (refused, unreachable, timed out).
    pub connect: u64,
    /// No complete response within `--timeout`.
    pub timeout: u64,
    /// The connection was reset or closed with the request unanswered.
    pub reset: u64,
    /// The connection closed before the announced body length arrived.
    pub short_body: u64,
    /// The response could not be parsed as HTTP/1.1.
    pub parse: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.connect
            + self.timeout
            + self.reset
            + self.short_body
            + self.parse
            + self.status_4xx
            + self.status_5xx
    }

    pub fn add(&mut self, o: &Errors) {
        self.connect += o.connect;
        self.timeout += o.timeout;
        self.reset += o.reset;
        self.short_body += o.short_body;
        self.parse += o.parse;
        self.status_4xx += o.status_4xx;
        self.status_5xx += o.status_5xx;
    }

    /// (name, count) pairs in the order reports show them.
    pub fn named(&self) -> [(&'static str, u64); 7] {
        [
            ("connect", self.connect),
            ("timeout", self.timeout),
            ("reset", self.reset),
            ("short_body", self.short_body),
            ("parse", self.parse),
            ("status_4xx", self.status_4xx),
            ("status_5xx", self.status_5xx),
        ]
    }
}

/// One thread's measurements over the measured window.
pub struct Stats {
    pub hist: Histogram<u64>,
    /// Complete responses, whatever their status.
    pub requests: u64,
    /// Response bytes received (heads and bodies).
    pub bytes: u64,
    pub errors: Errors,
    /// Responses by status code; index is the code (100..=999).
    pub status: Vec<u64>,
    /// Open loop: requests whose intended send time passed but that could not
    /// be sent before the end because every connection was busy.
    pub unsent: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            hist: new_histogram(),
            requests: 0,
            bytes: 0,
            errors: Errors::default(),
            status: vec![0; 1000],
            unsent: 0,
        }
    }

    /// Records one complete response.
    #[inline]
    pub fn response(&mut self, status: u16, latency_ns: u64) {
        self.requests += 1;
        self.hist.saturating_record((latency_ns / 1000).max(1));
        if let Some(c) = self.status.get_mut(usize::from(status)) {
            *c += 1;
        }
        match status {
            400..=499 => self.errors.status_4xx += 1,
            500..=599 => self.errors.status_5xx += 1,
            _ => {}
        }
    }

    pub fn merge(&mut self, o: &Stats) {
        // Both histograms share bounds, so adding cannot fail.
        let _ = self.hist.add(&o.hist);
        self.requests += o.requests;
        self.bytes += o.bytes;
        self.errors.add(&o.errors);
        for (a, b) in self.status.iter_mut().zip(&o.status) {
            *a += b;
        }
        self.unsent += o.unsent;
    }
}

pub fn new_histogram() -> Histogram<u64> {
    // Bounds are constants known to be valid.
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_merges() {
        let mut a = Stats::new();
        a.response(200, 1_500_000);
        a.response(503, 10);
        let mut b = Stats::new();
        b.response(404, 3_000_000);
        a.merge(&b);
        assert_eq!(a.requests, 3);
        assert_eq!(a.status[200] + a.status[503] + a.status[404], 3);
        assert_eq!((a.errors.status_4xx, a.errors.status_5xx), (1, 1));
        assert_eq!(a.hist.min(), 1);
        assert!(a.hist.equivalent(a.hist.max(), 3000));
    }
}
