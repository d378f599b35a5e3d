//! End-to-end round trip per contender: one request at a time over a keep-alive connection
//! (a plain `std::net::TcpStream` client, pinned to CPU 1; every server pinned to CPU 0), so
//! criterion's statistics give the per-request cost of each path, unloaded:
//!
//! - `roundtrip ~300 B CSS/<contender>`: the hashed small CSS from every file server, through
//!   gunicorn + WhiteNoise and through nginx → gunicorn, and from the ceiling;
//! - `roundtrip Django view/<contender>`: `/hello/` from gunicorn, through nginx and through
//!   bypass (`--upstream`), and the ceiling's equal-sized answer.
//!
//! gunicorn's sync workers close the connection after every answer, so its round trips include
//! a connect: that is what a request to it costs.
//!
//! It needs what `scripts/setup --compare` builds (release binaries, the collectstatic tree,
//! the venv); without them it says so and measures nothing. A contender that is missing (say,
//! bypass without `--upstream` yet) or fails to start is skipped with a line saying why.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use bypass_bench::client::{self, Client};
use bypass_bench::contender::{self, Env, LOAD_CPU, Running, Started};
use bypass_bench::suite::{Contender, Workload, applies};
use bypass_bench::verify::{self, Site};
use criterion::Criterion;

/// Confines this process (the client) to the load generator's CPU.
fn pin_to_load_cpu() {
    // SAFETY: cpu_set_t is plain data; the calls get a pointer to a live one of the right size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(LOAD_CPU as usize, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn start(
    env: &Env,
    site: &Site,
    c: Contender,
    w: Workload,
    gunicorn: Option<SocketAddr>,
) -> Option<Running> {
    let started = if c == Contender::Ceiling {
        let (ctype, encoding, body) = site.ceiling_body(w).ok()?;
        let response = contender::ceiling_response(w.expected_status(), ctype, encoding, &body);
        contender::start_ceiling(env, w, &response)
    } else {
        contender::start(env, c, gunicorn)
    };
    match started {
        Started::Up(r) => Some(r),
        Started::Missing(why) => {
            eprintln!("roundtrip: {} missing: {why}", c.id());
            None
        }
        Started::Failed(why) => {
            eprintln!("roundtrip: {} failed: {why}", c.id());
            None
        }
    }
}

fn main() {
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|p| p.to_path_buf());
    let env = match Env::discover(repo) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("roundtrip: {e}");
            return;
        }
    };
    let site = match Site::load(&env) {
        Ok(s) if env.bypass.is_file() && env.bench.is_file() => s,
        Ok(_) | Err(_) => {
            eprintln!(
                "roundtrip: skipped: needs the release binaries and the collectstatic tree \
                 (run scripts/setup --compare first)"
            );
            return;
        }
    };
    let _ = std::fs::create_dir_all(&env.work);
    pin_to_load_cpu();
    let gunicorn = contender::start_gunicorn(&env, 2)
        .map_err(|e| eprintln!("roundtrip: gunicorn failed: {e}"))
        .ok();
    let gunicorn_addr = gunicorn.as_ref().map(|(_, a)| *a);

    for w in [Workload::SmallCss, Workload::DjangoView] {
        let mut group = criterion.benchmark_group(format!("roundtrip {}", w.label()));
        for c in Contender::ALL {
            if !applies(c, w) {
                continue;
            }
            let Some(running) = start(&env, &site, c, w, gunicorn_addr) else {
                continue;
            };
            let checked = match verify::check(running.addr, &site, w, c == Contender::Ceiling) {
                Ok(checked) => checked,
                Err(why) => {
                    eprintln!("roundtrip: {} answered wrongly: {why}", c.id());
                    continue;
                }
            };
            let path = site.path(w).expect("the workload's path");
            let request =
                client::request("GET", &path, &running.addr.to_string(), &checked.headers);
            let mut client = Client::new(running.addr);
            group.bench_function(c.id(), |b| {
                b.iter(|| {
                    let r = client.send(black_box(&request), false).expect("a response");
                    black_box(r.body_len)
                })
            });
            drop(running);
        }
        group.finish();
    }
    drop(gunicorn);
    let _ = std::fs::remove_dir_all(&env.work);
    criterion.final_summary();
}
