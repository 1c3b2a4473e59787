'use strict';
// The label slot itself, as the signal handler reads it, across await and callbacks: a second
// view of this thread's slot (native.labelSlot()) is read inside continuations and callbacks.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');

for (const k of Object.keys(process.env)) if (k.startsWith('PYROSCOPE_')) delete process.env[k];

const pyroscope = require('pyroscope-profiler');
const slot = require('../lib/native').labelSlot();

pyroscope.init({ appName: 'node-labels-slot' });
const { wrapWithLabels } = pyroscope;

const tick = () => new Promise((r) => setImmediate(r));
const timer = () => new Promise((r) => setTimeout(r, 1));

test('the slot holds the set of each request in its continuations and callbacks, 0 elsewhere', async () => {
  const wrong = [];
  const expect = (where, want) => {
    if (slot[0] !== want) wrong.push(`${where}: ${slot[0]} instead of ${want}`);
  };
  async function request(n) {
    const mine = slot[0];
    assert.notEqual(mine, 0);
    for (let i = 0; i < 10; i++) {
      await [tick, timer, () => fs.promises.stat(__filename)][i % 3]();
      expect(`request ${n} after await ${i}`, mine);
      await null;
      expect(`request ${n} after await null`, mine);
    }
    await new Promise((r) => setTimeout(() => r(expect(`request ${n} in a setTimeout callback`, mine)), 1));
    await new Promise((r) => setImmediate(() => r(expect(`request ${n} in a setImmediate callback`, mine))));
    await new Promise((r) => fs.stat(__filename, () => r(expect(`request ${n} in an fs callback`, mine))));
    await new Promise((r) => process.nextTick(() => r(expect(`request ${n} in a nextTick callback`, mine))));
    const inner = await wrapWithLabels({ inner: 'yes' }, async () => {
      const merged = slot[0];
      await tick();
      expect(`request ${n} nested, after await`, merged);
      return merged;
    });
    assert.notEqual(inner, mine);
    expect(`request ${n} after the nested call`, mine);
    await timer();
    expect(`request ${n} after the nested call and an await`, mine);
    return mine;
  }
  async function unlabelled() {
    for (let i = 0; i < 20; i++) {
      await (i % 2 ? tick() : timer());
      expect(`unlabelled after await ${i}`, 0);
      await new Promise((r) => setTimeout(() => r(expect('unlabelled in a setTimeout callback', 0)), 1));
    }
  }
  let ticks = 0;
  const interval = setInterval(() => {
    ticks++;
    expect('an unlabelled interval callback', 0);
  }, 1);
  const requests = [];
  for (let n = 0; n < 12; n++) requests.push(wrapWithLabels({ request: `q${n}` }, request, n));
  expect('the caller after starting them', 0);
  const [ids] = await Promise.all([Promise.all(requests), unlabelled()]);
  clearInterval(interval);
  assert.equal(new Set(ids).size, 12, 'each request has a set of its own');
  assert.ok(ticks > 0);
  assert.deepEqual(wrong, []);
});
