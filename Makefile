# The two commands of the README: `make demo` and `make test`. `make bench` for the figures.
SHELL := /bin/bash
.PHONY: all demo test test-rust test-python test-node lint-python python-env lint bench setup chromium valgrind c-lib

all: test

setup:
	@command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup)"; exit 1; }
	@rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy 2>/dev/null || true

# Tools the checks need, installed once from Debian's packages when missing (as root); without
# them the checks fail: `make test` never skips one.
chromium:
	@./scripts/apt-need.sh chromium chromium "the report's browser check"

valgrind:
	@./scripts/apt-need.sh valgrind valgrind "the C smoke program under memcheck"

demo: setup
	./scripts/demo.sh

test: setup chromium valgrind lint test-rust test-python test-node

lint:
	cargo fmt --all -- --check
	./scripts/check-links.sh
	cargo clippy --workspace --all-targets -q -- -D warnings
	@# The Node addon's fallback build (no C++ shim: no V8 headers or no C++ compiler) compiles too.
	PYROSCOPE_NODE_NO_SHIM=1 cargo clippy -p pyroscope-node --all-targets -q -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --no-deps -q -p pyroscope-core -p pyroscope-pprof
	@# The report command reads profiles with the pprof codec alone: no sampler, unwinder or HTTP client.
	@deps=$$(cargo tree -q -p pyroscope-cli -e normal --prefix none | grep -E '^(pyroscope-core|framehop|ureq|addr2line) ' || true); \
	  [ -z "$$deps" ] || { echo "pyroscope-cli must not depend on: $$deps"; exit 1; }

test-rust:
	cargo test --workspace -q
	./scripts/check-rideshare.sh rust
	./scripts/check-rideshare.sh c
	./scripts/check-run-scripts.sh
	./tests/preload/check.sh
	./bindings/c/tests/check.sh
	./examples/cgo/check.sh
	./scripts/check-report.sh
	STRESS_SECONDS=$${STRESS_SECONDS:-20} cargo run -q -p pyroscope-stress

# The Python package: one abi3 wheel, built when its sources change, installed into one venv per
# CPython (target/py/<version>); `test-python` runs bindings/python/tests under each.
PY_VERSIONS := 3.11.7 3.12.1 3.13.0
PY_LINT := bindings/python $(wildcard examples/rideshare/python benches/python benches/node)
PY_WHEEL := target/wheels/.pyroscope-profiler.stamp
PY_SOURCES := Cargo.lock $(shell find bindings/python pyroscope-core pyroscope-pprof -path bindings/python/tests -prune -o \
	-type f \( -name '*.rs' -o -name '*.py' -o -name '*.pyi' -o -name '*.toml' -o -name py.typed \) -print)

$(PY_WHEEL): $(PY_SOURCES)
	./scripts/python-env.sh wheel $(firstword $(PY_VERSIONS))

target/py/%/.installed: $(PY_WHEEL)
	./scripts/python-env.sh venv $*

python-env: $(foreach v,$(PY_VERSIONS),target/py/$(v)/.installed)

test-python: python-env lint-python
	./scripts/python-test.sh $(PY_VERSIONS)
	./scripts/check-rideshare.sh python

# The Node package: `npm install` in bindings/node builds the addon (release) as users get it;
# its tests run with node's test runner; then the Node rideshare (installed with `npm ci`) and
# its run script started three at a time.
test-node:
	./scripts/node-test.sh
	./scripts/check-rideshare.sh node
	./scripts/check-run-scripts.sh node

# Python sources formatted and linted with ruff (pinned, in the newest venv); the package's
# typing is its committed `_native.pyi` and `py.typed`.
RUFF_VERSION := 0.17.6
lint-python: python-env
	@target/py/$(lastword $(PY_VERSIONS))/bin/python -m ruff --version 2>/dev/null | grep -q "$(RUFF_VERSION)" || \
	  target/py/$(lastword $(PY_VERSIONS))/bin/pip install -q "ruff==$(RUFF_VERSION)"
	target/py/$(lastword $(PY_VERSIONS))/bin/python -m ruff format --check --config bindings/python/pyproject.toml $(PY_LINT)
	target/py/$(lastword $(PY_VERSIONS))/bin/python -m ruff check --config bindings/python/pyproject.toml $(PY_LINT)

bench: setup
	./scripts/bench.sh

# libpyroscope.so/.a in target/release plus target/release/pyroscope.pc for pkg-config.
c-lib:
	cargo build --release -p pyroscope-ffi -p pyroscope-preload
	sed -e "s|@PREFIX@|$(CURDIR)|" -e "s|@LIBDIR@|$(CURDIR)/target/release|" \
	    -e "s|@INCLUDEDIR@|$(CURDIR)/bindings/c/include|" \
	    -e "s|@VERSION@|$$(grep -m1 '^version' Cargo.toml | cut -d'"' -f2)|" \
	    bindings/c/pyroscope.pc.in > target/release/pyroscope.pc
	@echo "PKG_CONFIG_PATH=$(CURDIR)/target/release pkg-config --cflags --libs pyroscope"
