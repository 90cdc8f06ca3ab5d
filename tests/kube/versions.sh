#!/usr/bin/env bash
# Runs the suites that use the real control plane against other Kubernetes versions: each
# VERSION is a folder tests/kube/k8s-VERSION (a Go module pinning that release). CI runs them
# against 1.36 (`cargo test`); this script is how the versions docs/install.md claims were
# checked. Prints one line per version and suite, and a summary.
#
#   bash tests/kube/versions.sh 1.33 1.27
set -uo pipefail
cd "$(dirname "$0")/../.."
suites=(api controller control_plane_faults cluster_credentials operate shipped_install interop_authlib secretless)
[ $# -gt 0 ] || set -- 1.36
summary=()
for version in "$@"; do
  if ! bash tests/kube/build.sh "$version"; then
    summary+=("$version: the control plane does not build")
    continue
  fi
  for suite in "${suites[@]}"; do
    log="target/kube/versions-$version-$suite.log"
    if TOKENSYNC_KUBE_VERSION="$version" cargo test --test "$suite" >"$log" 2>&1; then
      result=$(grep -E "^test result" "$log" | tail -1)
    else
      result="FAILED: $(grep -E "^test result" "$log" | tail -1); failing: $(grep -E '^    [a-z_]+$' "$log" | tr -d ' ' | tr '\n' ' ')"
    fi
    echo "$version $suite: $result"
    summary+=("$version $suite: $result")
  done
done
echo
echo "== summary"
printf '%s\n' "${summary[@]}"
