#!/usr/bin/env bash
# Installs Helm's chart engine for tests/helm_chart.rs into a virtualenv, by default
# target/helm-venv (override with TOKENSYNC_HELM_VENV, which the test reads too).
# Idempotent: does nothing when the pinned version is already there.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${TOKENSYNC_HELM_VENV:-$root/target/helm-venv}"
python="${PYTHON:-python3}"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" "$root/tests/helm/render.py" version >/dev/null 2>&1; then
  echo "helm engine already installed in $venv: $("$venv/bin/python" "$root/tests/helm/render.py" version)"
  exit 0
fi
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes \
  -r "$root/tests/helm/requirements.txt"
echo "helm engine installed in $venv: $("$venv/bin/python" "$root/tests/helm/render.py" version)"
