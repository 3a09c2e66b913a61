#!/usr/bin/env bash
# The native protocol side by side, in one run: the bare QUIC round trip (the client against
# an echo service on the shards' own endpoint driver), c=1 calls over QUIC and over HTTP, and
# calls with 64 in flight over one client connection per shard and over 64 of them.
#
#   perf/native.sh [SECONDS]      (default 5 per scenario)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}
cargo build --release -q -p statefun -p statefun-loadgen -p statefun-perf
bin=target/release
work=$(mktemp -d -p "${TMPDIR:-/tmp}" statefun-native.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

"$bin/statefun" serve --http 127.0.0.1:0 --listen 127.0.0.1:0 --data-dir "$work/data" >"$work/serve.out" 2>"$work/serve.err" &
for _ in $(seq 200); do grep -q http "$work/serve.out" 2>/dev/null && break; sleep 0.05; done
http=$(grep -o 'http://[0-9.:]*' "$work/serve.out")
quic=$(grep -o 'quic://[0-9.:]*' "$work/serve.out" | sed 's|quic://||')

echo "machine: $(nproc) cores, $(uname -r), commit $(git rev-parse --short HEAD), durability fsync, 2 shards"
"$bin/native-bench" bare "$work/echo" "$seconds"
"$bin/native-bench" call "$quic" "$work/data" "$seconds"
"$bin/statefun-loadgen" --target "$http" --concurrency 1 --duration "$seconds" --warmup 1 --json "$work/http.json" >/dev/null 2>&1
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(f\"HTTP call, c=1: {r['completed']} requests, {r['throughput_rps']:.0f}/s, p50_us={r['p50_us']} p99_us={r['p99_us']} max_us={r['max_us']}\")" "$work/http.json"
"$bin/native-bench" pipelined "$quic" "$work/data" 1 64 "$seconds"
"$bin/native-bench" pipelined "$quic" "$work/data" 64 64 "$seconds"
