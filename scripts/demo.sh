#!/usr/bin/env bash
# The one-command demo: five services x three replicas share one qwen3-max quota
# (600 RPM / 1,000,000 TPM / 10 RPS, played 4x faster) on a simulated DashScope, called
#   1. direct  (each replica on its own, retrying 429s like the official OpenAI SDK),
#   2. split   (each replica with its own limiter at limit / 15),
#   3. sluice  (three gateways sharing Redis, plus the sidecar).
# About a minute. Ends with the comparison table and the path of the HTML report.
# Needs only the repository (and Rust); installs redis-server with apt when it can.
# When a part cannot be built or Redis cannot be installed or started, it stops with
# the command that fixes it, rather than demoing something else.
# Every process it starts is stopped on exit, also on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
bin=$target/release
out=${SLUICE_DEMO_OUT:-$target/sluice-bench/demo}
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
fail() { printf '\033[1;31mdemo: %s\033[0m\n' "$*" >&2; exit 1; }

pids=()
cleanup() {
  trap - EXIT INT TERM
  for p in "${pids[@]:-}"; do
    [ -n "$p" ] || continue
    kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true
  done
  for p in "${pids[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
  [ -n "${redis_dir:-}" ] && rm -rf "$redis_dir"
}
trap cleanup EXIT
trap 'echo; say "interrupted"; exit 130' INT TERM

say "building sluice-sim, sluice-gateway, sluice-sidecar, sluice-bench (release)"
if ! cargo build --release -q -p sluice-sim -p sluice-gateway -p sluice-sidecar -p sluice-bench; then
  if [ -x "$bin/sluice-sim" ] && [ -x "$bin/sluice-gateway" ] && [ -x "$bin/sluice-sidecar" ] && [ -x "$bin/sluice-bench" ]; then
    say "build failed; using the binaries already in $bin"
  else
    fail "the release build failed (see above); fix it, then run: cargo build --release -p sluice-sim -p sluice-gateway -p sluice-bench -p sluice-sidecar"
  fi
fi
sidecar=(--sidecar-bin "$bin/sluice-sidecar")

# Redis: installed if missing (apt, as root or with sudo); without it the demo stops.
if ! command -v redis-server >/dev/null 2>&1; then
  as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"; else return 1; fi; }
  if command -v apt-get >/dev/null 2>&1; then
    say "installing redis-server"
    { as_root apt-get update -qq && DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends redis-server; } >/dev/null 2>&1 || true
  fi
fi
redis=()
if command -v redis-server >/dev/null 2>&1; then
  redis_dir=$(mktemp -d "${TMPDIR:-/tmp}/sluice-demo-redis.XXXXXX")
  for _ in 1 2 3 4 5; do
    port=$((20000 + RANDOM % 20000))
    setsid redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
      --dir "$redis_dir" --logfile "$redis_dir/redis.log" &
    rpid=$!
    up=
    for _ in $(seq 50); do
      if redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; then up=1; break; fi
      kill -0 "$rpid" 2>/dev/null || break
      sleep 0.1
    done
    if [ -n "$up" ]; then pids+=("$rpid"); break; fi
    kill "$rpid" 2>/dev/null || true
  done
  if [ -n "${up:-}" ]; then
    redis=(--redis-url "redis://127.0.0.1:$port")
    say "redis-server on 127.0.0.1:$port"
  fi
fi
if [ ${#redis[@]} -eq 0 ]; then
  if command -v redis-server >/dev/null 2>&1; then
    fail "redis-server would not start on a loopback port; try it by hand: redis-server --port 6390 --save ''"
  fi
  fail "redis-server is not installed and could not be installed here; run: sudo apt-get install -y redis-server redis-tools"
fi

say "sluice-bench: 5 services x 3 replicas, 15 s of traffic per mode, three modes"
# Its own process group, so cleanup stops it and everything it started.
setsid "$bin/sluice-bench" --sim-bin "$bin/sluice-sim" --gateway-bin "$bin/sluice-gateway" \
  --gateways 3 "${redis[@]}" "${sidecar[@]}" --out "$out" "$@" &
pids+=($!)
wait "${pids[-1]}"
