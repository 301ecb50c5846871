#!/usr/bin/env bash
# Real clients against a real gateway: the official OpenAI and Anthropic Python SDKs
# (from PyPI) and curl.
# Creates a venv, starts sluice-sim and one sluice-gateway (the debug build of this
# checkout), runs pytest, cleans up. Exit status is pytest's.
#   bash tests/clients/run.sh            # everything
#   bash tests/clients/run.sh -k stream  # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
target=${CARGO_TARGET_DIR:-$root/target}
work=$(mktemp -d "${TMPDIR:-/tmp}/sluice-clients.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Binaries: the debug build of this checkout (incremental: after `cargo test` it is
# already up to date), never a stale one.
cargo build -q -p sluice-sim -p sluice-gateway
bin=$target/debug

# Python: a venv with the official SDK and pytest.
venv=${SLUICE_CLIENTS_VENV:-$root/target/clients-venv}
if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r tests/clients/requirements.txt

# wait_line FILE: the address from the first "listening on ADDR" line (10 s at most).
wait_line() {
  for _ in $(seq 100); do
    if grep -q '^listening on ' "$1" 2>/dev/null; then sed -n 's/^listening on //p' "$1" | head -1; return; fi
    sleep 0.1
  done
  echo "no 'listening on' in $1" >&2; cat "$1" "$1.err" >&2 || true; exit 1
}

# The simulator: generous limits (the gateway's own limits are what the tests exercise).
cat > "$work/sim.toml" <<TOML
listen = "127.0.0.1:0"
[[models]]
name = "qwen3-max"
dialect = "openai"
limits = [{ requests = 100000, per = "60s" }, { tokens = 100000000, per = "60s" }]
[[models]]
name = "text-embedding-3-small"
dialect = "openai"
limits = [{ requests = 100000, per = "60s" }, { tokens = 100000000, per = "60s" }]
[[models]]
name = "tiny"
dialect = "openai"
limits = [{ requests = 100000, per = "60s" }, { tokens = 100000000, per = "60s" }]
[[models]]
name = "claude-sonnet-4-5"
dialect = "anthropic"
limits = [{ requests = 100000, per = "60s" }, { tokens = 100000000, per = "60s" }]
[[accounts]]
name = "acct"
key = "sk-upstream"
TOML
"$bin/sluice-sim" --config "$work/sim.toml" >"$work/sim.out" 2>"$work/sim.out.err" &
pids+=($!)
sim=$(wait_line "$work/sim.out")

# A capturing upstream for tool calls (the simulator ignores `tools`).
"$venv/bin/python" tests/clients/capture_upstream.py "$work/captured.jsonl" >"$work/cap.out" 2>"$work/cap.out.err" &
pids+=($!)
cap=$(wait_line "$work/cap.out")

cat > "$work/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:0"
shutdown_grace = "1s"
[[upstreams]]
name = "sim"
base_url = "http://$sim/v1"
dialect = "openai"
keys = ["sk-upstream"]
[[upstreams]]
name = "claude"
base_url = "http://$sim/v1"
dialect = "anthropic"
keys = ["sk-upstream"]
[[upstreams]]
name = "capture"
base_url = "http://$cap/v1"
dialect = "openai"
keys = ["sk-capture"]
[[models]]
name = "qwen3-max"
upstream = "sim"
rpm = 100000
tpm = 100000000
[[models]]
name = "text-embedding-3-small"
upstream = "sim"
rpm = 100000
tpm = 100000000
[[models]]
name = "tool-model"
upstream = "capture"
rpm = 100000
tpm = 100000000
[[models]]
name = "claude-sonnet-4-5"
upstream = "claude"
rpm = 100000
tpm = 100000000
[[models]]
name = "tiny"
upstream = "sim"
limits = [{ requests = 1, per = "1500ms" }]
[queue]
max_wait = "30s"
[[tenants]]
name = "tests"
key = "sk-client"
TOML
SLUICE_LOG=warn "$bin/sluice-gateway" --config "$work/gateway.toml" >"$work/gw.out" 2>"$work/gw.out.err" &
pids+=($!)
gw=$(wait_line "$work/gw.out")

# The README's quick start: examples/sluice.toml as it stands, with only the variables of
# the README's own `export` line (values as written there), its upstream swapped for a
# simulator of its own (any key, DashScope's models) through the documented override, on
# a free port instead of 8080.
readme_export=$(grep -m1 -E '^export DASHSCOPE_KEY_A=' README.md | sed -e 's/^export //' -e 's/ #.*//')
[ -n "$readme_export" ] || { echo "README.md has no 'export DASHSCOPE_KEY_A=...' line" >&2; exit 1; }
"$bin/sluice-sim" --listen 127.0.0.1:0 --dialect dashscope --models qwen3-max,qwen-plus,qwen-turbo \
  >"$work/sim-readme.out" 2>"$work/sim-readme.out.err" &
pids+=($!)
sim_readme=$(wait_line "$work/sim-readme.out")
env -i PATH="$PATH" HOME="${HOME:-/tmp}" SLUICE_LOG=warn \
  $readme_export \
  SLUICE_UPSTREAMS__0__BASE_URL="http://$sim_readme/v1" \
  "$bin/sluice-gateway" --config examples/sluice.toml --listen 127.0.0.1:0 \
  >"$work/gw-readme.out" 2>"$work/gw-readme.out.err" &
pids+=($!)
gw_readme=$(wait_line "$work/gw-readme.out")

echo "sim http://$sim  gateway http://$gw  capture http://$cap  readme gateway http://$gw_readme  binaries $bin"
set +e
SLUICE_GATEWAY="http://$gw" SLUICE_SIM="http://$sim" SLUICE_CAPTURED="$work/captured.jsonl" \
  SLUICE_README_GATEWAY="http://$gw_readme" SLUICE_README_SIM="http://$sim_readme" \
  "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/clients "$@"
status=$?
set -e
if [ $status -ne 0 ]; then
  echo "--- gateway log"; tail -n 40 "$work/gw.out.err" || true
  echo "--- README gateway log"; tail -n 20 "$work/gw-readme.out.err" || true
fi
exit $status
