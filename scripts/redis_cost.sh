#!/usr/bin/env bash
# Redis's CPU per public message as the number of cluster nodes grows
# (1 to 4 nodes, each reading every message back from the history
# stream): chatbench flood, 100 clients spread over the nodes, 10
# senders. The figures behind docs/cluster.md's projection.
#
#   bash scripts/redis_cost.sh
#
# Needs redis-server, redis-cli, jq and bc; builds the release binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin mioserver --bin chatbench
M=target/release
tick_us=$((1000000 / $(getconf CLK_TCK)))
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
for n in 1 2 3 4; do
  dir=$(mktemp -d); port=$((16400+n))
  redis-server --port $port --save "" --appendonly yes --appendfsync everysec --dir $dir >/dev/null 2>&1 &
  until redis-cli -p $port ping >/dev/null 2>&1; do sleep 0.05; done
  urls=(); pids=()
  for i in $(seq 1 $n); do
    p=$((17100+10*n+i))
    $M/mioserver 127.0.0.1:$p --redis redis://127.0.0.1:$port/ --rate-limit 0 >/dev/null 2>&1 &
    pids+=($!); urls+=(--url ws://127.0.0.1:$p/)
  done
  for url in "${urls[@]}"; do
      [[ $url == --url ]] && continue
      until curl -sf "http${url#ws}healthz" >/dev/null; do sleep 0.05; done
  done
  # Redis's CPU time over the whole chatbench run (joins, warm-up and
  # measurement), over every message published in it.
  rpid=$(pgrep -f "redis-server .*:$port")
  t0=$(awk '{print $14+$15}' /proc/$rpid/stat)
  out=$($M/chatbench flood "${urls[@]}" --clients 100 --senders 10 --duration 3 --warmup 1 --json)
  t1=$(awk '{print $14+$15}' /proc/$rpid/stat)
  msgs=$(redis-cli -p $port get '{miochat}:next_id')
  echo "nodes=$n redis_cpu_ticks=$((t1-t0)) messages=$msgs redis_us_per_message=$(echo "($t1-$t0)*$tick_us/$msgs" | bc -l | cut -c1-6) deliveries_per_s=$(echo "$out" | jq .deliveries_per_sec)"
  kill "${pids[@]}"; redis-cli -p $port shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"
done
