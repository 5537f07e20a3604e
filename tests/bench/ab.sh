#!/usr/bin/env bash
# tests/bench/ab.sh OLD_BIN NEW_BIN [keepalive|close|post] [PAIRS] [SECONDS] (from the repository root):
# two hearsay builds side by side, each with one worker thread pinned to CPU 1, wrk and the
# nginx backend on CPU 0, runs alternating between them; prints each one's requests/s and
# CPU time per request (from /proc) and the ratio B/A. "post" sends 1 KiB POST bodies.
# One build against itself with telemetry on in B (an OTLP sink on 127.0.0.1:4317 first:
# cargo run --release -p hearsay-testkit --example otlp_sink):
#   B_EXTRA='[telemetry]\notlp_endpoint = "http://127.0.0.1:4317"\nsample_ratio = 0.01\nmetrics_listen = "127.0.0.1:19464"' \
#     tests/bench/ab.sh target/release/hearsay target/release/hearsay keepalive 10 3
set -euo pipefail
cd "$(dirname "$0")/../.."
A=$1 B=$2 MODE=${3:-keepalive} PAIRS=${4:-8} DUR=${5:-3}
W=$(mktemp -d /tmp/ab.XXXX); trap 'kill $(jobs -p) 2>/dev/null; sleep 0.3; rm -rf "$W"' EXIT
printf 'wrk.method = "POST"\nwrk.body = string.rep("x", 1024)\nwrk.headers["Content-Type"] = "application/octet-stream"\n' >"$W/post.lua"
cat >"$W/backend.conf" <<C
worker_processes 1; daemon off; pid $W/b.pid; error_log $W/b.err;
events { worker_connections 65536; }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 75s;
  server { listen 127.0.0.1:18080 reuseport backlog=4096; location / { return 200 "hello from backend\n"; } } }
C
sed -e 's/KEEPALIVE/75s/' -e "s#/tmp/hearsay-bench#$W/dataA#" tests/bench/hearsay.toml >"$W/a.toml"
sed -e 's/KEEPALIVE/75s/' -e "s#/tmp/hearsay-bench#$W/dataB#" -e 's/18083/18084/' tests/bench/hearsay.toml >"$W/b.toml"
printf "\n[admin]\nlisten = \"127.0.0.1:0\"\n" >> "$W/a.toml"; printf "\n[admin]\nlisten = \"127.0.0.1:0\"\n" >> "$W/b.toml"
# A_EXTRA / B_EXTRA: TOML appended to one side's config (e.g. a [telemetry] section), so one
# binary can be measured against itself with a setting on and off.
printf '%b\n' "${A_EXTRA:-}" >> "$W/a.toml"; printf '%b\n' "${B_EXTRA:-}" >> "$W/b.toml"
grep -q 18084 "$W/b.toml" || { echo "port not replaced"; exit 1; }
taskset -c 0 nginx -c "$W/backend.conf" -p "$W" & sleep 0.3
taskset -c 1 "$A" --log-level warn run --config "$W/a.toml" >"$W/a.log" 2>&1 & pa=$!
taskset -c 1 "$B" --log-level warn run --config "$W/b.toml" >"$W/b.log" 2>&1 & pb=$!
sleep 1.5
hdr=(); [[ $MODE == close ]] && hdr=(-H "Connection: close"); [[ $MODE == post ]] && hdr=(-s "$W/post.lua")
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run() { local before; before=$(ticks "$2")
  local out; out=$(taskset -c 0 wrk -t1 -c64 -d"${DUR}s" "${hdr[@]}" "http://127.0.0.1:$1/")
  echo "$(awk '/Requests\/sec/{print $2}' <<<"$out") $(awk '/requests in/{print $1}' <<<"$out") $(( $(ticks "$2") - before ))"; }
for ((i=0;i<PAIRS;i++)); do
  if (( i % 2 )); then b=$(run 18084 $pb); a=$(run 18083 $pa); else a=$(run 18083 $pa); b=$(run 18084 $pb); fi
  echo "$a $b" >> "$W/pairs"
done
awk -v tck="$(getconf CLK_TCK)" -v mode="$MODE" '{ ar+=$2; at+=$3; br+=$5; bt+=$6; ra+=$1; rb+=$4 }
  END { printf "%s: A rps %.0f cpu %.1f us/req | B rps %.0f cpu %.1f us/req | B/A cpu %.3f\n", mode, ra/NR, at*1e6/tck/ar, rb/NR, bt*1e6/tck/br, (bt/br)/(at/ar) }' "$W/pairs"
