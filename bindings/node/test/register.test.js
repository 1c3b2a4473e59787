'use strict';
// No code change: `node --require <package>/register.js app.js`, or the same in NODE_OPTIONS,
// profiles an app from the PYROSCOPE_* variables alone; a bad configuration prints one line
// and the app runs as it would.

const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { startReceiver, run, cpuProfiles, total, has, pkg } = require('./helpers');

const REGISTER = path.join(pkg, 'register.js');
const APP = 'test/fixtures/resilient-app.js';
const expected = (rounds) => `${Array.from({ length: rounds }, (_, i) => `round ${i} done\n`).join('')}all done\n`;

async function profiledBy(how) {
  const r = await startReceiver();
  const env = { PYROSCOPE_APPLICATION_NAME: 'registered', PYROSCOPE_SERVER_ADDRESS: r.url, ROUNDS: '4' };
  const res =
    how === 'NODE_OPTIONS'
      ? await run([APP], { ...env, NODE_OPTIONS: `--require ${REGISTER}` })
      : await run(['--require', REGISTER, APP], env);
  await r.close();
  assert.equal(res.code, 3, res.stderr);
  assert.equal(res.stdout, expected(4));
  assert.match(res.stderr, /^work-end \d+\n$/);
  const cpu = cpuProfiles(r);
  assert.ok(cpu.length >= 1, 'no profile');
  for (const p of cpu) assert.equal(p.labels.service_name, 'registered');
  assert.ok(total(cpu, 'cpu', has(/^\.\/test\/fixtures\/resilient-app\.js:steadyWork:\d+$/)) > 0, 'no steadyWork');
}

test('--require register.js profiles an unmodified app from PYROSCOPE_* alone', () => profiledBy('--require'));

test('NODE_OPTIONS="--require register.js" does the same', () => profiledBy('NODE_OPTIONS'));

test('a bad configuration prints one line and the app runs unprofiled with its exit code', async () => {
  const cases = [
    [{ PYROSCOPE_APPLICATION_NAME: 'app', PYROSCOPE_SERVER_ADDRESS: 'not a url' }, /invalid server address "not a url"/],
    [{ PYROSCOPE_SERVER_ADDRESS: 'http://127.0.0.1:4040' }, /appName is empty/],
    [{ PYROSCOPE_APPLICATION_NAME: 'app', PYROSCOPE_FLUSH_INTERVAL_MS: '10' }, /flushIntervalMs 10 must be between/],
  ];
  for (const [env, why] of cases) {
    const res = await run(['--require', REGISTER, APP], { ...env, ROUNDS: '1' });
    assert.equal(res.code, 3, res.stderr);
    assert.equal(res.stdout, expected(1));
    const lines = res.stderr.trimEnd().split('\n');
    assert.equal(lines.length, 2, res.stderr);
    assert.match(lines[0], /^pyroscope: not profiling: Invalid config: /);
    assert.match(lines[0], why);
    assert.match(lines[1], /^work-end \d+$/);
  }
});
