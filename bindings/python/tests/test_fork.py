"""Forked children (os.fork, multiprocessing "fork") profile themselves with no hook in user
code: their own pid, none of the parent's samples, no deadlock, the last window sent."""

from conftest import functions

PROGRAM = """
import multiprocessing, os, sys, threading, time
import pyroscope

def burn(seconds):
    end = time.process_time() + seconds
    x = 0
    while time.process_time() < end:
        x += 1
    return x

def parent_work(): burn(0.4)
def forked_child_work(): burn(0.4)
def pool_child_work(_): return burn(0.3)

pyroscope.configure(application_name="fork-app", server_address=URL, upload_interval=1, report_pid=True)
# Load while forking: a thread burning CPU (and taking labels) in the parent the whole time.
stop = threading.Event()
def busy():
    while not stop.is_set():
        with pyroscope.tag_wrapper({"busy": "yes"}):
            burn(0.01)
t = threading.Thread(target=busy, daemon=True)
t.start()
parent_work()
pid = os.fork()
if pid == 0:
    forked_child_work()
    sys.exit(0)  # a normal exit: atexit sends the last window
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0
ctx = multiprocessing.get_context("fork")
# close() + join(): the workers end normally. (Leaving the `with` block terminates them with
# SIGTERM, whose default action ends a process before any exit hook: their last window is lost.)
pool = ctx.Pool(2)
pool.map(pool_child_work, range(2))
pool.close()
pool.join()
stop.set()
t.join()
print("pids", pid, os.getpid())
pyroscope.shutdown()
"""


def test_forked_children_profile_themselves(receiver, run_py):
    r = receiver()
    out = run_py(PROGRAM.replace("URL", repr(r.url)), timeout=120)
    assert out.returncode == 0, out.stderr
    forked, parent = (int(x) for x in out.stdout.split()[-2:])

    def samples_of(function):
        return [
            s
            for p in r.profiles()
            if p["labels"]["__name__"] == "process_cpu"
            for s in p["samples"]
            if function in functions(s)
        ]

    r.wait_for(lambda p: any("pool_child_work" in functions(s) for s in p["samples"]), what="pool children")
    r.wait_for(lambda p: any("forked_child_work" in functions(s) for s in p["samples"]), what="the forked child")
    # Each function is charged to the process that ran it, and to no other.
    assert {s["labels"]["pid"] for s in samples_of("forked_child_work")} == {str(forked)}
    assert {s["labels"]["pid"] for s in samples_of("parent_work")} == {str(parent)}
    pool_pids = {s["labels"]["pid"] for s in samples_of("pool_child_work")}
    assert pool_pids and str(parent) not in pool_pids and str(forked) not in pool_pids, pool_pids
    # No child re-sends what its parent sampled before the fork.
    for p in r.profiles():
        pids = {s["labels"].get("pid") for s in p["samples"]}
        if str(parent) in pids:
            assert pids == {str(parent)}, pids
