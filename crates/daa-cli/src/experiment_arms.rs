//! Section (f) of `daa experiment`'s report: the arms (regularisations) of
//! each loss side by side, with 95 % t intervals over seeds, and each arm's
//! paired difference from the unregularised arm (λ = 0) on the same seeds.
//!
//! For arm `a` and seed `s` with figure `x_{a,s}` (final win probability,
//! the best win probability of any evaluation, final gold reward, EAD, KL),
//! the table shows `x̄_a` and its t interval over seeds; the paired
//! difference is the t interval of `x_{a,s} − x_{0,s}` over the seeds both
//! arms finished (`daa_core::intervals`). With fewer than two seeds there is
//! no interval and the section says so.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use daa_core::intervals::{Interval, paired_t_interval, t_interval};

use crate::experiment_cmd::Regularisation;
use crate::experiment_report::RunData;
use crate::report_plot::{self, intervals};

/// Confidence level of every interval of the section.
pub const LEVEL: f64 = 0.95;

/// Reads one figure from a finished run.
type FigureOf = fn(&RunData) -> Option<f64>;

/// The figures compared, by name, from a finished run.
const FIGURES: [(&str, FigureOf); 5] = [
    ("final P_win", |r| r.points.last().map(|p| p.samples.win_prob)),
    ("best P_win", |r| r.points.iter().map(|p| p.samples.win_prob).reduce(f64::max)),
    ("final gold reward", |r| r.points.last().map(|p| p.samples.gold_reward)),
    ("final EAD", |r| r.points.last().map(|p| p.samples.ead)),
    ("final KL", |r| r.points.last().map(|p| p.samples.kl)),
];

/// `(loss, arm label)` → seed → the run.
type Arms<'a> = BTreeMap<(String, String), BTreeMap<(u64, Option<u64>), &'a RunData>>;

fn arms(runs: &[RunData]) -> Arms<'_> {
    let mut arms: Arms<'_> = BTreeMap::new();
    for r in runs.iter().filter(|r| !r.points.is_empty()) {
        let key = (format!("{} {}={}", r.spec.loss, r.spec.param, r.spec.value), r.spec.regularisation.label());
        arms.entry(key).or_default().insert((r.spec.seed, r.spec.testbed_seed), r);
    }
    arms
}

fn cell(interval: Option<Interval>, digits: usize) -> String {
    interval.map_or("–".into(), |i| i.display(digits))
}

/// Writes section (f) and `arms.svg`.
pub fn section_f(runs: &[RunData], out: &Path, md: &mut String) -> Result<()> {
    let arms = arms(runs);
    let most_seeds = arms.values().map(BTreeMap::len).max().unwrap_or(0);
    writeln!(md, "## (f) The arms side by side, with intervals over seeds\n")?;
    if most_seeds < 2 {
        writeln!(md, "Fewer than two seeds per arm: no intervals.\n")?;
        return Ok(());
    }
    writeln!(
        md,
        "Mean over seeds with its {:.0} % t interval; Δ: the paired difference from λ = 0 on the same seeds (a \
         difference whose interval contains 0 is inside the noise).\n",
        100.0 * LEVEL
    )?;
    let header: Vec<&str> = FIGURES.iter().map(|(name, _)| *name).collect();
    writeln!(md, "| setting | arm | seeds | {} | Δ final P_win | Δ best P_win |", header.join(" | "))?;
    writeln!(md, "|---|---|---|{}---|---|", "---|".repeat(FIGURES.len()))?;
    let mut bars = Vec::new();
    for ((setting, arm), seeds) in &arms {
        let values = |f: FigureOf| seeds.values().filter_map(|r| f(r)).collect::<Vec<f64>>();
        let cells: Vec<String> = FIGURES.iter().map(|(_, f)| cell(t_interval(&values(*f), LEVEL).ok(), 3)).collect();
        let baseline = arms.get(&(setting.clone(), Regularisation::Fixed(0.0).label()));
        let paired = |f: FigureOf| -> Option<Interval> {
            let base = baseline?;
            let (a, b): (Vec<f64>, Vec<f64>) =
                seeds.iter().filter_map(|(seed, r)| Some((f(r)?, f(base.get(seed)?)?))).unzip();
            paired_t_interval(&a, &b, LEVEL).ok()
        };
        let is_baseline = *arm == Regularisation::Fixed(0.0).label();
        let (d_final, d_best) = if is_baseline {
            ("—".to_string(), "—".to_string())
        } else {
            (cell(paired(FIGURES[0].1), 3), cell(paired(FIGURES[1].1), 3))
        };
        writeln!(md, "| {setting} | {arm} | {} | {} | {d_final} | {d_best} |", seeds.len(), cells.join(" | "))?;
        if let Ok(i) = t_interval(&values(FIGURES[0].1), LEVEL) {
            bars.push(report_plot::Interval {
                label: format!("{setting} {arm}"),
                mean: i.estimate,
                low: i.lower,
                high: i.upper,
            });
        }
    }
    let svg = intervals("(f) final win probability: mean and 95 % t interval over seeds", "P_win", &bars)?;
    daa_core::io::write_bytes_atomic(&out.join("arms.svg"), svg.as_bytes())?;
    writeln!(md, "\n![](arms.svg)\n")?;
    Ok(())
}
