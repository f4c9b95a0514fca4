#!/usr/bin/env bash
# Instruction counts of the SFU's forwarding, per datagram out, under valgrind's callgrind.
# Instruction counts do not depend on the machine's neighbours as wall time does. They still vary
# with str0m's unseeded randomness (DTLS, SSRCs): within 5 % at 10 participants, up to 30 % at 2,
# where the measured window holds few datagrams. Compare rooms of 10 or more.
#
#   perf/callgrind.sh [SIZES]        e.g. perf/callgrind.sh "2 10 25"
#
# Runs the forwarding bench in fixed-work mode (PARLOIR_BENCH_STEPS) twice per room size, with
# 10 and 30 steps of 100 ms of simulated meeting, counting only inside the SFU's four entry
# points (handle_command, handle_receive, handle_timeout, poll_output: the simulated clients
# are not counted). The difference between the two runs removes the joins and the warm-up
# (ICE, DTLS), leaving steady forwarding. Writes perf/results/callgrind.md and keeps the raw
# callgrind files under perf/results/callgrind/ for callgrind_annotate or kcachegrind.
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
ir() { # steps size -> "instructions datagrams"
  local file="$out/room-$2-steps-$1.out"
  local dgrams
  dgrams=$(PARLOIR_BENCH_SIZES=$2 PARLOIR_BENCH_STEPS=$1 valgrind --tool=callgrind \
    --callgrind-out-file="$file" "${toggles[@]}" "$bench" 2>/dev/null \
    | sed -n 's/.*datagrams_out \([0-9]*\).*/\1/p')
  local instr
  instr=$(callgrind_annotate "$file" 2>/dev/null | sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,)
  echo "$instr $dgrams"
}
{
  echo "| participants | instructions per datagram out | datagrams out (steady part) |"
  echo "|---|---|---|"
  for n in $sizes; do
    read -r i10 d10 < <(ir 10 "$n")
    read -r i30 d30 < <(ir 30 "$n")
    d=$((d30 - d10)); i=$((i30 - i10))
    if [ "$d" -gt 0 ]; then per=$((i / d)); else per="n/a"; fi
    echo "| $n | $per | $d |"
    echo "callgrind: $n participants: $per instructions per datagram out" >&2
  done
} > perf/results/callgrind.md
cat perf/results/callgrind.md
