#!/usr/bin/env bash
# Alternating flood runs of several servers, for before/after figures of a
# change: each round runs every server once, in turn, so that the
# machine's drift (other work, heat) falls on all of them alike. Each
# server runs pinned to CPU 0, chatbench on CPU 1 (flood, 100 clients, 10
# senders with 16 messages in flight each, as scripts/bench.sh; 3 s after
# 1 s of warm-up); it prints every run's server CPU
# µs per delivery and, at the end, each server's median.
#
#   bash scripts/alternate.sh ROUNDS NAME=COMMAND...
#
# COMMAND is a server command line without its address, which is
# appended; "{tmp}" in it becomes a fresh temporary directory per run.
# For example, the build of an older commit against this one:
#
#   git worktree add /tmp/old OLD_COMMIT && (cd /tmp/old && cargo build --release)
#   cargo build --release --bin mioserver --bin chatbench --example floor
#   bash scripts/alternate.sh 4 \
#       "old=/tmp/old/target/release/mioserver --rate-limit 0 --db :memory:" \
#       "new=target/release/mioserver --rate-limit 0 --db :memory:" \
#       "old-durable=/tmp/old/target/release/mioserver --rate-limit 0 --db {tmp}/bench.db" \
#       "new-durable=target/release/mioserver --rate-limit 0 --db {tmp}/bench.db" \
#       "floor=target/release/examples/floor"
#
# Needs taskset and jq (as scripts/bench.sh) and chatbench built.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=$1
shift
chatbench=target/release/chatbench
ulimit -n "$(ulimit -Hn)"
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
declare -A runs
port=29000
for round in $(seq "$rounds"); do
    for server in "$@"; do
        name=${server%%=*}
        # The directory is on this machine's disk, not a tmpfs, where an
        # fsync would be free.
        tmp=$(mktemp -d "$PWD/target/alternate.XXXXXX")
        read -r -a command <<<"${server#*=}"
        command=("${command[@]//\{tmp\}/$tmp}")
        port=$((port + 1))
        RUST_LOG=warn taskset -c 0 "${command[@]}" "127.0.0.1:$port" 2>/dev/null &
        pid=$!
        # Listening once a TCP connect succeeds (the floor speaks no HTTP).
        until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do sleep 0.05; done
        us=$(taskset -c 1 "$chatbench" flood --url "ws://127.0.0.1:$port/" --server-pid "$pid" \
            --clients 100 --senders 10 --window 16 --duration 3 --warmup 1 --json |
            jq -r .server.cpu_us_per_delivery)
        kill "$pid"
        wait "$pid" 2>/dev/null || true
        rm -rf "$tmp"
        runs[$name]+=" $us"
        printf '%s %-16s %.4f  (load %s)\n' "$round" "$name" "$us" "$(cut -d' ' -f1 /proc/loadavg)"
    done
done
echo "medians of server µs per delivery:"
for server in "$@"; do
    name=${server%%=*}
    median=$(tr ' ' '\n' <<<"${runs[$name]}" | grep . | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}')
    printf '  %-16s %.4f  (%s )\n' "$name" "$median" "${runs[$name]}"
done
