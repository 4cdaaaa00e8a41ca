#!/usr/bin/env bash
# Hostile clients: thousands of connections trickle upload bodies (PATCH and
# monolithic POST), never finish their headers, or send a 4 MB manifest at 1 KiB/s,
# reconnecting whenever the server ends them, while one well-behaved client pulls
# a 1 MiB blob and pushes 4 KiB blobs, each on a new connection. berth-registry and
# Distribution v3.1.1 run in turn, each fresh; both are printed, only berth is
# asserted: every well-behaved operation succeeds and p99 stays under 250 ms.
# Extra arguments go to berth-hostile (see --help), e.g. --connections 4000 --secs 30.
set -euo pipefail
# shellcheck source=tests/lib/common.sh
source "$(dirname "$0")/lib/common.sh"
cd "$REPO_ROOT"

MAX_P99_MS=${MAX_P99_MS:-250}
# The servers are children of berth-hostile and inherit this limit, so both get
# the same one (Go raises its own soft limit; berth-registry does not).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

DISTRIBUTION_BIN=$(go_tool registry)
export DISTRIBUTION_BIN
cargo build --release --locked -p berth-registry -p berth-bench
BERTH_REGISTRY_BIN=$(registry_bin)
export BERTH_REGISTRY_BIN

out=$(mktemp)
trap 'rm -f "$out"' EXIT
# A crash shows as a missing result below, so the summary line is still printed.
"$CARGO_TARGET_DIR/release/berth-hostile" "$@" | tee "$out" || echo "berth-hostile failed" >&2

# The load must really have been applied (every hostile connection opened at least
# once), and the well-behaved client must have got through without a failure.
berth_keeps_serving() {
  local line
  line=$(grep '^RESULT server=berth ' "$out") || return 1
  awk -v max="$MAX_P99_MS" '
    { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] + 0 } }
    END { exit !(v["hostile_opened"] >= v["hostile_target"] && v["ops"] > 0 &&
                 v["failures"] == 0 && v["p99_ms"] < max) }' <<<"$line"
}

check "berth serves a well-behaved client under hostile connections (0 failures, p99 < ${MAX_P99_MS} ms)" \
  berth_keeps_serving
echo "hostile: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
