//! The command line: flags for a run (shared with `sweep`), turning them into
//! a plan, and dispatching to `compare` and `sweep`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::driver::Plan;
use crate::engine::EngineKind;
use crate::error::{Error, Result};
use crate::mix::Mix;
use crate::render::{Template, parse_header, parse_method};
use crate::report::{Report, RunInfo};
use crate::runner::{self, Options};
use crate::sources::{self, Paths};
use crate::units::{parse_count, parse_duration, parse_rate};
use crate::url::Url;

pub const USAGE: &str = "\
usage: bypass-load [OPTIONS] URL...
       bypass-load compare BASE.json NEW.json [--max-regression 5%]
       bypass-load sweep [OPTIONS] URL --slo p99=5ms [--from R0] [--to R1] [--steps N]

Load options:
  -c, --connections N     connections to keep open (default 10)
  -t, --threads N         worker threads (default 2, at most -c)
  -d, --duration D        measured duration after warmup: 10s, 1m, 500ms (default 10s)
  -n, --requests N        stop after N measured requests (100k allowed)
      --warmup D          run this long before measuring (default 0)
  -R, --rate R            open loop: R requests/s on a fixed timetable, latency
                          counted from each request's intended send time
      --pipeline N        requests in flight per connection (default 1)
      --no-keepalive      one request per connection (Connection: close)
  -H, --header 'K: V'     add a header (repeatable)
  -m, --method M          request method (default GET)
      --timeout D         a request unanswered this long fails (default 10s)
Request mix (URL gives the host; all requests go to one host:port):
      --urls FILE         one URL or /path per line, optional weight after it
      --zipf MANIFEST     Django staticfiles.json; URL is the STATIC_URL base
      --zipf-s S          Zipf exponent for --zipf (default 1.0)
      --replay LOG        replay GET/HEAD paths of an nginx combined log
      --accept-encoding V[:W]  add V (or 'none') to an Accept-Encoding mix with
                          weight W (repeatable)
      --seed N            seed for random choices (default 1)
Output:
      --json FILE         write the JSON report (schema: loadgen/schema.json); - = stdout
      --server-pid PID    charge this process's CPU and RSS (repeatable)
  -q, --quiet             no progress line
      --engine E          auto, io_uring or epoll (default auto)
  -h, --help, -V, --version";

/// Everything a run can be told on the command line.
#[derive(Debug, Clone)]
pub struct RunArgs {
    pub urls: Vec<String>,
    pub connections: usize,
    pub threads: Option<usize>,
    pub duration: Option<Duration>,
    pub requests: Option<u64>,
    pub warmup: Duration,
    pub rate: Option<f64>,
    pub pipeline: usize,
    pub keepalive: bool,
    pub headers: Vec<(String, String)>,
    pub method: String,
    pub timeout: Duration,
    pub urls_file: Option<PathBuf>,
    pub zipf: Option<PathBuf>,
    pub zipf_s: f64,
    pub replay: Option<PathBuf>,
    pub encodings: Vec<(Option<String>, f64)>,
    pub seed: u64,
    pub json: Option<PathBuf>,
    pub server_pids: Vec<u32>,
    pub quiet: bool,
    pub engine: EngineKind,
}

impl Default for RunArgs {
    fn default() -> Self {
        RunArgs {
            urls: Vec::new(),
            connections: 10,
            threads: None,
            duration: None,
            requests: None,
            warmup: Duration::ZERO,
            rate: None,
            pipeline: 1,
            keepalive: true,
            headers: Vec::new(),
            method: "GET".into(),
            timeout: Duration::from_secs(10),
            urls_file: None,
            zipf: None,
            zipf_s: 1.0,
            replay: None,
            encodings: Vec::new(),
            seed: 1,
            json: None,
            server_pids: Vec::new(),
            quiet: false,
            engine: EngineKind::Auto,
        }
    }
}

/// A command-line argument that no longer borrows the parser, so option
/// handlers can take their values from it.
#[derive(Debug, Clone)]
pub enum Arg {
    Short(char),
    Long(String),
    Value(OsString),
}

impl Arg {
    pub fn own(a: lexopt::Arg<'_>) -> Arg {
        match a {
            lexopt::Arg::Short(c) => Arg::Short(c),
            lexopt::Arg::Long(l) => Arg::Long(l.to_string()),
            lexopt::Arg::Value(v) => Arg::Value(v),
        }
    }

    /// The error for an argument nobody handled.
    pub fn unexpected(&self) -> Error {
        match self {
            Arg::Short(c) => Error::new(format!("invalid option '-{c}' (try --help)")),
            Arg::Long(l) => Error::new(format!("invalid option '--{l}' (try --help)")),
            Arg::Value(v) => Error::new(format!("unexpected argument {v:?} (try --help)")),
        }
    }
}

/// Reads the next command-line argument.
pub fn next(p: &mut lexopt::Parser) -> Result<Option<Arg>> {
    Ok(p.next()?.map(Arg::own))
}

pub fn value_str(p: &mut lexopt::Parser) -> Result<String> {
    p.value()?
        .into_string()
        .map_err(|v| Error::new(format!("{v:?} is not valid UTF-8")))
}

fn positive(s: &str, what: &str) -> Result<usize> {
    let n = parse_count(s).map_err(|e| e.context(what))?;
    usize::try_from(n).map_err(|_| Error::new(format!("{what}: too large")))
}

impl RunArgs {
    /// Handles `arg` if it is a run option; `Ok(false)` if it is not one.
    pub fn take(&mut self, arg: &Arg, p: &mut lexopt::Parser) -> Result<bool> {
        let (short, long) = match arg {
            Arg::Short(c) => (Some(*c), ""),
            Arg::Long(l) => (None, l.as_str()),
            Arg::Value(v) => {
                let v = v
                    .clone()
                    .into_string()
                    .map_err(|v| Error::new(format!("{v:?} is not valid UTF-8")))?;
                self.urls.push(v);
                return Ok(true);
            }
        };
        match (short, long) {
            (Some('c'), _) | (_, "connections") => {
                self.connections = positive(&value_str(p)?, "-c")?;
                if self.connections > 1 << 20 {
                    return Err(Error::new("-c: at most 1048576 connections"));
                }
            }
            (Some('t'), _) | (_, "threads") => {
                let t = positive(&value_str(p)?, "-t")?;
                if t > 1024 {
                    return Err(Error::new("-t: at most 1024 threads"));
                }
                self.threads = Some(t);
            }
            (Some('d'), _) | (_, "duration") => {
                let d = parse_duration(&value_str(p)?).map_err(|e| e.context("-d"))?;
                if d.is_zero() {
                    return Err(Error::new("-d: duration must be above 0"));
                }
                self.duration = Some(d);
            }
            (Some('n'), _) | (_, "requests") => {
                self.requests = Some(parse_count(&value_str(p)?).map_err(|e| e.context("-n"))?);
            }
            (_, "warmup") => {
                self.warmup = parse_duration(&value_str(p)?).map_err(|e| e.context("--warmup"))?;
            }
            (Some('R'), _) | (_, "rate") => {
                self.rate = Some(parse_rate(&value_str(p)?).map_err(|e| e.context("--rate"))?);
            }
            (_, "pipeline") => {
                self.pipeline = positive(&value_str(p)?, "--pipeline")?;
                if self.pipeline > 64 {
                    return Err(Error::new("--pipeline: at most 64"));
                }
            }
            (_, "no-keepalive") => self.keepalive = false,
            (Some('H'), _) | (_, "header") => self.headers.push(parse_header(&value_str(p)?)?),
            (Some('m'), _) | (_, "method") => self.method = parse_method(&value_str(p)?)?,
            (_, "timeout") => {
                self.timeout =
                    parse_duration(&value_str(p)?).map_err(|e| e.context("--timeout"))?;
                if self.timeout < Duration::from_millis(1) {
                    return Err(Error::new("--timeout: at least 1ms"));
                }
            }
            (_, "urls") => self.urls_file = Some(p.value()?.into()),
            (_, "zipf") => self.zipf = Some(p.value()?.into()),
            (_, "zipf-s") => {
                let v = value_str(p)?;
                self.zipf_s = v
                    .parse::<f64>()
                    .ok()
                    .filter(|s| (0.0..=10.0).contains(s))
                    .ok_or_else(|| {
                        Error::new(format!("--zipf-s {v:?}: expected a number from 0 to 10"))
                    })?;
            }
            (_, "replay") => self.replay = Some(p.value()?.into()),
            (_, "accept-encoding") => self.encodings.push(parse_encoding(&value_str(p)?)?),
            (_, "seed") => {
                let v = value_str(p)?;
                self.seed = v
                    .parse()
                    .map_err(|_| Error::new(format!("--seed {v:?}: expected a whole number")))?;
            }
            (_, "json") => self.json = Some(p.value()?.into()),
            (_, "server-pid") => {
                let v = value_str(p)?;
                for part in v.split(',') {
                    let pid = part
                        .trim()
                        .parse::<u32>()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| {
                            Error::new(format!("--server-pid {v:?}: expected a process id"))
                        })?;
                    self.server_pids.push(pid);
                }
            }
            (Some('q'), _) | (_, "quiet") => self.quiet = true,
            (_, "engine") => {
                self.engine = match value_str(p)?.as_str() {
                    "auto" => EngineKind::Auto,
                    "io_uring" | "uring" => EngineKind::Uring,
                    "epoll" => EngineKind::Epoll,
                    other => {
                        return Err(Error::new(format!(
                            "--engine {other:?}: expected auto, io_uring or epoll"
                        )));
                    }
                };
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Resolves the mix and the target, and builds the workers' plan.
    pub fn plan(&self) -> Result<(Plan, RunInfo)> {
        let urls = self
            .urls
            .iter()
            .map(|u| Url::parse(u))
            .collect::<Result<Vec<_>>>()?;
        let sources = [
            self.urls_file.is_some(),
            self.zipf.is_some(),
            self.replay.is_some(),
        ];
        if sources.iter().filter(|&&s| s).count() > 1 {
            return Err(Error::new("use only one of --urls, --zipf and --replay"));
        }
        let one_base = |flag: &str| -> Result<&Url> {
            match urls.as_slice() {
                [u] => Ok(u),
                [] => Err(Error::new(format!(
                    "{flag} needs the base URL, e.g. http://127.0.0.1:8000/static/"
                ))),
                _ => Err(Error::new(format!(
                    "{flag} takes exactly one URL (the base)"
                ))),
            }
        };
        let paths: Paths = if let Some(f) = &self.urls_file {
            if urls.len() > 1 {
                return Err(Error::new(
                    "--urls takes at most one URL (for the host of /path lines)",
                ));
            }
            sources::urlfile::load(f, urls.first())?
        } else if let Some(f) = &self.zipf {
            sources::manifest::load(f, one_base("--zipf")?, self.zipf_s, self.seed)?
        } else if let Some(f) = &self.replay {
            let (paths, skipped) = sources::accesslog::load(f, one_base("--replay")?)?;
            if skipped > 0 && !self.quiet {
                eprintln!(
                    "bypass-load: --replay: skipped {skipped} lines that were not GET/HEAD of a path"
                );
            }
            paths
        } else {
            sources::from_urls(&urls)?
        };
        if !self.encodings.is_empty()
            && self
                .headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("accept-encoding"))
        {
            return Err(Error::new(
                "--accept-encoding and -H 'Accept-Encoding: ...' conflict; use one",
            ));
        }
        let threads = match self.threads {
            Some(t) if t > self.connections => {
                return Err(Error::new(format!(
                    "-t {t} is more threads than connections (-c {}); each thread needs one",
                    self.connections
                )));
            }
            Some(t) => t,
            None => self.connections.min(2),
        };
        let template = Template {
            method: self.method.clone(),
            headers: self.headers.clone(),
            keepalive: self.keepalive,
        };
        let first_url = format!("http://{}{}", paths.base.authority, paths.paths[0]);
        let mix = Mix::new(
            &template,
            &paths.base.authority,
            &paths.paths,
            paths.order,
            &self.encodings,
        );
        let addr = paths.base.resolve()?;
        let duration = match (self.duration, self.requests) {
            (None, None) => Some(Duration::from_secs(10)),
            (d, _) => d,
        };
        let info = RunInfo {
            url: first_url,
            distinct_requests: mix.distinct(),
            method: self.method.clone(),
            rate: self.rate,
            connections: self.connections,
            threads,
            pipeline: self.pipeline,
            keepalive: self.keepalive,
            engine: "io_uring",
            warmup_s: self.warmup.as_secs_f64(),
        };
        let plan = Plan {
            mix,
            addr,
            connections: self.connections,
            threads,
            pipeline: self.pipeline,
            keepalive: self.keepalive,
            timeout_ns: self.timeout.as_nanos() as u64,
            rate: self.rate,
            requests: self.requests,
            warmup_ns: self.warmup.as_nanos() as u64,
            duration_ns: duration.map(|d| d.as_nanos() as u64),
            seed: self.seed,
        };
        Ok((plan, info))
    }

    /// Runs once and returns the report.
    pub fn execute(&self, plan: Plan, mut info: RunInfo) -> Result<Report> {
        let plan = Arc::new(plan);
        // A mistyped pid should fail before anything else happens.
        crate::procstat::Monitor::new(&self.server_pids)?;
        runner::preflight(&plan, &info.url)?;
        let opts = Options {
            engine: self.engine,
            server_pids: self.server_pids.clone(),
            progress: !self.quiet,
        };
        let out = runner::run(plan, &opts)?;
        info.engine = out.engine;
        Ok(Report {
            info,
            duration_s: out.duration_s,
            stats: out.stats,
            server: out.server,
        })
    }
}

/// Parses `--accept-encoding br:3` (weight defaults to 1; `none` = no header).
fn parse_encoding(s: &str) -> Result<(Option<String>, f64)> {
    let (value, weight) = match s.rsplit_once(':') {
        Some((v, w)) => {
            let w: f64 = w
                .trim()
                .parse()
                .ok()
                .filter(|w: &f64| *w > 0.0 && w.is_finite())
                .ok_or_else(|| {
                    Error::new(format!(
                        "--accept-encoding {s:?}: weight must be a positive number"
                    ))
                })?;
            (v.trim(), w)
        }
        None => (s.trim(), 1.0),
    };
    if value.is_empty() || value.bytes().any(|b| b < b' ' || b == 0x7f) {
        return Err(Error::new(format!(
            "--accept-encoding {s:?}: expected a value like br, gzip or none"
        )));
    }
    let value = (value != "none").then(|| value.to_string());
    Ok((value, weight))
}

/// Writes a JSON document to a file, or stdout for `-`.
pub fn write_json(path: &PathBuf, doc: &serde_json::Value) -> Result<()> {
    let text =
        serde_json::to_string_pretty(doc).map_err(|e| Error::new(format!("JSON: {e}")))? + "\n";
    if path.as_os_str() == "-" {
        print!("{text}");
        Ok(())
    } else {
        std::fs::write(path, text)
            .map_err(|e| Error::new(format!("--json {}: {e}", path.display())))
    }
}

/// The whole program: returns the exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    match dispatch(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bypass-load: {e}");
            2
        }
    }
}

fn dispatch(args: Vec<OsString>) -> Result<i32> {
    let rest: Vec<OsString> = args.into_iter().skip(1).collect();
    match rest.first().and_then(|a| a.to_str()) {
        Some("compare") => crate::compare::main(rest[1..].to_vec()),
        Some("sweep") => crate::sweep::main(rest[1..].to_vec()),
        _ => run_main(rest),
    }
}

fn version() -> Result<i32> {
    println!("bypass-load {}", env!("CARGO_PKG_VERSION"));
    Ok(0)
}

fn run_main(args: Vec<OsString>) -> Result<i32> {
    let mut p = lexopt::Parser::from_args(args);
    let mut a = RunArgs::default();
    while let Some(arg) = next(&mut p)? {
        if a.take(&arg, &mut p)? {
            continue;
        }
        match &arg {
            Arg::Short('V') => return version(),
            Arg::Long(l) if l == "version" => return version(),
            Arg::Short('h') => {}
            Arg::Long(l) if l == "help" => {}
            _ => return Err(arg.unexpected()),
        }
        println!("{USAGE}");
        return Ok(0);
    }
    let (plan, info) = a.plan()?;
    let report = a.execute(plan, info)?;
    print!("{}", report.summary());
    if let Some(path) = &a.json {
        write_json(path, &report.to_json())?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<RunArgs> {
        let mut p = lexopt::Parser::from_args(args.iter().map(OsString::from));
        let mut a = RunArgs::default();
        while let Some(arg) = next(&mut p)? {
            if !a.take(&arg, &mut p)? {
                return Err(arg.unexpected());
            }
        }
        Ok(a)
    }

    #[test]
    fn bench_suite_flags_parse() {
        let a = parse(&[
            "-c",
            "32",
            "-t",
            "1",
            "-d",
            "10s",
            "--warmup",
            "2s",
            "--json",
            "out.json",
            "--server-pid",
            "123",
            "--pipeline",
            "16",
            "-H",
            "Accept-Encoding: br",
            "--rate",
            "5000",
            "http://127.0.0.1:8080/null",
        ])
        .unwrap();
        assert_eq!((a.connections, a.threads, a.pipeline), (32, Some(1), 16));
        assert_eq!(a.duration, Some(Duration::from_secs(10)));
        assert_eq!(a.warmup, Duration::from_secs(2));
        assert_eq!(a.server_pids, [123]);
        assert_eq!(a.rate, Some(5000.0));
        assert_eq!(
            a.headers,
            [("Accept-Encoding".to_string(), "br".to_string())]
        );
        let (plan, info) = a.plan().unwrap();
        assert_eq!((plan.threads, info.connections), (1, 32));
        assert!(
            plan.mix
                .request(0)
                .ends_with(b"Accept-Encoding: br\r\n\r\n")
        );
    }

    #[test]
    fn bad_flags_are_errors() {
        for bad in [
            &["-c", "0", "http://h/"][..],
            &["-d", "ten", "http://h/"],
            &["--rate", "-5", "http://h/"],
            &["--bogus", "http://h/"],
            &["-H", "nocolon", "http://h/"],
            &["--engine", "kqueue"],
            &["--server-pid", "abc"],
            &["--accept-encoding", "br:0"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(
            parse(&["-c", "1", "-t", "2", "http://127.0.0.1/"])
                .unwrap()
                .plan()
                .is_err()
        );
        assert!(parse(&[]).unwrap().plan().is_err());
        assert!(
            parse(&["http://a:1/", "http://b:1/"])
                .unwrap()
                .plan()
                .is_err()
        );
    }

    #[test]
    fn encoding_mix() {
        assert_eq!(parse_encoding("br:3").unwrap(), (Some("br".into()), 3.0));
        assert_eq!(parse_encoding("none").unwrap(), (None, 1.0));
        assert_eq!(
            parse_encoding("gzip, br:2").unwrap(),
            (Some("gzip, br".into()), 2.0)
        );
    }
}
