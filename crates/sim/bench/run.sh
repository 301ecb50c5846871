#!/usr/bin/env bash
# Measures sluice-sim's non-streaming throughput with wrk (see docs/benchmarks-sim.md).
# Usage: crates/sim/bench/run.sh [DURATION] [CONNECTIONS] [extra sluice-sim flags...]
# Default: 30s, 64 connections, quotas high enough that every request is metered and admitted.
set -euo pipefail
cd "$(dirname "$0")/../../.."
duration=${1:-30s}
connections=${2:-64}
shift $(( $# > 2 ? 2 : $# ))
flags=("$@")
if [ ${#flags[@]} -eq 0 ]; then
  flags=(--rpm 100000000 --tpm 100000000000 --rps 10000000 --dialect openai)
fi
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 1; }
target=${CARGO_TARGET_DIR:-target}
cargo build --release -p sluice-sim >&2
out=$(mktemp)
"$target/release/sluice-sim" --listen 127.0.0.1:0 "${flags[@]}" >"$out" &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$out"' EXIT
for _ in $(seq 50); do grep -q '^listening on ' "$out" && break; sleep 0.1; done
addr=$(sed -n 's/^listening on //p' "$out")
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)  cores: $(nproc)  cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)"
echo "sluice-sim ${flags[*]}"
wrk -t2 -c"$connections" -d"$duration" -s crates/sim/bench/chat.lua "http://$addr"
curl -s "http://$addr/stats" >"$out.stats"
python3 - "$out.stats" <<'PY'
import json, sys
with open(sys.argv[1]) as f:
    report = json.load(f)
for name, account in report["accounts"].items():
    for model, m in account["models"].items():
        refused = sum(m["refused"].values())
        peaks = ", ".join(f"{l['unit']}/{l['window_ms']}ms={l['peak']}" for l in m["limits"])
        print(f"/stats {name} {model}: accepted {m['accepted']}, refused {refused}, peaks {peaks}")
PY
rm -f "$out.stats"
