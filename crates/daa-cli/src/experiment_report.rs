//! The report of `daa experiment`: `report.md` and five charts from the
//! finished runs' `metrics.jsonl`.
//!
//! (a) `winprob_vs_loglik.svg`: win probability against the mean chosen
//!     log-likelihood per token at every evaluation, per loss, with linear
//!     and quadratic least-squares fits and their RMSE;
//! (b) `indicators.svg`: per setting (seed 0), win probability with the
//!     top-k entropy and mass (each min–max scaled to [0, 1]) and the
//!     confirmed turning points;
//! (c) `gold_vs_kl.svg`: gold-reward gain over the run's first evaluation
//!     against `d = √KL`, with Gao et al.'s forms `d(α − βd)` and
//!     `d(α − β ln d)`;
//! (d) `regularisation.svg`: final win probability per loss and
//!     regularisation, mean and range over seeds (and values);
//! (e) `early_stopping.svg`: early stopping, replayed with daa-core's
//!     detector on each run's evaluations: win probability at the stop, at
//!     the kept `best-indicator` evaluation, at the best evaluation and at
//!     the end;
//! (f) the arms side by side with intervals ([`crate::experiment_arms`]);
//! (g)–(i) with the study's test and generalisation prompts
//!     ([`crate::experiment_study`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use daa_core::monitor::{Indicator, TurningPointConfig, TurningPointDetector};
use daa_train::records::{MetricsRecord, MonitorEvent};
use daa_train::run::metrics::read_metrics;
use daa_train::sample_eval::SampleReport;

use crate::experiment_cmd::{Regularisation, RunSpec};
use crate::experiment_splits::{RunOutcomes, read_outcomes};
use crate::fit::{Fit, gao_best_of_n, gao_rl, least_squares, leave_one_run_out_rmse, linear, quadratic};
use crate::report_plot::{Interval, Line, Panel, intervals, panels};

/// One evaluation with samples.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Point {
    pub step: u64,
    pub loglik: f64,
    pub entropy: f64,
    pub mass: f64,
    pub samples: SampleReport,
}

/// A finished run's evaluations and turning points.
pub(crate) struct RunData {
    pub spec: RunSpec,
    pub points: Vec<Point>,
    pub turns: Vec<(Indicator, u64, u64)>,
    /// The checkpoints judged on the test and generalisation prompts (the study).
    pub splits: Option<RunOutcomes>,
}

fn load(out: &Path, spec: &RunSpec) -> Result<Option<RunData>> {
    let dir = out.join("runs").join(spec.name());
    if !dir.join("summary.json").exists() {
        return Ok(None);
    }
    let records = read_metrics(&dir.join("metrics.jsonl"))?;
    let points = records
        .iter()
        .filter_map(MetricsRecord::eval)
        .filter_map(|e| {
            Some(Point {
                step: e.step,
                loglik: e.report.chosen_token_loglik,
                entropy: e.report.topk_entropy,
                mass: e.report.topk_mass,
                samples: e.samples?,
            })
        })
        .collect();
    let turns = records
        .iter()
        .filter_map(MetricsRecord::event)
        .filter_map(|e| match e.event {
            MonitorEvent::TurningPoint { indicator, peak_step, .. } => Some((indicator, peak_step, e.step)),
            MonitorEvent::EarlyStop { .. } => None,
        })
        .collect();
    Ok(Some(RunData { spec: spec.clone(), points, turns, splits: read_outcomes(&dir)? }))
}

fn curve(fit: &Fit, basis: &dyn Fn(f64) -> Vec<f64>, lo: f64, hi: f64) -> Vec<(f64, f64)> {
    (0..=40).map(|i| lo + (hi - lo) * f64::from(i) / 40.0).map(|x| (x, fit.predict(basis, x))).collect()
}

fn span(xs: &[f64]) -> (f64, f64) {
    xs.iter().fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)))
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() { f64::NAN } else { xs.iter().sum::<f64>() / xs.len() as f64 }
}

/// Step of the highest EMA-smoothed (α = ½) win probability.
fn win_peak(points: &[Point]) -> Option<(u64, f64)> {
    let mut smoothed: Option<f64> = None;
    let mut best: Option<(u64, f64)> = None;
    for p in points {
        let s = smoothed.map_or(p.samples.win_prob, |s| 0.5 * p.samples.win_prob + 0.5 * s);
        smoothed = Some(s);
        if best.is_none_or(|(_, b)| s > b) {
            best = Some((p.step, s));
        }
    }
    best
}

fn losses(runs: &[RunData]) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for r in runs {
        if !names.contains(&r.spec.loss) {
            names.push(r.spec.loss);
        }
    }
    names
}

/// (a): fits of win probability on chosen log-likelihood, per loss.
fn section_a(runs: &[RunData], out: &Path, md: &mut String) -> Result<()> {
    writeln!(md, "## (a) Win probability against chosen log-likelihood\n")?;
    writeln!(md, "Every evaluation of every run; least squares. RMSE reduction = 1 − RMSE(quadratic)/RMSE(linear).\n")?;
    writeln!(md, "| loss | evaluations | RMSE linear | RMSE quadratic | reduction | quadratic a + b·ℓ + c·ℓ² |")?;
    writeln!(md, "|---|---|---|---|---|---|")?;
    let mut charts = Vec::new();
    for loss in losses(runs) {
        let pts: Vec<(f64, f64)> = runs
            .iter()
            .filter(|r| r.spec.loss == loss)
            .flat_map(|r| r.points.iter().map(|p| (p.loglik, p.samples.win_prob)))
            .collect();
        let (xs, ys): (Vec<f64>, Vec<f64>) = pts.iter().copied().unzip();
        let (l, q) = (least_squares(&xs, &ys, &linear), least_squares(&xs, &ys, &quadratic));
        let mut panel = Panel {
            title: format!("{loss}: win probability"),
            x_desc: "chosen log-likelihood per token".into(),
            y_desc: "P_win".into(),
            points: pts.clone(),
            lines: Vec::new(),
        };
        let (lo, hi) = span(&xs);
        match (&l, &q) {
            (Some(l), Some(q)) => {
                let c = &q.coefficients;
                writeln!(
                    md,
                    "| {loss} | {} | {:.4} | {:.4} | {:.1} % | {:.3} {:+.3}·ℓ {:+.4}·ℓ² |",
                    xs.len(),
                    l.rmse,
                    q.rmse,
                    100.0 * (1.0 - q.rmse / l.rmse),
                    c[0],
                    c[1],
                    c[2]
                )?;
                panel.lines.push(Line {
                    label: format!("linear (RMSE {:.4})", l.rmse),
                    points: curve(l, &linear, lo, hi),
                    thin: false,
                });
                panel.lines.push(Line {
                    label: format!("quadratic (RMSE {:.4})", q.rmse),
                    points: curve(q, &quadratic, lo, hi),
                    thin: false,
                });
            }
            _ => writeln!(md, "| {loss} | {} | – | – | – | too few evaluations |", xs.len())?,
        }
        charts.push(panel);
    }
    writeln!(
        md,
        "\nOut of sample (leave one run out: each run predicted by the fit to the others; in-sample RMSE always \
         favours the larger model):\n"
    )?;
    writeln!(md, "| loss | runs | CV-RMSE linear | CV-RMSE quadratic |\n|---|---|---|---|")?;
    for loss in losses(runs) {
        let per_run: Vec<Vec<(f64, f64)>> = runs
            .iter()
            .filter(|r| r.spec.loss == loss)
            .map(|r| r.points.iter().map(|p| (p.loglik, p.samples.win_prob)).collect())
            .collect();
        let cv = |basis: &dyn Fn(f64) -> Vec<f64>| {
            leave_one_run_out_rmse(&per_run, basis).map_or("–".to_string(), |e| format!("{e:.4}"))
        };
        writeln!(md, "| {loss} | {} | {} | {} |", per_run.len(), cv(&linear), cv(&quadratic))?;
    }
    write_svg(out, "winprob_vs_loglik.svg", &panels("(a) win probability against chosen log-likelihood", &charts, 3)?)?;
    writeln!(md, "\n![](winprob_vs_loglik.svg)\n")?;
    Ok(())
}

/// (b): indicator curves, turning points and the win-probability peak.
fn section_b(runs: &[RunData], out: &Path, md: &mut String) -> Result<()> {
    writeln!(md, "## (b) Indicators and win probability\n")?;
    writeln!(md, "Lead = win-probability peak step − step; positive: before the peak (smoothed α = ½ peak).\n")?;
    writeln!(
        md,
        "| run | win peak (step, P) | entropy turn: peak / confirmed | mass turn: peak / confirmed | entropy lead | mass lead |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|")?;
    let mut charts = Vec::new();
    let mut leads: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    for r in runs {
        let Some((peak_step, peak)) = win_peak(&r.points) else { continue };
        let turn = |ind: Indicator| r.turns.iter().find(|t| t.0 == ind).map(|t| (t.1, t.2));
        let show = |t: Option<(u64, u64)>| t.map_or("none".to_string(), |(p, c)| format!("{p} / {c}"));
        let lead = |t: Option<(u64, u64)>| t.map(|(_, c)| peak_step as f64 - c as f64);
        let (h, m) = (turn(Indicator::TopkEntropy), turn(Indicator::TopkMass));
        for (name, l) in [("entropy", lead(h)), ("mass", lead(m))] {
            if let Some(l) = l {
                leads.entry((r.spec.loss, name)).or_default().push(l);
            }
        }
        writeln!(
            md,
            "| {} | {peak_step}, {peak:.3} | {} | {} | {} | {} |",
            r.spec.name(),
            show(h),
            show(m),
            lead(h).map_or("–".into(), |l| format!("{l:+}")),
            lead(m).map_or("–".into(), |l| format!("{l:+}"))
        )?;
        if r.spec.seed != 0 {
            continue;
        }
        let scaled = |f: &dyn Fn(&Point) -> f64| {
            let (lo, hi) = span(&r.points.iter().map(f).collect::<Vec<_>>());
            let width = (hi - lo).max(1e-12);
            r.points.iter().map(|p| (p.step as f64, (f(p) - lo) / width)).collect::<Vec<_>>()
        };
        let mut lines = vec![
            Line { label: "win prob (scaled)".into(), points: scaled(&|p| p.samples.win_prob), thin: false },
            Line { label: "top-k entropy (scaled)".into(), points: scaled(&|p| p.entropy), thin: false },
            Line { label: "top-k mass (scaled)".into(), points: scaled(&|p| p.mass), thin: false },
        ];
        for (indicator, _, confirmed) in &r.turns {
            lines.push(Line {
                label: format!("{} turned", indicator.name()),
                points: vec![(*confirmed as f64, 0.0), (*confirmed as f64, 1.0)],
                thin: true,
            });
        }
        charts.push(Panel {
            title: r.spec.setting(),
            x_desc: "step".into(),
            y_desc: "scaled".into(),
            points: vec![],
            lines,
        });
    }
    writeln!(md, "\nMean lead of the confirmed turn before the win-probability peak, per loss (steps):\n")?;
    for ((loss, indicator), values) in &leads {
        writeln!(md, "- {loss}, {indicator}: {:+.1} over {} runs", mean(values), values.len())?;
    }
    write_svg(
        out,
        "indicators.svg",
        &panels("(b) indicators, turning points and win probability (seed 0)", &charts, 3)?,
    )?;
    writeln!(md, "\n![](indicators.svg)\n")?;
    Ok(())
}

/// (c): gold-reward gain against √KL with Gao et al.'s forms.
fn section_c(runs: &[RunData], out: &Path, md: &mut String) -> Result<()> {
    writeln!(md, "## (c) Gold reward against √KL\n")?;
    writeln!(md, "Gain = gold reward − the run's first evaluation's; d = √max(KL, 0), KL = `eval/kl`.\n")?;
    let older = runs.iter().flat_map(|r| &r.points).filter(|p| p.samples.kl_se.is_none()).count();
    if older > 0 {
        writeln!(
            md,
            "{older} evaluations written before `eval/kl` was the policy's KL (they have no `eval/kl_se`; their \
             `eval/kl` is the tempered samples' log-ratio) are left out.\n"
        )?;
    }
    writeln!(md, "| loss | points | d(α − βd): α, β, RMSE | d(α − β ln d): α, β, RMSE |")?;
    writeln!(md, "|---|---|---|---|")?;
    let mut charts = Vec::new();
    for loss in losses(runs) {
        let pts: Vec<(f64, f64)> = runs
            .iter()
            .filter(|r| r.spec.loss == loss)
            .flat_map(|r| {
                let start = r.points.first().map_or(0.0, |p| p.samples.gold_reward);
                r.points
                    .iter()
                    .filter(|p| p.samples.kl_se.is_some())
                    .map(move |p| (p.samples.kl.max(0.0).sqrt(), p.samples.gold_reward - start))
            })
            .collect();
        let (xs, ys): (Vec<f64>, Vec<f64>) = pts.iter().copied().unzip();
        let (lo, hi) = span(&xs);
        let mut panel = Panel {
            title: format!("{loss}: gold reward gain"),
            x_desc: "√KL".into(),
            y_desc: "gain".into(),
            points: pts.clone(),
            lines: vec![],
        };
        let mut cells = Vec::new();
        for (name, basis) in [("d(α − βd)", &gao_best_of_n as &dyn Fn(f64) -> Vec<f64>), ("d(α − β ln d)", &gao_rl)]
        {
            match least_squares(&xs, &ys, basis) {
                Some(f) => {
                    cells.push(format!("{:.3}, {:.3}, {:.4}", f.coefficients[0], f.coefficients[1], f.rmse));
                    panel.lines.push(Line {
                        label: format!("{name} (RMSE {:.4})", f.rmse),
                        points: curve(&f, basis, lo.max(0.0), hi),
                        thin: false,
                    });
                }
                None => cells.push("–".into()),
            }
        }
        writeln!(md, "| {loss} | {} | {} | {} |", xs.len(), cells[0], cells[1])?;
        charts.push(panel);
    }
    write_svg(out, "gold_vs_kl.svg", &panels("(c) gold reward gain against √KL", &charts, 3)?)?;
    writeln!(md, "\n![](gold_vs_kl.svg)\n")?;
    Ok(())
}

/// (d): final win probability per loss and regularisation.
fn section_d(runs: &[RunData], out: &Path, md: &mut String) -> Result<()> {
    writeln!(md, "## (d) Fixed against adaptive regularisation\n")?;
    writeln!(md, "Final win probability, mean and range over seeds (and the loss's values).\n")?;
    writeln!(md, "| loss | regularisation | runs | mean | min | max |")?;
    writeln!(md, "|---|---|---|---|---|---|")?;
    let mut groups: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for r in runs {
        if let Some(last) = r.points.last() {
            groups
                .entry((r.spec.loss.to_string(), r.spec.regularisation.label()))
                .or_default()
                .push(last.samples.win_prob);
        }
    }
    let mut bars = Vec::new();
    for ((loss, reg), values) in &groups {
        let (lo, hi) = span(values);
        writeln!(md, "| {loss} | {reg} | {} | {:.4} | {lo:.4} | {hi:.4} |", values.len(), mean(values))?;
        bars.push(Interval { label: format!("{loss} {reg}"), mean: mean(values), low: lo, high: hi });
    }
    for loss in losses(runs) {
        let adaptive = groups.get(&(loss.to_string(), Regularisation::Adaptive.label()));
        let best_fixed = groups
            .iter()
            .filter(|((l, reg), _)| l == loss && reg.starts_with("λ="))
            .map(|(_, v)| mean(v))
            .fold(f64::NEG_INFINITY, f64::max);
        if let Some(a) = adaptive {
            writeln!(
                md,
                "\n{loss}: adaptive {:.4} against the best fixed λ {best_fixed:.4} ({:+.4}).",
                mean(a),
                mean(a) - best_fixed
            )?;
        }
    }
    write_svg(
        out,
        "regularisation.svg",
        &intervals("(d) final win probability (mean, range over seeds)", "P_win", &bars)?,
    )?;
    writeln!(md, "\n![](regularisation.svg)\n")?;
    Ok(())
}

/// (e): what early stopping would keep, replayed on each run's evaluations.
fn section_e(runs: &[RunData], out: &Path, md: &mut String) -> Result<()> {
    writeln!(md, "## (e) Early stopping\n")?;
    writeln!(
        md,
        "daa-core's detector (defaults) replayed on each run: the stop is the first confirmed turn; `kept` is the \
         `best-indicator` evaluation (the last new indicator peak before it).\n"
    )?;
    writeln!(md, "| run | stop step | P_win at stop | kept step | P_win kept | best P_win | final P_win |")?;
    writeln!(md, "|---|---|---|---|---|---|---|")?;
    let mut sums: BTreeMap<&str, Vec<[f64; 4]>> = BTreeMap::new();
    for r in runs {
        let mut detector = TurningPointDetector::new(TurningPointConfig::default())?;
        let (mut kept, mut stop) = (None, None);
        for p in &r.points {
            let o = detector.observe(p.step, p.entropy, p.mass)?;
            if o.at_peak {
                kept = Some(*p);
            }
            if stop.is_none() && !o.turning_points.is_empty() {
                stop = Some(*p);
            }
        }
        let (Some(last), Some(best)) = (r.points.last(), r.points.iter().map(|p| p.samples.win_prob).reduce(f64::max))
        else {
            continue;
        };
        let at_stop = stop.unwrap_or(*last);
        let kept = kept.unwrap_or(at_stop);
        writeln!(
            md,
            "| {} | {} | {:.4} | {} | {:.4} | {best:.4} | {:.4} |",
            r.spec.name(),
            stop.map_or("none (end)".into(), |p| p.step.to_string()),
            at_stop.samples.win_prob,
            kept.step,
            kept.samples.win_prob,
            last.samples.win_prob
        )?;
        sums.entry(r.spec.loss).or_default().push([
            at_stop.samples.win_prob,
            kept.samples.win_prob,
            best,
            last.samples.win_prob,
        ]);
    }
    writeln!(md, "\n| loss | runs | at stop | kept | best | final |\n|---|---|---|---|---|---|")?;
    let mut bars = Vec::new();
    for (loss, rows) in &sums {
        let column = |i: usize| rows.iter().map(|r| r[i]).collect::<Vec<_>>();
        writeln!(
            md,
            "| {loss} | {} | {:.4} | {:.4} | {:.4} | {:.4} |",
            rows.len(),
            mean(&column(0)),
            mean(&column(1)),
            mean(&column(2)),
            mean(&column(3))
        )?;
        for (i, what) in ["at the stop", "kept (best-indicator)", "best evaluation", "end"].into_iter().enumerate() {
            let values = column(i);
            let (low, high) = span(&values);
            bars.push(Interval { label: format!("{loss}: {what}"), mean: mean(&values), low, high });
        }
    }
    write_svg(
        out,
        "early_stopping.svg",
        &intervals("(e) early stopping: win probability (mean, range over runs)", "P_win", &bars)?,
    )?;
    writeln!(md, "\n![](early_stopping.svg)\n")?;
    Ok(())
}

fn write_svg(out: &Path, name: &str, svg: &str) -> Result<()> {
    Ok(daa_core::io::write_bytes_atomic(&out.join(name), svg.as_bytes())?)
}

/// Writes `report.md` and the charts into `out` from the finished runs of `specs`.
pub fn write_report(out: &Path, specs: &[RunSpec]) -> Result<PathBuf> {
    let runs: Vec<RunData> =
        specs.iter().map(|s| load(out, s)).collect::<Result<Vec<_>>>()?.into_iter().flatten().collect();
    let mut md = String::new();
    writeln!(md, "# daa experiment: {}\n", out.display())?;
    writeln!(md, "{} of {} runs finished; each with sample evaluation (gold judge).\n", runs.len(), specs.len())?;
    if runs.iter().all(|r| r.points.is_empty()) {
        writeln!(md, "No run has sample evaluations (`[monitor.samples]`): nothing to report.")?;
    } else {
        section_a(&runs, out, &mut md)?;
        section_b(&runs, out, &mut md)?;
        section_c(&runs, out, &mut md)?;
        section_d(&runs, out, &mut md)?;
        section_e(&runs, out, &mut md)?;
        crate::experiment_arms::section_f(&runs, out, &mut md)?;
        crate::experiment_study::sections(&runs, out, &mut md)?;
    }
    let path = out.join("report.md");
    daa_core::io::write_bytes_atomic(&path, md.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
pub(crate) mod tests {
    use daa_train::EvalRecord;
    use daa_train::eval::EvalReport;
    use daa_train::records::{EventRecord, MetricsRecord, MonitorEvent};
    use daa_train::sample_eval::SampleReport;

    use super::*;
    use crate::experiment_cmd::{Preset, sweep};

    /// Sample figures with the given win probability, gold reward and KL
    /// (the rest fixed): what planted runs write.
    pub(crate) fn planted_samples(win_prob: f64, gold_reward: f64, kl: f64) -> SampleReport {
        SampleReport {
            win_prob,
            win_rate: win_prob,
            gold_reward,
            kl,
            kl_se: Some(0.01),
            kl_sequence: Some(kl),
            kl_sequence_se: Some(0.1),
            tempered_log_ratio: Some(kl),
            ead_1: 0.5,
            ead_2: 0.5,
            ead_3: 0.5,
            ead_4: 0.5,
            ead_5: 0.5,
            ead: 0.5,
            sample_topk_entropy: 3.0,
            sample_topk_mass: 0.7,
            length: 7.0,
        }
    }

    /// A run whose win probability is exactly quadratic in the chosen
    /// log-likelihood, shifted by `shift`.
    fn planted_run(dir: &Path, seed: u64, shift: f64) {
        std::fs::create_dir_all(dir).unwrap();
        let mut lines = String::new();
        for i in 0..12u64 {
            let loglik = -2.5 - 0.1 * i as f64;
            let win = 0.55 - 2.0 * (loglik + 3.0).powi(2) + 0.001 * seed as f64 + shift;
            let report = EvalReport {
                loss: 0.6,
                accuracy: 0.6,
                margin: 0.1,
                chosen_token_loglik: loglik,
                rejected_token_loglik: loglik - 0.2,
                topk_entropy: 3.0 + if i < 4 { 0.05 * i as f64 } else { 0.2 - 0.05 * (i - 4) as f64 },
                topk_mass: 0.7,
                entropy: 2.7,
            };
            let kl = 0.5 * i as f64;
            let samples = planted_samples(win, 0.1 * kl.sqrt() - 0.01 * kl, kl);
            let record = MetricsRecord::Eval(EvalRecord { step: 16 * i, report, samples: Some(samples) });
            lines.push_str(&format!("{}\n", serde_json::to_string(&record).unwrap()));
        }
        let event = MonitorEvent::TurningPoint {
            indicator: Indicator::TopkEntropy,
            peak_step: 48,
            peak_value: 3.2,
            value: 3.1,
        };
        let record = MetricsRecord::Event(EventRecord { step: 96, event });
        lines.push_str(&format!("{}\n", serde_json::to_string(&record).unwrap()));
        std::fs::write(dir.join("metrics.jsonl"), lines).unwrap();
        std::fs::write(dir.join("summary.json"), "{}").unwrap();
    }

    #[test]
    fn the_report_fits_planted_curves_and_draws_every_chart() {
        let out = tempfile::tempdir().unwrap();
        let (specs, _) = sweep(Preset::Small);
        // Two finished runs of one loss; the rest never ran.
        for spec in specs.iter().filter(|s| s.loss == "dpo" && s.regularisation == Regularisation::Fixed(0.0)) {
            planted_run(&out.path().join("runs").join(spec.name()), spec.seed, 0.0);
        }
        let report = std::fs::read_to_string(write_report(out.path(), &specs).unwrap()).unwrap();
        assert!(report.contains("2 of 18 runs finished"), "{report}");
        // The two runs lie on one parabola 0.001 apart (the seed's offset): the quadratic fit
        // recovers it (c = −2, b = −12) with residuals ±0.0005, far below the line's.
        let row = report.lines().find(|l| l.starts_with("| dpo | 24 |")).unwrap();
        assert!(row.contains("| 0.0005 |") && row.contains("-12.000·ℓ -2.0000·ℓ²"), "{row}");
        assert!(row.contains("99.8 %"), "{row}");
        // The win-probability peak (ℓ = −3, step 80 smoothed near it) and the planted turn.
        assert!(report.contains("| 48 / 96 |"), "{report}");
        for chart in ["winprob_vs_loglik", "indicators", "gold_vs_kl", "regularisation", "early_stopping"] {
            let svg = std::fs::read_to_string(out.path().join(format!("{chart}.svg"))).unwrap();
            assert!(svg.starts_with("<svg"), "{chart}");
        }
        // The replayed detector stops after the planted entropy peak and keeps an evaluation before it.
        let stop_row =
            report.lines().find(|l| l.starts_with("| dpo-beta0.1-lam0-s0 |") && l.matches('|').count() == 8).unwrap();
        assert!(!stop_row.contains("none (end)"), "{stop_row}");
        assert!(report.contains("## (f)") && report.contains("| dpo beta=0.1 | λ=0 | 2 |"), "{report}");
        // Out of sample the planted parabola still wins: the line misses its curvature.
        let cv = report.lines().find(|l| l.starts_with("| dpo | 2 |")).unwrap();
        assert!(cv.ends_with("| 0.0010 |"), "{cv}");
    }

    #[test]
    fn the_arms_carry_t_intervals_and_paired_differences() {
        let out = tempfile::tempdir().unwrap();
        let (specs, _) = sweep(Preset::Small);
        // λ = 0.1 wins by 0.010 on seed 0 and 0.012 on seed 1: paired mean
        // 0.011, SD √2·0.001, SE 0.001, t_{0.975,1} = 12.706 → ±0.0127.
        for spec in specs.iter().filter(|s| s.loss == "dpo") {
            let shift = match spec.regularisation {
                Regularisation::Fixed(0.0) => 0.0,
                Regularisation::Fixed(_) => 0.01 + 0.002 * spec.seed as f64,
                _ => continue,
            };
            planted_run(&out.path().join("runs").join(spec.name()), spec.seed, shift);
        }
        let report = std::fs::read_to_string(write_report(out.path(), &specs).unwrap()).unwrap();
        let row = report.lines().find(|l| l.starts_with("| dpo beta=0.1 | λ=0.1 | 2 |")).unwrap();
        assert!(row.ends_with("| 0.011 [-0.002, 0.024] | 0.011 [-0.002, 0.024] |"), "{row}");
        // Final P_win of λ = 0: −0.17 and −0.169 → mean −0.1695 ± 12.706·0.0005.
        let base = report.lines().find(|l| l.starts_with("| dpo beta=0.1 | λ=0 | 2 |")).unwrap();
        assert!(base.contains(" [-0.176, -0.163] |") && base.ends_with("| — | — |"), "{base}");
        assert!(std::fs::read_to_string(out.path().join("arms.svg")).unwrap().starts_with("<svg"));
    }
}
