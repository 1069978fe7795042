#!/usr/bin/env bash
# Same-node benchmark, one run: fastpath vs bare AF_XDP vs kernel routing (as root).
# Results table on stdout; raw runs in bench/results/<date>-same-node.json.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --bins
mkdir -p bench/results
exec target/release/fastpath-bench --json "bench/results/$(date +%F)-same-node.json" "$@"
