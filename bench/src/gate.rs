//! The CI gate: bypass's server CPU per request as a ratio to nginx's *in the same run*,
//! compared with the same ratio in the committed reference run. Ratios taken within one run
//! cancel most of what differs between machines and moments; the gate fails only when the ratio
//! grew by the threshold (1.5× by default), far beyond the run-to-run noise (a few percent to
//! ~20% for a one-run `--quick` suite), and never because a contender is missing.

use std::path::{Path, PathBuf};

use crate::summary::Summary;

/// Fail at this growth of the ratio.
pub const DEFAULT_THRESHOLD: f64 = 1.5;

#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub pass: bool,
    pub text: String,
}

/// Reads `summary.json` from a results directory or a path to the file itself.
pub fn load(path: &Path) -> Result<Summary, String> {
    let file: PathBuf = if path.is_dir() {
        path.join("summary.json")
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))
}

pub fn gate(reference: &Summary, new: &Summary, threshold: f64) -> Verdict {
    let (Some(r), Some(n)) = (reference.gate_figure(), new.gate_figure()) else {
        let whose = if reference.gate_figure().is_none() {
            "the reference run"
        } else {
            "this run"
        };
        return Verdict {
            pass: true,
            text: format!(
                "gate: not gated: {whose} has no CPU per request of both bypass and nginx \
                 (one of them is missing or failed)"
            ),
        };
    };
    let change = n.ratio / r.ratio;
    let pass = change < threshold;
    Verdict {
        pass,
        text: format!(
            "gate: bypass/nginx server CPU per request: {:.3} now ({}), {:.3} in the reference \
             ({}, {}): {:.2}× the reference, {} (fails at {:.2}×)",
            n.ratio,
            n.workloads.join(", "),
            r.ratio,
            reference.started,
            reference.host,
            change,
            if pass { "ok" } else { "REGRESSION" },
            threshold
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::State;
    use crate::summary::tests::{cell, summary};

    fn run(bypass_cpu: f64, nginx_cpu: f64) -> Summary {
        summary(vec![
            cell("bypass", "small-css", &[(1.0, bypass_cpu)]),
            cell("nginx", "small-css", &[(1.0, nginx_cpu)]),
        ])
    }

    #[test]
    fn passes_noise_and_faster_machines_fails_a_1_5x_regression() {
        let reference = run(10.0, 20.0);
        // A slower machine: both slower, same ratio.
        assert!(gate(&reference, &run(30.0, 60.0), 1.5).pass);
        // Noise: 20% worse.
        assert!(gate(&reference, &run(12.0, 20.0), 1.5).pass);
        // Better.
        assert!(gate(&reference, &run(5.0, 20.0), 1.5).pass);
        let v = gate(&reference, &run(15.0, 20.0), 1.5);
        assert!(!v.pass, "{}", v.text);
        assert!(
            v.text.contains("1.50× the reference, REGRESSION"),
            "{}",
            v.text
        );
    }

    #[test]
    fn a_missing_contender_is_not_a_failure() {
        let reference = run(10.0, 20.0);
        let mut new = run(100.0, 20.0);
        new.cells[1].fail(State::Missing, "nginx is not installed");
        let v = gate(&reference, &new, 1.5);
        assert!(v.pass);
        assert!(v.text.contains("not gated: this run"), "{}", v.text);
        let v = gate(&new, &reference, 1.5);
        assert!(v.pass && v.text.contains("the reference run"), "{}", v.text);
    }

    #[test]
    fn loads_a_summary_from_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let s = run(1.0, 2.0);
        std::fs::write(
            dir.path().join("summary.json"),
            serde_json::to_string(&s).unwrap(),
        )
        .unwrap();
        let back = load(dir.path()).unwrap();
        assert_eq!(back.gate_figure(), s.gate_figure());
        assert!(load(&dir.path().join("nope")).is_err());
    }
}
