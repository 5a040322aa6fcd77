//! The trainer benchmark's table (markdown) and chart (SVG, plotters).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::trainer::{Measurement, Shape};

/// One shape at one thread count: daa's step and scoring pass, and
/// PyTorch's when the baseline ran.
#[derive(Debug, Clone)]
pub struct Row {
    /// The shape.
    pub shape: Shape,
    /// Threads.
    pub threads: usize,
    /// daa's optimizer step.
    pub step: Measurement,
    /// daa's forward-only scoring pass.
    pub score: Measurement,
    /// PyTorch's step, if measured.
    pub torch_step: Option<Measurement>,
    /// PyTorch's scoring pass, if measured.
    pub torch_score: Option<Measurement>,
}

impl Row {
    /// Whether daa and PyTorch scored the first sequence alike (relative
    /// 1e-4: f32 sums in different orders), when both ran.
    pub fn scores_agree(&self) -> Option<bool> {
        let t = self.torch_score.as_ref()?;
        Some((self.score.loss - t.loss).abs() <= 1e-4 * t.loss.abs().max(1.0))
    }

    /// `daa time / PyTorch time` of the step (below 1: daa is faster).
    pub fn step_ratio(&self) -> Option<f64> {
        self.torch_step.as_ref().map(|t| self.step.seconds / t.seconds)
    }

    /// One line for the terminal.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} threads: step {:.3} s ({:.0} tok/s, {:.0} MiB), scoring {:.3} s ({:.0} tok/s)",
            self.threads,
            self.step.seconds,
            self.step.tokens_per_s,
            self.step.peak_rss_mib,
            self.score.seconds,
            self.score.tokens_per_s
        );
        if let (Some(t), Some(ratio)) = (&self.torch_step, self.step_ratio()) {
            let _ = write!(s, "; PyTorch step {:.3} s ({:.0} MiB): daa/PyTorch {ratio:.2}×", t.seconds, t.peak_rss_mib);
        }
        if let Some(t) = &self.torch_score {
            let _ = write!(s, "; first log-probability daa {:.4} vs PyTorch {:.4}", self.score.loss, t.loss);
        }
        s
    }
}

/// The markdown table.
pub fn markdown(rows: &[Row]) -> String {
    let torch = rows.iter().any(|r| r.torch_step.is_some());
    let mut out = String::from(
        "One DPO optimizer step (forward of chosen + rejected, completion-only log-probabilities, sigmoid DPO \
         against cached reference scores, backward, clipping, AdamW) and one forward-only scoring pass, burn's \
         CPU backend (f32); median of the repetitions after one warm-up; tokens = all tokens of the batch; \
         peak = the process's peak resident memory.\n\n",
    );
    out.push_str("| shape | parameters | threads | step s | step tok/s | step peak MiB | scoring s | scoring tok/s |");
    if torch {
        out.push_str(
            " PyTorch step s | PyTorch peak MiB | PyTorch scoring s | step daa/PyTorch | scoring daa/PyTorch |",
        );
    }
    out.push('\n');
    out.push_str(&"|---".repeat(if torch { 13 } else { 8 }));
    out.push_str("|\n");
    for r in rows {
        let _ = write!(
            out,
            "| {} | {:.1} M | {} | {:.3} | {:.0} | {:.0} | {:.3} | {:.0} |",
            r.shape.name,
            r.shape.parameters() as f64 / 1e6,
            r.threads,
            r.step.seconds,
            r.step.tokens_per_s,
            r.step.peak_rss_mib,
            r.score.seconds,
            r.score.tokens_per_s
        );
        if torch {
            match (&r.torch_step, &r.torch_score) {
                (Some(ts), Some(tc)) => {
                    let _ = write!(
                        out,
                        " {:.3} | {:.0} | {:.3} | {:.2}× | {:.2}× |",
                        ts.seconds,
                        ts.peak_rss_mib,
                        tc.seconds,
                        r.step.seconds / ts.seconds,
                        r.score.seconds / tc.seconds
                    );
                }
                _ => out.push_str(" | | | | |"),
            }
        }
        out.push('\n');
    }
    out
}

fn drawing_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing the chart: {e:?}")
}

/// Bars of step tokens/s, one panel per shape: daa and (when measured)
/// PyTorch at each thread count.
pub fn chart(rows: &[Row], path: &Path) -> Result<()> {
    let mut shapes: Vec<&str> = rows.iter().map(|r| r.shape.name).collect();
    shapes.dedup();
    let root = SVGBackend::new(path, (360 * shapes.len().max(1) as u32, 360)).into_drawing_area();
    root.fill(&WHITE).map_err(drawing_error)?;
    let panels = root.split_evenly((1, shapes.len().max(1)));
    let daa = RGBColor(31, 95, 168);
    let torch = RGBColor(238, 76, 44);
    for (panel, shape) in panels.iter().zip(&shapes) {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.shape.name == *shape).collect();
        let mut bars: Vec<(String, f64, RGBColor)> = Vec::new();
        for r in &mine {
            bars.push((format!("daa {}t", r.threads), r.step.tokens_per_s, daa));
            if let Some(t) = &r.torch_step {
                bars.push((format!("torch {}t", r.threads), t.tokens_per_s, torch));
            }
        }
        let top = bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1.0) * 1.15;
        let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{shape}: step tokens/s"), ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..bars.len().max(1) as f64, 0f64..top)
            .map_err(drawing_error)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(bars.len().max(1))
            .x_label_formatter(&|x| labels.get(x.floor() as usize).cloned().unwrap_or_default())
            .y_labels(6)
            .draw()
            .map_err(drawing_error)?;
        chart
            .draw_series(bars.iter().enumerate().map(|(i, (_, v, color))| {
                Rectangle::new([(i as f64 + 0.15, 0.0), (i as f64 + 0.85, *v)], color.filled())
            }))
            .map_err(drawing_error)?;
        chart
            .draw_series(bars.iter().enumerate().map(|(i, (_, v, _))| {
                Text::new(format!("{v:.0}"), (i as f64 + 0.2, *v + top * 0.02), ("sans-serif", 12))
            }))
            .map_err(drawing_error)?;
    }
    root.present().map_err(drawing_error)?;
    Ok(())
}

/// Writes `trainer.md`, `trainer.svg` and `trainer.json` into `dir` and
/// prints the table.
pub fn write_report(rows: &[Row], dir: &Path) -> Result<()> {
    let table = markdown(rows);
    println!("\n{table}");
    std::fs::write(dir.join("trainer.md"), &table)?;
    chart(rows, &dir.join("trainer.svg"))?;
    let json: Vec<_> = rows
        .iter()
        .flat_map(|r| [Some(&r.step), Some(&r.score), r.torch_step.as_ref(), r.torch_score.as_ref()])
        .flatten()
        .collect();
    std::fs::write(dir.join("trainer.json"), serde_json::to_string_pretty(&json)?)?;
    println!("written: {} (and trainer.svg, trainer.json)", dir.join("trainer.md").display());
    Ok(())
}
