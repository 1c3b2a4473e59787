#!/usr/bin/env bash
# Builds the abi3 wheel of bindings/python once and installs it (plus pytest) into one venv per
# CPython under target/py/<version>:   scripts/python-env.sh wheel | venv VERSION
# The interpreters come from pyenv (`PYENV_VERSION=x pyenv which python`); maturin comes from
# PyPI through pip's build isolation. Nothing is installed into the pyenv interpreters.
set -euo pipefail
cd "$(dirname "$0")/.."

python_of() {
  local py
  if command -v pyenv >/dev/null && py=$(PYENV_VERSION="$1" pyenv which python 2>/dev/null); then
    echo "$py"
  elif command -v "python${1%.*}" >/dev/null; then
    command -v "python${1%.*}"
  else
    echo "python-env: CPython $1 not found: install it with pyenv (pyenv install $1)" >&2
    return 1
  fi
}

venv() { # venv VERSION: target/py/VERSION with pip, made once
  local dir="target/py/$1"
  if [ ! -x "$dir/bin/python" ]; then
    "$(python_of "$1")" -m venv "$dir"
    "$dir/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  fi
  echo "$dir"
}

case "${1:-}" in
  wheel)
    # Any venv's pip builds it: the wheel is abi3 (cp311 and later).
    dir=$(venv "${2:-3.12.1}")
    rm -f target/wheels/pyroscope_profiler-*.whl
    "$dir/bin/python" -m pip wheel -q --no-deps ./bindings/python -w target/wheels
    ls target/wheels/pyroscope_profiler-*.whl >/dev/null
    touch target/wheels/.pyroscope-profiler.stamp
    ;;
  venv)
    dir=$(venv "$2")
    "$dir/bin/python" -m pip install -q --force-reinstall --no-deps target/wheels/pyroscope_profiler-*.whl
    "$dir/bin/python" -m pip install -q pytest
    touch "$dir/.installed"
    ;;
  *)
    echo "usage: $0 wheel [VERSION] | venv VERSION" >&2
    exit 2
    ;;
esac
