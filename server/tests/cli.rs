//! Command line, start-up log, start-up errors.

mod common;

use common::*;
use std::net::TcpListener;
use std::time::Duration;

const EXIT_LIMIT: Duration = Duration::from_secs(10);

fn engine_names() -> Vec<String> {
    match test_engine().as_str() {
        "auto" => vec!["uring".into(), "epoll".into()],
        e => vec![e.to_string()],
    }
}

#[test]
fn startup_log_has_exactly_the_documented_lines() {
    let fx = Fixture::new();
    let s = fx.builder().args(["--workers", "2"]).start();
    let lines = s.log_lines();
    let port = s.addr().port();
    assert_eq!(
        lines.len(),
        4,
        "four start-up lines expected, got:\n{}",
        lines.join("\n")
    );

    let engine_ok = engine_names()
        .iter()
        .any(|e| lines[0] == format!("bypass: engine {e}, 2 workers"));
    assert!(
        engine_ok,
        "engine line: {:?} (engine {})",
        lines[0],
        test_engine()
    );
    assert_eq!(
        lines[1],
        format!(
            "bypass: static /static/ -> {} (manifest: 3 hashed files)",
            fx.static_root().display()
        )
    );
    assert_eq!(
        lines[2],
        format!("bypass: media /media/ -> {}", fx.media_root().display())
    );
    assert_eq!(lines[3], format!("bypass: listening on 127.0.0.1:{port}"));
}

#[test]
fn relative_mount_directories_are_logged_absolute() {
    let fx = Fixture::new();
    let s = ServerBuilder::new()
        .current_dir(fx.root())
        .args(["--static", "/static/=static", "--media", "/media/=./media"])
        .start();
    let log = s.log_text();
    assert!(
        log.contains(&format!(
            "bypass: static /static/ -> {} (manifest: 3 hashed files)",
            fx.static_root().display()
        )),
        "{log}"
    );
    let media_line = format!("bypass: media /media/ -> {}", fx.media_root().display());
    assert!(log.lines().any(|l| l == media_line), "{log}");
    // And it serves from them.
    curl(s.static_url(HASHED_CSS))
        .send()
        .assert_status(200)
        .assert_body(&fx.read_static(HASHED_CSS));
}

#[test]
fn static_mount_without_manifest_logs_the_mount() {
    let fx = Fixture::without_manifest();
    let s = fx.server();
    let prefix = format!("bypass: static /static/ -> {}", fx.static_root().display());
    assert!(
        s.log_lines().iter().any(|l| l.starts_with(&prefix)),
        "{}",
        s.log_text()
    );
}

#[test]
fn several_listeners_each_log_their_real_port_and_serve() {
    let fx = Fixture::new();
    let s = fx
        .builder()
        .listen("127.0.0.1:0")
        .listen("127.0.0.1:0")
        .start();
    assert_eq!(s.addrs().len(), 2);
    assert_ne!(s.addrs()[0], s.addrs()[1]);
    let listening: Vec<_> = s
        .log_lines()
        .into_iter()
        .filter(|l| l.starts_with("bypass: listening on "))
        .collect();
    assert_eq!(listening.len(), 2, "{}", s.log_text());
    for a in s.addrs() {
        let r = curl(format!("http://{a}/static/{HASHED_CSS}")).send();
        r.assert_status(200)
            .assert_body(&fx.read_static(HASHED_CSS));
    }
}

#[test]
fn workers_share_one_port_and_all_serve() {
    let fx = Fixture::new();
    let s = fx.builder().args(["--workers", "2"]).start();
    let listening: Vec<_> = s
        .log_lines()
        .into_iter()
        .filter(|l| l.starts_with("bypass: listening on "))
        .collect();
    assert_eq!(
        listening.len(),
        1,
        "one line per --listen, not per worker:\n{}",
        s.log_text()
    );
    // Many connections (so that both workers get some): every one is answered.
    let addr = s.addr();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..10 {
                    let r = raw_roundtrip(
                        addr,
                        request(
                            "GET",
                            &format!("/static/{PLAIN_CSS}"),
                            &["Connection: close"],
                        ),
                    );
                    assert_eq!(r.status, 200, "{r:?}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn explicit_default_options_are_accepted() {
    let fx = Fixture::new();
    let s = fx
        .builder()
        .args([
            "--static-max-age",
            "60",
            "--media-cache-control",
            "no-cache",
            "--header-timeout",
            "10",
        ])
        .args([
            "--keepalive-timeout",
            "60",
            "--shutdown-timeout",
            "10",
            "--immutable",
            r"\.[0-9a-f]{12}\.",
        ])
        .start();
    curl(s.static_url(PLAIN_CSS)).send().assert_status(200);
}

// ----- start-up errors: one `bypass: ` line on stderr, exit code 2 -----

fn expect_startup_error(b: ServerBuilder) -> String {
    b.run_to_exit(EXIT_LIMIT).assert_startup_error().to_string()
}

#[test]
fn unknown_flag_is_a_startup_error() {
    let fx = Fixture::new();
    expect_startup_error(fx.builder().listen("127.0.0.1:0").arg("--no-such-flag"));
}

#[test]
fn flag_missing_its_value_is_a_startup_error() {
    let fx = Fixture::new();
    expect_startup_error(fx.builder().arg("--listen"));
}

#[test]
fn unparsable_listen_address_is_a_startup_error() {
    let fx = Fixture::new();
    expect_startup_error(fx.builder().listen("not-an-address"));
    expect_startup_error(fx.builder().listen("127.0.0.1:99999"));
}

#[test]
fn mount_without_prefix_is_a_startup_error() {
    let fx = Fixture::new();
    let dir = fx.static_root().display().to_string();
    expect_startup_error(
        ServerBuilder::new()
            .listen("127.0.0.1:0")
            .args(["--static", dir.as_str()]),
    );
}

#[test]
fn nonexistent_mount_directory_is_a_startup_error() {
    let fx = Fixture::new();
    let missing = fx.root().join("no-such-dir");
    expect_startup_error(
        ServerBuilder::new()
            .listen("127.0.0.1:0")
            .static_mount("/static/", &missing),
    );
    expect_startup_error(
        ServerBuilder::new()
            .listen("127.0.0.1:0")
            .media_mount("/media/", &missing),
    );
}

#[test]
fn mount_directory_that_is_a_file_is_a_startup_error() {
    let fx = Fixture::new();
    let file = fx.static_path(PLAIN_CSS);
    expect_startup_error(
        ServerBuilder::new()
            .listen("127.0.0.1:0")
            .media_mount("/media/", &file),
    );
}

#[test]
fn address_in_use_is_a_startup_error() {
    let fx = Fixture::new();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    expect_startup_error(fx.builder().listen(&addr));
    drop(taken);
}

#[test]
fn unknown_engine_is_a_startup_error() {
    let fx = Fixture::new();
    expect_startup_error(fx.builder().engine("kqueue").listen("127.0.0.1:0"));
}

#[test]
fn malformed_numbers_are_startup_errors() {
    let fx = Fixture::new();
    for (flag, value) in [
        ("--workers", "many"),
        ("--workers", "0"),
        ("--static-max-age", "soon"),
        ("--static-max-age", "-5"),
        ("--header-timeout", "x"),
        ("--keepalive-timeout", "-1"),
        ("--shutdown-timeout", "1.5.2"),
    ] {
        expect_startup_error(fx.builder().listen("127.0.0.1:0").args([flag, value]));
    }
}

#[test]
fn invalid_immutable_regex_is_a_startup_error() {
    let fx = Fixture::without_manifest();
    expect_startup_error(
        fx.builder()
            .listen("127.0.0.1:0")
            .args(["--immutable", "(unclosed"]),
    );
}

#[test]
fn uring_engine_without_io_uring_is_a_startup_error() {
    let fx = Fixture::new();
    let line = expect_startup_error(
        fx.builder()
            .engine("uring")
            .deny_io_uring()
            .listen("127.0.0.1:0"),
    );
    assert!(
        line.to_ascii_lowercase().contains("uring"),
        "the error should name io_uring: {line}"
    );
}

#[test]
fn auto_engine_falls_back_to_epoll_without_io_uring() {
    let fx = Fixture::new();
    let s = fx
        .builder()
        .engine("auto")
        .deny_io_uring()
        .args(["--workers", "2"])
        .start();
    // A notice about the fallback may come first; the engine line names what is used.
    let lines = s.log_lines();
    assert!(
        lines.iter().any(|l| l == "bypass: engine epoll, 2 workers"),
        "{}",
        s.log_text()
    );
    assert!(
        lines.iter().all(|l| l.starts_with("bypass: ")),
        "{}",
        s.log_text()
    );
    curl(s.static_url(HASHED_CSS))
        .send()
        .assert_status(200)
        .assert_body(&fx.read_static(HASHED_CSS));
}

#[test]
fn auto_engine_prefers_uring_when_available() {
    let fx = Fixture::new();
    let s = fx.builder().engine("auto").args(["--workers", "2"]).start();
    assert_eq!(s.log_lines()[0], "bypass: engine uring, 2 workers");
}
