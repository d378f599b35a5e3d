//! Test servers and helpers shared by the integration tests: small HTTP/1.1
//! servers on std threads and sockets whose behaviour each test scripts, and
//! a way to run the real `bypass-load` binary and read its JSON report.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the server does with one request.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Sleep this long before answering.
    pub delay: Duration,
    pub status: u16,
    pub body: Vec<u8>,
    pub chunked: bool,
    /// Close the connection after answering.
    pub close: bool,
    /// Announce the body but send only this many bytes of it, then close.
    pub truncate: Option<usize>,
}

impl Reply {
    pub fn ok() -> Reply {
        Reply {
            delay: Duration::ZERO,
            status: 200,
            body: b"hello".to_vec(),
            chunked: false,
            close: false,
            truncate: None,
        }
    }
}

/// A request as the server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// When its last header byte arrived, since the server started.
    pub at: Duration,
    pub path: String,
    pub headers: Vec<String>,
    /// Time from receipt to the answer being written: the server-side truth.
    pub service: Duration,
    pub connection: u64,
}

pub struct Server {
    pub port: u16,
    pub started: Instant,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub connections: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

impl Server {
    /// Starts a server answering every request with `handler(seen_so_far, &request)`.
    pub fn start<F>(handler: F) -> Server
    where
        F: Fn(&Server0, &Seen) -> Reply + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        let started = Instant::now();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = Arc::new(Server0 {
            started,
            count: AtomicU64::new(0),
        });
        let handler = Arc::new(handler);
        {
            let (seen, connections, stop) = (seen.clone(), connections.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let id = connections.fetch_add(1, Ordering::Relaxed);
                    let (seen, handler, ctx, stop) =
                        (seen.clone(), handler.clone(), ctx.clone(), stop.clone());
                    std::thread::spawn(move || serve(stream, id, &*handler, &ctx, &seen, &stop));
                }
            });
        }
        Server {
            port,
            started,
            seen,
            connections,
            stop,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// What handlers can see of the server.
pub struct Server0 {
    pub started: Instant,
    /// Requests received so far (this one included).
    pub count: AtomicU64,
}

fn serve<F>(
    stream: TcpStream,
    id: u64,
    handler: &F,
    ctx: &Server0,
    seen: &Mutex<Vec<Seen>>,
    stop: &AtomicBool,
) where
    F: Fn(&Server0, &Seen) -> Reply,
{
    let _ = stream.set_nodelay(true);
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let path = line.split(' ').nth(1).unwrap_or("").to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            match reader.read_line(&mut h) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
            headers.push(h.trim_end().to_string());
        }
        let at = ctx.started.elapsed();
        ctx.count.fetch_add(1, Ordering::Relaxed);
        let mut req = Seen {
            at,
            path,
            headers,
            service: Duration::ZERO,
            connection: id,
        };
        let reply = handler(ctx, &req);
        if !reply.delay.is_zero() {
            std::thread::sleep(reply.delay);
        }
        let mut out = format!("HTTP/1.1 {} X\r\nServer: test\r\n", reply.status).into_bytes();
        if reply.chunked {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            for piece in reply.body.chunks(3) {
                out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                out.extend_from_slice(piece);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        } else {
            out.extend_from_slice(format!("Content-Length: {}\r\n", reply.body.len()).as_bytes());
            if reply.close {
                out.extend_from_slice(b"Connection: close\r\n");
            }
            out.extend_from_slice(b"\r\n");
            let n = reply.truncate.unwrap_or(reply.body.len());
            out.extend_from_slice(&reply.body[..n]);
        }
        // Recorded before the answer leaves, so a client that has its answer
        // always finds the request in the log.
        req.service = ctx.started.elapsed() - at;
        seen.lock().unwrap().push(req);
        if writer.write_all(&out).is_err() {
            return;
        }
        if reply.close || reply.truncate.is_some() {
            let _ = writer.shutdown(Shutdown::Both);
            // Drain so the close is a FIN, not a reset with data unread.
            let mut sink = [0u8; 1024];
            let _ = reader
                .get_mut()
                .set_read_timeout(Some(Duration::from_millis(200)));
            while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
            return;
        }
    }
}

/// A fresh path in the temp directory for this test process.
pub fn temp_path(name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "bypass-load-test-{}-{n}-{name}",
        std::process::id()
    ))
}

/// Runs the real binary with `args`.
pub fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bypass-load"))
        .args(args)
        .output()
        .expect("run bypass-load")
}

/// Runs the binary with `--json` and returns the parsed report; panics with
/// its stderr if it fails.
pub fn run_json(args: &[&str]) -> serde_json::Value {
    let path = temp_path("report.json");
    let p = path.to_str().unwrap().to_string();
    let mut all: Vec<&str> = vec!["-q", "--json", &p];
    all.extend_from_slice(args);
    let out = run(&all);
    assert!(
        out.status.success(),
        "bypass-load {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let text = std::fs::read_to_string(&path).expect("JSON report written");
    let _ = std::fs::remove_file(&path);
    serde_json::from_str(&text).expect("report is JSON")
}

/// Asserts the process failed the way bad input must: exit 2, one line on stderr.
pub fn assert_input_error(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line expected: {err}");
    assert!(err.starts_with("bypass-load: "), "{err}");
    assert!(err.contains(needle), "{err:?} lacks {needle:?}");
}

/// Percentile of `v` (sorted in place) the way HdrHistogram defines it: the
/// smallest value with at least `q` of the samples at or below it.
pub fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}
