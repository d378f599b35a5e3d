//! The reverse proxy (`--upstream`), against a real gunicorn serving a real Django project
//! (`tests/proxyapp/`, started by `common::gunicorn`), with curl and raw TCP as clients:
//!
//! - what reaches the app: Host, X-Forwarded-For / X-Real-IP / X-Forwarded-Proto (replaced, or
//!   extended for a `--trusted-proxy`), no hop-by-hop fields, the request target byte for byte,
//!   every method, form posts, a 30 MB multipart upload, chunked bodies, `Expect: 100-continue`,
//!   `--max-body-size`;
//! - what reaches the client: pages with bypass's Server and Date, streamed and 96 MB responses
//!   (whole, and without bypass holding them in memory), HEAD framing;
//! - X-Accel-Redirect into an `--internal` mount (the app's headers kept, X-Accel-* dropped,
//!   Range and conditional requests, never reachable directly, never outside the mount);
//! - failures: the app down (502) and back, too slow (504), failing mid-response (the client
//!   never sees a complete-looking response), an idle pooled connection the app closed;
//! - the static mounts still answered by bypass alone, pipelining across static and proxied
//!   requests, request smuggling refused before anything reaches the app;
//! - a unix-socket upstream.
//!
//! Gunicorn and Django come from the project's virtualenv (`scripts/test` creates it); without
//! it these tests FAIL.

mod common;

use common::gunicorn::{Gunicorn, GunicornBuilder, big_bytes, stream_body};
use common::*;
use serde_json::Value;
use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The internal mount bypass serves X-Accel-Redirect targets from (`SENDFILE_URL` of the app).
const INTERNAL_PREFIX: &str = "/protected-files/";
/// A protected file, and one whose name needs percent-encoding.
const REPORT: &str = "report.pdf";
const SPACED: &str = "my report.pdf";
const REPORT_LEN: usize = 200_000;

// ---------------------------------------------------------------------------------------------
// What reaches the app
// ---------------------------------------------------------------------------------------------

#[test]
fn pages_come_through_with_bypass_server_and_date() {
    let site = Site::start();
    let r = curl(site.url("/hello/")).send();
    r.assert_status(200);
    assert!(
        r.body_text().contains("Hello from the app behind bypass."),
        "{r:?}"
    );
    assert_eq!(
        r.header("content-type"),
        Some("text/html; charset=utf-8"),
        "{r:?}"
    );
    assert_proxied_headers(&r);

    // The app's own statuses and fields pass through.
    let r = curl(site.url("/echo/?status=404")).send();
    r.assert_status(404);
    assert_eq!(r.header("x-echo"), Some("yes"), "{r:?}");
    assert_proxied_headers(&r);
    let r = curl(site.url("/no-such-page/")).send();
    r.assert_status(404);
    assert!(r.body_text().contains("Not Found"), "Django's 404:\n{r:?}");
    site.app.wait_for_request("GET /no-such-page/ ");
}

#[test]
fn forwarding_headers_name_the_client_and_host_is_kept() {
    let site = Site::start();
    let v = echo(
        &curl(site.url("/echo/?who"))
            .header("Host: shop.example:8443")
            .send(),
    );
    assert_eq!(app_header(&v, "HOST"), Some("shop.example:8443"), "{v}");
    assert_eq!(app_header(&v, "X_FORWARDED_FOR"), Some("127.0.0.1"), "{v}");
    assert_eq!(app_header(&v, "X_REAL_IP"), Some("127.0.0.1"), "{v}");
    assert_eq!(app_header(&v, "X_FORWARDED_PROTO"), Some("http"), "{v}");

    // A client that is not a trusted proxy cannot choose what the app believes.
    let v = echo(
        &curl(site.url("/echo/?spoofed"))
            .header("X-Forwarded-For: 6.6.6.6")
            .header("X-Forwarded-For: 7.7.7.7")
            .header("X-Real-IP: 6.6.6.6")
            .header("X-Forwarded-Proto: https")
            .send(),
    );
    assert_eq!(app_header(&v, "X_FORWARDED_FOR"), Some("127.0.0.1"), "{v}");
    assert_eq!(app_header(&v, "X_REAL_IP"), Some("127.0.0.1"), "{v}");
    assert_eq!(app_header(&v, "X_FORWARDED_PROTO"), Some("http"), "{v}");
}

#[test]
fn a_trusted_proxy_s_x_forwarded_for_is_kept_and_extended() {
    for trusted in ["127.0.0.1", "127.0.0.0/8"] {
        let site = Site::start_with(|g| g, |b| b.arg("--trusted-proxy").arg(trusted));
        let v = echo(
            &curl(site.url("/echo/?via-lb"))
                .header("X-Forwarded-For: 203.0.113.7")
                .send(),
        );
        assert_eq!(
            app_header(&v, "X_FORWARDED_FOR"),
            Some("203.0.113.7, 127.0.0.1"),
            "--trusted-proxy {trusted}: {v}"
        );
        let v = echo(&curl(site.url("/echo/?direct")).send());
        assert_eq!(
            app_header(&v, "X_FORWARDED_FOR"),
            Some("127.0.0.1"),
            "--trusted-proxy {trusted}, no incoming field: {v}"
        );
    }
    // A trusted network the peer is not in changes nothing.
    let site = Site::start_with(|g| g, |b| b.arg("--trusted-proxy").arg("10.0.0.0/8"));
    let v = echo(
        &curl(site.url("/echo/?untrusted"))
            .header("X-Forwarded-For: 203.0.113.7")
            .send(),
    );
    assert_eq!(app_header(&v, "X_FORWARDED_FOR"), Some("127.0.0.1"), "{v}");
}

#[test]
fn hop_by_hop_fields_do_not_reach_the_app() {
    let site = Site::start();
    let with_hops = |url: String| {
        curl(url)
            .header("Connection: keep-alive, X-Hop")
            .header("Keep-Alive: timeout=5")
            .header("TE: trailers")
            .header("X-Hop: per-connection secret")
            .header("Proxy-Connection: keep-alive")
            .header("Upgrade: foo/1")
            .header("X-Keep: end-to-end")
            .send()
    };
    let hops = [
        "CONNECTION",
        "KEEP_ALIVE",
        "TE",
        "X_HOP",
        "PROXY_CONNECTION",
        "UPGRADE",
    ];
    // Straight to gunicorn every one of them reaches Django: it is bypass that must drop them.
    let direct = echo(&with_hops(format!(
        "http://{}/echo/?direct",
        site.app.addr()
    )));
    for name in hops {
        assert!(app_header(&direct, name).is_some(), "HTTP_{name}: {direct}");
    }
    let v = echo(&with_hops(site.url("/echo/?hops")));
    for name in hops {
        assert_eq!(
            app_header(&v, name),
            None,
            "HTTP_{name} reached the app: {v}"
        );
    }
    assert_eq!(app_header(&v, "X_KEEP"), Some("end-to-end"), "{v}");
}

#[test]
fn the_request_target_is_forwarded_byte_for_byte() {
    let site = Site::start();
    for target in [
        "/echo/?a=%20b&c=d%2Fe&&x",
        "/echo/?y=%zz&p=1+2%2B3&e=&=v&;k=v",
        "/echo/?q=caf%C3%A9&Q=CAF%c3%a9&s=a%2fb",
        "/echo/a%2Fb/c%20d/?x=1",
        "/echo/?",
    ] {
        let mut c = Raw::connect(site.bypass.addr());
        c.send(request("GET", target, &[]));
        let v = echo(&c.read_response());
        assert_eq!(v["raw_uri"], target, "{v}");
        let query = target.split_once('?').map_or("", |(_, q)| q);
        assert_eq!(v["query_string"], query, "{v}");
    }
}

#[test]
fn every_method_is_forwarded() {
    let site = Site::start();
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let mut c = curl(site.url(&format!("/echo/?m={method}"))).method(method);
        if method != "GET" {
            c = c.arg("--data-binary").arg("payload");
        }
        let v = echo(&c.send());
        assert_eq!(v["method"], method, "{v}");
    }
    // HEAD: the app's answer has a Content-Length and no body; the next request on the same
    // connection must not be taken for that body.
    let mut c = Raw::connect(site.bypass.addr());
    c.send(request("HEAD", "/hello/", &[]) + &request("GET", "/echo/?after-head", &[]));
    let head = c.read_response_to("HEAD");
    head.assert_status(200);
    assert!(head.body.is_empty());
    assert_eq!(echo(&c.read_response())["query_string"], "after-head");
}

#[test]
fn a_form_post_reaches_the_app() {
    let site = Site::start();
    let r = curl(site.url("/form/"))
        .arg("--data-urlencode")
        .arg("name=Zoë & co")
        .arg("--data")
        .arg("n=1&n=2")
        .send();
    r.assert_status(200);
    let v = json(&r);
    assert_eq!(
        v["content_type"], "application/x-www-form-urlencoded",
        "{v}"
    );
    assert_eq!(v["fields"]["name"], serde_json::json!(["Zoë & co"]), "{v}");
    assert_eq!(v["fields"]["n"], serde_json::json!(["1", "2"]), "{v}");
}

#[test]
fn a_30_mb_upload_is_saved_and_served_back_from_media() {
    let site = Site::start();
    let data = pseudo_random_bytes(30, 30 << 20);
    let file = site.fx.root().join("upload-30mb.bin");
    fs::write(&file, &data).unwrap();
    // curl sends a body this size with `Expect: 100-continue`.
    let r = curl(site.url("/upload/"))
        .arg("-F")
        .arg(format!("file=@{}", file.display()))
        .arg("-F")
        .arg("note=thirty megabytes")
        .send();
    r.assert_status(200);
    let v = json(&r);
    assert_eq!(v["size"], data.len(), "{v}");
    assert_eq!(v["sha256"], sha256_hex(&data), "{v}");
    assert_eq!(
        v["fields"]["note"],
        serde_json::json!(["thirty megabytes"]),
        "{v}"
    );
    let name = v["name"].as_str().expect("saved name");
    assert_eq!(name, "uploads/upload-30mb.bin", "{v}");
    assert!(
        site.fx.read_media(name) == data,
        "the saved file differs from the upload"
    );
    let back = curl(site.bypass.media_url(name)).send();
    back.assert_status(200).assert_body(&data);
    assert_eq!(back.header("server"), Some("bypass"));
}

#[test]
fn a_chunked_request_body_reaches_the_app_whole() {
    let site = Site::start();
    let data = pseudo_random_bytes(31, 1_500_000);
    let file = site.fx.root().join("chunked.bin");
    fs::write(&file, &data).unwrap();
    let v = echo(
        &curl(site.url("/echo/?chunked=curl"))
            .header("Transfer-Encoding: chunked")
            .header("Content-Type: application/octet-stream")
            .arg("--data-binary")
            .arg(format!("@{}", file.display()))
            .send(),
    );
    assert_eq!(v["body_len"], data.len(), "{v}");
    assert_eq!(v["body_sha256"], sha256_hex(&data), "{v}");

    // By hand: chunk extensions and a trailer; the connection stays usable afterwards.
    let mut c = Raw::connect(site.bypass.addr());
    c.send(
        "POST /echo/?chunked=raw HTTP/1.1\r\nHost: bypass.test\r\nTransfer-Encoding: chunked\r\n\r\n\
         5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
    );
    let v = echo(&c.read_response());
    assert_eq!(v["body_len"], 11, "{v}");
    assert_eq!(v["body_sha256"], sha256_hex(b"hello world"), "{v}");
    c.send(request("GET", "/echo/?after-chunked", &[]));
    assert_eq!(echo(&c.read_response())["query_string"], "after-chunked");
}

#[test]
fn a_chunked_multipart_upload_reaches_django_with_its_length() {
    // Django (WSGI) reads no body without a Content-Length; bypass spools a chunked body and
    // passes it on with its length, as nginx does, so the upload is not silently empty.
    let site = Site::start();
    let data = pseudo_random_bytes(32, 3 << 20);
    let file = site.fx.root().join("chunked-upload.bin");
    fs::write(&file, &data).unwrap();
    let r = curl(site.url("/upload/"))
        .header("Transfer-Encoding: chunked")
        .arg("-F")
        .arg(format!("file=@{}", file.display()))
        .arg("-F")
        .arg("note=chunked")
        .send();
    r.assert_status(200);
    let v = json(&r);
    assert_eq!(v["size"], data.len(), "{v}");
    assert_eq!(v["sha256"], sha256_hex(&data), "{v}");
    assert_eq!(v["fields"]["note"], serde_json::json!(["chunked"]), "{v}");
    let v = echo(
        &curl(site.url("/echo/?chunked-length"))
            .header("Transfer-Encoding: chunked")
            .arg("--data-binary")
            .arg("abc")
            .send(),
    );
    assert_eq!(app_header(&v, "TRANSFER_ENCODING"), None, "{v}");
    assert_eq!(v["content_length"], "3", "{v}");
    assert_eq!(v["body_len"], 3, "{v}");
}

#[test]
fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let site = Site::start();
    let mut c = Raw::connect(site.bypass.addr());
    c.send(
        "POST /echo/?expect HTTP/1.1\r\nHost: bypass.test\r\nContent-Length: 11\r\n\
         Expect: 100-continue\r\n\r\n",
    );
    let interim = c.read_head();
    assert_eq!(
        interim.status, 100,
        "a 100 Continue before the body:\n{interim:?}"
    );
    c.send("hello world");
    let mut r = c.read_response();
    while r.status == 100 {
        r = c.read_response();
    }
    let v = echo(&r);
    assert_eq!(v["body_len"], 11, "{v}");
    assert_eq!(v["body_sha256"], sha256_hex(b"hello world"), "{v}");
}

#[test]
fn a_body_over_max_body_size_is_413_and_never_reaches_the_app() {
    let site = Site::start_with(|g| g, |b| b.arg("--max-body-size").arg("1M"));
    let limit = 1usize << 20;
    for (marker, expect) in [
        ("too-big-plain", ""),
        ("too-big-expect", "Expect: 100-continue"),
    ] {
        let mut c = Raw::connect(site.bypass.addr());
        let mut fields = vec![format!("Content-Length: {}", limit + 1)];
        if !expect.is_empty() {
            fields.push(expect.to_string());
        }
        let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
        // Only the head: the answer must not wait for the body.
        c.send(request("POST", &format!("/echo/?{marker}"), &fields));
        let r = c.read_response();
        assert_eq!(
            r.status, 413,
            "{marker}: 413 at once (no 100 Continue first):\n{r:?}"
        );
    }
    site.sync_with_app("limit-sentinel");
    // Exactly the limit passes.
    let data = pseudo_random_bytes(32, limit);
    let file = site.fx.root().join("limit.bin");
    fs::write(&file, &data).unwrap();
    let v = echo(
        &curl(site.url("/echo/?at-the-limit"))
            .arg("--data-binary")
            .arg(format!("@{}", file.display()))
            .send(),
    );
    assert_eq!(v["body_len"], limit, "{v}");
    assert!(
        !site.app.saw("too-big"),
        "the app saw a request over the limit:\n{:?}",
        site.app.access_log()
    );
}

// ---------------------------------------------------------------------------------------------
// What reaches the client
// ---------------------------------------------------------------------------------------------

#[test]
fn a_streamed_response_arrives_whole_and_as_it_is_produced() {
    let site = Site::start();
    let r = curl(site.url("/stream/?n=500")).send();
    r.assert_status(200)
        .assert_body(stream_body(500).as_bytes());
    assert_proxied_headers(&r);

    // The app sends its first line, then waits for a file that only appears once that line
    // has reached the client: a proxy that buffers the whole response never delivers it.
    let gate = site.fx.root().join("gate");
    let mut c = Raw::connect(site.bypass.addr());
    c.send(request(
        "GET",
        &format!("/stream/?n=3&gate={}", gate.display()),
        &["Connection: close"],
    ));
    let head = c.read_head();
    head.assert_status(200);
    let first = read_until_contains(&mut c, b"line 0 of 3\n");
    fs::write(&gate, b"").unwrap();
    let mut wire = first;
    wire.extend(c.read_to_close(IO_TIMEOUT));
    assert_eq!(
        String::from_utf8_lossy(&body_of(&head, &wire)),
        stream_body(3)
    );
}

#[test]
fn a_96_mb_download_streams_through_without_piling_up_in_bypass() {
    let site = Site::start();
    let mb = 96;
    let target = format!("/big/?mb={mb}");
    let pid = site.bypass.pid();
    echo(&curl(site.url("/echo/?warm-up")).send());
    let before = rss_kib(pid);

    let mut c = Raw::connect(site.bypass.addr());
    // A small receive window, so the kernel holds little of the response on our side.
    set_rcvbuf(c.stream(), 64 * 1024);
    c.send(request("GET", &target, &["Connection: close"]));
    let head = c.read_head();
    head.assert_status(200);
    let mut wire = c.read_up_to(64 * 1024, IO_TIMEOUT);

    // Not reading for a while: bypass must stop reading from the app too (so the app cannot
    // finish), not pile the response up in its memory.
    let window = Instant::now() + Duration::from_millis(1500);
    let mut peak = before;
    while Instant::now() < window {
        peak = peak.max(rss_kib(pid));
        assert!(
            !site.app.saw(&target),
            "the app finished sending {mb} MB while the client read 64 KiB: bypass buffers \
             (RSS {before} -> {peak} KiB)"
        );
        thread::sleep(Duration::from_millis(25));
    }
    assert!(
        peak < before + 32 * 1024,
        "bypass's RSS grew from {before} KiB to {peak} KiB while the client was not reading"
    );

    wire.extend(c.read_to_close(Duration::from_secs(60)));
    let body = body_of(&head, &wire);
    assert!(
        body == big_bytes(mb),
        "download differs: got {} bytes, expected {}",
        body.len(),
        mb << 20
    );
}

#[test]
fn a_50_mb_download_with_content_length_arrives_intact() {
    let site = Site::start();
    let r = curl(site.url("/big/?mb=50&length=1")).send();
    r.assert_status(200);
    assert_eq!(r.content_length(), Some(50 << 20), "{r:?}");
    r.assert_body(&big_bytes(50));
    assert_proxied_headers(&r);
}

// ---------------------------------------------------------------------------------------------
// X-Accel-Redirect
// ---------------------------------------------------------------------------------------------

#[test]
fn x_accel_redirect_serves_the_protected_file_with_the_app_s_headers() {
    let site = Site::start();
    let pdf = site.protected_bytes(REPORT);
    let url = site.url(&format!("/protected/{REPORT}"));

    // django-sendfile2 answers with an empty body but Content-Length: <file size>, and keeps
    // the connection open: a proxy waiting for those bytes stalls for gunicorn's keep-alive.
    let t0 = Instant::now();
    let r = curl(&url).send();
    let took = t0.elapsed();
    r.assert_status(200).assert_body(&pdf);
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert_eq!(r.header("content-type"), Some("application/pdf"), "{r:?}");
    assert_eq!(
        r.header("content-disposition"),
        Some("attachment; filename=\"report.pdf\""),
        "{r:?}"
    );
    assert_eq!(
        r.header("cache-control"),
        Some("private, max-age=60"),
        "{r:?}"
    );
    assert!(
        r.header("set-cookie")
            .is_some_and(|c| c.starts_with("downloaded=1")),
        "{r:?}"
    );
    assert_eq!(r.content_length(), Some(REPORT_LEN as u64), "{r:?}");
    assert_no_x_accel(&r);
    assert_eq!(r.header("server"), Some("bypass"), "{r:?}");
    let etag = r.etag().to_string();

    let r = curl(&url).range("bytes=0-9").send();
    r.assert_status(206).assert_body(&pdf[..10]);
    assert_eq!(
        parse_content_range(r.expect_header("content-range")),
        (0, 9, REPORT_LEN as u64)
    );
    assert!(r.has_header("content-disposition"), "{r:?}");
    assert_no_x_accel(&r);

    let r = curl(&url).header(format!("If-None-Match: {etag}")).send();
    r.assert_status(304);
    assert!(r.body.is_empty(), "{r:?}");
    assert_no_x_accel(&r);

    let r = curl(&url).head().send();
    r.assert_status(200);
    assert_eq!(r.content_length(), Some(REPORT_LEN as u64), "{r:?}");

    // A name the app percent-encodes in X-Accel-Redirect.
    let r = curl(site.url("/protected/my%20report.pdf")).send();
    r.assert_status(200)
        .assert_body(&site.protected_bytes(SPACED));
    assert_eq!(
        r.header("content-disposition"),
        Some("attachment; filename=\"my report.pdf\""),
        "{r:?}"
    );

    // The app's own 404 when it refuses.
    curl(site.url("/protected/missing.pdf"))
        .send()
        .assert_status(404);
    // The upstream connection is still in a sane state.
    let v = echo(&curl(site.url("/echo/?after-accel")).send());
    assert_eq!(v["query_string"], "after-accel");
}

#[test]
fn the_internal_mount_is_not_reachable_from_outside() {
    let site = Site::start();
    for path in [
        format!("{INTERNAL_PREFIX}{REPORT}"),
        format!("{INTERNAL_PREFIX}my%20report.pdf"),
        INTERNAL_PREFIX.to_string(),
        format!("{INTERNAL_PREFIX}missing.pdf"),
    ] {
        let r = curl(site.url(&path)).send();
        r.assert_status(404);
        assert!(
            !r.body.starts_with(b"%PDF"),
            "{path} served the protected file:\n{r:?}"
        );
        assert_eq!(r.header("server"), Some("bypass"), "{r:?}");
    }
    site.sync_with_app("internal-sentinel");
    assert!(
        !site.app.saw(INTERNAL_PREFIX),
        "requests under the internal prefix reached the app:\n{:?}",
        site.app.access_log()
    );
}

#[test]
fn x_accel_redirect_replaces_the_app_s_body_and_stays_inside_the_mount() {
    let site = Site::start();
    let pdf = site.protected_bytes(REPORT);
    let accel = |to: &str| curl(site.url(&format!("/accel/?to={}", percent_encode(to)))).send();

    let r = accel(&format!("{INTERNAL_PREFIX}{REPORT}"));
    r.assert_status(200).assert_body(&pdf);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain"),
        "the app's:\n{r:?}"
    );
    assert_eq!(
        r.header("cache-control"),
        Some("private, max-age=60"),
        "{r:?}"
    );
    assert_no_x_accel(&r);

    curl(site.url(&format!(
        "/accel/?to={}",
        percent_encode(&format!("{INTERNAL_PREFIX}missing.pdf"))
    )))
    .send()
    .assert_status(404);

    for escape in [
        format!("{INTERNAL_PREFIX}../outside/secret.txt"),
        format!("{INTERNAL_PREFIX}%2e%2e/outside/secret.txt"),
        format!("{INTERNAL_PREFIX}..%2Foutside%2Fsecret.txt"),
        format!("{INTERNAL_PREFIX}leak.txt"),
    ] {
        let r = accel(&escape);
        assert!(
            r.status >= 400 && !r.body_text().contains(SECRET),
            "X-Accel-Redirect: {escape} escaped the internal mount:\n{r:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Failures
// ---------------------------------------------------------------------------------------------

#[test]
fn the_app_down_is_502_at_once_and_back_without_restarting_bypass() {
    let mut site = Site::start();
    for i in 0..3 {
        echo(&curl(site.url(&format!("/echo/?before={i}"))).send());
    }
    site.app.kill();
    for i in 0..2 {
        let t0 = Instant::now();
        let r = curl(site.url(&format!("/echo/?down={i}"))).send();
        let took = t0.elapsed();
        r.assert_status(502);
        assert!(took < Duration::from_secs(2), "502 took {took:?}");
        let text = r.body_text();
        assert!(
            text.to_ascii_lowercase().contains("upstream")
                || text.contains(&site.app.upstream_arg()),
            "the body says the upstream failed:\n{r:?}"
        );
        assert_eq!(r.header("server"), Some("bypass"), "{r:?}");
    }
    // Static files do not depend on the app.
    curl(site.bypass.static_url(APP_CSS))
        .send()
        .assert_status(200);

    site.app.restart();
    for i in 0..5 {
        let v = echo(&curl(site.url(&format!("/echo/?after={i}"))).send());
        assert_eq!(v["query_string"], format!("after={i}"));
    }
}

#[test]
fn a_slow_app_is_504_after_the_upstream_timeout() {
    let site = Site::start_with(|g| g, |b| b.arg("--upstream-timeout").arg("2"));
    let t0 = Instant::now();
    let r = curl(site.url("/slow/?secs=5")).send();
    let took = t0.elapsed();
    r.assert_status(504);
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_millis(4500),
        "504 after {took:?}, expected about 2 s"
    );
    assert_eq!(r.header("server"), Some("bypass"), "{r:?}");
    // The late answer must not turn up as the answer to the next request.
    let v = echo(&curl(site.url("/echo/?after-504")).send());
    assert_eq!(v["query_string"], "after-504");
    // A quick answer within the timeout is fine.
    curl(site.url("/slow/?secs=0.2")).send().assert_status(200);
}

#[test]
fn sigterm_lets_a_request_with_the_app_finish() {
    let mut site = Site::start();
    let mut c = Raw::connect(site.bypass.addr());
    c.send(request("GET", "/slow/?secs=1.5", &[]));
    // The app has the request (gunicorn logs it only when done, so wait for bypass's side: the
    // upstream connection is open) before the signal arrives.
    poll_until(
        Duration::from_secs(10),
        "bypass to connect to the app",
        || (site.app.established_connections() > 0).then_some(()),
    );
    site.bypass.signal(libc::SIGTERM);
    let r = c.read_response();
    r.assert_status(200);
    assert!(r.body_text().starts_with("slept 1.5"), "{r:?}");
    let status = site.bypass.wait_exit(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

#[test]
fn an_app_failing_mid_response_never_looks_complete() {
    let site = Site::start();
    // Straight from gunicorn both are cut short (a head, 64 KiB, then FIN): with
    // Content-Length: 1048576, and chunked without the last chunk.
    for target in ["/reset/", "/reset/?framing=chunked"] {
        match curl(site.url(target)).try_send() {
            Err(e) => assert!(
                !e.contains("timed out"),
                "{target}: bypass should close the connection, not stall: {e}"
            ),
            Ok(r) => panic!("{target}: curl took a cut-off response as complete:\n{r:?}"),
        }
        let mut c = Raw::connect(site.bypass.addr());
        c.send(request("GET", target, &[]));
        match c.try_read_response_to("GET", Duration::from_secs(5)) {
            Err(e) => assert!(
                !e.contains("timed out"),
                "{target}: bypass should close the connection, not stall: {e}"
            ),
            Ok(r) => panic!("{target}: a complete-looking response:\n{r:?}"),
        }
    }
    let v = echo(&curl(site.url("/echo/?after-reset")).send());
    assert_eq!(v["query_string"], "after-reset");
}

#[test]
fn a_pooled_connection_the_app_closed_is_not_an_error() {
    let site = Site::start_with(|g| g.keep_alive(1), |b| b);
    echo(&curl(site.url("/echo/?first")).send());
    // Gunicorn closes idle connections after its keep-alive (1 s here).
    poll_until(
        Duration::from_secs(10),
        "gunicorn to close its idle connections",
        || (site.app.established_connections() == 0).then_some(()),
    );
    for i in 0..3 {
        let v = echo(&curl(site.url(&format!("/echo/?again={i}"))).send());
        assert_eq!(v["query_string"], format!("again={i}"));
    }
}

#[test]
fn upstream_connections_are_kept_alive_and_reused() {
    let site = Site::start_with(|g| g.keep_alive(10), |b| b.arg("--workers").arg("1"));
    let mut ports = Vec::new();
    for i in 0..10 {
        let v = echo(&curl(site.url(&format!("/echo/?pool={i}"))).send());
        ports.push(v["remote_port"].as_str().unwrap_or_default().to_string());
    }
    ports.sort();
    ports.dedup();
    assert!(
        ports.len() <= 2,
        "10 requests one after another used {} upstream connections: {ports:?}",
        ports.len()
    );
}

// ---------------------------------------------------------------------------------------------
// Mounts, pipelining, smuggling, unix sockets
// ---------------------------------------------------------------------------------------------

#[test]
fn static_and_media_404s_are_answered_by_bypass_alone() {
    let site = Site::start();
    for url in [
        site.bypass.static_url("missing.css"),
        site.bypass.static_url("css/nope.3f2a9c1b7d4e.css"),
        site.bypass.media_url("uploads/missing.pdf"),
    ] {
        let r = curl(&url).send();
        r.assert_status(404);
        assert_eq!(r.header("server"), Some("bypass"), "{r:?}");
    }
    // Only paths under a mount's prefix belong to it.
    curl(site.url("/staticfoo/x.css")).send().assert_status(404);
    site.sync_with_app("mounts-sentinel");
    assert!(site.app.saw("GET /staticfoo/x.css "));
    for path in ["missing.css", "nope.3f2a9c1b7d4e", "uploads/missing.pdf"] {
        assert!(
            !site.app.saw(path),
            "{path} reached the app:\n{:?}",
            site.app.access_log()
        );
    }
}

#[test]
fn pipelined_static_and_proxied_requests_are_answered_in_order() {
    let site = Site::start();
    let mut c = Raw::connect(site.bypass.addr());
    let mut batch = request("GET", &format!("/static/{APP_CSS}"), &[]);
    batch += &request("GET", "/echo/?pipe=1", &[]);
    batch += &request("GET", &format!("/static/{PHOTO}"), &[]);
    batch += "POST /echo/?pipe=2 HTTP/1.1\r\nHost: bypass.test\r\nContent-Length: 3\r\n\r\nabc";
    batch += &request("GET", "/stream/?n=20", &[]);
    batch += &request("GET", &format!("/media/{MEDIA_PDF}"), &[]);
    c.send(batch);

    c.read_response()
        .assert_status(200)
        .assert_body(&site.fx.read_static(APP_CSS));
    assert_eq!(echo(&c.read_response())["query_string"], "pipe=1");
    c.read_response()
        .assert_status(200)
        .assert_body(&site.fx.read_static(PHOTO));
    let v = echo(&c.read_response());
    assert_eq!(v["query_string"], "pipe=2");
    assert_eq!(v["body_sha256"], sha256_hex(b"abc"), "{v}");
    c.read_response()
        .assert_status(200)
        .assert_body(stream_body(20).as_bytes());
    c.read_response()
        .assert_status(200)
        .assert_body(&site.fx.read_media(MEDIA_PDF));
}

#[test]
fn request_smuggling_is_400_and_never_reaches_the_app() {
    let site = Site::start();
    let smuggled = "GET /echo/?smuggled HTTP/1.1\r\nHost: bypass.test\r\n\r\n";
    let cases: Vec<(&str, String)> = vec![
        (
            "cl-te",
            format!(
                "POST /echo/?smuggle=cl-te HTTP/1.1\r\nHost: bypass.test\r\nContent-Length: 4\r\n\
                 Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "te-cl",
            format!(
                "POST /echo/?smuggle=te-cl HTTP/1.1\r\nHost: bypass.test\r\nTransfer-Encoding: chunked\r\n\
                 Content-Length: 5\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "two-cl",
            format!(
                "POST /echo/?smuggle=two-cl HTTP/1.1\r\nHost: bypass.test\r\nContent-Length: 0\r\n\
                 Content-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
        ),
        (
            "cl-list",
            format!(
                "POST /echo/?smuggle=cl-list HTTP/1.1\r\nHost: bypass.test\r\nContent-Length: 0, {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
        ),
        (
            "cl-1x",
            format!(
                "POST /echo/?smuggle=cl-1x HTTP/1.1\r\nHost: bypass.test\r\nContent-Length: 1x\r\n\r\nx{smuggled}"
            ),
        ),
        (
            "te-space",
            format!(
                "POST /echo/?smuggle=te-space HTTP/1.1\r\nHost: bypass.test\r\nTransfer-Encoding : chunked\r\n\
                 Content-Length: 0\r\n\r\n5\r\nhello\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "bare-lf",
            format!(
                "GET /echo/?smuggle=bare-lf HTTP/1.1\r\nHost: bypass.test\nX-Foo: bar\r\n\r\n{smuggled}"
            ),
        ),
    ];
    for (name, bytes) in &cases {
        let mut c = Raw::connect(site.bypass.addr());
        c.send(bytes);
        let r = c.read_response();
        assert_eq!(r.status, 400, "{name}:\n{r:?}");
        c.expect_closed(IO_TIMEOUT);
    }
    // A chunk size past any integer: 400 and closed; the app, if it saw the head at all, must
    // not have answered it, and the request hidden behind it never reaches the app.
    let mut c = Raw::connect(site.bypass.addr());
    c.send(format!(
        "POST /echo/?smuggle=chunk-overflow HTTP/1.1\r\nHost: bypass.test\r\n\
         Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nhello\r\n0\r\n\r\n{smuggled}"
    ));
    let r = c.read_response();
    assert_eq!(r.status, 400, "chunk-overflow:\n{r:?}");
    c.expect_closed(IO_TIMEOUT);

    site.sync_with_app("smuggling-sentinel");
    let log = site.app.access_log();
    for (name, _) in &cases {
        assert!(
            !site.app.saw(&format!("smuggle={name} ")),
            "{name} reached the app:\n{log:?}"
        );
    }
    assert!(
        !site
            .app
            .requests_matching("smuggle=chunk-overflow ")
            .iter()
            .any(|l| l.ends_with(" 200")),
        "the app answered the chunk-overflow request:\n{log:?}"
    );
    assert!(
        !site.app.saw("smuggled"),
        "a smuggled request reached the app:\n{log:?}"
    );
    assert_eq!(
        site.app.invalid_requests(),
        Vec::<String>::new(),
        "gunicorn was sent requests it could not parse"
    );
}

#[test]
fn a_unix_socket_upstream_works_like_tcp() {
    let site = Site::start_with(|g| g.unix(), |b| b);
    assert!(site.app.socket_path().exists());
    let v = echo(
        &curl(site.url("/echo/?over=unix"))
            .header("Host: shop.example")
            .send(),
    );
    assert_eq!(v["query_string"], "over=unix");
    assert_eq!(app_header(&v, "HOST"), Some("shop.example"), "{v}");
    assert_eq!(app_header(&v, "X_FORWARDED_FOR"), Some("127.0.0.1"), "{v}");
    assert_eq!(app_header(&v, "X_REAL_IP"), Some("127.0.0.1"), "{v}");

    let v = echo(
        &curl(site.url("/echo/?post"))
            .arg("--data-binary")
            .arg("over the socket")
            .send(),
    );
    assert_eq!(v["body_sha256"], sha256_hex(b"over the socket"), "{v}");
    curl(site.url("/stream/?n=50"))
        .send()
        .assert_status(200)
        .assert_body(stream_body(50).as_bytes());
    curl(site.url("/big/?mb=4"))
        .send()
        .assert_status(200)
        .assert_body(&big_bytes(4));
    curl(site.url(&format!("/protected/{REPORT}")))
        .send()
        .assert_status(200)
        .assert_body(&site.protected_bytes(REPORT));
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A fixture tree (with `protected/` beside `static/` and `media/`), the app on gunicorn, and
/// bypass in front of it: `--static /static/`, `--media /media/` (the app's MEDIA_ROOT),
/// `--internal /protected-files/=protected` and `--upstream` the app.
struct Site {
    bypass: Server,
    app: Gunicorn,
    fx: Fixture,
}

impl Site {
    fn start() -> Site {
        Site::start_with(|g| g, |b| b)
    }

    fn start_with(
        app: impl FnOnce(GunicornBuilder) -> GunicornBuilder,
        bypass: impl FnOnce(ServerBuilder) -> ServerBuilder,
    ) -> Site {
        let fx = Fixture::new();
        let protected = fx.root().join("protected");
        fs::create_dir_all(&protected).unwrap();
        let mut pdf = b"%PDF-1.4\n".to_vec();
        pdf.extend(pseudo_random_bytes(40, REPORT_LEN - pdf.len()));
        fs::write(protected.join(REPORT), &pdf).unwrap();
        fs::write(protected.join(SPACED), b"%PDF-1.4\nthe spaced one\n").unwrap();
        std::os::unix::fs::symlink("../outside/secret.txt", protected.join("leak.txt")).unwrap();

        let app = app(Gunicorn::builder(&fx.media_root(), &protected)).start();
        let mut internal = std::ffi::OsString::from(format!("{INTERNAL_PREFIX}="));
        internal.push(protected.as_os_str());
        let builder = fx
            .builder()
            .arg("--internal")
            .arg(internal)
            .arg("--upstream")
            .arg(app.upstream_arg());
        let bypass = bypass(builder).start();
        Site { bypass, app, fx }
    }

    fn url(&self, path: &str) -> String {
        self.bypass.url(path)
    }

    fn protected_path(&self, name: &str) -> PathBuf {
        self.fx.root().join("protected").join(name)
    }

    fn protected_bytes(&self, name: &str) -> Vec<u8> {
        fs::read(self.protected_path(name)).unwrap()
    }

    /// Sends a marker request through bypass and waits until gunicorn has logged it, so that
    /// whatever bypass forwarded before has had its chance to show up in the log.
    fn sync_with_app(&self, marker: &str) {
        echo(&curl(self.url(&format!("/echo/?{marker}"))).send());
        self.app.wait_for_request(marker);
    }
}

/// The JSON body of a response.
#[track_caller]
fn json(r: &Response) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}):\n{r:?}"))
}

/// The JSON of an `/echo/` response, which must be the app's 200.
#[track_caller]
fn echo(r: &Response) -> Value {
    r.assert_status(200);
    assert_eq!(
        r.header("x-echo"),
        Some("yes"),
        "not the app's echo:\n{r:?}"
    );
    json(r)
}

/// `HTTP_<NAME>` as the app saw it.
fn app_header<'a>(echo: &'a Value, name: &str) -> Option<&'a str> {
    echo["headers"][format!("HTTP_{name}")].as_str()
}

/// A proxied response carries bypass's Server and one current Date, not gunicorn's.
#[track_caller]
fn assert_proxied_headers(r: &Response) {
    assert_eq!(r.headers_named("server"), ["bypass"], "{r:?}");
    let dates = r.headers_named("date");
    assert_eq!(dates.len(), 1, "one Date:\n{r:?}");
    let d = parse_http_date(dates[0]).unwrap_or_else(|| panic!("bad Date:\n{r:?}"));
    assert!(d.abs_diff(now_secs()) < 60, "Date is not now:\n{r:?}");
}

#[track_caller]
fn assert_no_x_accel(r: &Response) {
    assert!(
        !r.headers
            .iter()
            .any(|(n, _)| n.to_ascii_lowercase().starts_with("x-accel-")),
        "X-Accel-* must not reach the client:\n{r:?}"
    );
}

/// sha256 of `data` in hex, by coreutils' `sha256sum`.
fn sha256_hex(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run sha256sum");
    let mut stdin = child.stdin.take().unwrap();
    let input = data.to_vec();
    let writer = thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("sha256sum");
    writer.join().unwrap().expect("feed sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_string()
}

/// Percent-encodes everything but unreserved characters (for a value in a query string).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Reads body bytes one at a time until they contain `needle`; returns everything read.
#[track_caller]
fn read_until_contains(c: &mut Raw, needle: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    while !got.windows(needle.len()).any(|w| w == needle) {
        let b = c.read_up_to(1, IO_TIMEOUT);
        assert!(
            !b.is_empty(),
            "connection closed before {:?} arrived; got {:?}",
            String::from_utf8_lossy(needle),
            String::from_utf8_lossy(&got)
        );
        got.extend(b);
    }
    got
}

/// The body carried by `wire` (everything after the head, up to the close) under `head`'s
/// framing.
fn body_of(head: &Response, wire: &[u8]) -> Vec<u8> {
    if head.header_has_token("transfer-encoding", "chunked") {
        dechunk(wire)
    } else if let Some(n) = head.content_length() {
        assert!(
            wire.len() >= n as usize,
            "body shorter than its Content-Length"
        );
        wire[..n as usize].to_vec()
    } else {
        wire.to_vec()
    }
}

/// Decodes a complete chunked body (panics if it is cut short).
fn dechunk(mut wire: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let eol = wire
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk-size line cut short");
        let line = std::str::from_utf8(&wire[..eol]).expect("chunk-size line");
        let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size {line:?}"));
        wire = &wire[eol + 2..];
        if size == 0 {
            return body;
        }
        assert!(wire.len() >= size + 2, "chunk cut short");
        body.extend_from_slice(&wire[..size]);
        wire = &wire[size + 2..];
    }
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Caps a socket's receive buffer (SO_RCVBUF).
fn set_rcvbuf(stream: &std::net::TcpStream, bytes: i32) {
    // SAFETY: setsockopt on a socket we own, with a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &bytes as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt SO_RCVBUF");
}
