# Sourced by the benchmark scripts: build, a scratch directory, and a node on loopback.
#
#   perf_setup NAME      builds release, makes $work, kills the node and removes $work on exit
#   serve DURABILITY [ARGS...]
#                        starts a node (2 shards by default) on free ports with its data in
#                        $work/data-DURABILITY and ARGS added to `statefun serve`; sets $url
#                        (http://...), $quic (HOST:PORT), $shards and $node (its pid)
#   stop                 stops the node, if one runs

bin=target/release
node=

perf_setup() {
  cargo build --release -q -p statefun -p statefun-loadgen -p statefun-perf
  work=$(mktemp -d -p "${TMPDIR:-/tmp}" "statefun-$1.XXXXXX")
  trap 'stop; rm -rf "$work"' EXIT
}

stop() {
  if [[ -n $node ]]; then
    kill "$node" 2>/dev/null || true
    wait "$node" 2>/dev/null || true
    node=
  fi
}

serve() {
  local durability=$1
  shift
  "$bin/statefun" serve --http 127.0.0.1:0 --listen 127.0.0.1:0 --data-dir "$work/data-$durability" \
    --durability "$durability" "$@" >"$work/serve.out" 2>"$work/serve.err" &
  node=$!
  for _ in $(seq 200); do grep -q http "$work/serve.out" 2>/dev/null && break; sleep 0.05; done
  url=$(grep -o 'http://[0-9.:]*' "$work/serve.out") || {
    echo "$0: the node did not start:" >&2
    cat "$work/serve.err" >&2
    exit 1
  }
  quic=$(grep -o 'quic://[0-9.:]*' "$work/serve.out" | sed 's|quic://||')
  shards=$(grep -o 'with [0-9]* shards' "$work/serve.out" | grep -o '[0-9]*')
}
