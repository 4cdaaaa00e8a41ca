#!/usr/bin/env bash
# Real clients against a berth-registry process (on a directory, and again on a
# real S3 server, MinIO, for the round trips): skopeo copies a multi-arch OCI
# index (--all) and a Docker schema2 image and manifest list out and back in with
# digests preserved; crane pushes, lists, copies and deletes; oras pushes and pulls
# an artifact, attaches a signature and finds it through the referrers API.
# Then access control, with the same clients and podman: a registry that requires
# htpasswd users, and one that takes Kubernetes ServiceAccount tokens, checked by
# a real kube-apiserver (TokenReview), with pushes decided by RoleBindings
# (SubjectAccessReview).
set -euo pipefail
# shellcheck source=tests/lib/common.sh
source "$(dirname "$0")/lib/common.sh"

apt_install skopeo curl jq apache2-utils podman
crane=$(go_tool crane)
oras=$(go_tool oras)
work=$(mktemp -d)
FORWARD_PID=""
PIDS=()  # every registry started here
cleanup() {
  local pid
  [ -n "$FORWARD_PID" ] && kill "$FORWARD_PID" 2>/dev/null
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
  [ -d "$work/cp" ] && "$REPO_ROOT/tests/controlplane/down" "$work/cp" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT
start_registry "$work/data"
PIDS+=("$REGISTRY_PID")
R=$REGISTRY
sk=(skopeo --insecure-policy)
export HOME="$work/home"   # keep client credentials/config out of the user's home
mkdir -p "$HOME"

layer() { # name content -> tarball path
  mkdir -p "$work/src-$1" && printf '%s' "$2" >"$work/src-$1/$1.txt"
  tar -C "$work/src-$1" -cf "$work/$1.tar" "$1.txt" && echo "$work/$1.tar"
}

# push_oci_index REPO TAG IMAGE...: a plain OCI index of the images, with their
# platforms (skopeo 1.9 cannot copy the descriptor fields crane's index adds).
push_oci_index() {
  local repo=$1 tag=$2; shift 2
  local entries=() image
  for image in "$@"; do
    entries+=("$("$crane" manifest "$image" | wc -c) $("$crane" digest "$image") $("$crane" config "$image" | python3 -c 'import json,sys; c=json.load(sys.stdin); print(c["os"], c["architecture"])')")
  done
  printf '%s\n' "${entries[@]}" | python3 -c '
import json, sys
manifests = []
for line in sys.stdin:
    size, digest, os_, arch = line.split()
    manifests.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": int(size),
                      "digest": digest, "platform": {"os": os_, "architecture": arch}})
json.dump({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}, sys.stdout)
' >"$work/index.json"
  curl -fsS -X PUT -H 'Content-Type: application/vnd.oci.image.index.v1+json' \
    --data-binary @"$work/index.json" "http://$R/v2/$repo/manifests/$tag" >/dev/null
}

same_digest() { [ "$("$crane" digest "$1")" = "$("$crane" digest "$2")" ]; }

build_images() {
  for arch in amd64 arm64; do
    "$crane" append --oci-empty-base -f "$(layer "oci-$arch" "oci $arch")" -t "$R/src/oci:$arch" >/dev/null
    "$crane" mutate --set-platform "linux/$arch" -t "$R/src/oci:$arch" "$R/src/oci:$arch" >/dev/null
    "$crane" append -f "$(layer "docker-$arch" "docker $arch")" -t "$R/src/docker:$arch" >/dev/null
    "$crane" mutate --set-platform "linux/$arch" -t "$R/src/docker:$arch" "$R/src/docker:$arch" >/dev/null
  done
  push_oci_index src/oci multi "$R/src/oci:amd64" "$R/src/oci:arm64"
  "$crane" index append --docker-empty-base -m "$R/src/docker:amd64" -m "$R/src/docker:arm64" -t "$R/src/docker:multi" >/dev/null
  "$crane" manifest "$R/src/oci:multi" | grep -q 'application/vnd.oci.image.index.v1+json' &&
    "$crane" manifest "$R/src/docker:multi" | grep -q 'application/vnd.docker.distribution.manifest.list.v2+json' &&
    "$crane" manifest "$R/src/docker:amd64" | grep -q 'application/vnd.docker.distribution.manifest.v2+json'
}

skopeo_oci_index_round_trip() {
  "${sk[@]}" copy -q --all --preserve-digests --src-tls-verify=false "docker://$R/src/oci:multi" "oci:$work/layout:multi" &&
    "${sk[@]}" copy -q --all --preserve-digests --dest-tls-verify=false "oci:$work/layout:multi" "docker://$R/copy/oci:multi" &&
    same_digest "$R/src/oci:multi" "$R/copy/oci:multi" &&
    same_digest "$R/src/oci:arm64" "$R/copy/oci@$("$crane" digest "$R/src/oci:arm64")" &&
    [ "$("$crane" export --platform linux/arm64 "$R/copy/oci:multi" - | tar -xO oci-arm64.txt)" = "oci arm64" ]
}

skopeo_docker_round_trip() {
  "${sk[@]}" copy -q --all --preserve-digests --src-tls-verify=false "docker://$R/src/docker:multi" "dir:$work/dir-list" &&
    "${sk[@]}" copy -q --all --preserve-digests --dest-tls-verify=false "dir:$work/dir-list" "docker://$R/copy/docker:multi" &&
    same_digest "$R/src/docker:multi" "$R/copy/docker:multi" &&
    "${sk[@]}" copy -q --preserve-digests --src-tls-verify=false "docker://$R/src/docker:amd64" "dir:$work/dir-s2" &&
    "${sk[@]}" copy -q --preserve-digests --dest-tls-verify=false "dir:$work/dir-s2" "docker://$R/copy/docker:amd64" &&
    same_digest "$R/src/docker:amd64" "$R/copy/docker:amd64" &&
    "${sk[@]}" inspect --raw --tls-verify=false "docker://$R/copy/docker:amd64" | grep -q 'manifest.v2+json'
}

crane_workflow() {
  "$crane" pull --format=oci "$R/src/oci:amd64" "$work/crane-pull" &&
    "$crane" push "$work/crane-pull" "$R/crane/pushed:v1" >/dev/null &&
    same_digest "$R/src/oci:amd64" "$R/crane/pushed:v1" &&
    "$crane" copy "$R/src/oci:multi" "$R/crane/copied:multi" >/dev/null 2>&1 &&
    same_digest "$R/src/oci:multi" "$R/crane/copied:multi" &&
    "$crane" tag "$R/crane/pushed:v1" v2 &&
    [ "$("$crane" ls "$R/crane/pushed" | tr '\n' ' ')" = "v1 v2 " ] &&
    "$crane" catalog "$R" | grep -qx 'crane/copied' &&
    "$crane" delete "$R/crane/pushed@$("$crane" digest "$R/crane/pushed:v1")" &&
    ! "$crane" manifest "$R/crane/pushed:v2" >/dev/null 2>&1
}

oras_artifacts() {
  (
    cd "$work" && printf 'artifact body' >artifact.txt && printf 'signature' >sig.txt &&
      "$oras" push --plain-http --artifact-type application/vnd.berth.test "$R/oras/art:v1" artifact.txt:text/plain >/dev/null &&
      mkdir -p out && "$oras" pull --plain-http -o out "$R/oras/art:v1" >/dev/null &&
      [ "$(cat out/artifact.txt)" = "artifact body" ] &&
      "$oras" attach --plain-http --distribution-spec v1.1-referrers-api \
        --artifact-type application/vnd.berth.signature "$R/oras/art:v1" sig.txt:text/plain >/dev/null &&
      "$oras" discover --plain-http --distribution-spec v1.1-referrers-api --format json \
        --artifact-type application/vnd.berth.signature "$R/oras/art:v1" >discover.json 2>discover.err &&
      python3 - discover.json <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
refs = doc.get("referrers") or doc.get("manifests") or []
assert len(refs) == 1 and refs[0]["artifactType"] == "application/vnd.berth.signature", doc
PY
  ) &&
    curl -fsS "http://$R/v2/oras/art/referrers/$("$crane" digest "$R/oras/art:v1")" | grep -q 'application/vnd.berth.signature'
}

# Node access: the same registry through `berth-registry forward` on another port.
forwarder() {
  local port
  port=$(free_port)
  "$(registry_bin)" forward --listen "127.0.0.1:$port" --upstream "$R" >"$work/forward.log" 2>&1 &
  FORWARD_PID=$!
  F="127.0.0.1:$port"
  for _ in $(seq 1 50); do curl -fsS "http://$F/v2/" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}

skopeo_through_forwarder() {
  forwarder &&
    "${sk[@]}" copy -q --preserve-digests --src-tls-verify=false --dest-tls-verify=false \
      "docker://$R/src/docker:amd64" "docker://$F/fwd/docker:amd64" &&
    "${sk[@]}" copy -q --preserve-digests --src-tls-verify=false "docker://$F/fwd/docker:amd64" "dir:$work/dir-fwd" &&
    same_digest "$R/src/docker:amd64" "$R/fwd/docker:amd64" &&
    cmp -s "$work/dir-fwd/manifest.json" "$work/dir-s2/manifest.json"
}

check "crane builds OCI and Docker images, index and manifest list" build_images
check "skopeo --all round-trips a multi-arch OCI index" skopeo_oci_index_round_trip
check "skopeo round-trips a Docker manifest list and schema2 image" skopeo_docker_round_trip
check "crane pull/push/copy/tag/ls/catalog/delete" crane_workflow
check "oras push/pull/attach/discover via the referrers API" oras_artifacts
check "skopeo pushes and pulls through the node-access forwarder" skopeo_through_forwarder

# The same round trips on a registry that stores everything in S3 (a real MinIO).
start_minio "$work/minio"
PIDS+=("$MINIO_PID")
s3_storage_yaml "$work/s3-clients" >"$work/s3.yaml"
start_registry "$work/s3-data" "$work/s3.yaml"
PIDS+=("$REGISTRY_PID")
fs_registry=$R fs_work=$work
R=$REGISTRY work="$work/s3-clients"
mkdir -p "$work"
check "S3 storage: crane builds OCI and Docker images, index and manifest list" build_images
check "S3 storage: skopeo --all round-trips a multi-arch OCI index" skopeo_oci_index_round_trip
check "S3 storage: skopeo round-trips a Docker manifest list and schema2 image" skopeo_docker_round_trip
check "S3 storage: crane pull/push/copy/tag/ls/catalog/delete" crane_workflow
check "S3 storage: oras push/pull/attach/discover via the referrers API" oras_artifacts
R=$fs_registry work=$fs_work

# --- Access control -----------------------------------------------------------
# Every client pushes and pulls the same image (oras: an artifact) with its own
# login, kept in a credentials file of its own per identity, so one client's
# login cannot make another's push succeed. The identity "none" has empty files.
pm=(podman --root "$work/podman/store" --runroot "$work/podman/run" --storage-driver vfs --events-backend none)
# podman pulls into a second, empty store, so what it pulls comes from the registry.
pm_pull=(podman --root "$work/podman/pulled" --runroot "$work/podman/run-pulled" --storage-driver vfs --events-backend none)
CLIENTS=(crane skopeo oras podman)
# How each client words the registry's 401 and 403 (oras: "basic credential not
# found" when a Basic challenge meets an empty credentials file).
UNAUTHORIZED='401|unauthorized|authentication required|credential not found'
WRONG_LOGIN='401|unauthorized|invalid username'
DENIED='403|denied'

layout_digest() { jq -r '.manifests[0].digest' "$1/index.json"; }

# quiet COMMAND...: the command's stderr is shown only when it fails.
quiet() {
  local rc=0
  "$@" 2>"$work/stderr" || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "    $1 $2 failed ($rc):" >&2
    tail -n 4 "$work/stderr" | sed 's/^/      /' >&2
  fi
  return "$rc"
}

# fails_with PATTERN COMMAND...: the command fails, and says why with PATTERN.
fails_with() {
  local pattern=$1 out; shift
  if out=$("$@" 2>&1); then
    echo "    not refused: $1 $2 $3 $4" >&2
    return 1
  fi
  grep -Eqi -- "$pattern" <<<"$out" && return 0
  echo "    $1 $2 $3 $4 failed, but not with /$pattern/:" >&2
  tail -n 3 <<<"$out" | sed 's/^/      /' >&2
  return 1
}

creds() { # client identity -> its credentials file (crane: a DOCKER_CONFIG directory)
  local dir="$work/creds/$2"
  mkdir -p "$dir/crane"
  [ -f "$dir/crane/config.json" ] || echo '{}' >"$dir/crane/config.json"
  [ -f "$dir/$1.json" ] || echo '{}' >"$dir/$1.json"
  if [ "$1" = crane ]; then echo "$dir/crane"; else echo "$dir/$1.json"; fi
}

login() { # client identity host user secret
  local client=$1 file host=$3 user=$4 secret=$5
  file=$(creds "$1" "$2")
  case $client in
    crane) printf '%s' "$secret" | DOCKER_CONFIG=$file "$crane" auth login "$host" -u "$user" --password-stdin ;;
    skopeo) printf '%s' "$secret" | skopeo login --tls-verify=false --authfile "$file" -u "$user" --password-stdin "$host" ;;
    oras) printf '%s' "$secret" | "$oras" login --plain-http --registry-config "$file" -u "$user" --password-stdin "$host" ;;
    podman) printf '%s' "$secret" | "${pm[@]}" login --tls-verify=false --authfile "$file" -u "$user" --password-stdin "$host" ;;
  esac
}

push() { # client identity ref: pushes the seed image (oras: the artifact); prints the manifest digest
  local client=$1 file ref=$3 out
  file=$(creds "$1" "$2")
  case $client in
    crane) out=$(DOCKER_CONFIG=$file "$crane" push "$work/seed" "$ref") && echo "${out##*@}" ;;
    skopeo)
      rm -f "$work/pushed.digest"
      "${sk[@]}" copy -q --preserve-digests --dest-tls-verify=false --authfile "$file" \
        --digestfile "$work/pushed.digest" "oci:$work/seed" "docker://$ref" && cat "$work/pushed.digest" ;;
    oras) (cd "$work" && "$oras" push --plain-http --registry-config "$file" --format 'go-template={{.digest}}' \
      --artifact-type application/vnd.berth.test "$ref" payload.txt:text/plain) ;;
    podman)
      rm -f "$work/pushed.digest"
      "${pm[@]}" push -q --tls-verify=false --authfile "$file" --digestfile "$work/pushed.digest" \
        "$SEED_ID" "docker://$ref" && cat "$work/pushed.digest" ;;
  esac
}

pull() { # client identity ref: pulls and checks the content; prints the manifest digest it got
  local client=$1 file ref=$3 out="$work/pulled" id
  file=$(creds "$1" "$2")
  rm -rf "$out"
  case $client in
    crane) DOCKER_CONFIG=$file "$crane" pull --format=oci "$ref" "$out" && layout_digest "$out" ;;
    skopeo) "${sk[@]}" copy -q --src-tls-verify=false --authfile "$file" "docker://$ref" "oci:$out:pulled" &&
      layout_digest "$out" ;;
    oras) mkdir -p "$out" && "$oras" pull --plain-http --registry-config "$file" -o "$out" "$ref" >/dev/null &&
      cmp -s "$work/payload.txt" "$out/payload.txt" &&
      "$oras" resolve --plain-http --registry-config "$file" "$ref" ;;
    podman) id=$("${pm_pull[@]}" pull -q --tls-verify=false --authfile "$file" "docker://$ref") &&
      [ "$id" = "$SEED_ID" ] && "${pm_pull[@]}" image inspect --format '{{.Digest}}' "$ref" ;;
  esac
}

# The seed: one small image on the open registry, saved as an OCI layout (crane,
# skopeo) and loaded into podman's store; its config digest is podman's image ID.
seed_image() {
  printf 'artifact behind a login' >"$work/payload.txt" &&
    "$crane" append --oci-empty-base -f "$(layer seed "seed layer")" -t "$R/seed/img:v1" >/dev/null 2>&1 &&
    "$crane" mutate --set-platform linux/amd64 -t "$R/seed/img:v1" "$R/seed/img:v1" >/dev/null 2>&1 &&
    SEED_DIGEST=$("$crane" digest "$R/seed/img:v1") &&
    quiet "$crane" pull --format=oci "$R/seed/img:v1" "$work/seed" &&
    [ "$(layout_digest "$work/seed")" = "$SEED_DIGEST" ] &&
    quiet "${sk[@]}" copy -q --src-tls-verify=false "docker://$R/seed/img:v1" "oci-archive:$work/seed.tar" &&
    SEED_ID=$(quiet "${pm[@]}" pull -q "oci-archive:$work/seed.tar") &&
    [ "sha256:$SEED_ID" = "$("$crane" manifest "$R/seed/img:v1" | jq -r .config.digest)" ]
}

# round_trip CLIENT IDENTITY HOST USER SECRET REPO: the client logs in, pushes
# and pulls back; the digest pulled is the one pushed (crane and skopeo keep the
# seed's; podman compresses anew).
round_trip() {
  local client=$1 id=$2 host=$3 user=$4 secret=$5 ref="$3/$6:v1" pushed pulled
  quiet login "$client" "$id" "$host" "$user" "$secret" >/dev/null &&
    pushed=$(quiet push "$client" "$id" "$ref") &&
    pulled=$(quiet pull "$client" "$id" "$ref") || return 1
  case $client in
    crane | skopeo) [ "$pushed" = "$SEED_DIGEST" ] || { echo "    pushed $pushed, not the seed's $SEED_DIGEST" >&2; return 1; } ;;
  esac
  [[ $pushed == sha256:* && $pushed == "$pulled" ]] || { echo "    pushed '$pushed', pulled '$pulled'" >&2; return 1; }
}

# absent IDENTITY REF: crane, logged in as IDENTITY (who may read REF), finds no such manifest.
absent() {
  local out
  if out=$(DOCKER_CONFIG=$(creds crane "$1") "$crane" manifest "$2" 2>&1); then
    echo "    $2 was stored" >&2
    return 1
  fi
  grep -Eq 'MANIFEST_UNKNOWN|NAME_UNKNOWN|404' <<<"$out" && return 0
  echo "    looking for $2: $(tail -n 1 <<<"$out")" >&2
  return 1
}

# htpasswd: alice may do everything, bob may only pull.
htpasswd_registry() {
  htpasswd -Bbc "$work/htpasswd" alice alice-secret 2>/dev/null &&
    htpasswd -Bb "$work/htpasswd" bob bob-secret 2>/dev/null &&
    cat >"$work/htpasswd.yaml" <<YAML &&
auth:
  anonymous: none
  htpasswd:
    path: $work/htpasswd
    access:
    - {users: [alice], repositories: ["*"], actions: [pull, push, delete]}
    - {users: [bob], repositories: ["*"], actions: [pull]}
YAML
    start_registry "$work/htpasswd-data" "$work/htpasswd.yaml" || return 1
  PIDS+=("$REGISTRY_PID")
  H=$REGISTRY
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$H/v2/")" = 401 ] &&
    curl -fsS -u alice:alice-secret "http://$H/v2/" >/dev/null &&
    quiet login crane admin "$H" alice alice-secret >/dev/null  # for looking, in absent
}

htpasswd_anonymous_refused() {
  local client ok=0
  for client in "${CLIENTS[@]}"; do
    fails_with "$UNAUTHORIZED" push "$client" none "$H/anon/$client:v1" || ok=1
    absent admin "$H/anon/$client:v1" || ok=1
    fails_with "$UNAUTHORIZED" pull "$client" none "$H/alice/$client:v1" || ok=1
  done
  return $ok
}

htpasswd_pull_only() {
  local client ok=0
  for client in "${CLIENTS[@]}"; do
    quiet login "$client" bob "$H" bob bob-secret >/dev/null || { ok=1; continue; }
    quiet pull "$client" bob "$H/alice/$client:v1" >/dev/null || ok=1
    fails_with "$DENIED" push "$client" bob "$H/bob/$client:v1" || ok=1
    absent admin "$H/bob/$client:v1" || ok=1
  done
  return $ok
}

htpasswd_wrong_password() {
  local client ok=0
  for client in skopeo oras podman; do
    fails_with "$WRONG_LOGIN" login "$client" alice-wrong "$H" alice not-her-secret || ok=1
  done
  # crane auth login only stores the credentials; the registry refuses them on use.
  quiet login crane alice-wrong "$H" alice not-her-secret >/dev/null || ok=1
  fails_with "$UNAUTHORIZED" pull crane alice-wrong "$H/alice/crane:v1" || ok=1
  fails_with "$UNAUTHORIZED" push crane alice-wrong "$H/alice/wrong:v1" || ok=1
  return $ok
}

check "seed image for the access-control checks (OCI layout, podman store)" seed_image
check "htpasswd registry with anonymous: none answers 401 to strangers, 200 to alice" htpasswd_registry
for client in "${CLIENTS[@]}"; do
  check "htpasswd: $client logs in as alice (push rights), pushes and pulls back the same digest" \
    round_trip "$client" alice "$H" alice alice-secret "alice/$client"
done
check "htpasswd: without credentials crane, skopeo, oras, podman pushes and pulls get 401, nothing stored" \
  htpasswd_anonymous_refused
check "htpasswd: pull-only bob pulls with every client, but each push gets 403 DENIED" htpasswd_pull_only
check "htpasswd: a wrong password fails skopeo, oras and podman login, crane's stored login gets 401" \
  htpasswd_wrong_password

# Kubernetes: a real etcd and kube-apiserver. The registry reviews tokens with its
# own ServiceAccount (system:auth-delegator only); ci of team-a may get and create
# repositories in team-a through a RoleBinding, and nothing in team-b; admin of
# berth may get and create everywhere (to look for what must not be there).
AUDIENCE=berth.dev/test/registry
kubernetes_registry() {
  local out token server ca
  out=$(BERTH_CP_OWNER_PID=$$ "$REPO_ROOT/tests/controlplane/up" "$work/cp") && eval "$out" || return 1
  # The ClusterRoles users bind, as shipped.
  kubectl apply -f "$REPO_ROOT/manifests/access.yaml" >/dev/null || return 1
  kubectl create namespace berth >/dev/null &&
    kubectl create namespace team-a >/dev/null &&
    kubectl create namespace team-b >/dev/null &&
    kubectl -n berth create serviceaccount registry >/dev/null &&
    kubectl create clusterrolebinding berth-registry-auth --clusterrole=system:auth-delegator \
      --serviceaccount=berth:registry >/dev/null &&
    kubectl -n team-a create serviceaccount ci >/dev/null &&
    kubectl -n team-a create rolebinding push --clusterrole=berth-push --serviceaccount=team-a:ci >/dev/null &&
    kubectl -n berth create serviceaccount admin >/dev/null &&
    kubectl create clusterrolebinding berth-admin --clusterrole=berth-push --serviceaccount=berth:admin >/dev/null &&
    token=$(kubectl -n berth create token registry --duration 1h) &&
    server=$(kubectl config view --raw -o jsonpath='{.clusters[0].cluster.server}') &&
    ca=$(kubectl config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}') || return 1
  cat >"$work/registry.kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "$server", certificate-authority-data: "$ca"}}]
users: [{name: registry, user: {token: "$token"}}]
contexts: [{name: c, context: {cluster: c, user: registry}}]
current-context: c
KUBECONFIG
  cat >"$work/kubernetes.yaml" <<YAML
auth:
  anonymous: none
  kubernetes: {audience: $AUDIENCE, kubeconfig: $work/registry.kubeconfig}
YAML
  start_registry "$work/kubernetes-data" "$work/kubernetes.yaml" || return 1
  PIDS+=("$REGISTRY_PID")
  K=$REGISTRY
  CI_TOKEN=$(kubectl -n team-a create token ci --audience "$AUDIENCE" --duration 1h) &&
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$K/v2/")" = 401 ] &&
    curl -fsS -u "ci:$CI_TOKEN" "http://$K/v2/" >/dev/null &&
    token=$(kubectl -n berth create token admin --audience "$AUDIENCE" --duration 1h) &&
    quiet login crane k8s-admin "$K" admin "$token" >/dev/null  # for looking, in absent
}

kubernetes_other_namespace_denied() {
  local client ok=0
  for client in "${CLIENTS[@]}"; do
    fails_with "$DENIED" push "$client" ci-team-a "$K/team-b/$client:v1" || ok=1
    absent k8s-admin "$K/team-b/$client:v1" || ok=1
  done
  return $ok
}

kubernetes_wrong_audience() {
  local client ok=0 token
  # Without --audience the token is for the API server itself.
  token=$(kubectl -n team-a create token ci --duration 1h) || return 1
  for client in skopeo oras podman; do
    fails_with "$WRONG_LOGIN" login "$client" ci-apiserver "$K" ci "$token" || ok=1
  done
  quiet login crane ci-apiserver "$K" ci "$token" >/dev/null || ok=1
  fails_with "$UNAUTHORIZED" pull crane ci-apiserver "$K/team-a/crane:v1" || ok=1
  return $ok
}

check "kubernetes: control plane, ServiceAccounts, RoleBinding; registry answers 401 without, 200 with ci's token" \
  kubernetes_registry
for client in "${CLIENTS[@]}"; do
  check "kubernetes: $client logs in with ci's ServiceAccount token, pushes to team-a and pulls back the same digest" \
    round_trip "$client" ci-team-a "$K" ci "$CI_TOKEN" "team-a/$client"
done
check "kubernetes: ci of team-a pushing to team-b gets 403 DENIED from crane, skopeo, oras, podman; nothing stored" \
  kubernetes_other_namespace_denied
check "kubernetes: a token for the API server's audience fails skopeo, oras, podman login; crane gets 401" \
  kubernetes_wrong_audience

# --- TLS ---------------------------------------------------------------------------
# HTTPS with a certificate from a test CA: clients that trust the CA push and pull,
# clients that do not refuse the connection, and a certificate replaced on disk is
# served to the next client without a restart.
tls_cert() { # NAME: a key and a certificate for 127.0.0.1 signed by the test CA
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$1" \
    -keyout "$work/tls/$1.key" -out "$work/tls/$1.csr" 2>/dev/null &&
    openssl x509 -req -in "$work/tls/$1.csr" -CA "$work/tls/ca.crt" -CAkey "$work/tls/ca.key" -CAcreateserial \
      -days 1 -extfile <(printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n') -out "$work/tls/$1.crt" 2>/dev/null
}
served_cn() { openssl s_client -connect "$T" -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -subject -nameopt RFC2253; }
tls_registry() {
  mkdir -p "$work/tls/certs.d" "$work/tls-data" &&
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=berth-test-ca -days 1 \
      -keyout "$work/tls/ca.key" -out "$work/tls/ca.crt" 2>/dev/null &&
    tls_cert first && cp "$work/tls/first.crt" "$work/tls/tls.crt" && cp "$work/tls/first.key" "$work/tls/tls.key" &&
    cp "$work/tls/ca.crt" "$work/tls/certs.d/ca.crt" || return 1
  T="127.0.0.1:$(free_port)"
  "$(registry_bin)" --listen "$T" --root "$work/tls-data" --tls-cert "$work/tls/tls.crt" --tls-key "$work/tls/tls.key" \
    >"$work/tls.log" 2>&1 &
  TLS_PID=$!
  PIDS+=("$TLS_PID")   # stopped by cleanup, with the other registries
  for _ in $(seq 1 100); do curl -fsS --cacert "$work/tls/ca.crt" "https://$T/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
  [ "$(curl -sS --cacert "$work/tls/ca.crt" -o /dev/null -w '%{http_version}' "https://$T/v2/")" = 2 ] ||
    { echo "    no HTTP/2 through ALPN" >&2; return 1; }
}
tls_clients_verify() {
  local digest
  "${sk[@]}" copy -q --preserve-digests --dest-cert-dir "$work/tls/certs.d" \
    "oci:$work/seed" "docker://$T/tls/app:v1" &&
    digest=$(SSL_CERT_FILE="$work/tls/ca.crt" "$crane" digest "$T/tls/app:v1") &&
    [ "$digest" = "$(layout_digest "$work/seed")" ] &&
    (cd "$work" && "$oras" push --ca-file "$work/tls/ca.crt" "$T/tls/art:v1" payload.txt:text/plain >/dev/null) &&
    "${sk[@]}" copy -q --src-cert-dir "$work/tls/certs.d" "docker://$T/tls/app:v1" "oci:$work/tls-back:v1" &&
    [ "$(layout_digest "$work/tls-back")" = "$digest" ] || return 1
  # Without the CA every client refuses the server.
  fails_with 'x509|certificate' "${sk[@]}" inspect --raw "docker://$T/tls/app:v1" &&
    fails_with 'x509|certificate' "$crane" digest "$T/tls/app:v1" &&
    fails_with 'x509|certificate' "$oras" manifest fetch "$T/tls/art:v1"
}
tls_rotation() {
  [ "$(served_cn)" = "subject=CN=first" ] || { echo "    serving $(served_cn)" >&2; return 1; }
  tls_cert second && cp "$work/tls/second.key" "$work/tls/tls.key.new" && cp "$work/tls/second.crt" "$work/tls/tls.crt.new" &&
    mv "$work/tls/tls.key.new" "$work/tls/tls.key" && mv "$work/tls/tls.crt.new" "$work/tls/tls.crt" || return 1
  for _ in $(seq 1 50); do [ "$(served_cn)" = "subject=CN=second" ] && break; sleep 0.2; done
  [ "$(served_cn)" = "subject=CN=second" ] || { echo "    still serving $(served_cn)" >&2; return 1; }
  kill -0 "$TLS_PID" && SSL_CERT_FILE="$work/tls/ca.crt" "$crane" digest "$T/tls/app:v1" >/dev/null
}
check "tls: berth-registry --tls-cert/--tls-key serves HTTP/2 through ALPN to curl" tls_registry
check "tls: skopeo, crane and oras push and pull trusting the test CA; without it each refuses the server" tls_clients_verify
check "tls: a certificate replaced on disk is served to new clients within 10 s, no restart" tls_rotation

echo "clients: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
