#!/usr/bin/env bash
# Benchmarks hearsay side by side with NGINX and HAProxy using the shared scripts.
# Usage: tests/bench/run.sh [peers|idle|all] (from the repository root; builds a release binary,
# or measures the binary BIN=/path/to/hearsay, e.g. an older build to compare with). EXTRA is TOML
# appended to the config, e.g. telemetry on (with an OTLP sink on 127.0.0.1:4317:
# cargo run --release -p hearsay-testkit --example otlp_sink):
#   EXTRA='[telemetry]\notlp_endpoint = "http://127.0.0.1:4317"\nsample_ratio = 0.01\nmetrics_listen = "127.0.0.1:19464"' tests/bench/run.sh peers
set -euo pipefail
cd "$(dirname "$0")/../.."
BENCH=${BENCH_DIR:-../shared/bench}
[[ -n ${BIN:-} ]] || { cargo build --release --locked -p hearsay; BIN=$PWD/target/release/hearsay; }
CONF=$(mktemp /tmp/hearsay-bench-conf.XXXX)
trap 'rm -f "$CONF"' EXIT
cat "$PWD/tests/bench/hearsay.toml" > "$CONF"
printf '%b\n' "${EXTRA:-}" >> "$CONF"
what=${1:-all}
if [[ $what == peers || $what == all ]]; then
  SUBJECT_CMD="sed 's/KEEPALIVE/75s/' $CONF > /tmp/hearsay-bench-peers.toml && exec $BIN --log-level warn run --config /tmp/hearsay-bench-peers.toml" \
    "$BENCH/peers.sh" "${ROUNDS:-3}" "${SECONDS_PER_RUN:-6}"
fi
if [[ $what == idle || $what == all ]]; then
  IDLE=${IDLE:-5}
  export IDLE
  SUBJECT_CMD="sed 's/KEEPALIVE/${IDLE}s/' $CONF > /tmp/hearsay-bench-idle.toml && exec $BIN --log-level warn run --config /tmp/hearsay-bench-idle.toml" \
    "$BENCH/idle.sh" "${N:-5000}"
fi
