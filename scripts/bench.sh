#!/usr/bin/env bash
# make bench: builds the benchmark (release) and, when it builds, the same workload under the
# `pyroscope` crate 2.x; runs them side by side and writes BENCHMARKS.md. Then the Python rows
# (benches/python/run.sh: our package next to pyroscope-io) and the Node rows (benches/node/run.sh:
# our package next to @pyroscope/nodejs). BENCH_RUNS runs per configuration (default 5);
# BENCH_ONLY=symbols|micro|python|node runs a subset (python, node: only its section is replaced).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
out="$root/BENCHMARKS.md"
# `BENCH_ONLY=python` or `BENCH_ONLY=node`: that language's rows alone (benches/<lang>/run.sh),
# put in place of its section of BENCHMARKS.md (or added at its end); every other row stays as
# it was.
if [ "${BENCH_ONLY:-}" = python ] || [ "${BENCH_ONLY:-}" = node ]; then
  lang="$BENCH_ONLY"
  # A section that could not be measured (exit 3) says so in BENCHMARKS.md, and make bench
  # fails; a run that failed otherwise leaves BENCHMARKS.md as it was.
  status=0
  benches/"$lang"/run.sh > "$out.$lang" || status=$?
  if [ "$status" != 0 ] && [ "$status" != 3 ]; then
    rm -f "$out.$lang"
    echo "make bench: the $lang rows failed (exit $status); BENCHMARKS.md is unchanged" >&2
    exit "$status"
  fi
  [ -f "$out" ] || printf '# Benchmarks\n' > "$out"
  python3 - "$out" "$out.$lang" <<'PY'
import re, sys
path, section = sys.argv[1], open(sys.argv[2]).read().strip("\n")
text = open(path).read()
# The section: from its "## <Language>" heading (the rows' first line) to the next "## "
# heading or the end.
heading = re.match(r"## \w+", section).group(0)
m = re.search(r"^" + heading + r"\b.*?(?=^## (?!#)|\Z)", text, flags=re.S | re.M)
if m:
    text = text[: m.start()] + section + "\n" + ("\n" if m.end() < len(text) else "") + text[m.end():]
else:
    text = text.rstrip("\n") + "\n\n" + section + "\n"
open(path + ".tmp", "w").write(text)
PY
  mv "$out.tmp" "$out"
  rm -f "$out.$lang"
  cat "$out"
  [ "$status" = 0 ] || echo "make bench: the $lang rows were not measured" >&2
  exit "$status"
fi
failed=""
echo "==> building benchmarks (release)"
cargo build --release -q -p pyroscope-bench -p alloc-bench -p pyroscope-preload -p pyroscope-cli
# The floor of any LD_PRELOAD profiler, measured next to ours, and its counting twin.
${CC:-cc} -O2 -shared -fPIC -o target/release/libnop-interposer.so benches/alloc/c/nop-interposer.c
${CC:-cc} -O2 -shared -fPIC -DCOUNT -o target/release/libcount-interposer.so benches/alloc/c/nop-interposer.c
# The line-tables workload: this benchmark with `debug = 1` for every package, and a copy
# without its debug info; the launcher that measures short-lived processes on their own.
cargo build --profile bench-lines -q -p pyroscope-bench
strip --strip-debug -o target/bench-lines/pyroscope-bench-nodebug target/bench-lines/pyroscope-bench
export PYROSCOPE_BENCH_LINES="$root/target/bench-lines/pyroscope-bench"
export PYROSCOPE_BENCH_LINES_NODEBUG="$root/target/bench-lines/pyroscope-bench-nodebug"
${CC:-cc} -O2 -o target/release/bench-spawn benches/symbols/spawn.c
export PYROSCOPE_BENCH_SPAWN="$root/target/release/bench-spawn"
if ! command -v sqlite3 >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get install -y -q sqlite3 >/dev/null || echo "warning: sqlite3 could not be installed" >&2
fi
# The interpreter itself, not a version manager's shell shim in front of it.
PYROSCOPE_BENCH_PYTHON="$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null || echo python3)"
export PYROSCOPE_BENCH_PYTHON
export CARGO_TARGET_DIR="$root/target"
if cargo build --release -q --manifest-path benches/vs-pyroscope-rs/Cargo.toml; then
  export PYROSCOPE_RS_BENCH="$root/target/release/vs-pyroscope-rs"
else
  echo "warning: the pyroscope crate comparison did not build; measuring ours only" >&2
fi
{
  echo "# Benchmarks"
  echo
  echo "Produced by \`make bench\` on $(nproc) cores, $(uname -sr), $(date -u +%Y-%m-%d). Rerun it to refresh."
  echo
  target/release/pyroscope-bench
  # The Python rows (benches/python) and the Node rows (benches/node), but for the other
  # `BENCH_ONLY` subsets.
  if [ -z "${BENCH_ONLY:-}" ]; then
    benches/python/run.sh || failed="$failed python"
    benches/node/run.sh || failed="$failed node"
  fi
} > "$out.tmp"
mv "$out.tmp" "$out"
cat "$out"
if [ -n "$failed" ]; then
  echo "make bench: rows not measured:$failed (see their sections in BENCHMARKS.md)" >&2
  exit 1
fi
