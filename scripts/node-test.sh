#!/usr/bin/env bash
# The Node package's tests: builds and installs the package as users do (`npm install` in
# bindings/node runs its install script, which builds the addon with cargo), then runs
# bindings/node/test/*.test.js with node's test runner against the loopback receiver.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v node >/dev/null || { echo "node-test: node is missing: install Node.js 20 or later"; exit 1; }
major=$(node -p 'process.versions.node.split(".")[0]')
[ "$major" -ge 20 ] || { echo "node-test: Node $(node --version) is too old: 20 or later"; exit 1; }
cargo build -q -p pyroscope-receiver --bin pyroscope-receiver
export PYROSCOPE_RECEIVER="$PWD/target/debug/pyroscope-receiver"
start=$(date +%s)
(cd bindings/node && npm install --no-audit --no-fund --loglevel=error)
echo "== node addon built in $(( $(date +%s) - start )) s"
start=$(date +%s)
(cd bindings/node && node --test --test-concurrency=1 ${NODE_TEST_ARGS:-} test/*.test.js)
echo "== node tests: $(( $(date +%s) - start )) s"
# The fallback build, as a machine without a C++ compiler or Node's headers gets it: the addon
# without its C++ part, and the fallback test against it; then the regular build again (also
# when that test fails: the rideshare links this package).
start=$(date +%s)
cd bindings/node
trap 'node scripts/build.js' EXIT
PYROSCOPE_NODE_NO_SHIM=1 node scripts/build.js
PYROSCOPE_NODE_TEST_NO_SHIM=1 node --test test/fallback.test.js
echo "== node fallback build tested: $(( $(date +%s) - start )) s"
