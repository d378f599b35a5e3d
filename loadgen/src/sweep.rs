//! `bypass-load sweep URL --slo p99=5ms`: steps through open-loop rates and
//! reports the highest that meets the SLO — this host's capacity for this mix.

use std::ffi::OsString;
use std::time::Duration;

use serde_json::{Value, json};

use crate::cli::{Arg, RunArgs, USAGE, next, value_str, write_json};
use crate::error::{Error, Result};
use crate::report::{Latency, Report, SCHEMA_VERSION};
use crate::units::{fmt_us, parse_count, parse_duration, parse_rate};

/// Latency limits, microseconds, by statistic name (`p99`, `max`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Slo(pub Vec<(String, f64)>);

impl Slo {
    /// Parses `p99=5ms` or `p50=1ms,p99=5ms`.
    pub fn parse(s: &str) -> Result<Slo> {
        let mut out = Vec::new();
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| Error::new(format!("--slo {s:?}: expected e.g. p99=5ms")))?;
            let k = k.trim();
            if !["p50", "p90", "p99", "p999", "p9999", "max", "mean"].contains(&k) {
                return Err(Error::new(format!(
                    "--slo: unknown statistic {k:?} (p50, p90, p99, p999, p9999, max, mean)"
                )));
            }
            let d = parse_duration(v).map_err(|e| e.context("--slo"))?;
            out.push((k.to_string(), d.as_secs_f64() * 1e6));
        }
        Ok(Slo(out))
    }

    fn get(l: &Latency, k: &str) -> f64 {
        match k {
            "p50" => l.p50 as f64,
            "p90" => l.p90 as f64,
            "p99" => l.p99 as f64,
            "p999" => l.p999 as f64,
            "p9999" => l.p9999 as f64,
            "max" => l.max as f64,
            _ => l.mean,
        }
    }

    /// Whether a step met the SLO: latency within limits, no errors, and the
    /// rate actually delivered (no backlog, at least 95% of the target).
    pub fn met(&self, r: &Report, rate: f64) -> bool {
        let l = r.latency();
        r.stats.requests > 0
            && self.0.iter().all(|(k, limit)| Slo::get(&l, k) <= *limit)
            && r.stats.errors.total() == 0
            && r.stats.unsent == 0
            && r.rps() >= 0.95 * rate
    }

    fn to_json(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(k, v)| (format!("{k}_us"), json!(v)))
                .collect(),
        )
    }
}

pub fn main(args: Vec<OsString>) -> Result<i32> {
    let mut p = lexopt::Parser::from_args(args);
    let mut a = RunArgs::default();
    let (mut slo, mut from, mut to, mut steps) = (None, None, None, 10u64);
    while let Some(arg) = next(&mut p)? {
        if a.take(&arg, &mut p)? {
            continue;
        }
        let name = match &arg {
            Arg::Long(l) => l.as_str(),
            Arg::Short('h') => "help",
            _ => return Err(arg.unexpected()),
        };
        match name {
            "slo" => slo = Some(Slo::parse(&value_str(&mut p)?)?),
            "from" => {
                from = Some(parse_rate(&value_str(&mut p)?).map_err(|e| e.context("--from"))?)
            }
            "to" => to = Some(parse_rate(&value_str(&mut p)?).map_err(|e| e.context("--to"))?),
            "steps" => {
                steps = parse_count(&value_str(&mut p)?).map_err(|e| e.context("--steps"))?;
                if steps > 1000 {
                    return Err(Error::new("--steps: at most 1000"));
                }
            }
            "help" => {
                println!(
                    "{USAGE}\n\nsweep: each step runs -d (default 5s) after --warmup (default 1s) at one rate;\nit stops after two consecutive steps miss the SLO."
                );
                return Ok(0);
            }
            _ => return Err(arg.unexpected()),
        }
    }
    let slo = slo.ok_or_else(|| Error::new("sweep needs --slo, e.g. --slo p99=5ms"))?;
    if a.rate.is_some() {
        return Err(Error::new(
            "sweep chooses the rates; use --from/--to instead of --rate",
        ));
    }
    if a.requests.is_some() {
        return Err(Error::new("sweep steps are timed; use -d, not -n"));
    }
    a.duration = a.duration.or(Some(Duration::from_secs(5)));
    if a.warmup.is_zero() {
        a.warmup = Duration::from_secs(1);
    }
    a.quiet = true;
    let json_path = a.json.take();

    let to = match to {
        Some(t) => t,
        None => {
            // No ceiling given: measure the closed-loop maximum and sweep up to it.
            let (plan, info) = a.plan()?;
            let r = a.execute(plan, info)?;
            eprintln!(
                "bypass-load: closed-loop maximum {:.0} req/s; sweeping up to it",
                r.rps()
            );
            r.rps().max(1.0)
        }
    };
    let from = from.unwrap_or(to / steps as f64);
    if from > to {
        return Err(Error::new(format!("--from {from} is above --to {to}")));
    }
    println!(
        "{:>12}{:>12}{:>10}{:>10}{:>10}{:>8}  SLO",
        "rate", "achieved", "p50", "p99", "p99.9", "errors"
    );
    let mut results = Vec::new();
    let mut capacity: Option<f64> = None;
    let mut misses = 0;
    for i in 0..steps {
        let rate = if steps == 1 {
            to
        } else {
            from + (to - from) * i as f64 / (steps - 1) as f64
        };
        let rate = (rate * 100.0).round() / 100.0;
        let mut step = a.clone();
        step.rate = Some(rate);
        let (plan, info) = step.plan()?;
        let r = step.execute(plan, info)?;
        let ok = slo.met(&r, rate);
        let l = r.latency();
        println!(
            "{:>12.1}{:>12.1}{:>10}{:>10}{:>10}{:>8}  {}",
            rate,
            r.rps(),
            fmt_us(l.p50 as f64),
            fmt_us(l.p99 as f64),
            fmt_us(l.p999 as f64),
            r.stats.errors.total() + r.stats.unsent,
            if ok { "met" } else { "MISSED" }
        );
        results.push(json!({"target_rate": rate, "slo_met": ok, "report": r.to_json()}));
        if ok {
            capacity = Some(capacity.map_or(rate, |c: f64| c.max(rate)));
            misses = 0;
        } else {
            misses += 1;
            if misses == 2 {
                break;
            }
        }
    }
    match capacity {
        Some(c) => println!("capacity: {c:.1} req/s meets {}", describe(&slo)),
        None => println!("capacity: no rate tried meets {}", describe(&slo)),
    }
    if let Some(path) = &json_path {
        let doc = json!({
            "schema_version": SCHEMA_VERSION,
            "kind": "sweep",
            "slo": slo.to_json(),
            "from": from,
            "to": to,
            "steps": steps,
            "capacity_rps": capacity,
            "results": results,
        });
        write_json(path, &doc)?;
    }
    Ok(if capacity.is_some() { 0 } else { 1 })
}

fn describe(slo: &Slo) -> String {
    slo.0
        .iter()
        .map(|(k, v)| format!("{k} <= {}", fmt_us(*v)))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_slos() {
        let s = Slo::parse("p99=5ms,p50=500us").unwrap();
        assert_eq!(
            s.0,
            [("p99".to_string(), 5000.0), ("p50".to_string(), 500.0)]
        );
        assert!(Slo::parse("p98=1ms").is_err());
        assert!(Slo::parse("p99").is_err());
        assert!(Slo::parse("p99=fast").is_err());
    }
}
