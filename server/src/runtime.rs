//! Start-up and shutdown: from a command line to running workers and back to an exit code.

use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{self, Command, Config, EngineChoice, MountKind};
use crate::engine::epoll::Epoll;
use crate::engine::uring::Uring;
use crate::engine::{self, Engine, Shutdown, Timeouts, Worker};
use crate::files::mount::PollOutcome;
use crate::serve::Site;

/// Exit code for a command line or environment the server cannot run with.
pub const EXIT_USAGE: i32 = 2;

/// Runs the server with these command-line arguments (program name excluded) and returns the
/// process exit code: 0 after a clean shutdown, 2 for anything wrong with the command line or
/// the environment (said in one line on stderr), 1 if a worker failed.
pub fn run(args: impl IntoIterator<Item = OsString>) -> i32 {
    let config = match config::parse(args) {
        Ok(Command::Serve(config)) => config,
        Ok(Command::Help) => {
            print!("{}", config::USAGE);
            return 0;
        }
        Ok(Command::Version) => {
            println!("bypass {}", env!("CARGO_PKG_VERSION"));
            return 0;
        }
        Err(e) => {
            log!("bypass: {e} (see bypass --help)");
            return EXIT_USAGE;
        }
    };
    match serve(&config) {
        Ok(code) => code,
        Err(message) => {
            log!("bypass: {message}");
            EXIT_USAGE
        }
    }
}

/// Which engine runs, and the one line that explains the choice. Under `--engine auto` the
/// io_uring engine is probed (ring creation, the operations it uses) and, if it cannot run,
/// the epoll engine is used, saying why in one line; `BYPASS_ENGINE=epoll` in the environment
/// forces that fallback (for tests, and for hosts where io_uring is allowed but unwanted).
fn choose_engine(choice: EngineChoice) -> Result<&'static str, String> {
    let use_epoll = |why: &str| {
        Epoll::probe().map_err(|e| format!("cannot use the epoll engine: {e}"))?;
        if !why.is_empty() {
            log!("bypass: {why}, using epoll");
        }
        Ok(Epoll::NAME)
    };
    match choice {
        EngineChoice::Uring => {
            Uring::probe().map_err(|why| format!("cannot use the io_uring engine: {why}"))?;
            Ok(Uring::NAME)
        }
        EngineChoice::Epoll => use_epoll(""),
        EngineChoice::Auto => {
            let forced = std::env::var_os("BYPASS_ENGINE");
            match forced.as_ref().and_then(|v| v.to_str()).map(str::trim) {
                None | Some("" | "auto") => {}
                Some("epoll") => return use_epoll("BYPASS_ENGINE=epoll"),
                Some(_) => {
                    return Err(format!(
                        "BYPASS_ENGINE takes auto or epoll, not {:?}",
                        forced.unwrap_or_default()
                    ));
                }
            }
            match Uring::probe() {
                Ok(()) => Ok(Uring::NAME),
                Err(why) => use_epoll(&format!("io_uring unavailable ({why})")),
            }
        }
    }
}

fn serve(config: &Config) -> Result<i32, String> {
    let engine_name = choose_engine(config.engine)?;
    // Before the site: the cache sizes its descriptor share from the raised limit.
    raise_fd_limit();
    let site = Arc::new(Site::new(config)?);
    let (listeners, bound) = engine::bind_listeners(&config.listen, config.workers)?;
    let shutdown =
        Arc::new(Shutdown::new().map_err(|e| format!("creating the shutdown eventfd: {e}"))?);
    block_stop_signals();

    log!(
        "bypass: engine {engine_name}, {} worker{}",
        config.workers,
        if config.workers == 1 { "" } else { "s" }
    );
    for m in site.mounts.iter() {
        match (&m.kind, &m.manifest) {
            (MountKind::Static, Some(watch)) => {
                let hashed = watch.snapshot().1.hashed.len();
                let note = if watch.path().exists() {
                    format!("manifest: {hashed} hashed files")
                } else {
                    "no manifest".to_string()
                };
                log!(
                    "bypass: static {} -> {} ({note})",
                    m.prefix,
                    m.dir.display()
                );
            }
            (MountKind::Internal, _) => {
                log!("bypass: internal {} -> {}", m.prefix, m.dir.display())
            }
            _ => log!("bypass: media {} -> {}", m.prefix, m.dir.display()),
        }
    }
    if let Some(proxy) = &config.proxy {
        log!(
            "bypass: everything else -> {} (timeout {} s, bodies up to {} bytes)",
            proxy.upstream,
            proxy.timeout_secs,
            proxy.max_body_size
        );
    }

    if let Some(addr) = config.metrics {
        let listener = crate::cache::metrics::bind(addr)?;
        let bound = listener
            .local_addr()
            .map_err(|e| format!("--metrics {addr}: {e}"))?;
        let telemetry = Arc::clone(&site.cache.telemetry);
        std::thread::Builder::new()
            .name("bypass-metrics".into())
            .spawn(move || crate::cache::metrics::serve(listener, telemetry))
            .map_err(|e| format!("starting the metrics thread: {e}"))?;
        log!("bypass: metrics on http://{bound}/metrics");
    }

    let timeouts = Timeouts {
        header_secs: config.header_timeout.as_secs(),
        keepalive_secs: config.keepalive_timeout.as_secs(),
        send_secs: config.send_timeout.as_secs(),
        upstream_secs: config.proxy.as_ref().map_or(60, |p| p.timeout_secs),
        shutdown: config.shutdown_timeout,
    };
    let mut handles = Vec::with_capacity(config.workers);
    for (index, listeners) in listeners.into_iter().enumerate() {
        let worker = Worker {
            index,
            listeners,
            site: Arc::clone(&site),
            timeouts,
            shutdown: Arc::clone(&shutdown),
        };
        let handle = std::thread::Builder::new()
            .name(format!("bypass-w{index}"))
            .spawn(move || {
                if engine_name == Epoll::NAME {
                    Epoll::run(worker)
                } else {
                    Uring::run(worker)
                }
            })
            .map_err(|e| format!("starting worker thread: {e}"))?;
        handles.push(handle);
    }
    for addr in &bound {
        log!("bypass: listening on {addr}");
    }
    spawn_manifest_watcher(Arc::clone(&site), Arc::clone(&shutdown));
    spawn_signal_waiter(Arc::clone(&shutdown));

    let mut code = 0;
    for handle in handles {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                log!("bypass: worker failed: {e}");
                shutdown.request();
                code = 1;
            }
            Err(_) => {
                log!("bypass: worker panicked");
                shutdown.request();
                code = 1;
            }
        }
    }
    Ok(code)
}

/// SIGTERM and SIGINT are taken synchronously by one thread (sigwait), so they are blocked in
/// every thread, workers included; SIGPIPE is ignored because sends say MSG_NOSIGNAL anyway and
/// a stray write must not kill the server.
fn block_stop_signals() {
    // SAFETY: sigset manipulation on a local set, then pthread_sigmask on this thread before
    // any worker is spawned, so the workers inherit the mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

fn spawn_signal_waiter(shutdown: Arc<Shutdown>) {
    std::thread::Builder::new()
        .name("bypass-signals".into())
        .spawn(move || {
            // SAFETY: as in block_stop_signals; sigwait writes the signal number to `sig`.
            let sig = unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGTERM);
                libc::sigaddset(&mut set, libc::SIGINT);
                let mut sig = 0;
                libc::sigwait(&set, &mut sig);
                sig
            };
            let name = if sig == libc::SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            };
            log!("bypass: {name}: finishing responses in flight, then exiting");
            shutdown.request();
        })
        .expect("spawning the signal thread");
}

/// Polls every static mount's manifest once a second, so a fresh collectstatic is served
/// without a restart.
fn spawn_manifest_watcher(site: Arc<Site>, shutdown: Arc<Shutdown>) {
    if !site.mounts.iter().any(|m| m.manifest.is_some()) {
        return;
    }
    std::thread::Builder::new()
        .name("bypass-manifest".into())
        .spawn(move || {
            while !shutdown.is_requested() {
                std::thread::sleep(Duration::from_secs(1));
                for m in site.mounts.iter() {
                    let Some(watch) = &m.manifest else { continue };
                    match watch.poll() {
                        PollOutcome::Unchanged => {}
                        PollOutcome::Loaded { hashed } => log!(
                            "bypass: {}: reloaded, {hashed} hashed files",
                            watch.path().display()
                        ),
                        PollOutcome::Removed => log!(
                            "bypass: {}: removed, nothing is immutable now",
                            watch.path().display()
                        ),
                        PollOutcome::Invalid(why) => log!(
                            "bypass: {}: ignored, keeping the previous one: {why}",
                            watch.path().display()
                        ),
                    }
                }
            }
        })
        .expect("spawning the manifest watcher");
}

/// Each connection and each cached static file holds a descriptor; the default soft limit of
/// 1024 is far below what a file server needs, so use the hard limit.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit with a pointer to a live rlimit.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
