#!/bin/bash
# Redis time of one acquire over N accounts of a model (docs/benchmarks.md, #17).
# Usage: crates/limiter/benches/accounts.sh REV MODE N...
#   MODE idle: limits far above the load;
#   MODE busy: every account first 60% used (1,200 of 2,000 requests a minute), unpaced;
#   MODE paced: the same with pacing on (every account paced ahead: no slot now).
# Starts its own redis-server on port 7778, loads common.lua + acquire.lua of REV and
# prints `usec_per_call` (`redis-benchmark -c 8`, INFO commandstats) for each N.
set -euo pipefail
rev=$1; mode=$2; shift 2
P=7778; dir=$(mktemp -d)
redis-server --port $P --save '' --appendonly no --daemonize yes --dir "$dir" >/dev/null
trap 'redis-cli -p $P shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
until redis-cli -p $P ping >/dev/null 2>&1; do sleep 0.1; done
f="$dir/acquire.lua"
git show "$rev:crates/limiter/lua/common.lua" > "$f"
git show "$rev:crates/limiter/lua/acquire.lua" >> "$f"
# v4 takes the two carried-reconcile arguments (0 0), v5 also the group's tail index key.
fold=""; tails=()
grep -q 'sluice_acquire_v[45]' "$f" && fold="0 0"
grep -q 'sluice_acquire_v5' "$f" && tails=('sluice:{g}:tails')
rpm=1000000000; pacing=1
case $mode in
  idle) ;;
  busy) rpm=2000; pacing=0 ;;
  paced) rpm=2000 ;;
  *) echo "MODE is idle, busy or paced" >&2; exit 2 ;;
esac
rows="r60000 60000000 1000000 $rpm 1 1 t60000 60000000 1000000 1000000000000 700 0 r1000 1000000 16666 100000000 1 1"
sha=$(redis-cli -p $P -x script load < "$f")
for n in "$@"; do
  redis-cli -p $P flushall >/dev/null
  keys=()
  for i in $(seq 1 "$n"); do keys+=("sluice:{g}:w:a$i" "sluice:{g}:s:a$i"); done
  calls=40000
  if [ "$mode" != idle ]; then
    calls=4000
    for i in $(seq 1 "$n"); do
      # shellcheck disable=SC2086
      redis-benchmark -p $P -n 1200 -c 4 -q EVALSHA "$sha" $((2 + ${#tails[@]})) "sluice:{g}:w:a$i" "sluice:{g}:s:a$i" "${tails[@]}" \
        '' 3600000000 1 0 $pacing 0 0 61000 3 $fold $rows >/dev/null
    done
  fi
  redis-cli -p $P config resetstat >/dev/null
  # shellcheck disable=SC2086
  redis-benchmark -p $P -n $calls -c 8 -q EVALSHA "$sha" $((2 * n + ${#tails[@]})) "${keys[@]}" "${tails[@]}" \
    '' 3600000000 1 0 $pacing 0 0 61000 3 $fold $rows >/dev/null
  echo "$rev $mode accounts=$n $(redis-cli -p $P info commandstats | grep evalsha | sed 's/.*usec_per_call=\([0-9.]*\).*/\1/') us/call"
done
