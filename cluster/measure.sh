#!/usr/bin/env bash
# Measures, for 3 and 5 local nodes (gossip every 200 ms): how long an UpdateListener on one node
# takes to be visible on every node (p50/p99 over many trials), and gossip bytes per second per
# node. Prints one line per cluster size. Then, for 3 nodes and 10,000 distinct clients
# (127.1.x.y, one connection each), gossip bytes per second per node with every client's count
# published, while 100 clients a second reconnect, and with none published.
#   TRIALS=100 CLIENTS=10000 cluster/measure.sh
set -euo pipefail
cd "$(dirname "$0")/.."
for nodes in ${NODES:-3 5}; do
  HEARSAY_MEASURE_NODES=$nodes HEARSAY_MEASURE_TRIALS=${TRIALS:-100} \
    cargo test -q -p hearsay --test cluster measure_convergence_and_gossip_traffic \
    -- --ignored --nocapture 2>&1 | grep -E "nodes, gossip|panicked"
done
# The test process holds one socket per client, the nodes one each too.
ulimit -n "$(( ${CLIENTS:-10000} * 2 + 1024 ))" 2>/dev/null || true
HEARSAY_MEASURE_CLIENTS=${CLIENTS:-10000} \
  cargo test -q -p hearsay --test cluster measure_gossip_traffic_with_many_clients \
  -- --ignored --nocapture 2>&1 | grep -E "clients connected|gossip per node|panicked"
