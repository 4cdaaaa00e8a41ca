#!/usr/bin/env bash
# Builds the binaries of a real worker node into a cache directory keyed by their
# versions, and prints that directory: kubelet, kube-scheduler and kube-proxy from
# the same pinned k8s.io/kubernetes module as the control plane; containerd 2 and
# its runc shim, the CNI plugins and CoreDNS from their pinned Go modules; the
# pause (sandbox) program compiled from the Kubernetes sources; ctr from containerd's module. runc comes from
# Debian (tests/node/up installs it). A second run builds nothing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tools="$here/../controlplane/tools"
# shellcheck source=tests/lib/k8sbuild.sh
source "$here/../lib/k8sbuild.sh"
K8S_VERSION=$(k8s_version "$tools")
CONTAINERD_VERSION=v2.4.2
CNI_VERSION=v1.8.0
COREDNS_VERSION=v1.13.1
out="${BERTH_CACHE:-$HOME/.cache/berth}/testbin/node-k8s-v$K8S_VERSION-containerd-$CONTAINERD_VERSION-cni-$CNI_VERSION-coredns-$COREDNS_VERSION"
bins=(kubelet kube-scheduler kube-proxy containerd containerd-shim-runc-v2 bridge host-local loopback portmap coredns pause)

if ! all_built "$out" "${bins[@]}"; then
  mkdir -p "$out.partial"
  start=$(date +%s)
  echo "building the node binaries into $out (cold: about 5 minutes after the control plane)" >&2
  export CGO_ENABLED=0
  ldflags=$(k8s_ldflags "$K8S_VERSION")
  for cmd in kubelet kube-scheduler kube-proxy; do
    (cd "$tools" && GOFLAGS=-mod=readonly go build -p 2 -trimpath -ldflags "$ldflags" -o "$out.partial/$cmd" "k8s.io/kubernetes/cmd/$cmd")
  done
  # `go install module@version` ignores any go.mod around it: each tool is built
  # exactly as its release tags it.
  install() { GOBIN="$out.partial" GOFLAGS="" go install -trimpath -ldflags "-s -w" "$@"; }
  install -tags no_btrfs "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION"
  install "github.com/containernetworking/plugins/plugins/main/bridge@$CNI_VERSION" \
    "github.com/containernetworking/plugins/plugins/main/loopback@$CNI_VERSION" \
    "github.com/containernetworking/plugins/plugins/ipam/host-local@$CNI_VERSION" \
    "github.com/containernetworking/plugins/plugins/meta/portmap@$CNI_VERSION"
  install "github.com/coredns/coredns@$COREDNS_VERSION"
  # The sandbox image's program, from the module the kubelet was built from.
  src="$(cd "$tools" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
  gcc -Os -static -o "$out.partial/pause" -DVERSION="v$K8S_VERSION" "$src"
  rm -rf "$out" && mv "$out.partial" "$out"
  echo "built in $(( $(date +%s) - start ))s" >&2
fi
# ctr, with which tests remove an image from the node's store (there is no crictl);
# added later than the rest, so built on its own into the same directory.
if [ ! -x "$out/ctr" ]; then
  GOBIN="$out" GOFLAGS="" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" -tags no_btrfs \
    "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION" >&2
fi
echo "$out"
