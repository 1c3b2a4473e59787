"""The CPython frame walker (bindings/python/src/cpython): frames, lines, labels, torn stacks.

Run with the package installed in a venv of each of 3.11, 3.12 and 3.13:
    python -m pytest -s bindings/python/tests/test_walker.py
`-s` shows the measured figures.
"""

import asyncio
import contextvars
import gc
import subprocess
import sys
import threading
import time
import traceback

from pyroscope import _native as n

LABEL = contextvars.ContextVar("pyroscope_walker_test_labels")
n._walker_init(LABEL)


def expected(depth=1):
    """(qualname, filename, line) of the caller's frame and every frame above it, leaf first."""
    f = sys._getframe(depth)
    out = []
    while f is not None:
        out.append((f.f_code.co_qualname, f.f_code.co_filename, f.f_lineno))
        f = f.f_back
    return out


def check(sample, want):
    assert sample is not None
    _key, ident, frames = sample
    assert ident == threading.get_ident()
    assert frames == want


def check_traceback(sample, stack):
    """The walk agrees with traceback.extract_stack() (names there are co_name, root first)."""
    frames = sample[2]
    summary = [(fs.name, fs.filename, fs.lineno) for fs in reversed(stack)]
    assert [(q.rsplit(".", 1)[-1], f, l) for q, f, l in frames] == summary


def both_walks():
    """A walk in normal context and one inside a SIGPROF handler, plus what Python says, all
    at the same line (this frame is the leaf, its callers follow)."""
    return n._walk_here(), n._walk_in_signal(), expected(1), traceback.extract_stack(sys._getframe(0))


def test_init_learned_everything():
    stats = n._walker_stats()
    assert stats["initialised"] and stats["armed"]
    assert stats["collision_node_known"]


def test_nested_functions():
    def outer():
        return middle()

    def middle():
        return inner()

    def inner():
        return both_walks()

    here, in_signal, want, stack = outer()
    check(here, want)
    check(in_signal, want)
    check_traceback(here, stack)
    assert here[2][1][0] == "test_nested_functions.<locals>.inner"


class Shape:
    def area(self):
        return self._helper()

    def _helper(self):
        return both_walks()

    @staticmethod
    def static():
        return both_walks()

    @classmethod
    def klass(cls):
        return both_walks()


def test_methods_have_qualified_names():
    for call, name in [(Shape().area, "Shape._helper"), (Shape.static, "Shape.static"), (Shape.klass, "Shape.klass")]:
        here, in_signal, want, stack = call()
        check(here, want)
        check(in_signal, want)
        check_traceback(here, stack)
        assert here[2][1][0] == name


def test_generators():
    def gen():
        for _ in range(2):
            yield both_walks()

    def consume():
        return list(gen())

    for here, in_signal, want, stack in consume():
        check(here, want)
        check(in_signal, want)
        check_traceback(here, stack)
        assert [f[0] for f in here[2][1:3]] == ["test_generators.<locals>.gen", "test_generators.<locals>.consume"]


def test_coroutines():
    async def leaf():
        await asyncio.sleep(0)
        return both_walks()

    async def root():
        return await leaf()

    here, in_signal, want, stack = asyncio.run(root())
    check(here, want)
    check(in_signal, want)
    check_traceback(here, stack)
    assert [f[0] for f in here[2][1:3]] == ["test_coroutines.<locals>.leaf", "test_coroutines.<locals>.root"]


def test_lambda_called_from_c_skips_the_shims():
    seen = []

    def key(x):
        seen.append(both_walks())
        return x

    def sort():
        return sorted([3, 1, 2], key=lambda x: key(x))

    sort()
    assert len(seen) == 3
    for here, in_signal, want, stack in seen:
        check(here, want)
        check(in_signal, want)
        check_traceback(here, stack)
        names = [f[0] for f in here[2][1:4]]
        assert names == [
            "test_lambda_called_from_c_skips_the_shims.<locals>.key",
            "test_lambda_called_from_c_skips_the_shims.<locals>.sort.<locals>.<lambda>",
            "test_lambda_called_from_c_skips_the_shims.<locals>.sort",
        ]


def test_while_handling_an_exception():
    def fail():
        raise ValueError("x")

    def handler():
        try:
            fail()
        except ValueError:
            try:
                return both_walks()
            finally:
                pass

    here, in_signal, want, stack = handler()
    check(here, want)
    check(in_signal, want)
    check_traceback(here, stack)


def test_other_thread():
    results = []

    def run():
        results.append(both_walks())

    t = threading.Thread(target=run, name="walker-test")
    t.start()
    t.join()
    here, in_signal, want, _ = results[0]
    assert here[1] == in_signal[1] == t.ident
    assert here[2] == in_signal[2] == want
    assert want[-1][0] == "Thread._bootstrap"


def test_deep_recursion_keeps_the_leaf_frames():
    before = n._walker_stats()["truncated"]

    def down(k):
        if k == 0:
            return n._walk_here(), expected(1)
        return down(k - 1)

    here, want = down(300)
    # The core's record is 256 words: 2 header words, then 127 frames of 2 words.
    assert len(here[2]) == 127
    assert here[2] == want[:127]
    assert n._walker_stats()["truncated"] == before + 1


def label(key, holder=None):
    return (key.to_bytes(8, "little"), holder)


def test_context_key_follows_the_context():
    assert n._context_key() == 0
    ctx = contextvars.copy_context()
    assert ctx.run(lambda: (LABEL.set(label(77)), n._context_key())[1]) == 77
    assert n._context_key() == 0
    token = LABEL.set(label(0xFFFF_FFFF_FFFF_FFFE))
    try:
        assert n._context_key() == 0xFFFF_FFFF_FFFF_FFFE
        assert n._walk_here()[0] == 0xFFFF_FFFF_FFFF_FFFE
        assert n._walk_in_signal()[0] == 0xFFFF_FFFF_FFFF_FFFE
    finally:
        LABEL.reset(token)
    assert n._context_key() == 0


def test_malformed_label_values_read_as_zero():
    before = n._walker_stats()["bad_label"]
    for bad in ["str", (b"short",), (b"12345678",)[0:0], ("x" * 8,), label(5)[0]]:
        token = LABEL.set(bad)
        try:
            assert n._context_key() == 0
        finally:
            LABEL.reset(token)
    assert n._walker_stats()["bad_label"] == before + 5


def test_fifty_tasks_with_many_other_context_vars():
    others = [contextvars.ContextVar(f"other{i}") for i in range(300)]
    mismatches = []
    checks = 0

    async def task(i):
        nonlocal checks
        for j, var in enumerate(others):
            if (i + j) % 3 == 0:
                var.set(j)
        LABEL.set(label(1000 + i))
        for _ in range(20):
            await asyncio.sleep(0)
            got = (n._context_key(), n._walk_in_signal()[0])
            checks += 1
            if got != (1000 + i, 1000 + i):
                mismatches.append((i, got))
        return n._context_key()

    async def main():
        LABEL.set(label(1))
        results = await asyncio.gather(*(task(i) for i in range(50)))
        assert n._context_key() == 1
        return results

    assert asyncio.run(main()) == [1000 + i for i in range(50)]
    assert checks == 1000
    assert mismatches == []


FAULTHANDLER_CHILD = """
import contextvars, faulthandler
from pyroscope import _native as n
var = contextvars.ContextVar("v")
faulthandler.disable()
n._walker_init(var)
assert n._walker_stats()["armed"] and n._walk_here() is not None
faulthandler.enable()          # replaces our SIGSEGV/SIGBUS handler
assert not n._walker_stats()["armed"]
assert n._walk_here() is None and n._walk_in_signal() is None
assert n._walker_stats()["disarmed"] == 2
faulthandler.disable()         # puts back the handler it replaced: ours
assert n._walker_stats()["armed"] and n._walk_here() is not None
print("ok")
"""


def test_faulthandler_disarms_the_walker():
    out = subprocess.run([sys.executable, "-c", FAULTHANDLER_CHILD], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_stale_code_objects_are_dropped_or_named_right():
    ns = {}
    exec("def ephemeral(f):\n    return f()\n", ns)
    words = ns["ephemeral"](n._walk_words_here)
    assert n._resolve_words(words)[2][0][0] == "ephemeral"
    del ns
    gc.collect()
    # Reuse the memory with other code objects.
    junk = [compile(f"def g{i}(): return {i}", "<junk>", "exec") for i in range(2000)]
    frames = n._resolve_words(words)[2]
    # Dropped (another code object lives at that address now: its co_qualname tag differs),
    # or still the same function; never the new object's name.
    assert frames[0][0] in ("ephemeral", "test_stale_code_objects_are_dropped_or_named_right")
    del junk


def test_cost(capsys):
    def down(k):
        if k == 0:
            walk_ns, frames = n._bench_walk(20000)
            cold, warm, resolved = n._bench_resolve(20000)
            return walk_ns, frames, cold, warm, resolved
        return down(k - 1)

    # A fresh thread: Thread._bootstrap, _bootstrap_inner, run, <lambda>, then 16 levels of down().
    result = []
    t = threading.Thread(target=lambda: result.append(down(15)))
    t.start()
    t.join()
    walk_ns, frames, cold, warm, resolved = result[0]
    assert frames == resolved == 20
    with capsys.disabled():
        print(
            f"\n[{sys.version.split()[0]}] walk {walk_ns:.0f} ns for {frames} frames (normal context); "
            f"resolve cold {cold / 1000:.1f} us, warm {warm:.0f} ns per sample"
        )
    assert walk_ns < 50_000


def test_stress_signals_with_churn(capsys):
    stop = time.monotonic() + 3.0
    errors = []

    def rec(k):
        if k == 0:
            return sum(i for i in range(200))
        return rec(k - 1) + 1

    def gen(k):
        for i in range(k):
            yield rec(i % 30)

    def exc(k):
        try:
            if k % 2:
                raise KeyError(k)
            return [x for x in gen(5)]
        except KeyError:
            return rec(10)

    def thread_body(i):
        try:
            LABEL.set(label(i + 1))
            for j in range(50):
                exc(j)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    async def coro(i):
        for _ in range(5):
            await asyncio.sleep(0)
            exc(i)

    async def coros():
        await asyncio.gather(*(coro(i) for i in range(10)))

    n._sig_start(1000, 200)
    loops = 0
    threads_started = 0
    try:
        while time.monotonic() < stop:
            threads = [threading.Thread(target=thread_body, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            threads_started += len(threads)
            for j in range(20):
                exc(j)
                list(gen(10))
            asyncio.run(coros())
            gc.collect()
            for t in threads:
                t.join()
            loops += 1
    finally:
        samples, figures = n._sig_stop()
    stats = n._walker_stats()
    assert errors == []
    assert figures["hammer_signals"] > 1000, figures
    assert figures["runs"] > 1000, figures
    assert samples
    for _key, _ident, frames in samples:
        for name, file, line in frames:
            assert name and file and line >= 0
    names = {f[0] for s in samples for f in s[2]}
    assert any(name.endswith("rec") for name in names)
    with capsys.disabled():
        print(
            f"\n[{sys.version.split()[0]}] stress {loops} loops, {threads_started} threads: "
            f"{figures['runs']} SIGPROF walks ({figures['hammer_signals']} from the hammer thread; "
            f"mean {figures['walk_ns_mean']} ns in handler), "
            f"{figures['stored']} stored, {figures['empty']} not Python; "
            f"stats {stats}"
        )
