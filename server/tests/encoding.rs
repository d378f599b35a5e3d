//! Precompressed siblings (`X.br`, `X.zst`, `X.gz`) chosen by Accept-Encoding.

mod common;

use common::*;

/// What a request with this Accept-Encoding got.
fn fetch(s: &Server, rel: &str, accept_encoding: Option<&str>) -> Response {
    let mut c = curl(s.static_url(rel));
    if let Some(ae) = accept_encoding {
        c = c.header(format!("Accept-Encoding: {ae}"));
    }
    let r = c.send();
    r.assert_status(200);
    r
}

/// Asserts `r` is the `tool` representation of `rel` (None: identity).
#[track_caller]
fn assert_representation(fx: &Fixture, rel: &str, r: &Response, tool: Option<Tool>) {
    match tool {
        None => {
            assert!(
                !r.has_header("content-encoding"),
                "identity has no Content-Encoding:\n{r:?}"
            );
            r.assert_body(&fx.read_static(rel));
        }
        Some(t) => {
            assert_eq!(r.header("content-encoding"), Some(t.token()), "\n{r:?}");
            r.assert_body(&fx.read_sibling(rel, t));
        }
    }
    assert_eq!(r.content_length(), Some(r.body.len() as u64));
    if rel.ends_with(".css") {
        assert_eq!(
            r.header("content-type"),
            Some("text/css; charset=utf-8"),
            "Content-Type is that of X"
        );
    }
    assert!(
        r.header_has_token("vary", "accept-encoding"),
        "Vary: Accept-Encoding on every representation:\n{r:?}"
    );
}

#[test]
fn no_accept_encoding_gets_identity_with_vary() {
    let fx = Fixture::new();
    let s = fx.server();
    let r = fetch(&s, APP_CSS, None);
    assert_representation(&fx, APP_CSS, &r, None);
    assert_eq!(r.header("content-type"), Some("text/css; charset=utf-8"));
}

#[test]
fn each_coding_is_served_from_its_sibling() {
    let fx = Fixture::new();
    let s = fx.server();
    for rel in [APP_CSS, HASHED_CSS] {
        for t in Tool::ALL {
            let r = fetch(&s, rel, Some(t.token()));
            assert_representation(&fx, rel, &r, Some(t));
            assert_eq!(
                r.header("content-type"),
                Some("text/css; charset=utf-8"),
                "Content-Type is that of X"
            );
        }
    }
}

#[test]
fn preference_on_ties_is_br_then_zstd_then_gzip() {
    let fx = Fixture::new();
    let s = fx.server();
    for (ae, want) in [
        ("gzip, deflate, br, zstd", Some(Tool::Brotli)),
        ("gzip, deflate, br", Some(Tool::Brotli)),
        ("gzip, zstd", Some(Tool::Zstd)),
        ("zstd, gzip", Some(Tool::Zstd)),
        ("gzip;q=0.8, zstd;q=0.8, br;q=0.8", Some(Tool::Brotli)),
        ("*", Some(Tool::Brotli)),
        ("identity, gzip", Some(Tool::Gzip)),
        ("deflate", None),
        ("identity", None),
        ("compress, x-unknown", None),
    ] {
        let r = fetch(&s, APP_CSS, Some(ae));
        assert_representation(&fx, APP_CSS, &r, want);
    }
}

#[test]
fn q_values_are_honoured() {
    let fx = Fixture::new();
    let s = fx.server();
    for (ae, want) in [
        ("gzip;q=1, br;q=0.5", Some(Tool::Gzip)),
        ("br;q=0.1, zstd;q=0.2, gzip;q=0.3", Some(Tool::Gzip)),
        ("br;q=0.9, zstd;q=1.0", Some(Tool::Zstd)),
        ("br;q=0, gzip", Some(Tool::Gzip)),
        ("br;q=0.0, zstd;q=0.00, gzip", Some(Tool::Gzip)),
        ("br;q=0, zstd;q=0, gzip;q=0", None),
        ("br;q=0.5, *;q=0.9", Some(Tool::Zstd)),
        ("*;q=0.5, gzip;q=0.6", Some(Tool::Gzip)),
        ("*, br;q=0", Some(Tool::Zstd)),
        ("gzip;q=0.5, identity;q=1", None),
        ("gzip ; q=0.7 , br ; q=0.6", Some(Tool::Gzip)),
        ("BR", Some(Tool::Brotli)),
        ("Gzip;Q=0.5, ZSTD;q=0.4", Some(Tool::Gzip)),
    ] {
        let r = fetch(&s, APP_CSS, Some(ae));
        assert_representation(&fx, APP_CSS, &r, want);
    }
}

#[test]
fn accept_encoding_over_several_fields_is_one_list() {
    let fx = Fixture::new();
    let s = fx.server();
    let r = curl(s.static_url(APP_CSS))
        .header("Accept-Encoding: gzip;q=0.5")
        .header("Accept-Encoding: zstd;q=0.8")
        .send();
    r.assert_status(200);
    assert_representation(&fx, APP_CSS, &r, Some(Tool::Zstd));
}

#[test]
fn empty_accept_encoding_means_identity() {
    let fx = Fixture::new();
    let s = fx.server();
    let r = curl(s.static_url(APP_CSS))
        .header("Accept-Encoding;")
        .send();
    r.assert_status(200);
    assert_representation(&fx, APP_CSS, &r, None);
}

#[test]
fn only_existing_siblings_are_offered() {
    let fx = Fixture::new();
    let s = fx.server();
    // site.js has only a .gz sibling.
    for (ae, want) in [
        ("br, zstd, gzip", Some(Tool::Gzip)),
        ("br", None),
        ("br, zstd", None),
        ("gzip;q=0.1, br", Some(Tool::Gzip)),
    ] {
        let r = curl(s.static_url(SITE_JS))
            .header(format!("Accept-Encoding: {ae}"))
            .send();
        r.assert_status(200);
        match want {
            Some(t) => {
                assert_eq!(
                    r.header("content-encoding"),
                    Some(t.token()),
                    "{ae}:\n{r:?}"
                );
                r.assert_body(&fx.read_sibling(SITE_JS, t));
            }
            None => {
                assert!(!r.has_header("content-encoding"), "{ae}:\n{r:?}");
                r.assert_body(&fx.read_static(SITE_JS));
            }
        }
        assert!(
            r.header_has_token("vary", "accept-encoding"),
            "{ae}:\n{r:?}"
        );
        assert_eq!(
            r.header("content-type"),
            Some("text/javascript; charset=utf-8")
        );
    }
}

#[test]
fn files_without_siblings_are_not_varied() {
    let fx = Fixture::new();
    let s = fx.server();
    for rel in [PLAIN_CSS, PHOTO] {
        let r = curl(s.static_url(rel))
            .header("Accept-Encoding: br, gzip")
            .send();
        r.assert_status(200).assert_body(&fx.read_static(rel));
        assert!(!r.has_header("content-encoding"), "{r:?}");
        assert!(
            !r.header_has_token("vary", "accept-encoding"),
            "nothing to vary on:\n{r:?}"
        );
    }
}

#[test]
fn every_representation_has_its_own_strong_etag() {
    let fx = Fixture::new();
    let s = fx.server();
    let mut tags = Vec::new();
    for ae in ["identity", "br", "zstd", "gzip"] {
        let r = fetch(&s, APP_CSS, Some(ae));
        tags.push(r.etag().to_string());
        // Stable across requests.
        assert_eq!(fetch(&s, APP_CSS, Some(ae)).etag(), r.etag());
    }
    let mut dedup = tags.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(
        dedup.len(),
        4,
        "distinct ETags per representation: {tags:?}"
    );
}

#[test]
fn conditional_requests_compare_against_the_selected_representation() {
    let fx = Fixture::new();
    let s = fx.server();
    let br = fetch(&s, APP_CSS, Some("br"));
    let identity = fetch(&s, APP_CSS, None);

    let r = curl(s.static_url(APP_CSS))
        .header("Accept-Encoding: br")
        .header(format!("If-None-Match: {}", br.etag()))
        .send();
    r.assert_status(304);
    assert_eq!(r.header("etag"), Some(br.etag()));
    assert!(
        r.header_has_token("vary", "accept-encoding"),
        "Vary on 304:\n{r:?}"
    );
    assert!(r.body.is_empty());

    let r = curl(s.static_url(APP_CSS))
        .header("Accept-Encoding: br")
        .header(format!("If-None-Match: {}", identity.etag()))
        .send();
    r.assert_status(200);
    assert_representation(&fx, APP_CSS, &r, Some(Tool::Brotli));

    let r = curl(s.static_url(APP_CSS))
        .header(format!("If-None-Match: {}", identity.etag()))
        .send();
    r.assert_status(304);
    assert!(
        r.header_has_token("vary", "accept-encoding"),
        "Vary on 304 of identity:\n{r:?}"
    );
}

#[test]
fn head_and_ranges_of_an_encoded_representation() {
    let fx = Fixture::new();
    let s = fx.server();
    let get = fetch(&s, APP_CSS, Some("br"));
    let head = curl(s.static_url(APP_CSS))
        .header("Accept-Encoding: br")
        .head()
        .send();
    head.assert_status(200);
    assert_eq!(head.header("content-encoding"), Some("br"));
    assert_eq!(head.header("content-length"), get.header("content-length"));
    assert_eq!(head.header("etag"), get.header("etag"));
    assert!(head.header_has_token("vary", "accept-encoding"));

    // A range applies to the selected (compressed) representation.
    let br = fx.read_sibling(APP_CSS, Tool::Brotli);
    let r = curl(s.static_url(APP_CSS))
        .header("Accept-Encoding: br")
        .range("bytes=0-9")
        .send();
    r.assert_status(206).assert_body(&br[..10]);
    assert_eq!(r.header("content-encoding"), Some("br"));
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 0-9/{}", br.len()).as_str())
    );
    assert!(r.header_has_token("vary", "accept-encoding"));
}

#[test]
fn a_sibling_requested_directly_is_its_own_resource() {
    let fx = Fixture::new();
    let s = fx.server();
    let gz_name = format!("{APP_CSS}.gz");
    for ae in [None, Some("gzip"), Some("br, gzip")] {
        let mut c = curl(s.static_url(&gz_name));
        if let Some(ae) = ae {
            c = c.header(format!("Accept-Encoding: {ae}"));
        }
        let r = c.send();
        r.assert_status(200)
            .assert_body(&fx.read_sibling(APP_CSS, Tool::Gzip));
        assert_eq!(r.header("content-type"), Some("application/gzip"), "{r:?}");
        assert!(!r.has_header("content-encoding"), "{r:?}");
        r.etag();
    }
}

#[test]
fn real_clients_decode_to_the_original() {
    // curl --compressed advertises what it can decode and decodes it.
    let fx = Fixture::new();
    let s = fx.server();
    for rel in [APP_CSS, HASHED_CSS, SITE_JS] {
        let r = curl(s.static_url(rel)).arg("--compressed").send();
        r.assert_status(200).assert_body(&fx.read_static(rel));
        assert!(
            r.has_header("content-encoding"),
            "curl --compressed should have got a coding:\n{r:?}"
        );
    }
}
