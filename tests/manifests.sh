#!/usr/bin/env bash
# manifests/ against a real control plane: install.yaml is what `kubectl kustomize
# manifests` renders (--write regenerates it), every manifest passes a server-side
# dry run, install.yaml and the examples really apply, and the operator, running
# with a token of the ServiceAccount from manifests/rbac.yaml, reconciles the
# examples (the registries' ServiceAccounts, token-review bindings, disruption
# budgets, metrics Services and, with prometheus-operator's CRD installed, the
# ServiceMonitor included), so a missing permission fails here.
set -euo pipefail
# shellcheck source=tests/lib/common.sh
source "$(dirname "$0")/lib/common.sh"
cd "$REPO_ROOT"

bin="$(bash tests/controlplane/build.sh)"
export PATH="$bin:$PATH"
if [ "${1:-}" = "--write" ]; then
  { echo "# Rendered by tests/manifests.sh --write from manifests/kustomization.yaml; do not edit."
    kubectl kustomize manifests; } >manifests/install.yaml
  exit 0
fi

work=$(mktemp -d)
operator_pid=""
cleanup() {
  [ -n "$operator_pid" ] && kill "$operator_pid" 2>/dev/null
  tests/controlplane/down "$work/cp" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

install_is_current() {
  diff -u manifests/install.yaml <({ echo "# Rendered by tests/manifests.sh --write from manifests/kustomization.yaml; do not edit."
    kubectl kustomize manifests; }) >"$work/install.diff" || { cat "$work/install.diff"; return 1; }
}
check "manifests/install.yaml matches the kustomize base" install_is_current

eval "$(BERTH_CP_OWNER_PID=$$ tests/controlplane/up --controller-manager "$work/cp")"

install_applies() {
  kubectl apply --server-side -f manifests/install.yaml >/dev/null &&
    kubectl wait --for=condition=Established crd/registries.berth.dev --timeout=30s >/dev/null
}
check "install.yaml applies" install_applies

# prometheus-operator's real ServiceMonitor CRD, for manifests/examples/monitoring.yaml.
servicemonitors_served() {
  kubectl apply --server-side -f "$(servicemonitor_crd)" >/dev/null &&
    kubectl wait --for=condition=Established crd/servicemonitors.monitoring.coreos.com --timeout=30s >/dev/null
}
check "prometheus-operator's ServiceMonitor CRD applies" servicemonitors_served

dry_runs() {
  local f ok=0
  kubectl apply --server-side --dry-run=server -k manifests >/dev/null || { echo "dry run failed: -k manifests"; ok=1; }
  for f in manifests/*.yaml manifests/crds/*.yaml manifests/examples/*.yaml; do
    [ "$(basename "$f")" = kustomization.yaml ] && continue
    kubectl apply --server-side --dry-run=server -f "$f" >/dev/null || { echo "dry run failed: $f"; ok=1; }
  done
  return $ok
}
check "every manifest passes a server-side dry run" dry_runs

# The operator with the ServiceAccount's own credentials.
token=$(kubectl -n berth-system create token berth-operator --duration=1h)
server=$(kubectl config view --raw -o jsonpath='{.clusters[0].cluster.server}')
ca=$(kubectl config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
cat >"$work/sa.kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "$server", certificate-authority-data: "$ca"}}]
users: [{name: berth-operator, user: {token: "$token"}}]
contexts: [{name: c, context: {cluster: c, user: berth-operator}}]
current-context: c
KUBECONFIG
port=$(free_port)
KUBECONFIG="$work/sa.kubeconfig" POD_NAMESPACE=berth-system RUST_LOG=info \
  "$CARGO_TARGET_DIR/release/berth-operator" --listen "127.0.0.1:$port" >"$work/operator.log" 2>&1 &
operator_pid=$!

examples_reconcile() {
  kubectl apply --server-side -f manifests/examples/ >/dev/null || return 1
  local name
  for name in registry images local objects watched mirror; do
    for _ in $(seq 1 120); do
      [ -n "$(kubectl -n default get registry "$name" -o jsonpath='{.status.endpoint}' 2>/dev/null)" ] &&
        kubectl -n default get deployment "$name" >/dev/null 2>&1 && continue 2
      sleep 0.5
    done
    echo "Registry $name was not reconciled; operator log:"; tail -20 "$work/operator.log"
    return 1
  done
  for name in registry images local objects watched mirror; do
    kubectl -n default get serviceaccount "$name-registry" >/dev/null || return 1
    [ "$(kubectl get clusterrolebinding "berth:registry:default:$name" -o jsonpath='{.roleRef.name}')" = system:auth-delegator ] ||
      return 1
  done
  # More than one replica (images on ReadWriteMany, objects on S3) gets a budget;
  # the S3 Registry gets no claim.
  kubectl -n default get poddisruptionbudget images objects >/dev/null &&
    ! kubectl -n default get poddisruptionbudget registry >/dev/null 2>&1 &&
    ! kubectl -n default get pvc objects-data >/dev/null 2>&1 &&
    kubectl -n default get daemonset local-node-access >/dev/null &&
    [ "$(kubectl -n default get daemonset mirror-node-access -o jsonpath='{.spec.template.spec.containers[*].name}')" = "forward containerd-mirrors" ] &&
    kubectl -n kube-public get configmap local-registry-hosting >/dev/null &&
    kubectl -n berth-system get lease berth-operator >/dev/null &&
    [ "$(kubectl -n default get servicemonitors.monitoring.coreos.com watched -o jsonpath='{.spec.endpoints[0].port}')" = metrics ] &&
    [ "$(kubectl -n default get service watched-metrics -o jsonpath='{.spec.type}')" = ClusterIP ] &&
    [ "$(kubectl -n default get service watched -o jsonpath='{.spec.ports[*].name}')" = http ] &&
    ! grep -qi forbidden "$work/operator.log"
}
check "the operator reconciles the examples under its ServiceAccount" examples_reconcile

examples_delete() {
  # The finalizer runs under the ServiceAccount too: deletion must complete.
  kubectl delete -f manifests/examples/ --wait=true --timeout=60s >/dev/null &&
    ! kubectl -n kube-public get configmap local-registry-hosting >/dev/null 2>&1 &&
    [ "$(kubectl get clusterrolebindings -o name | grep -c 'berth:registry:')" = 0 ] &&
    ! grep -qi forbidden "$work/operator.log"
}
check "deleting the examples runs their finalizers under the ServiceAccount" examples_delete

echo "manifests: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
