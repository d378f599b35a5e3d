//! Parsing one request head from the front of a receive buffer, with the framing checks that
//! decide whether the connection can be trusted with another request afterwards.

use std::mem::MaybeUninit;

use super::headers::{Headers, list_elements};

/// Longest request-target accepted (414 beyond).
pub const MAX_TARGET: usize = 8 * 1024;
/// Longest header section accepted, request line excluded (431 beyond).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most header fields accepted (431 beyond).
pub const MAX_HEADERS: usize = 128;
/// Longest whole head the parser will ever wait for: past this it answers 414 or 431 without
/// waiting for the end of the head.
pub const MAX_HEAD: usize = MAX_TARGET + MAX_HEADER_BYTES + 64;

/// Request methods the core distinguishes; the rest are kept by name for `405` and proxying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// How the request's body is delimited (RFC 9112 §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

/// One parsed request head, borrowing the receive buffer.
#[derive(Debug)]
pub struct Request<'a> {
    pub method: Method,
    pub method_name: &'a str,
    pub target: &'a [u8],
    pub version: Version,
    pub headers: Headers<'a>,
    /// Whether the client lets the connection stay open after this exchange.
    pub keep_alive: bool,
    pub body: BodyFraming,
    /// Bytes the head took at the front of the buffer.
    pub head_len: usize,
}

/// A request the server must refuse; every one of them ends the connection, because after a
/// malformed head nothing says where the next request starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestError {
    /// 400, with a short reason for the body and the log.
    BadRequest(&'static str),
    /// 414
    UriTooLong,
    /// 431
    HeadersTooLarge,
    /// 501: a transfer coding this server does not implement.
    NotImplemented,
    /// 505
    VersionNotSupported,
}

impl RequestError {
    pub fn status(self) -> u16 {
        match self {
            RequestError::BadRequest(_) => 400,
            RequestError::UriTooLong => 414,
            RequestError::HeadersTooLarge => 431,
            RequestError::NotImplemented => 501,
            RequestError::VersionNotSupported => 505,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            RequestError::BadRequest(why) => why,
            RequestError::UriTooLong => "request-target too long",
            RequestError::HeadersTooLarge => "header section too large",
            RequestError::NotImplemented => "unsupported transfer coding",
            RequestError::VersionNotSupported => "HTTP version not supported",
        }
    }
}

/// Storage for the header slots of one parse.
pub type HeaderSlots<'a> = [MaybeUninit<httparse::Header<'a>>; MAX_HEADERS];

/// Fresh header storage; cheap because it is left uninitialised.
pub fn header_slots<'a>() -> HeaderSlots<'a> {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

/// Parses the request head at the front of `buf`.
///
/// `Ok(None)` means the head is not complete yet and the caller should read more; the limits
/// are enforced on partial heads too, so a client cannot make the server buffer without bound.
pub fn parse<'a>(
    buf: &'a [u8],
    slots: &'a mut HeaderSlots<'a>,
) -> Result<Option<Request<'a>>, RequestError> {
    // Leading empty lines before a request line are allowed (RFC 9112 §2.2); skip CRLFs only.
    let mut start = 0;
    while buf.len() >= start + 2 && &buf[start..start + 2] == b"\r\n" {
        start += 2;
    }
    let data = &buf[start..];

    let mut req = httparse::Request::new(&mut []);
    let parsed = req.parse_with_uninit_headers(data, slots);
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            check_partial(data)?;
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::HeadersTooLarge),
        Err(httparse::Error::Version) => return Err(version_error(data)),
        Err(_) => {
            return Err(check_partial(data)
                .err()
                .unwrap_or(RequestError::BadRequest("malformed request head")));
        }
    };
    let head = &data[..head_len];
    if has_bare_lf(head) {
        return Err(RequestError::BadRequest("bare LF in request head"));
    }
    let (Some(method_name), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(RequestError::BadRequest("malformed request line"));
    };
    if target.len() > MAX_TARGET {
        return Err(RequestError::UriTooLong);
    }
    // The request line ends where the first field begins (httparse hands out slices of
    // `data`), or two bytes before the end of a head with no fields.
    let line_len = req.headers.first().map_or(head_len - 2, |field| {
        field.name.as_ptr() as usize - data.as_ptr() as usize
    });
    if head_len - line_len > MAX_HEADER_BYTES {
        return Err(RequestError::HeadersTooLarge);
    }
    let version = if minor == 1 {
        Version::Http11
    } else {
        Version::Http10
    };
    let headers = Headers::new(req.headers);

    match headers.count("host") {
        0 if version == Version::Http11 => {
            return Err(RequestError::BadRequest("HTTP/1.1 request without Host"));
        }
        0 | 1 => {}
        _ => return Err(RequestError::BadRequest("more than one Host field")),
    }
    let body = body_framing(&headers, version)?;
    let keep_alive = wants_keep_alive(&headers, version);
    let method = match method_name {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => Method::Other,
    };
    Ok(Some(Request {
        method,
        method_name,
        target: target.as_bytes(),
        version,
        headers,
        keep_alive,
        body,
        head_len: start + head_len,
    }))
}

/// For a head that is incomplete (or that httparse rejected), whether the limits are already
/// exceeded: a request line longer than any acceptable target is 414, a longer head is 431.
fn check_partial(data: &[u8]) -> Result<(), RequestError> {
    let line_end = memchr::memchr(b'\n', data);
    let line_len = line_end.unwrap_or(data.len());
    // "GET " + target + " HTTP/1.1\r" leaves a little room beyond the target limit.
    if line_len > MAX_TARGET + 32 {
        return Err(RequestError::UriTooLong);
    }
    if line_end.is_some() && data.len() - line_len > MAX_HEADER_BYTES + 4 {
        return Err(RequestError::HeadersTooLarge);
    }
    Ok(())
}

/// httparse says "version" both for `HTTP/2.0` and for garbage; only a well-formed HTTP
/// version other than 1.x deserves 505.
fn version_error(data: &[u8]) -> RequestError {
    let line = &data[..memchr::memchr(b'\n', data).unwrap_or(data.len())];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or_default();
    match version {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() && *major != b'1' =>
        {
            RequestError::VersionNotSupported
        }
        _ => RequestError::BadRequest("malformed HTTP version"),
    }
}

/// RFC 9112 allows recipients to accept a bare LF as a line end, but a proxy that does while
/// its upstream does not is how requests get smuggled; refuse it outright.
fn has_bare_lf(head: &[u8]) -> bool {
    // A branch-free fold over byte pairs, which the compiler vectorises: a head has a few
    // line ends, and a memchr search per line end cost more than one pass over ~100 bytes.
    let first = head.first() == Some(&b'\n');
    head.iter()
        .zip(&head[1.min(head.len())..])
        .fold(first, |bad, (&before, &b)| {
            bad | ((b == b'\n') & (before != b'\r'))
        })
}

fn body_framing(headers: &Headers<'_>, version: Version) -> Result<BodyFraming, RequestError> {
    let mut te_fields = headers.get_all("transfer-encoding").peekable();
    let has_te = te_fields.peek().is_some();
    let content_lengths = headers.count("content-length");
    if has_te && content_lengths > 0 {
        return Err(RequestError::BadRequest(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if has_te {
        if version == Version::Http10 {
            return Err(RequestError::BadRequest(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        let codings: Vec<&[u8]> = te_fields.flat_map(list_elements).collect();
        return match codings.as_slice() {
            [only] if only.eq_ignore_ascii_case(b"chunked") => Ok(BodyFraming::Chunked),
            [] => Err(RequestError::BadRequest("empty Transfer-Encoding")),
            _ => Err(RequestError::NotImplemented),
        };
    }
    match content_lengths {
        0 => Ok(BodyFraming::None),
        1 => {
            let value = headers.get("content-length").unwrap_or_default();
            parse_content_length(value)
                .map(|n| {
                    if n == 0 {
                        BodyFraming::None
                    } else {
                        BodyFraming::Length(n)
                    }
                })
                .ok_or(RequestError::BadRequest("malformed Content-Length"))
        }
        _ => Err(RequestError::BadRequest("more than one Content-Length")),
    }
}

/// `1*DIGIT` and nothing else: no sign, no spaces inside, no list, no overflow.
fn parse_content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

fn wants_keep_alive(headers: &Headers<'_>, version: Version) -> bool {
    let mut close = false;
    let mut keep_alive = false;
    for token in headers.get_all("connection").flat_map(list_elements) {
        if token.eq_ignore_ascii_case(b"close") {
            close = true;
        } else if token.eq_ignore_ascii_case(b"keep-alive") {
            keep_alive = true;
        }
    }
    match version {
        _ if close => false,
        Version::Http11 => true,
        Version::Http10 => keep_alive,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(bytes: &[u8]) -> (Method, String, Version, bool, BodyFraming, usize) {
        let mut slots = header_slots();
        let r = parse(bytes, &mut slots).expect("valid").expect("complete");
        (
            r.method,
            String::from_utf8_lossy(r.target).into_owned(),
            r.version,
            r.keep_alive,
            r.body,
            r.head_len,
        )
    }

    fn parse_err(bytes: &[u8]) -> RequestError {
        let mut slots = header_slots();
        parse(bytes, &mut slots).expect_err("must be refused")
    }

    fn is_partial(bytes: &[u8]) -> bool {
        let mut slots = header_slots();
        matches!(parse(bytes, &mut slots), Ok(None))
    }

    #[test]
    fn simple_get_and_keep_alive_defaults() {
        let req = b"GET /static/app.css?v=1 HTTP/1.1\r\nHost: x\r\n\r\nGET /next";
        let (m, t, v, ka, body, len) = parse_ok(req);
        assert_eq!(
            (m, t.as_str(), v, ka, body),
            (
                Method::Get,
                "/static/app.css?v=1",
                Version::Http11,
                true,
                BodyFraming::None
            )
        );
        assert_eq!(&req[len..], b"GET /next");

        let (_, _, v, ka, _, _) = parse_ok(b"HEAD / HTTP/1.0\r\n\r\n");
        assert_eq!((v, ka), (Version::Http10, false));
        let (_, _, _, ka, _, _) = parse_ok(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(ka);
        let (_, _, _, ka, _, _) =
            parse_ok(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: foo, close\r\n\r\n");
        assert!(!ka);
    }

    #[test]
    fn leading_empty_lines_are_skipped() {
        let req = b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let (_, _, _, _, _, len) = parse_ok(req);
        assert_eq!(len, req.len());
    }

    #[test]
    fn partial_heads_wait_for_more() {
        assert!(is_partial(b""));
        assert!(is_partial(b"GET /a HT"));
        assert!(is_partial(b"GET /a HTTP/1.1\r\nHost: x\r\n"));
    }

    #[test]
    fn framing_errors() {
        assert_eq!(
            parse_err(b"GET / HTTP/1.1\r\n\r\n"),
            RequestError::BadRequest("HTTP/1.1 request without Host")
        );
        assert!(matches!(
            parse_err(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            RequestError::BadRequest(_)
        ));
        assert!(matches!(
            parse_err(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            RequestError::BadRequest(_)
        ));
        assert!(matches!(
            parse_err(
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"
            ),
            RequestError::BadRequest(_)
        ));
        assert!(matches!(
            parse_err(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n"),
            RequestError::BadRequest(_)
        ));
        assert!(matches!(
            parse_err(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1,1\r\n\r\n"),
            RequestError::BadRequest(_)
        ));
        assert!(matches!(
            parse_err(
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n"
            ),
            RequestError::BadRequest(_)
        ));
        assert_eq!(
            parse_err(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"),
            RequestError::NotImplemented
        );
        assert_eq!(
            parse_err(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            RequestError::NotImplemented
        );
        let (_, _, _, _, body, _) =
            parse_ok(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert_eq!(body, BodyFraming::Chunked);
        let (_, _, _, _, body, _) =
            parse_ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n");
        assert_eq!(body, BodyFraming::Length(12));
    }

    #[test]
    fn malformed_heads_are_bad_requests() {
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n"[..],
            b"GET / HTTP/1.1\nHost: a\n\n",
            b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n",
            b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: a\r\n\r\n",
            b"\x00\x01\x02\r\n\r\n",
            b"GET / FOO/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(parse_err(bad), RequestError::BadRequest(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse_err(b"GET / HTTP/2.0\r\n\r\n"),
            RequestError::VersionNotSupported
        );
    }

    #[test]
    fn size_limits() {
        let long_target = format!(
            "GET /{} HTTP/1.1\r\nHost: a\r\n\r\n",
            "a".repeat(MAX_TARGET + 10)
        );
        assert_eq!(parse_err(long_target.as_bytes()), RequestError::UriTooLong);
        let partial_long = format!("GET /{}", "a".repeat(MAX_TARGET + 100));
        assert_eq!(parse_err(partial_long.as_bytes()), RequestError::UriTooLong);

        let big_header = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
            "b".repeat(MAX_HEADER_BYTES)
        );
        assert_eq!(
            parse_err(big_header.as_bytes()),
            RequestError::HeadersTooLarge
        );
        let partial_big = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}",
            "b".repeat(MAX_HEADER_BYTES + 100)
        );
        assert_eq!(
            parse_err(partial_big.as_bytes()),
            RequestError::HeadersTooLarge
        );

        let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        for i in 0..MAX_HEADERS + 1 {
            many.push_str(&format!("X-{i}: y\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(parse_err(many.as_bytes()), RequestError::HeadersTooLarge);
    }

    #[test]
    fn bare_line_feeds_are_refused_wherever_they_are() {
        for (bare, good) in [
            (
                &b"GET / HTTP/1.1\nHost: x\r\n\r\n"[..],
                &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            ),
            (
                b"GET / HTTP/1.1\r\nHost: x\n\r\n",
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: x\r\n\n",
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: x\r\nA: b\nC: d\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: x\r\nA: b\r\nC: d\r\n\r\n",
            ),
        ] {
            assert_eq!(
                parse_err(bare),
                RequestError::BadRequest("bare LF in request head"),
                "{:?}",
                String::from_utf8_lossy(bare)
            );
            parse_ok(good);
        }
        assert!(has_bare_lf(b"\n"));
        assert!(!has_bare_lf(b""));
        assert!(!has_bare_lf(b"\r\n"));
    }

    #[test]
    fn the_header_limit_counts_the_fields_not_the_request_line() {
        let long_line = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_TARGET - 1));
        let fixed = "Host: a\r\nX-Big: \r\n\r\n".len();
        let head =
            |fill: usize| format!("{long_line}Host: a\r\nX-Big: {}\r\n\r\n", "b".repeat(fill));
        parse_ok(head(MAX_HEADER_BYTES - fixed).as_bytes());
        assert_eq!(
            parse_err(head(MAX_HEADER_BYTES - fixed + 1).as_bytes()),
            RequestError::HeadersTooLarge
        );
        // No fields at all: the head is the request line and its empty line.
        let (.., head_len) = parse_ok(b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(head_len, 18);
    }

    #[test]
    fn no_input_panics() {
        // A cheap deterministic fuzz: every prefix and a few byte flips of a real request.
        let base = b"GET /static/a.css HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\nContent-Length: 0\r\n\r\n";
        for end in 0..=base.len() {
            let mut slots = header_slots();
            let _ = parse(&base[..end], &mut slots);
        }
        for i in 0..base.len() {
            for b in [0u8, b'\n', b'\r', b' ', b':', 0xff] {
                let mut bytes = base.to_vec();
                bytes[i] = b;
                let mut slots = header_slots();
                let _ = parse(&bytes, &mut slots);
            }
        }
    }
}
