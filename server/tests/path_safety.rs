//! Request paths: decoding once, traversal, dot-files, symlinks, directories, unmounted paths.

mod common;

use common::*;

/// GET `path` with curl (`--path-as-is`: sent exactly as written).
fn get(s: &Server, path: &str) -> Response {
    curl(s.url(path)).send()
}

#[track_caller]
fn assert_not_leaking(r: &Response) {
    let body = r.body_text();
    assert!(
        !body.contains(SECRET),
        "secret outside the mount leaked:\n{r:?}"
    );
    assert!(!body.contains(DOT_SECRET), "dot-file leaked:\n{r:?}");
    assert!(!body.contains("root:x:0:0"), "/etc/passwd leaked:\n{r:?}");
}

#[track_caller]
fn assert_status_for(s: &Server, path: &str, status: u16) {
    let r = get(s, path);
    assert_eq!(r.status, status, "GET {path}:\n{r:?}");
    assert_not_leaking(&r);
}

#[test]
fn nul_is_a_bad_request() {
    let fx = Fixture::new();
    let s = fx.server();
    for p in [
        "/static/%00",
        "/static/css/app.css%00",
        "/static/css/app.css%00.txt",
        "/media/%00/x",
        "/%00",
    ] {
        assert_status_for(&s, p, 400);
    }
}

#[test]
fn dot_dot_segments_are_bad_requests() {
    let fx = Fixture::new();
    let s = fx.server();
    for p in [
        "/static/../outside/secret.txt",
        "/static/css/../css/app.css",
        "/static/css/../../outside/secret.txt",
        "/static/%2e%2e/outside/secret.txt",
        "/static/%2E%2E/outside/secret.txt",
        "/static/.%2e/outside/secret.txt",
        "/static/css/..",
        "/media/uploads/../../outside/secret.txt",
        "/media/..",
    ] {
        assert_status_for(&s, p, 400);
    }
}

#[test]
fn traversal_through_encoded_slashes_never_succeeds() {
    let fx = Fixture::new();
    let s = fx.server();
    for p in [
        "/static/..%2foutside%2fsecret.txt",
        "/static/..%2Foutside/secret.txt",
        "/static/css%2f..%2f..%2foutside%2fsecret.txt",
    ] {
        let r = get(&s, p);
        assert!(r.status == 400 || r.status == 404, "GET {p}:\n{r:?}");
        assert_not_leaking(&r);
    }
}

#[test]
fn encoded_slashes_and_backslashes_are_not_found() {
    let fx = Fixture::new();
    let s = fx.server();
    for p in [
        "/static/css%2Fapp.css",
        "/static/css%2fapp.css",
        "/static/css\\app.css",
        "/static/css%5Capp.css",
        "/static/css%5capp.css",
        "/media/uploads%2Freport.pdf",
        "/media/uploads\\report.pdf",
    ] {
        assert_status_for(&s, p, 404);
    }
}

#[test]
fn dot_files_and_dot_directories_are_not_found() {
    let fx = Fixture::new();
    let s = fx.server();
    for p in [
        "/static/.env",
        "/static/%2Eenv",
        "/static/%2eenv",
        "/static/.hidden/app.css",
        "/static/%2Ehidden/app.css",
        "/static/...",
        "/static/css/.",
        "/static/./css/app.css",
        "/static/css/./app.css",
        "/media/.env",
        "/static/staticfiles.json/.",
    ] {
        assert_status_for(&s, p, 404);
    }
}

#[test]
fn directories_are_not_found() {
    let fx = Fixture::new();
    let s = fx.server();
    for p in [
        "/static/",
        "/static/css",
        "/static/css/",
        "/static/admin",
        "/static/admin/css/",
        "/media/",
        "/media/uploads",
        "/media/uploads/",
    ] {
        let r = get(&s, p);
        assert_eq!(r.status, 404, "GET {p}:\n{r:?}");
        assert!(
            !r.body_text().contains("app.css") && !r.body_text().contains("report.pdf"),
            "no listing for {p}"
        );
    }
}

#[test]
fn empty_segments_are_not_found() {
    let fx = Fixture::new();
    let s = fx.server();
    for p in [
        "/static//css/app.css",
        "/static/css//app.css",
        "/media//uploads/report.pdf",
    ] {
        assert_status_for(&s, p, 404);
    }
}

#[test]
fn symlink_inside_the_root_is_followed() {
    let fx = Fixture::new();
    let s = fx.server();
    let r = get(&s, &format!("/static/{LINK_INSIDE}"));
    r.assert_status(200).assert_body(&fx.read_static(APP_CSS));
    assert_eq!(r.header("content-type"), Some("text/css; charset=utf-8"));
}

#[test]
fn symlinks_leading_outside_the_root_are_not_found() {
    let fx = Fixture::new();
    std::os::unix::fs::symlink(
        fx.outside().join("secret.txt"),
        fx.static_path("abs-leak.txt"),
    )
    .unwrap();
    let s = fx.server();
    for p in [
        "/static/leak.txt",
        "/static/passwd.txt",
        "/static/abs-leak.txt",
        "/static/outdir/secret.txt",
        "/static/outdir/",
        "/media/leak.txt",
    ] {
        assert_status_for(&s, p, 404);
    }
}

#[test]
fn a_symlink_swapped_in_after_startup_is_still_refused() {
    // Mounts are checked at open time, not only at start-up.
    let fx = Fixture::new();
    let s = fx.server();
    curl(s.media_url(MEDIA_JPG)).send().assert_status(200);
    std::fs::remove_file(fx.media_path(MEDIA_JPG)).unwrap();
    std::os::unix::fs::symlink("../../outside/secret.txt", fx.media_path(MEDIA_JPG)).unwrap();
    assert_status_for(&s, &format!("/media/{MEDIA_JPG}"), 404);
    std::fs::remove_dir_all(fx.media_path("uploads")).unwrap();
    std::os::unix::fs::symlink("../outside", fx.media_path("uploads")).unwrap();
    assert_status_for(&s, "/media/uploads/secret.txt", 404);
}

#[test]
fn malformed_percent_escapes_are_bad_requests() {
    let fx = Fixture::new();
    let s = fx.server();
    for p in [
        "/static/%zz.css",
        "/static/css/app.css%",
        "/static/css/app.css%4",
        "/static/%g0",
    ] {
        assert_status_for(&s, p, 400);
    }
    // Not UTF-8 after decoding: refused one way or the other.
    let r = get(&s, "/static/%ff%fe.css");
    assert!(r.status == 400 || r.status == 404, "{r:?}");
}

#[test]
fn paths_outside_every_mount_are_not_found() {
    let fx = Fixture::new();
    let s = fx.server();
    for p in [
        "/",
        "/favicon.ico",
        "/etc/passwd",
        "/static",
        "/staticx/css/app.css",
        "/STATIC/css/app.css",
        "/media",
        "/outside/secret.txt",
    ] {
        let r = get(&s, p);
        assert_eq!(r.status, 404, "GET {p}:\n{r:?}");
        assert_not_leaking(&r);
    }
}

#[test]
fn not_found_has_a_small_body_and_sane_headers() {
    let fx = Fixture::new();
    let s = fx.server();
    for p in ["/static/missing.css", "/media/missing.pdf", "/nowhere"] {
        let r = get(&s, p);
        r.assert_status(404);
        assert!(
            !r.body.is_empty() && r.body.len() < 1024,
            "a small body: {r:?}"
        );
        assert_eq!(r.content_length(), Some(r.body.len() as u64));
        assert!(r.has_header("content-type"));
        assert_eq!(r.header("server"), Some("bypass"));
        assert!(
            !r.has_header("etag") && !r.has_header("last-modified"),
            "{r:?}"
        );
        // The connection stays usable after a 404.
        let (heads, connects) = curl_sequence(&[s.url(p), s.static_url(PLAIN_CSS)], &[], false);
        assert_eq!(connects, vec![1, 0], "{heads:?}");
        assert_eq!(heads[1].status, 200);
    }
}

#[test]
fn absolute_form_targets_are_understood() {
    let fx = Fixture::new();
    let s = fx.server();
    let r = raw_roundtrip(
        s.addr(),
        format!("GET http://bypass.test/static/{PLAIN_CSS} HTTP/1.1\r\nHost: bypass.test\r\n\r\n"),
    );
    r.assert_status(200).assert_body(&fx.read_static(PLAIN_CSS));
    let r = raw_roundtrip(
        s.addr(),
        "GET http://bypass.test/static/../outside/secret.txt HTTP/1.1\r\nHost: bypass.test\r\n\r\n",
    );
    assert_eq!(r.status, 400, "{r:?}");
}

#[test]
fn asterisk_and_authority_forms_are_refused() {
    let fx = Fixture::new();
    let s = fx.server();
    for line in [
        "GET * HTTP/1.1",
        "GET bypass.test:80 HTTP/1.1",
        "GET static/css/app.css HTTP/1.1",
    ] {
        let r = raw_roundtrip(s.addr(), format!("{line}\r\nHost: bypass.test\r\n\r\n"));
        assert!(r.status == 400 || r.status == 404, "{line}: {r:?}");
    }
}
