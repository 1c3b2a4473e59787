"""The real agent under load (issue #11): CPU sampling at 1000 Hz and the allocation hooks walking
every few KiB, while threads recurse deeper than a sample holds, run generators, coroutines and
exceptions, start and end hundreds of threads, collect garbage and churn labels. The program
must finish (bounded), exit 0 with its own output intact, and its pushed profiles must decode
with its Python frames."""

import json

from conftest import functions

SECONDS = 3.0

STRESS = """
import asyncio, gc, json, sys, threading, time
import pyroscope
from pyroscope import _native

sys.setrecursionlimit(10_000)
sys.setswitchinterval(0.001)  # more GIL hand-overs, and thread starts not starved
assert pyroscope.configure(application_name="stress", server_address=URL, upload_interval=1, sample_rate=1000,
                           mem_enabled=True, mem_heap_sample_size=4096)
print("begin", flush=True)
deadline = time.monotonic() + SECONDS
counts = {}
errors = []

def until(step, at_least=0):
    n = 0
    try:
        while time.monotonic() < deadline or n < at_least:
            step()
            n += 1
    except BaseException as e:
        errors.append(f"{step.__name__}: {e!r}")
    counts[step.__name__] = n

def recurse(n):
    if n == 0:
        return sum(i * i for i in range(200)) + len([object() for _ in range(20)])
    return recurse(n - 1) + 1

def deep_recursion():
    recurse(300)

def gen_values(n):
    for i in range(n):
        yield [i] * 3

def generators():
    sum(len(x) for x in gen_values(500))

async def coro_leaf(i):
    await asyncio.sleep(0)
    # Enough work after the await that CPU samples land in the coroutine's own frame.
    return sum(range(20000)) + i

async def coro_main():
    return await asyncio.gather(*(coro_leaf(i) for i in range(50)))

def coroutines():
    asyncio.run(coro_main())

class Boom(Exception):
    pass

def raise_deep(n):
    if n == 0:
        raise Boom("x" * 100)
    raise_deep(n - 1)

def exceptions():
    for _ in range(50):
        try:
            raise_deep(30)
        except Boom:
            pass

started = [0]

def churn_worker(i):
    # 2 ms of CPU: a thread armed as it starts is sampled about twice.
    with pyroscope.tag_wrapper({"churn": str(i % 7)}):
        end = time.thread_time() + 0.002
        while time.thread_time() < end:
            pass

def thread_churn():
    ts = [threading.Thread(target=churn_worker, args=(i,)) for i in range(20)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    started[0] += len(ts)

def collect():
    garbage = [[i, {}] for i in range(200)]
    for g in garbage:
        g.append(g)
    del garbage
    gc.collect()

def tag_churn():
    for i in range(50):
        pyroscope.add_thread_tag("k", str(i % 13))
        with pyroscope.tag_wrapper({"w": str(i % 5)}):
            bytearray(5000)
        pyroscope.remove_thread_tag("k", str(i % 13))

def allocations():
    blobs = [bytes(i % 8192) for i in range(2000)]
    table = {i: str(i) * 3 for i in range(2000)}
    return len(blobs) + len(table)

steps = (deep_recursion, generators, coroutines, exceptions, thread_churn, collect, tag_churn, allocations)
# Thread churn goes on past the deadline until 300 threads started and ended.
ts = [threading.Thread(target=until, args=(f, 15 if f is thread_churn else 0), name=f.__name__) for f in steps]
for t in ts:
    t.start()
for t in ts:
    t.join()
print(json.dumps({"counts": counts, "threads_started": started[0], "errors": errors}), flush=True)
stats = _native.stats()
walker = {k: v for k, v in _native._walker_stats().items() if not isinstance(v, bool)}
ok = pyroscope.shutdown()
print(json.dumps({"stats": stats, "walker": walker}))
print("end", ok)
""".replace("SECONDS", repr(SECONDS))

# A function of each workload that must appear on some CPU sample, and of the allocating ones
# on some memory sample.
CPU_FUNCTIONS = {
    "recurse",
    "gen_values",
    "coro_leaf",
    "raise_deep",
    "churn_worker",
    "collect",
    "tag_churn",
    "allocations",
}
MEM_FUNCTIONS = {"allocations", "recurse", "gen_values"}


def test_stress_real_agent_at_1000_hz_with_memory_hooks(receiver, run_py):
    r = receiver()
    out = run_py(STRESS.replace("URL", repr(r.url)), timeout=90)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    lines = out.stdout.splitlines()
    assert len(lines) == 4 and lines[0] == "begin" and lines[3] == "end True", out.stdout
    run, stats = json.loads(lines[1]), json.loads(lines[2])
    print(f"wall {out.elapsed:.1f} s, steps {run['counts']}, threads started {run['threads_started']}")
    print(f"agent stats {stats['stats']}")
    print(f"walker stats {stats['walker']}")
    assert run["errors"] == [], run["errors"]
    assert set(run["counts"]) == {
        "deep_recursion",
        "generators",
        "coroutines",
        "exceptions",
        "thread_churn",
        "collect",
        "tag_churn",
        "allocations",
    }
    assert all(n > 0 for n in run["counts"].values()), run["counts"]
    assert run["threads_started"] >= 300, run["threads_started"]
    assert stats["stats"]["samples"] > 0 and stats["walker"]["stacks"] > 0
    # Bounded: SECONDS of work, then shutdown's own bound.
    assert out.elapsed < SECONDS + 30, out.elapsed
    # Everything the program sent, its last windows included.
    r.drain()

    def seen(name):
        found = set()
        for p in r.profiles():
            if p["labels"]["__name__"] == name:
                for s in p["samples"]:
                    found.update(functions(s))
        return found

    cpu = seen("process_cpu")
    assert CPU_FUNCTIONS <= cpu, CPU_FUNCTIONS - cpu
    # The deep recursion was cut at the leaf-most frames and marked.
    deep = [
        s
        for p in r.profiles()
        if p["labels"]["__name__"] == "process_cpu"
        for s in p["samples"]
        if functions(s)[-1:] == ["[truncated]"]
    ]
    # (its 128th frame, the marker, stands for the thread's bottom frames and the rest of recurse's).
    assert deep and all(len(functions(s)) == 128 and functions(s).count("recurse") >= 119 for s in deep), [
        functions(s) for s in deep if len(functions(s)) != 128 or functions(s).count("recurse") < 119
    ][:1]
    names = {p["labels"]["__name__"] for p in r.profiles()}
    mem = set().union(*(seen(n) for n in names if n.startswith("memory")))
    assert MEM_FUNCTIONS <= mem, (names, MEM_FUNCTIONS - mem)
