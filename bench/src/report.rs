//! `report.md` and `SETUP.md`, rendered from a [`Summary`] alone (plus the configuration files
//! beside it for SETUP.md), so a report can be redrawn from any results directory.

use std::fmt::Write as _;
use std::path::Path;

use crate::contender::{Env, LOAD_CPU, SERVER_CPU};
use crate::suite::{Contender, Workload};
use crate::summary::{Cell, Figures, State, Summary};

/// Three significant digits, with a `k`/`M` suffix from ten thousand on.
pub fn sig3(v: f64) -> String {
    if !v.is_finite() {
        return "?".into();
    }
    if v.abs() >= 1e7 {
        return format!("{}M", sig3(v / 1e6));
    }
    if v.abs() >= 1e4 {
        return format!("{}k", sig3(v / 1e3));
    }
    if v == 0.0 {
        return "0".into();
    }
    let digits = v.abs().log10().floor() as i32 + 1;
    let decimals = (3 - digits).clamp(0, 3) as usize;
    format!("{v:.decimals$}")
}

/// `median (min–max)` when the runs differ, else the median.
fn with_range(median: f64, min: f64, max: f64, runs: usize) -> String {
    let m = sig3(median);
    let (lo, hi) = (sig3(min), sig3(max));
    if runs > 1 && (lo != m || hi != m) {
        format!("{m} ({lo}–{hi})")
    } else {
        m
    }
}

fn ratio(v: f64) -> String {
    if !v.is_finite() {
        return "?".into();
    }
    if v >= 10.0 {
        format!("{v:.0}×")
    } else {
        format!("{v:.2}×")
    }
}

/// What a table cell shows when there is no figure.
fn absent(cell: Option<&Cell>) -> &'static str {
    match cell.map(|c| c.state) {
        None => "n/a",
        Some(State::Missing) => "missing",
        Some(State::Failed) => "**failed**",
        Some(State::Overloaded) => "overloaded",
        Some(State::Ok) => "?",
    }
}

type Pick = fn(&Figures) -> Option<f64>;

/// A table: workloads down, contenders across, `pick` of each cell with its range.
fn metric_table(s: &Summary, pick: Pick, workloads: &[&str]) -> String {
    let contenders = contenders_in(s);
    let mut t = String::from("| workload |");
    for c in &contenders {
        let _ = write!(t, " {} |", label(s, c));
    }
    t += "\n|---|";
    t += &"---:|".repeat(contenders.len());
    t += "\n";
    for w in workloads {
        let _ = write!(t, "| {} |", workload_label(s, w));
        for c in &contenders {
            let cell = s.cell(c, w);
            let text = match cell {
                Some(cell) if cell.state == State::Ok => match (
                    cell.median.as_ref().and_then(pick),
                    cell.min.as_ref().and_then(pick),
                    cell.max.as_ref().and_then(pick),
                ) {
                    (Some(m), Some(lo), Some(hi)) => with_range(m, lo, hi, cell.runs.len()),
                    _ => "?".into(),
                },
                other => absent(other).into(),
            };
            let _ = write!(t, " {text} |");
        }
        t += "\n";
    }
    t
}

/// Median of `pick` for each contender divided by the same for `base`.
fn ratio_table(s: &Summary, pick: Pick, base: &str, workloads: &[&str]) -> String {
    let contenders: Vec<String> = contenders_in(s).into_iter().filter(|c| c != base).collect();
    let mut t = String::from("| workload |");
    for c in &contenders {
        let _ = write!(t, " {} |", label(s, c));
    }
    t += "\n|---|";
    t += &"---:|".repeat(contenders.len());
    t += "\n";
    for w in workloads {
        let _ = write!(t, "| {} |", workload_label(s, w));
        let b = s.figures(base, w).and_then(pick);
        for c in &contenders {
            let v = s.figures(c, w).and_then(pick);
            let text = match (v, b) {
                (Some(v), Some(b)) if b > 0.0 => ratio(v / b),
                (None, _) => absent(s.cell(c, w)).into(),
                (_, _) => "—".into(),
            };
            let _ = write!(t, " {text} |");
        }
        t += "\n";
    }
    t
}

fn contenders_in(s: &Summary) -> Vec<String> {
    s.contenders.iter().map(|c| c.id.clone()).collect()
}

fn label(s: &Summary, id: &str) -> String {
    s.contender(id)
        .map(|c| c.label.clone())
        .unwrap_or_else(|| id.to_string())
}

fn workload_label(s: &Summary, id: &str) -> String {
    s.workloads
        .iter()
        .find(|w| w.id == id)
        .map(|w| w.label.clone())
        .unwrap_or_else(|| id.to_string())
}

fn rps(f: &Figures) -> Option<f64> {
    Some(f.rps)
}
fn cpu(f: &Figures) -> Option<f64> {
    f.cpu_us_per_request
}
fn mbps(f: &Figures) -> Option<f64> {
    Some(f.bytes_per_sec / 1e6)
}
fn p99(f: &Figures) -> Option<f64> {
    Some(f.p99_us)
}
fn rss(f: &Figures) -> Option<f64> {
    f.peak_rss_bytes.map(|b| b / 1024.0 / 1024.0)
}

/// The headline: one file, served directly by bypass, by gunicorn + WhiteNoise, and through
/// nginx in front of gunicorn; nginx alone for scale.
pub fn headline(s: &Summary) -> String {
    let w = Workload::MediumCssBr.id();
    let name = workload_label(s, w);
    let base = s.figures("bypass", w).and_then(|f| Some((f.rps, cpu(f)?)));
    let mut out = format!("Serving the same file ({name}, the answer a browser gets):\n\n");
    for (id, what) in [
        ("bypass", "bypass"),
        ("gunicorn", "gunicorn + WhiteNoise"),
        ("nginx-gunicorn", "nginx → gunicorn + WhiteNoise"),
        ("nginx", "nginx alone"),
    ] {
        let line = match s
            .figures(id, w)
            .and_then(|f| Some((f.rps, cpu(f)?, f.p99_us)))
        {
            Some((r, c, p)) => {
                let vs = match base {
                    Some((br, bc)) if id != "bypass" && br > 0.0 && bc > 0.0 => format!(
                        " — {} bypass's CPU per request, {} its requests per second",
                        ratio(c / bc),
                        ratio(r / br)
                    ),
                    _ => String::new(),
                };
                format!(
                    "**{} req/s**, {} µs of server CPU per request, p99 {} µs{vs}",
                    sig3(r),
                    sig3(c),
                    sig3(p)
                )
            }
            None => {
                let cell = s.cell(id, w);
                let why = cell.map(|c| c.note.as_str()).unwrap_or("");
                format!("{} {why}", absent(cell))
            }
        };
        let _ = writeln!(out, "- {what}: {line}");
    }
    out
}

/// The whole report.
pub fn report(s: &Summary, charts: &[(String, String)]) -> String {
    let m = &s.machine;
    let mut r = format!("# Bypass comparison, {} on {}\n\n", s.started, s.host);
    let _ = writeln!(
        r,
        "{} ({} CPUs, {}), Linux {}, {}. Every server is confined to CPU {SERVER_CPU} \
         (`taskset -c {SERVER_CPU}`), bypass-load to CPU {LOAD_CPU} (one thread). {} run{} of {} s \
         per cell after {} s of warm-up{}, runs interleaved across contenders. Cells show the \
         median over the runs with the minimum–maximum beside it when they differ: that range is \
         the noise. Versions and exact commands: [SETUP.md](SETUP.md); raw bypass-load reports: \
         `raw/`.\n",
        m.cpu_model,
        m.cpus,
        m.memory,
        m.kernel,
        m.os,
        s.runs,
        if s.runs == 1 { "" } else { "s" },
        s.duration_s,
        s.warmup_s,
        if s.quick { " (`--quick`)" } else { "" }
    );
    if !s.background_cpus.is_empty() {
        let loads: Vec<String> = s
            .background_cpus
            .iter()
            .map(|b| format!("{b:.2}"))
            .collect();
        let _ = writeln!(
            r,
            "Background load before each round (CPUs kept busy by other processes while the \
             suite idled; 0 on a quiet machine): {}.{}\n",
            loads.join(", "),
            if s.background_cpus.iter().any(|&b| b > 0.2) {
                " The machine was shared: req/s and latency are depressed and noisy; CPU per \
                 request, and ratios within the run, hold up best."
            } else {
                ""
            }
        );
    }
    r += "## Headline\n\n";
    r += &headline(s);
    r += "\n";

    r += "## Contenders\n\n| contender | state | version | note |\n|---|---|---|---|\n";
    for c in &s.contenders {
        let state = match c.state {
            State::Ok | State::Overloaded => "ok",
            State::Missing => "missing",
            State::Failed => "**failed**",
        };
        let _ = writeln!(
            r,
            "| {} | {state} | {} | {} |",
            c.label,
            c.version,
            c.note.replace('|', "\\|")
        );
    }
    r += "\n## Workloads\n\n| workload | request | connections |\n|---|---|---:|\n";
    for w in &s.workloads {
        let conns = match w.rate {
            Some(rate) => format!("{} (open loop, {} req/s)", w.connections, sig3(rate)),
            None => w.connections.to_string(),
        };
        let _ = writeln!(
            r,
            "| {} | {} | {conns} |",
            w.label,
            w.detail.replace('|', "\\|")
        );
    }

    let all: Vec<&str> = s.workloads.iter().map(|w| w.id.as_str()).collect();
    let closed: Vec<&str> = all
        .iter()
        .copied()
        .filter(|w| *w != Workload::LatencyOpen.id())
        .collect();
    let sections: [(&str, &str, Pick, &[&str]); 5] = [
        ("Requests per second", "", rps, &closed),
        (
            "Server CPU per request (µs)",
            "utime + stime of every process of the contender (for the proxies: both tiers) over \
             the measured window, divided by the requests answered. Lower is better.",
            cpu,
            &all,
        ),
        ("Throughput (MB/s, heads and bodies)", "", mbps, &closed),
        (
            "Latency p99 (µs), closed loop",
            "Closed loop: each connection sends its next request when the answer arrives, so \
             this is latency at saturation.",
            p99,
            &closed,
        ),
        (
            "Peak RSS (MiB)",
            "All processes of the contender.",
            rss,
            &all,
        ),
    ];
    for (title, note, pick, ws) in sections {
        let _ = write!(r, "\n## {title}\n\n");
        if !note.is_empty() {
            let _ = write!(r, "{note}\n\n");
        }
        r += &metric_table(s, pick, ws);
    }

    let open = [Workload::LatencyOpen.id()];
    if let Some(w) = s.workloads.iter().find(|w| w.id == open[0]) {
        let _ = write!(
            r,
            "\n## Open-loop latency\n\n{} at {} req/s. Latency counts from each request's intended \
             send time (coordinated omission corrected), so a contender that cannot keep up shows \
             it here; `unsent` is the backlog left at the end.\n\n",
            w.detail,
            w.rate.map(sig3).unwrap_or_else(|| "?".into())
        );
        r += "| contender | delivered req/s | p50 µs | p99 µs | p99.9 µs | unsent |\n";
        r += "|---|---:|---:|---:|---:|---:|\n";
        for c in contenders_in(s) {
            let Some(cell) = s.cell(&c, open[0]) else {
                continue;
            };
            match cell.ok() {
                Some(f) => {
                    let _ = writeln!(
                        r,
                        "| {} | {} | {} | {} | {} | {} |",
                        label(s, &c),
                        sig3(f.rps),
                        sig3(f.p50_us),
                        sig3(f.p99_us),
                        sig3(f.p999_us),
                        sig3(f.unsent)
                    );
                }
                None => {
                    let _ = writeln!(r, "| {} | {} | | | | |", label(s, &c), absent(Some(cell)));
                }
            }
        }
    }

    r += "\n## Against nginx\n\nRequests per second relative to nginx (higher is better):\n\n";
    r += &ratio_table(s, rps, "nginx", &closed);
    r += "\nServer CPU per request relative to nginx (lower is better):\n\n";
    r += &ratio_table(s, cpu, "nginx", &all);
    r += "\n## Against the ceiling\n\nThe ceiling answers every request head with one \
          pre-built response of the same size, on io_uring, with no parsing, no file system and \
          no HTTP semantics: the floor of what the kernel and loopback cost here. Server CPU per \
          request as a multiple of the ceiling's:\n\n";
    r += &ratio_table(s, cpu, "ceiling", &all);
    r += "\nRequests per second as a fraction of the ceiling's:\n\n";
    r += &ratio_table(s, rps, "ceiling", &closed);

    let mut problems = String::new();
    for c in &s.cells {
        if c.state != State::Ok {
            let _ = writeln!(
                problems,
                "- {} on {}: {} — {}",
                label(s, &c.contender),
                workload_label(s, &c.workload),
                absent(Some(c)),
                c.note
            );
        }
    }
    if !problems.is_empty() {
        r += "\n## Missing, failed, overloaded\n\nNothing is faked: a contender whose feature \
              is not built is missing; one that did not start, died, or answered wrongly (status \
              or length) failed; one that cannot sustain the open-loop rate is overloaded.\n\n";
        r += &problems;
    }
    if !charts.is_empty() {
        r += "\n## Charts\n\n";
        for (file, title) in charts {
            let _ = write!(r, "![{title}]({file})\n\n");
        }
    }
    r
}

/// SETUP.md: the machine, versions, and every command, so the run can be repeated.
pub fn setup(s: &Summary, env: &Env, dir: &Path) -> String {
    let m = &s.machine;
    let mut r = String::from("# Setup\n\n");
    let _ = writeln!(r, "- started: {} ({:.0} s in all)", s.started, s.elapsed_s);
    let _ = writeln!(r, "- host: {}", s.host);
    let _ = writeln!(r, "- CPU: {} ({} CPUs)", m.cpu_model, m.cpus);
    let _ = writeln!(r, "- memory: {}", m.memory);
    let _ = writeln!(r, "- kernel: Linux {}", m.kernel);
    let _ = writeln!(r, "- OS: {}", m.os);
    let _ = writeln!(r, "- bypass revision: {}", s.git);
    let _ = writeln!(
        r,
        "- background load before each round (CPUs busy with other processes): {:?}",
        s.background_cpus
    );
    let _ = writeln!(
        r,
        "- suite: {}{} run(s) per cell, {} s measured after {} s warm-up",
        if s.quick { "`--quick`, " } else { "" },
        s.runs,
        s.duration_s,
        s.warmup_s
    );
    let _ = writeln!(
        r,
        "- pinning: every server process `taskset -c {SERVER_CPU}` (nginx's master and worker, \
         gunicorn's arbiter and workers, both tiers of a proxy); bypass-load `taskset -c \
         {LOAD_CPU}` with one thread"
    );
    let _ = writeln!(
        r,
        "- tree: a real Django `collectstatic` (django.contrib.admin and the demo app, \
         WhiteNoise's CompressedManifestStaticFilesStorage) built by `scripts/collectstatic` in \
         `{}`",
        env.tree.display()
    );
    r += "\n## Versions\n\n| contender | version |\n|---|---|\n";
    for c in &s.contenders {
        let _ = writeln!(r, "| {} | {} |", c.label, c.version);
    }
    r += "\n## Contenders' commands\n\n";
    for c in &s.contenders {
        let _ = writeln!(r, "{}:\n", c.label);
        if c.commands.is_empty() {
            let _ = writeln!(r, "    (not started: {})\n", c.note);
        }
        for cmd in &c.commands {
            let _ = writeln!(r, "    {cmd}");
        }
        r += "\n";
    }
    let mut confs: Vec<_> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "conf"))
                .collect()
        })
        .unwrap_or_default();
    confs.sort();
    for conf in confs {
        let name = conf.file_name().unwrap_or_default().to_string_lossy();
        let text = std::fs::read_to_string(&conf).unwrap_or_default();
        let _ = write!(r, "`{name}`:\n\n```nginx\n{text}```\n\n");
    }
    r += "## Load commands (first run of each cell; later runs differ only in the file name)\n\n";
    for w in Workload::ALL {
        for c in Contender::ALL {
            if let Some(cmd) = s.cell(c.id(), w.id()).and_then(|c| c.command.as_ref()) {
                let _ = writeln!(r, "    {cmd}");
            }
        }
    }
    let _ = write!(
        r,
        "\n## Repeat\n\n    scripts/compare{}\n",
        if s.quick { " --quick" } else { "" }
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::tests::{cell, summary};
    use crate::summary::{ContenderInfo, WorkloadInfo};

    #[test]
    fn numbers_have_three_significant_digits() {
        assert_eq!(sig3(0.0), "0");
        assert_eq!(sig3(1.234), "1.23");
        assert_eq!(sig3(12.34), "12.3");
        assert_eq!(sig3(123.4), "123");
        assert_eq!(sig3(4567.0), "4567");
        assert_eq!(sig3(45_678.0), "45.7k");
        assert_eq!(sig3(123_456.0), "123k");
        assert_eq!(sig3(23_000_000.0), "23.0M");
        assert_eq!(sig3(0.01234), "0.012");
        assert_eq!(with_range(2.0, 1.0, 3.0, 3), "2.00 (1.00–3.00)");
        assert_eq!(with_range(2.0, 2.0, 2.0, 3), "2.00");
        assert_eq!(ratio(1.234), "1.23×");
        assert_eq!(ratio(31.6), "32×");
    }

    fn sample() -> Summary {
        let mut s = summary(vec![
            cell(
                "bypass",
                "medium-css-br",
                &[(40_000.0, 10.0), (42_000.0, 11.0)],
            ),
            cell(
                "nginx",
                "medium-css-br",
                &[(30_000.0, 20.0), (31_000.0, 21.0)],
            ),
            cell(
                "gunicorn",
                "medium-css-br",
                &[(1_000.0, 500.0), (1_100.0, 520.0)],
            ),
            cell(
                "ceiling",
                "medium-css-br",
                &[(80_000.0, 5.0), (81_000.0, 5.0)],
            ),
        ]);
        let mut missing = crate::summary::Cell::new("bypass-nocache", "medium-css-br");
        missing.fail(State::Missing, "bypass: invalid option '--cache-size'");
        s.cells.push(missing);
        for (id, label, state) in [
            ("bypass", "bypass", State::Ok),
            ("bypass-nocache", "bypass no-cache", State::Missing),
            ("nginx", "nginx", State::Ok),
            ("gunicorn", "gunicorn+WhiteNoise", State::Ok),
            ("nginx-gunicorn", "nginx→gunicorn", State::Failed),
            ("ceiling", "ceiling", State::Ok),
        ] {
            s.contenders.push(ContenderInfo {
                id: id.into(),
                label: label.into(),
                state,
                note: String::new(),
                version: "1".into(),
                commands: vec![],
            });
        }
        s.workloads.push(WorkloadInfo {
            id: "medium-css-br".into(),
            label: "~23 KB CSS, br".into(),
            detail: "GET /static/x.css".into(),
            connections: 32,
            rate: None,
        });
        s
    }

    #[test]
    fn tables_show_medians_ranges_ratios_and_absences() {
        let s = sample();
        let t = metric_table(&s, rps, &["medium-css-br"]);
        assert!(
            t.starts_with("| workload | bypass | bypass no-cache | nginx |"),
            "{t}"
        );
        assert!(
            t.contains("| ~23 KB CSS, br | 41.0k (40.0k–42.0k) | missing | 30.5k"),
            "{t}"
        );
        // nginx→gunicorn has no cell on it: not applicable.
        assert!(t.contains("| n/a |"), "{t}");
        let t = ratio_table(&s, cpu, "nginx", &["medium-css-br"]);
        assert!(
            !t.contains("| nginx |"),
            "the base is not its own column: {t}"
        );
        // bypass 10.5 / nginx 20.5; gunicorn 510 / 20.5.
        assert!(t.contains("| 0.51× | missing | 25× |"), "{t}");
        let t = ratio_table(&s, rps, "ceiling", &["medium-css-br"]);
        assert!(t.contains("| 0.51× |"), "{t}");
    }

    #[test]
    fn headline_compares_the_same_file_three_ways() {
        let h = headline(&sample());
        assert!(h.contains("- bypass: **41.0k req/s**, 10.5 µs"), "{h}");
        assert!(
            h.contains("- gunicorn + WhiteNoise: **1050 req/s**, 510 µs of server CPU per request, p99 400 µs — 49× bypass's CPU per request, 0.03× its requests per second"),
            "{h}"
        );
        assert!(h.contains("- nginx → gunicorn + WhiteNoise: n/a"), "{h}");
    }

    #[test]
    fn report_lists_what_is_missing_and_links_charts() {
        let r = report(&sample(), &[("cpu.svg".into(), "CPU per request".into())]);
        assert!(r.contains("## Missing, failed, overloaded"), "{r}");
        assert!(r.contains("bypass no-cache on ~23 KB CSS, br: missing — bypass: invalid option"));
        assert!(r.contains("![CPU per request](cpu.svg)"));
        assert!(r.contains("| nginx→gunicorn | **failed** |"));
    }
}
