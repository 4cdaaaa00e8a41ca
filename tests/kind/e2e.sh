#!/usr/bin/env bash
# End to end on a real cluster, for machines with Docker and kind (it cannot run on
# the project's CI machines, which have no container engine): creates a kind
# cluster, builds and loads the berth image, installs with `kubectl apply -k
# manifests/`, creates a Registry with node access, waits for it to be Ready,
# pushes an image from the host through a port-forward, runs a pod whose image
# comes from the in-cluster registry through localhost:<node port>, and deletes
# the cluster. Needs docker, kind, kubectl; CLUSTER names the cluster.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
cluster="${CLUSTER:-berth-e2e}"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)"
image="berth:$version"
node_port=5001
forward_port=15000
pf_pid=""

cleanup() {
  if [ -n "$pf_pid" ]; then kill "$pf_pid" 2>/dev/null || true; fi
  kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
}
trap cleanup EXIT

for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 2; }
done

kind create cluster --name "$cluster" --wait 180s
kubectl config use-context "kind-$cluster" >/dev/null

docker build -t "$image" "$root"
kind load docker-image "$image" --name "$cluster"

kubectl apply -k "$root/manifests"
kubectl -n berth-system rollout status deployment/berth-operator --timeout=180s

# Node access needs host networking, which the namespace must allow.
kubectl create namespace images
kubectl label namespace images pod-security.kubernetes.io/enforce=privileged
kubectl apply -f - <<YAML
apiVersion: berth.dev/v1alpha1
kind: Registry
metadata: {name: registry, namespace: images}
spec:
  storage: {size: 2Gi}
  nodeAccess: {enabled: true, port: $node_port}
  auth: {anonymous: pull}        # nodes pull without credentials; pushes need a token
YAML
kubectl -n images wait --for=condition=Ready registry/registry --timeout=300s
kubectl -n images rollout status daemonset/registry-node-access --timeout=180s
kubectl -n kube-public get configmap local-registry-hosting -o jsonpath='{.data.localRegistryHosting\.v1}'

# Push from the host through a port-forward (docker allows plain HTTP to localhost).
kubectl -n images port-forward service/registry "$forward_port:5000" >/dev/null &
pf_pid=$!
for _ in $(seq 1 50); do
  curl -fsS "http://localhost:$forward_port/healthz" >/dev/null 2>&1 && break
  sleep 0.2
done
# Pushing to demo/... needs push rights in namespace demo.
kubectl create namespace demo
kubectl -n demo create serviceaccount ci
kubectl -n demo create rolebinding ci-push --clusterrole=berth-push --serviceaccount=demo:ci
kubectl -n demo create token ci --audience "$(kubectl -n images get registry registry -o jsonpath='{.status.audience}')" |
  docker login "localhost:$forward_port" -u ci --password-stdin
docker tag "$image" "localhost:$forward_port/demo/berth:$version"
docker push "localhost:$forward_port/demo/berth:$version"

# A pod on a node pulls it from the in-cluster registry through node access.
kubectl run from-registry --restart=Never --image="localhost:$node_port/demo/berth:$version" \
  --command -- berth-registry --version
kubectl wait --for=jsonpath='{.status.phase}'=Succeeded pod/from-registry --timeout=180s
kubectl logs pod/from-registry | grep -q berth-registry
echo "kind e2e: 1 passed, 0 failed"
