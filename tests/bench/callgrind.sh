#!/usr/bin/env bash
# tests/bench/callgrind.sh [N1] [N2] (from the repository root): instructions per keep-alive
# request through hearsay, counted by valgrind's callgrind (repeatable whatever else the machine
# does): N1 and then N2 requests on one connection (h2load --h1), the difference divided by
# N2 - N1, so start-up does not count. BIN (default target/release/hearsay); EXTRA: TOML appended
# to the config, e.g. telemetry on (start the OTLP sink first:
# cargo run --release -p hearsay-testkit --example otlp_sink):
#   EXTRA='[telemetry]\notlp_endpoint = "http://127.0.0.1:4317"\nsample_ratio = 0.01' tests/bench/callgrind.sh
# Parking (a connection quiet for 10 ms under valgrind's slowness) moves a figure by about 1%.
set -euo pipefail
cd "$(dirname "$0")/../.."
N1=${1:-2000} N2=${2:-12000} BIN=${BIN:-target/release/hearsay}
for t in valgrind:valgrind h2load:nghttp2-client nginx:nginx-light curl:curl; do
  command -v "${t%%:*}" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${t#*:}" >/dev/null; }
done
W=$(mktemp -d /tmp/callgrind.XXXX); trap 'kill $(jobs -p) 2>/dev/null; sleep 0.3; rm -rf "$W"' EXIT
cat >"$W/backend.conf" <<C
worker_processes 1; daemon off; pid $W/b.pid; error_log $W/b.err;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 75s;
  server { listen 127.0.0.1:18080; location / { return 200 "hello from backend\n"; } } }
C
nginx -c "$W/backend.conf" -p "$W" & sleep 0.3
count() { # requests -> total instructions
  local dir=$W/run-$1; mkdir -p "$dir"
  sed -e 's/KEEPALIVE/75s/' -e "s#/tmp/hearsay-bench#$dir/data#" -e 's/18083/18093/' tests/bench/hearsay.toml >"$dir/h.toml"
  printf '\n[admin]\nlisten = "127.0.0.1:0"\n%b\n' "${EXTRA:-}" >>"$dir/h.toml"
  valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" "$BIN" --log-level warn run --config "$dir/h.toml" >"$dir/log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 100); do curl -fsS http://127.0.0.1:18093/ >/dev/null 2>&1 && break; sleep 0.5; done
  h2load --h1 -n "$1" -c 1 -m 1 http://127.0.0.1:18093/ >"$dir/h2load.out" 2>&1
  sleep 1.5 # a batch of spans (1 s) leaves before the stop
  kill -TERM $pid; wait $pid || true
  callgrind_annotate "$dir/cg.out" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1}'
}
a=$(count "$N1"); b=$(count "$N2")
echo "instructions per request: $(( (b - a) / (N2 - N1) )) (BIN=$BIN EXTRA=${EXTRA:-none})"
