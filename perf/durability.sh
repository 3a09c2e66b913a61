#!/usr/bin/env bash
# Durability side by side, in one run on one machine: the disk's own write+fdatasync limit,
# then /v1/call on the counter at c=1 and c=64 in `fsync` durability (with records per
# fsync from /metrics), then c=64 in `memory` durability.
#
#   perf/durability.sh [SECONDS]      (default 10 per scenario)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
source perf/node.sh
perf_setup durability

metric() { # name
  curl -s "$url/metrics" | awk -v name="$1" '$1 ~ "^"name"[{]" { sum += $2 } END { print sum + 0 }'
}
load() { # concurrency label
  "$bin/statefun-loadgen" --target "$url" --concurrency "$1" --duration "$seconds" --warmup 1 --keys 10000 \
    --json "$work/$2.json" >/dev/null 2>&1
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(f\"{sys.argv[2]:<22} {r['throughput_rps']:>10.0f} calls/s  p50 {r['p50_us']:>6} us  p99 {r['p99_us']:>6} us  errors {r['errors']}\")" "$work/$2.json" "$2"
}

echo "machine: $(nproc) cores, $(uname -r), $(df -h "$work" | awk 'NR==2 {print $1}'), commit $(git rev-parse --short HEAD)"
"$bin/disk-sync" "$work" 2000

serve fsync
load 1 "fsync c=1"
batches0=$(metric statefun_log_batches_total); records0=$(metric statefun_log_records_total)
load 64 "fsync c=64"
batches1=$(metric statefun_log_batches_total); records1=$(metric statefun_log_records_total)
echo "fsync c=64: $(( (records1 - records0) / (batches1 - batches0 > 0 ? batches1 - batches0 : 1) )) records per fsync ($(( records1 - records0 )) records, $(( batches1 - batches0 )) fsyncs)"
stop

serve memory
load 64 "memory c=64"
