#!/usr/bin/env bash
# End-to-end test of docker-compose.yml's demo profile on this machine:
#   build the images (scripts/build-images.sh; base images cached), `--profile demo up -d`,
#   wait for health, drive chat traffic at 3x the simulator's quota through the published
#   port, kill one gateway mid-run, then check from the simulator's GET /stats that nothing
#   was refused upstream, that >= 95% of the quota was used, and that the surviving gateways
#   kept serving (deploy/compose/e2e_traffic.py). Everything is torn down on exit, also on
#   failure. Only 127.0.0.1 is used.
#
# Environment: E2E_DURATION (s, default 60), E2E_KILL_AT (s, default 24), E2E_PROJECT
# (compose project, default sluice-e2e), E2E_KEEP=1 (leave the stack up), plus
# scripts/build-images.sh's variables (SKIP_CARGO=1, REBUILD_BASE=1, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

PROJECT=${E2E_PROJECT:-sluice-e2e}
DURATION=${E2E_DURATION:-60}
KILL_AT=${E2E_KILL_AT:-24}
say() { echo "==> [$((SECONDS - start))s] $*"; }

if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  COMPOSE=(docker-compose)
else
  echo "compose e2e: neither 'docker compose' nor 'docker-compose' is installed" >&2
  exit 1
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The stack on this machine: local base images for Redis and HAProxy, the demo config
# (also when a developer's .env selects another), ports that nothing else holds.
export SLUICE_TAG=${SLUICE_TAG:-local}
export REDIS_IMAGE=${SLUICE_INFRA_IMAGE:-sluice-infra:bookworm}
export LB_IMAGE=${SLUICE_INFRA_IMAGE:-sluice-infra:bookworm}
export SLUICE_CONFIG_FILE=sluice.demo.toml
export SLUICE_BIND=127.0.0.1
SLUICE_PORT=$(free_port); SIM_PORT=$(free_port); SIDECAR_PORT=$(free_port)
export SLUICE_PORT SIM_PORT SIDECAR_PORT
dc() { "${COMPOSE[@]}" -p "$PROJECT" --profile demo "$@"; }

cleanup() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "--- compose ps / logs (last 40 lines per service) ---"
    dc ps || true
    dc logs --no-color --tail 40 2>/dev/null || true
  fi
  if [ "${E2E_KEEP:-0}" = 1 ]; then
    say "E2E_KEEP=1: stack left up (project $PROJECT, port $SLUICE_PORT)"
  else
    dc down -v --remove-orphans >/dev/null 2>&1 || true
  fi
  if [ "$rc" -eq 0 ]; then say "compose e2e: passed"; else say "compose e2e: FAILED ($rc)"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "building images"
bash scripts/build-images.sh
built=$SECONDS

services=(redis gateway-1 gateway-2 gateway-3 lb sim)
if docker image inspect "sluice/sidecar:$SLUICE_TAG" >/dev/null 2>&1; then
  services+=(sidecar)
else
  say "no sluice/sidecar:$SLUICE_TAG image (crates/sidecar not built yet): sidecar not started"
fi

dc down -v --remove-orphans >/dev/null 2>&1 || true   # leftovers of an interrupted run
say "${COMPOSE[*]} -p $PROJECT --profile demo up -d ${services[*]}"
dc up -d --no-build "${services[@]}"

say "waiting for health"
deadline=$((SECONDS + 120))
for s in "${services[@]}"; do
  id=$(dc ps -q "$s")
  while :; do
    status=$(docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id")
    [ "$status" = healthy ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then echo "$s is $status after 120 s" >&2; exit 1; fi
    sleep 1
  done
done
curl -fsS "http://127.0.0.1:$SLUICE_PORT/readyz" | grep -q '"store":"redis"' \
  || { echo "the gateways behind the balancer are not on Redis" >&2; exit 1; }
if [[ " ${services[*]} " == *" sidecar "* ]]; then
  curl -fsS "http://127.0.0.1:$SIDECAR_PORT/healthz" >/dev/null
  say "sidecar healthy"
fi
say "all healthy"

say "traffic: ${DURATION}s at 3x the quota, kill gateway-2 at ${KILL_AT}s"
python3 deploy/compose/e2e_traffic.py \
  --lb-port "$SLUICE_PORT" --sim-port "$SIM_PORT" \
  --duration "$DURATION" --kill-at "$KILL_AT" \
  --kill-container "$(dc ps -q gateway-2)" \
  --gateway-metrics "$(dc ps -q gateway-1)" "$(dc ps -q gateway-3)"

say "build $((built - start))s, compose run $((SECONDS - built))s"
