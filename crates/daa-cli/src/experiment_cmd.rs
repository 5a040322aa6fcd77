//! `daa experiment`: a sweep on the testbed over losses × hyper-parameter
//! values × regularisation (fixed NLL weights and the adaptive one) × seeds.
//!
//! Each run is `daa train` in a process of its own (`--jobs` at a time, the
//! cores shared between them), writing `OUT/runs/<name>/`; a run with a
//! `summary.json` is finished and kept, so running the command again resumes
//! the sweep (an unfinished run starts over). The testbed's reference policy
//! and pairs are made once, before any run. Then the report
//! ([`crate::experiment_report`]) is written from every finished run.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use daa_train::reference_cache::cache_dir;
use daa_train::run::TrainConfig;
use daa_train::run::config::TESTBED_CONFIG;
use daa_train::testbed::build::materialize;

use crate::experiment_report::write_report;
use crate::experiment_splits::{SplitJudge, outcomes_path};
use crate::progress::bar;

/// Sweep sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// DPO, IPO and the paper's hinge at one value each × λ ∈ {0, 0.1, adaptive} × 2 seeds:
    /// 18 runs of the base configuration (256 steps), about a quarter of an hour on 2 cores.
    Small,
    /// Three values per loss × λ ∈ {0, 0.05, 0.1, 0.5, adaptive} × 3 seeds: 135 runs, hours.
    Paper,
    /// The regularisers side by side: DPO β 0.1 × {λ = 0, λ = 0.1, the baseline
    /// rule, the direction-aware rule, the entropy floor} × 10 seeds, each seed
    /// its own testbed (reference, pairs and prompts): 50 runs, under an hour on 2 cores.
    Regularisers,
    /// The study: the regularisers' arms and a stronger entropy floor × 10 seeds
    /// (each its own testbed), a checkpoint every evaluation, then every
    /// checkpoint judged on test and generalisation prompts no run reads; the
    /// report adds early-stopping baselines with their regret, intervals over
    /// seeds and prompts, and turning-point leads against a null: 60 runs, hours.
    Study,
}

impl Preset {
    /// Whether the runs are judged on the test and generalisation splits after training.
    pub fn judges_splits(self) -> bool {
        self == Self::Study
    }
}

/// Arguments of `daa experiment`.
#[derive(Debug, Args, Clone)]
pub struct ExperimentArgs {
    /// The sweep.
    #[arg(long, value_enum, default_value_t = Preset::Small)]
    preset: Preset,
    /// Experiment folder: runs/, report.md and the charts. Running again resumes.
    #[arg(long, default_value = "runs/experiment")]
    out: PathBuf,
    /// Runs at a time (default: the cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Base configuration (default: configs/testbed.toml, built into daa).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a field of every run: --set train.epochs=2 (repeatable).
    #[arg(long = "set", value_name = "SECTION.FIELD=VALUE")]
    overrides: Vec<String>,
    /// Write the report from the finished runs without running anything.
    #[arg(long)]
    report_only: bool,
}

/// How a run regularises.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Regularisation {
    /// A fixed NLL weight λ (0: none).
    Fixed(f64),
    /// `[monitor.adaptive]` with its defaults (the baseline rule
    /// `raise_nll_on_falling_entropy`), λ starting at 0.
    Adaptive,
    /// `[monitor.adaptive]` with `rule = "direction_aware"`, λ starting at 0.
    DirectionAware,
    /// `[monitor.entropy_floor]` with its defaults, λ = 0.
    EntropyFloor,
    /// `[monitor.entropy_floor]` with the floor at the reference's entropy
    /// (margin 0) and a four times larger dual step (η = 20), λ = 0.
    StrongEntropyFloor,
}

impl Regularisation {
    /// As the report names it.
    pub fn label(&self) -> String {
        match self {
            Self::Fixed(l) => format!("λ={l}"),
            Self::Adaptive => "adaptive λ".into(),
            Self::DirectionAware => "direction-aware λ".into(),
            Self::EntropyFloor => "entropy floor".into(),
            Self::StrongEntropyFloor => "entropy floor (margin 0, η 20)".into(),
        }
    }
}

/// One run of the sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    /// `loss.name`.
    pub loss: &'static str,
    /// The loss's swept hyper-parameter.
    pub param: &'static str,
    /// Its value.
    pub value: f64,
    /// The NLL term.
    pub regularisation: Regularisation,
    /// `train.seed`.
    pub seed: u64,
    /// `testbed.seed`, when the run has its own testbed.
    pub testbed_seed: Option<u64>,
}

impl RunSpec {
    /// The run's folder name, e.g. `dpo-beta0.1-lam0-s0`.
    pub fn name(&self) -> String {
        let reg = match self.regularisation {
            Regularisation::Fixed(l) => format!("lam{l}"),
            Regularisation::Adaptive => "adaptive".into(),
            Regularisation::DirectionAware => "direction".into(),
            Regularisation::EntropyFloor => "floor".into(),
            Regularisation::StrongEntropyFloor => "floor-strong".into(),
        };
        let testbed = self.testbed_seed.map_or(String::new(), |t| format!("-t{t}"));
        format!("{}-{}{}-{reg}-s{}{testbed}", self.loss, self.param, self.value, self.seed)
    }

    /// The configuration (loss, its value and regularisation) without the seed.
    pub fn setting(&self) -> String {
        format!("{} {}={} {}", self.loss, self.param, self.value, self.regularisation.label())
    }

    /// `--set` arguments of the run.
    fn overrides(&self) -> Vec<String> {
        let mut sets = vec![
            format!("loss.name={}", self.loss),
            format!("loss.{}={}", self.param, self.value),
            format!("train.seed={}", self.seed),
        ];
        if let Some(t) = self.testbed_seed {
            sets.push(format!("testbed.seed={t}"));
        }
        match self.regularisation {
            Regularisation::Fixed(l) => sets.push(format!("loss.nll_weight={l}")),
            Regularisation::Adaptive => {
                sets.push("loss.nll_weight=0".into());
                sets.push("monitor.adaptive={}".into());
            }
            Regularisation::DirectionAware => {
                sets.push("loss.nll_weight=0".into());
                sets.push("monitor.adaptive={rule=\"direction_aware\"}".into());
            }
            Regularisation::EntropyFloor => {
                sets.push("loss.nll_weight=0".into());
                sets.push("monitor.entropy_floor={}".into());
            }
            Regularisation::StrongEntropyFloor => {
                sets.push("loss.nll_weight=0".into());
                sets.push("monitor.entropy_floor={margin=0.0, step_size=20.0}".into());
            }
        }
        sets
    }
}

/// A loss of a sweep: its name, the hyper-parameter swept and its values.
type SweptLoss = (&'static str, &'static str, Vec<f64>);

/// The runs of a preset.
pub fn sweep(preset: Preset) -> (Vec<RunSpec>, Vec<String>) {
    // With its own testbed per seed, a seed changes the reference, the pairs
    // and the prompts too, not only the training order.
    let own_testbed = matches!(preset, Preset::Regularisers | Preset::Study);
    let regularisers = vec![
        Regularisation::Fixed(0.0),
        Regularisation::Fixed(0.1),
        Regularisation::Adaptive,
        Regularisation::DirectionAware,
        Regularisation::EntropyFloor,
    ];
    let (losses, regs, seeds, common): (Vec<SweptLoss>, Vec<Regularisation>, Vec<u64>, Vec<String>) = match preset {
        Preset::Small => (
            vec![("dpo", "beta", vec![0.1]), ("ipo", "tau", vec![0.1]), ("hinge", "alpha", vec![0.1])],
            vec![Regularisation::Fixed(0.0), Regularisation::Fixed(0.1), Regularisation::Adaptive],
            vec![0, 1],
            vec![],
        ),
        Preset::Paper => (
            vec![
                ("dpo", "beta", vec![0.05, 0.1, 0.5]),
                ("ipo", "tau", vec![0.05, 0.1, 0.5]),
                ("hinge", "alpha", vec![0.0, 0.1, 1.0]),
            ],
            vec![
                Regularisation::Fixed(0.0),
                Regularisation::Fixed(0.05),
                Regularisation::Fixed(0.1),
                Regularisation::Fixed(0.5),
                Regularisation::Adaptive,
            ],
            vec![0, 1, 2],
            vec![],
        ),
        Preset::Regularisers => (vec![("dpo", "beta", vec![0.1])], regularisers, (0..10).collect(), vec![]),
        Preset::Study => (
            vec![("dpo", "beta", vec![0.1])],
            regularisers.into_iter().chain([Regularisation::StrongEntropyFloor]).collect(),
            (0..10).collect(),
            // A checkpoint at every evaluation, for the test and generalisation splits.
            vec!["train.checkpoint_every=16".into()],
        ),
    };
    let mut runs = Vec::new();
    for (loss, param, values) in &losses {
        for &value in values {
            for &regularisation in &regs {
                for &seed in &seeds {
                    let testbed_seed = own_testbed.then_some(seed);
                    runs.push(RunSpec { loss, param, value, regularisation, seed, testbed_seed });
                }
            }
        }
    }
    (runs, common)
}

/// `<run>.log` beside the run folder (names hold dots: not `with_extension`).
fn log_path(run_dir: &Path) -> PathBuf {
    let name = run_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    run_dir.with_file_name(format!("{name}.log"))
}

/// Runs one `daa train` child; its output goes to `<run>.log`.
fn run_child(base: &Path, run_dir: &Path, overrides: &[String], threads: usize) -> Result<()> {
    if run_dir.exists() {
        std::fs::remove_dir_all(run_dir).with_context(|| format!("{}: cannot clear", run_dir.display()))?;
    }
    let log_path = log_path(run_dir);
    let log = std::fs::File::create(&log_path).with_context(|| format!("{}: cannot create", log_path.display()))?;
    let mut command = Command::new(std::env::current_exe().context("locating the daa binary")?);
    command.arg("train").arg("--config").arg(base).arg("--out").arg(run_dir);
    for set in overrides {
        command.arg("--set").arg(set);
    }
    let status = command
        .env("RAYON_NUM_THREADS", threads.to_string())
        .stdout(Stdio::null())
        .stderr(log)
        .status()
        .context("starting daa train")?;
    if !status.success() {
        bail!("{status}; see {}", log_path.display());
    }
    Ok(())
}

/// Runs `daa experiment`.
pub fn run(args: &ExperimentArgs) -> Result<()> {
    let (runs, common) = sweep(args.preset);
    let base_text = match &args.config {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?,
        None => TESTBED_CONFIG.to_string(),
    };
    std::fs::create_dir_all(args.out.join("runs")).with_context(|| format!("{}: cannot create", args.out.display()))?;
    let base = args.out.join("base.toml");
    daa_core::io::write_bytes_atomic(&base, base_text.as_bytes())?;
    let overrides: Vec<String> = common.iter().chain(&args.overrides).cloned().collect();
    // Every run's configuration must be valid before anything runs; each
    // distinct testbed is built once, before the runs.
    let mut testbeds: Vec<TrainConfig> = Vec::new();
    let mut configs: Vec<TrainConfig> = Vec::with_capacity(runs.len());
    for spec in &runs {
        let sets: Vec<String> = overrides.iter().cloned().chain(spec.overrides()).collect();
        let config = TrainConfig::parse(&base_text, &base.display().to_string(), &sets)
            .with_context(|| format!("run {}", spec.name()))?;
        if !testbeds.iter().any(|t| t.testbed == config.testbed) {
            testbeds.push(config.clone());
        }
        configs.push(config);
    }
    let run_dir = |spec: &RunSpec| args.out.join("runs").join(spec.name());
    let trained = |spec: &RunSpec| run_dir(spec).join("summary.json").exists();
    let judge_splits = args.preset.judges_splits();
    let finished = |spec: &RunSpec| trained(spec) && (!judge_splits || outcomes_path(&run_dir(spec)).exists());
    if !args.report_only {
        for config in &testbeds {
            let cache = cache_dir(config.train.cache_dir.as_deref());
            materialize(&config.testbed, &cache, &mut |line| eprintln!("{line}"))?;
        }
        // The study judges each run on prompts no run reads, right after training it.
        let judge = if judge_splits { Some(Arc::new(SplitJudge::prepare(&args.out, &testbeds)?)) } else { None };
        let todo: VecDeque<(RunSpec, TrainConfig)> =
            runs.iter().zip(&configs).filter(|(s, _)| !finished(s)).map(|(s, c)| (s.clone(), c.clone())).collect();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let jobs = args.jobs.unwrap_or(cores).clamp(1, todo.len().max(1));
        let threads = (cores / jobs).max(1);
        eprintln!(
            "{} runs ({} finished before), {jobs} at a time with {threads} thread(s) each, into {}",
            runs.len(),
            runs.len() - todo.len(),
            args.out.display()
        );
        let progress = bar(runs.len() as u64, "runs");
        progress.set_position((runs.len() - todo.len()) as u64);
        let queue = Arc::new(Mutex::new(todo));
        let (sender, receiver) = mpsc::channel::<(String, Result<()>)>();
        let workers: Vec<_> = (0..jobs)
            .map(|_| {
                let (queue, sender, base, out, overrides, judge) =
                    (queue.clone(), sender.clone(), base.clone(), args.out.clone(), overrides.clone(), judge.clone());
                std::thread::spawn(move || {
                    loop {
                        let next = queue.lock().map(|mut q| q.pop_front()).unwrap_or(None);
                        let Some((spec, config)) = next else { break };
                        let sets: Vec<String> = overrides.iter().cloned().chain(spec.overrides()).collect();
                        let dir = out.join("runs").join(spec.name());
                        let started = Instant::now();
                        let mut result = Ok(());
                        if !dir.join("summary.json").exists() {
                            result = run_child(&base, &dir, &sets, threads);
                        }
                        let trained = started.elapsed().as_secs_f64();
                        if let (Ok(()), Some(judge)) = (&result, &judge) {
                            result = judge.judge(&dir, &config);
                        }
                        let timing = match &judge {
                            Some(_) => format!(
                                "trained in {trained:.0} s, judged in {:.0} s",
                                started.elapsed().as_secs_f64() - trained
                            ),
                            None => format!("{trained:.0} s"),
                        };
                        if sender.send((format!("{} ({timing})", spec.name()), result)).is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        drop(sender);
        let mut failed = Vec::new();
        for (name, result) in receiver {
            progress.inc(1);
            match result {
                Ok(()) => progress.println(format!("finished {name}")),
                Err(e) => {
                    progress.println(format!("run {name} failed: {e:#}"));
                    failed.push(name);
                }
            }
        }
        for worker in workers {
            let _ = worker.join();
        }
        progress.finish_and_clear();
        if !failed.is_empty() {
            write_report(&args.out, &runs)?;
            bail!("{} of {} runs failed: {}", failed.len(), runs.len(), failed.join(", "));
        }
    }
    let report = write_report(&args.out, &runs)?;
    eprintln!("report: {}", report.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use daa_train::run::config::AdaptiveRule;

    use super::*;

    #[test]
    fn presets_name_every_run_once_and_configure_it() {
        for preset in [Preset::Small, Preset::Paper, Preset::Regularisers, Preset::Study] {
            let (runs, _) = sweep(preset);
            let names: std::collections::HashSet<String> = runs.iter().map(RunSpec::name).collect();
            assert_eq!(names.len(), runs.len(), "{preset:?}");
        }
        let (small, common) = sweep(Preset::Small);
        assert_eq!(small.len(), 18);
        let adaptive = small.iter().find(|s| s.regularisation == Regularisation::Adaptive).unwrap();
        let sets: Vec<String> = common.iter().cloned().chain(adaptive.overrides()).collect();
        let config = TrainConfig::parse(TESTBED_CONFIG, "testbed", &sets).unwrap();
        assert!(config.monitor.adaptive.is_some());
        assert_eq!(config.loss.nll_weight, 0.0);
        assert_eq!(adaptive.name(), "dpo-beta0.1-adaptive-s0");
        let ipo = small.iter().find(|s| s.loss == "ipo").unwrap();
        let config = TrainConfig::parse(TESTBED_CONFIG, "testbed", &ipo.overrides()).unwrap();
        assert_eq!(config.loss.loss.name(), daa_core::LossName::Ipo);
        // Every run has a log of its own.
        let logs: std::collections::HashSet<PathBuf> =
            small.iter().map(|s| log_path(&Path::new("runs").join(s.name()))).collect();
        assert_eq!(logs.len(), small.len());
        assert_eq!(log_path(Path::new("runs/dpo-beta0.1-lam0-s0")), Path::new("runs/dpo-beta0.1-lam0-s0.log"));
        // The regularisers' preset: every arm on every seed, each seed its own
        // testbed, and every arm's configuration what its name says.
        let (runs, common) = sweep(Preset::Regularisers);
        assert_eq!(runs.len(), 50);
        for spec in &runs {
            assert_eq!(spec.testbed_seed, Some(spec.seed));
            let sets: Vec<String> = common.iter().cloned().chain(spec.overrides()).collect();
            let config = TrainConfig::parse(TESTBED_CONFIG, "testbed", &sets).unwrap();
            assert_eq!(config.testbed.seed, spec.seed, "{}", spec.name());
            let rule = config.monitor.adaptive.map(|a| a.rule);
            let floor = config.monitor.entropy_floor.is_some();
            let expected = match spec.regularisation {
                Regularisation::Fixed(l) => (None, false, l),
                Regularisation::Adaptive => (Some(AdaptiveRule::RaiseNllOnFallingEntropy), false, 0.0),
                Regularisation::DirectionAware => (Some(AdaptiveRule::DirectionAware), false, 0.0),
                Regularisation::EntropyFloor | Regularisation::StrongEntropyFloor => (None, true, 0.0),
            };
            assert_eq!((rule, floor, config.loss.nll_weight), expected, "{}", spec.name());
        }
        assert!(runs.iter().any(|s| s.name() == "dpo-beta0.1-direction-s3-t3"));
        // The study: the same arms plus the stronger floor, a checkpoint at
        // every evaluation, judged on the splits afterwards.
        let (study, common) = sweep(Preset::Study);
        assert_eq!(study.len(), 60);
        assert!(Preset::Study.judges_splits() && !Preset::Regularisers.judges_splits());
        let strong = study.iter().find(|s| s.regularisation == Regularisation::StrongEntropyFloor).unwrap();
        let sets: Vec<String> = common.iter().cloned().chain(strong.overrides()).collect();
        let config = TrainConfig::parse(TESTBED_CONFIG, "testbed", &sets).unwrap();
        let floor = config.monitor.entropy_floor.unwrap();
        assert_eq!((floor.margin, floor.step_size, floor.max), (0.0, 20.0, 10.0));
        assert_eq!(config.train.checkpoint_every, config.monitor.eval_every);
        assert_eq!(strong.name(), "dpo-beta0.1-floor-strong-s0-t0");
    }
}
