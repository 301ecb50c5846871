#!/usr/bin/env bash
# Throughput and Redis cost from 1 to 32 gateway processes sharing one Redis (#17,
# docs/benchmarks.md): the same open-loop traffic (scenarios/flat.toml: 32 replicas,
# 1,000 requests/s in all, limits far above it, a provider that answers at once) played
# through N gateways, each replica spreading its requests over all of them. Starts its own
# redis-server on a free port; prints per N: requests answered and per second, the
# latency p50 / p99, Redis's CPU (user + sys, INFO cpu) per request and as a share of one
# core, and the script calls per request with their usec_per_call (INFO commandstats).
#   [RATE=requests/s] bash crates/bench/replicas.sh [N ...]   (default: 1 2 4 8 16 32)
# after cargo build --release -p sluice-bench -p sluice-gateway -p sluice-sim (BIN= for
# another directory of binaries).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${BIN:-target/release}
out=${OUT:-target/sluice-bench/replicas}
counts=("$@"); [ ${#counts[@]} -gt 0 ] || counts=(1 2 4 8 16 32)
mkdir -p "$out"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
scenario=crates/bench/scenarios/flat.toml
if [ -n "${RATE:-}" ]; then
  sed "s/^rate = .*/rate = $RATE/" "$scenario" > "$dir/flat.toml"; scenario=$dir/flat.toml
fi
redis-server --port "$port" --save '' --appendonly no --daemonize yes --dir "$dir" >/dev/null
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
cpu() { redis-cli -p "$port" info cpu | awk -F: '/^used_cpu_(user|sys):/{s+=$2} END{printf "%.3f", s}'; }
echo "| gateways | answered | req/s | p50 / p99 ms | Redis CPU µs per request | Redis CPU % of a core | EVALSHA per request | µs per EVALSHA |"
echo "|--:|--:|--:|--:|--:|--:|--:|--:|"
for n in "${counts[@]}"; do
  redis-cli -p "$port" flushall >/dev/null
  redis-cli -p "$port" config resetstat >/dev/null
  c0=$(cpu)
  "$bin/sluice-bench" --scenario "$scenario" --modes sluice --gateways "$n" \
    --redis-url "redis://127.0.0.1:$port/0" --sim-bin "$bin/sluice-sim" \
    --gateway-bin "$bin/sluice-gateway" --no-sidecar --out "$out/$n" --no-progress \
    >/dev/null 2>"$out/$n.err" || { cat "$out/$n.err"; exit 1; }
  c1=$(cpu)
  stats=$(redis-cli -p "$port" info commandstats | grep '^cmdstat_evalsha:' || true)
  python3 - "$out/$n/report.json" "$n" "$c0" "$c1" "$stats" <<'PY'
import json, re, sys
r = json.load(open(sys.argv[1])); m = r["modes"][0]
n, c0, c1, stats = sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
ok = m["offered"] - m["failed"]
calls = int(re.search(r"calls=(\d+)", stats).group(1)) if stats else 0
per = float(re.search(r"usec_per_call=([0-9.]+)", stats).group(1)) if stats else 0.0
print(f"| {n} | {ok}/{m['offered']} | {ok / m['wall_secs']:.0f} | {m['latency_ms']['p50']:.1f} / {m['latency_ms']['p99']:.1f} "
      f"| {(c1 - c0) * 1e6 / max(ok, 1):.0f} | {(c1 - c0) / m['wall_secs'] * 100:.0f} | {calls / max(ok, 1):.2f} | {per:.1f} |")
PY
done
