#!/usr/bin/env bash
# One command demo on a fresh machine (as root): install, build, bring up the embedded demo
# node (3 pods in namespaces, veths, XDP + AF_XDP workers), send real traffic through
# fastpath (ping, a TCP echo, a UDP echo), show the counters and the endpoint map, tear down.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --bins
FP=target/release/fastpath
x() { echo "+ $*"; "$@"; }
cleanup() {
  [[ -n "${FP_PID:-}" ]] && kill "$FP_PID" 2>/dev/null && wait "$FP_PID" 2>/dev/null || true
  [[ -n "${ECHO_PIDS:-}" ]] && kill $ECHO_PIDS 2>/dev/null || true
  $FP lab down
}
trap cleanup EXIT
$FP lab down                     # leftovers of an interrupted run
x $FP lab up                     # namespaces fp-demo-node, fp-demo-{client,echo,web}
$FP run & FP_PID=$!              # the embedded default config (`fastpath config default`)
for _ in $(seq 50); do $FP status >/dev/null 2>&1 && break; sleep 0.1; done
echo; echo "== client -> echo: ping (ARP for the gateway is answered by fastpath)"
x ip netns exec fp-demo-client ping -c 3 -i 0.2 10.200.1.12
ip netns exec fp-demo-echo socat -T 3 TCP-LISTEN:7,fork,reuseaddr PIPE & ECHO_PIDS="$!"
ip netns exec fp-demo-echo socat -T 3 UDP-LISTEN:7,fork,reuseaddr PIPE & ECHO_PIDS="$ECHO_PIDS $!"
sleep 0.3
echo; echo "== client -> echo: TCP and UDP echo"
echo "hello over TCP through fastpath" | x ip netns exec fp-demo-client socat -t 1 - TCP:10.200.1.12:7
echo "hello over UDP through fastpath" | x ip netns exec fp-demo-client socat -t 1 - UDP:10.200.1.12:7
echo; echo "== web -> client: ping"
x ip netns exec fp-demo-web ping -c 2 -i 0.2 10.200.1.11
echo; echo "== fastpath status"
x $FP status
echo; echo "== fastpath bpf endpoint list"
x $FP bpf endpoint list
echo; echo "== stop fastpath: the kernel does not forward between pods"
kill "$FP_PID"; wait "$FP_PID" || true; FP_PID=
if ip netns exec fp-demo-client ping -c 2 -W 1 10.200.1.12 >/dev/null; then
  echo "unexpected: pods reach each other without fastpath"; exit 1
fi
echo "ping fails without fastpath, as it should"
