#!/usr/bin/env bash
# Every check CI runs (.ci/run calls this): formatting, clippy with warnings
# as errors, then every test. clippy runs in the release profile so its
# build scripts and proc macros are the ones `cargo test --release` (and
# `cargo run --release`) use.
#
# crates/edifice-dist builds against Open MPI (headers, and libclang for
# bindgen) and its tests run `mpirun`: on a Debian-like machine that lacks
# them, they are installed first (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v dpkg >/dev/null; then
    missing=()
    for pkg in openmpi-bin libopenmpi-dev libclang-dev; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing ${missing[*]} for crates/edifice-dist"
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "${missing[@]}"
    fi
fi
cargo fmt --all -- --check
cargo clippy --release --all-targets --features edifice-cli/dist -- -D warnings
cargo test --release --features edifice-cli/dist
