'use strict';
// A process killed by SIGTERM without a handler of its own sends its last window and still
// ends by that signal.

const test = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const { startReceiver, pkg, cpuProfiles, total, has } = require('./helpers');

test('SIGTERM: the last window is sent and the process dies by the signal', async () => {
  const r = await startReceiver();
  const child = spawn(process.execPath, ['test/fixtures/sigterm.js'], {
    cwd: pkg,
    env: { ...process.env, PYROSCOPE_SERVER_ADDRESS: r.url },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  // Once it has burnt 300 ms of CPU time (the profile must hold samples), kill it.
  let out = '';
  await new Promise((resolve) => {
    const seen = (d) => {
      out += d;
      if (out.includes('burnt\n')) {
        child.stdout.off('data', seen);
        resolve();
      }
    };
    child.stdout.on('data', seen);
    exited.then(resolve);
  });
  child.kill('SIGTERM');
  const { code, signal } = await exited;
  await r.close();
  assert.equal(code, null);
  assert.equal(signal, 'SIGTERM');
  const cpu = cpuProfiles(r);
  assert.ok(cpu.length >= 1, 'no profile sent at SIGTERM (flush interval 60 s)');
  assert.ok(total(cpu, 'cpu', has(/:spinUntilKilled:|\(anonymous|:spin:/)) > 0, 'no samples of the spinning code');
});
