#!/usr/bin/env bash
# The prepared GPU check, in two halves because the GPU machine has no network
# (so no crates) and maybe no cargo:
#
#   scripts/gpu-check.sh build   # here: build the CUDA test and benchmark binaries into .gpu-check/
#   scripts/gpu-check.sh run     # on the GPU machine: agreement tests with DAA_REQUIRE_GPU=cuda,
#                                # then token_stats GB/s next to the device's copy bandwidth,
#                                # then PyTorch's eager log_softmax + gather + topk on the same shapes.
#
# With the device tool: build here, then run with carry [".gpu-check"].
set -euo pipefail
cd "$(dirname "$0")/.."
out=.gpu-check

case "${1:-}" in
build)
    rm -rf "$out" && mkdir -p "$out"
    grep -qx "/$out/" .git/info/exclude 2>/dev/null || echo "/$out/" >> .git/info/exclude
    cargo build --release -p daa-benches --example cuda_check
    # Test binaries: ask cargo where it put them.
    cargo test --release -p daa-tests --no-run --message-format=json 2>/dev/null \
        | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in ("backend_agreement", "cuda_kernels", "wgpu_backend"):
        print(m["target"]["name"], m["executable"])' \
        | while read -r name path; do cp "$path" "$out/$name"; done
    target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
    cp "$target_dir/release/examples/cuda_check" "$out/"
    strip "$out"/* || true
    cp scripts/torch_topk_baseline.py "$out/"
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
    # (The source-file checks of cuda_kernels need the repository layout; CI runs them.)
    (cd "$out" && ./cuda_kernels compiles_to_ptx a_missing_driver && ./backend_agreement cuda) || status=1
    "$out/cuda_check" || status=1
    python3 "$out/torch_topk_baseline.py" || status=1
    exit $status
    ;;
*)
    echo "usage: scripts/gpu-check.sh build|run" >&2
    exit 2
    ;;
esac
