#!/usr/bin/env bash
# Installs Authlib (pinned in tests/authlib/requirements.txt) for tests/interop_authlib.rs
# into a virtualenv, by default target/authlib-venv (override with TOKENSYNC_AUTHLIB_VENV,
# which the tests read too). Idempotent: does nothing when the pinned version is there.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${TOKENSYNC_AUTHLIB_VENV:-$root/target/authlib-venv}"
python="${PYTHON:-python3}"
pinned="authlib $(sed -n 's/^authlib==\([^ ]*\).*/\1/p' "$root/tests/authlib/requirements.txt")"
installed() { "$venv/bin/python" "$root/tests/authlib/server.py" --version 2>/dev/null; }
if [ -x "$venv/bin/python" ] && [ "$(installed)" = "$pinned" ]; then
  echo "Authlib already installed in $venv: $pinned"
  exit 0
fi
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes --only-binary :all: \
  -r "$root/tests/authlib/requirements.txt"
if [ "$(installed)" != "$pinned" ]; then
  echo "Authlib install in $venv did not give $pinned (got: $(installed || true))" >&2
  exit 1
fi
echo "Authlib installed in $venv: $pinned"
