#!/usr/bin/env bash
# Cuts (or heals) gossip between two groups of local nodes that gossip from their own loopback
# addresses, with iptables (root). For trying partitions by hand with cluster/n*.toml:
#   cluster/partition.sh cut "127.0.0.11 127.0.0.12" "127.0.0.13"
#   cluster/partition.sh heal "127.0.0.11 127.0.0.12" "127.0.0.13"
# Only UDP between the two groups is dropped: clients and admin calls still reach every node.
set -euo pipefail
action=${1:?cut or heal}; side_a=${2:?addresses of side A}; side_b=${3:?addresses of side B}
case $action in cut) flag=-I ;; heal) flag=-D ;; *) echo "cut or heal" >&2; exit 2 ;; esac
for a in $side_a; do
  for b in $side_b; do
    iptables $flag INPUT -p udp -s "$a" -d "$b" -j DROP
    iptables $flag INPUT -p udp -s "$b" -d "$a" -j DROP
  done
done
echo "$action: $side_a | $side_b"
