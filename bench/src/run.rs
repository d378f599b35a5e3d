//! The suite: start every contender, check each answer, then run bypass-load over every
//! (workload, contender) cell, interleaved round by round so that drift in the machine does not
//! favour whoever went first; then write the results directory.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::contender::{self, Env, LOAD_CPU, Running, Started};
use crate::procs::{self, Server};
use crate::results;
use crate::suite::{ACCEPT_ENCODING_MIX, Contender, Workload, applies};
use crate::summary::{Cell, ContenderInfo, Figures, Run, SCHEMA, State, Summary, WorkloadInfo};
use crate::verify::{self, Checked, Site};

#[derive(Clone, Debug)]
pub struct Options {
    pub quick: bool,
    pub runs: u32,
    pub duration: Duration,
    pub warmup: Duration,
    /// Where `<date>-<host>/` directories go (the repo's `results/`).
    pub results: PathBuf,
    pub contenders: Vec<Contender>,
    pub workloads: Vec<Workload>,
    pub gunicorn_workers: u32,
}

impl Options {
    pub fn new(quick: bool, results: PathBuf) -> Options {
        // Budgets: --quick is one 1.5 s run per cell (about 2 minutes for ~60 cells on
        // 2 cores), the default three 3 s runs (about 10 minutes).
        let (runs, duration, warmup) = if quick {
            (1, Duration::from_millis(1500), Duration::from_millis(500))
        } else {
            (3, Duration::from_secs(3), Duration::from_millis(500))
        };
        Options {
            quick,
            runs,
            duration,
            warmup,
            results,
            contenders: Contender::ALL.to_vec(),
            workloads: Workload::ALL.to_vec(),
            gunicorn_workers: 2,
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// A contender with its state across the suite.
struct Entrant {
    contender: Contender,
    running: Option<Running>,
    info: ContenderInfo,
}

/// What every measurement needs.
struct Ctx<'a> {
    env: &'a Env,
    opts: &'a Options,
    site: &'a Site,
    dir: &'a Path,
}

/// Who is measured: where, which processes to charge, and the request header fields.
pub struct Target<'a> {
    pub who: Contender,
    pub addr: SocketAddr,
    pub pids: &'a [u32],
    pub headers: &'a [(String, String)],
}

fn log(msg: impl AsRef<str>) {
    eprintln!("bypass-bench: {}", msg.as_ref());
}

/// Runs the suite; returns the results directory written.
pub fn run(env: &Env, opts: &Options) -> Result<PathBuf, String> {
    let start = Instant::now();
    let site = Site::load(env)?;
    fs::create_dir_all(&env.work).map_err(|e| format!("{}: {e}", env.work.display()))?;
    let stamp = results::Stamp::now();
    let dir = results::new_run_dir(&opts.results, &stamp, opts.quick)?;
    fs::create_dir_all(dir.join("raw")).map_err(|e| format!("{}: {e}", dir.display()))?;
    log(format!("results in {}", dir.display()));

    // gunicorn first: three contenders stand in front of it.
    let mut gunicorn_error = String::new();
    let gunicorn = if opts.contenders.iter().any(|c| c.needs_gunicorn()) {
        match contender::start_gunicorn(env, opts.gunicorn_workers) {
            Ok((server, addr)) => {
                log(format!("gunicorn up on {addr} (pids {:?})", server.tree()));
                Some((server, addr))
            }
            Err(e) => {
                log(format!("gunicorn failed: {e}"));
                gunicorn_error = e;
                None
            }
        }
    } else {
        None
    };
    let gunicorn_note = format!("gunicorn did not start: {gunicorn_error}");
    let mut entrants = start_entrants(env, opts, &dir, gunicorn.as_ref(), &gunicorn_note);

    let (cells, checked) = check_cells(&entrants, &opts.workloads, &site);

    let mut summary = Summary {
        schema: SCHEMA.into(),
        started: stamp.human.clone(),
        host: stamp.host.clone(),
        machine: results::machine(),
        quick: opts.quick,
        runs: opts.runs,
        duration_s: opts.duration.as_secs_f64(),
        warmup_s: opts.warmup.as_secs_f64(),
        git: results::git_describe(&env.repo),
        contenders: Vec::new(),
        workloads: opts
            .workloads
            .iter()
            .map(|&w| WorkloadInfo {
                id: w.id().into(),
                label: w.label().into(),
                detail: describe(w, &site),
                connections: w.connections(),
                rate: None,
            })
            .collect(),
        cells,
        elapsed_s: 0.0,
        background_cpus: Vec::new(),
    };

    let ctx = Ctx {
        env,
        opts,
        site: &site,
        dir: &dir,
    };
    let todo = summary
        .cells
        .iter()
        .filter(|c| c.state == State::Ok)
        .count()
        * opts.runs as usize;
    let mut done = 0;
    let mut rates: Vec<f64> = Vec::new();
    'rounds: for round in 0..opts.runs {
        if let Some(busy) = results::busy_cpus(Duration::from_millis(500)) {
            if busy > 0.2 {
                log(format!(
                    "round {}: other processes keep {busy:.2} CPUs busy: expect noise",
                    round + 1
                ));
            }
            summary.background_cpus.push(busy);
        }
        for &w in &opts.workloads {
            let rate = if w.open_loop() {
                match open_loop_rate(&summary) {
                    Some((r, _)) => {
                        rates.push(r);
                        Some(r)
                    }
                    None => {
                        for cell in summary.cells.iter_mut().filter(|c| c.workload == w.id()) {
                            cell.fail(
                                State::Failed,
                                "no peak rate of nginx (or bypass) on the small CSS to take half of",
                            );
                        }
                        continue;
                    }
                }
            } else {
                None
            };
            // Rotate who goes first from round to round.
            let n = entrants.len();
            for k in 0..n {
                if procs::interrupted() {
                    log("interrupted: writing what was measured");
                    break 'rounds;
                }
                let i = (k + round as usize) % n;
                let c = entrants[i].contender;
                let Some(idx) = summary
                    .cells
                    .iter()
                    .position(|cell| cell.contender == c.id() && cell.workload == w.id())
                else {
                    continue;
                };
                if summary.cells[idx].state != State::Ok {
                    continue;
                }
                done += 1;
                let peak = summary
                    .figures(c.id(), Workload::SmallCss.id())
                    .map(|f| f.rps);
                if let (Some(r), Some(peak)) = (rate, peak)
                    && peak < r
                {
                    summary.cells[idx].fail(
                        State::Overloaded,
                        format!(
                            "its closed-loop peak on the same file, {peak:.0} req/s, is below \
                             the rate of {r:.0} req/s: latency would grow without bound"
                        ),
                    );
                    continue;
                }
                let outcome = if c == Contender::Ceiling {
                    measure_ceiling(&ctx, w, rate, round)
                } else {
                    let e = &mut entrants[i];
                    let r = e.running.as_mut().expect("an ok contender is running");
                    let mut pids: Vec<u32> = r.servers.iter().flat_map(|s| s.tree()).collect();
                    if r.uses_gunicorn
                        && let Some((g, _)) = gunicorn.as_ref()
                    {
                        pids.extend(g.tree());
                    }
                    let headers = checked[idx]
                        .as_ref()
                        .map(|c| c.headers.clone())
                        .unwrap_or_default();
                    let addr = match r.pipelined_addr {
                        Some(addr) if w.pipeline() > 1 => addr,
                        _ => r.addr,
                    };
                    let target = Target {
                        who: c,
                        addr,
                        pids: &pids,
                        headers: &headers,
                    };
                    let out = measure(&ctx, w, &target, rate, round);
                    match (out, r.check_alive()) {
                        (out, Ok(())) => out,
                        (_, Err(why)) => Err(why),
                    }
                };
                let cell = &mut summary.cells[idx];
                match outcome {
                    Ok((run, command)) => {
                        log(format!(
                            "[{done}/{todo}] {} × {}: {}",
                            w.id(),
                            c.id(),
                            one_line(&run.figures)
                        ));
                        if let Err((state, why)) = judge(&run, round, rate) {
                            cell.fail(state, why);
                        }
                        if cell.runs.is_empty() {
                            cell.command = Some(command);
                        }
                        cell.runs.push(run);
                    }
                    Err(why) => {
                        log(format!(
                            "[{done}/{todo}] {} × {}: FAILED {why}",
                            w.id(),
                            c.id()
                        ));
                        cell.fail(State::Failed, why);
                    }
                }
                cell.aggregate();
            }
        }
    }
    mark_overloaded(&mut summary, opts.duration);
    let whose = open_loop_rate(&summary).map(|(_, who)| who);
    if !rates.is_empty()
        && let Some(info) = summary
            .workloads
            .iter_mut()
            .find(|i| i.id == Workload::LatencyOpen.id())
    {
        info.rate = Some(crate::summary::median(&mut rates));
        if let Some(who) = whose {
            info.detail = format!("{}, half of {who}'s peak on it", info.detail);
        }
    }
    summary.contenders = entrants.iter().map(|e| e.info.clone()).collect();
    // Stop everything before writing (charts take a moment; servers need not idle meanwhile).
    drop(entrants);
    drop(gunicorn);
    summary.elapsed_s = start.elapsed().as_secs_f64();
    results::write(&dir, &summary, env)?;
    results::point_latest(&opts.results, &dir)?;
    Ok(dir)
}

/// Starts every contender but the ceiling (started per workload), recording how it went.
fn start_entrants(
    env: &Env,
    opts: &Options,
    dir: &Path,
    gunicorn: Option<&(Server, SocketAddr)>,
    gunicorn_note: &str,
) -> Vec<Entrant> {
    let versions = results::Versions::collect(env);
    let gunicorn_addr = gunicorn.map(|(_, addr)| *addr);
    let gunicorn_command = gunicorn.map(|(server, _)| server.command.clone());
    let mut entrants: Vec<Entrant> = Vec::new();
    for &c in &opts.contenders {
        let mut info = ContenderInfo {
            id: c.id().into(),
            label: c.label().into(),
            state: State::Ok,
            note: String::new(),
            version: versions.of(c),
            commands: Vec::new(),
        };
        if c.needs_gunicorn() {
            info.commands.extend(gunicorn_command.clone());
        }
        let running = if c == Contender::Ceiling {
            info.commands.push(format!(
                "taskset -c {} {} null --listen 127.0.0.1:PORT --response RESPONSE-FILE \
                 (restarted per workload with that workload's answer)",
                contender::SERVER_CPU,
                env.bench.display()
            ));
            None
        } else {
            match contender::start(env, c, gunicorn_addr) {
                Started::Up(r) => {
                    info.commands.extend(r.commands.iter().cloned());
                    for (name, text) in &r.configs {
                        let file = format!("{}.conf", name.split(' ').next().unwrap_or(name));
                        let _ = fs::write(dir.join(&file), text);
                    }
                    Some(r)
                }
                Started::Missing(why) => {
                    info.state = State::Missing;
                    info.note = why;
                    None
                }
                Started::Failed(why) => {
                    info.state = State::Failed;
                    info.note = if c.needs_gunicorn() && gunicorn_addr.is_none() {
                        gunicorn_note.to_string()
                    } else {
                        why
                    };
                    None
                }
            }
        };
        log(format!(
            "{}: {}{}",
            c.id(),
            match info.state {
                State::Ok | State::Overloaded => "up",
                State::Missing => "MISSING",
                State::Failed => "FAILED",
            },
            if info.note.is_empty() {
                String::new()
            } else {
                format!(" ({})", info.note)
            }
        ));
        entrants.push(Entrant {
            contender: c,
            running,
            info,
        });
    }
    entrants
}

/// Every applicable cell, each contender's answer checked once before anything is measured
/// (the ceiling is checked each time it starts); what to send to get that answer again.
fn check_cells(
    entrants: &[Entrant],
    workloads: &[Workload],
    site: &Site,
) -> (Vec<Cell>, Vec<Option<Checked>>) {
    let mut cells: Vec<Cell> = Vec::new();
    let mut checked: Vec<Option<Checked>> = Vec::new();
    for &w in workloads {
        for e in entrants {
            if !applies(e.contender, w) {
                continue;
            }
            let mut cell = Cell::new(e.contender.id(), w.id());
            let mut check = None;
            match (&e.info.state, &e.running) {
                (State::Ok, Some(r)) => match verify::check(r.addr, site, w, false) {
                    Ok(c) => {
                        cell.encoding = c.encoding.clone();
                        check = Some(c);
                    }
                    Err(why) => cell.fail(State::Failed, format!("wrong answer: {why}")),
                },
                (State::Ok, None) => {} // the ceiling
                (state, _) => cell.fail(*state, e.info.note.clone()),
            }
            if cell.state != State::Ok {
                log(format!(
                    "{} on {}: {:?}: {}",
                    e.contender.id(),
                    w.id(),
                    cell.state,
                    cell.note
                ));
            }
            cells.push(cell);
            checked.push(check);
        }
    }
    (cells, checked)
}

/// Open-loop cells whose median run left more than 1% of the requests due unsent: the rate was
/// not delivered, so their latency measures a queue. Judged on the median, not on any one
/// run, so that a burst of background load in one run does not decide it.
fn mark_overloaded(s: &mut Summary, duration: Duration) {
    for cell in &mut s.cells {
        let Some(f) = cell.ok() else { continue };
        let Some(rate) = cell.runs.first().and_then(|r| r.figures.target_rate) else {
            continue;
        };
        let due = rate * duration.as_secs_f64();
        if f.unsent > 0.01 * due {
            let note = format!(
                "a median {:.0} of {due:.0} requests due per run were never sent (every \
                 connection was waiting): the rate was not delivered",
                f.unsent
            );
            cell.fail(State::Overloaded, note);
        }
    }
}

/// The open-loop rate: half of nginx's median peak on the small CSS so far (bypass's when
/// nginx was not measured), and whose it was.
fn open_loop_rate(s: &Summary) -> Option<(f64, &'static str)> {
    for who in ["nginx", "bypass"] {
        if let Some(f) = s.figures(who, Workload::SmallCss.id())
            && f.rps > 0.0
        {
            return Some(((f.rps * 0.5).round(), who));
        }
    }
    None
}

fn describe(w: Workload, site: &Site) -> String {
    let path = site.path(w).unwrap_or_default();
    let ae = w
        .accept_encoding()
        .map(|a| format!(", Accept-Encoding: {a}"))
        .unwrap_or_default();
    match w {
        Workload::Revalidate304 => format!(
            "GET {path}{ae}, If-None-Match and If-Modified-Since from the contender's own 200"
        ),
        Workload::ZipfMix => format!(
            "Zipf (s=1) over the {} hashed names of staticfiles.json, Accept-Encoding mix {}",
            site.hashed.len(),
            ACCEPT_ENCODING_MIX
                .iter()
                .map(|(v, n)| format!("`{v}`×{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Workload::LatencyOpen => format!("GET {path}, open loop at a fixed rate"),
        Workload::PipelinedCss => format!("GET {path}{ae}, 16 in flight per connection"),
        _ => format!("GET {path}{ae}"),
    }
}

/// Whether a run's answers were all right: no errors, something answered.
fn judge(run: &Run, round: u32, rate: Option<f64>) -> Result<(), (State, String)> {
    let f = &run.figures;
    if f.errors > 0.0 {
        return Err((
            State::Failed,
            format!("run {}: {} errors ({})", round + 1, f.errors, run.raw),
        ));
    }
    if rate.is_some() && f.requests == 0.0 {
        return Err((
            State::Overloaded,
            format!(
                "run {}: nothing due in the measured window was answered in it",
                round + 1
            ),
        ));
    }
    if f.requests == 0.0 {
        return Err((
            State::Failed,
            format!("run {}: no complete response", round + 1),
        ));
    }
    Ok(())
}

fn one_line(f: &Figures) -> String {
    format!(
        "{:.0} req/s, {:.1} MB/s, p99 {:.0} µs, CPU {} µs/req",
        f.rps,
        f.bytes_per_sec / 1e6,
        f.p99_us,
        f.cpu_us_per_request
            .map(|c| format!("{c:.2}"))
            .unwrap_or_else(|| "?".into())
    )
}

/// Starts the ceiling with workload `w`'s answer, checks it, measures it, stops it.
fn measure_ceiling(
    ctx: &Ctx<'_>,
    w: Workload,
    rate: Option<f64>,
    round: u32,
) -> Result<(Run, String), String> {
    let (ctype, encoding, body) = ctx.site.ceiling_body(w)?;
    let response = contender::ceiling_response(w.expected_status(), ctype, encoding, &body);
    let mut running = match contender::start_ceiling(ctx.env, w, &response) {
        Started::Up(r) => r,
        Started::Missing(why) | Started::Failed(why) => return Err(why),
    };
    let checked = verify::check(running.addr, ctx.site, w, true)
        .map_err(|why| format!("wrong answer: {why}"))?;
    let pids: Vec<u32> = running.servers.iter().flat_map(|s| s.tree()).collect();
    let target = Target {
        who: Contender::Ceiling,
        addr: running.addr,
        pids: &pids,
        headers: &checked.headers,
    };
    let out = measure(ctx, w, &target, rate, round);
    running.check_alive()?;
    out
}

/// The bypass-load arguments for one run of `w` against `t`.
pub fn load_args(
    opts: &Options,
    site: &Site,
    w: Workload,
    t: &Target<'_>,
    rate: Option<f64>,
    json: &Path,
) -> Result<Vec<String>, String> {
    let mut a: Vec<String> = vec![
        "-t".into(),
        "1".into(),
        "-c".into(),
        w.connections().to_string(),
        "-d".into(),
        ms(opts.duration),
        "--warmup".into(),
        ms(opts.warmup),
        "-q".into(),
        "--json".into(),
        json.display().to_string(),
    ];
    if !t.pids.is_empty() {
        a.push("--server-pid".into());
        a.push(
            t.pids
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
        );
    }
    if w.pipeline() > 1 {
        a.push("--pipeline".into());
        a.push(w.pipeline().to_string());
    }
    if let Some(r) = rate {
        a.push("--rate".into());
        a.push(format!("{r:.0}"));
    }
    for (k, v) in t.headers {
        a.push("-H".into());
        a.push(format!("{k}: {v}"));
    }
    if w == Workload::ZipfMix {
        a.push("--zipf".into());
        a.push(site.manifest_path.display().to_string());
        for (value, weight) in ACCEPT_ENCODING_MIX {
            a.push("--accept-encoding".into());
            a.push(format!("{value}:{weight}"));
        }
    }
    a.push(format!("http://{}{}", t.addr, site.path(w)?));
    Ok(a)
}

/// One bypass-load run, pinned to the load CPU; its report is kept under `raw/`.
fn measure(
    ctx: &Ctx<'_>,
    w: Workload,
    t: &Target<'_>,
    rate: Option<f64>,
    round: u32,
) -> Result<(Run, String), String> {
    let raw = format!("raw/{}--{}--run{}.json", w.id(), t.who.id(), round + 1);
    let json = ctx.dir.join(&raw);
    let args = load_args(ctx.opts, ctx.site, w, t, rate, &json)?;
    let command = format!(
        "taskset -c {LOAD_CPU} {}",
        procs::display(&ctx.env.load, &args)
    );
    let out = Command::new("taskset")
        .arg("-c")
        .arg(LOAD_CPU.to_string())
        .arg(&ctx.env.load)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running bypass-load: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "bypass-load {}: {}",
            procs::status_text(out.status),
            err.lines().last().unwrap_or("").trim()
        ));
    }
    let text = fs::read_to_string(&json).map_err(|e| format!("{}: {e}", json.display()))?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| format!("{raw}: {e}"))?;
    let figures = Figures::from_report(&doc)?;
    // Every answer must carry the status the check saw.
    if let Some(status) = doc.get("status").and_then(Value::as_object) {
        let want = w.expected_status().to_string();
        let wrong: Vec<String> = status
            .iter()
            .filter(|(k, _)| **k != want)
            .map(|(k, v)| format!("{v}× {k}"))
            .collect();
        if !wrong.is_empty() {
            return Err(format!(
                "answered {} where {want} was expected ({raw})",
                wrong.join(", ")
            ));
        }
    }
    Ok((Run { raw, figures }, command))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::tests::{cell, figures, summary};

    fn open_cell(unsent: &[f64]) -> Cell {
        let mut c = cell("ceiling", "latency-open", &[]);
        for (i, &u) in unsent.iter().enumerate() {
            let mut f = figures(10_000.0, 5.0);
            f.unsent = u;
            f.target_rate = Some(10_000.0);
            c.runs.push(Run {
                raw: format!("raw/latency-open--ceiling--run{}.json", i + 1),
                figures: f,
            });
        }
        c.aggregate();
        c
    }

    #[test]
    fn overload_is_judged_on_the_median_run() {
        // 3 s at 10k req/s: 30k due; one bad run of three is noise.
        let mut s = summary(vec![open_cell(&[0.0, 5000.0, 10.0])]);
        mark_overloaded(&mut s, Duration::from_secs(3));
        assert_eq!(s.cells[0].state, State::Ok);
        let mut s = summary(vec![open_cell(&[900.0, 5000.0, 400.0])]);
        mark_overloaded(&mut s, Duration::from_secs(3));
        assert_eq!(s.cells[0].state, State::Overloaded);
        assert!(
            s.cells[0].note.contains("900 of 30000"),
            "{}",
            s.cells[0].note
        );
    }

    #[test]
    fn runs_with_errors_or_no_answers_are_judged() {
        let run = |errors: f64, requests: f64| Run {
            raw: "raw/x.json".into(),
            figures: Figures {
                errors,
                requests,
                ..figures(1.0, 1.0)
            },
        };
        assert!(judge(&run(0.0, 10.0), 0, None).is_ok());
        assert_eq!(
            judge(&run(3.0, 10.0), 1, None).unwrap_err().0,
            State::Failed
        );
        assert_eq!(judge(&run(0.0, 0.0), 0, None).unwrap_err().0, State::Failed);
        assert_eq!(
            judge(&run(0.0, 0.0), 0, Some(100.0)).unwrap_err().0,
            State::Overloaded
        );
    }

    #[test]
    fn load_arguments_pin_nothing_but_say_everything() {
        let site = Site {
            static_root: "/t/static".into(),
            media_root: "/t/media".into(),
            manifest_path: "/t/static/staticfiles.json".into(),
            hashed: [(
                "demo/small.css".to_string(),
                "demo/small.abc.css".to_string(),
            )]
            .into(),
            hello: "/h.html".into(),
        };
        let opts = Options::new(true, "/r".into());
        let addr = SocketAddr::from(([127, 0, 0, 1], 8080));
        let headers = vec![("If-None-Match".to_string(), "\"x\"".to_string())];
        let t = Target {
            who: Contender::Nginx,
            addr,
            pids: &[10, 11],
            headers: &headers,
        };
        let a = load_args(
            &opts,
            &site,
            Workload::SmallCss,
            &t,
            Some(500.0),
            Path::new("/o.json"),
        );
        assert_eq!(
            a.unwrap().join(" "),
            "-t 1 -c 32 -d 1500ms --warmup 500ms -q --json /o.json --server-pid 10,11 \
             --rate 500 -H If-None-Match: \"x\" http://127.0.0.1:8080/static/demo/small.abc.css"
        );
        let t = Target { headers: &[], ..t };
        let a = load_args(
            &opts,
            &site,
            Workload::ZipfMix,
            &t,
            None,
            Path::new("/o.json"),
        )
        .unwrap()
        .join(" ");
        assert!(
            a.ends_with(
                "--zipf /t/static/staticfiles.json --accept-encoding gzip, deflate, br, zstd:6 \
                 --accept-encoding gzip, deflate, br:3 --accept-encoding none:1 \
                 http://127.0.0.1:8080/static/"
            ),
            "{a}"
        );
    }
}
