#!/usr/bin/env bash
# Tranche's prober and Prometheus' blackbox_exporter side by side, on the very same targets.
#
# Starts one nginx (configured as ../shared/bench/blackbox-anchor.sh configures its own:
# one worker, no access log, no keep-alive, an RSA-2048 certificate — here signed by a CA made
# for the run, valid for `*.bench.test`, so that Tranche verifies it), then alternates, round
# after round and scheme after scheme:
#   * blackbox_exporter, driven by the anchor script with TARGET_HTTP/TARGET_HTTPS pointing at
#     that nginx (its `http_plain` / `https_insecure` modules; wrk keeps CONNECTIONS probes in
#     flight);
#   * `tranche-bench probes --target-http/--target-https` at the same nginx: DOMAINS domains × 2
#     CDNs every INTERVAL seconds, a new TCP connection per probe, certificates verified against
#     the run's CA — with TLS session resumption, and (HTTPS) without it.
# Both figures count only successful probes per CPU-second of the prober's own process.
#
# Environment (all optional):
#   ROUNDS=3 DURATION=15 WARMUP=10   rounds, measured and warm-up seconds per measurement
#   DOMAINS=5000 INTERVAL=5          Tranche's HTTP load: 2 × DOMAINS / INTERVAL probes per second
#   DOMAINS_HTTPS=2500               its HTTPS load (one nginx worker does not complete 2,000
#                                    full RSA-2048 handshakes a second on this machine)
#   SCHEMES="http https"             which schemes to compare
#   BENCH=target/release/tranche-bench   (built with `cargo build --release -p tranche-bench`
#                                          when missing)
#   ANCHOR=../shared/bench/blackbox-anchor.sh
#   BENCH_BEFORE=path                another build's tranche-bench, measured in the same rounds
#                                    (paired figures for BENCHMARKS.md)
# Output: a line per measurement, then `RATIO scheme=… blackbox=… tranche=… ratio=…` per
# scheme (medians over the rounds; with resumption, and for HTTPS `tranche_no_resumption=…`).
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-15}
WARMUP=${WARMUP:-10}
DOMAINS=${DOMAINS:-5000}
DOMAINS_HTTPS=${DOMAINS_HTTPS:-2500}
INTERVAL=${INTERVAL:-5}
SCHEMES=${SCHEMES:-"http https"}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
ANCHOR=${ANCHOR:-$ROOT/../shared/bench/blackbox-anchor.sh}
BENCH=${BENCH:-$ROOT/target/release/tranche-bench}

log() { echo "[probes-vs-blackbox] $*" >&2; }
die() { log "ERROR: $*"; exit 2; }

[ -f "$ANCHOR" ] || die "no anchor script at $ANCHOR"
if [ ! -x "$BENCH" ]; then
  log "building tranche-bench (release)"
  (cd "$ROOT" && cargo build --release -q -p tranche-bench)
fi
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  [ "$(id -u)" = 0 ] || die "nginx is missing"
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx openssl >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi
NGINX_BIN=$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)

WORK=$(mktemp -d /tmp/probes-vs-blackbox.XXXXXX)
chmod 755 "$WORK"
NGINX_MASTER=""
cleanup() {
  local rc=$?
  [ -n "$NGINX_MASTER" ] && kill "$NGINX_MASTER" 2>/dev/null
  sleep 0.3
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
}

# ---------------------------------------------------------------- a CA and nginx's certificate
NG=$WORK/nginx
mkdir -p "$NG/tmp" "$NG/logs"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=tranche bench CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" \
  -keyout "$NG/ca.key" -out "$NG/ca.pem" >/dev/null 2>&1 || die "openssl (CA) failed"
openssl req -newkey rsa:2048 -nodes -subj "/CN=app.example.test" \
  -keyout "$NG/key.pem" -out "$NG/leaf.csr" >/dev/null 2>&1 || die "openssl (CSR) failed"
printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:*.bench.test,DNS:app.example.test\n' >"$NG/leaf.ext"
openssl x509 -req -in "$NG/leaf.csr" -CA "$NG/ca.pem" -CAkey "$NG/ca.key" -CAcreateserial \
  -days 2 -extfile "$NG/leaf.ext" -out "$NG/cert.pem" >/dev/null 2>&1 || die "openssl (leaf) failed"

HTTP_PORT=$(free_port); HTTPS_PORT=$(free_port); STATUS_PORT=$(free_port)
cat >"$NG/nginx.conf" <<EOF
worker_processes 1;
daemon on;
master_process on;
pid $NG/nginx.pid;
error_log $NG/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_timeout 0;
    server_tokens off;
    client_body_temp_path $NG/tmp/body;
    proxy_temp_path $NG/tmp/proxy;
    fastcgi_temp_path $NG/tmp/fastcgi;
    uwsgi_temp_path $NG/tmp/uwsgi;
    scgi_temp_path $NG/tmp/scgi;
    server {
        listen 127.0.0.1:$HTTP_PORT;
        location = /healthz { default_type text/plain; return 200 "ok\n"; }
    }
    server {
        listen 127.0.0.1:$HTTPS_PORT ssl;
        ssl_certificate $NG/cert.pem;
        ssl_certificate_key $NG/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        location = /healthz { default_type text/plain; return 200 "ok\n"; }
    }
    server {
        listen 127.0.0.1:$STATUS_PORT;
        location / { stub_status; }
    }
}
EOF
"$NGINX_BIN" -p "$NG" -e "$NG/logs/error.log" -c "$NG/nginx.conf" || die "nginx did not start"
for _ in $(seq 1 50); do [ -s "$NG/nginx.pid" ] && break; sleep 0.1; done
NGINX_MASTER=$(cat "$NG/nginx.pid")
sleep 0.3
NGINX_PIDS="$NGINX_MASTER $(pgrep -P "$NGINX_MASTER" | tr '\n' ' ')"
curl -fsS --cacert "$NG/ca.pem" --resolve "x.bench.test:$HTTPS_PORT:127.0.0.1" \
  "https://x.bench.test:$HTTPS_PORT/healthz" >/dev/null || die "nginx https (verified) not answering"
log "nginx $NGINX_MASTER: http :$HTTP_PORT https :$HTTPS_PORT (RSA-2048 leaf, CA $NG/ca.pem)"

# ---------------------------------------------------------------- rounds
declare -A BB TR TRN TB TBN
blackbox() {  # scheme -> probes per CPU-second (successful)
  local module out
  if [ "$1" = http ]; then module=http_plain; else module=https_insecure; fi
  out=$(MODULES=$module ROUNDS=1 DURATION=$DURATION WARMUP=2 \
    TARGET_HTTP="http://127.0.0.1:$HTTP_PORT/healthz" \
    TARGET_HTTPS="https://127.0.0.1:$HTTPS_PORT/healthz" \
    TARGET_PIDS="$NGINX_PIDS" TARGET_STATUS="http://127.0.0.1:$STATUS_PORT/" \
    bash "$ANCHOR" 2>"$WORK/anchor.log") || { tail -20 "$WORK/anchor.log" >&2; die "anchor failed"; }
  grep "^RESULT prober=blackbox" <<<"$out" >&2
  sed -n "s/^RESULT prober=blackbox module=$module .* probes_per_cpu_s=\([0-9]*\) .*/\1/p" <<<"$out"
}
tranche() {  # binary scheme [--no-resumption] -> successful probes per CPU-second
  local out domains=$DOMAINS bench=$1
  shift
  [ "$1" = https ] && domains=$DOMAINS_HTTPS
  out=$("$bench" probes --domains "$domains" --interval "$INTERVAL" --seconds "$DURATION" \
    --warmup "$WARMUP" --scheme "$1" --target-http "127.0.0.1:$HTTP_PORT" \
    --target-https "127.0.0.1:$HTTPS_PORT" --ca "$NG/ca.pem" --path /healthz "${@:2}" \
    2>"$WORK/bench.log") || { tail -20 "$WORK/bench.log" >&2; die "tranche-bench failed"; }
  grep '^RESULT probes_per_s' <<<"$out" >&2
  sed -n 's/^RESULT .* ok_probes_per_cpu_s=\([0-9]*\) .*/\1/p' <<<"$out"
}
for round in $(seq 1 "$ROUNDS"); do
  for scheme in $SCHEMES; do
    b=$(blackbox "$scheme"); BB[$scheme]+="$b "
    log "round $round $scheme: blackbox $b probes/CPU-s"
    t=$(tranche "$BENCH" "$scheme"); TR[$scheme]+="$t "
    log "round $round $scheme: tranche $t probes/CPU-s (resumption on)"
    if [ "$scheme" = https ]; then
      t=$(tranche "$BENCH" "$scheme" --no-resumption); TRN[$scheme]+="$t "
      log "round $round $scheme: tranche $t probes/CPU-s (resumption off)"
    fi
    if [ -n "${BENCH_BEFORE:-}" ]; then
      t=$(tranche "$BENCH_BEFORE" "$scheme"); TB[$scheme]+="$t "
      log "round $round $scheme: the build before: $t probes/CPU-s (resumption on)"
      if [ "$scheme" = https ]; then
        t=$(tranche "$BENCH_BEFORE" "$scheme" --no-resumption); TBN[$scheme]+="$t "
        log "round $round $scheme: the build before: $t probes/CPU-s (resumption off)"
      fi
    fi
  done
done

median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
for scheme in $SCHEMES; do
  b=$(median <<<"${BB[$scheme]}"); t=$(median <<<"${TR[$scheme]}")
  line="RATIO scheme=$scheme blackbox=$b (${BB[$scheme]% }) tranche=$t (${TR[$scheme]% }) ratio=$(awk -v t="$t" -v b="$b" 'BEGIN{printf "%.2f", t/b}')"
  if [ -n "${TRN[$scheme]:-}" ]; then
    n=$(median <<<"${TRN[$scheme]}")
    line+=" tranche_no_resumption=$n (${TRN[$scheme]% }) ratio_no_resumption=$(awk -v t="$n" -v b="$b" 'BEGIN{printf "%.2f", t/b}')"
  fi
  echo "$line"
  if [ -n "${TB[$scheme]:-}" ]; then
    t=$(median <<<"${TB[$scheme]}")
    line="BEFORE scheme=$scheme tranche=$t (${TB[$scheme]% }) ratio=$(awk -v t="$t" -v b="$b" 'BEGIN{printf "%.2f", t/b}')"
    if [ -n "${TBN[$scheme]:-}" ]; then
      n=$(median <<<"${TBN[$scheme]}")
      line+=" tranche_no_resumption=$n (${TBN[$scheme]% }) ratio_no_resumption=$(awk -v t="$n" -v b="$b" 'BEGIN{printf "%.2f", t/b}')"
    fi
    echo "$line"
  fi
done
