#!/usr/bin/env bash
# A CPU profile of Parloir under load, as a flamegraph.
#
#   perf/flamegraph.sh [SCENARIO] [SECONDS]     e.g. perf/flamegraph.sh meeting-150 15
#
# Starts `parloir serve --dev` on free loopback ports, loads it with the scenario (sized for this
# machine), samples the server with `perf record` (cpu-clock, DWARF call graphs: the dist
# profile keeps line tables) for SECONDS once the room is up, and folds the samples into
# perf/results/flamegraph.svg with inferno. The load generator runs in its own process, so the
# profile is the server's alone. Needs linux-perf and inferno: `make bench-tools`.
set -euo pipefail
cd "$(dirname "$0")/.."
scenario=${1:-meeting-150}
secs=${2:-15}
bin=target/dist/parloir
tools=perf/.tools/bin
out=perf/results
command -v perf >/dev/null || { echo "flamegraph.sh: perf is missing (make bench-tools)" >&2; exit 1; }
[ -x "$tools/inferno-flamegraph" ] || { echo "flamegraph.sh: inferno is missing (make bench-tools)" >&2; exit 1; }
[ -x "$bin" ] || { echo "flamegraph.sh: build first (make build)" >&2; exit 1; }
mkdir -p "$out"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http=$(port); udp=$(port)
RUST_LOG=warn "$bin" serve --dev --http-addr "127.0.0.1:$http" --udp-port "$udp" --tcp-port 0 \
  2> "$out/flamegraph-server.log" &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$http") 2>/dev/null && break
  sleep 0.1
done

# Ramp-up and warm-up first, then the profile, then a margin before the load stops.
"$bin" loadtest --quiet --scenario "$scenario" --target livekit --url "ws://127.0.0.1:$http" \
  --server-pid "$server" --duration $((secs + 10)) > "$out/flamegraph-load.txt" 2>&1 &
load=$!
sleep 8
perf record -q -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$server" \
  -o "$out/perf.data" -- sleep "$secs" 2> "$out/perf-record.log" || true
wait $load || echo "flamegraph.sh: the load test reported failures (see $out/flamegraph-load.txt)" >&2
perf script -i "$out/perf.data" 2>/dev/null | "$tools/inferno-collapse-perf" > "$out/flamegraph.folded"
"$tools/inferno-flamegraph" --title "parloir serve, $scenario ($(nproc) cores)" \
  < "$out/flamegraph.folded" > "$out/flamegraph.svg"
echo "flamegraph.sh: $out/flamegraph.svg ($(wc -l < "$out/flamegraph.folded") stacks); load summary in $out/flamegraph-load.txt"
