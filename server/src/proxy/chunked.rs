//! An incremental, strict decoder for the chunked transfer coding (RFC 9112 §7.1), used for
//! request bodies on their way to the app and for response bodies on their way back.
//!
//! Strict because a proxy that reads chunk framing differently from its upstream is how
//! requests get smuggled: sizes are hex digits only and may not overflow, every line ends in
//! CRLF (never a bare LF), and extensions and trailers are bounded and dropped.

use crate::http::hex_digit;

/// Longest chunk-size line (size and extensions) or trailer section accepted.
const MAX_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkError {
    /// A size with something other than hex digits, or too many of them.
    BadSize,
    /// A size that does not fit in 64 bits.
    SizeOverflow,
    /// A line that does not end in CRLF, or data not followed by CRLF.
    BadLineEnd,
    /// A chunk line or the trailer section is longer than any sane one.
    TooLong,
}

impl ChunkError {
    pub fn reason(self) -> &'static str {
        match self {
            ChunkError::BadSize => "malformed chunk size",
            ChunkError::SizeOverflow => "chunk size overflows",
            ChunkError::BadLineEnd => "malformed chunk line ending",
            ChunkError::TooLong => "chunk line or trailers too long",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading the size digits.
    Size {
        digits: u8,
    },
    /// After the size: extensions up to CR.
    Extension,
    /// Expecting the LF of a size line.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// Expecting the CRLF after chunk data.
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines; `at_line_start` tells an empty line (the end).
    Trailer {
        at_line_start: bool,
    },
    TrailerLf {
        empty_line: bool,
    },
    Done,
}

/// One step of decoding: how much input was used and which part of it is body data.
#[derive(Debug, PartialEq, Eq)]
pub struct Step {
    /// Input bytes consumed.
    pub used: usize,
    /// Body data within the consumed input (`data.start..data.end`), possibly empty.
    pub data: std::ops::Range<usize>,
}

#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: State,
    /// The current chunk's size while reading it, then the data bytes still to come.
    remaining: u64,
    /// Bytes of the current line (size line or trailers), for the length limits.
    line_len: usize,
    trailer_len: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: State::Size { digits: 0 },
            remaining: 0,
            line_len: 0,
            trailer_len: 0,
        }
    }
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from the front of `input` up to the end of the next run of body data (or of the
    /// body). Call repeatedly until all input is used or [`ChunkedDecoder::is_done`]; bytes after
    /// the end of the body are not consumed.
    pub fn step(&mut self, input: &[u8]) -> Result<Step, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Size { digits } => {
                    if let Some(v) = hex_digit(b) {
                        // Leading zeros are harmless (and bounded by the line limit); a digit
                        // that would shift bits out is an overflow.
                        if self.remaining >> 60 != 0 {
                            return Err(ChunkError::SizeOverflow);
                        }
                        self.remaining = self.remaining << 4 | u64::from(v);
                        self.state = State::Size {
                            digits: digits.saturating_add(1),
                        };
                        self.line(1)?;
                    } else if digits == 0 {
                        return Err(ChunkError::BadSize);
                    } else if b == b'\r' {
                        self.state = State::SizeLf;
                    } else if b == b';' || b == b' ' || b == b'\t' {
                        // Extensions (and the whitespace some clients put before them) are
                        // allowed and dropped.
                        self.state = State::Extension;
                        self.line(1)?;
                    } else if b == b'\n' {
                        return Err(ChunkError::BadLineEnd);
                    } else {
                        return Err(ChunkError::BadSize);
                    }
                    i += 1;
                }
                State::Extension => {
                    if b == b'\r' {
                        self.state = State::SizeLf;
                    } else if b == b'\n' || (b.is_ascii_control() && b != b'\t') {
                        return Err(ChunkError::BadLineEnd);
                    } else {
                        self.line(1)?;
                    }
                    i += 1;
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadLineEnd);
                    }
                    i += 1;
                    self.line_len = 0;
                    if self.remaining == 0 {
                        self.state = State::Trailer {
                            at_line_start: true,
                        };
                    } else {
                        self.state = State::Data;
                    }
                }
                State::Data => {
                    let n = (input.len() - i)
                        .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                    self.remaining -= n as u64;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                    return Ok(Step {
                        used: i + n,
                        data: i..i + n,
                    });
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError::BadLineEnd);
                    }
                    self.state = State::DataLf;
                    i += 1;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadLineEnd);
                    }
                    self.state = State::Size { digits: 0 };
                    i += 1;
                }
                State::Trailer { at_line_start } => {
                    self.trailer_len += 1;
                    if self.trailer_len > MAX_TRAILERS {
                        return Err(ChunkError::TooLong);
                    }
                    if b == b'\r' {
                        self.state = State::TrailerLf {
                            empty_line: at_line_start,
                        };
                    } else if b == b'\n' {
                        return Err(ChunkError::BadLineEnd);
                    } else {
                        self.state = State::Trailer {
                            at_line_start: false,
                        };
                    }
                    i += 1;
                }
                State::TrailerLf { empty_line } => {
                    if b != b'\n' {
                        return Err(ChunkError::BadLineEnd);
                    }
                    i += 1;
                    if empty_line {
                        self.state = State::Done;
                        return Ok(Step {
                            used: i,
                            data: i..i,
                        });
                    }
                    self.state = State::Trailer {
                        at_line_start: true,
                    };
                }
                State::Done => break,
            }
        }
        Ok(Step {
            used: i,
            data: i..i,
        })
    }

    fn line(&mut self, n: usize) -> Result<(), ChunkError> {
        self.line_len += n;
        if self.line_len > MAX_LINE {
            Err(ChunkError::TooLong)
        } else {
            Ok(())
        }
    }
}

/// Appends `data` as one chunk of the chunked coding.
pub fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk and the end of an (empty) trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `piece` bytes; returns the body and the bytes left over.
    fn decode(input: &[u8], piece: usize) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut d = ChunkedDecoder::default();
        let mut body = Vec::new();
        let mut pos = 0;
        while pos < input.len() && !d.is_done() {
            let end = (pos + piece).min(input.len());
            let mut chunk = &input[pos..end];
            while !chunk.is_empty() && !d.is_done() {
                let step = d.step(chunk)?;
                body.extend_from_slice(&chunk[step.data.clone()]);
                pos += step.used;
                chunk = &chunk[step.used..];
                if step.used == 0 {
                    break;
                }
            }
        }
        Ok((body, input.len() - pos, d.is_done()))
    }

    #[test]
    fn decodes_in_any_split() {
        let wire =
            b"5\r\nhello\r\n1;ext=\"x\"\r\n \r\nA\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        for piece in 1..wire.len() {
            let (body, left, done) = decode(wire, piece).unwrap();
            assert_eq!(body, b"hello 0123456789", "piece {piece}");
            assert_eq!(left, 4);
            assert!(done);
        }
    }

    #[test]
    fn incomplete_bodies_are_not_done() {
        let (body, _, done) = decode(b"5\r\nhel", 64).unwrap();
        assert_eq!(body, b"hel");
        assert!(!done);
        let (_, _, done) = decode(b"0\r\n", 64).unwrap();
        assert!(!done);
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        for (wire, want) in [
            (&b"ffffffffffffffffff\r\n"[..], ChunkError::SizeOverflow),
            (b"10000000000000000\r\n", ChunkError::SizeOverflow),
            (b"-1\r\n", ChunkError::BadSize),
            (b"0x5\r\nhello\r\n", ChunkError::BadSize),
            (b"\r\n", ChunkError::BadSize),
            (b"5\nhello\r\n", ChunkError::BadLineEnd),
            (b"5\r\nhelloXX", ChunkError::BadLineEnd),
            (b"5\r\nhello\n0\r\n\r\n", ChunkError::BadLineEnd),
            (b"0\r\nX: y\n\r\n", ChunkError::BadLineEnd),
        ] {
            assert_eq!(decode(wire, 64).unwrap_err(), want, "{wire:?}");
        }
        let long = format!("1;{}\r\n", "x".repeat(MAX_LINE));
        assert_eq!(
            decode(long.as_bytes(), 64).unwrap_err(),
            ChunkError::TooLong
        );
    }

    #[test]
    fn largest_size_fits() {
        let mut d = ChunkedDecoder::default();
        d.step(b"fffffffffffffff\r\n").unwrap();
        assert_eq!(d.remaining, 0x0fff_ffff_ffff_ffff);
    }

    #[test]
    fn encodes_chunks() {
        let mut out = Vec::new();
        encode_chunk(b"hello world", &mut out);
        encode_chunk(b"", &mut out);
        out.extend_from_slice(LAST_CHUNK);
        let (body, left, done) = decode(&out, 3).unwrap();
        assert_eq!(
            (body.as_slice(), left, done),
            (&b"hello world"[..], 0, true)
        );
    }
}
