"""native=True: native frames of extension modules and C libraries merged into the Python
stacks where Python calls them, the interpreter's own frames left out."""

from conftest import functions

PROGRAM = """
import threading, time, zlib, os
import pyroscope

DATA = os.urandom(1 << 20) * 4

def compress_in_c():
    end = time.thread_time() + 1.0
    while time.thread_time() < end:
        zlib.compress(DATA, 6)

def spin_in_python():
    end = time.thread_time() + 0.5
    x = 0
    while time.thread_time() < end:
        x += 1

pyroscope.configure(application_name="native-app", server_address=URL, upload_interval=1, native=NATIVE)
compress_in_c()
spin_in_python()
pyroscope.shutdown()
"""


def samples(r, function):
    return [
        s
        for p in r.profiles()
        if p["labels"]["__name__"] == "process_cpu"
        for s in p["samples"]
        if function in functions(s)
    ]


def test_native_frames_sit_under_the_python_caller(receiver, run_py):
    r = receiver()
    out = run_py(PROGRAM.replace("URL", repr(r.url)).replace("NATIVE", "True"), timeout=120)
    assert out.returncode == 0, out.stderr
    r.wait_for(lambda p: any("compress_in_c" in functions(s) for s in p["samples"]), what="compress_in_c")
    ss = samples(r, "compress_in_c")
    # zlib's deflate runs below compress_in_c (leaf first: native frames, then the caller).
    below = [s for s in ss if any("deflate" in f for f in functions(s)[: functions(s).index("compress_in_c")])]
    assert len(below) >= 0.5 * len(ss), [functions(s)[:6] for s in ss[:5]]
    for s in ss:
        names = functions(s)
        # The eval loop is replaced by the Python frames it runs; the root is Python's or libc's.
        assert "_PyEval_EvalFrameDefault" not in names, names
        assert names.index("compress_in_c") < names.index("<module>"), names
    for s in samples(r, "spin_in_python"):
        assert "_PyEval_EvalFrameDefault" not in functions(s)


def test_without_native_stacks_are_python_only(receiver, run_py):
    r = receiver()
    out = run_py(PROGRAM.replace("URL", repr(r.url)).replace("NATIVE", "False"), timeout=120)
    assert out.returncode == 0, out.stderr
    r.wait_for(lambda p: any("compress_in_c" in functions(s) for s in p["samples"]), what="compress_in_c")
    for s in samples(r, "compress_in_c"):
        assert functions(s)[0] == "compress_in_c", functions(s)
