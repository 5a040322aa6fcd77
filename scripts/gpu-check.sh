#!/usr/bin/env bash
# The prepared GPU check, in two halves because the GPU machine has no network
# (so no crates) and maybe no cargo:
#
#   scripts/gpu-check.sh build   # here: build the CUDA test and benchmark binaries into .gpu-check/
#   scripts/gpu-check.sh run     # on the GPU machine: agreement tests with DAA_REQUIRE_GPU=cuda,
#                                # then token_stats GB/s next to the device's copy bandwidth,
#                                # then PyTorch's eager log_softmax + gather + topk on the same shapes,
#                                # then one bf16 DPO step of a Llama-3.2-1B-shaped model (tokens/s,
#                                # MFU, peak GPU memory vs daa plan) beside PyTorch + transformers
#                                # (autocast bf16) on the same GPU, and, on a GPU with >= 80 GB,
#                                # one step of a Llama-2-7B-shaped model (bf16, f32 state,
#                                # activation checkpointing) with its peak memory vs daa plan.
#   scripts/gpu-check.sh run steps   # the training steps only
#
# With the device tool: build here, then run with carry [".gpu-check"].
set -euo pipefail
cd "$(dirname "$0")/.."
out=.gpu-check

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

# One bf16 DPO step, daa and PyTorch, and the 7B fits-check; MFU against the
# GPU's dense bf16 peak (H100/H200 SXM: 989.4 TFLOP/s).
training_steps() {
    local name peak rc=0 inputs
    name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
    case "$name" in
    *H100* | *H200*) peak=989.4e12 ;;
    *A100*) peak=312e12 ;;
    *) peak=0 ;;
    esac
    report() { # JSON lines on stdin -> one readable line each
        python3 -c 'import json,sys
peak = float(sys.argv[1])
for line in sys.stdin:
    if not line.startswith("{"):
        continue
    m = json.loads(line)
    flops, seconds = m.get("model_flops", 0), m["seconds"]
    mfu = "{:.1%}".format(flops / seconds / peak) if peak and flops else "n/a"
    words = (m["engine"], m["shape"], m["mode"], m.get("precision", "?"), seconds, m["tokens_per_s"], mfu,
             m["peak_rss_mib"], m.get("plan_mib", 0), m["loss"])
    print("{} {} {} {}: {:.3f} s, {:.0f} tok/s, MFU {}, peak {:.0f} MiB, plan {:.0f} MiB, loss {:.5f}".format(*words))
    print(json.dumps(m))' "$peak"
    }
    local threads
    threads=$(nproc)
    echo "== daa: one bf16 DPO step, Llama-3.2-1B shape (4 pairs x 512 tokens)"
    with_gpu_peak "$out/trainer_step" --child --backend cuda --precision bf16 --shape 1b --mode step \
        --threads "$threads" --repeats 3 | report || rc=1
    echo "== PyTorch + transformers on the same GPU (autocast bf16, f32 weights and AdamW)"
    inputs=$(mktemp -d)/baseline-1b
    "$out/trainer_step" --write-inputs 1b "$inputs"
    if python3 -c 'import transformers' 2>/dev/null; then
        with_gpu_peak python3 "$out/torch_dpo_baseline.py" --inputs "$inputs" --device cuda --dtype bfloat16 \
            --no-save --repeats 3 | report || rc=1
    else
        echo "transformers is not installed on this machine: no PyTorch baseline"
    fi
    total=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
    if [ "${total:-0}" -ge 80000 ]; then
        echo "== daa: one bf16 DPO step, Llama-2-7B shape (1 pair x 512 tokens, activation checkpointing)"
        with_gpu_peak "$out/trainer_step" --child --backend cuda --precision bf16 --checkpointing --shape 7b \
            --mode step --threads "$threads" --repeats 2 | report || rc=1
    else
        echo "== the 7B step needs a GPU with >= 80 GB (this one: ${total:-?} MiB)"
    fi
    return $rc
}

case "${1:-}" in
build)
    rm -rf "$out" && mkdir -p "$out"
    grep -qx "/$out/" .git/info/exclude 2>/dev/null || echo "/$out/" >> .git/info/exclude
    cargo build --release -p daa-benches --example cuda_check
    # daa-core's test binary: ask cargo where it put it.
    cargo test --release -p daa-tests --no-run --message-format=json 2>/dev/null \
        | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "core_checks":
        print(m["target"]["name"], m["executable"])' \
        | while read -r name path; do cp "$path" "$out/$name"; done
    target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
    cp "$target_dir/release/examples/cuda_check" "$out/"
    # The trainer benchmark on burn's CUDA backend (the training-step checks).
    cargo bench -p daa-benches --features cuda --bench trainer_step --no-run --message-format=json 2>/dev/null \
        | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "trainer_step":
        print(m["executable"])' \
        | while read -r path; do cp "$path" "$out/trainer_step"; done
    strip "$out"/* || true
    cp scripts/torch_topk_baseline.py scripts/torch_dpo_baseline.py "$out/"
    du -sh "$out"
    ;;
run)
    # The toolkit's NVRTC (CUDA 13 ships libnvrtc.so), or a wheel unpacked into .gpu-check/nvrtc.
    for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib "$out/nvrtc/nvidia/cuda_nvrtc/lib"; do
        [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
    done
    export DAA_REQUIRE_GPU=cuda DAA_REQUIRE_NVRTC=1
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    status=0
    if [ "${2:-}" != steps ]; then
        # The kernels compiled to PTX, the missing-driver error, and every
        # agreement case's `cuda` test (the source-file checks of cuda_kernels
        # need the repository layout; CI runs them).
        (cd "$out" && ./core_checks compiles_to_ptx a_missing_driver ::cuda) || status=1
        "$out/cuda_check" || status=1
        python3 "$out/torch_topk_baseline.py" || status=1
    fi
    training_steps || status=1
    exit $status
    ;;
*)
    echo "usage: scripts/gpu-check.sh build|run" >&2
    exit 2
    ;;
esac
