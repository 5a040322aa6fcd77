//! `metrics.svg`: the evaluation series of a run as line charts, so the
//! signals of over-optimisation (falling top-k entropy and mass while the
//! chosen likelihood moves) are seen, not only read.

use std::fmt::Write as _;

use serde_json::Value;

const PANEL_W: f64 = 360.0;
const PANEL_H: f64 = 200.0;
const COLUMNS: usize = 3;

/// The panels: (title, metrics key).
pub const PANELS: [(&str, &str); 6] = [
    ("chosen log-lik / token", "eval/chosen_token_loglik"),
    ("rejected log-lik / token", "eval/rejected_token_loglik"),
    ("reward margin", "eval/rewards_margin"),
    ("top-k entropy", "eval/topk_entropy"),
    ("top-k mass", "eval/topk_mass"),
    ("entropy (nats)", "eval/entropy"),
];

fn panel(svg: &mut String, x0: f64, y0: f64, title: &str, points: &[(f64, f64)]) {
    let (left, top, w, h) = (x0 + 50.0, y0 + 30.0, PANEL_W - 70.0, PANEL_H - 60.0);
    let _ = writeln!(svg, "<text x='{left}' y='{}' font-size='13'>{title}</text>", y0 + 20.0);
    let _ = writeln!(svg, "<rect x='{left}' y='{top}' width='{w}' height='{h}' fill='none' stroke='#999'/>");
    if points.is_empty() {
        return;
    }
    let (x_min, x_max) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y_min, y_max) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let pad = ((y_max - y_min) * 0.05).max(1e-9);
    let (y_lo, y_hi) = (y_min - pad, y_max + pad);
    let sx = |x: f64| left + w * (x - x_min) / (x_max - x_min).max(1e-12);
    let sy = |y: f64| top + h * (1.0 - (y - y_lo) / (y_hi - y_lo));
    let path: Vec<String> = points.iter().map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y))).collect();
    let _ = writeln!(svg, "<polyline points='{}' fill='none' stroke='#1f5fa8' stroke-width='2'/>", path.join(" "));
    for &(x, y) in points {
        let _ = writeln!(svg, "<circle cx='{:.1}' cy='{:.1}' r='2.5' fill='#1f5fa8'/>", sx(x), sy(y));
    }
    let _ =
        writeln!(svg, "<text x='{}' y='{}' font-size='10' text-anchor='end'>{y_hi:.4}</text>", left - 3.0, top + 8.0);
    let _ = writeln!(svg, "<text x='{}' y='{}' font-size='10' text-anchor='end'>{y_lo:.4}</text>", left - 3.0, top + h);
    let _ = writeln!(svg, "<text x='{left}' y='{}' font-size='10'>step {x_min}</text>", top + h + 14.0);
    let _ = writeln!(
        svg,
        "<text x='{}' y='{}' font-size='10' text-anchor='end'>step {x_max}</text>",
        left + w,
        top + h + 14.0
    );
}

/// An SVG of the eval records among `records`, one panel per [`PANELS`] entry.
pub fn eval_chart(records: &[Value], title: &str) -> String {
    let rows = PANELS.len().div_ceil(COLUMNS);
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{}' font-family='sans-serif'>\n<rect width='100%' height='100%' fill='white'/>\n<text x='20' y='24' font-size='15'>{title}</text>\n",
        COLUMNS as f64 * PANEL_W,
        rows as f64 * PANEL_H + 40.0
    );
    for (i, (name, key)) in PANELS.iter().enumerate() {
        let points: Vec<(f64, f64)> = records
            .iter()
            .filter(|r| r.get("type").and_then(Value::as_str) == Some("eval"))
            .filter_map(|r| Some((r.get("step")?.as_f64()?, r.get(*key)?.as_f64()?)))
            .collect();
        let (col, row) = (i % COLUMNS, i / COLUMNS);
        panel(&mut svg, col as f64 * PANEL_W, 40.0 + row as f64 * PANEL_H, name, &points);
    }
    svg.push_str("</svg>\n");
    svg
}
