#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager and kubectl from the pinned
# Go modules beside this script into a cache directory keyed by version, and prints
# that directory. A second run finds the binaries and builds nothing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=tests/lib/k8sbuild.sh
source "$here/../lib/k8sbuild.sh"
K8S_VERSION=$(k8s_version "$here/tools")
ETCD_VERSION=$(sed -n 's|^[[:space:]]*\(require \)\{0,1\}go.etcd.io/etcd/server/v3 v\([0-9.]*\).*|\2|p' "$here/etcd/go.mod")
out="${BERTH_CACHE:-$HOME/.cache/berth}/testbin/k8s-v$K8S_VERSION-etcd-v$ETCD_VERSION"
bins=(etcd kube-apiserver kube-controller-manager kubectl)

if ! all_built "$out" "${bins[@]}"; then
  mkdir -p "$out.partial"
  start=$(date +%s)
  echo "building Kubernetes v$K8S_VERSION and etcd v$ETCD_VERSION into $out (cold: tens of minutes)" >&2
  ldflags=$(k8s_ldflags "$K8S_VERSION")
  export CGO_ENABLED=0 GOFLAGS=-mod=readonly
  (cd "$here/etcd" && go build -p 2 -trimpath -ldflags "-s -w" -o "$out.partial/etcd" go.etcd.io/etcd/server/v3)
  for cmd in kube-apiserver kube-controller-manager kubectl; do
    (cd "$here/tools" && go build -p 2 -trimpath -ldflags "$ldflags" -o "$out.partial/$cmd" "k8s.io/kubernetes/cmd/$cmd")
  done
  rm -rf "$out" && mv "$out.partial" "$out"
  echo "built in $(( $(date +%s) - start ))s" >&2
fi
echo "$out"
