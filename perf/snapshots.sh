#!/usr/bin/env bash
# Checkpoints of a large state, in one run on one node (`fsync`, 2 shards, the blob store
# outside the data directory, checkpoints only when `statefun snapshot` asks):
#
# 1. fills KEYS counters, example/counter/k0 to k{KEYS-1}, every one exactly once, over HTTP
#    (256 keep-alive connections with 4 requests pipelined on each: the loadgen draws keys at
#    random and would leave a share of them out), then takes a first checkpoint, a base;
# 2. for HTTP and then for QUIC: the loadgen on the same keys at c=64 for SECONDS with no
#    checkpoint running, one checkpoint of what that changed, then the loadgen again while
#    `statefun snapshot` runs back to back (base or delta, as the node decides). HTTP goes
#    first: the native client gives every call an idempotency key, and the node keeps keyed
#    requests (24 h, at most 2^20 per shard) in every checkpoint;
# 3. takes a last checkpoint, kills the node (SIGKILL) and times a restart to the first
#    successful /v1/call, on the same data directory and then on an empty one (from the blob
#    store alone).
#
#   perf/snapshots.sh [KEYS] [SECONDS]      (default 10000000 keys, 10 s per measured period)
#
# The node holds about 1.5 KiB per counter and peaks at about 2.3 KiB while checkpoints run:
# the script refuses KEYS that would not fit in the memory available (10,000,000 needs about
# 24 GiB; SNAPSHOTS_FORCE=1 skips the check). SNAPSHOTS_LOGS=DIR keeps the node's logs and the loadgen's figures there.
set -euo pipefail
cd "$(dirname "$0")/.."
keys=${1:-10000000}
seconds=${2:-10}
[[ $keys =~ ^[1-9][0-9]*$ ]] || { echo "$0: KEYS must be a positive number, not '$keys'" >&2; exit 2; }
[[ $seconds =~ ^[1-9][0-9]*$ ]] || { echo "$0: SECONDS must be a positive number, not '$seconds'" >&2; exit 2; }

# Resident memory: about 1.5 KiB per counter once filled, and a peak of about 2.3 KiB while
# checkpoints run (a base copies every address before encoding them; folding deltas reads the
# stored base back), plus room for the rest.
need_kib=$(( keys * 5 / 2 + 512 * 1024 ))
available_kib=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
if (( need_kib > available_kib )) && [[ ${SNAPSHOTS_FORCE:-} != 1 ]]; then
  echo "$0: $keys counters need about $(( need_kib / 1024 / 1024 )) GiB, $(( available_kib / 1024 / 1024 )) GiB are available;" \
    "take fewer keys (or SNAPSHOTS_FORCE=1)" >&2
  exit 2
fi

source perf/node.sh
perf_setup snapshots
loop=
probe=
cleanup() {
  for job in $loop $probe; do kill "$job" 2>/dev/null || true; wait "$job" 2>/dev/null || true; done
  stop
  if [[ -n ${SNAPSHOTS_LOGS:-} ]]; then
    mkdir -p "$SNAPSHOTS_LOGS" && find "$work" -maxdepth 1 -type f -exec cp {} "$SNAPSHOTS_LOGS" \; || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

fail() { echo "$0: $*" >&2; exit 1; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
seconds_of() { awk -v ms="$1" 'BEGIN { printf "%.1f", ms / 1000 }'; }
gib() { awk -v field="$1" '$1 == field":" { printf "%.1f GiB", $2 / 1048576 }' "/proc/$node/status"; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$node/stat"; }
# Sectors written to the disk under $work (whole-disk counter: other writers count too).
disk_sectors() { awk -v dev="$disk" '$3 == dev { print $10 }' /proc/diskstats; }
plain() { sed 's/\x1b\[[0-9;]*m//g' "$@"; }
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
delta_header='Content-Type: application/vnd.example/delta'

# The node's arguments: checkpoints only when asked, the blob store outside the data directory.
blobs="file://$work/blobs"
node_args=(--shards 2 --blob-url "$blobs" --snapshot-interval 1000000s --snapshot-log-mib 1000000)

# ckpt_lines SHARD: the checkpoints (done or failed) SHARD has logged so far.
ckpt_lines() { plain "$work/serve.err" | grep -c "shard $1: checkpoint \(generation\|failed\)" || true; }

# snapshot FILE: one `statefun snapshot`; its lines go to FILE, its milliseconds to FILE.ms.
# When the command fails but the node goes on to store the checkpoint (its QUIC connection to
# a shard times out when the shard's loop stalls for 4 s), FILE gets the node's own lines once
# they are logged and FILE.cli-failed says why the command failed; returns 1 only when a
# shard logged no checkpoint or a failed one.
snapshot() {
  local started shard line
  local -a before=()
  for (( shard = 0; shard < shards; shard++ )); do before+=("$(ckpt_lines "$shard")"); done
  started=$(now_ms)
  if "$bin/statefun" snapshot --connect "$quic" --data-dir "$data" >"$1" 2>"$1.err"; then
    echo $(( $(now_ms) - started )) >"$1.ms"
    return 0
  fi
  { grep -hv '^waiting' "$1" "$1.err" || true; } | paste -sd';' >"$1.cli-failed"
  : >"$1"
  for (( shard = 0; shard < shards; shard++ )); do
    until (( $(ckpt_lines "$shard") > before[shard] )); do
      (( $(now_ms) - started < 600000 )) && kill -0 "$node" 2>/dev/null || return 1
      sleep 0.05
    done
    line=$(plain "$work/serve.err" | grep -o "shard $shard: checkpoint \(generation\|failed\).*" | sed -n "$(( before[shard] + 1 ))p")
    [[ $line == *"checkpoint generation"* ]] || { echo "$line" >>"$1"; return 1; }
    sed -E 's/checkpoint generation ([0-9]+) at LSN ([0-9]+): /generation \1, LSN \2, /; s/ bytes$/ B written (from the node'"'"'s log)/' <<<"$line" >>"$1"
  done
  echo $(( $(now_ms) - started )) >"$1.ms"
}

# checkpoint LABEL: a checkpoint now, with nothing else running but a probe: one HTTP call
# after the other on the counter, to see how long a call can wait during it. Prints the
# checkpoint's lines, the time it took and the probe's latencies.
checkpoint() {
  rm -f "$work/probe-stop"
  python3 "$work/probe.py" "${url#http://}" "$keys" "$work/probe-stop" >"$work/probe-$1" 2>&1 &
  probe=$!
  snapshot "$work/ckpt-$1" || fail "statefun snapshot ($1) failed: $(cat "$work/ckpt-$1" "$work/ckpt-$1.err")"
  touch "$work/probe-stop"
  wait "$probe" || fail "the probe during checkpoint $1 failed: $(cat "$work/probe-$1")"
  probe=
  echo "checkpoint $1: $(seconds_of "$(cat "$work/ckpt-$1.ms")") s; meanwhile one call at a time: $(cat "$work/probe-$1")"
  if [[ -e $work/ckpt-$1.cli-failed ]]; then
    echo "  statefun snapshot failed ($(cat "$work/ckpt-$1.cli-failed")); the node's log:"
  fi
  sed 's/^/  /' "$work/ckpt-$1"
}

# ckpt_sums FILE...: for each `statefun snapshot` output, its kind, the addresses captured and
# the bytes written over both shards, exact from the node's log: "delta 1000 123456" (kind
# "base+delta" when the shards differ).
ckpt_sums() {
  python3 - "$work/serve.err" "$@" <<'EOF'
import re, sys
log = re.sub(r"\x1b\[[0-9;]*m", "", open(sys.argv[1]).read())
exact = {(int(s), int(g)): int(b) for s, g, b in
         re.findall(r"shard (\d+): checkpoint generation (\d+) at LSN \d+: \S+ of \d+ addresses, \d+ chunks, (\d+) bytes", log)}
for path in sys.argv[2:]:
    kinds, states, written = set(), 0, 0
    for shard, generation, kind, count in re.findall(r"shard (\d+): generation (\d+), LSN \d+, (base|delta) of ([\d,]+) address", open(path).read()):
        kinds.add(kind)
        states += int(count.replace(",", ""))
        written += exact[(int(shard), int(generation))]
    print("+".join(sorted(kinds)) or "none", states, written)
EOF
}

# load LABEL TARGET: the loadgen at c=64 on the counter over the same keys, $seconds after 1 s
# of warmup; prints its figures and the node's CPU time meanwhile.
load() {
  local ticks sectors
  ticks=$(cpu_ticks)
  sectors=$(disk_sectors)
  "$bin/statefun-loadgen" --target "$2" --data-dir "$data" --workload counter --keys "$keys" \
    --concurrency 64 --duration "$seconds" --warmup 1 --json "$work/$1.json" --hgrm "$work/$1.hgrm" \
    >"$work/$1.out" 2>&1 || fail "the loadgen ($1) failed: $(tail -5 "$work/$1.out")"
  ticks=$(( $(cpu_ticks) - ticks ))
  sectors=$(( $(disk_sectors) - sectors ))
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(f\"{sys.argv[2]}: {r['throughput_rps']:.0f} calls/s  p50 {r['p50_us']} us  p90 {r['p90_us']} us  p99 {r['p99_us']} us  p99.9 {r['p999_us']} us  max {r['max_us']} us  errors {r['errors']}; in {int(sys.argv[4]) + 1} s node CPU {int(sys.argv[3]) / 100:.1f} s, disk writes {int(sys.argv[5]) * 512 / 1048576:.0f} MiB\")" \
    "$work/$1.json" "$1" "$ticks" "$seconds" "$sectors"
}
field() { python3 -c "import json,sys; print(round(json.load(open(sys.argv[1]))[sys.argv[2]]))" "$work/$1.json" "$2"; }

# measure PROTOCOL TARGET: the loadgen without checkpoints, one checkpoint of what it changed,
# the loadgen with checkpoints back to back.
measure() {
  local protocol=$1 target=$2 round kind states written
  load "$protocol-without" "$target"
  checkpoint "$protocol-after"
  rm -f "$work/loop-stop"
  (
    round=0
    while [[ ! -e $work/loop-stop ]]; do
      round=$(( round + 1 ))
      snapshot "$work/loop-$protocol-$round" || { touch "$work/loop-$protocol-$round.failed"; break; }
      [[ ! -e $work/loop-$protocol-$round.cli-failed ]] || echo "$round" >>"$work/loop-$protocol.cli-failed"
    done
  ) &
  loop=$!
  load "$protocol-with" "$target"
  touch "$work/loop-stop"
  wait "$loop" || true
  loop=
  for failed in "$work/loop-$protocol-"*.failed; do
    [[ -e $failed ]] || continue
    fail "a checkpoint during the load failed: $(cat "${failed%.failed}" "${failed%.failed}.err")"
  done
  round=0
  echo "checkpoints back to back during $protocol-with (1 s warmup + $seconds s, and the one under way at its end):"
  while [[ -e $work/loop-$protocol-$(( round + 1 )).ms ]]; do
    round=$(( round + 1 ))
    read -r kind states written < <(ckpt_sums "$work/loop-$protocol-$round")
    echo "  $round: $kind of $states addresses, $written B, $(seconds_of "$(cat "$work/loop-$protocol-$round.ms")") s$(
      [[ -e $work/loop-$protocol-$round.cli-failed ]] && echo "; statefun snapshot failed: $(cat "$work/loop-$protocol-$round.cli-failed")")"
    echo "$written" >>"$work/loop-$protocol.bytes"
  done
  echo "  node RSS $(gib VmRSS) (peak $(gib VmHWM))"
}

# restart LABEL DATA_DIR: starts a node on DATA_DIR and times it from the start of the process
# to the first successful /v1/call on k0, polling /v1/health first; sets $node, $url,
# $restart_ms and $reply (the counter's reply).
restart() {
  local label=$1 dir=$2 port started health
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  url=http://127.0.0.1:$port
  started=$(now_ms)
  "$bin/statefun" serve --http "127.0.0.1:$port" --listen 127.0.0.1:0 --data-dir "$dir" --durability fsync \
    "${node_args[@]}" >"$work/$label.out" 2>"$work/$label.err" &
  node=$!
  until curl -sf -o /dev/null "$url/v1/health"; do
    kill -0 "$node" 2>/dev/null || fail "the node did not restart ($label): $(plain "$work/$label.err" | tail -5)"
    (( $(now_ms) - started < 1800000 )) || fail "the node did not serve within 30 min ($label)"
    sleep 0.01
  done
  health=$(now_ms)
  until reply=$(curl -sf -X POST -H "$delta_header" -d 1 "$url/v1/call/example/counter/k0"); do
    kill -0 "$node" 2>/dev/null || fail "the node stopped ($label): $(plain "$work/$label.err" | tail -5)"
    (( $(now_ms) - started < 1800000 )) || fail "no call succeeded within 30 min ($label)"
    sleep 0.01
  done
  restart_ms=$(( $(now_ms) - started ))
  echo "restart $label: first /v1/call after $(seconds_of "$restart_ms") s (/v1/health at $(seconds_of $(( health - started ))) s); k0 = $reply; RSS $(gib VmRSS) (peak $(gib VmHWM))"
  plain "$work/$label.err" | grep -o 'shard [0-9]*: recovered .*\|shard [0-9]*: restored .*\|shard [0-9]*: checkpoint .* cannot be used.*' |
    sed 's/^/  /' || true
}

echo "machine: $(nproc) cores, $(awk '/^MemTotal:/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(uname -r), commit $commit"
echo "$keys keys, $seconds s per measured period, durability fsync, 2 shards, blob store $blobs"

# 1. Fill every counter once, then the base.
serve fsync "${node_args[@]}"
data=$work/data-fsync
disk=$(basename "$(df --output=source "$work" | tail -1)")
cat >"$work/fill.py" <<'EOF'
# Calls example/counter/k{n} once for every n in 0..KEYS over CONNECTIONS HTTP/1.1 keep-alive
# connections, each with up to WINDOW requests pipelined; prints "OK ANSWERED SECONDS".
import asyncio, sys, time

host, port, keys, conns, window = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
REQUEST = b"POST /v1/call/example/counter/k%d HTTP/1.1\r\nHost: node\r\nContent-Type: application/vnd.example/delta\r\nContent-Length: 1\r\n\r\n1"
answered = {"ok": 0, "all": 0}

class Filler(asyncio.Protocol):
    """Keys first, first + conns, ...; answers are counted by their header ends (the counter's
    replies are decimal numbers, so no body holds one)."""

    def __init__(self, first, done):
        self.next, self.pending, self.unread, self.done = first, 0, b"", done

    def connection_made(self, transport):
        self.transport = transport
        self.send()

    def send(self):
        requests = []
        while self.pending < window and self.next < keys:
            requests.append(REQUEST % self.next)
            self.next += conns
            self.pending += 1
        if requests:
            self.transport.write(b"".join(requests))
        elif self.pending == 0 and not self.done.done():
            self.transport.close()
            self.done.set_result(None)

    def data_received(self, data):
        data = self.unread + data
        end = data.rfind(b"\r\n\r\n")
        if end < 0:
            self.unread = data
            return
        heads, self.unread = data[: end + 4], data[end + 4 :]
        count = heads.count(b"\r\n\r\n")
        answered["all"] += count
        answered["ok"] += heads.count(b"HTTP/1.1 200 ")
        self.pending -= count
        self.send()

    def connection_lost(self, error):
        if not self.done.done():
            self.done.set_exception(error or ConnectionError("the node closed a connection"))

async def main():
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    done = []
    for first in range(min(conns, keys)):
        finished = loop.create_future()
        await loop.create_connection(lambda: Filler(first, finished), host, port)
        done.append(finished)
    await asyncio.gather(*done)
    print(answered["ok"], answered["all"], f"{time.monotonic() - started:.2f}")

asyncio.run(main())
EOF
cat >"$work/probe.py" <<'EOF'
# One HTTP call after the other on example/counter (not k0) until STOPFILE exists; prints the
# number of calls and their latencies.
import http.client, os, sys, time

host, port = sys.argv[1].rsplit(":", 1)
keys, stop = int(sys.argv[2]), sys.argv[3]
latencies, errors, n = [], 0, 0
connection = http.client.HTTPConnection(host, int(port), timeout=600)
while not os.path.exists(stop):
    n += 1
    started = time.monotonic()
    try:
        connection.request("POST", f"/v1/call/example/counter/k{1 + n * 7919 % max(keys - 1, 1)}", body=b"1",
                           headers={"Content-Type": "application/vnd.example/delta"})
        answer = connection.getresponse()
        answer.read()
        errors += answer.status != 200
    except (OSError, http.client.HTTPException):
        errors += 1
        connection.close()
        connection = http.client.HTTPConnection(host, int(port), timeout=600)
    latencies.append(time.monotonic() - started)
latencies.sort()
def at(q):
    return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000
print(f"{len(latencies)} calls, p50 {at(0.5):.1f} ms, p99 {at(0.99):.1f} ms, max {at(1):.0f} ms, errors {errors}" if latencies else "no calls")
EOF
hostport=${url#http://}
ticks=$(cpu_ticks)
read -r filled answered fill_s < <(python3 "$work/fill.py" "${hostport%:*}" "${hostport#*:}" "$keys" 256 4) ||
  fail "the fill failed"
ticks=$(( $(cpu_ticks) - ticks ))
(( filled == keys )) || fail "the fill got $filled answers of 200 for $keys keys ($answered answers in all)"
fill_rate=$(awk -v k="$keys" -v s="$fill_s" 'BEGIN { printf "%.0f", k / s }')
echo "fill: $keys counters in $fill_s s ($fill_rate calls/s; node CPU $(( ticks / 100 )) s), node RSS $(gib VmRSS), data $(du -sh "$data" | cut -f1), blob store $(du -sh "$work/blobs" | cut -f1)"
checkpoint base
read -r _ base_states base_bytes < <(ckpt_sums "$work/ckpt-base")
echo "  node RSS $(gib VmRSS) (peak $(gib VmHWM)), data $(du -sh "$data" | cut -f1), blob store $(du -sh "$work/blobs" | cut -f1)"
(( base_states >= keys )) || fail "the base holds $base_states addresses, fewer than the $keys counters filled"

# 2. The loadgen without and with checkpoints, over HTTP and then over QUIC.
measure http "$url"
measure quic "quic://$quic"

# 3. Restart to serving: on the same data directory, then from the blob store alone.
before=$(curl -sf -X POST -H "$delta_header" -d 1 "$url/v1/call/example/counter/k0") || fail "the call on k0 failed"
checkpoint last
read -r _ last_states last_bytes < <(ckpt_sums "$work/ckpt-last")
kill -KILL "$node"
wait "$node" 2>/dev/null || true
node=
restart local "$data"
local_ms=$restart_ms
(( reply == before + 1 )) || fail "after the restart on its data directory k0 = $reply, expected $(( before + 1 ))"
stop
mv "$data" "$work/data-away"
restart blob "$work/data-empty"
blob_ms=$restart_ms
(( reply >= before + 1 )) || fail "after the restart from the blob store k0 = $reply, expected at least $(( before + 1 ))"
stop

echo
echo "summary ($keys keys, durability fsync, 2 shards, commit $commit):"
echo "  fill: $fill_s s ($fill_rate calls/s over HTTP)"
echo "  base: $base_states addresses, $base_bytes B ($(( base_bytes / base_states )) B per address), $(seconds_of "$(cat "$work/ckpt-base.ms")") s; the longest call meanwhile $(grep -o 'max [0-9]* ms' "$work/probe-base" || echo "(no call finished)")$(
  [[ -e $work/ckpt-base.cli-failed ]] && echo "; statefun snapshot failed: $(cat "$work/ckpt-base.cli-failed")")"
for protocol in http quic; do
  read -r _ states written < <(ckpt_sums "$work/ckpt-$protocol-after")
  without=$(field "$protocol-without" p99_us)
  with=$(field "$protocol-with" p99_us)
  echo "  $protocol: delta after $seconds s of load: $states addresses, $written B; checkpoints during load, bytes each: $(paste -sd' ' "$work/loop-$protocol.bytes")"
  for period in without with; do
    echo "  $protocol: $period checkpoints $(field "$protocol-$period" throughput_rps) calls/s, p50 $(field "$protocol-$period" p50_us) us," \
      "p99 $(field "$protocol-$period" p99_us) us, p99.9 $(field "$protocol-$period" p999_us) us, max $(field "$protocol-$period" max_us) us"
  done
  echo "  $protocol: p99 with/without $(awk -v a="$with" -v b="$without" 'BEGIN { printf "%.2f", a / b }')"
done
echo "  last checkpoint: $last_states addresses, $last_bytes B"
for protocol in http quic; do
  [[ ! -e $work/loop-$protocol.cli-failed ]] ||
    echo "  statefun snapshot failed (the node stored the checkpoint) in rounds $(paste -sd' ' "$work/loop-$protocol.cli-failed") of $protocol-with"
done
echo "  restart to the first call: $(seconds_of "$local_ms") s on its data directory, $(seconds_of "$blob_ms") s from the blob store alone"
