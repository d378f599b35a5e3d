//! Validators and conditional requests (RFC 9110 §8.8, §13).

mod common;

use common::*;

fn get_with(s: &Server, rel: &str, headers: &[String]) -> Response {
    let mut c = curl(s.static_url(rel));
    for h in headers {
        c = c.header(h.clone());
    }
    c.send()
}

fn etag_of(s: &Server, rel: &str) -> String {
    let r = curl(s.static_url(rel)).send();
    r.assert_status(200);
    r.etag().to_string()
}

#[test]
fn responses_carry_strong_etag_and_last_modified() {
    let fx = Fixture::new();
    let s = fx.server();
    for rel in [APP_CSS, HASHED_CSS, PHOTO, EMPTY_TXT] {
        let r = curl(s.static_url(rel)).send();
        r.assert_status(200);
        r.etag();
        assert_eq!(r.header("last-modified"), Some(FIXED_MTIME_HTTP), "{rel}");
    }
}

#[test]
fn if_none_match_exact_gives_304_with_validators_and_no_body() {
    let fx = Fixture::new();
    let s = fx.server();
    let full = curl(s.static_url(APP_CSS)).send();
    let etag = full.etag();
    let r = get_with(&s, APP_CSS, &[format!("If-None-Match: {etag}")]);
    r.assert_status(304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some(etag));
    assert_eq!(r.header("cache-control"), full.header("cache-control"));
    assert!(
        r.header_has_token("vary", "accept-encoding"),
        "app.css has siblings: Vary on its 304:\n{r:?}"
    );
    assert!(!r.has_header("content-encoding"));
    assert!(r.has_header("date"));

    // No body bytes on the wire either: a pipelined request right after is parsed cleanly.
    let mut c = Raw::connect(s.addr());
    let p = format!("/static/{APP_CSS}");
    c.send(
        request("GET", &p, &[&format!("If-None-Match: {etag}")])
            + &request("GET", &format!("/static/{PLAIN_CSS}"), &[]),
    );
    c.read_response().assert_status(304);
    c.read_response()
        .assert_status(200)
        .assert_body(&fx.read_static(PLAIN_CSS));
}

#[test]
fn if_none_match_lists_weak_comparison_and_star() {
    let fx = Fixture::new();
    let s = fx.server();
    let etag = etag_of(&s, PHOTO);
    let weak = format!("W/{etag}");
    for (inm, status) in [
        (format!("\"nope\", {etag}"), 304),
        (format!("{etag}, \"nope\""), 304),
        (format!("\"a\",{etag},\"b\""), 304),
        (weak.clone(), 304),
        (format!("\"x\", {weak}"), 304),
        ("*".to_string(), 304),
        ("\"nope\"".to_string(), 200),
        ("W/\"nope\"".to_string(), 200),
        (etag.trim_matches('"').to_string(), 200), // unquoted: not a match
    ] {
        let r = get_with(&s, PHOTO, &[format!("If-None-Match: {inm}")]);
        assert_eq!(r.status, status, "If-None-Match: {inm}\n{r:?}");
    }
    // Spread over several fields.
    let r = curl(s.static_url(PHOTO))
        .header("If-None-Match: \"a\"")
        .header(format!("If-None-Match: {etag}"))
        .send();
    r.assert_status(304);
    // HEAD too.
    let r = curl(s.static_url(PHOTO))
        .head()
        .header(format!("If-None-Match: {etag}"))
        .send();
    r.assert_status(304);
}

#[test]
fn if_modified_since() {
    let fx = Fixture::new();
    let s = fx.server();
    for (ims, status) in [
        (FIXED_MTIME_HTTP.to_string(), 304),
        (http_date(FIXED_MTIME + 3600), 304),
        (http_date(FIXED_MTIME - 1), 200),
        (http_date(FIXED_MTIME - 86400 * 365), 200),
        ("Tuesday, 02-Jan-24 03:04:05 GMT".to_string(), 304), // RFC 850 form
        ("Tue Jan  2 03:04:05 2024".to_string(), 304),        // asctime form
        ("not a date".to_string(), 200),
    ] {
        let r = get_with(&s, PHOTO, &[format!("If-Modified-Since: {ims}")]);
        assert_eq!(r.status, status, "If-Modified-Since: {ims}\n{r:?}");
        if status == 304 {
            assert!(r.body.is_empty());
            r.etag();
        } else {
            assert_eq!(r.body.len(), PHOTO_LEN);
        }
    }
}

#[test]
fn if_modified_since_is_ignored_when_if_none_match_is_present() {
    let fx = Fixture::new();
    let s = fx.server();
    let etag = etag_of(&s, PHOTO);
    let r = get_with(
        &s,
        PHOTO,
        &[
            "If-None-Match: \"nope\"".into(),
            format!("If-Modified-Since: {}", http_date(FIXED_MTIME + 60)),
        ],
    );
    r.assert_status(200);
    let r = get_with(
        &s,
        PHOTO,
        &[
            format!("If-None-Match: {etag}"),
            format!("If-Modified-Since: {}", http_date(FIXED_MTIME - 60)),
        ],
    );
    r.assert_status(304);
}

#[test]
fn if_match() {
    let fx = Fixture::new();
    let s = fx.server();
    let etag = etag_of(&s, PHOTO);
    for (im, status) in [
        (etag.clone(), 200),
        ("*".to_string(), 200),
        (format!("\"nope\", {etag}"), 200),
        ("\"nope\"".to_string(), 412),
        (format!("W/{etag}"), 412), // If-Match uses the strong comparison
    ] {
        let r = get_with(&s, PHOTO, &[format!("If-Match: {im}")]);
        assert_eq!(r.status, status, "If-Match: {im}\n{r:?}");
        if status == 200 {
            assert_eq!(r.body.len(), PHOTO_LEN);
        }
    }
    let r = curl(s.static_url(PHOTO))
        .head()
        .header("If-Match: \"nope\"")
        .send();
    r.assert_status(412);
}

#[test]
fn if_unmodified_since() {
    let fx = Fixture::new();
    let s = fx.server();
    for (ius, status) in [
        (FIXED_MTIME_HTTP.to_string(), 200),
        (http_date(FIXED_MTIME + 10), 200),
        (http_date(FIXED_MTIME - 10), 412),
    ] {
        let r = get_with(&s, PHOTO, &[format!("If-Unmodified-Since: {ius}")]);
        assert_eq!(r.status, status, "If-Unmodified-Since: {ius}\n{r:?}");
    }
    // Ignored when If-Match is present.
    let etag = etag_of(&s, PHOTO);
    let r = get_with(
        &s,
        PHOTO,
        &[
            format!("If-Match: {etag}"),
            format!("If-Unmodified-Since: {}", http_date(FIXED_MTIME - 10)),
        ],
    );
    r.assert_status(200);
}

#[test]
fn precondition_order_follows_rfc_9110() {
    let fx = Fixture::new();
    let s = fx.server();
    let etag = etag_of(&s, PHOTO);
    // If-Match fails first, whatever If-None-Match says.
    let r = get_with(
        &s,
        PHOTO,
        &[
            "If-Match: \"nope\"".into(),
            format!("If-None-Match: {etag}"),
        ],
    );
    r.assert_status(412);
    // If-Unmodified-Since fails before If-None-Match is looked at.
    let r = get_with(
        &s,
        PHOTO,
        &[
            format!("If-Unmodified-Since: {}", http_date(FIXED_MTIME - 10)),
            format!("If-None-Match: {etag}"),
        ],
    );
    r.assert_status(412);
    // Preconditions come before ranges.
    let r = get_with(
        &s,
        PHOTO,
        &[format!("If-None-Match: {etag}"), "Range: bytes=0-9".into()],
    );
    r.assert_status(304);
    let r = get_with(
        &s,
        PHOTO,
        &["If-Match: \"nope\"".into(), "Range: bytes=0-9".into()],
    );
    r.assert_status(412);
}

#[test]
fn hashed_304_keeps_immutable_and_unvaried_304_has_no_vary() {
    let fx = Fixture::new();
    let s = fx.server();
    let etag = etag_of(&s, HASHED_PHOTO);
    let r = get_with(&s, HASHED_PHOTO, &[format!("If-None-Match: {etag}")]);
    r.assert_status(304);
    assert_eq!(r.header("cache-control"), Some(IMMUTABLE));
    assert!(
        !r.header_has_token("vary", "accept-encoding"),
        "no siblings, no Vary:\n{r:?}"
    );
}

#[test]
fn etag_and_last_modified_follow_a_replaced_file() {
    // Static files are replaced by collectstatic (write, then rename); the server may cache
    // briefly, but every answer is self-consistent and the new file shows up soon.
    let fx = Fixture::new();
    let s = fx.server();
    let old_body = fx.read_static(README_TXT);
    let before = curl(s.static_url(README_TXT)).send();
    let new_body = b"A different, longer text than before.\n".to_vec();
    write_atomic(&fx.static_path(README_TXT), &new_body);
    set_mtime(&fx.static_path(README_TXT), FIXED_MTIME + 100);
    let after = poll_until(
        std::time::Duration::from_secs(3),
        "the replaced static file to be served",
        || {
            let r = curl(s.static_url(README_TXT)).send();
            r.assert_status(200);
            if r.header("etag") == before.header("etag") {
                r.assert_body(&old_body);
                assert_eq!(r.header("last-modified"), Some(FIXED_MTIME_HTTP));
                None
            } else {
                r.assert_body(&new_body);
                Some(r)
            }
        },
    );
    assert_eq!(
        after.header("last-modified"),
        Some(http_date(FIXED_MTIME + 100).as_str())
    );
    // The old tag stops matching (each worker may revalidate its cache on its own schedule,
    // so this too is polled; until then the answer is a consistent 304 for the old file).
    poll_until(
        std::time::Duration::from_secs(3),
        "the old ETag to stop matching",
        || {
            let r = get_with(
                &s,
                README_TXT,
                &[format!("If-None-Match: {}", before.etag())],
            );
            if r.status == 304 {
                assert_eq!(r.header("etag"), before.header("etag"));
                None
            } else {
                r.assert_status(200).assert_body(&new_body);
                Some(())
            }
        },
    );
}
