'use strict';
// A process killed by SIGTERM without a handler of its own sends its last window and still
// ends by that signal.

const test = require('node:test');
const assert = require('node:assert/strict');
const { startReceiver, spawnFixture, cpuProfiles, total, has } = require('./helpers');

test('SIGTERM: the last window is sent and the process dies by the signal', async () => {
  const r = await startReceiver();
  const fixture = spawnFixture(['test/fixtures/sigterm.js'], { PYROSCOPE_SERVER_ADDRESS: r.url });
  // Once it has burnt 300 ms of CPU time (the profile must hold samples), kill it.
  assert.equal(await fixture.line(/^burnt$/), 'burnt', 'the fixture ended before it burnt 300 ms');
  fixture.child.kill('SIGTERM');
  const { code, signal } = await fixture.exited;
  await r.close();
  assert.equal(code, null);
  assert.equal(signal, 'SIGTERM');
  const cpu = cpuProfiles(r);
  assert.ok(cpu.length >= 1, 'no profile sent at SIGTERM (flush interval 60 s)');
  assert.ok(total(cpu, 'cpu', has(/:spinUntilKilled:|\(anonymous|:spin:/)) > 0, 'no samples of the spinning code');
});
