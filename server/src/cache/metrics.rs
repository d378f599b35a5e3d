//! Cache telemetry: per-worker counters that only their worker writes, and the admin listener
//! that renders them in the Prometheus text format.
//!
//! Each counter has exactly one writer, so a worker updates it with a plain load and store
//! (no locked read-modify-write, no shared cache line with other workers); the metrics thread
//! only reads. The registry of workers is locked when a worker starts and when `/metrics` is
//! scraped, never on the data path.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::shards::{self, BUCKETS};

/// Upper bounds (bytes) of the size classes hits are counted in; the last class is open.
pub const SIZE_CLASSES: [u64; 6] = [1 << 10, 8 << 10, 64 << 10, 512 << 10, 4 << 20, u64::MAX];

/// A counter with one writer.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        // Single writer: a plain load and store is enough, and much cheaper than fetch_add.
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
    #[inline]
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One worker's cache counters.
#[derive(Debug)]
pub struct WorkerStats {
    pub hits: Counter,
    pub misses: Counter,
    pub hit_bytes: Counter,
    pub resident_bytes: Counter,
    pub entries: Counter,
    pub capacity_bytes: Counter,
    pub evictions: Counter,
    pub invalidations: Counter,
    /// Misses that could not be admitted (changed while copied, too large, too fresh).
    pub not_admitted: Counter,
    pub size_class_hits: [Counter; SIZE_CLASSES.len()],
    /// SHARDS: bytes of sampled re-references per reuse-distance bucket.
    pub distance_bytes: Box<[Counter]>,
    /// SHARDS: bytes of sampled first references.
    pub first_bytes: Counter,
}

impl Default for WorkerStats {
    fn default() -> Self {
        WorkerStats {
            hits: Counter::default(),
            misses: Counter::default(),
            hit_bytes: Counter::default(),
            resident_bytes: Counter::default(),
            entries: Counter::default(),
            capacity_bytes: Counter::default(),
            evictions: Counter::default(),
            invalidations: Counter::default(),
            not_admitted: Counter::default(),
            size_class_hits: Default::default(),
            distance_bytes: (0..BUCKETS).map(|_| Counter::default()).collect(),
            first_bytes: Counter::default(),
        }
    }
}

impl WorkerStats {
    #[inline]
    pub fn hit(&self, bytes: u64) {
        self.hits.add(1);
        self.hit_bytes.add(bytes);
        let class = SIZE_CLASSES
            .iter()
            .position(|&limit| bytes <= limit)
            .unwrap_or(SIZE_CLASSES.len() - 1);
        self.size_class_hits[class].add(1);
    }
}

/// Every worker's counters.
#[derive(Debug, Default)]
pub struct Telemetry {
    workers: Mutex<Vec<Arc<WorkerStats>>>,
}

impl Telemetry {
    /// A new worker's counters, registered for rendering.
    pub fn register(&self) -> Arc<WorkerStats> {
        let stats = Arc::new(WorkerStats::default());
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::clone(&stats));
        stats
    }

    /// The Prometheus text exposition of all counters.
    pub fn render(&self) -> String {
        let workers = self
            .workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let sum = |f: &dyn Fn(&WorkerStats) -> u64| workers.iter().map(|w| f(w)).sum::<u64>();
        let mut out = String::with_capacity(4096);
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "bypass_cache_hits_total",
            "counter",
            "Requests answered from the content cache.",
            sum(&|w| w.hits.get()),
        );
        metric(
            "bypass_cache_misses_total",
            "counter",
            "Cacheable requests not answered from the content cache.",
            sum(&|w| w.misses.get()),
        );
        metric(
            "bypass_cache_hit_bytes_total",
            "counter",
            "Body bytes of the representations answered from the cache.",
            sum(&|w| w.hit_bytes.get()),
        );
        metric(
            "bypass_cache_resident_bytes",
            "gauge",
            "Bytes held by the cache (bodies, heads and bookkeeping).",
            sum(&|w| w.resident_bytes.get()),
        );
        metric(
            "bypass_cache_capacity_bytes",
            "gauge",
            "The cache budget (--cache-size), all workers.",
            sum(&|w| w.capacity_bytes.get()),
        );
        metric(
            "bypass_cache_entries",
            "gauge",
            "Representations held by the cache.",
            sum(&|w| w.entries.get()),
        );
        metric(
            "bypass_cache_evictions_total",
            "counter",
            "Representations evicted to make room.",
            sum(&|w| w.evictions.get()),
        );
        metric(
            "bypass_cache_invalidations_total",
            "counter",
            "Representations dropped because the file or the manifest changed.",
            sum(&|w| w.invalidations.get()),
        );
        metric(
            "bypass_cache_not_admitted_total",
            "counter",
            "Misses not copied in: file changing while read, too new, or too large.",
            sum(&|w| w.not_admitted.get()),
        );
        let _ = writeln!(
            out,
            "# HELP bypass_cache_size_class_hits_total Cache hits by representation size.\n\
             # TYPE bypass_cache_size_class_hits_total counter"
        );
        for (i, limit) in SIZE_CLASSES.iter().enumerate() {
            let le = if *limit == u64::MAX {
                "+Inf".to_string()
            } else {
                limit.to_string()
            };
            let n = sum(&|w| w.size_class_hits[i].get());
            let _ = writeln!(
                out,
                "bypass_cache_size_class_hits_total{{le_bytes=\"{le}\"}} {n}"
            );
        }
        // Working set: each worker has its own cache and its own reference stream, so each
        // needs its own working set; the total is their sum.
        let _ = writeln!(
            out,
            "# HELP bypass_cache_working_set_bytes Estimated cache size (all workers) for the \
             given byte hit ratio over re-references (SHARDS, 10% sample).\n\
             # TYPE bypass_cache_working_set_bytes gauge"
        );
        for ratio in ["0.9", "0.99"] {
            let r: f64 = ratio.parse().unwrap_or(0.99);
            let total: u64 = workers
                .iter()
                .filter_map(|w| {
                    let hist: Vec<u64> = w.distance_bytes.iter().map(Counter::get).collect();
                    shards::working_set(&hist, r)
                })
                .sum();
            let _ = writeln!(
                out,
                "bypass_cache_working_set_bytes{{hit_ratio=\"{ratio}\"}} {total}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP bypass_cache_sampled_first_reference_bytes_total Bytes of sampled first \
             references (misses at any cache size).\n\
             # TYPE bypass_cache_sampled_first_reference_bytes_total counter\n\
             bypass_cache_sampled_first_reference_bytes_total {}",
            sum(&|w| w.first_bytes.get())
        );
        out
    }
}

/// Binds the admin listener; the caller logs the address and calls [`serve`] on a thread.
pub fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr).map_err(|e| format!("--metrics {addr}: cannot listen: {e}"))
}

/// Answers `GET /metrics` (anything else: 404) one connection at a time, on its own thread,
/// so a scrape never runs on a worker.
pub fn serve(listener: TcpListener, telemetry: Arc<Telemetry>) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
        let mut reader = BufReader::new(match stream.try_clone() {
            Ok(s) => s,
            Err(_) => continue,
        });
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            continue;
        }
        // Skip the rest of the head.
        let mut header = String::new();
        loop {
            header.clear();
            match reader.read_line(&mut header) {
                Ok(0) | Err(_) => break,
                Ok(_) if header == "\r\n" || header == "\n" => break,
                Ok(_) => {}
            }
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let (status, body) = if (method == "GET" || method == "HEAD")
            && (target == "/metrics" || target.starts_with("/metrics?"))
        {
            ("200 OK", telemetry.render())
        } else {
            ("404 Not Found", "not found\n".to_string())
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(head.as_bytes());
        if method != "HEAD" {
            let _ = stream.write_all(body.as_bytes());
        }
    }
}
