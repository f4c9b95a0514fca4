//! SVG plots for perf/report.md: latency distributions and CPU per packet against room size.

use std::path::Path;

use plotters::prelude::*;

/// A named curve.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("plot: {e}")
}

/// Latency distributions: one curve per run, share of frames per bucket against milliseconds on a
/// log axis. `buckets` are (upper bound in ms, count) as the report stores them.
pub fn latency(path: &Path, title: &str, runs: &[(String, Vec<(f64, u64)>)]) -> anyhow::Result<()> {
    let series: Vec<Series> = runs
        .iter()
        .filter_map(|(name, b)| {
            let total: u64 = b.iter().map(|(_, c)| c).sum();
            (total > 0).then(|| Series {
                name: name.clone(),
                points: b
                    .iter()
                    .map(|(x, c)| (*x, *c as f64 / total as f64))
                    .collect(),
            })
        })
        .collect();
    let x_max = series
        .iter()
        .flat_map(|s| s.points.iter().filter(|(_, y)| *y > 0.0).map(|(x, _)| *x))
        .fold(1.0f64, f64::max)
        * 1.5;
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|(_, y)| *y))
        .fold(0.01f64, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (800, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d((0.1f64..x_max).log_scale(), 0f64..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("end-to-end latency (ms, log scale)")
        .y_desc("share of frames")
        .draw()
        .map_err(err)?;
    draw(&mut chart, &series)?;
    root.present().map_err(err)?;
    Ok(())
}

/// CPU µs per forwarded packet against participants, one curve per server or bench.
pub fn cpu_per_packet(path: &Path, title: &str, series: &[Series]) -> anyhow::Result<()> {
    let x_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|(x, _)| *x))
        .fold(2.0f64, f64::max)
        * 1.1;
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|(_, y)| *y))
        .fold(1.0f64, f64::max)
        * 1.2;
    let root = SVGBackend::new(path, (800, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("participants")
        .y_desc("CPU µs per forwarded packet")
        .draw()
        .map_err(err)?;
    draw(&mut chart, series)?;
    root.present().map_err(err)?;
    Ok(())
}

fn draw<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    series: &[Series],
) -> anyhow::Result<()>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(s.points.iter().map(|p| Circle::new(*p, 3, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}
