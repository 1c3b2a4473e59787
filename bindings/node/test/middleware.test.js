'use strict';
// Pull mode with real Express and Fastify servers: /debug/pprof/profile?seconds=N answers a
// gzipped pprof of the next N seconds' CPU samples, taken while the uploads go on;
// /debug/pprof/heap answers the heap as it is (in-use memory); everything else goes on to the
// app.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const express = require('express');
const Fastify = require('fastify');
const { startReceiver, run, decodePprof, total, cpuWithin, has } = require('./helpers');

for (const k of Object.keys(process.env)) if (k.startsWith('PYROSCOPE_')) delete process.env[k];
const pyroscope = require('pyroscope-profiler').default;

function burnForCapture(ms) {
  const end = Date.now() + ms;
  let x = 0;
  while (Date.now() < end) for (let i = 0; i < 1000; i++) x += Math.sqrt(i);
  return x;
}

/** Keeps the event loop mostly busy in burnForCapture (labelled route=capture) until stopped. */
function burning() {
  const timer = setInterval(() => pyroscope.wrapWithLabels({ route: 'capture' }, burnForCapture, 15), 20);
  return () => clearInterval(timer);
}

async function get(base, url, init) {
  const res = await fetch(new URL(url, base), init);
  return { status: res.status, type: res.headers.get('content-type'), body: Buffer.from(await res.arrayBuffer()) };
}

const captured = has(/^\.\/test\/middleware\.test\.js:burnForCapture:\d+$/);

/** Checks a served CPU profile: gzipped, decodes, lasted `seconds`, has the labelled burn. */
function checkProfile(body, seconds) {
  assert.deepEqual([...body.subarray(0, 2)], [0x1f, 0x8b], 'not gzipped');
  const p = decodePprof(body);
  assert.deepEqual(p.sample_types, [['samples', 'count'], ['cpu', 'nanoseconds']]);
  // Ended by the collector's first pass after the N seconds: later by what a busy machine delays it.
  assert.ok(p.duration_nanos >= seconds * 1e9 && p.duration_nanos < (seconds + 3) * 1e9, `lasted ${p.duration_nanos} ns`);
  const ns = total([p], 'cpu', captured);
  assert.ok(ns > 0, 'no burnForCapture in the capture');
  assert.equal(total([p], 'cpu', (s) => captured(s) && s.labels.route === 'capture'), ns, 'a sample lost its label');
  return p;
}

// Kept alive while the heap is read: a known retainer on top of the in-use profile.
let retained = null;
function retainForHeap() {
  retained = [];
  for (let i = 0; i < 20000; i++) retained.push({ i, pad: new Array(64).fill(i) });
}

/** Checks a served heap profile: gzipped, in-use types, the retainer in it. */
function checkHeap(body) {
  assert.deepEqual([...body.subarray(0, 2)], [0x1f, 0x8b], 'not gzipped');
  const p = decodePprof(body);
  assert.deepEqual(p.sample_types, [['inuse_objects', 'count'], ['inuse_space', 'bytes']]);
  const bytes = total([p], 'inuse_space', has(/:retainForHeap:\d+$/));
  assert.ok(bytes > 1 << 20, `retainForHeap holds ${bytes} bytes in the served heap`);
}

let receiver;
test.before(async () => {
  receiver = await startReceiver();
  pyroscope.init({ appName: 'pull', serverAddress: receiver.url, flushIntervalMs: 1000 });
});
test.after(async () => {
  await pyroscope.stop();
  await receiver.close();
});

test('express: profile, heap, pass-through, bad seconds, and pull-only profiling before start()', async () => {
  const app = express();
  app.use(pyroscope.expressMiddleware());
  app.get('/hello', (req, res) => res.send('hello'));
  const server = app.listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  const base = `http://127.0.0.1:${server.address().port}`;
  try {
    // Before start(): pull-only profiling, which start() replaces.
    const before = await get(base, '/debug/pprof/profile?seconds=0');
    assert.equal(before.status, 200, before.body.toString());
    assert.deepEqual(decodePprof(before.body).sample_types, [['samples', 'count'], ['cpu', 'nanoseconds']]);
    pyroscope.start();

    assert.deepEqual([(await get(base, '/hello')).status, (await get(base, '/hello')).body.toString()], [200, 'hello']);
    assert.equal((await get(base, '/debug/pprof/profile', { method: 'POST' })).status, 404, 'POST reached the profiler');
    assert.equal((await get(base, '/debug/pprof/profiles')).status, 404);
    retainForHeap();
    const heap = await get(base, '/debug/pprof/heap');
    assert.equal(heap.status, 200, heap.body.toString());
    checkHeap(heap.body);
    for (const bad of ['abc', '-1', '3601', 'Infinity']) {
      const r = await get(base, `/debug/pprof/profile?seconds=${bad}`);
      assert.equal(r.status, 400, bad);
      assert.match(r.body.toString(), /seconds must be a number from 0 to 3600/);
    }

    const stop = burning();
    const asked = Date.now();
    const res = await get(base, '/debug/pprof/profile?seconds=3');
    const answered = Date.now();
    stop();
    assert.equal(res.status, 200, res.body.toString());
    assert.equal(res.type, 'application/octet-stream');
    checkProfile(res.body, 3);
    // The continuous uploads went on meanwhile: a window that closed during the capture (by its
    // own end time) with the captured work in it arrives (waited for: at most 10 s).
    const closedDuring = (p) => {
      const end = (p.time_nanos + p.duration_nanos) / 1e6;
      return end > asked && end < answered && total([p], 'cpu', captured) > 0;
    };
    const deadline = Date.now() + 10000;
    while (!receiver.profiles.some(closedDuring) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.ok(receiver.profiles.some(closedDuring), 'no upload of a window that closed during the capture, with its work');

    // Once, the same bytes through go tool pprof.
    assert.equal(spawnSync('go', ['version']).status, 0, 'go not found: the cross-check needs go tool pprof');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pyroscope-go-'));
    fs.writeFileSync(path.join(dir, 'cpu.pb.gz'), res.body);
    const raw = spawnSync('go', ['tool', 'pprof', '-raw', path.join(dir, 'cpu.pb.gz')], { encoding: 'utf8', timeout: 60000 });
    fs.rmSync(dir, { recursive: true, force: true });
    assert.equal(raw.status, 0, raw.stderr);
    assert.match(raw.stdout, /PeriodType: cpu nanoseconds/);
    assert.match(raw.stdout, /samples\/count cpu\/nanoseconds/);
    assert.match(raw.stdout, /\.\/test\/middleware\.test\.js:burnForCapture:\d+/);
    assert.match(raw.stdout, /route:\[capture\]/);
  } finally {
    await new Promise((r) => server.close(r));
  }
});

test('fastify: profile (two at once), heap, and its own routes', async () => {
  pyroscope.start();
  const app = Fastify();
  await app.register(pyroscope.fastifyMiddleware());
  app.get('/hello', async () => 'hello');
  const base = await app.listen({ port: 0, host: '127.0.0.1' });
  try {
    assert.equal((await get(base, '/hello')).body.toString(), 'hello');
    assert.equal((await get(base, '/nothing')).status, 404);
    const heap = await get(base, '/debug/pprof/heap');
    assert.equal(heap.status, 200, heap.body.toString());
    checkHeap(heap.body);
    assert.equal((await get(base, '/debug/pprof/profile?seconds=x')).status, 400);
    const stop = burning();
    const both = await Promise.all([get(base, '/debug/pprof/profile?seconds=1'), get(base, '/debug/pprof/profile?seconds=1')]);
    stop();
    for (const res of both) {
      assert.equal(res.status, 200, res.body.toString());
      assert.equal(res.type, 'application/octet-stream');
      checkProfile(res.body, 1);
    }
  } finally {
    await app.close();
  }
});

test('pull mode without start(): the routes profile on their own and nothing is uploaded', async () => {
  const r = await startReceiver();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pyroscope-pull-only-'));
  try {
    const res = await run(['test/fixtures/pull-only.js'], { PYROSCOPE_SERVER_ADDRESS: r.url, OUT_DIR: dir });
    await r.close();
    assert.equal(res.code, 0, res.stderr);
    const out = JSON.parse(res.stdout);
    assert.equal(out.beforeInit[0], 503);
    assert.match(out.beforeInit[1], /call init\(\) first/);
    assert.equal(out.runningAfterInit, false, 'init() alone started profiling');
    assert.deepEqual(out.statuses, [200, 200, 200, 200]);
    const p = decodePprof(fs.readFileSync(path.join(dir, 'profile.pb.gz')));
    const pulled = has(/^\.\/test\/fixtures\/pull-only\.js:burnPulled:\d+$/);
    const ns = total([p], 'cpu', pulled);
    // What burnPulled burnt while the app waited for the capture; a few of its 15 ms runs may
    // fall just before the route began or after it ended, so less is allowed than elsewhere;
    // more, as elsewhere, by the sampling's own error.
    cpuWithin('burnPulled in a 2 s capture', ns, out.burntNs, 0.7, 1.1);
    assert.equal(total([p], 'cpu', (s) => pulled(s) && s.labels.route === 'pull'), ns, 'a sample lost its label');
    const heap = decodePprof(fs.readFileSync(path.join(dir, 'heap.pb.gz')));
    assert.deepEqual(heap.sample_types, [['inuse_objects', 'count'], ['inuse_space', 'bytes']]);
    const again = decodePprof(fs.readFileSync(path.join(dir, 'after-stop.pb.gz')));
    assert.ok(total([again], 'cpu', pulled) > 0, 'no CPU samples in a capture after stopCpuProfiling()');
    const bytes = total([heap], 'inuse_space', has(/:retainPulled:\d+$/));
    assert.ok(bytes > 1 << 20, `retainPulled holds ${bytes} bytes in the served heap`);
    // Windows closed all along (1 s each), and none of them went anywhere.
    assert.ok(out.stats.windows >= 2, `windows closed: ${out.stats.windows}`);
    assert.equal(out.stats.uploadsSent, 0);
    assert.deepEqual([r.profiles.length, r.rejected.length], [0, 0], 'a pull-only process uploaded');
    assert.equal(out.runningAfterStop, false);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a ninth capture at once gets 429; stop() ends the eight with what they have', async () => {
  pyroscope.start();
  const app = express();
  // The middleware asks for a capture before its first await: once it has seen a request, that
  // capture is under way.
  let begun = 0;
  app.use((req, res, next) => {
    const seen = pyroscope.expressMiddleware();
    seen(req, res, next);
    begun++;
  });
  const server = app.listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  const base = `http://127.0.0.1:${server.address().port}`;
  try {
    const long = Array.from({ length: 8 }, () => get(base, '/debug/pprof/profile?seconds=3600'));
    for (let i = 0; i < 1000 && begun < 8; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(begun, 8, 'the eight captures did not all reach the server');
    const ninth = await get(base, '/debug/pprof/profile?seconds=0');
    assert.equal(ninth.status, 429, ninth.body.toString());
    assert.match(ninth.body.toString(), /too many CPU captures/);
    await pyroscope.stop();
    for (const res of await Promise.all(long)) {
      assert.equal(res.status, 200, res.body.toString());
      assert.ok(decodePprof(res.body).duration_nanos < 3600e9);
    }
  } finally {
    await new Promise((r) => server.close(r));
  }
});
