//! Engine choice, tested the way it happens in production: `bypass` run under a seccomp filter
//! that refuses io_uring with EPERM, as Docker's default profile does (see `engine_seccomp`).
//!
//! - `--engine auto` falls back to epoll, says why in one line, and serves correctly (small
//!   files through the send buffer, large ones through sendfile, media copied);
//! - `--engine uring` exits 2 with one line;
//! - `BYPASS_ENGINE=epoll` forces the fallback without any filter, and a bad value is refused.

mod engine_seccomp;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const STARTUP: Duration = Duration::from_secs(10);

/// A static and a media directory with a small and a large file each.
struct Tree {
    dir: tempfile::TempDir,
    small: Vec<u8>,
    large: Vec<u8>,
}

impl Tree {
    fn new() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let small = b".button { color: #123456; margin: 0 auto; }\n".repeat(7);
        let large: Vec<u8> = (0..300 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for sub in ["static", "media"] {
            let d = dir.path().join(sub);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("app.css"), &small).unwrap();
            std::fs::write(d.join("photo.jpg"), &large).unwrap();
        }
        Tree { dir, small, large }
    }

    fn args(&self) -> Vec<String> {
        let root = self.dir.path();
        vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--static".into(),
            format!("/static/={}", root.join("static").display()),
            "--media".into(),
            format!("/media/={}", root.join("media").display()),
        ]
    }
}

fn bypass(args: &[String], extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bypass"));
    cmd.args(extra)
        .args(args)
        .env_remove("BYPASS_ENGINE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// A running server: killed on drop.
struct Running {
    child: Child,
    log: Vec<String>,
    addr: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the server and collects its log up to the `listening on` line.
fn start(mut cmd: Command) -> Running {
    let mut child = cmd.spawn().expect("spawn bypass");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                // Nobody listens any more; keep draining so the server never blocks on stderr.
                continue;
            }
        }
    });
    let deadline = Instant::now() + STARTUP;
    let mut log = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let addr = line
                    .strip_prefix("bypass: listening on ")
                    .map(|a| a.trim().parse::<SocketAddr>().unwrap());
                log.push(line);
                if let Some(addr) = addr {
                    return Running { child, log, addr };
                }
            }
            Err(e) => {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "bypass did not start ({e}; {status:?}); log:\n{}",
                    log.join("\n")
                );
            }
        }
    }
}

/// Runs the server expecting it to exit by itself: (exit code, stderr lines).
fn run_to_exit(mut cmd: Command) -> (Option<i32>, Vec<String>) {
    let mut child = cmd.spawn().expect("spawn bypass");
    let deadline = Instant::now() + STARTUP;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bypass was expected to exit but kept running");
        }
        thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (
        out.status.code(),
        stderr.lines().map(str::to_owned).collect(),
    )
}

/// GETs `path` with curl; returns the body of a 2xx response.
fn curl(addr: SocketAddr, path: &str) -> Vec<u8> {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10"])
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("curl is installed (scripts/test installs it)");
    assert!(
        out.status.success(),
        "curl {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Checks every file of the tree, twice on the same port so that keep-alive and a second
/// worker get their share.
fn serves_the_tree(s: &Running, tree: &Tree) {
    for _ in 0..2 {
        for mount in ["static", "media"] {
            assert!(curl(s.addr, &format!("/{mount}/app.css")) == tree.small);
            assert!(curl(s.addr, &format!("/{mount}/photo.jpg")) == tree.large);
        }
    }
}

#[test]
fn auto_falls_back_to_epoll_when_io_uring_is_refused() {
    let tree = Tree::new();
    let mut cmd = bypass(&tree.args(), &["--engine", "auto", "--workers", "2"]);
    engine_seccomp::deny_io_uring(&mut cmd);
    let s = start(cmd);
    // One line says why, with the error the kernel gave.
    let why = &s.log[0];
    assert!(
        why.starts_with(
            "bypass: io_uring unavailable (io_uring_setup failed: Operation not permitted"
        ) && why.ends_with("), using epoll"),
        "log:\n{}",
        s.log.join("\n")
    );
    assert_eq!(s.log[1], "bypass: engine epoll, 2 workers");
    serves_the_tree(&s, &tree);
}

#[test]
fn the_default_engine_is_auto() {
    let tree = Tree::new();
    let mut cmd = bypass(&tree.args(), &["--workers", "1"]);
    engine_seccomp::deny_io_uring(&mut cmd);
    let s = start(cmd);
    assert!(
        s.log[0].starts_with("bypass: io_uring unavailable ("),
        "{:?}",
        s.log
    );
    assert_eq!(s.log[1], "bypass: engine epoll, 1 worker");
    serves_the_tree(&s, &tree);
}

#[test]
fn uring_engine_exits_2_when_io_uring_is_refused() {
    let tree = Tree::new();
    let mut cmd = bypass(&tree.args(), &["--engine", "uring"]);
    engine_seccomp::deny_io_uring(&mut cmd);
    let (code, lines) = run_to_exit(cmd);
    assert_eq!(code, Some(2), "{lines:?}");
    assert_eq!(lines.len(), 1, "one line: {lines:?}");
    assert!(
        lines[0].starts_with(
            "bypass: cannot use the io_uring engine: io_uring_setup failed: Operation not permitted"
        ),
        "{lines:?}"
    );
}

#[test]
fn epoll_engine_runs_under_the_filter_without_a_word_about_io_uring() {
    let tree = Tree::new();
    let mut cmd = bypass(&tree.args(), &["--engine", "epoll", "--workers", "2"]);
    engine_seccomp::deny_io_uring(&mut cmd);
    let s = start(cmd);
    assert_eq!(s.log[0], "bypass: engine epoll, 2 workers");
    serves_the_tree(&s, &tree);
}

#[test]
fn bypass_engine_epoll_forces_the_fallback() {
    let tree = Tree::new();
    let mut cmd = bypass(&tree.args(), &["--engine", "auto", "--workers", "2"]);
    cmd.env("BYPASS_ENGINE", "epoll");
    let s = start(cmd);
    assert_eq!(
        s.log[0], "bypass: BYPASS_ENGINE=epoll, using epoll",
        "{:?}",
        s.log
    );
    assert_eq!(s.log[1], "bypass: engine epoll, 2 workers");
    serves_the_tree(&s, &tree);
}

#[test]
fn bypass_engine_does_not_override_an_explicit_engine() {
    let tree = Tree::new();
    let mut cmd = bypass(&tree.args(), &["--engine", "uring", "--workers", "1"]);
    cmd.env("BYPASS_ENGINE", "epoll");
    let s = start(cmd);
    assert_eq!(s.log[0], "bypass: engine uring, 1 worker");
}

#[test]
fn a_bad_bypass_engine_value_is_a_startup_error() {
    let tree = Tree::new();
    let mut cmd = bypass(&tree.args(), &[]);
    cmd.env("BYPASS_ENGINE", "kqueue");
    let (code, lines) = run_to_exit(cmd);
    assert_eq!(code, Some(2), "{lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("BYPASS_ENGINE"), "{lines:?}");
}
