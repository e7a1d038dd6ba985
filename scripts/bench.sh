#!/usr/bin/env bash
# Builds mioserver, the floor (examples/floor.rs) and the tokio baseline
# (examples/tokio_baseline.rs), runs every chatbench scenario against each
# with the server pinned to CPU 0 and chatbench to CPU 1, and prints one
# table. See docs/performance.md for what the figures mean.
#
#   bash scripts/bench.sh           # quick: about four minutes
#   bash scripts/bench.sh --full    # longer runs, more clients
#
# Every server is started afresh for every scenario, so no run inherits
# another's history, connections or memory. Raw results stay in
# target/bench/*.json.
set -euo pipefail
cd "$(dirname "$0")/.."

# Tools: taskset (util-linux) pins processes, jq reads chatbench's JSON.
missing=()
command -v taskset >/dev/null || missing+=(util-linux)
command -v jq >/dev/null || missing+=(jq)
if ((${#missing[@]})); then
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [[ ${1:-} == --full ]]; then
    duration=10 warmup=2 clients=500 fanout_clients=500 senders=10 rate=400 dm_clients=500 dm_rate=20000 conns=19000
else
    duration=3 warmup=1 clients=100 fanout_clients=200 senders=10 rate=1000 dm_clients=100 dm_rate=10000 conns=10000
fi
cpus=$(nproc)
if ((cpus < 2)); then
    echo "bench.sh: needs two CPUs (one for the server, one for chatbench)" >&2
    exit 1
fi

cargo build --release --quiet --bin mioserver --bin chatbench --example floor --example tokio_baseline
bin=target/release
out=target/bench
mkdir -p "$out"
rm -f "$out"/*.json

# Servers and chatbench may use every descriptor the hard limit allows.
ulimit -n "$(ulimit -Hn)"

port=28765
server_pid=
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }
start_server() { # NAME
    # A fresh port that nobody (another server on this machine) holds.
    port=$((port + 1))
    while listening; do port=$((port + 1)); done
    local addr=127.0.0.1:$port
    case $1 in
    mioserver) RUST_LOG=warn taskset -c 0 "$bin/mioserver" "$addr" --rate-limit 0 2>"$out/$1.log" & ;;
    floor) taskset -c 0 "$bin/examples/floor" "$addr" 2>"$out/$1.log" & ;;
    tokio) taskset -c 0 "$bin/examples/tokio_baseline" "$addr" 2>"$out/$1.log" & ;;
    esac
    server_pid=$!
    # Wait (at most 5 s) until it accepts connections.
    for _ in $(seq 50); do
        if listening && kill -0 "$server_pid" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "bench.sh: $1 did not start; see $out/$1.log" >&2
    return 1
}
stop_server() {
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
}
trap stop_server EXIT

run() { # SERVER SCENARIO CHATBENCH-ARGS...
    local server=$1 scenario=$2
    shift 2
    start_server "$server" || return 0
    echo "  $server $scenario" >&2
    taskset -c 1 "$bin/chatbench" "$scenario" --url "ws://127.0.0.1:$port/" \
        --server-pid "$server_pid" --json "$@" >"$out/$server-$scenario.json" ||
        echo "bench.sh: chatbench $scenario against $server failed" >&2
    stop_server
}

load=(--duration "$duration" --warmup "$warmup")
echo "running (about $((12 * (duration + warmup + 3))) s)..." >&2
for server in mioserver floor tokio; do
    run "$server" fanout "${load[@]}" --clients "$fanout_clients" --senders "$senders" --rate "$rate"
    run "$server" flood "${load[@]}" --clients "$clients" --senders "$senders" --window 16
    # The floor broadcasts everything and has no DMs: nothing to measure.
    if [[ $server != floor ]]; then
        run "$server" dm "${load[@]}" --clients "$dm_clients" --rate "$dm_rate"
    fi
    # A join storm: every join is announced to everyone already there.
    run "$server" conns --duration 2 --clients "$conns" --connect-rate 1000
done

# One value from a result, or "-" when the run is missing.
get() { # SERVER SCENARIO JQ-FILTER
    local file=$out/$1-$2.json
    if [[ -s $file ]]; then jq -r "$3" "$file"; else echo -; fi
}
us_per_delivery='.server.cpu_us_per_delivery // "-" | if type == "number" then (. * 1000 | round / 1000) else . end'

echo
echo "chatbench on $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), server on CPU 0, chatbench on CPU 1"
echo "load: ${duration} s measured after ${warmup} s warm-up; fanout $fanout_clients clients ($senders sending at $rate msg/s); flood $clients clients ($senders sending); dm $dm_clients clients at $dm_rate msg/s"
printf '\n%-10s %-7s %12s %10s %9s %9s %8s %9s %10s\n' \
    server scenario deliveries/s "server µs" "p50 µs" "p99 µs" "loss %" "RSS MiB" "bench µs"
for scenario in fanout flood dm; do
    for server in mioserver floor tokio; do
        [[ -s $out/$server-$scenario.json ]] || continue
        printf '%-10s %-7s %12s %10s %9s %9s %8s %9s %10s\n' "$server" "$scenario" \
            "$(get "$server" "$scenario" '.deliveries_per_sec | round')" \
            "$(get "$server" "$scenario" "$us_per_delivery")" \
            "$(get "$server" "$scenario" '.latency_us.p50')" \
            "$(get "$server" "$scenario" '.latency_us.p99')" \
            "$(get "$server" "$scenario" '.loss.ratio * 100 | . * 1000 | round / 1000')" \
            "$(get "$server" "$scenario" '.server.rss_bytes / 1048576 | . * 10 | round / 10')" \
            "$(get "$server" "$scenario" '.chatbench.cpu_us_per_delivery | . * 1000 | round / 1000')"
    done
done

printf '\n%-10s %9s %8s %9s %9s %12s\n' server joined failed joins/s "RSS MiB" "KiB/client"
for server in mioserver floor tokio; do
    [[ -s $out/$server-conns.json ]] || continue
    printf '%-10s %9s %8s %9s %9s %12s\n' "$server" \
        "$(get "$server" conns '.clients_joined')" \
        "$(get "$server" conns '.connect_failures')" \
        "$(get "$server" conns '.connects_per_sec | round')" \
        "$(get "$server" conns '.server.rss_bytes / 1048576 | . * 10 | round / 10')" \
        "$(get "$server" conns '.server_rss_per_client / 1024 | . * 10 | round / 10')"
done

# The headline: CPU per delivery against the floor (goal: at most 1.25)
# and the baseline's against ours (goal: at least 2, i.e. twice the
# deliveries per core).
ratio() { # SCENARIO NUMERATOR-SERVER DENOMINATOR-SERVER
    local a b
    a=$(get "$2" "$1" '.server.cpu_us_per_delivery // empty')
    b=$(get "$3" "$1" '.server.cpu_us_per_delivery // empty')
    if [[ -n $a && -n $b && $a != - && $b != - ]]; then
        jq -nr "$a / $b | . * 100 | round / 100"
    else
        echo -
    fi
}
printf '\n%-8s %22s %24s\n' scenario "mioserver / floor" "tokio / mioserver"
printf '%-8s %22s %24s\n' "" "(goal <= 1.25)" "(goal >= 2)"
for scenario in fanout flood dm; do
    printf '%-8s %22s %24s\n' "$scenario" "$(ratio "$scenario" mioserver floor)" "$(ratio "$scenario" tokio mioserver)"
done
