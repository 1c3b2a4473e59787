#!/usr/bin/env bash
# The Node rows of `make bench` (Markdown on stdout, progress on stderr):
#   benches/node/run.sh
#   BENCH_NODE_RSS_ONLY=1 benches/node/run.sh   # peak RSS alone (CPU-bound workload), printed
#   BENCH_NODE_ONLY=attribution benches/node/run.sh   # some sections (bench.py's --only)
# Makes what they need first, each step bounded: our package installed as users install it
# (`npm install` in bindings/node, whose install script builds the addon, release),
# @pyroscope/nodejs 0.6.4 from npm in target/node-bench/peer (for the benchmark only: nothing
# in the package or the tracked files), and the loopback receiver. Without npm's registry,
# the peer's rows say it could not be installed.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
PEER_VERSION=0.6.4
mkdir -p target/node-bench

not_measured() {
  echo "## Node"
  echo
  echo "Not measured: $1"
  exit 3
}

command -v node >/dev/null || not_measured "node is missing (Node.js 20 or later)."
# The runtime itself, not a version manager's shell shim in front of it.
node="$(node -p process.execPath)"
major=$("$node" -p 'process.versions.node.split(".")[0]')
[ "$major" -ge 20 ] || not_measured "Node $("$node" --version) is too old (20 or later)."

echo "==> Node benchmark: our package (npm install in bindings/node, release build)" >&2
log="$root/target/node-bench/ours-install.log"
# A debug build (PYROSCOPE_NODE_PROFILE=debug) is for tests, never measured.
if ! (cd bindings/node && env -u PYROSCOPE_NODE_PROFILE timeout "${BENCH_NPM_TIMEOUT:-1800}" \
  npm install --no-audit --no-fund --loglevel=error) >"$log" 2>&1; then
  tail -n 20 "$log" >&2
  not_measured "our package could not be built or installed (\`npm install\` in bindings/node; see $log)."
fi
ours_build=$("$node" -e '
  const info = require("./bindings/node/build-info.json");
  const native = require("./bindings/node/lib/native");
  const names = native.jitNamesAvailable() ? "JavaScript frames named from V8'\''s JIT code events" : "fallback mode";
  process.stdout.write(`${info.profile} build, ${names}`);
')

echo "==> Node benchmark: @pyroscope/nodejs $PEER_VERSION in target/node-bench/peer" >&2
peer_dir="$root/target/node-bench/peer"
peer_pkg="$peer_dir/node_modules/@pyroscope/nodejs"
peer_ok() {
  "$node" -e "process.exit(require('$peer_pkg/package.json').version === '$PEER_VERSION' ? 0 : 1)" 2>/dev/null
}
log="$root/target/node-bench/peer-install.log"
if ! peer_ok; then
  mkdir -p "$peer_dir"
  # A project of its own, so npm installs here and nowhere above.
  printf '{ "name": "node-bench-peer", "private": true }\n' > "$peer_dir/package.json"
  # Bounded: a registry that does not answer costs at most five minutes here.
  (cd "$peer_dir" && timeout 300 npm install --no-audit --no-fund --loglevel=error --no-package-lock \
    --fetch-timeout=20000 --fetch-retries=1 "@pyroscope/nodejs@$PEER_VERSION") >"$log" 2>&1 || true
fi
peer_args=()
if peer_ok; then
  peer_args=(--peer-pkg "$peer_pkg")
else
  why=$( { grep -E 'ERR' "$log" 2>/dev/null || true; } | tail -n1 | cut -c1-160)
  echo "warning: @pyroscope/nodejs $PEER_VERSION could not be installed: ${why:-see $log}" >&2
  peer_args=(--peer-error "npm install @pyroscope/nodejs@$PEER_VERSION failed: ${why:-no detail}")
fi

echo "==> Node benchmark: the loopback receiver" >&2
timeout 1800 cargo build --release -q -p pyroscope-receiver
# BENCH_NODE_RSS_ONLY=1: peak RSS alone (the CPU-bound workload), printed, for quick looks.
only=()
[ -n "${BENCH_NODE_RSS_ONLY:-}" ] && only=(--only rss)
# BENCH_NODE_ONLY=SECTIONS: those of bench.py's sections alone (e.g. attribution: where the
# profiler's CPU goes, under perf).
[ -n "${BENCH_NODE_ONLY:-}" ] && only=(--only "$BENCH_NODE_ONLY")
python3 benches/node/bench.py --node "$node" --ours-pkg "$root/bindings/node" --ours-build "$ours_build" \
  --receiver "$root/target/release/pyroscope-receiver" "${peer_args[@]}" "${only[@]}"
