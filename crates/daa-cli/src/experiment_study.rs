//! Sections (g)–(i) of `daa experiment`'s report, from the runs judged on
//! the test and generalisation prompts ([`crate::experiment_splits`]).
//!
//! **Selection and test.** Everything chosen is chosen on the selection
//! prompts (the runs' own evaluations): the best fixed λ (highest mean final
//! selection `P_win` over seeds), the fixed stopping step, the KL threshold
//! and the threshold on chosen log-likelihood's drop from its start (each
//! chosen on the *other* seeds of the arm: leave one seed out, among the
//! values those seeds reached), a run's best selection evaluation. Everything reported is read on
//! the test prompts, which no run, controller or rule saw.
//!
//! (g) the arms on test and generalisation prompts: final `P_win`, the best
//!     checkpoint's, `P_win` where the indicators' rule stops, final gold
//!     reward; paired differences from the best fixed λ with a t interval
//!     over seeds and a hierarchical bootstrap over seeds and prompts
//!     (`daa_core::intervals`);
//! (h) early stopping: each rule's stopping step replayed on the selection
//!     evaluations, its regret `P_test(oracle) − P_test(stop)` (the oracle is
//!     the best checkpoint on test prompts, a maximum of noisy values, so
//!     regret is biased up by a little for every rule alike) with a t
//!     interval over seeds;
//! (i) turning points against a null: the same detector on top-k entropy,
//!     top-k mass, chosen log-likelihood and a statistic that carries no
//!     information (uniform noise drawn per seed and step: it peaks and
//!     "turns" at random; a monotone one such as the step count never turns,
//!     since the detector needs a peak after the first evaluation), each
//!     compared with the test win probability's peak;
//! (j) test win probability against chosen log-likelihood, line against
//!     quadratic by leave-one-seed-out cross-validation (`crate::fit`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use daa_core::intervals::{Interval, hierarchical_bootstrap, paired_t_interval, t_interval};
use daa_core::monitor::{TurningPointConfig, TurningPointDetector};
use daa_train::rng::uniform_open;

use crate::experiment_cmd::Regularisation;
use crate::experiment_report::{Point, RunData};
use crate::experiment_splits::RunOutcomes;
use crate::fit::{held_out_errors, least_squares, linear, quadratic};
use crate::report_plot::{self, Line, Panel, intervals};

/// Confidence level of every interval.
const LEVEL: f64 = 0.95;
/// Bootstrap resamples and seed.
const REPLICATES: usize = 4000;
const BOOTSTRAP_SEED: u64 = 0xB007;

/// Which split a figure is read on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Split {
    Test,
    Generalisation,
}

impl Split {
    fn name(self) -> &'static str {
        match self {
            Self::Test => "test",
            Self::Generalisation => "generalisation",
        }
    }
}

/// A judged run: its selection evaluations and its split outcomes.
struct Judged<'a> {
    run: &'a RunData,
    splits: &'a RunOutcomes,
}

impl Judged<'_> {
    /// Mean `P_win` on `split` at `step` (a checkpoint of the run).
    fn win(&self, split: Split, step: u64) -> Option<f64> {
        let c = self.splits.at(step)?;
        Some(match split {
            Split::Test => c.test.mean_win_prob(),
            Split::Generalisation => c.generalisation.mean_win_prob(),
        })
    }

    fn per_prompt(&self, split: Split, step: u64) -> Option<&[f64]> {
        let c = self.splits.at(step)?;
        Some(match split {
            Split::Test => &c.test.win_prob,
            Split::Generalisation => &c.generalisation.win_prob,
        })
    }

    fn last_step(&self) -> Option<u64> {
        self.run.points.last().map(|p| p.step)
    }

    /// The checkpoint with the highest test `P_win`.
    fn oracle(&self) -> Option<u64> {
        self.splits
            .checkpoints
            .iter()
            .max_by(|a, b| a.test.mean_win_prob().total_cmp(&b.test.mean_win_prob()))
            .map(|c| c.step)
    }
}

/// Arm label → seed → judged run (the study has one loss setting).
type Arms<'a> = BTreeMap<String, BTreeMap<u64, Judged<'a>>>;

fn judged_arms(runs: &[RunData]) -> Arms<'_> {
    let mut arms: Arms<'_> = BTreeMap::new();
    for run in runs.iter().filter(|r| !r.points.is_empty()) {
        if let Some(splits) = &run.splits {
            arms.entry(run.spec.regularisation.label()).or_default().insert(run.spec.seed, Judged { run, splits });
        }
    }
    arms
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

fn cell(interval: Option<Interval>) -> String {
    interval.map_or("–".into(), |i| i.display(3))
}

/// The fixed-λ arm with the highest mean final selection `P_win`.
fn best_fixed(runs: &[RunData], arms: &Arms<'_>) -> Option<(String, f64)> {
    let fixed: Vec<String> = runs
        .iter()
        .filter(|r| matches!(r.spec.regularisation, Regularisation::Fixed(_)))
        .map(|r| r.spec.regularisation.label())
        .collect();
    arms.iter()
        .filter(|(label, _)| fixed.contains(label))
        .map(|(label, seeds)| {
            let finals: Vec<f64> =
                seeds.values().filter_map(|j| j.run.points.last().map(|p| p.samples.win_prob)).collect();
            (label.clone(), mean(&finals))
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

/// Replays daa-core's detector on `(entropy channel, mass channel)` values:
/// the first confirmed turn `(peak step, confirmed step)` and the last
/// evaluation at a new peak before it (what `best-indicator/` keeps).
fn replay(points: &[Point], value: &dyn Fn(&Point) -> (f64, f64)) -> (Option<(u64, u64)>, Option<u64>) {
    let Ok(mut detector) = TurningPointDetector::new(TurningPointConfig::default()) else { return (None, None) };
    let mut kept = None;
    for p in points {
        let (h, m) = value(p);
        let Ok(o) = detector.observe(p.step, h, m) else { return (None, kept) };
        if o.at_peak {
            kept = Some(p.step);
        }
        if let Some(t) = o.turning_points.first() {
            return (Some((t.peak_step, p.step)), kept);
        }
    }
    (None, kept)
}

/// The indicators' rule: stop at the first confirmed turn of top-k entropy
/// or mass and keep the last evaluation at a new peak; no turn: the end.
fn indicator_stop(j: &Judged<'_>) -> Option<u64> {
    match replay(&j.run.points, &|p| (p.entropy, p.mass)) {
        (Some(_), kept) => kept.or(j.last_step()),
        (None, _) => j.last_step(),
    }
}

/// Steps of the run's evaluations with the selection `P_win`.
fn selection_curve(j: &Judged<'_>) -> Vec<(u64, f64)> {
    j.run.points.iter().map(|p| (p.step, p.samples.win_prob)).collect()
}

fn argmax(curve: &[(u64, f64)]) -> Option<u64> {
    curve.iter().max_by(|a, b| a.1.total_cmp(&b.1)).map(|c| c.0)
}

/// The step where the other seeds' mean selection `P_win` is highest.
fn fixed_step(seed: u64, arm: &BTreeMap<u64, Judged<'_>>) -> Option<u64> {
    let mut by_step: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for (_, j) in arm.iter().filter(|(s, _)| **s != seed) {
        for (step, w) in selection_curve(j) {
            by_step.entry(step).or_default().push(w);
        }
    }
    let curve: Vec<(u64, f64)> = by_step.into_iter().map(|(s, v)| (s, mean(&v))).collect();
    argmax(&curve)
}

/// A budget a run spends as it trains, read at an evaluation given the
/// run's first one: KL, or how far chosen log-likelihood fell.
type Budget = fn(&Point, &Point) -> f64;

const KL_BUDGET: Budget = |p, _| p.samples.kl;
const LOGLIK_DROP: Budget = |p, first| first.loglik - p.loglik;

/// The last evaluation before the run's `budget` first exceeds `threshold`.
fn budget_stop(j: &Judged<'_>, budget: Budget, threshold: f64) -> Option<u64> {
    let first = j.run.points.first()?;
    let mut stop = first.step;
    for p in &j.run.points {
        if budget(p, first) > threshold {
            break;
        }
        stop = p.step;
    }
    Some(stop)
}

/// The threshold on `budget` that the other seeds' selection `P_win` at
/// the stop favours (candidates: every value the other seeds reached, and
/// none), applied to this run.
fn threshold_stop(seed: u64, arm: &BTreeMap<u64, Judged<'_>>, budget: Budget) -> Option<u64> {
    let others = || arm.iter().filter(move |(s, _)| **s != seed).map(|(_, j)| j);
    let score = |threshold: f64| {
        let values: Vec<f64> = others()
            .filter_map(|j| {
                let stop = budget_stop(j, budget, threshold)?;
                j.run.points.iter().find(|p| p.step == stop).map(|p| p.samples.win_prob)
            })
            .collect();
        mean(&values)
    };
    let candidates = others()
        .flat_map(|j| {
            let first = j.run.points.first();
            j.run.points.iter().filter_map(move |p| Some(budget(p, first?)))
        })
        .chain([f64::INFINITY]);
    let threshold = candidates.max_by(|a, b| score(*a).total_cmp(&score(*b)))?;
    budget_stop(arm.get(&seed)?, budget, threshold)
}

/// An early-stopping rule: the step it keeps for a seed of an arm.
type Rule = fn(u64, &BTreeMap<u64, Judged<'_>>) -> Option<u64>;

const RULES: [(&str, Rule); 7] = [
    ("no stopping (end)", |s, a| a.get(&s)?.last_step()),
    ("indicators' turn (best-indicator)", |s, a| indicator_stop(a.get(&s)?)),
    ("best selection evaluation of the run", |s, a| argmax(&selection_curve(a.get(&s)?))),
    ("fixed step (chosen on the other seeds' selection prompts)", fixed_step),
    ("chosen log-likelihood drop (threshold chosen on the other seeds)", |s, a| threshold_stop(s, a, LOGLIK_DROP)),
    ("KL threshold (chosen on the other seeds' selection prompts)", |s, a| threshold_stop(s, a, KL_BUDGET)),
    ("oracle (best test checkpoint)", |s, a| a.get(&s)?.oracle()),
];

/// Per seed of `arm`: the step `rule` keeps and the test regret there.
fn regrets(arm: &BTreeMap<u64, Judged<'_>>, rule: Rule) -> Vec<(u64, f64, f64)> {
    arm.iter()
        .filter_map(|(&seed, j)| {
            let step = rule(seed, arm)?;
            let at = j.win(Split::Test, step)?;
            let best = j.win(Split::Test, j.oracle()?)?;
            Some((step, at, best - at))
        })
        .collect()
}

/// Writes sections (g)–(i) and their charts when runs were judged on the splits.
pub fn sections(runs: &[RunData], out: &Path, md: &mut String) -> Result<()> {
    let arms = judged_arms(runs);
    if arms.values().map(BTreeMap::len).max().unwrap_or(0) < 2 {
        return Ok(());
    }
    let Some((best_label, best_selection)) = best_fixed(runs, &arms) else { return Ok(()) };
    section_g(&arms, &best_label, best_selection, out, md)?;
    section_h(&arms, out, md)?;
    section_i(&arms, &best_label, md)?;
    section_j(&arms, md)?;
    Ok(())
}

/// (j): test win probability against chosen log-likelihood, line against
/// quadratic, out of sample with whole seeds held out.
fn section_j(arms: &Arms<'_>, md: &mut String) -> Result<()> {
    writeln!(
        md,
        "## (j) Test win probability against chosen log-likelihood, out of sample
"
    )?;
    writeln!(
        md,
        "Every checkpoint of every arm: x = the run's chosen log-likelihood per token at that evaluation, y = test \
         P_win. Each seed's points (all arms: they share the testbed) predicted by the fit to the other seeds'; \
         per-seed RMSE difference line − quadratic with its 95 % t interval over seeds (positive: the quadratic \
         predicts better).\n"
    )?;
    let mut by_seed: BTreeMap<u64, Vec<(f64, f64)>> = BTreeMap::new();
    for arm in arms.values() {
        for (&seed, j) in arm {
            let points = j.run.points.iter().filter_map(|p| Some((p.loglik, j.win(Split::Test, p.step)?)));
            by_seed.entry(seed).or_default().extend(points);
        }
    }
    let groups: Vec<Vec<(f64, f64)>> = by_seed.into_values().collect();
    let rmse = |e: &[(f64, usize)]| e.iter().map(|(sse, n)| (sse / (*n).max(1) as f64).sqrt()).collect::<Vec<f64>>();
    let pooled = |e: &[(f64, usize)]| {
        let (sse, n) = e.iter().fold((0.0, 0usize), |(s, n), x| (s + x.0, n + x.1));
        (sse / n.max(1) as f64).sqrt()
    };
    match (held_out_errors(&groups, &linear), held_out_errors(&groups, &quadratic)) {
        (Some(l), Some(q)) => {
            let difference = paired_t_interval(&rmse(&l), &rmse(&q), LEVEL).ok();
            writeln!(md, "| seeds | points | CV-RMSE line | CV-RMSE quadratic | per-seed Δ RMSE (line − quadratic) |")?;
            writeln!(md, "|---|---|---|---|---|")?;
            writeln!(
                md,
                "| {} | {} | {:.4} | {:.4} | {} |",
                groups.len(),
                groups.iter().map(Vec::len).sum::<usize>(),
                pooled(&l),
                pooled(&q),
                difference.map_or("–".into(), |i| i.display(4))
            )?;
            let (xs, ys): (Vec<f64>, Vec<f64>) = groups.iter().flatten().copied().unzip();
            if let Some(fit) = least_squares(&xs, &ys, &quadratic) {
                let c = &fit.coefficients;
                let vertex =
                    if c[2] < 0.0 { format!(", peak at ℓ = {:.3}", -c[1] / (2.0 * c[2])) } else { String::new() };
                writeln!(md, "\nAll points: P_win = {:.3} {:+.3}·ℓ {:+.4}·ℓ²{vertex}.", c[0], c[1], c[2])?;
            }
        }
        _ => writeln!(md, "Too few seeds or points for a fit.")?,
    }
    writeln!(md)?;
    Ok(())
}

fn section_g(arms: &Arms<'_>, best: &str, best_selection: f64, out: &Path, md: &mut String) -> Result<()> {
    writeln!(md, "## (g) The arms on test and generalisation prompts\n")?;
    writeln!(
        md,
        "Every checkpoint of every run judged on prompts no run saw: test prompts of the same task, and \
         generalisation prompts asking for lengths never seen in training ({} and {} per testbed, {} samples \
         each against {} of the reference's). The best fixed λ on the selection prompts: **{best}** (mean final \
         selection P_win {best_selection:.3}); Δ: paired difference from it on the same seeds and prompts, 95 % \
         t interval over seeds and hierarchical bootstrap over seeds and prompts ({REPLICATES} resamples). \
         \"at stop\": where the indicators' rule stops (section h). EAD and KL: the runs' own final evaluation \
         (selection prompts).\n",
        crate::experiment_splits::TEST_PROMPTS,
        crate::experiment_splits::GENERALISATION_PROMPTS,
        crate::experiment_splits::SAMPLES_PER_PROMPT,
        crate::experiment_splits::SAMPLES_PER_PROMPT,
    )?;
    let Some(reference) = arms.get(best) else { return Ok(()) };
    let mut bars = Vec::new();
    for split in [Split::Test, Split::Generalisation] {
        writeln!(md, "### {} prompts\n", split.name())?;
        writeln!(
            md,
            "| arm | seeds | final P_win | best checkpoint P_win | P_win at stop | final gold reward | final EAD | \
             final KL | Δ final P_win (t) | Δ final P_win (bootstrap) |"
        )?;
        writeln!(md, "|---|---|---|---|---|---|---|---|---|---|")?;
        for (label, arm) in arms {
            let values = |f: &dyn Fn(&Judged<'_>) -> Option<f64>| arm.values().filter_map(f).collect::<Vec<f64>>();
            let t = |f: &dyn Fn(&Judged<'_>) -> Option<f64>| t_interval(&values(f), LEVEL).ok();
            let final_win = |j: &Judged<'_>| j.win(split, j.last_step()?);
            let best_win =
                |j: &Judged<'_>| j.splits.checkpoints.iter().filter_map(|c| j.win(split, c.step)).reduce(f64::max);
            let stop_win = |j: &Judged<'_>| j.win(split, indicator_stop(j)?);
            let gold = |j: &Judged<'_>| {
                let c = j.splits.at(j.last_step()?)?;
                Some(match split {
                    Split::Test => c.test.mean_gold_reward(),
                    Split::Generalisation => c.generalisation.mean_gold_reward(),
                })
            };
            let ead = |j: &Judged<'_>| j.run.points.last().map(|p| p.samples.ead);
            let kl = |j: &Judged<'_>| j.run.points.last().map(|p| p.samples.kl);
            let (delta_t, delta_boot) = if label == best {
                ("—".to_string(), "—".to_string())
            } else {
                let pairs: Vec<(&Judged<'_>, &Judged<'_>)> =
                    arm.iter().filter_map(|(seed, j)| Some((j, reference.get(seed)?))).collect();
                let (a, b): (Vec<f64>, Vec<f64>) =
                    pairs.iter().filter_map(|(j, r)| Some((final_win(j)?, final_win(r)?))).unzip();
                let groups: Vec<Vec<f64>> = pairs
                    .iter()
                    .filter_map(|(j, r)| {
                        let (x, y) = (j.per_prompt(split, j.last_step()?)?, r.per_prompt(split, r.last_step()?)?);
                        (x.len() == y.len()).then(|| x.iter().zip(y).map(|(p, q)| p - q).collect())
                    })
                    .collect();
                let boot = hierarchical_bootstrap(&groups, LEVEL, REPLICATES, BOOTSTRAP_SEED).ok();
                if let Some(b) = boot {
                    bars.push(report_plot::Interval {
                        label: format!("{}: {label}", split.name()),
                        mean: b.estimate,
                        low: b.lower,
                        high: b.upper,
                    });
                }
                (cell(paired_t_interval(&a, &b, LEVEL).ok()), cell(boot))
            };
            writeln!(
                md,
                "| {label} | {} | {} | {} | {} | {} | {} | {} | {delta_t} | {delta_boot} |",
                arm.len(),
                cell(t(&final_win)),
                cell(t(&best_win)),
                cell(t(&stop_win)),
                cell(t(&gold)),
                cell(t(&ead)),
                cell(t(&kl)),
            )?;
        }
        writeln!(md)?;
    }
    let title = format!("(g) final P_win minus the best fixed λ's ({best}): bootstrap 95 % interval");
    let svg = intervals(&title, "Δ P_win", &bars)?;
    daa_core::io::write_bytes_atomic(&out.join("splits.svg"), svg.as_bytes())?;
    writeln!(md, "![](splits.svg)\n")?;
    let panels: Vec<Panel> =
        [Split::Test, Split::Generalisation].into_iter().map(|split| curves(arms, split)).collect();
    let svg = report_plot::panels("(g) P_win of every checkpoint, mean over seeds", &panels, 2)?;
    daa_core::io::write_bytes_atomic(&out.join("split_curves.svg"), svg.as_bytes())?;
    writeln!(md, "![](split_curves.svg)\n")?;
    Ok(())
}

/// Per arm, the mean over seeds of `P_win` on `split` at each checkpoint step.
fn curves(arms: &Arms<'_>, split: Split) -> Panel {
    let lines = arms
        .iter()
        .map(|(label, arm)| {
            let mut by_step: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
            for j in arm.values() {
                for c in &j.splits.checkpoints {
                    by_step.entry(c.step).or_default().extend(j.win(split, c.step));
                }
            }
            let points = by_step.into_iter().map(|(step, v)| (step as f64, mean(&v))).collect();
            Line { label: label.clone(), points, thin: false }
        })
        .collect();
    Panel {
        title: format!("{} prompts", split.name()),
        x_desc: "step".into(),
        y_desc: "P_win".into(),
        points: vec![],
        lines,
    }
}

fn section_h(arms: &Arms<'_>, out: &Path, md: &mut String) -> Result<()> {
    writeln!(md, "## (h) Early stopping against baselines\n")?;
    writeln!(
        md,
        "Each rule picks a checkpoint from the selection evaluations only; regret = test P_win of the best test \
         checkpoint − test P_win of the picked one (mean over seeds, 95 % t interval; then, in parentheses, the \
         mean step picked). Lower is better; the oracle's is 0 by construction.\n"
    )?;
    let labels: Vec<&String> = arms.keys().collect();
    writeln!(md, "| rule | {} |", labels.iter().map(|l| l.as_str()).collect::<Vec<_>>().join(" | "))?;
    writeln!(md, "|---|{}", "---|".repeat(labels.len()))?;
    let mut bars = Vec::new();
    for (name, rule) in RULES {
        let mut cells = Vec::new();
        for label in &labels {
            let r = regrets(&arms[*label], rule);
            let values: Vec<f64> = r.iter().map(|x| x.2).collect();
            let steps: Vec<f64> = r.iter().map(|x| x.0 as f64).collect();
            let interval = t_interval(&values, LEVEL).ok();
            cells.push(match interval {
                Some(i) => format!("{} (step {:.0})", i.display(3), mean(&steps)),
                None if values.is_empty() => "–".into(),
                None => format!("{:.3} (step {:.0})", mean(&values), mean(&steps)),
            });
            if let Some(i) = interval.filter(|_| label.as_str() == Regularisation::Fixed(0.0).label()) {
                bars.push(report_plot::Interval { label: name.into(), mean: i.estimate, low: i.lower, high: i.upper });
            }
        }
        writeln!(md, "| {name} | {} |", cells.join(" | "))?;
    }
    let svg = intervals("(h) early-stopping regret under λ = 0 (test P_win, 95 % t interval)", "regret", &bars)?;
    daa_core::io::write_bytes_atomic(&out.join("regret.svg"), svg.as_bytes())?;
    writeln!(md, "\n![](regret.svg)\n")?;
    Ok(())
}

/// A statistic the detector reads for section (i), from a run's seed and evaluation.
type Statistic = fn(u64, &Point) -> (f64, f64);

/// Noise with no information: a uniform draw per seed and step.
fn null_noise(seed: u64, step: u64) -> f64 {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step.wrapping_mul(0xD1B5_4A32_D192_ED03);
    uniform_open(&mut state)
}

const DETECTORS: [(&str, Statistic); 4] = [
    ("top-k entropy", |_, p| (p.entropy, 0.0)),
    ("top-k mass", |_, p| (0.0, p.mass)),
    ("chosen log-likelihood", |_, p| (p.loglik, 0.0)),
    ("null: uniform noise", |seed, p| (null_noise(seed, p.step), 0.0)),
];

fn section_i(arms: &Arms<'_>, best: &str, md: &mut String) -> Result<()> {
    writeln!(md, "## (i) Turning points against a null\n")?;
    writeln!(
        md,
        "The test win probability's peak (its best checkpoint) against the detector's turn on each statistic \
         (the runs' selection evaluations; daa-core's default detector). Lead = peak − confirmed step (positive: \
         a warning before the peak); error = |peak − the detector's peak step|. The null statistic carries no \
         information (uniform noise per seed and step) and turns at random: a statistic predicts the peak only if \
         its error is below the null's (Δ error, paired over seeds, 95 % t interval). The detector needs a peak \
         after the first evaluation: a statistic that only falls never turns.\n"
    )?;
    let mut labels = vec![Regularisation::Fixed(0.0).label()];
    if best != labels[0] {
        labels.push(best.to_string());
    }
    for label in labels {
        let Some(arm) = arms.get(&label) else { continue };
        writeln!(md, "### {label}\n")?;
        writeln!(md, "| statistic | runs with a turn | lead (steps) | error (steps) | Δ error vs null |")?;
        writeln!(md, "|---|---|---|---|---|")?;
        let turns = |stat: Statistic| -> BTreeMap<u64, (f64, f64)> {
            arm.iter()
                .filter_map(|(&seed, j)| {
                    let peak = j.oracle()? as f64;
                    let (turn_peak, confirmed) = replay(&j.run.points, &|p| stat(seed, p)).0?;
                    Some((seed, (peak - confirmed as f64, (peak - turn_peak as f64).abs())))
                })
                .collect()
        };
        let null = turns(DETECTORS[3].1);
        for (name, stat) in DETECTORS {
            let found = turns(stat);
            let leads: Vec<f64> = found.values().map(|v| v.0).collect();
            let errors: Vec<f64> = found.values().map(|v| v.1).collect();
            let (a, b): (Vec<f64>, Vec<f64>) =
                found.iter().filter_map(|(seed, v)| Some((v.1, null.get(seed)?.1))).unzip();
            let delta = if name.starts_with("null") {
                "—".into()
            } else {
                paired_t_interval(&a, &b, LEVEL).map_or("–".into(), |i| i.display(1))
            };
            let show = |values: &[f64]| {
                t_interval(values, LEVEL)
                    .map(|i| format!("{:+.1} [{:+.1}, {:+.1}]", i.estimate, i.lower, i.upper))
                    .unwrap_or_else(|_| if values.is_empty() { "–".into() } else { format!("{:+.1}", mean(values)) })
            };
            writeln!(
                md,
                "| {name} | {}/{} | {} | {} | {delta} |",
                found.len(),
                arm.len(),
                show(&leads),
                show(&errors)
            )?;
        }
        writeln!(md)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use daa_train::EvalRecord;
    use daa_train::eval::EvalReport;
    use daa_train::records::MetricsRecord;
    use daa_train::testbed::split_eval::SplitOutcomes;

    use super::*;
    use crate::experiment_cmd::{Preset, sweep};
    use crate::experiment_report::tests::planted_samples;
    use crate::experiment_report::write_report;
    use crate::experiment_splits::{CheckpointOutcomes, outcomes_path};

    /// Test P_win of the planted runs: a parabola peaking at step 64.
    fn planted_test_win(step: u64, shift: f64) -> f64 {
        0.6 - 0.1 * ((step as f64 - 64.0) / 160.0).powi(2) + shift
    }

    /// A finished run of 11 evaluations (steps 0…160): selection P_win
    /// peaking at step 48, top-k entropy peaking at step 32, chosen
    /// log-likelihood falling from the start, KL growing 0.5 per
    /// evaluation; its split outcomes (8 prompts) follow the test parabola
    /// plus `shift` on every prompt.
    fn planted(dir: &Path, shift: f64, selection_shift: f64) {
        std::fs::create_dir_all(dir).unwrap();
        let mut lines = String::new();
        let mut checkpoints = Vec::new();
        for i in 0..11u64 {
            let step = 16 * i;
            let report = EvalReport {
                loss: 0.6,
                accuracy: 0.6,
                margin: 0.1,
                chosen_token_loglik: -2.5 - 0.1 * i as f64,
                rejected_token_loglik: -2.7 - 0.1 * i as f64,
                topk_entropy: 3.0 - 0.1 * (i as f64 - 2.0).abs(),
                topk_mass: 0.7,
                entropy: 2.7,
            };
            let kl = 0.5 * i as f64;
            let win = 0.55 - 0.001 * (step as f64 - 48.0).powi(2) / 16.0 + selection_shift;
            let samples = planted_samples(win, 0.1, kl);
            let record = MetricsRecord::Eval(EvalRecord { step, report, samples: Some(samples) });
            lines.push_str(&format!("{}\n", serde_json::to_string(&record).unwrap()));
            let split = |offset: f64| SplitOutcomes {
                win_prob: (0..8).map(|k| planted_test_win(step, shift) + offset + 0.01 * (k as f64 - 3.5)).collect(),
                gold_reward: vec![0.2; 8],
            };
            checkpoints.push(CheckpointOutcomes { step, test: split(0.0), generalisation: split(-0.05) });
        }
        std::fs::write(dir.join("metrics.jsonl"), lines).unwrap();
        std::fs::write(dir.join("summary.json"), "{}").unwrap();
        let outcomes = RunOutcomes { checkpoints };
        std::fs::write(outcomes_path(dir), serde_json::to_string(&outcomes).unwrap()).unwrap();
    }

    #[test]
    fn the_study_sections_choose_on_selection_and_report_on_test() {
        let out = tempfile::tempdir().unwrap();
        let (specs, _) = sweep(Preset::Study);
        // Three seeds of λ = 0 and λ = 0.1; λ = 0.1 is 0.002 better on the
        // selection prompts (so it is the best fixed λ) and 0.01 better on
        // every test prompt.
        for spec in specs.iter().filter(|s| s.seed < 3) {
            let (shift, selection) = match spec.regularisation {
                Regularisation::Fixed(0.0) => (0.0, 0.0),
                Regularisation::Fixed(_) => (0.01, 0.002),
                _ => continue,
            };
            planted(&out.path().join("runs").join(spec.name()), shift, selection);
        }
        let report = std::fs::read_to_string(write_report(out.path(), &specs).unwrap()).unwrap();
        assert!(report.contains("The best fixed λ on the selection prompts: **λ=0.1**"), "{report}");
        // (g): λ = 0 is 0.01 below λ = 0.1 on every prompt of every seed:
        // both intervals have no width.
        let row = report.lines().find(|l| l.starts_with("| λ=0 | 3 |")).unwrap();
        assert!(row.ends_with("| -0.010 [-0.010, -0.010] | -0.010 [-0.010, -0.010] |"), "{row}");
        // Final test P_win of λ = 0: the parabola at 160, 0.6 − 0.1·0.36 = 0.564.
        assert!(row.contains("| 0.564 [0.564, 0.564] |"), "{row}");
        assert!(report.contains("### generalisation prompts"));
        // (h): the oracle is the peak at 64 (regret 0); no stopping loses
        // 0.1·(96/160)² = 0.036; the best selection evaluation (48) loses
        // 0.1·(16/160)² = 0.001, and so do the thresholds on chosen
        // log-likelihood's drop (0.3) and on KL (1.5) that the other seeds'
        // selection P_win favours: both stop at 48.
        let rule = |name: &str| report.lines().find(|l| l.starts_with(&format!("| {name}"))).unwrap().to_string();
        assert!(rule("oracle").contains("| 0.000 [0.000, 0.000] (step 64) |"), "{}", rule("oracle"));
        assert!(rule("no stopping").contains("| 0.036 [0.036, 0.036] (step 160) |"), "{}", rule("no stopping"));
        assert!(rule("best selection").contains("| 0.001 [0.001, 0.001] (step 48) |"), "{}", rule("best selection"));
        assert!(rule("fixed step").contains("(step 48)"), "{}", rule("fixed step"));
        for name in ["chosen log-likelihood drop", "KL threshold"] {
            assert!(rule(name).contains("| 0.001 [0.001, 0.001] (step 48) |"), "{}", rule(name));
        }
        // (i): entropy's smoothed peak is step 32, confirmed two evaluations
        // later at 64: no lead, error 32. The noise turns where a random
        // peak after the first evaluation is followed by two lower values
        // (2 of these 3 seeds); chosen log-likelihood only falls and never turns.
        let section_i = &report[report.find("## (i)").unwrap()..];
        let null = section_i.lines().find(|l| l.starts_with("| null")).unwrap();
        assert!(null.contains("| 2/3 |") && null.ends_with("| — |"), "{null}");
        let entropy = section_i.lines().find(|l| l.starts_with("| top-k entropy")).unwrap();
        assert!(entropy.contains("| 3/3 | +0.0 [+0.0, +0.0] | +32.0 [+32.0, +32.0] |"), "{entropy}");
        let loglik = section_i.lines().find(|l| l.starts_with("| chosen log-likelihood")).unwrap();
        assert!(loglik.contains("| 0/3 | – | – |"), "{loglik}");
        let mass = section_i.lines().find(|l| l.starts_with("| top-k mass")).unwrap();
        assert!(mass.contains("| 0/3 | – | – |"), "{mass}");
        // (j): the test parabola in ℓ (i = −(ℓ + 2.5)/0.1, peak at i = 4) with the
        // arms 0.01 apart: the quadratic misses by ±0.005 out of sample, the line by more.
        let section_j = &report[report.find("## (j)").unwrap()..];
        let row = section_j.lines().find(|l| l.starts_with("| 3 | 66 |")).unwrap();
        assert!(row.contains("| 0.0050 |"), "{row}");
        assert!(section_j.contains("peak at ℓ = -2.900"), "{section_j}");
        for chart in ["splits", "split_curves", "regret"] {
            assert!(std::fs::read_to_string(out.path().join(format!("{chart}.svg"))).unwrap().starts_with("<svg"));
        }
    }
}
