//! `bypass-load compare BASE.json NEW.json`: a table of deltas between two
//! runs, and exit code 1 when NEW regressed beyond the threshold — a CI gate.

use std::ffi::OsString;
use std::path::PathBuf;

use lexopt::prelude::*;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::report::SCHEMA_VERSION;
use crate::units::parse_percent;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
}

/// (label, JSON pointer, which way is better, whether it gates).
/// p99.9 and max are shown but not gated: a handful of samples decides them,
/// so they fail CI on noise.
const METRICS: &[(&str, &str, Better, bool)] = &[
    ("req/s", "/rps", Better::Higher, true),
    ("bytes/s", "/bytes_per_sec", Better::Higher, false),
    ("latency p50 (us)", "/latency_us/p50", Better::Lower, true),
    ("latency p90 (us)", "/latency_us/p90", Better::Lower, true),
    ("latency p99 (us)", "/latency_us/p99", Better::Lower, true),
    (
        "latency p99.9 (us)",
        "/latency_us/p999",
        Better::Lower,
        false,
    ),
    ("latency max (us)", "/latency_us/max", Better::Lower, false),
    (
        "latency mean (us)",
        "/latency_us/mean",
        Better::Lower,
        false,
    ),
    (
        "server CPU us/request",
        "/server/cpu_us_per_request",
        Better::Lower,
        true,
    ),
    (
        "server peak RSS (bytes)",
        "/server/peak_rss_bytes",
        Better::Lower,
        true,
    ),
];

pub fn main(args: Vec<OsString>) -> Result<i32> {
    let mut p = lexopt::Parser::from_args(args);
    let mut files: Vec<PathBuf> = Vec::new();
    let mut threshold = 0.05;
    while let Some(arg) = p.next()? {
        match arg {
            Long("max-regression") => {
                let v = crate::cli::value_str(&mut p)?;
                threshold = parse_percent(&v).map_err(|e| e.context("--max-regression"))?;
            }
            Value(v) => files.push(v.into()),
            Short('h') | Long("help") => {
                println!("usage: bypass-load compare BASE.json NEW.json [--max-regression 5%]");
                return Ok(0);
            }
            _ => return Err(arg.unexpected().into()),
        }
    }
    let [base, new] = files.as_slice() else {
        return Err(Error::new("compare takes two files: BASE.json NEW.json"));
    };
    let (base, new) = (load(base)?, load(new)?);
    let (table, regressions) = compare(&base, &new, threshold);
    print!("{table}");
    if regressions.is_empty() {
        println!("no regression beyond {:.1}%", threshold * 100.0);
        Ok(0)
    } else {
        println!(
            "REGRESSION beyond {:.1}%: {}",
            threshold * 100.0,
            regressions.join(", ")
        );
        Ok(1)
    }
}

fn load(path: &PathBuf) -> Result<Value> {
    let what = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| Error::new(format!("{what}: {e}")))?;
    let doc: Value =
        serde_json::from_str(&text).map_err(|e| Error::new(format!("{what}: not JSON: {e}")))?;
    match doc.get("schema_version").and_then(Value::as_u64) {
        Some(v) if v <= SCHEMA_VERSION => {}
        Some(v) => {
            return Err(Error::new(format!(
                "{what}: schema_version {v} is newer than this tool's {SCHEMA_VERSION}"
            )));
        }
        None => {
            return Err(Error::new(format!(
                "{what}: not a bypass-load report (no schema_version)"
            )));
        }
    }
    if doc.get("rps").and_then(Value::as_f64).is_none() {
        return Err(Error::new(format!(
            "{what}: not a bypass-load run report (no rps)"
        )));
    }
    Ok(doc)
}

/// The table, and the names of gated metrics that regressed.
pub fn compare(base: &Value, new: &Value, threshold: f64) -> (String, Vec<String>) {
    let mut out = format!(
        "{:<26}{:>14}{:>14}{:>10}  verdict\n",
        "metric", "base", "new", "change"
    );
    let mut regressions = Vec::new();
    let num = |doc: &Value, ptr: &str| doc.pointer(ptr).and_then(Value::as_f64);
    for &(label, ptr, better, gated) in METRICS {
        let (Some(b), Some(n)) = (num(base, ptr), num(new, ptr)) else {
            continue;
        };
        let change = if b != 0.0 {
            (n - b) / b
        } else if n == 0.0 {
            0.0
        } else {
            f64::INFINITY
        };
        let worse = match better {
            Better::Higher => -change,
            Better::Lower => change,
        };
        let verdict = if !gated {
            "info"
        } else if worse > threshold {
            regressions.push(label.to_string());
            "REGRESSION"
        } else if worse < -threshold {
            "better"
        } else {
            "ok"
        };
        out += &format!(
            "{label:<26}{:>14}{:>14}{:>9.1}%  {verdict}\n",
            fmt(b),
            fmt(n),
            change * 100.0
        );
    }
    // Errors: any error where there were none is a regression; otherwise
    // compare error rates with the same threshold.
    let rate = |doc: &Value| {
        let e = num(doc, "/errors/total").unwrap_or(0.0);
        let r = num(doc, "/requests").unwrap_or(0.0);
        (e, if r + e > 0.0 { e / (r + e) } else { 0.0 })
    };
    let ((be, br), (ne, nr)) = (rate(base), rate(new));
    let verdict = if (be == 0.0 && ne > 0.0) || (be > 0.0 && nr > br * (1.0 + threshold)) {
        regressions.push("errors".to_string());
        "REGRESSION"
    } else {
        "ok"
    };
    out += &format!(
        "{:<26}{:>14}{:>14}{:>10}  {verdict}\n",
        "errors",
        fmt(be),
        fmt(ne),
        ""
    );
    (out, regressions)
}

fn fmt(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(rps: f64, p99: u64, errors: u64) -> Value {
        json!({"schema_version": 1, "rps": rps, "requests": 1000, "bytes_per_sec": 1.0,
               "latency_us": {"p50": 100, "p90": 200, "p99": p99, "p999": 1, "max": 1, "mean": 1.0},
               "errors": {"total": errors}})
    }

    #[test]
    fn flags_regressions_beyond_threshold_only() {
        let (_, r) = compare(&doc(1000.0, 500, 0), &doc(960.0, 520, 0), 0.05);
        assert!(r.is_empty(), "{r:?}");
        let (t, r) = compare(&doc(1000.0, 500, 0), &doc(900.0, 600, 0), 0.05);
        assert_eq!(r, ["req/s", "latency p99 (us)"], "{t}");
        assert!(t.contains("-10.0%"), "{t}");
        let (_, r) = compare(&doc(1000.0, 500, 0), &doc(1000.0, 500, 3), 0.05);
        assert_eq!(r, ["errors"]);
    }
}
