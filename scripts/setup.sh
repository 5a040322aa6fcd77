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

rustc --version
cargo --version
