#!/usr/bin/env bash
# Instruction counts of the SFU's forwarding, per datagram out, under valgrind's callgrind.
# Instruction counts do not depend on the machine's neighbours as wall time does. They still vary
# with str0m's unseeded randomness (DTLS, SSRCs): within 5 % at 10 participants, up to 30 % at 2,
# where the measured window holds few datagrams. Compare rooms of 10 or more.
#
#   perf/callgrind.sh [SIZES]        e.g. perf/callgrind.sh "2 10 25"
#
# Runs the forwarding bench in fixed-work mode (PARLOIR_BENCH_STEPS) twice per room size, with
# 10 and 30 steps of 100 ms of simulated meeting (CALLGRIND_STEPS="3 8" for others), counting only inside the SFU's four entry
# points (handle_command, handle_receive, handle_timeout, poll_output: the simulated clients
# are not counted). The difference between the two runs removes the joins and the warm-up
# (ICE, DTLS), leaving steady forwarding. Writes perf/results/callgrind.md and keeps the raw
# callgrind files under perf/results/callgrind/ for callgrind_annotate or kcachegrind.
#
# CALLGRIND_CACHE=1 also runs callgrind's cache model (32 KiB first level, 1 MiB last level, a
# core's own caches on this kind of server) and adds the last-level read and write misses per
# datagram out: the SFU's memory traffic, which instruction counts do not show. The bench's own
# settings pass through, e.g. PARLOIR_BENCH_SIMULCAST=1 PARLOIR_BENCH_BWE=0.
# perf/callgrind-functions.py then breaks the counts down by function, and compares two sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=${1:-"2 10 25"}
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is missing (make bench-tools installs it)" >&2; exit 1; }
bench=$(cargo bench --locked -p parloir-sfu --bench forward --no-run 2>&1 \
  | grep -o 'target/release/deps/forward-[a-z0-9]*' | tail -1)
[ -x "$bench" ] || { echo "callgrind.sh: could not build the forwarding bench" >&2; exit 1; }
out=perf/results/callgrind
mkdir -p "$out"
toggles=()
for f in handle_command handle_receive handle_timeout poll_output; do
  toggles+=("--toggle-collect=parloir_sfu::engine::Sfu::$f")
done
cache=()
if [ "${CALLGRIND_CACHE:-0}" = 1 ]; then
  cache=(--cache-sim=yes --I1=32768,8,64 --D1=32768,8,64 --LL=1048576,16,64)
fi
read -r short long <<< "${CALLGRIND_STEPS:-10 30}"
ir() { # steps size -> "instructions datagrams llreads llwrites"
  local file="$out/room-$2-steps-$1.out"
  local dgrams
  # The bench's line is kept beside callgrind's file, for perf/callgrind-functions.py.
  PARLOIR_BENCH_SIZES=$2 PARLOIR_BENCH_STEPS=$1 valgrind --tool=callgrind \
    --callgrind-out-file="$file" "${cache[@]}" "${toggles[@]}" "$bench" 2>/dev/null \
    | grep 'datagrams_out' > "${file%.out}.line" || true
  dgrams=$(sed -n 's/.*datagrams_out \([0-9]*\).*/\1/p' "${file%.out}.line")
  # The totals line: Ir, and with the cache model Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw.
  local totals
  totals=$(callgrind_annotate "$file" 2>/dev/null | grep 'PROGRAM TOTALS' \
    | sed -E 's/\([ 0-9.]+%\)//g' | tr -d , | awk '{print $1, ($9 == "" ? 0 : $8), ($9 == "" ? 0 : $9)}')
  read -r instr llr llw <<< "$totals"
  echo "$instr $dgrams $llr $llw"
}
{
  if [ ${#cache[@]} -gt 0 ]; then
    echo "| participants | instructions per datagram out | last-level read misses per datagram out | last-level write misses per datagram out | datagrams out (steady part) |"
    echo "|---|---|---|---|---|"
  else
    echo "| participants | instructions per datagram out | datagrams out (steady part) |"
    echo "|---|---|---|"
  fi
  for n in $sizes; do
    read -r i1 d1 r1 w1 < <(ir "$short" "$n")
    read -r i2 d2 r2 w2 < <(ir "$long" "$n")
    d=$((d2 - d1)); i=$((i2 - i1))
    if [ "$d" -gt 0 ]; then per=$((i / d)); else per="n/a"; fi
    if [ ${#cache[@]} -gt 0 ]; then
      rd=$(awk -v a="$r1" -v b="$r2" -v d="$d" 'BEGIN { if (d > 0) printf "%.1f", (b - a) / d; else print "n/a" }')
      wr=$(awk -v a="$w1" -v b="$w2" -v d="$d" 'BEGIN { if (d > 0) printf "%.1f", (b - a) / d; else print "n/a" }')
      echo "| $n | $per | $rd | $wr | $d |"
    else
      echo "| $n | $per | $d |"
    fi
    echo "callgrind: $n participants: $per instructions per datagram out" >&2
  done
} > perf/results/callgrind.md
cat perf/results/callgrind.md
