//! The hot-asset cache from outside: hits and misses in `/metrics`, byte-exact answers from
//! the cache (plain, conditional, ranged, pipelined), invalidation of static and media files,
//! `--prewarm`, `--cache-size 0`, bad flags, framed hits' `Date`, pipelined hits from frame
//! memory, head-only entries for large static files, and the upload-churn reliability test.

mod common;

use common::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// The admin address from the `metrics on` start-up line.
fn metrics_addr(s: &Server) -> SocketAddr {
    let line = s
        .log_lines()
        .into_iter()
        .find_map(|l| {
            l.strip_prefix("bypass: metrics on http://")
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no metrics line in {}", s.log_text()));
    line.trim_end_matches("/metrics").parse().unwrap()
}

/// Scrapes `/metrics` into name{labels} → value.
fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let mut c = Raw::connect(addr);
    c.send("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.read_response();
    r.assert_status(200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    r.body_text()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

fn metric(m: &HashMap<String, f64>, name: &str) -> f64 {
    *m.get(name).unwrap_or_else(|| panic!("no {name} in {m:?}"))
}

fn server_with_metrics(fx: &Fixture, extra: &[&str]) -> (Server, SocketAddr) {
    // Files changed (ctime) in the last 100 ms are not copied in (cache::RACY_NS), and the
    // fixture was just written: let it age, so that hits and entries are deterministic.
    thread::sleep(Duration::from_millis(150));
    let s = fx
        .builder()
        .args(["--workers", "1", "--metrics", "127.0.0.1:0"])
        .args(extra.iter().copied())
        .start();
    let m = metrics_addr(&s);
    (s, m)
}

#[test]
fn hits_and_misses_are_counted_and_hits_are_exact() {
    let fx = Fixture::new();
    let (s, m) = server_with_metrics(&fx, &[]);
    let url = s.static_url(HASHED_JS);
    let expected = fx.read_static(HASHED_JS);
    let first = curl(&url).send();
    first.assert_status(200).assert_body(&expected);
    let before = scrape(m);
    assert_eq!(metric(&before, "bypass_cache_misses_total"), 1.0);
    assert_eq!(metric(&before, "bypass_cache_entries"), 1.0);
    for _ in 0..3 {
        let r = curl(&url).send();
        r.assert_status(200).assert_body(&expected);
        assert_common_file_headers(&r);
        assert_eq!(r.header("cache-control"), Some(IMMUTABLE));
        assert_eq!(r.etag(), first.etag());
    }
    let after = scrape(m);
    // The first request copied the file in and was answered from the copy: a hit too.
    assert!(
        metric(&after, "bypass_cache_hits_total") >= 3.0,
        "{after:?}"
    );
    assert_eq!(
        metric(&after, "bypass_cache_hit_bytes_total"),
        metric(&after, "bypass_cache_hits_total") * expected.len() as f64
    );
    assert!(metric(&after, "bypass_cache_resident_bytes") >= expected.len() as f64);

    // Each representation separately: br and gzip are distinct entries with their own bytes
    // (the identity CSS, ~11 KB, is above cache::STATIC_MAX and stays on the sendfile path).
    let url = s.static_url(HASHED_CSS);
    for tool in [Tool::Brotli, Tool::Gzip] {
        for _ in 0..2 {
            let r = curl(&url)
                .header(format!("Accept-Encoding: {}", tool.token()))
                .send();
            r.assert_status(200)
                .assert_body(&fx.read_sibling(HASHED_CSS, tool));
            assert_eq!(r.header("content-encoding"), Some(tool.token()));
            assert!(r.header_has_token("vary", "Accept-Encoding"));
        }
    }
    assert_eq!(metric(&scrape(m), "bypass_cache_entries"), 3.0);
}

#[test]
fn conditional_ranged_head_and_pipelined_hits() {
    let fx = Fixture::new();
    let (s, m) = server_with_metrics(&fx, &[]);
    let path = format!("/static/{HASHED_JS}");
    let body = fx.read_static(HASHED_JS);
    let etag = curl(s.static_url(HASHED_JS)).send().etag().to_string();

    let mut c = Raw::connect(s.addr());
    // Sixteen pipelined requests in one write, mixing plain, HEAD, conditional and ranges.
    let mut batch = String::new();
    for i in 0..16 {
        batch.push_str(&match i % 4 {
            0 => request("GET", &path, &[]),
            1 => request("HEAD", &path, &[]),
            2 => request("GET", &path, &[&format!("If-None-Match: {etag}")]),
            _ => request("GET", &path, &["Range: bytes=10-19"]),
        });
    }
    c.send(batch);
    for i in 0..16 {
        let method = if i % 4 == 1 { "HEAD" } else { "GET" };
        let r = c.read_response_to(method);
        match i % 4 {
            0 => {
                r.assert_status(200).assert_body(&body);
            }
            1 => {
                r.assert_status(200);
                assert_eq!(r.content_length(), Some(body.len() as u64));
            }
            2 => {
                r.assert_status(304);
            }
            _ => {
                r.assert_status(206).assert_body(&body[10..20]);
            }
        }
    }
    // HTTP/1.0 keep-alive and close get their Connection field spliced in.
    let r = raw_roundtrip(
        s.addr(),
        format!("GET {path} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"),
    );
    r.assert_status(200).assert_body(&body);
    assert_eq!(r.header("connection"), Some("keep-alive"));
    let r = raw_roundtrip(
        s.addr(),
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    );
    r.assert_status(200).assert_body(&body);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(metric(&scrape(m), "bypass_cache_hits_total") >= 18.0);
}

#[test]
fn a_large_upload_is_cached_on_its_second_miss_and_sent_whole() {
    let fx = Fixture::new();
    let big = jpeg_like(7, 400_000);
    fx.write_media("uploads/big.jpg", &big);
    set_mtime(&fx.media_path("uploads/big.jpg"), FIXED_MTIME);
    let (s, m) = server_with_metrics(&fx, &[]);
    let url = s.media_url("uploads/big.jpg");
    for _ in 0..4 {
        curl(&url).send().assert_status(200).assert_body(&big);
    }
    let r = curl(&url).range("bytes=1000-1999,399000-").send();
    r.assert_status(206);
    let after = scrape(m);
    assert_eq!(
        metric(&after, "bypass_cache_misses_total"),
        2.0,
        "{after:?}"
    );
    assert!(metric(&after, "bypass_cache_hits_total") >= 3.0);
    assert!(
        metric(
            &after,
            "bypass_cache_size_class_hits_total{le_bytes=\"524288\"}"
        ) >= 3.0
    );
    // Large static files keep their bytes in the page cache and go out by sendfile: the
    // entry holds their rendered head only (admitted on the second miss, being this large),
    // so it adds next to nothing to the resident bytes.
    let resident_before = metric(&after, "bypass_cache_resident_bytes");
    for _ in 0..3 {
        curl(s.static_url(HASHED_PHOTO))
            .send()
            .assert_status(200)
            .assert_body(&fx.read_static(HASHED_PHOTO));
    }
    let r = curl(s.static_url(HASHED_PHOTO))
        .range("bytes=100-199")
        .send();
    r.assert_status(206)
        .assert_body(&fx.read_static(HASHED_PHOTO)[100..200]);
    let last = scrape(m);
    assert_eq!(metric(&last, "bypass_cache_entries"), 2.0);
    assert_eq!(metric(&last, "bypass_cache_misses_total"), 4.0);
    let added = metric(&last, "bypass_cache_resident_bytes") - resident_before;
    assert!(
        added > 0.0 && added < 2048.0,
        "{added} bytes for a referenced entry"
    );
}

#[test]
fn prewarm_loads_the_hashed_files_before_any_request() {
    let fx = Fixture::new();
    let (s, m) = server_with_metrics(&fx, &["--prewarm"]);
    // css (br, zstd, gzip) + js (identity, gzip) copied in, and the ~11 KB identity css and
    // the 300 KB photo as heads over their files (cache::STATIC_MAX). Each worker prewarms
    // before its event loop starts, so this settles before the first request is answered;
    // the scrape may just come earlier.
    poll_until(Duration::from_secs(5), "7 prewarmed entries", || {
        (metric(&scrape(m), "bypass_cache_entries") == 7.0).then_some(())
    });
    curl(s.static_url(HASHED_JS))
        .send()
        .assert_status(200)
        .assert_body(&fx.read_static(HASHED_JS));
    let after = scrape(m);
    assert_eq!(metric(&after, "bypass_cache_misses_total"), 0.0);
    assert_eq!(metric(&after, "bypass_cache_hits_total"), 1.0);
}

#[test]
fn cache_size_zero_disables_the_cache() {
    let fx = Fixture::new();
    let (s, m) = server_with_metrics(&fx, &["--cache-size", "0", "--prewarm"]);
    for _ in 0..3 {
        curl(s.static_url(HASHED_CSS))
            .send()
            .assert_status(200)
            .assert_body(&fx.read_static(HASHED_CSS));
        curl(s.media_url(MEDIA_JPG))
            .send()
            .assert_status(200)
            .assert_body(&fx.read_media(MEDIA_JPG));
    }
    let after = scrape(m);
    for name in [
        "bypass_cache_hits_total",
        "bypass_cache_misses_total",
        "bypass_cache_entries",
        "bypass_cache_capacity_bytes",
    ] {
        assert_eq!(metric(&after, name), 0.0, "{name}");
    }
}

#[test]
fn bad_cache_flags_are_one_line_errors() {
    for args in [
        vec!["--cache-size", "lots"],
        vec!["--cache-size", "-1"],
        vec!["--metrics", "not-an-address"],
    ] {
        let f = ServerBuilder::new()
            .args(args.iter().copied())
            .run_to_exit(Duration::from_secs(10));
        let line = f.assert_startup_error();
        assert!(line.contains(args[0]), "{line}");
    }
}

#[test]
fn metrics_listener_answers_only_metrics() {
    let fx = Fixture::new();
    let (_s, m) = server_with_metrics(&fx, &[]);
    let r = raw_roundtrip(m, "GET /other HTTP/1.1\r\nHost: x\r\n\r\n");
    r.assert_status(404);
    let text = {
        let mut c = Raw::connect(m);
        c.send("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        c.read_response().body_text()
    };
    for name in [
        "# TYPE bypass_cache_hits_total counter",
        "# TYPE bypass_cache_resident_bytes gauge",
        "bypass_cache_working_set_bytes{hit_ratio=\"0.99\"}",
        "bypass_cache_evictions_total",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
}

/// Load on uploads while another thread truncates, atomically replaces, and deletes and
/// rewrites them: the server stays up, and every body is exactly as long as its
/// Content-Length and a prefix of a version that was written.
#[test]
fn uploads_churning_under_load_are_never_torn() {
    let fx = Fixture::new();
    let s = fx
        .builder()
        .args(["--workers", "2", "--cache-size", "64M"])
        .start();
    let names: Vec<String> = (0..4).map(|i| format!("churn/file{i}.bin")).collect();
    // Every version of every file: (seed, len) → content is pseudo_random_bytes(seed, len).
    let versions: Vec<(u64, usize)> = (1..=6u64)
        .map(|v| {
            (
                v,
                [1000usize, 5000, 70_000, 300_000, 0, 20_000][v as usize - 1],
            )
        })
        .collect();
    for n in &names {
        fx.write_media(n, &pseudo_random_bytes(1, 1000));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        let paths: Vec<_> = names.iter().map(|n| fx.media_path(n)).collect();
        let versions = versions.clone();
        thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let path = &paths[i % paths.len()];
                let (seed, len) = versions[i % versions.len()];
                let bytes = pseudo_random_bytes(seed, len);
                match i % 3 {
                    0 => {
                        // Truncate, then write in place.
                        let _ = std::fs::write(path, &bytes);
                    }
                    1 => write_atomic(path, &bytes),
                    _ => {
                        let _ = std::fs::remove_file(path);
                        let _ = std::fs::write(path, &bytes);
                    }
                }
                i += 1;
                thread::sleep(Duration::from_millis(30));
            }
        })
    };
    let all: Vec<Vec<u8>> = versions
        .iter()
        .map(|&(seed, len)| pseudo_random_bytes(seed, len))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut checked = 0;
    let mut cut = 0;
    let mut readers = Vec::new();
    for t in 0..3 {
        let names = names.clone();
        let all = all.clone();
        let addr = s.addr();
        readers.push(thread::spawn(move || {
            let mut checked = 0;
            let mut cut = 0;
            let mut c = Raw::connect(addr);
            let mut i = t;
            while Instant::now() < deadline {
                let p = format!("/media/{}", names[i % names.len()]);
                i += 1;
                if c.try_send(request("GET", &p, &[])).is_err() {
                    c = Raw::connect(addr);
                    cut += 1;
                    continue;
                }
                match c.try_read_response_to("GET", Duration::from_secs(10)) {
                    Ok(r) if r.status == 404 => {}
                    Ok(r) => {
                        assert_eq!(r.status, 200);
                        let cl = r.content_length().unwrap() as usize;
                        assert_eq!(r.body.len(), cl);
                        assert!(
                            all.iter().any(|v| v.starts_with(&r.body) && v.len() >= cl),
                            "a body of {cl} bytes that no written version starts with"
                        );
                        checked += 1;
                    }
                    Err(_) => {
                        // Closing mid-body is allowed (a file cut short under sendfile).
                        cut += 1;
                        c = Raw::connect(addr);
                    }
                }
            }
            (checked, cut)
        }));
    }
    for r in readers {
        let (a, b) = r.join().unwrap();
        checked += a;
        cut += b;
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let mut s = s;
    s.assert_alive();
    assert!(checked > 200, "only {checked} responses checked");
    assert!(cut * 20 <= checked, "{cut} cut connections of {checked}");
}

/// Resident memory stays within the cache budget plus 64 MiB after filling the cache.
#[test]
fn resident_memory_stays_within_budget() {
    let fx = Fixture::new();
    let files = 200;
    for i in 0..files {
        fx.write_media(&format!("many/f{i}.bin"), &pseudo_random_bytes(i, 200_000));
        set_mtime(&fx.media_path(&format!("many/f{i}.bin")), FIXED_MTIME);
    }
    let s = fx
        .builder()
        .args(["--workers", "1", "--cache-size", "16M"])
        .start();
    let mut c = Raw::connect(s.addr());
    for round in 0..3 {
        for i in 0..files {
            c.send(request("GET", &format!("/media/many/f{i}.bin"), &[]));
            c.read_response().assert_status(200);
            let _ = round;
        }
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap())
            .unwrap_or(0)
    };
    // Memfd bodies are not mapped, so count the shared memory they hold via the cache gauge
    // instead of VmRSS alone: RSS (heap bodies) + at most the budget in memfds.
    let rss = kib("VmRSS:") * 1024;
    assert!(rss <= (16 + 64) << 20, "VmRSS {rss} bytes");
}

/// A hot framed entry (an 8-64 KiB body kept behind its rendered head) carries the current
/// `Date` on every answer, across the second it was framed in and the seconds after, whether
/// it was re-framed yet or not.
#[test]
fn framed_hits_always_carry_the_current_date() {
    let fx = Fixture::new();
    let (s, _m) = server_with_metrics(&fx, &[]);
    let path = format!("/static/{HASHED_CSS}");
    let body = fx.read_static(HASHED_CSS);
    assert!(
        body.len() > 8 << 10 && body.len() <= 64 << 10,
        "{} bytes",
        body.len()
    );
    // The server dates answers from the coarse realtime clock (a few ms behind the precise
    // one); bracket each answer with the same clock.
    let unix_now = || {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec.
        assert_eq!(
            unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) },
            0
        );
        ts.tv_sec as u64
    };
    let mut c = Raw::connect(s.addr());
    let mut seconds = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    // Three distinct seconds: the frame's own, then two that begin with an out-of-date frame.
    while seconds.len() < 3 {
        assert!(Instant::now() < deadline, "saw only {seconds:?}");
        let before = unix_now();
        c.send(request("GET", &path, &[]));
        let r = c.read_response();
        let after = unix_now();
        r.assert_status(200).assert_body(&body);
        let date = r.header("date").expect("a Date field");
        let at = httpdate::parse_http_date(date)
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            before <= at && at <= after,
            "Date {date} outside [{before}, {after}]"
        );
        seconds.insert(at);
    }
}

/// Hot framed replies sent by reference from frame memory reach a pipelining client whole and
/// in order, burst after burst across seconds, so that each later second's hits come from
/// frame memory (seen in the resident bytes, which count its 2 MiB chunks), and so that the
/// server's sends stop part-way through replies (here about once a burst) and go on from there:
/// no reply may be cut, repeated, or carry bytes of another. (A send_pinned that leaves what the
/// socket did not take in its pipe fails this, on both engines.)
#[test]
fn framed_replies_from_frame_memory_reach_a_pipelining_client_whole() {
    // More answers (5 MB) than a loopback socket's largest send buffer (4 MiB by default)
    // holds, so that the server's sends meet a full socket.
    const BURST: usize = 512;
    let fx = Fixture::new();
    let (s, m) = server_with_metrics(&fx, &[]);
    let path = format!("/static/{HASHED_CSS}");
    let body = fx.read_static(HASHED_CSS);
    assert!(body.len() > 8 << 10 && body.len() <= 64 << 10);
    let mut c = Raw::connect(s.addr());
    let burst = request("GET", &path, &[]).repeat(BURST);
    let mut seconds = std::collections::BTreeSet::new();
    let mut most_resident = 0.0f64;
    let mut bursts = 0;
    let deadline = Instant::now() + Duration::from_secs(15);
    while seconds.len() < 3 || most_resident < (2 << 20) as f64 {
        assert!(
            Instant::now() < deadline,
            "seconds {seconds:?}, resident at most {most_resident} bytes after {bursts} bursts"
        );
        c.send(&burst);
        for i in 0..BURST {
            let r = c.read_response();
            r.assert_status(200);
            assert!(
                r.body == body,
                "burst {bursts}, answer {i}: {} bytes that are not the file's {}",
                r.body.len(),
                body.len()
            );
            seconds.insert(r.header("date").expect("a Date field").to_string());
        }
        bursts += 1;
        most_resident = most_resident.max(metric(&scrape(m), "bypass_cache_resident_bytes"));
    }
}
