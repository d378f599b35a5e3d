//! SVG charts drawn with plotters: requests per second and server CPU per request for each
//! workload (grouped bars, log scale: gunicorn and nginx differ by orders of magnitude), and the
//! open-loop latency percentile curves from the merged HdrHistograms of bypass-load's reports.

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde_json::Value;

use crate::suite::Workload;
use crate::summary::{Figures, Run, State, Summary};

/// One colour per contender, the same in every chart.
fn colour(id: &str) -> RGBColor {
    match id {
        "bypass" => RGBColor(0x1f, 0x77, 0xb4),
        "bypass-epoll" => RGBColor(0x6b, 0xae, 0xd6),
        "bypass-nocache" => RGBColor(0x08, 0x30, 0x6b),
        "nginx" => RGBColor(0x2c, 0xa0, 0x2c),
        "static-web-server" => RGBColor(0x9a, 0x6f, 0x00),
        "gunicorn" => RGBColor(0xd6, 0x27, 0x28),
        "nginx-gunicorn" => RGBColor(0xff, 0x7f, 0x0e),
        "bypass-gunicorn" => RGBColor(0x94, 0x67, 0xbd),
        "ceiling" => RGBColor(0x7f, 0x7f, 0x7f),
        _ => RGBColor(0x17, 0xbe, 0xcf),
    }
}

/// A bar series: the contender's id, its label, and one value per category (None: no bar).
pub struct Series {
    pub id: String,
    pub label: String,
    pub values: Vec<Option<f64>>,
}

fn err(e: impl std::fmt::Display) -> String {
    format!("drawing a chart: {e}")
}

/// Grouped bars on a log scale, one group per category.
pub fn bar_chart(
    path: &Path,
    title: &str,
    y_desc: &str,
    categories: &[String],
    series: &[Series],
) -> Result<(), String> {
    let values = series
        .iter()
        .flat_map(|s| s.values.iter().flatten().copied());
    let (lo, hi) = values
        .filter(|v| *v > 0.0)
        .fold((f64::INFINITY, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    // Two decades of headroom above the tallest bar keep the legend clear of the bars.
    let (lo, hi) = if hi > 0.0 {
        (
            10f64.powf(lo.log10().floor()),
            10f64.powf(hi.log10().ceil() + 2.0),
        )
    } else {
        (1.0, 10.0)
    };
    let n = categories.len().max(1);
    let root = SVGBackend::new(path, (1200, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.5f64..n as f64 - 0.5, (lo..hi).log_scale())
        .map_err(err)?;
    let labels = categories.to_vec();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n + 1)
        .x_label_formatter(&move |x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(y_desc)
        .y_label_formatter(&|y| crate::report::sig3(*y))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    let k = series.len().max(1) as f64;
    let width = 0.84 / k;
    for (j, s) in series.iter().enumerate() {
        let c = colour(&s.id);
        let bars = s.values.iter().enumerate().filter_map(|(i, v)| {
            let v = (*v).filter(|v| *v > 0.0)?;
            let x0 = i as f64 - 0.42 + j as f64 * width;
            Some(Rectangle::new(
                [(x0, lo), (x0 + width * 0.9, v)],
                c.filled(),
            ))
        });
        chart
            .draw_series(bars)
            .map_err(err)?
            .label(s.label.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], c.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Points of a latency percentile curve: x in "nines" (`-log10(1 - q)`: 1 is p90, 2 is p99,
/// 3 is p99.9), y the latency in µs at that quantile; up to p99.999.
pub fn percentile_curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    let mut points = Vec::new();
    for v in h.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        if q >= 0.99999 {
            break;
        }
        points.push((
            -(1.0 - q).log10(),
            h.highest_equivalent(v.value_iterated_to()) as f64,
        ));
    }
    points.push((5.0, h.value_at_quantile(0.99999) as f64));
    points
}

/// The merged latency histogram of runs' raw reports (paths relative to `dir`).
pub fn merged_histogram(dir: &Path, raws: &[&str]) -> Result<Option<Histogram<u64>>, String> {
    let mut merged: Option<Histogram<u64>> = None;
    for raw in raws {
        let path = dir.join(raw);
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let doc: Value = serde_json::from_str(&text).map_err(|e| format!("{raw}: {e}"))?;
        let Some(data) = doc.pointer("/histogram/data").and_then(Value::as_str) else {
            continue;
        };
        let h = bypass_load::histcodec::decode(data).map_err(|e| format!("{raw}: {e}"))?;
        match merged.as_mut() {
            Some(m) => m
                .add(&h)
                .map_err(|e| format!("{raw}: merging histograms: {e:?}"))?,
            None => merged = Some(h),
        }
    }
    Ok(merged)
}

/// A contender's id, its label, and its percentile curve.
pub type Curve = (String, String, Vec<(f64, f64)>);

/// Latency percentile curves, one line per contender, log-log.
pub fn latency_chart(path: &Path, title: &str, curves: &[Curve]) -> Result<(), String> {
    let ys = curves
        .iter()
        .flat_map(|(_, _, p)| p.iter().map(|&(_, y)| y.max(1.0)));
    let (lo, hi) = ys.fold((f64::INFINITY, 1f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let lo = if lo.is_finite() {
        10f64.powf(lo.log10().floor())
    } else {
        1.0
    };
    let hi = 10f64.powf(hi.log10().ceil()).max(lo * 10.0);
    let root = SVGBackend::new(path, (1000, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .margin_right(40)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..5f64, (lo..hi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_labels(6)
        .x_label_formatter(&|x| match x.round() as i32 {
            _ if (x - x.round()).abs() > 1e-6 => String::new(),
            0 => "p0".into(),
            1 => "p90".into(),
            2 => "p99".into(),
            3 => "p99.9".into(),
            4 => "p99.99".into(),
            5 => "p99.999".into(),
            _ => String::new(),
        })
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .y_label_formatter(&|y| crate::report::sig3(*y))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    for (id, label, points) in curves {
        let c = colour(id);
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|&(x, y)| (x, y.max(lo))),
                c.stroke_width(2),
            ))
            .map_err(err)?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// The run whose p99 is the median of the runs' (the lower middle one of an even number).
pub fn median_run(runs: &[Run]) -> Option<&Run> {
    let mut sorted: Vec<&Run> = runs.iter().collect();
    sorted.sort_by(|a, b| a.figures.p99_us.total_cmp(&b.figures.p99_us));
    sorted.get(runs.len().saturating_sub(1) / 2).copied()
}

/// Draws every chart of a run into `dir`; returns (file, title) of each drawn.
pub fn write_all(dir: &Path, s: &Summary) -> Result<Vec<(String, String)>, String> {
    let mut drawn = Vec::new();
    let closed: Vec<&str> = s
        .workloads
        .iter()
        .map(|w| w.id.as_str())
        .filter(|w| *w != Workload::LatencyOpen.id())
        .collect();
    let categories: Vec<String> = closed
        .iter()
        .map(|w| {
            s.workloads
                .iter()
                .find(|i| i.id == *w)
                .map_or(w.to_string(), |i| i.label.clone())
        })
        .collect();
    let bars = |pick: fn(&Figures) -> Option<f64>| -> Vec<Series> {
        s.contenders
            .iter()
            .filter(|c| c.state == State::Ok)
            .map(|c| Series {
                id: c.id.clone(),
                label: c.label.clone(),
                values: closed
                    .iter()
                    .map(|w| s.figures(&c.id, w).and_then(pick))
                    .collect(),
            })
            .filter(|s| s.values.iter().any(Option::is_some))
            .collect()
    };
    let when = format!("{}, {}", s.host, s.started);
    for (file, title, y, pick) in [
        (
            "throughput.svg",
            "Requests per second (higher is better)",
            "req/s",
            (|f: &Figures| Some(f.rps)) as fn(&Figures) -> Option<f64>,
        ),
        (
            "cpu.svg",
            "Server CPU per request (lower is better)",
            "µs of CPU per request",
            |f: &Figures| f.cpu_us_per_request,
        ),
    ] {
        bar_chart(
            &dir.join(file),
            &format!("{title} — {when}"),
            y,
            &categories,
            &bars(pick),
        )?;
        drawn.push((file.to_string(), title.to_string()));
    }

    let open = Workload::LatencyOpen.id();
    let mut curves = Vec::new();
    for c in &s.contenders {
        let Some(cell) = s.cell(&c.id, open).filter(|cell| cell.state == State::Ok) else {
            continue;
        };
        // The run with the median p99, as in the tables: merging every run would let one run
        // spoiled by background load decide the whole curve.
        let Some(run) = median_run(&cell.runs) else {
            continue;
        };
        if let Some(h) = merged_histogram(dir, &[run.raw.as_str()])?
            && !h.is_empty()
        {
            curves.push((c.id.clone(), c.label.clone(), percentile_curve(&h)));
        }
    }
    if !curves.is_empty() {
        let rate = s
            .workloads
            .iter()
            .find(|w| w.id == open)
            .and_then(|w| w.rate)
            .map(|r| format!(" at {} req/s", crate::report::sig3(r)))
            .unwrap_or_default();
        let title = format!("Open-loop latency{rate}, ~300 B CSS, median run");
        latency_chart(
            &dir.join("latency.svg"),
            &format!("{title} — {when}"),
            &curves,
        )?;
        drawn.push(("latency.svg".into(), title));
    }
    Ok(drawn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(values: &[u64]) -> Histogram<u64> {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for &v in values {
            h.record(v).unwrap();
        }
        h
    }

    #[test]
    fn percentile_curve_rises_and_ends_at_five_nines() {
        let values: Vec<u64> = (1..=10_000).collect();
        let curve = percentile_curve(&histogram(&values));
        assert!(curve.len() > 10, "{curve:?}");
        assert!(
            curve
                .windows(2)
                .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1)
        );
        let &(x, y) = curve.last().unwrap();
        assert_eq!(x, 5.0);
        assert!((9_990.0..=10_010.0).contains(&y), "{y}");
        // Around p99 the latency is ~9 900 µs.
        let near_p99 = curve.iter().find(|p| p.0 >= 2.0).unwrap();
        assert!((9_800.0..=10_010.0).contains(&near_p99.1), "{near_p99:?}");
    }

    #[test]
    fn the_median_run_is_chosen_by_p99() {
        let run = |p99: f64| Run {
            raw: format!("{p99}"),
            figures: Figures {
                p99_us: p99,
                ..Figures::default()
            },
        };
        let runs = [run(900.0), run(5000.0), run(600.0)];
        assert_eq!(median_run(&runs).unwrap().raw, "900");
        assert_eq!(median_run(&runs[..2]).unwrap().raw, "900");
        assert!(median_run(&[]).is_none());
    }

    #[test]
    fn merges_histograms_from_raw_reports() {
        let dir = tempfile::tempdir().unwrap();
        for (name, values) in [("a.json", vec![100u64, 200]), ("b.json", vec![300u64])] {
            let data = bypass_load::histcodec::encode(&histogram(&values));
            let doc = serde_json::json!({"histogram": {"data": data}});
            std::fs::write(dir.path().join(name), doc.to_string()).unwrap();
        }
        let h = merged_histogram(dir.path(), &["a.json", "b.json"])
            .unwrap()
            .unwrap();
        assert_eq!(h.len(), 3);
        assert_eq!(h.max(), h.highest_equivalent(300));
        assert!(merged_histogram(dir.path(), &["missing.json"]).is_err());
    }

    #[test]
    fn draws_svg_files() {
        let dir = tempfile::tempdir().unwrap();
        let bars = dir.path().join("bars.svg");
        bar_chart(
            &bars,
            "Requests per second",
            "req/s",
            &["~300 B CSS".into(), "20 MB media".into()],
            &[
                Series {
                    id: "bypass".into(),
                    label: "bypass".into(),
                    values: vec![Some(40_000.0), Some(150.0)],
                },
                Series {
                    id: "gunicorn".into(),
                    label: "gunicorn+WhiteNoise".into(),
                    values: vec![Some(900.0), None],
                },
            ],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&bars).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        assert!(svg.contains("gunicorn+WhiteNoise") && svg.contains("~300 B CSS"));
        assert!(svg.matches("<rect").count() >= 3);

        let lat = dir.path().join("latency.svg");
        let curve = percentile_curve(&histogram(&[50, 60, 70, 5000]));
        latency_chart(&lat, "Latency", &[("nginx".into(), "nginx".into(), curve)]).unwrap();
        let svg = std::fs::read_to_string(&lat).unwrap();
        assert!(
            svg.contains("<polyline") || svg.contains("<path"),
            "no line drawn"
        );
        assert!(svg.contains("p99.9"));
    }
}
