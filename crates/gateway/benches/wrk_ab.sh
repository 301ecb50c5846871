#!/bin/bash
# Closed-loop A/B of gateway builds on the embedded store (docs/benchmarks.md, #17).
# Usage: [REDIS_URL=redis://…] crates/gateway/benches/wrk_ab.sh OLD_GATEWAY_BINARY NEW_GATEWAY_BINARY [ROUNDS]
# (with REDIS_URL, the gateways use that Redis instead of the embedded store)
# Starts sluice-sim (target/release) on 127.0.0.1:18090 with limits far above the load,
# then per round and per build: a fresh gateway on 127.0.0.1:18080 with one account and
# its default logging (info, to /dev/null), three `wrk -t2 -c4 -d6s` runs in a row (a
# gateway that slows as it runs shows it) and one at 64 connections, then one run
# against the simulator directly. Needs wrk; prints p50, p99, req/s and the CPU time
# the gateway (or the simulator) spent per request, from /proc/PID/stat.
set -euo pipefail
command -v wrk >/dev/null || { echo "wrk_ab.sh needs wrk (apt-get install wrk)" >&2; exit 1; }
old=$1; new=$2; rounds=${3:-2}
dir=$(mktemp -d)
cat > "$dir/gw.toml" <<'TOML'
[server]
listen = "127.0.0.1:18080"
[[upstreams]]
name = "sim"
base_url = "http://127.0.0.1:18090/v1"
dialect = "openai"
keys = ["sk-bench"]
[[models]]
name = "qwen3-max"
upstream = "sim"
rpm = 100000000
tpm = 100000000000
rps = 10000000
TOML
# No max_tokens: the output estimate differs from the answer, so every request reconciles.
cat > "$dir/chat.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
wrk.body = '{"model":"qwen3-max","messages":[{"role":"user","content":"Say hello in one short sentence."}]}'
LUA
target/release/sluice-sim --listen 127.0.0.1:18090 --rpm 100000000 --tpm 100000000000 \
  --rps 10000000 >/dev/null 2>&1 &
sim=$!
trap 'kill $sim 2>/dev/null || true; rm -rf "$dir"' EXIT
until curl -s -o /dev/null http://127.0.0.1:18090/; do sleep 0.1; done
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# load URL PID [CONNECTIONS]
load() {
  local t0 out
  t0=$(cpu_ticks "$2")
  out=$(wrk -t2 -c"${3:-4}" -d6s --latency -s "$dir/chat.lua" "$1/v1/chat/completions")
  echo "$out" | awk -v t0="$t0" -v t1="$(cpu_ticks "$2")" -v hz="$(getconf CLK_TCK)" \
    '/^ +50%/{p50=$2} /^ +99%/{p99=$2} /requests in/{n=$1} /^Requests\/sec/{rps=$2}
     END{printf "p50 %s, p99 %s, %s req/s, %.0f us CPU per request\n", p50, p99, rps, (t1-t0)/hz*1e6/n}'
}
for r in $(seq "$rounds"); do
  for build in "$old" "$new"; do
    "$build" --config "$dir/gw.toml" ${REDIS_URL:+--redis-url "$REDIS_URL"} >/dev/null 2>&1 &
    gw=$!
    until curl -s -o /dev/null http://127.0.0.1:18080/healthz; do sleep 0.1; done
    for run in 1 2 3; do echo "round $r, $build, run $run: $(load http://127.0.0.1:18080 $gw)"; done
    echo "round $r, $build, 64 connections: $(load http://127.0.0.1:18080 $gw 64)"
    kill $gw; wait $gw 2>/dev/null || true
  done
  echo "round $r, sim directly: $(load http://127.0.0.1:18090 $sim)"
done
