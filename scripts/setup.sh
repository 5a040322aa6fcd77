#!/usr/bin/env bash
# Installs what daa's build and tests need on a fresh Debian machine with a
# Rust toolchain. Idempotent: skips what is already there.
set -euo pipefail

need_apt=()
# Release builds of the benches and the CLI need nothing beyond Rust today;
# the GPU backends' test requirements are added here as they land.
if [ "${#need_apt[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}"
fi
rustc --version
cargo --version
