//! bypass-bench: criterion benches of the core's hot functions and the end-to-end comparison
//! of bypass against its peers (nginx, gunicorn + WhiteNoise, static-web-server), on the same
//! real Django `collectstatic` tree, every server pinned to CPU 0 and bypass-load to CPU 1.
//!
//! - [`suite`]: the contenders, the workloads, and which applies to which;
//! - [`contender`]: starting each one (and telling a *missing* one from a *failed* one);
//! - [`verify`]: what a correct answer is, checked before anything is measured;
//! - [`run`]: the interleaved runs of bypass-load, and the results directory;
//! - [`summary`], [`report`], [`charts`], [`results`]: `summary.json`, `report.md`, `SETUP.md`
//!   and the SVG charts;
//! - [`gate`]: the CI gate against the committed reference run;
//! - [`null`]: the ceiling, a null responder on io_uring;
//! - [`client`]: a small blocking HTTP/1.1 client (checks, and the round-trip bench).

pub mod charts;
pub mod cli;
pub mod client;
pub mod contender;
pub mod gate;
pub mod null;
pub mod procs;
pub mod report;
pub mod results;
pub mod run;
pub mod suite;
pub mod summary;
pub mod verify;
