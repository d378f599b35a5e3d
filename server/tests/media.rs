//! Media mounts: untrusted uploads.

mod common;

use common::*;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::time::Duration;

#[track_caller]
fn assert_media_headers(r: &Response) {
    assert_eq!(
        r.header("content-security-policy"),
        Some("sandbox"),
        "every media response:\n{r:?}"
    );
}

#[test]
fn inline_types_are_served_inline_and_sandboxed() {
    let fx = Fixture::new();
    let s = fx.server();
    for (rel, ct) in [(MEDIA_PDF, "application/pdf"), (MEDIA_JPG, "image/jpeg")] {
        let r = curl(s.media_url(rel)).send();
        r.assert_status(200).assert_body(&fx.read_media(rel));
        assert_eq!(r.header("content-type"), Some(ct));
        assert!(
            !r.has_header("content-disposition"),
            "{rel} is safe inline:\n{r:?}"
        );
        assert_media_headers(&r);
        assert_common_file_headers(&r);
        assert_eq!(r.header("cache-control"), Some("no-cache"));
        assert_eq!(r.header("last-modified"), Some(FIXED_MTIME_HTTP));
        r.etag();
    }
}

#[test]
fn active_and_unknown_types_are_attachments() {
    let fx = Fixture::new();
    let s = fx.server();
    for rel in [
        MEDIA_HTML,
        MEDIA_HTML_UPPER,
        MEDIA_HTM,
        MEDIA_SVG,
        MEDIA_XML,
        MEDIA_UNKNOWN,
        MEDIA_NOEXT,
    ] {
        for head in [false, true] {
            let mut c = curl(s.media_url(rel));
            if head {
                c = c.head();
            }
            let r = c.send();
            r.assert_status(200);
            if !head {
                r.assert_body(&fx.read_media(rel));
            }
            let cd = r.expect_header("content-disposition");
            assert!(
                cd.trim().to_ascii_lowercase().starts_with("attachment"),
                "{rel}: Content-Disposition {cd:?}"
            );
            assert_media_headers(&r);
            assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{rel}");
            assert_eq!(r.header("cache-control"), Some("no-cache"), "{rel}");
        }
    }
    let ct = |rel: &str| {
        curl(s.media_url(rel))
            .send()
            .expect_header("content-type")
            .to_string()
    };
    assert_eq!(ct(MEDIA_UNKNOWN), "application/octet-stream");
    assert_eq!(ct(MEDIA_NOEXT), "application/octet-stream");
    assert!(ct(MEDIA_HTML).starts_with("text/html"));
    assert!(ct(MEDIA_SVG).starts_with("image/svg+xml"));
}

#[test]
fn every_media_response_is_sandboxed() {
    let fx = Fixture::new();
    let s = fx.server();
    let url = s.media_url(MEDIA_PDF);
    let full = curl(&url).send();
    let etag = full.etag().to_string();
    let cases: Vec<(u16, Response)> = vec![
        (200, curl(&url).head().send()),
        (206, curl(&url).range("bytes=0-3").send()),
        (
            304,
            curl(&url).header(format!("If-None-Match: {etag}")).send(),
        ),
        (412, curl(&url).header("If-Match: \"nope\"").send()),
        (416, curl(&url).range("bytes=99999999-").send()),
        (405, curl(&url).method("DELETE").send()),
        (404, curl(s.media_url("uploads/missing.pdf")).send()),
        (404, curl(s.media_url("uploads/")).send()),
    ];
    for (status, r) in cases {
        r.assert_status(status);
        assert_media_headers(&r);
    }
    let r = curl(&url).header(format!("If-None-Match: {etag}")).send();
    assert_eq!(
        r.header("cache-control"),
        Some("no-cache"),
        "304 carries Cache-Control:\n{r:?}"
    );
    assert_eq!(r.header("etag"), Some(etag.as_str()));
}

#[test]
fn media_cache_control_is_configurable_and_never_immutable() {
    let fx = Fixture::new();
    // A decoy manifest in MEDIA_ROOT must not make uploads immutable, nor must --immutable.
    fx.write_media(
        "staticfiles.json",
        manifest_json(&[("x.jpg", MEDIA_JPG)], Some("dddddddddddd")).as_bytes(),
    );
    let s = fx.builder().args(["--immutable", ".*"]).start();
    let r = curl(s.media_url(MEDIA_JPG)).send();
    r.assert_status(200);
    assert_eq!(r.header("cache-control"), Some("no-cache"));

    let s = fx
        .builder()
        .args(["--media-cache-control", "private, max-age=3600"])
        .start();
    for rel in [MEDIA_JPG, MEDIA_HTML] {
        let r = curl(s.media_url(rel)).send();
        r.assert_status(200);
        assert_eq!(
            r.header("cache-control"),
            Some("private, max-age=3600"),
            "{rel}"
        );
    }
    // Static files are not affected by the media setting.
    assert_eq!(
        curl(s.static_url(HASHED_CSS))
            .send()
            .header("cache-control"),
        Some(IMMUTABLE)
    );
}

#[test]
fn no_directory_listings() {
    let fx = Fixture::new();
    fx.write_media("uploads/index.html", b"<p>index</p>");
    let s = fx.server();
    for path in [
        "/media/",
        "/media/uploads",
        "/media/uploads/",
        "/media/uploads/.",
    ] {
        let r = curl(s.url(path)).send();
        r.assert_status(404);
        assert!(
            !r.body_text().contains("report.pdf"),
            "{path} lists the directory:\n{r:?}"
        );
        assert!(r.body.len() < 1024, "a small 404 body");
    }
}

#[test]
fn media_precompressed_lookalikes_are_not_negotiated() {
    // A user can upload "x.pdf.gz"; it must not be served as Content-Encoding for x.pdf.
    let fx = Fixture::new();
    fx.write_media(
        &format!("{MEDIA_PDF}.gz"),
        &compress(Tool::Gzip, b"<script>alert(1)</script>"),
    );
    fx.write_media(
        &format!("{MEDIA_PDF}.br"),
        &compress(Tool::Brotli, b"<script>alert(1)</script>"),
    );
    let s = fx.server();
    let r = curl(s.media_url(MEDIA_PDF))
        .header("Accept-Encoding: br, gzip")
        .send();
    r.assert_status(200).assert_body(&fx.read_media(MEDIA_PDF));
    assert!(!r.has_header("content-encoding"), "{r:?}");
}

#[test]
fn a_replaced_upload_is_seen_on_the_very_next_request() {
    let fx = Fixture::new();
    let s = fx.server();
    let path = fx.media_path(MEDIA_PDF);
    let first = curl(s.media_url(MEDIA_PDF)).send();
    first
        .assert_status(200)
        .assert_body(&fx.read_media(MEDIA_PDF));

    // Overwritten in place, same length, new bytes.
    let mut same_len = fx.read_media(MEDIA_PDF);
    for b in same_len.iter_mut().skip(100).take(1000) {
        *b ^= 0x5a;
    }
    {
        let mut f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(&same_len).unwrap();
    }
    let r = curl(s.media_url(MEDIA_PDF)).send();
    r.assert_status(200).assert_body(&same_len);
    assert_ne!(r.etag(), first.etag(), "mtime changed, so must the ETag");
    // The old validator no longer matches.
    curl(s.media_url(MEDIA_PDF))
        .header(format!("If-None-Match: {}", first.etag()))
        .send()
        .assert_status(200);

    // Replaced by rename with a shorter file.
    write_atomic(&path, b"%PDF-1.4 short\n%%EOF\n");
    let r = curl(s.media_url(MEDIA_PDF)).send();
    r.assert_status(200).assert_body(b"%PDF-1.4 short\n%%EOF\n");
    assert_eq!(r.content_length(), Some(21));

    // Truncated and rewritten in place with a longer file.
    let long = pseudo_random_bytes(99, 40_000);
    fs::write(&path, &long).unwrap();
    curl(s.media_url(MEDIA_PDF))
        .send()
        .assert_status(200)
        .assert_body(&long);

    // Deleted: 404 at once; re-uploaded: served at once.
    fs::remove_file(&path).unwrap();
    curl(s.media_url(MEDIA_PDF)).send().assert_status(404);
    fs::write(&path, b"%PDF-1.4 again\n").unwrap();
    curl(s.media_url(MEDIA_PDF))
        .send()
        .assert_status(200)
        .assert_body(b"%PDF-1.4 again\n");

    // The same on one kept-alive connection.
    let mut c = Raw::connect(s.addr());
    let p = format!("/media/{MEDIA_PDF}");
    c.send(request("GET", &p, &[]));
    c.read_response()
        .assert_status(200)
        .assert_body(b"%PDF-1.4 again\n");
    fs::write(&path, b"%PDF-1.4 and again, longer\n").unwrap();
    c.send(request("GET", &p, &[]));
    c.read_response()
        .assert_status(200)
        .assert_body(b"%PDF-1.4 and again, longer\n");
    fs::remove_file(&path).unwrap();
    c.send(request("GET", &p, &[]));
    c.read_response().assert_status(404);
}

const BIG: usize = 32 << 20;

fn big_upload(fx: &Fixture) -> Vec<u8> {
    let data = pseudo_random_bytes(1234, BIG);
    fx.write_media("uploads/big.bin", &data);
    data
}

#[test]
fn a_file_truncated_while_being_sent_never_yields_a_short_body_on_a_live_connection() {
    let fx = Fixture::new();
    let data = big_upload(&fx);
    let s = fx.server();
    let mut c = Raw::connect(s.addr());
    c.send(
        request("GET", "/media/uploads/big.bin", &[])
            + &request("GET", &format!("/media/{MEDIA_JPG}"), &[]),
    );
    let head = c.read_head();
    head.assert_status(200);
    assert_eq!(head.content_length(), Some(BIG as u64));
    let started = c.read_up_to(1 << 20, Duration::from_secs(10));
    assert_eq!(started.len(), 1 << 20);
    // The server is now blocked on a full socket; cut the file short under it.
    fs::OpenOptions::new()
        .write(true)
        .open(fx.media_path("uploads/big.bin"))
        .unwrap()
        .set_len(4096)
        .unwrap();
    let rest = c.read_up_to(BIG - started.len(), Duration::from_secs(20));
    let got = [started, rest].concat();
    assert!(
        got[..] == data[..got.len()],
        "every byte sent is the file's byte at that offset (no padding)"
    );
    if got.len() == BIG {
        // A full-length body (from what was already buffered): the next response follows cleanly.
        let next = c.read_response();
        next.assert_status(200)
            .assert_body(&fx.read_media(MEDIA_JPG));
    } else {
        // Short: the server must have closed the connection, so the client knows.
        assert!(
            c.wait_closed(Duration::from_secs(5)).is_ok(),
            "after {} of {BIG} bytes the connection must be closed",
            got.len()
        );
    }
}

#[test]
fn a_file_growing_while_being_sent_never_yields_a_long_body() {
    let fx = Fixture::new();
    let data = big_upload(&fx);
    let s = fx.server();
    let mut c = Raw::connect(s.addr());
    c.send(
        request("GET", "/media/uploads/big.bin", &[])
            + &request("GET", &format!("/media/{MEDIA_JPG}"), &[]),
    );
    let head = c.read_head();
    assert_eq!(head.content_length(), Some(BIG as u64));
    let started = c.read_up_to(1 << 20, Duration::from_secs(10));
    {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(fx.media_path("uploads/big.bin"))
            .unwrap();
        f.write_all(&vec![b'X'; 2 << 20]).unwrap();
    }
    let rest = c.read_up_to(BIG - started.len(), Duration::from_secs(20));
    let got = [started, rest].concat();
    assert_eq!(got.len(), BIG, "the whole body as announced");
    assert!(got == data, "the body is the file as it was announced");
    let next = c.read_response();
    next.assert_status(200)
        .assert_body(&fx.read_media(MEDIA_JPG));
}
