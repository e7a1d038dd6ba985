#!/usr/bin/env bash
# Soak test: holds many clients chatting through one mioserver for a while
# and checks that nothing is lost and that the server's memory stays flat.
#
#   bash scripts/soak.sh            # 2 minutes
#   bash scripts/soak.sh 30         # 30 minutes
#
# It starts a release mioserver on a free loopback port (rate limiting off,
# since the load is ours), runs chatbench's `fanout` scenario against it
# (CLIENTS clients, SENDERS of them sending RATE messages per second in
# total, every client receiving every message), and samples the server's
# resident memory (VmRSS in /proc/PID/status) every SAMPLE_SECONDS. At the
# end it prints the loss, the latency percentiles and the memory series.
#
# It fails (exit 1) when any message is lost, any client is refused or
# dropped, the server answers with an error, or the memory grew after
# warm-up: the last sample may exceed the first one taken after
# WARMUP_SECONDS by at most RSS_TOLERANCE_PCT percent. Warm-up is excluded
# because allocator arenas, socket buffers and the history grow to their
# working size in the first seconds; after that a leak is the only reason
# for steady growth. See docs/fuzzing.md.
#
# Settings (environment variables, defaults in brackets): CLIENTS [500],
# SENDERS [10], RATE [50], SIZE [64], SAMPLE_SECONDS [5], WARMUP_SECONDS
# [30], RSS_TOLERANCE_PCT [10], CPUS [all: a taskset list such as 1 pins
# both processes to CPU 1].
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=${1:-2}
clients=${CLIENTS:-500}
senders=${SENDERS:-10}
rate=${RATE:-50}
size=${SIZE:-64}
sample_seconds=${SAMPLE_SECONDS:-5}
warmup_seconds=${WARMUP_SECONDS:-30}
tolerance_pct=${RSS_TOLERANCE_PCT:-10}
pin=()
if [[ -n ${CPUS:-} ]]; then pin=(taskset -c "$CPUS"); fi

# jq reads chatbench's JSON; taskset (util-linux) pins when asked to.
missing=()
command -v jq >/dev/null || missing+=(jq)
command -v taskset >/dev/null || missing+=(util-linux)
if ((${#missing[@]})); then
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cargo build --release --quiet --bin mioserver --bin chatbench
bin=target/release
out=target/soak
mkdir -p "$out"
ulimit -n "$(ulimit -Hn)"

# A free port: the first from 38765 on that nobody accepts connections on.
port=38765
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }
while listening; do port=$((port + 1)); done

server_pid= sampler_pid=
cleanup() {
    [[ -n $sampler_pid ]] && kill "$sampler_pid" 2>/dev/null
    [[ -n $server_pid ]] && kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    return 0
}
trap cleanup EXIT

RUST_LOG=warn "${pin[@]}" "$bin/mioserver" "127.0.0.1:$port" --rate-limit 0 --db :memory: \
    2>"$out/mioserver.log" &
server_pid=$!
for _ in $(seq 50); do
    listening && break
    sleep 0.1
done
listening || { echo "soak.sh: mioserver did not start; see $out/mioserver.log" >&2; exit 1; }

# The memory sampler: "SECONDS KIB" lines, from before the first client on.
rss_file=$out/rss.txt
: >"$rss_file"
(
    start=$SECONDS
    while kib=$(awk '/^VmRSS:/ { print $2 }' "/proc/$server_pid/status" 2>/dev/null); do
        echo "$((SECONDS - start)) $kib" >>"$rss_file"
        sleep "$sample_seconds"
    done
) &
sampler_pid=$!

echo "soak: $clients clients, $senders senders, $rate msg/s for $minutes min against 127.0.0.1:$port" >&2
status=0
"${pin[@]}" "$bin/chatbench" fanout --url "ws://127.0.0.1:$port/" \
    --clients "$clients" --senders "$senders" --rate "$rate" --size "$size" \
    --duration $((minutes * 60)) --warmup 5 --server-pid "$server_pid" --json \
    >"$out/chatbench.json" || status=1
# The run and its drain are over: stop sampling.
kill "$sampler_pid" 2>/dev/null || true
wait "$sampler_pid" 2>/dev/null || true
sampler_pid=
if ((status)); then
    echo "soak.sh: chatbench failed" >&2
    exit 1
fi

report=$out/chatbench.json
jq -r '"clients joined \(.clients_joined), failed \(.connect_failures), dropped \(.disconnects), server errors \(.server_errors)",
       "messages sent \(.loss.sent), copies expected \(.loss.expected), delivered \(.loss.delivered), lost \(.loss.lost)",
       "deliveries/s \(.deliveries_per_sec | floor) over \(.measured_seconds) s",
       "latency µs: p50 \(.latency_us.p50), p90 \(.latency_us.p90), p99 \(.latency_us.p99), p99.9 \(.latency_us.p999), max \(.latency_us.max)",
       "server CPU \(.server.cpu_seconds) s"' "$report"

# The memory series, then its verdict.
echo "server RSS (seconds KiB):"
awk '{ printf "  %5d %8d\n", $1, $2 }' "$rss_file"
read -r rss_min rss_max base last < <(awk -v w="$warmup_seconds" '
    NR == 1 || $2 < min { min = $2 }
    NR == 1 || $2 > max { max = $2 }
    $1 >= w && base == "" { base = $2 }
    { last = $2 }
    END { print min, max, (base == "" ? last : base), last }' "$rss_file")
growth_pct=$(awk -v b="$base" -v l="$last" 'BEGIN { printf "%.1f", (l - b) * 100 / b }')
echo "RSS min $rss_min KiB, max $rss_max KiB; after warm-up ${base} KiB -> ${last} KiB (${growth_pct}%, tolerance ${tolerance_pct}%)"

fail=0
if [[ $(jq '.loss.lost + .connect_failures + .disconnects + .server_errors' "$report") != 0 ]]; then
    echo "soak: FAIL: messages lost, clients refused or dropped, or server errors" >&2
    fail=1
fi
if awk -v g="$growth_pct" -v t="$tolerance_pct" 'BEGIN { exit !(g > t) }'; then
    echo "soak: FAIL: server memory grew ${growth_pct}% after warm-up" >&2
    fail=1
fi
((fail)) || echo "soak: PASS"
exit "$fail"
