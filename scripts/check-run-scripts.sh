#!/usr/bin/env bash
# The rideshare `run` scripts are safe to start several at once, as `make demo`, a compose file
# or a process manager does (run by `make test`): after a source change, three instances of each
# language's script started together all build once and all come up. Arguments: the languages
# (default: c, rust and python; `make test-node` runs it for node).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source scripts/lib.sh
dir="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT
fail() { echo "check-run-scripts: FAIL: $*"; echo "0 passed, 1 failed"; exit 1; }
regions=(us-east eu-north ap-south)
# The race is a matter of timing: the C round (a few seconds) runs four times.
langs=("$@")
[ "${#langs[@]}" -gt 0 ] || langs=(c c c c rust python)
for lang in "${langs[@]}"; do
  case "$lang" in
    c) src=examples/rideshare/c/rideshare.c ;;
    rust) src=examples/rideshare/rust/src/main.rs ;;
    # Reinstalls the venv's packages (and rebuilds the wheel) under the lock.
    python) src=examples/rideshare/python/requirements.txt ;;
    # Reinstalls node_modules (and rebuilds the addon) under the lock.
    node) src=examples/rideshare/node/package.json ;;
    *) fail "unknown language $lang (c, rust, python or node)" ;;
  esac
  # Built once before, so that the touch below forces exactly the relink that raced.
  PROFILE=debug examples/rideshare/c/run --build-only >/dev/null
  cargo build -q -p rideshare
  [ "$lang" != python ] || examples/rideshare/python/run --build-only >/dev/null
  [ "$lang" != node ] || examples/rideshare/node/run --build-only >/dev/null
  touch "$src"
  read -r -a ports <<<"$(free_ports 3)"
  [ "${#ports[@]}" -eq 3 ] || fail "no free ports from the OS"
  pids=()
  for i in 0 1 2; do
    REGION=${regions[$i]} PORT=${ports[$i]} PROFILE=debug PYROSCOPE_EXPORT_DIR="$dir/p-$lang" \
      "examples/rideshare/$lang/run" 2>"$dir/$lang-$i.log" &
    pids+=($!)
  done
  for i in 0 1 2; do
    wait_listening "${pids[$i]}" "$dir/$lang-$i.log" "${ports[$i]}" 300 \
      || fail "$lang: instance $i of 3 started together did not come up"
  done
  for p in "${pids[@]}"; do kill -TERM "$p"; done
  for i in 0 1 2; do wait "${pids[$i]}" || fail "$lang: instance $i exited with an error"; done
  pids=()
  ! grep -l "Text file busy" "$dir"/$lang-*.log || fail "$lang: Text file busy"
  echo "$lang: three run scripts started together after touching $src all came up"
done
echo "1 passed, 0 failed: the run scripts are safe to start together"
