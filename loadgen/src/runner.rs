//! Runs one measurement: checks the target answers, starts the worker
//! threads on a common clock, watches the server process and prints progress,
//! then merges the threads' results.

use std::io::{IsTerminal, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use crate::driver::{Clock, Driver, Plan};
use crate::engine::epoll::Epoll;
use crate::engine::uring::Uring;
use crate::engine::{Control, EngineKind};
use crate::error::{Error, Result};
use crate::procstat::{Monitor, Usage};
use crate::stats::Stats;

/// What came out of a run, before it is dressed up as a report.
pub struct Outcome {
    pub stats: Stats,
    pub duration_s: f64,
    pub engine: &'static str,
    pub server: Option<Usage>,
}

/// Options of a run that are not part of the workers' plan.
pub struct Options {
    pub engine: EngineKind,
    pub server_pids: Vec<u32>,
    /// Print a progress line every second (only when stderr is a terminal).
    pub progress: bool,
}

/// Set by the SIGINT handler; the run stops early and still reports.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn install_sigint() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe;
    // SA_RESETHAND makes a second Ctrl-C kill the process as usual.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigint as *const () as usize;
        sa.sa_flags = libc::SA_RESETHAND;
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
    }
}

/// Fails with one clear line if nothing accepts connections at the target.
pub fn preflight(plan: &Plan, target: &str) -> Result<()> {
    let limit = Duration::from_nanos(plan.timeout_ns).min(Duration::from_secs(5));
    TcpStream::connect_timeout(&plan.addr, limit)
        .map(drop)
        .map_err(|e| Error::new(format!("cannot connect to {target} ({}): {e}", plan.addr)))
}

pub fn run(plan: Arc<Plan>, opts: &Options) -> Result<Outcome> {
    let mut monitor = match opts.server_pids.is_empty() {
        true => None,
        false => Some(Monitor::new(&opts.server_pids)?),
    };
    install_sigint();
    let threads = plan.threads;
    let control = Arc::new(Control::new(threads));
    let barrier = Arc::new(Barrier::new(threads + 1));
    let epoch: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (plan, control, barrier, epoch) = (
                plan.clone(),
                control.clone(),
                barrier.clone(),
                epoch.clone(),
            );
            let engine = opts.engine;
            std::thread::Builder::new()
                .name(format!("load-{t}"))
                .spawn(move || worker(&plan, t, engine, &control, &barrier, &epoch))
                .map_err(|e| Error::new(format!("cannot start worker thread: {e}")))
        })
        .collect::<Result<_>>()?;

    // Every thread has its ring and buffers; start the common clock.
    barrier.wait();
    let start = Instant::now();
    let _ = epoch.set(start);
    barrier.wait();

    let warmup = Duration::from_nanos(plan.warmup_ns);
    let deadline = plan.duration_ns.map(|d| warmup + Duration::from_nanos(d));
    let show = opts.progress && std::io::stderr().is_terminal();
    let mut began = false;
    let mut last_print = Duration::ZERO;
    let mut last_count = 0u64;
    loop {
        let elapsed = start.elapsed();
        let done = handles.iter().all(|h| h.is_finished());
        if INTERRUPTED.load(Ordering::Relaxed) {
            control.stop.store(true, Ordering::Relaxed);
        }
        if let Some(m) = monitor.as_mut() {
            if !began && elapsed >= warmup {
                m.begin();
                began = true;
            } else if began {
                m.tick();
            }
        }
        if done || deadline.is_some_and(|d| elapsed >= d) {
            break;
        }
        if show && elapsed >= last_print + Duration::from_secs(1) {
            let count: u64 = control
                .progress
                .iter()
                .map(|p| p.0.load(Ordering::Relaxed))
                .sum();
            let rate = (count.saturating_sub(last_count)) as f64
                / (elapsed - last_print).as_secs_f64().max(1e-9);
            let phase = if elapsed < warmup { " (warmup)" } else { "" };
            eprint!(
                "\r\x1b[2K  {:>4.0}s  {:>10.0} req/s  {:>10} done{phase}",
                elapsed.as_secs_f64(),
                rate,
                count
            );
            let _ = std::io::stderr().flush();
            last_print = elapsed;
            last_count = count;
        }
        let step = Duration::from_millis(100);
        let sleep = match deadline {
            Some(d) => step.min(d.saturating_sub(elapsed)),
            None => step,
        };
        let sleep = if !began && warmup > elapsed {
            sleep.min(warmup - elapsed)
        } else {
            sleep
        };
        std::thread::sleep(sleep.max(Duration::from_millis(1)));
    }
    if show {
        eprint!("\r\x1b[2K");
    }

    let mut stats = Stats::new();
    let mut engine = "io_uring";
    let mut end_ns = 0u64;
    let mut failure = None;
    for h in handles {
        match h.join() {
            Ok(Ok(r)) => {
                stats.merge(&r.stats);
                engine = r.engine;
                end_ns = end_ns.max(r.end_ns);
            }
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some(Error::new("a worker thread panicked")),
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let duration_s = end_ns.saturating_sub(plan.warmup_ns) as f64 / 1e9;
    Ok(Outcome {
        stats,
        duration_s,
        engine,
        server: monitor.filter(|_| began).map(|m| m.usage()),
    })
}

struct ThreadResult {
    stats: Stats,
    end_ns: u64,
    engine: &'static str,
}

enum Engine {
    Uring(Box<Uring>),
    Epoll(Epoll),
}

fn worker(
    plan: &Plan,
    t: usize,
    kind: EngineKind,
    control: &Control,
    barrier: &Barrier,
    epoch: &OnceLock<Instant>,
) -> Result<ThreadResult> {
    let conns = plan.connections / plan.threads + usize::from(t < plan.connections % plan.threads);
    if plan.rate.is_some() {
        // Open loop sends on timer wakeups; the default 50 us timer slack
        // would make every send up to 50 us late, and that lateness is
        // (rightly) counted as latency.
        // SAFETY: prctl with PR_SET_TIMERSLACK takes a plain integer.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    }
    let engine = match kind {
        EngineKind::Uring => Uring::new(plan, conns)
            .map(|u| Engine::Uring(Box::new(u)))
            .map_err(|e| Error::new(format!("io_uring engine unavailable: {e}"))),
        EngineKind::Auto => Ok(match Uring::new(plan, conns) {
            Ok(u) => Engine::Uring(Box::new(u)),
            Err(_) => Engine::Epoll(
                Epoll::new(plan, conns).map_err(|e| Error::new(format!("epoll: {e}")))?,
            ),
        }),
        EngineKind::Epoll => Epoll::new(plan, conns)
            .map(Engine::Epoll)
            .map_err(|e| Error::new(format!("epoll: {e}"))),
    };
    // Reach both barriers even on failure, or the other threads would wait forever.
    barrier.wait();
    barrier.wait();
    let mut engine = engine.inspect_err(|_| control.stop.store(true, Ordering::Relaxed))?;
    let clock = Clock(*epoch.get().expect("set before the second barrier"));
    let mut driver = Driver::new(plan, t, conns);
    let (result, name) = match &mut engine {
        Engine::Uring(u) => (u.run(&mut driver, clock, control, t), "io_uring"),
        Engine::Epoll(e) => (e.run(&mut driver, clock, control, t), "epoll"),
    };
    result.map_err(|e| {
        control.stop.store(true, Ordering::Relaxed);
        Error::new(format!("{name} engine failed: {e}"))
    })?;
    Ok(ThreadResult {
        end_ns: driver.finished().unwrap_or_else(|| clock.now()),
        stats: std::mem::take(&mut driver.stats),
        engine: name,
    })
}
