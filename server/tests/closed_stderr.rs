//! Regression: with stderr a closed pipe (the log collector went away), SIGTERM must still stop
//! the server. `eprintln!` panicked in the signal thread before it requested shutdown, so the
//! server kept running.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn sigterm_stops_the_server_when_stderr_is_a_closed_pipe() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.css"), "a{}").unwrap();
    let engine = std::env::var("BYPASS_TEST_ENGINE").unwrap_or_else(|_| "uring".into());
    let mut child = Command::new(env!("CARGO_BIN_EXE_bypass"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--engine",
            &engine,
        ])
        .arg("--static")
        .arg(format!("/static/={}", dir.path().display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("listening on") {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "bypass exited before listening"
        );
    }
    drop(stderr);

    // SAFETY: sends SIGTERM to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert_eq!(
                status.code(),
                Some(0),
                "exit status after SIGTERM: {status:?}"
            );
            return;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("bypass ignored SIGTERM with stderr closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
