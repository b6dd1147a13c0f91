#!/usr/bin/env bash
# Runs the Python SDK's checks: mypy --strict, then pytest against a live
# `warren up` started by the tests themselves (see tests/conftest.py).
#   WARREN_BIN           the warren binary (default: target/debug/warren,
#                        else target/release/warren)
#   WARREN_IMAGE_CACHE   shared guest image cache (default /var/lib/warren/test-images)
#   WARREN_GUEST_AGENT   passed through to the service
# Extra arguments go to pytest, e.g. ./run-tests.sh -k files -x
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"
VENV="$HERE/.venv"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
# Reinstall only when the project metadata changed since the last install.
STAMP="$VENV/.warren-sdk-installed"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  echo "==> installing warren-sdk[test] into $VENV" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]'
  touch "$STAMP"
fi

echo "==> mypy --strict" >&2
"$VENV/bin/python" -m mypy

echo "==> pytest" >&2
exec "$VENV/bin/python" -m pytest "$@"
