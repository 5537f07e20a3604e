#!/usr/bin/env bash
# The cluster measurements, on local nodes gossiping every 200 ms (debug build, as the tests).
# Each is an ignored test in tests/cluster.rs; this prints the summary line of each:
#  - propagation and gossip traffic, for NODES (3, 5 and 10): how long an UpdateListener on one
#    node takes to be visible on every node (p50/p99 over TRIALS changes), gossip bytes/s per node;
#  - death detection, for NODES: kill -9 of a node until every other node shows it dead (p50/p99
#    over DEATH_TRIALS kills);
#  - after a partition heals (3 nodes, one cut off with iptables, so root): until every node shows
#    every node alive (HEAL_TRIALS rounds); skipped when not root;
#  - the per-client cap: the peak one client holds against its limit (30, 3 nodes) while it opens
#    connections over all nodes at 40/s and 200/s (CAP_TRIALS bursts of 90 each);
#  - gossip bytes/s per node with CLIENTS distinct clients (127.1.x.y, one connection each) on 3
#    nodes: every client's count published, while 100 clients a second reconnect, none published;
#  - a rolling restart of 3 nodes (SIGTERM, exit, start, ready, next) under 30 keep-alive clients:
#    answers, clean closes, resets, requests without an answer.
# All of it takes about 8 minutes on 2 cores.
#   TRIALS=100 DEATH_TRIALS=10 HEAL_TRIALS=20 CAP_TRIALS=5 CLIENTS=10000 NODES="3 5 10" cluster/measure.sh
set -euo pipefail
cd "$(dirname "$0")/.."
measure() { # test name, then what to keep of its output
  cargo test -q -p hearsay --test cluster "$1" -- --exact --ignored --nocapture 2>&1 | grep -E "$2|panicked"
}
cargo test -q -p hearsay --test cluster --no-run
for nodes in ${NODES:-3 5 10}; do
  HEARSAY_MEASURE_NODES=$nodes HEARSAY_MEASURE_TRIALS=${TRIALS:-100} \
    measure measure_convergence_and_gossip_traffic "nodes, gossip"
  HEARSAY_MEASURE_NODES=$nodes HEARSAY_MEASURE_DEATH_TRIALS=${DEATH_TRIALS:-10} \
    measure measure_death_detection "kills"
done
if [ "$(id -u)" = 0 ]; then
  HEARSAY_MEASURE_HEAL_TRIALS=${HEAL_TRIALS:-20} measure measure_time_to_alive_after_healing "partitions healed"
else
  echo "after-heal measurement skipped: it cuts gossip with iptables (run as root)"
fi
HEARSAY_MEASURE_CAP_TRIALS=${CAP_TRIALS:-5} measure measure_cap_overshoot_in_a_burst "cap overshoot"
# The test process holds one socket per client, the nodes one each too.
ulimit -n "$(( ${CLIENTS:-10000} * 2 + 1024 ))" 2>/dev/null || true
HEARSAY_MEASURE_CLIENTS=${CLIENTS:-10000} \
  measure measure_gossip_traffic_with_many_clients "clients connected|gossip per node"
measure measure_rolling_restart_under_load "rolling restart|SIGTERM| s: n[0-9]+ "
