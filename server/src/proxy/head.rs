//! The two heads a proxied exchange rewrites: the request head sent to the app, and the app's
//! response head as the client gets it.

use std::net::IpAddr;

use crate::http::date;
use crate::http::headers::{Headers, list_elements};
use crate::http::request::{BodyFraming, Request, Version};
use crate::http::response::push_u64;
use crate::serve::reply::ConnectionHeader;

/// Hop-by-hop fields (RFC 9110 §7.6.1), plus the framing fields the proxy sets itself.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// Request fields only a trusted previous hop may set: the proxy sets its own.
const FORWARDING: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    "forwarded",
];

/// Upstream response fields never passed to the client: the proxy's own Date and Server
/// replace the app's (as nginx does), and X-Accel-* are instructions to the proxy.
const HIDDEN_RESPONSE: &[&str] = &["date", "server"];

/// Longest upstream response head accepted.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
const MAX_RESPONSE_HEADERS: usize = 128;

/// The names listed in the `Connection` fields: hop-by-hop for this message only.
fn connection_options<'a>(headers: impl Iterator<Item = &'a [u8]>) -> Vec<&'a [u8]> {
    headers.flat_map(list_elements).collect()
}

fn named_in(name: &str, list: &[&[u8]]) -> bool {
    list.iter().any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
}

/// Renders the request head the app receives: the client's method, target (byte for byte) and
/// end-to-end fields, the body framing `body` (the request's own, or the length of a chunked
/// body that was spooled), and the forwarding fields.
pub fn forward_request(
    req: &Request<'_>,
    body: BodyFraming,
    peer: Option<IpAddr>,
    trusted: bool,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(req.method_name.as_bytes());
    out.push(b' ');
    out.extend_from_slice(origin_form(req.target));
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let options = connection_options(req.headers.get_all("connection"));
    for (name, value) in req.headers.iter() {
        let lower_is = |list: &[&str]| list.iter().any(|n| name.eq_ignore_ascii_case(n));
        if lower_is(HOP_BY_HOP)
            || named_in(name, &options)
            || name.eq_ignore_ascii_case("expect")
            || (lower_is(FORWARDING) && !trusted)
            || name.eq_ignore_ascii_case("x-forwarded-for")
            || name.eq_ignore_ascii_case("x-real-ip")
            || name.eq_ignore_ascii_case("x-forwarded-proto")
        {
            continue;
        }
        field(out, name.as_bytes(), value);
    }
    match body {
        BodyFraming::None => {}
        BodyFraming::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            push_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        BodyFraming::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
    }
    let peer_text = peer.map(|ip| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4).to_string(),
        v4 => v4.to_string(),
    });
    // X-Forwarded-For: the trusted hop's list, then this peer.
    let mut xff = Vec::new();
    if trusted {
        for value in req.headers.get_all("x-forwarded-for") {
            for element in list_elements(value) {
                if !xff.is_empty() {
                    xff.extend_from_slice(b", ");
                }
                xff.extend_from_slice(element);
            }
        }
    }
    if let Some(p) = &peer_text {
        if !xff.is_empty() {
            xff.extend_from_slice(b", ");
        }
        xff.extend_from_slice(p.as_bytes());
    }
    if !xff.is_empty() {
        field(out, b"X-Forwarded-For", &xff);
    }
    let real_ip = trusted
        .then(|| req.headers.get("x-real-ip"))
        .flatten()
        .or(peer_text.as_deref().map(str::as_bytes));
    if let Some(ip) = real_ip {
        field(out, b"X-Real-IP", ip);
    }
    let proto = trusted
        .then(|| req.headers.get("x-forwarded-proto"))
        .flatten()
        .unwrap_or(b"http");
    field(out, b"X-Forwarded-Proto", proto);
    out.extend_from_slice(b"\r\n");
}

/// An absolute-form target (`http://host/path?q`) as origin-form (`/path?q`), which is what an
/// origin server expects; anything else unchanged.
fn origin_form(target: &[u8]) -> &[u8] {
    for scheme in [&b"http://"[..], b"https://"] {
        if target.len() > scheme.len() && target[..scheme.len()].eq_ignore_ascii_case(scheme) {
            let rest = &target[scheme.len()..];
            return match rest.iter().position(|&b| b == b'/' || b == b'?') {
                Some(i) if rest[i] == b'/' => &rest[i..],
                _ => b"/",
            };
        }
    }
    target
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How the upstream delimits its response body (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamFraming {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// How the client's copy of the body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientFraming {
    None,
    Length,
    Chunked,
    /// An HTTP/1.0 client and a body of unknown length: the end is the connection's close.
    Close,
}

/// What X-Accel-Redirect asks for, with the app's fields that stay on the file's response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Accel {
    /// The internal URI (path, maybe a query), as the app sent it.
    pub uri: Vec<u8>,
    pub content_type: Option<String>,
    pub cache_control: Option<Vec<u8>>,
    /// Other kept fields (Content-Disposition, Set-Cookie, Expires, Content-Language),
    /// rendered as header lines.
    pub fields: Vec<u8>,
}

impl Accel {
    /// Whether one of the kept fields is called `name` (lowercase).
    pub fn has_field(&self, name: &str) -> bool {
        self.fields.split(|&b| b == b'\n').any(|line| {
            line.len() > name.len()
                && line[..name.len()].eq_ignore_ascii_case(name.as_bytes())
                && line[name.len()] == b':'
        })
    }
}

/// Fields of an X-Accel-Redirect response that stay on the file's response, besides
/// Content-Type and Cache-Control (which replace the mount's own).
const ACCEL_KEPT: &[&str] = &[
    "content-disposition",
    "set-cookie",
    "expires",
    "content-language",
];

/// A complete upstream response head.
#[derive(Debug, PartialEq, Eq)]
pub enum UpstreamHead {
    /// An interim (1xx) response: skipped; another head follows.
    Interim {
        head_len: usize,
    },
    Final(FinalHead),
}

#[derive(Debug, PartialEq, Eq)]
pub struct FinalHead {
    pub status: u16,
    pub head_len: usize,
    pub framing: UpstreamFraming,
    /// The upstream connection can carry another request after this response.
    pub reusable: bool,
    pub accel: Option<Accel>,
    pub client_framing: ClientFraming,
    /// The client connection stays open after this response.
    pub client_keep_alive: bool,
}

/// The client side of the exchange, which decides how the response is reframed.
#[derive(Clone, Copy, Debug)]
pub struct ClientSide {
    pub version: Version,
    pub keep_alive: bool,
    pub head_request: bool,
}

/// Parses the upstream response head at the front of `buf`. For a final response that is not
/// an X-Accel-Redirect, the client's head is rendered into `out`. `Ok(None)`: incomplete.
pub fn parse_response(
    buf: &[u8],
    client: ClientSide,
    out: &mut Vec<u8>,
) -> Result<Option<UpstreamHead>, &'static str> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_RESPONSE_HEAD => {
            return Err("response head too large");
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err("too many response header fields"),
        Err(_) => return Err("malformed response head"),
    };
    if memchr::memchr_iter(b'\n', &buf[..head_len]).any(|i| i == 0 || buf[i - 1] != b'\r') {
        return Err("bare LF in response head");
    }
    let (Some(status), Some(minor)) = (resp.code, resp.version) else {
        return Err("malformed status line");
    };
    if status == 101 {
        return Err("101 Switching Protocols to a request that asked for no upgrade");
    }
    if (100..200).contains(&status) {
        return Ok(Some(UpstreamHead::Interim { head_len }));
    }
    let reason = resp.reason.unwrap_or("");
    let headers = Headers::new(resp.headers);
    let options = connection_options(headers.get_all("connection"));
    let upstream_close = options.iter().any(|o| o.eq_ignore_ascii_case(b"close"))
        || (minor == 0
            && !options
                .iter()
                .any(|o| o.eq_ignore_ascii_case(b"keep-alive")));

    let framing = upstream_framing(&headers, status, client.head_request)?;
    let mut reusable = !upstream_close;
    if headers.count("transfer-encoding") > 0 && headers.count("content-length") > 0 {
        // RFC 9112 §6.3: Transfer-Encoding wins, and the connection is not to be trusted again.
        reusable = false;
    }
    if framing == UpstreamFraming::UntilClose {
        reusable = false;
    }
    if let Some(uri) = headers.get("x-accel-redirect") {
        let mut accel = Accel {
            uri: uri.to_vec(),
            ..Accel::default()
        };
        accel.content_type = headers
            .get("content-type")
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_owned);
        accel.cache_control = headers.get("cache-control").map(<[u8]>::to_vec);
        for (name, value) in headers.iter() {
            if ACCEL_KEPT.iter().any(|k| name.eq_ignore_ascii_case(k)) {
                field(&mut accel.fields, name.as_bytes(), value);
            }
        }
        return Ok(Some(UpstreamHead::Final(FinalHead {
            status,
            head_len,
            framing,
            reusable,
            accel: Some(accel),
            client_framing: ClientFraming::None,
            client_keep_alive: client.keep_alive,
        })));
    }

    let client_framing = match framing {
        UpstreamFraming::None => ClientFraming::None,
        UpstreamFraming::Length(_) => ClientFraming::Length,
        UpstreamFraming::Chunked | UpstreamFraming::UntilClose => match client.version {
            Version::Http11 => ClientFraming::Chunked,
            Version::Http10 => ClientFraming::Close,
        },
    };
    let client_keep_alive = client.keep_alive && client_framing != ClientFraming::Close;

    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\nDate: ");
    out.extend_from_slice(&date::current());
    out.extend_from_slice(b"\r\nServer: bypass\r\n");
    for (name, value) in headers.iter() {
        let is = |list: &[&str]| list.iter().any(|n| name.eq_ignore_ascii_case(n));
        if is(HOP_BY_HOP)
            || is(HIDDEN_RESPONSE)
            || named_in(name, &options)
            || name.len() >= 8 && name[..8].eq_ignore_ascii_case("x-accel-")
        {
            continue;
        }
        field(out, name.as_bytes(), value);
    }
    match (framing, client_framing) {
        (UpstreamFraming::Length(n), _) => {
            out.extend_from_slice(b"Content-Length: ");
            push_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        (UpstreamFraming::None, _) => {
            // A HEAD or 304 response keeps the length the full response would have had.
            if let Some(n) = headers.get("content-length").and_then(parse_length)
                && headers.count("transfer-encoding") == 0
                && status != 204
            {
                out.extend_from_slice(b"Content-Length: ");
                push_u64(out, n);
                out.extend_from_slice(b"\r\n");
            }
        }
        (_, ClientFraming::Chunked) => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        _ => {}
    }
    let connection = ConnectionHeader::new(client.version, client_keep_alive);
    match connection {
        ConnectionHeader::Default => {}
        ConnectionHeader::KeepAlive => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        ConnectionHeader::Close => out.extend_from_slice(b"Connection: close\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(UpstreamHead::Final(FinalHead {
        status,
        head_len,
        framing,
        reusable,
        accel: None,
        client_framing,
        client_keep_alive,
    })))
}

fn upstream_framing(
    headers: &Headers<'_>,
    status: u16,
    head_request: bool,
) -> Result<UpstreamFraming, &'static str> {
    if head_request || status == 204 || status == 304 {
        return Ok(UpstreamFraming::None);
    }
    let codings: Vec<&[u8]> = headers
        .get_all("transfer-encoding")
        .flat_map(list_elements)
        .collect();
    if let Some(last) = codings.last() {
        return Ok(if last.eq_ignore_ascii_case(b"chunked") {
            if codings.len() > 1 {
                // Other codings under chunked would reach the client undeclared.
                return Err("transfer codings other than chunked");
            }
            UpstreamFraming::Chunked
        } else {
            UpstreamFraming::UntilClose
        });
    }
    let mut length = None;
    for value in headers.get_all("content-length") {
        // Identical repeats (also within one list) are tolerated; differing ones are not.
        for element in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            let n = parse_length(element).ok_or("malformed Content-Length in the response")?;
            if length.is_some_and(|l| l != n) {
                return Err("conflicting Content-Length in the response");
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) => UpstreamFraming::None,
        Some(n) => UpstreamFraming::Length(n),
        None => UpstreamFraming::UntilClose,
    })
}

fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::{header_slots, parse};

    fn forwarded(raw: &str, trusted: bool) -> String {
        let mut slots = header_slots();
        let req = parse(raw.as_bytes(), &mut slots).unwrap().unwrap();
        let mut out = Vec::new();
        let peer = Some("192.0.2.7".parse().unwrap());
        forward_request(&req, req.body, peer, trusted, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn request_keeps_end_to_end_fields_and_drops_hop_by_hop() {
        let out = forwarded(
            "POST /a/b?x=%20y&&z HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive, X-Hop\r\n\
             X-Hop: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nUpgrade: h2c\r\nCookie: a=b\r\n\
             Expect: 100-continue\r\nContent-Length: 3\r\nX-Forwarded-For: 6.6.6.6\r\n\
             X-Real-IP: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n\r\n",
            false,
        );
        assert_eq!(
            out,
            "POST /a/b?x=%20y&&z HTTP/1.1\r\nHost: example.com\r\nCookie: a=b\r\n\
             Content-Length: 3\r\nX-Forwarded-For: 192.0.2.7\r\nX-Real-IP: 192.0.2.7\r\n\
             X-Forwarded-Proto: http\r\n\r\n"
        );
    }

    #[test]
    fn a_trusted_hop_is_appended_to() {
        let out = forwarded(
            "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.1.1.1, 2.2.2.2\r\n\
             X-Forwarded-For: 3.3.3.3\r\nX-Real-IP: 1.1.1.1\r\nX-Forwarded-Proto: https\r\n\r\n",
            true,
        );
        assert!(out.contains("X-Forwarded-For: 1.1.1.1, 2.2.2.2, 3.3.3.3, 192.0.2.7\r\n"));
        assert!(out.contains("X-Real-IP: 1.1.1.1\r\n"));
        assert!(out.contains("X-Forwarded-Proto: https\r\n"));
        assert_eq!(out.matches("X-Forwarded-For").count(), 1);
    }

    #[test]
    fn chunked_requests_stay_chunked_and_absolute_targets_become_origin_form() {
        let out = forwarded(
            "PUT http://h.example/up?q=1 HTTP/1.1\r\nHost: h.example\r\n\
             Transfer-Encoding: chunked\r\n\r\n",
            false,
        );
        assert!(out.starts_with("PUT /up?q=1 HTTP/1.1\r\n"));
        assert!(out.contains("Transfer-Encoding: chunked\r\n"));
        assert_eq!(origin_form(b"http://h"), b"/");
        assert_eq!(origin_form(b"*"), b"*");
    }

    fn client(version: Version, keep_alive: bool, head_request: bool) -> ClientSide {
        ClientSide {
            version,
            keep_alive,
            head_request,
        }
    }

    fn response(raw: &str, c: ClientSide) -> (FinalHead, String) {
        let mut out = Vec::new();
        match parse_response(raw.as_bytes(), c, &mut out)
            .unwrap()
            .unwrap()
        {
            UpstreamHead::Final(f) => (f, String::from_utf8(out).unwrap()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn response_is_reframed_for_the_client() {
        let c11 = client(Version::Http11, true, false);
        let (h, out) = response(
            "HTTP/1.1 201 Created\r\nServer: gunicorn\r\nDate: x\r\nContent-Length: 5\r\n\
             Connection: X-Secret\r\nX-Secret: 1\r\nSet-Cookie: a=1\r\nX-Accel-Buffering: no\r\n\r\n",
            c11,
        );
        assert_eq!(h.framing, UpstreamFraming::Length(5));
        assert!(h.reusable && h.client_keep_alive);
        assert!(out.starts_with("HTTP/1.1 201 Created\r\nDate: "));
        assert!(out.contains("Server: bypass\r\nSet-Cookie: a=1\r\nContent-Length: 5\r\n\r\n"));
        assert!(!out.contains("gunicorn") && !out.contains("Secret") && !out.contains("Accel"));

        let (h, out) = response(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            client(Version::Http10, true, false),
        );
        assert_eq!(
            (h.framing, h.client_framing, h.client_keep_alive),
            (UpstreamFraming::Chunked, ClientFraming::Close, false)
        );
        assert!(out.contains("Connection: close\r\n") && !out.contains("chunked"));

        let (h, out) = response("HTTP/1.0 200 OK\r\n\r\n", c11);
        assert_eq!(
            (h.framing, h.client_framing, h.reusable),
            (UpstreamFraming::UntilClose, ClientFraming::Chunked, false)
        );
        assert!(out.contains("Transfer-Encoding: chunked\r\n"));

        let (h, out) = response(
            "HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n",
            client(Version::Http11, true, true),
        );
        assert_eq!(h.framing, UpstreamFraming::None);
        assert!(out.contains("Content-Length: 42\r\n"));
    }

    #[test]
    fn bad_upstream_framing_is_refused() {
        let c = client(Version::Http11, true, false);
        for raw in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\nContent-Length: 5\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "garbage\r\n\r\n",
        ] {
            assert!(
                parse_response(raw.as_bytes(), c, &mut Vec::new()).is_err(),
                "{raw:?}"
            );
        }
        let (h, _) = response(
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
            client(Version::Http11, true, false),
        );
        assert_eq!(h.framing, UpstreamFraming::Length(5));
    }

    #[test]
    fn interim_and_accel_responses() {
        let c = client(Version::Http11, true, false);
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n";
        assert_eq!(
            parse_response(raw, c, &mut Vec::new()).unwrap(),
            Some(UpstreamHead::Interim { head_len: 25 })
        );
        let mut out = Vec::new();
        let raw = "HTTP/1.1 200 OK\r\nContent-Type: application/pdf\r\n\
                   Content-Disposition: attachment; filename=\"a.pdf\"\r\n\
                   X-Accel-Redirect: /protected/a.pdf\r\nCache-Control: private\r\n\
                   Content-Length: 0\r\n\r\n";
        let Some(UpstreamHead::Final(h)) = parse_response(raw.as_bytes(), c, &mut out).unwrap()
        else {
            panic!()
        };
        let accel = h.accel.unwrap();
        assert!(out.is_empty());
        assert_eq!(accel.uri, b"/protected/a.pdf");
        assert_eq!(accel.content_type.as_deref(), Some("application/pdf"));
        assert_eq!(accel.cache_control.as_deref(), Some(&b"private"[..]));
        assert_eq!(
            accel.fields,
            b"Content-Disposition: attachment; filename=\"a.pdf\"\r\n"
        );
        assert_eq!(h.framing, UpstreamFraming::None);
    }
}
