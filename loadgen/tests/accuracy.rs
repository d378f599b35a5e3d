//! Accuracy against servers whose timing is known: the coordinated-omission
//! difference between open and closed loop, percentiles against server-side
//! truth, and the open-loop send rate. Each test bounds its own duration and
//! asserts with margins that still fail when the property is broken.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::{Reply, Server, percentile, run_json};

/// Timing tests run one at a time so they do not compete for the CPUs.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn us(doc: &serde_json::Value, key: &str) -> f64 {
    doc["latency_us"][key]
        .as_f64()
        .unwrap_or_else(|| panic!("latency_us.{key} missing"))
}

/// A server that holds every answer due in [0.5 s, 1.0 s) of each 2 s cycle
/// until 1.0 s: a 0.5 s stall once every 2 s.
fn stalling_server() -> Server {
    Server::start(|ctx, _| {
        let cycle = Duration::from_secs(2);
        let t = ctx.started.elapsed();
        let phase = Duration::from_nanos((t.as_nanos() % cycle.as_nanos()) as u64);
        let mut r = Reply::ok();
        if phase >= Duration::from_millis(500) && phase < Duration::from_millis(1000) {
            r.delay = Duration::from_millis(1000) - phase;
        }
        r
    })
}

/// Sleeps until the server's cycle is at 0.1 s, so a 2 s run covers the whole
/// stall at 0.5-1.0 s and ends well before the next one at 2.5 s.
fn align(server: &Server) {
    let cycle = 2_000_000_000u128;
    let phase = server.started.elapsed().as_nanos() % cycle;
    let target = 100_000_000u128;
    let wait = (target + cycle - phase) % cycle;
    std::thread::sleep(Duration::from_nanos(wait as u64));
}

#[test]
fn open_loop_sees_stalls_that_closed_loop_hides() {
    let _g = serial();
    let server = stalling_server();
    let url = server.url("/");

    align(&server);
    let open = run_json(&["--rate", "2000", "-c", "50", "-t", "1", "-d", "2s", &url]);
    align(&server);
    let closed = run_json(&["-c", "1", "-t", "1", "-d", "2s", &url]);

    // Open loop: the ~1000 requests due during the stall queue behind it and
    // are timed from when they should have been sent, 0 to 0.5 s late.
    assert!(
        us(&open, "p99") >= 300_000.0,
        "open p99 {} < 0.3 s",
        us(&open, "p99")
    );
    assert!(
        us(&open, "p50") < 100_000.0,
        "open p50 {} not well under",
        us(&open, "p50")
    );
    assert_eq!(open["errors"]["total"], 0);
    // Closed loop saw the stall too (its max shows it) but, as one request
    // among thousands, it vanishes from p99: coordinated omission.
    assert!(
        us(&closed, "max") >= 300_000.0,
        "closed loop missed the stall: max {}",
        us(&closed, "max")
    );
    assert!(
        us(&closed, "p99") < 100_000.0,
        "closed p99 {}",
        us(&closed, "p99")
    );
    assert!(closed["requests"].as_u64().unwrap() > 200, "{closed}");
}

#[test]
fn percentiles_match_server_side_truth_for_a_fixed_delay() {
    let _g = serial();
    let server = Server::start(|_, _| Reply {
        delay: Duration::from_millis(50),
        ..Reply::ok()
    });
    // 50 ms leaves 2.5 ms for what the client legitimately adds on top of the
    // server's time (loopback, scheduling on a busy machine); a percentile
    // from the wrong rank, or latency timed from the wrong moment, is off by more.
    let doc = run_json(&["-c", "8", "-t", "2", "-n", "200", &server.url("/fixed")]);
    assert_eq!(doc["requests"], 200);
    let mut truth: Vec<f64> = server
        .seen()
        .iter()
        .map(|s| s.service.as_secs_f64() * 1e6)
        .collect();
    assert_eq!(truth.len(), 200);
    for (key, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
        let t = percentile(&mut truth, q);
        let got = us(&doc, key);
        assert!(
            (got - t).abs() <= 0.05 * t,
            "{key}: reported {got} us, server-side truth {t} us"
        );
    }
}

#[test]
fn percentiles_match_truth_for_a_spread_of_delays() {
    let _g = serial();
    // Request k waits 20 + 80 * frac(k * golden ratio) ms: a spread with no
    // ties, so a percentile computed from the wrong rank lands visibly off.
    let server = Server::start(|ctx, _| {
        let k = ctx.count.load(std::sync::atomic::Ordering::Relaxed) as f64;
        let frac = (k * 0.618_033_988_75).fract();
        Reply {
            delay: Duration::from_micros((20_000.0 + 80_000.0 * frac) as u64),
            ..Reply::ok()
        }
    });
    let doc = run_json(&["-c", "16", "-t", "2", "-n", "320", &server.url("/spread")]);
    assert_eq!(doc["requests"], 320);
    let mut truth: Vec<f64> = server
        .seen()
        .iter()
        .map(|s| s.service.as_secs_f64() * 1e6)
        .collect();
    for (key, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
        let t = percentile(&mut truth, q);
        let got = us(&doc, key);
        assert!(
            (got - t).abs() <= 0.05 * t,
            "{key}: reported {got} us, truth {t} us"
        );
    }
    let mean: f64 = truth.iter().sum::<f64>() / truth.len() as f64;
    assert!(
        (us(&doc, "mean") - mean).abs() <= 0.05 * mean,
        "mean {} vs {mean}",
        us(&doc, "mean")
    );
}

#[test]
fn open_loop_sends_at_the_requested_rate() {
    let _g = serial();
    let server = Server::start(|_, _| Reply::ok());
    let doc = run_json(&[
        "--rate",
        "1000",
        "-c",
        "8",
        "-t",
        "2",
        "-d",
        "2s",
        &server.url("/"),
    ]);
    let seen = server.seen();
    // 2000 requests fall due in 2 s; the server must see them within 1%.
    let n = seen.len() as f64;
    assert!(
        (n - 2000.0).abs() <= 20.0,
        "server saw {n} requests, expected 2000 ± 1%"
    );
    let rps = doc["rps"].as_f64().unwrap();
    assert!((rps - 1000.0).abs() <= 10.0, "reported {rps} req/s");
    // Evenly spread, not bursts: each half second carries its quarter.
    let first = seen[0].at;
    let mut quarters = [0u32; 4];
    for s in &seen {
        let q = ((s.at - first).as_secs_f64() / 0.5) as usize;
        if q < 4 {
            quarters[q] += 1;
        }
    }
    for q in quarters {
        assert!((450..=550).contains(&q), "uneven sending: {quarters:?}");
    }
}

#[test]
fn open_loop_rate_below_thread_count_is_exact() {
    let _g = serial();
    let server = Server::start(|_, _| Reply::ok());
    // 2 req/s over 4 threads: one global timetable, a request every 0.5 s.
    let doc = run_json(&[
        "--rate",
        "2",
        "-c",
        "4",
        "-t",
        "4",
        "-d",
        "2s",
        &server.url("/"),
    ]);
    let seen = server.seen();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(doc["requests"], 4);
    for pair in seen.windows(2) {
        let gap = (pair[1].at - pair[0].at).as_secs_f64();
        assert!((0.45..=0.55).contains(&gap), "gap {gap} s between sends");
    }
}
