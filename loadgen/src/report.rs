//! A run's results: the human summary and the JSON document (its fields are
//! documented in `loadgen/schema.json` and `loadgen/README.md`).

use serde_json::{Map, Value, json};

use crate::histcodec;
use crate::procstat::Usage;
use crate::stats::Stats;
use crate::units::{fmt_bytes, fmt_us};

/// Bumped whenever a field changes meaning or disappears; adding fields does not.
pub const SCHEMA_VERSION: u64 = 1;

/// How the run was set up, as reported.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub url: String,
    pub distinct_requests: usize,
    pub method: String,
    /// Open loop at this rate; `None` = closed loop.
    pub rate: Option<f64>,
    pub connections: usize,
    pub threads: usize,
    pub pipeline: usize,
    pub keepalive: bool,
    pub engine: &'static str,
    pub warmup_s: f64,
}

pub struct Report {
    pub info: RunInfo,
    /// Length of the measured window, seconds.
    pub duration_s: f64,
    pub stats: Stats,
    pub server: Option<Usage>,
}

/// Latency summary, microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub min: u64,
    pub max: u64,
    pub mean: f64,
    pub stdev: f64,
}

impl Report {
    pub fn rps(&self) -> f64 {
        per_sec(self.stats.requests as f64, self.duration_s)
    }

    pub fn bytes_per_sec(&self) -> f64 {
        per_sec(self.stats.bytes as f64, self.duration_s)
    }

    pub fn latency(&self) -> Latency {
        let h = &self.stats.hist;
        if h.is_empty() {
            return Latency::default();
        }
        // `highest_equivalent` makes the reported value an upper bound of the
        // bucket, as wrk2 and HdrHistogram's own percentile output do.
        let q = |q: f64| h.highest_equivalent(h.value_at_quantile(q));
        Latency {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            p9999: q(0.9999),
            min: h.min(),
            max: h.highest_equivalent(h.max()),
            mean: h.mean(),
            stdev: h.stdev(),
        }
    }

    /// Server CPU microseconds per completed request, when measured.
    pub fn server_cpu_us_per_request(&self) -> Option<f64> {
        let s = self.server.as_ref()?;
        (self.stats.requests > 0).then(|| s.cpu_s() * 1e6 / self.stats.requests as f64)
    }

    pub fn to_json(&self) -> Value {
        let l = self.latency();
        let s = &self.stats;
        let mut errors = Map::new();
        errors.insert("total".into(), json!(s.errors.total()));
        for (name, n) in s.errors.named() {
            errors.insert(name.into(), json!(n));
        }
        let mut status = Map::new();
        for (code, &n) in s.status.iter().enumerate() {
            if n > 0 {
                status.insert(code.to_string(), json!(n));
            }
        }
        let i = &self.info;
        let mut doc = json!({
            "schema_version": SCHEMA_VERSION,
            "tool": "bypass-load",
            "tool_version": env!("CARGO_PKG_VERSION"),
            "url": i.url,
            "distinct_requests": i.distinct_requests,
            "method": i.method,
            "mode": if i.rate.is_some() { "open" } else { "closed" },
            "target_rate": i.rate,
            "connections": i.connections,
            "threads": i.threads,
            "pipeline": i.pipeline,
            "keepalive": i.keepalive,
            "engine": i.engine,
            "warmup_s": i.warmup_s,
            "duration_s": self.duration_s,
            "requests": s.requests,
            "bytes": s.bytes,
            "rps": self.rps(),
            "bytes_per_sec": self.bytes_per_sec(),
            "latency_us": {
                "p50": l.p50, "p90": l.p90, "p99": l.p99, "p999": l.p999, "p9999": l.p9999,
                "min": l.min, "max": l.max, "mean": l.mean, "stdev": l.stdev,
            },
            "errors": errors,
            "status": status,
            "unsent": s.unsent,
            "histogram": {
                "unit": "us",
                "significant_digits": 3,
                "encoding": "hdrhistogram-v2-deflate-base64",
                "data": histcodec::encode(&s.hist),
            },
        });
        if let Some(u) = &self.server {
            doc["server"] = json!({
                "pids": u.pids,
                "user_s": u.user_s,
                "system_s": u.system_s,
                "cpu_s": u.cpu_s(),
                "cpu_us_per_request": self.server_cpu_us_per_request(),
                "peak_rss_bytes": u.peak_rss_bytes,
            });
        }
        doc
    }

    /// The human summary printed at the end of a run.
    pub fn summary(&self) -> String {
        let i = &self.info;
        let s = &self.stats;
        let l = self.latency();
        let mut out = String::new();
        let mode = match i.rate {
            Some(r) => format!("open loop at {r} req/s"),
            None => "closed loop".to_string(),
        };
        let plural = |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
        out += &format!(
            "{} of {}{}, {}, {}, {}{}, {}\n",
            fmt_secs(self.duration_s),
            i.url,
            if i.distinct_requests > 1 {
                format!(" (+{} more requests in the mix)", i.distinct_requests - 1)
            } else {
                String::new()
            },
            mode,
            plural(i.connections, "connection"),
            plural(i.threads, "thread"),
            if i.pipeline > 1 {
                format!(", pipeline {}", i.pipeline)
            } else {
                String::new()
            },
            i.engine,
        );
        out += &format!(
            "  Requests  {} in {}: {:.1} req/s, {}/s\n",
            s.requests,
            fmt_secs(self.duration_s),
            self.rps(),
            fmt_bytes(self.bytes_per_sec())
        );
        if s.requests > 0 {
            out += &format!(
                "  Latency   p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {}  (mean {}, stdev {})\n",
                fmt_us(l.p50 as f64),
                fmt_us(l.p90 as f64),
                fmt_us(l.p99 as f64),
                fmt_us(l.p999 as f64),
                fmt_us(l.p9999 as f64),
                fmt_us(l.max as f64),
                fmt_us(l.mean),
                fmt_us(l.stdev),
            );
        }
        let codes: Vec<String> = s
            .status
            .iter()
            .enumerate()
            .filter(|&(_, &n)| n > 0)
            .map(|(c, n)| format!("{c}: {n}"))
            .collect();
        if !codes.is_empty() {
            out += &format!("  Status    {}\n", codes.join(", "));
        }
        let errs: Vec<String> = s
            .errors
            .named()
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{} {n}", k.replace('_', " ")))
            .collect();
        out += &format!(
            "  Errors    {}\n",
            if errs.is_empty() {
                "none".to_string()
            } else {
                errs.join(", ")
            }
        );
        if s.unsent > 0 {
            out += &format!(
                "  Backlog   {} requests fell due but were never sent (every connection busy): the target rate was not reached\n",
                s.unsent
            );
        }
        if let Some(u) = &self.server {
            out += &format!(
                "  Server    {} CPU/request ({:.2}s user + {:.2}s system), peak RSS {}\n",
                self.server_cpu_us_per_request()
                    .map_or("n/a".to_string(), |v| format!("{v:.2}us")),
                u.user_s,
                u.system_s,
                fmt_bytes(u.peak_rss_bytes as f64)
            );
        }
        out
    }
}

fn per_sec(n: f64, secs: f64) -> f64 {
    if secs > 0.0 { n / secs } else { 0.0 }
}

fn fmt_secs(s: f64) -> String {
    format!("{s:.2}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let mut stats = Stats::new();
        for i in 1..=1000u64 {
            stats.response(200, i * 1000);
        }
        stats.response(503, 5_000_000);
        stats.errors.timeout = 2;
        Report {
            info: RunInfo {
                url: "http://h/".into(),
                distinct_requests: 1,
                method: "GET".into(),
                rate: None,
                connections: 4,
                threads: 1,
                pipeline: 1,
                keepalive: true,
                engine: "io_uring",
                warmup_s: 0.0,
            },
            duration_s: 2.0,
            stats,
            server: Some(Usage {
                pids: vec![1],
                user_s: 0.5,
                system_s: 0.5,
                peak_rss_bytes: 4096,
            }),
        }
    }

    #[test]
    fn json_has_the_documented_numbers() {
        let r = report();
        let j = r.to_json();
        assert_eq!(j["requests"], 1001);
        assert_eq!(j["rps"], 500.5);
        assert_eq!(j["status"]["200"], 1000);
        assert_eq!(j["errors"]["status_5xx"], 1);
        assert_eq!(j["errors"]["total"], 3);
        let p50 = j["latency_us"]["p50"].as_u64().unwrap();
        assert!((500..=501).contains(&p50), "{p50}");
        let cpu = j["server"]["cpu_us_per_request"].as_f64().unwrap();
        assert!((cpu - 1e6 / 1001.0).abs() < 1e-6);
        let h = histcodec::decode(j["histogram"]["data"].as_str().unwrap()).unwrap();
        assert_eq!(h.len(), 1001);
    }

    #[test]
    fn summary_mentions_errors_and_server() {
        let s = report().summary();
        assert!(s.contains("500.5 req/s"), "{s}");
        assert!(s.contains("timeout 2, status 5xx 1"), "{s}");
        assert!(s.contains("Server    999.00us CPU/request"), "{s}");
    }
}
