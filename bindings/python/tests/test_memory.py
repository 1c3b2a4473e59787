"""Memory profiles of Python programs: the OBJ/MEM allocator wrappers and the core's sampling.

Each test runs a small program in its own process (the wrappers stay for the life of a process)
that allocates a known number of bytes in known objects, with profiles written to a folder, then
decodes the `memory` profiles and compares them with the truth (`sys.getsizeof` of the objects,
which for these types is exactly what the allocator was asked for).

Accuracy: with mean sampling interval R, an allocation of s bytes is sampled with probability
p = 1 - exp(-s/R) and weighted s/p, so N such allocations are estimated with a relative standard
deviation of sqrt((1-p) / (N p)). `expected_error` computes it for each program, and every test
asserts its 10% tolerance is at least 4.5 of those deviations before comparing (the chance of a
false failure is then below 1e-5 per comparison): load on the machine changes timing, never the
byte counts.

Python frame names on the samples (`leak_worker`, `churn_worker`) need the CPython walker to be
registered with the core (it is, on every supported CPython).
"""

import gzip
import math
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

TOLERANCE = 0.10


# --- a minimal pprof decoder (protobuf wire format, only the fields used here) ---------------


def _varint(b, i):
    shift = result = 0
    while True:
        c = b[i]
        i += 1
        result |= (c & 0x7F) << shift
        if c < 0x80:
            return result, i
        shift += 7


def _fields(b):
    i = 0
    while i < len(b):
        key, i = _varint(b, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _varint(b, i)
        elif wire == 2:
            n, i = _varint(b, i)
            v, i = b[i : i + n], i + n
        elif wire == 1:
            v, i = int.from_bytes(b[i : i + 8], "little"), i + 8
        elif wire == 5:
            v, i = int.from_bytes(b[i : i + 4], "little"), i + 4
        else:
            raise ValueError(f"wire type {wire}")
        yield num, wire, v


def _packed(wire, v):
    if wire == 0:
        return [v]
    out, i = [], 0
    while i < len(v):
        x, i = _varint(v, i)
        out.append(x)
    return out


def decode(path):
    """A profile as {types: [name], samples: [(values, [function names leaf first], {label: value})]}."""
    raw = gzip.decompress(pathlib.Path(path).read_bytes())
    strings, types, samples, locations, functions = [], [], [], {}, {}
    for num, _wire, v in _fields(raw):
        if num == 6:
            strings.append(v.decode())
        elif num == 1:
            types.append(dict((n, x) for n, _, x in _fields(v)))
        elif num == 2:
            locs, vals, labels = [], [], []
            for n, w, x in _fields(v):
                if n == 1:
                    locs += _packed(w, x)
                elif n == 2:
                    vals += _packed(w, x)
                elif n == 3:
                    labels.append(dict((k, y) for k, _, y in _fields(x)))
            samples.append((locs, vals, labels))
        elif num == 4:
            loc_id, fids = 0, []
            for n, _, x in _fields(v):
                if n == 1:
                    loc_id = x
                elif n == 4:
                    fids += [y for k, _, y in _fields(x) if k == 1]
            locations[loc_id] = fids
        elif num == 5:
            f = dict((n, x) for n, _, x in _fields(v))
            functions[f.get(1, 0)] = f.get(2, 0)
    out = []
    for locs, vals, labels in samples:
        names = [strings[functions[f]] for loc in locs for f in locations.get(loc, [])]
        out.append((vals, names, {strings[l.get(1, 0)]: strings[l.get(2, 0)] for l in labels}))
    return {"types": [strings[t.get(1, 0)] for t in types], "samples": out}


def memory_profiles(folder):
    """The memory profiles in `folder`, oldest window first."""
    files = sorted(pathlib.Path(folder).glob("*.memory.*.pb.gz"), key=lambda p: int(p.name.split(".")[-4]))
    return [decode(f) for f in files]


def total(profile, kind, function=None):
    """Sum of sample type `kind`, over samples whose stack holds `function` (all if None)."""
    i = profile["types"].index(kind)
    return sum(vals[i] for vals, names, _ in profile["samples"] if function is None or function in names)


def expected_error(allocations, rate):
    """Relative standard deviation of the estimated total of `allocations` [(size, count)]."""
    var = sum(n * s * s * math.exp(-s / rate) / (1 - math.exp(-s / rate)) for s, n in allocations)
    return math.sqrt(var) / sum(n * s for s, n in allocations)


def check_tolerance(allocations, rate):
    sigma = expected_error(allocations, rate)
    assert TOLERANCE >= 4.5 * sigma, f"the program is too small for a 10% check: sigma {sigma:.2%}"
    return sigma


def assert_none_lost(out):
    """The ring kept every allocation sample (else the totals are biased down)."""
    line = [l for l in out.splitlines() if l.startswith("alloc_samples_lost")][-1]
    assert line.split()[1] in ("0", "None"), f"{line}: the comparison would be biased"


def run(tmp_path, body, env=None, timeout=240):
    """Runs `body` after `configure(...)` in a fresh interpreter (from tmp_path, so the installed
    package is imported); returns the profile folder and the program's stdout (its `print`s)."""
    folder = tmp_path / "profiles"
    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent(body))
    e = {k: v for k, v in os.environ.items() if not k.startswith("PYROSCOPE_")}
    e.update(PYROSCOPE_EXPORT_DIR=str(folder), PYROSCOPE_APPLICATION_NAME="memtest")
    e.update(env or {})
    p = subprocess.run(
        [sys.executable, str(prog)], cwd=tmp_path, env=e, capture_output=True, text=True, timeout=timeout
    )
    assert p.returncode == 0, f"program failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return folder, p.stdout


# The workloads. Sizes are what the allocator is asked for: bytes(n) is one calloc of 33 + n
# bytes (sys.getsizeof), [0] * n one 56-byte object plus n * 8 bytes of items from the MEM
# domain, a bytearray grown by `+=` a 56-byte object plus its buffer, resized by realloc.
#
# Every step also does some work (a SHA-256 of 64 KiB, ~90 us): a loop that does nothing but
# allocate 64 KiB objects makes 100,000 samples a second at the default rate, more than the
# ring holds between two passes of the collector, and dropped samples bias the totals down
# (counted in the agent's `alloc_samples_lost`, which the program prints: it must be 0 here).
PROGRAM = """
import hashlib, os, sys, time, pathlib
import pyroscope
from pyroscope import _native

BUFFER = bytes(64 * 1024)

def work():
    return hashlib.sha256(BUFFER).digest()

RATE = int(os.environ["RATE"])
pyroscope.configure(application_name="memtest", upload_interval=3600, mem_heap_sample_size=RATE,
                    mem_enable_mem_domain=os.environ.get("MEM_DOMAIN", "1") == "1")

def churn_worker(n, size):
    total = 0
    for _ in range(n):
        b = bytes(size)
        total += sys.getsizeof(b)
        del b
        work()
    return total

def leak_worker(n_bytes, n_lists, n_grown):
    kept = []
    for _ in range(n_bytes):
        kept.append(bytes(2048 - 33))
        work()
    for _ in range(n_lists):
        kept.append([0] * 1018)
        work()
    chunk = b"x" * 512
    for _ in range(n_grown):
        b = bytearray()
        for _ in range(16):
            b += chunk
            work()
        kept.append(b)
    return kept

def window_written(before):
    # The barrier: the closed window's memory file appears in the folder.
    folder = pathlib.Path(os.environ["PYROSCOPE_EXPORT_DIR"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if len(list(folder.glob("*.memory.*.pb.gz"))) > before:
            return
        time.sleep(0.01)
    raise SystemExit("no memory profile written within 60 s")

def lost():
    # Allocation samples the ring had no room for (None if the agent does not say).
    print("alloc_samples_lost", (_native.stats() or {}).get("alloc_samples_lost"))
"""


CHURN = dict(rate=512 * 1024, size=64 * 1024, n=20_000)


@pytest.fixture(scope="module")
def churned(tmp_path_factory):
    """1.3 GB churned through 20,000 bytes objects of 64 KiB at the default 512 KiB: the
    profiles and the true byte count."""
    c = CHURN
    folder, out = run(
        tmp_path_factory.mktemp("churn"),
        PROGRAM
        + f"""
truth = churn_worker({c["n"]}, {c["size"]} - 33)
_native.flush()
window_written(0)
lost()
pyroscope.shutdown()
print(truth)
""",
        env={"RATE": str(c["rate"])},
    )
    truth = int(out.split()[-1])
    assert truth == c["size"] * c["n"]
    assert_none_lost(out)
    profiles = memory_profiles(folder)
    assert profiles, "no memory profile"
    return profiles, truth


def test_alloc_space_at_default_rate_within_10_percent(churned):
    profiles, truth = churned
    sigma = check_tolerance([(CHURN["size"], CHURN["n"])], CHURN["rate"])
    assert profiles[0]["types"] == ["alloc_objects", "alloc_space", "inuse_objects", "inuse_space"]
    alloc = sum(total(p, "alloc_space") for p in profiles)
    objects = sum(total(p, "alloc_objects") for p in profiles)
    print(f"alloc_space {alloc} vs {truth} ({alloc / truth - 1:+.2%}, sigma {sigma:.2%}), alloc_objects {objects}")
    # Everything else the interpreter allocated meanwhile is well under 1% of this.
    assert abs(alloc - truth) <= TOLERANCE * truth
    # The interpreter's other (small, rarely sampled, heavily weighted) objects only add.
    assert objects >= (1 - TOLERANCE) * CHURN["n"]
    # Churned: nothing of it is in use at the end.
    assert total(profiles[-1], "inuse_space") <= 0.01 * truth


def test_alloc_space_is_in_the_allocating_python_function(churned):
    profiles, truth = churned
    inside = sum(total(p, "alloc_space", "churn_worker") for p in profiles)
    assert abs(inside - truth) <= TOLERANCE * truth, f"churn_worker: {inside} of {truth}"


LEAK = dict(rate=32 * 1024, n_bytes=20_000, n_lists=5_000, n_grown=1_000)


def leak_allocations():
    """(size, count) of the blocks leak_worker keeps (the bytearray buffers end at 16 * 512 + 1
    bytes or more, depending on CPython's growth policy: the smallest is used for the bound)."""
    return [(2048, LEAK["n_bytes"]), (56, LEAK["n_lists"]), (8144, LEAK["n_lists"]), (8193, LEAK["n_grown"])]


@pytest.fixture(scope="module", params=["pymalloc", "malloc"])
def leaked(request, tmp_path_factory):
    """A 100 MB leak kept across a window, then dropped: the profiles and the live bytes. Under
    pymalloc (the default) frees of sampled blocks come back through the RAW domain; with
    PYTHONMALLOC=malloc the OBJ and MEM wrappers check every free themselves."""
    folder, out = run(
        tmp_path_factory.mktemp("leak"),
        PROGRAM
        + f"""
print("routed", _native._memory_routed())
kept = leak_worker({LEAK["n_bytes"]}, {LEAK["n_lists"]}, {LEAK["n_grown"]})
live = sum(sys.getsizeof(o) for o in kept)
_native.flush()
window_written(0)
lost()
del kept
churn_worker(100, 1000)
pyroscope.shutdown()
print(live)
""",
        env={"RATE": str(LEAK["rate"]), "PYTHONMALLOC": request.param},
    )
    routed = "(True, True)" if request.param == "pymalloc" else "(False, False)"
    assert f"routed {routed}" in out
    profiles = memory_profiles(folder)
    assert len(profiles) >= 2, f"{len(profiles)} memory windows"
    assert_none_lost(out)
    return profiles, int(out.split()[-1])


def test_inuse_space_tracks_a_leak_and_its_release(leaked):
    """inuse_space within 10% of the live bytes while kept, then close to zero; alloc_space counts
    every block (the bytearrays' reallocations too)."""
    profiles, live = leaked
    sigma = check_tolerance(leak_allocations(), LEAK["rate"])
    first, last = profiles[0], profiles[-1]
    inuse = total(first, "inuse_space")
    print(
        f"inuse_space {inuse} vs {live} ({inuse / live - 1:+.2%}, sigma {sigma:.2%}); "
        f"after release {total(last, 'inuse_space')}"
    )
    # The leak plus what the interpreter keeps (a few hundred KiB at most).
    assert abs(inuse - live) <= TOLERANCE * live
    assert total(last, "inuse_space") <= 0.02 * live, "the released objects still count as in use"
    # Allocated: at least what was kept (each bytearray also went through smaller buffers).
    assert total(first, "alloc_space") >= (1 - TOLERANCE) * live


def test_inuse_space_is_in_the_leaking_python_function(leaked):
    profiles, live = leaked
    inside = total(profiles[0], "inuse_space", "leak_worker")
    assert abs(inside - live) <= TOLERANCE * live, f"leak_worker: {inside} of {live} in use"


def test_sampled_blocks_keep_pymalloc_block_count(tmp_path):
    """Sampled small objects are taken as pymalloc's large blocks, not behind its back: after a
    few thousand sampled and freed, `sys.getallocatedblocks()` is where it was."""
    _, out = run(
        tmp_path,
        """
import gc, sys
import pyroscope
from pyroscope import _native
pyroscope.configure(application_name="memtest", upload_interval=3600, mem_heap_sample_size=64)
print("routed", _native._memory_routed())
def churn():
    for _ in range(20):
        kept = [(i, str(i)) for i in range(1000)]
        del kept
churn()
gc.collect()
before = sys.getallocatedblocks()
churn()
gc.collect()
after = sys.getallocatedblocks()
print("sample groups", (_native.stats() or {}).get("alloc_sample_groups"))
pyroscope.shutdown()
print("blocks", before, after)
""",
    )
    assert "routed (True, True)" in out
    before, after = (int(x) for x in out.split("blocks")[-1].split())
    assert abs(after - before) < 200, f"allocated blocks {before} -> {after}"


def test_mem_domain_off_leaves_out_list_storage(tmp_path):
    """mem_enable_mem_domain=False: list items (PyMem_Malloc) are not seen, objects still are."""
    rate = 16 * 1024
    n = 5_000
    # With the MEM domain the items alone would be 5,000 * 8,144 bytes = 40.7 MB.
    folder, out = run(
        tmp_path,
        PROGRAM
        + f"""
kept = leak_worker(0, {n}, 0)
print(_native._memory_installed())
pyroscope.shutdown()
""",
        env={"RATE": str(rate), "MEM_DOMAIN": "0"},
    )
    assert "(True, False)" in out
    inuse = sum(total(p, "inuse_space") for p in memory_profiles(folder)[-1:])
    # What is left: the 5,000 list objects (280 kB, each sampled with p = 0.3%) and the
    # interpreter's own: far below the 40.7 MB of items.
    assert inuse < 8144 * n * 0.05, f"inuse_space {inuse}: list storage counted without the MEM domain"


def test_no_memory_profiles_when_disabled(tmp_path):
    folder, out = run(
        tmp_path,
        """
import pyroscope
from pyroscope import _native
pyroscope.configure(application_name="memtest", mem_enabled=False)
kept = [bytes(10_000) for _ in range(10_000)]
print(_native._memory_installed())
pyroscope.shutdown()
""",
    )
    assert "(False, False)" in out
    assert memory_profiles(folder) == []
