//! The binary end to end: bad input fails with one line and exit 2, response
//! checks classify failures, request mixes reach the server as asked, and
//! `compare` gates regressions.

mod common;

use std::collections::HashMap;
use std::net::TcpListener;
use std::time::Duration;

use common::{Reply, Server, assert_input_error, run, run_json, temp_path};

#[test]
fn bad_input_is_one_line_and_exit_2() {
    assert_input_error(&run(&["ftp://x/"]), "bad URL");
    assert_input_error(&run(&["http://127.0.0.1:80/a b"]), "bad URL");
    assert_input_error(&run(&["-c", "zero", "http://127.0.0.1/"]), "-c");
    assert_input_error(&run(&["--frobnicate", "http://127.0.0.1/"]), "--frobnicate");
    assert_input_error(&run(&[]), "no URL");
    assert_input_error(
        &run(&["-d", "5parsecs", "http://127.0.0.1/"]),
        "invalid duration",
    );
    assert_input_error(
        &run(&["--server-pid", "4294967295", "http://127.0.0.1/"]),
        "--server-pid",
    );
    assert_input_error(&run(&["compare", "/nonexistent/a.json"]), "two files");
    assert_input_error(&run(&["sweep", "http://127.0.0.1/"]), "--slo");
}

#[test]
fn unreachable_target_is_one_line_and_exit_2() {
    // A port that was just free: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = run(&["-d", "1s", &format!("http://127.0.0.1:{port}/")]);
    assert_input_error(&out, "cannot connect");
    assert_input_error(&run(&["http://no-such-host.invalid/"]), "cannot resolve");
}

#[test]
fn malformed_manifest_and_log_are_one_line_and_exit_2() {
    let m = temp_path("staticfiles.json");
    std::fs::write(&m, "{\"paths\": [1, 2]}").unwrap();
    let out = run(&["--zipf", m.to_str().unwrap(), "http://127.0.0.1:1/static/"]);
    assert_input_error(&out, "no \"paths\" object");
    std::fs::write(&m, "not json").unwrap();
    assert_input_error(
        &run(&["--zipf", m.to_str().unwrap(), "http://127.0.0.1:1/static/"]),
        "not JSON",
    );
    let log = temp_path("access.log");
    std::fs::write(&log, "this is not a log line\n").unwrap();
    let out = run(&["--replay", log.to_str().unwrap(), "http://127.0.0.1:1/"]);
    assert_input_error(&out, "line 1: not an nginx combined log line");
    assert_input_error(
        &run(&["--replay", "/nonexistent.log", "http://127.0.0.1:1/"]),
        "/nonexistent.log",
    );
    let _ = std::fs::remove_file(m);
    let _ = std::fs::remove_file(log);
}

#[test]
fn summary_is_printed_and_counts_statuses() {
    let server = Server::start(|_, req| Reply {
        status: if req.path == "/missing" { 404 } else { 200 },
        ..Reply::ok()
    });
    let out = run(&[
        "-q",
        "-c",
        "2",
        "-t",
        "1",
        "-n",
        "100",
        &server.url("/a"),
        &server.url("/missing"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("req/s") && text.contains("p99.99"), "{text}");
    assert!(
        text.contains("Status    200: ") && text.contains("404: "),
        "{text}"
    );
    assert!(text.contains("Errors    status 4xx "), "{text}");
}

#[test]
fn failures_are_classified_by_kind() {
    // Request 3 gets half its body, request 5 a body the server never sends
    // (timeout), the rest succeed; chunked answers must parse cleanly.
    let server = Server::start(|ctx, _| {
        let n = ctx.count.load(std::sync::atomic::Ordering::Relaxed);
        let mut r = Reply {
            body: b"0123456789".to_vec(),
            chunked: n % 2 == 0,
            ..Reply::ok()
        };
        if n == 3 {
            r.chunked = false;
            r.truncate = Some(4);
        }
        if n == 5 {
            r.delay = Duration::from_millis(1500);
        }
        r
    });
    let doc = run_json(&[
        "-c",
        "1",
        "-t",
        "1",
        "-n",
        "20",
        "--timeout",
        "300ms",
        &server.url("/"),
    ]);
    let e = &doc["errors"];
    assert_eq!(e["short_body"], 1, "{doc}");
    assert_eq!(e["timeout"], 1, "{doc}");
    assert_eq!(e["parse"], 0, "{doc}");
    assert_eq!(doc["requests"], 18, "{doc}");
    assert_eq!(doc["status"]["200"], 18);
}

#[test]
fn pipelining_keeps_n_requests_in_flight() {
    let server = Server::start(|_, _| Reply::ok());
    let doc = run_json(&[
        "-c",
        "2",
        "-t",
        "1",
        "--pipeline",
        "16",
        "-n",
        "3200",
        &server.url("/p"),
    ]);
    assert_eq!(doc["requests"], 3200);
    assert_eq!(doc["errors"]["total"], 0);
    let seen = server.seen();
    assert_eq!(seen.len(), 3200);
    let mut conns: Vec<u64> = seen.iter().map(|s| s.connection).collect();
    conns.dedup();
    conns.sort_unstable();
    conns.dedup();
    assert_eq!(conns.len(), 2, "all requests over the two connections");
}

#[test]
fn no_keepalive_uses_a_connection_per_request() {
    let server = Server::start(|_, req| Reply {
        close: req
            .headers
            .iter()
            .any(|h| h.eq_ignore_ascii_case("connection: close")),
        ..Reply::ok()
    });
    let doc = run_json(&[
        "-c",
        "2",
        "-t",
        "1",
        "--no-keepalive",
        "-n",
        "50",
        &server.url("/"),
    ]);
    assert_eq!(doc["requests"], 50);
    assert_eq!(doc["errors"]["total"], 0, "{doc}");
    assert!(
        server
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 50
    );
}

#[test]
fn epoll_engine_works_too() {
    let server = Server::start(|_, _| Reply {
        body: vec![b'x'; 100_000],
        ..Reply::ok()
    });
    let doc = run_json(&[
        "--engine",
        "epoll",
        "-c",
        "4",
        "-t",
        "2",
        "-n",
        "200",
        &server.url("/big"),
    ]);
    assert_eq!(doc["engine"], "epoll");
    assert_eq!(doc["requests"], 200);
    assert!(doc["bytes"].as_u64().unwrap() > 200 * 100_000);
    let doc = run_json(&[
        "--engine",
        "io_uring",
        "-c",
        "4",
        "-t",
        "2",
        "-n",
        "200",
        &server.url("/big"),
    ]);
    assert_eq!(doc["engine"], "io_uring");
    assert_eq!(doc["requests"], 200);
    assert_eq!(doc["errors"]["total"], 0);
}

fn path_counts(server: &Server) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for s in server.seen() {
        *m.entry(s.path).or_default() += 1;
    }
    m
}

#[test]
fn headers_method_and_accept_encoding_mix_reach_the_server() {
    let server = Server::start(|_, _| Reply::ok());
    run_json(&[
        "-c",
        "2",
        "-t",
        "1",
        "-n",
        "2000",
        "-m",
        "HEAD",
        "-H",
        "X-Test: yes",
        "--accept-encoding",
        "br:3",
        "--accept-encoding",
        "none:1",
        &server.url("/h"),
    ]);
    let seen = server.seen();
    assert!(
        seen.iter()
            .all(|s| s.headers.iter().any(|h| h == "X-Test: yes"))
    );
    let br = seen
        .iter()
        .filter(|s| s.headers.iter().any(|h| h == "Accept-Encoding: br"))
        .count();
    let share = br as f64 / seen.len() as f64;
    assert!((0.70..0.80).contains(&share), "br share {share}");
}

#[test]
fn urls_file_weights_and_zipf_manifest_shape_the_mix() {
    let server = Server::start(|_, _| Reply::ok());
    let f = temp_path("urls.txt");
    std::fs::write(&f, format!("{} 9\n/cold 1\n", server.url("/hot"))).unwrap();
    run_json(&[
        "-c",
        "2",
        "-t",
        "1",
        "-n",
        "2000",
        "--urls",
        f.to_str().unwrap(),
    ]);
    let c = path_counts(&server);
    let hot = c["/hot"] as f64 / 2000.0;
    assert!((0.87..0.93).contains(&hot), "{c:?}");
    let _ = std::fs::remove_file(f);

    let server = Server::start(|_, _| Reply::ok());
    let m = temp_path("staticfiles.json");
    let paths: Vec<String> = (0..50)
        .map(|i| format!("\"f{i}.css\": \"f{i}.abc{i}.css\""))
        .collect();
    std::fs::write(
        &m,
        format!(
            "{{\"paths\": {{{}}}, \"version\": \"1.1\"}}",
            paths.join(",")
        ),
    )
    .unwrap();
    run_json(&[
        "-c",
        "2",
        "-t",
        "1",
        "-n",
        "4000",
        "--zipf",
        m.to_str().unwrap(),
        "--zipf-s",
        "1.2",
        &server.url("/static/"),
    ]);
    let c = path_counts(&server);
    assert!(
        c.keys()
            .all(|p| p.starts_with("/static/f") && p.contains(".abc")),
        "{c:?}"
    );
    // Zipf s=1.2 over 50 files: the hottest takes ~27%, the coldest ~0.3%.
    let mut counts: Vec<usize> = c.values().copied().collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let top = counts[0] as f64 / 4000.0;
    assert!((0.22..0.33).contains(&top), "top share {top}: {counts:?}");
    assert!(counts.len() > 30, "{counts:?}");
    let _ = std::fs::remove_file(m);
}

#[test]
fn replay_follows_the_log() {
    let server = Server::start(|_, _| Reply::ok());
    let log = temp_path("access.log");
    let line = |p: &str| {
        format!(
            "127.0.0.1 - - [10/Oct/2024:13:55:36 +0000] \"GET {p} HTTP/1.1\" 200 5 \"-\" \"curl\"\n"
        )
    };
    std::fs::write(&log, [line("/one"), line("/two"), line("/three")].concat()).unwrap();
    run_json(&[
        "-c",
        "1",
        "-t",
        "1",
        "-n",
        "7",
        "--replay",
        log.to_str().unwrap(),
        &server.url("/"),
    ]);
    let order: Vec<String> = server.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(
        order,
        ["/one", "/two", "/three", "/one", "/two", "/three", "/one"]
    );
    let _ = std::fs::remove_file(log);
}

#[test]
fn compare_exits_1_on_regression_only() {
    let write = |name: &str, rps: f64, p99: u64| {
        let p = temp_path(name);
        let doc = serde_json::json!({"schema_version": 1, "rps": rps, "requests": 1000,
            "latency_us": {"p50": 100, "p90": 150, "p99": p99}, "errors": {"total": 0}});
        std::fs::write(&p, doc.to_string()).unwrap();
        p
    };
    let base = write("base.json", 10_000.0, 500);
    let same = write("same.json", 9_800.0, 510);
    let worse = write("worse.json", 8_000.0, 500);
    let out = run(&["compare", base.to_str().unwrap(), same.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = run(&[
        "compare",
        base.to_str().unwrap(),
        worse.to_str().unwrap(),
        "--max-regression",
        "5%",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("req/s") && text.contains("-20.0%") && text.contains("REGRESSION"),
        "{text}"
    );
    let out = run(&[
        "compare",
        base.to_str().unwrap(),
        worse.to_str().unwrap(),
        "--max-regression",
        "25%",
    ]);
    assert_eq!(out.status.code(), Some(0));
    std::fs::write(&same, "{}").unwrap();
    assert_input_error(
        &run(&["compare", base.to_str().unwrap(), same.to_str().unwrap()]),
        "not a bypass-load report",
    );
    for p in [base, same, worse] {
        let _ = std::fs::remove_file(p);
    }
}
