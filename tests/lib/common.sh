# Shared by the test scripts: cache locations, pinned tools, a registry on a free port.
# shellcheck shell=bash

BERTH_CACHE="${BERTH_CACHE:-$HOME/.cache/berth}"
export BERTH_CACHE
# Builds live outside the clone so repeated CI runs on one machine reuse them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$BERTH_CACHE/target}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export REPO_ROOT

# Go tools, pinned. "name module version"
GO_TOOLS=(
  "conformance github.com/opencontainers/distribution-spec/conformance v0.0.0-20260831232431-97274622c111"
  "crane github.com/google/go-containerregistry/cmd/crane v0.22.1"
  "oras oras.land/oras/cmd/oras v1.3.6"
  "registry github.com/distribution/distribution/v3/cmd/registry v3.1.1"
  "minio github.com/minio/minio v0.0.0-20260212201848-7aac2a2c5b7c"
)

# Path of a pinned Go tool, installing it into the cache on first use.
go_tool() {
  local name=$1 entry module version dir
  for entry in "${GO_TOOLS[@]}"; do
    read -r n module version <<<"$entry"
    [ "$n" = "$name" ] || continue
    dir="$BERTH_CACHE/gobin/$name-$version"
    if [ ! -x "$dir/$name" ]; then
      echo "installing $name $version" >&2
      GOBIN="$dir" GOFLAGS=-mod=mod go install "$module@$version" >&2
    fi
    echo "$dir/$name"
    return 0
  done
  echo "unknown tool $name" >&2
  return 1
}

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing ${missing[*]}" >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >&2
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

registry_bin() {
  echo "$CARGO_TARGET_DIR/release/berth-registry"
}

# start_registry ROOT [CONFIG]: starts berth-registry, sets REGISTRY (host:port) and REGISTRY_PID.
# Waits for /healthz, which answers without credentials: with auth configured,
# /v2/ answers 401 to anonymous clients.
start_registry() {
  local root=$1 config=${2:-} port
  port=$(free_port)
  local args=(--listen "127.0.0.1:$port" --root "$root")
  [ -n "$config" ] && args+=(--config "$config")
  "$(registry_bin)" "${args[@]}" >"$root.log" 2>&1 &
  REGISTRY_PID=$!
  REGISTRY="127.0.0.1:$port"
  wait_up "http://$REGISTRY/healthz" "$REGISTRY_PID" "$root.log" berth-registry 100
}

# wait_up URL PID LOG NAME TRIES: waits (0.1 s per try) until URL answers, while PID
# lives; otherwise prints LOG and fails.
wait_up() {
  local url=$1 pid=$2 log=$3 name=$4 tries=$5
  for _ in $(seq 1 "$tries"); do
    if curl -fsS "$url" >/dev/null 2>&1; then return 0; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "$name did not start; log:" >&2
  cat "$log" >&2
  return 1
}

stop_registry() {
  [ -n "${REGISTRY_PID:-}" ] && kill "$REGISTRY_PID" 2>/dev/null && wait "$REGISTRY_PID" 2>/dev/null
  REGISTRY_PID=""
}

# Counts for the final summary line.
PASSED=0
FAILED=0
check() {
  local name=$1; shift
  if "$@"; then
    echo "ok   $name"
    PASSED=$((PASSED + 1))
  else
    echo "FAIL $name"
    FAILED=$((FAILED + 1))
  fi
}

# A real S3 server for the object-storage tests.
MINIO_USER=berth-test
MINIO_PASSWORD=berth-test-secret

# start_minio DIR: starts MinIO on a free loopback port with its data in DIR and
# creates the bucket "berth"; sets MINIO_ENDPOINT (http://host:port) and MINIO_PID.
# Ready once /minio/health/cluster answers (/live and /ready answer too early).
start_minio() {
  local dir=$1 port console
  port=$(free_port)
  console=$(free_port)
  mkdir -p "$dir"
  MINIO_ROOT_USER=$MINIO_USER MINIO_ROOT_PASSWORD=$MINIO_PASSWORD MINIO_BROWSER=off \
    "$(go_tool minio)" server "$dir/data" --address "127.0.0.1:$port" \
    --console-address "127.0.0.1:$console" --quiet >"$dir/minio.log" 2>&1 &
  MINIO_PID=$!
  MINIO_ENDPOINT="http://127.0.0.1:$port"
  wait_up "$MINIO_ENDPOINT/minio/health/cluster" "$MINIO_PID" "$dir/minio.log" MinIO 200 &&
    curl -fsS --aws-sigv4 "aws:amz:us-east-1:s3" -u "$MINIO_USER:$MINIO_PASSWORD" \
      -X PUT "$MINIO_ENDPOINT/berth" >/dev/null
}

stop_minio() {
  [ -n "${MINIO_PID:-}" ] && kill "$MINIO_PID" 2>/dev/null && wait "$MINIO_PID" 2>/dev/null
  MINIO_PID=""
}

# s3_storage_yaml PREFIX: the registry's storage section for the bucket of start_minio,
# with the credentials in files under $1.creds.
s3_storage_yaml() {
  local prefix=$1 creds="$1.creds"
  mkdir -p "$creds"
  printf '%s' "$MINIO_USER" >"$creds/accessKeyId"
  printf '%s' "$MINIO_PASSWORD" >"$creds/secretAccessKey"
  printf 'storage: {s3: {bucket: berth, endpoint: "%s", prefix: "%s", credentialsDir: "%s"}}\n' \
    "$MINIO_ENDPOINT" "$(basename "$prefix")" "$creds"
}

# prometheus-operator's ServiceMonitor CRD, for the operator's monitoring tests. Pinned;
# the module comes from the Go module proxy (checked against the Go checksum database),
# and only the one file is kept, in the cache.
PROMETHEUS_OPERATOR_VERSION=v0.85.0

# servicemonitor_crd: prints the path of monitoring.coreos.com_servicemonitors.yaml,
# fetching it on first use.
servicemonitor_crd() {
  local dir="$BERTH_CACHE/crds/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION"
  local file=monitoring.coreos.com_servicemonitors.yaml module
  if [ ! -s "$dir/$file" ]; then
    echo "fetching prometheus-operator $PROMETHEUS_OPERATOR_VERSION's ServiceMonitor CRD" >&2
    # Outside any module, so no go.mod around is consulted or changed.
    module=$(cd / && GOFLAGS=-mod=mod go mod download -json \
      "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" |
      python3 -c 'import json, sys; m = json.load(sys.stdin); print(m.get("Dir") or sys.exit(m.get("Error", "no Dir")))') ||
      return 1
    mkdir -p "$dir"
    install -m 0644 "$module/example/prometheus-operator-crd/$file" "$dir/$file.tmp" && mv "$dir/$file.tmp" "$dir/$file"
  fi
  echo "$dir/$file"
}
