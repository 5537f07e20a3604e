#!/usr/bin/env bash
# Benchmarks hearsay side by side with NGINX and HAProxy using the shared scripts.
# Usage: tests/bench/run.sh [peers|idle|all] (from the repository root; builds a release binary,
# or measures the binary BIN=/path/to/hearsay, e.g. an older build to compare with).
set -euo pipefail
cd "$(dirname "$0")/../.."
BENCH=${BENCH_DIR:-../shared/bench}
[[ -n ${BIN:-} ]] || { cargo build --release --locked -p hearsay; BIN=$PWD/target/release/hearsay; }
CONF=$PWD/tests/bench/hearsay.toml
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
