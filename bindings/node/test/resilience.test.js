'use strict';
// A server that is down, slow or refusing never shows in the app: same output, same exit code,
// no exception, and the process ends promptly after its work (the core's shutdown bound,
// 2 s, at worst). With the server up, the last window is sent at exit without stop().

const test = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');
const { startReceiver, run, cpuProfiles, total, has } = require('./helpers');

const APP = 'test/fixtures/resilient-app.js';
const EXPECTED = `${Array.from({ length: 10 }, (_, i) => `round ${i} done\n`).join('')}all done\n`;

/** A loopback port nothing listens on. */
function closedPort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Runs the app; checks what it showed; resolves to the ms from the end of its work to exit. */
async function runApp(env, what) {
  const res = await run([APP], env);
  assert.equal(res.code, 3, `${what}: exit code ${res.code}, stderr: ${res.stderr}`);
  assert.equal(res.stdout, EXPECTED, `${what}: output changed`);
  const m = /^work-end (\d+)\n$/.exec(res.stderr);
  assert.ok(m, `${what}: stderr has more than the app's line: ${JSON.stringify(res.stderr)}`);
  return res.exitedAt - Number(m[1]);
}

test('a server down, slow, failing or refusing never reaches the app, and it still exits promptly', async (t) => {
  const latency = {};
  latency.none = await runApp({}, 'no profiler');
  const down = `http://127.0.0.1:${await closedPort()}`;
  latency.down = await runApp({ PROFILE: '1', SERVER: down, FLUSH_MS: '1000' }, 'server down');
  for (const mode of ['slow:5000', 'status:500', 'status:403']) {
    const r = await startReceiver(mode);
    latency[mode] = await runApp({ PROFILE: '1', SERVER: r.url, FLUSH_MS: '1000' }, mode);
    await r.close();
    assert.equal(r.profiles.length, 0, `${mode}: the receiver accepted a profile`);
  }
  t.diagnostic(`ms from the end of the work to exit: ${JSON.stringify(latency)}`);
  // Refused at once: nothing to wait for; 3 s of slack (one run of each, on a busy machine),
  // which a process held past the shutdown bound (2 s) by more than a second would not pass.
  assert.ok(latency.down < latency.none + 3000, `server down: ${latency.down} ms vs ${latency.none} ms`);
  // A hanging or failing server: the last upload is given up at the shutdown bound (2 s).
  assert.ok(latency['slow:5000'] < latency.none + 4000, `slow: ${latency['slow:5000']} ms`);
  assert.ok(latency['status:500'] < latency.none + 4000, `status 500: ${latency['status:500']} ms`);
  // A refusal (403: bad credentials) is not retried.
  assert.ok(latency['status:403'] < latency.none + 3000, `status 403: ${latency['status:403']} ms`);
});

test('the last window is sent at exit, without stop()', async (t) => {
  const r = await startReceiver();
  // One window for the whole run: only the flush at exit can send it.
  const latency = await runApp({ PROFILE: '1', SERVER: r.url, FLUSH_MS: '60000' }, 'server up');
  await r.close();
  t.diagnostic(`ms from the end of the work to exit, server up: ${latency}`);
  const cpu = cpuProfiles(r);
  assert.equal(cpu.length, 1, `profiles: ${cpu.length}`);
  assert.equal(cpu[0].labels.service_name, 'resilient');
  for (const fn of ['steadyWork', 'finalBurn']) {
    const ns = total(cpu, 'cpu', has(new RegExp(`:${fn}:\\d+$`)));
    assert.ok(ns > 0, `no CPU in ${fn}`);
  }
});
