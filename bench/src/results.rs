//! The results directory of one suite run, `results/<date>-<host>/`: `summary.json`,
//! `report.md`, `SETUP.md`, the charts, and `raw/` with every bypass-load report; and the
//! `results/latest` link to the newest. Also the facts SETUP.md records: the machine, the
//! versions of every contender, the git revision.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::charts;
use crate::contender::Env;
use crate::procs::first_line;
use crate::report;
use crate::suite::Contender;
use crate::summary::{Machine, Summary};

/// When and where a run happened.
#[derive(Clone, Debug)]
pub struct Stamp {
    /// `YYYY-MM-DD`, UTC.
    pub date: String,
    /// `YYYY-MM-DD HH:MM:SS UTC`.
    pub human: String,
    /// The host name, reduced to `[A-Za-z0-9-]`.
    pub host: String,
}

impl Stamp {
    pub fn now() -> Stamp {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        Stamp::at(secs, &host)
    }

    pub fn at(unix_secs: u64, host: &str) -> Stamp {
        let (y, m, d) = civil_from_days((unix_secs / 86_400) as i64);
        let t = unix_secs % 86_400;
        let host: String = host
            .trim()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        Stamp {
            date: format!("{y:04}-{m:02}-{d:02}"),
            human: format!(
                "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
                t / 3600,
                t / 60 % 60,
                t % 60
            ),
            host: if host.is_empty() { "host".into() } else { host },
        }
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A fresh directory name under `root`: `<date>-<host>`, `-quick` for quick runs, and `-2`,
/// `-3`, ... rather than ever overwriting an earlier run (the committed reference among them).
pub fn new_run_dir(root: &Path, stamp: &Stamp, quick: bool) -> Result<PathBuf, String> {
    let base = format!(
        "{}-{}{}",
        stamp.date,
        stamp.host,
        if quick { "-quick" } else { "" }
    );
    let mut n = 1;
    loop {
        let name = if n == 1 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        let dir = root.join(&name);
        match fs::create_dir_all(root).and_then(|_| fs::create_dir(&dir)) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
            Err(e) => return Err(format!("{}: {e}", dir.display())),
        }
    }
}

/// Points `root/latest` at `dir` (a relative link, so the tree can move).
pub fn point_latest(root: &Path, dir: &Path) -> Result<(), String> {
    let name = dir
        .file_name()
        .ok_or_else(|| format!("{}: no directory name", dir.display()))?;
    let tmp = root.join(".latest.tmp");
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(name, &tmp)
        .and_then(|_| fs::rename(&tmp, root.join("latest")))
        .map_err(|e| format!("{}/latest: {e}", root.display()))
}

/// Writes summary.json, report.md, SETUP.md and the charts into `dir`.
pub fn write(dir: &Path, summary: &Summary, env: &Env) -> Result<(), String> {
    let io = |p: PathBuf, e: std::io::Error| format!("{}: {e}", p.display());
    let json = serde_json::to_string_pretty(summary).map_err(|e| e.to_string())?;
    fs::write(dir.join("summary.json"), json + "\n")
        .map_err(|e| io(dir.join("summary.json"), e))?;
    let charts = charts::write_all(dir, summary)?;
    fs::write(dir.join("report.md"), report::report(summary, &charts))
        .map_err(|e| io(dir.join("report.md"), e))?;
    fs::write(dir.join("SETUP.md"), report::setup(summary, env, dir))
        .map_err(|e| io(dir.join("SETUP.md"), e))?;
    Ok(())
}

/// How many CPUs' worth of time the whole machine spent busy over `window` (from
/// `/proc/stat`). Sampled while the suite's own processes idle, it is the background load that
/// other processes put on the machine: the first thing to look at when ranges are wide.
pub fn busy_cpus(window: std::time::Duration) -> Option<f64> {
    fn sample() -> Option<(u64, u64)> {
        let stat = fs::read_to_string("/proc/stat").ok()?;
        let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
        let v: Vec<u64> = cpu
            .split_ascii_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal
        let idle = v.get(3)? + v.get(4).unwrap_or(&0);
        let total: u64 = v.iter().take(8).sum();
        Some((total - idle, total))
    }
    let (b0, t0) = sample()?;
    std::thread::sleep(window);
    let (b1, t1) = sample()?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    (t1 > t0).then(|| (b1 - b0) as f64 / (t1 - t0) as f64 * cpus)
}

pub fn machine() -> Machine {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_else(|| "unknown".into());
    let os = fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "unknown".into());
    Machine {
        cpu_model,
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        memory,
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        os,
    }
}

/// `abc1234`, with `+ uncommitted changes` when the work tree differs from it.
pub fn git_describe(repo: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(rev) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown".into();
    };
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{rev} + uncommitted changes")
    } else {
        rev
    }
}

/// The version line of every program the suite runs.
pub struct Versions {
    bypass: String,
    nginx: String,
    sws: String,
    gunicorn: String,
    bench: String,
}

impl Versions {
    pub fn collect(env: &Env) -> Versions {
        let or_missing = |v: Option<String>| v.unwrap_or_else(|| "not installed".into());
        let python = env.venv.join("bin/python");
        let django = first_line(
            &python,
            &[
                "-c",
                "from importlib.metadata import version as v; \
                 print(f'Django {v(\"django\")}, WhiteNoise {v(\"whitenoise\")}')",
            ],
        );
        let py = first_line(&python, &["--version"]);
        Versions {
            bypass: or_missing(first_line(&env.bypass, &["--version"])),
            nginx: or_missing(
                env.nginx
                    .as_ref()
                    .and_then(|n| first_line(n, &["-v"]))
                    .map(|v| v.trim_start_matches("nginx version: ").to_string()),
            ),
            // It prints `Version:      2.41.0` and more lines.
            sws: or_missing(
                env.sws
                    .as_ref()
                    .and_then(|s| first_line(s, &["--version"]))
                    .map(|v| {
                        format!(
                            "static-web-server {}",
                            v.trim_start_matches("Version:").trim()
                        )
                    }),
            ),
            gunicorn: match first_line(&env.venv.join("bin/gunicorn"), &["--version"]) {
                Some(g) => format!(
                    "{} ({}; {})",
                    g.trim_start_matches("gunicorn (version ")
                        .trim_end_matches(')'),
                    django.unwrap_or_default(),
                    py.unwrap_or_default()
                ),
                None => "not installed".into(),
            },
            bench: format!("bypass-bench {}", env!("CARGO_PKG_VERSION")),
        }
    }

    pub fn of(&self, c: Contender) -> String {
        let gunicorn = format!("gunicorn {}", self.gunicorn);
        match c {
            Contender::Bypass | Contender::BypassEpoll | Contender::BypassNoCache => {
                self.bypass.clone()
            }
            Contender::Nginx => self.nginx.clone(),
            Contender::Sws => self.sws.clone(),
            Contender::Gunicorn => gunicorn,
            Contender::NginxGunicorn => format!("{} → {gunicorn}", self.nginx),
            Contender::BypassGunicorn => format!("{} → {gunicorn}", self.bypass),
            Contender::Ceiling => format!("{} null responder (io_uring)", self.bench),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_from_unix_time() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        let s = Stamp::at(1_795_309_593, "box.example\n");
        assert_eq!(s.date, "2026-11-22");
        assert_eq!(s.human, "2026-11-22 01:06:33 UTC");
        assert_eq!(s.host, "box-example");
    }

    #[test]
    fn run_dirs_never_overwrite_and_latest_follows() {
        let root = tempfile::tempdir().unwrap();
        let s = Stamp::at(0, "h");
        let a = new_run_dir(root.path(), &s, false).unwrap();
        let b = new_run_dir(root.path(), &s, false).unwrap();
        let q = new_run_dir(root.path(), &s, true).unwrap();
        assert!(a.ends_with("1970-01-01-h"));
        assert!(b.ends_with("1970-01-01-h-2"));
        assert!(q.ends_with("1970-01-01-h-quick"));
        point_latest(root.path(), &a).unwrap();
        point_latest(root.path(), &b).unwrap();
        let link = fs::read_link(root.path().join("latest")).unwrap();
        assert_eq!(link, Path::new("1970-01-01-h-2"));
    }
}
