//! The `bypass-bench` command line: `run` (the suite), `report` (redraw a results directory),
//! `gate` (compare a run with the reference), `null` (the ceiling server).

use std::ffi::OsString;
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use std::time::Duration;

use lexopt::prelude::*;

use crate::contender::Env;
use crate::run::Options;
use crate::suite::{Contender, Workload};
use crate::{charts, gate, null, procs, report, run};

pub const USAGE: &str = "\
usage: bypass-bench run [--quick] [OPTIONS]
       bypass-bench report RESULTS_DIR
       bypass-bench gate REFERENCE NEW [--threshold 1.5]
       bypass-bench null --listen ADDR --response FILE

run: start every contender pinned to CPU 0, check its answers, measure each workload with
bypass-load pinned to CPU 1, and write results/<date>-<host>/ (summary.json, report.md,
SETUP.md, SVG charts, raw/ bypass-load reports); results/latest points at it.
  --quick                one 1.5 s run per cell (about 2 minutes) instead of three 3 s runs
  --runs N, --duration SECS, --warmup SECS   override the budget
  --only ID,ID           contenders (bypass, bypass-epoll, bypass-nocache, nginx,
                         static-web-server, gunicorn, nginx-gunicorn, bypass-gunicorn, ceiling)
  --workloads ID,ID      workloads (small-css, medium-css-br, jpeg, media-20mb, revalidate-304,
                         zipf-mix, django-view, latency-open)
  --gate REFERENCE       afterwards, gate against REFERENCE (a results dir): exit 1 if bypass's
                         CPU per request relative to nginx grew 1.5x or more
  --results DIR          where run directories go (default REPO/results)
  --repo DIR, --tree DIR, --bypass BIN, --load BIN, --nginx BIN, --sws BIN, --venv DIR
                         where things are (defaults: this checkout, its target/release,
                         scripts/.cache/demo, .venv; nginx and static-web-server from PATH or
                         $BYPASS_TOOLS/bin)
report: rewrite report.md, SETUP.md and the charts of RESULTS_DIR from its summary.json.
gate: compare two results directories (or summary.json files) as --gate does.
null: answer every request head on ADDR with the bytes of FILE (the ceiling).";

/// Runs the command line (without the program name); returns the exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    match dispatch(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bypass-bench: {e}");
            2
        }
    }
}

fn dispatch(args: Vec<OsString>) -> Result<i32, String> {
    let mut p = lexopt::Parser::from_args(args);
    let cmd = match p.next().map_err(|e| e.to_string())? {
        Some(Value(v)) => v.to_string_lossy().into_owned(),
        Some(Short('h') | Long("help")) | None => {
            println!("{USAGE}");
            return Ok(0);
        }
        Some(other) => return Err(other.unexpected().to_string()),
    };
    match cmd.as_str() {
        "run" => cmd_run(p),
        "report" => cmd_report(p),
        "gate" => cmd_gate(p),
        "null" => cmd_null(p),
        other => Err(format!(
            "unknown command {other:?}; see bypass-bench --help"
        )),
    }
}

fn text(p: &mut lexopt::Parser) -> Result<String, String> {
    p.value()
        .map_err(|e| e.to_string())?
        .into_string()
        .map_err(|v| format!("not UTF-8: {v:?}"))
}

fn secs(p: &mut lexopt::Parser, flag: &str) -> Result<Duration, String> {
    let v = text(p)?;
    v.trim_end_matches('s')
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{flag} {v:?}: expected seconds, e.g. 2 or 0.5"))
}

fn list<T>(v: &str, parse: fn(&str) -> Option<T>, flag: &str) -> Result<Vec<T>, String> {
    v.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| parse(s.trim()).ok_or_else(|| format!("{flag}: unknown {s:?}")))
        .collect()
}

fn cmd_run(mut p: lexopt::Parser) -> Result<i32, String> {
    let mut quick = false;
    let (mut runs, mut duration, mut warmup) = (None, None, None);
    let mut only: Option<Vec<Contender>> = None;
    let mut workloads: Option<Vec<Workload>> = None;
    let mut gate_ref: Option<PathBuf> = None;
    let mut results_dir: Option<PathBuf> = None;
    let (mut repo, mut tree, mut bypass, mut load) = (None, None, None, None);
    let (mut nginx, mut sws, mut venv) = (None, None, None);
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        match arg {
            Long("quick") => quick = true,
            Long("runs") => {
                let v = text(&mut p)?;
                runs = Some(
                    v.parse::<u32>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| format!("--runs {v:?}: expected a positive number"))?,
                );
            }
            Long("duration") => duration = Some(secs(&mut p, "--duration")?),
            Long("warmup") => warmup = Some(secs(&mut p, "--warmup")?),
            Long("only") => only = Some(list(&text(&mut p)?, Contender::from_id, "--only")?),
            Long("workloads") => {
                workloads = Some(list(&text(&mut p)?, Workload::from_id, "--workloads")?)
            }
            Long("gate") => gate_ref = Some(text(&mut p)?.into()),
            Long("results") => results_dir = Some(text(&mut p)?.into()),
            Long("repo") => repo = Some(PathBuf::from(text(&mut p)?)),
            Long("tree") => tree = Some(PathBuf::from(text(&mut p)?)),
            Long("bypass") => bypass = Some(PathBuf::from(text(&mut p)?)),
            Long("load") => load = Some(PathBuf::from(text(&mut p)?)),
            Long("nginx") => nginx = Some(PathBuf::from(text(&mut p)?)),
            Long("sws") => sws = Some(PathBuf::from(text(&mut p)?)),
            Long("venv") => venv = Some(PathBuf::from(text(&mut p)?)),
            Short('h') | Long("help") => {
                println!("{USAGE}");
                return Ok(0);
            }
            other => return Err(other.unexpected().to_string()),
        }
    }
    let mut env = Env::discover(repo)?;
    // The ceiling is this very program's `null` command.
    env.bench = std::env::current_exe().map_err(|e| format!("finding myself: {e}"))?;
    let existing = |p: PathBuf| p.is_file().then_some(p);
    if let Some(t) = tree {
        env.tree = t;
    }
    if let Some(b) = bypass {
        env.bypass = b;
    }
    if let Some(l) = load {
        env.load = l;
    }
    if let Some(n) = nginx.and_then(existing) {
        env.nginx = Some(n);
    }
    if let Some(s) = sws.and_then(existing) {
        env.sws = Some(s);
    }
    if let Some(v) = venv {
        env.venv = v;
    }
    let repo = env.repo.clone();
    for (what, path) in [("bypass", &env.bypass), ("bypass-load", &env.load)] {
        if !path.is_file() {
            return Err(format!(
                "{what} not found at {} (cargo build --release builds it; scripts/compare does)",
                path.display()
            ));
        }
    }
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        return Err("needs two CPUs: servers on CPU 0, the load generator on CPU 1".into());
    }
    // Read the reference before running: a run never overwrites it, but read it first anyway.
    let reference = match &gate_ref {
        Some(r) => Some(gate::load(r)?),
        None => None,
    };
    let mut opts = Options::new(quick, results_dir.unwrap_or_else(|| repo.join("results")));
    if let Some(n) = runs {
        opts.runs = n;
    }
    if let Some(d) = duration {
        opts.duration = d;
    }
    if let Some(w) = warmup {
        opts.warmup = w;
    }
    if let Some(c) = only {
        opts.contenders = c;
    }
    if let Some(w) = workloads {
        opts.workloads = w;
    }
    procs::catch_interrupts();
    let result = run::run(&env, &opts);
    let _ = std::fs::remove_dir_all(&env.work);
    let dir = result?;
    let summary = gate::load(&dir)?;
    println!("{}", report::headline(&summary));
    println!(
        "full report: {}\nsuite time: {:.0} s",
        dir.join("report.md").display(),
        summary.elapsed_s
    );
    if procs::interrupted() {
        return Ok(130);
    }
    if let Some(reference) = reference {
        let v = gate::gate(&reference, &summary, gate::DEFAULT_THRESHOLD);
        println!("{}", v.text);
        return Ok(if v.pass { 0 } else { 1 });
    }
    Ok(0)
}

fn one_path(mut p: lexopt::Parser, n: usize) -> Result<(Vec<PathBuf>, Option<f64>), String> {
    let mut paths = Vec::new();
    let mut threshold = None;
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        match arg {
            Value(v) => paths.push(PathBuf::from(v)),
            Long("threshold") => {
                let v = text(&mut p)?;
                threshold = Some(
                    v.parse::<f64>()
                        .ok()
                        .filter(|t| *t > 1.0)
                        .ok_or_else(|| format!("--threshold {v:?}: expected a factor above 1"))?,
                );
            }
            other => return Err(other.unexpected().to_string()),
        }
    }
    if paths.len() != n {
        return Err(format!("expected {n} path(s); see bypass-bench --help"));
    }
    Ok((paths, threshold))
}

fn cmd_report(p: lexopt::Parser) -> Result<i32, String> {
    let (paths, _) = one_path(p, 1)?;
    let dir = &paths[0];
    let summary = gate::load(dir)?;
    let charts = charts::write_all(dir, &summary)?;
    std::fs::write(dir.join("report.md"), report::report(&summary, &charts))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    println!("{}", report::headline(&summary));
    Ok(0)
}

fn cmd_gate(p: lexopt::Parser) -> Result<i32, String> {
    let (paths, threshold) = one_path(p, 2)?;
    let reference = gate::load(&paths[0])?;
    let new = gate::load(&paths[1])?;
    let v = gate::gate(
        &reference,
        &new,
        threshold.unwrap_or(gate::DEFAULT_THRESHOLD),
    );
    println!("{}", v.text);
    Ok(if v.pass { 0 } else { 1 })
}

fn cmd_null(mut p: lexopt::Parser) -> Result<i32, String> {
    let mut listen = None;
    let mut response: Option<PathBuf> = None;
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        match arg {
            Long("listen") => listen = Some(text(&mut p)?),
            Long("response") => response = Some(text(&mut p)?.into()),
            other => return Err(other.unexpected().to_string()),
        }
    }
    let (Some(listen), Some(response)) = (listen, response) else {
        return Err("null needs --listen ADDR and --response FILE".into());
    };
    let bytes = read(&response)?;
    if bytes.is_empty() {
        return Err(format!("{}: empty response", response.display()));
    }
    let listener = TcpListener::bind(&listen).map_err(|e| format!("listening on {listen}: {e}"))?;
    eprintln!(
        "bypass-bench null: {} bytes per answer on {}",
        bytes.len(),
        listener.local_addr().map_err(|e| e.to_string())?
    );
    null::serve(listener, bytes).map_err(|e| format!("io_uring: {e}"))?;
    Ok(0)
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_of_ids_parse_or_name_the_bad_one() {
        let c = list("bypass, nginx,ceiling", Contender::from_id, "--only").unwrap();
        assert_eq!(c, [Contender::Bypass, Contender::Nginx, Contender::Ceiling]);
        let e = list("bypass,apache", Contender::from_id, "--only").unwrap_err();
        assert!(e.contains("\"apache\""), "{e}");
    }

    #[test]
    fn bad_commands_exit_2() {
        assert_eq!(main(vec!["frobnicate".into()]), 2);
        assert_eq!(main(vec!["gate".into(), "/nonexistent".into()]), 2);
        assert_eq!(main(vec!["--help".into()]), 0);
    }
}
