//! Malformed requests: status, `Connection: close`, then the close; and no crash after garbage.

mod common;

use common::*;
use std::time::Duration;

const CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// Sends `bytes` on a fresh connection, expects `status` with `Connection: close`, then EOF.
#[track_caller]
fn expect_rejected(s: &Server, bytes: impl AsRef<[u8]>, status: u16) -> Response {
    let bytes = bytes.as_ref();
    let mut c = Raw::connect(s.addr());
    c.send(bytes);
    let r = c.read_response();
    let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
    assert_eq!(r.status, status, "for {shown:?}:\n{r:?}");
    assert!(
        r.header_has_token("connection", "close"),
        "Connection: close after an error, for {shown:?}:\n{r:?}"
    );
    c.expect_closed(CLOSE_LIMIT);
    r
}

fn plain_get() -> String {
    format!("/static/{PLAIN_CSS}")
}

#[test]
fn malformed_request_lines_are_400() {
    let fx = Fixture::new();
    let s = fx.server();
    let cases: Vec<Vec<u8>> = vec![
        "GARBAGE\r\n\r\n".to_string().into_bytes(),
        format!("GET {}\r\n\r\n", plain_get()).into_bytes(),
        format!("GET {} HTTP/1.1 extra\r\nHost: x\r\n\r\n", plain_get()).into_bytes(),
        format!("GET {} HTTX/1.1\r\nHost: x\r\n\r\n", plain_get()).into_bytes(),
        format!("G(T {} HTTP/1.1\r\nHost: x\r\n\r\n", plain_get()).into_bytes(),
        "GET  HTTP/1.1\r\nHost: x\r\n\r\n".to_string().into_bytes(),
        format!("GET {}\x00 HTTP/1.1\r\nHost: x\r\n\r\n", plain_get()).into_bytes(),
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(), // a TLS ClientHello
    ];
    for bytes in cases {
        expect_rejected(&s, bytes, 400);
    }
}

#[test]
fn unsupported_http_versions_are_refused() {
    let fx = Fixture::new();
    let s = fx.server();
    for v in ["HTTP/2.0", "HTTP/3.0", "HTTP/0.9"] {
        let mut c = Raw::connect(s.addr());
        c.send(format!("GET {} {v}\r\nHost: x\r\n\r\n", plain_get()));
        let r = c.read_response();
        assert!(r.status == 400 || r.status == 505, "{v}: {r:?}");
        c.expect_closed(CLOSE_LIMIT);
    }
}

#[test]
fn malformed_header_fields_are_400() {
    let fx = Fixture::new();
    let s = fx.server();
    let p = plain_get();
    for fields in [
        "Host: x\r\nNo colon here\r\n",
        "Host: x\r\nBad Name: v\r\n",
        "Host : x\r\n", // whitespace before the colon: MUST be rejected
        "Host: x\r\nX-A\x01: v\r\n",
        "Host: x\r\n: empty name\r\n",
        "Host: x\r\nX-Nul: a\x00b\r\n",
    ] {
        expect_rejected(&s, format!("GET {p} HTTP/1.1\r\n{fields}\r\n"), 400);
    }
}

#[test]
fn obs_fold_is_400() {
    let fx = Fixture::new();
    let s = fx.server();
    let p = plain_get();
    expect_rejected(
        &s,
        format!("GET {p} HTTP/1.1\r\nHost: x\r\nX-Long: a\r\n b\r\n\r\n"),
        400,
    );
    expect_rejected(
        &s,
        format!("GET {p} HTTP/1.1\r\nHost: x\r\nX-Long: a\r\n\tb\r\n\r\n"),
        400,
    );
    // A folded first line after the request line.
    expect_rejected(&s, format!("GET {p} HTTP/1.1\r\n Host: x\r\n\r\n"), 400);
}

#[test]
fn http11_needs_exactly_one_host() {
    let fx = Fixture::new();
    let s = fx.server();
    let p = plain_get();
    expect_rejected(&s, format!("GET {p} HTTP/1.1\r\nAccept: */*\r\n\r\n"), 400);
    expect_rejected(
        &s,
        format!("GET {p} HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        400,
    );
    // HTTP/1.0 needs none.
    let mut c = Raw::connect(s.addr());
    c.send(format!("GET {p} HTTP/1.0\r\n\r\n"));
    c.read_response().assert_status(200);
}

#[test]
fn ambiguous_framing_is_400() {
    let fx = Fixture::new();
    let s = fx.server();
    let p = plain_get();
    for fields in [
        "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        "Content-Length: 0\r\nContent-Length: 0\r\n",
        "Content-Length: 1\r\nContent-Length: 2\r\n",
        "Content-Length: 0, 0\r\n",
        "Content-Length: abc\r\n",
        "Content-Length: -1\r\n",
        "Content-Length: +5\r\n",
        "Content-Length: 99999999999999999999999\r\n",
    ] {
        expect_rejected(
            &s,
            format!("GET {p} HTTP/1.1\r\nHost: x\r\n{fields}\r\n"),
            400,
        );
    }
}

#[test]
fn unsupported_transfer_coding_is_501() {
    let fx = Fixture::new();
    let s = fx.server();
    let p = plain_get();
    expect_rejected(
        &s,
        format!("GET {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"),
        501,
    );
    expect_rejected(
        &s,
        format!("POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
        501,
    );
}

#[test]
fn uri_over_8_kib_is_414() {
    let fx = Fixture::new();
    let s = fx.server();
    let long = format!("/static/{}", "a".repeat(9000));
    expect_rejected(&s, request("GET", &long, &[]), 414);
    // Just under the limit: an ordinary 404 on a live connection.
    let almost = format!("/static/{}", "a".repeat(8000));
    let mut c = Raw::connect(s.addr());
    c.send(request("GET", &almost, &[]));
    c.read_response().assert_status(404);
    c.send(request("GET", &plain_get(), &[]));
    c.read_response().assert_status(200);
}

#[test]
fn headers_over_16_kib_are_431() {
    let fx = Fixture::new();
    let s = fx.server();
    let p = plain_get();
    let many: Vec<String> = (0..20)
        .map(|i| format!("X-Pad-{i}: {}", "v".repeat(1024)))
        .collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    expect_rejected(&s, request("GET", &p, &many), 431);
    let one = format!("X-Huge: {}", "v".repeat(20 * 1024));
    expect_rejected(&s, request("GET", &p, &[&one]), 431);
    // 12 KiB of headers is fine.
    let some: Vec<String> = (0..12)
        .map(|i| format!("X-Pad-{i}: {}", "v".repeat(1000)))
        .collect();
    let some: Vec<&str> = some.iter().map(String::as_str).collect();
    let r = raw_roundtrip(s.addr(), request("GET", &p, &some));
    r.assert_status(200);
}

#[test]
fn an_endless_header_without_newline_is_refused() {
    let fx = Fixture::new();
    let s = fx.server();
    let mut c = Raw::connect(s.addr());
    let mut bytes = format!("GET {} HTTP/1.1\r\nHost: x\r\nX-Endless: ", plain_get()).into_bytes();
    bytes.extend(std::iter::repeat_n(b'z', 64 * 1024));
    // The server may stop reading (and close) before we are done writing.
    let _ = c.try_send(&bytes);
    match c.try_read_response_to("GET", Duration::from_secs(5)) {
        Ok(r) => {
            assert_eq!(r.status, 431, "{r:?}");
            assert!(r.header_has_token("connection", "close"));
        }
        Err(e) => assert!(
            e.contains("reset") || e.contains("closed"),
            "neither a 431 nor a close: {e}"
        ),
    }
}

#[test]
fn errors_after_a_good_request_close_the_connection() {
    let fx = Fixture::new();
    let s = fx.server();
    let mut c = Raw::connect(s.addr());
    c.send(
        request("GET", &plain_get(), &[]) + "GARBAGE\r\n\r\n" + &request("GET", &plain_get(), &[]),
    );
    c.read_response().assert_status(200);
    let r = c.read_response();
    r.assert_status(400);
    assert!(r.header_has_token("connection", "close"));
    c.expect_closed(CLOSE_LIMIT);
}

/// A small deterministic generator for the garbage barrage.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> usize {
        (self.next() % n) as usize
    }
}

fn garbage(rng: &mut Lcg) -> Vec<u8> {
    let pieces: [&[u8]; 24] = [
        b"GET ",
        b"HEAD ",
        b"POST ",
        b"/static/",
        b"/media/",
        b"css/app.css",
        b"%",
        b"%00",
        b"%2e%2e/",
        b"../",
        b" HTTP/1.1",
        b" HTTP/1.0",
        b"\r\n",
        b"\n",
        b"\r",
        b"Host: x\r\n",
        b"Range: bytes=0-1,5-\r\n",
        b"Accept-Encoding: br;q=2, gzip;q=-1, *;q=\r\n",
        b"If-None-Match: W/\"\r\n",
        b"Content-Length: 3\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"If-Modified-Since: Mon, 99 Foo 2024 99:99:99 GMT\r\n",
        b": \t",
        b"\xff\xfe\x00\x80",
    ];
    let mut v = Vec::new();
    for _ in 0..rng.below(24) + 1 {
        if rng.below(5) == 0 {
            for _ in 0..rng.below(40) {
                v.push(rng.next() as u8);
            }
        } else {
            v.extend_from_slice(pieces[rng.below(pieces.len() as u64)]);
        }
    }
    v.extend_from_slice(b"\r\n\r\n");
    v
}

#[test]
fn a_garbage_barrage_does_not_kill_the_server() {
    let fx = Fixture::new();
    let mut s = fx.builder().args(["--header-timeout", "2"]).start();
    let mut rng = Lcg(0x5eed);
    for i in 0..300 {
        let bytes = garbage(&mut rng);
        let mut c = Raw::connect(s.addr());
        let _ = c.try_send(&bytes);
        if i % 3 == 0 {
            c.shutdown_write();
        }
        // Whatever comes back must be well-formed HTTP (or nothing), and never a 5xx other than
        // 501/505; the connection must end or stay usable, never hang the server.
        match c.try_read_response_to("GET", Duration::from_secs(5)) {
            Ok(r) => assert!(
                r.status < 500 || r.status == 501 || r.status == 505,
                "{:?} -> {r:?}",
                String::from_utf8_lossy(&bytes)
            ),
            Err(e) => assert!(
                e.contains("closed")
                    || e.contains("reset")
                    || e.contains("Connection")
                    || e.contains("timed out"),
                "{:?} -> {e}",
                String::from_utf8_lossy(&bytes)
            ),
        }
        if i % 50 == 0 {
            s.assert_alive();
            curl(s.static_url(PLAIN_CSS)).send().assert_status(200);
        }
    }
    s.assert_alive();
    let r = curl(s.static_url(HASHED_CSS))
        .header("Accept-Encoding: br")
        .send();
    r.assert_status(200)
        .assert_body(&fx.read_sibling(HASHED_CSS, Tool::Brotli));
    // Many connections opened and dropped without a byte.
    for _ in 0..100 {
        drop(Raw::connect(s.addr()));
    }
    s.assert_alive();
    curl(s.static_url(PLAIN_CSS)).send().assert_status(200);
}
