#!/usr/bin/env bash
# Installs what daa's build and tests need on a fresh Debian machine with a
# Rust toolchain. Idempotent: skips what is already there.
set -euo pipefail

# wgpu's tests run on lavapipe (Mesa's software Vulkan) when no GPU is present.
need_apt=()
for pkg in mesa-vulkan-drivers libvulkan1; do
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

rustc --version
cargo --version
