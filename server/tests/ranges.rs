//! Range requests (RFC 9110 §14).

mod common;

use common::*;

fn ranged(s: &Server, rel: &str, spec: &str) -> Response {
    curl(s.static_url(rel)).range(spec).send()
}

/// Asserts a single-part 206 carrying `photo[start..=end]`.
#[track_caller]
fn assert_single(r: &Response, photo: &[u8], start: usize, end: usize) {
    r.assert_status(206);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes {start}-{end}/{}", photo.len()).as_str()),
        "\n{r:?}"
    );
    assert_eq!(r.content_length(), Some((end - start + 1) as u64));
    r.assert_body(&photo[start..=end]);
    assert_eq!(r.header("content-type"), Some("image/jpeg"));
    r.etag();
    assert!(r.has_header("last-modified"));
}

#[test]
fn full_responses_advertise_byte_ranges() {
    let fx = Fixture::new();
    let s = fx.server();
    for url in [
        s.static_url(PHOTO),
        s.static_url(APP_CSS),
        s.media_url(MEDIA_PDF),
    ] {
        let r = curl(&url).send();
        r.assert_status(200);
        assert_eq!(r.header("accept-ranges"), Some("bytes"), "{url}");
    }
}

#[test]
fn single_ranges() {
    let fx = Fixture::new();
    let s = fx.server();
    let photo = fx.read_static(PHOTO);
    let n = photo.len();
    assert_single(&ranged(&s, PHOTO, "bytes=0-0"), &photo, 0, 0);
    assert_single(&ranged(&s, PHOTO, "bytes=100-199"), &photo, 100, 199);
    assert_single(&ranged(&s, PHOTO, "bytes=-500"), &photo, n - 500, n - 1);
    assert_single(&ranged(&s, PHOTO, "bytes=1000-"), &photo, 1000, n - 1);
    assert_single(
        &ranged(&s, PHOTO, &format!("bytes={}-", n - 1)),
        &photo,
        n - 1,
        n - 1,
    );
    assert_single(&ranged(&s, PHOTO, "bytes=0-"), &photo, 0, n - 1);
    // Past the end: clamped.
    assert_single(
        &ranged(&s, PHOTO, "bytes=300000-99999999"),
        &photo,
        300_000,
        n - 1,
    );
    assert_single(
        &ranged(&s, PHOTO, &format!("bytes=-{}", n + 1000)),
        &photo,
        0,
        n - 1,
    );
    // Whitespace around the range-spec is allowed (OWS after the comma); unit is case-insensitive.
    assert_single(&ranged(&s, PHOTO, "Bytes=5-9"), &photo, 5, 9);
}

#[test]
fn unsatisfiable_ranges_get_416_with_the_length() {
    let fx = Fixture::new();
    let s = fx.server();
    let n = PHOTO_LEN;
    for spec in [
        format!("bytes={n}-"),
        format!("bytes={}-{}", n + 10, n + 20),
        "bytes=-0".to_string(),
    ] {
        let r = ranged(&s, PHOTO, &spec);
        assert_eq!(r.status, 416, "{spec}:\n{r:?}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes */{n}").as_str()),
            "{spec}"
        );
    }
}

#[test]
fn several_ranges_are_multipart_byteranges() {
    let fx = Fixture::new();
    let s = fx.server();
    let photo = fx.read_static(PHOTO);
    let n = photo.len();
    let r = ranged(&s, PHOTO, "bytes=0-9,100-109,-10");
    r.assert_status(206);
    assert!(
        !r.has_header("content-range"),
        "multipart responses have no top-level Content-Range"
    );
    assert_eq!(
        r.content_length(),
        Some(r.body.len() as u64),
        "Content-Length of the multipart body"
    );
    let boundary = multipart_boundary(r.expect_header("content-type"));
    let parts = parse_multipart(&r.body, &boundary);
    let want = [(0, 9), (100, 109), (n - 10, n - 1)];
    assert_eq!(parts.len(), 3, "{parts:?}");
    for (p, (a, b)) in parts.iter().zip(want) {
        assert_eq!(p.header("content-type"), Some("image/jpeg"));
        let (pa, pb, len) =
            parse_content_range(p.header("content-range").expect("part Content-Range"));
        assert_eq!((pa as usize, pb as usize, len as usize), (a, b, n));
        assert_eq!(p.body, &photo[a..=b]);
    }
}

#[test]
fn overlapping_and_adjacent_ranges_cover_what_was_asked() {
    let fx = Fixture::new();
    let s = fx.server();
    let photo = fx.read_static(PHOTO);
    for (spec, lo, hi) in [
        ("bytes=0-99,50-149", 0usize, 149usize),
        ("bytes=0-9,10-19", 0, 19),
        ("bytes=500-599,0-99,550-650", 0, 650),
    ] {
        let r = ranged(&s, PHOTO, spec);
        r.assert_status(206);
        let mut covered = vec![false; photo.len()];
        let mut check = |a: usize, b: usize, body: &[u8]| {
            assert_eq!(body, &photo[a..=b], "{spec}: part {a}-{b}");
            covered[a..=b].iter_mut().for_each(|c| *c = true);
        };
        if r.expect_header("content-type")
            .starts_with("multipart/byteranges")
        {
            for p in parse_multipart(
                &r.body,
                &multipart_boundary(r.expect_header("content-type")),
            ) {
                let (a, b, _) = parse_content_range(p.header("content-range").unwrap());
                check(a as usize, b as usize, &p.body);
            }
        } else {
            let (a, b, _) = parse_content_range(r.expect_header("content-range"));
            check(a as usize, b as usize, &r.body);
        }
        let asked: Vec<(usize, usize)> = spec
            .trim_start_matches("bytes=")
            .split(',')
            .map(|x| {
                let (a, b) = x.split_once('-').unwrap();
                (a.parse().unwrap(), b.parse().unwrap())
            })
            .collect();
        for (a, b) in asked {
            assert!(
                covered[a..=b].iter().all(|c| *c),
                "{spec}: {a}-{b} not covered"
            );
        }
        assert!(
            covered[..lo].iter().all(|c| !*c) && covered[hi + 1..].iter().all(|c| !*c),
            "{spec}: more than asked"
        );
    }
}

#[test]
fn unknown_units_and_garbage_ranges_are_ignored_or_refused_never_crash() {
    let fx = Fixture::new();
    let mut s = fx.server();
    // An unknown unit MUST be ignored.
    let r = ranged(&s, PHOTO, "items=0-5");
    r.assert_status(200);
    assert_eq!(r.body.len(), PHOTO_LEN);
    // Invalid byte-range specs: ignored (200) or refused (416), never anything else.
    for spec in [
        "bytes=abc",
        "bytes=",
        "bytes=--5",
        "bytes=5-1",
        "bytes=1-2-3",
        "bytes=0x10-0x20",
        "bytes=18446744073709551616-",
        "bytes=,",
        "bytes=-",
    ] {
        let r = ranged(&s, PHOTO, spec);
        assert!(r.status == 200 || r.status == 416, "{spec}: {r:?}");
        if r.status == 200 {
            assert_eq!(r.body.len(), PHOTO_LEN, "{spec}");
        }
    }
    // Very many small ranges: any sane answer, and the server survives.
    let many: Vec<String> = (0..1000).map(|i| format!("{}-{}", i * 3, i * 3)).collect();
    let r = ranged(&s, PHOTO, &format!("bytes={}", many.join(",")));
    assert!(matches!(r.status, 200 | 206 | 416), "{r:?}");
    s.assert_alive();
    curl(s.static_url(PHOTO)).send().assert_status(200);
}

#[test]
fn if_range_with_etag_and_date() {
    let fx = Fixture::new();
    let s = fx.server();
    let photo = fx.read_static(PHOTO);
    let etag = curl(s.static_url(PHOTO)).send().etag().to_string();
    let with = |if_range: &str| {
        curl(s.static_url(PHOTO))
            .range("bytes=10-19")
            .header(format!("If-Range: {if_range}"))
            .send()
    };

    assert_single(&with(&etag), &photo, 10, 19);
    assert_single(&with(FIXED_MTIME_HTTP), &photo, 10, 19);
    for stale in [
        "\"other\"".to_string(),
        format!("W/{etag}"),
        http_date(FIXED_MTIME - 1),
        http_date(FIXED_MTIME + 1),
    ] {
        let r = with(&stale);
        r.assert_status(200);
        assert_eq!(r.body, photo, "If-Range: {stale} must give the whole file");
    }
}

#[test]
fn ranges_of_a_media_file() {
    let fx = Fixture::new();
    let s = fx.server();
    let pdf = fx.read_media(MEDIA_PDF);
    let r = curl(s.media_url(MEDIA_PDF)).range("bytes=0-7").send();
    r.assert_status(206).assert_body(&pdf[..8]);
    assert_eq!(r.header("content-security-policy"), Some("sandbox"));
    let r = curl(s.media_url(MEDIA_PDF)).range("bytes=0-1,4-5").send();
    r.assert_status(206);
    let parts = parse_multipart(
        &r.body,
        &multipart_boundary(r.expect_header("content-type")),
    );
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0].header("content-type"), Some("application/pdf"));
}

#[test]
fn range_over_raw_tcp_keeps_the_connection_in_sync() {
    let fx = Fixture::new();
    let s = fx.server();
    let photo = fx.read_static(PHOTO);
    let mut c = Raw::connect(s.addr());
    let p = format!("/static/{PHOTO}");
    c.send(
        request("GET", &p, &["Range: bytes=0-0,-1"])
            + &request("GET", &p, &["Range: bytes=1000-1999"])
            + &request("GET", &p, &["Range: bytes=999999999-"])
            + &request("GET", &format!("/static/{PLAIN_CSS}"), &[]),
    );
    let r = c.read_response();
    r.assert_status(206);
    let parts = parse_multipart(
        &r.body,
        &multipart_boundary(r.expect_header("content-type")),
    );
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0].body, &photo[..1]);
    assert_eq!(parts[1].body, &photo[photo.len() - 1..]);
    c.read_response()
        .assert_status(206)
        .assert_body(&photo[1000..2000]);
    c.read_response().assert_status(416);
    c.read_response()
        .assert_status(200)
        .assert_body(&fx.read_static(PLAIN_CSS));
}
