'use strict';
// The rideshare story service (Node, express): GET /car, /bike, /scooter on 127.0.0.1:$PORT.
//
// REGION (us-east, eu-north, ap-south) is a static tag; `vehicle` is a label set per request
// with `wrapWithLabels` around the async search, so it stays on findNearestVehicle's work after
// its `await` and never reaches the requests and jobs that run meanwhile. Only eu-north
// busy-waits in mutexLock; only us-east's worker pool leaks memory on the JS heap in doWork.
// Profiling is configured as a @pyroscope/nodejs user does it, with PYROSCOPE_* for every
// option left out (PYROSCOPE_EXPORT_DIR writes files instead of uploading; with neither it nor
// PYROSCOPE_SERVER_ADDRESS, profiles go to http://localhost:4040 as @pyroscope/nodejs sends
// them). SIGTERM/SIGINT flush the last window and exit 0.

const { setTimeout: sleep } = require('node:timers/promises');
const express = require('express');
const pyroscope = require('pyroscope-profiler');

const REGION = process.env.REGION ?? 'us-east';
const PORT = Number(process.env.PORT ?? 5000);

pyroscope.init({
  appName: process.env.PYROSCOPE_APPLICATION_NAME ?? 'ride-sharing-app',
  tags: { region: REGION },
});
pyroscope.start();

// Burns CPU for about `ms` of wall time on small integers only, so the busy loop allocates
// nothing on the JS heap: the memory profile shows the program's allocations.
function burn(ms) {
  const end = performance.now() + ms;
  let x = 0x5a;
  while (performance.now() < end) {
    for (let i = 0; i < 5000; i++) x = (x * 31 + i) & 0xffffff;
  }
  return x;
}

function mutexLock(ms) {
  // A lock held too long elsewhere: spin until it "frees".
  return burn(ms) ^ 1;
}

function checkDriverAvailability(ms) {
  let x = burn(ms / 2);
  if (REGION === 'eu-north') x ^= mutexLock(ms * 4);
  return x;
}

// The search: a lookup to wait for (a stand-in for a database call), then the CPU work. It
// runs in the vehicle label's scope (see the routes), which it keeps across the await.
async function findNearestVehicle(ms) {
  await sleep(1);
  const x = burn(ms);
  return x ^ checkDriverAvailability(ms);
}

// The leak: results kept "for later", never read, never freed.
const RESULTS = [];

// One unit of background work: a scratch array in every region; in us-east it also keeps a
// copy of each job's result that nobody ever frees. 2048 and 4096 numbers are 16 and 32 KiB.
function doWork() {
  const scratch = new Array(2048).fill(7);
  const x = burn(2) ^ scratch[100];
  if (REGION === 'us-east') RESULTS.push(new Array(4096).fill(x & 0xff));
  return x;
}

const app = express();
for (const vehicle of ['car', 'bike', 'scooter']) {
  app.get(`/${vehicle}`, async (req, res) => {
    await pyroscope.wrapWithLabels({ vehicle }, async () => findNearestVehicle(10));
    res.send(`${vehicle} found in ${REGION}\n`);
  });
}

// The worker pool: two jobs a few times a second on the event loop, in the app's JS heap.
const workers = [0, 1].map(() => setInterval(doWork, 50));

const server = app.listen(PORT, '127.0.0.1', (err) => {
  if (err) {
    console.error(`rideshare-node: cannot listen on 127.0.0.1:${PORT}: ${err.message}`);
    process.exit(2);
  }
  console.error(`rideshare-node: region=${REGION} listening on http://127.0.0.1:${PORT}`);
});

let stopping = false;
function shutdown() {
  if (stopping) return;
  stopping = true;
  for (const w of workers) clearInterval(w);
  // Requests in flight finish; then the last window is sent and the process ends by itself.
  server.close(() => {
    pyroscope.stop().then(
      () => console.error(`rideshare-node: region=${REGION} stopped`),
      (e) => {
        console.error(`rideshare-node: stopping the profiler: ${e.message}`);
        process.exitCode = 1;
      },
    );
  });
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
