//! bypass-load: an HTTP/1.1 load generator that measures honestly (open loop,
//! coordinated-omission correction, HdrHistogram) at less client CPU per request than wrk.

pub mod cli;
pub mod compare;
pub mod driver;
pub mod engine;
pub mod error;
pub mod histcodec;
pub mod mix;
pub mod parse;
pub mod procstat;
pub mod render;
pub mod report;
pub mod runner;
pub mod sources;
pub mod stats;
pub mod sweep;
pub mod units;
pub mod url;
