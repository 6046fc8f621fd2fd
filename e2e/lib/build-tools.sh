#!/usr/bin/env bash
# Builds the test bed's tools from the Go module proxy into e2e/.build/bin: the control
# plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl), kwok and
# metrics-server, Karpenter with its kwok cloud provider (the autoscaler of the backfill
# scenarios), and AWS's session-manager-plugin.
# Skips every binary that is already newer than the module files that pin it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$here/.build/bin"
mkdir -p "$out"

k8s_version="$(awk '$1=="k8s.io/kubernetes"{print $2; exit}' "$here/tools/k8s/go.mod")"
minor="$(echo "$k8s_version" | cut -d. -f2)"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

build() { # build MODULE_DIR NAME PACKAGE [GOTOOLCHAIN]
  local src="$here/tools/$1" name="$2" pkg="$3" toolchain="${4:-local}"
  if [[ -x "$out/$name" && "$out/$name" -nt "$src/go.mod" && "$out/$name" -nt "$src/go.sum" ]]; then
    return 0
  fi
  echo "testbed: building $name ($pkg)" >&2
  (cd "$src" && GOTOOLCHAIN="$toolchain" CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out/$name.tmp" "$pkg")
  mv "$out/$name.tmp" "$out/$name"
}

build k8s etcd go.etcd.io/etcd/server/v3
build k8s kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build k8s kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
build k8s kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
build k8s kubectl k8s.io/kubernetes/cmd/kubectl
build kwok kwok sigs.k8s.io/kwok/cmd/kwok
build metrics-server metrics-server sigs.k8s.io/metrics-server/cmd/metrics-server
# Karpenter v1.15.0 needs Go 1.26.9; the machines carry 1.26.8, so its module alone is built
# with the approved newer toolchain, which the go command fetches through the module proxy.
build karpenter karpenter sigs.k8s.io/karpenter/kwok go1.27.3
# AWS's Session Manager client, which checks the fake Session Manager endpoint ECS Exec is
# tested against (its source has no go.mod; tools/session-manager-plugin resolves it).
build session-manager-plugin session-manager-plugin github.com/aws/session-manager-plugin/src/sessionmanagerplugin-main
