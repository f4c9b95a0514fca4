#!/usr/bin/env python3
"""Per-function costs of the SFU's steady forwarding, per datagram out, from perf/callgrind.sh.

    perf/callgrind-functions.py SIZE [OTHER_SIZE] [--top N]

perf/callgrind.sh runs each room size twice (a short and a long run) and keeps callgrind's files
and the bench's line under perf/results/callgrind/. For each function (its own cost, not what
it calls) this takes the long run's counts less the short run's, divided by the datagrams out
between them: the joins and the warm-up cancel out. With one size it lists the functions by
instructions; with two it lists what grows from the first to the second, by last-level cache
misses (reads and writes), which needs CALLGRIND_CACHE=1 runs. Function names are callgrind's
(file:function for inlined code), so one function may have several lines. Counts vary from run
to run with str0m's unseeded randomness (with estimation on, the pacer's and the probes' work
most), so compare like with like.
"""

import re
import subprocess
import sys
from pathlib import Path

DIR = Path(__file__).resolve().parent / "results" / "callgrind"
EVENTS = ["Ir", "Dr", "Dw", "I1mr", "D1mr", "D1mw", "ILmr", "DLmr", "DLmw"]


def runs(size):
    """The (short, long) runs of a size: paths and datagrams out."""
    found = []
    for out in DIR.glob(f"room-{size}-steps-*.out"):
        steps = int(out.stem.rsplit("-", 1)[1])
        line = out.with_suffix(".line")
        if not line.exists():
            sys.exit(f"{line}: missing (run perf/callgrind.sh again)")
        m = re.search(r"datagrams_out (\d+)", line.read_text())
        if not m:
            sys.exit(f"{line}: no datagrams_out")
        found.append((steps, out, int(m.group(1))))
    if len(found) < 2:
        sys.exit(f"room {size}: needs two runs in {DIR} (perf/callgrind.sh '{size}')")
    found.sort()
    return found[0], found[-1]


def costs(path):
    """Each function's own counts, by name."""
    text = subprocess.run(
        ["callgrind_annotate", "--auto=no", "--inclusive=no", "--threshold=100", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    events = None
    table = {}
    for line in text.splitlines():
        if line.startswith("Events shown:"):
            events = line.split(":", 1)[1].split()
            continue
        fields = re.sub(r"\(\s*[\d.]+%\)", "", line).split()
        if events is None or len(fields) <= len(events):
            continue
        numbers = fields[: len(events)]
        if not all(re.fullmatch(r"[\d,]+|\.", n) for n in numbers):
            continue
        name = " ".join(fields[len(events) :])
        name = re.sub(r"\s*\[[^\]]*\]$", "", name)
        if name == "PROGRAM TOTALS":
            name = "(all)"
        values = dict(zip(events, (0 if n == "." else int(n.replace(",", "")) for n in numbers)))
        row = table.setdefault(name, dict.fromkeys(EVENTS, 0))
        for e in EVENTS:
            row[e] += values.get(e, 0)
    return table


def per_datagram(size):
    (_, short, d1), (_, long, d2) = runs(size)
    if d2 <= d1:
        sys.exit(f"room {size}: the long run sent no more datagrams than the short one")
    a, b = costs(short), costs(long)
    zero = dict.fromkeys(EVENTS, 0)
    return {
        name: {e: (b.get(name, zero)[e] - a.get(name, zero)[e]) / (d2 - d1) for e in EVENTS}
        for name in set(a) | set(b)
    }


def short_name(name, width=100):
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def main():
    args = sys.argv[1:]
    top = 30
    if "--top" in args:
        i = args.index("--top")
        if i + 1 >= len(args) or not args[i + 1].isdigit():
            sys.exit("--top takes a number of functions")
        top = int(args[i + 1])
        del args[i : i + 2]
    if not args or len(args) > 2:
        sys.exit(__doc__)
    if len(args) == 1:
        rows = per_datagram(args[0])
        order = sorted(rows.items(), key=lambda kv: -kv[1]["Ir"])
        print(f"room {args[0]}, per datagram out: instructions, last-level read and write misses")
        for name, r in order[: top + 1]:
            print(f"{r['Ir']:9.1f} {r['DLmr']:7.1f} {r['DLmw']:7.1f}  {short_name(name)}")
        return
    small, large = per_datagram(args[0]), per_datagram(args[1])
    zero = dict.fromkeys(EVENTS, 0.0)

    def misses(r):
        return r["DLmr"] + r["DLmw"]

    growth = sorted(
        ((misses(large.get(n, zero)) - misses(small.get(n, zero)), n) for n in set(small) | set(large)),
        reverse=True,
    )
    print(
        f"per datagram out, room {args[0]} -> {args[1]}: growth in last-level misses, "
        "instructions, read misses, write misses"
    )
    for grow, name in growth[: top + 1]:
        s, l = small.get(name, zero), large.get(name, zero)
        print(
            f"{grow:6.1f} | {s['Ir']:7.0f} {l['Ir']:7.0f} | {s['DLmr']:5.1f} {l['DLmr']:5.1f} | "
            f"{s['DLmw']:5.1f} {l['DLmw']:5.1f}  {short_name(name)}"
        )


if __name__ == "__main__":
    main()
