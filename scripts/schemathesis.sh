#!/usr/bin/env bash
# Runs schemathesis against a live `warren up`: every documented operation
# gets generated requests; the run fails on any 5xx and on any response that
# does not match the OpenAPI document (status, content type, headers, body
# schema), or on a request that violates the schema being accepted.
#
# Usage: scripts/schemathesis.sh WARREN_BINARY
# Needs WARREN_GUEST_AGENT and WARREN_IMAGE_CACHE (./dev.sh test sets them).
set -euo pipefail

WARREN_BIN=${1:?usage: $0 WARREN_BINARY}
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/target/tools-venv"
SCHEMATHESIS_VERSION=4.32.5
MAX_EXAMPLES=${WARREN_SCHEMATHESIS_EXAMPLES:-25}

if [ ! -x "$VENV/bin/schemathesis" ] || ! "$VENV/bin/schemathesis" --version | grep -q "$SCHEMATHESIS_VERSION"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi

WORK=$(mktemp -d /tmp/warren-st.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID"
    for _ in $(seq 1 300); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# Two running sandboxes fill the team's limit of two: generated creates are
# answered 429 instead of booting hundreds of VMs.
WARREN_HOME="$WORK/home" "$WARREN_BIN" up --listen "127.0.0.1:$PORT" --max-sandboxes 2 --on-shutdown kill >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 600); do
  curl -sf "$URL/health" >/dev/null 2>&1 && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log"; echo "warren up exited" >&2; exit 1; }
  sleep 0.2
done
KEY=$(cat "$WORK/home/admin.key")
create() {
  curl -sf -X POST -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
    -d '{"template":"tiny","memory_mib":128,"timeout_secs":3600}' "$URL/v1/sandboxes" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'
}
FILES_SANDBOX=$(create)
create >/dev/null

# File and metadata operations run against a real sandbox; process
# operations get an id that does not exist (random command lines must not
# run forever in a real guest).
cat >"$WORK/schemathesis.toml" <<TOML
[parameters]
"path.id" = "$FILES_SANDBOX"

[[operations]]
include-path-regex = "/(exec|processes|pty)"
parameters = { "path.id" = "sb-doesnotexist" }

# Deleting the shared sandbox would turn every later case into a 409;
# DELETE is covered by the API contract tests.
[[operations]]
include-path = "/v1/sandboxes/{id}"
include-method = "DELETE"
enabled = false

# Pausing or snapshotting the shared sandbox would turn every later case
# into a 409; these get an id that does not exist (their success paths are
# covered by the contract, SDK and snapshot tests).
[[operations]]
include-path-regex = '/\{id\}/(pause|resume|snapshots)$'
parameters = { "path.id" = "sb-doesnotexist" }
TOML

cd "$WORK"
set +e
"$VENV/bin/schemathesis" --config-file "$WORK/schemathesis.toml" run "$URL/openapi.json" \
  -H "Authorization: Bearer $KEY" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection \
  --phases examples,coverage,fuzzing \
  --max-examples "$MAX_EXAMPLES" \
  --request-timeout 60 \
  --no-color
STATUS=$?
set -e
if [ $STATUS -ne 0 ]; then
  echo "--- warren up log (tail) ---" >&2
  tail -30 "$WORK/server.log" >&2
fi
exit $STATUS
