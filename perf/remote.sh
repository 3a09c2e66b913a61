#!/usr/bin/env bash
# Remote functions, in one run: the node (fsync, 2 shards) calling counters served by
# StateFun's own SDKs over StateFun's HTTP request-reply protocol: `test/counter` of
# tests/sdk/functions.py (the Python SDK on aiohttp, one process) and `test/jscounter` of
# tests/sdk/functions.js (the JavaScript SDK on Node.js, one process). statefun-loadgen drives
# `/v1/call` closed loop over HTTP, one add per call over 10,000 keys, at c=1 and c=64.
#
#   perf/remote.sh [SECONDS]      (default 10 per scenario; installs the SDKs on first use)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
source perf/node.sh
bash tests/sdk/setup.sh >/dev/null
perf_setup remote

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
pids=()
trap 'stop; for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"' EXIT
start_functions() { # name command...
  local name=$1
  shift
  "$@" >"$work/$name.out" 2>"$work/$name.err" &
  pids+=($!)
  for _ in $(seq 100); do grep -q ready "$work/$name.out" 2>/dev/null && return 0; sleep 0.1; done
  echo "$0: the $name functions did not start:" >&2
  cat "$work/$name.err" >&2
  exit 1
}
py_port=$(free_port)
js_port=$(free_port)
start_functions python target/sdk/venv/bin/python tests/sdk/functions.py "$py_port"
start_functions javascript node tests/sdk/functions.js "$js_port"
cat >"$work/module.yaml" <<YAML
kind: io.statefun.endpoints.v2/http
spec:
  functions: test/*
  urlPathTemplate: http://127.0.0.1:$py_port/statefun
---
kind: io.statefun.endpoints.v2/http
spec:
  functions: test/jscounter
  urlPathTemplate: http://127.0.0.1:$js_port/
YAML
serve fsync --module "$work/module.yaml"

echo "machine: $(nproc) cores, $(uname -r), commit $(git rev-parse --short HEAD), durability fsync, $shards shards"
for function in counter jscounter; do
  for concurrency in 1 64; do
    "$bin/statefun-loadgen" --target "$url" --path "/v1/call/test/$function/{key}" --body 1 \
      --header 'Content-Type: application/vnd.io.statefun.types/int' --keys 10000 \
      --concurrency "$concurrency" --duration "$seconds" --warmup 2 --json "$work/run.json" >/dev/null 2>&1
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(f\"test/{sys.argv[2]} ({sys.argv[3]} SDK), c={sys.argv[4]}: {r['completed']} calls, {r['throughput_rps']:.0f}/s, p50_us={r['p50_us']} p99_us={r['p99_us']} errors={r.get('errors', 0)}\")" \
      "$work/run.json" "$function" "$([[ $function == counter ]] && echo Python || echo JavaScript)" "$concurrency"
  done
done
curl -s "$url/metrics" | grep '^statefun_remote_.*_total{' | paste -sd' '
