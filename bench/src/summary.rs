//! `summary.json`: every contender and workload of a suite run, each cell's figures per run
//! (taken from bypass-load's JSON reports) and their median, minimum and maximum. The report,
//! the charts and the CI gate are all computed from this file.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::suite::GATE_WORKLOADS;

pub const SCHEMA: &str = "bypass-bench summary 1";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Measured.
    Ok,
    /// Not available in this build or on this machine; never faked.
    Missing,
    /// Did not start, answered wrongly, died or erred during a run.
    Failed,
    /// Open loop only: cannot sustain the rate (its closed-loop peak is below it, or requests
    /// were left unsent), so latency at that rate grows without bound and is not reported.
    Overloaded,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContenderInfo {
    pub id: String,
    pub label: String,
    pub state: State,
    /// Why it is missing or failed; empty when ok.
    pub note: String,
    pub version: String,
    /// The exact command lines that started it.
    pub commands: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkloadInfo {
    pub id: String,
    pub label: String,
    /// The request(s), in words.
    pub detail: String,
    pub connections: u32,
    /// Open loop: requests per second asked for (half of nginx's peak on the small CSS).
    pub rate: Option<f64>,
}

/// What one run measured, from bypass-load's report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub rps: f64,
    pub bytes_per_sec: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub cpu_us_per_request: Option<f64>,
    pub peak_rss_bytes: Option<f64>,
    pub requests: f64,
    pub errors: f64,
    /// Open loop: requests due that never left (the rate was not delivered).
    pub unsent: f64,
    /// Open loop: the rate asked for.
    #[serde(default)]
    pub target_rate: Option<f64>,
}

impl Figures {
    /// Reads a bypass-load run report.
    pub fn from_report(doc: &Value) -> Result<Figures, String> {
        let num = |ptr: &str| doc.pointer(ptr).and_then(Value::as_f64);
        let need = |ptr: &str| num(ptr).ok_or_else(|| format!("report has no {ptr}"));
        Ok(Figures {
            rps: need("/rps")?,
            bytes_per_sec: need("/bytes_per_sec")?,
            p50_us: need("/latency_us/p50")?,
            p90_us: need("/latency_us/p90")?,
            p99_us: need("/latency_us/p99")?,
            p999_us: need("/latency_us/p999")?,
            cpu_us_per_request: num("/server/cpu_us_per_request"),
            peak_rss_bytes: num("/server/peak_rss_bytes"),
            requests: need("/requests")?,
            errors: need("/errors/total")?,
            unsent: num("/unsent").unwrap_or(0.0),
            target_rate: num("/target_rate"),
        })
    }

    /// Applies `f` field by field over several runs (`None` where no run has the field).
    fn combine(runs: &[&Figures], f: impl Fn(&mut Vec<f64>) -> f64) -> Figures {
        let all = |get: &dyn Fn(&Figures) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(|r| get(r)).collect();
            f(&mut v)
        };
        let some = |get: &dyn Fn(&Figures) -> Option<f64>| {
            let mut v: Vec<f64> = runs.iter().filter_map(|r| get(r)).collect();
            (!v.is_empty()).then(|| f(&mut v))
        };
        Figures {
            rps: all(&|r| r.rps),
            bytes_per_sec: all(&|r| r.bytes_per_sec),
            p50_us: all(&|r| r.p50_us),
            p90_us: all(&|r| r.p90_us),
            p99_us: all(&|r| r.p99_us),
            p999_us: all(&|r| r.p999_us),
            cpu_us_per_request: some(&|r| r.cpu_us_per_request),
            peak_rss_bytes: some(&|r| r.peak_rss_bytes),
            requests: all(&|r| r.requests),
            errors: all(&|r| r.errors),
            unsent: all(&|r| r.unsent),
            target_rate: some(&|r| r.target_rate),
        }
    }
}

pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn min(v: &mut [f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(v: &mut [f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Run {
    /// The raw bypass-load report, relative to the results directory.
    pub raw: String,
    pub figures: Figures,
}

/// One contender on one workload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cell {
    pub contender: String,
    pub workload: String,
    pub state: State,
    pub note: String,
    /// Content-Encoding of the answers (the ~23 KB CSS: br from bypass, gzip from nginx-light).
    pub encoding: Option<String>,
    pub runs: Vec<Run>,
    /// The exact bypass-load command of the first run (later runs differ in the file name).
    pub command: Option<String>,
    pub median: Option<Figures>,
    pub min: Option<Figures>,
    pub max: Option<Figures>,
}

impl Cell {
    pub fn new(contender: &str, workload: &str) -> Cell {
        Cell {
            contender: contender.into(),
            workload: workload.into(),
            state: State::Ok,
            note: String::new(),
            encoding: None,
            runs: Vec::new(),
            command: None,
            median: None,
            min: None,
            max: None,
        }
    }

    pub fn fail(&mut self, state: State, note: impl Into<String>) {
        if self.state == State::Ok {
            self.state = state;
            self.note = note.into();
        }
    }

    /// Recomputes median, min and max from the runs.
    pub fn aggregate(&mut self) {
        let runs: Vec<&Figures> = self.runs.iter().map(|r| &r.figures).collect();
        if runs.is_empty() {
            (self.median, self.min, self.max) = (None, None, None);
            return;
        }
        self.median = Some(Figures::combine(&runs, |v| median(v)));
        self.min = Some(Figures::combine(&runs, |v| min(v)));
        self.max = Some(Figures::combine(&runs, |v| max(v)));
    }

    /// The median figures, when the cell was measured.
    pub fn ok(&self) -> Option<&Figures> {
        (self.state == State::Ok)
            .then_some(self.median.as_ref())
            .flatten()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    pub memory: String,
    pub kernel: String,
    pub os: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub schema: String,
    /// `YYYY-MM-DD HH:MM:SS UTC` of the start.
    pub started: String,
    pub host: String,
    pub machine: Machine,
    pub quick: bool,
    pub runs: u32,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub git: String,
    pub contenders: Vec<ContenderInfo>,
    pub workloads: Vec<WorkloadInfo>,
    pub cells: Vec<Cell>,
    /// How long the suite took, seconds.
    pub elapsed_s: f64,
    /// Background load before each round: CPUs kept busy by other processes while the
    /// suite's own were idle (0 on a quiet machine).
    #[serde(default)]
    pub background_cpus: Vec<f64>,
}

impl Summary {
    pub fn cell(&self, contender: &str, workload: &str) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.contender == contender && c.workload == workload)
    }

    pub fn cell_mut(&mut self, contender: &str, workload: &str) -> Option<&mut Cell> {
        self.cells
            .iter_mut()
            .find(|c| c.contender == contender && c.workload == workload)
    }

    /// Median figures of a measured cell.
    pub fn figures(&self, contender: &str, workload: &str) -> Option<&Figures> {
        self.cell(contender, workload).and_then(Cell::ok)
    }

    pub fn contender(&self, id: &str) -> Option<&ContenderInfo> {
        self.contenders.iter().find(|c| c.id == id)
    }

    /// The CI gate's figure: bypass's server CPU per request relative to nginx's in the same
    /// run, as the geometric mean over the gate workloads both were measured on. Ratios within
    /// one run cancel most of what a noisy or different machine changes.
    pub fn gate_figure(&self) -> Option<GateFigure> {
        let mut logs = Vec::new();
        let mut used = Vec::new();
        for w in GATE_WORKLOADS {
            let cpu = |c: &str| self.figures(c, w.id()).and_then(|f| f.cpu_us_per_request);
            if let (Some(b), Some(n)) = (cpu("bypass"), cpu("nginx"))
                && b > 0.0
                && n > 0.0
            {
                logs.push((b / n).ln());
                used.push(w.id().to_string());
            }
        }
        (!logs.is_empty()).then(|| GateFigure {
            ratio: (logs.iter().sum::<f64>() / logs.len() as f64).exp(),
            workloads: used,
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct GateFigure {
    /// bypass CPU/request divided by nginx CPU/request (geometric mean).
    pub ratio: f64,
    pub workloads: Vec<String>,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub fn figures(rps: f64, cpu: f64) -> Figures {
        Figures {
            rps,
            bytes_per_sec: rps * 1000.0,
            p50_us: 100.0,
            p90_us: 200.0,
            p99_us: 400.0,
            p999_us: 900.0,
            cpu_us_per_request: Some(cpu),
            peak_rss_bytes: Some(8e6),
            requests: rps * 2.0,
            errors: 0.0,
            unsent: 0.0,
            target_rate: None,
        }
    }

    pub fn summary(cells: Vec<Cell>) -> Summary {
        Summary {
            schema: SCHEMA.into(),
            started: "2026-01-01 00:00:00 UTC".into(),
            host: "h".into(),
            machine: Machine {
                cpu_model: "cpu".into(),
                cpus: 2,
                memory: "1 GiB".into(),
                kernel: "6.1".into(),
                os: "Debian".into(),
            },
            quick: false,
            runs: 3,
            duration_s: 3.0,
            warmup_s: 0.5,
            git: "abc".into(),
            contenders: Vec::new(),
            workloads: Vec::new(),
            cells,
            elapsed_s: 1.0,
            background_cpus: vec![0.01],
        }
    }

    pub fn cell(contender: &str, workload: &str, runs: &[(f64, f64)]) -> Cell {
        let mut c = Cell::new(contender, workload);
        c.runs = runs
            .iter()
            .enumerate()
            .map(|(i, &(rps, cpu))| Run {
                raw: format!("raw/{workload}--{contender}--run{}.json", i + 1),
                figures: figures(rps, cpu),
            })
            .collect();
        c.aggregate();
        c
    }

    #[test]
    fn medians_and_ranges() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&mut []).is_nan());
        let c = cell(
            "bypass",
            "small-css",
            &[(100.0, 5.0), (300.0, 4.0), (200.0, 6.0)],
        );
        let (m, lo, hi) = (c.median.unwrap(), c.min.unwrap(), c.max.unwrap());
        assert_eq!((m.rps, lo.rps, hi.rps), (200.0, 100.0, 300.0));
        assert_eq!(
            (
                m.cpu_us_per_request,
                lo.cpu_us_per_request,
                hi.cpu_us_per_request
            ),
            (Some(5.0), Some(4.0), Some(6.0))
        );
    }

    #[test]
    fn reads_a_bypass_load_report() {
        let doc = json!({
            "rps": 1000.5, "bytes_per_sec": 2e6, "requests": 2001, "unsent": 0,
            "latency_us": {"p50": 10, "p90": 20, "p99": 30, "p999": 40},
            "errors": {"total": 0},
            "server": {"cpu_us_per_request": 12.5, "peak_rss_bytes": 4096}
        });
        let f = Figures::from_report(&doc).unwrap();
        assert_eq!(
            (f.rps, f.p999_us, f.cpu_us_per_request),
            (1000.5, 40.0, Some(12.5))
        );
        assert_eq!(f.peak_rss_bytes, Some(4096.0));
        let no_server = json!({
            "rps": 1.0, "bytes_per_sec": 1.0, "requests": 1,
            "latency_us": {"p50": 1, "p90": 1, "p99": 1, "p999": 1}, "errors": {"total": 0}
        });
        assert_eq!(
            Figures::from_report(&no_server).unwrap().cpu_us_per_request,
            None
        );
        assert!(Figures::from_report(&json!({"rps": 1.0})).is_err());
    }

    #[test]
    fn gate_figure_is_the_geometric_mean_of_cpu_ratios() {
        let s = summary(vec![
            cell("bypass", "small-css", &[(1.0, 2.0)]),
            cell("nginx", "small-css", &[(1.0, 4.0)]),
            cell("bypass", "jpeg", &[(1.0, 8.0)]),
            cell("nginx", "jpeg", &[(1.0, 4.0)]),
            // Not a gate workload: ignored.
            cell("bypass", "media-20mb", &[(1.0, 100.0)]),
            cell("nginx", "media-20mb", &[(1.0, 1.0)]),
            // nginx missing here: ignored.
            cell("bypass", "medium-css-br", &[(1.0, 100.0)]),
        ]);
        let g = s.gate_figure().unwrap();
        assert!((g.ratio - 1.0).abs() < 1e-12, "{g:?}");
        assert_eq!(g.workloads, ["small-css", "jpeg"]);
        let mut failed = s.clone();
        for c in &mut failed.cells {
            if c.contender == "nginx" {
                c.fail(State::Failed, "did not start");
            }
        }
        assert_eq!(failed.gate_figure(), None);
    }
}
