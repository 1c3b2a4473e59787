'use strict';
// Heap profiles (V8's sampling heap profiler, read into the core's `memory` profile): decoded
// by the strict receiver, checked for types, values against the truth, and frame names.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { startReceiver, spawnFixture, cpuProfiles, total, runProfiled } = require('./helpers');

const FIXTURE = path.join(__dirname, 'fixtures', 'heap.js');
// The tests that compare V8's estimates with the truth sample every 64 KiB, not at the 512 KiB
// default (options.test.js checks that): 1,600 samples in 100 MiB put 25% at ten standard
// deviations of the estimate, where 200 samples put it at three and a half.
const INTERVAL = 65536;
const SAMPLING = { PYROSCOPE_HEAP_SAMPLING_INTERVAL_BYTES: String(INTERVAL) };

const memoryProfiles = (r) => r.profiles.filter((p) => p.labels.__name__ === 'memory');
const column = (p, type) => p.sample_types.findIndex(([t]) => t === type);
// Whether a sample's leaf frame is function `fn` of fixture `file`.
const leafIs =
  (fn, file = 'heap') =>
  (s) =>
    new RegExp(`^\\./test/fixtures/${file}\\.js:${fn}:\\d+$`).test(s.frames[0].function);
const within = (got, truth, what) => {
  const ratio = got / truth;
  assert.ok(ratio > 0.75 && ratio < 1.25, `${what}: ${got} for ${truth} (ratio ${ratio.toFixed(3)})`);
};

/** The 1-based line of the first line of the fixture that contains `text`. */
function lineOf(text) {
  const lines = fs.readFileSync(FIXTURE, 'utf8').split('\n');
  const i = lines.findIndex((l) => l.includes(text));
  assert.ok(i >= 0, text);
  return { line: i + 1, column: lines[i].indexOf(text) + 1 };
}

async function runFixture(env) {
  const { res, receiver: r } = await runProfiled(['--expose-gc', 'test/fixtures/heap.js'], { ...SAMPLING, ...env });
  return { r, truth: JSON.parse(res.stdout) };
}

test('in-use heap: types, retainer on top within 25%, dropped memory not in use, frames named as CPU ones', async () => {
  const { r, truth } = await runFixture({});
  // One window (60 s): the one stop() closed, with the heap as it was then.
  const memory = memoryProfiles(r);
  assert.equal(memory.length, 1, `series: ${r.profiles.map((p) => p.labels.__name__)}`);
  const p = memory[0];
  assert.deepEqual(p.sample_types, [
    ['inuse_objects', 'count'],
    ['inuse_space', 'bytes'],
  ]);
  assert.deepEqual(p.period_type, ['space', 'bytes']);
  assert.equal(p.period, INTERVAL);
  for (const s of p.samples) assert.ok(s.values.every((v) => v > 0), `values ${s.values} at ${s.frames[0].function}`);

  // V8's estimates, taken as they are: 100 MiB in 1 KiB arrays (about 1,600 samples).
  const space = (keep) => total([p], 'inuse_space', keep);
  const objects = (keep) => total([p], 'inuse_objects', keep);
  within(space(leafIs('retainHeap')), truth.retained, 'retainHeap inuse_space');
  within(objects(leafIs('retainHeap')), truth.retainedObjects, 'retainHeap inuse_objects');
  const byLeaf = new Map();
  for (const s of p.samples) {
    const leaf = s.frames[0].function;
    byLeaf.set(leaf, (byLeaf.get(leaf) ?? 0) + s.values[column(p, 'inuse_space')]);
  }
  const top = [...byLeaf].sort((a, b) => b[1] - a[1])[0][0];
  assert.match(top, /:retainHeap:/, `top function by inuse_space: ${top}`);
  // 400 MiB allocated and dropped: at most what the young generation still held at the read.
  const churned = space(leafIs('churnHeap'));
  assert.ok(churned < 0.1 * truth.churned, `churnHeap still in use: ${churned} of ${truth.churned} allocated`);

  // Named as @pyroscope/nodejs names frames: the function's first line, file absolute.
  const retain = p.samples.find(leafIs('retainHeap')).frames[0];
  const { line } = lineOf('function retainHeap(');
  assert.equal(retain.function, `./test/fixtures/heap.js:retainHeap:${line}`);
  assert.equal(retain.file, FIXTURE);
  assert.equal(retain.line, line);
  // The same functions read the same in the CPU profile: named and anonymous.
  const anon = lineOf('(() => {');
  const anonymous = `./test/fixtures/heap.js:(anonymous:L#${anon.line}:C#${anon.column + 1}):${anon.line}`;
  const cpuFrames = cpuProfiles(r).flatMap((c) => c.samples.flatMap((s) => s.frames));
  for (const name of [`./test/fixtures/heap.js:burnAndKeep:${lineOf('function burnAndKeep(').line}`, anonymous]) {
    const heapFrame = p.samples.find((s) => s.frames[0].function === name)?.frames[0];
    assert.ok(heapFrame, `no heap sample in ${name}: ${[...byLeaf.keys()].join(', ')}`);
    const cpuFrame = cpuFrames.find((f) => f.function === name);
    assert.ok(cpuFrame, `no CPU sample in ${name}`);
    assert.deepEqual(heapFrame, cpuFrame);
  }
});

test('allocation heap (heap.mode alloc): what was allocated, dropped or not, within 25%', async () => {
  const { r, truth } = await runFixture({ HEAP_MODE: 'alloc' });
  const memory = memoryProfiles(r);
  assert.ok(memory.length >= 1, `series: ${r.profiles.map((p) => p.labels.__name__)}`);
  for (const p of memory) {
    assert.deepEqual(p.sample_types, [
      ['alloc_objects', 'count'],
      ['alloc_space', 'bytes'],
    ]);
    assert.equal(p.period, INTERVAL);
    for (const s of p.samples) assert.ok(s.values.every((v) => v > 0), `values ${s.values}`);
  }
  // Windows add up: each holds what was allocated since the read before.
  within(total(memory, 'alloc_space', leafIs('churnHeap')), truth.churned, 'churnHeap alloc_space');
  within(total(memory, 'alloc_objects', leafIs('churnHeap')), truth.churnedObjects, 'churnHeap alloc_objects');
  within(total(memory, 'alloc_space', leafIs('retainHeap')), truth.retained, 'retainHeap alloc_space');
});

test('the heap as it is at exit is sent without stop()', async () => {
  const { r, truth } = await runFixture({ HEAP_END: 'exit' });
  const memory = memoryProfiles(r);
  assert.equal(memory.length, 1);
  within(total(memory, 'inuse_space', leafIs('retainHeap')), truth.retained, 'retainHeap inuse_space at exit');
});

test('heap profiling alone: read before each window closes, nothing after stopHeapProfiling, no CPU', async () => {
  const { receiver: r } = await runProfiled(['test/fixtures/heap-only.js'], SAMPLING);
  assert.deepEqual(
    r.profiles.filter((p) => p.labels.__name__ !== 'memory').map((p) => p.labels.__name__),
    [],
    'only heap profiles',
  );
  const memory = memoryProfiles(r);
  // Three 1 s windows: a read before each closes, and the last at stopHeapProfiling.
  const retained = memory.map((p) => total([p], 'inuse_space', leafIs('retainHeap', 'heap-only'))).filter((v) => v > 0);
  assert.ok(retained.length >= 3, `windows with retainHeap: ${retained.length} of ${memory.length}`);
  // Each window has the heap as it is (the same live samples), not a sum over windows.
  assert.ok(
    retained.every((v) => v === retained[0]),
    `retainHeap per window: ${retained}`,
  );
  // About 512 samples for 32 MiB: 25% is over five standard deviations.
  assert.ok(retained[0] > 24 * 2 ** 20 && retained[0] < 40 * 2 ** 20, `retainHeap inuse_space ${retained[0]}`);
});

test("a worker's heap: sampled in its own isolate, read when it exits, beside the main thread's", async () => {
  const { res, receiver: r } = await runProfiled(['--expose-gc', 'test/fixtures/heap-worker.js'], SAMPLING);
  const memory = memoryProfiles(r);
  assert.equal(memory.length, 1);
  const kept = total(memory, 'inuse_space', leafIs('workerRetain', 'heap-worker-thread'));
  within(kept, Number(res.stdout), 'workerRetain inuse_space');
});

test('heap profiling goes on while CPU profiling is switched on and off', async () => {
  const { receiver: r } = await runProfiled(['test/fixtures/heap-switch.js']);
  // Three agents in turn (heap only, with CPU, heap only): each ends with the heap as it is.
  const memory = memoryProfiles(r);
  assert.equal(memory.length, 3, `series: ${r.profiles.map((p) => p.labels.__name__)}`);
  for (const p of memory) assert.ok(total([p], 'inuse_space', leafIs('retainHeap', 'heap-switch')) > 0);
  const cpu = cpuProfiles(r);
  const burnt = (fn) => total(cpu, 'cpu', (s) => s.frames.some((f) => f.function.includes(`:${fn}:`)));
  assert.ok(burnt('burnWithCpu') > 0, 'no CPU sample in burnWithCpu');
  assert.equal(burnt('burnWithoutCpu'), 0);
});

test("a worker's heap stands in the windows that close while its event loop is blocked", async () => {
  const r = await startReceiver();
  // 256 samples in its 16 MiB: half of it is eight standard deviations away.
  const fixture = spawnFixture(['test/fixtures/heap-busy-worker.js'], { PYROSCOPE_SERVER_ADDRESS: r.url, ...SAMPLING });
  const kept = (p) => total([p], 'inuse_space', leafIs('workerKeep', 'heap-busy-worker-thread'));
  // Once a window holds the worker's heap (read by the worker before it closed), block it.
  const end = Date.now() + 30000;
  while (!memoryProfiles(r).some((p) => kept(p) > 8 << 20) && Date.now() < end) await new Promise((res) => setTimeout(res, 50));
  fixture.child.stdin.write('block\n');
  fixture.child.stdin.end();
  assert.equal((await fixture.exited).code, 0);
  await r.close();
  const times = Object.fromEntries(fixture.lines.map((l) => l.split(' ')).map(([what, ms]) => [what, Number(ms)]));
  assert.ok(times.blocked > 0 && times.done > times.blocked, JSON.stringify(times));
  // Windows wholly inside the block: the worker read nothing in them; its last state stands.
  const inside = memoryProfiles(r).filter(
    (p) => p.time_nanos / 1e6 >= times.blocked && (p.time_nanos + p.duration_nanos) / 1e6 <= times.done,
  );
  assert.ok(inside.length >= 1, `no window inside the block: ${JSON.stringify(times)}`);
  for (const p of inside) assert.ok(kept(p) > 8 << 20, `workerKeep: ${kept(p)} bytes in a window of the block`);
});
