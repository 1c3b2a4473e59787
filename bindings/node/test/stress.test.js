'use strict';
// A few seconds at 1 kHz of JIT churn, worker churn, label switches and GCs: the process
// computes what it computes without the profiler, exits 0, and the profiles are sane.

const test = require('node:test');
const assert = require('node:assert/strict');
const { startReceiver, run, cpuProfiles, total } = require('./helpers');

test('JIT churn and worker churn at 1 kHz: same output, no crash, sane profiles', async () => {
  const plain = await run(['--expose-gc', 'test/fixtures/stress.js'], { STRESS_PROFILED: '0' }, { timeoutMs: 120000 });
  assert.equal(plain.code, 0, plain.stderr);
  const r = await startReceiver();
  const profiled = await run(['--expose-gc', 'test/fixtures/stress.js'], { STRESS_PROFILED: '1', PYROSCOPE_SERVER_ADDRESS: r.url }, {
    timeoutMs: 120000,
  });
  await r.close();
  assert.equal(profiled.signal, null, `killed by ${profiled.signal}: ${profiled.stderr}`);
  assert.equal(profiled.code, 0, profiled.stderr);
  assert.equal(profiled.stdout, plain.stdout);
  assert.match(profiled.stdout, /^checksum \d+ of 48\n$/);
  const cpu = cpuProfiles(r);
  assert.ok(cpu.length >= 1, 'no CPU profile');
  // At 1 kHz the main thread alone yields hundreds of samples; churn's frames are named.
  const churned = total(cpu, 'samples', (s) => s.frames.some((f) => /:churn:\d+$/.test(f.function)));
  assert.ok(churned >= 200, `samples in churn: ${churned}`);
  const labelled = total(cpu, 'samples', (s) => s.labels.task !== undefined);
  assert.ok(labelled > 0, 'no labelled samples');
  for (const p of cpu) for (const s of p.samples) for (const v of s.values) assert.ok(v > 0, 'non-positive value');
});
