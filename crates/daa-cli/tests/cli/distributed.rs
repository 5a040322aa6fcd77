//! `daa train` over several processes: `mpirun -n 2 daa train …` against
//! one process on the same run (the tiny built-in model and task, 8 pairs
//! per step: 4 per rank, one micro-batch of 4 each, against one process's
//! two micro-batches of 4). The per-step losses are the same numbers, the
//! weights the same bits (the gradient sums are the same sums); a sharded
//! checkpoint resumes onto one process and a whole one onto two ranks as
//! an uninterrupted run continues; a rank whose configuration differs is
//! named. Needs Open MPI (`scripts/setup.sh`); skipped without `mpirun`
//! unless `DAA_REQUIRE_MPI=1` (CI).

use std::path::Path;
use std::process::{Command, Output};

use super::faults::{tiny_args, tiny_config_file};
use super::{daa, read_jsonl, stderr, temp_dir};

/// `mpirun` with `ranks` (each rank's `daa` arguments, MPMD), or `None`
/// where Open MPI is missing and not required.
fn mpirun(ranks: &[Vec<String>]) -> Option<Output> {
    mpirun_with(ranks, &[])
}

/// [`mpirun`] with environment variables for every rank.
fn mpirun_with(ranks: &[Vec<String>], env: &[(&str, &str)]) -> Option<Output> {
    if Command::new("mpirun").arg("--version").output().is_err() {
        assert!(std::env::var("DAA_REQUIRE_MPI").is_err(), "DAA_REQUIRE_MPI is set but mpirun is missing");
        println!("skipped: mpirun not found (scripts/setup.sh installs Open MPI)");
        return None;
    }
    let mut command = Command::new("mpirun");
    command.arg("--oversubscribe");
    for (i, args) in ranks.iter().enumerate() {
        if i > 0 {
            command.arg(":");
        }
        command.args(["-n", "1", env!("CARGO_BIN_EXE_daa")]).args(args);
    }
    // Containers run as root; Open MPI refuses that unless told.
    command.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    command.envs(env.iter().copied());
    Some(command.output().unwrap())
}

/// Waits (up to 60 s) until the process named by `run/run.lock` ended
/// (gone, or a zombie nothing reaps).
pub(super) fn wait_for_the_lock_holder(run: &Path) {
    let Ok(pid) = std::fs::read_to_string(run.join("run.lock")) else { return };
    let stat = Path::new("/proc").join(pid.trim()).join("stat");
    let running = || {
        std::fs::read_to_string(&stat)
            .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, r)| !r.trim().starts_with('Z')))
    };
    let started = std::time::Instant::now();
    while running() && started.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!running(), "rank 0 (pid {}) was still running 60 s after mpirun ended", pid.trim());
}

/// The training records' `(loss, grad_norm)` of a run folder.
pub(super) fn train_records(run: &Path) -> Vec<(f64, f64)> {
    read_jsonl(&run.join("metrics.jsonl"))
        .iter()
        .filter(|r| r["type"] == "train")
        .map(|r| (r["loss"].as_f64().unwrap(), r["grad_norm"].as_f64().unwrap()))
        .collect()
}

pub(super) fn weights(run: &Path, step: u64) -> Vec<u8> {
    std::fs::read(run.join(format!("checkpoint-{step:06}")).join("model.safetensors")).unwrap()
}

pub(super) fn assert_same_steps(run: &Path, expected: &[(f64, f64)], what: &str) {
    let records = train_records(run);
    assert_eq!(records.len(), expected.len(), "{what}: training records");
    for (step, ((loss, norm), (one_loss, one_norm))) in records.iter().zip(expected).enumerate() {
        assert_eq!(loss, one_loss, "{what}: the loss of step {}", step + 1);
        assert!((norm - one_norm).abs() <= 1e-6 * one_norm, "{what}: step {}: ‖g‖ {norm} against {one_norm}", step + 1);
    }
}

#[test]
fn two_ranks_train_what_one_process_trains_and_checkpoints_resume_onto_either() {
    let dir = temp_dir();
    let (config, cache) = (tiny_config_file(dir.path()), dir.path().join("cache"));
    let run = |name: &str| dir.path().join(name);
    let args = |out: &str, steps: u64, sets: &[&str]| {
        let mut sets = sets.to_vec();
        sets.push("train.checkpoint_every=2");
        tiny_args(&config, &cache, &run(out), steps, &sets)
    };
    let one = args("one", 4, &[]);
    let out = daa(&one.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", stderr(&out));
    let expected = train_records(&run("one"));
    assert_eq!(expected.len(), 4);

    // Two ranks, each stage: the same losses and, at the end, the same weights.
    for stage in ["none", "optimizer", "gradients"] {
        let name = format!("two-{stage}");
        let sharding = format!("train.sharding={stage:?}");
        let two = args(&name, 4, &[sharding.as_str()]);
        let Some(out) = mpirun(&[two.clone(), two]) else { return };
        assert!(out.status.success(), "{stage}: {}", stderr(&out));
        assert_same_steps(&run(&name), &expected, stage);
        assert!(weights(&run(&name), 4) == weights(&run("one"), 4), "{stage}: the weights after step 4 differ");
        let checkpoint = run(&name).join("checkpoint-000002");
        let sharded = stage != "none";
        assert_eq!(checkpoint.join("layout.json").exists(), sharded, "{stage}: layout.json");
        assert_eq!(checkpoint.join("optimizer-rank-00001-of-00002.safetensors").exists(), sharded, "{stage}");
        assert_eq!(checkpoint.join("optimizer.safetensors").exists(), !sharded, "{stage}");
        assert!(!run(&name).join(".checkpoint-000002.partial").exists(), "{stage}: a partial folder was left");
    }

    // 2 → 1: the sharded checkpoint of step 2 resumed by one process.
    let checkpoint = run("two-gradients").join("checkpoint-000002");
    let mut resumed = args("resumed-on-one", 4, &[]);
    resumed.extend(["--resume".into(), checkpoint.to_str().unwrap().into()]);
    let out = daa(&resumed.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "2 → 1: {}", stderr(&out));
    assert_same_steps(&run("resumed-on-one"), &expected[2..], "2 → 1");
    assert!(weights(&run("resumed-on-one"), 4) == weights(&run("one"), 4), "2 → 1: the weights after step 4 differ");

    // 2 → 3: the sharded checkpoint re-sliced for three ranks (slices of 3,
    // 3 and 2 pairs: the gradient sums in another order, so to rounding).
    let checkpoint = run("two-gradients").join("checkpoint-000002");
    let mut resumed = args("resumed-on-three", 4, &["train.sharding=\"gradients\""]);
    resumed.extend(["--resume".into(), checkpoint.to_str().unwrap().into()]);
    let out = mpirun(&[resumed.clone(), resumed.clone(), resumed]).unwrap();
    assert!(out.status.success(), "2 → 3: {}", stderr(&out));
    let records = train_records(&run("resumed-on-three"));
    assert_eq!(records.len(), 2, "2 → 3: training records");
    for ((loss, _), (one_loss, _)) in records.iter().zip(&expected[2..]) {
        assert!((loss - one_loss).abs() <= 1e-6 * one_loss.abs(), "2 → 3: loss {loss} against {one_loss}");
    }

    // 1 → 2: one process's whole checkpoint resumed by two sharded ranks.
    let checkpoint = run("one").join("checkpoint-000002");
    let mut resumed = args("resumed-on-two", 4, &["train.sharding=\"optimizer\""]);
    resumed.extend(["--resume".into(), checkpoint.to_str().unwrap().into()]);
    let out = mpirun(&[resumed.clone(), resumed]).unwrap();
    assert!(out.status.success(), "1 → 2: {}", stderr(&out));
    assert_same_steps(&run("resumed-on-two"), &expected[2..], "1 → 2");
    assert!(weights(&run("resumed-on-two"), 4) == weights(&run("one"), 4), "1 → 2: the weights after step 4 differ");
}

/// ZeRO-3 over real processes: `mpirun -n 2` with `train.sharding =
/// "parameters"` (each decoder block gathered over MPI when it runs)
/// against one process, both with activation checkpointing; its checkpoint
/// (written in the layout every stage reads) resumed by one process, and
/// one process's resumed by two sharded ranks.
#[test]
fn sharded_parameters_over_two_processes_train_what_one_trains_and_resume_either_way() {
    let dir = temp_dir();
    let (config, cache) = (tiny_config_file(dir.path()), dir.path().join("cache"));
    let run = |name: &str| dir.path().join(name);
    let args = |out: &str, sets: &[&str]| {
        let mut sets = sets.to_vec();
        sets.extend(["train.checkpoint_every=2", "train.activation_checkpointing=true"]);
        tiny_args(&config, &cache, &run(out), 4, &sets)
    };
    let one = args("one", &[]);
    let out = daa(&one.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", stderr(&out));
    let expected = train_records(&run("one"));
    assert_eq!(expected.len(), 4);

    let zero3 = "train.sharding=\"parameters\"";
    let two = args("two", &[zero3]);
    let Some(out) = mpirun(&[two.clone(), two]) else { return };
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same_steps(&run("two"), &expected, "parameters");
    assert!(weights(&run("two"), 4) == weights(&run("one"), 4), "the weights after step 4 differ");
    let checkpoint = run("two").join("checkpoint-000002");
    assert!(
        checkpoint.join("layout.json").exists()
            && checkpoint.join("optimizer-rank-00001-of-00002.safetensors").exists()
    );

    // 2 → 1: the ZeRO-3 checkpoint of step 2 resumed by one process.
    let mut resumed = args("resumed-on-one", &[]);
    resumed.extend(["--resume".into(), checkpoint.to_str().unwrap().into()]);
    let out = daa(&resumed.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "2 → 1: {}", stderr(&out));
    assert_same_steps(&run("resumed-on-one"), &expected[2..], "2 → 1");
    assert!(weights(&run("resumed-on-one"), 4) == weights(&run("one"), 4), "2 → 1: the weights after step 4 differ");

    // 1 → 2: one process's whole checkpoint resumed with sharded parameters.
    let mut resumed = args("resumed-on-two", &[zero3]);
    resumed.extend(["--resume".into(), run("one").join("checkpoint-000002").to_str().unwrap().into()]);
    let out = mpirun(&[resumed.clone(), resumed]).unwrap();
    assert!(out.status.success(), "1 → 2: {}", stderr(&out));
    assert_same_steps(&run("resumed-on-two"), &expected[2..], "1 → 2");
    assert!(weights(&run("resumed-on-two"), 4) == weights(&run("one"), 4), "1 → 2: the weights after step 4 differ");
}

#[test]
fn a_rank_with_another_configuration_is_named_and_every_rank_stops() {
    let dir = temp_dir();
    let (config, cache) = (tiny_config_file(dir.path()), dir.path().join("cache"));
    let args = tiny_args(&config, &cache, &dir.path().join("run"), 2, &[]);
    let other = tiny_args(&config, &cache, &dir.path().join("run"), 2, &["train.lr=2e-2"]);
    let Some(out) = mpirun(&[args, other]) else { return };
    assert!(!out.status.success());
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(text.contains("the daa version and configuration of rank(s) 1 differs from rank 0's"), "{text}");
    assert!(!dir.path().join("run").join("metrics.jsonl").exists(), "nothing may start");
}

#[test]
fn a_rank_that_dies_ends_the_run_at_once_and_leaves_no_checkpoint_resume_would_take() {
    let dir = temp_dir();
    let (config, cache) = (tiny_config_file(dir.path()), dir.path().join("cache"));
    let run = dir.path().join("run");
    let sets = ["train.checkpoint_every=2", "train.sharding=\"gradients\""];
    let args = tiny_args(&config, &cache, &run, 6, &sets);
    // Rank 1 dies while the checkpoint of step 4 is being written.
    let started = std::time::Instant::now();
    let fault = [("DAA_FAULT_EXIT_IN_CHECKPOINT", "1:4")];
    let Some(out) = mpirun_with(&[args.clone(), args.clone()], &fault) else { return };
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("rank 1: exiting at step 4"), "{text}");
    // Open MPI names the process that exited ("Process name: [[job,1],1]",
    // "Exit code: 3") and ends the other.
    assert!(text.contains("],1]") && text.contains("Exit code:"), "{text}");
    assert!(started.elapsed().as_secs() < 120, "the run took {:?} to end", started.elapsed());
    assert!(run.join("checkpoint-000002/layout.json").exists());
    assert!(!run.join("checkpoint-000004").exists(), "a checkpoint that not every rank wrote was renamed into place");
    // mpirun ends rank 0 with SIGTERM; signalled in a collective whose peer
    // is gone, it exits after a grace of 30 s: the lock it held is then stale.
    wait_for_the_lock_holder(&run);
    // Resumed by one process from the run folder: step 2's checkpoint, on to
    // step 6, as a run never interrupted.
    let mut resumed = args.clone();
    resumed.extend(["--resume".into(), run.to_str().unwrap().into()]);
    let out = daa(&resumed.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("checkpoint-000002"), "{}", stderr(&out));
    let whole = tiny_args(&config, &cache, &dir.path().join("whole"), 6, &sets);
    let out = daa(&whole.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same_steps(&run, &train_records(&dir.path().join("whole")), "resumed after the fault");
    assert!(weights(&run, 6) == weights(&dir.path().join("whole"), 6), "the weights after step 6 differ");

    // Rank 0 dies before computing step 3: the run ends, rank 1 does not wait out its deadline.
    let other = dir.path().join("other");
    let args = tiny_args(&config, &cache, &other, 6, &sets);
    let started = std::time::Instant::now();
    let out = mpirun_with(&[args.clone(), args], &[("DAA_FAULT_EXIT_AT_STEP", "0:3")]).unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(!out.status.success() && text.contains("rank 0: exiting at step 3"), "{text}");
    assert!(started.elapsed().as_secs() < 120, "the run took {:?} to end", started.elapsed());
}

/// The pid of rank `rank` among the processes whose command line names `run`.
#[cfg(unix)]
pub(super) fn rank_pid(run: &Path, rank: usize) -> Option<u32> {
    let needle = run.to_str().unwrap();
    // Open MPI's variable, or torchrun's and daa's launcher's.
    let wanted = [format!("OMPI_COMM_WORLD_RANK={rank}"), format!("RANK={rank}")];
    std::fs::read_dir("/proc").ok()?.filter_map(|e| e.ok()).find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let environ = std::fs::read(e.path().join("environ")).ok()?;
        let has = |bytes: &[u8], text: &str| bytes.split(|b| *b == 0).any(|part| part == text.as_bytes());
        let launched = wanted.iter().any(|w| has(&environ, w));
        (String::from_utf8_lossy(&cmdline).contains(needle) && launched).then_some(pid)
    })
}

#[test]
#[cfg(unix)]
fn a_signal_to_one_rank_checkpoints_every_rank_after_the_same_step() {
    let dir = temp_dir();
    let (config, cache) = (tiny_config_file(dir.path()), dir.path().join("cache"));
    let run = dir.path().join("run");
    let sets = ["train.checkpoint_every=1000", "train.sharding=\"gradients\"", "train.epochs=3"];
    let args = tiny_args(&config, &cache, &run, 60, &sets);
    // --nproc-per-node starts the two ranks (over TCP) and supervises them.
    let mut launched = args.clone();
    launched.extend(["--nproc-per-node".into(), "2".into()]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_daa"))
        .args(&launched)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while steps_written(&run) < 3 {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before its third step");
        assert!(started.elapsed().as_secs() < 300, "the run did not reach its third step");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid = rank_pid(&run, 1).expect("rank 1's process");
    assert!(Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    let text = stderr(&out);
    assert!(!out.status.success(), "{text}");
    // Both ranks stopped after the same step, with one whole checkpoint of it.
    let steps = train_records(&run).len() as u64;
    let checkpoint = run.join(format!("checkpoint-{steps:06}"));
    assert!(checkpoint.join("layout.json").exists(), "{text}\n{}", checkpoint.display());
    assert!(checkpoint.join("optimizer-rank-00001-of-00002.safetensors").exists());
    assert!(steps < 60, "the run was not stopped");
    wait_for_the_lock_holder(&run);
    // Resumed on one process, it continues as an uninterrupted run.
    let mut resumed = tiny_args(&config, &cache, &run, steps + 2, &sets);
    resumed.extend(["--resume".into(), run.to_str().unwrap().into()]);
    let out = daa(&resumed.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", stderr(&out));
    let whole = dir.path().join("whole");
    let args = tiny_args(&config, &cache, &whole, steps + 2, &sets);
    let out = daa(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same_steps(&run, &train_records(&whole), "resumed after the signal");
}

/// Training records in `run/metrics.jsonl` so far (0 before it exists).
#[cfg(unix)]
pub(super) fn steps_written(run: &Path) -> usize {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
    text.lines().filter(|l| l.contains("\"type\":\"train\"")).count()
}

#[test]
fn an_epoch_whose_last_step_leaves_a_rank_without_pairs_is_refused_before_it_starts() {
    let dir = temp_dir();
    let (config, cache) = (tiny_config_file(dir.path()), dir.path().join("cache"));
    // 1 024 rows, 15 held out: 1 009 training pairs, the last step of 8 holds 1.
    let args = tiny_args(&config, &cache, &dir.path().join("run"), 2, &["data.eval_size=15"]);
    let Some(out) = mpirun(&[args.clone(), args]) else { return };
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(
        text.contains("the last step of each epoch has 1 pair(s) (1009 training pairs, train.batch_size 8)"),
        "{text}"
    );
    assert!(!dir.path().join("run").join("metrics.jsonl").exists(), "nothing may start");
}

#[test]
fn sharded_within_nodes_under_mpirun_trains_what_one_process_trains() {
    // Four ranks as two "nodes" (GROUP_RANK 0, 0, 1, 1): MPI's groups split
    // by node and by place in the node.
    if Command::new("mpirun").arg("--version").output().is_err() {
        let _ = mpirun(&[]);
        return;
    }
    let dir = temp_dir();
    let (config, cache) = (tiny_config_file(dir.path()), dir.path().join("cache"));
    let run = |name: &str| dir.path().join(name);
    let sets = ["train.micro_batch_size=2"];
    let out = daa(&tiny_args(&config, &cache, &run("one"), 3, &sets).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", stderr(&out));
    let expected = train_records(&run("one"));
    let hsdp = ["train.micro_batch_size=2", "train.sharding=\"optimizer\"", "train.shard_within=\"node\""];
    let args = tiny_args(&config, &cache, &run("hsdp"), 3, &hsdp);
    let mut command = Command::new("mpirun");
    command.arg("--oversubscribe");
    for (i, node) in ["0", "0", "1", "1"].into_iter().enumerate() {
        if i > 0 {
            command.arg(":");
        }
        command.args(["-n", "1", "-x", &format!("GROUP_RANK={node}"), env!("CARGO_BIN_EXE_daa")]).args(&args);
    }
    command.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    let out = command.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let records = train_records(&run("hsdp"));
    assert_eq!(records.len(), expected.len());
    for (step, ((loss, _), (one_loss, _))) in records.iter().zip(&expected).enumerate() {
        assert!((loss - one_loss).abs() <= 1e-6 * one_loss.abs(), "step {}: loss {loss} against {one_loss}", step + 1);
    }
}
