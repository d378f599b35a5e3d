//! Minimal incremental HTTP/1.1 response parsing: status, framing
//! (Content-Length, chunked, read-to-close) and `Connection: close`; the body
//! is skipped, never stored.

/// Longest response head accepted; real servers send well under 8 KiB.
const MAX_HEAD: usize = 64 * 1024;
/// Longest head remembered for [`Parser`]'s repeat check.
const MAX_REMEMBERED_HEAD: usize = 1024;

/// A complete response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    pub status: u16,
    /// The server will close the connection after this response.
    pub close: bool,
}

/// Why a response could not be understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    BadHead,
    HeadTooLong,
    BadChunk,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Body(u64),
    ChunkSize {
        size: u64,
        digits: u8,
        ext: bool,
    },
    ChunkData(u64),
    /// The CRLF after a chunk's data; counts bytes still to skip.
    ChunkEnd(u8),
    /// Trailer lines after the last chunk; `len` is the current line's length.
    Trailer {
        len: u32,
    },
    ToClose,
}

/// Parser state for one connection.
pub struct Parser {
    state: State,
    /// Head bytes when a head arrives split across reads.
    partial: Vec<u8>,
    status: u16,
    close: bool,
    /// Bytes of the current response seen so far (to tell a short body from a clean close).
    seen: u64,
    /// The last complete head parsed and what it meant.
    last: Option<Remembered>,
}

/// A head's bytes and the parse they gave. A load test asks one server the
/// same thing over and over, and the answer's head is byte for byte the
/// previous one until its `Date` ticks over: comparing bytes costs a tenth of
/// parsing them, and equal bytes parse equally (the parse of a head reads
/// nothing past its blank line), so a repeat is taken from here.
struct Remembered {
    head: Vec<u8>,
    no_body: bool,
    status: u16,
    close: bool,
    state: State,
}

impl Default for Parser {
    fn default() -> Self {
        Parser {
            state: State::Head,
            partial: Vec::new(),
            status: 0,
            close: false,
            seen: 0,
            last: None,
        }
    }
}

impl Parser {
    /// Forgets any partial response (used when a connection is replaced).
    pub fn reset(&mut self) {
        self.state = State::Head;
        self.partial.clear();
        self.seen = 0;
    }

    /// Whether part of a response has been received but not all of it.
    pub fn mid_response(&self) -> bool {
        self.seen > 0
    }

    /// Consumes bytes from `data`; returns how many, and the response if one
    /// completed (then the caller feeds the rest again). `no_body` says the
    /// request was HEAD.
    pub fn feed(
        &mut self,
        data: &[u8],
        no_body: bool,
    ) -> Result<(usize, Option<Done>), ParseError> {
        let mut used = 0;
        while used < data.len() {
            let rest = &data[used..];
            match self.state {
                State::Head => {
                    let (n, complete) = self.head(rest, no_body)?;
                    used += n;
                    self.seen += n as u64;
                    if !complete {
                        continue;
                    }
                    if self.state == State::Head {
                        // A 1xx interim answer; the real one follows.
                        self.seen = 0;
                        continue;
                    }
                    if let Some(done) = self.finished() {
                        return Ok((used, Some(done)));
                    }
                }
                State::Body(left) => {
                    let n = left.min(rest.len() as u64);
                    used += n as usize;
                    self.seen += n;
                    self.state = State::Body(left - n);
                    if let Some(done) = self.finished() {
                        return Ok((used, Some(done)));
                    }
                }
                State::ChunkData(left) => {
                    let n = left.min(rest.len() as u64);
                    used += n as usize;
                    self.seen += n;
                    self.state = if left == n {
                        State::ChunkEnd(2)
                    } else {
                        State::ChunkData(left - n)
                    };
                }
                State::ChunkEnd(left) => {
                    let b = rest[0];
                    used += 1;
                    self.seen += 1;
                    self.state = match (left, b) {
                        (2, b'\r') => State::ChunkEnd(1),
                        (_, b'\n') => State::ChunkSize {
                            size: 0,
                            digits: 0,
                            ext: false,
                        },
                        _ => return Err(ParseError::BadChunk),
                    };
                }
                State::ChunkSize { size, digits, ext } => {
                    let b = rest[0];
                    used += 1;
                    self.seen += 1;
                    self.state = match b {
                        b'\n' if digits == 0 => return Err(ParseError::BadChunk),
                        b'\n' if size == 0 => State::Trailer { len: 0 },
                        b'\n' => State::ChunkData(size),
                        _ if ext || b == b'\r' => State::ChunkSize { size, digits, ext },
                        b';' | b' ' | b'\t' => State::ChunkSize {
                            size,
                            digits,
                            ext: true,
                        },
                        _ => {
                            let d = (b as char).to_digit(16).ok_or(ParseError::BadChunk)?;
                            if digits >= 15 {
                                return Err(ParseError::BadChunk);
                            }
                            State::ChunkSize {
                                size: size * 16 + u64::from(d),
                                digits: digits + 1,
                                ext,
                            }
                        }
                    };
                }
                State::Trailer { len } => {
                    let b = rest[0];
                    used += 1;
                    self.seen += 1;
                    match b {
                        b'\n' if len == 0 => {
                            self.state = State::Head;
                            return Ok((used, Some(self.done())));
                        }
                        b'\n' => self.state = State::Trailer { len: 0 },
                        b'\r' => {}
                        _ => self.state = State::Trailer { len: len + 1 },
                    }
                }
                State::ToClose => {
                    self.seen += rest.len() as u64;
                    used = data.len();
                }
            }
        }
        Ok((used, None))
    }

    /// The peer closed: completes a read-to-close body, or reports nothing.
    pub fn eof(&mut self) -> Option<Done> {
        if self.state == State::ToClose {
            self.state = State::Head;
            self.seen = 0;
            Some(Done {
                status: self.status,
                close: true,
            })
        } else {
            None
        }
    }

    fn done(&mut self) -> Done {
        self.seen = 0;
        Done {
            status: self.status,
            close: self.close,
        }
    }

    fn finished(&mut self) -> Option<Done> {
        if self.state == State::Body(0) {
            self.state = State::Head;
            Some(self.done())
        } else {
            None
        }
    }

    /// Parses a head from `rest` (plus any earlier partial bytes). Returns the
    /// bytes of `rest` consumed and whether the head is complete.
    fn head(&mut self, rest: &[u8], no_body: bool) -> Result<(usize, bool), ParseError> {
        if self.partial.is_empty() {
            match self.parse_head(rest, no_body)? {
                Some(n) => Ok((n, true)),
                None => {
                    if rest.len() > MAX_HEAD {
                        return Err(ParseError::HeadTooLong);
                    }
                    self.partial.extend_from_slice(rest);
                    Ok((rest.len(), false))
                }
            }
        } else {
            let before = self.partial.len();
            // Only as much as could still belong to the head is copied.
            let take = rest.len().min(MAX_HEAD + 1 - before.min(MAX_HEAD));
            self.partial.extend_from_slice(&rest[..take]);
            let buf = std::mem::take(&mut self.partial);
            let parsed = self.parse_head(&buf, no_body);
            self.partial = buf;
            match parsed? {
                Some(n) => {
                    self.partial.clear();
                    Ok((n - before, true))
                }
                None if self.partial.len() > MAX_HEAD => Err(ParseError::HeadTooLong),
                None => Ok((take, false)),
            }
        }
    }

    /// Parses a complete head at the start of `buf`, setting the body state.
    fn parse_head(&mut self, buf: &[u8], no_body: bool) -> Result<Option<usize>, ParseError> {
        if let Some(last) = &self.last {
            if last.no_body == no_body && buf.starts_with(&last.head) {
                self.status = last.status;
                self.close = last.close;
                self.state = last.state;
                return Ok(Some(last.head.len()));
            }
        }
        let parsed = self.parse_new_head(buf, no_body)?;
        if let Some(n) = parsed {
            // Interim answers are not kept: the final one follows at once.
            if n <= MAX_REMEMBERED_HEAD && self.state != State::Head {
                let last = self.last.get_or_insert_with(|| Remembered {
                    head: Vec::with_capacity(MAX_REMEMBERED_HEAD),
                    no_body,
                    status: 0,
                    close: false,
                    state: State::Head,
                });
                last.head.clear();
                last.head.extend_from_slice(&buf[..n]);
                last.no_body = no_body;
                last.status = self.status;
                last.close = self.close;
                last.state = self.state;
            }
        }
        Ok(parsed)
    }

    /// [`Parser::parse_head`] without the repeat check.
    fn parse_new_head(&mut self, buf: &[u8], no_body: bool) -> Result<Option<usize>, ParseError> {
        // Uninitialised slots: zeroing 48 of them (1.5 KiB) on every response cost more
        // than parsing a typical head's fields.
        let mut headers = [const { std::mem::MaybeUninit::uninit() }; 48];
        let mut resp = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            buf,
            &mut headers,
        );
        let n = match parsed {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(ParseError::HeadTooLong),
            Err(_) => return Err(ParseError::BadHead),
        };
        let status = resp.code.ok_or(ParseError::BadHead)?;
        let http10 = resp.version == Some(0);
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut close = http10;
        for h in resp.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let v = std::str::from_utf8(h.value).map_err(|_| ParseError::BadHead)?;
                let v: u64 = v.trim().parse().map_err(|_| ParseError::BadHead)?;
                if length.is_some_and(|l| l != v) {
                    return Err(ParseError::BadHead);
                }
                length = Some(v);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = h
                    .value
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if h.name.eq_ignore_ascii_case("connection") {
                for tok in h.value.split(|&b| b == b',') {
                    let tok = tok.trim_ascii();
                    if tok.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if tok.eq_ignore_ascii_case(b"keep-alive") {
                        close = false;
                    }
                }
            }
        }
        self.status = status;
        self.close = close;
        self.state = if (100..200).contains(&status) && status != 101 {
            State::Head
        } else if no_body || status == 204 || status == 304 {
            State::Body(0)
        } else if chunked {
            State::ChunkSize {
                size: 0,
                digits: 0,
                ext: false,
            }
        } else if let Some(len) = length {
            State::Body(len)
        } else {
            State::ToClose
        };
        Ok(Some(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `data` in pieces of `step` bytes, collecting completed responses.
    fn run(data: &[u8], step: usize, no_body: bool) -> Result<(Vec<Done>, Parser), ParseError> {
        let mut p = Parser::default();
        let mut out = Vec::new();
        for piece in data.chunks(step) {
            let mut rest = piece;
            while !rest.is_empty() {
                let (n, done) = p.feed(rest, no_body)?;
                rest = &rest[n..];
                out.extend(done);
            }
        }
        Ok((out, p))
    }

    #[test]
    fn content_length_and_pipelined_responses_in_any_split() {
        let two = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        for step in [1, 2, 3, 7, 50, two.len()] {
            let (got, p) = run(two, step, false).unwrap();
            assert_eq!(
                got,
                [
                    Done {
                        status: 200,
                        close: false
                    },
                    Done {
                        status: 404,
                        close: true
                    }
                ],
                "step {step}"
            );
            assert!(!p.mid_response());
        }
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        for step in [1, 4, r.len()] {
            let (got, _) = run(r, step, false).unwrap();
            assert_eq!(got.iter().map(|d| d.status).collect::<Vec<_>>(), [200, 204]);
        }
        let bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert_eq!(run(bad, 100, false).err(), Some(ParseError::BadChunk));
        let bad_end = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxYZ";
        assert_eq!(run(bad_end, 100, false).err(), Some(ParseError::BadChunk));
    }

    #[test]
    fn short_body_is_visible_and_close_delimited_body_completes_at_eof() {
        let (got, p) = run(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
            100,
            false,
        )
        .unwrap();
        assert!(got.is_empty() && p.mid_response());
        let (got, mut p) = run(b"HTTP/1.0 200 OK\r\n\r\nbody bytes", 3, false).unwrap();
        assert!(got.is_empty());
        assert_eq!(
            p.eof(),
            Some(Done {
                status: 200,
                close: true
            })
        );
    }

    #[test]
    fn head_requests_and_interim_responses() {
        let (got, _) = run(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", 5, true).unwrap();
        assert_eq!(got.len(), 1);
        let r = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx";
        let (got, _) = run(r, 6, false).unwrap();
        assert_eq!(got.iter().map(|d| d.status).collect::<Vec<_>>(), [201]);
    }

    #[test]
    fn a_repeated_head_is_recognised_only_byte_for_byte() {
        let five = b"HTTP/1.1 200 OK\r\nDate: Tue, 01 Dec 2026 22:00:00 GMT\r\nContent-Length: 5\r\n\r\nhello";
        let mut p = Parser::default();
        for _ in 0..3 {
            assert_eq!(
                p.feed(five, false),
                Ok((
                    five.len(),
                    Some(Done {
                        status: 200,
                        close: false
                    })
                ))
            );
            assert!(p.last.is_some() && !p.mid_response());
        }
        // The same head but for one digit of the length: parsed afresh, and
        // the body is framed by the new length, not the remembered one.
        let six = b"HTTP/1.1 200 OK\r\nDate: Tue, 01 Dec 2026 22:00:00 GMT\r\nContent-Length: 6\r\n\r\nhello!";
        assert_eq!(
            p.feed(six, false),
            Ok((
                six.len(),
                Some(Done {
                    status: 200,
                    close: false
                })
            ))
        );
        // A HEAD request's answer has no body whatever its head says.
        let head = &six[..six.len() - 6];
        assert_eq!(
            p.feed(head, true),
            Ok((
                head.len(),
                Some(Done {
                    status: 200,
                    close: false
                })
            ))
        );
        // And a GET with the same head bytes expects the body again.
        assert_eq!(p.feed(head, false), Ok((head.len(), None)));
        assert!(p.mid_response());
        assert_eq!(
            p.feed(b"hello!", false),
            Ok((
                6,
                Some(Done {
                    status: 200,
                    close: false
                })
            ))
        );
    }

    #[test]
    fn a_remembered_head_arriving_in_pieces_or_with_a_different_ending_is_parsed() {
        let first = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let mut p = Parser::default();
        assert_eq!(
            p.feed(first, false),
            Ok((
                first.len(),
                Some(Done {
                    status: 200,
                    close: false
                })
            ))
        );
        // A prefix of the remembered head is not a complete head.
        assert_eq!(p.feed(&first[..10], false), Ok((10, None)));
        assert_eq!(
            p.feed(&first[10..], false),
            Ok((
                first.len() - 10,
                Some(Done {
                    status: 200,
                    close: false
                })
            ))
        );
        // The remembered head followed by more fields is a longer head.
        let longer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        assert_eq!(
            p.feed(longer, false),
            Ok((
                longer.len(),
                Some(Done {
                    status: 200,
                    close: true
                })
            ))
        );
        // Heads too long to remember still parse, every time.
        let mut big = b"HTTP/1.1 204 No Content\r\nX-Pad: ".to_vec();
        big.resize(MAX_REMEMBERED_HEAD + 10, b'a');
        big.extend_from_slice(b"\r\n\r\n");
        for _ in 0..2 {
            assert_eq!(
                p.feed(&big, false),
                Ok((
                    big.len(),
                    Some(Done {
                        status: 204,
                        close: false
                    })
                ))
            );
        }
        assert!(p.last.as_ref().is_some_and(|l| l.head == longer));
    }

    #[test]
    fn garbage_and_huge_heads_are_errors() {
        assert_eq!(
            run(b"SSH-2.0-OpenSSH\r\n\r\n", 100, false).err(),
            Some(ParseError::BadHead)
        );
        let mut huge = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        huge.resize(MAX_HEAD + 100, b'a');
        assert_eq!(run(&huge, 1000, false).err(), Some(ParseError::HeadTooLong));
        let conflicting = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(
            run(conflicting, 100, false).err(),
            Some(ParseError::BadHead)
        );
    }
}
