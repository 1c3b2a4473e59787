"""configure(oncpu=False): a `wall` profile of every Python thread, idle ones included, read by
the profiler's own thread without signalling anyone. Each scenario runs in its own interpreter
against the strict receiver; one window per run (upload_interval=60, flushed at shutdown)."""

import json

from conftest import functions

COMMON = """
import json, os, socket, sys, threading, time
import pyroscope
from pyroscope import _native

def burn_step(x):
    return x + 1

def timed(results, name, f, *args):
    t0 = time.monotonic()
    f(*args)
    results[name] = time.monotonic() - t0

def report(**extra):
    print(json.dumps(dict(extra, wall=_native._wall_stats())))
"""

# A thread in time.sleep, one blocked in recv on a socket, one burning CPU (calling a Python
# helper, so its leaf frame moves all the time), each with thread tags of its own.
THREE = (
    COMMON
    + """
pyroscope.configure(application_name="wall-three", server_address=URL, upload_interval=60, oncpu=ONCPU,
                    report_thread_name=True)
D = 1.5
results = {}
a, b = socket.socketpair()

def sleeping_in_time_sleep():
    time.sleep(D)

def blocked_on_recv():
    a.recv(1)

def burning_cpu():
    c0 = time.thread_time()
    end = time.monotonic() + D
    x = 0
    while time.monotonic() < end:
        x = burn_step(x)
    results["burner_cpu"] = time.thread_time() - c0

def worker(name, f):
    pyroscope.add_thread_tag("role", name)
    timed(results, name, f)
    pyroscope.remove_thread_tag("role", name)

threads = [threading.Thread(target=worker, args=(n, f), name="t-" + n) for n, f in
           (("sleeper", sleeping_in_time_sleep), ("reader", blocked_on_recv), ("burner", burning_cpu))]
for t in threads:
    t.start()
time.sleep(D)
b.send(b"x")
for t in threads:
    t.join()
running = _native.wall_running()
pyroscope.shutdown()
report(results=results, running=running)
"""
)


def run_three(receiver, run_py, oncpu):
    r = receiver()
    out = run_py(THREE.replace("URL", repr(r.url)).replace("ONCPU", str(oncpu)))
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout.splitlines()[-1])
    cpu = r.wait_for(lambda p: p["labels"]["__name__"] == "process_cpu" and p["samples"], what="the CPU profile")
    return r, info, cpu


def value_of(profile, kind):
    i = profile["sample_types"].index([kind, "nanoseconds"])
    return lambda samples: sum(s["values"][i] for s in samples)


def test_every_thread_gets_its_elapsed_wall_time_idle_ones_included(receiver, run_py):
    r, info, cpu = run_three(receiver, run_py, oncpu=False)
    assert info["running"] is True and info["wall"]["error"] is None, info
    wall = r.wait_for(lambda p: p["labels"]["__name__"] == "wall", what="the wall profile")
    assert wall["sample_types"] == [["samples", "count"], ["wall", "nanoseconds"]]
    assert wall["period_type"] == ["wall", "nanoseconds"] and wall["period"] == 10_000_000
    assert wall["labels"]["service_name"] == "wall-three"
    ns = value_of(wall, "wall")
    for role, function in (
        ("sleeper", "sleeping_in_time_sleep"),
        ("reader", "blocked_on_recv"),
        ("burner", "burning_cpu"),
    ):
        mine = [s for s in wall["samples"] if function in functions(s)]
        assert mine, (function, info)
        # The thread's tags and name are on every one of its samples, and on no other thread's.
        assert {s["labels"].get("role") for s in mine} == {role}, function
        assert {s["labels"].get("thread_name") for s in mine} == {"t-" + role}, function
        assert all(function not in functions(s) for s in wall["samples"] if s["labels"].get("role") != role)
        elapsed = info["results"][role] * 1e9
        assert abs(ns(mine) - elapsed) <= 0.15 * elapsed, (function, ns(mine) / 1e9, elapsed / 1e9, info["wall"])
        # The Python frames, leaf first, down to the thread's entry.
        assert functions(mine[0])[-1] == "Thread._bootstrap", functions(mine[0])
        assert "worker" in functions(mine[0])
    # The main thread (in time.sleep, then join) is there too.
    assert any("<module>" in functions(s) and "role" not in s["labels"] for s in wall["samples"])
    # CPU stays CPU: the idle threads' 1.5 s cost at most the CPU of entering and leaving their
    # wait (a timer period crossed right then: one sample); the burner's cost its time.
    cpu_ns = value_of(cpu, "cpu")
    for function in ("sleeping_in_time_sleep", "blocked_on_recv"):
        idle = cpu_ns([s for s in cpu["samples"] if function in functions(s)])
        assert idle <= cpu["period"], (function, idle)
    burner = cpu_ns([s for s in cpu["samples"] if "burning_cpu" in functions(s)])
    assert burner >= 0.5 * info["results"]["burner_cpu"] * 1e9, (burner, info["results"])


def test_the_cpu_profile_is_the_same_with_and_without_wall_mode(receiver, run_py):
    per_mode = {}
    for oncpu in (True, False):
        _, info, cpu = run_three(receiver, run_py, oncpu)
        ns = value_of(cpu, "cpu")
        burner = ns([s for s in cpu["samples"] if "burning_cpu" in functions(s)])
        # The wall sampler's own work is not in the CPU profile (its thread is the profiler's).
        names = {f for s in cpu["samples"] for f in functions(s)}
        assert not [f for f in names if "wall" in f.lower() and "pyroscope" in f.lower()], names
        assert cpu["sample_types"] == [["samples", "count"], ["cpu", "nanoseconds"]]
        per_mode[oncpu] = (burner, info["results"]["burner_cpu"] * 1e9)
    for oncpu, (burner, thread_cpu) in per_mode.items():
        # In both modes the burner's CPU samples are its own CPU clock (not its elapsed time).
        assert abs(burner - thread_cpu) <= 0.15 * thread_cpu, (oncpu, burner / 1e9, thread_cpu / 1e9)


def test_oncpu_true_sends_no_wall_profile(receiver, run_py):
    r, info, cpu = run_three(receiver, run_py, oncpu=True)
    assert info["running"] is False
    assert info["wall"]["ticks"] == 0, info
    names = [p["labels"]["__name__"] for p in r.profiles()]
    assert "wall" not in names, names
    assert cpu["samples"]


ASYNC = (
    COMMON
    + """
import asyncio
pyroscope.configure(application_name="wall-async", server_address=URL, upload_interval=60, oncpu=False)
results = {}

def blocking_step(seconds):
    time.sleep(seconds)

async def task_body(name):
    with pyroscope.tag_wrapper({"task": name}):
        for _ in range(4):
            timed(results, name + str(_), blocking_step, 0.15)
            await asyncio.sleep(0)

async def main():
    await asyncio.gather(task_body("a"), task_body("b"))

asyncio.run(main())
pyroscope.shutdown()
report(results=results)
"""
)


def test_asyncio_tasks_keep_their_labels_on_wall_samples(receiver, run_py):
    r = receiver()
    out = run_py(ASYNC.replace("URL", repr(r.url)))
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout.splitlines()[-1])
    wall = r.wait_for(lambda p: p["labels"]["__name__"] == "wall", what="the wall profile")
    ns = value_of(wall, "wall")
    steps = [s for s in wall["samples"] if "blocking_step" in functions(s)]
    assert steps
    for name in ("a", "b"):
        mine = [s for s in steps if s["labels"].get("task") == name]
        # Each step's caller is its own task's coroutine.
        assert all("task_body" in functions(s) for s in mine)
        elapsed = sum(v for k, v in info["results"].items() if k.startswith(name)) * 1e9
        assert abs(ns(mine) - elapsed) <= 0.15 * elapsed, (name, ns(mine) / 1e9, elapsed / 1e9)
    assert all(s["labels"].get("task") in ("a", "b") for s in steps), [s["labels"] for s in steps]


CHURN = (
    COMMON
    + """
pyroscope.configure(application_name="wall-churn", server_address=URL, upload_interval=60, oncpu=False,
                    sample_rate=1000)
results = {}

def short_lived(i):
    if i % 2:
        time.sleep(0.001)
    else:
        x = 0
        for _ in range(2000):
            x = burn_step(x)

def long_sleeper():
    time.sleep(2.0)

keeper = threading.Thread(target=timed, args=(results, "keeper", long_sleeper))
keeper.start()
t0 = time.monotonic()
started = 0
while time.monotonic() - t0 < 1.8:
    batch = [threading.Thread(target=short_lived, args=(i,)) for i in range(20)]
    for t in batch:
        t.start()
    for t in batch:
        t.join()
    started += len(batch)
keeper.join()
pyroscope.shutdown()
report(results=results, started=started)
"""
)


def test_the_wall_sampler_survives_thread_churn(receiver, run_py):
    r = receiver()
    out = run_py(CHURN.replace("URL", repr(r.url)), timeout=120)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout.splitlines()[-1])
    assert info["started"] >= 300, info
    wall = r.wait_for(lambda p: p["labels"]["__name__"] == "wall", what="the wall profile")
    ns = value_of(wall, "wall")
    assert [s for s in wall["samples"] if "short_lived" in functions(s)]
    # The sampler kept going through the churn: the long sleeper has its elapsed time.
    keeper = [s for s in wall["samples"] if "long_sleeper" in functions(s)]
    elapsed = info["results"]["keeper"] * 1e9
    assert abs(ns(keeper) - elapsed) <= 0.15 * elapsed, (ns(keeper) / 1e9, elapsed / 1e9, info["wall"])
    # Every frame was named: a torn walk is dropped, never half-kept.
    assert all(f["function"] and f["file"] for s in wall["samples"] for f in s["frames"])


FORK = (
    COMMON
    + """
pyroscope.configure(application_name="wall-fork", server_address=URL, upload_interval=60, oncpu=False,
                    report_pid=True)

def parent_sleeps():
    time.sleep(0.4)

def child_sleeps():
    time.sleep(0.8)

parent_sleeps()
pid = os.fork()
if pid == 0:
    results = {}
    t = threading.Thread(target=timed, args=(results, "child", child_sleeps))
    t.start()
    t.join()
    running = _native.wall_running()
    pyroscope.shutdown()
    report(results=results, running=running, who="child")
    sys.exit(0)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0
pyroscope.shutdown()
print(json.dumps({"who": "parent", "pids": [os.getpid(), pid]}))
"""
)


def test_a_forked_child_samples_wall_time_with_its_own_sampler(receiver, run_py):
    r = receiver()
    out = run_py(FORK.replace("URL", repr(r.url)))
    assert out.returncode == 0, out.stderr
    lines = [json.loads(l) for l in out.stdout.splitlines()]
    child = next(l for l in lines if l["who"] == "child")
    parent_pid, child_pid = next(l for l in lines if l["who"] == "parent")["pids"]
    assert child["running"] is True, child
    wall = r.wait_for(
        lambda p: p["labels"]["__name__"] == "wall" and any("child_sleeps" in functions(s) for s in p["samples"]),
        what="the child's wall profile",
    )
    ns = value_of(wall, "wall")
    assert {s["labels"]["pid"] for s in wall["samples"]} == {str(child_pid)}
    mine = [s for s in wall["samples"] if "child_sleeps" in functions(s)]
    elapsed = child["results"]["child"] * 1e9
    assert abs(ns(mine) - elapsed) <= 0.15 * elapsed, (ns(mine) / 1e9, elapsed / 1e9)
    # The parent's own wall profile has the parent's sleep, under its pid only.
    parent = r.wait_for(
        lambda p: p["labels"]["__name__"] == "wall" and any("parent_sleeps" in functions(s) for s in p["samples"]),
        what="the parent's",
    )
    assert {s["labels"]["pid"] for s in parent["samples"]} == {str(parent_pid)}


TORN = (
    COMMON
    + """
pyroscope.configure(application_name="wall-torn", server_address=URL, upload_interval=60, oncpu=False,
                    sample_rate=5000)

def a3(): return 1
def a2(): return a3()
def a1(): return a2()
def b3(): return 1
def b2(): return b3()
def b1(): return b2()

def churner():
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        a1()
        b1()

t = threading.Thread(target=churner)
t.start()
t.join()
pyroscope.shutdown()
report()
"""
)

VALID = [[], ["a1"], ["a2", "a1"], ["a3", "a2", "a1"], ["b1"], ["b2", "b1"], ["b3", "b2", "b1"]]


def test_a_stack_read_while_its_thread_moves_is_rarely_kept_torn(receiver, run_py):
    # Calls into a1->a2->a3 then b1->b2->b3 reuse the same frame memory: a walk that read part
    # of one path and part of the other mixes them. The sampler walks twice (a random pause
    # between the walks once the thread was seen moving) and checks the leaf (cpython/wall.rs),
    # retrying or dropping what moved; dropped periods go to the thread's next kept sample.
    # Measured with a busy core beside it: 0-0.17% of this thread's wall time in mixed stacks
    # on 3.11-3.13, 1.4-3.6% with the checks removed; on an idle machine (both threads running
    # at once) 1.2-3.4% with the checks. Exact stacks for the thread holding the GIL (the only
    # one whose Python stack can move) are not done yet, so this bounds gross failures only
    # (10%). Its wall time must be 1.00-1.05 x elapsed.
    r = receiver()
    out = run_py(TORN.replace("URL", repr(r.url)))
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout.splitlines()[-1])
    wall = r.wait_for(lambda p: p["labels"]["__name__"] == "wall", what="the wall profile")
    ns = value_of(wall, "wall")
    mine = [s for s in wall["samples"] if "churner" in functions(s)]
    torn = [s for s in mine if functions(s)[: functions(s).index("churner")] not in VALID]
    assert abs(ns(mine) - 2e9) <= 0.15 * 2e9, ns(mine) / 1e9
    assert ns(torn) <= 0.10 * ns(mine), ([functions(s) for s in torn], ns(torn) / ns(mine), info["wall"])
    # Not asserted: that the sampler caught the thread moving. When the machine's cores are
    # busy the churner and the sampler take turns on one core, and every walk is consistent.
