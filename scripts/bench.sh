#!/usr/bin/env bash
# Benchmarks, one run (as root):
#  1. same node: fastpath vs bare AF_XDP vs kernel routing (live traffic through namespaces);
#  2. ipcache at 1M prefixes and the cross-node encap pipeline (no I/O, one pinned core).
# Tables on stdout; raw results in bench/results/<date>-*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --bins
mkdir -p bench/results
target/release/fastpath-bench-ipcache --json "bench/results/$(date +%F)-ipcache.json"
exec target/release/fastpath-bench --json "bench/results/$(date +%F)-same-node.json" "$@"
