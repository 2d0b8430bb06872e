#!/usr/bin/env bash
# Control-plane read benchmark: GET /v1/services/{id} (a service with its domains and policies,
# authenticated with a real API key) under load from a second process (oha) on loopback.
#
# Measures, against a release build on an embedded PostgreSQL:
#   1. a fixed rate (RATE req/s, default 2000) for DURATION (default 30s): achieved rate, p50/p90/p99/max
#      latency with latency correction (latency counted from when each request was due, so a
#      stall is not hidden by coordinated omission);
#   2. the saturation throughput with CONNECTIONS connections, for context.
# Target (issue 2): p99 <= 5 ms at 2,000 requests/s.
#
# Usage: bench/control-plane.sh            (RATE=, DURATION=, CONNECTIONS= to override;
#        BENCH_BIN=/path/to/tranche measures another build, e.g. the one before a change)
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=${RATE:-2000}
DURATION=${DURATION:-30s}
CONNECTIONS=${CONNECTIONS:-32}
TOKEN=bench-admin-token

if ! command -v oha >/dev/null 2>&1; then
  echo "installing oha (HTTP load generator) from crates.io..." >&2
  cargo install oha --locked --version 1.16.0 >&2
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if [ -z "${BENCH_BIN:-}" ]; then
  cargo build --release --quiet --bin tranche
  BENCH_BIN=./target/release/tranche
fi

workdir=$(mktemp -d /tmp/tranche-bench-XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# The benchmark measures the server, not the per-key rate limiter.
TRANCHE_API_RATE_PER_SECOND=1000000 TRANCHE_API_BURST=1000000 \
  TRANCHE_DATA_DIR="$workdir/data" TRANCHE_ADMIN_TOKEN=$TOKEN RUST_LOG=warn \
  env -u BENCH_BIN "$BENCH_BIN" serve --listen "127.0.0.1:$port" >"$workdir/serve.log" 2>&1 &
server=$!
cleanup() { kill -TERM "$server" 2>/dev/null; wait "$server" 2>/dev/null || true; rm -rf "$workdir"; }
trap cleanup EXIT

base="http://127.0.0.1:$port"
for _ in $(seq 1 600); do
  curl -fs "$base/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "$base/readyz" >/dev/null || { cat "$workdir/serve.log"; exit 1; }

key=$(curl -fs -X POST "$base/v1/admin/customers" -H "Authorization: Bearer $TOKEN" \
  -H 'Content-Type: application/json' -d '{"name":"bench"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["api_key"]["secret"])')
auth=(-H "Authorization: Bearer $key" -H 'Content-Type: application/json')
sid=$(curl -fs -X POST "$base/v1/services" "${auth[@]}" \
  -d '{"name":"bench","primary_cdn":"cloudflare","backup_cdn":"fastly"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
for host in app www api; do
  curl -fs -X POST "$base/v1/services/$sid/domains" "${auth[@]}" -d "{\"name\":\"$host.example.com\"}" >/dev/null
done
curl -fs -X POST "$base/v1/services/$sid/storm-policies" "${auth[@]}" -d '{"threshold_avail":0.95}' >/dev/null
url="$base/v1/services/$sid"
curl -fs "$url" -H "Authorization: Bearer $key" >/dev/null

cat >"$workdir/summarise.py" <<'PY'
import json, sys
label = sys.argv[1]
d = json.load(sys.stdin)
s, p = d["summary"], d["latencyPercentiles"]
codes = d.get("statusCodeDistribution", {})
ms = lambda v: "n/a" if v is None else "%.2f ms" % (v * 1000)
print("%s: %.0f req/s, success %.2f%%, statuses %s, p50 %s, p90 %s, p99 %s, p99.9 %s, max %s" % (
    label, s["requestsPerSec"], s["successRate"] * 100, codes,
    ms(p["p50"]), ms(p["p90"]), ms(p["p99"]), ms(p["p99.9"]), ms(s["slowest"])))
PY
summarise() { python3 "$workdir/summarise.py" "$1"; }

echo "warm-up..." >&2
oha --no-tui -z 5s -q "$RATE" -c "$CONNECTIONS" -H "Authorization: Bearer $key" "$url" >/dev/null
echo "== GET /v1/services/{id}, fixed rate $RATE req/s for $DURATION, $CONNECTIONS connections, latency-corrected"
oha --no-tui --output-format json --latency-correction -z "$DURATION" -q "$RATE" -c "$CONNECTIONS" \
  -H "Authorization: Bearer $key" "$url" | summarise "fixed rate"
echo "== saturation: as fast as possible for 10s, $CONNECTIONS connections"
oha --no-tui --output-format json -z "${SATURATION_DURATION:-10s}" -c "$CONNECTIONS" -H "Authorization: Bearer $key" "$url" | summarise "saturation"
echo "machine: $(nproc) cores, $(uname -r); server and load generator share them"
