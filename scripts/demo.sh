#!/usr/bin/env bash
# One command demo on a fresh machine (as root): install, build, bring up the embedded demo
# cluster and send real traffic through fastpath, then tear everything down.
#   node demo        (fastpath, the embedded default config): pods client, echo, web
#   node demo2       (fastpath):                              pods db, cache
#   node demo-kernel (the Linux kernel's own VXLAN device):   pod legacy
# joined by a bridge (the fabric). Same-node traffic is forwarded by fastpath in userspace;
# cross-node traffic is VXLAN on UDP 8472 with the source pod's security identity as the VNI,
# which the kernel node understands both ways (tshark decodes it below).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --bins
FP=target/release/fastpath
x() { echo "+ $*"; "$@"; }
TMP=$(mktemp -d)
$FP config default --node demo2 > "$TMP/demo2.yaml"
$FP config default --node demo-kernel > "$TMP/kernel.yaml"
cleanup() {
  CONTAINERS_CONF="$TMP/containers.conf" podman rm -f -t 0 fp-demo-c1 >/dev/null 2>&1 || true
  for p in ${FP_PID:-} ${FP2_PID:-}; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
  # What fastpath keeps for its next start: the LB map pins (conntrack's service IDs).
  rm -rf /sys/fs/bpf/fastpath/demo /sys/fs/bpf/fastpath/demo2 /dev/shm/fastpath-demo /dev/shm/fastpath-demo2
  [[ -n "${BG_PIDS:-}" ]] && kill $BG_PIDS 2>/dev/null || true
  ip netns del fp-demo-live 2>/dev/null || true
  $FP lab down --config "$TMP/kernel.yaml"; $FP lab down --config "$TMP/demo2.yaml"; $FP lab down
  rm -rf "$TMP"
}
trap cleanup EXIT
$FP lab down; $FP lab down --config "$TMP/demo2.yaml"; $FP lab down --config "$TMP/kernel.yaml"
x $FP lab up                                          # demo: fp-demo-node + 3 pod namespaces
x $FP lab up --config "$TMP/demo2.yaml"               # demo2
x $FP lab up --config "$TMP/kernel.yaml" --kernel-vxlan   # demo-kernel: vxlan0 external, dstport 8472
# Runtime changes (the policy applied below) are kept in --state-dir across restarts; the
# demo keeps them in its temp dir so every run starts from the embedded config.
# Conntrack lives in --run-dir (memory-mapped files, kept across restarts), on tmpfs.
$FP run --cores 0 --state-dir "$TMP/state-demo" --run-dir /dev/shm/fastpath-demo & FP_PID=$!           # the embedded default config
$FP run --config "$TMP/demo2.yaml" --cores 1 --state-dir "$TMP/state-demo2" --run-dir /dev/shm/fastpath-demo2 & FP2_PID=$!
for _ in $(seq 100); do
  $FP status --node demo -o json 2>/dev/null | grep -q '"mac": "' && \
  $FP status --node demo2 -o json 2>/dev/null | grep -q '"mac": "' && break
  sleep 0.1
done

echo; echo "== same node: client -> echo (ARP for the gateway is answered by fastpath)"
x ip netns exec fp-demo-client ping -c 3 -i 0.2 10.200.1.12
ip netns exec fp-demo-echo socat -T 3 TCP-LISTEN:7,fork,reuseaddr PIPE & BG_PIDS="$!"
ip netns exec fp-demo-echo socat -T 3 UDP-LISTEN:7,fork,reuseaddr PIPE & BG_PIDS="$BG_PIDS $!"
sleep 0.3
echo "hello over TCP through fastpath" | x ip netns exec fp-demo-client socat -t 1 - TCP:10.200.1.12:7
echo "hello over UDP through fastpath" | x ip netns exec fp-demo-client socat -t 1 - UDP:10.200.1.12:7

echo; echo "== pod MTU is 1450 (1500 of the underlay minus 50 of VXLAN)"
x ip netns exec fp-demo-client ip -o link show eth0

echo; echo "== cross node, captured on the fabric and decoded by tshark as VXLAN"
ip netns exec fp-demo-fabric tcpdump -i br0 --immediate-mode -U -n -w "$TMP/wire.pcap" udp port 8472 2>/dev/null & DUMP=$!
sleep 1
x ip netns exec fp-demo-client ping -c 2 -i 0.2 10.201.1.11      # demo -> demo2 (fastpath both ends)
x ip netns exec fp-demo-web ping -c 2 -i 0.2 10.202.1.11         # demo -> kernel VXLAN node
x ip netns exec fp-demo-legacy ping -c 2 -i 0.2 10.201.1.12      # kernel VXLAN node -> demo2
ip netns exec fp-demo2-db socat -T 3 TCP-LISTEN:7,fork,reuseaddr PIPE & BG_PIDS="$BG_PIDS $!"
sleep 0.3
echo "TCP from the kernel node's pod to a fastpath pod" | x ip netns exec fp-demo-legacy socat -t 1 - TCP:10.201.1.11:7
sleep 1; kill -INT $DUMP; wait $DUMP 2>/dev/null || true
echo "VNI = the sending pod's security identity:"
x tshark -r "$TMP/wire.pcap" -d udp.port==8472,vxlan -T fields -E header=y \
  -e ip.src -e ip.dst -e udp.srcport -e vxlan.vni -e _ws.col.Protocol -E occurrence=l 2>/dev/null | head -16

echo; echo "== iperf3 across nodes (2 s)"
ip netns exec fp-demo2-cache iperf3 -s -1 >/dev/null & BG_PIDS="$BG_PIDS $!"
sleep 0.5
x ip netns exec fp-demo-echo iperf3 -c 10.201.1.12 -t 2 | tail -4

echo; echo "== ClusterIP 10.96.0.10:80 (Maglev) with a backend on each node: curl from client"
for n in web db; do
  mkdir -p "$TMP/www-$n"; echo "$n" > "$TMP/www-$n/index.html"
done
ip netns exec fp-demo-web python3 -m http.server 8080 --directory "$TMP/www-web" >/dev/null 2>&1 & BG_PIDS="$BG_PIDS $!"
ip netns exec fp-demo2-db python3 -m http.server 8080 --directory "$TMP/www-db" >/dev/null 2>&1 & BG_PIDS="$BG_PIDS $!"
sleep 1
for i in 1 2 3 4 5 6; do
  printf 'request %s answered by: ' "$i"; ip netns exec fp-demo-client curl -s --max-time 3 http://10.96.0.10/
done
echo; echo "== the service and conntrack maps on demo (SVC entries pin a backend, OUT entries reverse-NAT replies)"
x $FP bpf lb list --node demo
x $FP bpf ct list global --node demo | head -6

echo; echo "== network policy: echo admits only client on 7/TCP (applied live, no restart)"
cat > "$TMP/echo-policy.yaml" <<'YAML'
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: { name: echo-from-client }
spec:
  endpointSelector: { matchLabels: { app: echo } }
  ingress:
    - fromEndpoints: [{ matchLabels: { app: client } }]
      toPorts: [{ ports: [{ port: "7", protocol: TCP }] }]
YAML
x $FP policy apply -f "$TMP/echo-policy.yaml" --node demo
echo "allowed" | x ip netns exec fp-demo-client socat -t 1 - TCP:10.200.1.12:7
if echo "denied" | ip netns exec fp-demo-web timeout 3 socat -t 1 - TCP:10.200.1.12:7,connect-timeout=1 2>/dev/null; then
  echo "unexpected: web reached echo through the policy"; exit 1
fi
echo "web -> echo:7 refused by policy (drop reason 133, Policy denied)"
x $FP bpf policy get 2 --node demo
x $FP policy delete default/echo-from-client --node demo

echo; echo "== a pod added live, the way a CNI plugin adds one: its veth first, then endpoint add"
ip netns del fp-demo-live 2>/dev/null || true
x ip netns add fp-demo-live
x ip link add lxc-live netns fp-demo-node type veth peer name eth0 netns fp-demo-live
x ip -n fp-demo-live link set eth0 address 0a:58:0a:c8:01:32
x ip -n fp-demo-live addr add 10.200.1.50/32 dev eth0
x ip -n fp-demo-live link set eth0 mtu 1450 up
x ip -n fp-demo-live link set lo up
x ip netns exec fp-demo-live ethtool -K eth0 tx off >/dev/null
x ip -n fp-demo-live route add 10.200.0.1 dev eth0 scope link
x ip -n fp-demo-live route add default via 10.200.0.1 dev eth0
x ip -n fp-demo-node link set lxc-live mtu 1450 up
# Labels of an identity the other nodes know (app: client), so demo2 accepts its VXLAN traffic
# (a label set no other node knows talks same-node only: docs/endpoints.md).
x $FP endpoint add --node demo --name live --ip 10.200.1.50 --mac 0a:58:0a:c8:01:32 --lxc lxc-live --label app=client
x ip netns exec fp-demo-client ping -c 2 -i 0.2 10.200.1.50     # same node, to the new pod
x ip netns exec fp-demo-live ping -c 2 -i 0.2 10.201.1.11       # the new pod to demo2's db
x $FP endpoint list --node demo
x $FP endpoint delete --node demo default/live
if ip netns exec fp-demo-client ping -c 1 -W 1 10.200.1.50 >/dev/null 2>&1; then
  echo "unexpected: the deleted pod still answers"; exit 1
fi
echo "deleted: the pod no longer answers, the others are untouched"
x ip netns del fp-demo-live

echo; echo "== a container from podman (CNI backend) on node demo, through fastpath-cni (docs/cni.md)"
mkdir -p "$TMP/cni/net.d" "$TMP/cni/bin" "$TMP/rootfs"/{bin,proc,sys,dev,etc,tmp}
ln -sf "$PWD/target/release/fastpath-cni" "$TMP/cni/bin/fastpath-cni"
cp /bin/busybox "$TMP/rootfs/bin/"
for a in sh ip ping sleep; do ln -sf busybox "$TMP/rootfs/bin/$a"; done
# Labels of an identity demo2 knows (app: client), so its tunnel accepts the container.
cat > "$TMP/cni/net.d/fpdemo.conflist" <<'JSON'
{ "cniVersion": "1.0.0", "name": "fpdemo",
  "plugins": [ { "type": "fastpath-cni", "node": "demo", "labels": { "app": "client" } } ] }
JSON
cat > "$TMP/containers.conf" <<CONF
[containers]
default_ulimits = []
[network]
network_backend = "cni"
network_config_dir = "$TMP/cni/net.d"
cni_plugin_dirs = ["$TMP/cni/bin", "/usr/lib/cni"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
CONF
cat "$TMP/cni/net.d/fpdemo.conflist"
export CONTAINERS_CONF="$TMP/containers.conf"
x podman run -d --name fp-demo-c1 --network fpdemo --rootfs "$TMP/rootfs" sleep 100000
x podman exec fp-demo-c1 ip -4 -o addr show eth0                    # its address from demo's pod CIDR
x $FP endpoint list --node demo                                      # SOURCE cni
x podman exec fp-demo-c1 ping -c 2 -i 0.2 10.200.1.12               # to echo, same node
x podman exec fp-demo-c1 ping -c 2 -i 0.2 10.201.1.11               # to db on demo2, through the tunnel
x podman rm -f -t 0 fp-demo-c1                                       # CNI DEL: veth, endpoint, address gone
x $FP endpoint list --node demo
unset CONTAINERS_CONF

echo; echo "== fastpath status (node demo)"
x $FP status --node demo
echo; echo "== fastpath bpf ipcache list (node demo)"
x $FP bpf ipcache list --node demo
echo; echo "== fastpath bpf tunnel list (node demo)"
x $FP bpf tunnel list --node demo
echo; echo "== fastpath bpf endpoint list (node demo)"
x $FP bpf endpoint list --node demo

echo; echo "== stop fastpath on demo: the kernel does not forward between its pods"
kill "$FP_PID"; wait "$FP_PID" || true; FP_PID=
if ip netns exec fp-demo-client ping -c 2 -W 1 10.200.1.12 >/dev/null; then
  echo "unexpected: pods reach each other without fastpath"; exit 1
fi
echo "ping fails without fastpath, as it should"
