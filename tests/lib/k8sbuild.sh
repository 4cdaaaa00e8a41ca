# Shared by the scripts that build pinned Kubernetes binaries.
# shellcheck shell=bash

# The k8s.io/kubernetes version required by the go.mod in DIR.
k8s_version() {
  sed -n 's|^[[:space:]]*\(require \)\{0,1\}k8s.io/kubernetes v\([0-9.]*\).*|\2|p' "$1/go.mod"
}

# Linker flags that stamp VERSION into a Kubernetes binary, as its release build does.
k8s_ldflags() {
  local minor=${1#1.}
  minor=${minor%%.*}
  echo "-s -w -X k8s.io/component-base/version.gitVersion=v$1 -X k8s.io/component-base/version.gitMajor=1" \
    "-X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
}

# True when DIR holds every one of the executables named after it.
all_built() {
  local dir=$1 b
  shift
  for b in "$@"; do [ -x "$dir/$b" ] || return 1; done
}
