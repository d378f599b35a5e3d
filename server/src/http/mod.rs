//! HTTP/1.1 wire format without I/O: parsing request heads, rendering response heads, dates.

pub mod date;
pub mod headers;
pub mod request;
pub mod response;
