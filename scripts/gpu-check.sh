#!/usr/bin/env bash
# The prepared GPU check, in two halves because the GPU machine has no network
# (so no crates) and maybe no cargo:
#
#   scripts/gpu-check.sh build   # here: build the CUDA binaries into .gpu-check/ (compressed: the
#                                # device tool carries 64 MiB at most; the size is printed)
#   scripts/gpu-check.sh run     # on the GPU machine: the phases below, each under its own time
#                                # limit, printing as it goes; every result also under $OUT
#                                # (default .gpu-check/out), the kernel caches included
#   scripts/gpu-check.sh run steps   # phases 5 to 7 only
#   scripts/gpu-check.sh run fused   # the fused operations: phase 5, the same step with
#                                    # DAA_FUSED_OPS=0 (unfused compositions), phase 6
#
# Phases of `run` and their limits (seconds; 525 in all, under the 9 minutes
# a 10-minute device command leaves after starting up):
#   1 environment   15  GPU, driver, which NVRTC/NCCL/headers load and from where
#   2 kernels       60  daa-core's CUDA agreement tests vs the f64 specification
#                       (every dtype, the vec4/vec8 paths, bf16 backward), DAA_REQUIRE_GPU=cuda
#   3 train-step    90  burn-CUDA Trainer::step vs the CPU step (f32 within 1e-3; bf16 within
#                       5e-2; full and LoRA), the fused operations' CubeCL kernels (norms,
#                       RoPE, SwiGLU, AdamW) against their tensor compositions (fused.rs,
#                       `on_cuda`), and a one-rank NCCL communicator (libnccl.so.2 of
#                       the wheel or the toolkit: its collectives against the host, a step through
#                       it against the step alone): crates/daa-train/tests/integration/backends.rs
#   4 token-stats   60  token_stats GB/s vs the device's measured copy bandwidth, then
#                       PyTorch eager on the same tensors
#   5 step-1b      120  one bf16 DPO step, Llama-3.2-1B shape (init, warm-up, step, tok/s, MFU,
#                       nvidia-smi peak vs daa plan), with daa_train::fused's attention, norms,
#                       RoPE and SwiGLU (the default)
#   6 torch-1b      60  PyTorch + transformers, the same loss on the same inputs
#   7 step-7b      120  Llama-2-7B shape (activation checkpointing), when >= 80 GB and the time
#                       left covers it
#
# Kernels are cached across runs: burn's compiled kernels and autotune results
# (daa_train::backend::configure_gpu_caches, DAA_GPU_CACHE) and the driver's
# JIT cache (CUDA_CACHE_PATH) live in .gpu-check/gpu-cache and are copied to
# $OUT/gpu-cache at the end; put that folder back at .gpu-check/gpu-cache and
# carry it with the binaries, and a rerun compiles nothing it compiled before.
# Autotuning is `minimal` for a first contact (DAA_AUTOTUNE_LEVEL overrides).
#
# With the device tool: build here, then run with carry [".gpu-check"].
set -euo pipefail
# This script's absolute path: phases run it again after the `cd`.
self=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$(dirname "$self")/.."
dir=.gpu-check
bin=$dir/bin
out=${OUT:-$dir/out}

# Peak of `nvidia-smi`'s used memory (MiB) while "$@" runs; the command's
# stdout goes to stdout, the peak to stderr as `# peak GPU memory: N MiB`.
with_gpu_peak() {
    local log
    log=$(mktemp)
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$log" 2>/dev/null &
    local sampler=$!
    local rc=0
    "$@" || rc=$?
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    echo "# peak GPU memory (nvidia-smi, whole device): $(sort -n "$log" | tail -1) MiB" >&2
    rm -f "$log"
    return $rc
}

# JSON lines on stdin -> one readable line each (MFU against the dense bf16
# peak of the GPU: H100/H200 SXM 989.4 TFLOP/s), the JSON kept after it.
report() {
    python3 -c 'import json,sys
peak = float(sys.argv[1])
for line in sys.stdin:
    if not line.startswith("{"):
        print(line, end="")
        continue
    m = json.loads(line)
    flops, seconds = m.get("model_flops", 0), m["seconds"]
    mfu = "{:.1%}".format(flops / seconds / peak) if peak and flops else "n/a"
    print("{} {} {} {}: {:.3f} s/step, {:.0f} tok/s, MFU {}, init {:.1f} s, warm-up {:.1f} s, host RSS {:.0f} MiB, "
          "plan {:.0f} MiB, loss {:.5f}".format(m["engine"], m["shape"], m["mode"], m.get("precision", "?"), seconds,
          m["tokens_per_s"], mfu, m.get("init_seconds", 0), m.get("warmup_seconds", 0), m["peak_rss_mib"],
          m.get("plan_mib", 0), m["loss"]))
    print(json.dumps(m))' "$1"
}

started=$(date +%s)
failed=()
# Runs phase $1 under a limit of $2 seconds, its output shown and kept in $out/$1.log.
phase() {
    local name=$1 limit=$2 rc=0
    shift 2
    echo "== phase $name (limit ${limit} s, $(( $(date +%s) - started )) s into the check)"
    local t0
    t0=$(date +%s)
    # The phase's function runs in a fresh copy of this script, so that
    # `timeout` can stop it and everything it started.
    timeout --kill-after=10 "$limit" "$BASH" "$self" _function "$@" 2>&1 | tee "$out/$name.log" || rc=${PIPESTATUS[0]}
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        echo "== phase $name: stopped at its limit of $limit s"
        failed+=("$name (time limit)")
    elif [ "$rc" != 0 ]; then
        echo "== phase $name: failed (exit $rc) after $(( $(date +%s) - t0 )) s"
        failed+=("$name")
    else
        echo "== phase $name: done in $(( $(date +%s) - t0 )) s"
    fi
}

environment() {
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || true
    nvcc --version 2>/dev/null | tail -2 || echo "nvcc: not installed"
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>/dev/null ||
        echo "torch: not installed"
    "$bin/cuda_check" --environment
}

kernels() {
    # The kernels compiled to PTX with the NVRTC found, the missing-driver
    # message, and every agreement case's `cuda` test (the source-file checks
    # need the repository layout; CI runs them).
    "$bin/core_checks" compiles_to_ptx a_missing_driver ::cuda
}

train_step() {
    # The trainer's step, then the fused operations' CubeCL kernels against
    # their tensor compositions (values and gradients, f32 and bf16).
    "$bin/integration" backends on_cuda --nocapture
}

token_stats() {
    "$bin/cuda_check"
    python3 "$bin/torch_topk_baseline.py" || echo "PyTorch baseline: failed or torch missing"
}

peak_flops() {
    case "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" in
    *H100* | *H200*) echo 989.4e12 ;;
    *A100*) echo 312e12 ;;
    *) echo 0 ;;
    esac
}

step_1b() {
    with_gpu_peak "$bin/trainer_step" --child --backend cuda --precision bf16 --shape 1b --mode step \
        --threads "$(nproc)" --repeats 3 | report "$(peak_flops)"
}

step_1b_unfused() {
    DAA_FUSED_OPS=0 step_1b
}

torch_1b() {
    local inputs
    inputs=$(mktemp -d)/baseline-1b
    "$bin/trainer_step" --write-inputs 1b "$inputs"
    python3 -c 'import transformers' 2>/dev/null || { echo "transformers is not installed: no PyTorch baseline"; return 1; }
    with_gpu_peak python3 "$bin/torch_dpo_baseline.py" --inputs "$inputs" --device cuda --dtype bfloat16 \
        --no-save --repeats 3 | report "$(peak_flops)"
}

step_7b() {
    with_gpu_peak "$bin/trainer_step" --child --backend cuda --precision bf16 --checkpointing --shape 7b \
        --mode step --threads "$(nproc)" --repeats 2 | report "$(peak_flops)"
}

case "${1:-}" in
build)
    rm -rf "$dir/bin" "$dir/bin.tar.xz" && mkdir -p "$dir/bin"
    exclude=$(git rev-parse --git-path info/exclude 2>/dev/null || echo .git/info/exclude)
    mkdir -p "$(dirname "$exclude")"
    grep -qx "/$dir/" "$exclude" 2>/dev/null || echo "/$dir/" >> "$exclude"
    # Test binaries: ask cargo where it put them.
    pick() { # target name -> copies the executable cargo reports
        python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$1" | while read -r path; do cp "$path" "$dir/bin/$1"; done
    }
    cargo test --release -p daa-tests --test core_checks --no-run --message-format=json | pick core_checks
    cargo build --release -p daa-benches --example cuda_check
    target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
    cp "$target_dir/release/examples/cuda_check" "$dir/bin/"
    # burn's CUDA backend: the trainer benchmark and the trainer's backend agreement test.
    cargo bench -p daa-benches --features cuda --bench trainer_step --no-run --message-format=json | pick trainer_step
    cargo test --release -p daa-train --features cuda --test integration --no-run --message-format=json | pick integration
    for b in core_checks cuda_check trainer_step integration; do
        [ -x "$dir/bin/$b" ] || { echo "gpu-check build: $b was not built" >&2; exit 1; }
    done
    strip "$dir"/bin/*
    cp scripts/torch_topk_baseline.py scripts/torch_dpo_baseline.py "$dir/bin/"
    du -sh "$dir/bin"
    # The device tool carries 64 MiB: the binaries go compressed.
    tar -C "$dir" -cf - bin | xz -T0 -6 > "$dir/bin.tar.xz"
    rm -rf "$dir/bin"
    size=$(du -sm "$dir" | cut -f1)
    echo "carried folder $dir: ${size} MiB (limit 64)"
    [ "$size" -lt 64 ] || { echo "gpu-check build: $dir is over 64 MiB" >&2; exit 1; }
    ;;
run)
    # Fail fast, before anything else, where there is no GPU to check.
    if ! command -v nvidia-smi > /dev/null || ! nvidia-smi -L > /dev/null 2>&1; then
        echo "gpu-check run: no NVIDIA GPU here (nvidia-smi is missing or lists no GPU); run it on the GPU machine" >&2
        exit 3
    fi
    if [ ! -d "$bin" ]; then
        [ -f "$dir/bin.tar.xz" ] || { echo "gpu-check run: no $dir/bin.tar.xz: run 'scripts/gpu-check.sh build' first" >&2; exit 2; }
        xz -dc "$dir/bin.tar.xz" | tar -C "$dir" -xf -
    fi
    mkdir -p "$out"
    # CUDA 13 machines: the NVRTC/NCCL of the wheels or toolkit, linked under
    # the names cudarc opens (daa's binaries also do this themselves).
    prepend() { export LD_LIBRARY_PATH="$1${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; }
    for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
        if [ -d "$d" ]; then prepend "$d"; fi
    done
    # NVRTC no newer than the driver (NVRTC 13's PTX does not load on a CUDA 12 driver).
    driver_major=$(nvidia-smi | grep -o 'CUDA Version: [0-9]*' | grep -o '[0-9]*$' || echo 99)
    links=$(mktemp -d)
    while IFS= read -r lib; do
        base=$(basename "$lib")
        case "$base" in libnvrtc.so.*) [ "${base#libnvrtc.so.}" -le "$driver_major" ] || continue ;; esac
        [ -e "$links/${base%%.so*}.so" ] || ln -s "$lib" "$links/${base%%.so*}.so"
        prepend "$(dirname "$lib")"
    done < <(python3 -c 'import glob,site
dirs = site.getsitepackages() + [site.getusersitepackages()]
for d in dirs:
    for pattern in ("nvidia/*/lib/libnvrtc.so.1[0-9]", "nvidia/*/lib/libnccl.so.2"):
        for f in sorted(glob.glob(d + "/" + pattern), reverse=True):
            print(f)' 2>/dev/null)
    prepend "$links"
    [ -n "${CUDA_PATH:-}" ] || { [ -d /usr/local/cuda/include ] && export CUDA_PATH=/usr/local/cuda; } || true
    export DAA_REQUIRE_GPU=cuda DAA_REQUIRE_NVRTC=1
    export DAA_GPU_CACHE="$PWD/$dir/gpu-cache" CUDA_CACHE_PATH="$PWD/$dir/gpu-cache/nv" CUDA_CACHE_MAXSIZE=1073741824
    export DAA_AUTOTUNE_LEVEL="${DAA_AUTOTUNE_LEVEL:-minimal}"
    mkdir -p "$DAA_GPU_CACHE"
    if [ "${2:-}" = fused ]; then
        phase environment 15 environment
        phase step-1b 120 step_1b
        phase step-1b-unfused 120 step_1b_unfused
        phase torch-1b 60 torch_1b
        rm -rf "$out/gpu-cache" && cp -r "$DAA_GPU_CACHE" "$out/gpu-cache"
        echo "== gpu check (fused) finished in $(( $(date +%s) - started )) s"
        [ ${#failed[@]} -eq 0 ] || { echo "== failed: ${failed[*]}"; exit 1; }
        exit 0
    fi
    if [ "${2:-}" != steps ]; then
        phase environment 15 environment
        phase kernels 60 kernels
        phase train-step 90 train_step
        phase token-stats 60 token_stats
    fi
    phase step-1b 120 step_1b
    phase torch-1b 60 torch_1b
    total=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
    left=$(( 540 - ($(date +%s) - started) ))
    if [ "${total:-0}" -lt 80000 ]; then
        echo "== phase step-7b: skipped (needs a GPU with >= 80 GB; this one: ${total:-?} MiB)"
    elif [ "$left" -lt 120 ]; then
        echo "== phase step-7b: skipped ($left s left of the 540 s budget, it needs 120)"
    else
        phase step-7b 120 step_7b
    fi
    rm -rf "$out/gpu-cache" && cp -r "$DAA_GPU_CACHE" "$out/gpu-cache"
    echo "== gpu check finished in $(( $(date +%s) - started )) s; caches: $(du -sh "$out/gpu-cache" | cut -f1) in $out/gpu-cache"
    if [ ${#failed[@]} -gt 0 ]; then
        echo "== failed: ${failed[*]}"
        exit 1
    fi
    ;;
_function) # a phase's body (see `phase`)
    shift
    "$@"
    ;;
*)
    echo "usage: scripts/gpu-check.sh build|run [steps|fused]" >&2
    exit 2
    ;;
esac
