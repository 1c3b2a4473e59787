"""One measured run of the Python benchmark: a child process of bench.py.

    python workload.py '{"sdk": "none"|"ours"|"pyroscope-io", ...}'

Settings (a JSON object, see bench.py): ``work`` ("cpu": pure-Python calls and arithmetic;
"alloc": request-like dicts, lists, bytes and strings, a live set kept per thread), ``threads``,
``units`` per thread, ``labels`` (one ``tag_wrapper`` per unit of work), ``server`` (URL),
``impl`` (pyroscope-io: "pyspy", "stack" at a fixed 100 Hz, "stack-adaptive" with its defaults),
``mem`` (mem_enabled, or null for the SDK's default), ``end`` ("shutdown": call ``shutdown()``
and time it; "exit": return from main without it, the parent times the exit), ``warmup``
(seconds of unmeasured work first, 0.3) or ``warmup_units`` (that many units instead),
``sample_rate`` (Hz, 100), ``upload_interval`` (seconds, the SDK's default when absent),
``shutdown_timeout`` (ours only: the bound of ``shutdown()``, seconds, 2 when absent),
``idle`` (seconds each thread sleeps after its units, inside the measured phase, 0).

Prints one JSON line: ``cpu`` (process CPU seconds of the measured phase, profiler threads
included), ``wall`` (its perf_counter seconds), ``shutdown`` (seconds inside ``shutdown()``,
or null), ``main_end`` (time.monotonic() as main returns: CLOCK_MONOTONIC, comparable with the
parent's). The parent takes peak RSS from the child's rusage. Only this process's own work is
timed: nothing depends on the frames that the profilers report.
"""

import contextlib
import json
import sys
import threading
import time


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def cpu_unit(i, _live):
    # About 1 ms of pure Python (here): recursive calls, a dict, integer arithmetic.
    acc = fib(17)
    counts = {}
    for k in range(400):
        key = (k * 7 + i) & 31
        counts[key] = counts.get(key, 0) + (k ^ acc)
    return acc + sum(counts.values())


def alloc_unit(i, live):
    # A request's worth of objects: a dict of formatted keys and tuples, a list of rows, a
    # bytes buffer of 16 B-4 KiB, a rendered string; the result replaces an old one in the
    # thread's live set (so frees follow allocations, as in a server's steady state).
    n = 8 + (i * 7) % 24
    record = {f"key-{i}-{j}": (j, "v" * ((i + j) % 48 + 1)) for j in range(n)}
    rows = [(k, v[1]) for k, v in record.items() if v[0] & 1 == 0]
    blob = bytes((i * 131) % 4081 + 16)
    text = "&".join(f"{k}={v}" for k, v in rows)
    live[i % len(live)] = (record, blob, text)
    return len(text)


def main():
    cfg = json.loads(sys.argv[1])
    sdk = cfg["sdk"]
    pyroscope = None
    if sdk != "none":
        import pyroscope

        kw = dict(
            application_name="python-bench", server_address=cfg["server"], sample_rate=cfg.get("sample_rate", 100)
        )
        if cfg.get("mem") is not None:
            kw["mem_enabled"] = bool(cfg["mem"])
        if cfg.get("upload_interval") is not None:
            kw["upload_interval"] = cfg["upload_interval"]
        if sdk == "ours" and cfg.get("shutdown_timeout") is not None:
            kw["_shutdown_timeout"] = cfg["shutdown_timeout"]
        impl = cfg.get("impl", "pyspy")
        if sdk == "pyroscope-io" and impl.startswith("stack"):
            if impl == "stack":
                # A fixed 10 ms CPU timer per thread, as the 100 Hz of the other rows.
                ok = pyroscope.configure_experimental_stack_profiler(
                    adaptive_sampling=False, cpu_timer_enabled=True, cpu_timer_interval_ms=10
                )
                if not ok:
                    sys.exit("configure_experimental_stack_profiler refused")
            kw["cpu_implementation"] = pyroscope.ProfilerImplementation.Stack
        if not pyroscope.configure(**kw):
            sys.exit("configure returned False")

    unit = cpu_unit if cfg["work"] == "cpu" else alloc_unit
    labels = cfg.get("labels", False)
    # One wrapper made per unit, as a request handler would (pyroscope-io's is single-use); the
    # run without a profiler pays for an empty `with` instead.
    wrap = pyroscope.tag_wrapper if pyroscope is not None else lambda _tags: contextlib.nullcontext()
    names = [f"/endpoint/{k}" for k in range(4)]

    def worker(units, live):
        if not labels:
            for i in range(units):
                unit(i, live)
        else:
            for i in range(units):
                with wrap({"endpoint": names[i & 3]}):
                    unit(i, live)
        if cfg.get("idle"):
            time.sleep(cfg["idle"])

    # Warm up (not measured): the profiler's first window and the interpreter's caches; a fixed
    # number of units when the run must do the same work every time (instruction counts).
    warm = [None] * 256
    if cfg.get("warmup_units") is not None:
        for i in range(cfg["warmup_units"]):
            unit(i, warm)
    else:
        deadline = time.perf_counter() + cfg.get("warmup", 0.3)
        i = 0
        while time.perf_counter() < deadline:
            unit(i, warm)
            i += 1
    del warm

    threads = [
        threading.Thread(target=worker, args=(cfg["units"], [None] * 1024), name=f"work-{t}")
        for t in range(cfg["threads"])
    ]
    c0, t0 = time.process_time(), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    c1, t1 = time.process_time(), time.perf_counter()

    stop = None
    if pyroscope is not None and cfg.get("end", "shutdown") == "shutdown":
        s = time.perf_counter()
        pyroscope.shutdown()
        stop = time.perf_counter() - s
    out = dict(cpu=c1 - c0, wall=t1 - t0, shutdown=stop)
    out["main_end"] = time.monotonic()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
