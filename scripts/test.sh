#!/usr/bin/env bash
# Run every check on a fresh machine (as root): install packages, then fmt, clippy, build and
# the whole test suite (unit tests on byte buffers + scenario tests in namespaces), then every
# fuzz target for a bounded time (FUZZ_SECS per target, 15 by default).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The scenario tests start the real `fastpath` binary, so build it first.
cargo build --workspace --bins
# Scenario tests share the machine's two cores and create many namespaces: one at a time.
cargo test --workspace -- --test-threads=1
# Fuzzing on the stable toolchain: every target for a bounded time (docs/fuzzing.md).
bash scripts/fuzz.sh "${FUZZ_SECS:-15}"
