//! Charts of `daa experiment`'s report (SVG, plotters): panels of scattered
//! points with named lines through them, and intervals per group.

use anyhow::{Result, anyhow};
use plotters::prelude::*;

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 95, 168),
    RGBColor(204, 51, 51),
    RGBColor(46, 139, 87),
    RGBColor(230, 140, 20),
    RGBColor(120, 70, 160),
    RGBColor(90, 90, 90),
];

fn drawing_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing the chart: {e:?}")
}

/// A named line of a panel.
#[derive(Debug, Clone)]
pub struct Line {
    /// Legend text.
    pub label: String,
    /// Points in x order.
    pub points: Vec<(f64, f64)>,
    /// Dashed-looking thin line (markers, fits) instead of a thick one.
    pub thin: bool,
}

/// One panel: scattered points and lines.
#[derive(Debug, Clone, Default)]
pub struct Panel {
    /// Caption.
    pub title: String,
    /// x axis.
    pub x_desc: String,
    /// y axis.
    pub y_desc: String,
    /// Points drawn as dots.
    pub points: Vec<(f64, f64)>,
    /// Lines with a legend.
    pub lines: Vec<Line>,
}

fn bounds(panel: &Panel) -> Option<((f64, f64), (f64, f64))> {
    let all = panel.points.iter().chain(panel.lines.iter().flat_map(|l| l.points.iter()));
    let (mut x, mut y) = ((f64::MAX, f64::MIN), (f64::MAX, f64::MIN));
    for &(a, b) in all.filter(|p| p.0.is_finite() && p.1.is_finite()) {
        x = (x.0.min(a), x.1.max(a));
        y = (y.0.min(b), y.1.max(b));
    }
    if x.0 > x.1 {
        return None;
    }
    let pad = |(lo, hi): (f64, f64)| {
        let p = ((hi - lo) * 0.05).max(1e-6 * (1.0 + hi.abs()));
        (lo - p, hi + p)
    };
    Some((pad(x), pad(y)))
}

/// Panels, `columns` to a row, under `title`.
pub fn panels(title: &str, panels: &[Panel], columns: usize) -> Result<String> {
    let columns = columns.max(1);
    let rows = panels.len().div_ceil(columns).max(1);
    let mut svg = String::new();
    {
        let width = 380 * columns as u32;
        let root = SVGBackend::with_string(&mut svg, (width, 40 + 300 * rows as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing_error)?;
        let root = root.titled(title, ("sans-serif", 16)).map_err(drawing_error)?;
        for (area, panel) in root.split_evenly((rows, columns)).iter().zip(panels) {
            let Some(((x_lo, x_hi), (y_lo, y_hi))) = bounds(panel) else { continue };
            let mut chart = ChartBuilder::on(area)
                .caption(&panel.title, ("sans-serif", 13))
                .margin(8)
                .x_label_area_size(30)
                .y_label_area_size(55)
                .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)
                .map_err(drawing_error)?;
            chart
                .configure_mesh()
                .x_desc(&panel.x_desc)
                .y_desc(&panel.y_desc)
                .x_labels(5)
                .y_labels(5)
                .draw()
                .map_err(drawing_error)?;
            chart
                .draw_series(panel.points.iter().map(|&p| Circle::new(p, 2, PALETTE[5].mix(0.6).filled())))
                .map_err(drawing_error)?;
            for (i, line) in panel.lines.iter().enumerate() {
                let color = PALETTE[i % (PALETTE.len() - 1)];
                let style = if line.thin { color.stroke_width(1) } else { color.stroke_width(2) };
                chart
                    .draw_series(LineSeries::new(line.points.iter().copied(), style))
                    .map_err(drawing_error)?
                    .label(&line.label)
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
            }
            if !panel.lines.is_empty() {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::LowerLeft)
                    .background_style(WHITE.mix(0.7))
                    .border_style(BLACK)
                    .label_font(("sans-serif", 10))
                    .draw()
                    .map_err(drawing_error)?;
            }
        }
        root.present().map_err(drawing_error)?;
    }
    Ok(svg)
}

/// One interval: a group's mean and its range.
#[derive(Debug, Clone)]
pub struct Interval {
    /// Group name.
    pub label: String,
    /// The mean, drawn as a dot.
    pub mean: f64,
    /// Lower end of the bar.
    pub low: f64,
    /// Upper end of the bar.
    pub high: f64,
}

/// Means with intervals, one row per group, under `title`.
pub fn intervals(title: &str, x_desc: &str, groups: &[Interval]) -> Result<String> {
    let mut svg = String::new();
    {
        let height = 80 + 28 * groups.len().max(1) as u32;
        let root = SVGBackend::with_string(&mut svg, (760, height)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing_error)?;
        let (lo, hi) = groups.iter().fold((f64::MAX, f64::MIN), |(a, b), g| (a.min(g.low), b.max(g.high)));
        let (lo, hi) = if lo <= hi { (lo, hi) } else { (0.0, 1.0) };
        let pad = ((hi - lo) * 0.1).max(1e-3);
        let n = groups.len().max(1) as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 15))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(230)
            .build_cartesian_2d((lo - pad)..(hi + pad), -0.5..(n - 0.5))
            .map_err(drawing_error)?;
        let labels: Vec<String> = groups.iter().map(|g| g.label.clone()).collect();
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_labels(groups.len().max(1))
            .y_label_formatter(&|y| {
                let i = y.round();
                if (y - i).abs() < 1e-6 && i >= 0.0 {
                    labels.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .draw()
            .map_err(drawing_error)?;
        for (i, g) in groups.iter().enumerate() {
            let y = i as f64;
            let color = PALETTE[0];
            chart
                .draw_series(LineSeries::new([(g.low, y), (g.high, y)], color.stroke_width(2)))
                .map_err(drawing_error)?;
            chart.draw_series([Circle::new((g.mean, y), 4, color.filled())]).map_err(drawing_error)?;
        }
        root.present().map_err(drawing_error)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panels_and_intervals_draw_what_they_are_given() {
        let panel = Panel {
            title: "win probability".into(),
            x_desc: "chosen log-likelihood".into(),
            y_desc: "P_win".into(),
            points: vec![(-3.0, 0.5), (-3.5, 0.55), (-4.0, 0.48)],
            lines: vec![Line { label: "quadratic".into(), points: vec![(-4.0, 0.48), (-3.0, 0.5)], thin: true }],
        };
        let svg = panels("report", &[panel, Panel::default()], 2).unwrap();
        assert!(svg.contains("quadratic") && svg.contains("<circle") && svg.contains("<polyline"), "{svg}");
        let svg = intervals(
            "final win probability",
            "P_win",
            &[Interval { label: "dpo λ=0".into(), mean: 0.5, low: 0.45, high: 0.55 }],
        )
        .unwrap();
        assert!(svg.contains("dpo λ=0") && svg.contains("<circle"), "{svg}");
    }
}
