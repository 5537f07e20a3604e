#!/usr/bin/env bash
# Checks what deploy/ ships without pulling or building an image (.ci/run runs it): every compose
# file resolves (docker-compose config), every YAML file is lint-clean (yamllint, settings in
# deploy/.yamllint.yaml), Prometheus' config loads (promtool), and every node config passes
# `hearsay check-config` (with a scratch cluster key at the path the containers mount theirs).
#   deploy/check.sh            # uses $CARGO_TARGET_DIR (else target)/debug/hearsay, built if missing
set -euo pipefail
cd "$(dirname "$0")/.."
hearsay=${HEARSAY:-${CARGO_TARGET_DIR:-target}/debug/hearsay}
[[ -x $hearsay ]] || cargo build -q --locked -p hearsay

for file in deploy/*/compose.yaml; do
  docker-compose -f "$file" config -q
  echo "$file: ok (docker-compose config)"
done
yamllint --strict -c deploy/.yamllint.yaml deploy/
echo "deploy/: ok (yamllint)"
promtool check config deploy/observability/prometheus.yml

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
head -c 32 /dev/urandom | base64 > "$scratch/cluster.key"
for config in deploy/*/n*.toml deploy/hearsay.example.toml; do
  copy="$scratch/$(basename "$(dirname "$config")")-$(basename "$config")"
  sed "s|/etc/hearsay/cluster.key|$scratch/cluster.key|" "$config" > "$copy"
  "$hearsay" check-config "$copy" >/dev/null
  echo "$config: ok (hearsay check-config)"
done
