//! HTTP/1.1 wire format without I/O: parsing request heads, rendering response heads, dates.

pub mod date;
pub mod headers;
pub mod request;
pub mod response;

/// The value of one hexadecimal digit (either case), as in percent-escapes and chunk sizes.
pub fn hex_digit(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}
