//! bypass: an HTTP/1.1 server for a Django `STATIC_ROOT` and `MEDIA_ROOT`, on io_uring with an
//! epoll fallback.
//!
//! The crate is split so that everything deciding *what* to answer is pure code, and only the
//! engines touch sockets:
//! - [`http`]: request parsing and framing checks, response heads, dates;
//! - [`files`]: mounts, request-path decoding, the Django manifest, content types, and the one
//!   place that opens files (`openat2` beneath the mount root);
//! - [`serve`]: the response decision (validators, ranges, content negotiation, cache policy);
//! - [`proxy`]: the reverse proxy to the app server (request and response rewriting,
//!   X-Accel-Redirect), as pure state machines;
//! - [`cache`]: the per-worker hot-asset cache (bytes and rendered heads) and its telemetry;
//! - [`conn`]: the per-connection state machine every engine drives (pipelining, keep-alive);
//! - [`engine`]: the written engine contract and the engines that move bytes.

/// Writes one line to stderr, ignoring failure. `eprintln!` panics when stderr is a closed pipe
/// (a supervisor or log collector that went away); that must never kill a worker, or the signal
/// thread before it requests shutdown.
macro_rules! log {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod cache;
pub mod config;
pub mod conn;
pub mod engine;
pub mod files;
pub mod http;
pub mod proxy;
pub mod serve;

mod runtime;

pub use runtime::run;
