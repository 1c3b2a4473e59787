"""The rideshare story service (Python, Flask): GET /car, /bike, /scooter on 127.0.0.1:$PORT.

REGION (us-east, eu-north, ap-south) is a static tag; `vehicle` is set per request with
`pyroscope.tag_wrapper` inside `find_nearest_vehicle`. Only eu-north busy-waits in `mutex_lock`;
only us-east's worker pool leaks memory in `do_work`. Profiling is configured as a pyroscope-io
user does it; with no server address the profiles go to the embedded default folder, and the
PYROSCOPE_* variables apply to every keyword left out. SIGTERM/SIGINT flush the last window and
exit 0.
"""

import os
import queue
import signal
import sys
import threading
import time
from itertools import repeat

import pyroscope
from flask import Flask
from werkzeug.serving import ThreadedWSGIServer

REGION = os.getenv("REGION", "us-east")
PORT = int(os.getenv("PORT", "5000"))

pyroscope.configure(
    application_name=os.getenv("PYROSCOPE_APPLICATION_NAME", "ride-sharing-app"),
    server_address=os.getenv("PYROSCOPE_SERVER_ADDRESS"),
    tags={"region": REGION},
)

stop = threading.Event()


def burn(seconds):
    """Burns CPU for about `seconds` of wall time, allocating (almost) nothing: the loop counts
    with `repeat` (range's ints above 256 are allocated), ints below 256 are CPython's cached
    objects, and the clock (one float) is read every ~100 us. So the memory profile shows the
    program's allocations, not the busy loop's."""
    end = time.perf_counter() + seconds
    x = 0x5A
    while time.perf_counter() < end:
        for _ in repeat(None, 5000):
            x ^= 0x3C
    return x


def mutex_lock(seconds):
    # A lock held too long elsewhere: spin until it "frees".
    return burn(seconds) ^ 1


def check_driver_availability(seconds):
    x = burn(seconds / 2)
    if REGION == "eu-north":
        x ^= mutex_lock(seconds * 4)
    return x


def find_nearest_vehicle(vehicle, seconds):
    with pyroscope.tag_wrapper({"vehicle": vehicle}):
        x = burn(seconds)
        return x ^ check_driver_availability(seconds)


# The leak: results kept "for later", never read, never freed.
RESULTS = []


def do_work():
    """One unit of background work: a scratch buffer in every region; in us-east it also keeps
    a copy of each job's result that nobody ever frees."""
    scratch = bytes([7]) * (16 * 1024)
    x = burn(0.002) ^ scratch[100]
    if REGION == "us-east":
        RESULTS.append(bytes([x & 0xFF]) * (32 * 1024))
    return x


def worker():
    while not stop.is_set():
        do_work()
        stop.wait(0.05)


app = Flask(__name__)


def vehicle_route(vehicle):
    def route():
        find_nearest_vehicle(vehicle, 0.010)
        return f"{vehicle} found in {REGION}\n"

    route.__name__ = vehicle
    app.add_url_rule(f"/{vehicle}", view_func=route)


for v in ("car", "bike", "scooter"):
    vehicle_route(v)


class PoolServer(ThreadedWSGIServer):
    """Werkzeug's server with four long-lived handler threads (as the Rust and C services have)
    instead of a thread per request: each thread is sampled from its first request on."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.jobs = queue.Queue()
        for i in range(4):
            threading.Thread(target=self._handle, name=f"handler-{i}", daemon=True).start()

    def process_request(self, request, client_address):
        self.jobs.put((request, client_address))

    def _handle(self):
        while True:
            request, client_address = self.jobs.get()
            try:
                self.finish_request(request, client_address)
            except Exception:
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)


def main():
    server = PoolServer("127.0.0.1", PORT, app)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    for i in range(2):
        threading.Thread(target=worker, name=f"worker-{i}", daemon=True).start()
    serving = threading.Thread(target=server.serve_forever, args=(0.1,), name="server", daemon=True)
    serving.start()
    print(f"rideshare-python: region={REGION} listening on http://127.0.0.1:{PORT}", file=sys.stderr, flush=True)
    while not stop.wait(0.5):
        pass
    server.shutdown()
    pyroscope.shutdown()  # flushes the last window
    print(f"rideshare-python: region={REGION} stopped", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
