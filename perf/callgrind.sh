#!/usr/bin/env bash
# Instruction counts of the SFU's forwarding, per datagram out, under valgrind's callgrind.
# Instruction counts do not depend on the machine's neighbours as wall time does, and the bench's
# randomness and the engine's map order are seeded, so they repeat closely from run to run
# (see perf/README.md for how close).
#
#   perf/callgrind.sh [SIZES]        e.g. perf/callgrind.sh "2 10 25"
#
# Runs the forwarding bench in fixed-work mode (PARLOIR_BENCH_STEPS, 10 steps of 100 ms of
# simulated meeting; CALLGRIND_STEPS=N for others) once per room size, with callgrind's
# instrumentation off through the joins and the warm-up (ICE, DTLS) and on for the measured
# steps only (PARLOIR_BENCH_CALLGRIND=1: the bench turns it on two steps before them and zeroes
# the counts as they begin), counting only inside the SFU's four entry points (handle_command,
# handle_receive, handle_timeout, poll_output: the simulated clients are not counted). The
# warm-up runs uninstrumented, several times faster than instrumented, so rooms of 150 take
# minutes, not hours. Writes perf/results/callgrind.md and keeps callgrind's file and the
# bench's line per size (room-N.out, room-N.line) under perf/results/callgrind/ for
# callgrind_annotate, kcachegrind or perf/callgrind-functions.py.
#
# CALLGRIND_CACHE=1 also runs callgrind's cache model (32 KiB first level, 1 MiB last level, a
# core's own caches on this kind of server) and adds the last-level read and write misses per
# datagram out: the SFU's memory traffic, which instruction counts do not show. The bench's own
# settings pass through, e.g. PARLOIR_BENCH_SIMULCAST=1 PARLOIR_BENCH_BWE=0.
# CALLGRIND_BENCH=PATH runs a bench binary built before (to compare two builds) and
# CALLGRIND_OUT=DIR writes the files there instead (perf/results/callgrind.md included only in
# the default place). perf/callgrind-functions.py then breaks the counts down by function, and
# compares two sizes or two builds.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=${1:-"2 10 25"}
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is missing (make bench-tools installs it)" >&2; exit 1; }
bench=${CALLGRIND_BENCH:-}
if [ -z "$bench" ]; then
  bench=$(cargo bench --locked -p parloir-sfu --bench forward --no-run 2>&1 \
    | grep -o 'target/release/deps/forward-[a-z0-9]*' | tail -1)
fi
[ -x "$bench" ] || { echo "callgrind.sh: could not build the forwarding bench (or CALLGRIND_BENCH is not a program)" >&2; exit 1; }
out=${CALLGRIND_OUT:-perf/results/callgrind}
mkdir -p "$out"
toggles=()
for f in handle_command handle_receive handle_timeout poll_output; do
  toggles+=("--toggle-collect=parloir_sfu::engine::Sfu::$f")
done
cache=()
if [ "${CALLGRIND_CACHE:-0}" = 1 ]; then
  cache=(--cache-sim=yes --I1=32768,8,64 --D1=32768,8,64 --LL=1048576,16,64)
fi
steps=${CALLGRIND_STEPS:-10}
run() { # size -> "instructions datagrams llreads llwrites"
  local file="$out/room-$1.out"
  local dgrams
  # The bench's line is kept beside callgrind's file, for perf/callgrind-functions.py.
  PARLOIR_BENCH_CALLGRIND=1 PARLOIR_BENCH_SIZES=$1 PARLOIR_BENCH_STEPS=$steps \
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$file" \
    "${cache[@]}" "${toggles[@]}" "$bench" 2>/dev/null \
    | grep 'datagrams_out' > "${file%.out}.line" || true
  dgrams=$(sed -n 's/.*datagrams_out \([0-9]*\).*/\1/p' "${file%.out}.line")
  # After the bench's zeroing, callgrind's file has a wrong summary (counted from before it)
  # and right totals: the summary is made the totals, for callgrind_annotate and kcachegrind.
  # The totals: Ir, and with the cache model Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw.
  local sums
  sums=$(sed -n 's/^totals: //p' "$file")
  [ -z "$sums" ] || sed -i "s/^summary: .*/summary: $sums/" "$file"
  read -r instr llr llw <<< "$(echo "$sums" | awk '{print $1 + 0, (NF >= 9 ? $8 : 0), (NF >= 9 ? $9 : 0)}')"
  echo "$instr ${dgrams:-0} $llr $llw"
}
table=$(
  if [ ${#cache[@]} -gt 0 ]; then
    echo "| participants | instructions per datagram out | last-level read misses per datagram out | last-level write misses per datagram out | datagrams out (measured) |"
    echo "|---|---|---|---|---|"
  else
    echo "| participants | instructions per datagram out | datagrams out (measured) |"
    echo "|---|---|---|"
  fi
  for n in $sizes; do
    read -r i d r w < <(run "$n")
    if [ "$d" -gt 0 ]; then per=$((i / d)); else per="n/a"; fi
    if [ ${#cache[@]} -gt 0 ]; then
      rd=$(awk -v a="$r" -v d="$d" 'BEGIN { if (d > 0) printf "%.1f", a / d; else print "n/a" }')
      wr=$(awk -v a="$w" -v d="$d" 'BEGIN { if (d > 0) printf "%.1f", a / d; else print "n/a" }')
      echo "| $n | $per | $rd | $wr | $d |"
    else
      echo "| $n | $per | $d |"
    fi
    echo "callgrind: $n participants: $per instructions per datagram out" >&2
  done
)
md=perf/results/callgrind.md
[ -z "${CALLGRIND_OUT:-}" ] || md="$out/callgrind.md"
echo "$table" | tee "$md"
