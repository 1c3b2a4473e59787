'use strict';
// The `wall` profile: the main thread's wall-clock time, busy or waiting in the event loop.

const test = require('node:test');
const assert = require('node:assert/strict');
const { total, has, runProfiled } = require('./helpers');

test('wall time of the main thread, running and idle, beside the CPU profile', async () => {
  const { res, receiver: r } = await runProfiled(['test/fixtures/wall.js']);
  const elapsed = Number(res.stdout);
  const wall = r.profiles.filter((p) => p.labels.__name__ === 'wall');
  assert.ok(wall.length >= 1, `series: ${r.profiles.map((p) => p.labels.__name__)}`);
  assert.deepEqual(wall[0].sample_types, [
    ['samples', 'count'],
    ['wall', 'nanoseconds'],
  ]);
  const all = total(wall, 'wall');
  // Only the main thread runs here: its wall samples add up to the time it lived
  // through (timer expiries are exact; 25% covers a busy machine).
  assert.ok(all >= 0.75 * elapsed && all <= 1.25 * elapsed, `wall ${all / 1e6} ms of ${elapsed / 1e6} ms`);
  const busy = total(wall, 'wall', has(/:busyWall:\d+$/));
  assert.ok(busy >= 200e6 && busy <= 400e6, `busyWall: ${busy / 1e6} ms of wall time for 300 ms`);
  const waiting = total(wall, 'wall', has(/epoll_wait|uv__io_poll/));
  assert.ok(waiting >= 400e6, `waiting in the event loop: ${waiting / 1e6} ms of about 700`);
});

test('the event loop waits without the labels of the callback that ran last', async () => {
  const { receiver: r } = await runProfiled(['test/fixtures/wall-labels.js']);
  const wall = r.profiles.filter((p) => p.labels.__name__ === 'wall');
  const labelled = (s) => s.labels.route === 'r1';
  const busy = total(wall, 'wall', (s) => labelled(s) && has(/:busyLabelled:\d+$/)(s));
  assert.ok(busy >= 200e6, `busyLabelled: ${busy / 1e6} ms of labelled wall time for 300 ms`);
  const waiting = has(/epoll_wait|uv__io_poll/);
  const idle = total(wall, 'wall', waiting);
  assert.ok(idle >= 400e6, `waiting in the event loop: ${idle / 1e6} ms of about 700`);
  assert.equal(total(wall, 'wall', (s) => labelled(s) && waiting(s)), 0, 'the wait carries route=r1');
});

test('wall time of a worker thread', async () => {
  const { receiver: r } = await runProfiled(['test/fixtures/wall-worker.js']);
  const wall = r.profiles.filter((p) => p.labels.__name__ === 'wall');
  const busy = total(wall, 'wall', has(/:busyWorkerWall:\d+$/));
  assert.ok(busy >= 200e6 && busy <= 400e6, `busyWorkerWall: ${busy / 1e6} ms of wall time for 300 ms`);
});
