#!/usr/bin/env bash
# berth on a real node: the control plane with a kubelet, containerd, kube-proxy and
# CoreDNS (tests/controlplane/up --node). The berth image is built from the release
# binaries and pushed to the node's bootstrap registry; then the install manifests
# (operator Deployment included) and a Registry are applied as a user would, images
# are pushed and pulled back, pods run from them through node access, a config
# change rolls the registry, kill -9 of the registry loses nothing acknowledged, and
# deletion cleans up per the retention policy.
set -euo pipefail
# shellcheck source=tests/lib/common.sh
source "$(dirname "$0")/lib/common.sh"
# shellcheck source=tests/lib/procs.sh
source "$(dirname "$0")/lib/procs.sh"
cd "$REPO_ROOT"
apt_install apache2-utils
# Fixed paths a node writes to; those absent now must be absent after teardown.
fixed_paths=(/var/lib/kubelet /run/containerd /var/lib/cni /var/log/containers)
absent_before=()
for p in "${fixed_paths[@]}"; do [ -e "$p" ] || absent_before+=("$p"); done

work=$(mktemp -d)
pf_pid=""
upstream_pid=""
cleanup() {
  [ -n "$pf_pid" ] && kill "$pf_pid" 2>/dev/null
  [ -n "$upstream_pid" ] && kill "$upstream_pid" 2>/dev/null
  tests/controlplane/down "$work/cp" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

started=$(date +%s)
cp_env=$(BERTH_CP_OWNER_PID=$$ tests/controlplane/up --node "$work/cp")
eval "$cp_env"
echo "control plane and node up in $(( $(date +%s) - started ))s"
read -r netns gw_netns <"$work/cp/node/netns"
cgroup_root=$(cat "$work/cp/node/cgroup-root")
# Processes of the node's pods (in its pod cgroups) whose command line matches PATTERN.
pod_pids() {
  local p
  for p in $(pgrep -f "$1"); do grep -q ":$cgroup_root/" "/proc/$p/cgroup" 2>/dev/null && echo "$p"; done
}
in_node() { nsenter --net="/run/netns/$netns" "$@"; }
copy=(skopeo copy -q --src-tls-verify=false --dest-tls-verify=false --preserve-digests)
rel="$CARGO_TARGET_DIR/release"
image=localhost:5000/berth:test

# The berth image: both release binaries and the shared libraries they load.
build_image() {
  local args=(--out "$work/berth-image" --user 65532:65532)
  local lib
  args+=(--file "$rel/berth-registry:/usr/local/bin/berth-registry" --file "$rel/berth-operator:/usr/local/bin/berth-operator")
  for lib in $(ldd "$rel/berth-registry" "$rel/berth-operator" | awk '$3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u); do
    args+=(--file "$lib:$lib")
  done
  python3 tests/node/mkimage.py "${args[@]}" && in_node "${copy[@]}" "oci:$work/berth-image" "docker://$image"
}
check "the berth image is built and pushed to the node's registry" build_image

install_runs() {
  # The operator's image and its --registry-image, as a user pointing at their own build.
  sed "s|[[:space:]]berth:0.1.0\$| $image|" manifests/install.yaml |
    kubectl apply --server-side -f - >/dev/null || return 1
  if ! kubectl -n berth-system rollout status deploy/berth-operator --timeout=180s >/dev/null; then
    kubectl -n berth-system describe pods; return 1
  fi
}
check "install.yaml: the operator Deployment runs from the image" install_runs

registry_ready() { # NAME: Ready with one ready replica
  kubectl wait --for=condition=Ready "registry/$1" --timeout=180s >/dev/null || {
    kubectl get registry "$1" -o yaml; kubectl describe pods; kubectl -n berth-system logs deploy/berth-operator --tail 30; return 1; }
  [ "$(kubectl get registry "$1" -o 'jsonpath={.status.readyReplicas}')" = 1 ]
}
minimal_ready() {
  kubectl apply -f manifests/examples/minimal.yaml >/dev/null && registry_ready registry &&
    kubectl get registry registry | tee "$work/get-reg" && grep -q True "$work/get-reg"
}
check "examples/minimal.yaml: the Registry is Ready with 1 ready replica" minimal_ready

# The minimal Registry lets no stranger in: CI pushes with a ServiceAccount token of
# namespace `team` (repositories team/...), bound to the shipped berth-push role; the
# registry pod checks it with a TokenReview and a SubjectAccessReview of its own.
identities() {
  local audience
  audience=$(kubectl get registry registry -o 'jsonpath={.status.audience}')
  [ "$audience" = berth.dev/default/registry ] || { echo "status.audience is '$audience'"; return 1; }
  kubectl create namespace team >/dev/null && kubectl -n team create serviceaccount ci >/dev/null &&
    kubectl -n team create rolebinding ci-push --clusterrole=berth-push --serviceaccount=team:ci >/dev/null &&
    token=$(kubectl -n team create token ci --audience "$audience" --duration 2h) &&
    acopy=("${copy[@]}" --src-creds "ci:$token" --dest-creds "ci:$token")
}
check "a ServiceAccount of namespace team gets a token for the Registry's audience" identities

svc=$(kubectl get svc registry -o 'jsonpath={.spec.clusterIP}'):5000
# A pod that just became Ready is behind the Service IP once kube-proxy has synced.
service_up() {
  for _ in $(seq 1 100); do in_node curl -fsS -o /dev/null "http://$svc/healthz" 2>/dev/null && return 0; sleep 0.2; done
  echo "the Service $svc does not answer"; return 1
}
# Test images: busybox, which prints what it is told; a multi-arch index of it.
mkimg() { # DIR [--arch A ...]
  local dir=$1 links=() cmd; shift
  for cmd in sh echo sleep cat; do links+=(--link "/bin/$cmd:busybox"); done
  python3 tests/node/mkimage.py --out "$dir" --file /bin/busybox:/bin/busybox "${links[@]}" "$@"
}
blob_sums() { (cd "$1/blobs" && find . -type f -print0 | sort -z | xargs -0 sha256sum); }

push_and_pull_back() {
  service_up || return 1
  mkimg "$work/app" || return 1
  ! in_node "${copy[@]}" "oci:$work/app" "docker://$svc/team/app:1" 2>"$work/anon.err" || { echo "an anonymous push was taken"; return 1; }
  grep -qi unauthorized "$work/anon.err" || { cat "$work/anon.err"; return 1; }
  in_node "${acopy[@]}" "oci:$work/app" "docker://$svc/team/app:1" || return 1
  # Back through kubectl port-forward: API server -> egress proxy -> kubelet -> pod.
  kubectl port-forward svc/registry :5000 >"$work/pf.log" 2>&1 &
  pf_pid=$!
  local port=""
  for _ in $(seq 1 100); do
    port=$(sed -n 's/^Forwarding from 127.0.0.1:\([0-9]*\).*/\1/p' "$work/pf.log")
    [ -n "$port" ] && break; sleep 0.1
  done
  [ -n "$port" ] || { cat "$work/pf.log"; return 1; }
  "${acopy[@]}" "docker://127.0.0.1:$port/team/app:1" "oci:$work/app-back" || return 1
  kill "$pf_pid"; pf_pid=""
  diff <(blob_sums "$work/app") <(blob_sums "$work/app-back")
}
check "an image pushed through the Service is pulled back byte-exact (port-forward)" push_and_pull_back

pod_runs() { # NAME IMAGE: the pod (pulling with the secret `pull`) is Running and its log shows the program ran
  kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: $1, namespace: default}
spec:
  imagePullSecrets: [{name: pull}]
  containers:
  - {name: app, image: "$2", command: [sh, -c, "echo $1 ran; sleep 3600"]}
YAML
  kubectl wait --for=condition=Ready "pod/$1" --timeout=120s >/dev/null || { kubectl describe pod "$1"; return 1; }
  [ "$(kubectl logs "$1")" = "$1 ran" ]
}

node_access() {
  kubectl patch registry registry --type merge -p '{"spec":{"nodeAccess":{"enabled":true,"port":5001}}}' >/dev/null ||
    return 1
  # The operator creates the DaemonSet on its next reconcile; rollout status fails on one not there yet.
  for _ in $(seq 1 60); do kubectl get daemonset registry-node-access >/dev/null 2>&1 && break; sleep 1; done
  if ! kubectl rollout status daemonset/registry-node-access --timeout=120s >/dev/null; then
    kubectl get ds -o wide; kubectl describe pods -l app.kubernetes.io/component=node-access; return 1
  fi
  kubectl -n kube-public get configmap local-registry-hosting -o 'jsonpath={.data.localRegistryHosting\.v1}' | grep -q 'localhost:5001' &&
    kubectl create secret docker-registry pull --docker-server=localhost:5001 --docker-username=ci \
      --docker-password="$token" >/dev/null &&
    pod_runs from-node-access localhost:5001/team/app:1
}
check "node access: a pod with an imagePullSecrets token runs from localhost:5001/team/app:1" node_access

# Anonymous pull is off by default: the same image without the secret fails to pull.
no_secret_no_pull() {
  kubectl run no-secret --image localhost:5001/team/app:1 --restart Never --command -- sh -c 'echo ran' >/dev/null ||
    return 1
  local reason=""
  for _ in $(seq 1 60); do
    reason=$(kubectl get pod no-secret -o 'jsonpath={.status.containerStatuses[0].state.waiting.reason}')
    case "$reason" in ErrImagePull | ImagePullBackOff) break ;; esac
    sleep 1
  done
  kubectl get events --field-selector involvedObject.name=no-secret -o 'jsonpath={.items[*].message}' >"$work/no-secret.events"
  kubectl delete pod no-secret --wait=false >/dev/null
  case "$reason" in ErrImagePull | ImagePullBackOff) ;; *) echo "pod state: '$reason'"; return 1 ;; esac
  grep -qi 'no basic auth credentials\|unauthorized\|401' "$work/no-secret.events" || { cat "$work/no-secret.events"; return 1; }
}
check "node access: a pod without the secret fails with ErrImagePull (no credentials for the challenge)" no_secret_no_pull

multi_arch() {
  mkimg "$work/multi" --arch amd64 --arch arm64 &&
    in_node "${acopy[@]}" --all "oci:$work/multi" "docker://$svc/team/multi:1" &&
    [ "$(in_node skopeo inspect --raw --tls-verify=false --creds "ci:$token" "docker://$svc/team/multi:1" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["manifests"]))')" = 2 ] &&
    pod_runs from-index localhost:5001/team/multi:1
}
check "node access: a pod runs from a multi-arch index pushed with skopeo --all" multi_arch

reg_field() { kubectl get registry registry -o "jsonpath={$1}"; }
# The storage lifecycle from inside the cluster: the registry pod (its own ServiceAccount,
# held to the operator's Role) publishes its usage into the status, reads the images the
# running pods use, and collects on demand without touching them.
lifecycle_in_cluster() {
  local manifests="" protected request
  for _ in $(seq 1 90); do
    manifests=$(reg_field .status.usage.manifests)
    [ "${manifests:-0}" -ge 3 ] && break; sleep 1
  done
  [ "${manifests:-0}" -ge 3 ] || { echo "status.usage.manifests is '$manifests'"; kubectl logs deploy/registry --tail 20; return 1; }
  kubectl get registry registry | head -1 | grep -q USED || return 1
  protected=$(kubectl get configmap registry-gc-requests -o 'jsonpath={.data.protected}')
  if ! grep -qx 'team/app:1' <<<"$protected" || ! grep -qx 'team/multi:1' <<<"$protected"; then
    echo "protected: $protected"; return 1
  fi
  request=node-$(date +%s)
  kubectl annotate registry registry "berth.dev/collect=$request" --overwrite >/dev/null || return 1
  for _ in $(seq 1 60); do [ "$(reg_field .status.lastCollection.request)" = "$request" ] && break; sleep 1; done
  [ "$(reg_field .status.lastCollection.request)" = "$request" ] || { reg_field .status; kubectl logs deploy/registry --tail 20; return 1; }
  [ -z "$(reg_field .status.lastCollection.error)" ] && [ "$(reg_field .status.lastCollection.protectedKept)" -ge 0 ] &&
    reg_field '.status.conditions[?(@.type=="StoragePressure")].status' | grep -qx 'False\|True' &&
    in_node skopeo inspect --raw --tls-verify=false --creds "ci:$token" "docker://$svc/team/app:1" >/dev/null
}
check "lifecycle: the registry pod reports usage to the status, sees the running pods' images, collects on demand" \
  lifecycle_in_cluster

# Pull-through on the node: an upstream Distribution in the gateway's namespace (the
# node's default route) with TLS from its own CA and Basic auth, mirrored under the
# prefix `up`; with containerdMirrors the node's containerd pulls `<upstream>/app:v1`
# through localhost:5001/v2/up/..., so the registry fetches it once and serves it after.
upstream_blob_gets() { grep -cE '"GET /v2/app/blobs/sha256:[0-9a-f]{64} HTTP/[0-9.]+" 20[06] ' "$work/upstream/access.log"; }
start_upstream() { # HOST:PORT
  local dir="$work/upstream" ip=${1%:*}
  mkdir -p "$dir/certs.d" && htpasswd -bBc "$dir/htpasswd" mirror upstream-secret 2>/dev/null &&
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=upstream-ca -days 1 \
      -keyout "$dir/ca.key" -out "$dir/certs.d/ca.crt" 2>/dev/null &&
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=upstream \
      -keyout "$dir/tls.key" -out "$dir/tls.csr" 2>/dev/null &&
    openssl x509 -req -in "$dir/tls.csr" -CA "$dir/certs.d/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial -days 1 \
      -extfile <(printf 'subjectAltName=IP:%s\n' "$ip") -out "$dir/tls.crt" 2>/dev/null || return 1
  cat >"$dir/config.yml" <<YAML
version: 0.1
log: {level: info, accesslog: {disabled: false}}
storage: {filesystem: {rootdirectory: $dir/data}}
http: {addr: "$1", secret: node-test, tls: {certificate: $dir/tls.crt, key: $dir/tls.key}}
auth: {htpasswd: {realm: upstream, path: $dir/htpasswd}}
YAML
  nsenter --net="/run/netns/$gw_netns" "$(go_tool registry)" serve "$dir/config.yml" >"$dir/access.log" 2>"$dir/registry.log" &
  upstream_pid=$!
  for _ in $(seq 1 50); do
    in_node curl -fsS --cacert "$dir/certs.d/ca.crt" -u mirror:upstream-secret -o /dev/null "https://$1/v2/" 2>/dev/null && break
    sleep 0.2
  done
  # A layer of its own: blobs the node already holds from earlier pods would not be fetched at all.
  head -c 262144 /dev/urandom >"$dir/own.bin" && mkimg "$work/upapp" --file "$dir/own.bin:/data" >/dev/null &&
    in_node skopeo copy -q --dest-cert-dir "$dir/certs.d" --dest-creds mirror:upstream-secret "oci:$work/upapp" "docker://$1/app:v1"
}
mirror_on_node() {
  local host=10.250.0.1:5443 certs="$work/cp/node/containerd/certs.d" ctr digest before
  ctr=("$(bash tests/node/build.sh)/ctr" --address "$work/cp/node/containerd/containerd.sock" -n k8s.io)
  start_upstream "$host" || { cat "$work/upstream/registry.log"; return 1; }
  kubectl create secret generic upstream-creds --from-literal=username=mirror --from-literal=password=upstream-secret >/dev/null &&
    kubectl create secret generic upstream-ca --from-file=ca.crt="$work/upstream/certs.d/ca.crt" >/dev/null || return 1
  # containerd sends no credentials to a mirror host: anonymous clients may pull.
  kubectl patch registry registry --type merge -p "$(printf '{"spec":{"auth":{"anonymous":"pull"},
    "mirrors":[{"prefix":"up","url":"https://%s","imageHost":"%s","credentialsSecret":{"name":"upstream-creds"},"caSecret":{"name":"upstream-ca"}}],
    "nodeAccess":{"containerdMirrors":{"enabled":true,"certsDir":"%s"}}}}' "$host" "$host" "$certs")" >/dev/null || return 1
  for _ in $(seq 1 120); do [ -f "$certs/$host/hosts.toml" ] && break; sleep 1; done
  [ -f "$certs/$host/hosts.toml" ] || { kubectl describe pods -l app.kubernetes.io/component=node-access; return 1; }
  grep -q 'Written by berth for Registry default/registry' "$certs/$host/hosts.toml" || return 1
  # The node pods roll after the registry's Deployment was changed: wait for its new pod.
  kubectl rollout status deployment/registry --timeout=120s >/dev/null && registry_ready registry && service_up || return 1
  pod_runs mirrored-1 "$host/app:v1" || { kubectl logs deploy/registry --tail 20; return 1; }
  before=$(upstream_blob_gets)
  [ "$before" -ge 1 ] || { echo "the upstream served no blob:"; tail -5 "$work/upstream/access.log"; return 1; }
  # Gone from the node's store, so the next pod pulls it again: from the registry's cache.
  digest=$(kubectl get pod mirrored-1 -o 'jsonpath={.status.containerStatuses[0].imageID}') && digest=${digest##*@}
  kubectl delete pod mirrored-1 --wait=true >/dev/null || return 1
  mapfile -t refs < <("${ctr[@]}" images ls 2>/dev/null | awk -v d="$digest" '$3 == d {print $1}')
  if [ ${#refs[@]} -eq 0 ] || ! "${ctr[@]}" images rm --sync "${refs[@]}" >/dev/null 2>&1; then
    echo "image $digest not removed"
    return 1
  fi
  pod_runs mirrored-2 "$host/app:v1" || return 1
  [ "$(upstream_blob_gets)" = "$before" ] || { echo "the upstream served blobs again: $before, then $(upstream_blob_gets)"; return 1; }
  # The running pod names the upstream, not the registry: kept from the collector under the prefix all the same.
  for _ in $(seq 1 30); do
    kubectl get configmap registry-gc-requests -o 'jsonpath={.data.protected}' | grep -qx 'up/app:v1' && break; sleep 1
  done
  kubectl get configmap registry-gc-requests -o 'jsonpath={.data.protected}' | grep -qx 'up/app:v1' ||
    { echo "up/app:v1 not protected"; return 1; }
  kubectl delete pod mirrored-2 --wait=false >/dev/null
  # Off: the node pods roll and the old ones remove their files, and only theirs.
  kubectl patch registry registry --type merge -p '{"spec":{"nodeAccess":{"containerdMirrors":{"enabled":false}}}}' >/dev/null || return 1
  for _ in $(seq 1 120); do [ ! -e "$certs/$host" ] && break; sleep 1; done
  [ ! -e "$certs/$host" ] || { echo "$certs/$host left"; return 1; }
  [ -f "$certs/localhost:5000/hosts.toml" ] || { echo "the node's own hosts.toml was removed"; return 1; }
  echo "upstream blob GETs: $before for the first pull, none for the second"
}
pull_through_on_node() {
  local rc=0
  mirror_on_node || rc=1
  kill "$upstream_pid" 2>/dev/null; wait "$upstream_pid" 2>/dev/null; upstream_pid=""
  return $rc
}
check "mirrors: a pod runs from a TLS+Basic upstream through the node's hosts.toml; the next pull is the cache's; it is protected" \
  pull_through_on_node

# A second Registry with htpasswd users and TLS from Secrets: the Secret volumes
# (nested in the config volume) reach the pod, its probes pass, and skopeo
# pushes over HTTPS, trusting the test CA, as an htpasswd user only.
refused_401() { # COMMAND...: fails, saying unauthorized
  if "$@" 2>"$work/refused.err"; then return 1; fi
  grep -qi unauthorized "$work/refused.err" || { cat "$work/refused.err"; return 1; }
}
secure_registry() {
  local dir="$work/secure" ip=""
  mkdir -p "$dir/certs.d" && htpasswd -bBc "$dir/htpasswd" alice wonderland 2>/dev/null || return 1
  kubectl apply -f - >/dev/null <<YAML || return 1
apiVersion: berth.dev/v1alpha1
kind: Registry
metadata: {name: secure, namespace: default}
spec:
  auth: {htpasswd: {secretName: secure-users}}
  tls: {secretName: secure-tls}
YAML
  # The certificate names the Service IP, known once the operator made the Service.
  for _ in $(seq 1 60); do ip=$(kubectl get svc secure -o 'jsonpath={.spec.clusterIP}' 2>/dev/null) && [ -n "$ip" ] && break; sleep 1; done
  [ -n "$ip" ] || { echo "no Service"; return 1; }
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=test-ca -days 1 \
    -keyout "$dir/ca.key" -out "$dir/certs.d/ca.crt" 2>/dev/null &&
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=secure \
      -keyout "$dir/tls.key" -out "$dir/tls.csr" 2>/dev/null &&
    openssl x509 -req -in "$dir/tls.csr" -CA "$dir/certs.d/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial -days 1 \
      -extfile <(printf 'subjectAltName=IP:%s,DNS:secure.default.svc\n' "$ip") -out "$dir/tls.crt" 2>/dev/null &&
    kubectl create secret generic secure-users --from-file=htpasswd="$dir/htpasswd" >/dev/null &&
    kubectl create secret tls secure-tls --cert="$dir/tls.crt" --key="$dir/tls.key" >/dev/null || return 1
  registry_ready secure || return 1
  # Verified HTTPS through the Service IP, once kube-proxy has synced it.
  for _ in $(seq 1 100); do
    in_node curl -fsS --cacert "$dir/certs.d/ca.crt" -o /dev/null "https://$ip:5000/healthz" 2>/dev/null && break; sleep 0.2
  done
  local to="docker://$ip:5000/team/app:1" sk=(skopeo copy -q --preserve-digests --dest-cert-dir "$dir/certs.d")
  refused_401 in_node "${sk[@]}" "oci:$work/app" "$to" || { echo "an anonymous push was not refused with 401"; return 1; }
  refused_401 in_node "${sk[@]}" --dest-creds alice:wrong "oci:$work/app" "$to" ||
    { echo "a wrong password was not refused with 401"; return 1; }
  in_node "${sk[@]}" --dest-creds alice:wonderland "oci:$work/app" "$to" &&
    in_node skopeo copy -q --src-cert-dir "$dir/certs.d" --src-creds alice:wonderland "$to" "oci:$work/secure-back" &&
    diff <(blob_sums "$work/app") <(blob_sums "$work/secure-back")
}
htpasswd_and_tls() {
  local rc=0
  secure_registry || rc=1
  # Gone, whatever happened, before the kill -9 check looks for the registry's process.
  kubectl delete registry secure --timeout=120s >/dev/null || rc=1
  for _ in $(seq 1 60); do [ -z "$(kubectl get pods -l app.kubernetes.io/instance=secure -o name)" ] && return $rc; sleep 1; done
  echo "the secure Registry's pods are still there"; return 1
}
check "a Registry with htpasswd and TLS Secrets: the pod gets ready, skopeo pushes over verified HTTPS as an htpasswd user" \
  htpasswd_and_tls

registry_pod() { kubectl get pods -l app.kubernetes.io/instance=registry,!app.kubernetes.io/component -o 'jsonpath={.items[0].metadata.name}'; }
all_images_intact() {
  service_up || return 1
  in_node "${acopy[@]}" "docker://$svc/team/app:1" "oci:$work/check-$1" || return 1
  diff <(blob_sums "$work/app") <(blob_sums "$work/check-$1")
}
config_change_rolls() {
  local before after
  before=$(registry_pod)
  kubectl patch registry registry --type merge -p '{"spec":{"manifests":{"docker":{"schema1":true}}}}' >/dev/null || return 1
  for _ in $(seq 1 120); do
    after=$(registry_pod 2>/dev/null)
    [ -n "$after" ] && [ "$after" != "$before" ] && break; sleep 1
  done
  [ "$after" != "$before" ] || { echo "the registry pod did not roll"; return 1; }
  kubectl wait --for=condition=Ready "pod/$after" --timeout=120s >/dev/null && registry_ready registry && kubectl get configmap registry-config -o yaml | grep -q 'schema1: true' &&
    all_images_intact rolled
}
check "a spec.manifests change rolls the pod; the images survive on the claim" config_change_rolls

kill_9_loses_nothing() {
  local pod pid acked=() i
  pod=$(registry_pod)
  # Pushes of distinct images (a random 256 KiB file each) go on while the registry
  # is killed; every acknowledged one must survive.
  : >"$work/acked"
  (for i in $(seq 1 60); do
     head -c 262144 /dev/urandom >"$work/k$i.bin"
     mkimg "$work/k$i" --file "$work/k$i.bin:/data" >/dev/null 2>&1 && in_node "${acopy[@]}" --retry-times 0 "oci:$work/k$i" "docker://$svc/team/k:$i" 2>/dev/null &&
       echo "$i" >>"$work/acked"
   done) &
  local loop=$!
  for _ in $(seq 1 300); do [ "$(wc -l <"$work/acked")" -ge 5 ] && break; sleep 0.1; done
  pid=$(pod_pids '^berth-registry --config /etc/berth/' | head -1)
  [ -n "$pid" ] || { echo "no registry process"; pkill -P "$loop"; kill "$loop"; return 1; }
  kill -0 "$loop" || { echo "the pushes ended before the kill"; return 1; }
  kill -9 "$pid"
  wait "$loop"
  for _ in $(seq 1 120); do
    [ "$(kubectl get pod "$pod" -o 'jsonpath={.status.containerStatuses[0].restartCount}')" -ge 1 ] && break; sleep 1
  done
  [ "$(kubectl get pod "$pod" -o 'jsonpath={.status.containerStatuses[0].restartCount}')" -ge 1 ] || return 1
  kubectl wait --for=condition=Ready "pod/$pod" --timeout=120s >/dev/null || return 1
  service_up || return 1
  mapfile -t acked <"$work/acked"
  echo "$(wc -l <"$work/acked") pushes acknowledged around the kill"
  [ ${#acked[@]} -gt 0 ] || return 1
  # Retries: what is checked is that no acknowledged image is lost, not that the
  # Service never blinks while the restarted pod settles.
  for i in "${acked[@]}"; do
    if ! in_node "${acopy[@]}" --retry-times 3 "docker://$svc/team/k:$i" "oci:$work/kback$i" ||
      ! diff <(blob_sums "$work/k$i") <(blob_sums "$work/kback$i") >/dev/null; then
      kubectl get pod "$pod" -o 'jsonpath={.status.containerStatuses[0].restartCount}{" restarts\n"}'
      echo "lost team/k:$i"; return 1
    fi
  done
  all_images_intact killed
}
check "kill -9 of the registry in its pod: restarted, no acknowledged image lost" kill_9_loses_nothing

delete_cleans_up() {
  kubectl delete registry registry --timeout=120s >/dev/null || return 1
  for _ in $(seq 1 60); do
    [ -z "$(kubectl get pods -l app.kubernetes.io/instance=registry -o name)" ] && break; sleep 1
  done
  [ -z "$(kubectl get pods -l app.kubernetes.io/instance=registry -o name)" ] || { echo "pods left"; return 1; }
  ! kubectl get daemonset registry-node-access >/dev/null 2>&1 || { echo "DaemonSet left"; return 1; }
  ! kubectl -n kube-public get configmap local-registry-hosting >/dev/null 2>&1 || { echo "ConfigMap left"; return 1; }
  ! kubectl get clusterrolebinding berth:registry:default:registry >/dev/null 2>&1 || { echo "review binding left"; return 1; }
  kubectl get pvc registry-data >/dev/null || { echo "claim with retentionPolicy Retain was deleted"; return 1; }
  kubectl apply -f - >/dev/null <<YAML
apiVersion: berth.dev/v1alpha1
kind: Registry
metadata: {name: scratch, namespace: default}
spec: {storage: {retentionPolicy: Delete}}
YAML
  registry_ready scratch && kubectl get pvc scratch-data >/dev/null &&
    kubectl delete registry scratch --timeout=120s >/dev/null || return 1
  for _ in $(seq 1 60); do kubectl get pvc scratch-data >/dev/null 2>&1 || return 0; sleep 1; done
  echo "claim with retentionPolicy Delete still there"; return 1
}
check "deleting a Registry removes pods, DaemonSet and ConfigMap; the claim follows retention" delete_cleans_up

teardown_leaves_nothing() {
  local cp="$work/cp" left p ns pids
  # The pods still running (operator, node access, test pods) and their shims.
  mapfile -t pids < <(pod_pids .; pgrep -f "containerd-shim-runc-v2 .*-address $cp/")
  [ ${#pids[@]} -gt 3 ] || { echo "expected running pods to watch, found ${#pids[@]} processes"; return 1; }
  tests/controlplane/down "$cp"
  for p in "${pids[@]}"; do pid_alive "$p" && { echo "process $p left: $(tr '\0' ' ' <"/proc/$p/cmdline")"; return 1; }; done
  left=$(pgrep -af "$cp/" || true)
  [ -z "$left" ] || { echo "processes left: $left"; return 1; }
  ! grep -q " $cp/" /proc/self/mountinfo || { echo "mounts left"; return 1; }
  ! ls -d /sys/fs/cgroup/*/"${cgroup_root#/}" 2>/dev/null || { echo "cgroups left"; return 1; }
  for ns in "$netns" "$gw_netns"; do ! ip netns list | grep -qw "$ns" || { echo "netns $ns left"; return 1; }; done
  for p in "${absent_before[@]}"; do [ ! -e "$p" ] || { echo "$p left"; return 1; }; done
}
check "teardown leaves no process, mount, cgroup, namespace or file" teardown_leaves_nothing

echo "node e2e took $(( $(date +%s) - started ))s"
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
