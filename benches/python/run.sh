#!/usr/bin/env bash
# The Python rows of `make bench` (Markdown on stdout, progress on stderr):
#   benches/python/run.sh
# Makes what they need first, each step bounded: our wheel and its venv target/py/$PY (the ones
# `make test-python` uses, built when the sources changed), pyroscope-io 1.4.0 from PyPI in its
# own venv target/py/$PY-pyroscope-io (both packages are imported as `pyroscope`), and the
# loopback receiver. Without PyPI, pyroscope-io's rows say it could not be installed.
# BENCH_PYTHON_INSTRUCTIONS=1 adds instruction counts under valgrind (about 4 minutes more).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
PY="${BENCH_PYTHON_VERSION:-3.12.1}"
PEER_VERSION=1.4.0

echo "==> Python benchmark: our wheel in target/py/$PY" >&2
if ! make -s PY_VERSIONS="$PY" "target/py/$PY/.installed" >&2; then
  echo "## Python"
  echo
  echo "Not measured: our package could not be built or installed for CPython $PY (see the output of \`make python-env\`)."
  exit 3
fi
ours="$root/target/py/$PY/bin/python"

echo "==> Python benchmark: pyroscope-io $PEER_VERSION in target/py/$PY-pyroscope-io" >&2
peer_dir="target/py/$PY-pyroscope-io"
peer_args=()
peer_ok() { "$peer_dir/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('pyroscope-io') != '$PEER_VERSION')" 2>/dev/null; }
if ! peer_ok; then
  base=$(PYENV_VERSION="$PY" pyenv which python 2>/dev/null || command -v "python${PY%.*}" || true)
  log="$root/target/py/pyroscope-io-install.log"
  mkdir -p target/py
  if [ -z "$base" ]; then
    echo "CPython $PY not found" > "$log"
  elif "$base" -m venv "$peer_dir" >"$log" 2>&1; then
    # Bounded: a PyPI that does not answer costs at most two minutes here.
    timeout 120 "$peer_dir/bin/python" -m pip install -q --disable-pip-version-check --timeout 20 --retries 1 \
      "pyroscope-io==$PEER_VERSION" >>"$log" 2>&1 || true
  fi
fi
if peer_ok; then
  peer_args=(--peer-python "$root/$peer_dir/bin/python")
else
  why=$( { grep -E '^ERROR|not found' "$log" 2>/dev/null || true; } | tail -n1 | cut -c1-160)
  echo "warning: pyroscope-io $PEER_VERSION could not be installed: ${why:-see $log}" >&2
  peer_args=(--peer-error "pip install pyroscope-io==$PEER_VERSION failed: ${why:-no detail}")
fi

echo "==> Python benchmark: the loopback receiver" >&2
cargo build --release -q -p pyroscope-receiver
"$ours" benches/python/bench.py --ours-python "$ours" --receiver "$root/target/release/pyroscope-receiver" \
  "${peer_args[@]}"
