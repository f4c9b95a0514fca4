#!/usr/bin/env bash
# The browser suite once per UDP backend this machine runs (`parloir doctor --json` probes
# them as the server does): io_uring, mmsg and basic must each carry a real meeting; then once
# with rooms spanning media workers.
set -euo pipefail
bin=${PARLOIR_BIN:?set PARLOIR_BIN}
backends=$("$bin" doctor --json | python3 -c '
import json, sys
d = json.load(sys.stdin)
for b in d["udp"]["backends"]:
    if b["works"]:
        print(b["backend"])
    else:
        print("e2e: skipping", b["backend"] + ":", b["error"], file=sys.stderr)
')
for io in $backends; do
  echo "e2e: the browser suite on the $io backend"
  PARLOIR_IO=$io node --test --test-concurrency=1 tests/e2e/
done
# Once more with two media workers and every room spanning both from its second participant:
# each meeting's media, data, calls and recordings cross workers.
echo "e2e: the browser suite with rooms spanning two media workers"
PARLOIR_E2E_SERVE_ARGS="--media-workers 2 --room-span-after 1" node --test --test-concurrency=1 tests/e2e/
