#!/usr/bin/env bash
# TLS termination side by side on loopback (issue 13's performance section): NGINX and HAProxy
# terminating TLS with the same certificate and (optionally) a subject proxy, each with one
# worker/thread pinned to CPU 1; the clients and the plain-HTTP backend (nginx, 127.0.0.1:18080)
# share CPU 0, as in ../shared/bench/peers.sh. Figures per proxy, in one run:
#   full     new TLS handshakes per second, no resumption, one small request per connection, and
#            the proxy's CPU time per handshake (user + system from /proc / handshakes);
#   resumed  the same with session resumption (TLS 1.3 PSK from the proxy's session ticket);
#   keepalive  HTTPS requests per second on 64 keep-alive connections, p50/p99, CPU per request;
#   idle     RSS per idle TLS keep-alive connection: N connections opened, handshake done, one
#            request each, then held idle; (RSS after - RSS before) / N.
# Each figure is followed by its ratio to the better of NGINX and HAProxy on that figure, "(x1.00)":
# for hs/s and rps higher is better, for CPU and RSS lower is better (the issue's target for
# hearsay: at least the better peer, i.e. >= 1 on rates and <= 1 on costs).
#
# Tools, and why:
# - wrk (-t1, CONNS=64 connections) drives all three throughput figures, so they differ only in
#   what is measured. With `Connection: close` each connection carries one request and wrk
#   reconnects; wrk keeps its SSL object and so resumes the last session on every reconnect (seen
#   in the proxies' logs: all but the first 64 handshakes resumed). tls_shim.c, preloaded into wrk,
#   counts full and resumed handshakes (SSL_session_reused) and, for `full`, drops the session so
#   that every handshake is full. The counts are printed (`full=`, `resumed=`): a proxy that does
#   not resume shows it there (the shim is built with gcc at each run). h2load also resumes on
#   reconnect, with no switch to stop it; `openssl s_time -new/-reuse` is one blocking connection
#   per process, bounded by the client's round trips.
# - On this 2-core machine the client (OpenSSL 3 on CPU 0) often bounds the full-handshake rate
#   (proxy_cpu, the share of its core the proxy used, is then well below 100%) and other work
#   shares the cores, so hs/s is noisy; cpu_us_per_hs, the proxy's own CPU per handshake, is the
#   fair figure. It includes accepting and closing the TCP connection and proxying the one request
#   (cpu_us_per_req of keepalive is the request's share). Resumed runs include wrk's first 64
#   full handshakes.
# - tls_idle.py (Python's ssl module, as ../shared/bench/idle.py does for plain HTTP) opens the idle
#   connections; RSS is summed over the proxy's process and its descendants (nginx's worker).
#   The idle figures are taken first, on fresh processes; `of_which_shmem` is the part of the
#   delta in shared memory (nginx's shared session cache). `still-open` must equal `open`.
# - `# warning:` lines at the end flag figures that mean nothing: errors (non-2xx, socket errors),
#   a resumed run where the proxy did not resume, idle connections that failed or were closed.
# - The certificate (a throwaway CA and a leaf for `localhost` and 127.0.0.1, made with the openssl
#   CLI) is checked on every proxy before measuring: verified name, same SHA-256 fingerprint, and
#   the negotiated protocol, cipher and key exchange group are printed, which must match across
#   proxies for the figures to compare. Clients send SNI `localhost` (wrk's URL is
#   https://localhost:PORT/: with 127.0.0.1 wrk would send the IP address as SNI); wrk and Python send no ALPN.
#   NGINX and HAProxy otherwise keep their TLS defaults (buffer sizes, tickets, cipher order).
#
# Usage: tests/bench/tls.sh [ROUNDS] [SECONDS]        (ROUNDS default 1, SECONDS per run default 3;
#        with several rounds each figure is the median of the rounds)
# Environment:
#   SUBJECT_CMD  shell command that starts the proxy under test in the foreground (run with
#                `bash -c`, pinned to CPU 1): HTTPS on 127.0.0.1:18093 with the certificate
#                $TLS_CERT and key $TLS_KEY (PEM files; $TLS_CA is the CA that signed it),
#                forwarding plain HTTP to 127.0.0.1:18080, one worker thread, keep-alive 75 s,
#                TLS 1.2 and 1.3, session tickets on. Its log is printed if it does not answer.
#                It runs in the caller's directory. E.g., from the repository root, once hearsay's
#                HTTPS listener exists (the tls line as issue 13 proposes it):
#                SUBJECT_CMD='sed -e s/KEEPALIVE/75s/ -e s/18083/18093/ -e "/^keepalive_timeout/a tls = {
#                  certificates = [{ cert = \"$TLS_CERT\", key = \"$TLS_KEY\" }] }" tests/bench/hearsay.toml
#                  >/tmp/hearsay-tls.toml && exec target/release/hearsay --log-level warn run --config
#                  /tmp/hearsay-tls.toml'   (one line; TLS_* are exported to the command)
#   KEY=rsa      RSA-2048 certificate instead of ECDSA P-256 (the default).
#   TLS=1.2      the clients offer at most TLS 1.2 (an OPENSSL_CONF for wrk, curl and Python);
#                by default they offer TLS 1.3, which every proxy picks.
#   CONNS=64     wrk connections;  N=2000  idle connections per proxy (file limit here: 20,000).
#   ONLY="full resumed keepalive idle"  the figures to take (default all).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
for t in wrk:wrk nginx:nginx-light haproxy:haproxy curl:curl openssl:openssl gcc:gcc ss:iproute2; do
  command -v "${t%%:*}" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${t#*:}" >/dev/null; }
done
ROUNDS=${1:-${ROUNDS:-1}} DUR=${2:-${DUR:-3}} CONNS=${CONNS:-64} N=${N:-2000} KEY=${KEY:-ecdsa} TLS=${TLS:-}
ONLY=${ONLY:-full resumed keepalive idle}
ulimit -n 20000 2>/dev/null || true
# The ports are shared with ../shared/bench (backend 18080): a benchmark already running would
# answer in place of ours.
busy=$(ss -ltnH | awk '{print $4}' | grep -E ':(18080|1809[1-3])$' || true)
[[ -z $busy ]] || { echo "ports in use, is another benchmark running? $busy" >&2; exit 1; }
W=$(mktemp -d /tmp/tlsbench.XXXX)
# Stops what this script started, and the children of SUBJECT_CMD's shell if it did not exec.
cleanup() { local j; for j in $(jobs -p); do kill $(pgrep -P "$j") "$j" 2>/dev/null || true; done; sleep 0.3; rm -rf "$W"; }
trap cleanup EXIT

# One certificate for every proxy: a throwaway CA and a leaf for localhost and 127.0.0.1.
case $KEY in
  ecdsa) newkey=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1) ;;
  rsa) newkey=(-newkey rsa:2048) ;;
  *) echo "KEY must be ecdsa or rsa" >&2; exit 2 ;;
esac
mkdir "$W/tls"
openssl req -x509 "${newkey[@]}" -nodes -keyout "$W/tls/ca.key" -out "$W/tls/ca.pem" -days 30 \
  -subj "/CN=hearsay bench CA" 2>/dev/null
openssl req "${newkey[@]}" -nodes -keyout "$W/tls/key.pem" -out "$W/tls/leaf.csr" -subj "/CN=localhost" 2>/dev/null
ku=digitalSignature; [[ $KEY == rsa ]] && ku+=,keyEncipherment
printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=critical,CA:FALSE" \
  "keyUsage=critical,$ku" "extendedKeyUsage=serverAuth" >"$W/tls/leaf.ext"
openssl x509 -req -in "$W/tls/leaf.csr" -CA "$W/tls/ca.pem" -CAkey "$W/tls/ca.key" -CAcreateserial \
  -days 30 -extfile "$W/tls/leaf.ext" -out "$W/tls/cert.pem" 2>/dev/null
cat "$W/tls/cert.pem" "$W/tls/key.pem" >"$W/tls/haproxy.pem"
export TLS_CERT=$W/tls/cert.pem TLS_KEY=$W/tls/key.pem TLS_CA=$W/tls/ca.pem
FPR=$(openssl x509 -in "$TLS_CERT" -noout -fingerprint -sha256 | cut -d= -f2)
if [[ $TLS == 1.2 ]]; then # caps every client (wrk, curl, openssl, Python) at TLS 1.2
  printf '%s\n' "openssl_conf = init" "[init]" "ssl_conf = ssl" "[ssl]" "system_default = sys" "[sys]" \
    "MaxProtocol = TLSv1.2" >"$W/client.cnf"
  export OPENSSL_CONF=$W/client.cnf
elif [[ -n $TLS ]]; then echo "TLS must be empty or 1.2" >&2; exit 2; fi
gcc -O2 -shared -fPIC -o "$W/tls_shim.so" "$HERE/tls_shim.c" -ldl

cat >"$W/backend.conf" <<C
worker_processes 1; daemon off; pid $W/b.pid; error_log $W/b.err;
events { worker_connections 16384; }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 75s;
  server { listen 127.0.0.1:18080 reuseport backlog=4096; location / { return 200 "hello from backend\n"; } } }
C
cat >"$W/nginx.conf" <<C
worker_processes 1; daemon off; pid $W/n.pid; error_log $W/n.err; worker_rlimit_nofile 20000;
events { worker_connections 16384; }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 75s;
  ssl_protocols TLSv1.2 TLSv1.3; ssl_session_tickets on; ssl_session_cache shared:SSL:10m; ssl_session_timeout 1h;
  upstream be { server 127.0.0.1:18080; keepalive 128; }
  server { listen 127.0.0.1:18091 ssl backlog=4096; ssl_certificate $TLS_CERT; ssl_certificate_key $TLS_KEY;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-Proto https; } } }
C
# HAProxy: tickets are on and the session cache (tune.ssl.cachesize 20000) too by default.
cat >"$W/haproxy.cfg" <<C
global
  nbthread 1
  maxconn 9000
  ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
  mode http
  timeout connect 5s
  timeout client 75s
  timeout server 75s
  timeout http-keep-alive 75s
  http-reuse always
frontend fe
  bind 127.0.0.1:18092 ssl crt $W/tls/haproxy.pem alpn http/1.1 backlog 4096
  http-request set-header X-Forwarded-Proto https
  default_backend be
backend be
  server s1 127.0.0.1:18080
C
taskset -c 0 nginx -c "$W/backend.conf" -p "$W" & backend=$!; sleep 0.3
kill -0 $backend 2>/dev/null && curl -fsS http://127.0.0.1:18080/ >/dev/null || { echo "backend did not start"; cat "$W/b.err"; exit 1; }
declare -A PID
taskset -c 1 nginx -c "$W/nginx.conf" -p "$W" & PID[nginx]=$!
taskset -c 1 haproxy -f "$W/haproxy.cfg" -q & PID[haproxy]=$!
if [[ -n ${SUBJECT_CMD:-} ]]; then taskset -c 1 bash -c "$SUBJECT_CMD" >"$W/subject.log" 2>&1 & PID[subject]=$!; fi
targets=(nginx:18091 haproxy:18092); [[ -n ${SUBJECT_CMD:-} ]] && targets+=(subject:18093)

# Each proxy must answer over HTTPS with the certificate (verified name, same fingerprint).
for t in "${targets[@]}"; do
  n=${t%%:*} p=${t#*:}
  for _ in $(seq 100); do curl -fsS --cacert "$TLS_CA" --resolve "localhost:$p:127.0.0.1" "https://localhost:$p/" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fsS --cacert "$TLS_CA" --resolve "localhost:$p:127.0.0.1" "https://localhost:$p/" >/dev/null || {
    echo "$n not answering on https://localhost:$p/"; [[ $n == subject ]] && cat "$W/subject.log"; exit 1; }
  brief=$(openssl s_client -connect "127.0.0.1:$p" -servername localhost -CAfile "$TLS_CA" -brief </dev/null 2>&1 || true)
  got=$(openssl s_client -connect "127.0.0.1:$p" -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256 | cut -d= -f2)
  [[ $got == "$FPR" ]] || { echo "$n serves another certificate ($got)"; exit 1; }
  echo "tls $n $(awk -F': ' '/^Protocol version/{p=$2} /^Ciphersuite/{c=$2} /^Server Temp Key/{k=$2} /^Verification/{v=$2}
    END{sub(/,.*/, "", k); printf "protocol=%s cipher=%s kx=%s verify=%s", p, c, k, v}' <<<"$brief") cert=$KEY sha256=${FPR:0:11}"
done

# CPU ticks (user + system) and RSS (KiB) of a proxy's process and its descendants (nginx's worker;
# SUBJECT_CMD may exec or fork).
procs() { local c; echo "$1"; for c in $(pgrep -P "$1"); do procs "$c"; done; }
ticks() { local t=0 c; for c in $(procs "$1"); do t=$((t + $(awk '{print $14 + $15}' "/proc/$c/stat" 2>/dev/null || echo 0))); done; echo $t; }
rss() { local t=0 c; for c in $(procs "$1"); do t=$((t + $(awk -v k="${2:-VmRSS}:" '$1 == k {print $2}' "/proc/$c/status" 2>/dev/null || echo 0))); done; echo $t; }
TCK=$(getconf CLK_TCK)

# One wrk run against proxy $1 on port $2, mode full|resumed|keepalive. Prints
# "rate cpu_us_per_unit full resumed p50_ms p99_ms errors proxy_cpu%" (rate: handshakes/s, or
# requests/s for keepalive; proxy_cpu: the share of its core the proxy used, near 100 when it is
# the bound, well below when the client is).
run() {
  local hdr=(-H 'Connection: close') nores=0; [[ $3 == keepalive ]] && hdr=(); [[ $3 == full ]] && nores=1
  local before; before=$(ticks "${PID[$1]}")
  rm -f "$W/counts"
  TLSB_NO_RESUME=$nores TLSB_COUNTS=$W/counts LD_PRELOAD=$W/tls_shim.so \
    taskset -c 0 wrk -t1 -c"$CONNS" -d"${DUR}s" --latency "${hdr[@]}" "https://localhost:$2/" >"$W/wrk.out" 2>&1
  local used=$(( $(ticks "${PID[$1]}") - before )) counts="0 0"
  [[ -s $W/counts ]] && counts=$(cat "$W/counts")
  awk -v used="$used" -v tck="$TCK" -v mode="$3" -v counts="$counts" '
    function secs(s) { if (s ~ /ms$/) return s / 1000; if (s ~ /m$/) return s * 60; return s + 0 }
    function ms(s) { if (s ~ /us$/) return s / 1000; if (s ~ /ms$/) return s + 0; if (s ~ /m$/) return s * 60000; return s * 1000 }
    /requests in/ { n = $1; t = secs(substr($4, 1, length($4) - 1)) }
    / 50%/ { p50 = ms($2) } / 99%/ { p99 = ms($2) }
    /Socket errors/ { e += $4 + $6 + $8 + $10 } /Non-2xx/ { e += $NF }
    END { split(counts, c, " "); hs = c[1] + c[2]; units = (mode == "keepalive") ? n : hs
      printf "%.0f %.1f %d %d %.2f %.2f %d %.0f\n", (t > 0 ? units / t : 0), (units > 0 ? used * 1e6 / tck / units : 0),
        c[1], c[2], p50, p99, e, (t > 0 ? used * 100 / tck / t : 0) }' "$W/wrk.out"
}

# Idle connections: RSS before and after N idle TLS keep-alive connections to proxy $1 on port $2.
idle() {
  local before after line res shm0 shm1
  before=$(rss "${PID[$1]}"); shm0=$(rss "${PID[$1]}" RssShmem)
  mkfifo "$W/in.$1"
  taskset -c 0 python3 "$HERE/tls_idle.py" 127.0.0.1 "$2" "$N" "$TLS_CA" <"$W/in.$1" >"$W/idle.$1" &
  local py=$!; exec 3>"$W/in.$1"
  for _ in $(seq 1200); do [[ -s $W/idle.$1 ]] && break; sleep 0.1; done
  after=$(rss "${PID[$1]}"); shm1=$(rss "${PID[$1]}" RssShmem); line=$(head -1 "$W/idle.$1")
  echo go >&3; exec 3>&-; wait $py || true
  res=$(tail -n +2 "$W/idle.$1" | tr '\n' ' ')
  local open; open=$(awk '{print $2}' <<<"$line")
  echo "$(( (after - before) * 1024 / (open > 0 ? open : 1) )) $before $after $((shm1 - shm0)) $line $res"
}

: >"$W/results" # "figure proxy metric value": the ratios are computed over these
put() { echo "$1 $2 $3 $4" >>"$W/results"; }
med() { sort -n | awk '{a[NR] = $1} END {print (NR ? a[int((NR + 1) / 2)] : 0)}'; }
col() { awk -v c="$2" '{print $c}' "$1" | med; }

if [[ " $ONLY " == *" idle "* ]]; then
  for t in "${targets[@]}"; do
    read -r per before after shm rest <<<"$(idle "${t%%:*}" "${t#*:}")"
    put idle "${t%%:*}" rss_per_conn "$per"
    echo "$rest rss_before=${before}KiB rss_after=${after}KiB of_which_shmem=${shm}KiB" >"$W/idle.info.${t%%:*}"
  done
fi
for mode in full resumed keepalive; do
  [[ " $ONLY " == *" $mode "* ]] || continue
  for t in "${targets[@]}"; do : >"$W/$mode.${t%%:*}"; done
  for ((i = 0; i < ROUNDS; i++)); do # odd rounds go in reverse order
    order=("${targets[@]}"); ((i % 2)) && mapfile -t order < <(printf '%s\n' "${targets[@]}" | tac)
    for t in "${order[@]}"; do run "${t%%:*}" "${t#*:}" "$mode" >>"$W/$mode.${t%%:*}"; done
  done
  for t in "${targets[@]}"; do
    n=${t%%:*} f=$W/$mode.${t%%:*}
    put "$mode" "$n" rate "$(col "$f" 1)"; put "$mode" "$n" cpu "$(col "$f" 2)"
    echo "full=$(col "$f" 3) resumed=$(col "$f" 4) p50_ms=$(col "$f" 5) p99_ms=$(col "$f" 6) proxy_cpu=$(col "$f" 8)% errors=$(col "$f" 7)" >"$W/$mode.info.$n"
  done
done

# Ratio of each value to the better peer's (max for rates, min for costs).
ratio() { awk -v f="$1" -v m="$2" -v n="$3" '
  $1 == f && $3 == m { v[$2] = $4 }
  END { b = v["nginx"]; o = v["haproxy"]; best = (m == "rate") ? (b > o ? b : o) : (b < o ? b : o)
    printf "%s (x%.2f)", v[n], (best > 0 ? v[n] / best : 0) }' "$W/results"; }
echo "# $(date -u +%FT%TZ) key=$KEY tls=${TLS:-1.3} rounds=$ROUNDS seconds=$DUR conns=$CONNS idle_n=$N; (xR) = value / better peer's"
for mode in full resumed keepalive; do
  [[ " $ONLY " == *" $mode "* ]] || continue
  for t in "${targets[@]}"; do
    n=${t%%:*}
    if [[ $mode == keepalive ]]; then
      echo "keepalive $n rps=$(ratio keepalive rate "$n") cpu_us_per_req=$(ratio keepalive cpu "$n") $(cat "$W/keepalive.info.$n")"
    else
      echo "$mode $n hs_per_s=$(ratio "$mode" rate "$n") cpu_us_per_hs=$(ratio "$mode" cpu "$n") $(cat "$W/$mode.info.$n")"
    fi
  done
done
if [[ " $ONLY " == *" idle "* ]]; then
  for t in "${targets[@]}"; do n=${t%%:*}; echo "idle $n rss_per_conn_B=$(ratio idle rss_per_conn "$n") $(cat "$W/idle.info.$n")"; done
fi
# What would make a figure meaningless: failed requests, a resumed run that did not resume,
# idle connections that failed or that the proxy closed before the end.
for t in "${targets[@]}"; do
  n=${t%%:*}
  for mode in full resumed keepalive; do
    [[ -s $W/$mode.info.$n ]] || continue
    grep -q ' errors=0$' "$W/$mode.info.$n" || echo "# warning: $mode $n had errors (non-2xx or socket errors)"
  done
  if [[ -s $W/resumed.info.$n ]] && awk '{split($1, f, "="); split($2, r, "="); exit !(r[2] < 2 * f[2])}' "$W/resumed.info.$n"; then
    echo "# warning: $n resumed few sessions ($(cut -d' ' -f1-2 "$W/resumed.info.$n")): tickets off, or single-use?"
  fi
  if [[ -s $W/idle.info.$n ]] && awk '{exit !($4 > 0 || $7 != $2)}' "$W/idle.info.$n"; then
    echo "# warning: idle $n: $(cut -d' ' -f1-7 "$W/idle.info.$n") (failed, or closed by the proxy)"
  fi
done
