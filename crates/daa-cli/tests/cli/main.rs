//! The `daa` command end to end: real safetensors and JSON Lines files in,
//! JSON out, compared with daa-core's reference; every bad-input path exits 2
//! with one line naming the file, tensor, row or line, and leaves no output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use daa_core::{
    Backend, HostTensor, PairLogps, PreferenceLoss, PreferenceLossParams, Specification, TokenStatsParams,
    TokenStatsRow,
};
use daa_tests::fixtures::{lm_logits, targets};
use safetensors::{Dtype, tensor::TensorView};
use serde_json::Value;

fn daa(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_daa")).args(args).output().expect("run daa")
}

fn write_safetensors(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| (name.to_string(), TensorView::new(*dtype, shape.clone(), bytes).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn bytes_of<T: bytemuck_free::Le>(v: &[T]) -> Vec<u8> {
    v.iter().flat_map(|x| x.le()).collect()
}

/// Little-endian bytes without pulling bytemuck into the test.
mod bytemuck_free {
    pub trait Le {
        fn le(&self) -> Vec<u8>;
    }
    impl Le for f32 {
        fn le(&self) -> Vec<u8> {
            self.to_le_bytes().to_vec()
        }
    }
    impl Le for i64 {
        fn le(&self) -> Vec<u8> {
            self.to_le_bytes().to_vec()
        }
    }
    impl Le for i32 {
        fn le(&self) -> Vec<u8> {
            self.to_le_bytes().to_vec()
        }
    }
    impl Le for u8 {
        fn le(&self) -> Vec<u8> {
            vec![*self]
        }
    }
    impl Le for half::bf16 {
        fn le(&self) -> Vec<u8> {
            self.to_le_bytes().to_vec()
        }
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `tiny.safetensors` in `dir`: one row of two logits and its target.
fn one_row_logits(dir: &Path) -> PathBuf {
    let file = dir.join("tiny.safetensors");
    write_safetensors(
        &file,
        &[
            ("logits", Dtype::F32, vec![1, 2], bytes_of(&[0.0f32, 1.0])),
            ("targets", Dtype::I64, vec![1], bytes_of(&[1i64])),
        ],
    );
    file
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn stats_on_batch_time_vocab_logits_matches_the_reference() {
    let dir = temp_dir();
    let (b, t, v) = (3, 5, 517);
    let x = lm_logits(b * t, v, 2.0, 1);
    let mut ids = targets(b * t, v, 1);
    ids[4] = -100; // ignored position
    let mask: Vec<u8> = (0..b * t).map(|i| u8::from(i != 7)).collect();
    let file = dir.path().join("logits.safetensors");
    write_safetensors(
        &file,
        &[
            ("logits", Dtype::F32, vec![b, t, v], bytes_of(&x)),
            ("targets", Dtype::I64, vec![b, t], bytes_of(&ids)),
            ("mask", Dtype::U8, vec![b, t], bytes_of(&mask)),
        ],
    );
    let out_path = dir.path().join("stats.json");
    let out = daa(&[
        "stats",
        "--logits",
        file.to_str().unwrap(),
        "--k",
        "20",
        "--out",
        out_path.to_str().unwrap(),
        "--chunk-rows",
        "4",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out_path).unwrap()).unwrap();

    let want = Specification
        .token_stats(
            &HostTensor::from_f32(x, &[b, t, v]).unwrap(),
            &HostTensor::from_i64(ids, &[b, t]).unwrap(),
            Some(&HostTensor::from_u8(mask, &[b, t]).unwrap()),
            &TokenStatsParams { k: 20, entropy_base: 2.0 },
        )
        .unwrap();
    let want = TokenStatsRow::rows_of(&want).unwrap();
    let rows = report["per_row"].as_array().unwrap();
    assert_eq!(rows.len(), b * t);
    for (got, want) in rows.iter().zip(&want) {
        assert_eq!(got["active"].as_bool().unwrap(), want.active);
        for (field, w) in [
            ("topk_entropy", want.topk_entropy),
            ("topk_mass", want.topk_mass),
            ("entropy", want.entropy),
            ("target_logprob", want.target_logprob),
        ] {
            let g = got[field].as_f64().unwrap();
            assert!((g - f64::from(w)).abs() < 1e-4, "{field}: {g} vs {w}");
        }
    }
    // Summary and per-sequence means are over active rows only (13 of 15).
    assert_eq!(report["summary"]["tokens"].as_f64().unwrap(), 13.0);
    let active: Vec<&TokenStatsRow> = want.iter().filter(|r| r.active).collect();
    let mean = active.iter().map(|r| f64::from(r.topk_entropy)).sum::<f64>() / 13.0;
    assert!((report["summary"]["mean_topk_entropy"].as_f64().unwrap() - mean).abs() < 1e-5);
    let sequences = report["sequences"].as_array().unwrap();
    assert_eq!(sequences.len(), b);
    assert_eq!(sequences[0]["tokens"].as_f64().unwrap(), 4.0); // row 4 ignored
    assert_eq!(sequences[1]["tokens"].as_f64().unwrap(), 4.0); // row 7 masked
    assert_eq!(sequences[2]["tokens"].as_f64().unwrap(), 5.0);
}

#[test]
fn stats_reads_bf16_logits_and_i32_targets_to_stdout() {
    let dir = temp_dir();
    let (n, v) = (6, 300);
    let x: Vec<half::bf16> = lm_logits(n, v, 2.0, 2).iter().map(|&f| half::bf16::from_f32(f)).collect();
    let ids: Vec<i32> = targets(n, v, 2).iter().map(|&i| i as i32).collect();
    let file = dir.path().join("bf16.safetensors");
    write_safetensors(
        &file,
        &[("logits", Dtype::BF16, vec![n, v], bytes_of(&x)), ("targets", Dtype::I32, vec![n], bytes_of(&ids))],
    );
    let out = daa(&["stats", "--logits", file.to_str().unwrap(), "--summary-only", "--backend", "spec"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["logits_dtype"], "BF16");
    assert_eq!(report["summary"]["tokens"].as_f64().unwrap(), 6.0);
    assert!(report["per_row"].is_null());
    let m = report["summary"]["mean_topk_mass"].as_f64().unwrap();
    assert!(m > 0.0 && m <= 1.0);
}

/// Runs `daa` expecting failure: exit code 2, one line mentioning every `needle`, and
/// the output file left as it was.
fn expect_failure(args: &[&str], out_path: &Path, needles: &[&str]) {
    let before = std::fs::read(out_path).ok();
    let out = daa(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    for needle in needles {
        assert!(err.contains(needle), "{args:?}: expected {needle:?} in {err}");
    }
    assert_eq!(std::fs::read(out_path).ok(), before, "output file changed by a failed run");
    let leftovers: Vec<PathBuf> = std::fs::read_dir(out_path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

/// What a bad-input case's input file holds.
enum Contents {
    /// These tensors, as safetensors.
    Tensors(Vec<(&'static str, Dtype, Vec<usize>, Vec<u8>)>),
    /// This text.
    Text(String),
    /// No file at all.
    Absent,
}

/// One bad input of a command that reads a file: the file (name and
/// contents), further arguments, and what the one-line error must say.
struct BadInput {
    file: &'static str,
    contents: Contents,
    args: &'static [&'static str],
    expect: &'static [&'static str],
}

/// Runs `daa <command> <input_flag> FILE --out OUT <args>` for each case,
/// each expecting exit code 2, one line holding every expected piece, and
/// `OUT` (holding earlier results) left as it was.
fn expect_failures(command: &str, input_flag: &str, cases: Vec<BadInput>) {
    let dir = temp_dir();
    let out_path = dir.path().join("out.json");
    std::fs::write(&out_path, b"previous results").unwrap();
    for case in cases {
        let file = dir.path().join(case.file);
        match &case.contents {
            Contents::Tensors(tensors) => write_safetensors(&file, tensors),
            Contents::Text(text) => std::fs::write(&file, text).unwrap(),
            Contents::Absent => {}
        }
        let (file, out) = (file.to_str().unwrap(), out_path.to_str().unwrap());
        let mut args = vec![command, input_flag, file, "--out", out];
        args.extend_from_slice(case.args);
        expect_failure(&args, &out_path, case.expect);
    }
}

#[test]
fn stats_bad_inputs_exit_2_with_clear_errors() {
    let (n, v) = (9, 40);
    let x = lm_logits(n, v, 1.0, 3);
    let ids = targets(n, v, 3);
    let logits = |values: &[f32]| ("logits", Dtype::F32, vec![n, v], bytes_of(values));
    let targets_of = |values: &[i64]| ("targets", Dtype::I64, vec![values.len()], bytes_of(values));
    let mut far = ids.clone();
    far[5] = 40;
    let mut nan = x.clone();
    nan[3 * v + 17] = f32::NAN;
    let as_int: Vec<i32> = (0..n * v).map(|i| i as i32).collect();
    let good = || Contents::Tensors(vec![logits(&x), targets_of(&ids)]);
    let cases = vec![
        BadInput {
            file: "only_logits.safetensors",
            contents: Contents::Tensors(vec![logits(&x)]),
            args: &[],
            expect: &["only_logits.safetensors", "tensor `targets` is missing"],
        },
        // Chunks of 2 rows: the error must still name the file's row 5.
        BadInput {
            file: "bad_target.safetensors",
            contents: Contents::Tensors(vec![logits(&x), targets_of(&far)]),
            args: &["--chunk-rows", "2"],
            expect: &["bad_target.safetensors", "row 5: target id 40 is outside the vocabulary 0..40"],
        },
        BadInput {
            file: "nan.safetensors",
            contents: Contents::Tensors(vec![logits(&nan), targets_of(&ids)]),
            args: &[],
            expect: &["`logits` row 3, column 17: value NaN"],
        },
        BadInput { file: "good.safetensors", contents: good(), args: &["--k", "0"], expect: &["parameter `k` = 0"] },
        BadInput {
            file: "good.safetensors",
            contents: good(),
            args: &["--k", "41"],
            expect: &["parameter `k` = 41", "vocabulary size 40"],
        },
        BadInput {
            file: "short.safetensors",
            contents: Contents::Tensors(vec![logits(&x), targets_of(&ids[..n - 1])]),
            args: &[],
            expect: &["`targets` has shape [8], expected [9]"],
        },
        BadInput {
            file: "int_logits.safetensors",
            contents: Contents::Tensors(vec![("logits", Dtype::I32, vec![n, v], bytes_of(&as_int)), targets_of(&ids)]),
            args: &[],
            expect: &["tensor `logits` has dtype I32, expected F32, F16 or BF16"],
        },
        BadInput {
            file: "garbage.safetensors",
            contents: Contents::Text("this is not a safetensors file".into()),
            args: &[],
            expect: &["garbage.safetensors: not a safetensors file"],
        },
        BadInput {
            file: "absent.safetensors",
            contents: Contents::Absent,
            args: &[],
            expect: &["absent.safetensors: cannot open"],
        },
    ];
    expect_failures("stats", "--logits", cases);
}

#[test]
fn loss_calculator_matches_the_catalog() {
    let dir = temp_dir();
    let input = dir.path().join("pairs.jsonl");
    std::fs::write(
        &input,
        concat!(
            r#"{"id": "a", "policy_chosen": -10, "policy_rejected": -12, "reference_chosen": -11, "reference_rejected": -11, "chosen_tokens": 5, "rejected_tokens": 4}"#,
            "\n\n",
            r#"{"id": 7, "policy_chosen": -3.5, "policy_rejected": -2.0, "reference_chosen": -3.0, "reference_rejected": -2.5, "chosen_tokens": 2, "rejected_tokens": 3, "extra": true}"#,
            "\n"
        ),
    )
    .unwrap();
    let out = daa(&["loss", "--loss", "dpo", "--beta", "0.5", "--input", input.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["id"], "a");
    assert_eq!(lines[1]["id"], 7);
    assert_eq!(lines[1]["line"], 3);
    // Δ = 2, β = 0.5: softplus(−1)
    assert!((lines[0]["loss"].as_f64().unwrap() - 0.313_261_687_518_222_86).abs() < 1e-12);
    let second = PairLogps {
        policy_chosen: -3.5,
        policy_rejected: -2.0,
        reference_chosen: -3.0,
        reference_rejected: -2.5,
        chosen_tokens: 2.0,
        rejected_tokens: 3.0,
    };
    let want = daa_core::pair_loss(
        &second,
        &PreferenceLossParams { loss: PreferenceLoss::Dpo { beta: 0.5, label_smoothing: 0.0 }, nll: None },
    );
    assert!((lines[1]["grad_policy_chosen"].as_f64().unwrap() - want.grad_policy_chosen).abs() < 1e-12);
    assert_eq!(lines[1]["accuracy"].as_f64().unwrap(), 0.0);

    // SimPO needs neither reference field.
    let simpo_in = dir.path().join("simpo.jsonl");
    std::fs::write(
        &simpo_in,
        r#"{"policy_chosen": -10, "policy_rejected": -12, "chosen_tokens": 5, "rejected_tokens": 4}"#,
    )
    .unwrap();
    let out_path = dir.path().join("simpo.out.jsonl");
    let out = daa(&[
        "loss",
        "--loss",
        "simpo",
        "--input",
        simpo_in.to_str().unwrap(),
        "--out",
        out_path.to_str().unwrap(),
        "--nll",
        "0.1",
        "--nll-norm",
        "mean",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let line: Value = serde_json::from_str(std::fs::read_to_string(&out_path).unwrap().trim()).unwrap();
    // β 2, γ 0.5: z = 2(−2 + 3) − 0.5 = 1.5 → softplus(−1.5) plus 0.1·10/5
    assert!((line["loss"].as_f64().unwrap() - (0.201_413_277_982_752_4 + 0.2)).abs() < 1e-12);
}

#[test]
fn loss_bad_inputs_exit_2_with_clear_errors() {
    let good = r#"{"policy_chosen": -1, "policy_rejected": -2, "reference_chosen": -1, "reference_rejected": -1}"#;
    let text = |t: String| Contents::Text(t);
    let cases = vec![
        BadInput {
            file: "truncated.jsonl",
            contents: text(format!("{good}\n{good}\n{{\"policy_chosen\": -1,\n")),
            args: &[],
            expect: &["truncated.jsonl:3: malformed JSON"],
        },
        BadInput {
            file: "missing.jsonl",
            contents: text(format!("{good}\n{{\"policy_chosen\": -1, \"policy_rejected\": -2}}\n")),
            args: &[],
            expect: &["missing.jsonl:2: field `reference_chosen` is missing"],
        },
        BadInput {
            file: "no_counts.jsonl",
            contents: text(format!("{good}\n")),
            args: &["--loss", "ipo-mean"],
            expect: &["no_counts.jsonl:1: field `chosen_tokens` is missing"],
        },
        BadInput {
            file: "good.jsonl",
            contents: text(format!("{good}\n")),
            args: &["--loss", "kto"],
            expect: &["invalid value 'kto' for '--loss <LOSS>'", "possible values: dpo, robust-dpo, ipo, ipo-mean"],
        },
        BadInput {
            file: "good.jsonl",
            contents: text(format!("{good}\n")),
            args: &["--beta", "0"],
            expect: &["`beta` = 0"],
        },
        BadInput {
            file: "text.jsonl",
            contents: text(
                r#"{"policy_chosen": "x", "policy_rejected": -2, "reference_chosen": -1, "reference_rejected": -1}"#
                    .into(),
            ),
            args: &[],
            expect: &["text.jsonl:1: `policy_chosen` is \"x\", expected a number"],
        },
        BadInput {
            file: "positive.jsonl",
            contents: text(
                r#"{"policy_chosen": 3, "policy_rejected": -2, "reference_chosen": -1, "reference_rejected": -1}"#
                    .into(),
            ),
            args: &[],
            expect: &["positive.jsonl:1: `policy_chosen` = 3: expected a finite log-probability <= 0"],
        },
    ];
    expect_failures("loss", "--input", cases);
}

#[test]
fn stats_on_the_wgpu_backend_matches_the_cpu_backend() {
    if daa_tests::gpu::wgpu_backend().is_none() {
        return;
    }
    let dir = temp_dir();
    let (n, v) = (5, 1031);
    let x = lm_logits(n, v, 2.0, 9);
    let ids = targets(n, v, 9);
    let file = dir.path().join("wgpu.safetensors");
    write_safetensors(
        &file,
        &[("logits", Dtype::F32, vec![n, v], bytes_of(&x)), ("targets", Dtype::I64, vec![n], bytes_of(&ids))],
    );
    let run = |backend: &str| -> Value {
        let out = daa(&["stats", "--logits", file.to_str().unwrap(), "--backend", backend]);
        assert!(out.status.success(), "{backend}: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let (gpu, cpu) = (run("wgpu"), run("cpu"));
    assert_eq!(gpu["backend"], "wgpu");
    for (g, c) in gpu["per_row"].as_array().unwrap().iter().zip(cpu["per_row"].as_array().unwrap()) {
        for field in ["target_logprob", "entropy", "topk_mass", "topk_entropy", "topk_entropy_raw"] {
            let (g, c) = (g[field].as_f64().unwrap(), c[field].as_f64().unwrap());
            assert!((g - c).abs() <= 2e-4 + 2e-4 * c.abs(), "{field}: wgpu {g} vs cpu {c}");
        }
    }
}

#[test]
fn wgpu_without_an_adapter_says_what_to_install() {
    let dir = temp_dir();
    let file = one_row_logits(dir.path());
    // Restrict wgpu to a graphics API this machine cannot have.
    let out = Command::new(env!("CARGO_BIN_EXE_daa"))
        .args(["stats", "--logits", file.to_str().unwrap(), "--backend", "wgpu", "--k", "1"])
        .env("WGPU_BACKEND", if cfg!(target_os = "macos") { "dx12" } else { "metal" })
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no WebGPU/Vulkan adapter found") && err.contains("use --backend cpu"), "{err}");
}

#[test]
fn cuda_without_a_driver_says_what_to_do() {
    if daa_tests::gpu::cuda_backend().is_some() {
        return; // a GPU machine: the agreement tests cover it
    }
    let dir = temp_dir();
    let file = one_row_logits(dir.path());
    let out = daa(&["stats", "--logits", file.to_str().unwrap(), "--backend", "cuda", "--k", "1"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cuda backend") && (err.contains("use --backend cpu or wgpu") || err.contains("NVRTC")),
        "{err}"
    );
}

/// A tiny checkpoint and a preference file (row 3 has chosen == rejected).
#[cfg(feature = "train")]
fn tiny_model_and_data(dir: &Path) -> (PathBuf, PathBuf) {
    let model = dir.join("model");
    daa_train::tiny_run::write_checkpoint(
        &model,
        &daa_train::tiny_run::llama_config(daa_train::tiny_run::TINY_VOCAB, 32, 1),
        1,
        0.3,
    )
    .unwrap();
    let mut rows = daa_train::tiny_run::arithmetic_rows(6, 1);
    rows[2]["rejected"] = rows[2]["chosen"].clone();
    let data = dir.join("prefs.jsonl");
    std::fs::write(&data, rows.iter().map(|r| format!("{r}\n")).collect::<String>()).unwrap();
    (model, data)
}

#[test]
#[cfg(feature = "train")]
fn logps_writes_reference_scores_and_names_bad_rows_under_strict() {
    let dir = temp_dir();
    let (model, data) = tiny_model_and_data(dir.path());
    let out = dir.path().join("ref.safetensors");
    let args =
        ["logps", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap()];
    let run = daa(&args);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(stderr(&run).contains("skipped 1 of 6 rows"), "{}", stderr(&run));
    let scores = daa_train::reference_cache::read_scores(&out).unwrap();
    let mut rows: Vec<usize> = scores.keys().copied().collect();
    rows.sort();
    assert_eq!(rows, [1, 2, 4, 5, 6]);
    assert!(scores.values().all(|s| s.chosen < 0.0 && s.rejected < 0.0 && s.chosen_tokens > 0));

    let mut strict = args.to_vec();
    strict.push("--strict");
    expect_failure(&strict, &out, &["prefs.jsonl: row 3: `chosen` and `rejected` are identical"]);
}

#[test]
#[cfg(feature = "train")]
fn train_rejects_bad_configurations_naming_the_field() {
    let dir = temp_dir();
    let config = dir.path().join("bad.toml");
    let marker = dir.path().join("untouched");
    std::fs::write(&config, "[model]\npath = \"m\"\n[data]\npath = \"d.jsonl\"\n[loss]\nname = \"dpo\"\nbeta = 0.1\n[train]\noutput_dir = \"o\"\nlrr = 1e-6\n").unwrap();
    expect_failure(&["train", "--config", config.to_str().unwrap()], &marker, &["bad.toml", "unknown field `lrr`"]);
    expect_failure(&["train", "--set", "train.lr=-1"], &marker, &["`train.lr` must be a positive number"]);
    expect_failure(
        &["train", "--set", "loss.name=dpx"],
        &marker,
        &["`loss`", "`name` = `dpx` is not a loss", "ipo-mean"],
    );
    // A hyper-parameter of another loss is named, with the ones the loss takes.
    expect_failure(
        &["train", "--set", "loss.name=ipo", "--set", "loss.beta=0.1"],
        &marker,
        &["`loss`", "unknown field `beta`, expected `tau`", "(the parameters of `ipo`)"],
    );
    expect_failure(
        &["train", "--set", "train.batch_size=6", "--set", "train.micro_batch_size=4"],
        &marker,
        &["`train.batch_size` (6) must be a positive multiple of `train.micro_batch_size` (4)"],
    );
    expect_failure(
        &["train", "--set", "model.backend=tpu"],
        &marker,
        &["`model.backend`", "unknown variant `tpu`", "`cpu`, `wgpu`, `cuda`"],
    );
    expect_failure(&["train", "--set", "loss.reference=disk"], &marker, &["`loss`", "unknown variant `disk`"]);
    let (model, _) = tiny_model_and_data(dir.path());
    let out = dir.path().join("run");
    let missing = dir.path().join("missing.jsonl");
    expect_failure(
        &[
            "train",
            "--model",
            model.to_str().unwrap(),
            "--data",
            missing.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &marker,
        &["`data.path` = `", "missing.jsonl`: no such file or folder"],
    );
    assert!(!out.exists(), "a configuration error is found before anything is made");
}

#[test]
#[cfg(all(feature = "train", feature = "cuda"))]
fn train_on_cuda_without_a_driver_says_what_to_do() {
    let compiled = daa_train::ComputeBackend::Cuda.is_compiled();
    if compiled && daa_core::cuda::driver_present() {
        return; // a GPU machine: the backend agreement test covers it
    }
    let dir = temp_dir();
    let out = dir.path().join("run");
    let run = daa(&["train", "--backend", "cuda", "--out", out.to_str().unwrap()]);
    let err = stderr(&run);
    assert_eq!(run.status.code(), Some(2), "{err}");
    if compiled {
        assert!(
            err.contains("backend cuda: CUDA driver not found") && err.contains("model.backend = \"cpu\""),
            "{err}"
        );
    } else {
        assert!(err.contains("backend cuda: not compiled into this build") && err.contains("train-cuda"), "{err}");
    }
}

/// The default run (the testbed) shrunk to seconds: `--set` values.
#[cfg(feature = "train")]
const SMALL_TESTBED: [&str; 8] = [
    "testbed.sft_prompts=64",
    "testbed.sft_steps=4",
    "testbed.sft_batch=8",
    "testbed.pairs=40",
    "testbed.eval_pairs=8",
    "testbed.hidden_size=32",
    "train.batch_size=8",
    "train.micro_batch_size=8",
];

#[test]
#[cfg(feature = "train")]
fn train_draws_the_evaluation_chart_and_prints_the_summary() {
    // The default run (the testbed), shrunk: SFT reference, pairs, DPO with sample evaluation.
    let dir = temp_dir();
    let out = dir.path().join("run");
    let cache = format!("train.cache_dir={:?}", dir.path().join("cache").display().to_string());
    let mut args = vec!["train", "--max-steps", "2", "--out", out.to_str().unwrap(), "--set", &cache];
    for set in SMALL_TESTBED.iter().chain(&["monitor.eval_every=1"]) {
        args.extend(["--set", *set]);
    }
    let run = daa(&args);
    let err = stderr(&run);
    assert!(run.status.success(), "{err}");
    for needle in [
        "testbed: fine-tuning the reference policy",
        "step     0  eval loss",
        "step     2  eval loss",
        "win prob",
        "done: 2 steps",
        "top-k entropy",
        "top-k mass",
        "held-out",
        "samples (held-out prompts)",
        "KL(π‖π_ref) per sample",
        " ± ",
        "win probability peaked at step",
        "samples at step 0 (4 of 8; all in",
        "samples at step 2 (4 of 8;",
        "log-ratio",
    ] {
        assert!(err.contains(needle), "expected {needle:?} in {err}");
    }
    let svg = std::fs::read_to_string(out.join("metrics.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("top-k entropy") && svg.contains("<polyline"), "{svg}");
    assert!(svg.contains("win probability") && svg.contains("EAD"), "sampled figures are charted");
    let summary: Value = serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["steps"], 2);
    assert_eq!(summary["backend"], "cpu");
    assert!(summary["last_eval"]["eval/topk_mass"].as_f64().is_some_and(|m| (0.0..=1.0).contains(&m)), "{summary}");
}

/// `daa generate --model MODEL --prompts PROMPTS --out OUT` and `extra`.
fn generate(model: &Path, prompts: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["generate", "--model", model.to_str().unwrap()];
    args.extend(["--prompts", prompts.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    args.extend_from_slice(extra);
    daa(&args)
}

fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
#[cfg(feature = "train")]
fn generate_continues_chat_and_text_prompts_reproducibly() {
    let dir = temp_dir();
    let (model, _) = tiny_model_and_data(dir.path());
    let prompts = dir.path().join("prompts.jsonl");
    let rows = [
        serde_json::json!({"id": "a", "prompt": [{"role": "user", "content": "What is 2 plus 3?"}]}),
        serde_json::json!({"id": "b", "prompt": "Once upon"}),
        serde_json::json!({"id": "c", "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}),
    ];
    std::fs::write(&prompts, rows.iter().map(|r| format!("{r}\n")).collect::<String>()).unwrap();
    let run = |out: &Path, extra: &[&str]| {
        let result = generate(&model, &prompts, out, &[&["--max-new-tokens", "6"], extra].concat());
        assert!(result.status.success(), "{}", stderr(&result));
        read_jsonl(out)
    };
    let greedy = run(&dir.path().join("greedy.jsonl"), &["--temperature", "0", "--batch-size", "2"]);
    assert_eq!(greedy.len(), 3);
    for (row, input) in greedy.iter().zip(&rows) {
        assert_eq!(row["id"], input["id"]);
        assert_eq!(row["prompt"], input["prompt"]);
        let ids = row["completion_ids"].as_array().unwrap();
        assert!(!ids.is_empty() && ids.len() <= 6, "{row}");
        let logprob = row["logprob"].as_f64().unwrap();
        assert!(logprob.is_finite() && logprob < 0.0, "{row}");
        let finish = row["finish_reason"].as_str().unwrap();
        assert!(finish == "length" && ids.len() == 6 || finish == "stop", "{row}");
        assert!(row["completion"].is_string() && row.get("sample").is_none());
    }
    // Greedy decoding does not depend on the batch.
    let alone = run(&dir.path().join("alone.jsonl"), &["--temperature", "0", "--batch-size", "1"]);
    for (a, b) in alone.iter().zip(&greedy) {
        assert_eq!(a["completion_ids"], b["completion_ids"]);
    }
    // Several samples per prompt, in input order, reproducible from the seed.
    let sampled_args = ["--temperature", "1", "--top-p", "1", "--samples-per-prompt", "2", "--seed", "5"];
    let sampled = run(&dir.path().join("sampled.jsonl"), &sampled_args);
    assert_eq!(sampled.len(), 6);
    let order: Vec<(String, u64)> =
        sampled.iter().map(|r| (r["id"].as_str().unwrap().to_string(), r["sample"].as_u64().unwrap())).collect();
    assert_eq!(order[0], ("a".to_string(), 0));
    assert_eq!(order[5], ("c".to_string(), 1));
    // The same tokens; log-probabilities equal up to rounding (burn's CPU
    // backend sums in a thread-dependent order: seen 7e-6 apart in CI).
    let again = run(&dir.path().join("again.jsonl"), &sampled_args);
    assert_eq!(sampled.len(), again.len());
    for (a, b) in sampled.iter().zip(&again) {
        assert_eq!(a["completion_ids"], b["completion_ids"]);
        assert_eq!(
            (&a["id"], &a["sample"], &a["completion"], &a["finish_reason"]),
            (&b["id"], &b["sample"], &b["completion"], &b["finish_reason"])
        );
        let (x, y) = (a["logprob"].as_f64().unwrap(), b["logprob"].as_f64().unwrap());
        assert!((x - y).abs() <= 1e-4 * x.abs().max(1.0), "{x} vs {y}");
    }
    let texts: std::collections::HashSet<String> = sampled.iter().map(|r| r["completion_ids"].to_string()).collect();
    assert!(texts.len() > 3, "six samples at temperature 1 over a 261-token vocabulary: {texts:?}");

    // A row without a prompt is named; nothing is written.
    std::fs::write(&prompts, format!("{}\n{{\"id\": \"x\"}}\n", rows[0])).unwrap();
    let out = dir.path().join("bad.jsonl");
    let args = [
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompts",
        prompts.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    expect_failure(&args, &out, &["prompts.jsonl: row 2: missing field `prompt`"]);
    let args = [&args[..], &["--top-p", "0"]].concat();
    expect_failure(&args, &out, &["top_p"]);
}

#[test]
#[cfg(feature = "train")]
fn judge_scores_completions_and_pairs_with_the_gold_reward_and_a_reward_model() {
    let dir = temp_dir();
    let data = dir.path().join("rows.jsonl");
    let rows = [
        serde_json::json!({"id": 1, "prompt": "need cfk avoid bm length 8", "completion": "acdfghik", "finish_reason": "stop"}),
        serde_json::json!({"id": 2, "prompt": [{"role": "user", "content": "need cfk avoid bm length 8"}],
                           "completion": "acdfghik", "finish_reason": "length"}),
        daa_train::testbed::ultrafeedback_row("p-3", "need cfk avoid bm length 8", ("cfk", 0.0), ("bbbb", 0.0)),
    ];
    std::fs::write(&data, rows.iter().map(|r| format!("{r}\n")).collect::<String>()).unwrap();
    let out = dir.path().join("judged.jsonl");
    let args = ["judge", "--judge", "gold", "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap()];
    let run = daa(&args);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(stderr(&run).contains("chosen above rejected in 1 of 1 pairs"), "{}", stderr(&run));
    let judged = read_jsonl(&out);
    assert_eq!(judged[0]["reward"], 1.0);
    assert_eq!(judged[1]["reward"], 0.5, "a completion cut at the length limit loses ½");
    // "cfk": cover 1, length |3 − 8|/8; "bbbb": cover 0, bad 1, repeat 3/4, length 1/2.
    assert!((judged[2]["reward_chosen"].as_f64().unwrap() - (1.0 - 5.0 / 8.0)).abs() < 1e-12);
    assert!((judged[2]["reward_rejected"].as_f64().unwrap() - (-1.0 - 0.75 - 0.5)).abs() < 1e-12);
    assert_eq!(judged[2]["prompt_id"], "p-3");

    // A reward model checkpoint: finite rewards, the same on every run.
    let rm = dir.path().join("rm");
    let mut config = daa_train::tiny_run::llama_config(daa_train::tiny_run::TINY_VOCAB, 32, 1);
    config["architectures"] = serde_json::json!(["LlamaForSequenceClassification"]);
    config["id2label"] = serde_json::json!({"0": "LABEL_0"});
    daa_train::tiny_run::write_checkpoint(&rm, &config, 3, 0.3).unwrap();
    let rm_out = dir.path().join("rm.jsonl");
    let rm_args = [
        "judge",
        "--judge",
        rm.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        rm_out.to_str().unwrap(),
        "--batch-size",
        "2",
    ];
    let run = daa(&rm_args);
    assert!(run.status.success(), "{}", stderr(&run));
    let judged = read_jsonl(&rm_out);
    for field in ["reward", "reward_chosen", "reward_rejected"] {
        let row = judged.iter().find(|r| r.get(field).is_some()).unwrap();
        assert!(row[field].as_f64().unwrap().is_finite(), "{row}");
    }
    // Rows 1 and 2 differ only in whether the completion ended: the reward model does not care
    // (up to the CPU matrix product's rounding, which differs between rows of one batch).
    let (a, b) = (judged[0]["reward"].as_f64().unwrap(), judged[1]["reward"].as_f64().unwrap());
    assert!((a - b).abs() < 1e-3 * (1.0 + a.abs()), "{a} vs {b}");

    // Bad rows and judges are named; nothing is written.
    std::fs::write(&data, "{\"id\": 1, \"text\": \"x\"}\n").unwrap();
    expect_failure(&args, &out, &["rows.jsonl: row 1: expected `prompt` and `completion`"]);
    std::fs::write(&data, "{\"prompt\": \"hello\", \"completion\": \"x\"}\n").unwrap();
    expect_failure(&args, &out, &["rows.jsonl: rows 1–1", "not a testbed prompt"]);
    let model = dir.path().join("lm");
    daa_train::tiny_run::write_checkpoint(
        &model,
        &daa_train::tiny_run::llama_config(daa_train::tiny_run::TINY_VOCAB, 32, 1),
        1,
        0.3,
    )
    .unwrap();
    let lm_args =
        ["judge", "--judge", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap()];
    expect_failure(&lm_args, &out, &["is a language model"]);
    let missing = ["judge", "--judge", "nowhere", "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap()];
    expect_failure(&missing, &out, &["--judge nowhere"]);
}

#[test]
#[cfg(feature = "train")]
fn plan_prints_the_table_and_json_and_names_bad_sizes() {
    let config_path = manifest_dir().join("../daa-train/tests/data/llama-2-7b.config.json");
    let config = config_path.to_str().expect("a UTF-8 path");
    let out = daa(&["plan", "--model", config, "--gpu-memory", "141GiB", "--seq", "1024"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("LlamaForCausalLM") && table.contains("optimizer state") && table.contains("fits:"),
        "{table}"
    );
    let out = daa(&["plan", "--model", config, "--gpus", "1", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["parameters"], 6_738_415_616u64);
    assert_eq!(plan["fits"], false);
    // Two nodes of 8, HSDP: the gradient shards cross the network.
    let args = ["--gpus-per-node", "8", "--nodes", "2", "--sharding", "gradients", "--shard-within-node", "--json"];
    let out = daa(&[&["plan", "--model", config][..], &args[..]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let lines = plan["communication"]["lines"].as_array().unwrap();
    assert!(lines.iter().any(|l| l["link"] == "network"), "{plan}");
    assert_eq!(plan["setup"]["shard_group"], 8);
    let out = daa(&["plan", "--model", config, "--gpus", "3", "--nodes", "2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("is not --gpus-per-node"), "{}", stderr(&out));
    let out = daa(&["plan", "--model", config, "--gpu-memory", "80 gigs"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--gpu-memory") && stderr(&out).contains("unknown unit"), "{}", stderr(&out));
    let out = daa(&["plan", "--model", "/nonexistent/config.json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("/nonexistent/config.json"), "{}", stderr(&out));
}

#[test]
fn bench_times_every_backend_and_vocabulary_and_writes_the_table_and_chart() {
    let dir = temp_dir();
    let (md, svg) = (dir.path().join("bench.md"), dir.path().join("bench.svg"));
    let args = [
        "bench",
        "--backends",
        "cpu,spec",
        "--threads",
        "1,2",
        "--vocab",
        "67,300",
        "--k",
        "3,100",
        "--rows",
        "9",
        "--repeats",
        "1",
        "--out",
        md.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ];
    let out = daa(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8(out.stdout).unwrap();
    assert_eq!(std::fs::read_to_string(&md).unwrap().trim(), table.trim());
    assert!(table.contains("device copy, read + write): cpu, 1 thread: "), "{table}");
    // cpu × 2 thread counts × (V 67: k 3; V 300: k 3, 100) + spec × the same 3.
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("| cpu") || l.starts_with("| spec")).collect();
    assert_eq!(rows.len(), 9, "{table}");
    assert!(rows.iter().any(|r| r.starts_with("| spec (f64) | 9 | 300 | 100 |") && r.ends_with("| — |")), "{table}");
    assert!(rows.iter().all(|r| !r.contains("| 67 | 100 |")), "k above V is skipped: {table}");
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.starts_with("<svg") && chart.contains("read, cpu, 2 threads"), "{chart}");
    let marker = dir.path().join("untouched");
    expect_failure(&["bench", "--rows", "0"], &marker, &["--rows, --repeats, --vocab and --k must be at least 1"]);
    expect_failure(&["bench", "--backends", "tpu"], &marker, &["invalid value 'tpu' for '--backends"]);
}

/// This package's folder: the `CARGO_MANIFEST_DIR` cargo sets when it runs
/// the test (the path compiled in may be another clone's when clones share a
/// target folder), else the one compiled in.
fn manifest_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
}

// The test build's daa-train has MPI (a dev-dependency's feature).
#[cfg(feature = "train")]
mod distributed;
#[cfg(feature = "train")]
mod faults;
#[cfg(feature = "train")]
mod launcher;
#[cfg(feature = "train")]
mod lora;
#[cfg(all(feature = "train", unix))]
mod own_data;
mod tensorboard;
