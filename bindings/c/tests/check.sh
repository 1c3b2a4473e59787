#!/usr/bin/env bash
# The C ABI from C and C++ (run by `make test`): the header compiles as C99 and C++17 with
# -Wall -Wextra -Werror and is current; the library exports only pyroscope_* symbols; the smoke
# program passes against the shared and the static library, and under valgrind memcheck with
# zero errors; its profiles carry its labels.
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
cd "$root"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
fail() { echo "c-abi: FAIL: $*"; echo "0 passed, 1 failed"; exit 1; }
cargo build -q -p pyroscope-ffi -p pyroscope-cli
lib=target/debug
inc=bindings/c/include
flags=(-Wall -Wextra -Werror -I "$inc")
cc -std=c99 -D_POSIX_C_SOURCE=200809L "${flags[@]}" -O2 -g -fomit-frame-pointer -pthread \
  -o "$dir/smoke" bindings/c/tests/smoke.c -L "$lib" -lpyroscope -Wl,-rpath,"$root/$lib" || fail "C99 build"
c++ -std=c++17 -x c++ "${flags[@]}" -pthread -o "$dir/smoke-cxx" bindings/c/tests/smoke.c \
  -L "$lib" -lpyroscope -Wl,-rpath,"$root/$lib" || fail "C++17 build"
cc -std=c99 -D_POSIX_C_SOURCE=200809L "${flags[@]}" -pthread -o "$dir/smoke-static" bindings/c/tests/smoke.c \
  "$lib/libpyroscope.a" -lpthread -ldl -lm -lgcc_s || fail "static build"
others=$(nm -D --defined-only "$lib/libpyroscope.so" | awk '{print $3}' | grep -v '^pyroscope_' || true)
[ -z "$others" ] || fail "libpyroscope.so exports non-pyroscope symbols: $others"
"$dir/smoke" "$dir/p" || fail "smoke (shared library)"
"$dir/smoke-cxx" "$dir/p2" || fail "smoke (C++ build)"
"$dir/smoke-static" "$dir/p3" || fail "smoke (static library)"
# The smoke program under Valgrind's memcheck (timers, the signal handler on its own stack,
# labels from many threads): zero errors and nothing definitely or indirectly lost. Blocks
# still reachable at exit are the profiler's process-lifetime tables (ring, live set, label
# interner); "possibly lost" ones are hash tables that statics reach through an interior
# pointer (hashbrown points at its control bytes), so neither counts. No suppressions.
command -v valgrind >/dev/null || fail "valgrind is not installed (apt-get install valgrind)"
valgrind -q --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,indirect \
  "$dir/smoke" "$dir/p4" >"$dir/valgrind.log" 2>&1 || { cat "$dir/valgrind.log"; fail "smoke under valgrind"; }
echo "valgrind memcheck: 0 errors"
t="$(target/debug/pyroscope top "$dir/p" --tsv --where region=lab --where vehicle=scooter)"
grep -q "^c_labelled_work" <<<"$t" || fail "c_labelled_work missing under vehicle=scooter"
# Labels pushed on threads: each of 8 threads burns 40 ms in c_labelled_work under worker=w<id>
# and w<id+4>, about 4 samples a value at 100 Hz, so one value may get none on a busy machine;
# all eight get none only if thread labels are lost.
seen=0
for w in w0 w1 w2 w3 w4 w5 w6 w7; do
  t="$(target/debug/pyroscope top "$dir/p" --tsv --where worker=$w 2>/dev/null)" || t=""
  if grep -q "^c_labelled_work" <<<"$t"; then seen=$((seen + 1)); fi
done
[ "$seen" -ge 1 ] || fail "thread labels missing: c_labelled_work under none of the worker values"
echo "thread labels: c_labelled_work under $seen of 8 worker values"
# 150 ms of CPU on a thread that called pyroscope_thread_register first: sampled from its start
# (unregistered, the agent's thread scan would find it up to 100 ms late).
reg=$(awk -F'\t' '$1 == "c_registered_work" { print $3; exit }' <<<"$(target/debug/pyroscope top "$dir/p" --tsv --type cpu)")
echo "c_registered_work: ${reg:-0} ns of CPU (truth 150000000)"
[ "${reg:-0}" -ge 120000000 ] || fail "a registered thread was not sampled from its start"
echo "1 passed, 0 failed: the C ABI from C99, C++17, shared and static"
