#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ (see docs/fuzzing.md), one at a
# time, on one CPU.
#
#   bash scripts/fuzz.sh                 # every target, 600 s each
#   bash scripts/fuzz.sh connection 60   # one target, 60 s
#   bash scripts/fuzz.sh all 30          # every target, 30 s each
#
# Targets: protocol, http_head, command, connection. FUZZ_CPU [1] is the
# CPU the fuzzer is pinned to. A crash stops the run: its input is saved in
# fuzz/artifacts/TARGET/ and the script exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."

targets=(protocol http_head command connection)
which=${1:-all}
seconds=${2:-600}
cpu=${FUZZ_CPU:-1}

if ! command -v cargo-fuzz >/dev/null; then
    cargo install --locked cargo-fuzz
fi
# taskset (util-linux) pins the fuzzer to one CPU.
if ! command -v taskset >/dev/null; then
    apt-get update -qq && apt-get install -y -qq util-linux >/dev/null
fi

# cargo fuzz passes nightly-only flags (-Zsanitizer=address and others) to
# rustc. Only the stable toolchain is installed here, and RUSTC_BOOTSTRAP=1
# lets the stable compiler accept them. With nightly, drop it and run
# `cargo +nightly fuzz`.
export RUSTC_BOOTSTRAP=1

if [[ $which == all ]]; then
    run=("${targets[@]}")
else
    run=("$which")
fi
for target in "${run[@]}"; do
    corpus=fuzz/corpus/$target
    mkdir -p "$corpus"
    # Committed seeds, read as a second corpus: libFuzzer adds what it
    # finds to the first (fuzz/corpus, not committed) and leaves them be.
    seeds=()
    [[ -d fuzz/seeds/$target ]] && seeds=("fuzz/seeds/$target")
    echo "== fuzz $target for $seconds s" >&2
    # The default build is optimised, with debug assertions and overflow
    # checks on and AddressSanitizer. One job, one worker: one CPU. With
    # -jobs, libFuzzer runs the fuzzer in a child process that logs to
    # fuzz-0.log and prints that log when it ends; the copy is removed.
    status=0
    taskset -c "$cpu" cargo fuzz run "$target" "$corpus" "${seeds[@]}" -- \
        -max_total_time="$seconds" -jobs=1 -workers=1 -print_final_stats=1 || status=$?
    rm -f fuzz-0.log
    if ((status)); then
        echo "fuzz.sh: $target failed; its input is in fuzz/artifacts/$target/" >&2
        exit "$status"
    fi
done
