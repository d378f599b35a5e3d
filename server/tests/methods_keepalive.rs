//! Methods (GET, HEAD, 405), HTTP/1.0 and 1.1 persistence, pipelining, Connection: close.

mod common;

use common::*;
use std::time::Duration;

const CLOSE_LIMIT: Duration = Duration::from_secs(5);

#[test]
fn get_serves_the_file_with_the_usual_headers() {
    let fx = Fixture::new();
    let s = fx.server();
    let r = curl(s.static_url(PLAIN_CSS)).send();
    r.assert_status(200).assert_body(&fx.read_static(PLAIN_CSS));
    assert_eq!(r.content_length(), Some(r.body.len() as u64));
    assert_eq!(r.header("content-type"), Some("text/css; charset=utf-8"));
    assert_eq!(r.header("last-modified"), Some(FIXED_MTIME_HTTP));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    r.etag();
    assert_common_file_headers(&r);
}

#[test]
fn head_has_the_same_head_as_get_and_no_body() {
    let fx = Fixture::new();
    let s = fx.server();
    for (path, ae) in [
        (format!("/static/{APP_CSS}"), "Accept-Encoding: br"),
        (format!("/static/{APP_CSS}"), "X-Nothing: 1"),
        (format!("/static/{PHOTO}"), "X-Nothing: 1"),
        (format!("/media/{MEDIA_PDF}"), "X-Nothing: 1"),
        ("/static/missing.css".to_string(), "X-Nothing: 1"),
    ] {
        let get = curl(s.url(&path)).header(ae).send();
        let head = curl(s.url(&path)).header(ae).head().send();
        assert_eq!(head.status, get.status, "{path}");
        assert!(head.body.is_empty());
        for name in [
            "content-length",
            "content-type",
            "etag",
            "last-modified",
            "cache-control",
            "content-encoding",
            "vary",
            "accept-ranges",
            "content-disposition",
            "content-security-policy",
            "x-content-type-options",
        ] {
            assert_eq!(
                head.header(name),
                get.header(name),
                "{name} of HEAD {path} vs GET:\n{head:?}\n{get:?}"
            );
        }
    }
}

#[test]
fn head_sends_no_body_bytes_on_the_wire() {
    // A body after a HEAD response would be read as the start of the next response.
    let fx = Fixture::new();
    let s = fx.server();
    let mut c = Raw::connect(s.addr());
    let p = format!("/static/{PHOTO}");
    c.send(request("HEAD", &p, &[]) + &request("GET", &format!("/static/{PLAIN_CSS}"), &[]));
    let head = c.read_response_to("HEAD");
    head.assert_status(200);
    assert_eq!(head.content_length(), Some(PHOTO_LEN as u64));
    let get = c.read_response();
    get.assert_status(200)
        .assert_body(&fx.read_static(PLAIN_CSS));
}

#[test]
fn other_methods_get_405_with_allow() {
    let fx = Fixture::new();
    let s = fx.server();
    for url in [
        s.static_url(APP_CSS),
        s.static_url(HASHED_CSS),
        s.media_url(MEDIA_PDF),
    ] {
        for m in [
            "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "BREW",
        ] {
            let r = curl(&url).method(m).send();
            assert_eq!(r.status, 405, "{m} {url}:\n{r:?}");
            assert_eq!(r.header("allow"), Some("GET, HEAD"), "{m} {url}:\n{r:?}");
        }
        let r = curl(&url).arg("--data").arg("a=b").send();
        assert_eq!(r.status, 405, "POST {url}:\n{r:?}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
    }
}

#[test]
fn post_with_a_body_does_not_desynchronise_the_connection() {
    // After a 405 the server either skips the request body or closes the connection; it never
    // reads the body as a new request.
    let fx = Fixture::new();
    let s = fx.server();
    let mut c = Raw::connect(s.addr());
    let smuggled = request("GET", "/static/.env", &[]);
    let post = format!(
        "POST /static/{PLAIN_CSS} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    c.send(post);
    let r = c.read_response();
    r.assert_status(405);
    // Follow-up request on the same connection, if it is still open.
    if c.try_send(request("GET", &format!("/static/{PLAIN_CSS}"), &[]))
        .is_ok()
    {
        match c.try_read_response_to("GET", Duration::from_secs(5)) {
            Ok(next) => {
                assert_eq!(
                    next.status, 200,
                    "the POST body must not be answered as a request:\n{next:?}"
                );
                assert_eq!(next.body, fx.read_static(PLAIN_CSS));
            }
            Err(e) => assert!(
                e.contains("closed") || e.contains("reset") || e.contains("Connection"),
                "{e}"
            ),
        }
    }
}

#[test]
fn http11_keeps_the_connection_alive_by_default() {
    let fx = Fixture::new();
    let s = fx.server();
    let urls = vec![
        s.static_url(PLAIN_CSS),
        s.static_url(APP_CSS),
        s.static_url(PHOTO),
    ];
    let (heads, connects) = curl_sequence(&urls, &[], false);
    assert_eq!(
        connects,
        vec![1, 0, 0],
        "curl should reuse one connection:\n{heads:?}"
    );
    for h in &heads {
        h.assert_status(200);
        assert!(!h.header_has_token("connection", "close"), "{h:?}");
    }
}

#[test]
fn http10_closes_by_default() {
    let fx = Fixture::new();
    let s = fx.server();
    let mut c = Raw::connect(s.addr());
    c.send(format!("GET /static/{PLAIN_CSS} HTTP/1.0\r\n\r\n"));
    let r = c.read_response();
    r.assert_status(200).assert_body(&fx.read_static(PLAIN_CSS));
    assert!(!r.header_has_token("connection", "keep-alive"), "{r:?}");
    c.expect_closed(CLOSE_LIMIT);

    let urls = vec![s.static_url(PLAIN_CSS), s.static_url(APP_CSS)];
    let (_, connects) = curl_sequence(&urls, &[], true);
    assert_eq!(
        connects,
        vec![1, 1],
        "HTTP/1.0 without keep-alive: a connection per request"
    );
}

#[test]
fn http10_keep_alive_is_honoured_and_announced() {
    let fx = Fixture::new();
    let s = fx.server();
    let mut c = Raw::connect(s.addr());
    for _ in 0..3 {
        c.send(format!(
            "GET /static/{PLAIN_CSS} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        ));
        let r = c.read_response();
        r.assert_status(200).assert_body(&fx.read_static(PLAIN_CSS));
        assert!(r.header_has_token("connection", "keep-alive"), "{r:?}");
        assert_eq!(
            r.content_length(),
            Some(r.body.len() as u64),
            "1.0 keep-alive needs Content-Length"
        );
    }
    // HEAD and 404 too.
    c.send(format!(
        "HEAD /static/{PLAIN_CSS} HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"
    ));
    assert!(
        c.read_response_to("HEAD")
            .header_has_token("connection", "keep-alive")
    );
    c.send("GET /static/nope.css HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let r = c.read_response();
    r.assert_status(404);
    assert!(r.header_has_token("connection", "keep-alive"), "{r:?}");
    // The connection is still usable.
    c.send(format!("GET /static/{PLAIN_CSS} HTTP/1.0\r\n\r\n"));
    c.read_response().assert_status(200);
    c.expect_closed(CLOSE_LIMIT);

    let urls = vec![s.static_url(PLAIN_CSS), s.static_url(APP_CSS)];
    let (_, connects) = curl_sequence(&urls, &["-H", "Connection: keep-alive"], true);
    assert_eq!(
        connects,
        vec![1, 0],
        "curl over HTTP/1.0 with keep-alive reuses the connection"
    );
}

#[test]
fn connection_close_is_honoured() {
    let fx = Fixture::new();
    let s = fx.server();
    let r = curl(s.static_url(PLAIN_CSS))
        .header("Connection: close")
        .send();
    r.assert_status(200);
    assert!(r.header_has_token("connection", "close"), "{r:?}");

    let urls = vec![s.static_url(PLAIN_CSS), s.static_url(APP_CSS)];
    let (heads, connects) = curl_sequence(&urls, &["-H", "Connection: close"], false);
    assert_eq!(connects, vec![1, 1], "{heads:?}");

    let mut c = Raw::connect(s.addr());
    c.send(request(
        "GET",
        &format!("/static/{PLAIN_CSS}"),
        &["Connection: close"],
    ));
    let r = c.read_response();
    r.assert_status(200).assert_body(&fx.read_static(PLAIN_CSS));
    assert!(r.header_has_token("connection", "close"));
    c.expect_closed(CLOSE_LIMIT);
}

#[test]
fn connection_close_on_a_404_and_a_head() {
    let fx = Fixture::new();
    let s = fx.server();
    let mut c = Raw::connect(s.addr());
    c.send(request(
        "GET",
        "/static/missing.css",
        &["Connection: close"],
    ));
    let r = c.read_response();
    r.assert_status(404);
    assert!(r.header_has_token("connection", "close"));
    c.expect_closed(CLOSE_LIMIT);

    let mut c = Raw::connect(s.addr());
    c.send(request(
        "HEAD",
        &format!("/static/{PHOTO}"),
        &["Connection: close"],
    ));
    let r = c.read_response_to("HEAD");
    r.assert_status(200);
    assert!(r.header_has_token("connection", "close"));
    c.expect_closed(CLOSE_LIMIT);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let fx = Fixture::new();
    let s = fx.server();
    let mut c = Raw::connect(s.addr());
    let reqs = [
        ("GET", format!("/static/{PLAIN_CSS}")),
        ("HEAD", format!("/static/{PHOTO}")),
        ("GET", "/static/missing.css".to_string()),
        ("GET", format!("/static/{PHOTO}")),
        ("GET", format!("/media/{MEDIA_PDF}")),
        ("GET", format!("/static/{ADMIN_CSS}")),
    ];
    let mut all = String::new();
    for (m, p) in &reqs {
        all.push_str(&request(m, p, &[]));
    }
    c.send(all);
    let expect = |r: &Response, m: &str, p: &str| match (m, p) {
        (_, p) if p.contains("missing") => assert_eq!(r.status, 404, "{p}: {r:?}"),
        ("HEAD", _) => {
            assert_eq!(r.status, 200);
            assert_eq!(r.content_length(), Some(PHOTO_LEN as u64));
        }
        (_, p) => {
            r.assert_status(200);
            let (mount, rel) = p.trim_start_matches('/').split_once('/').unwrap();
            let want = if mount == "static" {
                fx.read_static(rel)
            } else {
                fx.read_media(rel)
            };
            r.assert_body(&want);
        }
    };
    for (m, p) in &reqs {
        let r = c.read_response_to(m);
        expect(&r, m, p);
    }
    // Then a last one with Connection: close.
    c.send(request(
        "GET",
        &format!("/static/{PLAIN_CSS}"),
        &["Connection: close"],
    ));
    c.read_response().assert_status(200);
    c.expect_closed(CLOSE_LIMIT);
}

#[test]
fn many_pipelined_requests_in_one_write() {
    let fx = Fixture::new();
    let s = fx.server();
    let mut c = Raw::connect(s.addr());
    let n = 200;
    let mut all = String::new();
    for i in 0..n {
        let p = if i % 2 == 0 {
            format!("/static/{PLAIN_CSS}?i={i}")
        } else {
            format!("/static/{README_TXT}?i={i}")
        };
        all.push_str(&request("GET", &p, &[]));
    }
    c.send(all);
    for i in 0..n {
        let r = c.read_response();
        let rel = if i % 2 == 0 { PLAIN_CSS } else { README_TXT };
        r.assert_status(200).assert_body(&fx.read_static(rel));
    }
}

#[test]
fn pipeline_split_at_awkward_places() {
    // Requests arriving in pieces, split inside the request line, a header and the final CRLF.
    let fx = Fixture::new();
    let s = fx.server();
    let mut c = Raw::connect(s.addr());
    let two = request("GET", &format!("/static/{PLAIN_CSS}"), &["Accept: */*"])
        + &request("GET", &format!("/static/{README_TXT}"), &[]);
    let bytes = two.as_bytes();
    for chunk in [
        &bytes[..5],
        &bytes[5..30],
        &bytes[30..bytes.len() - 40],
        &bytes[bytes.len() - 40..bytes.len() - 1],
        &bytes[bytes.len() - 1..],
    ] {
        c.send(chunk);
        std::thread::sleep(Duration::from_millis(20));
    }
    c.read_response()
        .assert_status(200)
        .assert_body(&fx.read_static(PLAIN_CSS));
    c.read_response()
        .assert_status(200)
        .assert_body(&fx.read_static(README_TXT));
}

#[test]
fn big_response_then_pipelined_request() {
    // The second response must start exactly after the first body: no over- or under-send.
    let fx = Fixture::new();
    let s = fx.server();
    let mut c = Raw::connect(s.addr());
    c.send(
        request("GET", &format!("/static/{PHOTO}"), &[])
            + &request("GET", &format!("/static/{HASHED_PHOTO}"), &[]),
    );
    c.read_response()
        .assert_status(200)
        .assert_body(&fx.read_static(PHOTO));
    c.read_response()
        .assert_status(200)
        .assert_body(&fx.read_static(HASHED_PHOTO));
}
