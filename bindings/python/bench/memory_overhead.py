"""What the memory hooks cost an allocation-heavy Python loop.

    python bindings/python/bench/memory_overhead.py [ROUNDS]

Runs the same loop (small lists, dicts, strings and tuples: about 8 allocations and frees per
iteration, nearly all of them through the OBJ and MEM domains) in a fresh process per mode, the
modes interleaved round after round so that drift on a shared machine hits them alike, and
prints the median CPU time of the loop's thread per iteration of each mode (CPU time, not wall
time: on a shared machine, time spent preempted is not the hooks' cost; the profiler's signal
handler runs on this thread, so it is counted) and its cost against `none`:

- none: no profiler;
- hooks: the wrappers installed, no agent (the fast path alone: count down, test the free);
- cpu: an agent with memory profiles off (CPU sampling at 100 Hz only);
- cpu+mem: an agent with memory profiles on at the default 512 KiB (what `configure()` does).

The hooks' own cost is cpu+mem against cpu.
"""

import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import sys, time
mode = sys.argv[1]
if mode != "none":
    import pyroscope
    from pyroscope import _native
if mode == "hooks":
    _native._memory_install(True)
elif mode in ("cpu", "cpu+mem"):
    pyroscope.configure(application_name="membench", upload_interval=3600, mem_enabled=mode == "cpu+mem")

def loop(n):
    for i in range(n):
        l = [i, i, i]
        d = {"a": l, "b": i}
        s = str(i) + "x"
        t = (s, d, l)
        del l, d, s, t

N = 400_000
loop(N // 4)  # warm up
times = []
for _ in range(3):
    t0 = time.thread_time()
    loop(N)
    times.append(time.thread_time() - t0)
print(min(times) / N * 1e9)
if mode in ("cpu", "cpu+mem"):
    pyroscope.shutdown()
"""

MODES = ["none", "hooks", "cpu", "cpu+mem"]


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    results = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as folder:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYROSCOPE_")}
        env["PYROSCOPE_EXPORT_DIR"] = folder
        for r in range(rounds):
            for m in MODES if r % 2 == 0 else reversed(MODES):
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, m], env=env, cwd=folder, check=True, capture_output=True, text=True
                ).stdout
                results[m].append(float(out.split()[-1]))
    base = statistics.median(results["none"])
    low = min(results["none"])
    print(
        f"CPython {sys.version.split()[0]}, {rounds} rounds, "
        "thread CPU ns per iteration (~8 allocations + frees): median, min"
    )
    for m in MODES:
        med, lo = statistics.median(results[m]), min(results[m])
        print(f"  {m:8} {med:7.1f} ns {100 * (med / base - 1):+5.1f}%   {lo:7.1f} ns {100 * (lo / low - 1):+5.1f}%")
    for stat in (statistics.median, min):
        cpu, mem = stat(results["cpu"]), stat(results["cpu+mem"])
        print(f"  memory hooks with an agent (cpu+mem vs cpu), {stat.__name__}: {100 * (mem / cpu - 1):+.1f}%")


if __name__ == "__main__":
    main()
