#!/usr/bin/env bash
# Measures, for 3 and 5 local nodes (gossip every 200 ms): how long an UpdateListener on one node
# takes to be visible on every node (p50/p99 over many trials), and gossip bytes per second per
# node. Prints one line per cluster size.
#   TRIALS=100 cluster/measure.sh
set -euo pipefail
cd "$(dirname "$0")/.."
for nodes in ${NODES:-3 5}; do
  HEARSAY_MEASURE_NODES=$nodes HEARSAY_MEASURE_TRIALS=${TRIALS:-100} \
    cargo test -q -p hearsay --test cluster measure_convergence_and_gossip_traffic \
    -- --ignored --nocapture 2>&1 | grep -E "nodes, gossip|panicked"
done
