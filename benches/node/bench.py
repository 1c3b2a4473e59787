"""`make bench`, Node rows: our package (pyroscope-profiler) next to @pyroscope/nodejs 0.6.4 on
the same workloads, in one run, as interleaved child processes (workload.js), medians of the runs.

    python3 bench.py --node NODE --ours-pkg DIR --receiver PATH
                     [--peer-pkg DIR | --peer-error WHY] [--ours-build WHAT] [--only SECTIONS]

SECTIONS: overhead,await-cost,attribution,shutdown (the default), or rss: peak RSS alone, the
CPU-bound workload of the overhead section (`BENCH_NODE_RSS_ONLY=1 benches/node/run.sh`).
attribution: where the profiler's CPU goes, the overhead section's CPU-bound workload under
`perf record` (Debian's linux-perf, installed when missing and run as root), BENCH_PERF_RUNS
(default 3) rounds of no profiler and ours.

Every profiled child pushes to its own loopback receiver (tests/receiver, `pyroscope-receiver`),
whose output is read back to count what arrived (the workload is measured from the child, never
from frame names). Prints Markdown on stdout, progress on stderr. BENCH_RUNS (default 5) runs
per configuration, BENCH_SECONDS (default 5) of work per measured run. The receiver, the noise
line and the spread come from the Python rows' driver (benches/python/bench.py), so both
sections read alike.
"""

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOAD = os.path.join(HERE, "workload.js")
AWAIT_COST = os.path.join(HERE, "await-cost.js")
PEER = "@pyroscope/nodejs 0.6.4"
OURS = "ours"
# Seconds of the same work before each measured phase (unless a section sets its own): past the
# JIT's warm-up and ours' one-time naming of the code compiled before `start()`, which comes
# once the main thread has used 0.5 s of CPU time (bindings/node/src/jit.rs).
WARMUP = 1.0
OURS_SYNC = "ours, `asyncLabels: false`"
OURS_ALL = "ours, `asyncLabels: 'all'`"
# The figures for the peer on this machine, quoted next to what this run measures.
PEER_QUOTED = dict(cpu_ratio="1.071", added="+45")
APT_NEED = os.path.join(HERE, "..", "..", "scripts", "apt-need.sh")
# The attribution section: perf's sampling (frame pointers: V8's JIT frames keep them, DWARF
# unwinding does not get through them) and what it sorts samples into, first match wins.
PERF_RECORD = ["perf", "record", "-F", "1999", "-e", "cpu-clock", "--call-graph", "fp", "-k", "CLOCK_MONOTONIC"]
OUR_THREADS = "pyroscope-"  # pyroscope-collect, -upload, -capture (perf shows 15 characters)
OUR_ADDON = "/index.node"
# The kernel, the C and C++ runtimes, the dynamic loader: a sample whose leaf is in one of them
# belongs to the first frame outside them.
SYSTEM_DSOS = ("[kernel", "[vdso]", "libc.so", "libm.so", "libstdc++.so", "libgcc_s.so", "ld-linux", "libpthread")
HEAP_SAMPLER = ("v8::internal::SamplingHeapProfiler::",)
CODE_EVENTS = (
    "v8::internal::ExistingCodeLogger::",
    "v8::internal::CodeEventLogger::",
    "v8::internal::JitLogger::",
    "v8::internal::V8FileLogger::SetCodeEventHandler",
    "pyroscope_node_request_existing_code",
    "v8::internal::String::ToCString",
    "CalculateLineEnds",
)
# (key, row): the attribution table's rows, in the order samples are sorted into them.
WHERE = [
    ("ours", f"our addon and threads (leaf in `index.node`, or threads `{OUR_THREADS}*`)"),
    ("heap", "V8's sampling heap profiler (`SamplingHeapProfiler::*` on the stack)"),
    ("code", "code events (`ExistingCodeLogger::*`, `String::ToCString`, `CalculateLineEnds`, ... on the stack)"),
    ("kernel", "the kernel, outside the rows above (signal delivery, page faults, ...)"),
]

_spec = importlib.util.spec_from_file_location("python_bench", os.path.join(HERE, "..", "python", "bench.py"))
python_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(python_bench)
ratios, noise_line, closed_port_url = python_bench.ratios, python_bench.noise_line, python_bench.closed_port_url


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Receiver(python_bench.Receiver):
    """The Python rows' receiver, read back per sample type: ours sends `cpu` (and `wall`)
    profiles, @pyroscope/nodejs a `wall` one; `*_labelled` counts samples with a `route` label."""

    def stop(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        got = dict(profiles=0, rejected=0, cpu=0.0, wall=0.0, cpu_labelled=0.0, wall_labelled=0.0)
        with open(self.path) as f:
            for line in f:
                d = json.loads(line)
                if "rejected" in d:
                    got["rejected"] += 1
                    continue
                got["profiles"] += 1
                types = [t[0] for t in d["sample_types"]]
                for name in ("cpu", "wall"):
                    if name in types:
                        i = types.index(name)
                        for s in d["samples"]:
                            v = s["values"][i] * 1e-9
                            got[name] += v
                            if "route" in s["labels"]:
                                got[name + "_labelled"] += v
        os.unlink(self.path)
        return got


def run_child(node, cfg, timeout, prefix=()):
    """Runs workload.js once, after the command `prefix` if given (see the Python rows' run_child)."""
    return python_bench.run_child(node, cfg, timeout, workload=WORKLOAD, end_key="work_end", prefix=prefix)


def perf_samples(path):
    """The samples of a `perf record` file as (comm, time, frames), frames leaf first as
    (ip, symbol, dso); None when `perf script` fails."""
    proc = subprocess.Popen(
        ["perf", "script", "-i", path, "-F", "comm,tid,time,ip,sym,dso", "--ns"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        errors="replace",
    )
    samples, head, frames = [], None, []
    for line in proc.stdout:
        line = line.rstrip("\n")
        if line.startswith("\t"):
            # "\t    7fb8e401cfdb v8::internal::Foo(int, int) (/usr/bin/node)": symbols have spaces.
            ip, _, rest = line.strip().partition(" ")
            sym, _, dso = rest.rpartition(" (")
            frames.append((int(ip, 16), sym, dso.rstrip(")")))
        elif line.strip():
            # "node  8468 30076.256355518: ": a thread name may have spaces too.
            if head is not None:
                samples.append((*head, frames))
            words = line.split()
            head, frames = (" ".join(words[:-2]), float(words[-1].rstrip(":"))), []
    if head is not None:
        samples.append((*head, frames))
    return samples if proc.wait() == 0 else None


def is_kernel(frame):
    return frame[2].startswith("[kernel") or frame[0] >= 0xFFFF800000000000


def where(comm, frames):
    """The WHERE key a sample goes to, or None (the program's own work)."""
    if comm.startswith(OUR_THREADS):
        return "ours"
    # Whose code the leaf is: the first frame outside the system's libraries (frames perf could
    # not name skipped; our addon has no frame pointers, so its callers are often lost).
    owner = next((f for f in frames if f[2] != "[unknown]" and not f[2].startswith(SYSTEM_DSOS)), None)
    if owner is not None and owner[2].endswith(OUR_ADDON):
        return "ours"
    if any(f[1].startswith(HEAP_SAMPLER) for f in frames):
        return "heap"
    if any(key in f[1] for f in frames for key in CODE_EVENTS):
        return "code"
    if frames and is_kernel(frames[0]):
        return "kernel"
    return None


def perf_shares(path, phase):
    """Each WHERE key's share of a `perf record` file's samples, over the process's life and over
    `phase` (its CLOCK_MONOTONIC start and end), plus the sample count; None when perf fails."""
    samples = perf_samples(path)
    if not samples:
        return None
    keys = [key for key, _ in WHERE]
    life, inside = dict.fromkeys(keys, 0), dict.fromkeys(keys, 0)
    in_phase = 0
    for comm, t, frames in samples:
        key = where(comm, frames)
        within = phase[0] <= t <= phase[1]
        in_phase += within
        if key is not None:
            life[key] += 1
            inside[key] += within
    return dict(
        samples=len(samples),
        life={k: v / len(samples) for k, v in life.items()},
        phase={k: v / max(1, in_phase) for k, v in inside.items()},
    )


class Bench:
    def __init__(self, args):
        self.args = args
        self.runs = max(1, int(os.environ.get("BENCH_RUNS", "5")))
        self.seconds = float(os.environ.get("BENCH_SECONDS", "5"))
        self.peer = args.peer_pkg

    def measure(self, cfg, server=None, timeout=None, prefix=()):
        """One child run with a fresh receiver (unless `server` is given or sdk is none), after the
        command `prefix` if given."""
        cfg = dict(cfg)
        cfg.setdefault("warmup", WARMUP)
        rec = None
        if cfg["sdk"] != "none":
            cfg["pkg"] = self.peer if cfg["sdk"] == "peer" else self.args.ours_pkg
            if server is None:
                rec = Receiver(self.args.receiver)
                cfg["server"] = rec.url
            else:
                cfg["server"] = server
        try:
            m = run_child(self.args.node, cfg, timeout or 60 + 20 * self.seconds, prefix)
        finally:
            got = rec.stop() if rec else None
        if m is not None:
            m["received"] = got
        return m

    def units_for(self, work, seconds):
        """Units for `seconds` of work with no profiler (from a run of about a second here), and
        that run's CPU seconds per await (0 for the CPU-bound work)."""
        probe = 3000 if work == "cpu" else 5000
        m = run_child(self.args.node, dict(sdk="none", work=work, units=probe, warmup=0.3), 120)
        if m is None or "killed" in m:
            sys.exit("the workload failed to run without a profiler")
        per_await = m["cpu"] / m["awaits"] if m["awaits"] else 0.0
        return max(probe, int(probe * seconds / m["wall"])), per_await

    def peer_modes(self, modes):
        return [m for m in modes if m[1]["sdk"] != "peer" or self.peer]

    def peer_missing_row(self, first, columns):
        if not self.peer:
            cells = " | ".join(["-"] * (columns - len(first) - 1))
            why = self.args.peer_error.replace("|", "/")
            print("| " + " | ".join(first) + f" | {PEER}: could not be installed ({why}) | {cells} |")

    # ---- sections ----

    def header(self):
        load = os.getloadavg()
        note = os.environ.get("BENCH_NOTE", "").strip()
        version = subprocess.run([self.args.node, "--version"], capture_output=True, text=True).stdout.strip()
        print(
            f"\n## Node (Node {version}, {os.cpu_count()} cores, "
            f"{time.strftime('%Y-%m-%d', time.gmtime())}, load average {load[0]:.1f} at the start "
            f"of this section{'; ' + note if note else ''})\n"
        )
        print(
            f"Our package (`npm install` in bindings/node: {self.args.ours_build}) and {PEER} from npm "
            "(installed in target/ for the benchmark only), each loaded with `require`, then "
            "`init({appName, serverAddress, flushIntervalMs: 10000})` and `start()` (both sample at "
            "100 Hz by default), pushing to the loopback test receiver; the measured phase follows "
            f"{WARMUP:g} s of the same work (the warm-up: the JIT's, and the profilers' start-up work, "
            "ours' one-time naming of the code V8 compiled before `start()` included, done once the "
            "main thread has used 0.5 s of CPU time); medians of "
            f"{self.runs} interleaved runs, every configuration in the same run; each ratio is "
            "against the no-profiler row of its own workload (ratio of medians), and per run against "
            "the no-profiler run of the same round (median, lowest and highest: the spread). CPU: the "
            "process's user+sys time over the measured phase (`process.cpuUsage()`, every thread "
            "included); wall: its `process.hrtime` time; peak RSS: the child's `ru_maxrss`; `stop()`: "
            '`await stop()` after the work, timed around the call. "In profiles": what the receiver '
            "got, a check that the profiler sampled: ours, its `cpu` as a share of the child's whole "
            f"CPU time (rusage); {PEER}, which sends no CPU time, its `wall` as a share of the child's "
            'lifetime. "Labelled": the share of that time whose samples carry the request\'s label.'
        )

    def rows(self, modes, res, what, labelled):
        """Prints one workload's rows; returns {name: summary} (ratios, RSS added, runs)."""
        base = res["none"]
        _, m0 = python_bench.medians(base)
        if m0 is None:
            print(f"| {what} | none | failed | | | | | | | | | |")
            return {}
        cpu0, wall0, rss0 = m0["cpu"], m0["wall"], m0["rss_mib"]
        out = {}
        for name, cfg in modes:
            runs = res[name]
            ok, m1 = python_bench.medians(runs)
            if m1 is None:
                print(f"| {what} | {name} | failed ({len(runs)} runs) | | | | | | | | | |")
                continue
            cpu, wall, rss = m1["cpu"], m1["wall"], m1["rss_mib"]
            paired = [m["cpu"] / b["cpu"] for m, b in zip(runs, base) if m and b]
            stops = [m["stop"] for m in ok if m.get("stop") is not None]
            stop = f"{statistics.median(stops):.3f}" if stops else "-"
            seen, tagged = "-", "-"
            if name != "none":
                key, whole = ("wall", "elapsed") if cfg["sdk"] == "peer" else ("cpu", "child_cpu")
                got = [m for m in ok if m.get("received")]
                if got:
                    seen = f"{statistics.median(m['received'][key] / m[whole] for m in got) * 100:.0f}%"
                    rejected = sum(m["received"]["rejected"] for m in got)
                    if rejected:
                        seen += f" ({rejected} refused)"
                    if labelled:
                        shares = [
                            m["received"][key + "_labelled"] / m["received"][key] for m in got if m["received"][key]
                        ]
                        tagged = f"{statistics.median(shares) * 100:.0f}%" if shares else "0%"
            failed = len(runs) - len(ok)
            label = name + (f" ({failed} of {len(runs)} runs failed)" if failed else "")
            awaits = statistics.median(m["awaits"] for m in ok)
            out[name] = dict(
                cpu_ratio=cpu / cpu0,
                wall_ratio=wall / wall0,
                added=rss - rss0,
                paired=paired,
                per_await_ns=(cpu - cpu0) / awaits * 1e9 if awaits else None,
            )
            print(
                f"| {what} | {label} | {cpu:.3f} | {wall:.3f} | {cpu / cpu0:.4f} | {ratios(paired)} "
                f"| {wall / wall0:.4f} | {rss:.1f} | {rss - rss0:+.1f} | {stop} | {seen} | {tagged} |"
            )
        return out

    def interleaved(self, workloads):
        """workloads: [(what, base cfg, modes)]; each round runs every mode of every workload
        once. Returns {what: {name: [measurements]}}."""
        results = {what: {name: [] for name, _ in modes} for what, _, modes in workloads}
        for r in range(self.runs):
            for what, base, modes in workloads:
                for name, cfg in modes:
                    log(f"run {r + 1}/{self.runs}, {what}, {name}")
                    m = self.measure({**base, **cfg})
                    results[what][name].append(m if m is not None and "killed" not in m else None)
        return results

    def overhead_section(self):
        cpu_units, _ = self.units_for("cpu", self.seconds)
        await_units, per_await = self.units_for("await", self.seconds)
        cpu_what = "CPU-bound"
        await_what = "await-heavy, `wrapWithLabels` per request"
        cpu_modes = self.peer_modes([("none", dict(sdk="none")), (OURS, dict(sdk="ours")), (PEER, dict(sdk="peer"))])
        await_modes = self.peer_modes(
            [
                ("none", dict(sdk="none")),
                (OURS, dict(sdk="ours")),
                (OURS_ALL, dict(sdk="ours", asyncLabels="all")),
                (OURS_SYNC, dict(sdk="ours", asyncLabels=False)),
                (PEER, dict(sdk="peer")),
            ]
        )
        print(
            f"\n### CPU and wall overhead at 100 Hz (CPU-bound: {cpu_units:,} units of about "
            f"{self.seconds * 1000 / cpu_units:.2f} ms on the main thread, function calls, objects, "
            f"JSON and strings; await-heavy: {await_units:,} requests, 32 at a time, of 200 awaits "
            f"each of about {per_await * 1e6:.2f} µs of work (a key, a cached record, a small JSON "
            "reply), every request inside the SDK's `wrapWithLabels` (none: called directly); "
            f"{PEER}'s `wrapWithLabels` is synchronous, so its label covers a request's start only)\n"
        )
        print(
            "| workload | profiler | CPU s | wall s | CPU ratio | per-run CPU ratio, median (range) | wall ratio "
            "| peak RSS MiB | added MiB | `stop()` s | in profiles | labelled |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        res = self.interleaved(
            [
                (cpu_what, dict(work="cpu", units=cpu_units), cpu_modes),
                (await_what, dict(work="await", units=await_units, labels=True), await_modes),
            ]
        )
        cpu_rows = self.rows(cpu_modes, res[cpu_what], cpu_what, labelled=False)
        self.peer_missing_row([cpu_what], 12)
        await_rows = self.rows(await_modes, res[await_what], await_what, labelled=True)
        self.peer_missing_row([await_what], 12)
        print()
        for what, rows in (("CPU-bound", cpu_rows), ("await-heavy with labels", await_rows)):
            ours = rows.get(OURS)
            if ours:
                peer = rows.get(PEER)
                print(
                    f"- {what}: ours CPU ratio {ours['cpu_ratio']:.4f}, wall ratio {ours['wall_ratio']:.4f} "
                    "(target at most 1.01)"
                    + (f"; {PEER}: {peer['cpu_ratio']:.4f}, wall {peer['wall_ratio']:.4f}" if peer else "")
                    + (f" (the issue measured {PEER_QUOTED['cpu_ratio']} here)" if what == "CPU-bound" else "")
                )
        per_await = [
            f"{name} {await_rows[name]['per_await_ns']:+.0f} ns"
            for name in (OURS, OURS_SYNC, PEER)
            if name in await_rows and await_rows[name]["per_await_ns"] is not None
        ]
        if per_await:
            print(
                "- CPU added per await on the await-heavy workload against no profiler, sampling "
                f"included: {', '.join(per_await)}"
            )
        spreads = [r["paired"] for rows in (cpu_rows, await_rows) for name, r in rows.items() if name != "none"]
        print(noise_line(spreads))
        ours, peer = cpu_rows.get(OURS), cpu_rows.get(PEER)
        if ours:
            print(
                f"- peak RSS added (CPU-bound): ours {ours['added']:.1f} MiB (target under 10 MiB)"
                + (f", {PEER} {peer['added']:.1f} MiB" if peer else "")
                + f" (the issue measured {PEER_QUOTED['added']} MiB for {PEER})"
            )

    def rss_section(self):
        """Peak RSS alone: the overhead section's CPU-bound runs (same settings, same receiver),
        each run's peak and the median added against no profiler."""
        units, _ = self.units_for("cpu", self.seconds)
        modes = self.peer_modes([("none", dict(sdk="none")), (OURS, dict(sdk="ours")), (PEER, dict(sdk="peer"))])
        res = self.interleaved([("rss", dict(work="cpu", units=units), modes)])["rss"]
        print(
            f"\n### Peak RSS (CPU-bound: {units:,} units, 100 Hz; the child's `ru_maxrss`; medians of "
            f"{self.runs} interleaved runs)\n"
        )
        print("| profiler | peak RSS MiB | added MiB | each run's peak MiB |")
        print("|---|---|---|---|")
        ok, m0 = python_bench.medians(res["none"])
        for name, _ in modes:
            runs = [m for m in res[name] if m]
            if not runs or m0 is None:
                print(f"| {name} | failed | | |")
                continue
            rss = statistics.median(m["rss_mib"] for m in runs)
            each = ", ".join(f"{m['rss_mib']:.1f}" for m in runs)
            print(f"| {name} | {rss:.1f} | {rss - m0['rss_mib']:+.1f} | {each} |")
        self.peer_missing_row([], 4)

    def await_cost_section(self):
        """benches/node/await-cost.js: labels' own cost per await (no agent), interleaved."""
        modes = [
            ("none", "no profiler"),
            ("off", "`asyncLabels: false`"),
            ("on", "labels along promises (the default)"),
            ("all", "`asyncLabels: 'all'`"),
        ]
        got = {mode: [] for mode, _ in modes}
        for r in range(self.runs):
            for mode, _ in modes:
                log(f"run {r + 1}/{self.runs}, await-cost.js {mode}")
                args = [self.args.node, AWAIT_COST, mode]
                try:
                    p = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=tempfile.gettempdir())
                except subprocess.TimeoutExpired:
                    log(f"  await-cost.js {mode} killed after 120 s")
                    continue
                if p.returncode == 0 and p.stdout.strip():
                    got[mode].append(float(p.stdout.strip()))
                else:
                    log(f"  await-cost.js {mode} failed ({p.returncode}): {p.stderr[-2000:]}")
        cells = [
            f"{desc} {statistics.median(got[mode]):.0f} ns" if got[mode] else f"{desc} failed" for mode, desc in modes
        ]
        extra = ""
        if got["none"]:
            none = statistics.median(got["none"])
            added = [f"{desc} {statistics.median(got[mode]) - none:+.0f} ns" for mode, desc in modes[1:] if got[mode]]
            extra = "; added per await: " + ", ".join(added)
        print(
            "- labels' own cost per await (`benches/node/await-cost.js`: one million awaits inside ours' "
            f"`wrapWithLabels`, no agent, process CPU time, medians of {self.runs}): " + ", ".join(cells) + extra
        )

    def perf_unavailable(self):
        """None when `perf record` works here, else why not; installs Debian's linux-perf when
        perf is missing and this runs as root (scripts/apt-need.sh, as `make test`'s tools)."""
        if shutil.which("perf") is None:
            if os.geteuid() != 0 or shutil.which("apt-get") is None:
                return "perf is missing: install Debian's linux-perf (this section does, as root with apt-get)"
            p = subprocess.run(
                [APT_NEED, "perf", "linux-perf", "the Node rows' CPU attribution"], capture_output=True, text=True
            )
            said = (p.stdout + p.stderr).strip().splitlines()
            log("\n".join(said))
            if p.returncode != 0:
                return f"perf is missing and could not be installed ({said[-1] if said else f'exit {p.returncode}'})"
        fd, path = tempfile.mkstemp(prefix="nodebench-perf-", suffix=".data")
        os.close(fd)
        try:
            p = subprocess.run([*PERF_RECORD, "-o", path, "--", "true"], capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            return "`perf record` did not end in 60 s on `true`"
        finally:
            os.unlink(path)
        if p.returncode != 0:
            why = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
            return f"`perf record` fails here ({why.strip()})"
        return None

    def perf_run(self, cfg):
        """One child run under PERF_RECORD: perf_shares of its samples, the measured phase being
        the workload's timed one; None when the run or perf failed."""
        fd, path = tempfile.mkstemp(prefix="nodebench-perf-", suffix=".data")
        os.close(fd)
        try:
            m = self.measure(cfg, prefix=[*PERF_RECORD, "-q", "-o", path, "--"])
            if m is None or "killed" in m:
                return None
            return perf_shares(path, (m["work_end"] - m["wall"], m["work_end"]))
        finally:
            os.unlink(path)

    def attribution_section(self):
        """Where the profiler's CPU goes: the overhead section's CPU-bound workload under perf's
        sampling, no profiler and ours interleaved, each sample sorted into WHERE."""
        rounds = max(1, int(os.environ.get("BENCH_PERF_RUNS", "3")))
        why = self.perf_unavailable()
        if why:
            log(f"warning: the CPU attribution could not run: {why}")
            print(f"\n### Where the profiler's CPU goes\n\nNot measured: {why}.")
            return
        units, _ = self.units_for("cpu", self.seconds)
        got = {"none": [], OURS: []}
        for r in range(rounds):
            for name, cfg in (("none", dict(sdk="none")), (OURS, dict(sdk="ours"))):
                log(f"run {r + 1}/{rounds}, attribution (perf), {name}")
                got[name].append(self.perf_run(dict(work="cpu", units=units, **cfg)))
        pairs = [(b, m) for b, m in zip(got["none"], got[OURS]) if b and m]
        print(
            f"\n### Where the profiler's CPU goes (CPU-bound: {units:,} units, 100 Hz; the whole process under "
            f"`{' '.join(PERF_RECORD)}`; medians of {rounds} interleaved rounds)\n"
        )
        print(
            "Every sample of the process (each thread, the kernel's part included; in the measured phase: "
            "the overhead section's timed work alone, without start-up, warm-up and `stop()`) goes to the "
            "first of these rows that it fits, else to the program's own work: our addon and threads; "
            "V8's sampling heap profiler, which ours starts for heap profiles; V8's code events, the "
            "walk over existing code that names JavaScript frames at `start()` and the events for new "
            "code; the kernel, whose share without a profiler is subtracted (what ours adds there: the "
            "timer signals' delivery, page faults). A share of the profiled process's samples is the "
            "profiler's part of its CPU time, read from one run's own samples, so the run-to-run noise "
            "of the overhead section's timed ratios does not enter it; perf's own sampling adds the same to both runs."
        )
        print()
        if not pairs:
            print(f"Not measured: no round gave both runs' samples ({rounds} rounds; see the log).")
            return
        print(
            "| where | no profiler, % of samples | ours, % of samples | added, points: median (each round) "
            "| added in the measured phase, points |"
        )
        print("|---|---|---|---|---|")
        totals, phase_totals = [0.0] * len(pairs), [0.0] * len(pairs)
        # The measured phase without V8's heap sampler: what sampling CPU and wall time costs.
        sampling = [0.0] * len(pairs)
        for key, row in WHERE:
            added = [(m["life"][key] - b["life"][key]) * 100 for b, m in pairs]
            phase = [(m["phase"][key] - b["phase"][key]) * 100 for b, m in pairs]
            totals = [t + a for t, a in zip(totals, added)]
            phase_totals = [t + a for t, a in zip(phase_totals, phase)]
            if key != "heap":
                sampling = [t + a for t, a in zip(sampling, phase)]
            none = statistics.median(b["life"][key] for b, _ in pairs) * 100
            ours = statistics.median(m["life"][key] for _, m in pairs) * 100
            each = ", ".join(f"{a:+.2f}" for a in added)
            print(
                f"| {row} | {none:.2f} | {ours:.2f} | {statistics.median(added):+.2f} ({each}) "
                f"| {statistics.median(phase):+.2f} |"
            )
        each = ", ".join(f"{t:+.2f}" for t in totals)
        total, phase_total = statistics.median(totals), statistics.median(phase_totals)
        print(f"| total | | | {total:+.2f} ({each}) | {phase_total:+.2f} |")
        samples = statistics.median(m["samples"] for _, m in pairs)
        print()
        print(
            f"- where ours' CPU goes (CPU-bound, perf): {total:.2f}% of the process's samples over its life, "
            f"{phase_total:.2f}% over the measured phase (the target, a CPU ratio of at most 1.01, is about "
            f"1 point); medians of {len(pairs)} rounds of about {samples:,.0f} samples a run"
        )
        print(
            f"- the same without V8's sampling heap profiler (the heap profile at the default 512 KiB, which "
            f"{PEER} runs alike at the same interval): {statistics.median(sampling):.2f} points over the "
            "measured phase: what sampling CPU and wall time at 100 Hz, and our threads, cost"
        )

    def shutdown_section(self):
        units, _ = self.units_for("cpu", 1.0)
        modes = self.peer_modes([("none", dict(sdk="none")), (OURS, dict(sdk="ours")), (PEER, dict(sdk="peer"))])
        limit = 15.0
        # (column, end, server)
        scenarios = [
            ("`await stop()`, then exit; server up", "stop", "up"),
            ("`await stop()`, then exit; server down", "stop", "down"),
            ("no `stop()`; server up", "exit", "up"),
            ("no `stop()`; server down", "exit", "down"),
        ]
        print(
            "\n### Shutdown (1 s of the CPU-bound work, then `await stop()` and the script ends, or the "
            "script just ends; timed from the end of the work to the parent's `wait4` on the process; "
            f"down: a loopback port nobody listens on; killed after {limit:.0f} s, and then not run again; "
            f"medians of {self.runs} runs, in brackets the profiles the receiver got)\n"
        )
        print("| profiler | " + " | ".join(s[0] for s in scenarios) + " |")
        print("|---|" + "---|" * len(scenarios))
        base = dict(work="cpu", units=units, warmup=0.1)
        python_bench.shutdown_table(self.measure, self.runs, modes, scenarios, base, limit, "stop")
        self.peer_missing_row([], len(scenarios) + 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--node", required=True)
    ap.add_argument("--ours-pkg", required=True)
    ap.add_argument("--ours-build", default="release build")
    ap.add_argument("--receiver", required=True)
    ap.add_argument("--peer-pkg")
    ap.add_argument("--peer-error", default="not given")
    ap.add_argument("--only", default="overhead,await-cost,attribution,shutdown")
    args = ap.parse_args()
    # The children run in the temporary folder: absolute paths.
    for name in ("node", "ours_pkg", "receiver", "peer_pkg"):
        if getattr(args, name):
            setattr(args, name, os.path.abspath(getattr(args, name)))
    bench = Bench(args)
    bench.header()
    only = args.only.split(",")
    if "rss" in only:
        bench.rss_section()
    if "overhead" in only:
        bench.overhead_section()
    if "await-cost" in only:
        if "overhead" not in only:
            print()
        bench.await_cost_section()
    if "attribution" in only:
        bench.attribution_section()
    if "shutdown" in only:
        bench.shutdown_section()
    print(f"\nLoad average {os.getloadavg()[0]:.1f} at the end of the Node rows.")


if __name__ == "__main__":
    main()
