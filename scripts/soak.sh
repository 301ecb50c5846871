#!/usr/bin/env bash
# The soak: SECONDS (default 600) of traffic at about 1.25x the quota through three
# gateways sharing Redis (on_error = local) and the sidecar, with faults injected on a
# seeded random schedule (Redis killed and restarted, Redis paused, a gateway or the
# sidecar SIGKILLed and restarted, the simulator's 500s, 503s, stream cuts and slow
# answers). Then it checks that memory stayed flat, that no Redis key outlived its
# window, that the simulator saw no limit exceeded, and that every request got an
# answer; it prints a table, writes soak.json, and exits non-zero when a check fails.
#
#   bash scripts/soak.sh [SECONDS] [--debug|--release] [sluice-bench soak flags...]
#
# Binaries: --release or --debug (CI: --debug, after cargo test has built most of it);
# by default release when a release sluice-gateway is built, else debug when a debug one
# is, else release. Either way `cargo build` runs first (a no-op when they are fresh),
# and a failed build fails the soak (it never runs stale binaries).
# The bench starts its own redis-server on a free port (it must kill and restart it);
# redis-server is installed with apt when it is missing. Every process it starts is
# stopped on exit, also on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=600
if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then secs=$1; shift; fi
profile=
args=()
for a in "$@"; do
  case "$a" in
    --debug) profile=debug ;;
    --release) profile=release ;;
    *) args+=("$a") ;;
  esac
done
target=${CARGO_TARGET_DIR:-target}
names=(sluice-sim sluice-gateway sluice-sidecar sluice-bench)
if [ -z "$profile" ]; then
  if [ -x "$target/release/sluice-gateway" ]; then profile=release
  elif [ -x "$target/debug/sluice-gateway" ]; then profile=debug
  else profile=release; fi
fi
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

pids=()
cleanup() {
  trap - EXIT INT TERM
  for p in "${pids[@]:-}"; do
    [ -n "$p" ] || continue
    kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true
  done
  for p in "${pids[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'echo; say "interrupted"; exit 130' INT TERM

say "building ${names[*]} ($profile)"
flags=(-q)
[ "$profile" = release ] && flags+=(--release)
bin=$target/$profile
cargo build "${flags[@]}" -p sluice-sim -p sluice-gateway -p sluice-sidecar -p sluice-bench

if ! command -v redis-server >/dev/null 2>&1; then
  as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"; else return 1; fi; }
  say "installing redis-server"
  { as_root apt-get update -qq && DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends redis-server; } >/dev/null 2>&1 || true
  command -v redis-server >/dev/null 2>&1 || { say "redis-server is needed"; exit 2; }
fi

out=${SLUICE_SOAK_OUT:-$target/sluice-bench/soak}
say "soak: $secs s, output in $out"
# Its own process group, so cleanup stops it and everything it started.
setsid "$bin/sluice-bench" soak --duration "$secs" --out "$out" \
  --sim-bin "$bin/sluice-sim" --gateway-bin "$bin/sluice-gateway" \
  --sidecar-bin "$bin/sluice-sidecar" "${args[@]}" &
pids+=($!)
status=0
wait "${pids[-1]}" || status=$?
pids=()
exit "$status"
