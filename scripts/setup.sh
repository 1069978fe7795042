#!/usr/bin/env bash
# Installs every system package fastpath needs to build, demo, test and benchmark on a fresh
# Debian 12 machine (run as root). Idempotent: re-running only checks that things are present.
set -euo pipefail
PKGS=(
  clang llvm libbpf-dev gcc-multilib   # build the XDP program (clang -target bpf, BTF)
  bpftool                              # inspect loaded programs/maps (docs, troubleshooting)
  iproute2 ethtool                     # namespaces, veth, offload control
  iputils-ping socat iperf3 curl       # real clients/servers in the demo and tests
  tcpdump tshark                       # captures and decodes in tests/docs
  podman containernetworking-plugins   # a real container runtime driving fastpath-cni (CNI backend)
  runc busybox-static                  # podman's OCI runtime here; the containers' root filesystem
  etcd-server etcd-client              # the kvstore (source: kvstore) the tests start on loopback; etcdctl
  protobuf-compiler libprotobuf-dev    # protoc and its well-known types: the etcd client crate compiles etcd's gRPC API
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # tshark asks whether non-root users may capture; answer once, non-interactively.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Rust toolchain: the machine's rustup-managed stable (1.95) is expected; components for CI checks.
if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install Rust 1.95 with rustup first" >&2; exit 1
fi
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt >/dev/null 2>&1 || true
echo "setup: ok (clang $(clang --version | head -1 | grep -o '[0-9]*\.[0-9.]*' | head -1), $(cargo --version))"
