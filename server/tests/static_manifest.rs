//! Static mounts: cache policy from Django's staticfiles.json, hot reload of the manifest,
//! `--immutable`, content types, names.

mod common;

use common::*;
use std::fs;
use std::time::Duration;

/// The spec says a rewritten manifest is picked up within ~2 s; allow some slack for CI.
const RELOAD_LIMIT: Duration = Duration::from_secs(4);

fn cache_control(s: &Server, rel: &str) -> String {
    let r = curl(s.static_url(rel)).send();
    r.assert_status(200);
    r.expect_header("cache-control").to_string()
}

#[test]
fn hashed_files_are_immutable_for_a_year() {
    let fx = Fixture::new();
    let s = fx.server();
    for (_, hashed) in MANIFEST {
        let r = curl(s.static_url(hashed)).send();
        r.assert_status(200).assert_body(&fx.read_static(hashed));
        assert_eq!(
            r.header("cache-control"),
            Some(IMMUTABLE),
            "{hashed}:\n{r:?}"
        );
    }
}

#[test]
fn unhashed_files_get_the_short_max_age() {
    let fx = Fixture::new();
    let s = fx.server();
    for rel in [
        APP_CSS,
        SITE_JS,
        PHOTO,
        PLAIN_CSS,
        ADMIN_CSS,
        README_TXT,
        UNICODE_CSS_URL,
    ] {
        assert_eq!(cache_control(&s, rel), "max-age=60", "{rel}");
    }
}

#[test]
fn static_max_age_is_configurable() {
    let fx = Fixture::new();
    let s = fx.builder().args(["--static-max-age", "300"]).start();
    assert_eq!(cache_control(&s, APP_CSS), "max-age=300");
    assert_eq!(
        cache_control(&s, HASHED_CSS),
        IMMUTABLE,
        "hashed files stay immutable"
    );
    let s0 = fx.builder().args(["--static-max-age", "0"]).start();
    assert_eq!(cache_control(&s0, APP_CSS), "max-age=0");
}

#[test]
fn immutable_applies_to_every_representation_and_status_of_a_hashed_file() {
    let fx = Fixture::new();
    let s = fx.server();
    let url = s.static_url(HASHED_CSS);
    for ae in ["br", "zstd", "gzip", "identity"] {
        let r = curl(&url).header(format!("Accept-Encoding: {ae}")).send();
        r.assert_status(200);
        assert_eq!(r.header("cache-control"), Some(IMMUTABLE), "{ae}:\n{r:?}");
    }
    let r = curl(&url).head().send();
    assert_eq!(r.header("cache-control"), Some(IMMUTABLE));
    let etag = r.etag().to_string();
    let r = curl(&url).header(format!("If-None-Match: {etag}")).send();
    r.assert_status(304);
    assert_eq!(
        r.header("cache-control"),
        Some(IMMUTABLE),
        "304 carries Cache-Control:\n{r:?}"
    );
    let r = curl(s.static_url(HASHED_PHOTO)).range("bytes=0-99").send();
    r.assert_status(206);
    assert_eq!(r.header("cache-control"), Some(IMMUTABLE));
}

#[test]
fn startup_log_counts_the_hashed_files() {
    let fx = Fixture::new();
    fx.rewrite_manifest(
        &[
            ("a.css", "a.111111111111.css"),
            ("b.css", "b.222222222222.css"),
            ("c.js", "c.333333333333.js"),
            ("d.png", "d.444444444444.png"),
            ("e.svg", "e.555555555555.svg"),
        ],
        Some("feedfacecafe"),
    );
    let s = fx.server();
    let want = format!(
        "bypass: static /static/ -> {} (manifest: 5 hashed files)",
        fx.static_root().display()
    );
    assert!(s.log_lines().contains(&want), "{}", s.log_text());
}

#[test]
fn manifest_version_1_0_is_understood() {
    let fx = Fixture::new();
    fx.rewrite_manifest(&MANIFEST, None);
    let s = fx.server();
    assert_eq!(cache_control(&s, HASHED_CSS), IMMUTABLE);
    assert_eq!(cache_control(&s, APP_CSS), "max-age=60");
}

#[test]
fn without_manifest_nothing_is_immutable() {
    let fx = Fixture::without_manifest();
    let s = fx.server();
    for rel in [HASHED_CSS, HASHED_JS, HASHED_PHOTO, APP_CSS] {
        assert_eq!(cache_control(&s, rel), "max-age=60", "{rel}");
    }
}

#[test]
fn immutable_regex_marks_matching_paths_when_there_is_no_manifest() {
    let fx = Fixture::without_manifest();
    let s = fx
        .builder()
        .args(["--immutable", r"\.[0-9a-f]{12}\.[a-z0-9]+$"])
        .start();
    for rel in [HASHED_CSS, HASHED_JS, HASHED_PHOTO] {
        assert_eq!(cache_control(&s, rel), IMMUTABLE, "{rel}");
    }
    for rel in [APP_CSS, SITE_JS, PHOTO, PLAIN_CSS] {
        assert_eq!(cache_control(&s, rel), "max-age=60", "{rel}");
    }
}

#[test]
fn immutable_regex_matches_the_path_relative_to_the_mount() {
    let fx = Fixture::without_manifest();
    // Anchored at the start: "admin/..." is relative to STATIC_ROOT, without "/static/".
    let s = fx.builder().args(["--immutable", "^admin/"]).start();
    assert_eq!(cache_control(&s, ADMIN_CSS), IMMUTABLE);
    assert_eq!(cache_control(&s, APP_CSS), "max-age=60");
}

#[test]
fn a_fresh_collectstatic_is_picked_up_without_restart() {
    let fx = Fixture::new();
    let s = fx.server();
    // collectstatic writes the new hashed file first, then the manifest.
    let new_hashed = "css/app.0a1b2c3d4e5f.css";
    fx.write_static(new_hashed, css_text("app-v2", 50).as_bytes());
    assert_eq!(
        cache_control(&s, new_hashed),
        "max-age=60",
        "not in the manifest yet"
    );
    assert_eq!(cache_control(&s, HASHED_CSS), IMMUTABLE);

    fx.rewrite_manifest(
        &[
            (APP_CSS, new_hashed),
            (SITE_JS, HASHED_JS),
            (PHOTO, HASHED_PHOTO),
        ],
        Some("0123456789ab"),
    );
    poll_until(
        RELOAD_LIMIT,
        "the rewritten staticfiles.json to be picked up",
        || (cache_control(&s, new_hashed) == IMMUTABLE).then_some(()),
    );
    assert_eq!(cache_control(&s, HASHED_JS), IMMUTABLE);
    assert_eq!(cache_control(&s, APP_CSS), "max-age=60");
}

#[test]
fn a_manifest_rewritten_in_place_is_picked_up_too() {
    // Django's ManifestStaticFilesStorage deletes and rewrites the file (not atomic).
    let fx = Fixture::new();
    let s = fx.server();
    let path = fx.static_path("staticfiles.json");
    let new_hashed = "css/plain.abcdefabcdef.css";
    fx.write_static(new_hashed, b"body{}");
    fs::remove_file(&path).unwrap();
    let mut entries = MANIFEST.to_vec();
    entries.push((PLAIN_CSS, new_hashed));
    fs::write(&path, manifest_json(&entries, Some("aaaaaaaaaaaa"))).unwrap();
    set_mtime(&path, now_secs() + 2);
    poll_until(
        RELOAD_LIMIT,
        "the rewritten staticfiles.json to be picked up",
        || (cache_control(&s, new_hashed) == IMMUTABLE).then_some(()),
    );
    assert_eq!(cache_control(&s, HASHED_CSS), IMMUTABLE);
}

#[test]
fn a_broken_manifest_does_not_break_serving() {
    let fx = Fixture::new();
    let mut s = fx.server();
    let path = fx.static_path("staticfiles.json");
    // Half-written, then garbage, then gone: the server keeps answering.
    for body in [
        &b"{\"paths\": {\"css/app.css\": \"css/app.3f2a"[..],
        b"\x00\xffnot json",
        b"[]",
        b"{\"paths\": 5}",
    ] {
        fs::write(&path, body).unwrap();
        set_mtime(&path, now_secs() + 2);
        for _ in 0..5 {
            let r = curl(s.static_url(HASHED_CSS)).send();
            r.assert_status(200)
                .assert_body(&fx.read_static(HASHED_CSS));
        }
        s.assert_alive();
    }
    fs::remove_file(&path).unwrap();
    curl(s.static_url(HASHED_CSS)).send().assert_status(200);
    // A good manifest again: picked up.
    let new_hashed = "css/plain.fedcbafedcba.css";
    fx.write_static(new_hashed, b"body{}");
    fx.rewrite_manifest(&[(PLAIN_CSS, new_hashed)], Some("bbbbbbbbbbbb"));
    poll_until(
        RELOAD_LIMIT,
        "a valid manifest after broken ones to be picked up",
        || (cache_control(&s, new_hashed) == IMMUTABLE).then_some(()),
    );
    s.assert_alive();
}

#[test]
fn content_types_follow_the_extension() {
    let fx = Fixture::new();
    fx.write_static("fonts/x.woff2", b"wOF2fake");
    fx.write_static("data/x.json", b"{}");
    fx.write_static("js/module.mjs", b"export {}");
    fx.write_static("img/x.png", b"\x89PNG\r\n\x1a\n");
    fx.write_static("img/x.webp", b"RIFF0000WEBP");
    fx.write_static("img/x.ico", b"\0\0\x01\0");
    fx.write_static("img/UPPER.PNG", b"\x89PNG\r\n\x1a\n");
    let s = fx.server();
    for (rel, ct) in [
        (APP_CSS, "text/css; charset=utf-8"),
        (SITE_JS, "text/javascript; charset=utf-8"),
        ("js/module.mjs", "text/javascript; charset=utf-8"),
        (README_TXT, "text/plain; charset=utf-8"),
        (STATIC_HTML, "text/html; charset=utf-8"),
        (LOGO_SVG, "image/svg+xml"),
        (PHOTO, "image/jpeg"),
        ("img/x.png", "image/png"),
        ("img/UPPER.PNG", "image/png"),
        ("img/x.webp", "image/webp"),
        ("img/x.ico", "image/vnd.microsoft.icon"),
        ("fonts/x.woff2", "font/woff2"),
        ("data/x.json", "application/json"),
    ] {
        let r = curl(s.static_url(rel)).send();
        r.assert_status(200);
        let got = r.expect_header("content-type");
        let ok = got == ct
            || (rel.ends_with(".ico") && got == "image/x-icon")
            || (ct == "image/svg+xml" && got == "image/svg+xml; charset=utf-8")
            || (ct == "application/json" && got == "application/json; charset=utf-8");
        assert!(ok, "{rel}: Content-Type {got:?}, expected {ct:?}");
    }
}

#[test]
fn static_html_and_svg_are_served_inline() {
    // STATIC_ROOT is trusted (it comes from the code base): no attachment there.
    let fx = Fixture::new();
    let s = fx.server();
    for rel in [STATIC_HTML, LOGO_SVG] {
        let r = curl(s.static_url(rel)).send();
        r.assert_status(200).assert_body(&fx.read_static(rel));
        assert!(!r.has_header("content-disposition"), "{rel}:\n{r:?}");
    }
}

#[test]
fn unicode_and_percent_encoded_names() {
    let fx = Fixture::new();
    let s = fx.server();
    let r = curl(s.static_url(UNICODE_CSS_URL)).send();
    r.assert_status(200)
        .assert_body(&fx.read_static(UNICODE_CSS));
    assert_eq!(r.header("content-type"), Some("text/css; charset=utf-8"));
    // Lower-case hex escapes are the same characters.
    curl(s.static_url("css/caf%c3%a9.css"))
        .send()
        .assert_status(200);
    // Ordinary characters may be escaped.
    curl(s.static_url("css/%61pp.css"))
        .send()
        .assert_status(200)
        .assert_body(&fx.read_static(APP_CSS));
}

#[test]
fn percent_decoding_happens_exactly_once() {
    let fx = Fixture::new();
    let s = fx.server();
    // `%2541.txt` decodes once to the file literally named `%41.txt`.
    curl(s.static_url("%2541.txt"))
        .send()
        .assert_status(200)
        .assert_body(&fx.read_static(PERCENT_NAME));
    // `%41.txt` decodes to `A.txt`.
    curl(s.static_url("%41.txt"))
        .send()
        .assert_status(200)
        .assert_body(&fx.read_static("A.txt"));
    // A double-encoded name does not reach `app.css`.
    curl(s.static_url("css/%2561pp.css"))
        .send()
        .assert_status(404);
}

#[test]
fn query_strings_are_ignored() {
    let fx = Fixture::new();
    let s = fx.server();
    let r = curl(s.static_url(&format!("{HASHED_CSS}?v=3&x=../../etc/passwd"))).send();
    r.assert_status(200)
        .assert_body(&fx.read_static(HASHED_CSS));
    assert_eq!(r.header("cache-control"), Some(IMMUTABLE));
    curl(s.static_url(&format!("{PLAIN_CSS}?")))
        .send()
        .assert_status(200);
}

#[test]
fn empty_file_is_served_with_zero_length() {
    let fx = Fixture::new();
    let s = fx.server();
    let r = curl(s.static_url(EMPTY_TXT)).send();
    r.assert_status(200);
    assert_eq!(r.content_length(), Some(0));
    assert!(r.body.is_empty());
    r.etag();
}

#[test]
fn two_static_mounts_have_their_own_manifests() {
    let fx = Fixture::new();
    let other = Fixture::without_manifest();
    other.rewrite_manifest(
        &[(PLAIN_CSS, "css/plain.999999999999.css")],
        Some("cccccccccccc"),
    );
    other.write_static("css/plain.999999999999.css", b"other");
    let s = fx
        .builder()
        .static_mount("/assets/", &other.static_root())
        .start();
    assert_eq!(cache_control(&s, HASHED_CSS), IMMUTABLE);
    let r = curl(s.url("/assets/css/plain.999999999999.css")).send();
    r.assert_status(200).assert_body(b"other");
    assert_eq!(r.header("cache-control"), Some(IMMUTABLE));
    let r = curl(s.url(&format!("/assets/{HASHED_CSS}"))).send();
    r.assert_status(200);
    assert_eq!(
        r.header("cache-control"),
        Some("max-age=60"),
        "not in /assets/'s manifest"
    );
}
