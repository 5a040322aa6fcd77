//! Data parallelism across real processes: `mpirun -n 2` starts this test
//! binary twice (the ignored `mpi_rank_body`), each rank steps on its half of
//! the batch through `MpiRank` and writes what it computed; the parent
//! compares with one in-process rank accumulating the two halves (bit for
//! bit: MPI's sum of two values is exact), and checks that a rank failing
//! mid-run ends the run at once, named. Needs Open MPI (`scripts/setup.sh`
//! installs it); without `mpirun` the tests are skipped unless
//! `DAA_REQUIRE_MPI=1` (CI).

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use daa_train::distributed::{Collective, DataParallel, LaunchEnv, Launcher, MpiRank, rank_slice};
use daa_train::{ReferencePolicy, Trainer};

use super::distributed::{STEPS, options, setup, step_once, train, weights_of};

/// `mpirun -n 2` of this binary's `mpi_rank_body`, or `None` (after saying
/// so) where Open MPI is missing and not required.
fn mpirun(out: &Path, fail_at: Option<&str>) -> Option<Output> {
    if Command::new("mpirun").arg("--version").output().is_err() {
        assert!(std::env::var("DAA_REQUIRE_MPI").is_err(), "DAA_REQUIRE_MPI is set but mpirun is missing");
        println!("skipped: mpirun not found (scripts/setup.sh installs Open MPI)");
        return None;
    }
    let mut command = Command::new("mpirun");
    command
        .args(["-n", "2", "--oversubscribe"])
        .arg(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "distributed_mpi::mpi_rank_body", "--nocapture", "--test-threads", "1"])
        // Containers run as root; Open MPI refuses that unless told.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("DAA_MPI_OUT", out);
    if let Some(fail_at) = fail_at {
        command.env("DAA_MPI_FAIL_AT", fail_at);
    }
    Some(command.output().unwrap())
}

fn text(output: &Output) -> String {
    format!("{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// One rank's body, run only by `mpirun` (see [`mpirun`]).
#[test]
#[ignore = "one MPI rank's body: run by the mpirun tests of this file"]
fn mpi_rank_body() {
    let out = std::path::PathBuf::from(std::env::var("DAA_MPI_OUT").expect("DAA_MPI_OUT: run by mpirun"));
    let launch = LaunchEnv::from_env().unwrap().expect("started by mpirun");
    assert_eq!(launch.launcher, Launcher::OpenMpi);
    let collective = MpiRank::init(Duration::from_secs(60)).unwrap();
    let (rank, world) = (collective.rank(), collective.world_size());
    assert_eq!((rank, world), (launch.rank, launch.world_size));
    let fail_at: Option<(usize, usize)> = std::env::var("DAA_MPI_FAIL_AT").ok().map(|v| {
        let (r, s) = v.split_once(':').expect("DAA_MPI_FAIL_AT=rank:step");
        (r.parse().unwrap(), s.parse().unwrap())
    });
    let (pairs, initial, reference) = setup();
    let slice = rank_slice(pairs.len(), rank, world);
    let mut trainer = Trainer::new(initial, options(4), ReferencePolicy::Given)
        .unwrap()
        .with_reducer(Box::new(DataParallel::new(collective)));
    let mut norms = Vec::new();
    for step in 0..STEPS {
        if fail_at == Some((rank, step)) {
            eprintln!("rank {rank}: exiting at step {step} (fault injection)");
            std::process::exit(3);
        }
        norms.push(step_once(&mut trainer, &pairs[slice.clone()], &reference[slice.clone()]));
    }
    let weights = weights_of(trainer.model());
    let record = serde_json::json!({
        "norms": norms,
        "weights": weights.iter().map(|w: &f32| w.to_bits()).collect::<Vec<u32>>(),
    });
    std::fs::write(out.join(format!("rank{rank}.json")), record.to_string()).unwrap();
}

#[test]
fn two_mpi_processes_step_as_one_process_accumulating_their_two_micro_batches() {
    let out = tempfile::tempdir().unwrap();
    let Some(output) = mpirun(out.path(), None) else { return };
    assert!(output.status.success(), "mpirun failed:\n{}", text(&output));
    let (pairs, initial, reference) = setup();
    let mut one = Trainer::new(initial, options(4), ReferencePolicy::Given).unwrap();
    let (one_norms, one_weights) = train(&mut one, &pairs, &reference);
    for rank in 0..2 {
        let record: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.path().join(format!("rank{rank}.json"))).unwrap())
                .unwrap();
        let norms: Vec<f64> = serde_json::from_value(record["norms"].clone()).unwrap();
        let weights: Vec<f32> = serde_json::from_value::<Vec<u32>>(record["weights"].clone())
            .unwrap()
            .into_iter()
            .map(f32::from_bits)
            .collect();
        assert_eq!(norms, one_norms, "rank {rank}: gradient norms per step");
        assert!(weights == one_weights, "rank {rank}: weights after {STEPS} steps differ from one process's");
    }
}

#[test]
fn a_rank_that_dies_mid_run_ends_the_run_at_once_and_is_named() {
    let out = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let Some(output) = mpirun(out.path(), Some("1:1")) else { return };
    let elapsed = started.elapsed();
    let text = text(&output);
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("rank 1: exiting at step 1 (fault injection)"), "{text}");
    // Open MPI names the process that exited first and its code.
    assert!(text.contains("exited with non-zero status") || text.contains("non-zero exit code"), "{text}");
    // Rank 0, blocked in the step's all-reduce, is ended by mpirun, not by its deadline (60 s).
    assert!(elapsed < Duration::from_secs(45), "took {elapsed:?}:\n{text}");
    assert!(!out.path().join("rank0.json").exists(), "rank 0 finished the run without rank 1");
}
