//! The command line: flags into a validated [`Config`], or one line saying what is wrong.

use std::ffi::OsString;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use crate::proxy::{Network, ProxySettings, UpstreamAddr};

/// What kind of files a mount holds, which decides how they are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountKind {
    /// Django's STATIC_ROOT: trusted, may have a manifest and precompressed siblings.
    Static,
    /// Django's MEDIA_ROOT: untrusted uploads that change at any time.
    Media,
    /// Files only the app can hand out (X-Accel-Redirect): served like media, never reachable
    /// by a client's own request.
    Internal,
}

/// One `--static`, `--media` or `--internal` flag.
#[derive(Clone, Debug)]
pub struct MountSpec {
    /// URL prefix, starting and ending with `/`.
    pub prefix: String,
    pub dir: PathBuf,
    pub kind: MountKind,
}

/// Which I/O engine to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineChoice {
    Auto,
    Uring,
    Epoll,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    pub mounts: Vec<MountSpec>,
    pub engine: EngineChoice,
    pub workers: usize,
    /// `max-age` for static files that are not content-hashed.
    pub static_max_age: u64,
    pub media_cache_control: String,
    /// For static mounts: relative paths matching this are immutable even without a manifest.
    pub immutable: Option<regex_lite::Regex>,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    /// Longest wait for a slow client to take more of a reply.
    pub send_timeout: Duration,
    pub shutdown_timeout: Duration,
    /// Bytes of the content cache, all workers together; 0 disables it.
    pub cache_size: u64,
    /// Load the manifest's hashed files into the cache at start-up.
    pub prewarm: bool,
    /// Where the Prometheus admin listener listens, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// The app server everything outside the mounts goes to, if any.
    pub proxy: Option<ProxySettings>,
}

/// What the command line asked for.
#[derive(Debug)]
pub enum Command {
    Serve(Box<Config>),
    Help,
    Version,
}

pub const USAGE: &str = "\
bypass: serve a Django STATIC_ROOT and MEDIA_ROOT over HTTP/1.1, on io_uring

Usage: bypass --listen ADDR --static /static/=DIR --media /media/=DIR
              [--upstream HOST:PORT|unix:PATH] [OPTIONS]

Options:
  --listen ADDR               address to listen on, e.g. 127.0.0.1:8080 (repeatable;
                              default 127.0.0.1:8080; port 0 picks a free port)
  --static PREFIX=DIR         serve Django's STATIC_ROOT DIR under PREFIX (repeatable)
  --media PREFIX=DIR          serve Django's MEDIA_ROOT DIR under PREFIX (repeatable)
  --internal PREFIX=DIR       files the app hands out with X-Accel-Redirect: PREFIX/...;
                              never served to a client's own request (repeatable)
  --upstream ADDR             pass every request outside the mounts to the app server at
                              HOST:PORT or unix:/path/to.sock, over keep-alive HTTP/1.1
  --upstream-timeout SECS     time the app may make no progress on a request before 504
                              (or, mid-response, before the connection is closed) (default 60)
  --max-body-size BYTES       largest request body passed to the app; larger ones get 413
                              (default 100M; 0 allows none)
  --trusted-proxy ADDR        an IP or CIDR network whose X-Forwarded-For, X-Real-IP and
                              X-Forwarded-Proto are kept (repeatable; default: none)
  --upstream-keepalive N      idle connections to the app kept per worker (default 32)
  --engine auto|uring|epoll   I/O engine (default auto: io_uring when it can be set up)
  --workers N                 worker threads, each with its own ring (default: one per CPU)
  --static-max-age SECS       Cache-Control max-age of static files that are not content-hashed
                              (default 60; hashed files are immutable for a year)
  --immutable REGEX           static paths matching REGEX are immutable even without a manifest
  --media-cache-control VALUE Cache-Control of media files (default \"no-cache\")
  --header-timeout SECS       time a client has to send a whole request head (default 10)
  --keepalive-timeout SECS    idle time before a keep-alive connection is closed (default 60)
  --send-timeout SECS         time a client may take no part of a reply before it is
                              dropped (default 60)
  --shutdown-timeout SECS     time to finish responses in flight on SIGTERM (default 10)
  --cache-size BYTES          content cache for hot files, all workers together: bytes or
                              512K, 256M, 1G (default 256M; 0 disables)
  --prewarm                   load the manifest's hashed files into the cache at start-up
  --metrics ADDR              serve cache telemetry in Prometheus format at http://ADDR/metrics
                              (a separate listener, e.g. 127.0.0.1:9100)
  -h, --help                  print this help
  -V, --version               print the version
";

/// A command line that cannot be served; the message is one line.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

impl From<lexopt::Error> for ConfigError {
    fn from(e: lexopt::Error) -> Self {
        ConfigError(e.to_string())
    }
}

/// Parses the arguments (without the program name).
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, ConfigError> {
    use lexopt::prelude::*;

    let mut parser = lexopt::Parser::from_args(args);
    let mut listen = Vec::new();
    let mut mounts = Vec::new();
    let mut engine = EngineChoice::Auto;
    let mut workers = None;
    let mut static_max_age = 60;
    let mut media_cache_control = String::from("no-cache");
    let mut immutable = None;
    let mut header_timeout = Duration::from_secs(10);
    let mut keepalive_timeout = Duration::from_secs(60);
    let mut send_timeout = Duration::from_secs(60);
    let mut shutdown_timeout = Duration::from_secs(10);
    let mut cache_size = crate::cache::DEFAULT_SIZE;
    let mut prewarm = false;
    let mut metrics = None;
    let mut upstream = None;
    let mut upstream_timeout = 60;
    let mut max_body_size = 100 * 1024 * 1024;
    let mut trusted = Vec::new();
    let mut upstream_keepalive = 32;

    while let Some(arg) = parser.next()? {
        match arg {
            Long("listen") => listen.push(parse_addr(&string(&mut parser, "--listen")?)?),
            Long("static") => mounts.push(parse_mount(
                &string(&mut parser, "--static")?,
                MountKind::Static,
                "--static",
            )?),
            Long("media") => mounts.push(parse_mount(
                &string(&mut parser, "--media")?,
                MountKind::Media,
                "--media",
            )?),
            Long("internal") => mounts.push(parse_mount(
                &string(&mut parser, "--internal")?,
                MountKind::Internal,
                "--internal",
            )?),
            Long("upstream") => {
                upstream = Some(
                    UpstreamAddr::parse(&string(&mut parser, "--upstream")?)
                        .map_err(ConfigError)?,
                )
            }
            Long("upstream-timeout") => {
                upstream_timeout = seconds(&mut parser, "--upstream-timeout")?.as_secs()
            }
            Long("max-body-size") => {
                let text = string(&mut parser, "--max-body-size")?;
                max_body_size = crate::cache::parse_size(&text).ok_or_else(|| {
                    ConfigError(format!(
                        "--max-body-size takes bytes or a size like 512K, 100M, 1G, not {text:?}"
                    ))
                })?;
            }
            Long("trusted-proxy") => {
                let text = string(&mut parser, "--trusted-proxy")?;
                trusted.push(Network::parse(&text).ok_or_else(|| {
                    ConfigError(format!(
                        "--trusted-proxy takes an IP address or CIDR network like 10.0.0.0/8, not {text:?}"
                    ))
                })?);
            }
            Long("upstream-keepalive") => {
                upstream_keepalive = number(&mut parser, "--upstream-keepalive")? as usize
            }
            Long("engine") => {
                engine = match string(&mut parser, "--engine")?.as_str() {
                    "auto" => EngineChoice::Auto,
                    "uring" | "io_uring" => EngineChoice::Uring,
                    "epoll" => EngineChoice::Epoll,
                    other => {
                        return err(format!(
                            "--engine takes auto, uring or epoll, not {other:?}"
                        ));
                    }
                }
            }
            Long("workers") => {
                let n = number(&mut parser, "--workers")?;
                if n == 0 || n > 1024 {
                    return err("--workers takes a number from 1 to 1024");
                }
                workers = Some(n as usize);
            }
            Long("static-max-age") => static_max_age = number(&mut parser, "--static-max-age")?,
            Long("media-cache-control") => {
                media_cache_control = string(&mut parser, "--media-cache-control")?;
                if media_cache_control.bytes().any(|b| b.is_ascii_control()) {
                    return err("--media-cache-control must not contain control characters");
                }
            }
            Long("immutable") => {
                let pattern = string(&mut parser, "--immutable")?;
                match regex_lite::Regex::new(&pattern) {
                    Ok(re) => immutable = Some(re),
                    Err(e) => {
                        return err(format!(
                            "--immutable {pattern:?} is not a valid regex: {}",
                            one_line(&e.to_string())
                        ));
                    }
                }
            }
            Long("header-timeout") => header_timeout = seconds(&mut parser, "--header-timeout")?,
            Long("keepalive-timeout") => {
                keepalive_timeout = seconds(&mut parser, "--keepalive-timeout")?
            }
            Long("send-timeout") => send_timeout = seconds(&mut parser, "--send-timeout")?,
            Long("shutdown-timeout") => {
                shutdown_timeout = seconds(&mut parser, "--shutdown-timeout")?
            }
            Long("cache-size") => {
                let text = string(&mut parser, "--cache-size")?;
                cache_size = crate::cache::parse_size(&text).ok_or_else(|| {
                    ConfigError(format!(
                        "--cache-size takes bytes or a size like 512K, 256M, 1G, not {text:?}"
                    ))
                })?;
            }
            Long("prewarm") => prewarm = true,
            Long("metrics") => {
                let text = string(&mut parser, "--metrics")?;
                metrics = Some(text.parse().map_err(|_| {
                    ConfigError(format!(
                        "--metrics {text:?} is not an address like 127.0.0.1:9100"
                    ))
                })?);
            }
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            _ => return Err(arg.unexpected().into()),
        }
    }

    if listen.is_empty() {
        listen.push(SocketAddr::from(([127, 0, 0, 1], 8080)));
    }
    for (i, m) in mounts.iter().enumerate() {
        if mounts[..i].iter().any(|other| other.prefix == m.prefix) {
            return err(format!("mount prefix {} is given twice", m.prefix));
        }
    }
    let internal = mounts.iter().any(|m| m.kind == MountKind::Internal);
    if internal && upstream.is_none() {
        return err("--internal needs --upstream: only the app's X-Accel-Redirect reaches it");
    }
    let proxy = upstream.map(|upstream| ProxySettings {
        upstream,
        max_body_size,
        timeout_secs: upstream_timeout,
        trusted,
        max_idle: upstream_keepalive,
    });
    let workers =
        workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    Ok(Command::Serve(Box::new(Config {
        listen,
        mounts,
        engine,
        workers,
        static_max_age,
        media_cache_control,
        immutable,
        header_timeout,
        keepalive_timeout,
        send_timeout,
        shutdown_timeout,
        cache_size,
        prewarm,
        metrics,
        proxy,
    })))
}

fn string(parser: &mut lexopt::Parser, flag: &str) -> Result<String, ConfigError> {
    let value = parser
        .value()
        .map_err(|_| ConfigError(format!("{flag} needs a value")))?;
    value
        .into_string()
        .map_err(|v| ConfigError(format!("{flag} {v:?} is not valid UTF-8")))
}

fn number(parser: &mut lexopt::Parser, flag: &str) -> Result<u64, ConfigError> {
    let text = string(parser, flag)?;
    text.parse()
        .map_err(|_| ConfigError(format!("{flag} takes a whole number, not {text:?}")))
}

fn seconds(parser: &mut lexopt::Parser, flag: &str) -> Result<Duration, ConfigError> {
    let n = number(parser, flag)?;
    if n == 0 {
        return err(format!("{flag} must be at least 1 second"));
    }
    Ok(Duration::from_secs(n))
}

fn parse_addr(text: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    // Host names such as localhost:8080; the first address wins, as with nginx's listen.
    match text.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| ConfigError(format!("--listen {text:?} resolves to no address"))),
        Err(_) => err(format!(
            "--listen {text:?} is not an address like 127.0.0.1:8080"
        )),
    }
}

fn parse_mount(text: &str, kind: MountKind, flag: &str) -> Result<MountSpec, ConfigError> {
    let Some((prefix, dir)) = text.split_once('=') else {
        return err(format!(
            "{flag} takes PREFIX=DIR, e.g. /static/=./staticfiles, not {text:?}"
        ));
    };
    if !prefix.starts_with('/') {
        return err(format!("{flag} prefix {prefix:?} must start with /"));
    }
    // A prefix is a directory of the URL space: "/static" and "/static/" mean the same mount.
    let prefix = if prefix.ends_with('/') {
        prefix.to_string()
    } else {
        format!("{prefix}/")
    };
    if dir.is_empty() {
        return err(format!("{flag} {text:?} names no directory"));
    }
    let dir = PathBuf::from(dir);
    match std::fs::metadata(&dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return err(format!("{flag} {}: not a directory", dir.display())),
        Err(e) => {
            return err(format!(
                "{flag} {}: {}",
                dir.display(),
                one_line(&e.to_string())
            ));
        }
    }
    let dir = std::fs::canonicalize(&dir)
        .map_err(|e| ConfigError(format!("{flag} {}: {e}", dir.display())))?;
    Ok(MountSpec { prefix, dir, kind })
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn serve(list: &[&str]) -> Config {
        match parse(args(list)) {
            Ok(Command::Serve(c)) => *c,
            other => panic!("expected a config, got {other:?}"),
        }
    }

    fn error(list: &[&str]) -> String {
        match parse(args(list)) {
            Err(e) => e.0,
            Ok(c) => panic!("expected an error, got {c:?}"),
        }
    }

    #[test]
    fn full_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let c = serve(&[
            "--listen",
            "127.0.0.1:0",
            "--listen",
            "[::1]:9000",
            "--static",
            &format!("/static/={d}"),
            "--media",
            &format!("/media={d}"),
            "--engine",
            "epoll",
            "--workers",
            "3",
            "--static-max-age",
            "5",
            "--immutable",
            r"\.[0-9a-f]{12}\.",
        ]);
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.mounts[1].prefix, "/media/");
        assert_eq!(c.mounts[1].kind, MountKind::Media);
        assert_eq!(
            (c.engine, c.workers, c.static_max_age),
            (EngineChoice::Epoll, 3, 5)
        );
        assert!(c.immutable.unwrap().is_match("app.3f2a9c1b7d4e.css"));
    }

    #[test]
    fn errors_are_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        for (list, needle) in [
            (vec!["--bogus"], "--bogus"),
            (vec!["--engine", "fast"], "auto, uring or epoll"),
            (vec!["--workers", "0"], "--workers"),
            (vec!["--listen", "nowhere"], "not an address"),
            (vec!["--static", "/static/"], "PREFIX=DIR"),
            (
                vec!["--static", "/s/=/definitely/not/here"],
                "/definitely/not/here",
            ),
            (vec!["--immutable", "("], "not a valid regex"),
            (vec!["--cache-size", "lots"], "--cache-size"),
            (vec!["--cache-size", "1.5G"], "--cache-size"),
            (vec!["--metrics", "nowhere"], "--metrics"),
            (vec!["--upstream", "nowhere"], "--upstream"),
            (vec!["--upstream", "unix:"], "--upstream"),
            (vec!["--trusted-proxy", "10.0.0.0/40"], "--trusted-proxy"),
            (vec!["--max-body-size", "big"], "--max-body-size"),
            (vec!["--upstream-timeout", "0"], "--upstream-timeout"),
            (vec!["--internal", &format!("/p/={d}")], "needs --upstream"),
        ] {
            let msg = error(&list);
            assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
            assert!(!msg.contains('\n'), "{msg:?} is more than one line");
        }
        let twice = error(&[
            "--static",
            &format!("/s/={d}"),
            "--media",
            &format!("/s={d}"),
        ]);
        assert!(twice.contains("twice"));
    }
}
