#!/usr/bin/env bash
# Runs the Autobahn|Testsuite fuzzing client against examples/echo.rs, which
# serves miochat's event loop and connection state machine with an echo
# application. Installs the suite on first use (Python 2.7 from pyenv, about
# two minutes), prints "N passed, N failed" and exits non-zero on a failure.
#
# Every case must end OK, NON-STRICT or INFORMATIONAL. Cases 12.* and 13.*
# (permessage-deflate) are excluded: tungstenite does not negotiate compression.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${AUTOBAHN_VENV:-$HOME/.cache/miochat/autobahn-venv}
port=${AUTOBAHN_PORT:-9001}
work=$(mktemp -d)
trap 'kill "${server_pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT

if [ ! -x "$venv/bin/wstest" ]; then
    echo "== installing autobahntestsuite into $venv"
    python27="$(pyenv root)/versions/2.7.18/bin/python"
    "$python27" -m pip install -q "virtualenv<20.22"
    "$python27" -m virtualenv -q "$venv"
    "$venv/bin/pip" install -q autobahntestsuite==25.10.1
fi

# The debug build: `cargo test` has already built it in CI, and the suite
# checks behaviour, not speed.
echo "== building the echo server"
cargo build --example echo
./target/debug/examples/echo "127.0.0.1:$port" &
server_pid=$!
# Wait until it accepts connections (bounded: 10 s).
for _ in $(seq 100); do
    if (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    sleep 0.1
done

cat > "$work/fuzzingclient.json" <<JSON
{
  "outdir": "$work/reports",
  "servers": [{"agent": "miochat", "url": "ws://127.0.0.1:$port"}],
  "cases": ["*"],
  "exclude-cases": ["12.*", "13.*"],
  "exclude-agent-cases": {},
  "options": {"failByDrop": true}
}
JSON
echo "== running the fuzzing client"
(cd "$work" && "$venv/bin/wstest" -m fuzzingclient -s fuzzingclient.json > wstest.log 2>&1) || {
    tail -20 "$work/wstest.log"
    exit 1
}

python3 - "$work/reports/index.json" <<'PY'
import json, sys
results = json.load(open(sys.argv[1]))["miochat"]
good = {"OK", "NON-STRICT", "INFORMATIONAL"}
failed = sorted(
    (case for case, r in results.items() if r["behavior"] not in good or r["behaviorClose"] not in good),
    key=lambda c: [int(p) for p in c.split(".")],
)
for case in failed:
    r = results[case]
    print(f"FAILED {case}: behavior {r['behavior']}, close {r['behaviorClose']}")
counts = {}
for r in results.values():
    counts[r["behavior"]] = counts.get(r["behavior"], 0) + 1
print("autobahn behaviors:", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
sys.exit(1 if failed else 0)
PY
