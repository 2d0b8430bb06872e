#!/usr/bin/env bash
# Contract fuzzing: schemathesis runs every operation of the committed OpenAPI document against a
# `tranche serve` it starts here (production mode: API keys, an admin token, its own embedded
# PostgreSQL), checking that no request gets a 5xx and that every response conforms to the
# document: its schema, its status code, its content type, its headers. Any failure fails CI.
#
# Usage: .ci/schemathesis.sh [path to the tranche binary] (default target/debug/tranche).
# Budget: MAX_EXAMPLES per operation (default 30).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-target/debug/tranche}"
MAX_EXAMPLES="${MAX_EXAMPLES:-30}"
WORK="$(mktemp -d)"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
ADMIN="schemathesis-admin-token-0123456789"
BASE="http://127.0.0.1:${PORT}"

cleanup() {
  if [ -n "${SERVER:-}" ]; then kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

env -u DATABASE_URL -u PG_DSN -u TRANCHE_DATABASE_URL \
  TRANCHE_DATA_DIR="$WORK/data" TRANCHE_ADMIN_TOKEN="$ADMIN" TRANCHE_ENGINE=false \
  TRANCHE_API_RATE_PER_SECOND=100000 TRANCHE_API_BURST=100000 RUST_LOG=warn \
  "$BIN" serve --listen "127.0.0.1:${PORT}" > "$WORK/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 600); do
  if curl -fsS "$BASE/readyz" >/dev/null 2>&1; then break; fi
  sleep 0.1
done
curl -fsS "$BASE/readyz" >/dev/null

# A customer, its key, and a few objects for the operations to find.
KEY="$(curl -fsS -X POST "$BASE/v1/admin/customers" -H "Authorization: Bearer $ADMIN" \
  -H 'Content-Type: application/json' -d '{"name": "fuzz"}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["api_key"]["secret"])')"
curl -fsS -X POST "$BASE/v1/services" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
  -d '{"name": "web", "primary_cdn": "cloudflare", "backup_cdn": "fastly"}' >/dev/null
curl -fsS -X POST "$BASE/v1/services/1/domains" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
  -d '{"name": "app.example.com", "primary_target": "edge.cdn-a.example.net", "backup_target": "edge.cdn-b.example.net"}' >/dev/null

run() {
  schemathesis run openapi/openapi.json --url "$BASE" \
    --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance,response_headers_conformance \
    --max-examples "$MAX_EXAMPLES" --no-color --suppress-health-check all "$@"
}
status=0
# Customer operations with the customer's key; the admin operations with the admin token.
run --header "Authorization: Bearer $KEY" --exclude-path-regex '^/v1/(admin|cluster)' || status=$?
run --header "Authorization: Bearer $ADMIN" --include-path-regex '^/v1/(admin|cluster)' || status=$?
if [ "$status" -ne 0 ]; then
  echo "schemathesis: failures (server log follows)"
  tail -50 "$WORK/server.log"
fi
exit "$status"
