#!/usr/bin/env bash
# Every check CI runs (.ci/run calls this): formatting, clippy with warnings
# as errors, then every test. clippy runs in the release profile so its
# build scripts and proc macros are the ones `cargo test --release` (and
# `cargo run --release`) use.
#
# The Python package (crates/edifice-py + python/) is tested in a venv,
# .venv-py, with torch, numpy, maturin and pytest from PyPI (created on the
# first run, ~5 GB and a few minutes; later runs reuse it): pip builds and
# installs ./python into it, then pytest runs python/tests.
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
# Every crate but the benchmark peers (edifice-py included: pyo3 reads the
# machine's python3 to configure its build).
cargo clippy --release --workspace --exclude edifice-bench-peers --all-targets --features edifice-cli/dist -- -D warnings
cargo test --release --features edifice-cli/dist

venv=.venv-py
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check torch numpy maturin pytest
# maturin, the build backend, runs from the venv.
PATH="$PWD/$venv/bin:$PATH" "$venv/bin/pip" install --quiet --disable-pip-version-check --no-build-isolation ./python
# From the root, so `import edifice` finds the installed package, not python/edifice.
"$venv/bin/python" -m pytest -q -p no:cacheprovider python/tests
