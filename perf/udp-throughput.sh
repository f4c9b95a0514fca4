#!/usr/bin/env bash
# The packet-path measurements of perf/README.md ("Packet path"):
#  1. loopback throughput of each UDP backend: CPU per datagram and datagrams/s per core, send
#     and receive, 1200-byte datagrams, batches of 1, 8, 32 and 64, GSO off and on
#     (`parloir net-bench`, sender and receiver pinned to their own cores);
#  2. the whole SFU on the meeting-150 scenario with each backend, REPEAT times, interleaved so
#     that the machine's drift spreads over all of them (`parloir loadtest --io`).
# Writes perf/results/udp/{net-bench.json,net-bench.md,meeting-*.json}. About 8 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/parloir
out=perf/results/udp
seconds=${SECONDS_PER_RUN:-20}
repeat=${REPEAT:-3}
mkdir -p "$out"
cargo build --release --locked -p parloir
"$bin" net-bench --seconds 2 --json "$out/net-bench.json" | tee "$out/net-bench.md"
for r in $(seq 1 "$repeat"); do
  for io in basic mmsg io_uring; do
    "$bin" loadtest --quiet --scenario meeting-150 --io "$io" --duration "$seconds" \
      --out "$out/run$r" >/dev/null || echo "udp-throughput: $io run $r reported failures" >&2
  done
done
# One line per run: backend, µs of server CPU per forwarded packet, packets out/s, video p99 ms.
for f in "$out"/run*/meeting-150-parloir-*.json; do
  python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
print(r["server"], round(r["server_process"]["cpu_us_per_forwarded_packet"], 2), round(r["traffic"]["packets_out_per_s"]), r["video_latency_ms"]["p99"], sys.argv[1])
' "$f"
done | sort | tee "$out/meeting.txt"
