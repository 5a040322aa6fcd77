//! SVG histograms of the statistics people watch: top-k entropy and top-k mass
//! over the active rows of `daa stats`.

use std::fmt::Write as _;

use daa_core::TokenStatsRow;

const BINS: usize = 40;
const PANEL_W: f64 = 420.0;
const PANEL_H: f64 = 240.0;

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

fn panel(svg: &mut String, x0: f64, title: &str, values: &[f64], lo: f64, hi: f64, unit: &str) {
    let counts = histogram(values, lo, hi);
    let top = counts.iter().copied().max().unwrap_or(0).max(1) as f64;
    let (left, bottom, plot_w, plot_h) = (x0 + 40.0, 40.0 + PANEL_H, PANEL_W - 60.0, PANEL_H - 20.0);
    let mean = if values.is_empty() { 0.0 } else { values.iter().sum::<f64>() / values.len() as f64 };
    let mean_text = if unit.is_empty() { format!("{mean:.4}") } else { format!("{mean:.4} {unit}") };
    let _ = writeln!(svg, "<text x='{}' y='30' font-size='13'>{title} (mean {mean_text})</text>", x0 + 40.0);
    let bar_w = plot_w / BINS as f64;
    for (i, &c) in counts.iter().enumerate() {
        let h = plot_h * c as f64 / top;
        let _ = writeln!(
            svg,
            "<rect x='{:.1}' y='{:.1}' width='{:.1}' height='{h:.1}' fill='#1f5fa8'/>",
            left + i as f64 * bar_w,
            bottom - h,
            (bar_w - 1.0).max(0.5)
        );
    }
    let mean_x = left + plot_w * ((mean - lo) / (hi - lo).max(f64::MIN_POSITIVE)).clamp(0.0, 1.0);
    let _ = writeln!(
        svg,
        "<line x1='{mean_x:.1}' x2='{mean_x:.1}' y1='{}' y2='{bottom}' stroke='#c33' stroke-dasharray='4 3'/>",
        bottom - plot_h
    );
    let _ = writeln!(svg, "<line x1='{left}' x2='{}' y1='{bottom}' y2='{bottom}' stroke='black'/>", left + plot_w);
    let _ = writeln!(svg, "<text x='{left}' y='{}' font-size='10'>{lo:.2}</text>", bottom + 14.0);
    let _ = writeln!(
        svg,
        "<text x='{}' y='{}' font-size='10' text-anchor='end'>{hi:.2} {unit}</text>",
        left + plot_w,
        bottom + 14.0
    );
    let _ = writeln!(
        svg,
        "<text x='{}' y='{}' font-size='10' text-anchor='end'>{top}</text>",
        left - 4.0,
        bottom - plot_h + 8.0
    );
}

/// Two histograms side by side: renormalised top-k entropy over `[0, log_b k]`
/// and top-k mass over `[0, 1]`, for the active rows.
pub fn stats_histograms(rows: &[TokenStatsRow], k: usize, entropy_base: f64, source: &str) -> String {
    let active: Vec<&TokenStatsRow> = rows.iter().filter(|r| r.active).collect();
    let entropy: Vec<f64> = active.iter().map(|r| f64::from(r.topk_entropy)).collect();
    let mass: Vec<f64> = active.iter().map(|r| f64::from(r.topk_mass)).collect();
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{}' font-family='sans-serif'>\n<rect width='100%' height='100%' fill='white'/>\n",
        2.0 * PANEL_W,
        PANEL_H + 90.0
    );
    let unit = if entropy_base == 2.0 { "bits".to_string() } else { format!("log base {entropy_base}") };
    panel(&mut svg, 0.0, &format!("top-{k} entropy"), &entropy, 0.0, (k as f64).ln() / entropy_base.ln(), &unit);
    panel(&mut svg, PANEL_W, &format!("top-{k} mass"), &mass, 0.0, 1.0, "");
    let _ = writeln!(
        svg,
        "<text x='40' y='{}' font-size='11' fill='#555'>{} active positions of {source}; red dashes: means. Falling entropy and shrinking mass warn of likelihood over-optimisation.</text>",
        PANEL_H + 75.0,
        active.len()
    );
    svg.push_str("</svg>\n");
    svg
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
}
