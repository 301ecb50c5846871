#!/bin/bash
# Closed-loop A/B of gateway builds on the embedded store (docs/benchmarks.md, #17).
# Usage: crates/gateway/benches/wrk_ab.sh OLD_GATEWAY_BINARY NEW_GATEWAY_BINARY [ROUNDS]
# Starts sluice-sim (target/release) on 127.0.0.1:18090 with limits far above the load,
# then per round and per build: a fresh gateway on 127.0.0.1:18080 with one account,
# three `wrk -t2 -c4 -d6s` runs in a row (a gateway that slows as it runs shows it),
# then one run against the simulator directly. Needs wrk; prints p50, p99, req/s.
set -euo pipefail
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
load() {
  wrk -t2 -c4 -d6s --latency -s "$dir/chat.lua" "$1/v1/chat/completions" |
    awk '/^ +50%/{p50=$2} /^ +99%/{p99=$2} /^Requests\/sec/{rps=$2} END{print "p50 " p50 ", p99 " p99 ", " rps " req/s"}'
}
for r in $(seq "$rounds"); do
  for build in "$old" "$new"; do
    SLUICE_LOG=error "$build" --config "$dir/gw.toml" >/dev/null 2>&1 &
    gw=$!
    until curl -s -o /dev/null http://127.0.0.1:18080/healthz; do sleep 0.1; done
    for run in 1 2 3; do echo "round $r, $build, run $run: $(load http://127.0.0.1:18080)"; done
    kill $gw; wait $gw 2>/dev/null || true
  done
  echo "round $r, sim directly: $(load http://127.0.0.1:18090)"
done
