#!/usr/bin/env bash
# Goodput and overhead of the sluice mode from 1 to 16 gateway processes sharing one Redis.
# Two scenarios: the demo (1.25x over-subscribed: goodput, 429s, failures) and the same
# fleet at half the rate (0.62x: queue wait ~ what the gateway path adds).
#   REDIS_URL=redis://127.0.0.1:6379 bash crates/bench/sweep.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${BIN:-target/release}
out=${1:-target/sluice-bench/sweep}
redis=${REDIS_URL:?set REDIS_URL}
mkdir -p "$out"
python3 -c 'import re,sys; print(re.sub(r"(?m)^rate = ([0-9.]+)", lambda m: "rate = %g" % (float(m.group(1)) / 2), open(sys.argv[1]).read()))' \
  crates/bench/scenarios/demo.toml > "$out/half.toml"
for scen in demo half; do
  args=()
  [ "$scen" = half ] && args=(--scenario "$out/half.toml")
  for n in 1 2 4 8 16; do
    "$bin/sluice-bench" "${args[@]}" --modes sluice --gateways "$n" --redis-url "$redis" \
      --sim-bin "$bin/sluice-sim" --gateway-bin "$bin/sluice-gateway" --no-sidecar \
      --out "$out/$scen-$n" --no-progress >/dev/null 2>"$out/$scen-$n.err" || { cat "$out/$scen-$n.err"; exit 1; }
    python3 - "$out/$scen-$n/report.json" "$scen" "$n" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); m = r["modes"][0]
print(f"| {sys.argv[2]} | {sys.argv[3]} | {m['quota_share']*100:.1f}% | {m['upstream_429s']} | {m['failed']}/{m['offered']} "
      f"| {m['queue_wait_ms']['p50']:.0f} / {m['queue_wait_ms']['p99']:.0f} | {m['latency_ms']['p50']:.0f} / {m['latency_ms']['p99']:.0f} |")
PY
  done
done
