#!/usr/bin/env python3
"""Per-function costs of the SFU's steady forwarding, per datagram out, from perf/callgrind.sh.

    perf/callgrind-functions.py RUN [OTHER_RUN] [--top N]

A RUN is a room size (perf/callgrind.sh's file for it under perf/results/callgrind/) or the
path of a callgrind file (room-N.out) that perf/callgrind.sh wrote elsewhere (CALLGRIND_OUT),
with its bench line (room-N.line) beside it. perf/callgrind.sh counts the measured steps only,
so each function's own cost (not what it calls) is divided by the datagrams out of those
steps. With one run it lists the functions by instructions; with two (two sizes, or one size
from two builds) it lists what differs from the first to the second, the largest changes
either way first, by last-level cache misses (reads and writes; CALLGRIND_CACHE=1 runs), then
by instructions. Function names are callgrind's (file:function for inlined code), so one
function may have several lines.
"""

import re
import subprocess
import sys
from pathlib import Path

DIR = Path(__file__).resolve().parent / "results" / "callgrind"
EVENTS = ["Ir", "Dr", "Dw", "I1mr", "D1mr", "D1mw", "ILmr", "DLmr", "DLmw"]


def run(arg):
    """A run's callgrind file and datagrams out."""
    out = Path(arg) if arg.endswith(".out") else DIR / f"room-{arg}.out"
    if not out.exists():
        sys.exit(f"{out}: missing (perf/callgrind.sh '{arg}')")
    line = out.with_suffix(".line")
    if not line.exists():
        sys.exit(f"{line}: missing (run perf/callgrind.sh again)")
    m = re.search(r"datagrams_out (\d+)", line.read_text())
    if not m or int(m.group(1)) == 0:
        sys.exit(f"{line}: no datagrams out")
    return out, int(m.group(1))


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


def per_datagram(arg):
    path, datagrams = run(arg)
    return {
        name: {e: row[e] / datagrams for e in EVENTS} for name, row in costs(path).items()
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

    def change(n):
        a, b = small.get(n, zero), large.get(n, zero)
        return (misses(b) - misses(a), b["Ir"] - a["Ir"])

    # The largest changes first, either way (misses, then instructions).
    growth = sorted(
        ((change(n), n) for n in set(small) | set(large)),
        key=lambda c: (abs(c[0][0]), abs(c[0][1])),
        reverse=True,
    )
    print(
        f"per datagram out, {args[0]} -> {args[1]}: change in last-level misses, "
        "instructions, read misses, write misses"
    )
    for (grow, _), name in growth[: top + 1]:
        s, l = small.get(name, zero), large.get(name, zero)
        print(
            f"{grow:6.1f} | {s['Ir']:7.0f} {l['Ir']:7.0f} | {s['DLmr']:5.1f} {l['DLmr']:5.1f} | "
            f"{s['DLmw']:5.1f} {l['DLmw']:5.1f}  {short_name(name)}"
        )


if __name__ == "__main__":
    main()
