#!/bin/bash
# Same-run A/B of the acquire script's Redis time (docs/benchmarks.md, #17).
# Usage: crates/limiter/benches/acquire_ab.sh OLD_REV [NEW_REV] [ROUNDS]
# Starts its own redis-server on port 7777, then per round and per revision: loads
# common.lua + acquire.lua of that revision, warms a hash with 60,000 calls and prints
# `usec_per_call` over 100,000 more (`redis-benchmark -c 8`, INFO commandstats), with the
# windows hash's encoding. A v4 or later script gets the two carried-reconcile arguments (0 0), a v5 one
# the group's tail index key.
# Then `spaced`: the same call 200 times, one `redis-cli` process each (a few ms apart,
# as a lightly loaded gateway calls), where Redis runs the script with cold caches.
set -euo pipefail
old=$1; new=${2:-HEAD}; rounds=${3:-3}
P=7777; dir=$(mktemp -d)
redis-server --port $P --save '' --appendonly no --daemonize yes --dir "$dir" >/dev/null
trap 'redis-cli -p $P shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
until redis-cli -p $P ping >/dev/null 2>&1; do sleep 0.1; done
rows="r60000 60000000 1000000 1000000000 1 1 t60000 60000000 1000000 1000000000000 700 0 r1000 1000000 16666 100000000 1 1"
run() {
  local rev=$1 f="$dir/$1.lua"
  git show "$rev:crates/limiter/lua/common.lua" > "$f"
  git show "$rev:crates/limiter/lua/acquire.lua" >> "$f"
  local fold="" tails=()
  grep -q 'sluice_acquire_v[45]' "$f" && fold="0 0"
  grep -q 'sluice_acquire_v5' "$f" && tails=('sluice:{g}:tails')
  redis-cli -p $P flushall >/dev/null
  local sha; sha=$(redis-cli -p $P -x script load < "$f")
  for n in 60000 100000; do
    redis-cli -p $P config resetstat >/dev/null
    # shellcheck disable=SC2086
    redis-benchmark -p $P -n $n -c 8 -q EVALSHA "$sha" $((2 + ${#tails[@]})) 'sluice:{g}:w:a' 'sluice:{g}:s:a' "${tails[@]}" \
      '' 3600000000 1 0 1 0 0 61000 3 $fold $rows >/dev/null
  done
  local warm; warm=$(per_call)
  redis-cli -p $P config resetstat >/dev/null
  for _ in $(seq 200); do
    # shellcheck disable=SC2086
    redis-cli -p $P EVALSHA "$sha" $((2 + ${#tails[@]})) 'sluice:{g}:w:a' 'sluice:{g}:s:a' "${tails[@]}" \
      '' 3600000000 1 0 1 0 0 61000 3 $fold $rows >/dev/null
  done
  echo "$rev $warm us/call back to back, $(per_call) us/call spaced," \
    "$(redis-cli -p $P object encoding 'sluice:{g}:w:a'), $(redis-cli -p $P hlen 'sluice:{g}:w:a') fields"
}
per_call() { redis-cli -p $P info commandstats | grep evalsha | sed 's/.*usec_per_call=\([0-9.]*\).*/\1/'; }
for _ in $(seq "$rounds"); do run "$old"; run "$new"; done
