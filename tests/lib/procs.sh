# Stopping processes for the test harnesses.
# shellcheck shell=bash

# True while PID is a live process; a zombie waiting for its reaper counts as gone.
pid_alive() {
  local state
  state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

# stop_pids GRACE PID...: SIGTERM, up to GRACE seconds to exit, then SIGKILL; returns
# only when none of them is alive any more (or after 30 more seconds, saying so).
stop_pids() {
  local grace=$1 p alive i; shift
  [ $# -gt 0 ] || return 0
  kill "$@" 2>/dev/null
  for ((i = 0; i < grace * 10; i++)); do
    alive=0
    for p in "$@"; do pid_alive "$p" && alive=1; done
    [ "$alive" -eq 0 ] && return 0
    sleep 0.1
  done
  kill -9 "$@" 2>/dev/null
  for ((i = 0; i < 300; i++)); do
    alive=0
    for p in "$@"; do pid_alive "$p" && alive=1; done
    [ "$alive" -eq 0 ] && return 0
    sleep 0.1
  done
  echo "still running after SIGKILL: $*" >&2
  return 1
}
