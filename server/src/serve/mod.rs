//! The response decision: given a parsed request and what is on disk, which status, which
//! headers and which bytes. Pure code; the engines only carry out what it decides.

pub mod conditional;
pub mod negotiate;
pub mod range;
