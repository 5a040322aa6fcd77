//! Faults a long run meets: signals, a second run in the same folder, a
//! non-finite step, damaged checkpoints, and files that cannot be written
//! (a full disk, simulated with a file-size limit). Each test asserts the
//! exact message and exit code, then resumes (or reruns) and compares the
//! metrics with an uninterrupted run's.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use super::{SMALL_TESTBED, daa, read_jsonl, stderr, temp_dir};

/// The built-in `tiny.toml` written into `dir`; its path.
pub(super) fn tiny_config_file(dir: &Path) -> PathBuf {
    let config = dir.join("tiny.toml");
    std::fs::write(&config, daa_train::run::config::TINY_CONFIG).unwrap();
    config
}

/// `daa train` arguments of a small built-in run (the tiny model and task,
/// `steps` steps of 8 pairs, 16 held-out pairs) into `run`, with `config`
/// the built-in `tiny.toml` written to a file, the cache in `cache`, and
/// the further `sets` (`section.field=value`).
pub(super) fn tiny_args(config: &Path, cache: &Path, run: &Path, steps: u64, sets: &[&str]) -> Vec<String> {
    let mut args: Vec<String> =
        ["train", "--config", config.to_str().unwrap(), "--out", run.to_str().unwrap()].map(String::from).to_vec();
    args.extend(["--max-steps".into(), steps.to_string()]);
    let base = [
        format!("train.cache_dir={:?}", cache.display().to_string()),
        "train.batch_size=8".into(),
        "train.micro_batch_size=4".into(),
        "data.eval_size=16".into(),
    ];
    for set in base.into_iter().chain(sets.iter().map(|s| s.to_string())) {
        args.extend(["--set".into(), set]);
    }
    args
}

/// [`tiny_args`] of the signal tests: 3 epochs, evaluated every 4 steps,
/// no checkpoint before the end.
#[cfg(unix)]
fn tiny_train_args(config: &Path, cache: &Path, run: &Path, steps: u64) -> Vec<String> {
    tiny_args(config, cache, run, steps, &["train.epochs=3", "train.checkpoint_every=100", "monitor.eval_every=4"])
}

/// [`daa`] with owned arguments.
fn run_daa(args: &[String]) -> Output {
    daa(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Starts `daa` with `args` and sends it `signals` (e.g. `["-TERM"]`) once
/// its `metrics.jsonl` holds three training records; its output.
#[cfg(unix)]
fn signalled_after_three_steps(args: &[String], run: &Path, signals: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_daa"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    loop {
        let steps = std::fs::read_to_string(run.join("metrics.jsonl"))
            .map(|t| t.lines().filter(|l| l.contains("\"type\":\"train\"")).count())
            .unwrap_or(0);
        if steps >= 3 {
            break;
        }
        if child.try_wait().unwrap().is_some() || started.elapsed().as_secs() > 600 {
            let out = child.wait_with_output().unwrap();
            panic!("the run ended or stalled before its third step: {}", stderr(&out));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for signal in signals {
        let pid = child.id().to_string();
        assert!(Command::new("kill").args([*signal, pid.as_str()]).status().unwrap().success());
    }
    child.wait_with_output().unwrap()
}

#[test]
#[cfg(unix)]
fn train_stops_on_sigterm_with_a_complete_checkpoint_and_resumes_like_an_uninterrupted_run() {
    let dir = temp_dir();
    let config = tiny_config_file(dir.path());
    let cache = dir.path().join("cache");
    let (whole, split) = (dir.path().join("whole"), dir.path().join("split"));
    let out = daa(&tiny_train_args(&config, &cache, &whole, 40).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", stderr(&out));

    // SIGTERM during the run: the step finishes, a complete checkpoint is
    // written, the message says how to continue, the status is 128 + 15.
    let args = tiny_train_args(&config, &cache, &split, 40);
    let out = signalled_after_three_steps(&args, &split, &["-TERM"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(143), "{err}");
    let tail = err.split("error: stopped by SIGTERM after step ").nth(1).unwrap_or_else(|| panic!("{err}"));
    let step: u64 = tail.split(':').next().unwrap().parse().unwrap();
    assert!((3..40).contains(&step), "{err}");
    let checkpoint = split.join(format!("checkpoint-{step:06}"));
    assert!(
        tail.contains(&format!(
            "complete checkpoint {}; continue with the same command and --resume",
            checkpoint.display()
        )),
        "{err}"
    );
    for file in ["model.safetensors", "optimizer.safetensors", "trainer_state.json"] {
        assert!(checkpoint.join(file).exists(), "{file}");
    }
    assert!(!split.join("summary.json").exists() && !split.join("run.lock").exists());

    // Resumed with the same command: the uninterrupted run's records.
    let mut resume = args.clone();
    resume.extend(["--resume".into(), split.to_str().unwrap().into()]);
    let out = daa(&resume.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", stderr(&out));
    let records = |run: &Path| read_jsonl(&run.join("metrics.jsonl"));
    daa_tests::metrics::assert_same_metrics(&records(&whole), &records(&split));
}

#[test]
#[cfg(unix)]
fn a_second_signal_exits_at_once_and_the_next_run_takes_over_the_lock() {
    let dir = temp_dir();
    let config = tiny_config_file(dir.path());
    let (cache, run) = (dir.path().join("cache"), dir.path().join("run"));
    let args = tiny_train_args(&config, &cache, &run, 40);
    let out = signalled_after_three_steps(&args, &run, &["-INT", "-INT"]);
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    // Whatever was being written, no checkpoint folder is incomplete.
    for entry in std::fs::read_dir(&run).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with("checkpoint-") {
            assert!(path.join("trainer_state.json").exists(), "{} is incomplete", path.display());
        }
    }
    // The lock of the process that is gone is taken over by the next run into the folder.
    if run.join("run.lock").exists() {
        let again = tiny_train_args(&config, &cache, &run, 1);
        let out = daa(&again.iter().map(String::as_str).collect::<Vec<_>>());
        let err = stderr(&out);
        assert!(out.status.success(), "{err}");
        assert!(err.contains("run.lock: taking over the lock of pid") && err.contains("no longer running"), "{err}");
    }
}

#[test]
#[cfg(unix)]
fn a_second_run_into_a_held_folder_is_refused_naming_the_holder() {
    let dir = temp_dir();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let mut holder = Command::new("sleep").arg("60").spawn().unwrap();
    std::fs::write(run.join("run.lock"), format!("{}\n", holder.id())).unwrap();
    let out = daa(&["train", "--out", run.to_str().unwrap(), "--max-steps", "1"]);
    holder.kill().unwrap();
    holder.wait().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let expected = format!(
        "error: {}: another daa train (pid {}) is writing this run folder; wait for it to end or choose another --out",
        run.display(),
        holder.id()
    );
    assert!(err.contains(&expected), "{err}");
    assert_eq!(std::fs::read_dir(&run).unwrap().count(), 1, "nothing else written");
}

#[test]
fn a_non_finite_step_is_not_applied_and_stops_the_run_naming_it() {
    // lr 1e38: the first update throws the weights so far that the second
    // step's gradient is not finite.
    let dir = temp_dir();
    let config = tiny_config_file(dir.path());
    let run_with = |run: &Path, skip: u64| {
        let skip = format!("train.skip_nonfinite={skip}");
        let sets =
            ["train.lr=1e38", "train.warmup_steps=0", "train.checkpoint_every=1", "monitor.eval_every=100", &skip];
        run_daa(&tiny_args(&config, &dir.path().join("cache"), run, 8, &sets))
    };
    // Stops at the first: names the step, the quantity, the pairs' rows and
    // where to continue from; exit 2; nothing saved after it.
    let run = dir.path().join("stop");
    let out = run_with(&run, 0);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let data = run.join("builtin").join("data.jsonl");
    let checkpoint = run.join("checkpoint-000001");
    for needle in [
        "error: step 2: ".to_string(),
        "is not finite".into(),
        "the step was not applied; pairs at rows ".into(),
        format!(
            "of {}; the last complete checkpoint is {} (--resume {})",
            data.display(),
            checkpoint.display(),
            run.display()
        ),
    ] {
        assert!(err.contains(&needle), "expected {needle:?} in {err}");
    }
    assert!(!run.join("checkpoint-000002").exists() && !run.join("summary.json").exists());
    // With train.skip_nonfinite = 2: steps 2 and 3 are skipped (not applied:
    // their checkpoints hold step 1's weights), the third such step stops the run.
    let run = dir.path().join("skip");
    let out = run_with(&run, 2);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("skipped (1 of train.skip_nonfinite = 2)") && err.contains("skipped (2 of"), "{err}");
    assert!(err.contains("error: step 4: ") && err.contains("checkpoint-000003 (--resume"), "{err}");
    let weights =
        |step: u64| std::fs::read(run.join(format!("checkpoint-{step:06}")).join("model.safetensors")).unwrap();
    assert_eq!(weights(2), weights(1), "a skipped step changes no weight");
    assert_eq!(weights(3), weights(1));
    let steps: Vec<u64> = read_jsonl(&run.join("metrics.jsonl"))
        .iter()
        .filter(|r| r["type"] == "train")
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1], "skipped steps have no training record");
}

#[test]
fn a_damaged_checkpoint_is_named_and_the_earlier_complete_one_offered() {
    let dir = temp_dir();
    let config = tiny_config_file(dir.path());
    let run = dir.path().join("run");
    let train = |extra: &[&str]| {
        let mut args = tiny_args(
            &config,
            &dir.path().join("cache"),
            &run,
            6,
            &["train.checkpoint_every=2", "monitor.eval_every=2"],
        );
        args.extend(extra.iter().map(|s| s.to_string()));
        run_daa(&args)
    };
    let out = train(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let whole = read_jsonl(&run.join("metrics.jsonl"));
    let (latest, earlier) = (run.join("checkpoint-000006"), run.join("checkpoint-000004"));
    let offer = format!(
        "error: --resume {}: the checkpoint is damaged; an earlier checkpoint is complete: {} (continue from it with \
         --resume {}): ",
        latest.display(),
        earlier.display(),
        earlier.display()
    );

    // A truncated weights file: named, the earlier checkpoint offered, exit 2.
    let weights = latest.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let out = train(&["--resume", run.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("{offer}{}: not a safetensors file", weights.display())), "{err}");
    // The offered checkpoint continues the run exactly.
    let out = train(&["--resume", earlier.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    daa_tests::metrics::assert_same_metrics(&whole, &read_jsonl(&run.join("metrics.jsonl")));

    // A trainer state that does not match its folder.
    let state_path = latest.join("trainer_state.json");
    let mut state: Value = serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    state["step"] = Value::from(5);
    std::fs::write(&state_path, serde_json::to_string(&state).unwrap()).unwrap();
    let out = train(&["--resume", run.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let expected = format!("{offer}{}: says step 5, but the folder is the checkpoint of step 6", state_path.display());
    assert!(err.contains(&expected), "{err}");
    state["step"] = Value::from(6);
    std::fs::write(&state_path, serde_json::to_string(&state).unwrap()).unwrap();

    // Weights behind an index that lost an entry (the whole checkpoint's
    // weights as one shard of `model.safetensors.index.json`).
    let earlier_weights = std::fs::read(earlier.join("model.safetensors")).unwrap();
    let shard = latest.join("model-00001-of-00001.safetensors");
    std::fs::write(&shard, &earlier_weights).unwrap();
    std::fs::remove_file(&weights).unwrap();
    let mut names: Vec<String> = safetensors::SafeTensors::deserialize(&earlier_weights)
        .unwrap()
        .names()
        .into_iter()
        .map(String::from)
        .collect();
    names.sort();
    let lost = names.remove(0);
    let weight_map: serde_json::Map<String, Value> =
        names.iter().map(|n| (n.clone(), Value::from("model-00001-of-00001.safetensors"))).collect();
    let index = latest.join("model.safetensors.index.json");
    std::fs::write(&index, serde_json::json!({"metadata": {}, "weight_map": weight_map}).to_string()).unwrap();
    let out = train(&["--resume", run.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let expected = format!("{offer}{}: no entry for tensor `{lost}`, which {} holds", index.display(), shard.display());
    assert!(err.contains(&expected), "{err}");
}

#[test]
#[cfg(target_os = "linux")]
fn a_checkpoint_that_cannot_be_written_leaves_the_earlier_ones_and_the_run_resumes() {
    // A file-size limit stands in for a full disk: the optimizer's file (about 1 MB for the tiny model) cannot be
    // written, the weights (about 0.5 MB) can.
    let dir = temp_dir();
    let config = tiny_config_file(dir.path());
    let run = dir.path().join("run");
    let args = |steps: u64, extra: &[&str]| {
        let sets = ["train.checkpoint_every=2", "monitor.eval_every=2"];
        let mut args = tiny_args(&config, &dir.path().join("cache"), &run, steps, &sets);
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let whole_dir = temp_dir();
    let mut whole_args = args(8, &[]);
    whole_args[4] = whole_dir.path().join("run").to_str().unwrap().into();
    let out = run_daa(&whole_args);
    assert!(out.status.success(), "{}", stderr(&out));
    let whole = read_jsonl(&whole_dir.path().join("run").join("metrics.jsonl"));

    let out = run_daa(&args(4, &[]));
    assert!(out.status.success(), "{}", stderr(&out));
    let kept = run.join("checkpoint-000004");
    let before: Vec<Vec<u8>> = ["model.safetensors", "optimizer.safetensors", "trainer_state.json"]
        .iter()
        .map(|f| std::fs::read(kept.join(f)).unwrap())
        .collect();
    // Resumed under the limit: step 6's checkpoint fails, named; exit 2.
    let limited = run_daa_with_file_limit(&args(8, &["--resume", run.to_str().unwrap()]), 600 << 10);
    let err = stderr(&limited);
    assert_eq!(limited.status.code(), Some(2), "{err}");
    let expected = format!(
        "error: saving the checkpoint {} (not saved: nothing was written under its name; earlier checkpoints are \
         untouched): writing optimizer.safetensors: File too large",
        run.join("checkpoint-000006").display()
    );
    assert!(err.contains(&expected), "{err}");
    // Nothing half-written, the earlier checkpoint byte for byte as it was.
    let names: Vec<String> =
        std::fs::read_dir(&run).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!names.iter().any(|n| n.contains("checkpoint-000006") || n.contains(".tmp")), "{names:?}");
    for (f, bytes) in ["model.safetensors", "optimizer.safetensors", "trainer_state.json"].iter().zip(&before) {
        assert_eq!(&std::fs::read(kept.join(f)).unwrap(), bytes, "{f}");
    }
    // With room again, --resume continues from it: the uninterrupted run's records.
    let out = run_daa(&args(8, &["--resume", run.to_str().unwrap()]));
    assert!(out.status.success(), "{}", stderr(&out));
    daa_tests::metrics::assert_same_metrics(&whole, &read_jsonl(&run.join("metrics.jsonl")));
}

/// `daa` with `args`, no file it writes allowed past `bytes` (RLIMIT_FSIZE
/// with SIGXFSZ ignored: the write that would pass it fails with EFBIG, "File
/// too large", as a write to a full disk fails with ENOSPC; no privileges needed).
#[cfg(target_os = "linux")]
fn run_daa_with_file_limit(args: &[String], bytes: u64) -> Output {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(env!("CARGO_BIN_EXE_daa"));
    command.args(args);
    // SAFETY: between fork and exec the closure calls only signal(2) and
    // setrlimit(2), which are async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit { rlim_cur: bytes, rlim_max: bytes };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
        });
    }
    command.output().unwrap()
}

#[test]
#[cfg(target_os = "linux")]
fn metrics_that_cannot_be_appended_stop_the_run_and_resume_drops_the_cut_line() {
    let dir = temp_dir();
    let config = tiny_config_file(dir.path());
    let cache = dir.path().join("cache");
    let args = |run: &Path, steps: u64, extra: &[&str]| {
        let mut args = tiny_args(&config, &cache, run, steps, &["train.checkpoint_every=4", "monitor.eval_every=2"]);
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let whole_run = dir.path().join("whole");
    let out = run_daa(&args(&whole_run, 8, &[]));
    assert!(out.status.success(), "{}", stderr(&out));
    let whole = read_jsonl(&whole_run.join("metrics.jsonl"));

    let run = dir.path().join("run");
    let out = run_daa(&args(&run, 4, &[]));
    assert!(out.status.success(), "{}", stderr(&out));
    let metrics = run.join("metrics.jsonl");
    let size = std::fs::metadata(&metrics).unwrap().len();
    // Resumed with room for 10 more bytes: step 5's record is cut short.
    let resume = ["--resume", run.to_str().unwrap()];
    let limited = run_daa_with_file_limit(&args(&run, 8, &resume), size + 10);
    let err = stderr(&limited);
    assert_eq!(limited.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("error: {}: write failed: File too large", metrics.display())), "{err}");
    assert_eq!(std::fs::metadata(&metrics).unwrap().len(), size + 10);
    // The next --resume drops the cut line, says so, and continues exactly.
    let out = run_daa(&args(&run, 8, &resume));
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    // (The resumed run rewrote the kept records first, so the cut is not
    // exactly 10 bytes long.)
    let note = format!("{}: the last line was cut short (", metrics.display());
    assert!(err.contains(&note) && err.contains("bytes without a newline); dropped"), "{err}");
    daa_tests::metrics::assert_same_metrics(&whole, &read_jsonl(&metrics));
}

/// Every file under `dir`, recursively, relative to it.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path).into_iter().map(|p| Path::new(&entry.file_name()).join(p)));
        } else {
            out.push(PathBuf::from(entry.file_name()));
        }
    }
    out.sort();
    out
}

#[test]
#[cfg(target_os = "linux")]
fn a_reference_cache_that_cannot_be_written_is_named_and_the_rerun_equals_an_uninterrupted_one() {
    let dir = temp_dir();
    let config = tiny_config_file(dir.path());
    let cache = dir.path().join("cache");
    let first = dir.path().join("first");
    let out = run_daa(&tiny_args(&config, &cache, &first, 3, &[]));
    assert!(out.status.success(), "{}", stderr(&out));
    let whole = read_jsonl(&first.join("metrics.jsonl"));
    let logps = cache.join("logps");
    let scores: Vec<PathBuf> = files_under(&logps);
    assert_eq!(scores.len(), 1, "{scores:?}");
    let scores = logps.join(&scores[0]);
    let size = std::fs::metadata(&scores).unwrap().len();
    std::fs::remove_file(&scores).unwrap();
    let before = files_under(&cache);

    // Into the same folder, where the built-in model (larger than the
    // scores) already is: the scores are the first file over the limit.
    let run = first;
    let limited = run_daa_with_file_limit(&tiny_args(&config, &cache, &run, 3, &[]), size - 1);
    let err = stderr(&limited);
    assert_eq!(limited.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("{}: write failed: File too large", scores.display())), "{err}");
    assert_eq!(files_under(&cache), before, "nothing half-written is left in the cache");

    let out = run_daa(&tiny_args(&config, &cache, &run, 3, &[]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::metadata(&scores).unwrap().len(), size);
    daa_tests::metrics::assert_same_metrics(&whole, &read_jsonl(&run.join("metrics.jsonl")));
}

#[test]
#[cfg(target_os = "linux")]
fn a_testbed_cache_that_cannot_be_written_is_named_and_the_rerun_equals_an_uninterrupted_one() {
    let dir = temp_dir();
    let args = |run: &Path, cache: &Path| -> Vec<String> {
        let mut args: Vec<String> =
            ["train", "--max-steps", "2", "--out", run.to_str().unwrap()].map(String::from).to_vec();
        let cache = format!("train.cache_dir={:?}", cache.display().to_string());
        for set in [cache.as_str(), "monitor.eval_every=2"].iter().chain(&SMALL_TESTBED) {
            args.extend(["--set".to_string(), (*set).to_string()]);
        }
        args
    };
    let whole_run = dir.path().join("whole");
    let out = run_daa(&args(&whole_run, &dir.path().join("cache-whole")));
    assert!(out.status.success(), "{}", stderr(&out));
    let whole = read_jsonl(&whole_run.join("metrics.jsonl"));

    // The fine-tuned reference policy cannot be written.
    let cache = dir.path().join("cache");
    let run = dir.path().join("run");
    let limited = run_daa_with_file_limit(&args(&run, &cache), 32 << 10);
    let err = stderr(&limited);
    assert_eq!(limited.status.code(), Some(2), "{err}");
    let testbed = cache.join("testbed");
    let key = std::fs::read_dir(&testbed).unwrap().next().unwrap().unwrap().path();
    let expected = format!("error: testbed: writing the reference policy {}", key.join("reference").display());
    assert!(err.contains(&expected) && err.contains("File too large"), "{err}");
    assert_eq!(files_under(&testbed), Vec::<PathBuf>::new(), "nothing half-written is left in the cache");

    let out = run_daa(&args(&run, &cache));
    assert!(out.status.success(), "{}", stderr(&out));
    daa_tests::metrics::assert_same_metrics(&whole, &read_jsonl(&run.join("metrics.jsonl")));
}
