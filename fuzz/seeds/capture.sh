#!/usr/bin/env bash
# Capture the fuzz seed corpus from real traffic (run as root from the repo root; the pcaps it
# writes are committed, so CI does not run this). Brings up the demo cluster (two fastpath
# nodes and the kernel-VXLAN node) plus a client outside the cluster, sends each kind of
# traffic fastpath handles, and records:
#   fuzz/seeds/pod.pcap       frames on the pods' eth0 (what pods send and receive)
#   fuzz/seeds/underlay.pcap  frames on the fabric (VXLAN between all three nodes, NodePort from
#                             outside, ARP)
set -euo pipefail
FP=${FP:-target/debug/fastpath}
OUT=fuzz/seeds
TMP=$(mktemp -d)
$FP config default --node demo2 > "$TMP/demo2.yaml"
$FP config default --node demo-kernel > "$TMP/kernel.yaml"
cleanup() {
  kill $PIDS 2>/dev/null || true; wait 2>/dev/null || true
  ip netns del fp-seed-out 2>/dev/null || true
  $FP lab down --config "$TMP/kernel.yaml"; $FP lab down --config "$TMP/demo2.yaml"; $FP lab down
  rm -rf "$TMP"
}
trap cleanup EXIT
PIDS=""
$FP lab up; $FP lab up --config "$TMP/demo2.yaml"; $FP lab up --config "$TMP/kernel.yaml" --kernel-vxlan
$FP run --cores 0 --state-dir "$TMP/s1" 2>/dev/null & PIDS="$PIDS $!"
$FP run --config "$TMP/demo2.yaml" --cores 1 --state-dir "$TMP/s2" 2>/dev/null & PIDS="$PIDS $!"
sleep 3
# A client outside the cluster on the fabric, for NodePort.
ip netns add fp-seed-out
ip -n fp-demo-fabric link add px-seed type veth peer name eth0 netns fp-seed-out
ip -n fp-demo-fabric link set px-seed master br0 up
ip netns exec fp-demo-fabric ethtool -K px-seed tx off >/dev/null
ip -n fp-seed-out addr add 192.168.200.50/24 dev eth0
ip -n fp-seed-out link set eth0 up
ip netns exec fp-seed-out ethtool -K eth0 tx off >/dev/null
# Frames the workers take by AF_XDP bypass the node's own taps, so record on the far ends of
# the wires: each pod's eth0, and the fabric bridge.
for p in client echo web; do
  ip netns exec fp-demo-$p tcpdump -i eth0 -U -w "$TMP/$p.pcap" 2>/dev/null & PIDS="$PIDS $!"
done
ip netns exec fp-demo-fabric tcpdump -i br0 -U -w "$TMP/fabric.pcap" 2>/dev/null & PIDS="$PIDS $!"
sleep 1
ip netns exec fp-demo-echo socat -T 2 TCP-LISTEN:7,fork,reuseaddr PIPE & PIDS="$PIDS $!"
ip netns exec fp-demo-echo socat -T 2 UDP-LISTEN:7,fork,reuseaddr PIPE & PIDS="$PIDS $!"
mkdir -p "$TMP/www"; echo web > "$TMP/www/index.html"
ip netns exec fp-demo-web python3 -m http.server 8080 --directory "$TMP/www" >/dev/null 2>&1 & PIDS="$PIDS $!"
ip netns exec fp-demo2-db python3 -m http.server 8080 --directory "$TMP/www" >/dev/null 2>&1 & PIDS="$PIDS $!"
sleep 1
ip netns exec fp-demo-client ping -c 2 -i 0.2 10.200.1.12 >/dev/null        # same node (and ARP)
ip netns exec fp-demo-client ping -c 2 -i 0.2 10.201.1.11 >/dev/null        # to demo2 (VXLAN)
ip netns exec fp-demo-web ping -c 2 -i 0.2 10.202.1.11 >/dev/null           # to the kernel node
ip netns exec fp-demo-client ping -c 1 -s 1440 -M do 10.201.1.11 >/dev/null || true   # too big: frag needed
echo tcp | ip netns exec fp-demo-client socat -t 1 - TCP:10.200.1.12:7 >/dev/null
echo udp | ip netns exec fp-demo-client socat -t 1 - UDP:10.200.1.12:7 >/dev/null
for _ in 1 2 3; do ip netns exec fp-demo-client curl -s --max-time 2 http://10.96.0.10/ >/dev/null || true; done
for _ in 1 2 3; do ip netns exec fp-seed-out curl -s --max-time 2 http://192.168.200.1:30080/ >/dev/null || true; done
ip netns exec fp-demo-legacy ping -c 2 -i 0.2 10.200.1.11 >/dev/null        # kernel node -> demo
sleep 1
kill $PIDS 2>/dev/null || true; wait 2>/dev/null || true; PIDS=""
python3 - "$TMP" "$OUT" <<'PY'
import struct, sys
tmp, out = sys.argv[1], sys.argv[2]
def frames(path):
    d = open(path, 'rb').read()
    hdr, d = d[:24], d[24:]
    res = []
    while len(d) >= 16:
        _, _, incl, _ = struct.unpack('<IIII', d[:16])
        res.append(d[16:16 + incl]); d = d[16 + incl:]
    return hdr, res
def write(path, hdr, fs):
    with open(path, 'wb') as f:
        f.write(hdr)
        for x in fs:
            f.write(struct.pack('<IIII', 0, 0, len(x), len(x)) + x)
for name, srcs in [('pod', ['client', 'echo', 'web']), ('underlay', ['fabric'])]:
    allf, seen, hdr = [], set(), None
    for s in srcs:
        hdr, fs = frames(f'{tmp}/{s}.pcap')
        for x in fs:
            if x not in seen:
                seen.add(x); allf.append(x)
    write(f'{out}/{name}.pcap', hdr, allf[:400])
    print(f'{name}.pcap: {min(len(allf), 400)} frames')
PY
