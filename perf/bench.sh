#!/usr/bin/env bash
# `make bench`: the criterion benches, the load scenarios sized for this machine against Parloir
# and Janus, then perf/report.md with plots, checked against perf/budgets.toml and the previous
# run. About 12 minutes on 2 cores after the build (2 of them for subtitle latency, when the
# speech models are installed).
#
# Results: perf/results/latest/*.json (this run), perf/results/previous/ (the run before),
# perf/report.md and perf/plots/*.svg. Set BENCH_DURATION (seconds per scenario, default 20) to
# trade time for steadier figures.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/dist/parloir
results=perf/results
duration=${BENCH_DURATION:-20}
[ -x "$bin" ] || { echo "bench.sh: build first (make build)" >&2; exit 1; }

rm -rf "$results/previous"
[ -d "$results/latest" ] && mv "$results/latest" "$results/previous"
mkdir -p "$results/latest"

echo "bench: forwarding bench (criterion)"
PARLOIR_BENCH_OUT="$PWD/$results/latest/forward.json" \
  cargo bench --locked -p parloir-sfu --bench forward

echo "bench: one subscriber renegotiation against its m-lines (criterion)"
cargo bench --locked -p parloir-sfu --bench negotiate

echo "bench: record plane (compositor frames/s, room composite CPU cores)"
PARLOIR_BENCH_OUT="$PWD/$results/latest/record.json" \
  cargo bench --locked -p parloir-record --bench composite

targets=parloir
if command -v janus >/dev/null; then
  targets=parloir,janus
else
  echo "bench: janus is not installed (deploy/setup.sh installs it): Parloir alone" >&2
fi

load() { # SECONDS loadtest-arguments...; a run with failures is reported, and the bench goes on
  local seconds=$1; shift
  "$bin" loadtest --quiet --duration "$seconds" --out "$results/latest" "$@" \
    || echo "bench: loadtest $* reported failures; see its JSON report" >&2
}
echo "bench: load scenarios against $targets"
load "$duration" --scenario meeting-150 --target "$targets"
load "$duration" --scenario webinar --target "$targets"
load "$duration" --scenario audio-only --target "$targets"
load "$duration" --scenario churn --target parloir
# CPU per forwarded packet against participants, for the plot.
load 10 --scenario meeting-150 --target "$targets" --participants 4,8,12

# Subtitle latency, when the setup installed the speech models and the SDK participants.
if [ -f models/whisper-base/encoder.onnx ] && [ -x tests/sdk/.venv/bin/python ]; then
  echo "bench: subtitle latency with 1 and 4 people speaking (perf/subtitle-latency.py)"
  PARLOIR_BIN="$bin" tests/sdk/.venv/bin/python perf/subtitle-latency.py \
    --speakers 1 --speakers 4 --json "$results/latest/subtitle-latency.json" \
    || echo "bench: subtitle latency failed; its budgets read not measured" >&2
else
  echo "bench: no speech models or SDK environment (make setup installs them): subtitle latency not measured" >&2
fi

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
# The bench's own outputs are tracked; only other changes make the tree dirty.
git diff --quiet HEAD -- . ':!perf/results' ':!perf/report.md' ':!perf/plots' 2>/dev/null \
  || commit="$commit with uncommitted changes"
cpu=$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)
"$bin" bench-report --results "$results/latest" --previous "$results/previous" \
  --budgets perf/budgets.toml --out perf/report.md \
  --context "$(date -u +%Y-%m-%d), $(nproc) cores of ${cpu:-an unknown CPU}, kernel $(uname -r), commit $commit"
