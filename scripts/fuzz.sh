#!/usr/bin/env bash
# Run every fuzz target for a bounded time on the stable toolchain (bolero's random engine),
# optimised with overflow checks and debug assertions on (`--profile fuzz`). CI runs it with
# a short budget; pass a longer one for a real run:
#   bash scripts/fuzz.sh            # 15 s per target (what CI runs)
#   bash scripts/fuzz.sh 600        # 10 minutes per target
# Targets run one at a time (the machine has two cores), each printing its execution count.
# It fails on the first crash, hang (an input running over 10 s) or oracle failure, and then
# prints the whole output with the failing input (and, for the pipeline, a `replay:` line to
# add to fuzz/tests/regressions.txt once fixed). See docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-15}
export BOLERO_RANDOM_TEST_TIME_MS=$((SECS * 1000))
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for t in wire pipeline inputs; do
  if ! cargo test -q --profile fuzz -p fastpath-fuzz --test "$t" -- --nocapture --test-threads=1 >"$log" 2>&1; then
    cat "$log"
    echo "fuzz: target file $t FAILED" >&2
    exit 1
  fi
  grep "^fuzz target" "$log" | sort -u
done
