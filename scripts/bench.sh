#!/usr/bin/env bash
# Builds mioserver, the floor (examples/floor.rs) and the tokio baseline
# (examples/tokio_baseline.rs), runs every chatbench scenario against each
# with the server pinned to CPU 0 and chatbench to CPU 1, and prints the
# tables of docs/performance.md. mioserver runs twice over: durable (its
# default: a SQLite file in this run's temporary directory, --sync full)
# and with --db :memory:; then once more durable over TLS (wss://, with a
# certificate made for the run); and as a cluster: two mioserver nodes
# sharing one redis-server (all three pinned to CPU 0), chatbench spreading
# its clients over both nodes.
#
#   bash scripts/bench.sh           # quick: about five minutes
#   bash scripts/bench.sh --full    # longer runs, more clients
#
# Every server is started afresh for every run, so no run inherits
# another's history, connections or memory. fanout and flood run three
# times, the servers taking turns, and the tables show medians. Raw
# results stay in target/bench/ (*.json from chatbench, *.metrics from
# mioserver's GET /metrics at the end of each run, *.redis from Redis's
# INFO commandstats after each cluster run).
set -euo pipefail
cd "$(dirname "$0")/.."

# Tools: taskset (util-linux) pins processes, jq reads chatbench's JSON,
# curl scrapes /metrics, openssl makes the TLS certificates, redis-server
# (with redis-cli) is the cluster's shared state.
missing=()
command -v taskset >/dev/null || missing+=(util-linux)
command -v jq >/dev/null || missing+=(jq)
command -v curl >/dev/null || missing+=(curl)
command -v openssl >/dev/null || missing+=(openssl)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)
if ((${#missing[@]})); then
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [[ ${1:-} == --full ]]; then
    duration=10 warmup=2 clients=500 fanout_clients=500 senders=10 rate=400 dm_clients=500 dm_rate=20000 conns=19000
else
    duration=3 warmup=1 clients=100 fanout_clients=200 senders=10 rate=1000 dm_clients=100 dm_rate=10000 conns=10000
fi
# Alternating runs of fanout and flood (medians are reported), and the
# TLS reconnect storm: 5 000 clients at 1 000/s.
runs=3 storm=5000
cpus=$(nproc)
if ((cpus < 2)); then
    echo "bench.sh: needs two CPUs (one for the server, one for chatbench)" >&2
    exit 1
fi

cargo build --release --quiet --bin mioserver --bin chatbench --example floor --example tokio_baseline
bin=target/release
# The cluster runs need a mioserver with --redis.
if "$bin/mioserver" --help | grep -q -- --redis; then
    cluster=(cluster)
else
    cluster=()
    echo "bench.sh: this mioserver has no --redis: NO CLUSTER RUNS" >&2
fi
out=target/bench
mkdir -p "$out"
rm -f "$out"/*.json "$out"/*.metrics "$out"/*.log

# The durable server's database and the TLS files live in a temporary
# directory on this machine's disk (not a tmpfs, where an fsync is free).
tmp=$(mktemp -d)
fstype=$(df --output=fstype "$tmp" | tail -1)
if [[ $fstype == tmpfs ]]; then
    rm -rf "$tmp"
    tmp=$(mktemp -d "$PWD/$out/tmp.XXXXXX")
    fstype=$(df --output=fstype "$tmp" | tail -1)
fi

# A test CA and a leaf for 127.0.0.1, both ECDSA P-256 (what a
# certificate authority hands out today, and cheap to sign handshakes with).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=bench-ca -keyout "$tmp/ca.key" -out "$tmp/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj /CN=127.0.0.1 -keyout "$tmp/key.pem" -out "$tmp/leaf.csr" 2>/dev/null
openssl x509 -req -in "$tmp/leaf.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" \
    -CAcreateserial -days 2 -out "$tmp/cert.pem" \
    -extfile <(printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n') 2>/dev/null

# Servers and chatbench may use every descriptor the hard limit allows.
ulimit -n "$(ulimit -Hn)"

port=28765
# The running server's processes (a cluster's nodes, then its Redis) and
# the ports its clients connect to.
pids=() ports=() redis_port=
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() { # a fresh port that nobody (another server on this machine) holds
    port=$((port + 1))
    while listening "$port"; do port=$((port + 1)); done
}
# Waits (at most 5 s) until process PID accepts connections on PORT.
await() { # NAME PID PORT
    for _ in $(seq 50); do
        if listening "$3" && kill -0 "$2" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "bench.sh: $1 did not start; see $out/$1.log" >&2
    return 1
}
start_server() { # NAME
    free_port
    local addr=127.0.0.1:$port
    # Each durable run starts with a new database.
    rm -f "$tmp"/bench.db*
    local durable=(--db "$tmp/bench.db" --sync full)
    ports=("$port")
    case $1 in
    durable) RUST_LOG=warn taskset -c 0 "$bin/mioserver" "$addr" --rate-limit 0 "${durable[@]}" 2>"$out/$1.log" & ;;
    memory) RUST_LOG=warn taskset -c 0 "$bin/mioserver" "$addr" --rate-limit 0 --db :memory: 2>"$out/$1.log" & ;;
    tls) RUST_LOG=warn taskset -c 0 "$bin/mioserver" "$addr" --rate-limit 0 "${durable[@]}" \
        --tls-cert "$tmp/cert.pem" --tls-key "$tmp/key.pem" 2>"$out/$1.log" & ;;
    floor) taskset -c 0 "$bin/examples/floor" "$addr" 2>"$out/$1.log" & ;;
    tokio) taskset -c 0 "$bin/examples/tokio_baseline" "$addr" 2>"$out/$1.log" & ;;
    cluster)
        # A fresh Redis for each run, so no run inherits another's
        # history; persisted as a production one would be (an append-only
        # file, fsynced every second, no snapshots).
        redis_port=$port
        rm -rf "$tmp/redis" && mkdir "$tmp/redis"
        taskset -c 0 redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$tmp/redis" \
            --save "" --appendonly yes --appendfsync everysec >"$out/$1-redis.log" 2>&1 &
        pids=($!)
        await "$1-redis" "${pids[0]}" "$redis_port" || return 1
        ports=()
        for node in 1 2; do
            free_port
            RUST_LOG=warn taskset -c 0 "$bin/mioserver" "127.0.0.1:$port" --rate-limit 0 \
                --redis "redis://127.0.0.1:$redis_port/" 2>"$out/$1-node$node.log" &
            # The nodes first, Redis last: chatbench reports each pid's
            # share in this order.
            pids=($! "${pids[@]}")
            ports+=("$port")
            await "$1-node$node" "$!" "$port" || return 1
        done
        return 0
        ;;
    esac
    pids=($!)
    await "$1" "${pids[0]}" "$port"
}
stop_server() {
    local pid
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    pids=()
}
trap 'stop_server; rm -rf "$tmp"' EXIT
# An interrupted run exits through the EXIT trap too, so no server outlives
# the script.
trap 'exit 130' INT
trap 'exit 143' TERM

# What the cluster asked of Redis since the last CONFIG RESETSTAT, leaving
# out bench.sh's own INFO and CONFIG: every command Redis ran (those the
# nodes' Lua scripts run included: INFO commandstats counts them too), the
# requests the nodes sent (the commands no script runs: EVALSHA and XREAD
# above all, one per round of messages), and the public messages numbered
# (the last id given, from the chat's {CHAT}:next_id key, whatever the
# chat's name).
redis_counts() { # INFO-FILE: "commands requests messages"
    local key last=0
    key=$(redis-cli -p "$redis_port" --scan --pattern '*:next_id' | head -1)
    [[ -n $key ]] && last=$(redis-cli -p "$redis_port" GET "$key")
    awk -F'[:=,]' -v last="$last" '
        /^cmdstat_/ && $1 !~ /^cmdstat_(info|config)/ { commands += $3 }
        $1 ~ /^cmdstat_(evalsha|eval|xread|script\|.*|hvals|select|client\|.*|ping|hello)$/ { requests += $3 }
        END { printf "%d %d %d\n", commands, requests, last }' "$1"
}

run() { # SERVER SCENARIO RUN CHATBENCH-ARGS...
    local server=$1 scenario=$2 name=$1-$2-$3
    shift 3
    start_server "$server" || { stop_server; return 0; }
    echo "  $name" >&2
    local scheme=ws tls=() scrape=http targets=() p file commands requests messages
    if [[ $server == tls ]]; then
        scheme=wss tls=(--ca-file "$tmp/ca.pem") scrape=https
    fi
    for p in "${ports[@]}"; do targets+=(--url "$scheme://127.0.0.1:$p/"); done
    for p in "${pids[@]}"; do targets+=(--server-pid "$p"); done
    # Each cluster run starts with fresh Redis counts and no message.
    [[ $server == cluster ]] && redis-cli -p "$redis_port" CONFIG RESETSTAT >/dev/null
    taskset -c 1 "$bin/chatbench" "$scenario" "${targets[@]}" "${tls[@]}" \
        --json "$@" >"$out/$name.json" ||
        echo "bench.sh: chatbench $scenario against $server failed" >&2
    # mioserver's own counts: the store's group commits and their latency.
    for p in "${ports[@]}"; do
        case $server in
        durable | memory | tls) file=$out/$name.metrics ;;
        cluster) file=$out/$name-$p.metrics ;;
        *) continue ;;
        esac
        curl -sf --cacert "$tmp/ca.pem" "$scrape://127.0.0.1:$p/metrics" >"$file" ||
            echo "bench.sh: cannot scrape $scrape://127.0.0.1:$p/metrics" >&2
    done
    # Redis's counts, added to chatbench's report of the run.
    if [[ $server == cluster && -s $out/$name.json ]]; then
        redis-cli -p "$redis_port" INFO commandstats >"$out/$name.redis"
        read -r commands requests messages < <(redis_counts "$out/$name.redis")
        jq --argjson c "$commands" --argjson r "$requests" --argjson m "$messages" \
            '.redis = {commands: $c, requests: $r, messages: $m} |
             .redis.commands_per_message = (if $m > 0 then $c / $m else null end) |
             .redis.requests_per_message = (if $m > 0 then $r / $m else null end)' \
            "$out/$name.json" >"$out/$name.tmp" && mv "$out/$name.tmp" "$out/$name.json"
    fi
    stop_server
}

servers=(durable memory floor tokio)
load=(--duration "$duration" --warmup "$warmup")
fanout=("${load[@]}" --clients "$fanout_clients" --senders "$senders" --rate "$rate")
flood=("${load[@]}" --clients "$clients" --senders "$senders" --window 16)
echo "load before the runs: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
# CPU time the hypervisor gave to others while this machine wanted it (the
# "steal" column of /proc/stat, in clock ticks): on a shared host it can
# take whole milliseconds from a run and shows up in the p99s first.
steal() { awk '/^cpu / { print $9 }' /proc/stat; }
steal_before=$(steal)
# Each load run lasts its load, start-up and drain; a storm of N joins
# takes N/500 s when the server announces them (N/1000 s at best).
echo "running (about $(((runs * (9 + 2 * ${#cluster[@]}) + 3) * (duration + warmup + 4) + 4 * (conns / 500 + 4) + storm / 500 + 4)) s)..." >&2
for i in $(seq "$runs"); do
    for server in "${servers[@]}" "${cluster[@]}"; do
        run "$server" fanout "$i" "${fanout[@]}"
        run "$server" flood "$i" "${flood[@]}"
    done
    run tls flood "$i" "${flood[@]}"
done
for server in "${servers[@]}"; do
    # The floor broadcasts everything and has no DMs: nothing to measure.
    if [[ $server != floor ]]; then
        run "$server" dm 1 "${load[@]}" --clients "$dm_clients" --rate "$dm_rate"
    fi
    # A join storm: every join is announced to everyone already there.
    run "$server" conns 1 --duration 2 --clients "$conns" --connect-rate 1000
done
# A reconnect storm over TLS: every client makes a full handshake.
run tls conns 1 --duration 2 --clients "$storm" --connect-rate 1000
echo "load after the runs: $(cut -d' ' -f1-3 /proc/loadavg); $SECONDS s in all" >&2
echo "CPU time taken by the host (steal) during the runs: $(awk -v t="$(($(steal) - steal_before))" \
    -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f s", t / hz }')" >&2

# The median over the runs of SERVER SCENARIO of a jq FILTER on each
# result (numbers only), rounded to DIGITS decimals; "-" without results.
median() { # SERVER SCENARIO JQ-FILTER DIGITS
    local files=("$out/$1-$2"-*.json)
    [[ -s ${files[0]} ]] || { echo -; return; }
    jq -sr --argjson d "$4" "[.[] | ($3) | numbers] | sort |
        if length == 0 then \"-\" else
        (if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end)
        | (. * pow(10; \$d) | round) / pow(10; \$d) end" "${files[@]}"
}
# Every run's value, for the noise.
each() { # SERVER SCENARIO JQ-FILTER DIGITS
    local files=("$out/$1-$2"-*.json)
    [[ -s ${files[0]} ]] || { echo -; return; }
    jq -r --argjson d "$4" "($3) | numbers | (. * pow(10; \$d) | round) / pow(10; \$d)" "${files[@]}" | xargs
}
cpu='.server.cpu_us_per_delivery'

echo
echo "chatbench on $cpus CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), server on CPU 0, chatbench on CPU 1"
echo "load: ${duration} s measured after ${warmup} s warm-up; fanout $fanout_clients clients ($senders sending at $rate msg/s); flood $clients clients ($senders sending); dm $dm_clients clients at $dm_rate msg/s"
echo "durable: --db in $tmp ($fstype) --sync full; fanout and flood: medians of $runs alternating runs"
printf '\n%-8s %-7s %12s %10s %9s %9s %8s %9s %10s\n' \
    server scenario deliveries/s "server µs" "p50 µs" "p99 µs" "loss %" "RSS MiB" "bench µs"
for scenario in fanout flood dm; do
    for server in "${servers[@]}" tls "${cluster[@]}"; do
        [[ -s $out/$server-$scenario-1.json ]] || continue
        printf '%-8s %-7s %12s %10s %9s %9s %8s %9s %10s\n' "$server" "$scenario" \
            "$(median "$server" "$scenario" .deliveries_per_sec 0)" \
            "$(median "$server" "$scenario" "$cpu" 3)" \
            "$(median "$server" "$scenario" .latency_us.p50 0)" \
            "$(median "$server" "$scenario" .latency_us.p99 0)" \
            "$(median "$server" "$scenario" '.loss.ratio * 100' 3)" \
            "$(median "$server" "$scenario" '.server.rss_bytes / 1048576' 1)" \
            "$(median "$server" "$scenario" .chatbench.cpu_us_per_delivery 3)"
    done
done

echo
echo "each run's server µs per delivery (flood) and p99 µs (fanout):"
for server in "${servers[@]}" tls "${cluster[@]}"; do
    printf '  %-8s flood %-24s fanout %s\n' "$server" "$(each "$server" flood "$cpu" 3)" "$(each "$server" fanout .latency_us.p99 0)"
done

printf '\n%-14s %9s %8s %9s %9s %12s\n' server joined failed joins/s "RSS MiB" "KiB/client"
for server in "${servers[@]}" tls; do
    [[ -s $out/$server-conns-1.json ]] || continue
    label=$server
    [[ $server == tls ]] && label="tls (storm)"
    printf '%-14s %9s %8s %9s %9s %12s\n' "$label" \
        "$(median "$server" conns .clients_joined 0)" \
        "$(median "$server" conns .connect_failures 0)" \
        "$(median "$server" conns .connects_per_sec 0)" \
        "$(median "$server" conns '.server.rss_bytes / 1048576' 1)" \
        "$(median "$server" conns '.server_rss_per_client / 1024' 2)"
done

# The headline ratios of medians, with their goals (issues #10 and #13).
ratio() { # A B: A / B, or "-"
    if [[ $1 != - && $2 != - ]]; then jq -nr "$1 / $2 | . * 100 | round / 100"; else echo -; fi
}
flood_of() { median "$1" flood "$cpu" 4; }
p99_of() { median "$1" fanout .latency_us.p99 0; }
echo
printf '%-34s %8s %8s\n' ratio measured goal
printf '%-34s %8s %8s\n' "flood: durable / floor" "$(ratio "$(flood_of durable)" "$(flood_of floor)")" "<= 1.4"
printf '%-34s %8s %8s\n' "flood: durable / tokio" "$(ratio "$(flood_of durable)" "$(flood_of tokio)")" "<= 0.6"
printf '%-34s %8s %8s\n' "flood: :memory: / floor" "$(ratio "$(flood_of memory)" "$(flood_of floor)")" "<= 1.15"
printf '%-34s %8s %8s\n' "flood: TLS / durable plaintext" "$(ratio "$(flood_of tls)" "$(flood_of durable)")" "<= 2"
printf '%-34s %8s %8s\n' "fanout p99: durable / tokio" "$(ratio "$(p99_of durable)" "$(p99_of tokio)")" "<= 2"

# The cluster beside the single durable server (issue #11).
if ((${#cluster[@]})); then
    echo
    echo "cluster: 2 mioserver nodes (--redis) and redis-server (--appendonly yes --appendfsync everysec), all on CPU 0;"
    echo "chatbench's clients alternate between the nodes; server µs is the sum over the three processes"
    row() { printf '%-46s %9s %9s %7s %7s\n' "$@"; }
    row "" cluster durable ratio goal
    row "fanout loss %" "$(median cluster fanout '.loss.ratio * 100' 3)" "$(median durable fanout '.loss.ratio * 100' 3)" "" 0
    row "fanout p99 µs" "$(p99_of cluster)" "$(p99_of durable)" "$(ratio "$(p99_of cluster)" "$(p99_of durable)")" "<= 3"
    row "flood server µs/delivery" "$(flood_of cluster)" "$(flood_of durable)" "$(ratio "$(flood_of cluster)" "$(flood_of durable)")" "<= 1.5"
    # The goal is flood's, where rounds carry many messages; fanout's
    # paced messages mostly come one per round.
    for scenario in flood fanout; do
        goal="<= 0.1"
        [[ $scenario == fanout ]] && goal=""
        row "Redis requests per public message ($scenario)" "$(median cluster "$scenario" .redis.requests_per_message 4)" "" "" "$goal"
        row "  commands, those of scripts too ($scenario)" "$(median cluster "$scenario" .redis.commands_per_message 4)" "" "" ""
    done
    echo "cluster flood, µs/delivery by process (medians): node 1 $(median cluster flood '.servers[0].cpu_us_per_delivery' 3)," \
        "node 2 $(median cluster flood '.servers[1].cpu_us_per_delivery' 3), redis-server $(median cluster flood '.servers[2].cpu_us_per_delivery' 3)"
    calls() { jq -r '"\(.redis.requests)/\(.redis.commands)/\(.redis.messages)"' "$out/cluster-$1"-*.json | xargs; }
    echo "each cluster run's Redis requests/commands/public messages: flood $(calls flood), fanout $(calls fanout)"
fi

# The store's group commits, from mioserver's GET /metrics at the end of
# each run (warm-up included): one fsync per commit with --sync full.
# Percentiles are read from the histogram's buckets, interpolating within
# a bucket as Prometheus's histogram_quantile does.
store() { # METRICS-FILE: "commits messages fsyncs/message p50-ms p99-ms mean-ms"
    awk '
        /^miochat_store_commits_total / { commits = $2 }
        /^miochat_store_messages_total / { messages = $2 }
        /^miochat_store_commit_seconds_sum / { sum = $2 }
        /^miochat_store_commit_seconds_bucket/ {
            match($0, /le="[^"]*"/); le = substr($0, RSTART + 4, RLENGTH - 5)
            n++; bound[n] = (le == "+Inf") ? "inf" : le + 0; cum[n] = $2
        }
        function quantile(q,   target, i, lo, below) {
            target = q * cum[n]; lo = 0; below = 0
            for (i = 1; i <= n; i++) {
                if (cum[i] >= target) {
                    if (bound[i] == "inf") return sprintf(">%.3g", lo * 1000)
                    if (cum[i] == below) return sprintf("%.3g", bound[i] * 1000)
                    return sprintf("%.3g", (lo + (bound[i] - lo) * (target - below) / (cum[i] - below)) * 1000)
                }
                lo = bound[i]; below = cum[i]
            }
        }
        END {
            if (!commits || !messages) { print "- - - - - -"; exit }
            printf "%d %d %.4f %s %s %.3g\n", commits, messages, commits / messages,
                quantile(0.5), quantile(0.99), sum / cum[n] * 1000
        }' "$1"
}
printf '\n%-18s %9s %10s %14s %9s %9s %9s\n' "store (GET /metrics)" commits messages fsyncs/message "p50 ms" "p99 ms" "mean ms"
for server in durable memory tls; do
    for scenario in flood fanout; do
        for file in "$out/$server-$scenario"-*.metrics; do
            [[ -s $file ]] || continue
            name=$(basename "$file" .metrics)
            # shellcheck disable=SC2046
            printf '%-20s %9s %10s %14s %9s %9s %9s\n' "$name" $(store "$file")
        done
    done
done

echo
echo "TLS: records per delivery (flood, each run): $(each tls flood .tls_records_per_delivery 4)"
echo "TLS storm: $(median tls conns .clients_joined 0) of $storm joined, $(median tls conns .connect_failures 0) failed, in $(median tls conns .connect_seconds 2) s"
