#!/usr/bin/env bash
# Real clients against a berth-registry process: skopeo copies a multi-arch OCI
# index (--all) and a Docker schema2 image and manifest list out and back in with
# digests preserved; crane pushes, lists, copies and deletes; oras pushes and pulls
# an artifact, attaches a signature and finds it through the referrers API.
set -euo pipefail
# shellcheck source=tests/lib/common.sh
source "$(dirname "$0")/lib/common.sh"

apt_install skopeo curl
crane=$(go_tool crane)
oras=$(go_tool oras)
work=$(mktemp -d)
FORWARD_PID=""
trap 'stop_registry; [ -n "$FORWARD_PID" ] && kill "$FORWARD_PID" 2>/dev/null; rm -rf "$work"' EXIT
start_registry "$work/data"
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

echo "clients: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
