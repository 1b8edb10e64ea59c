#!/usr/bin/env bash
# Every check CI runs (.ci/run calls this): formatting, clippy with warnings
# as errors, then every test. clippy runs in the release profile so its
# build scripts and proc macros are the ones `cargo test --release` (and
# `cargo run --release`) use.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --release --all-targets -- -D warnings
cargo test --release
