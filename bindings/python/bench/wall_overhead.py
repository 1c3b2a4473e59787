"""What the wall-clock sampler (`configure(oncpu=False)`) costs: its own thread's CPU.

    python bindings/python/bench/wall_overhead.py [SECONDS] [THREADS ...]

For each thread count (default 10 and 100), a fresh process starts that many idle Python threads
(each 12 frames deep, then blocked in `threading.Event.wait`), configures oncpu=False at 100 Hz,
and after SECONDS (default 5) reads the CPU time of the `pyroscope-wall` thread from
/proc/self/task/*/stat. Prints that thread's CPU as a share of one core, per tick and per
thread walked, and the sampler's own counters (ticks, samples, retries, torn, late periods).
"""

import json
import os
import subprocess
import sys

CHILD = r"""
import json, os, sys, threading, time
import pyroscope
from pyroscope import _native

seconds, n = float(sys.argv[1]), int(sys.argv[2])
stop = threading.Event()

def nest(depth):
    if depth == 0:
        stop.wait()
    else:
        nest(depth - 1)

threads = [threading.Thread(target=nest, args=(10,), daemon=True) for _ in range(n)]
for t in threads:
    t.start()
pyroscope.configure(application_name="wallbench", upload_interval=3600, oncpu=False, sample_rate=100,
                    mem_enabled=False, server_address="http://127.0.0.1:9")

def wall_cpu():
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().strip() != "pyroscope-wall":
                    continue
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                return int(f.read().split()[0]) / 1e9  # ns on CPU, finer than utime+stime
        except OSError:
            pass
    return None

while wall_cpu() is None:  # the thread names itself once it runs
    time.sleep(0.001)
c0, t0 = wall_cpu(), time.monotonic()
s0 = _native._wall_stats()
time.sleep(seconds)
c1, t1 = wall_cpu(), time.monotonic()
s1 = _native._wall_stats()
stats = {k: s1[k] - s0[k] for k in s1 if isinstance(s1[k], int)}
print(json.dumps({"cpu": c1 - c0, "elapsed": t1 - t0, "stats": stats}))
stop.set()
os._exit(0)
"""


def main():
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    counts = [int(a) for a in sys.argv[2:]] or [10, 100]
    print(f"wall sampler at 100 Hz, {seconds:g} s, Python {sys.version.split()[0]}")
    for n in counts:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(seconds), str(n)],
            capture_output=True,
            text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("PYROSCOPE_")},
        )
        if out.returncode != 0:
            print(out.stderr)
            sys.exit(1)
        r = json.loads(out.stdout.splitlines()[-1])
        s = r["stats"]
        ticks = max(s["ticks"], 1)
        walked = max(s["threads"], 1)
        print(
            f"{n:4d} idle threads: {100 * r['cpu'] / r['elapsed']:.2f}% of a core; "
            f"{1e6 * r['cpu'] / ticks:.0f} us/tick, {1e9 * r['cpu'] / walked:.0f} ns/thread walked; "
            f"busy_ns/tick {s['busy_ns'] / ticks / 1e3:.0f} us; ticks {s['ticks']}, samples {s['samples']}, "
            f"retries {s['retries']}, torn {s['torn']}, late periods {s['late_periods']}"
        )


if __name__ == "__main__":
    main()
