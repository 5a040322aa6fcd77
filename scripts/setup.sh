#!/usr/bin/env bash
# Installs what daa's build and tests need on a fresh Debian machine with a
# Rust toolchain. Idempotent: skips what is already there.
#   scripts/setup.sh          the build, `cargo test --workspace`, `cargo xtask train`
#   scripts/setup.sh --web    also the browser demo and its test (`cargo xtask web --test`):
#                             Debian's chromium, node/npm, the wasm-bindgen CLI of Cargo.lock
set -euo pipefail
web=false
[ "${1:-}" = "--web" ] && web=true

# wgpu's tests run on lavapipe (Mesa's software Vulkan) when no GPU is present.
need_apt=()
packages=(mesa-vulkan-drivers libvulkan1)
# Data parallelism across processes is tested under mpirun (Open MPI), and
# the `mpi` crate's bindings are generated with libclang.
packages+=(openmpi-bin libopenmpi-dev libclang-dev)
# The browser test drives Debian's chromium (never a downloaded browser) from
# node; node and npm count when present from any source (NodeSource's nodejs
# ships npm and conflicts with Debian's npm package).
if $web; then
    packages+=(chromium)
    command -v node >/dev/null 2>&1 || packages+=(nodejs)
    command -v npm >/dev/null 2>&1 || packages+=(npm)
fi
for pkg in "${packages[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ "${#need_apt[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

# The browser build of daa-core (WebGPU).
rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown

# NVRTC for the CUDA kernel compile test (no GPU needed): the PyPI wheel,
# unpacked outside the clone. Use it with
#   export LD_LIBRARY_PATH="$DAA_NVRTC_DIR/nvidia/cuda_nvrtc/lib:$LD_LIBRARY_PATH"
DAA_NVRTC_DIR="${DAA_NVRTC_DIR:-/var/tmp/daa-nvrtc}"
if [ ! -e "$DAA_NVRTC_DIR/nvidia/cuda_nvrtc/lib/libnvrtc.so.12" ]; then
    python3 -m pip install -q --disable-pip-version-check --no-deps --target "$DAA_NVRTC_DIR" "nvidia-cuda-nvrtc-cu12==12.9.86"
fi
# And CUDA 13's (13.0: what driver 580 runs; its wheel ships only
# libnvrtc.so.13, a name cudarc never opens: the test links it, as `daa`
# does on a CUDA 13 machine). The compile test takes both from
#   export DAA_NVRTC_LIBS="$DAA_NVRTC_DIR/nvidia/cuda_nvrtc/lib:$DAA_NVRTC13_DIR/nvidia/cu13/lib"
DAA_NVRTC13_DIR="${DAA_NVRTC13_DIR:-/var/tmp/daa-nvrtc13}"
if [ ! -e "$DAA_NVRTC13_DIR/nvidia/cu13/lib/libnvrtc.so.13" ]; then
    python3 -m pip install -q --disable-pip-version-check --no-deps --target "$DAA_NVRTC13_DIR" "nvidia-cuda-nvrtc==13.0.88"
fi

# TensorBoard's own reader for the event-file test (the Python package,
# unpacked outside the clone; the test finds it through $DAA_PY_DIR).
DAA_PY_DIR="${DAA_PY_DIR:-/var/tmp/daa-py}"
if [ ! -e "$DAA_PY_DIR/tensorboard/__init__.py" ]; then
    python3 -m pip install -q --disable-pip-version-check --target "$DAA_PY_DIR" "tensorboard==2.20.0"
fi

if $web; then
    # The CLI must match the wasm-bindgen crate in Cargo.lock exactly.
    root="$(cd "$(dirname "$0")/.." && pwd)"
    want=$(grep -A1 '^name = "wasm-bindgen"$' "$root/Cargo.lock" | sed -n 's/^version = "\(.*\)"/\1/p')
    have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
    if [ "$have" != "$want" ]; then
        echo "installing wasm-bindgen-cli $want (found: ${have:-none}; a few minutes)"
        # (in a temporary target directory, not a CI build cache)
        env -u CARGO_TARGET_DIR cargo install -q wasm-bindgen-cli --version "$want"
    fi
    (cd "$root/web/tests" && npm ci --no-audit --no-fund --loglevel=error)
fi

rustc --version
cargo --version
