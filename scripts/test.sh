#!/usr/bin/env bash
# The one test command: installs what the tests need (Debian packages), checks format
# and lints, builds, and runs every test of the workspace (unit, Lua against a real
# redis-server, Redis Cluster, multi-process, end-to-end), then the real-client tests
# (the official OpenAI Python SDK from PyPI, in a venv under target/, and curl), and a
# 75-second soak with random faults (scripts/soak.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

need=()
command -v cc >/dev/null 2>&1 || need+=(build-essential)   # ring and other -sys crates build C
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v redis-sentinel >/dev/null 2>&1 || need+=(redis-sentinel)   # the Sentinel failover tests
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v faketime >/dev/null 2>&1 || need+=(faketime)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
# The status page's browser test (crates/gateway/tests/status_page.rs) drives headless Chromium.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# kubectl (crates/deploy-check renders deploy/kubernetes with `kubectl kustomize`) has no
# usable Debian package: bookworm's kubernetes-client is kubectl 1.20 with kustomize v2,
# too old for the manifests. The machine image carries a current one; without it the
# Kubernetes tests fail and say how to install it (or set KUBECTL).
command -v kubectl >/dev/null 2>&1 || echo "==> note: kubectl is missing; the deploy-check Kubernetes tests will fail (install kubectl >= 1.21 from the Kubernetes apt repository, or set KUBECTL)"
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing ${need[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> cargo test"
cargo test --workspace --locked

echo "==> real clients (the official OpenAI Python SDK and curl against a gateway)"
bash tests/clients/run.sh

echo "==> a short soak (75 s at 1.25x the quota, Redis/gateway/sidecar faults; the full one is bash scripts/soak.sh 600)"
bash scripts/soak.sh 75 --debug
