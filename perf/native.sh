#!/usr/bin/env bash
# The native protocol side by side, in one run: the bare QUIC round trip (the client against
# an echo service on the shards' own endpoint driver), c=1 calls over QUIC and over HTTP, and
# calls with 64 in flight over one client connection per shard and over 64 of them.
#
#   perf/native.sh [SECONDS]      (default 5 per scenario)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}
source perf/node.sh
perf_setup native
serve fsync

echo "machine: $(nproc) cores, $(uname -r), commit $(git rev-parse --short HEAD), durability fsync, 2 shards"
"$bin/native-bench" bare "$work/echo" "$seconds"
"$bin/native-bench" call "$quic" "$work/data-fsync" "$seconds"
"$bin/statefun-loadgen" --target "$url" --concurrency 1 --duration "$seconds" --warmup 1 --json "$work/http.json" >/dev/null 2>&1
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(f\"HTTP call, c=1: {r['completed']} requests, {r['throughput_rps']:.0f}/s, p50_us={r['p50_us']} p99_us={r['p99_us']} max_us={r['max_us']}\")" "$work/http.json"
"$bin/native-bench" pipelined "$quic" "$work/data-fsync" 1 64 "$seconds"
"$bin/native-bench" pipelined "$quic" "$work/data-fsync" 64 64 "$seconds"
