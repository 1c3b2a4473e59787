"""`make bench`, Python rows: our package (pyroscope-profiler) next to pyroscope-io 1.4.0 on the
same workloads, in one run, as interleaved child processes (workload.py), medians of the runs.

    python bench.py --ours-python VENV/bin/python --receiver PATH
                    [--peer-python VENV/bin/python | --peer-error WHY]

Every profiled child pushes to its own loopback receiver (tests/receiver, `pyroscope-receiver`),
whose output is read back to count what arrived (the workload is measured from the child, never
from frame names). Prints Markdown on stdout, progress on stderr. BENCH_RUNS (default 5) runs
per configuration, BENCH_SECONDS (default 5) of work per measured run.

`--only instructions` (or BENCH_PYTHON_INSTRUCTIONS=1 for the whole set) adds instruction
counts under valgrind (cachegrind): a fixed amount of work, BENCH_RUNS (default 3) runs per
configuration, minutes long.
"""

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOAD = os.path.join(HERE, "workload.py")
PEER = "pyroscope-io 1.4.0"
CPU_THREADS = 3
ALLOC_THREADS = 2
# The instruction counts (valgrind): units per thread, the same in every configuration (about
# 0.1 s of CPU natively for each workload), and the warm-up's units before them.
INSTR_UNITS = dict(cpu=100, alloc=1500)
INSTR_WARMUP = dict(cpu=20, alloc=300)
INSTR_IDLE = 10.0
VALGRIND = ("valgrind", "--tool=cachegrind", "--cache-sim=no", "--fair-sched=yes")
INSTR_TEXT = (
    "The instructions that the whole process executed, every thread's (the profiler's own "
    "threads and its signal handlers included), as `valgrind --tool=cachegrind --cache-sim=no` "
    "counts them (its total `I refs`; `--fair-sched=yes`, so that the profiler's threads get "
    "their turns), on the two workloads above with a fixed number of units in every "
    "configuration: unlike CPU time on this shared machine, they vary little from run to run "
    "(see the counts line). Startup and exit: the same configuration with no units (the interpreter, `import "
    "pyroscope`, the agent's start, the warm-up units, `shutdown()`); work: the rest, whose ratio "
    "to the run without a profiler is the steady-state cost that the CPU target is about (the "
    '`tag_wrapper` row too is against "none", which runs no `with` at all). Under valgrind the '
    "process runs many times slower and the profiler's CPU timers count the simulated process's "
    "CPU time, so at 100 Hz each unit of work would get that many times its native samples: the "
    "profiled runs sample at 100 Hz divided by the slowdown (the work's CPU time without a "
    "profiler, under valgrind over natively), the samples per unit of work of 100 Hz natively, "
    "and their upload interval is stretched as much. The collector's wall-clock ticks (a drain "
    "every 50 ms, a thread scan every 100 ms) are not stretched, and a busy machine stretches a "
    'run further: "less the extra ticks" takes from each profiled run what the idle profiler '
    "executes per second (measured below) times the run's wall time beyond the native run's. The "
    "native cost lies between the two ratios: the first counts every extra tick, the second takes "
    "out as many as the idle profiler runs (it falls below 1 when a busy run ticks less often). "
    "Instructions weigh alike: cache misses, system calls and contention for the cores are not "
    "in them. Not in `make bench` by default (about 4 minutes on 2 cores): "
    "`BENCH_PYTHON_INSTRUCTIONS=1 BENCH_ONLY=python make bench`, or `bench.py --only "
    "instructions`; BENCH_RUNS runs per configuration (default 3 here)."
)
INSTR_SKIPPED = (
    "Not measured in this run: instruction counts under valgrind are opt-in (about 4 minutes), "
    "`BENCH_PYTHON_INSTRUCTIONS=1 BENCH_ONLY=python make bench`."
)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Receiver:
    """One `pyroscope-receiver` process: its URL, then what it received (JSON lines in a file)."""

    def __init__(self, binary, mode=None):
        fd, self.path = tempfile.mkstemp(prefix="pybench-recv-", suffix=".jsonl")
        os.close(fd)
        args = [binary, "--out", self.path] + (["--mode", mode] if mode else [])
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self.proc.kill()
            raise RuntimeError(f"pyroscope-receiver printed {self.url!r}, not its URL")

    def stop(self):
        """Stops the receiver; returns profiles, refused requests, CPU s and allocated bytes received."""
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        got = dict(profiles=0, rejected=0, cpu=0.0, alloc_bytes=0)
        with open(self.path) as f:
            for line in f:
                d = json.loads(line)
                if "rejected" in d:
                    got["rejected"] += 1
                    continue
                got["profiles"] += 1
                types = [t[0] for t in d["sample_types"]]
                for name, key, scale in (("cpu", "cpu", 1e-9), ("alloc_space", "alloc_bytes", 1)):
                    if name in types:
                        i = types.index(name)
                        got[key] += sum(s["values"][i] for s in d["samples"]) * scale
        os.unlink(self.path)
        return got


def ratios(paired):
    """Per-run ratios as "median (lowest-highest)"."""
    if not paired:
        return "-"
    return f"{statistics.median(paired):.4f} ({min(paired):.3f}-{max(paired):.3f})"


def noise_line(per_mode):
    """What this run can resolve: the widest range of one configuration's per-run ratios."""
    widths = [max(p) - min(p) for p in per_mode if len(p) > 1]
    if not widths:
        return "- one run per configuration: no spread to tell the noise from"
    return (
        f"- noise: one configuration's per-run CPU ratios spread over up to {max(widths) * 100:.1f} "
        f"points (median {statistics.median(widths) * 100:.1f}) in this run; smaller differences "
        "between rows are not resolved"
    )


def cachegrind_total(path):
    """The instructions counted in a cachegrind out file (its `summary:` line, every thread's
    together), or None."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("summary:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def closed_port_url():
    """A loopback URL nobody listens on (connection refused): a server that is down."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def run_child(interpreter, cfg, timeout, workload=WORKLOAD, end_key="main_end", prefix=(), env=None):
    """Runs `interpreter workload cfg` once (the Node rows use it with workload.js), after the
    command `prefix` if given (valgrind), with `env` if given. Returns the child's last JSON line
    plus rss_mib, child_cpu, elapsed (its whole life, s) and exit (from its `end_key` time to its
    exit, s); on timeout what it printed plus killed; or None."""
    err = tempfile.TemporaryFile()
    started = time.monotonic()
    proc = subprocess.Popen(
        [*prefix, interpreter, workload, json.dumps(cfg)],
        stdout=subprocess.PIPE,
        stderr=err,
        cwd=tempfile.gettempdir(),
        env=env,
    )
    killed = []

    def kill():
        killed.append(True)
        proc.kill()

    timer = threading.Timer(timeout, kill)
    timer.start()
    _, status, ru = os.wait4(proc.pid, 0)
    ended = time.monotonic()
    timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = proc.stdout.read().decode(errors="replace").strip().splitlines()
    proc.stdout.close()
    if killed:
        m = json.loads(out[-1]) if out else {}
        m.update(killed=timeout)
        return m
    if proc.returncode != 0 or not out:
        err.seek(0)
        log(f"  child failed ({proc.returncode}): {err.read().decode(errors='replace')[-2000:]}")
        return None
    m = json.loads(out[-1])
    m.update(
        rss_mib=ru.ru_maxrss / 1024.0,
        child_cpu=ru.ru_utime + ru.ru_stime,
        elapsed=ended - started,
        exit=ended - m[end_key],
    )
    return m


def medians(runs, keys=("cpu", "wall", "rss_mib")):
    """The runs that succeeded, and the medians of `keys` over them (None when none did)."""
    ok = [m for m in runs if m]
    return ok, ({k: statistics.median(m[k] for m in ok) for k in keys} if ok else None)


def shutdown_table(measure, runs, modes, scenarios, base, limit, timed_end, timed_key="exit"):
    """Runs each (column, end, server) scenario of `scenarios` for each (name, cfg) of `modes`,
    `runs` rounds interleaved, and prints one Markdown row per mode: the median time of the
    column, the profiles the receiver got in brackets. `end` is the workload's `end` setting;
    the SDK call it names, `timed_end` ("shutdown", "stop"), is not run without a profiler, and
    its columns show the child's `timed_key` (its own timing of the call, or "exit": from the
    work's end to the exit, as every other column). `server`
    is "up", "down" (a closed port) or a receiver mode ("slow:..."). A run killed at `limit`
    seconds is not run again: its cell says so. `measure(cfg, server=, timeout=[, receiver_mode=])`
    runs one child."""
    cells = {name: {} for name, _ in modes}
    for r in range(runs):
        for col, end, server in scenarios:
            for name, cfg in modes:
                if cfg["sdk"] == "none" and end == timed_end:
                    continue
                if any(m is not None and "killed" in m for m in cells[name].get(col, [])):
                    continue
                log(f"run {r + 1}/{runs}, shutdown, {col}, {name}")
                kw = dict(server=closed_port_url() if server == "down" else None, timeout=limit)
                if server.startswith("slow"):
                    kw["receiver_mode"] = server
                cells[name].setdefault(col, []).append(measure({**base, "end": end, **cfg}, **kw))
    for name, _ in modes:
        row = []
        for col, end, server in scenarios:
            ms = [m for m in cells[name].get(col, []) if m is not None]
            if not ms:
                row.append("-" if cells[name].get(col) is None else "failed")
                continue
            if any("killed" in m for m in ms):
                row.append(f"does not end (killed at {limit:.0f} s)")
                continue
            key = timed_key if end == timed_end else "exit"
            t = statistics.median(m[key] for m in ms)
            got = [m["received"]["profiles"] for m in ms if m.get("received")]
            row.append(f"{t:.3f}" + (f" ({statistics.median(got):.0f})" if got and server == "up" else ""))
        print(f"| {name} | " + " | ".join(row) + " |")


class Bench:
    def __init__(self, args):
        self.args = args
        self.runs = max(1, int(os.environ.get("BENCH_RUNS", "5")))
        self.seconds = float(os.environ.get("BENCH_SECONDS", "5"))
        self.peer = args.peer_python

    def python_of(self, sdk):
        return self.peer if sdk == "pyroscope-io" else self.args.ours_python

    def measure(self, cfg, receiver_mode=None, server=None, timeout=None, prefix=(), env=None):
        """One child run with a fresh receiver (unless `server` is given or sdk is none), after
        the command `prefix` if given, with `env` if given."""
        cfg = dict(cfg)
        rec = None
        if cfg["sdk"] != "none":
            if server is None:
                rec = Receiver(self.args.receiver, receiver_mode)
                cfg["server"] = rec.url
            else:
                cfg["server"] = server
        try:
            m = run_child(self.python_of(cfg["sdk"]), cfg, timeout or 60 + 20 * self.seconds, prefix=prefix, env=env)
        finally:
            got = rec.stop() if rec else None
        if m is not None:
            m["received"] = got
        return m

    def units_for(self, work, threads, seconds):
        """Units per thread for `seconds` of work with no profiler (from a short run here)."""
        probe = 300 if work == "cpu" else 3000
        m = run_child(
            self.args.ours_python,
            dict(sdk="none", work=work, threads=threads, units=probe, warmup=0.2),
            120,
        )
        if m is None:
            sys.exit("the workload failed to run without a profiler")
        return max(probe, int(probe * seconds / m["wall"]))

    def interleaved(self, modes, base, what):
        """modes: [(name, cfg)]; runs each in turn, `runs` times. Returns {name: [measurements]}."""
        results = {name: [] for name, _ in modes}
        for r in range(self.runs):
            for name, cfg in modes:
                log(f"run {r + 1}/{self.runs}, {what}, {name}")
                m = self.measure({**base, **cfg})
                if m is not None and "killed" not in m:
                    results[name].append(m)
                else:
                    results[name].append(None)
        return results

    # ---- sections ----

    def header(self):
        load = os.getloadavg()
        note = os.environ.get("BENCH_NOTE", "").strip()
        print(
            f"\n## Python (CPython {platform.python_version()}, {os.cpu_count()} cores, "
            f"{time.strftime('%Y-%m-%d', time.gmtime())}, load average {load[0]:.1f} at the start "
            f"of this section{'; ' + note if note else ''})\n"
        )
        print(
            "Our package (`pip install ./bindings/python`, the abi3 wheel) and "
            f"{PEER} from PyPI (its own venv), each importing `pyroscope`, pushing to the loopback "
            f"test receiver at 100 Hz, 10 s windows; medians of {self.runs} interleaved runs, "
            "every configuration in the same run; each ratio is against the no-profiler row of its "
            "own table (ratio of medians), and per run against the no-profiler run of the same "
            "round (median, lowest and highest: the spread). CPU: the process's CPU time over the measured phase "
            "(`time.process_time()`, profiler threads included); wall: its `perf_counter` time; "
            'peak RSS: the child\'s `ru_maxrss`. "In profiles": what the receiver got, as a share '
            "of the child's whole CPU time (rusage), a check that the profiler sampled."
        )

    def peer_modes(self, modes):
        return [m for m in modes if m[1]["sdk"] != "pyroscope-io" or self.peer]

    def peer_missing_row(self, columns):
        if not self.peer:
            cells = " | ".join(["-"] * (columns - 1))
            why = self.args.peer_error.replace("|", "/")
            print(f"| {PEER}: could not be installed ({why}) | {cells} |")

    def cpu_section(self):
        units = self.units_for("cpu", CPU_THREADS, self.seconds)
        modes = self.peer_modes(
            [
                ("none", dict(sdk="none")),
                ("ours (memory profiling on, its default)", dict(sdk="ours")),
                ("ours, `mem_enabled=False`", dict(sdk="ours", mem=False)),
                (f"{PEER}, PySpy (its default)", dict(sdk="pyroscope-io", impl="pyspy")),
                (f"{PEER}, Stack, 10 ms CPU timer (adaptive off)", dict(sdk="pyroscope-io", impl="stack")),
                (f"{PEER}, Stack, its defaults (adaptive)", dict(sdk="pyroscope-io", impl="stack-adaptive")),
            ]
        )
        print(
            f"\n### CPU-bound pure Python ({CPU_THREADS} threads x {units:,} units of about "
            f"{self.seconds * 1000 / units:.1f} ms: recursive calls, a dict, integer arithmetic)\n"
        )
        print(
            "| labels | profiler | CPU s | wall s | CPU ratio | per-run CPU ratio, median (range) | wall ratio "
            "| peak RSS MiB | added MiB | `shutdown()` s | in profiles |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        summary = {}
        for labels in (False, True):
            what = "tag_wrapper per unit" if labels else "no labels"
            base = dict(work="cpu", threads=CPU_THREADS, units=units, labels=labels)
            res = self.interleaved(modes, base, f"CPU, {what}")
            summary[labels] = self.print_rows(modes, res, what, prof_key="cpu")
            self.peer_missing_row(11)
        print()
        for labels, rows in summary.items():
            ours = rows.get("ours (memory profiling on, its default)")
            if ours:
                print(
                    f"- {'with' if labels else 'without'} labels: ours CPU ratio {ours['cpu_ratio']:.4f}, "
                    f"wall ratio {ours['wall_ratio']:.4f} (target at most 1.01)" + self.peer_summary(rows)
                )
        print(noise_line([r["paired"] for rows in summary.values() for name, r in rows.items() if name != "none"]))
        rows = summary[False]
        ours = rows.get("ours (memory profiling on, its default)")
        if ours:
            peer = rows.get(f"{PEER}, PySpy (its default)")
            print(
                f"- peak RSS added: ours {ours['added']:.1f} MiB (target under 10 MiB)"
                + (f", {PEER} (PySpy) {peer['added']:.1f} MiB" if peer else "")
            )

    def peer_summary(self, rows):
        parts = [f"{name.split(', ', 1)[1]} {r['cpu_ratio']:.4f}" for name, r in rows.items() if name.startswith(PEER)]
        return f"; {PEER}: " + ", ".join(parts) if parts else ""

    def print_rows(self, modes, res, what, prof_key):
        base = res["none"]
        _, m0 = medians(base)
        if m0 is None:
            print(f"| {what} | none | failed | | | | | | | | |")
            return {}
        cpu0, wall0, rss0 = m0["cpu"], m0["wall"], m0["rss_mib"]
        rows = {}
        for name, _ in modes:
            runs = res[name]
            ok, m1 = medians(runs)
            if m1 is None:
                print(f"| {what} | {name} | failed ({len(runs)} runs) | | | | | | | | |")
                continue
            cpu, wall, rss = m1["cpu"], m1["wall"], m1["rss_mib"]
            paired = [m["cpu"] / b["cpu"] for m, b in zip(runs, base) if m and b]
            spread = ratios(paired)
            stops = [m["shutdown"] for m in ok if m.get("shutdown") is not None]
            stop = f"{statistics.median(stops):.3f}" if stops else "-"
            if name == "none":
                seen = "-"
            else:
                shares = [m["received"][prof_key] / m["child_cpu"] for m in ok if m.get("received")]
                seen = f"{statistics.median(shares) * 100:.0f}%" if shares else "-"
                rejected = sum(m["received"]["rejected"] for m in ok if m.get("received"))
                if rejected:
                    seen += f" ({rejected} refused)"
            failed = len(runs) - len(ok)
            label = name + (f" ({failed} of {len(runs)} runs failed)" if failed else "")
            rows[name] = dict(cpu_ratio=cpu / cpu0, wall_ratio=wall / wall0, added=rss - rss0, paired=paired)
            print(
                f"| {what} | {label} | {cpu:.3f} | {wall:.3f} | {cpu / cpu0:.4f} | {spread} "
                f"| {wall / wall0:.4f} | {rss:.1f} | {rss - rss0:+.1f} | {stop} | {seen} |"
            )
        return rows

    def memory_section(self):
        units = self.units_for("alloc", ALLOC_THREADS, self.seconds)
        modes = self.peer_modes(
            [
                ("none", dict(sdk="none")),
                ("ours, `mem_enabled=False`", dict(sdk="ours", mem=False)),
                ("ours, `mem_enabled=True` (512 KiB)", dict(sdk="ours", mem=True)),
                (f"{PEER}, `mem_enabled=False` (its default)", dict(sdk="pyroscope-io", mem=False)),
                (f"{PEER}, `mem_enabled=True` (512 KiB)", dict(sdk="pyroscope-io", mem=True)),
            ]
        )
        print(
            f"\n### Memory profiling on an allocation-heavy workload ({ALLOC_THREADS} threads x "
            f"{units:,} requests: a dict of formatted keys, a list, a 16 B-4 KiB bytes, a rendered "
            "string each, 1,024 kept live per thread; CPU profiling on in every profiled row)\n"
        )
        print(
            "| profiler | CPU s | wall s | CPU ratio | per-run CPU ratio, median (range) | vs memory off, same SDK "
            "| wall ratio | peak RSS MiB | `shutdown()` s | allocated MiB in profiles |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        base = dict(work="alloc", threads=ALLOC_THREADS, units=units)
        res = self.interleaved(modes, base, "allocations")
        ok = lambda name: [m for m in res.get(name, []) if m]  # noqa: E731
        if not ok("none"):
            print("| none | failed | | | | | | | | |")
            return
        med = lambda name, key: statistics.median(m[key] for m in ok(name))  # noqa: E731
        cpu0, wall0 = med("none", "cpu"), med("none", "wall")
        costs, spread, mem_seen = {}, [], {}
        for name, cfg in modes:
            if not ok(name):
                print(f"| {name} | failed | | | | | | | | |")
                continue
            cpu, wall, rss = med(name, "cpu"), med(name, "wall"), med(name, "rss_mib")
            paired = [m["cpu"] / b["cpu"] for m, b in zip(res[name], res["none"]) if m and b]
            vs_off = "-"
            if cfg.get("mem"):
                off = next(n for n, c in modes if c["sdk"] == cfg["sdk"] and c.get("mem") is False)
                if ok(off):
                    costs[cfg["sdk"]] = cpu / med(off, "cpu")
                    pairs = [m["cpu"] / o["cpu"] for m, o in zip(res[name], res[off]) if m and o]
                    vs_off = f"{costs[cfg['sdk']]:.4f}; per run {ratios(pairs)}"
            stops = [m["shutdown"] for m in ok(name) if m.get("shutdown") is not None]
            got = [m["received"]["alloc_bytes"] / 2**20 for m in ok(name) if m.get("received")]
            stop = f"{statistics.median(stops):.3f}" if stops else "-"
            seen = f"{statistics.median(got):,.0f}" if got else "-"
            if cfg.get("mem"):
                mem_seen[cfg["sdk"]] = bool(got) and statistics.median(got) > 0
            if name != "none":
                spread.append(paired)
            print(
                f"| {name} | {cpu:.3f} | {wall:.3f} | {cpu / cpu0:.4f} "
                f"| {ratios(paired)} "
                f"| {vs_off} | {wall / wall0:.4f} | {rss:.1f} | {stop} | {seen} |"
            )
        self.peer_missing_row(10)
        print()
        print(noise_line(spread))
        for sdk, seen in mem_seen.items():
            if not seen:
                who = "ours" if sdk == "ours" else PEER
                print(
                    f"- {who} sent no allocation profile with `mem_enabled=True`: this build records no "
                    "Python allocations, so its memory rows measure noise, not memory profiling"
                )
        if "ours" in costs:
            print(
                f"- memory profiling's CPU cost, ours: {(costs['ours'] - 1) * 100:+.1f}% "
                "(memory on vs off, target under 3%)"
                + (f"; {PEER}: {(costs['pyroscope-io'] - 1) * 100:+.1f}%" if "pyroscope-io" in costs else "")
            )

    def shutdown_section(self):
        units = self.units_for("cpu", CPU_THREADS, 1.0)
        modes = self.peer_modes(
            [
                ("none", dict(sdk="none")),
                ("ours", dict(sdk="ours")),
                (f"{PEER}, PySpy", dict(sdk="pyroscope-io", impl="pyspy")),
                (f"{PEER}, Stack (10 ms timer)", dict(sdk="pyroscope-io", impl="stack")),
            ]
        )
        limit = 20.0
        # (column, end, server: "up" | "down" | a receiver mode)
        scenarios = [
            ("`shutdown()` s, server up", "shutdown", "up"),
            ("`shutdown()` s, server hung", "shutdown", "slow:120000"),
            ("exit s, no `shutdown()`, server up", "exit", "up"),
            ("exit s, no `shutdown()`, server down", "exit", "down"),
            ("exit s, no `shutdown()`, server hung", "exit", "slow:120000"),
        ]
        print(
            f"\n### Shutdown and exit (1 s of the CPU-bound work in {CPU_THREADS} threads, then "
            "`shutdown()` timed around the call, or main returns and the exit is timed from its "
            "last line to the parent's `wait4`; down: a loopback port nobody listens on; hung: the "
            f"receiver holds every request; killed after {limit:.0f} s, and then not run again; "
            f"medians of {self.runs} runs, in brackets the profiles the receiver got)\n"
        )
        print("| profiler | " + " | ".join(s[0] for s in scenarios) + " |")
        print("|---|" + "---|" * len(scenarios))
        base = dict(work="cpu", threads=CPU_THREADS, units=units, warmup=0.1)
        shutdown_table(self.measure, self.runs, modes, scenarios, base, limit, "shutdown", "shutdown")
        self.peer_missing_row(len(scenarios) + 1)

    def under_valgrind(self, cfg):
        """One child under cachegrind (with a fresh receiver when profiled): its measurement plus
        `ir`, the instructions that all its threads executed, the profiler's included; or None."""
        fd, out = tempfile.mkstemp(prefix="pybench-cachegrind-", suffix=".out")
        os.close(fd)
        # A fixed hash seed: the same dict layouts, so the same instructions, in every run.
        env = dict(os.environ, PYTHONHASHSEED="0")
        try:
            m = self.measure(cfg, timeout=1200, prefix=(*VALGRIND, f"--cachegrind-out-file={out}"), env=env)
            if m is not None and "killed" not in m:
                m["ir"] = cachegrind_total(out)
                if m["ir"]:
                    log(f"  {m['ir'] / 1e6:,.1f} M instructions, measured phase {m['wall']:.2f} s")
        finally:
            os.unlink(out)
        return m if m is not None and m.get("ir") else None

    def instructions_section(self):
        runs = max(1, int(os.environ.get("BENCH_RUNS", "3")))
        tables = [
            (
                "CPU-bound",
                "cpu",
                CPU_THREADS,
                [
                    ("none", dict(sdk="none")),
                    ("ours (memory profiling on, its default)", dict(sdk="ours")),
                    ("ours, `mem_enabled=False`", dict(sdk="ours", mem=False)),
                    ("ours, `tag_wrapper` per unit", dict(sdk="ours", labels=True)),
                ],
            ),
            (
                "allocation-heavy",
                "alloc",
                ALLOC_THREADS,
                [
                    ("none", dict(sdk="none")),
                    ("ours, `mem_enabled=False`", dict(sdk="ours", mem=False)),
                    ("ours, `mem_enabled=True` (512 KiB)", dict(sdk="ours", mem=True)),
                ],
            ),
        ]
        print("\n### Instructions (valgrind)\n")
        if not shutil.which(VALGRIND[0]):
            print("Not measured: valgrind is not installed (`make valgrind` installs it).")
            return
        rows, notes, spreads, summary = [], [], [], {}
        tick = None
        for title, work, threads, modes in tables:
            units = INSTR_UNITS[work]
            base = dict(work=work, threads=threads, units=units, warmup_units=INSTR_WARMUP[work])
            # How much slower the simulated process is: the work's CPU time with no profiler,
            # natively (the least of 5 runs: other processes only ever add to it) and under
            # valgrind (its first run of "none").
            native = [run_child(self.args.ours_python, {**base, "sdk": "none"}, 120) for _ in range(5)]
            native = [m for m in native if m]
            log(f"instructions, {title}, calibration under valgrind")
            first = self.under_valgrind({**base, "sdk": "none"})
            if not native or first is None:
                rows.append(f"| {title} | none | failed | | | | | | |")
                continue
            native_cpu = min(m["cpu"] for m in native)
            native_wall = min(m["wall"] for m in native)
            slowdown = first["cpu"] / native_cpu
            rate = max(1, round(100 / slowdown))
            profiled = dict(
                sample_rate=rate,
                upload_interval=min(3600.0, 10 * slowdown),
                shutdown_timeout=max(2.0, 2 * slowdown),
            )
            res = {name: [] for name, _ in modes}
            fixed = {name: [] for name, _ in modes}
            res["none"].append(first)
            for r in range(runs):
                for name, cfg in modes:
                    for key, n in (("work", units), ("fixed", 0)):
                        if r == 0 and name == "none" and key == "work":
                            continue
                        log(f"run {r + 1}/{runs}, instructions, {title}, {name}, {units if n else 0} units")
                        c = {**base, **cfg, "units": n, **(profiled if cfg["sdk"] != "none" else {})}
                        (res if key == "work" else fixed)[name].append(self.under_valgrind(c))
            # The collector's wall-clock ticks, which valgrind does not slow down with the rest:
            # the instructions of an idle profiled process per second it lives (threads alive).
            if tick is None and work == "cpu":
                log(f"instructions, the profiler idle for {INSTR_IDLE:.0f} s")
                c = {**base, "sdk": "ours", "units": 0, "idle": INSTR_IDLE, **profiled}
                idle = self.under_valgrind(c)
                start = [m for m in fixed["ours (memory profiling on, its default)"] if m]
                if idle and start:
                    tick = (idle["ir"] - statistics.median(m["ir"] for m in start)) / (
                        idle["wall"] - statistics.median(m["wall"] for m in start)
                    )
            ok = lambda name, d: [m for m in d[name] if m]  # noqa: E731
            if not ok("none", res) or not ok("none", fixed):
                rows.append(f"| {title} | none | failed | | | | | | | |")
                continue
            raw, net = {}, {}
            for name, cfg in modes:
                if not ok(name, res) or not ok(name, fixed):
                    rows.append(f"| {title} | {name} | failed | | | | | | | |")
                    continue
                start = statistics.median(m["ir"] for m in ok(name, fixed))
                # Each run's work, and the same less the ticks of its wall time beyond the
                # native run's (profiled runs only; all of them when the idle run failed).
                per_run = [m["ir"] - start for m in ok(name, res)]
                per_net = [
                    w - (tick * max(0.0, m["wall"] - native_wall) if tick is not None and cfg["sdk"] != "none" else 0)
                    for w, m in zip(per_run, ok(name, res))
                ]
                raw[name], net[name] = statistics.median(per_run), statistics.median(per_net)
                if len(per_net) > 1:
                    spreads.append((max(per_net) - min(per_net)) / net[name])
                total = statistics.median(m["ir"] for m in ok(name, res))
                if name == "none":
                    total0 = total
                vs_off = "-"
                if cfg["sdk"] != "none" and cfg.get("mem") is not False:
                    off = next(
                        (n for n, c in modes if c.get("mem") is False and c.get("labels") == cfg.get("labels")), None
                    )
                    if off in net:
                        vs_off = f"{net[name] / net[off]:.4f}"
                samples = "-"
                if cfg["sdk"] != "none":
                    got = [m["received"]["cpu"] * rate for m in ok(name, res) if m.get("received")]
                    samples = f"{statistics.median(got):.0f}" if got else "-"
                    alloc = [m["received"]["alloc_bytes"] for m in ok(name, res) if m.get("received")]
                    if work == "alloc" and cfg.get("mem") and not (alloc and statistics.median(alloc) > 0):
                        samples += " (no allocation profile)"
                less = f"{net[name] / net['none']:.4f}" if cfg["sdk"] != "none" and tick is not None else "-"
                rows.append(
                    f"| {title} | {name} | {total / 1e6:,.1f} | {start / 1e6:,.1f} | {raw[name] / 1e6:,.1f} "
                    f"| {raw[name] / raw['none']:.4f} | {less} | {total / total0:.4f} | {vs_off} | {samples} |"
                )
            notes.append(
                dict(title=title, units=units, threads=threads, slowdown=slowdown, rate=rate, native=native_cpu)
            )
            summary[title] = (raw, net)
        print(INSTR_TEXT)
        print()
        print(
            "| workload | profiler | instructions, M | startup and exit, M | work, M | work ratio "
            "| work ratio less the extra ticks | whole-process ratio | vs memory off (work less the extra ticks) "
            "| CPU samples received |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for row in rows:
            print(row)
        print()
        for n in notes:
            print(
                f"- {n['title']} ({n['threads']} threads x {n['units']:,} units, {n['native'] * 1000:.0f} ms of CPU "
                f"natively): valgrind {n['slowdown']:.0f}x slower, so the profiled runs sample at "
                f"{n['rate']} Hz, {n['rate'] * n['slowdown']:.0f} Hz natively per unit of work"
            )
        if tick is not None:
            print(
                f"- the idle profiler (threads alive, no work): {tick / 1e6:.2f} M instructions per second of its life"
            )
        else:
            print("- the idle profiler's run failed: no correction for the extra ticks")
        if spreads:
            print(
                f"- counts: a configuration's runs differ by up to {max(spreads) * 100:.2f}% of its work less the "
                f"extra ticks (medians of {runs} runs)"
            )
        raw, net = summary.get("CPU-bound", ({}, {}))
        default, labelled = "ours (memory profiling on, its default)", "ours, `tag_wrapper` per unit"
        if "none" in raw and default in raw:
            parts = [
                f"{what} {raw[name] / raw['none']:.4f} ({net[name] / net['none']:.4f} less the extra ticks)"
                for what, name in (("ours", default), ("with a `tag_wrapper` per unit", labelled))
                if name in raw
            ]
            print(
                "- CPU-bound work, instructions over those without a profiler: "
                + ", ".join(parts)
                + " (target at most 1.01 at 100 Hz)"
            )
        raw, net = summary.get("allocation-heavy", ({}, {}))
        on, off = "ours, `mem_enabled=True` (512 KiB)", "ours, `mem_enabled=False`"
        if on in raw and off in raw:
            print(
                f"- memory profiling's cost, ours: {(net[on] / net[off] - 1) * 100:+.2f}% instructions of the "
                f"allocation-heavy work ({(raw[on] / raw[off] - 1) * 100:+.2f}% before the tick correction; memory "
                "on vs off, agent running in both; target under 3%)"
            )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours-python", required=True)
    ap.add_argument("--receiver", required=True)
    ap.add_argument("--peer-python")
    ap.add_argument("--peer-error", default="not given")
    ap.add_argument("--only", help="sections: cpu,memory,shutdown,instructions (default: the first three)")
    args = ap.parse_args()
    # The children run in the temporary folder: absolute paths (not the resolved venv symlink).
    for name in ("ours_python", "receiver", "peer_python"):
        if getattr(args, name):
            setattr(args, name, os.path.abspath(getattr(args, name)))
    bench = Bench(args)
    bench.header()
    # instructions: the valgrind counts, minutes long; in the default set with
    # BENCH_PYTHON_INSTRUCTIONS=1.
    instructions = os.environ.get("BENCH_PYTHON_INSTRUCTIONS") == "1"
    only = (args.only or "cpu,memory,shutdown" + (",instructions" if instructions else "")).split(",")
    if "cpu" in only:
        bench.cpu_section()
    if "memory" in only:
        bench.memory_section()
    if "shutdown" in only:
        bench.shutdown_section()
    if "instructions" in only:
        bench.instructions_section()
    elif args.only is None:
        print(f"\n### Instructions (valgrind)\n\n{INSTR_SKIPPED}")
    print(f"\nLoad average {os.getloadavg()[0]:.1f} at the end of the Python rows.")


if __name__ == "__main__":
    main()
