"""Fixtures: the strict loopback receiver (`pyroscope-receiver`, a Rust program) and a runner
for small Python programs, each profiling test in its own process."""

import gzip
import json
import os
import pathlib
import select
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures" / "peer-uploads"

# Tests that read Python frames or context labels off samples need the CPython walker. Until it
# is registered they are skipped; set to True (or PYROSCOPE_TEST_WALKER=1) once it is, so that
# they fail instead of skipping.


def receiver_binary():
    path = os.environ.get("PYROSCOPE_RECEIVER") or str(ROOT / "target" / "debug" / "pyroscope-receiver")
    if not os.path.exists(path):
        subprocess.run(
            ["cargo", "build", "-q", "-p", "pyroscope-receiver", "--bin", "pyroscope-receiver"], cwd=ROOT, check=True
        )
    return path


class Receiver:
    """A running `pyroscope-receiver`: `url`, and the JSON lines it wrote so far."""

    def __init__(self, mode=None):
        args = [receiver_binary()] + (["--mode", mode] if mode else [])
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], 10)
        if not ready:
            self.proc.kill()
            raise RuntimeError("pyroscope-receiver did not print its URL within 10 s")
        self.url = self.proc.stdout.readline().strip()
        assert self.url.startswith("http://127.0.0.1:"), self.url
        self.lines = []
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(json.loads(line))
                self.cond.notify_all()

    def profiles(self):
        with self.cond:
            return [l for l in self.lines if "endpoint" in l]

    def rejected(self):
        with self.cond:
            return [l for l in self.lines if "rejected" in l]

    def wait_for(self, predicate, timeout=10.0, what="a matching profile"):
        """The first profile `predicate` accepts, polled until `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for l in self.lines:
                    if "endpoint" in l and predicate(l):
                        return l
                left = deadline - time.monotonic()
                if left <= 0:
                    got = [
                        (l.get("labels", {}).get("__name__"), len(l.get("samples", []))) if "endpoint" in l else l
                        for l in self.lines
                    ]
                    raise AssertionError(f"no {what} within {timeout} s; received: {got}")
                self.cond.wait(left)

    def close(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def drain(self):
        """Stops the receiver once it has printed all it got, and reads it all: `profiles()` is
        then complete (for sums over every window a finished program sent)."""
        self.close()
        self.reader.join(timeout=10)
        assert not self.reader.is_alive(), "the receiver's output was not read to its end"


@pytest.fixture
def receiver():
    made = []

    def start(mode=None):
        r = Receiver(mode)
        made.append(r)
        return r

    yield start
    for r in made:
        r.close()


@pytest.fixture
def closed_port():
    """A 127.0.0.1 port nothing listens on (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Run:
    def __init__(self, proc, elapsed):
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.elapsed = elapsed
        self.ended = time.monotonic()


@pytest.fixture
def run_py(tmp_path):
    """Runs `code` (dedented) as a script in a fresh interpreter; returns its exit code,
    output and wall time. `args` go before the script (e.g. `-m pyroscope run`)."""

    def run(code, env=None, args=(), argv=(), timeout=60, name="prog.py"):
        script = tmp_path / name
        script.write_text(textwrap.dedent(code))
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("PYROSCOPE_")}
        full_env["PYTHONDONTWRITEBYTECODE"] = "1"
        full_env.update(env or {})
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, *args, str(script), *argv],
            env=full_env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Run(proc, time.monotonic() - start)

    return run


def cpu_samples(profile, **labels):
    """The samples of a process_cpu profile whose labels include `labels`."""
    return [s for s in profile["samples"] if all(s["labels"].get(k) == v for k, v in labels.items())]


def functions(sample):
    return [f["function"] for f in sample["frames"]]


# A minimal protobuf reader for the recorded pyroscope-io upload (series labels only).
def _varint(b, i):
    r = s = 0
    while True:
        x = b[i]
        i += 1
        r |= (x & 0x7F) << s
        s += 7
        if x < 0x80:
            return r, i


def _fields(b):
    i = 0
    while i < len(b):
        k, i = _varint(b, i)
        f, t = k >> 3, k & 7
        if t == 0:
            v, i = _varint(b, i)
        elif t == 2:
            n, i = _varint(b, i)
            v, i = b[i : i + n], i + n
        elif t == 1:
            v, i = b[i : i + 8], i + 8
        elif t == 5:
            v, i = b[i : i + 4], i + 4
        else:
            raise ValueError(f"wire type {t}")
        yield f, v


def peer_series_labels():
    """{__name__: {label: value}} of the series in pyroscope-io 1.4.0's recorded push."""
    body = gzip.decompress((FIXTURES / "pyroscope-io-1.4.0-push.bin").read_bytes())
    out = {}
    for f, series in _fields(body):
        if f != 1:
            continue
        labels = {}
        for g, v in _fields(series):
            if g == 1:
                pair = dict(_fields(v))
                labels[pair[1].decode()] = pair.get(2, b"").decode()
        out[labels["__name__"]] = labels
    return out


def needs_walker(test):
    """Marks a test that needs Python frames and context labels on samples. The walker is part
    of the package on every supported CPython: these tests run (and fail) without it."""
    return test
