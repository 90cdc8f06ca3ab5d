#!/usr/bin/env bash
# Builds the real Kubernetes control plane the tests run against, from Kubernetes' own Go
# modules (pinned by tests/kube/k8s-VERSION/go.sum): etcd, kube-apiserver,
# kube-controller-manager and kubectl, plus the launcher in tests/kube/controlplane.
#
#   bash tests/kube/build.sh [VERSION]      # VERSION: a folder k8s-VERSION here; default 1.36
#
# Output: target/kube/VERSION/bin (or $CARGO_TARGET_DIR/kube/VERSION/bin). Skipped when the
# binaries are there and were built from the same sources by the same Go. The test harness
# (tests/support/kube.rs) runs this on first use; .ci/run runs it before the tests.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=${1:-1.36}
module="$here/k8s-$version"
if [ ! -f "$module/go.mod" ]; then
  echo "tests/kube/build.sh: no Kubernetes version $version here (no $module/go.mod)" >&2
  exit 2
fi
if ! command -v go >/dev/null; then
  cat >&2 <<MSG
tests/kube/build.sh: Go is not installed. The tests run a real Kubernetes control plane built
from Kubernetes' Go modules: install Go $(sed -n 's/^go //p' "$module/go.mod") or newer (https://go.dev/doc/install,
or your distribution's golang package if it is that new) and make sure the Go module proxy is
reachable.
MSG
  exit 1
fi
target=${CARGO_TARGET_DIR:-$here/../../target}
out="$target/kube/$version/bin"
stamp=$( { go version; cat "$module/go.mod" "$module/go.sum" "$module"/*.go "$here"/controlplane/go.mod "$here"/controlplane/*.go; } | sha256sum | cut -d' ' -f1)
programs=(etcd kube-apiserver kube-controller-manager kubectl controlplane)
complete=yes
for p in "${programs[@]}"; do [ -x "$out/$p" ] || complete=no; done
if [ "$complete" = yes ] && [ "$(cat "$out/.stamp" 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi
mkdir -p "$out"
rm -f "$out/.stamp"
started=$(date +%s)
echo "tests/kube/build.sh: building Kubernetes $version (etcd, kube-apiserver, kube-controller-manager, kubectl) into $out; the first build takes several minutes" >&2
(cd "$here/controlplane" && go build -trimpath -o "$out/controlplane" .)
# The version the programs report (/version, kubectl version), as Kubernetes' own build stamps it.
k8s=$(cd "$module" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
minor=$(echo "$k8s" | cut -d. -f2)
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$k8s -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  ldflags+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
(cd "$module" && go build -trimpath -ldflags="$ldflags" -o "$out/" \
  go.etcd.io/etcd/server/v3 \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kubectl)
# etcd's main package is its server module, which go names after "server" (the part before /v3).
mv "$out/server" "$out/etcd"
echo "$stamp" > "$out/.stamp"
echo "tests/kube/build.sh: Kubernetes $version built in $(( $(date +%s) - started )) s" >&2
