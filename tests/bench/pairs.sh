#!/usr/bin/env bash
# hearsay against HAProxy in alternating pairs of short wrk runs, for a steadier ratio than one run
# of ../shared/bench/peers.sh on a noisy machine: prints each pair's rps ratio (hearsay/HAProxy),
# their median, and each proxy's CPU time per request (from /proc, user + system).
# Same layout as peers.sh: backend (nginx) and wrk on CPU 0, each proxy with one thread on CPU 1.
# Usage: tests/bench/pairs.sh [keepalive|close] [PAIRS] [SECONDS]   (from the repository root;
# BIN=/path/to/hearsay measures that binary instead of building target/release/hearsay)
set -euo pipefail
cd "$(dirname "$0")/../.."
MODE=${1:-keepalive} PAIRS=${2:-10} DUR=${3:-3}
for t in wrk:wrk nginx:nginx-light haproxy:haproxy curl:curl; do
  command -v "${t%%:*}" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${t#*:}" >/dev/null; }
done
[[ -n ${BIN:-} ]] || { cargo build --release --locked -p hearsay; BIN=$PWD/target/release/hearsay; }
W=$(mktemp -d /tmp/pairs.XXXX); trap 'kill $(jobs -p) 2>/dev/null; sleep 0.3; rm -rf "$W"' EXIT
cat >"$W/backend.conf" <<C
worker_processes 1; daemon off; pid $W/b.pid; error_log $W/b.err;
events { worker_connections 65536; }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 75s;
  server { listen 127.0.0.1:18080 reuseport backlog=4096; location / { return 200 "hello from backend\n"; } } }
C
cat >"$W/haproxy.cfg" <<C
global
  nbthread 1
  maxconn 9000
defaults
  mode http
  timeout connect 5s
  timeout client 75s
  timeout server 75s
  timeout http-keep-alive 75s
  http-reuse always
frontend fe
  bind 127.0.0.1:18082
  default_backend be
backend be
  server s1 127.0.0.1:18080
C
sed -e 's/KEEPALIVE/75s/' -e "s#/tmp/hearsay-bench#$W/data#" tests/bench/hearsay.toml >"$W/hearsay.toml"
taskset -c 0 nginx -c "$W/backend.conf" -p "$W" & sleep 0.3
taskset -c 1 haproxy -f "$W/haproxy.cfg" -q & haproxy_pid=$!
taskset -c 1 "$BIN" --log-level warn run --config "$W/hearsay.toml" >"$W/hearsay.log" 2>&1 & hearsay_pid=$!
sleep 1
for port in 18082 18083; do curl -fsS "http://127.0.0.1:$port/" >/dev/null || { echo "port $port not answering"; exit 1; }; done
hdr=(); [[ $MODE == close ]] && hdr=(-H 'Connection: close')
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# One run against port $1 served by process $2: prints "rps requests cpu_ticks".
run() {
  local before; before=$(cpu_ticks "$2")
  local out; out=$(taskset -c 0 wrk -t1 -c64 -d"${DUR}s" "${hdr[@]}" "http://127.0.0.1:$1/")
  echo "$(awk '/Requests\/sec/{print $2}' <<<"$out") $(awk '/requests in/{print $1}' <<<"$out") $(( $(cpu_ticks "$2") - before ))"
}
: >"$W/pairs"
for ((i = 0; i < PAIRS; i++)); do
  if (( i % 2 )); then h=$(run 18083 $hearsay_pid); a=$(run 18082 $haproxy_pid); else a=$(run 18082 $haproxy_pid); h=$(run 18083 $hearsay_pid); fi
  echo "$h $a" >>"$W/pairs"
done
ratios=$(awk '{ printf "%.3f\n", $1 / $4 }' "$W/pairs" | sort -n)
median=$(awk '{ r[NR] = $1 } END { print (NR % 2) ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2 }' <<<"$ratios")
echo "$MODE: hearsay/haproxy rps ratios" $ratios
awk -v mode="$MODE" -v median="$median" -v tck="$(getconf CLK_TCK)" '
  { hr += $2; ht += $3; ar += $5; at += $6 }
  END { printf "%s: median ratio %.3f; CPU per request hearsay %.1f us, haproxy %.1f us\n", mode, median, ht * 1e6 / tck / hr, at * 1e6 / tck / ar }' "$W/pairs"
