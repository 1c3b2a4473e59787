"""tag_wrapper on the context variable (what the CPython walker reads), checked from Python:
the value each task sees is its own, across awaits, nested and decorated."""

import asyncio
import contextvars
import threading

import pyroscope
import pytest
from pyroscope import _native


@pytest.fixture
def context_mode():
    _native.force_context_labels(True)
    yield
    _native.force_context_labels(False)


def current():
    v = pyroscope._LABELS.get()
    if v is None:
        return []
    key_bytes, holder = v
    assert key_bytes == holder.key.to_bytes(8, "little") and holder.key != 0
    return holder.labels()


def test_nested_wrappers_merge_and_reset(context_mode):
    assert current() == []
    with pyroscope.tag_wrapper({"endpoint": "/a", "vehicle": "car"}):
        with pyroscope.tag_wrapper({"vehicle": "bike"}):
            assert current() == [("endpoint", "/a"), ("vehicle", "bike")]
        assert current() == [("endpoint", "/a"), ("vehicle", "car")]
    assert current() == []
    assert _native.thread_tags() == []  # the thread slot is left alone


def test_same_labels_reuse_one_entry_while_alive(context_mode):
    with pyroscope.tag_wrapper({"k": "v"}):
        a = pyroscope._LABELS.get()[1].key
    with pyroscope.tag_wrapper({"k": "v"}):
        b = pyroscope._LABELS.get()[1].key
        with pyroscope.tag_wrapper({"k": "v"}):
            c = pyroscope._LABELS.get()[1].key
    # One entry per distinct label set, nested or not, while it lives.
    assert a == b == c


def test_24_tasks_keep_their_own_labels_across_awaits(context_mode):
    wrapper = pyroscope.tag_wrapper({"shared": "yes"})  # one instance entered by every task
    seen = {}

    @pyroscope.tag_wrapper({"phase": "decorated"})
    async def decorated(i):
        for _ in range(3):
            await asyncio.sleep(0)
            assert current() == [("phase", "decorated"), ("shared", "yes"), ("task", str(i))]

    async def task(i):
        with pyroscope.tag_wrapper({"task": str(i)}):
            for _step in range(5):
                await asyncio.sleep(0)
                seen.setdefault(i, set()).add(tuple(current()))
                with wrapper:
                    await asyncio.sleep(0)
                    await decorated(i)
                    assert current() == [("shared", "yes"), ("task", str(i))]
                assert current() == [("task", str(i))]
        assert current() == []

    async def main():
        await asyncio.gather(*(task(i) for i in range(24)))
        assert current() == []

    asyncio.run(main())
    assert seen == {i: {(("task", str(i)),)} for i in range(24)}


def test_threads_do_not_inherit_and_reset_from_another_context_falls_back(context_mode):
    got = []
    with pyroscope.tag_wrapper({"outer": "1"}):
        t = threading.Thread(target=lambda: got.append(current()))
        t.start()
        t.join()
    assert got == [[]]

    w = pyroscope.tag_wrapper({"k": "v"})
    ctx = contextvars.copy_context()
    ctx.run(w.__enter__)
    # Exited in this context, not the one entered: no ValueError, the previous value is back.
    w.__exit__(None, None, None)
    assert current() == []


def test_holders_release_registry_entries(context_mode):
    before = _native.registry_len()
    for i in range(100):
        with pyroscope.tag_wrapper({"request": str(i)}):
            pass
    # Entries stay for the grace period after their last holder, then go.
    assert _native.registry_len() >= before
    assert _native.GRACE_SECONDS >= 1
