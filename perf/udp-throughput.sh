#!/usr/bin/env bash
# The packet-path measurements of perf/README.md ("Packet path"):
#  1. loopback throughput of each UDP backend: CPU per datagram and datagrams/s per core, send
#     and receive, 1200-byte datagrams, batches of 1, 8, 32 and 64, GSO off and on
#     (`parloir net-bench`, sender and receiver pinned to their own cores);
#  2. the whole SFU on the meeting-150 scenario with each backend, REPEAT times, interleaved so
#     that the machine's drift spreads over all of them (`parloir loadtest --io`);
#  3. the SFU on mmsg with GSO grouping on and off, REPEAT times, interleaved, with the messages
#     it handed the kernel per datagram (`serve --gso`).
# Writes perf/results/udp/{net-bench.json,net-bench.md,meeting.txt,gso.txt,run*/}. About 12 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/dist/parloir
out=perf/results/udp
seconds=${SECONDS_PER_RUN:-20}
repeat=${REPEAT:-3}
mkdir -p "$out"
cargo build --profile dist --locked -p parloir
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

# GSO grouping on and off, on a server started here so that /metrics can be read after the run.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
udp=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
: > "$out/gso.txt"
for r in $(seq 1 "$repeat"); do
  for gso in true false; do
    "$bin" serve --dev --http-addr "127.0.0.1:$port" --udp-port "$udp" --tcp-port 0 --io mmsg \
      --gso "$gso" 2>/dev/null &
    pid=$!
    for _ in $(seq 50); do curl -sf "127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
    "$bin" loadtest --quiet --target livekit --url "ws://127.0.0.1:$port" --server-pid "$pid" \
      --duration "$seconds" --out "$out/gso-$gso-$r" >/dev/null || echo "udp-throughput: gso=$gso run $r reported failures" >&2
    metrics=$(curl -s "127.0.0.1:$port/metrics")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
m = dict(l.rsplit(" ", 1) for l in sys.argv[3].splitlines() if l.startswith("parloir_") and "{" not in l)
print("gso=" + sys.argv[2], round(r["server_process"]["cpu_us_per_forwarded_packet"], 2),
      "us/packet; messages", m["parloir_udp_send_messages_total"], "for", m["parloir_packets_out_total"], "datagrams")
' "$out/gso-$gso-$r/meeting-150-livekit.json" "$gso" "$metrics" | tee -a "$out/gso.txt"
  done
done
