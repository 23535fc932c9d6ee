//! The sweep's figure: four panels like the seed's (throughput, average latency per
//! operation, p99 per operation, error rate, each against the number of peers), as SVG.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::sweep::{Step, MIX};

/// The seed's published throughput (ops/s) by peer count, drawn beside ours.
pub const SEED_THROUGHPUT: [(usize, f64); 3] = [(10, 233.0), (100, 12.7), (1000, 7.6)];

type Series = (String, RGBColor, Vec<(f64, f64)>);

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(127, 127, 127),
];

pub fn draw(path: &Path, steps: &[Step], title: &str) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<std::io::Error>| e.to_string();
    let root = SVGBackend::new(path, (1200, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(e)?;
    let panels = root.split_evenly((2, 2));
    let peers: Vec<f64> = steps.iter().map(|s| s.peers as f64).collect();
    let xs = |f: &dyn Fn(&Step) -> f64| -> Vec<(f64, f64)> {
        steps.iter().map(|s| (s.peers as f64, f(s))).collect()
    };

    let mut throughput: Vec<Series> = vec![
        (
            "mix (all operations)".into(),
            COLORS[0],
            xs(&|s| s.mix.per_s()),
        ),
        ("searches only".into(), COLORS[1], xs(&|s| s.search.per_s())),
        (
            "ceiling: GET /health".into(),
            COLORS[2],
            xs(&|s| s.ceiling.per_s()),
        ),
    ];
    throughput.push((
        "seed (published)".into(),
        COLORS[5],
        SEED_THROUGHPUT
            .iter()
            .map(|&(n, v)| (n as f64, v))
            .filter(|(n, _)| x_range(&peers).contains(n))
            .collect(),
    ));
    log_panel(
        &panels[0],
        ("Throughput", "ops/s"),
        &peers,
        &throughput,
        SeriesLabelPosition::LowerLeft,
    )?;

    let per_op = |pick: fn(&crate::stats::Summary) -> f64| -> Vec<Series> {
        MIX.iter()
            .enumerate()
            .map(|(k, name)| {
                let points = xs(&|s| pick(&s.mix.ops[k].lat.summary()));
                (name.to_string(), COLORS[k], points)
            })
            .collect()
    };
    log_panel(
        &panels[1],
        ("Average latency per operation (mix)", "ms"),
        &peers,
        &per_op(|s| s.mean),
        SeriesLabelPosition::UpperLeft,
    )?;
    log_panel(
        &panels[2],
        ("p99 latency per operation (mix)", "ms"),
        &peers,
        &per_op(|s| s.p99),
        SeriesLabelPosition::UpperLeft,
    )?;
    let errors = vec![(
        "errors / calls, all phases".to_string(),
        COLORS[3],
        xs(&|s| {
            let calls = [&s.mix, &s.search, &s.ceiling]
                .iter()
                .flat_map(|p| p.ops.iter().map(|t| t.lat.len()))
                .sum::<usize>()
                .max(1);
            100.0 * s.errors() as f64 / calls as f64
        }),
    )];
    error_panel(&panels[3], &peers, &errors)?;
    root.present().map_err(e)?;
    Ok(())
}

/// The x range around the measured peer counts, on a log scale.
fn x_range(peers: &[f64]) -> std::ops::Range<f64> {
    let min = peers.iter().copied().fold(f64::INFINITY, f64::min);
    let max = peers.iter().copied().fold(1.0, f64::max);
    (min.min(max) / 1.3).max(1.0)..max * 1.3
}

/// A panel with both axes on a log scale; the y range leaves a decade free on the side of
/// the legend.
fn log_panel(
    area: &DrawingArea<SVGBackend, Shift>,
    (title, unit): (&str, &str),
    peers: &[f64],
    series: &[Series],
    legend: SeriesLabelPosition,
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<std::io::Error>| e.to_string();
    let values = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1))
        .filter(|v| *v > 0.0);
    let (lo, hi) = values.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let (lo, hi) = if hi > 0.0 {
        (lo / 2.0, hi * 2.0)
    } else {
        (0.1, 10.0)
    };
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(x_range(peers).log_scale(), (lo..hi).log_scale())
        .map_err(e)?;
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .x_desc("concurrent peers")
        .y_desc(unit)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| short(*y))
        .draw()
        .map_err(e)?;
    // A log axis has no 0.
    let positive: Vec<Series> = series
        .iter()
        .map(|(name, color, points)| {
            let points = points.iter().copied().filter(|p| p.1 > 0.0).collect();
            (name.clone(), *color, points)
        })
        .collect();
    draw_lines(&mut chart, &positive, legend)
}

fn error_panel(
    area: &DrawingArea<SVGBackend, Shift>,
    peers: &[f64],
    series: &[Series],
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<std::io::Error>| e.to_string();
    let hi = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1))
        .fold(1.0f64, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption("Error rate", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(x_range(peers).log_scale(), 0.0..hi * 1.1)
        .map_err(e)?;
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .x_desc("concurrent peers")
        .y_desc("% of calls")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(e)?;
    draw_lines(&mut chart, series, SeriesLabelPosition::UpperRight)
}

/// Each series as a line with a dot per step, and the legend at `legend`.
fn draw_lines<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    series: &[Series],
    legend: SeriesLabelPosition,
) -> Result<(), String>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    let e = |e: DrawingAreaErrorKind<std::io::Error>| e.to_string();
    for (name, color, points) in series {
        let color = *color;
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(e)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(legend)
        .draw()
        .map_err(e)?;
    Ok(())
}

/// An axis label: no trailing zeros, thousands as "k".
fn short(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.1}k", v / 1000.0)
    } else if v >= 1.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}
