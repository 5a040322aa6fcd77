//! The pictures people look at, as SVG (plotters): histograms of the top-k
//! statistics of `daa stats`, and the evaluation series of a training run.
//! Falling top-k entropy and shrinking top-k mass warn of likelihood
//! over-optimisation; these make them seen, not only read.

use anyhow::{Result, anyhow};
use daa_core::TokenStatsRow;
use plotters::coord::Shift;
use plotters::prelude::*;

const BINS: usize = 40;
const BLUE: RGBColor = RGBColor(31, 95, 168);
const RED: RGBColor = RGBColor(204, 51, 51);

fn drawing_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing the chart: {e:?}")
}

/// Counts of `values` in `BINS` equal bins over `[lo, hi]` (values outside clamp to the ends).
fn histogram(values: &[f64], lo: f64, hi: f64) -> [usize; BINS] {
    let mut counts = [0usize; BINS];
    let width = (hi - lo).max(f64::MIN_POSITIVE);
    for &v in values {
        let bin = (((v - lo) / width) * BINS as f64).floor().clamp(0.0, (BINS - 1) as f64) as usize;
        counts[bin] += 1;
    }
    counts
}

/// One histogram panel over `[lo, hi]`, with the mean as a red line.
fn histogram_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    title: &str,
    values: &[f64],
    lo: f64,
    hi: f64,
) -> Result<()> {
    let counts = histogram(values, lo, hi);
    let top = counts.iter().copied().max().unwrap_or(0).max(1) as f64;
    let mean = if values.is_empty() { f64::NAN } else { values.iter().sum::<f64>() / values.len() as f64 };
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{title} (mean {mean:.4})"), ("sans-serif", 15))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(lo..hi, 0.0..top * 1.05)
        .map_err(drawing_error)?;
    chart.configure_mesh().y_desc("positions").x_labels(6).y_labels(5).draw().map_err(drawing_error)?;
    let width = (hi - lo) / BINS as f64;
    chart
        .draw_series(counts.iter().enumerate().map(|(i, &c)| {
            let x0 = lo + i as f64 * width;
            Rectangle::new([(x0, 0.0), (x0 + width * 0.9, c as f64)], BLUE.filled())
        }))
        .map_err(drawing_error)?;
    if mean.is_finite() {
        chart
            .draw_series(LineSeries::new([(mean, 0.0), (mean, top * 1.05)], RED.stroke_width(2)))
            .map_err(drawing_error)?;
    }
    Ok(())
}

/// Two histograms side by side over the active rows: renormalised top-k
/// entropy over `[0, log_b k]` and top-k mass over `[0, 1]`.
pub fn stats_histograms(rows: &[TokenStatsRow], k: usize, entropy_base: f64, source: &str) -> Result<String> {
    let active: Vec<&TokenStatsRow> = rows.iter().filter(|r| r.active).collect();
    let entropy: Vec<f64> = active.iter().map(|r| f64::from(r.topk_entropy)).collect();
    let mass: Vec<f64> = active.iter().map(|r| f64::from(r.topk_mass)).collect();
    let unit = if entropy_base == 2.0 { "bits".to_string() } else { format!("log base {entropy_base}") };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 380)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing_error)?;
        let root = root
            .titled(&format!("{} active positions of {source}; red: the mean", active.len()), ("sans-serif", 13))
            .map_err(drawing_error)?;
        let panels = root.split_evenly((1, 2));
        let max_entropy = (k as f64).ln() / entropy_base.ln();
        histogram_panel(&panels[0], &format!("top-{k} entropy ({unit})"), &entropy, 0.0, max_entropy.max(1e-9))?;
        histogram_panel(&panels[1], &format!("top-{k} mass"), &mass, 0.0, 1.0)?;
        root.present().map_err(drawing_error)?;
    }
    Ok(svg)
}

/// `daa bench`'s throughputs as horizontal bars (GB/s of logits read), with
/// each CPU thread count's read bandwidth (and a GPU's copy bandwidth) as a
/// dashed red line.
pub fn throughput_bars(rows: &[crate::bench_cmd::Measurement]) -> Result<String> {
    let labels: Vec<String> = rows.iter().map(|r| format!("{}  V={} k={}", r.backend, r.vocab, r.k)).collect();
    let reads = crate::bench_cmd::read_bandwidths(rows);
    let top = rows.iter().map(|r| r.gbps).chain(reads.iter().map(|r| r.1)).fold(1.0, f64::max) * 1.1;
    let n = rows.len() as f64;
    let mut svg = String::new();
    {
        let height = 90 + 22 * rows.len() as u32;
        let root = SVGBackend::with_string(&mut svg, (960, height)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("daa token_stats: GB/s of logits read (red: memory bandwidth, same run)", ("sans-serif", 15))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(300)
            .build_cartesian_2d(0.0..top, 0.0..n)
            .map_err(drawing_error)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_desc("GB/s")
            .y_labels(rows.len() * 2 + 1)
            .y_label_formatter(&|y| {
                let i = (n - y - 0.5).round();
                let centred = (n - y - 0.5 - i).abs() < 1e-6;
                match (centred, labels.get(i as usize)) {
                    (true, Some(label)) if i >= 0.0 => label.clone(),
                    _ => String::new(),
                }
            })
            .draw()
            .map_err(drawing_error)?;
        chart
            .draw_series(rows.iter().enumerate().map(|(i, r)| {
                let y = n - i as f64;
                Rectangle::new([(0.0, y - 0.85), (r.gbps, y - 0.15)], BLUE.filled())
            }))
            .map_err(drawing_error)?;
        for &(backend, gbps) in &reads {
            chart
                .draw_series(DashedLineSeries::new([(gbps, 0.0), (gbps, n)], 5, 3, RED.stroke_width(1)))
                .map_err(drawing_error)?
                .label(format!("read, {backend}: {gbps:.1} GB/s"))
                .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], RED));
        }
        if !reads.is_empty() {
            chart
                .configure_series_labels()
                .background_style(WHITE)
                .border_style(BLACK)
                .draw()
                .map_err(drawing_error)?;
        }
        root.present().map_err(drawing_error)?;
    }
    Ok(svg)
}

/// A series to draw: its title and `(step, value)` points.
#[cfg(feature = "train")]
#[derive(Debug, Clone)]
pub struct Series {
    /// Panel title.
    pub title: String,
    /// Points in step order.
    pub points: Vec<(f64, f64)>,
}

/// One line chart per series, three to a row, under `title`.
#[cfg(feature = "train")]
pub fn line_charts(series: &[Series], title: &str) -> Result<String> {
    const COLUMNS: usize = 3;
    let rows = series.len().div_ceil(COLUMNS).max(1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1080, 40 + 230 * rows as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing_error)?;
        let root = root.titled(title, ("sans-serif", 16)).map_err(drawing_error)?;
        for (area, s) in root.split_evenly((rows, COLUMNS)).iter().zip(series) {
            let (x_lo, x_hi) = s.points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
            let (y_lo, y_hi) = s.points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
            if s.points.is_empty() || !(y_lo.is_finite() && y_hi.is_finite()) {
                continue;
            }
            let pad = ((y_hi - y_lo) * 0.05).max(1e-6 * (1.0 + y_hi.abs()));
            let x_hi = if x_hi > x_lo { x_hi } else { x_lo + 1.0 };
            let mut chart = ChartBuilder::on(area)
                .caption(&s.title, ("sans-serif", 14))
                .margin(8)
                .x_label_area_size(26)
                .y_label_area_size(62)
                .build_cartesian_2d(x_lo..x_hi, (y_lo - pad)..(y_hi + pad))
                .map_err(drawing_error)?;
            chart.configure_mesh().x_desc("step").x_labels(5).y_labels(5).draw().map_err(drawing_error)?;
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), BLUE.stroke_width(2)))
                .map_err(drawing_error)?;
            chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 2, BLUE.filled()))).map_err(drawing_error)?;
        }
        root.present().map_err(drawing_error)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::histogram;

    #[test]
    fn histogram_counts_every_value_once_and_clamps_the_ends() {
        let counts = histogram(&[0.0, 0.5, 0.999, 1.0, -3.0, 7.0], 0.0, 1.0);
        assert_eq!(counts.iter().sum::<usize>(), 6);
        assert_eq!(counts[0], 2); // 0.0 and the clamped −3
        assert_eq!(counts[20], 1); // 0.5
        assert_eq!(counts[39], 3); // 0.999, 1.0 and the clamped 7
    }

    #[test]
    #[cfg(feature = "train")]
    fn line_charts_draw_every_series_and_skip_empty_ones() {
        use super::{Series, line_charts};
        let series = [
            Series { title: "top-k entropy".into(), points: vec![(0.0, 3.3), (10.0, 3.1), (20.0, 2.9)] },
            Series { title: "empty".into(), points: vec![] },
        ];
        let svg = line_charts(&series, "run").unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("top-k entropy") && svg.contains("<polyline"), "{svg}");
        assert!(!svg.contains(">empty<"), "an empty series draws no panel");
    }
}
