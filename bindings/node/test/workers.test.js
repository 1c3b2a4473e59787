'use strict';
// Worker threads started after start() are sampled with named frames, though they never load
// the package themselves.

const test = require('node:test');
const assert = require('node:assert/strict');
const { startReceiver, run, cpuProfiles, total, has } = require('./helpers');

test('workers that never load the package get named JavaScript frames', async () => {
  const r = await startReceiver();
  const res = await run(['test/fixtures/workers.js'], { PYROSCOPE_SERVER_ADDRESS: r.url });
  await r.close();
  assert.equal(res.code, 0, res.stderr);
  assert.equal(res.stdout, '[true,true]\n');
  const cpu = cpuProfiles(r);
  for (const fn of ['workerAlpha', 'workerBeta']) {
    const ns = total(cpu, 'cpu', has(new RegExp(`^\\./test/fixtures/plain-worker\\.js:${fn}:\\d+$`)));
    // 300 ms of the worker's own CPU time in the function (at /proc's 10 ms resolution).
    assert.ok(ns >= 240e6 && ns <= 380e6, `${fn}: ${ns / 1e6} ms named of 300`);
  }
});
