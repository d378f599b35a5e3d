//! SIGTERM / SIGINT: stop accepting, finish in-flight responses (bounded), exit 0.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const BIG: usize = 32 << 20;

/// A file only this fixture has, so that a probe reaching some other server (which could have
/// been given the same port after ours closed it) is not mistaken for ours.
fn probe_file(fx: &Fixture) -> String {
    let name = format!(
        "probe-{}-{}.txt",
        std::process::id(),
        fx.root().display().to_string().len()
    );
    fx.write_media(&name, fx.root().display().to_string().as_bytes());
    name
}

/// True once a new connection to `addr` is no longer served by this server.
fn not_accepting(addr: SocketAddr, probe: &str) -> bool {
    // Refused (or any other failure to connect) means no longer accepting.
    let Ok(mut c) = Raw::try_connect(addr) else {
        return true;
    };
    if c.try_send(request("GET", &format!("/media/{probe}"), &[]))
        .is_err()
    {
        return true;
    }
    match c.try_read_response_to("GET", Duration::from_secs(2)) {
        Ok(r) => r.status != 200,
        Err(_) => true,
    }
}

#[test]
fn sigterm_on_an_idle_server_exits_zero_promptly() {
    let fx = Fixture::new();
    let mut s = fx.server();
    curl(s.static_url(PLAIN_CSS)).send().assert_status(200);
    let t0 = Instant::now();
    let st = s.stop_gracefully_within(Duration::from_secs(5));
    assert_eq!(
        st.code(),
        Some(0),
        "exit status {st:?}; stderr:\n{}",
        s.log_text()
    );
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "an idle server took {:?} to stop",
        t0.elapsed()
    );
}

#[test]
fn sigint_exits_zero() {
    let fx = Fixture::new();
    let mut s = fx.server();
    s.signal(libc::SIGINT);
    let st = s
        .wait_exit(Duration::from_secs(5))
        .expect("exit after SIGINT");
    assert_eq!(
        st.code(),
        Some(0),
        "exit status {st:?}; stderr:\n{}",
        s.log_text()
    );
}

#[test]
fn idle_keep_alive_connections_do_not_delay_shutdown() {
    let fx = Fixture::new();
    let mut s = fx.server();
    let mut conns: Vec<Raw> = (0..5)
        .map(|_| {
            let mut c = Raw::connect(s.addr());
            c.send(request("GET", &format!("/static/{PLAIN_CSS}"), &[]));
            c.read_response().assert_status(200);
            c
        })
        .collect();
    let t0 = Instant::now();
    let st = s.stop_gracefully_within(Duration::from_secs(5));
    assert_eq!(st.code(), Some(0));
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "idle keep-alive connections held shutdown for {:?}",
        t0.elapsed()
    );
    for c in &mut conns {
        c.wait_closed(Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn in_flight_responses_finish_and_new_connections_are_refused() {
    let fx = Fixture::new();
    let data = pseudo_random_bytes(4321, BIG);
    fx.write_media("uploads/big.bin", &data);
    let probe = probe_file(&fx);
    let mut s = fx.server();
    let addr = s.addr();
    let mut c = Raw::connect(addr);
    c.send(request("GET", "/media/uploads/big.bin", &[]));
    let head = c.read_head();
    head.assert_status(200);
    assert_eq!(head.content_length(), Some(BIG as u64));
    let mut got = c.read_up_to(1 << 20, Duration::from_secs(10));

    // The server is mid-response (blocked on our full socket). Ask it to stop.
    s.signal(libc::SIGTERM);
    poll_until(
        Duration::from_secs(3),
        "the server to stop accepting after SIGTERM",
        || not_accepting(addr, &probe).then_some(()),
    );
    assert!(
        s.is_running(),
        "exited before finishing the in-flight response"
    );

    got.extend(c.read_up_to(BIG - got.len(), Duration::from_secs(20)));
    assert_eq!(got.len(), BIG, "the in-flight response is finished");
    assert!(got == data);
    let st = s
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no exit after the last response; stderr:\n{}", s.log_text()));
    assert_eq!(st.code(), Some(0), "{st:?}");
}

#[test]
fn shutdown_is_bounded_by_the_shutdown_timeout() {
    let fx = Fixture::new();
    fx.write_media("uploads/big.bin", &pseudo_random_bytes(5, BIG));
    let mut s = fx.builder().args(["--shutdown-timeout", "1"]).start();
    // A client that never reads its response.
    let mut c = Raw::connect(s.addr());
    c.send(request("GET", "/media/uploads/big.bin", &[]));
    let _ = c.read_head();
    let t0 = Instant::now();
    let st = s.stop_gracefully_within(Duration::from_secs(6));
    let took = t0.elapsed();
    assert_eq!(st.code(), Some(0), "{st:?}; stderr:\n{}", s.log_text());
    assert!(
        took >= Duration::from_millis(700),
        "gave up on the in-flight response after only {took:?}"
    );
    assert!(
        took <= Duration::from_secs(4),
        "took {took:?} with --shutdown-timeout 1"
    );
}

#[test]
fn a_request_arriving_on_a_kept_alive_connection_during_shutdown_is_answered_or_refused_cleanly() {
    let fx = Fixture::new();
    fx.write_media("uploads/big.bin", &pseudo_random_bytes(6, BIG));
    let mut s = fx.server();
    // One connection busy (keeps the server in its drain phase), one idle keep-alive.
    let mut busy = Raw::connect(s.addr());
    busy.send(request("GET", "/media/uploads/big.bin", &[]));
    let _ = busy.read_head();
    let mut idle = Raw::connect(s.addr());
    idle.send(request("GET", &format!("/static/{PLAIN_CSS}"), &[]));
    idle.read_response().assert_status(200);
    s.signal(libc::SIGTERM);
    // Either the idle connection was closed, or a request on it gets a full answer (ideally with
    // Connection: close) - never a truncated one.
    if idle
        .try_send(request("GET", &format!("/static/{PLAIN_CSS}"), &[]))
        .is_ok()
    {
        match idle.try_read_response_to("GET", Duration::from_secs(5)) {
            Ok(r) => {
                r.assert_status(200).assert_body(&fx.read_static(PLAIN_CSS));
            }
            Err(e) => assert!(
                e.contains("before a complete response head") || e.contains("reset"),
                "{e}"
            ),
        }
    }
    let rest = busy.read_up_to(BIG, Duration::from_secs(20));
    assert_eq!(rest.len(), BIG);
    assert_eq!(
        s.wait_exit(Duration::from_secs(5)).and_then(|st| st.code()),
        Some(0)
    );
}
