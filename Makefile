# The two commands of the README: `make run` and `make test`. Everything else is a helper.
CARGO ?= cargo
# The tests' build (release profile) and the server as it is run (dist: release with link-time
# optimisation, Cargo.toml).
BIN := target/release/parloir
DIST := target/dist/parloir

.PHONY: run test setup build build-tests unit e2e sdk fmt lint clean bench bench-udp bench-tools profile callgrind

run: setup build
	$(DIST) serve --dev

test: setup build-tests unit e2e sdk

setup:
	@bash deploy/setup.sh

build:
	$(CARGO) build --profile dist --locked

# One release build serves the unit and the end-to-end tests: built with the tests' features
# (dev-dependencies take part in feature resolution), so `cargo test` compiles nothing again.
build-tests:
	$(CARGO) build --release --locked --workspace --bins --lib --tests
	$(CARGO) build --release --locked -p str0m-aws-lc-rs --tests

# The workspace's tests, and those of the patched SRTP ciphers (vendor/str0m-aws-lc-rs).
unit:
	$(CARGO) test --release --locked --workspace
	$(CARGO) test --release --locked -p str0m-aws-lc-rs

# The browser suite runs once per UDP backend that works here (io_uring, mmsg, basic), then
# once with rooms spanning two media workers.
e2e:
	PARLOIR_BIN=$(BIN) bash tests/e2e/each-backend.sh

sdk:
	PARLOIR_BIN=$(BIN) tests/sdk/.venv/bin/python tests/sdk/test_room_service.py
	PARLOIR_BIN=$(BIN) tests/sdk/.venv/bin/python tests/sdk/test_python_sdk.py
	PARLOIR_BIN=$(BIN) tests/sdk/.venv/bin/python tests/sdk/test_speech.py
	PARLOIR_BIN=$(BIN) tests/sdk/.venv/bin/python tests/sdk/test_egress.py

# Performance: criterion benches, load scenarios against Parloir and Janus, perf/report.md.
bench: setup build
	bash perf/bench.sh

# The packet path: each UDP backend's throughput and the SFU on each (perf/results/udp/).
bench-udp: setup build
	bash perf/udp-throughput.sh

# Profilers for perf/flamegraph.sh and perf/callgrind.sh: linux-perf, valgrind, inferno.
bench-tools:
	@command -v perf >/dev/null && command -v valgrind >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends linux-perf valgrind)
	@test -x perf/.tools/bin/inferno-flamegraph || $(CARGO) install --locked --root perf/.tools inferno

profile: build bench-tools
	bash perf/flamegraph.sh

callgrind: bench-tools
	bash perf/callgrind.sh

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --locked --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
