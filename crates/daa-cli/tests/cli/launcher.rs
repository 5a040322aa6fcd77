//! `daa train --nproc-per-node N [--nnodes M --node-rank R --master-addr
//! HOST --master-port P]`: daa's own launcher, whose ranks exchange over
//! TCP (no MPI), and ranks started as torchrun starts them (`RANK`,
//! `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`). Two ranks on one node and
//! two "nodes" of one rank each (two launchers on this machine) train what
//! one process trains, to the bit; a rank that dies is named by the
//! launcher, which stops the others; a signal to the launcher checkpoints
//! every rank; a torchrun rank whose configuration differs is named.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::distributed::{assert_same_steps, train_records, weights};
use super::faults::{tiny_args, tiny_config_file};
use super::{daa, stderr, temp_dir};

fn run_daa(args: &[String]) -> Output {
    daa(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn with(args: &[String], more: &[&str]) -> Vec<String> {
    args.iter().cloned().chain(more.iter().map(|s| s.to_string())).collect()
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap().local_addr().unwrap().port()
}

#[test]
fn the_launcher_s_ranks_and_two_nodes_train_what_one_process_trains() {
    let dir = temp_dir();
    let (config, cache) = (tiny_config_file(dir.path()), dir.path().join("cache"));
    let run = |name: &str| dir.path().join(name);
    let args = |out: &str, sets: &[&str]| {
        let mut sets = sets.to_vec();
        sets.push("train.checkpoint_every=2");
        tiny_args(&config, &cache, &run(out), 4, &sets)
    };
    let out = run_daa(&args("one", &[]));
    assert!(out.status.success(), "{}", stderr(&out));
    let expected = train_records(&run("one"));
    assert_eq!(expected.len(), 4);

    // One node, two ranks, ZeRO-1.
    let two = with(&args("two", &["train.sharding=\"optimizer\""]), &["--nproc-per-node", "2"]);
    let out = run_daa(&two);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("starting ranks 0..1 of 2"), "{}", stderr(&out));
    assert_same_steps(&run("two"), &expected, "2 ranks");
    assert!(weights(&run("two"), 4) == weights(&run("one"), 4), "2 ranks: the weights after step 4 differ");
    assert!(run("two").join("checkpoint-000002/optimizer-rank-00001-of-00002.safetensors").exists());

    // Two nodes of one rank each (two launchers), ZeRO-2: node 1 starts first
    // and waits for node 0's rank 0.
    let port = free_port().to_string();
    let node = |rank: &str| {
        let launched = with(
            &args("nodes", &["train.sharding=\"gradients\""]),
            &["--nproc-per-node", "1", "--nnodes", "2", "--node-rank", rank, "--master-addr", "127.0.0.1"],
        );
        Command::new(env!("CARGO_BIN_EXE_daa"))
            .args(with(&launched, &["--master-port", &port]))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let second = node("1");
    std::thread::sleep(Duration::from_millis(300));
    let first = node("0");
    let (first, second) = (first.wait_with_output().unwrap(), second.wait_with_output().unwrap());
    assert!(first.status.success() && second.status.success(), "{}\n{}", stderr(&first), stderr(&second));
    assert!(stderr(&second).contains("starting ranks 1..1 of 2"), "{}", stderr(&second));
    assert_same_steps(&run("nodes"), &expected, "2 nodes");
    assert!(weights(&run("nodes"), 4) == weights(&run("one"), 4), "2 nodes: the weights after step 4 differ");
}

#[test]
fn a_rank_that_dies_is_named_by_the_launcher_which_stops_the_others() {
    let dir = temp_dir();
    let (config, cache) = (tiny_config_file(dir.path()), dir.path().join("cache"));
    let run = dir.path().join("run");
    let args = with(&tiny_args(&config, &cache, &run, 6, &["train.checkpoint_every=2"]), &["--nproc-per-node", "2"]);
    let started = Instant::now();
    let out =
        Command::new(env!("CARGO_BIN_EXE_daa")).args(&args).env("DAA_FAULT_EXIT_AT_STEP", "1:3").output().unwrap();
    let text = stderr(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("rank 1: exiting at step 3"), "{text}");
    // The launcher names the rank, its host and pid, and how it ended …
    assert!(text.contains("error: rank 1 (host ") && text.contains("exited with status 3"), "{text}");
    // … and rank 0 stops at once: its peer closed the connection.
    assert!(text.contains("rank 1 left the group"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(60), "the run took {:?} to end", started.elapsed());
    assert!(run.join("checkpoint-000002").exists());
    assert!(!run.join("checkpoint-000004").exists());
    assert_eq!(train_records(&run).len(), 2, "{text}");
}

#[test]
#[cfg(unix)]
fn a_signal_to_the_launcher_checkpoints_every_rank() {
    let dir = temp_dir();
    let (config, cache) = (tiny_config_file(dir.path()), dir.path().join("cache"));
    let run = dir.path().join("run");
    let sets = ["train.checkpoint_every=1000", "train.sharding=\"gradients\"", "train.epochs=3"];
    let args = with(&tiny_args(&config, &cache, &run, 60, &sets), &["--nproc-per-node", "2"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_daa"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while super::distributed::steps_written(&run) < 3 {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before its third step");
        assert!(started.elapsed().as_secs() < 300, "the run did not reach its third step");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    let text = stderr(&out);
    // Rank 0's status (128 + SIGTERM) after a complete checkpoint of both ranks.
    assert_eq!(out.status.code(), Some(143), "{text}");
    assert!(text.contains("passing SIGTERM on to the ranks"), "{text}");
    let steps = train_records(&run).len() as u64;
    let checkpoint = run.join(format!("checkpoint-{steps:06}"));
    assert!(checkpoint.join("optimizer-rank-00001-of-00002.safetensors").exists(), "{text}");
    assert!(checkpoint.join("layout.json").exists(), "{text}");
}

/// Starts `daa` as rank `rank` of `world` the way torchrun does.
fn as_torchrun_rank(args: &[String], rank: usize, world: usize, port: u16) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_daa"))
        .args(args)
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("LOCAL_WORLD_SIZE", world.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn torchrun_ranks_meet_next_to_its_port_and_one_with_another_configuration_is_named() {
    let dir = temp_dir();
    let (config, cache) = (tiny_config_file(dir.path()), dir.path().join("cache"));
    let run = dir.path().join("run");
    let args = tiny_args(&config, &cache, &run, 2, &[]);
    let other = tiny_args(&config, &cache, &run, 2, &["train.lr=2e-2"]);
    // torchrun's own store listens on MASTER_PORT; daa's ranks meet on the next port.
    let port = free_port();
    let _torchrun_store = std::net::TcpListener::bind(("127.0.0.1", port));
    let ranks = [as_torchrun_rank(&args, 0, 2, port), as_torchrun_rank(&other, 1, 2, port)];
    let outputs: Vec<Output> = ranks.into_iter().map(|r| r.wait_with_output().unwrap()).collect();
    for out in &outputs {
        let text = stderr(out);
        assert!(!out.status.success(), "{text}");
        assert!(text.contains("the daa version and configuration of rank(s) 1 differs from rank 0's"), "{text}");
    }
    assert!(!run.join("metrics.jsonl").exists(), "nothing may start");
}

#[test]
fn launcher_flags_that_cannot_work_are_refused() {
    let dir = temp_dir();
    let (config, cache) = (tiny_config_file(dir.path()), dir.path().join("cache"));
    let args = tiny_args(&config, &cache, &dir.path().join("run"), 2, &[]);
    let cases: [(&[&str], &str); 3] = [
        (&["--nproc-per-node", "1", "--nnodes", "2"], "--nnodes 2 needs --master-addr"),
        (&["--nproc-per-node", "2", "--nnodes", "2", "--node-rank", "2", "--master-addr", "h"], "--node-rank 2 is not"),
        (&["--nnodes", "2"], "--nnodes needs --nproc-per-node"),
    ];
    for (flags, expected) in cases {
        let out = run_daa(&with(&args, flags));
        assert!(!out.status.success(), "{flags:?}");
        assert!(stderr(&out).contains(expected), "{flags:?}: {}", stderr(&out));
    }
    // A rank of a launched run cannot launch ranks itself.
    let out = Command::new(env!("CARGO_BIN_EXE_daa"))
        .args(with(&args, &["--nproc-per-node", "2"]))
        .env("RANK", "0")
        .env("WORLD_SIZE", "2")
        .output()
        .unwrap();
    assert!(stderr(&out).contains("already rank 0 of 2"), "{}", stderr(&out));
    assert!(!dir.path().join("run/metrics.jsonl").exists());
}

#[test]
fn sharded_within_each_of_two_nodes_trains_what_one_process_trains() {
    let dir = temp_dir();
    let (config, cache) = (tiny_config_file(dir.path()), dir.path().join("cache"));
    let run = |name: &str| dir.path().join(name);
    let sets = ["train.checkpoint_every=2", "train.micro_batch_size=2"];
    let out = run_daa(&tiny_args(&config, &cache, &run("one"), 4, &sets));
    assert!(out.status.success(), "{}", stderr(&out));
    let expected = train_records(&run("one"));
    // Two launchers of two ranks each: ZeRO-2 within each node, replicated
    // across the nodes (node 1 started first).
    let mut hsdp = sets.to_vec();
    hsdp.extend(["train.sharding=\"gradients\"", "train.shard_within=\"node\""]);
    let args = tiny_args(&config, &cache, &run("hsdp"), 4, &hsdp);
    let port = free_port().to_string();
    let node = |rank: &str| {
        let flags = ["--nproc-per-node", "2", "--nnodes", "2", "--node-rank", rank, "--master-addr", "127.0.0.1"];
        Command::new(env!("CARGO_BIN_EXE_daa"))
            .args(with(&with(&args, &flags), &["--master-port", &port]))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let second = node("1");
    let first = node("0");
    let (first, second) = (first.wait_with_output().unwrap(), second.wait_with_output().unwrap());
    assert!(first.status.success() && second.status.success(), "{}\n{}", stderr(&first), stderr(&second));
    assert!(stderr(&first).contains("sharding gradients within each node (HSDP)"), "{}", stderr(&first));
    // The gradients summed as (node 0) + (node 1): the losses to rounding.
    let records = train_records(&run("hsdp"));
    assert_eq!(records.len(), expected.len());
    for (step, ((loss, norm), (one_loss, one_norm))) in records.iter().zip(&expected).enumerate() {
        assert!((loss - one_loss).abs() <= 1e-6 * one_loss.abs(), "step {}: loss {loss} against {one_loss}", step + 1);
        assert!((norm - one_norm).abs() <= 1e-5 * one_norm, "step {}: ‖g‖ {norm} against {one_norm}", step + 1);
    }
    // Node 0's two ranks wrote the two slices; resumed on one process, the
    // run continues as the uninterrupted one.
    let checkpoint = run("hsdp").join("checkpoint-000002");
    assert!(checkpoint.join("optimizer-rank-00001-of-00002.safetensors").exists());
    assert!(!checkpoint.join("optimizer-rank-00003-of-00004.safetensors").exists());
    let resumed =
        with(&tiny_args(&config, &cache, &run("resumed"), 4, &sets), &["--resume", checkpoint.to_str().unwrap()]);
    let out = run_daa(&resumed);
    assert!(out.status.success(), "{}", stderr(&out));
    for ((loss, _), (one_loss, _)) in train_records(&run("resumed")).iter().zip(&expected[2..]) {
        assert!((loss - one_loss).abs() <= 1e-6 * one_loss.abs(), "resumed: loss {loss} against {one_loss}");
    }
}

#[test]
fn the_sample_evaluation_split_over_two_ranks_gives_one_process_s_figures_and_samples() {
    let dir = temp_dir();
    let (config, cache) = (tiny_config_file(dir.path()), dir.path().join("cache"));
    let run = |name: &str| dir.path().join(name);
    // The testbed (the gold judge scores its prompts); 8 prompts in batches
    // of 4: rank r samples batch r, one process both.
    let sets = [
        "data.path=\"builtin:testbed\"",
        "model.path=\"builtin:testbed\"",
        "monitor.samples.judge=\"gold\"",
        "monitor.samples.prompts=8",
        "monitor.samples.batch_size=4",
        "monitor.samples.max_new_tokens=8",
        "monitor.eval_every=2",
    ];
    let out = run_daa(&tiny_args(&config, &cache, &run("one"), 2, &sets));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run_daa(&with(&tiny_args(&config, &cache, &run("two"), 2, &sets), &["--nproc-per-node", "2"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let evals = |run: &std::path::Path| -> Vec<serde_json::Value> {
        super::read_jsonl(&run.join("metrics.jsonl")).into_iter().filter(|r| r["type"] == "eval").collect()
    };
    let (one, two) = (evals(&run("one")), evals(&run("two")));
    assert_eq!(one.len(), 2, "evaluations at steps 0 and 2");
    for (a, b) in one.iter().zip(&two) {
        for figure in
            ["eval/win_prob", "eval/gold_reward", "eval/kl", "eval/ead", "eval/sample_topk_entropy", "eval/length"]
        {
            assert!(a[figure].is_number(), "{figure}: {a}");
            assert_eq!(a[figure], b[figure], "step {}: {figure}", a["step"]);
        }
    }
    let samples = |run: &std::path::Path| std::fs::read_to_string(run.join("samples.jsonl")).unwrap();
    assert_eq!(samples(&run("one")), samples(&run("two")), "samples.jsonl");
}
