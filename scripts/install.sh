#!/usr/bin/env bash
# Build (release) and install fastpath and its CNI plugin where runtimes look for them:
#   $BINDIR/fastpath           (default /usr/local/bin)
#   $CNI_BIN_DIR/fastpath-cni  (default /opt/cni/bin: on the default CNI plugin path of podman,
#                               containerd and CRI-O)
# DESTDIR prefixes both (packaging). Run scripts/setup.sh first on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
BINDIR=${BINDIR:-/usr/local/bin}
CNI_BIN_DIR=${CNI_BIN_DIR:-/opt/cni/bin}
DESTDIR=${DESTDIR:-}
cargo build --release --bins -p fastpath -p fastpath-cni
install -D -m 0755 target/release/fastpath "$DESTDIR$BINDIR/fastpath"
install -D -m 0755 target/release/fastpath-cni "$DESTDIR$CNI_BIN_DIR/fastpath-cni"
echo "installed $DESTDIR$BINDIR/fastpath and $DESTDIR$CNI_BIN_DIR/fastpath-cni"
