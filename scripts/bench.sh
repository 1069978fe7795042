#!/usr/bin/env bash
# The benchmark, one command (as root): builds everything, builds the testbed (namespaces and
# veths it creates and deletes), and measures side by side, interleaved, in one run:
#  1. the pipeline per fixture, ns/frame, tiny vs large tables (1M ipcache, 1M conntrack) and
#     many flows, and every row through the tc programs (BPF_PROG_TEST_RUN's in-kernel run
#     time) beside it (fastpath-bench-stages --tc; no I/O, one pinned core);
#  2. same-node UDP throughput for 64, 512 and 1518-byte frames: fastpath (native XDP),
#     fastpath (generic XDP), fastpath with SCHED_FIFO workers (rt_priority), fastpath's tc
#     datapath (--datapath tc), bare AF_XDP
#     forwarding on the same veths (the ceiling), kernel routing, an in-kernel XDP redirect
#     (no lookups: the kernel's fastest path); offered vs received; then the no-drop rate of each, checked at 90 % (must
#     lose nothing) and 120 % (every lost frame attributed to a stage) (fastpath-bench);
#     and 64 B again with --queues 2 (two workers, two-queue veths) against --queues 1;
#     cross-node, the sending node, 64 and 512 B: fastpath (plain, with a policy selecting
#     the pod, to a ClusterIP, generic XDP, the tc datapath plain and to the ClusterIP)
#     against the Linux VXLAN path, offered vs
#     received vs drops by stage, and CPU per packet over all cores at a paced rate
#     (fastpath-bench-xnode); and the receiving node at 64 B: a remote node's VXLAN frames
#     decapsulated and delivered to a pod, fastpath (plain, an ingress policy, generic XDP,
#     the tc datapath)
#     against the Linux VXLAN path (--direction receive);
#     TCP pod → pod with iperf3: fastpath, kernel routing with the same offloads, kernel
#     routing with GSO/TSO (fastpath-bench-tcp);
#     control-plane churn: ipcache updates/s at 1M prefixes by batch size, 64k services with
#     32 backends (8000 with --quick) added, changed and changed one at a time, and the
#     pauses a table reader sees against an idle baseline
#     (fastpath-bench-churn);
#  3. request/response RTT p50/p99/p99.9 with the forwarder's CPU: kernel routing, fastpath
#     adaptive (default spin budget), fastpath busy, fastpath's tc datapath, three times: apps sleeping in recv (the
#     usual case), apps polling (separates vCPU wake-up cost), and under a load of 100 kpps
#     through the same forwarder (fastpath-bench-rtt);
#  4. plots (throughput.svg, rtt.svg) and README.md with every table, in
#     bench/results/<date>-<commit>/.
#
#   bash scripts/bench.sh            # the full run: about 30 minutes on 2 cores
#   bash scripts/bench.sh --quick    # shorter runs, fewer repetitions: about 9 minutes
#
# Every result records machine, kernel, commit, cores, queues, XDP mode, frame size, load
# average and the steal share; docs/benchmarks.md says how to read them.
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=0
for a in "$@"; do
  case "$a" in
    --quick) QUICK=1 ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown option $a (use --quick or nothing)" >&2; exit 2 ;;
  esac
done
if [[ $(id -u) != 0 ]]; then echo "bench.sh: run as root (namespaces, XDP, AF_XDP)" >&2; exit 1; fi
bash scripts/setup.sh
cargo build --release --bins
B=target/release
commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!bench/results' || echo "-dirty")
R="bench/results/$(date -u +%F)-$commit"
mkdir -p "$R"
if ((QUICK)); then
  STAGES=(--iters 50000 --rounds 3 --ipcache 200000 --ct 200000 --flows 65536)
  SAME=(--secs 2 --reps 2 --ndr --ndr-secs 1 --ndr-steps 5) Q2=(--secs 2 --reps 2)
  XNODE=(--secs 2 --reps 1) CHURN=(--secs 1 --services 8000) TCP=(--secs 2 --reps 1)
  RTT=(--count 5000 --reps 2) IDLE=1
else
  STAGES=()
  SAME=(--secs 4 --reps 3 --ndr --ndr-secs 2 --ndr-steps 7) Q2=(--secs 4 --reps 3)
  XNODE=(--secs 4 --reps 3) CHURN=(--services 64000) TCP=(--secs 5 --reps 3)
  RTT=(--count 20000 --reps 3) IDLE=3
fi
steal() { awk '/^cpu /{print $9}' /proc/stat; }
total() { awk '/^cpu /{s=0; for(i=2;i<=9;i++) s+=$i; print s}' /proc/stat; }
s0=$(steal) t0=$(total) start=$(date -u +%FT%TZ)
{
  echo "# fastpath benchmark $start"
  echo
  echo "- commit: $commit"
  echo "- machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r)"
  echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- queues: 1; AF_XDP copy mode (veth has no zero-copy); XDP native unless a mode says generic"
  echo "- command: bash scripts/bench.sh $*"
  echo
} > "$R/README.md"

echo "== 1/3 pipeline per fixture" >&2
$B/fastpath-bench-stages --tc "${STAGES[@]}" --json "$R/stages.json" | tee "$R/stages.md"
for size in 64 512 1518; do
  echo "== 2/3 same-node throughput, $size B" >&2
  $B/fastpath-bench --modes fastpath,fastpath-generic,fastpath-rt,tc,bare,kernel,xdp-redirect \
    --size "$size" "${SAME[@]}" \
    --json "$R/same-node-$size.json" | tee "$R/same-node-$size.md"
done
echo "== 2/3 same-node throughput, 64 B, --queues 2" >&2
$B/fastpath-bench --modes fastpath,bare,kernel --size 64 --queues 2 "${Q2[@]}" \
  --json "$R/queues-2.json" | tee "$R/queues-2.md"
for size in 64 512; do
  echo "== 2/3 cross-node (sending node), $size B" >&2
  $B/fastpath-bench-xnode --size "$size" "${XNODE[@]}" \
    --systems fastpath,fastpath-policy,fastpath-clusterip,fastpath-generic,fastpath-rt,fastpath-txflush,fastpath-tc,fastpath-tc-clusterip,kernel-vxlan \
    --json "$R/cross-node-$size.json" \
    | tee "$R/cross-node-$size.md"
done
echo "== 2/3 cross-node (receiving node), 64 B" >&2
$B/fastpath-bench-xnode --direction receive --size 64 \
  --systems fastpath,fastpath-policy,fastpath-generic,fastpath-tc,kernel-vxlan "${XNODE[@]}" \
  --json "$R/cross-node-receive-64.json" | tee "$R/cross-node-receive-64.md"
echo "== 2/3 TCP (iperf3)" >&2
$B/fastpath-bench-tcp "${TCP[@]}" --json "$R/tcp.json" | tee "$R/tcp.md"
echo "== 2/3 control-plane churn" >&2
$B/fastpath-bench-churn "${CHURN[@]}" --json "$R/churn.json" | tee "$R/churn.md"
echo "== 3/3 request/response latency" >&2
$B/fastpath-bench-rtt --modes kernel,fastpath,busy,tc "${RTT[@]}" --idle-secs "$IDLE" --json "$R/rtt.json" | tee "$R/rtt.md"
$B/fastpath-bench-rtt --modes kernel,fastpath,busy,tc --app-busy "${RTT[@]}" --idle-secs 0 \
  --json "$R/rtt-apps-polling.json" | tee "$R/rtt-apps-polling.md"
$B/fastpath-bench-rtt --modes kernel,fastpath,busy,tc --load-pps 100000 "${RTT[@]}" --idle-secs 0 \
  --json "$R/rtt-under-load.json" | tee "$R/rtt-under-load.md"
$B/fastpath-bench-plot "$R"

s1=$(steal) t1=$(total)
{
  echo "- load average at end: $(cut -d' ' -f1-3 /proc/loadavg); steal during the run: $(awk -v a="$s0" -v b="$s1" -v c="$t0" -v d="$t1" 'BEGIN{printf "%.2f", (b-a)/((d-c)>0?(d-c):1)*100}') % of all CPU time"
  echo
  echo "![throughput](throughput.svg) ![rtt](rtt.svg)"
  for f in stages same-node-64 same-node-512 same-node-1518 queues-2 cross-node-64 cross-node-512 cross-node-receive-64 tcp churn rtt rtt-apps-polling rtt-under-load; do
    echo
    echo "## $f"
    cat "$R/$f.md"
  done
} >> "$R/README.md"
echo "bench.sh: results in $R (README.md, *.json, throughput.svg, rtt.svg)" >&2
