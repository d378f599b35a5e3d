//! Header-read timeout (slow-loris) and keep-alive idle timeout.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// Timers may be coarse; a 1 s timeout must not fire before this...
const NOT_BEFORE: Duration = Duration::from_millis(700);
/// ...and must have fired by this.
const BY: Duration = Duration::from_secs(4);

/// Waits for the close of a connection on which the server may first send one error response
/// (408). Returns how long it took from `since`.
#[track_caller]
fn closed_after(c: &mut Raw, since: Instant) -> Duration {
    match c.try_read_response_to("GET", BY) {
        Ok(r) => {
            assert_eq!(
                r.status, 408,
                "only a 408 may precede a timeout close: {r:?}"
            );
            assert!(r.header_has_token("connection", "close"));
            c.expect_closed(BY);
        }
        Err(e) => assert!(
            e.contains("closed") || e.contains("reset"),
            "expected a close: {e}"
        ),
    }
    since.elapsed()
}

#[test]
fn a_stalled_request_head_is_closed_after_the_header_timeout() {
    let fx = Fixture::new();
    let s = fx.builder().args(["--header-timeout", "1"]).start();
    let mut c = Raw::connect(s.addr());
    let t0 = Instant::now();
    c.send(format!("GET /static/{PLAIN_CSS} HTTP/1.1\r\nHost: x\r\n"));
    let took = closed_after(&mut c, t0);
    assert!(
        took >= NOT_BEFORE,
        "closed after {took:?}, before the header timeout"
    );
    assert!(took <= BY, "closed after {took:?}");
}

#[test]
fn a_trickling_request_head_is_closed_after_the_header_timeout() {
    // Slow-loris proper: a byte every 100 ms keeps the connection busy but never completes
    // the head. The timeout bounds the whole head, not the gap between bytes.
    let fx = Fixture::new();
    let s = fx.builder().args(["--header-timeout", "1"]).start();
    let mut c = Raw::connect(s.addr());
    let t0 = Instant::now();
    c.send(format!(
        "GET /static/{PLAIN_CSS} HTTP/1.1\r\nHost: x\r\nX-Slow: "
    ));
    let closed = loop {
        if t0.elapsed() > BY + Duration::from_secs(2) {
            break false;
        }
        if c.try_send(b"a").is_err() {
            break true;
        }
        match c.wait_closed(Duration::from_millis(100)) {
            Ok(_) => break true,
            Err(e) if e.contains("did not close") => continue,
            Err(e) => {
                // Data: only a 408 is acceptable.
                assert!(e.contains("HTTP/1.1 408"), "{e}");
                break true;
            }
        }
    };
    let took = t0.elapsed();
    assert!(closed, "a trickling head was still open after {took:?}");
    assert!(took >= NOT_BEFORE && took <= BY, "closed after {took:?}");
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout() {
    let fx = Fixture::new();
    let s = fx.builder().args(["--keepalive-timeout", "1"]).start();
    let mut c = Raw::connect(s.addr());
    c.send(request("GET", &format!("/static/{PLAIN_CSS}"), &[]));
    c.read_response().assert_status(200);
    let t0 = Instant::now();
    let how = c.wait_closed(BY).unwrap_or_else(|e| panic!("{e}"));
    let took = t0.elapsed();
    assert!(
        took >= NOT_BEFORE,
        "closed ({how:?}) after {took:?}, before the keep-alive timeout"
    );
}

#[test]
fn idle_time_between_requests_is_governed_by_keepalive_not_header_timeout() {
    let fx = Fixture::new();
    let s = fx
        .builder()
        .args(["--header-timeout", "1", "--keepalive-timeout", "5"])
        .start();
    let mut c = Raw::connect(s.addr());
    c.send(request("GET", &format!("/static/{PLAIN_CSS}"), &[]));
    c.read_response().assert_status(200);
    // Idle for twice the header timeout: still open, and still serving.
    assert!(
        c.still_open_after(Duration::from_secs(2)),
        "closed while idle before the keep-alive timeout"
    );
    c.send(request("GET", &format!("/static/{PLAIN_CSS}"), &[]));
    c.read_response().assert_status(200);
}

#[test]
fn a_slow_but_steady_download_is_not_cut_by_the_timeouts() {
    // Reading a large response slowly (the server blocked on a full socket for longer than
    // both timeouts) is not idleness.
    let fx = Fixture::new();
    let big = pseudo_random_bytes(77, 16 << 20);
    fx.write_media("uploads/big.bin", &big);
    let s = fx
        .builder()
        .args(["--header-timeout", "1", "--keepalive-timeout", "1"])
        .start();
    let mut c = Raw::connect(s.addr());
    c.send(request("GET", "/media/uploads/big.bin", &[]));
    let head = c.read_head();
    head.assert_status(200);
    let mut got = Vec::new();
    let t0 = Instant::now();
    while got.len() < big.len() {
        let slow = t0.elapsed() < Duration::from_millis(2500);
        let want = (big.len() - got.len()).min(if slow { 32 * 1024 } else { 1 << 20 });
        let chunk = c.read_up_to(want, Duration::from_secs(5));
        assert!(
            !chunk.is_empty(),
            "connection ended after {} of {} bytes",
            got.len(),
            big.len()
        );
        got.extend(chunk);
        if slow {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert!(got == big);
    // And the connection is still good for another request.
    c.send(request("GET", &format!("/static/{PLAIN_CSS}"), &[]));
    c.read_response().assert_status(200);
}

#[test]
fn a_connection_that_never_sends_a_byte_is_closed() {
    let fx = Fixture::new();
    let s = fx
        .builder()
        .args(["--header-timeout", "1", "--keepalive-timeout", "1"])
        .start();
    let mut c = Raw::connect(s.addr());
    let t0 = Instant::now();
    c.wait_closed(BY).unwrap_or_else(|e| panic!("{e}"));
    assert!(t0.elapsed() >= NOT_BEFORE);
}
