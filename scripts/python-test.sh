#!/usr/bin/env bash
# Runs the Python package's tests (bindings/python/tests) under each CPython given, from the
# venvs `make python-env` made:   scripts/python-test.sh 3.11.7 3.12.1 3.13.0
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p pyroscope-receiver --bin pyroscope-receiver
export PYROSCOPE_RECEIVER="$PWD/target/debug/pyroscope-receiver"
status=0
for v in "$@"; do
  echo "== CPython $v"
  start=$(date +%s)
  # From the tests' folder: `import pyroscope` is the installed wheel, not the source tree.
  (cd bindings/python/tests && "../../../target/py/$v/bin/python" -m pytest -q -p no:cacheprovider ${PYTEST_ARGS:-} .) || status=1
  echo "== CPython $v: $(( $(date +%s) - start )) s"
done
exit $status
