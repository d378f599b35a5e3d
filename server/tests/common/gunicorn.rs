//! A real gunicorn serving the proxy-test Django project (`tests/proxyapp/`), for the tests of
//! bypass's reverse proxy (`tests/proxy.rs`).
//!
//! [`Gunicorn`] starts `gunicorn proxyapp.wsgi:application` from the project's virtualenv
//! (`$BYPASS_VENV`, else `<repo>/.venv`, which `scripts/test` creates from
//! `scripts/requirements.txt`) with gthread workers, on `127.0.0.1:<free port>` or on a unix
//! socket, and waits until it answers. It can be killed and started again on the same address
//! (the app server going down and coming back), and it is killed on drop.
//!
//! What the app saw is read from gunicorn's access log (one `METHOD TARGET VERSION STATUS` line
//! per request, requests gunicorn itself rejected included) and its error log (which names every
//! request it could not parse: `Invalid request from ...`).
//!
//! Gunicorn runs in its own process group, and the test process is made a child subreaper, so a
//! kill takes the master and its workers at once and reaps them all: no worker keeps the
//! listening socket open, and none is left behind as a zombie.

use super::{IO_TIMEOUT, poll_until, repo_root};
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long gunicorn may take to answer its first request.
pub const APP_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Size of one block of `/big/`.
pub const BIG_BLOCK: usize = 1 << 16;

/// The virtualenv holding gunicorn, Django and django-sendfile2.
pub fn venv_dir() -> PathBuf {
    match std::env::var_os("BYPASS_VENV") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => repo_root().join(".venv"),
    }
}

/// The bytes `/big/?mb=N` sends (see `big_block` in `tests/proxyapp/views.py`): 16 blocks of
/// 64 KiB per MiB; block `k` is `k` as 8 big-endian bytes, then bytes counting up from
/// `8 + k % 251` (mod 256).
pub fn big_bytes(mb: usize) -> Vec<u8> {
    let counting: Vec<u8> = (0..BIG_BLOCK + 256).map(|i| i as u8).collect();
    let blocks = mb * 16;
    let mut out = Vec::with_capacity(blocks * BIG_BLOCK);
    for k in 0..blocks {
        out.extend_from_slice(&(k as u64).to_be_bytes());
        let r = k % 251;
        out.extend_from_slice(&counting[8 + r..BIG_BLOCK + r]);
    }
    out
}

/// The body `/stream/?n=N` sends.
pub fn stream_body(n: usize) -> String {
    (0..n).map(|i| format!("line {i} of {n}\n")).collect()
}

/// Where gunicorn listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bind {
    /// `127.0.0.1:0` at first (gunicorn picks the port); the same port after a restart.
    Tcp(Option<u16>),
    /// A unix socket at this path.
    Unix(PathBuf),
}

/// Options of a [`Gunicorn`]; `start` runs it.
#[derive(Clone, Debug)]
pub struct GunicornBuilder {
    media_root: PathBuf,
    protected_root: PathBuf,
    unix: bool,
    workers: usize,
    keep_alive: Option<u32>,
}

impl GunicornBuilder {
    /// `PROXYAPP_MEDIA_ROOT` (where `/upload/` saves) and `PROXYAPP_PROTECTED_ROOT` (what
    /// `/protected/<name>` hands to the proxy by X-Accel-Redirect).
    pub fn new(media_root: &Path, protected_root: &Path) -> GunicornBuilder {
        GunicornBuilder {
            media_root: media_root.to_path_buf(),
            protected_root: protected_root.to_path_buf(),
            unix: false,
            workers: 2,
            keep_alive: None,
        }
    }

    /// Listen on a unix socket (in gunicorn's own temporary directory) instead of TCP.
    pub fn unix(mut self) -> Self {
        self.unix = true;
        self
    }

    /// `--workers N` (default 2).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// `--keep-alive SECS`: how long gunicorn keeps an idle connection (its default is 2).
    pub fn keep_alive(mut self, secs: u32) -> Self {
        self.keep_alive = Some(secs);
        self
    }

    /// Starts gunicorn and waits until it answers `GET /ping/`.
    pub fn start(self) -> Gunicorn {
        let dir = tempfile::Builder::new()
            .prefix("bypass-gunicorn-")
            .tempdir()
            .expect("tempdir");
        let bind = if self.unix {
            Bind::Unix(dir.path().join("app.sock"))
        } else {
            Bind::Tcp(None)
        };
        let mut g = Gunicorn {
            opts: self,
            dir,
            bind,
            child: None,
            runs: 0,
        };
        g.spawn();
        g
    }
}

/// A running gunicorn serving `tests/proxyapp`; killed (with its workers) on drop.
pub struct Gunicorn {
    opts: GunicornBuilder,
    dir: tempfile::TempDir,
    bind: Bind,
    child: Option<Child>,
    /// How many times it was started (each run logs to its own `gunicorn-N.log`).
    runs: usize,
}

impl Gunicorn {
    /// Starts gunicorn over TCP with the default options.
    pub fn start(media_root: &Path, protected_root: &Path) -> Gunicorn {
        GunicornBuilder::new(media_root, protected_root).start()
    }

    pub fn builder(media_root: &Path, protected_root: &Path) -> GunicornBuilder {
        GunicornBuilder::new(media_root, protected_root)
    }

    /// The value of bypass's `--upstream`: `127.0.0.1:PORT` or `unix:/path/app.sock`.
    pub fn upstream_arg(&self) -> String {
        match &self.bind {
            Bind::Tcp(Some(port)) => format!("127.0.0.1:{port}"),
            Bind::Tcp(None) => unreachable!("the port is known once gunicorn listens"),
            Bind::Unix(path) => format!("unix:{}", path.display()),
        }
    }

    /// The TCP address (panics for a unix socket).
    pub fn addr(&self) -> SocketAddr {
        match &self.bind {
            Bind::Tcp(Some(port)) => SocketAddr::from(([127, 0, 0, 1], *port)),
            other => panic!("gunicorn is not on TCP: {other:?}"),
        }
    }

    /// The unix socket's path (panics for TCP).
    pub fn socket_path(&self) -> &Path {
        match &self.bind {
            Bind::Unix(p) => p,
            other => panic!("gunicorn is not on a unix socket: {other:?}"),
        }
    }

    fn access_log_path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    fn error_log_path(&self, run: usize) -> PathBuf {
        self.dir.path().join(format!("gunicorn-{run}.log"))
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "gunicorn is already running");
        become_subreaper();
        self.runs += 1;
        let venv = venv_dir();
        let bin = venv.join("bin").join("gunicorn");
        assert!(
            bin.is_file(),
            "gunicorn not found at {}: run scripts/test (it creates the venv from \
             scripts/requirements.txt), or point BYPASS_VENV at a virtualenv with gunicorn, \
             Django and django-sendfile2",
            bin.display()
        );
        let bind = match &self.bind {
            Bind::Tcp(port) => format!("127.0.0.1:{}", port.unwrap_or(0)),
            Bind::Unix(path) => format!("unix:{}", path.display()),
        };
        let log_path = self.error_log_path(self.runs);
        let log = fs::File::create(&log_path).expect("create gunicorn log");
        let mut cmd = Command::new(&bin);
        cmd.arg("proxyapp.wsgi:application")
            .args(["--bind", &bind])
            .args(["--worker-class", "gthread", "--threads", "4"])
            .args(["--workers", &self.opts.workers.to_string()])
            // gunicorn 27 opens a control socket in ~/.gunicorn by default, one path for every
            // instance: parallel tests would fight over it.
            .arg("--no-control-socket")
            .arg("--access-logfile")
            .arg(self.access_log_path())
            .args(["--access-logformat", "%(r)s %(s)s"])
            .args(["--log-level", "info"]);
        if let Some(k) = self.opts.keep_alive {
            cmd.args(["--keep-alive", &k.to_string()]);
        }
        cmd.current_dir(self.dir.path())
            .env("PYTHONPATH", repo_root().join("server").join("tests"))
            .env("DJANGO_SETTINGS_MODULE", "proxyapp.settings")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .env("PROXYAPP_MEDIA_ROOT", &self.opts.media_root)
            .env("PROXYAPP_PROTECTED_ROOT", &self.opts.protected_root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        self.child = Some(child);

        if self.bind == Bind::Tcp(None) {
            let port = poll_until(
                APP_STARTUP_TIMEOUT,
                "gunicorn's `Listening at` line",
                || {
                    self.assert_running();
                    listening_port(&fs::read_to_string(&log_path).unwrap_or_default())
                },
            );
            self.bind = Bind::Tcp(Some(port));
        }
        poll_until(APP_STARTUP_TIMEOUT, "gunicorn to answer GET /ping/", || {
            self.assert_running();
            match self.get("/ping/") {
                Ok(r) if r.starts_with(b"HTTP/1.1 200 ") && r.ends_with(b"pong\n") => Some(()),
                _ => None,
            }
        });
    }

    /// Panics with gunicorn's log if it has exited.
    fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("gunicorn is not running");
        if let Some(status) = child.try_wait().expect("try_wait gunicorn") {
            self.child = None;
            panic!(
                "gunicorn exited ({status}) before answering; its log:\n{}",
                self.log_text()
            );
        }
    }

    /// Kills gunicorn (master and workers, SIGKILL, as in a crash) and waits until nothing
    /// listens on its address any more.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        kill_group(&mut child);
        poll_until(
            Duration::from_secs(10),
            "gunicorn's address to stop answering",
            || match &self.bind {
                Bind::Tcp(_) => TcpStream::connect(self.addr()).is_err().then_some(()),
                Bind::Unix(p) => UnixStream::connect(p).is_err().then_some(()),
            },
        );
    }

    /// Starts gunicorn again on the same address (after [`Gunicorn::kill`]) and waits until it
    /// answers.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// One `GET PATH HTTP/1.1` (with `Connection: close`) straight to gunicorn; the raw reply.
    pub fn get(&self, path: &str) -> io::Result<Vec<u8>> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n");
        let mut out = Vec::new();
        match &self.bind {
            Bind::Tcp(_) => {
                let mut s = TcpStream::connect_timeout(&self.addr(), Duration::from_secs(2))?;
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                s.write_all(req.as_bytes())?;
                s.read_to_end(&mut out)?;
            }
            Bind::Unix(p) => {
                let mut s = UnixStream::connect(p)?;
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                s.write_all(req.as_bytes())?;
                s.read_to_end(&mut out)?;
            }
        }
        Ok(out)
    }

    /// Every access-log line so far: `METHOD TARGET HTTP/1.x STATUS`.
    pub fn access_log(&self) -> Vec<String> {
        fs::read_to_string(self.access_log_path())
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The access-log lines containing `needle` (in the request target, say).
    pub fn requests_matching(&self, needle: &str) -> Vec<String> {
        self.access_log()
            .into_iter()
            .filter(|l| l.contains(needle))
            .collect()
    }

    /// Whether any request whose line contains `needle` reached gunicorn.
    pub fn saw(&self, needle: &str) -> bool {
        !self.requests_matching(needle).is_empty()
    }

    /// Waits until a request containing `needle` appears in the access log (gunicorn writes
    /// the line after the response, so a client can be a moment ahead of it).
    #[track_caller]
    pub fn wait_for_request(&self, needle: &str) -> String {
        poll_until(
            Duration::from_secs(10),
            &format!("gunicorn to log a request containing {needle:?}"),
            || self.requests_matching(needle).into_iter().next(),
        )
    }

    /// How many requests gunicorn could not parse (`Invalid request from ...` in its logs).
    pub fn invalid_requests(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains("Invalid request from"))
            .map(str::to_string)
            .collect()
    }

    /// Gunicorn's own log (stderr: start-up, errors, tracebacks), every run so far.
    pub fn log_text(&self) -> String {
        (1..=self.runs)
            .map(|run| fs::read_to_string(self.error_log_path(run)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("")
    }

    /// TCP connections to gunicorn that gunicorn's side holds open (ESTABLISHED sockets whose
    /// local port is gunicorn's), from `/proc/net/tcp`.
    pub fn established_connections(&self) -> usize {
        let port = self.addr().port();
        let table = fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
        table
            .lines()
            .skip(1)
            .filter(|line| {
                let cols: Vec<&str> = line.split_whitespace().collect();
                let local_port = cols
                    .get(1)
                    .and_then(|a| a.rsplit_once(':'))
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
                local_port == Some(port) && cols.get(3) == Some(&"01")
            })
            .count()
    }
}

impl Drop for Gunicorn {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
        }
    }
}

/// SIGKILLs gunicorn's whole process group, reaps the master, then its workers (which, the
/// master being gone, were handed to this process as the subreaper).
fn kill_group(child: &mut Child) {
    let pgid = child.id() as i32;
    // SAFETY: kill(2) on the process group this harness created for its own child.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
    let _ = child.wait();
    loop {
        // SAFETY: waitpid(2) for children in that process group; a null status pointer is
        // allowed.
        let rc = unsafe { libc::waitpid(-pgid, std::ptr::null_mut(), 0) };
        if rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break; // ECHILD: none left
        }
    }
}

/// Makes this process the reaper of its orphaned descendants (gunicorn's workers after their
/// master is killed); without it they would be reparented to an init that may never reap them.
fn become_subreaper() {
    // SAFETY: a plain prctl with integer arguments; it affects only this process.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
}

/// The port in gunicorn's `Listening at: http://127.0.0.1:PORT (PID)` line.
fn listening_port(log: &str) -> Option<u16> {
    log.lines().find_map(|l| {
        let rest = l.split_once("Listening at: http://127.0.0.1:")?.1;
        rest.split_whitespace().next()?.parse().ok()
    })
}
